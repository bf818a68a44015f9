//! Sealing chunks with XChaCha20-Poly1305.
//!
//! Nonce choice: the nonce is the first 24 bytes of the chunk id (keyed BLAKE3 of the
//! plaintext), i.e. a synthetic IV. The same (key, nonce) pair is only ever used for the same
//! plaintext, which then yields the same ciphertext, so nonce reuse leaks nothing beyond
//! equality of chunks that the deduplication index already knows. It makes sealing
//! deterministic (no RNG in the data path, reproducible blocks) and lets `open` check the
//! chunk id after decrypting, binding ciphertext to the id the metadata expects.
//! The chunk id is also the associated data, so a sealed chunk cannot be swapped for another.
//!
//! The cipher is XChaCha20-Poly1305 exactly as the `chacha20poly1305` crate implements it
//! (draft-irtf-cfrg-xchacha): HChaCha20 of the key and the nonce's first 16 bytes gives a
//! subkey, and ChaCha20-Poly1305 (RFC 8439) runs under that subkey with the nonce
//! `[0; 4] || nonce[16..24]`. HChaCha20 comes from the `chacha20` crate (the one under
//! `chacha20poly1305`); the ChaCha20-Poly1305 pass, where all the time goes, from OpenSSL
//! (Debian's libssl3, through the `openssl` crate), whose AVX-512 ChaCha20 and Poly1305 ran at
//! 3.0 GiB/s here sealing 1 MiB chunks out of place into a block, against 1.9-2.1 for ring's
//! AVX2 code (which seals in place only, after a copy into the block) and 1.3 for
//! `chacha20poly1305` (`scripts/bench-pipeline.sh`). The output is byte-identical: the tests
//! below check every sealed chunk against `chacha20poly1305::XChaCha20Poly1305`, so blocks
//! written by either open with the other.

use chacha20::cipher::consts::U10;
use openssl::cipher::Cipher;
use openssl::cipher_ctx::CipherCtx;
use openssl::error::ErrorStack;
use zeroize::Zeroize;

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
    /// The cipher library failed (out of memory): nothing was sealed or opened.
    #[error("cipher library: {0}")]
    Cipher(String),
    /// The buffer given for a sealed chunk is shorter than the chunk plus its tag (or the
    /// chunk is 2 GiB or more).
    #[error("no room for a sealed chunk of {need} bytes in {have}")]
    Room {
        /// bytes the sealed chunk takes
        need: usize,
        /// bytes given
        have: usize,
    },
}

impl From<ErrorStack> for SealError {
    fn from(e: ErrorStack) -> Self {
        Self::Cipher(e.to_string())
    }
}

/// A ChaCha20-Poly1305 context set up as XChaCha20-Poly1305 with `nonce` under `key`
/// (HChaCha20 subkey, 12-byte nonce `[0; 4] || nonce[16..24]`), with `aad` already fed in.
fn xchacha(
    key: &[u8; 32],
    nonce: &[u8; 24],
    aad: &[u8],
    encrypt: bool,
) -> Result<CipherCtx, ErrorStack> {
    let (head, tail) = nonce.split_at(16);
    let mut subkey = chacha20::hchacha::<U10>(key.into(), head.into());
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(tail);
    let mut ctx = CipherCtx::new()?;
    let cipher = Some(Cipher::chacha20_poly1305());
    let init = if encrypt {
        ctx.encrypt_init(cipher, Some(subkey.as_slice()), Some(&n))
    } else {
        ctx.decrypt_init(cipher, Some(subkey.as_slice()), Some(&n))
    };
    // The context keeps its own copy (OpenSSL cleanses it when the context is freed).
    subkey.as_mut_slice().zeroize();
    init?;
    ctx.cipher_update(aad, None)?;
    Ok(ctx)
}

