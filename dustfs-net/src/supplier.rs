//! The supplier side: a shard store on local disk, indexed per customer, bounded by the quota
//! granted to each customer, answering the shard protocol.
//!
//! Layout: `ROOT/<customer hex>/<shard hex>`; writes go to `ROOT/tmp/`, are fsync'd, renamed
//! into place and the directory fsync'd before the request is acknowledged (as Garage writes
//! its block files), so an acknowledged shard survives a crash of the supplier. Root records
//! live in `ROOT/roots/<customer hex>/<seq>`, contracts in `ROOT/contracts/<customer hex>`
//! (the customer's signed request and this supplier's grant).

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use dustfs_core::shard::ShardId;
use ed25519_dalek::{Signer, SigningKey};
use tracing::{debug, warn};

use crate::protocol::{
    self, Envelope, Frame, MAX_CONTRACT_MS, MAX_SHARD, MAX_SKEW_MS, Op, Request, Response,
    WireError,
};

/// Customers with a contract at most (one contract each).
const MAX_CONTRACTS: usize = 100_000;

/// Directories under the store's root that are not customers' shard directories.
const NOT_CUSTOMERS: [&str; 3] = ["tmp", "roots", "contracts"];

/// Writer leases kept at most (expired ones are dropped first).
const MAX_LEASES: usize = 100_000;

/// Root records kept per customer at most (the oldest go first).
const MAX_ROOTS: usize = 256;

/// Replay-cache entries kept at most; past that, new signed requests are refused as expired
/// until old ones age out (bounded memory under a flood).
const MAX_NONCES: usize = 1_000_000;

/// A supplier's shard store.
pub struct ShardDir {
    root: PathBuf,
    quota: u64,
    /// The node's key: requests must name its public half as their audience, and it signs
    /// contract grants.
    key: SigningKey,
    me: [u8; 32],
    fault: Fault,
    state: Mutex<DirState>,
}

/// How a supplier behaves. Everything but [`Fault::Honest`] exists for the adversarial tests:
/// customers must detect such suppliers and route around them, so the tests need real nodes
/// that misbehave over the real protocol (`dustfs serve --fault …`, hidden from `--help`).
/// A faulty supplier can only harm the customers who chose it, and they check every byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fault {
    /// Keeps what it acknowledges and answers truthfully.
    #[default]
    Honest,
    /// Stores honestly but answers every fetch and audit with random bytes of the right length.
    Garbage,
    /// Acknowledges stores without keeping anything (a supplier that cheats on disk space).
    Drop,
    /// Hides newer root records: answers with only its oldest genuine one, plus a forgery
    /// that claims a higher sequence number.
    StaleRoots,
    /// Answers fetches with its shards' headers intact and a byte in every KiB of their
    /// payload flipped (bit rot it does not notice); audits are answered truthfully.
    Flip,
}

impl std::str::FromStr for Fault {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "honest" => Ok(Fault::Honest),
            "garbage" => Ok(Fault::Garbage),
            "drop" => Ok(Fault::Drop),
            "stale-roots" => Ok(Fault::StaleRoots),
            "flip" => Ok(Fault::Flip),
            other => Err(format!(
                "unknown fault {other:?} (expected honest, garbage, drop, stale-roots or flip)"
            )),
        }
    }
}

fn garbage(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut v);
    v
}

#[derive(Default)]
struct DirState {
    /// Bytes used per customer (computed from disk on first use).
    used: HashMap<[u8; 32], u64>,
    /// Writer leases: customer → (device, expiry). In memory only: after a supplier restart
    /// the holder's next renewal (every few seconds) takes it again.
    leases: HashMap<[u8; 32], ([u8; 32], std::time::Instant)>,
    seen: HashSet<[u8; 16]>,
    seen_order: VecDeque<(u64, [u8; 16])>,
    /// Contracts read from disk or granted: customer → (quota, expiry in Unix ms).
    contracts: HashMap<[u8; 32], (u64, u64)>,
}

/// Counters of what a supplier holds, for tests and status.
#[derive(Debug, Clone, Copy, Default)]
pub struct DirUsage {
    /// Shards stored.
    pub shards: u64,
    /// Bytes stored.
    pub bytes: u64,
}

impl ShardDir {
    /// Opens (creating) a store under `root` offering each customer a contract of up to
    /// `quota` bytes; `key` is the node's identity key.
    pub fn open(root: &Path, quota: u64, key: SigningKey) -> std::io::Result<Self> {
        fs::create_dir_all(root.join("tmp"))?;
        fs::create_dir_all(root.join("contracts"))?;
        // Leftovers of writes interrupted by a crash were never acknowledged.
        for e in fs::read_dir(root.join("tmp"))?.flatten() {
            let _ = fs::remove_file(e.path());
        }
        Ok(Self {
            root: root.to_path_buf(),
            quota,
            me: key.verifying_key().to_bytes(),
            key,
            fault: Fault::Honest,
            state: Mutex::new(DirState::default()),
        })
    }

