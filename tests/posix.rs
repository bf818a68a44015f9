//! POSIX and integration suite (issue 3): mount(8)/fstab integration, crash safety under
//! SIGKILL, and real applications (SQLite, git) on a dustfs mount.
//!
//! Needs root and /dev/fuse (fails loudly without them).

#[path = "common/mod.rs"]
mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

/// Installs `mount.dustfs` where mount(8) looks for helpers (/sbin is /usr/sbin on Debian 12).
fn install_helper() {
    let link = Path::new("/usr/sbin/mount.dustfs");
    let _ = std::fs::remove_file(link);
    std::os::unix::fs::symlink(BIN, link).expect("install /usr/sbin/mount.dustfs");
}

/// Restores /etc/fstab when dropped.
struct FstabGuard(String);

impl Drop for FstabGuard {
    fn drop(&mut self) {
        let _ = std::fs::write("/etc/fstab", &self.0);
    }
}

fn is_mounted(mp: &Path) -> bool {
    let target = std::fs::canonicalize(mp).unwrap_or(mp.to_path_buf());
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(&target.to_string_lossy()))
}

#[test]
fn mount_dustfs_works_through_mount_t_and_fstab_and_refuses_bad_requests() {
    require_root_and_fuse();
    install_helper();
    let root = scratch("helper");
    let net = Testnet::up(&root, 6);
    let (c, _) = Customer::init(&root, &net);

    // mount -t dustfs HOME MOUNTPOINT
    ok(Command::new("mount")
        .args(["-t", "dustfs"])
        .arg(&c.home)
        .arg(&c.mnt)
        .args(["-o", "noatime,_netdev"]));
    assert!(is_mounted(&c.mnt));
    std::fs::write(c.mnt.join("hello"), b"through mount -t").expect("write");
    c.sync();
    c.umount();

    // An fstab entry and `mount MOUNTPOINT`.
    let fstab = std::fs::read_to_string("/etc/fstab").unwrap_or_default();
    let _guard = FstabGuard(fstab.clone());
    let line = format!(
        "{} {} dustfs defaults,_netdev,noauto,x-systemd.automount,ro 0 0\n",
        c.home.display(),
        c.mnt.display()
    );
    std::fs::write("/etc/fstab", format!("{fstab}{line}")).expect("fstab");
    ok(Command::new("mount").arg(&c.mnt));
    assert_eq!(
        std::fs::read(c.mnt.join("hello")).expect("read"),
        b"through mount -t"
    );
    // ro from fstab: writes fail with EROFS.
    let e = std::fs::write(c.mnt.join("nope"), b"x").expect_err("read-only mount");
    assert_eq!(e.raw_os_error(), Some(libc_erofs()), "{e}");
    c.umount();

    // Bad requests: an unknown option, a missing home, a busy mountpoint.
    let e = fails(
        Command::new("mount")
            .args(["-t", "dustfs", "-o", "bogus_opt"])
            .arg(&c.home)
            .arg(&c.mnt),
    );
    assert!(e.contains("bogus_opt"), "{e}");
    let e = fails(
        Command::new("mount")
            .args(["-t", "dustfs"])
            .arg(root.join("no-such-home"))
            .arg(&c.mnt),
    );
    assert!(e.contains("no dustfs identity"), "{e}");
    c.mount();
    let other = root.join("other");
    std::fs::create_dir_all(&other).expect("mkdir");
    let e = fails(
        Command::new("mount")
            .args(["-t", "dustfs"])
            .arg(&c.home)
            .arg(&c.mnt),
    );
    assert!(e.contains("busy") || e.contains("already"), "{e}");
    c.umount();
}

fn libc_erofs() -> i32 {
    30
}