/// XChaCha20-Poly1305 of `plain` (nonce `nonce`, associated data `aad`) appended to `out`:
/// ciphertext, then the tag. On an error `out` is as it was.
fn seal_with(
    key: &[u8; 32],
    nonce: &[u8; 24],
    aad: &[u8],
    plain: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), SealError> {
    let start = out.len();
    out.resize(start + plain.len() + SEAL_OVERHEAD, 0);
    seal_with_slice(key, nonce, aad, plain, &mut out[start..]).inspect_err(|_| out.truncate(start))
}

/// XChaCha20-Poly1305 of `plain` written over the first `plain.len() + SEAL_OVERHEAD` bytes of
/// `out` (ciphertext, then the tag), straight from `plain`: no copy of it first.
fn seal_with_slice(
    key: &[u8; 32],
    nonce: &[u8; 24],
    aad: &[u8],
    plain: &[u8],
    out: &mut [u8],
) -> Result<(), SealError> {
    let n = plain.len();
    if out.len() < n + SEAL_OVERHEAD || i32::try_from(n).is_err() {
        return Err(SealError::Room {
            need: n + SEAL_OVERHEAD,
            have: out.len(),
        });
    }
    let (body, rest) = out.split_at_mut(n);
    let mut ctx = xchacha(key, nonce, aad, true)?;
    // A stream cipher: exactly `n` bytes out for `n` in, and nothing left for the final call.
    let written = ctx.cipher_update(plain, Some(body))?;
    let flushed = ctx.cipher_final_vec(&mut Vec::new())?;
    if written != n || flushed != 0 {
        return Err(SealError::Cipher(format!(
            "ChaCha20-Poly1305 gave {written} + {flushed} bytes for {n}"
        )));
    }
    ctx.tag(&mut rest[..SEAL_OVERHEAD])?;
    Ok(())
}

/// draft-irtf-cfrg-xchacha-03, A.3.1: the published XChaCha20-Poly1305 test vector (key
/// 0x80.., nonce 0x40.., this associated data and plaintext) and its sealed bytes.
const KAT_AAD: &[u8] = &[
    0x50, 0x51, 0x52, 0x53, 0xc0, 0xc1, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7,
];
const KAT_PLAIN: &[u8] = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.";
const KAT_SEALED: &str = "bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb\
                          731c7f1b0b4aa6440bf3a82f4eda7e39ae64c6708c54c216cb96b72e1213b452\
                          2f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc369488f76b2383565d3fff9\
                          21f9664c97637da9768812f615c68b13b52e\
                          c0875924c1c7987947deafd8780acf49";

/// Seals and opens the published test vector and checks the bytes: the engine runs this when
/// it opens, so a cipher library that refuses ChaCha20-Poly1305 (an OpenSSL in FIPS mode) or
/// computes it wrongly stops a mount with a clear error instead of failing every write.
pub fn self_test() -> Result<(), SealError> {
    let key: [u8; 32] = std::array::from_fn(|i| 0x80 + i as u8);
    let nonce: [u8; 24] = std::array::from_fn(|i| 0x40 + i as u8);
    let mut buf = Vec::new();
    seal_with(&key, &nonce, KAT_AAD, KAT_PLAIN, &mut buf)?;
    if hex::encode(&buf) != KAT_SEALED {
        return Err(SealError::Cipher(
            "XChaCha20-Poly1305 does not give the draft's A.3.1 test vector".into(),
        ));
    }
    let n = open_with(&key, &nonce, KAT_AAD, &mut buf)?;
    if buf.get(..n) != Some(KAT_PLAIN) {
        return Err(SealError::Cipher(
            "XChaCha20-Poly1305 does not open the draft's A.3.1 test vector".into(),
        ));
    }
    Ok(())
}

