//! Engine tests against the in-memory shard store (the trait boundary). The real network and a
//! real mount are exercised by the workspace's end-to-end suites.

use std::ffi::OsStr;
use std::sync::Arc;

use rand::{RngCore, SeedableRng};

use super::*;
use crate::keys::MasterSecret;
use crate::store::MemStore;

fn random(n: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

struct T {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    keys: Keys,
    store: Arc<MemStore>,
    fs: Arc<Engine>,
}

/// Polls `done` every 10 ms until it holds; fails with `what` (and `state()`) after 20 s.
fn wait_until<S: std::fmt::Debug>(
    what: &str,
    mut done: impl FnMut() -> bool,
    state: impl Fn() -> S,
) {
    let start = std::time::Instant::now();
    while !done() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20),
            "{what}: {:?}",
            state()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

fn setup(suppliers: usize, quota: usize) -> T {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let keys = MasterSecret::from_bytes(&[42; 32]).unwrap().derive();
    let store = Arc::new(MemStore::with_suppliers(suppliers, quota));
    let fs = Engine::open(&path, keys.clone(), EngineConfig::default(), store.clone()).unwrap();
    T {
        _dir: dir,
        path,
        keys,
        store,
        fs,
    }
}

impl T {
    fn reopen(&mut self) {
        let store: Arc<dyn ShardStore> = self.store.clone();
        // Drop the old engine first: RocksDB allows one opener.
        let old = std::mem::replace(
            &mut self.fs,
            Engine::open(
                &self.path.with_extension("tmp"),
                self.keys.clone(),
                EngineConfig::default(),
                store.clone(),
            )
            .unwrap(),
        );
        drop(old);
        self.fs = Engine::open(
            &self.path,
            self.keys.clone(),
            EngineConfig::default(),
            store,
        )
        .unwrap();
    }

    /// A file of `len` random bytes (from `seed`) stored on suppliers and not cached here:
    /// reads of it go to the network.
    fn cold_file(&self, name: &str, len: usize, seed: u64) -> (Vec<u8>, Ino) {
        let data = random(len, seed);
        let ino = self.file(name, &data);
        self.sync();
        self.fs.cache_drop().unwrap();
        (data, ino)
    }

    fn file(&self, name: &str, data: &[u8]) -> Ino {
        let i = self
            .fs
            .create(ROOT, OsStr::new(name), Kind::File, 0o644, 0, 0, 0, None)
            .unwrap();
        self.fs.opened(i.ino).unwrap();
        for (n, piece) in data.chunks(128 * 1024).enumerate() {
            self.fs
                .write(i.ino, (n * 128 * 1024) as u64, piece)
                .unwrap();
        }
        self.fs.released(i.ino).unwrap();
        i.ino
    }

    fn read_all(&self, ino: Ino) -> Vec<u8> {
        let size = self.fs.get_inode(ino).unwrap().size;
        let mut out = Vec::new();
        while (out.len() as u64) < size {
            let piece = self.fs.read(ino, out.len() as u64, 1 << 20).unwrap();
            assert!(!piece.is_empty());
            out.extend_from_slice(&piece);
        }
        out
    }

    fn assert_all_healthy(&self) {
        let st = self.fs.status().unwrap();
        assert_eq!(
            st.blocks["healthy"],
            st.blocks.values().sum::<u64>(),
            "{st:?}"
        );
    }

    /// Seals and uploads everything, drops every cached block and checks that `ino` reads
    /// back from suppliers as `want`.
    fn assert_reads_back_from_suppliers(&self, ino: Ino, want: &[u8]) {
        self.sync();
        self.fs.cache_drop().unwrap();
        assert_eq!(self.read_all(ino), want);
    }

    fn sync(&self) {
        self.fs.seal_all().unwrap();
        for _ in 0..1000 {
            if self.fs.pending().unwrap().0 == 0 {
                return;
            }
            self.fs.upload_round().unwrap();
        }
        panic!(
            "upload queue did not drain: {:?}",
            self.fs.status().unwrap()
        );
    }
}

#[test]
fn bytes_written_read_back_before_and_after_upload() {
    let t = setup(6, usize::MAX);
    let data = random(9 * 1024 * 1024 + 123, 1);
    let ino = t.file("a", &data);
    assert_eq!(t.read_all(ino), data);
    t.sync();
    assert_eq!(t.read_all(ino), data);
    t.fs.cache_drop().unwrap();
    assert_eq!(t.read_all(ino), data);
    let st = t.fs.status().unwrap();
    assert_eq!(st.queued_shards, 0);
    assert!(st.blocks["healthy"] >= 3, "{st:?}");
}

#[test]
fn any_two_suppliers_lost_still_reads_back() {
    let t = setup(6, usize::MAX);
    let (data, ino) = t.cold_file("a", 5 * 1024 * 1024, 2);
    t.store.set_offline("s1", true);
    t.store.set_offline("s4", true);
    assert_eq!(t.read_all(ino), data);
}

#[test]
fn a_corrupting_supplier_is_detected_and_the_block_rebuilt() {
    let t = setup(6, usize::MAX);
    let (data, ino) = t.cold_file("a", 3 * 1024 * 1024, 3);
    t.store.set_corrupt("s2");
    assert_eq!(t.read_all(ino), data);
    assert!(t.fs.status().unwrap().corrupt_shards >= 1);
}

#[test]
fn a_supplier_over_quota_is_replaced_by_another() {
    let t = setup(7, usize::MAX);
    t.store.set_quota("s3", 0);
    let data = random(6 * 1024 * 1024, 4);
    let ino = t.file("a", &data);
    t.sync();
    assert_eq!(t.store.used("s3"), 0);
    t.fs.cache_drop().unwrap();
    assert_eq!(t.read_all(ino), data);
    assert_eq!(t.fs.status().unwrap().blocks["healthy"], 2);
}

#[test]
fn identical_content_is_stored_once() {
    let t = setup(6, usize::MAX);
    let data = random(8 * 1024 * 1024, 5);
    t.file("a", &data);
    t.sync();
    let one: usize = (1..=6).map(|i| t.store.used(&format!("s{i}"))).sum();
    t.file("b", &data);
    t.sync();
    let two: usize = (1..=6).map(|i| t.store.used(&format!("s{i}"))).sum();
    assert!(
        two < one + one / 10,
        "second copy added {} bytes to {}",
        two - one,
        one
    );
    assert!(one as f64 >= data.len() as f64 * 1.5 * 0.99);
}

#[test]
fn suppliers_see_no_plaintext() {
    let t = setup(6, usize::MAX);
    let data = b"SECRET-MARKER-7f3a ".repeat(50_000);
    t.file("a", &data);
    t.sync();
    let all = t.store.all_bytes();
    assert!(!all.is_empty());
    assert!(!all.windows(18).any(|w| w == b"SECRET-MARKER-7f3a"));
}

#[test]
fn random_writes_truncates_and_holes_match_a_reference() {
    let t = setup(6, usize::MAX);
    let i =
        t.fs.create(ROOT, OsStr::new("f"), Kind::File, 0o644, 0, 0, 0, None)
            .unwrap()
            .ino;
    t.fs.opened(i).unwrap();
    let mut reference: Vec<u8> = Vec::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    for step in 0..300 {
        let op = rng.next_u32() % 10;
        if op < 7 {
            let off = (rng.next_u32() % (3 << 20)) as usize;
            let len = 1 + (rng.next_u32() % 300_000) as usize;
            let d = random(len, step);
            t.fs.write(i, off as u64, &d).unwrap();
            if reference.len() < off + len {
                reference.resize(off + len, 0);
            }
            reference[off..off + len].copy_from_slice(&d);
        } else if op < 8 {
            let size = (rng.next_u32() % (4 << 20)) as usize;
            t.fs.setattr(
                i,
                SetAttr {
                    size: Some(size as u64),
                    ..Default::default()
                },
            )
            .unwrap();
            reference.resize(size, 0);
        } else if op < 9 {
            t.fs.flush(i).unwrap();
        } else {
            t.sync();
        }
        if step % 25 == 0 {
            assert_eq!(t.read_all(i), reference, "step {step}");
        }
    }
    t.fs.released(i).unwrap();
    t.assert_reads_back_from_suppliers(i, &reference);
}

#[test]
fn everything_survives_a_restart_without_sync() {
    let mut t = setup(6, usize::MAX);
    let data = random(5 * 1024 * 1024 + 7, 6);
    let i =
        t.fs.create(ROOT, OsStr::new("f"), Kind::File, 0o644, 0, 0, 0, None)
            .unwrap()
            .ino;
    t.fs.write(i, 0, &data[..3 << 20]).unwrap();
    t.fs.flush(i).unwrap();
    t.fs.write(i, 3 << 20, &data[3 << 20..]).unwrap();
    // No release, no sync: dirty data, an open block and queued shards all exist now.
    t.reopen();
    assert_eq!(t.read_all(i), data);
    t.assert_reads_back_from_suppliers(i, &data);
}

#[test]
fn namespace_operations() {
    let t = setup(6, usize::MAX);
    let fs = &t.fs;
    let d = fs
        .create(ROOT, OsStr::new("d"), Kind::Dir, 0o755, 0, 0, 0, None)
        .unwrap();
    assert_eq!(fs.get_inode(ROOT).unwrap().nlink, 3);
    let a = t.file("a", b"hello");
    fs.link(a, d.ino, OsStr::new("a2")).unwrap();
    assert_eq!(fs.get_inode(a).unwrap().nlink, 2);
    fs.unlink(ROOT, OsStr::new("a")).unwrap();
    assert_eq!(
        t.read_all(fs.lookup(d.ino, OsStr::new("a2")).unwrap().ino),
        b"hello"
    );
    let s = fs
        .create(
            d.ino,
            OsStr::new("s"),
            Kind::Symlink,
            0o777,
            0,
            0,
            0,
            Some(std::path::Path::new("../x")),
        )
        .unwrap();
    assert_eq!(fs.readlink(s.ino).unwrap(), b"../x");
    assert!(matches!(
        fs.rmdir(ROOT, OsStr::new("d")),
        Err(FsError::NotEmpty)
    ));
    // rename over an existing file replaces it
    let b = t.file("b", b"bbb");
    fs.rename(d.ino, OsStr::new("a2"), ROOT, OsStr::new("b"), false, false)
        .unwrap();
    assert!(matches!(fs.get_inode(b), Err(FsError::NotFound)));
    assert_eq!(
        t.read_all(fs.lookup(ROOT, OsStr::new("b")).unwrap().ino),
        b"hello"
    );
    // a directory cannot move into itself
    let e = fs
        .create(d.ino, OsStr::new("e"), Kind::Dir, 0o755, 0, 0, 0, None)
        .unwrap();
    assert!(matches!(
        fs.rename(ROOT, OsStr::new("d"), e.ino, OsStr::new("x"), false, false),
        Err(FsError::Invalid)
    ));
    fs.rename(d.ino, OsStr::new("e"), ROOT, OsStr::new("e"), false, false)
        .unwrap();
    assert_eq!(fs.get_inode(d.ino).unwrap().nlink, 2);
    assert_eq!(fs.get_inode(ROOT).unwrap().nlink, 4);
    let names: Vec<_> = fs
        .readdir(ROOT, 0, 100)
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(
        names,
        vec![
            b".".to_vec(),
            b"..".to_vec(),
            b"b".to_vec(),
            b"d".to_vec(),
            b"e".to_vec()
        ]
    );
    fs.setxattr(a, OsStr::new("user.k"), b"v", true, false)
        .unwrap();
    assert_eq!(fs.getxattr(a, OsStr::new("user.k")).unwrap(), b"v");
    assert!(matches!(
        fs.setxattr(a, OsStr::new("user.k"), b"v", true, false),
        Err(FsError::Exists)
    ));
    assert_eq!(fs.listxattr(a).unwrap(), vec![b"user.k".to_vec()]);
    fs.removexattr(a, OsStr::new("user.k")).unwrap();
    assert!(matches!(
        fs.getxattr(a, OsStr::new("user.k")),
        Err(FsError::NoAttr)
    ));
}

#[test]
fn an_unlinked_open_file_stays_readable_until_closed() {
    let t = setup(6, usize::MAX);
    let a = t.file("a", b"still here");
    t.fs.opened(a).unwrap();
    t.fs.unlink(ROOT, OsStr::new("a")).unwrap();
    assert_eq!(t.fs.read(a, 0, 100).unwrap(), b"still here");
    t.fs.released(a).unwrap();
    assert!(matches!(t.fs.get_inode(a), Err(FsError::NotFound)));
}

#[test]
fn the_block_cache_honours_its_size() {
    let dir = tempfile::tempdir().unwrap();
    let keys = MasterSecret::from_bytes(&[42; 32]).unwrap().derive();
    let store = Arc::new(MemStore::with_suppliers(6, usize::MAX));
    let cfg = EngineConfig {
        cache_bytes: 12 << 20,
        ..EngineConfig::default()
    };
    let fs = Engine::open(&dir.path().join("db"), keys.clone(), cfg, store.clone()).unwrap();
    let t = T {
        _dir: dir,
        path: std::path::PathBuf::new(),
        keys,
        store,
        fs,
    };
    let data = random(40 << 20, 12);
    let ino = t.file("big", &data);
    t.sync();
    assert!(
        t.fs.status().unwrap().cache_bytes <= 12 << 20,
        "{:?}",
        t.fs.status().unwrap()
    );
    assert_eq!(t.read_all(ino), data);
    assert!(t.fs.status().unwrap().cache_bytes <= 12 << 20);
}

#[test]
fn written_blocks_leave_the_cache_once_uploaded_but_blocks_read_stay() {
    let t = setup(6, usize::MAX);
    let keep = blocks::WRITTEN_KEEP;
    let data = random((keep + (24 << 20)) as usize, 31);
    let ino = t.file("a", &data);
    t.sync();
    let st = t.fs.status().unwrap();
    // Within the window, short of it by less than one block.
    let block = EngineConfig::default().block_size as u64;
    assert!(
        st.cache_bytes <= keep && st.cache_bytes + block > keep,
        "{st:?}"
    );
    // The start of the file left the cache: reading it fetches from suppliers, and a block
    // read is cached like any other, however much more is written.
    let fetched = t.fs.status().unwrap().fetched_bytes;
    assert_eq!(t.fs.read(ino, 4096, 4096).unwrap(), data[4096..8192]);
    let first = t.fs.status().unwrap().fetched_bytes - fetched;
    assert!(first > 0);
    let more = random(keep as usize, 32);
    t.file("b", &more);
    t.sync();
    assert_eq!(t.fs.read(ino, 4096, 4096).unwrap(), data[4096..8192]);
    assert_eq!(t.fs.status().unwrap().fetched_bytes - fetched, first);
    assert!(t.fs.status().unwrap().cache_bytes <= keep + first);
    assert_eq!(t.read_all(ino), data);
}

#[test]
fn an_open_block_written_over_a_spare_block_file_holds_only_its_own_bytes() {
    let mut t = setup(6, usize::MAX);
    let data = random((blocks::WRITTEN_KEEP + (8 << 20)) as usize, 33);
    let a = t.file("a", &data);
    t.sync();
    let dir = t.path.join(blocks::OPEN_DIR);
    let spare = dir.join(blocks::SPARE);
    let len = |p: &std::path::Path| std::fs::metadata(p).unwrap().len();
    let name = |t: &T| format!("{:016x}", lock(&t.fs.state).open.no);
    // Uploaded blocks left the cache; the first to go waits to be written over, and the next
    // open block takes it. A restart cuts the old block's bytes past the new one's.
    let spare_len = len(&spare);
    let b_data = random(100 << 10, 34);
    let b_name = name(&t);
    let b = t.file("b", &b_data);
    assert!(!spare.exists(), "the open block did not take the spare");
    assert_eq!(len(&dir.join(&b_name)), spare_len);
    t.reopen();
    let open_len = lock(&t.fs.state).open.buf.len() as u64;
    assert!(open_len > 0 && open_len < spare_len);
    assert_eq!(len(&dir.join(&b_name)), open_len);
    t.sync();
    // So does sealing (a spare of other bytes, as a block of another file would leave).
    std::fs::write(&spare, vec![0xa5; 4 << 20]).unwrap();
    let c_data = random(200 << 10, 35);
    let c_name = name(&t);
    let c = t.file("c", &c_data);
    assert_eq!(len(&dir.join(&c_name)), 4 << 20);
    let sealed_len = lock(&t.fs.state).open.buf.len() as u64;
    t.sync();
    assert_eq!(
        len(&t.path.join(blocks::CACHE_DIR).join(&c_name)),
        sealed_len
    );
    for (ino, want) in [(a, &data), (b, &b_data), (c, &c_data)] {
        assert_eq!(&t.read_all(ino), want);
        t.assert_reads_back_from_suppliers(ino, want);
    }
}

#[test]
fn files_past_4_gib_are_sparse_and_read_back() {
    let t = setup(6, usize::MAX);
    let i =
        t.fs.create(ROOT, OsStr::new("huge"), Kind::File, 0o644, 0, 0, 0, None)
            .unwrap()
            .ino;
    let off = (5u64 << 30) + 12345;
    t.fs.write(i, off, b"beyond four gigabytes").unwrap();
    t.fs.flush(i).unwrap();
    t.sync();
    t.fs.cache_drop().unwrap();
    assert_eq!(t.fs.get_inode(i).unwrap().size, off + 21);
    assert_eq!(t.fs.read(i, off, 21).unwrap(), b"beyond four gigabytes");
    assert_eq!(t.fs.read(i, 1 << 30, 4096).unwrap(), vec![0u8; 4096]);
    // Only the written bytes were stored, not the hole.
    let stored: usize = (1..=6).map(|s| t.store.used(&format!("s{s}"))).sum();
    assert!(stored < 1 << 20, "{stored}");
}

#[test]
fn statfs_reports_the_space_suppliers_granted() {
    let t = setup(6, 100 << 20);
    // Before any supplier is known (right after a mount), there is nothing to report, and
    // that empty answer is not kept for long.
    for i in 1..=6 {
        t.store.set_offline(&format!("s{i}"), true);
    }
    assert_eq!(t.fs.stats().unwrap().total_bytes, 0);
    for i in 1..=6 {
        t.store.set_offline(&format!("s{i}"), false);
    }
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let s = t.fs.stats().unwrap();
    // 6 suppliers × 100 MiB, of which 4/6 hold data.
    assert_eq!(s.total_bytes, 400 << 20);
    assert_eq!(s.used_bytes, 0);
}

#[test]
fn fallocate_extends_and_punches_holes() {
    let t = setup(6, usize::MAX);
    let a = t.file("a", &random(300_000, 3));
    t.fs.fallocate(a, 0, 1 << 20, true, false).unwrap();
    assert_eq!(t.fs.get_inode(a).unwrap().size, 1 << 20);
    t.fs.fallocate(a, 1000, 5000, false, true).unwrap();
    let mut want = random(300_000, 3);
    want[1000..6000].fill(0);
    want.resize(1 << 20, 0);
    assert_eq!(t.read_all(a), want);
}

#[test]
fn writers_wait_while_the_upload_queue_is_full_and_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let keys = MasterSecret::from_bytes(&[42; 32]).unwrap().derive();
    let store = Arc::new(MemStore::with_suppliers(6, usize::MAX));
    for s in 1..=6 {
        store.set_offline(&format!("s{s}"), true);
    }
    let cfg = EngineConfig {
        outbox_limit_bytes: 8 << 20,
        commit_bytes: 4 << 20,
        ..EngineConfig::default()
    };
    let fs = Engine::open(&dir.path().join("db"), keys, cfg, store.clone()).unwrap();
    let data = random(40 << 20, 13);
    let ino = fs
        .create(ROOT, OsStr::new("f"), Kind::File, 0o644, 0, 0, 0, None)
        .unwrap()
        .ino;
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (fs, data, done) = (fs.clone(), data.clone(), done.clone());
        std::thread::spawn(move || {
            for (n, piece) in data.chunks(1 << 20).enumerate() {
                fs.write(ino, (n << 20) as u64, piece).unwrap();
            }
            fs.flush(ino).unwrap();
            done.store(true, std::sync::atomic::Ordering::SeqCst);
        })
    };
    // With every supplier offline nothing can drain: the writer must be held at the limit
    // (40 MiB of data is 60 MiB of shards, the queue takes 8 MiB).
    while fs.status().unwrap().queued_bytes < 8 << 20 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        !done.load(std::sync::atomic::Ordering::SeqCst),
        "the writer was not slowed down"
    );
    let queued = fs.status().unwrap().queued_bytes;
    assert!(
        queued <= 16 << 20,
        "queue grew to {queued}: over the limit by more than a block"
    );
    // Suppliers come back: uploads drain the queue and the writer finishes, without errors.
    for s in 1..=6 {
        store.set_offline(&format!("s{s}"), false);
    }
    while !done.load(std::sync::atomic::Ordering::SeqCst) {
        fs.upload_round().unwrap();
    }
    writer.join().unwrap();
    // Sealing what is left can fill more than one block, and a seal waits while the queue is
    // over its limit: uploads must go on meanwhile, from another thread, as the mount's
    // uploader thread does. (With this thread as the only uploader the test deadlocked
    // under load, when the last dirty chunks happened to fill two blocks.)
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let uploader = {
        let (fs, stop) = (fs.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                if fs.upload_round().unwrap() == 0 {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            }
        })
    };
    fs.seal_all().unwrap();
    while fs.pending().unwrap().0 > 0 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    uploader.join().unwrap();
    fs.cache_drop().unwrap();
    let mut back = Vec::new();
    while back.len() < data.len() {
        back.extend(fs.read(ino, back.len() as u64, 1 << 20).unwrap());
    }
    assert!(back == data);
}