#[test]
fn sigkill_during_rsync_loses_nothing_that_was_fsynced() {
    require_root_and_fuse();
    let root = scratch("crash");
    let net = Testnet::up(&root, 6);
    let (c, _) = Customer::init(&root, &net);
    let src = root.join("src");
    for d in 0..8 {
        std::fs::create_dir_all(src.join(format!("d{d}"))).expect("mkdir");
        for f in 0..40 {
            let len = 1000 + ((d * 40 + f) as u64 * 7919) % 300_000;
            write_random(&src.join(format!("d{d}/f{f}")), len, (d * 40 + f) as u64);
        }
    }
    write_random(&src.join("large"), 40 << 20, 999);
    // The sources' times lie far in the past. rsync's quick check compares whole seconds: a
    // file a killed round wrote on the mount within the second the source was made (before
    // rsync could set its time) would otherwise look up to date to every later rsync, and
    // keep its own time, which the final comparison (to the nanosecond) then finds. The same
    // for directories, whose times rsync sets only when they differ in whole seconds. (walk
    // lists a directory after its contents.)
    for f in walk(&src) {
        set_mtime(&f, 30 * 24 * 3600);
    }
    for round in 0..10u64 {
        c.mount();
        let pid = c.mount_pid().expect("pid");
        // rsync with --fsync: every file it finishes is fsync'd before it moves on.
        let mut child = Command::new("rsync")
            .args(["-a", "--fsync", "--inplace"])
            .arg(format!("{}/", src.display()))
            .arg(format!("{}/", c.mnt.display()))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("rsync");
        std::thread::sleep(Duration::from_millis(300 + round * 170));
        ok(Command::new("kill").arg("-KILL").arg(pid.to_string()));
        wait_gone(pid, Duration::from_secs(20));
        let _ = child.wait();
        // Restart: the dead mount is cleared; everything that is there must be intact.
        c.mount();
        for entry in walk(&c.mnt) {
            let rel = entry.strip_prefix(&c.mnt).expect("prefix");
            let meta = std::fs::symlink_metadata(&entry).expect("lstat");
            if meta.is_file() {
                let want = std::fs::metadata(src.join(rel)).expect("source").len();
                // Files rsync completed (full length) must match the source byte for byte.
                if meta.len() == want {
                    assert_eq!(
                        sha256(&entry),
                        sha256(&src.join(rel)),
                        "round {round}: {} corrupt",
                        rel.display()
                    );
                }
            }
        }
        c.umount();
    }
    c.mount();
    ok(Command::new("rsync")
        .arg("-a")
        .arg(format!("{}/", src.display()))
        .arg(format!("{}/", c.mnt.display())));
    assert_same_tree(&manifest(&src), &manifest(&c.mnt));
    c.sync();
    c.umount();
}

