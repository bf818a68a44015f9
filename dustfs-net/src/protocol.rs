//! The dustfs shard protocol: messages between a customer and a supplier, their wire encoding
//! and the signed envelope that every state-changing request carries.
//!
//! Wire format: one request and one response per libp2p stream, each a frame of
//! `u32 big-endian length | version byte | postcard body`, at most [`MAX_FRAME`] bytes. The
//! codec only moves bounded byte frames; decoding happens in [`decode_request`], so that a
//! malformed request still gets a typed [`WireError`] back.
//!
//! Signing (domain separation as in libp2p's signed envelope): the customer's Ed25519 key
//! signs `len(DOMAIN) | DOMAIN | len(type) | type | len(body) | body`, each length a u32
//! big-endian, where type names the operation (`store`, `delete`, …) and body is the postcard
//! encoding of [`Signed`] without the signature: customer key, audience (the supplier the
//! request is meant for), timestamp, nonce and the operation. The supplier checks the
//! signature before it looks at the operation, refuses requests meant for another supplier
//! (a supplier cannot replay a customer's delete on a second one), timestamps outside
//! [`MAX_SKEW_MS`] and nonces it has already seen in that window.
//!
//! Contracts: before it stores anything a customer asks a supplier for a contract
//! ([`Op::Contract`]: quota and expiry, signed by the customer); the supplier grants it by
//! signing the same terms under [`CONTRACT_DOMAIN`] with its node key. Stores are refused
//! without a live contract and past its quota.

use std::io;
use std::sync::Arc;

use async_trait::async_trait;
use dustfs_core::pool::BufPool;
use dustfs_core::shard::ShardId;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use serde::{Deserialize, Serialize};

/// libp2p protocol name.
pub const PROTOCOL: &str = "/dustfs/shard/2";
/// Current wire version (first byte of every frame body). Version 2 added the audience,
/// the operation type in the signed bytes, and contracts.
pub const WIRE_VERSION: u8 = 2;
/// Largest frame accepted in either direction: the largest shard plus headroom.
pub const MAX_FRAME: usize = 10 << 20;
/// Largest shard a supplier stores.
pub const MAX_SHARD: usize = 9 << 20;
/// Domain string of signed requests.
pub const DOMAIN: &[u8] = b"dustfs/shard-request/v2";
/// Domain string of a supplier's signature granting a contract.
pub const CONTRACT_DOMAIN: &[u8] = b"dustfs/contract-grant/v1";
/// Longest contract a supplier grants.
pub const MAX_CONTRACT_MS: u64 = 90 * 24 * 3600 * 1000;
/// How far a request's timestamp may be from the supplier's clock.
pub const MAX_SKEW_MS: u64 = 5 * 60 * 1000;

/// A state-changing operation, signed by the customer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Store a shard whose bytes travel in [`Request::Store`].
    Store {
        /// BLAKE3 of the bytes.
        shard: ShardId,
        /// Their length.
        len: u64,
    },
    /// Delete a shard.
    Delete {
        /// The shard.
        shard: ShardId,
    },
    /// List the customer's shards.
    List,
    /// Take (or renew, or with `ttl_ms` 0 release) the customer's writer lease for a device:
    /// one machine at a time may mount an identity read-write.
    Lease {
        /// The device asking (a hash of its network identity).
        device: [u8; 32],
        /// How long the lease lasts, on the supplier's clock.
        ttl_ms: u64,
    },
    /// Forget the root record with this sequence number (a snapshot pruned by retention).
    DeleteRoot {
        /// Its sequence number.
        seq: u64,
    },
    /// Ask for (or renew) a storage contract: `quota` bytes until `expires_ms` (Unix ms).
    Contract {
        /// Bytes the supplier keeps for the customer at most.
        quota: u64,
        /// When the contract ends.
        expires_ms: u64,
    },
}

impl Op {
    /// The operation's name, signed beside it.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Store { .. } => "store",
            Op::Delete { .. } => "delete",
            Op::List => "list",
            Op::Lease { .. } => "lease",
            Op::DeleteRoot { .. } => "delete-root",
            Op::Contract { .. } => "contract",
        }
    }
}

/// The signed part of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signed {
    /// The customer's public key (its identity).
    pub customer: [u8; 32],
    /// The supplier's public key (its node identity): the only supplier that accepts it.
    pub audience: [u8; 32],
    /// Milliseconds since the Unix epoch, on the customer's clock.
    pub timestamp_ms: u64,
    /// Random, never reused.
    pub nonce: [u8; 16],
    /// What to do.
    pub op: Op,
}

/// A signed operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The signed fields.
    pub signed: Signed,
    /// Ed25519 signature (64 bytes) over the domain-separated encoding of `signed`.
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

