//! Shared harness of the end-to-end suites: real `dustfs` processes (a testnet of supplier
//! nodes and a customer with a kernel FUSE mount) on 127.0.0.1, driven as a user would drive
//! them, and helpers to compare trees byte for byte.
#![allow(dead_code, missing_docs)]

pub mod nat;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

pub const BIN: &str = env!("CARGO_BIN_EXE_dustfs");

/// These suites mount real filesystems: without root and /dev/fuse they must fail, loudly.
pub fn require_root_and_fuse() {
    // SAFETY-free check of the effective uid through /proc.
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap_or("?")
        .to_string();
    assert_eq!(
        euid, "0",
        "the end-to-end suites mount FUSE filesystems and must run as root"
    );
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: install fuse3 and load the fuse module"
    );
    for tool in ["rsync", "umount"] {
        assert!(
            Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {tool}"))
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false),
            "{tool} is required by the end-to-end suites (apt-get install rsync)"
        );
    }
}

pub fn dustfs() -> Command {
    let mut c = Command::new(BIN);
    c.env("RUST_LOG", "info,libp2p=warn,libp2p_kad=error");
    c
}

/// Runs a command, asserting success; returns stdout.
pub fn ok(c: &mut Command) -> String {
    let o = c.output().expect("spawn");
    assert!(
        o.status.success(),
        "{c:?} failed: {}\n{}",
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Runs a command that must fail; returns stderr + stdout.
pub fn fails(c: &mut Command) -> String {
    let o: Output = c.output().expect("spawn");
    assert!(!o.status.success(), "{c:?} should have failed");
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&o.stdout)
    )
}

/// A test's scratch directory under /tmp. Removed when the test passes; kept when it fails
/// (its logs and homes are what one looks at then). Declare it first in a test, so that the
/// testnets and mounts inside it are stopped before it is removed.
pub struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

/// A child process killed (and reaped) when dropped, also when the test fails.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test failed; its files are kept in {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

pub fn scratch(name: &str) -> Scratch {
    Scratch(
        tempfile::Builder::new()
            .prefix(&format!("dustfs-{name}-"))
            .tempdir_in("/tmp")
            .expect("tempdir")
            .keep(),
    )
}

/// A testnet of supplier nodes; stopped when dropped.
pub struct Testnet {
    pub dir: PathBuf,
    pub nodes: usize,
}

impl Testnet {
    pub fn up(root: &Path, nodes: usize) -> Self {
        Self::up_logging(root, nodes, "info,libp2p=warn,libp2p_kad=error")
    }

    /// A testnet whose nodes log at `rust_log` (`RUST_LOG` syntax) into `node-N/log`.
    pub fn up_logging(root: &Path, nodes: usize, rust_log: &str) -> Self {
        let dir = root.join("net");
        ok(dustfs()
            .env("RUST_LOG", rust_log)
            .args(["testnet", "up", "--nodes", &nodes.to_string(), "--dir"])
            .arg(&dir));
        Testnet { dir, nodes }
    }

    /// The address (with `/p2p/`) node `i` listens on first.
    pub fn addr(&self, i: usize) -> String {
        std::fs::read_to_string(self.node_dir(i).join("addrs"))
            .expect("addrs file")
            .lines()
            .next()
            .expect("an address")
            .to_string()
    }

    pub fn bootstrap(&self) -> PathBuf {
        self.dir.join("bootstrap")
    }

    pub fn node_dir(&self, i: usize) -> PathBuf {
        self.dir.join(format!("node-{i}"))
    }

    pub fn pid(&self, i: usize) -> u32 {
        std::fs::read_to_string(self.node_dir(i).join("pid"))
            .expect("pid file")
            .trim()
            .parse()
            .expect("pid")
    }

    /// SIGKILL a supplier process.
    pub fn kill(&self, i: usize) {
        let pid = self.pid(i);
        ok(Command::new("kill").arg("-KILL").arg(pid.to_string()));
        wait_gone(pid, Duration::from_secs(10));
    }

    /// Creates an identity in `home` that joins this testnet (loopback TCP); returns its
    /// paper key.
    pub fn init_home(&self, home: &Path) -> String {
        let out = ok(dustfs()
            .arg("--home")
            .arg(home)
            .args(["init", "--listen", "/ip4/127.0.0.1/tcp/0", "--bootstrap"])
            .arg(self.bootstrap()));
        out.lines().last().unwrap_or_default().to_string()
    }

    /// Runs `dustfs serve EXTRA...` for an initialized `home` (log next to it); killed when
    /// dropped.
    pub fn serve(&self, home: &Path, extra: &[&str]) -> KillOnDrop {
        KillOnDrop(
            dustfs()
                .arg("--home")
                .arg(home)
                .arg("serve")
                .args(extra)
                .stderr(std::fs::File::create(home.with_extension("log")).expect("log"))
                .spawn()
                .expect("serve"),
        )
    }