#[test]
fn a_supplier_gone_past_its_grace_period_is_replaced_and_its_blocks_rebuilt() {
    use crate::fsm::supplier::SupplierConfig;
    let t = setup(8, usize::MAX);
    let data = random(20 << 20, 14);
    let ino = t.file("a", &data);
    t.sync();
    let holders_of = |s: &str| -> usize {
        t.fs.all_blocks_for_test()
            .iter()
            .filter(|r| r.shards.iter().any(|x| x.supplier.as_deref() == Some(s)))
            .count()
    };
    assert!(holders_of("s1") > 0 && holders_of("s2") > 0);
    t.store.set_offline("s1", true);
    t.store.set_offline("s2", true);
    let cfg = SupplierConfig {
        suspect_after: 2,
        grace_ms: 3000,
    };
    // Missed checks at 0 and 1000 make them suspect; the grace period ends at 4000.
    for now in [0, 1000, 2000, 3000] {
        assert!(
            t.fs.liveness_round(now, &cfg).unwrap().is_empty(),
            "replaced before the grace period ended"
        );
    }
    let gone = t.fs.liveness_round(4000, &cfg).unwrap();
    assert_eq!(gone.len(), 2, "{gone:?}");
    assert!(t.fs.status().unwrap().blocks["degraded"] > 0);
    while t.fs.repair_round(0, RepairBudget::blocks(8)).unwrap() > 0 {}
    t.sync();
    t.assert_all_healthy();
    assert_eq!(holders_of("s1") + holders_of("s2"), 0);
    // Every block has 6 shards on 6 distinct live suppliers: two more may fail.
    for r in t.fs.all_blocks_for_test() {
        let sups: std::collections::HashSet<_> =
            r.shards.iter().filter_map(|x| x.supplier.clone()).collect();
        assert_eq!(sups.len(), 6);
    }
    t.store.set_offline("s3", true);
    t.store.set_offline("s4", true);
    t.fs.cache_drop().unwrap();
    assert_eq!(t.read_all(ino), data);
}