/// Requests a customer sends a supplier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Store a shard (signed).
    Store {
        /// Signed `Op::Store`.
        env: Envelope,
        /// The shard's bytes.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// Fetch a shard or a byte range of it (shard ids are unguessable and contents encrypted,
    /// so fetches need no signature).
    Fetch {
        /// The customer whose shard it is.
        customer: [u8; 32],
        /// The shard.
        shard: ShardId,
        /// Optional byte range [start, end).
        range: Option<(u64, u64)>,
    },
    /// Delete a shard (signed).
    Delete(Envelope),
    /// List the customer's shards (signed).
    List(Envelope),
    /// How much the supplier holds for a customer and what it grants.
    Usage {
        /// The customer.
        customer: [u8; 32],
    },
    /// Prove possession: a verified slice of a shard (see `dustfs_core::audit`).
    Audit {
        /// The customer whose shard it is.
        customer: [u8; 32],
        /// The shard.
        shard: ShardId,
        /// Slice start.
        start: u64,
        /// Slice length (at most 1 MiB).
        len: u64,
    },
    /// Keep a root record (see `dustfs_core::root`). It carries the user's own signature, which
    /// the supplier checks; replaying an old one only re-files a record the customer will rank
    /// below its newer ones.
    PutRoot {
        /// The customer (must be the record's user).
        customer: [u8; 32],
        /// The signed root record.
        #[serde(with = "serde_bytes")]
        record: Vec<u8>,
    },
    /// The root records kept for a customer (sealed manifests: nothing secret).
    GetRoots {
        /// The customer.
        customer: [u8; 32],
    },
    /// The writer lease (signed `Op::Lease`).
    Lease(Envelope),
    /// Forget a root record (signed `Op::DeleteRoot`).
    DeleteRoot(Envelope),
    /// Ask for a storage contract (signed `Op::Contract`).
    Contract(Envelope),
}

/// Typed refusals, stable on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The request could not be decoded.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// A frame or shard over the size limit.
    #[error("too large")]
    TooLarge,
    /// Unknown wire version.
    #[error("unsupported wire version {0}")]
    Version(u8),
    /// The signature does not verify.
    #[error("bad signature")]
    BadSignature,
    /// The timestamp is outside the accepted window.
    #[error("timestamp outside the accepted window")]
    Expired,
    /// The nonce was already used.
    #[error("replayed request")]
    Replay,
    /// The customer's quota is exhausted.
    #[error("over quota")]
    Quota,
    /// The shard's bytes do not hash to its id.
    #[error("shard bytes do not match the id")]
    HashMismatch,
    /// No such shard for this customer.
    #[error("shard not found")]
    NotFound,
    /// The supplier failed to do the work (disk error).
    #[error("supplier error: {0}")]
    Internal(String),
    /// The request was signed for another supplier.
    #[error("request meant for another supplier")]
    WrongAudience,
    /// No live storage contract with this customer.
    #[error("no storage contract")]
    NoContract,
    /// The supplier's disk is (nearly) full: it takes no more shards from anyone.
    #[error("supplier disk full")]
    Full,
    /// Too many requests from this peer: slow down and retry.
    #[error("too many requests; retry later")]
    Busy,
}

