//! Sealing chunks with XChaCha20-Poly1305.
//!
//! Nonce choice: the nonce is the first 24 bytes of the chunk id (keyed BLAKE3 of the
//! plaintext), i.e. a synthetic IV. The same (key, nonce) pair is only ever used for the same
//! plaintext, which then yields the same ciphertext, so nonce reuse leaks nothing beyond
//! equality of chunks that the deduplication index already knows. It makes sealing
//! deterministic (no RNG in the data path, reproducible blocks) and lets `open` check the
//! chunk id after decrypting, binding ciphertext to the id the metadata expects.
//! The chunk id is also the associated data, so a sealed chunk cannot be swapped for another.

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use crate::chunk::ChunkId;

/// Bytes a sealed chunk adds to its plaintext (the Poly1305 tag).
pub const SEAL_OVERHEAD: usize = 16;

/// Errors when opening a sealed chunk.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SealError {
    /// Authentication failed: the bytes were altered or belong to another chunk or key.
    #[error("sealed chunk failed authentication")]
    Auth,
    /// Decryption succeeded but the plaintext does not hash to the expected id.
    #[error("chunk content does not match its id")]
    IdMismatch,
}

/// Encrypts `plain` whose id is `id` under the user's sealing key.
pub fn seal(key: &[u8; 32], id: &ChunkId, plain: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(plain.len() + SEAL_OVERHEAD);
    seal_into(key, id, plain, &mut out);
    out
}

/// [`seal`] into a buffer the caller owns: appends the sealed chunk to `out`, encrypting it in
/// place there (the engine seals straight into the open block: no allocation and one copy
/// fewer per chunk than sealing into a new vector and appending that).
pub fn seal_into(key: &[u8; 32], id: &ChunkId, plain: &[u8], out: &mut Vec<u8>) {
    let cipher = XChaCha20Poly1305::new(key.into());
    let nonce = XNonce::from_slice(&id.0[..24]);
    let start = out.len();
    out.extend_from_slice(plain);
    match cipher.encrypt_in_place_detached(nonce, &id.0, &mut out[start..]) {
        Ok(tag) => out.extend_from_slice(&tag),
        // Encryption fails only for messages over 256 GiB; chunks are at most 4 MiB.
        Err(e) => unreachable!("XChaCha20-Poly1305 encryption of a chunk cannot fail: {e}"),
    }
}

/// Decrypts a sealed chunk and checks it against its id (with the chunk-id key).
pub fn open(
    key: &[u8; 32],
    id_key: &[u8; 32],
    id: &ChunkId,
    sealed: &[u8],
) -> Result<Vec<u8>, SealError> {
    open_owned(key, id_key, id, sealed.to_vec())
}

/// [`open`] for sealed bytes the caller owns: decrypted where they are, without a copy (the
/// read path hands over the bytes it just read from the block cache).
pub fn open_owned(
    key: &[u8; 32],
    id_key: &[u8; 32],
    id: &ChunkId,
    mut sealed: Vec<u8>,
) -> Result<Vec<u8>, SealError> {
    let cipher = XChaCha20Poly1305::new(key.into());
    let nonce = XNonce::from_slice(&id.0[..24]);
    cipher
        .decrypt_in_place(nonce, &id.0, &mut sealed)
        .map_err(|_| SealError::Auth)?;
    if ChunkId::of(id_key, &sealed) != *id {
        return Err(SealError::IdMismatch);
    }
    Ok(sealed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn seal_open_round_trip(data in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let (k, ik) = ([1u8; 32], [2u8; 32]);
            let id = ChunkId::of(&ik, &data);
            let s = seal(&k, &id, &data);
            prop_assert_eq!(s.len(), data.len() + SEAL_OVERHEAD);
            let mut into = b"before".to_vec();
            seal_into(&k, &id, &data, &mut into);
            prop_assert_eq!(&into[..6], b"before");
            prop_assert_eq!(&into[6..], &s[..]);
            prop_assert_eq!(open(&k, &ik, &id, &s).unwrap(), data.clone());
            prop_assert_eq!(open_owned(&k, &ik, &id, s).unwrap(), data);
        }

        #[test]
        fn any_flipped_bit_is_detected(data in proptest::collection::vec(any::<u8>(), 1..512), bit in any::<usize>()) {
            let (k, ik) = ([1u8; 32], [2u8; 32]);
            let id = ChunkId::of(&ik, &data);
            let mut s = seal(&k, &id, &data);
            let b = bit % (s.len() * 8);
            s[b / 8] ^= 1 << (b % 8);
            prop_assert_eq!(open(&k, &ik, &id, &s), Err(SealError::Auth));
            prop_assert_eq!(open_owned(&k, &ik, &id, s), Err(SealError::Auth));
        }
    }

    #[test]
    fn ciphertext_does_not_contain_plaintext() {
        let data = b"MARKER-MARKER-MARKER-MARKER".repeat(100);
        let id = ChunkId::of(&[2; 32], &data);
        let s = seal(&[1; 32], &id, &data);
        assert!(!s.windows(13).any(|w| w == b"MARKER-MARKER"));
    }

    #[test]
    fn wrong_key_is_refused() {
        let id = ChunkId::of(&[2; 32], b"hello");
        let s = seal(&[1; 32], &id, b"hello");
        assert_eq!(open(&[3; 32], &[2; 32], &id, &s), Err(SealError::Auth));
    }
}
