//! Foundation suite: dustfs end to end, as a user runs it — a testnet of supplier processes on
//! 127.0.0.1, a customer with a real kernel FUSE mount, `rsync`, `dustfs sync`, killed
//! suppliers, corrupt shards, full quotas, and checksums compared at the end.
//!
//! Needs root and /dev/fuse (fails loudly without them).

#[path = "common/mod.rs"]
mod common;

use std::process::Command;

use common::*;

#[test]
fn rsync_tree_survives_remount_two_dead_suppliers_and_a_cold_cache() {
    require_root_and_fuse();
    let root = scratch("rsync");
    let net = Testnet::up(&root, 6);
    let (c, _) = Customer::init(&root, &net);
    let src = root.join("src");
    make_tree(&src);
    c.mount();
    let mut rsync = Command::new("rsync");
    rsync
        .arg("-aH")
        .arg(format!("{}/", src.display()))
        .arg(format!("{}/", c.mnt.display()));
    ok(&mut rsync);
    c.sync();
    let st = c.status();
    assert_eq!(st["upload_queue"]["shards"], 0, "{st}");
    // The byte count agrees (it once drifted when the uploader beat a seal to its counter).
    assert_eq!(st["upload_queue"]["bytes"], 0, "{st}");
    // The tree's 70 MiB of file data fill that many full blocks at least.
    let block = st["block_bytes"].as_u64().unwrap_or(u64::MAX);
    assert!(
        st["blocks"]["healthy"].as_u64().unwrap_or(0) >= (70 << 20) / block,
        "{st}"
    );
    // Every node listens on TCP and QUIC: the bytes went over TCP, the faster of the two
    // here (the bootstrap dials' QUIC connections are closed once TCP ones are up).
    let suppliers = st["suppliers"].as_array().cloned().unwrap_or_default();
    assert!(suppliers.len() >= 6, "{st}");
    for p in &suppliers {
        let p = p.as_str().unwrap_or_default();
        if p == st["peer_id"] {
            continue;
        }
        assert_eq!(st["peer_transports"][p], "tcp", "{p}: {st}");
    }
    c.umount();
    net.kill(1);
    net.kill(2);
    c.mount();
    c.cache_drop();
    let expected = manifest(&src);
    let got = manifest(&c.mnt);
    assert_same_tree(&expected, &got);
    // The cache really was cold: the bytes came back from the four live suppliers.
    assert!(c.status()["fetched_bytes"].as_u64().unwrap_or(0) >= 64 << 20);
    c.umount();
}

/// Files stay in the kernel's page cache from one open to the next (a file read a moment ago
/// is read again without this process), and `dustfs cache drop` drops those pages too: the
/// next read goes through the mount and back to the suppliers, as the user asked.
#[test]
fn cache_drop_also_drops_the_kernels_cached_pages() {
    require_root_and_fuse();
    let root = scratch("kcache");
    let net = Testnet::up(&root, 6);
    let (c, _) = Customer::init(&root, &net);
    c.mount();
    let f = c.mnt.join("f.bin");
    write_random(&f, 8 << 20, 11);
    write_random(&root.join("f.expected"), 8 << 20, 11);
    let expected = sha256(&root.join("f.expected"));
    c.sync();
    for _ in 0..2 {
        assert_eq!(sha256(&f), expected);
    }
    let fetched = || c.status()["fetched_bytes"].as_u64().unwrap_or(0);
    let before = fetched();
    c.cache_drop();
    assert_eq!(c.status()["cache_bytes"].as_u64(), Some(0));
    assert_eq!(sha256(&f), expected);
    // Read through the mount, so fetched from suppliers; pages the kernel had kept would have
    // answered without it.
    let got = fetched() - before;
    assert!(
        got >= 8 << 20,
        "the read after cache drop did not reach the suppliers: {got}"
    );
    c.umount();
}