/// Responses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The shard is durable on the supplier's disk.
    Stored,
    /// Shard bytes.
    Shard(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Deleted (or was not there).
    Deleted,
    /// The customer's shard ids.
    List(Vec<ShardId>),
    /// Bytes used and granted for the customer.
    Usage {
        /// bytes stored
        used: u64,
        /// bytes granted
        quota: u64,
    },
    /// Refused.
    Error(WireError),
    /// A verified slice answering an audit.
    Proof(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The root record is kept.
    RootKept,
    /// Signed root records, oldest first.
    Roots(Vec<serde_bytes::ByteBuf>),
    /// The lease is this device's (until released or `ttl_ms` passes).
    LeaseGranted,
    /// Another device holds the lease.
    LeaseHeld {
        /// The holder.
        device: [u8; 32],
        /// Milliseconds until it expires unless renewed.
        remaining_ms: u64,
    },
    /// The contract asked for is granted: the supplier's signature over its terms (see
    /// [`Envelope::grant_bytes`]).
    ContractGranted(#[serde(with = "serde_bytes")] Vec<u8>),
}

/// `len(domain) | domain | len(kind) | kind | len(body) | body`, lengths u32 big-endian.
fn signing_bytes(domain: &[u8], s: &Signed) -> Vec<u8> {
    let body = postcard::to_allocvec(s).unwrap_or_default();
    let kind = s.op.kind().as_bytes();
    let mut out = Vec::with_capacity(12 + domain.len() + kind.len() + body.len());
    for part in [domain, kind, &body] {
        out.extend_from_slice(&(part.len() as u32).to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}

fn verify_with(key: &[u8; 32], msg: &[u8], sig: &[u8]) -> Result<(), WireError> {
    let key = VerifyingKey::from_bytes(key).map_err(|_| WireError::BadSignature)?;
    let sig: [u8; 64] = sig.try_into().map_err(|_| WireError::BadSignature)?;
    key.verify_strict(msg, &Signature::from_bytes(&sig))
        .map_err(|_| WireError::BadSignature)
}

/// The Ed25519 public key inside a peer id (dustfs node ids are Ed25519, inlined in the id):
/// the audience customers sign requests for, and the key a contract grant verifies with.
pub fn peer_key(p: &libp2p::PeerId) -> Option<[u8; 32]> {
    let mh = p.as_ref();
    if mh.code() != 0 {
        return None;
    }
    libp2p::identity::PublicKey::try_decode_protobuf(mh.digest())
        .ok()?
        .try_into_ed25519()
        .ok()
        .map(|k| k.to_bytes())
}

/// The node key as an Ed25519 signing key (suppliers sign contract grants with it).
pub fn signing_key_of(k: &libp2p::identity::Keypair) -> Option<SigningKey> {
    let ed = k.clone().try_into_ed25519().ok()?;
    let bytes = ed.to_bytes();
    let secret: [u8; 32] = bytes[..32].try_into().ok()?;
    Some(SigningKey::from_bytes(&secret))
}

/// An Ed25519 signing key from 32 secret bytes (tests and fuzz targets).
pub fn signing_key_from_seed(seed: &[u8; 32]) -> SigningKey {
    SigningKey::from_bytes(seed)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Envelope {
    /// Signs an operation for the supplier `audience` now, with a fresh nonce.
    pub fn sign(key: &SigningKey, audience: [u8; 32], op: Op) -> Self {
        let mut nonce = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
        Self::sign_with(key, audience, op, now_ms(), nonce)
    }

    /// Signs with a given time and nonce (tests use this to make replays and stale requests).
    pub fn sign_with(
        key: &SigningKey,
        audience: [u8; 32],
        op: Op,
        timestamp_ms: u64,
        nonce: [u8; 16],
    ) -> Self {
        let signed = Signed {
            customer: key.verifying_key().to_bytes(),
            audience,
            timestamp_ms,
            nonce,
            op,
        };
        let signature = key
            .sign(&signing_bytes(DOMAIN, &signed))
            .to_bytes()
            .to_vec();
        Self { signed, signature }
    }

    /// Checks the customer's signature (not audience, time or nonce; the supplier does those).
    pub fn verify(&self) -> Result<(), WireError> {
        verify_with(
            &self.signed.customer,
            &signing_bytes(DOMAIN, &self.signed),
            &self.signature,
        )
    }

    /// What a supplier signs to grant the contract this envelope asks for: the same signed
    /// fields under [`CONTRACT_DOMAIN`].
    pub fn grant_bytes(&self) -> Vec<u8> {
        signing_bytes(CONTRACT_DOMAIN, &self.signed)
    }

    /// Checks a supplier's grant of this contract request against the audience's key.
    pub fn verify_grant(&self, grant: &[u8]) -> Result<(), WireError> {
        verify_with(&self.signed.audience, &self.grant_bytes(), grant)
    }
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = vec![WIRE_VERSION];
    match postcard::to_extend(v, out) {
        Ok(o) => {
            out = o;
            out
        }
        Err(e) => unreachable!("postcard encoding into a Vec failed: {e}"),
    }
}

fn decode<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, WireError> {
    match b.first() {
        Some(&WIRE_VERSION) => {
            postcard::from_bytes(&b[1..]).map_err(|e| WireError::Malformed(e.to_string()))
        }
        Some(v) => Err(WireError::Version(*v)),
        None => Err(WireError::Malformed("empty frame".into())),
    }
}

/// Encodes a request frame body.
pub fn encode_request(r: &Request) -> Vec<u8> {
    encode(r)
}

/// Decodes a request frame body.
pub fn decode_request(b: &[u8]) -> Result<Request, WireError> {
    decode(b)
}

/// Encodes a response frame body.
pub fn encode_response(r: &Response) -> Vec<u8> {
    encode(r)
}

/// Decodes a response frame body.
pub fn decode_response(b: &[u8]) -> Result<Response, WireError> {
    decode(b)
}

/// The start of every [`Response::Shard`] frame: the version and the variant's tag.
static SHARD_TAG: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
    let mut empty = encode(&Response::Shard(Vec::new()));
    empty.pop(); // the empty byte string's length
    empty
});

/// The head of a [`Response::Shard`] frame for `len` bytes, with room for them: with exactly
/// `len` bytes appended it is `encode_response(&Response::Shard(bytes))` (proptest). A
/// supplier reads a shard's file straight into its answer so, instead of into a buffer of its
/// own that encoding then copies (the copy and the new buffer's page faults were 4% of the
/// machine's CPU in a profile of a cold 512 MiB read, issue 8 note).
pub fn shard_frame_head(len: usize) -> Vec<u8> {
    shard_frame_head_in(Vec::with_capacity(SHARD_TAG.len() + 10 + len), len)
}

/// [`shard_frame_head`] appended to `out`, without room for the bytes.
pub fn shard_frame_head_in(mut out: Vec<u8>, len: usize) -> Vec<u8> {
    out.extend_from_slice(&SHARD_TAG);
    match postcard::to_extend(&len, out) {
        Ok(o) => o,
        Err(e) => unreachable!("postcard encoding into a Vec failed: {e}"),
    }
}

/// [`encode_request`] of a [`Request::Store`] from borrowed parts: the shard's bytes are
/// copied once, into a frame allocated at its final size, instead of into the request's own
/// vector and again into the frame (the profile of a 512 MiB write, issue 8 note, had these
/// two copies at 1.8% of the machine's CPU). The same bytes as `encode_request` (proptest).
pub fn encode_store(env: &Envelope, data: &[u8]) -> Vec<u8> {
    /// `Request::Store` with borrowed fields: serialised as the same variant of the same enum.
    #[derive(Serialize)]
    enum StoreRef<'a> {
        Store {
            env: &'a Envelope,
            #[serde(with = "serde_bytes")]
            data: &'a [u8],
        },
    }
    // Version, variant, the envelope (far below 512 bytes), the length's varint, the bytes.
    let mut out = Vec::with_capacity(data.len() + 512);
    out.push(WIRE_VERSION);
    match postcard::to_extend(&StoreRef::Store { env, data }, out) {
        Ok(o) => o,
        Err(e) => unreachable!("postcard encoding into a Vec failed: {e}"),
    }
}

/// A request frame on its way out: its bytes, or a head followed by a shared body. On the wire
/// both are the same length-prefixed frame (`head` then `body`). A store request's shard is
/// the body: it goes from the uploader's buffer to the stream without being copied into a
/// frame first (`scripts/profile.sh write`: `encode_store`'s copy of every shard was 1.3% of
/// all CPU samples of a 256 MiB copy, `CALLGRAPH=dwarf`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frame {
    head: Vec<u8>,
    /// Bytes at the start of `head` that are not part of the frame: a supplier reads a shard
    /// with `O_DIRECT` to an aligned place in its answer's buffer ([`Frame::answer`]).
    skip: usize,
    body: Option<Arc<Vec<u8>>>,
    /// `head` goes back to [`ANSWER_POOL`] when the frame is dropped (once it is sent).
    recycle: bool,
}

impl Drop for Frame {
    fn drop(&mut self) {
        if self.recycle {
            ANSWER_POOL.put(std::mem::take(&mut self.head));
        }
    }
}

impl Frame {
    /// A frame of the bytes of `buf` past its first `skip` (none if `skip` is past its end);
    /// `buf` came from [`ANSWER_POOL`] and goes back to it once the frame is dropped.
    pub(crate) fn answer(buf: Vec<u8>, skip: usize) -> Self {
        Self {
            skip: skip.min(buf.len()),
            head: buf,
            body: None,
            recycle: true,
        }
    }

    /// The frame's bytes before its body.
    fn head(&self) -> &[u8] {
        self.head.get(self.skip..).unwrap_or_default()
    }

    /// The frame's length in bytes.
    pub fn len(&self) -> usize {
        self.head().len() + self.body.as_ref().map_or(0, |b| b.len())
    }

    /// Whether the frame is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `f` of the bytes of a frame read from a stream, in place; then the frame's buffer goes
    /// back to the request frames' pool ([`FRAME_POOL`]) for the next one.
    pub fn handle_received<R>(mut self, f: impl FnOnce(&[u8]) -> R) -> R {
        let r = match &self.body {
            None => f(self.head()),
            // Frames read from a stream have no body of their own; built ones may.
            Some(_) => f(&self.clone().into_vec()),
        };
        if !self.recycle {
            FRAME_POOL.put(std::mem::take(&mut self.head));
        }
        r
    }

    /// The frame's bytes in one buffer (a received frame is one already: no copy).
    pub fn into_vec(mut self) -> Vec<u8> {
        self.recycle = false;
        let mut head = std::mem::take(&mut self.head);
        head.drain(..self.skip);
        if let Some(b) = self.body.take() {
            head.extend_from_slice(&b);
        }
        head
    }
}

impl From<Vec<u8>> for Frame {
    fn from(head: Vec<u8>) -> Self {
        Self {
            head,
            skip: 0,
            body: None,
            recycle: false,
        }
    }
}

/// [`encode_store`] as a [`Frame`] whose body is `data` itself, shared rather than copied.
pub fn store_frame(env: &Envelope, data: Arc<Vec<u8>>) -> Frame {
    // The encoding of the same request with no bytes ends in their length, a one-byte varint
    // 0; put the real length's varint in its place and the bytes after it.
    let mut head = encode_store(env, &[]);
    head.pop();
    let head = match postcard::to_extend(&data.len(), head) {
        Ok(h) => h,
        Err(e) => unreachable!("postcard encoding into a Vec failed: {e}"),
    };
    Frame {
        head,
        skip: 0,
        body: Some(data),
        recycle: false,
    }
}

/// A [`Request::Store`] frame read in place: its envelope and the shard's bytes, borrowed from
/// the frame instead of copied out of it (the supplier side of [`encode_store`]). `None` for
/// any other frame, which [`decode_request`] then decodes; for a frame both accept they agree
/// (proptest and the `wire_decode` fuzz target).
pub fn decode_store(frame: &[u8]) -> Option<(Envelope, &[u8])> {
    // The version, the variant's index (a varint, which may be written in more bytes than
    // needed: postcard reads it the same way here), the envelope, the length-prefixed bytes.
    let rest = frame.strip_prefix(&[WIRE_VERSION])?;
    let (0, rest) = postcard::take_from_bytes::<u32>(rest).ok()? else {
        return None;
    };
    let (env, rest) = postcard::take_from_bytes::<Envelope>(rest).ok()?;
    let (data, _) = postcard::take_from_bytes::<&[u8]>(rest).ok()?;
    Some((env, data))
}

/// [`decode_response`] of a frame the caller hands over: a shard's bytes (the bulk of every
/// read) stay in the frame's buffer, whose prefix is cut off, instead of being copied out of
/// it. Any frame decodes to the same answer as with [`decode_response`] (fuzzed).
pub fn decode_response_owned(mut frame: Vec<u8>) -> Result<Response, WireError> {
    // A shard answer is the version, the variant's tag, then the bytes (length-prefixed);
    // postcard itself finds the bytes, and they must end the frame.
    if let Some(rest) = frame.strip_prefix(SHARD_TAG.as_slice())
        && let Ok((bytes, tail)) = postcard::take_from_bytes::<&[u8]>(rest)
        && tail.is_empty()
    {
        let start = bytes.as_ptr() as usize - frame.as_ptr() as usize;
        frame.drain(..start);
        return Ok(Response::Shard(frame));
    }
    decode_response(&frame)
}

/// [`decode_response_owned`] of a frame as [`FrameCodec`] reads it: a shard answer arrives with
/// its bytes already in a buffer of their own (the body), which becomes the answer as it is.
/// Any frame decodes to the same answer as with [`decode_response`] (proptest).
pub fn decode_response_frame(mut frame: Frame) -> Result<Response, WireError> {
    if let Some(body) = &frame.body
        && frame.head() == shard_frame_head(body.len())
    {
        let body = frame.body.take().unwrap_or_default();
        return Ok(Response::Shard(
            Arc::try_unwrap(body).unwrap_or_else(|b| b.as_ref().clone()),
        ));
    }
    decode_response_owned(frame.into_vec())
}

/// The libp2p codec: length-prefixed byte frames with a hard size limit.
#[derive(Debug, Clone, Default)]
pub struct FrameCodec;

async fn read_len<T: AsyncRead + Unpin + Send>(io: &mut T) -> io::Result<usize> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds {MAX_FRAME}"),
        ));
    }
    Ok(len)
}