    /// Makes this store misbehave (adversarial tests only; see [`Fault`]).
    pub fn with_fault(mut self, fault: Fault) -> Self {
        self.fault = fault;
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DirState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn customer_dir(&self, c: &[u8; 32]) -> PathBuf {
        self.root.join(hex::encode(c))
    }

    fn used(&self, st: &mut DirState, c: &[u8; 32]) -> u64 {
        if let Some(u) = st.used.get(c) {
            return *u;
        }
        let mut total = 0;
        if let Ok(rd) = fs::read_dir(self.customer_dir(c)) {
            for e in rd.flatten() {
                total += e.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
        st.used.insert(*c, total);
        total
    }

    /// Everything stored, over all customers.
    pub fn usage(&self) -> DirUsage {
        let mut u = DirUsage::default();
        if let Ok(rd) = fs::read_dir(&self.root) {
            for d in rd
                .flatten()
                .filter(|d| !NOT_CUSTOMERS.iter().any(|n| d.file_name() == *n))
            {
                for e in fs::read_dir(d.path()).into_iter().flatten().flatten() {
                    u.shards += 1;
                    u.bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
                }
            }
        }
        u
    }

    /// Checks signature, audience, time window and nonce of a signed request.
    fn admit(&self, env: &Envelope) -> Result<(), WireError> {
        env.verify()?;
        if env.signed.audience != self.me {
            return Err(WireError::WrongAudience);
        }
        let now = protocol::now_ms();
        let ts = env.signed.timestamp_ms;
        if ts + MAX_SKEW_MS < now || ts > now + MAX_SKEW_MS {
            return Err(WireError::Expired);
        }
        let mut st = self.lock();
        while let Some((t, n)) = st.seen_order.front().copied() {
            if t + 2 * MAX_SKEW_MS >= now {
                break;
            }
            st.seen_order.pop_front();
            st.seen.remove(&n);
        }
        if st.seen.contains(&env.signed.nonce) {
            return Err(WireError::Replay);
        }
        if st.seen.len() >= MAX_NONCES {
            return Err(WireError::Expired);
        }
        st.seen.insert(env.signed.nonce);
        st.seen_order.push_back((now, env.signed.nonce));
        Ok(())
    }

    /// Answers one request frame. Never panics on bad input; every refusal is typed.
    pub fn handle(&self, frame: &[u8]) -> Frame {
        // A store (the bulk of what a supplier receives) is read in place, its bytes not
        // copied out of the frame.
        let answer = match protocol::decode_store(frame) {
            Some((env, data)) => self
                .handle_store(env, data)
                .map(|r| protocol::encode_response(&r).into()),
            None => protocol::decode_request(frame).and_then(|req| self.handle_request(req)),
        };
        answer.unwrap_or_else(|e| {
            debug!(error = %e, "request refused");
            protocol::encode_response(&Response::Error(e)).into()
        })
    }

    fn handle_store(&self, env: Envelope, data: &[u8]) -> Result<Response, WireError> {
        let Op::Store { shard, len } = env.signed.op else {
            return Err(WireError::Malformed(
                "store request with another operation".into(),
            ));
        };
        if data.len() > MAX_SHARD {
            return Err(WireError::TooLarge);
        }
        if len != data.len() as u64 || ShardId::of(data) != shard {
            return Err(WireError::HashMismatch);
        }
        self.admit(&env)?;
        let quota = self.contract_quota(&env.signed.customer)?;
        if self.fault != Fault::Drop {
            self.store(&env.signed.customer, &shard, data, quota)?;
        }
        Ok(Response::Stored)
    }

    /// A stored shard's bytes, appended to the buffer `start` makes for its length.
    fn read_shard(
        &self,
        customer: &[u8; 32],
        shard: &ShardId,
        start: impl FnOnce(usize) -> Vec<u8>,
    ) -> Result<Vec<u8>, WireError> {
        let mut f =
            fs::File::open(self.customer_dir(customer).join(shard.to_hex())).map_err(internal)?;
        let len = f.metadata().map_err(internal)?.len();
        if len > MAX_SHARD as u64 {
            return Err(WireError::Internal(format!(
                "a stored shard of {len} bytes"
            )));
        }
        let mut out = start(len as usize);
        let head = out.len();
        // Into the buffer's spare room, without zeroing it first; one byte more than the
        // length, to notice a file that changed under us.
        (&mut f)
            .take(len + 1)
            .read_to_end(&mut out)
            .map_err(internal)?;
        if (out.len() - head) as u64 != len {
            return Err(WireError::Internal("shard file changed while read".into()));
        }
        Ok(out)
    }

    /// The encoded answer to a fetch. A whole shard (what reads ask for) goes from its file
    /// straight into the answer's frame, with `O_DIRECT` where the filesystem takes it
    /// ([`shard_answer_direct`]); a range, or a lying supplier's garbage, through a
    /// [`Response`].
    fn fetch(
        &self,
        customer: &[u8; 32],
        shard: &ShardId,
        range: Option<(u64, u64)>,
    ) -> Result<Frame, WireError> {
        if range.is_none() && !matches!(self.fault, Fault::Garbage | Fault::Flip) {
            match shard_answer_direct(&self.customer_dir(customer).join(shard.to_hex())) {
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {}
                answer => return answer.map_err(internal),
            }
            return self
                .read_shard(customer, shard, protocol::shard_frame_head)
                .map(Frame::from);
        }
        let data = self.read_shard(customer, shard, Vec::with_capacity)?;
        let data = match self.fault {
            Fault::Garbage => garbage(data.len()),
            Fault::Flip => {
                let mut data = data;
                let head = dustfs_core::shard::HEADER_LEN.min(data.len());
                for b in data[head..].iter_mut().step_by(1024) {
                    *b ^= 0x5A;
                }
                data
            }
            _ => data,
        };
        let data = match range {
            None => data,
            Some((a, b)) => {
                let (a, b) = (a as usize, (b as usize).min(data.len()));
                if a > b {
                    return Err(WireError::Malformed("empty range".into()));
                }
                data[a..b].to_vec()
            }
        };
        Ok(protocol::encode_response(&Response::Shard(data)).into())
    }

    /// The encoded answer to a request other than an in-place store.
    fn handle_request(&self, req: Request) -> Result<Frame, WireError> {
        let resp = match req {
            Request::Store { env, data } => self.handle_store(env, &data),
            Request::Fetch {
                customer,
                shard,
                range,
            } => return self.fetch(&customer, &shard, range),
            Request::Delete(env) => {
                let Op::Delete { shard } = env.signed.op else {
                    return Err(WireError::Malformed(
                        "delete request with another operation".into(),
                    ));
                };
                self.admit(&env)?;
                let path = self.customer_dir(&env.signed.customer).join(shard.to_hex());
                if let Ok(m) = fs::metadata(&path) {
                    fs::remove_file(&path).map_err(|e| WireError::Internal(e.to_string()))?;
                    let mut st = self.lock();
                    let used = self.used(&mut st, &env.signed.customer);
                    st.used
                        .insert(env.signed.customer, used.saturating_sub(m.len()));
                }
                Ok(Response::Deleted)
            }
            Request::List(env) => {
                if env.signed.op != Op::List {
                    return Err(WireError::Malformed(
                        "list request with another operation".into(),
                    ));
                }
                self.admit(&env)?;
                let mut out = Vec::new();
                for e in fs::read_dir(self.customer_dir(&env.signed.customer))
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    if let Some(id) = hex::decode(e.file_name().as_encoded_bytes())
                        .ok()
                        .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    {
                        out.push(ShardId(id));
                    }
                }
                Ok(Response::List(out))
            }
            Request::Audit {
                customer,
                shard,
                start,
                len,
            } => {
                if len > 1 << 20 {
                    return Err(WireError::TooLarge);
                }
                let path = self.customer_dir(&customer).join(shard.to_hex());
                let data = fs::read(&path).map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => WireError::NotFound,
                    _ => WireError::Internal(e.to_string()),
                })?;
                let proof = dustfs_core::audit::prove(&data, start, len);
                Ok(Response::Proof(match self.fault {
                    Fault::Garbage => garbage(proof.len()),
                    _ => proof,
                }))
            }
            Request::Lease(env) => self.lease(&env),
            Request::DeleteRoot(env) => {
                let Op::DeleteRoot { seq } = env.signed.op else {
                    return Err(WireError::Malformed(
                        "delete-root request with another operation".into(),
                    ));
                };
                self.admit(&env)?;
                let path = self
                    .roots_dir(&env.signed.customer)
                    .join(format!("{seq:020}"));
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(WireError::Internal(e.to_string())),
                }
                Ok(Response::Deleted)
            }
            Request::PutRoot { customer, record } => {
                dustfs_core::root::RootRecord::verify(&record, &customer).map_err(|e| match e {
                    dustfs_core::root::RootError::TooLarge => WireError::TooLarge,
                    dustfs_core::root::RootError::Malformed(m) => WireError::Malformed(m),
                    _ => WireError::BadSignature,
                })?;
                self.put_root(&customer, &record)?;
                Ok(Response::RootKept)
            }
            Request::GetRoots { customer } => {
                let mut roots = self.roots(&customer);
                if self.fault == Fault::StaleRoots && !roots.is_empty() {
                    roots.truncate(1);
                    let mut forged = roots[0].clone();
                    // Flip a byte inside the body: a "different" record, signature now invalid.
                    let at = forged.len() / 2;
                    forged[at] ^= 1;
                    roots.push(forged);
                }
                Ok(Response::Roots(
                    roots.into_iter().map(serde_bytes::ByteBuf::from).collect(),
                ))
            }
            Request::Usage { customer } => {
                // The contracted quota, or what a new contract would grant.
                let quota = self.contract_quota(&customer).unwrap_or(self.quota);
                let mut st = self.lock();
                Ok(Response::Usage {
                    used: self.used(&mut st, &customer),
                    quota,
                })
            }
            Request::Contract(env) => {
                let Op::Contract { quota, expires_ms } = env.signed.op else {
                    return Err(WireError::Malformed(
                        "contract request with another operation".into(),
                    ));
                };
                self.admit(&env)?;
                let now = protocol::now_ms();
                if quota > self.quota {
                    return Err(WireError::Quota);
                }
                if expires_ms <= now || expires_ms > now + MAX_CONTRACT_MS {
                    return Err(WireError::Malformed("contract term out of range".into()));
                }
                let customer = env.signed.customer;
                {
                    let mut st = self.lock();
                    if !st.contracts.contains_key(&customer) && st.contracts.len() >= MAX_CONTRACTS
                    {
                        st.contracts.retain(|_, (_, until)| *until > now);
                        if st.contracts.len() >= MAX_CONTRACTS {
                            return Err(WireError::Full);
                        }
                    }
                }
                let grant = self.key.sign(&env.grant_bytes()).to_bytes().to_vec();
                let record = postcard::to_allocvec(&(&env, &grant))
                    .map_err(|e| WireError::Internal(e.to_string()))?;
                self.write_atomic(&self.contract_path(&customer), &record)?;
                self.lock().contracts.insert(customer, (quota, expires_ms));
                Ok(Response::ContractGranted(grant))
            }
        };
        resp.map(|r| protocol::encode_response(&r).into())
    }

    /// Takes, renews or (with a zero ttl) releases a customer's writer lease for a device.
    fn lease(&self, env: &Envelope) -> Result<Response, WireError> {
        let Op::Lease { device, ttl_ms } = env.signed.op else {
            return Err(WireError::Malformed(
                "lease request with another operation".into(),
            ));
        };
        self.admit(env)?;
        let now = std::time::Instant::now();
        let mut st = self.lock();
        if let Some((holder, until)) = st.leases.get(&env.signed.customer).copied()
            && holder != device
            && until > now
        {
            return Ok(Response::LeaseHeld {
                device: holder,
                remaining_ms: (until - now).as_millis() as u64,
            });
        }
        if st.leases.len() >= MAX_LEASES {
            st.leases.retain(|_, (_, until)| *until > now);
            if st.leases.len() >= MAX_LEASES {
                return Err(WireError::Internal("too many leases".into()));
            }
        }
        if ttl_ms == 0 {
            st.leases.remove(&env.signed.customer);
        } else {
            let ttl = std::time::Duration::from_millis(ttl_ms.min(3_600_000));
            st.leases.insert(env.signed.customer, (device, now + ttl));
        }
        Ok(Response::LeaseGranted)
    }

    fn contract_path(&self, customer: &[u8; 32]) -> PathBuf {
        self.root.join("contracts").join(hex::encode(customer))
    }

    /// The quota of the customer's live contract ([`WireError::NoContract`] without one).
    /// Contracts are read from disk on first use, checked again as they were at grant time.
    fn contract_quota(&self, customer: &[u8; 32]) -> Result<u64, WireError> {
        let now = protocol::now_ms();
        if let Some((quota, until)) = self.lock().contracts.get(customer).copied() {
            return if until > now {
                Ok(quota)
            } else {
                Err(WireError::NoContract)
            };
        }
        let Ok(bytes) = fs::read(self.contract_path(customer)) else {
            return Err(WireError::NoContract);
        };
        let Ok((env, grant)) = postcard::from_bytes::<(Envelope, Vec<u8>)>(&bytes) else {
            warn!("unreadable contract file; treating the customer as without contract");
            return Err(WireError::NoContract);
        };
        let Op::Contract { quota, expires_ms } = env.signed.op else {
            return Err(WireError::NoContract);
        };
        if env.signed.customer != *customer
            || env.verify().is_err()
            || env.verify_grant(&grant).is_err()
            || env.signed.audience != self.me
        {
            warn!("contract file does not verify; treating the customer as without contract");
            return Err(WireError::NoContract);
        }
        let mut st = self.lock();
        if st.contracts.len() < MAX_CONTRACTS {
            st.contracts.insert(*customer, (quota, expires_ms));
        }
        if expires_ms > now {
            Ok(quota)
        } else {
            Err(WireError::NoContract)
        }
    }

    /// Writes a file crash-safely (temporary file, fsync, rename, directory fsync).
    fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<(), WireError> {
        let mut nonce = [0u8; 8];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
        let tmp = self.root.join("tmp").join(hex::encode(nonce));
        let r = (|| {
            let f = write_new(&tmp, bytes)?;
            f.sync_all()?;
            // Synced pages are clean: drop them from the page cache. A supplier reads a shard
            // back rarely (audits, restores), and a profile of a 512 MiB copy onto a local
            // testnet (issue 8 note) had page-cache growth as the largest cost of all: on a
            // VM, each page the host has not backed yet costs a fault when first written,
            // while pages just freed are reused cheaply. Advice only, so its errors are moot.
            let _ = rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed);
            fs::rename(&tmp, path)?;
            match path.parent() {
                Some(d) => fs::File::open(d)?.sync_all(),
                None => Ok(()),
            }
        })();
        r.map_err(|e| {
            let _ = fs::remove_file(&tmp);
            io_refusal(e)
        })
    }

    fn roots_dir(&self, customer: &[u8; 32]) -> PathBuf {
        self.root.join("roots").join(hex::encode(customer))
    }

    /// Files a verified root record under its sequence number, crash-safely, keeping the
    /// newest [`MAX_ROOTS`].
    fn put_root(&self, customer: &[u8; 32], record: &[u8]) -> Result<(), WireError> {
        let Some((seq, _)) = dustfs_core::root::RootRecord::peek_seq(record) else {
            return Err(WireError::Malformed("root record".into()));
        };
        let dir = self.roots_dir(customer);
        fs::create_dir_all(&dir).map_err(io_refusal)?;
        self.write_atomic(&dir.join(format!("{seq:020}")), record)?;
        let mut names: Vec<_> = fs::read_dir(&dir)
            .map_err(io_refusal)?
            .flatten()
            .map(|e| e.file_name())
            .collect();
        names.sort();
        if names.len() > MAX_ROOTS {
            for n in &names[..names.len() - MAX_ROOTS] {
                let _ = fs::remove_file(dir.join(n));
            }
        }
        Ok(())
    }

    /// The root records kept for a customer, oldest first.
    fn roots(&self, customer: &[u8; 32]) -> Vec<Vec<u8>> {
        let dir = self.roots_dir(customer);
        let mut names: Vec<_> = fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        names.sort();
        names
            .into_iter()
            .filter_map(|n| fs::read(dir.join(n)).ok())
            .collect()
    }

    /// Keeps a shard for a customer whose contract grants `quota` bytes.
    fn store(
        &self,
        customer: &[u8; 32],
        shard: &ShardId,
        data: &[u8],
        quota: u64,
    ) -> Result<(), WireError> {
        let dir = self.customer_dir(customer);
        let path = dir.join(shard.to_hex());
        if path.exists() {
            return Ok(());
        }
        {
            // Reserve the space first so concurrent stores cannot overshoot the quota.
            let mut st = self.lock();
            let used = self.used(&mut st, customer);
            if used + data.len() as u64 > quota {
                return Err(WireError::Quota);
            }
            st.used.insert(*customer, used + data.len() as u64);
        }
        let result = fs::create_dir_all(&dir)
            .map_err(io_refusal)
            .and_then(|()| self.write_atomic(&path, data));
        if let Err(e) = result {
            warn!(error = %e, "shard write failed");
            let mut st = self.lock();
            if let Some(u) = st.used.get_mut(customer) {
                *u = u.saturating_sub(data.len() as u64);
            }
            return Err(e);
        }
        Ok(())
    }
}