/// Opens `sealed` (ciphertext, then tag) in place; returns the plaintext's length.
fn open_with(
    key: &[u8; 32],
    nonce: &[u8; 24],
    aad: &[u8],
    sealed: &mut [u8],
) -> Result<usize, SealError> {
    // OpenSSL takes lengths as C ints; no chunk comes near that (MAX_CHUNK is 4 MiB).
    let Some(plain_len) = sealed
        .len()
        .checked_sub(SEAL_OVERHEAD)
        .filter(|&n| i32::try_from(n).is_ok())
    else {
        return Err(SealError::Auth);
    };
    let (body, tag) = sealed.split_at_mut(plain_len);
    let mut ctx = xchacha(key, nonce, aad, false)?;
    ctx.set_tag(tag)?;
    ctx.cipher_update_inplace(body, plain_len)?;
    // The tag is checked here; a failure is authentication, whatever OpenSSL's reason.
    ctx.cipher_final_vec(&mut Vec::new())
        .map_err(|_| SealError::Auth)?;
    Ok(plain_len)
}

/// The synthetic nonce of chunk `id` (its first 24 bytes).
fn nonce_of(id: &ChunkId) -> [u8; 24] {
    let mut n = [0u8; 24];
    n.copy_from_slice(&id.0[..24]);
    n
}

/// Encrypts `plain` whose id is `id` under the user's sealing key.
pub fn seal(key: &[u8; 32], id: &ChunkId, plain: &[u8]) -> Result<Vec<u8>, SealError> {
    let mut out = Vec::with_capacity(plain.len() + SEAL_OVERHEAD);
    seal_into(key, id, plain, &mut out)?;
    Ok(out)
}

/// [`seal`] into a buffer the caller owns: appends the sealed chunk to `out`, encrypting
/// straight into it (the engine seals into the open block: no allocation and no copy of the
/// plaintext). On an error `out` is as it was.
pub fn seal_into(
    key: &[u8; 32],
    id: &ChunkId,
    plain: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), SealError> {
    seal_with(key, &nonce_of(id), &id.0, plain, out)
}

/// [`seal`] over the first `plain.len() + SEAL_OVERHEAD` bytes of `out` (a buffer whose bytes
/// are initialised already: nothing is zeroed before the ciphertext is written, as appending to
/// a vector must). Refuses a shorter `out` with [`SealError::Room`].
pub fn seal_into_slice(
    key: &[u8; 32],
    id: &ChunkId,
    plain: &[u8],
    out: &mut [u8],
) -> Result<(), SealError> {
    seal_with_slice(key, &nonce_of(id), &id.0, plain, out)
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
    let plain_len = open_with(key, &nonce_of(id), &id.0, &mut sealed)?;
    sealed.truncate(plain_len);
    if ChunkId::of(id_key, &sealed) != *id {
        return Err(SealError::IdMismatch);
    }
    Ok(sealed)
}