/// Buffers of large request frames, handed back once the request is handled
/// ([`Frame::handle_received`]) and read over by the next one. A new `vec![0; len]` for every stored
/// shard was zeroed by `memset` and often faulted in page by page: in a profile of a 512 MiB
/// copy (`scripts/profile.sh write`) the suppliers' `memset` was 1.45% of all CPU samples,
/// `read_frame` the part of it that dustfs owns (the rest is in yamux and Noise). Frames of at
/// least 64 KiB (shards being stored) come from it; at most 4 buffers of at most 4 MiB (a 2
/// MiB shard's request is a little over 2 MiB; frames up to [`MAX_FRAME`] are still read,
/// into new buffers), 16 MiB per node. A reused buffer's old bytes are never seen: a frame is
/// handed on only once `read_exact` has filled all of it, and a failed read drops its buffer.
static FRAME_POOL: BufPool = BufPool::for_shards();

/// Buffers of suppliers' whole-shard answers (read with `O_DIRECT` into them, see
/// `supplier::shard_answer_direct`), back from each answer once it is sent: a new buffer for
/// every answer was zeroed by `calloc` or faulted in page by page (the suppliers' `memset`
/// 1.7% of a cold read's CPU samples). Bounded as [`FRAME_POOL`] is.
pub(crate) static ANSWER_POOL: BufPool = BufPool::for_shards();