/// Bytes of `path` in the kernel's page cache (`fincore`).
fn resident_bytes(path: &std::path::Path) -> u64 {
    let out = ok(Command::new("fincore")
        .args(["-b", "-n", "-o", "RES"])
        .arg(path));
    out.trim()
        .parse()
        .unwrap_or_else(|e| panic!("fincore said {out:?}: {e}"))
}

/// What `cp`, `rsync` and `tar` write (through write-only handles) goes past the kernel's
/// page cache, and every reader still sees the bytes last written, whichever handle wrote
/// them and whichever was opened first.
#[test]
fn write_only_handles_bypass_the_page_cache_and_every_reader_sees_their_bytes() {
    use std::os::unix::fs::FileExt;
    require_root_and_fuse();
    let root = scratch("dio");
    let net = Testnet::up(&root, 6);
    let (c, _) = Customer::init(&root, &net);
    c.mount();
    let src = root.join("src.bin");
    write_random(&src, 8 << 20, 5);
    let mut model = std::fs::read(&src).expect("read source");
    let f = c.mnt.join("f.bin");
    ok(Command::new("cp").arg(&src).arg(&f));
    assert_eq!(
        resident_bytes(&f),
        0,
        "cp's bytes were cached by the kernel"
    );
    assert_eq!(sha256(&f), sha256(&src));
    // A read caches them (so the zero above was measured, not a fincore that sees nothing).
    assert!(
        resident_bytes(&f) >= 4 << 20,
        "a read did not cache the file"
    );
    let read_all = |what: &str, model: &[u8]| {
        let got = std::fs::read(&f).expect("read back");
        assert!(
            got == model,
            "{what}: the file read back is not what was written"
        );
    };
    let patch = |at: usize, byte: u8, model: &mut Vec<u8>| {
        model[at..at + (1 << 20)].fill(byte);
        vec![byte; 1 << 20]
    };

    // 1. Cached pages, then a write-only handle overwrites some: a new reader sees it.
    let p = patch(1 << 20, 0x5A, &mut model);
    let w = std::fs::OpenOptions::new()
        .write(true)
        .open(&f)
        .expect("open");
    w.write_all_at(&p, 1 << 20).expect("write");
    drop(w);
    read_all("cached, then overwritten write-only", &model);

    // 2. A reader holds the file open with its pages cached; a writer opens it write-only
    //    meanwhile: the reader's next read sees the new bytes.
    let r = std::fs::File::open(&f).expect("open");
    let mut buf = vec![0u8; 1 << 20];
    r.read_exact_at(&mut buf, 3 << 20).expect("read");
    let p = patch(3 << 20, 0xA5, &mut model);
    let w = std::fs::OpenOptions::new()
        .write(true)
        .open(&f)
        .expect("open");
    w.write_all_at(&p, 3 << 20).expect("write");
    r.read_exact_at(&mut buf, 3 << 20).expect("read");
    assert!(buf == p, "a reader open before the writer read stale bytes");
    drop((r, w));

    // 3. A write-only writer first, then a reader, then the writer again: the reader sees
    //    each write.
    let w = std::fs::OpenOptions::new()
        .write(true)
        .open(&f)
        .expect("open");
    let p = patch(5 << 20, 0x11, &mut model);
    w.write_all_at(&p, 5 << 20).expect("write");
    let r = std::fs::File::open(&f).expect("open");
    r.read_exact_at(&mut buf, 5 << 20).expect("read");
    assert!(
        buf == p,
        "a reader opened after a direct write read stale bytes"
    );
    let p = patch(5 << 20, 0x22, &mut model);
    w.write_all_at(&p, 5 << 20).expect("write");
    r.read_exact_at(&mut buf, 5 << 20).expect("read");
    assert!(
        buf == p,
        "a reader open during direct writes read stale bytes"
    );
    drop((r, w));
    read_all("after all three", &model);
    c.sync();
    c.cache_drop();
    read_all("from suppliers", &model);
    c.umount();
}