fn walk(d: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(d).expect("read_dir").flatten() {
        let p = e.path();
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

#[test]
fn sqlite_and_git_work_on_the_mount() {
    require_root_and_fuse();
    let root = scratch("apps");
    let net = Testnet::up(&root, 6);
    let (c, _) = Customer::init(&root, &net);
    c.mount();

    // SQLite: a few thousand transactions, then an integrity check (also after a cold cache).
    let db = c.mnt.join("test.db");
    let mut sql = String::from(
        "PRAGMA journal_mode=DELETE;\nCREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, n INTEGER);\nCREATE INDEX tv ON t(v);\n",
    );
    for i in 0..3000 {
        sql.push_str(&format!("BEGIN; INSERT INTO t(v, n) VALUES (hex(randomblob(40)), {i}); UPDATE t SET n = n + 1 WHERE id % 7 = {}; COMMIT;\n", i % 7));
        if i % 500 == 499 {
            sql.push_str(&format!("DELETE FROM t WHERE id % 11 = {};\n", i % 11));
        }
    }
    let script = root.join("load.sql");
    std::fs::write(&script, sql).expect("write sql");
    ok(Command::new("sqlite3")
        .arg(&db)
        .arg(format!(".read {}", script.display())));
    assert_eq!(
        ok(Command::new("sqlite3")
            .arg(&db)
            .arg("PRAGMA integrity_check;"))
        .trim(),
        "ok"
    );
    c.sync();
    c.cache_drop();
    assert_eq!(
        ok(Command::new("sqlite3")
            .arg(&db)
            .arg("PRAGMA integrity_check;"))
        .trim(),
        "ok"
    );
    let count = ok(Command::new("sqlite3")
        .arg(&db)
        .arg("SELECT count(*) FROM t;"));
    assert!(
        count.trim().parse::<u64>().expect("count") > 2000,
        "{count}"
    );

    // git: clone a local repository into the mount and fsck it.
    let repo = root.join("repo");
    ok(Command::new("git").args(["init", "-q"]).arg(&repo));
    for i in 0..30 {
        write_random(&repo.join(format!("file{i}.bin")), 20_000 + i * 1000, i);
        std::fs::write(
            repo.join("log.txt"),
            format!("commit {i}\n").repeat(i as usize + 1),
        )
        .expect("write");
        ok(Command::new("git").arg("-C").arg(&repo).args(["add", "-A"]));
        ok(Command::new("git")
            .arg("-C")
            .arg(&repo)
            .args([
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@example.invalid",
                "commit",
                "-q",
                "-m",
            ])
            .arg(format!("c{i}")));
    }
    ok(Command::new("git")
        .args(["clone", "-q"])
        .arg(&repo)
        .arg(c.mnt.join("clone")));
    ok(Command::new("git")
        .arg("-C")
        .arg(c.mnt.join("clone"))
        .args(["fsck", "--full", "--strict"]));
    ok(Command::new("git")
        .arg("-C")
        .arg(c.mnt.join("clone"))
        .args(["gc", "-q"]));
    ok(Command::new("git")
        .arg("-C")
        .arg(c.mnt.join("clone"))
        .args(["fsck", "--full"]));
    c.umount();
}

/// One step of the model-based test.
#[derive(Debug, Clone)]
enum FsOp {
    Create(String),
    Write(String, u64, usize, u64),
    Truncate(String, u64),
    Rename(String, String),
    Link(String, String),
    Unlink(String),
    Mkdir(String),
    Rmdir(String),
    Chmod(String, u32),
    Read(String),
}

fn op_strategy() -> impl proptest::strategy::Strategy<Value = FsOp> {
    use proptest::prelude::*;
    let name = prop_oneof![
        (0..6u8).prop_map(|i| format!("f{i}")),
        (0..3u8, 0..5u8).prop_map(|(d, i)| format!("d{d}/f{i}")),
        (0..3u8).prop_map(|d| format!("d{d}")),
        (0..3u8, 0..2u8).prop_map(|(d, e)| format!("d{d}/e{e}")),
    ];
    (
        0..100u8,
        name.clone(),
        name,
        0..300_000u64,
        1..70_000usize,
        any::<u64>(),
    )
        .prop_map(|(k, a, b, off, len, seed)| match k {
            0..=14 => FsOp::Create(a),
            15..=44 => FsOp::Write(a, off, len, seed),
            45..=51 => FsOp::Truncate(a, off),
            52..=58 => FsOp::Rename(a, b),
            59..=63 => FsOp::Link(a, b),
            64..=70 => FsOp::Unlink(a),
            71..=77 => FsOp::Mkdir(a),
            78..=82 => FsOp::Rmdir(a),
            83..=86 => FsOp::Chmod(a, 0o600 | (seed as u32 & 0o177)),
            _ => FsOp::Read(a),
        })
}

/// Applies an operation under `root`; returns its outcome as the user sees it: the bytes read
/// (for reads) or the errno.
fn apply(root: &Path, op: &FsOp) -> Result<Vec<u8>, i32> {
    use std::io::{Seek, SeekFrom, Write};
    use std::os::unix::fs::PermissionsExt;
    let p = |s: &str| root.join(s);
    let err = |e: std::io::Error| e.raw_os_error().unwrap_or(-1);
    match op {
        FsOp::Create(a) => std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(p(a))
            .map(|_| vec![])
            .map_err(err),
        FsOp::Write(a, off, len, seed) => {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .open(p(a))
                .map_err(err)?;
            let mut buf = vec![0u8; *len];
            Prng::new(*seed).fill(&mut buf);
            f.seek(SeekFrom::Start(*off)).map_err(err)?;
            f.write_all(&buf).map_err(err)?;
            Ok(vec![])
        }
        FsOp::Truncate(a, size) => {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(p(a))
                .map_err(err)?;
            f.set_len(*size).map(|_| vec![]).map_err(err)
        }
        FsOp::Rename(a, b) => std::fs::rename(p(a), p(b)).map(|_| vec![]).map_err(err),
        FsOp::Link(a, b) => std::fs::hard_link(p(a), p(b)).map(|_| vec![]).map_err(err),
        FsOp::Unlink(a) => std::fs::remove_file(p(a)).map(|_| vec![]).map_err(err),
        FsOp::Mkdir(a) => std::fs::create_dir(p(a)).map(|_| vec![]).map_err(err),
        FsOp::Rmdir(a) => std::fs::remove_dir(p(a)).map(|_| vec![]).map_err(err),
        FsOp::Chmod(a, mode) => {
            std::fs::set_permissions(p(a), std::fs::Permissions::from_mode(*mode))
                .map(|_| vec![])
                .map_err(err)
        }
        FsOp::Read(a) => std::fs::read(p(a)).map_err(err),
    }
}

/// The tree without times (which differ between two filesystems written at different moments).
fn shape(root: &Path) -> Vec<(std::path::PathBuf, &'static str, u32, Option<String>, usize)> {
    manifest(root)
        .into_iter()
        .map(|(k, e)| {
            (
                k,
                e.kind,
                if e.kind == "dir" { 0 } else { e.mode },
                e.sha256,
                e.links.len(),
            )
        })
        .collect()
}

#[test]
fn random_operations_match_a_reference_directory() {
    use proptest::strategy::{Strategy, ValueTree};
    require_root_and_fuse();
    let root = scratch("model");
    let net = Testnet::up(&root, 6);
    let (c, _) = Customer::init(&root, &net);
    c.mount();
    let reference = root.join("reference");
    std::fs::create_dir_all(&reference).expect("mkdir");
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let ops = proptest::collection::vec(op_strategy(), 10_000)
        .new_tree(&mut runner)
        .expect("generate operations")
        .current();
    let mut succeeded = 0;
    for (i, op) in ops.iter().enumerate() {
        let want = apply(&reference, op);
        let got = apply(&c.mnt, op);
        assert_eq!(got, want, "operation {i}: {op:?}");
        succeeded += usize::from(got.is_ok());
        if i % 1000 == 999 {
            assert_eq!(
                shape(&c.mnt),
                shape(&reference),
                "trees differ after operation {i}"
            );
            if i % 3000 == 2999 {
                c.sync();
                c.cache_drop();
            }
        }
    }
    assert_eq!(shape(&c.mnt), shape(&reference));
    // Not a test of error paths only: a good share of the operations must have done something
    // (the deterministic sequence has 2,807 that succeed; many others rightly fail, e.g.
    // writes to names that do not exist at that point).
    assert!(
        succeeded > 2_000,
        "only {succeeded} of 10,000 operations succeeded"
    );
    eprintln!("{succeeded} of 10,000 operations succeeded on both");
    c.umount();
    c.mount();
    c.cache_drop();
    assert_eq!(
        shape(&c.mnt),
        shape(&reference),
        "after remount and a cold cache"
    );
    c.umount();
}

/// Runs pjdfstest in `dir`; returns the names of the tests that passed and the summary line.
fn pjdfstest(dir: &Path, config: &Path) -> (std::collections::BTreeSet<String>, String) {
    let bin = std::env::var_os("HOME")
        .map(|h| Path::new(&h).join(".cargo/bin/pjdfstest"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| "pjdfstest".into());
    let out = Command::new(&bin)
        .arg("-c")
        .arg(config)
        .arg("-p")
        .arg(dir)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("pjdfstest is required (cargo install --locked pjdfstest): {e}")
        });
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let passed = text
        .lines()
        .filter(|l| l.trim_end().ends_with(" ok"))
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .collect();
    let summary = text
        .lines()
        .find(|l| l.starts_with("Summary:"))
        .unwrap_or("no summary")
        .to_string();
    (passed, summary)
}

#[test]
fn pjdfstest_passes_at_least_95_percent_of_what_passes_on_the_local_disk() {
    require_root_and_fuse();
    let root = scratch("pjd");
    // pjdfstest switches to unprivileged users, who must be able to reach both test directories.
    std::fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let config = root.join("pjdfstest.toml");
    std::fs::write(
        &config,
        "[features]\nposix_fallocate = {}\n\n[settings]\nnaptime = 0.001\nallow_remount = false\n\n\
         [dummy_auth]\nentries = [[\"nobody\", \"nogroup\"], [\"daemon\", \"daemon\"]]\n",
    )
    .expect("config");
    let local = root.join("local");
    std::fs::create_dir_all(&local).expect("mkdir");
    let (baseline, local_summary) = pjdfstest(&local, &config);
    assert!(
        baseline.len() > 300,
        "pjdfstest did not run on the local disk: {local_summary}"
    );

    let net = Testnet::up(&root, 6);
    let (c, _) = Customer::init(&root, &net);
    c.mount();
    std::fs::set_permissions(&c.mnt, std::os::unix::fs::PermissionsExt::from_mode(0o777))
        .expect("chmod");
    let (ours, summary) = pjdfstest(&c.mnt, &config);
    let kept = baseline.intersection(&ours).count();
    let missing: Vec<_> = baseline.difference(&ours).collect();
    eprintln!("pjdfstest on the local disk: {local_summary}");
    eprintln!("pjdfstest on dustfs: {summary}");
    eprintln!(
        "dustfs passes {kept} of the {} tests that pass locally; not: {missing:?}",
        baseline.len()
    );
    assert!(
        kept * 100 >= baseline.len() * 95,
        "only {kept} of {} pass; failing: {missing:?}",
        baseline.len()
    );
    c.umount();
}

#[test]
fn the_cache_mb_option_bounds_the_local_cache() {
    require_root_and_fuse();
    let root = scratch("cache");
    let net = Testnet::up(&root, 6);
    let (c, _) = Customer::init(&root, &net);
    ok(c.cmd().arg("mount").arg(&c.mnt).args(["-o", "cache_mb=32"]));
    // statfs reports what the suppliers granted: 6 × 10 GiB, of which 4/6 hold file data.
    // Right after the mount the suppliers may still be being discovered (CI once saw 0 bytes
    // here): a partial answer is asked again a second later, so df gets there.
    let df_size = || -> u64 {
        let df = ok(Command::new("df")
            .args(["-B1", "--output=size"])
            .arg(&c.mnt));
        df.lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .expect("df size")
    };
    let start = std::time::Instant::now();
    let mut size = df_size();
    while size != 40 << 30 && start.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(300));
        size = df_size();
    }
    assert_eq!(size, 40 << 30, "df reports {size} bytes");
    let data = root.join("data.bin");
    c.copy_in(&data, "data.bin", 120 << 20, 5);
    let cached = c.status()["cache_bytes"].as_u64().expect("cache_bytes");
    assert!(
        cached <= 32 << 20,
        "cache holds {cached} bytes with cache_mb=32"
    );
    assert_eq!(sha256(&c.mnt.join("data.bin")), sha256(&data));
    let cached = c.status()["cache_bytes"].as_u64().expect("cache_bytes");
    assert!(
        cached <= 32 << 20,
        "cache holds {cached} bytes after a full read"
    );
    c.umount();
}