/// Alignment of a stored shard's bytes in the request frame read for it: a page, what
/// `O_DIRECT` asks of a buffer on every Linux filesystem (see `supplier::write_new`).
pub(crate) const SHARD_ALIGN: usize = 4096;
/// Bytes read first of a large request frame, to find where a store's shard starts (its
/// envelope is far below this).
const REQUEST_PREFIX: usize = 1024;

/// Where the shard's bytes start in a store request frame that begins with `prefix`: after the
/// version, the variant, the envelope and the bytes' length (as [`decode_store`] reads them).
/// `None` for any other frame, or a prefix too short to tell.
fn store_bytes_at(prefix: &[u8]) -> Option<usize> {
    let rest = prefix.strip_prefix(&[WIRE_VERSION])?;
    let (0, rest) = postcard::take_from_bytes::<u32>(rest).ok()? else {
        return None;
    };
    let (_, rest) = postcard::take_from_bytes::<Envelope>(rest).ok()?;
    let (_, rest) = postcard::take_from_bytes::<usize>(rest).ok()?;
    Some(prefix.len() - rest.len())
}

async fn read_request_frame<T: AsyncRead + Unpin + Send>(io: &mut T) -> io::Result<Frame> {
    read_request_frame_in(io, &FRAME_POOL).await
}

/// Reads a request frame; a large one over a buffer from `pool`, placed so that a store's
/// shard starts on a page boundary: the supplier writes it to disk with `O_DIRECT` straight
/// from the frame, where it copied every shard into an aligned buffer first (`write_direct`'s
/// `copy_from_slice`, 0.9% of all CPU samples of a 256 MiB copy with `CALLGRAPH=dwarf
/// scripts/profile.sh write`). The frame's first [`REQUEST_PREFIX`] bytes are read first to
/// find where the shard starts; the padding before the frame is its `skip`.
async fn read_request_frame_in<T: AsyncRead + Unpin + Send>(
    io: &mut T,
    pool: &BufPool,
) -> io::Result<Frame> {
    let len = read_len(io).await?;
    if len < POOLED_FRAME_MIN {
        let mut buf = vec![0u8; len];
        io.read_exact(&mut buf).await?;
        return Ok(Frame::from(buf));
    }
    let mut prefix = [0u8; REQUEST_PREFIX];
    io.read_exact(&mut prefix).await?;
    let at = store_bytes_at(&prefix).unwrap_or(0);
    let (mut buf, pad) = pool.take_aligned(len, at, SHARD_ALIGN);
    let (first, rest) = buf[pad..].split_at_mut(REQUEST_PREFIX);
    first.copy_from_slice(&prefix);
    io.read_exact(rest).await?;
    Ok(Frame {
        head: buf,
        skip: pad,
        body: None,
        recycle: false,
    })
}

/// Request frames below this many bytes are read into new buffers, larger ones (stores) over
/// [`FRAME_POOL`]'s.
const POOLED_FRAME_MIN: usize = dustfs_core::pool::SHARD_BUF_MIN;