/// The kernel remembers names looked up and found missing (for the entry lifetime, 1 s), so
/// `rsync` and `cp` do not ask twice; whatever then makes such a name through the mount makes
/// it visible at once, in the same second, and a name removed is missing at once.
#[test]
fn a_name_seen_missing_appears_as_soon_as_it_is_made() {
    use std::io::ErrorKind::NotFound;
    use std::os::unix::fs::FileTypeExt;
    require_root_and_fuse();
    let root = scratch("negative");
    let net = Testnet::up(&root, 6);
    let (c, _) = Customer::init(&root, &net);
    c.mount();
    let m = &c.mnt;
    std::fs::create_dir(m.join("sub")).expect("mkdir sub");
    std::fs::write(m.join("sub/src"), b"moved here").expect("write src");
    std::fs::write(m.join("orig"), b"linked").expect("write orig");
    let missing =
        |n: &str| matches!(std::fs::symlink_metadata(m.join(n)), Err(e) if e.kind() == NotFound);
    // Each name is looked up (missing) right before it is made and checked right after, well
    // within the second the kernel keeps the missing entry.
    let made: [(&str, &dyn Fn()); 6] = [
        ("file", &|| {
            std::fs::write(m.join("file"), b"new").expect("create")
        }),
        ("dir", &|| {
            std::fs::create_dir(m.join("dir")).expect("mkdir")
        }),
        ("link", &|| {
            std::os::unix::fs::symlink("file", m.join("link")).expect("symlink")
        }),
        ("hard", &|| {
            std::fs::hard_link(m.join("orig"), m.join("hard")).expect("link")
        }),
        ("moved", &|| {
            std::fs::rename(m.join("sub/src"), m.join("moved")).expect("rename")
        }),
        ("fifo", &|| {
            ok(Command::new("mkfifo").arg(m.join("fifo")));
        }),
    ];
    for (name, make) in made {
        assert!(missing(name), "{name} exists before it was made");
        make();
        assert!(!missing(name), "{name} was made but is still missing");
    }
    assert_eq!(std::fs::read(m.join("file")).expect("read file"), b"new");
    assert!(
        m.join("dir").is_dir(),
        "the new directory is not a directory"
    );
    assert_eq!(std::fs::read(m.join("link")).expect("read link"), b"new");
    assert_eq!(std::fs::read(m.join("hard")).expect("read hard"), b"linked");
    assert_eq!(
        std::fs::read(m.join("moved")).expect("read moved"),
        b"moved here"
    );
    let fifo = std::fs::symlink_metadata(m.join("fifo")).expect("stat fifo");
    assert!(fifo.file_type().is_fifo(), "the fifo is not a fifo");
    assert!(
        missing("sub/src"),
        "the renamed file is still at its old name"
    );
    std::fs::remove_file(m.join("file")).expect("unlink");
    assert!(missing("file"), "an unlinked name is still there");
    c.umount();
}

#[test]
fn suppliers_hold_no_plaintext_and_identical_data_is_stored_once() {
    require_root_and_fuse();
    let root = scratch("plain");
    let net = Testnet::up(&root, 6);
    let (c, _) = Customer::init(&root, &net);
    c.mount();
    let marker = b"DUSTFS-PLAINTEXT-MARKER-4711";
    std::fs::write(c.mnt.join("marked.txt"), marker.repeat(100_000)).expect("write");
    std::fs::write(c.mnt.join("tiny.txt"), marker).expect("write");
    c.sync();
    let files = net.shard_files();
    assert!(!files.is_empty(), "suppliers hold no shards at all");
    for f in &files {
        let bytes = std::fs::read(f).expect("read shard");
        assert!(
            !bytes.windows(marker.len()).any(|w| w == marker),
            "plaintext found in {}",
            f.display()
        );
    }

    // Dedup: a 64 MiB file copied under two names is stored once.
    let data = root.join("64m.bin");
    write_random(&data, 64 << 20, 77);
    let before = net.stored_bytes();
    ok(Command::new("cp").arg(&data).arg(c.mnt.join("copy-one")));
    c.sync();
    let one = net.stored_bytes() - before;
    ok(Command::new("cp").arg(&data).arg(c.mnt.join("copy-two")));
    c.sync();
    let two = net.stored_bytes() - before;
    let expected = (64u64 << 20) * 6 / 4;
    assert!(
        one >= expected && one < expected + expected / 20,
        "one copy stored {one} bytes, expected about {expected}"
    );
    assert!(
        two - one < (1 << 20),
        "the second copy added {} bytes",
        two - one
    );
    assert_eq!(sha256(&c.mnt.join("copy-two")), sha256(&data));
    c.umount();
}