    /// Bytes of shards kept by all suppliers.
    pub fn stored_bytes(&self) -> u64 {
        (1..=self.nodes)
            .map(|i| dir_bytes(&self.node_dir(i).join("shards")))
            .sum()
    }

    /// Every shard file of every supplier.
    pub fn shard_files(&self) -> Vec<PathBuf> {
        (1..=self.nodes)
            .flat_map(|i| shard_files_in(&self.node_dir(i).join("shards")))
            .collect()
    }
}

/// The shard files under one supplier's shard directory (staging files, root records and
/// contracts aside), sorted.
pub fn shard_files_in(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    walk_files(dir, &mut out);
    out.retain(|p| {
        !in_staging(p)
            && !p
                .components()
                .any(|c| c.as_os_str() == "roots" || c.as_os_str() == "contracts")
    });
    out.sort();
    out
}

impl Drop for Testnet {
    fn drop(&mut self) {
        let _ = dustfs()
            .args(["testnet", "down", "--dir"])
            .arg(&self.dir)
            .output();
    }
}

/// The customers a supplier keeps shards for: the 64-hex-digit directories of its shard store.
pub fn customer_dirs_in(shards: &Path) -> Vec<String> {
    std::fs::read_dir(shards)
        .expect("shards dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.len() == 64)
        .collect()
}

/// Every file below `d`, recursively.
pub fn walk_files(d: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(rd) = std::fs::read_dir(d) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk_files(&p, out);
            } else {
                out.push(p);
            }
        }
    }
}

/// Whether a path is in a supplier's staging directory (`shards/tmp/`), not a stored shard.
fn in_staging(p: &Path) -> bool {
    let parent = p.parent();
    parent
        .and_then(|d| d.file_name())
        .is_some_and(|n| n == "tmp")
        && parent
            .and_then(Path::parent)
            .and_then(|d| d.file_name())
            .is_some_and(|n| n == "shards")
}

pub fn dir_bytes(d: &Path) -> u64 {
    let mut v = Vec::new();
    walk_files(d, &mut v);
    v.iter()
        .filter(|p| !in_staging(p))
        .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum()
}