#[test]
fn a_block_that_cannot_be_rebuilt_yet_is_retried_with_backoff() {
    use crate::fsm::supplier::SupplierConfig;
    let t = setup(8, usize::MAX);
    let (data, ino) = t.cold_file("a", 12 << 20, 16);
    let cfg = SupplierConfig {
        suspect_after: 1,
        grace_ms: 0,
    };
    t.store.set_offline("s1", true);
    t.store.set_offline("s2", true);
    for now in [0, 1] {
        t.fs.liveness_round(now, &cfg).unwrap();
    }
    let degraded = t.fs.status().unwrap().blocks["degraded"];
    assert!(degraded > 0);
    // Every other supplier is briefly unreachable: nothing can be rebuilt, every degraded
    // block backs off instead of being hammered on each pass.
    let others = ["s3", "s4", "s5", "s6", "s7", "s8"];
    for s in others {
        t.store.set_offline(s, true);
    }
    assert_eq!(
        t.fs.repair_round(10_000, RepairBudget::blocks(64)).unwrap(),
        0
    );
    assert_eq!(t.fs.repair_status().unwrap().backing_off as u64, degraded);
    for s in others {
        t.store.set_offline(s, false);
    }
    // Still inside the first backoff (4 s): not retried yet.
    assert_eq!(
        t.fs.repair_round(11_000, RepairBudget::blocks(64)).unwrap(),
        0
    );
    // After it: rebuilt, and the backoff entries are gone.
    assert_eq!(
        t.fs.repair_round(14_000, RepairBudget::blocks(64)).unwrap() as u64,
        degraded
    );
    t.sync();
    let r = t.fs.repair_status().unwrap();
    assert_eq!(r.backing_off, 0);
    assert!(r.bytes_rebuilt > 0);
    assert_eq!(
        t.fs.status()
            .unwrap()
            .blocks
            .get("degraded")
            .copied()
            .unwrap_or(0),
        0
    );
    t.fs.cache_drop().unwrap();
    assert_eq!(t.read_all(ino), data);
}

#[test]
fn a_corrupt_shard_found_on_read_is_repaired_onto_another_supplier() {
    let t = setup(7, usize::MAX);
    let (data, ino) = t.cold_file("a", 6 << 20, 15);
    // Corrupt the supplier of the first block's first data shard (reads fetch data shards).
    let bad = t.fs.all_blocks_for_test()[0].shards[0]
        .supplier
        .clone()
        .unwrap();
    t.store.set_corrupt(&bad);
    assert_eq!(t.read_all(ino), data);
    assert!(t.fs.status().unwrap().blocks["degraded"] > 0);
    while t.fs.repair_round(0, RepairBudget::blocks(8)).unwrap() > 0 {}
    t.sync();
    // The corrupting supplier was replaced: it holds none of our shards any more.
    assert!(t.fs.all_blocks_for_test().iter().all(|r| {
        r.shards
            .iter()
            .all(|x| x.supplier.as_deref() != Some(bad.as_str()))
    }));
    assert_eq!(
        t.fs.repair_status().unwrap().supplier_states[&bad],
        "replaced"
    );
    t.assert_all_healthy();
    t.fs.cache_drop().unwrap();
    assert_eq!(t.read_all(ino), data);
}