/// Reads a response frame. A shard answer (the bulk of every read) is read as its head and,
/// into a buffer of its own, the shard's bytes: cutting the head off a whole frame afterwards
/// moved every byte of every shard fetched (`__memmove` under `decode_response_owned`, 1.1%
/// of a cold read's CPU samples with `CALLGRAPH=dwarf scripts/profile.sh read`). Any other
/// frame is read whole. Public for the `wire_response` fuzz target.
pub async fn read_response_frame<T: AsyncRead + Unpin + Send>(io: &mut T) -> io::Result<Frame> {
    let len = read_len(io).await?;
    let tag = SHARD_TAG.len();
    let mut head = vec![0u8; tag.min(len)];
    io.read_exact(&mut head).await?;
    if head == *SHARD_TAG {
        // The bytes' length: a varint, at most 10 bytes, read one byte at a time.
        let mut byte = [0u8; 1];
        while head.len() < len && head.len() - tag < 10 {
            io.read_exact(&mut byte).await?;
            head.push(byte[0]);
            if byte[0] & 0x80 == 0 {
                break;
            }
        }
        let rest = len - head.len();
        if head == shard_frame_head(rest) {
            // Over a buffer a block let go of (`pool::FETCHED`): read over, not zeroed first.
            let mut body = dustfs_core::pool::FETCHED.take(rest);
            io.read_exact(&mut body).await?;
            return Ok(Frame {
                head,
                skip: 0,
                body: Some(Arc::new(body)),
                recycle: false,
            });
        }
    }
    let have = head.len();
    head.resize(len, 0);
    io.read_exact(&mut head[have..]).await?;
    Ok(Frame::from(head))
}

async fn write_frame<T: AsyncWrite + Unpin + Send>(
    io: &mut T,
    head: &[u8],
    body: &[u8],
) -> io::Result<()> {
    let len = head.len() + body.len();
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "frame too large",
        ));
    }
    io.write_all(&(len as u32).to_be_bytes()).await?;
    io.write_all(head).await?;
    io.write_all(body).await?;
    io.close().await
}

#[async_trait]
impl libp2p::request_response::Codec for FrameCodec {
    type Protocol = libp2p::StreamProtocol;
    type Request = Frame;
    type Response = Frame;