pub fn wait_gone(pid: u32, timeout: Duration) {
    let start = Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists() {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat
            .rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z'))
        {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "process {pid} did not exit within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A customer: a home and a mountpoint; unmounted when dropped.
pub struct Customer {
    pub home: PathBuf,
    pub mnt: PathBuf,
}

impl Customer {
    pub fn init(root: &Path, net: &Testnet) -> (Self, String) {
        let home = root.join("home");
        let mnt = root.join("mnt");
        std::fs::create_dir_all(&mnt).expect("mkdir mnt");
        let out = ok(dustfs()
            .arg("--home")
            .arg(&home)
            .args([
                "init",
                "--listen",
                "/ip4/127.0.0.1/tcp/0",
                "--listen",
                "/ip4/127.0.0.1/udp/0/quic-v1",
                "--bootstrap",
            ])
            .arg(net.bootstrap()));
        let paper = out.lines().last().unwrap_or_default().to_string();
        (Customer { home, mnt }, paper)
    }

    pub fn cmd(&self) -> Command {
        let mut c = dustfs();
        c.arg("--home").arg(&self.home);
        c
    }

    pub fn mount(&self) {
        ok(self.cmd().arg("mount").arg(&self.mnt));
        // Wait until the node has found enough suppliers to place a whole block.
        let start = Instant::now();
        loop {
            let s = self.status();
            if s["suppliers"].as_array().map(Vec::len).unwrap_or(0) >= 6
                || start.elapsed() > Duration::from_secs(30)
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn mount_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.home.join("mount.pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    pub fn status(&self) -> serde_json::Value {
        serde_json::from_str(&ok(self.cmd().args(["status", "--json"]))).expect("status json")
    }

    pub fn sync(&self) {
        ok(self.cmd().arg("sync"));
    }

    pub fn cache_drop(&self) {
        ok(self.cmd().args(["cache", "drop"]));
    }

    /// Writes `len` random bytes (from `seed`) to `src`, copies them into the mount as `name`
    /// with cp, and syncs: the file is durable on suppliers when this returns.
    pub fn copy_in(&self, src: &Path, name: &str, len: u64, seed: u64) {
        write_random(src, len, seed);
        ok(Command::new("cp").arg(src).arg(self.mnt.join(name)));
        self.sync();
    }

    /// Drops the caches and checks that `name` in the mount reads back as `src` (a read from
    /// suppliers).
    pub fn reads_back(&self, src: &Path, name: &str) {
        self.cache_drop();
        assert_eq!(sha256(&self.mnt.join(name)), sha256(src), "{name}");
    }

    /// Unmounts as a user does and waits for the mount process to finish its uploads and exit.
    pub fn umount(&self) {
        let pid = self.mount_pid();
        ok(Command::new("umount").arg(&self.mnt));
        if let Some(pid) = pid {
            wait_gone(pid, Duration::from_secs(120));
        }
    }

    /// Edits the configuration file (before mounting): each (from, to) is replaced once.
    pub fn edit_config(&self, changes: &[(&str, &str)]) {
        let path = self.home.join("config.toml");
        let mut text = std::fs::read_to_string(&path).expect("config");
        for (from, to) in changes {
            assert!(text.contains(from), "config has no {from:?}");
            text = text.replacen(from, to, 1);
        }
        std::fs::write(&path, text).expect("config");
    }

    /// Waits until the mount knows at least `n` suppliers.
    pub fn wait_suppliers(&self, n: usize) {
        let start = Instant::now();
        while self.status()["suppliers"]
            .as_array()
            .map(Vec::len)
            .unwrap_or(0)
            < n
        {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "fewer than {n} suppliers were discovered"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Waits until all `total` blocks are healthy with k+m shards each on suppliers, and
    /// `extra` holds for the status; returns how long it took.
    pub fn wait_fully_repaired(
        &self,
        total: u64,
        timeout: Duration,
        extra: impl Fn(&serde_json::Value) -> bool,
    ) -> Duration {
        let start = Instant::now();
        loop {
            let st = self.status();
            // Every block healthy, however many there are now: snapshots published by the
            // checks and syncs meanwhile change the count of metadata blocks (CI once saw 5
            // healthy of 5 blocks against a `total` of 6 taken right after a sync).
            let all: u64 = st["blocks"]
                .as_object()
                .map_or(0, |m| m.values().filter_map(|v| v.as_u64()).sum());
            let healthy = st["blocks"]["healthy"].as_u64() == Some(all) && all + 1 >= total;
            let full = st["blocks_by_live_shards"]
                .as_object()
                .is_some_and(|m| m.keys().all(|k| k == "6"));
            if healthy && full && extra(&st) {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < timeout,
                "blocks were not repaired within {timeout:?}: {st}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.home.join("mount.log")).unwrap_or_default()
    }
}

impl Drop for Customer {
    fn drop(&mut self) {
        if let Some(pid) = self.mount_pid()
            && Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).output();
            let start = Instant::now();
            while Path::new(&format!("/proc/{pid}")).exists()
                && start.elapsed() < Duration::from_secs(40)
            {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .output();
        }
    }
}

/// Deterministic pseudo-random bytes (xorshift), fast enough for gigabytes.
pub struct Prng(u64);

impl Prng {
    pub fn new(seed: u64) -> Self {
        Prng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            let b = self.0.to_le_bytes();
            c.copy_from_slice(&b[..c.len()]);
        }
    }
}

pub fn write_random(path: &Path, len: u64, seed: u64) {
    let mut f = std::fs::File::create(path).expect("create");
    let mut r = Prng::new(seed);
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        r.fill(&mut buf[..n]);
        f.write_all(&buf[..n]).expect("write");
        left -= n as u64;
    }
    f.sync_all().expect("fsync");
}

pub fn sha256(path: &Path) -> String {
    let mut f =
        std::fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

/// What a user checks of each entry of a tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: &'static str,
    pub mode: u32,
    pub mtime: Option<(i64, i64)>,
    pub size: u64,
    pub sha256: Option<String>,
    pub target: Option<PathBuf>,
    /// Paths sharing this entry's inode (hard links), relative.
    pub links: Vec<PathBuf>,
}

/// Describes a tree: every entry's kind, mode, mtime, content hash, symlink target and hard-link
/// group.
pub fn manifest(root: &Path) -> BTreeMap<PathBuf, Entry> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<u64, Vec<PathBuf>> = BTreeMap::new();
    fn walk(
        root: &Path,
        d: &Path,
        out: &mut BTreeMap<PathBuf, Entry>,
        inodes: &mut BTreeMap<u64, Vec<PathBuf>>,
    ) {
        let mut entries: Vec<_> = std::fs::read_dir(d).expect("read_dir").flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let rel = p.strip_prefix(root).expect("prefix").to_path_buf();
            let m = std::fs::symlink_metadata(&p).expect("lstat");
            let ft = m.file_type();
            let (kind, sha, target, mtime) = if ft.is_symlink() {
                (
                    "symlink",
                    None,
                    Some(std::fs::read_link(&p).expect("readlink")),
                    None,
                )
            } else if ft.is_dir() {
                ("dir", None, None, Some((m.mtime(), m.mtime_nsec())))
            } else {
                (
                    "file",
                    Some(sha256(&p)),
                    None,
                    Some((m.mtime(), m.mtime_nsec())),
                )
            };
            if ft.is_file() {
                inodes.entry(m.ino()).or_default().push(rel.clone());
            }
            out.insert(
                rel,
                Entry {
                    kind,
                    mode: m.permissions().mode() & 0o7777,
                    mtime,
                    size: if ft.is_dir() { 0 } else { m.len() },
                    sha256: sha,
                    target,
                    links: Vec::new(),
                },
            );
            if ft.is_dir() {
                walk(root, &p, out, inodes);
            }
        }
    }
    walk(root, root, &mut out, &mut inodes);
    for group in inodes.values().filter(|g| g.len() > 1) {
        for p in group {
            if let Some(e) = out.get_mut(p) {
                e.links = group.clone();
            }
        }
    }
    out
}

/// Asserts two manifests are equal, naming the first difference.
pub fn assert_same_tree(a: &BTreeMap<PathBuf, Entry>, b: &BTreeMap<PathBuf, Entry>) {
    let ka: Vec<_> = a.keys().collect();
    let kb: Vec<_> = b.keys().collect();
    assert_eq!(ka, kb, "the trees hold different names");
    for (k, ea) in a {
        assert_eq!(Some(ea), b.get(k), "{} differs", k.display());
    }
}

/// Sets the mtime of a file or directory `secs_ago` seconds in the past.
pub fn set_mtime(p: &Path, secs_ago: u64) {
    let t = std::time::SystemTime::now() - Duration::from_secs(secs_ago);
    std::fs::File::open(p)
        .expect("open")
        .set_modified(t)
        .expect("set mtime");
}

/// The source tree of the rsync test: empty and tiny files up to 64 MiB, nested directories,
/// symlinks (relative, dangling, to a directory), hard links and varied modes and mtimes.
pub fn make_tree(src: &Path) {
    std::fs::create_dir_all(src.join("a/b/c")).expect("mkdir");
    std::fs::create_dir_all(src.join("private")).expect("mkdir");
    std::fs::write(src.join("empty"), b"").expect("write");
    std::fs::write(src.join("one-byte"), b"x").expect("write");
    std::fs::write(src.join("a/b/c/deep.txt"), b"deep inside\n").expect("write");
    for (name, len, seed) in [
        ("a/1k.bin", 1000u64, 1u64),
        ("a/b/100k.bin", 100_000, 2),
        ("a/b/1m.bin", 1 << 20, 3),
        ("a/5m-plus.bin", (5 << 20) + 3, 4),
        ("big-64m.bin", 64 << 20, 5),
        ("private/secret.bin", 300_000, 6),
    ] {
        write_random(&src.join(name), len, seed);
    }
    std::os::unix::fs::symlink("a/b/c/deep.txt", src.join("link-to-deep")).expect("symlink");
    std::os::unix::fs::symlink("does/not/exist", src.join("dangling")).expect("symlink");
    std::os::unix::fs::symlink("a", src.join("link-to-dir")).expect("symlink");
    std::fs::hard_link(src.join("a/1k.bin"), src.join("hardlink-1k")).expect("link");
    std::fs::hard_link(src.join("a/1k.bin"), src.join("a/b/hardlink-1k-2")).expect("link");
    for (name, mode) in [
        ("one-byte", 0o600),
        ("a/1k.bin", 0o640),
        ("a/b/100k.bin", 0o755),
        ("empty", 0o444),
    ] {
        std::fs::set_permissions(src.join(name), std::fs::Permissions::from_mode(mode))
            .expect("chmod");
    }
    for (i, name) in ["empty", "one-byte", "a/b/1m.bin", "big-64m.bin"]
        .iter()
        .enumerate()
    {
        set_mtime(&src.join(name), 3600 * (i as u64 + 1));
    }
    std::fs::set_permissions(src.join("private"), std::fs::Permissions::from_mode(0o700))
        .expect("chmod");
    // Directories last (filling them set their times) and in whole hours past: rsync sets a
    // directory's time only when it differs in whole seconds, so one it creates on the mount
    // within the second its source was filled would keep its own time (CI saw "a/b differs"
    // by 0.85 s), which the tree comparison (to the nanosecond) reports.
    for (i, dir) in ["a/b/c", "a/b", "a", "private"].iter().enumerate() {
        set_mtime(&src.join(dir), 7200 * (i as u64 + 1));
    }
}