#[test]
fn audits_catch_a_supplier_that_dropped_its_shards_and_the_blocks_are_rebuilt() {
    let t = setup(8, usize::MAX);
    let data = random(12 << 20, 16);
    let ino = t.file("a", &data);
    t.sync();
    let (passed, failed) = t.fs.audit_round(1, 1 << 20).unwrap();
    assert!(passed > 10 && failed == 0, "{passed} {failed}");
    t.store.drop_all("s5");
    let mut seed = 2;
    while t
        .fs
        .repair_status()
        .unwrap()
        .supplier_states
        .get("s5")
        .map(String::as_str)
        != Some("replaced")
    {
        t.fs.audit_round(seed, 1 << 20).unwrap();
        seed += 1;
        assert!(seed < 50, "the audits never caught s5");
    }
    while t.fs.repair_round(0, RepairBudget::blocks(8)).unwrap() > 0 {}
    t.sync();
    t.assert_all_healthy();
    assert!(
        t.fs.all_blocks_for_test()
            .iter()
            .all(|r| r.shards.iter().all(|x| x.supplier.as_deref() != Some("s5")))
    );
    t.fs.cache_drop().unwrap();
    assert_eq!(t.read_all(ino), data);
}

impl T {
    /// Snapshot + upload + publish, as `dustfs sync` does.
    fn publish(&self) -> SnapshotInfo {
        self.sync();
        let p = self.fs.snapshot_metadata().unwrap();
        self.sync();
        self.fs.publish_snapshot(p).unwrap()
    }

    /// A fresh engine in a new directory with the same keys and store, restored from the
    /// network, then reopened.
    fn restore_elsewhere(&self, dir: &std::path::Path) -> FsResult<(Arc<Engine>, RestoreInfo)> {
        let store: Arc<dyn ShardStore> = self.store.clone();
        let fresh = Engine::open(
            dir,
            self.keys.clone(),
            EngineConfig::default(),
            store.clone(),
        )?;
        let info = fresh.restore_from_network(None, Vec::new(), |_, _| {});
        drop(fresh);
        let info = info?;
        let e = Engine::open(dir, self.keys.clone(), EngineConfig::default(), store)?;
        Ok((e, info))
    }
}

fn tree_of(fs: &Engine, dir: Ino, prefix: &str, out: &mut Vec<(String, Kind, u16, u64, Vec<u8>)>) {
    for e in fs.readdir(dir, 0, usize::MAX).unwrap() {
        let name = String::from_utf8_lossy(&e.name).to_string();
        if name == "." || name == ".." {
            continue;
        }
        let i = fs.get_inode(e.ino).unwrap();
        let path = format!("{prefix}/{name}");
        let content = match i.kind {
            Kind::File => {
                let mut v = Vec::new();
                while (v.len() as u64) < i.size {
                    v.extend(fs.read(i.ino, v.len() as u64, 1 << 20).unwrap());
                }
                v
            }
            Kind::Symlink => fs.readlink(i.ino).unwrap(),
            _ => Vec::new(),
        };
        out.push((path.clone(), i.kind, i.perm, i.ino, content));
        if i.kind == Kind::Dir {
            tree_of(fs, i.ino, &path, out);
        }
    }
}

#[test]
fn a_fresh_engine_restores_the_whole_namespace_from_the_network_alone() {
    let t = setup(8, usize::MAX);
    let big = random(9 << 20, 21);
    t.file("big", &big);
    let d =
        t.fs.create(ROOT, OsStr::new("dir"), Kind::Dir, 0o750, 0, 0, 0, None)
            .unwrap();
    for n in 0..300 {
        let i =
            t.fs.create(
                d.ino,
                OsStr::new(&format!("f{n}")),
                Kind::File,
                0o600,
                0,
                0,
                0,
                None,
            )
            .unwrap();
        t.fs.write(i.ino, 0, format!("small file {n}").as_bytes())
            .unwrap();
    }
    t.fs.create(
        ROOT,
        OsStr::new("link"),
        Kind::Symlink,
        0o777,
        0,
        0,
        0,
        Some(std::path::Path::new("dir/f7")),
    )
    .unwrap();
    let first = t.publish();
    assert_eq!(first.seq, 1);
    assert_eq!(first.files, 301);
    // A second snapshot after a change: it is the one restored.
    t.file("later", b"written after the first snapshot");
    let second = t.publish();
    assert_eq!(second.seq, 2);
    let mut want = Vec::new();
    tree_of(&t.fs, ROOT, "", &mut want);

    // Two suppliers gone before the restore: every block still has k shards.
    t.store.set_offline("s1", true);
    t.store.set_offline("s2", true);
    let other = tempfile::tempdir().unwrap();
    let (e, info) = t.restore_elsewhere(&other.path().join("db")).unwrap();
    assert_eq!(info.snapshot.seq, 2);
    assert_eq!(info.snapshot.files, 302);
    assert!(info.blocks > 0);
    let mut got = Vec::new();
    e.cache_drop().unwrap();
    tree_of(&e, ROOT, "", &mut got);
    assert!(got == want, "restored tree differs");
    // Blocks missing the offline suppliers' shards are degraded and get repaired.
    assert!(
        e.status()
            .unwrap()
            .blocks
            .get("degraded")
            .copied()
            .unwrap_or(0)
            > 0
    );
    // The restored home goes on: new files get fresh inode and block numbers.
    let n = e
        .create(ROOT, OsStr::new("new"), Kind::File, 0o644, 0, 0, 0, None)
        .unwrap();
    assert!(want.iter().all(|w| w.3 != n.ino));
    e.write(n.ino, 0, b"after restore").unwrap();
    e.seal_all().unwrap();
    assert_eq!(e.read(n.ino, 0, 100).unwrap(), b"after restore");
    let big_ino = e.lookup(ROOT, OsStr::new("big")).unwrap().ino;
    e.cache_drop().unwrap();
    let mut v = Vec::new();
    while v.len() < big.len() {
        v.extend(e.read(big_ino, v.len() as u64, 1 << 20).unwrap());
    }
    assert!(v == big);
}

#[test]
fn restore_refuses_forged_and_ignores_older_root_records_and_says_when_there_is_none() {
    let t = setup(6, usize::MAX);
    let other = tempfile::tempdir().unwrap();
    // Nothing published yet: a clear error, not an empty tree.
    match t.restore_elsewhere(&other.path().join("none")) {
        Err(FsError::NoSnapshot(msg)) => assert!(msg.contains("no snapshot"), "{msg}"),
        other => panic!("expected NoSnapshot, got {:?}", other.map(|x| x.1)),
    }
    t.file("a", b"version one");
    let old = t.publish();
    t.fs.unlink(ROOT, OsStr::new("a")).unwrap();
    t.file("b", b"version two");
    t.publish();
    // A supplier serves a forged record with a higher sequence number (signed by another
    // key), and the old genuine one.
    let thief = MasterSecret::generate().derive();
    let forged = crate::root::RootRecord {
        user: t.keys.public().to_bytes(),
        seq: 99,
        time_ms: 0,
        manifest: crate::root::seal_manifest(&thief, b"nothing").unwrap(),
    }
    .sign(&thief);
    t.store.put_root(&"s3".to_string(), &forged).unwrap();
    let old_signed = t
        .store
        .get_roots(&"s3".to_string())
        .unwrap()
        .into_iter()
        .find(|r| crate::root::RootRecord::peek_seq(r).map(|x| x.0) == Some(old.seq))
        .unwrap();
    t.store.put_root(&"s4".to_string(), &old_signed).unwrap();
    let (e, info) = t.restore_elsewhere(&other.path().join("db")).unwrap();
    assert_eq!(info.snapshot.seq, 2);
    assert!(info.roots_refused >= 1);
    assert!(e.lookup(ROOT, OsStr::new("a")).is_err());
    let b = e.lookup(ROOT, OsStr::new("b")).unwrap();
    assert_eq!(e.read(b.ino, 0, 100).unwrap(), b"version two");
}

fn total_used(store: &MemStore, n: usize) -> usize {
    (1..=n).map(|i| store.used(&format!("s{i}"))).sum()
}