/// [`open`] of a sealed chunk that lies in pieces, one after the other (a block still in its
/// shards), decrypted straight from them into `out`, which must be the plaintext's length
/// (the pieces' total less [`SEAL_OVERHEAD`]). Nothing is copied first: copying each chunk
/// out of its block to decrypt it in place was 2.5% of a cold read's CPU samples. On an
/// error `out` holds unauthenticated bytes and must not be used.
pub fn open_parts_into(
    key: &[u8; 32],
    id_key: &[u8; 32],
    id: &ChunkId,
    parts: &[&[u8]],
    out: &mut [u8],
) -> Result<(), SealError> {
    let sealed: usize = parts.iter().map(|p| p.len()).sum();
    let Some(plain_len) = sealed
        .checked_sub(SEAL_OVERHEAD)
        .filter(|&n| i32::try_from(n).is_ok())
    else {
        return Err(SealError::Auth);
    };
    if out.len() != plain_len {
        return Err(SealError::Room {
            need: plain_len,
            have: out.len(),
        });
    }
    // The tag is the last SEAL_OVERHEAD bytes, which may straddle pieces.
    let mut tag = [0u8; SEAL_OVERHEAD];
    let mut at = 0;
    for p in parts {
        let (start, end) = (at, at + p.len());
        if end > plain_len {
            let from = plain_len.max(start);
            tag[from - plain_len..end - plain_len].copy_from_slice(&p[from - start..]);
        }
        at = end;
    }
    let mut ctx = xchacha(key, &nonce_of(id), &id.0, false)?;
    ctx.set_tag(&tag)?;
    let mut done = 0;
    for p in parts {
        let n = p.len().min(plain_len - done);
        if n == 0 {
            // An empty piece, or the tag's.
            continue;
        }
        let written = ctx.cipher_update(&p[..n], Some(&mut out[done..done + n]))?;
        if written != n {
            return Err(SealError::Cipher(format!(
                "ChaCha20-Poly1305 gave {written} bytes for {n}"
            )));
        }
        done += n;
    }
    ctx.cipher_final_vec(&mut Vec::new())
        .map_err(|_| SealError::Auth)?;
    if ChunkId::of(id_key, out) != *id {
        return Err(SealError::IdMismatch);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// XChaCha20-Poly1305 as the `chacha20poly1305` crate computes it.
    fn reference_seal(key: &[u8; 32], nonce: &[u8; 24], aad: &[u8], plain: &[u8]) -> Vec<u8> {
        use chacha20poly1305::aead::{Aead, KeyInit, Payload};
        chacha20poly1305::XChaCha20Poly1305::new(key.into())
            .encrypt(nonce.into(), Payload { msg: plain, aad })
            .unwrap()
    }

    proptest! {
        #[test]
        fn sealing_is_the_chacha20poly1305_crates_xchacha(
            key in any::<[u8; 32]>(),
            id in any::<[u8; 32]>(),
            data in proptest::collection::vec(any::<u8>(), 0..70_000),
        ) {
            let id = ChunkId(id);
            let ours = seal(&key, &id, &data).unwrap();
            let reference = reference_seal(&key, &nonce_of(&id), &id.0, &data);
            prop_assert_eq!(&ours, &reference);
            // And what the reference sealed opens here (the id check needs the real id).
            let ik = [4u8; 32];
            let real = ChunkId::of(&ik, &data);
            let theirs = reference_seal(&key, &nonce_of(&real), &real.0, &data);
            prop_assert_eq!(open(&key, &ik, &real, &theirs).unwrap(), data);
        }

        #[test]
        fn seal_open_round_trip(data in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let (k, ik) = ([1u8; 32], [2u8; 32]);
            let id = ChunkId::of(&ik, &data);
            let s = seal(&k, &id, &data).unwrap();
            prop_assert_eq!(s.len(), data.len() + SEAL_OVERHEAD);
            let mut into = b"before".to_vec();
            seal_into(&k, &id, &data, &mut into).unwrap();
            prop_assert_eq!(&into[..6], b"before");
            prop_assert_eq!(&into[6..], &s[..]);
            // Over a buffer holding other bytes: the same sealed chunk, and nothing past it.
            let mut over = vec![0xA5u8; s.len() + 3];
            seal_into_slice(&k, &id, &data, &mut over).unwrap();
            prop_assert_eq!(&over[..s.len()], &s[..]);
            prop_assert_eq!(&over[s.len()..], &[0xA5u8; 3][..]);
            let mut short = vec![0u8; s.len() - 1];
            prop_assert_eq!(seal_into_slice(&k, &id, &data, &mut short),
                Err(SealError::Room { need: s.len(), have: s.len() - 1 }));
            prop_assert_eq!(open(&k, &ik, &id, &s).unwrap(), data.clone());
            prop_assert_eq!(open_owned(&k, &ik, &id, s).unwrap(), data);
        }

        #[test]
        fn any_flipped_bit_is_detected(data in proptest::collection::vec(any::<u8>(), 1..512), bit in any::<usize>()) {
            let (k, ik) = ([1u8; 32], [2u8; 32]);
            let id = ChunkId::of(&ik, &data);
            let mut s = seal(&k, &id, &data).unwrap();
            let b = bit % (s.len() * 8);
            s[b / 8] ^= 1 << (b % 8);
            prop_assert_eq!(open(&k, &ik, &id, &s), Err(SealError::Auth));
            prop_assert_eq!(open_owned(&k, &ik, &id, s), Err(SealError::Auth));
        }

        /// A sealed chunk cut into pieces anywhere (the tag split too, empty pieces among
        /// them) opens into a dirty buffer as it opens whole; a flipped bit, a wrong length
        /// or a wrong id is refused.
        #[test]
        fn a_chunk_in_pieces_opens_as_it_opens_whole(
            data in proptest::collection::vec(any::<u8>(), 0..3000),
            cuts in proptest::collection::vec(any::<usize>(), 0..5),
            bit in any::<usize>(),
        ) {
            let (k, ik) = ([1u8; 32], [2u8; 32]);
            let id = ChunkId::of(&ik, &data);
            let s = seal(&k, &id, &data).unwrap();
            let mut at: Vec<usize> = cuts.iter().map(|c| c % (s.len() + 1)).collect();
            at.push(0);
            at.push(s.len());
            // Always one cut inside the tag when there is room for it.
            at.push(s.len() - SEAL_OVERHEAD / 2);
            at.sort_unstable();
            let split = |s: &[u8]| -> Vec<Vec<u8>> {
                at.windows(2).map(|w| s[w[0]..w[1]].to_vec()).collect()
            };
            let pieces = split(&s);
            let parts: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
            let mut out = vec![0xA5u8; data.len()];
            open_parts_into(&k, &ik, &id, &parts, &mut out).unwrap();
            prop_assert_eq!(&out, &data);
            let mut short = vec![0u8; data.len() + 1];
            prop_assert_eq!(open_parts_into(&k, &ik, &id, &parts, &mut short),
                Err(SealError::Room { need: data.len(), have: data.len() + 1 }));
            let other = ChunkId::of(&ik, b"another chunk");
            prop_assert_eq!(open_parts_into(&k, &ik, &other, &parts, &mut out), Err(SealError::Auth));
            let mut bad = s.clone();
            let b = bit % (bad.len() * 8);
            bad[b / 8] ^= 1 << (b % 8);
            let pieces = split(&bad);
            let parts: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
            prop_assert_eq!(open_parts_into(&k, &ik, &id, &parts, &mut out), Err(SealError::Auth));
        }
    }

    #[test]
    fn ciphertext_does_not_contain_plaintext() {
        let data = b"MARKER-MARKER-MARKER-MARKER".repeat(100);
        let id = ChunkId::of(&[2; 32], &data);
        let s = seal(&[1; 32], &id, &data).unwrap();
        assert!(!s.windows(13).any(|w| w == b"MARKER-MARKER"));
    }

    /// draft-irtf-cfrg-xchacha-03, A.3.1: the published XChaCha20-Poly1305 test vector, which
    /// the crate computes too; the start-up self test passes.
    #[test]
    fn xchacha_test_vector() {
        let key: [u8; 32] = std::array::from_fn(|i| 0x80 + i as u8);
        let nonce: [u8; 24] = std::array::from_fn(|i| 0x40 + i as u8);
        assert_eq!(
            hex::encode(reference_seal(&key, &nonce, KAT_AAD, KAT_PLAIN)),
            KAT_SEALED
        );
        self_test().unwrap();
    }

    #[test]
    fn sealed_bytes_shorter_than_a_tag_are_refused() {
        for len in 0..SEAL_OVERHEAD {
            let mut short = vec![7u8; len];
            assert_eq!(
                open_with(&[1; 32], &[2; 24], b"", &mut short),
                Err(SealError::Auth)
            );
        }
    }

    #[test]
    fn wrong_key_is_refused() {
        let id = ChunkId::of(&[2; 32], b"hello");
        let s = seal(&[1; 32], &id, b"hello").unwrap();
        assert_eq!(open(&[3; 32], &[2; 32], &id, &s), Err(SealError::Auth));
    }
}