/// A disk error as a refusal: a full disk is [`WireError::Full`], the rest internal.
fn io_refusal(e: std::io::Error) -> WireError {
    match e.kind() {
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => WireError::Full,
        _ => WireError::Internal(e.to_string()),
    }
}

/// A failed read of a stored shard as the customer sees it: a missing file is
/// [`WireError::NotFound`], anything else internal.
fn internal(e: std::io::Error) -> WireError {
    match e.kind() {
        std::io::ErrorKind::NotFound => WireError::NotFound,
        _ => WireError::Internal(e.to_string()),
    }
}

/// The answer to a fetch of the whole shard at `path`: the answer's head and, behind it, the
/// shard's bytes read with `O_DIRECT` (one read of whole pages into a page-aligned place in
/// the answer's buffer, the file's end making it short). Through the page cache, the kernel
/// copied every byte served into new cache pages and again into the buffer: 0.31 CPU s per GiB
/// of cold 2 MiB shard files on this VM against 0.09 with `O_DIRECT` (200 files, alternated
/// twice), in a profile of a cold 512 MiB read (`CALLGRAPH=dwarf scripts/profile.sh read`)
/// the suppliers' `filemap_read` was 4.7% of all CPU samples. A shard just written is not in
/// the page cache anyway (its pages are dropped after the fsync, see [`write_new`]). Measured
/// against the build before, 9 alternated pairs of `scripts/profile.sh read 512` in three
/// sets: faster in 6 (the quietest set, 390-424 vs 363-409 MiB/s, 4.40-4.70 vs 4.52-5.34 CPU
/// s/GiB, every pair). EINVAL (a filesystem without `O_DIRECT`) sends the caller to the page
/// cache.
fn shard_answer_direct(path: &Path) -> std::io::Result<Frame> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
        .open(path)?;
    let len = f.metadata()?.len();
    if len > MAX_SHARD as u64 {
        return Err(std::io::Error::other(format!(
            "a stored shard of {len} bytes"
        )));
    }
    let len = len as usize;
    let head = protocol::shard_frame_head_in(Vec::new(), len);
    // Whole pages, at least one byte more than the length, to notice a file that changed.
    let want = (len + 1).next_multiple_of(DIRECT_ALIGN);
    // A reused buffer, read over (only what it lacks is zeroed), the shard's first byte on a
    // page boundary.
    let (mut buf, skip) =
        protocol::ANSWER_POOL.take_aligned(head.len() + want, head.len(), DIRECT_ALIGN);
    let at = skip + head.len();
    buf[skip..at].copy_from_slice(&head);
    let mut got = 0;
    while got < want {
        let n = (&f).read(&mut buf[at + got..at + want])?;
        got += n;
        // The end of the file (a read past it is short), or a read that left the next one
        // unaligned, which O_DIRECT would refuse: either way the length tells.
        if n == 0 || got % DIRECT_ALIGN != 0 {
            break;
        }
    }
    if got != len {
        protocol::ANSWER_POOL.put(buf);
        return Err(std::io::Error::other("shard file changed while read"));
    }
    buf.truncate(at + got);
    Ok(Frame::answer(buf, at - head.len()))
}