#[test]
fn prune_frees_what_no_kept_snapshot_references_and_survives_a_crash_halfway() {
    let mut t = setup(8, usize::MAX);
    let keep = random(3 << 20, 31);
    let big = random(20 << 20, 32);
    let keep_ino = t.file("keep", &keep);
    t.file("big", &big);
    t.publish();
    t.fs.unlink(ROOT, OsStr::new("big")).unwrap();
    t.publish();
    let before = total_used(&t.store, 8);
    // Keep two snapshots: the first still has "big", so nothing of it may go.
    let two = Retention {
        keep_last: 2,
        keep_daily: 0,
        keep_weekly: 0,
    };
    let r = t.fs.prune(&two).unwrap();
    assert_eq!(r.snapshots_kept, vec![1, 2]);
    assert!(r.snapshots_dropped.is_empty());
    assert!(total_used(&t.store, 8) >= before - before / 20, "{r:?}");
    {
        let other = tempfile::tempdir().unwrap();
        let store: Arc<dyn ShardStore> = t.store.clone();
        let e = Engine::open(
            &other.path().join("s1"),
            t.keys.clone(),
            EngineConfig::default(),
            store.clone(),
        )
        .unwrap();
        e.restore_from_network(Some(1), Vec::new(), |_, _| {})
            .unwrap();
        drop(e);
        let e = Engine::open(
            &other.path().join("s1"),
            t.keys.clone(),
            EngineConfig::default(),
            store,
        )
        .unwrap();
        let b = e.lookup(ROOT, OsStr::new("big")).unwrap();
        let mut v = Vec::new();
        while v.len() < big.len() {
            v.extend(e.read(b.ino, v.len() as u64, 1 << 20).unwrap());
        }
        assert!(v == big, "a kept snapshot lost data");
    }

    // Keep only the newest: "big" goes. The suppliers are unreachable while the deletes are
    // sent (as if the process died after marking): nothing is lost, the trash remains.
    let one = Retention {
        keep_last: 1,
        keep_daily: 0,
        keep_weekly: 0,
    };
    let others: Vec<String> = (1..=8).map(|i| format!("s{i}")).collect();
    for s in &others[..2] {
        t.store.set_offline(s, true);
    }
    let r = t.fs.prune(&one).unwrap();
    assert_eq!(r.snapshots_dropped, vec![1]);
    assert!(r.blocks_pending > 0, "{r:?}");
    // "Crash" and restart, suppliers back: the next prune finishes the job.
    for s in &others[..2] {
        t.store.set_offline(s, false);
    }
    t.reopen();
    let r2 = t.fs.prune(&one).unwrap();
    assert_eq!(r2.blocks_pending, 0, "{r2:?}");
    let after = total_used(&t.store, 8);
    // "big" was 20 of the 23 MiB: at least half of its share is gone from the suppliers.
    assert!(after < before * 3 / 5, "before {before}, after {after}");
    t.fs.cache_drop().unwrap();
    assert_eq!(t.read_all(keep_ino), keep);
    // Snapshot 1 is gone from the suppliers' lists; the newest stays.
    let seqs: Vec<u64> = crate::fs::list_snapshots(&*t.store, &t.keys)
        .unwrap()
        .iter()
        .map(|s| s.seq)
        .collect();
    assert_eq!(seqs, vec![2]);
    // Everything still works afterwards: a new snapshot and a restore of it.
    t.file("after", b"after the prune");
    t.publish();
    let other = tempfile::tempdir().unwrap();
    let (e, info) = t.restore_elsewhere(&other.path().join("db")).unwrap();
    assert_eq!(info.snapshot.seq, 3);
    let k = e.lookup(ROOT, OsStr::new("keep")).unwrap();
    let mut v = Vec::new();
    while v.len() < keep.len() {
        v.extend(e.read(k.ino, v.len() as u64, 1 << 20).unwrap());
    }
    assert!(v == keep);
    assert!(e.lookup(ROOT, OsStr::new("big")).is_err());
}

impl T {
    /// A prune as the mount runs it: plan, compaction, a new snapshot naming the moved chunks,
    /// then marking and deleting.
    fn prune_full(&self, policy: &Retention) -> PruneReport {
        let mut plan = self.fs.prune_plan(policy).unwrap();
        if self.fs.prune_compact(&mut plan, 0.5).unwrap() > 0 {
            let s = self.publish();
            self.fs.prune_keep_also(&mut plan, s.seq).unwrap();
        }
        self.fs.prune_finish(plan).unwrap()
    }

    fn restore_seq(&self, seq: u64) -> Arc<Engine> {
        let dir = self._dir.path().join(format!("restore-{seq}"));
        let store: Arc<dyn ShardStore> = self.store.clone();
        let e = Engine::open(
            &dir,
            self.keys.clone(),
            EngineConfig::default(),
            store.clone(),
        )
        .unwrap();
        e.restore_from_network(Some(seq), Vec::new(), |_, _| {})
            .unwrap();
        drop(e);
        Engine::open(&dir, self.keys.clone(), EngineConfig::default(), store).unwrap()
    }
}

fn read_named(e: &Engine, name: &str) -> Vec<u8> {
    let i = e.lookup(ROOT, OsStr::new(name)).unwrap();
    let mut v = Vec::new();
    while (v.len() as u64) < i.size {
        v.extend(e.read(i.ino, v.len() as u64, 1 << 20).unwrap());
    }
    v
}

#[test]
fn compaction_moves_live_chunks_out_of_mostly_dead_blocks_and_old_snapshots_still_read() {
    let t = setup(8, usize::MAX);
    let x = random(200 << 10, 41);
    t.file("x", &x);
    for j in 0..40 {
        t.file(&format!("junk{j}"), &random(200 << 10, 100 + j));
    }
    // The junk is deleted before any snapshot: "x" shares its block with dead chunks only.
    for j in 0..40 {
        t.fs.unlink(ROOT, OsStr::new(&format!("junk{j}"))).unwrap();
    }
    let s1 = t.publish();
    let z = random(1 << 20, 42);
    t.file("z", &z);
    t.publish();
    let before = total_used(&t.store, 8);
    let keep3 = Retention {
        keep_last: 3,
        keep_daily: 0,
        keep_weekly: 0,
    };
    let r = t.prune_full(&keep3);
    assert!(
        r.blocks_compacted >= 1 && r.bytes_compacted >= 200 << 10,
        "{r:?}"
    );
    assert!(r.blocks_deleted >= 2, "{r:?}");
    let after = total_used(&t.store, 8);
    assert!(after < before / 2, "before {before}, after {after}: {r:?}");
    t.fs.cache_drop().unwrap();
    assert_eq!(read_named(&t.fs, "x"), x);
    // The oldest kept snapshot names x's old block in its own index: restoring it takes the
    // locations from the newest snapshot.
    let old = t.restore_seq(s1.seq);
    assert_eq!(read_named(&old, "x"), x);
    assert!(old.lookup(ROOT, OsStr::new("z")).is_err());
    let newest = t
        .restore_elsewhere(&t._dir.path().join("newest"))
        .unwrap()
        .0;
    assert_eq!(read_named(&newest, "x"), x);
    assert_eq!(read_named(&newest, "z"), z);
}

#[test]
fn the_repair_bandwidth_limit_holds_across_passes() {
    use crate::fsm::supplier::SupplierConfig;
    let t = setup(8, usize::MAX);
    t.file("a", &random(12 << 20, 51));
    t.sync();
    t.fs.cache_drop().unwrap();
    let cfg = SupplierConfig {
        suspect_after: 1,
        grace_ms: 0,
    };
    t.store.set_offline("s1", true);
    for now in [0, 1] {
        t.fs.liveness_round(now, &cfg).unwrap();
    }
    let degraded = t.fs.status().unwrap().blocks["degraded"];
    assert!(degraded >= 2);
    // One block per pass at 8 MiB/s: passes must wait for each other (a limiter that reset
    // with every pass would let them all through at once).
    let budget = RepairBudget {
        max_blocks: 1,
        bytes_per_sec: 8 << 20,
    };
    let start = std::time::Instant::now();
    let mut rebuilt = 0;
    while t.fs.repair_round(10, budget).unwrap() > 0 {
        rebuilt += 1;
    }
    assert_eq!(rebuilt, degraded);
    let bytes = t.fs.repair_status().unwrap().bytes_rebuilt;
    // All but the last block's share of the limit must have been waited out.
    let floor = (bytes as f64 / (8 << 20) as f64) * (degraded - 1) as f64 / degraded as f64;
    assert!(
        start.elapsed().as_secs_f64() >= floor * 0.9,
        "{bytes} bytes in {:?}",
        start.elapsed()
    );
}

#[test]
fn suppliers_reached_only_through_a_relay_get_shards_only_when_no_better_choice_is_left() {
    use crate::fsm::supplier::SupplierConfig;
    let t = setup(8, usize::MAX);
    t.store.set_relayed("s7");
    t.store.set_relayed("s8");
    let data = random(24 << 20, 15);
    let ino = t.file("a", &data);
    t.sync();
    // Six direct suppliers are enough for 4+2: the relayed ones get nothing.
    assert_eq!(t.store.used("s7") + t.store.used("s8"), 0);
    assert!((1..=6).all(|i| t.store.used(&format!("s{i}")) > 0));
    // With two direct suppliers gone, every block needs the relayed ones, and gets them.
    t.store.set_offline("s1", true);
    t.store.set_offline("s2", true);
    let cfg = SupplierConfig {
        suspect_after: 1,
        grace_ms: 0,
    };
    for now in [0, 1000, 2000] {
        t.fs.liveness_round(now, &cfg).unwrap();
    }
    while t.fs.repair_round(0, RepairBudget::blocks(8)).unwrap() > 0 {}
    t.sync();
    t.assert_all_healthy();
    assert!(t.store.used("s7") > 0 && t.store.used("s8") > 0);
    t.fs.cache_drop().unwrap();
    assert_eq!(t.read_all(ino), data);
}