#[test]
fn bad_input_gets_clear_errors_and_loses_nothing() {
    require_root_and_fuse();
    let root = scratch("bad");
    let net = Testnet::up(&root, 6);
    let (c, _) = Customer::init(&root, &net);

    // No mount running.
    let e = fails(c.cmd().arg("status"));
    assert!(e.contains("no dustfs mount is running"), "{e}");
    // A second init refuses to overwrite the identity.
    let e = fails(c.cmd().args(["init", "--bootstrap"]).arg(net.bootstrap()));
    assert!(e.contains("already holds a dustfs identity"), "{e}");
    // Mountpoints that do not exist or are not empty.
    let e = fails(c.cmd().arg("mount").arg(root.join("nowhere")));
    assert!(e.contains("does not exist"), "{e}");
    let full = root.join("full");
    std::fs::create_dir_all(&full).expect("mkdir");
    std::fs::write(full.join("x"), b"x").expect("write");
    let e = fails(c.cmd().arg("mount").arg(&full));
    assert!(e.contains("not empty"), "{e}");
    // An unknown configuration key is named.
    let cfg = c.home.join("config.toml");
    let good = std::fs::read_to_string(&cfg).expect("config");
    std::fs::write(&cfg, format!("{good}\nbogus_key = 1\n")).expect("write");
    let e = fails(c.cmd().arg("mount").arg(&c.mnt));
    assert!(e.contains("bogus_key"), "{e}");
    std::fs::write(&cfg, good).expect("write");

    // Suppliers that return corrupt shards: detected, the blocks rebuilt from the others.
    // Reads fetch data shards first, so a corrupt parity shard goes unseen: two corrupting
    // suppliers (at most two bad shards per block, which 4+2 survives) and three blocks of
    // file data leave a chance of 1 in 15^3 that every corrupt shard is a parity shard (with
    // one supplier and two blocks, 1 in 9: CI once saw none detected).
    c.mount();
    let data = root.join("data.bin");
    c.copy_in(&data, "data.bin", 17 << 20, 9);
    c.cache_drop();
    let mut flipped = 0;
    for f in net
        .shard_files()
        .into_iter()
        .filter(|f| f.starts_with(net.node_dir(3)) || f.starts_with(net.node_dir(4)))
    {
        let mut b = std::fs::read(&f).expect("read");
        let n = b.len();
        for i in (100..n).step_by(4096) {
            b[i] ^= 0xA5;
        }
        std::fs::write(&f, b).expect("write");
        flipped += 1;
    }
    assert!(flipped > 0, "suppliers 3 and 4 held no shards to corrupt");
    assert_eq!(sha256(&c.mnt.join("data.bin")), sha256(&data));
    let st = c.status();
    assert!(
        st["corrupt_shards_detected"].as_u64().unwrap_or(0) >= 1,
        "{st}"
    );
    c.umount();
}