/// Files at least this long (shards) are written with `O_DIRECT`, see [`write_new`].
const DIRECT_MIN: usize = 256 << 10;
/// Alignment of `O_DIRECT` buffers, lengths and offsets (a page: every Linux filesystem's
/// requirement is at most this).
const DIRECT_ALIGN: usize = protocol::SHARD_ALIGN;
/// Aligned copies of shards on their way to `O_DIRECT` writes, for shards that do not start on
/// a page boundary already (a store frame read from the network does), reused (at most 4 of
/// 4 MiB).
static DIRECT_BUFS: dustfs_core::pool::BufPool = dustfs_core::pool::BufPool::for_shards();

/// Creates `path` holding `bytes` (not yet synced). A shard's bytes go to the disk with
/// `O_DIRECT` from a reused aligned buffer, all but the last partial page, which is written
/// through the page cache: a profile of a 512 MiB copy onto a local testnet had the
/// suppliers' copies into new page-cache pages (`copy_folio_from_iter_atomic`) at 10% of all
/// CPU samples, for pages that were dropped again right after the fsync. A filesystem without
/// `O_DIRECT` refuses it with EINVAL (tmpfs did before Linux 6.6); then the whole file goes
/// through the page cache.
fn write_new(path: &Path, bytes: &[u8]) -> std::io::Result<fs::File> {
    if bytes.len() >= DIRECT_MIN {
        match write_direct(path, bytes) {
            Ok(f) => return Ok(f),
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
                let _ = fs::remove_file(path);
            }
            Err(e) => return Err(e),
        }
    }
    let mut f = fs::File::create(path)?;
    f.write_all(bytes)?;
    Ok(f)
}