#[test]
fn sequential_reads_fetch_the_next_blocks_ahead_and_read_back_the_same_bytes() {
    let t = setup(6, usize::MAX);
    let (data, ino) = t.cold_file("a", 40 << 20, 16);
    assert_eq!(t.fs.status().unwrap().cache_bytes, 0);
    let fetched = || t.fs.status().unwrap().fetched_bytes;
    // The first read of a file counts as sequential: the next blocks are fetched ahead.
    let first = t.fs.read(ino, 0, 1 << 20).unwrap();
    assert_eq!(first, data[..1 << 20]);
    let one_block = t.fs.status().unwrap().cache_bytes;
    assert_eq!(fetched(), one_block);
    t.fs.read_ahead(ino, 0, 1 << 20);
    wait_until(
        "nothing was fetched ahead",
        || fetched() >= one_block + 3 * (4 << 20),
        || t.fs.status().unwrap(),
    );
    // Reading on while fetches run gives the same bytes.
    let mut out = first;
    while out.len() < data.len() {
        let off = out.len() as u64;
        let piece = t.fs.read(ino, off, 1 << 20).unwrap();
        t.fs.read_ahead(ino, off, piece.len() as u64);
        out.extend_from_slice(&piece);
    }
    assert_eq!(out, data);
    // Every block was fetched once (the last one may be short), and the ones fetched ahead
    // went to the reader in memory, not into the block cache: a file streamed from start to
    // end does not push everything else out of it.
    assert!(fetched() <= data.len() as u64 + (4 << 20), "{}", fetched());
    assert_eq!(t.fs.status().unwrap().cache_bytes, one_block);
    // Nor are they kept once read: of the nine blocks fetched ahead, only those the last read
    // took bytes from (one or two) are still held in memory.
    let held = t.fs.status().unwrap().readahead_bytes;
    assert!(
        held > 0 && held <= 2 * (4 << 20),
        "{held} bytes fetched ahead still held"
    );
    // A random read does not trigger readahead.
    t.fs.cache_drop().unwrap();
    let before = fetched();
    let _ = t.fs.read(ino, 30 << 20, 4096).unwrap();
    t.fs.read_ahead(ino, 30 << 20, 4096);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(fetched() - before <= 2 * (4 << 20) + (1 << 20));
}

#[test]
fn a_reader_that_stops_half_way_leaves_no_blocks_fetched_ahead_once_it_closes_the_file() {
    let t = setup(6, usize::MAX);
    let (data, ino) = t.cold_file("a", 40 << 20, 18);
    let status = || t.fs.status().unwrap();
    t.fs.opened(ino).unwrap();
    assert_eq!(t.fs.read(ino, 0, 1 << 20).unwrap(), data[..1 << 20]);
    t.fs.read_ahead(ino, 0, 1 << 20);
    // The reader goes no further; what was fetched ahead for it waits in memory.
    wait_until(
        "nothing was fetched ahead",
        || status().readahead_bytes >= 6 * (4 << 20),
        status,
    );
    t.fs.released(ino).unwrap();
    assert_eq!(status().readahead_bytes, 0);
    // Fetches still under way at the close are not kept when they come either: the file is
    // opened again (its next reader starts afresh: this first read fetches ahead again) and
    // closed at once, while those fetches run.
    let fetched = status().fetched_bytes;
    t.fs.opened(ino).unwrap();
    assert_eq!(t.fs.read(ino, 0, 1 << 20).unwrap(), data[..1 << 20]);
    t.fs.read_ahead(ino, 0, 1 << 20);
    t.fs.released(ino).unwrap();
    // Until the fetches have all landed: more fetched, and no more for 300 ms.
    let mut last = fetched;
    wait_until(
        "nothing fetched ahead again",
        || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            let now = status().fetched_bytes;
            std::mem::replace(&mut last, now) == now && now > fetched
        },
        status,
    );
    assert_eq!(status().readahead_bytes, 0);
    // The file reads back whole afterwards.
    t.fs.opened(ino).unwrap();
    assert_eq!(t.read_all(ino), data);
    t.fs.released(ino).unwrap();
}

#[test]
fn cached_blocks_are_files_and_a_rotten_one_is_fetched_again_from_suppliers() {
    let t = setup(6, usize::MAX);
    let data = random(24 << 20, 17);
    let ino = t.file("a", &data);
    t.sync();
    assert_eq!(t.read_all(ino), data);
    let files: Vec<_> = std::fs::read_dir(t.path.join(blocks::CACHE_DIR))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(files.len() >= 5, "{files:?}");
    // A rotting local disk: every cached block gets a flipped byte.
    for f in &files {
        let mut b = std::fs::read(f).unwrap();
        let mid = b.len() / 2;
        b[mid] ^= 1;
        std::fs::write(f, b).unwrap();
    }
    assert_eq!(t.read_all(ino), data);
    // The index survives a restart (rebuilt from the files).
    let mut t = t;
    let before = t.fs.status().unwrap().cache_bytes;
    t.reopen();
    assert_eq!(t.fs.status().unwrap().cache_bytes, before);
    assert_eq!(t.read_all(ino), data);
}

/// Bytes allocated on disk for a file (holes excluded).
fn allocated(p: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).map(|m| m.blocks() * 512).unwrap_or(0)
}

#[test]
fn a_long_write_cycles_through_a_bounded_dirty_file() {
    let mut t = setup(6, usize::MAX);
    let data = random(100 << 20, 21);
    let ino =
        t.fs.create(ROOT, OsStr::new("long"), Kind::File, 0o644, 0, 0, 0, None)
            .unwrap()
            .ino;
    t.fs.opened(ino).unwrap();
    for (n, piece) in data.chunks(1 << 20).enumerate() {
        t.fs.write(ino, (n << 20) as u64, piece).unwrap();
    }
    let dirty = t.path.join(data::DIRTY_DIR).join(format!("{ino:016x}"));
    // Every 16 MiB is committed and the live tail moved back to the start of the file, so
    // the file stays within the wrap point, one commit and one largest chunk.
    let bound = (16 << 20) + (16 << 20) + (4 << 20) + (1 << 20);
    assert!(std::fs::metadata(&dirty).unwrap().len() <= bound);
    assert!(allocated(&dirty) <= bound, "{}", allocated(&dirty));
    assert!(t.fs.status().unwrap().dirty_bytes > 0);
    assert_eq!(t.read_all(ino), data);
    // The moved tail survives a restart.
    t.reopen();
    assert_eq!(t.read_all(ino), data);
    t.fs.opened(ino).unwrap();
    t.fs.released(ino).unwrap();
    assert!(!dirty.exists(), "the dirty file outlived its last commit");
    assert_eq!(t.fs.status().unwrap().dirty_bytes, 0);
    t.assert_reads_back_from_suppliers(ino, &data);
}

/// Reads `size` bytes of `ino` on a thread of its own; the answer comes on the channel (a test
/// of a read that might hang bounds its wait with `recv_timeout`).
fn read_in_background(
    fs: &Arc<Engine>,
    ino: u64,
    size: usize,
) -> std::sync::mpsc::Receiver<Result<Vec<u8>, String>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let fs = fs.clone();
    std::thread::spawn(move || {
        let mut out = Vec::new();
        while out.len() < size {
            match fs.read(ino, out.len() as u64, 1 << 20) {
                Ok(p) if !p.is_empty() => out.extend_from_slice(&p),
                other => {
                    let _ = tx.send(Err(format!("{other:?}")));
                    return;
                }
            }
        }
        let _ = tx.send(Ok(out));
    });
    rx
}

/// A 5 MiB file stored on suppliers, not cached, whose first block's first data shard sits on a
/// supplier that answers no fetch until released: the test, the bytes, the inode, that block's
/// record and the stalled supplier.
fn a_file_behind_a_stalled_supplier(seed: u64) -> (T, Vec<u8>, Ino, BlockRecord, String) {
    let t = setup(6, usize::MAX);
    let data = random(5 << 20, seed);
    let ino = t.file("f", &data);
    t.sync();
    t.fs.cache_drop().unwrap();
    let rec = t.fs.block_record(1).unwrap().unwrap();
    let slow = rec.shards[0].supplier.clone().unwrap();
    t.store.set_stalled(&slow, true);
    (t, data, ino, rec, slow)
}

/// Reads the whole file while the `stalled` suppliers answer no fetch, releases them, and
/// checks the bytes. Not a timing test: a read that waits for a stalled fetch waits for ever;
/// the 60 s bound only turns that hang into a failure.
fn read_past_stalled_suppliers(t: &T, ino: Ino, data: &[u8], stalled: &[&str]) {
    let rx = read_in_background(&t.fs, ino, data.len());
    let got = rx.recv_timeout(std::time::Duration::from_secs(60));
    for s in stalled {
        t.store.set_stalled(s, false);
    }
    let got = got.expect("the read waited for a supplier that does not answer");
    assert!(got.unwrap() == data, "read back different bytes");
}

#[test]
fn a_supplier_that_does_not_answer_does_not_hold_up_a_read() {
    let (t, data, ino, _, slow) = a_file_behind_a_stalled_supplier(41);
    read_past_stalled_suppliers(&t, ino, &data, &[&slow]);
    assert!(t.fs.status().unwrap().hedged_fetches >= 1);
}

