//! The user's identity: one 256-bit master secret, the paper key that encodes it, and the keys
//! derived from it.
//!
//! Every key is derived with `blake3::derive_key` under its own context string, so the keys are
//! independent and the master secret alone rebuilds all of them on a fresh machine. The paper
//! key is the BIP-39 English mnemonic of the master secret (24 words, with its built-in
//! checksum), which catches typos and swapped words before any network traffic happens.

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Context strings for key derivation. Changing one changes every derived key: never do that.
const CTX_SIGNING: &str = "dustfs 2026-11 user signing key v1";
const CTX_CHUNK_ID: &str = "dustfs 2026-11 chunk id key v1";
const CTX_SEAL: &str = "dustfs 2026-11 chunk sealing key v1";
const CTX_META: &str = "dustfs 2026-11 metadata key v1";

/// Errors while reading a paper key or a stored secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The words do not form a valid paper key (unknown word, wrong count or bad checksum).
    #[error("invalid paper key: {0} (check each word and their order)")]
    PaperKey(String),
    /// A stored secret has the wrong length.
    #[error("secret key file is corrupt: expected 32 bytes, found {0}")]
    BadLength(usize),
}

/// The 256-bit master secret. Zeroized when dropped, never printed by `Debug`.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct MasterSecret([u8; 32]);

impl std::fmt::Debug for MasterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterSecret(..)")
    }
}

impl MasterSecret {
    /// A fresh random secret from the operating system's CSPRNG.
    pub fn generate() -> Self {
        let mut b = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut b);
        Self(b)
    }

    /// Wraps raw secret bytes (for example read from the 0600 key file).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| KeyError::BadLength(bytes.len()))?;
        Ok(Self(arr))
    }

    /// The raw bytes, for writing the key file.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The paper key: 24 BIP-39 words (wiped from memory when dropped).
    pub fn paper_key(&self) -> zeroize::Zeroizing<String> {
        match bip39::Mnemonic::from_entropy(&self.0) {
            Ok(m) => zeroize::Zeroizing::new(m.to_string()),
            // 32 bytes is always a valid entropy length for BIP-39.
            Err(e) => unreachable!("32-byte entropy is valid BIP-39: {e}"),
        }
    }

    /// Parses a paper key typed by a user; whitespace and case are forgiven, typos are not.
    pub fn from_paper_key(words: &str) -> Result<Self, KeyError> {
        let normalized = zeroize::Zeroizing::new(
            words
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .to_lowercase(),
        );
        let m = bip39::Mnemonic::parse_in_normalized(bip39::Language::English, &normalized)
            .map_err(|e| KeyError::PaperKey(e.to_string()))?;
        let mut entropy = m.to_entropy();
        let r = Self::from_bytes(&entropy);
        entropy.zeroize();
        r.map_err(|_| KeyError::PaperKey("a dustfs paper key has 24 words".into()))
    }

    /// Derives every working key.
    pub fn derive(&self) -> Keys {
        let signing = SigningKey::from_bytes(&blake3::derive_key(CTX_SIGNING, &self.0));
        Keys {
            signing,
            chunk_id: blake3::derive_key(CTX_CHUNK_ID, &self.0),
            seal: blake3::derive_key(CTX_SEAL, &self.0),
            meta: blake3::derive_key(CTX_META, &self.0),
        }
    }
}

/// The keys derived from a master secret.
#[derive(Clone, ZeroizeOnDrop)]
pub struct Keys {
    /// The user's Ed25519 key: its public half is the user's identity on the network.
    #[zeroize(skip)]
    pub signing: SigningKey,
    /// Key for chunk ids (keyed BLAKE3): suppliers cannot link a chunk to public content.
    pub chunk_id: [u8; 32],
    /// Key for sealing chunks (XChaCha20-Poly1305).
    pub seal: [u8; 32],
    /// Key for metadata records.
    pub meta: [u8; 32],
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keys(user {})", hex::encode(self.public().as_bytes()))
    }
}

impl Keys {
    /// The user's public identity.
    pub fn public(&self) -> VerifyingKey {
        self.signing.verifying_key()
    }

    /// Signs a message with the user key.
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.signing.sign(msg).to_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_key_round_trips_and_rederives_the_same_identity() {
        let s = MasterSecret::generate();
        let words = s.paper_key();
        assert_eq!(words.split(' ').count(), 24);
        let back = MasterSecret::from_paper_key(&format!("  {}\n", words.to_uppercase())).unwrap();
        assert_eq!(back.as_bytes(), s.as_bytes());
        assert_eq!(back.derive().public(), s.derive().public());
    }

    #[test]
    fn mistyped_paper_key_is_refused() {
        // A fixed secret: BIP-39's 8-bit checksum catches a given swap with probability
        // 255/256, so a random one would make this test flaky.
        let s = MasterSecret::from_bytes(&[7u8; 32]).unwrap();
        let words: Vec<String> = s.paper_key().split(' ').map(str::to_string).collect();
        let mut swapped = words.clone();
        swapped.swap(0, 1);
        assert_ne!(swapped, words);
        assert!(MasterSecret::from_paper_key(&swapped.join(" ")).is_err());
        assert!(MasterSecret::from_paper_key(&words[..23].join(" ")).is_err());
        let mut typo = words.clone();
        typo[5] = "notaword".into();
        assert!(MasterSecret::from_paper_key(&typo.join(" ")).is_err());
    }

    #[test]
    fn derived_keys_are_distinct() {
        let k = MasterSecret::generate().derive();
        assert_ne!(k.chunk_id, k.seal);
        assert_ne!(k.seal, k.meta);
        assert_ne!(k.signing.to_bytes(), k.seal);
    }
}
