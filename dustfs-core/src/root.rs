//! Root records: the signed, sequence-numbered pointer to a snapshot of a user's namespace.
//!
//! A root record {user public key, sequence number, time, sealed metadata manifest} is signed
//! with the user's Ed25519 key under a domain-separation prefix, handed to every supplier of
//! the user and published in the DHT. Whoever finds root records (a fresh machine restoring
//! from the paper key) keeps only those whose signature verifies for the expected user and
//! takes the highest sequence number: a forged record fails the signature, and a stale one
//! (served by a supplier that lost or hides newer ones) loses on the sequence number.
//!
//! The manifest inside is sealed with the metadata key, so suppliers learn nothing but its size.

use ed25519_dalek::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::chunk::ChunkId;
use crate::keys::Keys;
use crate::seal;

/// Format version of a signed root record.
pub const ROOT_VERSION: u8 = 1;
/// Largest signed root record anyone stores or accepts.
pub const MAX_ROOT: usize = 1 << 20;
const DOMAIN: &[u8] = b"dustfs root record v1";

/// Why a root record was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RootError {
    /// Not a root record, or of an unknown version.
    #[error("malformed root record: {0}")]
    Malformed(String),
    /// Over [`MAX_ROOT`].
    #[error("root record too large")]
    TooLarge,
    /// Signed for another user.
    #[error("root record of another user")]
    WrongUser,
    /// The signature does not verify.
    #[error("root record signature does not verify")]
    BadSignature,
    /// The manifest cannot be opened with this key.
    #[error("root manifest does not open with this key: {0}")]
    Sealed(String),
}

/// The signed content of a root record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootRecord {
    /// The user's Ed25519 public key.
    pub user: [u8; 32],
    /// Strictly increasing per user: the newest snapshot has the highest.
    pub seq: u64,
    /// When it was published, ms since the Unix epoch.
    pub time_ms: u64,
    /// The metadata manifest, sealed with the metadata key.
    #[serde(with = "serde_bytes")]
    pub manifest: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct Signed {
    #[serde(with = "serde_bytes")]
    body: Vec<u8>,
    #[serde(with = "serde_bytes")]
    sig: Vec<u8>,
}