#[test]
fn a_spare_fetch_that_stalls_too_gets_a_spare_of_its_own() {
    // The first data shard's supplier does not answer, and neither does the first parity
    // shard's, where the first spare goes: the read must go on to the second parity shard
    // (spares that went out once per block waited for ever here).
    let (t, data, ino, rec, slow) = a_file_behind_a_stalled_supplier(47);
    let slow_too = rec.shards[4].supplier.clone().unwrap();
    t.store.set_stalled(&slow_too, true);
    read_past_stalled_suppliers(&t, ino, &data, &[&slow, &slow_too]);
    assert!(t.fs.status().unwrap().hedged_fetches >= 2);
}

#[test]
fn a_fetch_that_panics_loses_only_its_shard() {
    // The first data shard's supplier does not answer, so a spare fetch goes out for the
    // first parity shard, whose supplier's fetch panics.
    let (t, data, ino, rec, slow) = a_file_behind_a_stalled_supplier(43);
    let bad = rec.shards[4].supplier.clone().unwrap();
    t.store.set_panicking(&bad, true);
    let rx = read_in_background(&t.fs, ino, data.len());
    // Without the panic reported as a failed fetch, the read waits for it for ever (the
    // stalled fetch is released only below).
    let got = rx.recv_timeout(std::time::Duration::from_secs(60));
    t.store.set_panicking(&bad, false);
    t.store.set_stalled(&slow, false);
    let got = got.expect("the read waited for a fetch that panicked");
    assert!(got.unwrap() == data, "read back different bytes");
}

/// Found by the SIGKILL-during-rsync suite: a restart found a dirty file whose live bytes
/// all lay past the wrap point before the file was opened, and took its end for 0.
#[test]
fn a_restart_with_live_dirty_bytes_far_into_their_file_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let keys = MasterSecret::from_bytes(&[42; 32]).unwrap().derive();
    let store: Arc<dyn ShardStore> = Arc::new(MemStore::with_suppliers(6, usize::MAX));
    // No commit while writing: dirty bytes pile up in the file as a crash would find them.
    let cfg = || EngineConfig {
        commit_bytes: 1 << 30,
        ..EngineConfig::default()
    };
    let mut fs = Engine::open(&path, keys.clone(), cfg(), store.clone()).unwrap();
    let mut want = Vec::new();
    for (name, truncate) in [("keeps", None), ("cut", Some(20u64 << 20))] {
        let ino = fs
            .create(ROOT, OsStr::new(name), Kind::File, 0o644, 0, 0, 0, None)
            .unwrap()
            .ino;
        fs.opened(ino).unwrap();
        let mut data = random(40 << 20, 31);
        for (n, piece) in data.chunks(1 << 20).enumerate() {
            fs.write(ino, (n << 20) as u64, piece).unwrap();
        }
        // Overwritten: the first live byte is now 20 MiB into the dirty file ("keeps": more
        // live bytes than dead ones before them; "cut": fewer, so the restart moves them).
        let over = random(20 << 20, 32);
        fs.write(ino, 0, &over).unwrap();
        data[..over.len()].copy_from_slice(&over);
        if let Some(len) = truncate {
            let a = SetAttr {
                size: Some(len),
                ..SetAttr::default()
            };
            fs.setattr(ino, a).unwrap();
            data.truncate(len as usize);
        }
        want.push((ino, data));
    }
    for _ in 0..2 {
        drop(fs);
        fs = Engine::open(&path, keys.clone(), cfg(), store.clone()).unwrap();
        for (ino, data) in &want {
            let mut out = Vec::new();
            while out.len() < data.len() {
                out.extend(fs.read(*ino, out.len() as u64, 1 << 20).unwrap());
            }
            assert!(out == *data, "inode {ino} changed across a restart");
        }
    }
    // The restart moved the 20 live MiB of "cut" from 40 MiB into its file to the start: the
    // next write follows them there.
    let (ino, data) = &want[1];
    let cut = path.join(data::DIRTY_DIR).join(format!("{ino:016x}"));
    fs.write(*ino, data.len() as u64, &random(1 << 20, 33))
        .unwrap();
    assert_eq!(std::fs::metadata(&cut).unwrap().len(), 21 << 20);
}

#[test]
fn a_crash_while_sealing_or_appending_to_the_open_block_loses_nothing() {
    let mut t = setup(6, usize::MAX);
    let a = random(1 << 20, 22);
    let ino = t.file("a", &a);
    let no = lock(&t.fs.state).open.no;
    let name = format!("{no:016x}");
    let open = t.path.join(blocks::OPEN_DIR).join(&name);
    let cached = t.path.join(blocks::CACHE_DIR).join(&name);
    assert!(open.exists());
    // A crash after sealing renamed the block's file into the cache, before its batch.
    let bytes = std::fs::read(&open).unwrap();
    t.reopen();
    std::fs::rename(&open, &cached).unwrap();
    // ...and a write cut short after its bytes reached the file, before its batch.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&cached)
        .unwrap();
    std::io::Write::write_all(&mut f, b"bytes no chunk refers to").unwrap();
    drop(f);
    t.reopen();
    assert_eq!(
        std::fs::read(&open).unwrap(),
        bytes,
        "open block not restored"
    );
    assert!(!cached.exists());
    assert_eq!(t.read_all(ino), a);
    let b = random(9 << 20, 23);
    let ino_b = t.file("b", &b);
    t.assert_reads_back_from_suppliers(ino, &a);
    assert_eq!(t.read_all(ino_b), b);
    t.assert_all_healthy();
}

#[test]
fn queued_shards_not_kept_in_memory_are_encoded_again_from_their_block() {
    let t = setup(6, usize::MAX);
    let data = random(24 << 20, 24);
    let ino = t.file("a", &data);
    t.fs.seal_all().unwrap();
    assert!(lock(&t.fs.staged).bytes > 0);
    *lock(&t.fs.staged) = blocks::Staged::default();
    t.sync();
    t.assert_all_healthy();
    t.fs.cache_drop().unwrap();
    assert_eq!(t.read_all(ino), data);
}

/// Drops the shards kept in memory for the uploader (as when they did not fit), keeping the
/// record of which blocks' files this process wrote.
fn forget_staged_shards(t: &T) {
    let mut staged = lock(&t.fs.staged);
    let own = std::mem::take(&mut staged.own);
    *staged = blocks::Staged::default();
    staged.own = own;
}

/// A block this process sealed keeps only its parity in memory; when that is not kept either,
/// the uploader builds every shard from the block's file without hashing it again, and what
/// reaches the suppliers is exactly the recorded shards (the store refuses any other bytes).
#[test]
fn shards_of_blocks_sealed_here_are_built_from_their_files() {
    let t = setup(6, usize::MAX);
    let data = random(24 << 20, 26);
    let ino = t.file("a", &data);
    t.fs.seal_all().unwrap();
    let blocks = t.fs.status().unwrap().blocks.values().sum::<u64>();
    {
        let staged = lock(&t.fs.staged);
        // Parity only: 2 of 6 shards of each block.
        assert_eq!(staged.shards.len() as u64, 2 * blocks);
        assert!(staged.shards.keys().all(|&(_, i)| i >= 4));
        assert_eq!(staged.own.len() as u64, blocks);
    }
    forget_staged_shards(&t);
    // Send buffers are reused: shards are built over whatever bytes they held.
    for _ in 0..4 {
        super::blocks::give_back(Arc::new(vec![0xAA; 3 << 20]));
    }
    let own: Vec<u64> = lock(&t.fs.staged).own.iter().copied().collect();
    for no in own {
        let rec = t.fs.block_record(no).unwrap().unwrap();
        let all: Vec<usize> = (0..rec.shards.len()).collect();
        let shards = t.fs.queued_shards(no, &all, &rec).unwrap();
        assert_eq!(shards.len(), rec.shards.len());
        for (i, bytes) in shards {
            assert_eq!(
                crate::shard::ShardId::of(&bytes),
                rec.shards[i].id,
                "block {no} shard {i}"
            );
            super::blocks::give_back(bytes);
        }
        // Built from the file, not by the path that checks it against the record.
        assert!(lock(&t.fs.staged).own.contains(&no));
    }
    t.sync();
    t.assert_all_healthy();
    assert!(
        lock(&t.fs.staged).own.is_empty(),
        "uploaded blocks are forgotten"
    );
    t.fs.cache_drop().unwrap();
    assert_eq!(t.read_all(ino), data);
}

/// A block file that changed under the engine after it was sealed: the supplier refuses the
/// shards built from it, the block is then checked against its record, and it is declared
/// lost (its only full copy is damaged) instead of other bytes being stored as its shards.
#[test]
fn a_block_file_changed_after_sealing_is_not_uploaded_as_its_shards() {
    let t = setup(6, usize::MAX);
    let data = random(3 << 20, 27);
    t.file("a", &data);
    t.fs.seal_all().unwrap();
    let no = *lock(&t.fs.staged).own.iter().next().unwrap();
    forget_staged_shards(&t);
    let path = t.fs.cache_path(no);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    // Drains the queue (or fails the test): the damaged block leaves it as lost.
    t.sync();
    assert!(!lock(&t.fs.staged).own.contains(&no));
    let st = t.fs.status().unwrap();
    assert_eq!(st.queued_shards, 0, "{st:?}");
    assert_eq!(st.blocks.get("lost"), Some(&1), "{st:?}");
}