fn write_direct(path: &Path, bytes: &[u8]) -> std::io::Result<fs::File> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let aligned = bytes.len() / DIRECT_ALIGN * DIRECT_ALIGN;
    let direct = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
        .open(path)?;
    if (bytes.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN) {
        // Straight from the request's frame (read to put the shard on a page boundary).
        direct.write_all_at(&bytes[..aligned], 0)?;
    } else {
        let (mut buf, pad) = DIRECT_BUFS.take_aligned(aligned, 0, DIRECT_ALIGN);
        buf[pad..].copy_from_slice(&bytes[..aligned]);
        let r = direct.write_all_at(&buf[pad..], 0);
        DIRECT_BUFS.put(buf);
        r?;
    }
    drop(direct);
    // The tail (less than a page) through the page cache, on a descriptor without O_DIRECT.
    let f = fs::OpenOptions::new().write(true).open(path)?;
    f.write_all_at(&bytes[aligned..], aligned as u64)?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUPPLIER: [u8; 32] = [50; 32];

    fn open(dir: &Path, quota: u64) -> ShardDir {
        ShardDir::open(dir, quota, SigningKey::from_bytes(&SUPPLIER)).unwrap()
    }

    fn me() -> [u8; 32] {
        SigningKey::from_bytes(&SUPPLIER).verifying_key().to_bytes()
    }

    fn signed(key: &SigningKey, op: Op) -> Envelope {
        Envelope::sign(key, me(), op)
    }

    fn store_req(key: &SigningKey, data: &[u8]) -> Vec<u8> {
        let env = signed(
            key,
            Op::Store {
                shard: ShardId::of(data),
                len: data.len() as u64,
            },
        );
        protocol::encode_request(&Request::Store {
            env,
            data: data.to_vec(),
        })
    }

    fn contract(d: &ShardDir, key: &SigningKey, quota: u64) -> Response {
        contract_until(d, key, quota, protocol::now_ms() + 3_600_000)
    }

    fn contract_until(d: &ShardDir, key: &SigningKey, quota: u64, expires_ms: u64) -> Response {
        let env = signed(key, Op::Contract { quota, expires_ms });
        let r = answer(
            d,
            &protocol::encode_request(&Request::Contract(env.clone())),
        );
        if let Response::ContractGranted(g) = &r {
            env.verify_grant(g).unwrap();
        }
        r
    }

    fn answer(d: &ShardDir, frame: &[u8]) -> Response {
        protocol::decode_response(&d.handle(frame).into_vec()).unwrap()
    }

    /// A shard that starts on a page boundary (as a store frame read from the network puts
    /// it) is written from where it is; one that does not, through an aligned copy: either
    /// way the file holds exactly its bytes, on ext4 and tmpfs.
    #[test]
    fn shards_on_a_page_boundary_or_not_are_written_exactly() {
        let on_disk = tempfile::tempdir().unwrap();
        let on_tmpfs = tempfile::tempdir_in("/dev/shm").unwrap();
        for dir in [on_disk.path(), on_tmpfs.path()] {
            for len in [DIRECT_MIN, DIRECT_MIN + 1, (2 << 20) + 16] {
                // Byte `at` on a page boundary, with room behind it for the unaligned starts.
                let (mut buf, at) = dustfs_core::pool::BufPool::for_shards().take_aligned(
                    len + DIRECT_ALIGN,
                    0,
                    DIRECT_ALIGN,
                );
                for (i, b) in buf.iter_mut().enumerate() {
                    *b = (i * 31 + i / 4096) as u8;
                }
                for off in [at, at + 1, at + 512] {
                    let bytes = &buf[off..off + len];
                    let path = dir.join(format!("{len}-{off}"));
                    drop(write_new(&path, bytes).unwrap());
                    assert!(
                        fs::read(&path).unwrap() == bytes,
                        "{len} bytes at {off} in {dir:?}"
                    );
                }
            }
        }
    }

    /// Shards long enough to be written with O_DIRECT (whole pages, pages and a byte, a 2 MiB
    /// shard with its header) read back byte for byte, also after a restart, as do shorter
    /// ones written through the page cache; on ext4 and on tmpfs (which takes O_DIRECT since
    /// Linux 6.6; where a filesystem refuses it, the page cache takes the whole file).
    #[test]
    fn large_shards_written_past_the_page_cache_read_back_exactly() {
        let k = SigningKey::from_bytes(&[4; 32]);
        let lens = [
            DIRECT_MIN - 1,
            DIRECT_MIN,
            DIRECT_MIN + 1,
            DIRECT_MIN + DIRECT_ALIGN * 3,
            (2 << 20) + 16,
        ];
        let on_disk = tempfile::tempdir().unwrap();
        let on_tmpfs = tempfile::tempdir_in("/dev/shm").unwrap();
        for dir in [on_disk.path(), on_tmpfs.path()] {
            let d = open(dir, 64 << 20);
            assert!(matches!(
                contract(&d, &k, 64 << 20),
                Response::ContractGranted(_)
            ));
            let shards: Vec<Vec<u8>> = lens
                .iter()
                .enumerate()
                .map(|(i, &n)| (0..n).map(|j| (j * 7 + i * 13 + j / 4096) as u8).collect())
                .collect();
            for s in &shards {
                assert_eq!(answer(&d, &store_req(&k, s)), Response::Stored);
            }
            let fetch = |d: &ShardDir, s: &Vec<u8>| {
                let req = Request::Fetch {
                    customer: k.verifying_key().to_bytes(),
                    shard: ShardId::of(s),
                    range: None,
                };
                answer(d, &protocol::encode_request(&req))
            };
            for s in &shards {
                assert_eq!(fetch(&d, s), Response::Shard(s.clone()));
            }
            drop(d);
            let d = open(dir, 64 << 20);
            for s in &shards {
                assert_eq!(fetch(&d, s), Response::Shard(s.clone()));
            }
            // Nothing is left behind in the temporary directory.
            assert_eq!(fs::read_dir(dir.join("tmp")).unwrap().count(), 0);
        }
    }

    /// A whole shard's answer, read with O_DIRECT into an aligned place behind its head, is the
    /// encoded `Response::Shard` byte for byte, for files of whole pages, a byte either side of
    /// them, a 2 MiB shard with its header and tiny ones, on ext4 and on tmpfs; a file over the
    /// shard limit is refused, a missing one is `NotFound`.
    #[test]
    fn whole_shard_answers_read_past_the_page_cache_are_the_encoded_answer() {
        let on_disk = tempfile::tempdir().unwrap();
        let on_tmpfs = tempfile::tempdir_in("/dev/shm").unwrap();
        // The second round reads into buffers the first one's answers gave back to the pool,
        // with other bytes in them.
        for (dir, round) in [on_disk.path(), on_tmpfs.path()]
            .into_iter()
            .flat_map(|d| [(d, 0), (d, 1)])
        {
            for (i, len) in [0, 1, 4095, 4096, 4097, 3 * 4096, (2 << 20) + 16, MAX_SHARD]
                .into_iter()
                .enumerate()
            {
                let bytes: Vec<u8> = (0..len)
                    .map(|j| (j * 31 + i + j / 4096 + round * 7) as u8)
                    .collect();
                let path = dir.join(format!("shard-{i}"));
                fs::write(&path, &bytes).unwrap();
                let frame = shard_answer_direct(&path).unwrap();
                let want = protocol::encode_response(&Response::Shard(bytes));
                assert_eq!(frame.len(), want.len(), "{len} bytes in {dir:?}");
                assert!(frame.clone().into_vec() == want, "{len} bytes in {dir:?}");
                drop(frame);
            }
            let big = dir.join("too-big");
            fs::File::create(&big)
                .unwrap()
                .set_len(MAX_SHARD as u64 + 1)
                .unwrap();
            let e = shard_answer_direct(&big).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::Other, "{e}");
            let e = shard_answer_direct(&dir.join("missing")).unwrap_err();
            assert_eq!(internal(e), WireError::NotFound);
        }
    }

    #[test]
    fn a_lapsed_contract_stops_stores_until_it_is_renewed_also_after_a_restart() {
        let tmp = tempfile::tempdir().unwrap();
        let k = SigningKey::from_bytes(&[3; 32]);
        let d = open(tmp.path(), 1000);
        let short = protocol::now_ms() + 1500;
        assert!(matches!(
            contract_until(&d, &k, 1000, short),
            Response::ContractGranted(_)
        ));
        assert_eq!(answer(&d, &store_req(&k, b"before")), Response::Stored);
        std::thread::sleep(std::time::Duration::from_millis(1600));
        assert_eq!(
            answer(&d, &store_req(&k, b"after")),
            Response::Error(WireError::NoContract)
        );
        // What was stored under the contract is still served.
        let fetch = Request::Fetch {
            customer: k.verifying_key().to_bytes(),
            shard: ShardId::of(b"before"),
            range: None,
        };
        assert_eq!(
            answer(&d, &protocol::encode_request(&fetch)),
            Response::Shard(b"before".to_vec())
        );
        // A restart reads the lapsed contract from disk and still refuses.
        drop(d);
        let d = open(tmp.path(), 1000);
        assert_eq!(
            answer(&d, &store_req(&k, b"after")),
            Response::Error(WireError::NoContract)
        );
        // Renewed: stores go on, and the renewal survives a restart too.
        assert!(matches!(
            contract(&d, &k, 1000),
            Response::ContractGranted(_)
        ));
        assert_eq!(answer(&d, &store_req(&k, b"after")), Response::Stored);
        drop(d);
        let d = open(tmp.path(), 1000);
        assert_eq!(answer(&d, &store_req(&k, b"later")), Response::Stored);
    }

    #[test]
    fn stores_fetches_and_refuses_what_it_must() {
        let tmp = tempfile::tempdir().unwrap();
        let d = open(tmp.path(), 100);
        let k = SigningKey::from_bytes(&[1; 32]);
        let c = k.verifying_key().to_bytes();
        // No contract, no storage.
        assert_eq!(
            answer(&d, &store_req(&k, b"shard one")),
            Response::Error(WireError::NoContract)
        );
        // A contract over what the supplier offers is refused; within it, granted.
        assert_eq!(contract(&d, &k, 101), Response::Error(WireError::Quota));
        assert!(matches!(
            contract(&d, &k, 100),
            Response::ContractGranted(_)
        ));
        let req = store_req(&k, b"shard one");
        assert_eq!(answer(&d, &req), Response::Stored);
        // the same signed request again is a replay
        assert_eq!(answer(&d, &req), Response::Error(WireError::Replay));
        let fetch = Request::Fetch {
            customer: c,
            shard: ShardId::of(b"shard one"),
            range: Some((6, 9)),
        };
        assert_eq!(
            answer(&d, &protocol::encode_request(&fetch)),
            Response::Shard(b"one".to_vec())
        );
        // over quota
        assert_eq!(
            answer(&d, &store_req(&k, &[7u8; 95])),
            Response::Error(WireError::Quota)
        );
        // bytes that do not match the signed id
        let env = signed(
            &k,
            Op::Store {
                shard: ShardId::of(b"a"),
                len: 1,
            },
        );
        let bad = protocol::encode_request(&Request::Store {
            env,
            data: b"b".to_vec(),
        });
        assert_eq!(answer(&d, &bad), Response::Error(WireError::HashMismatch));
        // stale timestamp
        let env = Envelope::sign_with(&k, me(), Op::List, 1000, [3; 16]);
        assert_eq!(
            answer(&d, &protocol::encode_request(&Request::List(env))),
            Response::Error(WireError::Expired)
        );
        // a request signed for another supplier
        let env = Envelope::sign(&k, [9; 32], Op::List);
        assert_eq!(
            answer(&d, &protocol::encode_request(&Request::List(env))),
            Response::Error(WireError::WrongAudience)
        );
        // another customer cannot delete it
        let thief = SigningKey::from_bytes(&[2; 32]);
        let mut env = signed(
            &thief,
            Op::Delete {
                shard: ShardId::of(b"shard one"),
            },
        );
        env.signed.customer = c;
        assert_eq!(
            answer(&d, &protocol::encode_request(&Request::Delete(env))),
            Response::Error(WireError::BadSignature)
        );
        assert_eq!(
            answer(&d, &protocol::encode_request(&fetch)),
            Response::Shard(b"one".to_vec())
        );
        // malformed input
        assert!(matches!(
            answer(&d, b"\x02\xff\xff"),
            Response::Error(WireError::Malformed(_))
        ));
        // the owner can
        let env = signed(
            &k,
            Op::Delete {
                shard: ShardId::of(b"shard one"),
            },
        );
        assert_eq!(
            answer(&d, &protocol::encode_request(&Request::Delete(env))),
            Response::Deleted
        );
        assert_eq!(
            answer(&d, &protocol::encode_request(&fetch)),
            Response::Error(WireError::NotFound)
        );
        assert_eq!(d.usage().bytes, 0);
    }

    #[test]
    fn contracts_survive_a_restart_and_a_tampered_one_is_void() {
        let tmp = tempfile::tempdir().unwrap();
        let k = SigningKey::from_bytes(&[1; 32]);
        {
            let d = open(tmp.path(), 1000);
            assert!(matches!(
                contract(&d, &k, 1000),
                Response::ContractGranted(_)
            ));
        }
        let d = open(tmp.path(), 1000);
        assert_eq!(
            answer(&d, &store_req(&k, b"after restart")),
            Response::Stored
        );
        let usage = Request::Usage {
            customer: k.verifying_key().to_bytes(),
        };
        assert_eq!(
            answer(&d, &protocol::encode_request(&usage)),
            Response::Usage {
                used: 13,
                quota: 1000
            }
        );
        drop(d);
        // Someone with access to the disk raises the quota in the file: the grant no longer
        // verifies, so the contract is void.
        let path = tmp
            .path()
            .join("contracts")
            .join(hex::encode(k.verifying_key().to_bytes()));
        let (mut env, grant): (Envelope, Vec<u8>) =
            postcard::from_bytes(&fs::read(&path).unwrap()).unwrap();
        env.signed.op = Op::Contract {
            quota: u64::MAX,
            expires_ms: u64::MAX,
        };
        fs::write(&path, postcard::to_allocvec(&(&env, &grant)).unwrap()).unwrap();
        let d = open(tmp.path(), 1000);
        assert_eq!(
            answer(&d, &store_req(&k, b"tampered")),
            Response::Error(WireError::NoContract)
        );
    }
}