#[test]
fn a_supplier_over_quota_is_passed_over_for_another() {
    require_root_and_fuse();
    let root = scratch("quota");
    let net = Testnet::up(&root, 6);
    // A seventh supplier that grants each customer only 1 MiB.
    let small = root.join("small-node");
    net.init_home(&small);
    let cfg = small.join("config.toml");
    let text = std::fs::read_to_string(&cfg)
        .expect("config")
        .replace("quota_mb = 10240", "quota_mb = 1");
    std::fs::write(&cfg, text).expect("write");
    let _node = net.serve(&small, &[]);
    let (c, _) = Customer::init(&root, &net);
    c.mount();
    // The six testnet suppliers and the small one.
    c.wait_suppliers(7);
    let data = root.join("data.bin");
    c.copy_in(&data, "data.bin", 24 << 20, 11);
    let st = c.status();
    assert_eq!(st["upload_queue"]["shards"], 0, "{st}");
    let blocks = st["blocks"].as_object().expect("blocks");
    let healthy = blocks["healthy"].as_u64().unwrap_or(0);
    let all: u64 = blocks.values().filter_map(|v| v.as_u64()).sum();
    let block = st["block_bytes"].as_u64().unwrap_or(u64::MAX);
    assert!(
        healthy >= (24 << 20) / block && healthy == all,
        "every block healthy: {st}"
    );
    assert!(
        dir_bytes(&small.join("shards")) <= 1 << 20,
        "the small supplier went over its quota"
    );
    assert!(
        c.log().contains("supplier refused a shard"),
        "the quota was never hit"
    );
    c.reads_back(&data, "data.bin");
    c.umount();
}

#[test]
fn memory_stays_bounded_while_copying_2_gib() {
    require_root_and_fuse();
    let root = scratch("mem");
    let net = Testnet::up(&root, 6);
    let (c, _) = Customer::init(&root, &net);
    c.mount();
    let pid = c.mount_pid().expect("mount pid");
    write_random(&c.mnt.join("two-gib.bin"), 2 << 30, 21);
    c.sync();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let hwm_kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("VmHWM");
    eprintln!(
        "peak RSS of the mount process while copying 2 GiB: {} MiB",
        hwm_kib / 1024
    );
    assert!(
        hwm_kib < 512 * 1024,
        "peak RSS {} MiB exceeds 512 MiB",
        hwm_kib / 1024
    );
    c.umount();
    drop(net);
}

/// The nice value and name of every thread of process `pid` (from /proc/PID/task/*/stat).
fn thread_priorities(pid: u32) -> Vec<(u32, String, i64)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/task")).expect("task dir") {
        let e = e.expect("task entry");
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue; // a thread that ended meanwhile
        };
        let tid: u32 = e.file_name().to_string_lossy().parse().expect("tid");
        let open = stat.find('(').expect("comm start");
        let close = stat.rfind(')').expect("comm end");
        let name = stat[open + 1..close].to_string();
        // After the name: state (field 3) ... nice (field 19).
        let nice = stat[close + 2..]
            .split_whitespace()
            .nth(16)
            .and_then(|v| v.parse().ok())
            .expect("nice field");
        out.push((tid, name, nice));
    }
    out
}

#[test]
fn background_threads_yield_to_the_fuse_thread() {
    require_root_and_fuse();
    let root = scratch("nice");
    let net = Testnet::up(&root, 6);
    let (c, _) = Customer::init(&root, &net);
    c.mount();
    let pid = c.mount_pid().expect("mount pid");
    let threads = thread_priorities(pid);
    eprintln!("mount threads: {threads:?}");
    // The FUSE session runs on the main thread: it keeps the priority the mount started with.
    // (The tests may run under `nice`: the mount started with the priority they have.)
    let me = std::process::id();
    let own = thread_priorities(me)
        .into_iter()
        .find(|t| t.0 == me)
        .expect("own main thread")
        .2;
    let main = threads.iter().find(|t| t.0 == pid).expect("main thread");
    assert_eq!(
        main.2, own,
        "the FUSE thread's priority changed: {threads:?}"
    );
    for name in [
        "uploader-0",
        "uploader-1",
        "repair",
        "lease",
        "tokio-rt-worker",
    ] {
        let found: Vec<_> = threads.iter().filter(|t| t.1 == name).collect();
        assert!(!found.is_empty(), "no {name} thread: {threads:?}");
        for t in found {
            assert_eq!(
                t.2,
                (own + 10).min(19),
                "{name} is not at background priority: {threads:?}"
            );
        }
    }
    c.umount();
    drop(net);
}