#[test]
fn dirty_writes_kept_in_the_database_by_earlier_versions_are_moved_into_files() {
    let mut t = setup(6, usize::MAX);
    let data = random(300_000, 25);
    let ino =
        t.fs.create(ROOT, OsStr::new("old"), Kind::File, 0o644, 0, 0, 0, None)
            .unwrap()
            .ino;
    // What an earlier version left: two dirty writes as values, extents naming them by
    // sequence number.
    let mut b = WriteBatch::default();
    let (first, second) = data.split_at(100_000);
    for (seq, off, part) in [(7u64, 0u64, first), (9, 100_000, second)] {
        b.put_cf(&t.fs.cf(cf::DIRTY), db::key2(ino, seq), part);
        let e = Extent {
            len: part.len() as u64,
            src: Src::Dirty { pos: seq, off: 0 },
        };
        b.put_cf(&t.fs.cf(cf::EXTENTS), db::key2(ino, off), db::encode(&e));
    }
    let mut inode = t.fs.get_inode(ino).unwrap();
    inode.size = data.len() as u64;
    t.fs.put_inode(&mut b, &inode);
    t.fs.db.write(b).unwrap();
    t.reopen();
    assert_eq!(t.read_all(ino), data);
    let left =
        t.fs.db
            .iterator_cf(&t.fs.cf(cf::DIRTY), rocksdb::IteratorMode::Start)
            .count();
    assert_eq!(left, 0, "dirty values left in the database");
    t.assert_reads_back_from_suppliers(ino, &data);
}

/// Two upload rounds run at once, each on its own blocks (the daemon runs UPLOAD_ROUNDS): while
/// one waits for its stores, the other sends the next blocks' shards, and together they place
/// every shard once, each block's shards on different suppliers.
#[test]
fn upload_rounds_run_side_by_side_on_different_blocks() {
    let t = setup(6, usize::MAX);
    let data = random(40 << 20, 11);
    let ino = t.file("big", &data);
    t.fs.seal_all().unwrap();
    let blocks = t.fs.status().unwrap().blocks.values().sum::<u64>();
    assert!(blocks >= 8, "only {blocks} blocks: too few for two rounds");
    let queued = t.fs.status().unwrap().queued_shards;
    t.store.hold_stores(true);
    let per_round = t.fs.blocks_per_round() * t.fs.cfg.redundancy.total();
    let (most_held, stored) = std::thread::scope(|s| {
        let rounds: Vec<_> = (0..2)
            .map(|_| s.spawn(|| t.fs.upload_round().unwrap()))
            .collect();
        // Both rounds' stores are out at once: neither waits for the other.
        let t0 = std::time::Instant::now();
        while t.store.held_stores() < 2 * per_round
            && t0.elapsed() < std::time::Duration::from_secs(20)
        {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let most_held = t.store.held_stores();
        t.store.hold_stores(false);
        let stored: usize = rounds.into_iter().map(|r| r.join().unwrap()).sum();
        (most_held, stored)
    });
    assert_eq!(most_held, 2 * per_round, "stores out at once");
    assert_eq!(stored, 2 * per_round);
    // Different shards: the queue lost as many as were stored.
    let left = t.fs.status().unwrap().queued_shards;
    assert_eq!(
        queued - left,
        stored as u64,
        "a shard was sent by both rounds"
    );
    t.assert_reads_back_from_suppliers(ino, &data);
    t.assert_all_healthy();
    for rec in t.fs.all_blocks_for_test() {
        let sups: std::collections::HashSet<_> = rec
            .shards
            .iter()
            .filter_map(|s| s.supplier.clone())
            .collect();
        assert_eq!(
            sups.len(),
            rec.shards.len(),
            "a supplier holds two shards of a block"
        );
    }
}

#[test]
fn blocks_on_their_suppliers_need_no_local_sync_and_their_garbled_cache_files_are_not_uploaded() {
    use crate::fsm::supplier::SupplierConfig;
    let t = setup(8, usize::MAX);
    let data = random(20 << 20, 31);
    let ino = t.file("a", &data);
    // Sealed blocks wait for the next fsync/sync to reach the local disk, until they are on
    // their suppliers: then their files are only a cache.
    let sealed: Vec<u64> = lock(&t.fs.unsynced).iter().copied().collect();
    assert!(sealed.len() >= 4, "{sealed:?}");
    for _ in 0..100 {
        if t.fs.upload_round().unwrap() == 0 {
            break;
        }
    }
    assert!(
        lock(&t.fs.unsynced).is_empty(),
        "{:?}",
        lock(&t.fs.unsynced)
    );
    // Two suppliers go; repair queues their shards again, and a restart loses the rebuilt
    // shards kept in memory, so the uploader encodes them again from the cache files, which
    // a crash garbled (they were never synced).
    t.store.set_offline("s1", true);
    t.store.set_offline("s2", true);
    let cfg = SupplierConfig {
        suspect_after: 2,
        grace_ms: 3000,
    };
    for now in [0, 1000, 2000, 3000, 4000] {
        t.fs.liveness_round(now, &cfg).unwrap();
    }
    while t.fs.repair_round(0, RepairBudget::blocks(8)).unwrap() > 0 {}
    *lock(&t.fs.staged) = blocks::Staged::default();
    for no in &sealed {
        let f = t.path.join(blocks::CACHE_DIR).join(format!("{no:016x}"));
        let mut b = std::fs::read(&f).unwrap();
        b.iter_mut().take(4096).for_each(|x| *x = 0);
        std::fs::write(&f, b).unwrap();
    }
    t.sync();
    t.assert_all_healthy();
    t.store.set_offline("s3", true);
    t.store.set_offline("s4", true);
    t.fs.cache_drop().unwrap();
    assert_eq!(t.read_all(ino), data);
}

#[test]
fn a_queued_block_whose_local_copy_is_damaged_before_enough_shards_left_is_lost_not_retried_for_ever()
 {
    let mut t = setup(8, usize::MAX);
    let a = random(20 << 20, 37);
    let ino = t.file("a", &a);
    let sealed: Vec<u64> = lock(&t.fs.unsynced).iter().copied().collect();
    assert!(sealed.len() >= 3, "{sealed:?}");
    // A power cut before any upload and before any sync: the shards kept in memory are gone,
    // and one block's cache file (never synced) came back garbled.
    *lock(&t.fs.staged) = blocks::Staged::default();
    let bad = sealed[0];
    let f = t.path.join(blocks::CACHE_DIR).join(format!("{bad:016x}"));
    let mut b = std::fs::read(&f).unwrap();
    b.iter_mut().take(4096).for_each(|x| *x = 0);
    std::fs::write(&f, b).unwrap();
    // The queue drains (`sync` does not wait for ever): that block is lost, the rest stored.
    t.sync();
    let st = t.fs.status().unwrap();
    assert_eq!(st.blocks["lost"], 1, "{st:?}");
    assert_eq!(
        st.blocks["healthy"] + 1,
        st.blocks.values().sum::<u64>(),
        "{st:?}"
    );
    // The file reads with an error where the damage is, and never with other bytes.
    t.fs.cache_drop().unwrap();
    let mut errors = 0;
    for off in (0..a.len()).step_by(1 << 20) {
        match t.fs.read(ino, off as u64, 1 << 20) {
            Ok(p) => assert_eq!(p, a[off..off + p.len()], "at {off}"),
            Err(_) => errors += 1,
        }
    }
    assert!(errors > 0);
    // And so it stays after a restart: nothing queued again, the block still lost.
    t.reopen();
    assert_eq!(t.fs.pending().unwrap().0, 0);
    assert_eq!(t.fs.status().unwrap().blocks["lost"], 1);
    // Files written afterwards are stored and read back as usual.
    let b = random(3 << 20, 38);
    let ino_b = t.file("b", &b);
    t.assert_reads_back_from_suppliers(ino_b, &b);
}

/// The open block's buffer keeps its memory across blocks; what it hands out is only the
/// current block's bytes, however much longer an earlier block was.
#[test]
fn the_open_buffer_holds_exactly_the_current_blocks_bytes() {
    let mut b = super::OpenBuf::default();
    b.extend_from_slice(&[1; 100]);
    let room = b.room(50);
    assert_eq!(room.len(), 50);
    room.copy_from_slice(&[2; 50]);
    b.grow(50);
    assert_eq!(b.len(), 150);
    assert_eq!(&b.bytes()[..100], &[1; 100][..]);
    assert_eq!(&b.bytes()[100..], &[2; 50][..]);
    // The next block: shorter, over the same memory.
    b.clear();
    assert!(b.is_empty() && b.bytes().is_empty());
    b.extend_from_slice(&[3; 10]);
    assert_eq!(b.bytes(), &[3; 10][..]);
    b.truncate(4);
    assert_eq!(b.bytes(), &[3; 4][..]);
    // Room past the old high-water mark grows the buffer; bytes not added stay out.
    b.room(500).fill(4);
    assert_eq!(b.bytes(), &[3; 4][..]);
    b.grow(500);
    assert_eq!(b.len(), 504);
    assert_eq!(&b.bytes()[4..], &[4; 500][..]);
    let from = super::OpenBuf::from_vec(vec![9; 7]);
    assert_eq!(from.bytes(), &[9; 7][..]);
}