    async fn read_request<T>(&mut self, _: &Self::Protocol, io: &mut T) -> io::Result<Frame>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_request_frame(io).await
    }

    async fn read_response<T>(&mut self, _: &Self::Protocol, io: &mut T) -> io::Result<Frame>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_response_frame(io).await
    }

    async fn write_request<T>(
        &mut self,
        _: &Self::Protocol,
        io: &mut T,
        req: Frame,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(
            io,
            req.head(),
            req.body.as_deref().map_or(&[], Vec::as_slice),
        )
        .await
    }

    async fn write_response<T>(
        &mut self,
        _: &Self::Protocol,
        io: &mut T,
        res: Frame,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(
            io,
            res.head(),
            res.body.as_deref().map_or(&[], Vec::as_slice),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[5; 32])
    }

    /// [`read_request_frame_in`] of `frame` sent with its length.
    fn read_request(frame: &[u8], pool: &BufPool) -> io::Result<Frame> {
        let mut wire = (frame.len() as u32).to_be_bytes().to_vec();
        wire.extend_from_slice(frame);
        futures::executor::block_on(read_request_frame_in(
            &mut futures::io::Cursor::new(wire),
            pool,
        ))
    }

    #[test]
    fn a_frame_read_over_a_reused_buffer_holds_exactly_its_own_bytes() {
        // A pool of this test's own: the nodes of other tests share the process's.
        let pool = BufPool::for_shards();
        let read = |frame: &[u8]| read_request(frame, &pool);
        // A buffer left over from an earlier request, full of its bytes, is the one reused.
        let old = vec![0xAA; 3 << 20];
        let at = old.as_ptr();
        pool.put(old);
        let frame = vec![1u8; 100 << 10];
        let mut got = read(&frame).unwrap();
        assert_eq!(got.head.as_ptr(), at, "the pooled buffer was not reused");
        assert!(got.head() == frame, "stale bytes in a shorter frame");
        pool.put(std::mem::take(&mut got.head));
        // Grown again past its old length (within its capacity, with room for the alignment
        // padding): the bytes between are this frame's too.
        let frame = vec![2u8; 2 << 20];
        let mut got = read(&frame).unwrap();
        assert_eq!(got.head.as_ptr(), at);
        assert!(got.head() == frame, "stale bytes in a longer frame");
        assert_eq!(got.len(), frame.len());
        pool.put(std::mem::take(&mut got.head));
        // A stream that ends early is an error, and its buffer is not handed on nor kept.
        let mut wire = (1u32 << 20).to_be_bytes().to_vec();
        wire.extend_from_slice(&[7; 2000]);
        assert!(
            futures::executor::block_on(read_request_frame_in(
                &mut futures::io::Cursor::new(wire),
                &pool
            ))
            .is_err()
        );
        assert!(pool.is_empty());
        // Small frames bypass the pool; it keeps a bounded number of bounded buffers.
        assert!(read(&[5; 100]).unwrap().head() == [5; 100]);
        for _ in 0..10 {
            pool.put(vec![0; 1 << 20]);
        }
        pool.put(vec![0; 8 << 20]);
        pool.put(vec![0; 100]);
        assert_eq!(pool.len(), 4);
    }

    #[test]
    fn a_store_frame_is_read_with_its_shard_on_a_page_boundary() {
        let pool = BufPool::for_shards();
        let k = key();
        // Dirty pooled buffers at whatever alignment the allocator gives, twice over.
        pool.put(vec![0xAA; (2 << 20) + 7]);
        for round in 0..2 {
            for len in [(64 << 10) - 600, 100_001, 2 << 20, (2 << 20) + 5, 3 << 20] {
                let data: Vec<u8> = (0..len).map(|i| (i * 7 + round) as u8).collect();
                let op = Op::Store {
                    shard: ShardId::of(&data),
                    len: len as u64,
                };
                let env = Envelope::sign(&k, [9; 32], op);
                let frame = encode_store(&env, &data);
                let got = read_request(&frame, &pool).unwrap();
                assert!(got.head() == frame, "{len} bytes: not the frame sent");
                let (env2, shard) = decode_store(got.head()).unwrap();
                assert_eq!(env2, env);
                assert!(shard == data, "{len} bytes: not the shard sent");
                if frame.len() >= POOLED_FRAME_MIN {
                    assert_eq!(
                        shard.as_ptr() as usize % SHARD_ALIGN,
                        0,
                        "{len} bytes: shard not page-aligned"
                    );
                }
                // Handled in place, then its buffer back to the (process's) pool.
                assert!(got.handle_received(|b| b == frame));
            }
        }
        // Any other large frame is read whole too.
        let other = vec![3u8; 200 << 10];
        assert!(read_request(&other, &pool).unwrap().head() == other);
        // A store head cut short (or not a store) is no alignment, not an error.
        assert_eq!(store_bytes_at(&[WIRE_VERSION, 0, 1]), None);
    }

    /// A frame as the codec reads it from a stream (its length first).
    fn read_back(frame: &[u8]) -> io::Result<Frame> {
        let mut wire = (frame.len() as u32).to_be_bytes().to_vec();
        wire.extend_from_slice(frame);
        futures::executor::block_on(read_response_frame(&mut futures::io::Cursor::new(wire)))
    }

    proptest! {
        #[test]
        fn any_response_frame_read_by_the_codec_decodes_as_a_whole_frame_does(
            frame in prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..64),
                // Shard answers, well-formed or cut short or with bytes after them.
                (proptest::collection::vec(any::<u8>(), 0..300), -3i64..3).prop_map(|(d, cut)| {
                    let mut f = shard_frame_head(d.len());
                    f.extend_from_slice(&d);
                    let n = (f.len() as i64 + cut).max(0) as usize;
                    f.resize(n, 7);
                    f
                }),
                // The shard answer's tag with arbitrary bytes after it (odd varints).
                proptest::collection::vec(any::<u8>(), 0..16).prop_map(|t| {
                    let mut f = SHARD_TAG.clone();
                    f.extend_from_slice(&t);
                    f
                }),
            ]
        ) {
            let read = read_back(&frame).unwrap();
            prop_assert_eq!(read.len(), frame.len());
            prop_assert_eq!(read.clone().into_vec(), frame.clone());
            prop_assert_eq!(decode_response_frame(read), decode_response(&frame));
        }

        #[test]
        fn a_shard_frame_built_in_place_is_the_encoded_answer(
            data in proptest::collection::vec(any::<u8>(), 0..70_000)
        ) {
            let mut frame = shard_frame_head(data.len());
            frame.extend_from_slice(&data);
            prop_assert_eq!(&frame, &encode_response(&Response::Shard(data.clone())));
            let read = read_back(&frame).unwrap();
            prop_assert!(read.body.is_some(), "a shard answer's bytes are read apart");
            prop_assert_eq!(decode_response_frame(read).unwrap(), Response::Shard(data.clone()));
            prop_assert_eq!(decode_response_owned(frame).unwrap(), Response::Shard(data));
        }
    }

    const AUD: [u8; 32] = [3; 32];

    #[test]
    fn signed_requests_verify_and_forgeries_do_not() {
        let env = Envelope::sign(
            &key(),
            AUD,
            Op::Delete {
                shard: ShardId([1; 32]),
            },
        );
        env.verify().unwrap();
        let mut other = env.clone();
        other.signed.op = Op::Delete {
            shard: ShardId([2; 32]),
        };
        assert_eq!(other.verify(), Err(WireError::BadSignature));
        let mut stolen = env.clone();
        stolen.signed.customer = SigningKey::from_bytes(&[6; 32]).verifying_key().to_bytes();
        assert_eq!(stolen.verify(), Err(WireError::BadSignature));
        let mut redirected = env.clone();
        redirected.signed.audience = [4; 32];
        assert_eq!(redirected.verify(), Err(WireError::BadSignature));
        let mut short = env;
        short.signature.pop();
        assert_eq!(short.verify(), Err(WireError::BadSignature));
    }

    #[test]
    fn a_contract_grant_verifies_only_with_the_suppliers_key_and_terms() {
        let supplier = SigningKey::from_bytes(&[7; 32]);
        let env = Envelope::sign(
            &key(),
            supplier.verifying_key().to_bytes(),
            Op::Contract {
                quota: 1 << 30,
                expires_ms: 1,
            },
        );
        let grant = supplier.sign(&env.grant_bytes()).to_bytes().to_vec();
        env.verify_grant(&grant).unwrap();
        // The customer's own signature is not a grant (other domain).
        assert_eq!(
            env.verify_grant(&env.signature),
            Err(WireError::BadSignature)
        );
        let mut bigger = env.clone();
        bigger.signed.op = Op::Contract {
            quota: 1 << 40,
            expires_ms: 1,
        };
        assert_eq!(bigger.verify_grant(&grant), Err(WireError::BadSignature));
        let other = SigningKey::from_bytes(&[8; 32]);
        let fake = other.sign(&env.grant_bytes()).to_bytes().to_vec();
        assert_eq!(env.verify_grant(&fake), Err(WireError::BadSignature));
    }

    #[test]
    fn peer_ids_carry_the_key_requests_are_addressed_to() {
        let kp = libp2p::identity::Keypair::generate_ed25519();
        let signer = signing_key_of(&kp).unwrap();
        assert_eq!(
            peer_key(&kp.public().to_peer_id()),
            Some(signer.verifying_key().to_bytes())
        );
    }

    #[test]
    fn unknown_versions_and_garbage_get_typed_errors() {
        let mut b = encode_request(&Request::Usage { customer: [0; 32] });
        b[0] = 9;
        assert_eq!(decode_request(&b), Err(WireError::Version(9)));
        assert!(matches!(
            decode_request(&[WIRE_VERSION, 200, 3]),
            Err(WireError::Malformed(_))
        ));
        // A version-1 frame (before audiences and contracts) is refused as such.
        assert_eq!(decode_request(&[1, 0]), Err(WireError::Version(1)));
        assert!(matches!(decode_request(&[]), Err(WireError::Malformed(_))));
    }

    proptest! {
        #[test]
        fn requests_round_trip(data in proptest::collection::vec(any::<u8>(), 0..256), seed in any::<[u8; 32]>()) {
            let k = SigningKey::from_bytes(&seed);
            let env = Envelope::sign(&k, AUD, Op::Store { shard: ShardId(*blake3::hash(&data).as_bytes()), len: data.len() as u64 });
            let frame = encode_store(&env, &data);
            prop_assert_eq!(&frame, &encode_request(&Request::Store { env: env.clone(), data: data.clone() }));
            let shared = store_frame(&env, Arc::new(data.clone()));
            prop_assert_eq!(shared.len(), frame.len());
            prop_assert_eq!(&shared.into_vec(), &frame);
            prop_assert_eq!(decode_store(&frame), Some((env.clone(), &data[..])));
            let r = Request::Store { env, data };
            prop_assert_eq!(decode_request(&frame).unwrap(), r);
        }

        #[test]
        fn every_request_and_response_kind_round_trips(
            seed in any::<[u8; 32]>(), n in any::<u64>(), id in any::<[u8; 32]>(),
            bytes in proptest::collection::vec(any::<u8>(), 0..128),
        ) {
            let k = SigningKey::from_bytes(&seed);
            let ops = [
                Op::Delete { shard: ShardId(id) },
                Op::List,
                Op::Lease { device: id, ttl_ms: n },
                Op::DeleteRoot { seq: n },
                Op::Contract { quota: n, expires_ms: n / 2 },
            ];
            for op in ops {
                let env = Envelope::sign(&k, id, op);
                prop_assert!(env.verify().is_ok());
                for r in [
                    Request::Delete(env.clone()),
                    Request::List(env.clone()),
                    Request::Lease(env.clone()),
                    Request::DeleteRoot(env.clone()),
                    Request::Contract(env.clone()),
                ] {
                    let frame = encode_request(&r);
                    prop_assert!(decode_store(&frame).is_none());
                    prop_assert_eq!(decode_request(&frame).unwrap(), r);
                }
            }
            for r in [
                Request::Fetch { customer: id, shard: ShardId(id), range: Some((n, n)) },
                Request::Usage { customer: id },
                Request::Audit { customer: id, shard: ShardId(id), start: n, len: n },
                Request::PutRoot { customer: id, record: bytes.clone() },
                Request::GetRoots { customer: id },
            ] {
                prop_assert_eq!(decode_request(&encode_request(&r)).unwrap(), r);
            }
            for r in [
                Response::Stored,
                Response::Shard(bytes.clone()),
                Response::Deleted,
                Response::List(vec![ShardId(id)]),
                Response::Usage { used: n, quota: n },
                Response::Error(WireError::Malformed(format!("{n}"))),
                Response::Error(WireError::Busy),
                Response::Proof(bytes.clone()),
                Response::RootKept,
                Response::Roots(vec![serde_bytes::ByteBuf::from(bytes.clone())]),
                Response::LeaseGranted,
                Response::LeaseHeld { device: id, remaining_ms: n },
                Response::ContractGranted(bytes.clone()),
            ] {
                prop_assert_eq!(decode_response(&encode_response(&r)).unwrap(), r.clone());
                prop_assert_eq!(decode_response_owned(encode_response(&r)).unwrap(), r);
            }
        }

        #[test]
        fn garbage_never_panics(b in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_request(&b);
            prop_assert_eq!(decode_response_owned(b.clone()), decode_response(&b));
        }

        #[test]
        fn shard_answers_decode_alike_either_way(bytes in proptest::collection::vec(any::<u8>(), 0..70_000), tail in proptest::collection::vec(any::<u8>(), 0..3)) {
            let mut frame = encode_response(&Response::Shard(bytes));
            frame.extend_from_slice(&tail);
            prop_assert_eq!(decode_response_owned(frame.clone()), decode_response(&frame));
        }
    }
}