fn signing_bytes(body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN.len() + body.len() + 8);
    m.extend_from_slice(&(DOMAIN.len() as u32).to_be_bytes());
    m.extend_from_slice(DOMAIN);
    m.extend_from_slice(&(body.len() as u32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

impl RootRecord {
    /// Signs the record with the user key: version byte + postcard {body, signature}.
    pub fn sign(&self, keys: &Keys) -> Vec<u8> {
        let body = postcard::to_allocvec(self).unwrap_or_default();
        let sig = keys.sign(&signing_bytes(&body)).to_vec();
        let mut out = vec![ROOT_VERSION];
        out.extend(postcard::to_allocvec(&Signed { body, sig }).unwrap_or_default());
        out
    }

    /// Checks a signed record: size, version, that it is `user`'s and that the signature
    /// verifies. Returns the record.
    pub fn verify(bytes: &[u8], user: &[u8; 32]) -> Result<Self, RootError> {
        if bytes.len() > MAX_ROOT {
            return Err(RootError::TooLarge);
        }
        match bytes.first() {
            Some(&ROOT_VERSION) => {}
            Some(v) => return Err(RootError::Malformed(format!("unknown version {v}"))),
            None => return Err(RootError::Malformed("empty".into())),
        }
        let s: Signed =
            postcard::from_bytes(&bytes[1..]).map_err(|e| RootError::Malformed(e.to_string()))?;
        let rec: RootRecord =
            postcard::from_bytes(&s.body).map_err(|e| RootError::Malformed(e.to_string()))?;
        if &rec.user != user {
            return Err(RootError::WrongUser);
        }
        let key = VerifyingKey::from_bytes(user).map_err(|_| RootError::BadSignature)?;
        let sig: [u8; 64] = s
            .sig
            .as_slice()
            .try_into()
            .map_err(|_| RootError::BadSignature)?;
        // Strict verification: plain Ed25519 verification accepts, for a small-order ("weak")
        // public key, a signature whose R is the identity and s is zero, over any message.
        // No real user has such a key, but anyone could fill the DHT with "valid" records for
        // one (the dht_record fuzzer found it). `verify_strict` refuses weak keys and
        // non-canonical R.
        key.verify_strict(&signing_bytes(&s.body), &Signature::from_bytes(&sig))
            .map_err(|_| RootError::BadSignature)?;
        Ok(rec)
    }

    /// The sequence number of a signed record without checking it (suppliers use it to file
    /// records; customers always [`verify`](Self::verify)).
    pub fn peek_seq(bytes: &[u8]) -> Option<(u64, [u8; 32])> {
        let s: Signed = postcard::from_bytes(bytes.get(1..)?).ok()?;
        let rec: RootRecord = postcard::from_bytes(&s.body).ok()?;
        Some((rec.seq, rec.user))
    }
}

/// Seals a manifest with the metadata key (deterministic: the nonce comes from a keyed hash of
/// the plaintext, as for chunks).
pub fn seal_manifest(keys: &Keys, plain: &[u8]) -> Result<Vec<u8>, seal::SealError> {
    let id = ChunkId::of(&keys.meta, plain);
    let mut out = id.0.to_vec();
    seal::seal_into(&keys.meta, &id, plain, &mut out)?;
    Ok(out)
}

/// Opens a sealed manifest.
pub fn open_manifest(keys: &Keys, sealed: &[u8]) -> Result<Vec<u8>, RootError> {
    if sealed.len() < 32 {
        return Err(RootError::Sealed("too short".into()));
    }
    let mut id = [0u8; 32];
    id.copy_from_slice(&sealed[..32]);
    seal::open(&keys.meta, &keys.meta, &ChunkId(id), &sealed[32..])
        .map_err(|e| RootError::Sealed(e.to_string()))
}

/// Of the candidates, the valid record with the highest sequence number (with its signed
/// bytes), and how many candidates were refused.
pub fn newest<I>(candidates: I, user: &[u8; 32]) -> (Option<(RootRecord, Vec<u8>)>, usize)
where
    I: IntoIterator<Item = Vec<u8>>,
{
    let mut best: Option<(RootRecord, Vec<u8>)> = None;
    let mut refused = 0;
    for c in candidates {
        match RootRecord::verify(&c, user) {
            Ok(r) => {
                if best.as_ref().is_none_or(|(b, _)| r.seq > b.seq) {
                    best = Some((r, c));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "root record refused");
                refused += 1;
            }
        }
    }
    (best, refused)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::MasterSecret;

    fn rec(keys: &Keys, seq: u64) -> RootRecord {
        RootRecord {
            user: keys.public().to_bytes(),
            seq,
            time_ms: 1,
            manifest: seal_manifest(keys, format!("manifest {seq}").as_bytes()).unwrap(),
        }
    }

    #[test]
    fn the_newest_valid_record_wins_and_forged_or_foreign_ones_are_refused() {
        let k = MasterSecret::generate().derive();
        let other = MasterSecret::generate().derive();
        let user = k.public().to_bytes();
        let old = rec(&k, 3).sign(&k);
        let new = rec(&k, 7).sign(&k);
        // A forgery: a higher sequence number grafted onto a genuine signature.
        let mut forged_rec = rec(&k, 7);
        forged_rec.seq = 100;
        let genuine_sig = {
            let s: Signed = postcard::from_bytes(&new[1..]).unwrap();
            s.sig
        };
        let mut forged = vec![ROOT_VERSION];
        forged.extend(
            postcard::to_allocvec(&Signed {
                body: postcard::to_allocvec(&forged_rec).unwrap(),
                sig: genuine_sig,
            })
            .unwrap(),
        );
        assert_eq!(
            RootRecord::verify(&forged, &user),
            Err(RootError::BadSignature)
        );
        // Another user's record, signed by that user, is not ours.
        let mut foreign = rec(&other, 500);
        foreign.user = other.public().to_bytes();
        let foreign = foreign.sign(&other);
        assert_eq!(
            RootRecord::verify(&foreign, &user),
            Err(RootError::WrongUser)
        );
        let (best, refused) = newest(
            vec![old.clone(), forged, foreign, new.clone(), b"junk".to_vec()],
            &user,
        );
        let (best, bytes) = best.unwrap();
        assert_eq!(best.seq, 7);
        assert_eq!(bytes, new);
        assert_eq!(refused, 3);
        assert_eq!(
            open_manifest(&k, &best.manifest).unwrap(),
            b"manifest 7".to_vec()
        );
        assert!(open_manifest(&other, &best.manifest).is_err());
        // Only older ones found: the older one is taken (never a forged newer one).
        assert_eq!(newest(vec![old], &user).0.unwrap().0.seq, 3);
        assert_eq!(RootRecord::peek_seq(&new), Some((7, user)));
    }

    #[test]
    fn a_record_for_a_small_order_key_with_a_trivial_signature_is_refused() {
        // The identity point (y = 1) has order 1: with R = identity and s = 0 the cofactorless
        // check [s]B = R + [k]A holds for every message.
        let mut weak = [0u8; 32];
        weak[0] = 1;
        let r = RootRecord {
            user: weak,
            seq: u64::MAX,
            time_ms: 0,
            manifest: vec![0; 40],
        };
        let mut sig = vec![0u8; 64];
        sig[0] = 1;
        let mut bytes = vec![ROOT_VERSION];
        bytes.extend(
            postcard::to_allocvec(&Signed {
                body: postcard::to_allocvec(&r).unwrap(),
                sig,
            })
            .unwrap(),
        );
        assert_eq!(
            RootRecord::verify(&bytes, &weak),
            Err(RootError::BadSignature)
        );
    }

    proptest::proptest! {
        #[test]
        fn records_round_trip_and_any_flipped_byte_is_refused(
            seq in proptest::prelude::any::<u64>(),
            time_ms in proptest::prelude::any::<u64>(),
            plain in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
            flip in proptest::prelude::any::<usize>(),
        ) {
            let k = MasterSecret::from_bytes(&[11; 32]).unwrap().derive();
            let user = k.public().to_bytes();
            let r = RootRecord { user, seq, time_ms, manifest: seal_manifest(&k, &plain).unwrap() };
            let bytes = r.sign(&k);
            proptest::prop_assert_eq!(RootRecord::verify(&bytes, &user).unwrap(), r.clone());
            proptest::prop_assert_eq!(RootRecord::peek_seq(&bytes), Some((seq, user)));
            proptest::prop_assert_eq!(open_manifest(&k, &r.manifest).unwrap(), plain);
            let mut bad = bytes.clone();
            let at = flip % bad.len();
            bad[at] ^= 0x40;
            proptest::prop_assert!(RootRecord::verify(&bad, &user).is_err());
        }

        #[test]
        fn garbage_is_refused_without_panicking(
            b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..1024),
        ) {
            let k = MasterSecret::from_bytes(&[11; 32]).unwrap().derive();
            proptest::prop_assert!(RootRecord::verify(&b, &k.public().to_bytes()).is_err());
            let _ = RootRecord::peek_seq(&b);
            proptest::prop_assert!(open_manifest(&k, &b).is_err());
        }
    }
}
