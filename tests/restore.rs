//! Restore suite (issue 5): everything back on a fresh machine from the paper key alone.
//!
//! Needs root and /dev/fuse (fails loudly without them).

#[path = "common/mod.rs"]
mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use common::*;

/// `dustfs --home HOME restore --bootstrap ... [extra]` with the paper key on standard input.
fn restore(home: &Path, net: &Testnet, paper: &str, extra: &[&str]) -> std::process::Output {
    let mut child = dustfs()
        .arg("--home")
        .arg(home)
        .args(["restore", "--listen", "/ip4/127.0.0.1/tcp/0", "--bootstrap"])
        .arg(net.bootstrap())
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("restore");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{paper}\n").as_bytes())
        .expect("paper key");
    child.wait_with_output().expect("restore")
}

fn restore_ok(home: &Path, net: &Testnet, paper: &str, extra: &[&str]) -> String {
    let out = restore(home, net, paper, extra);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "restore failed:\n{text}");
    text
}

fn restore_fails(home: &Path, net: &Testnet, paper: &str) -> String {
    let out = restore(home, net, paper, &[]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "restore should have failed:\n{text}");
    text
}

#[test]
fn a_deleted_home_comes_back_from_the_paper_key_alone_even_with_two_suppliers_dead() {
    require_root_and_fuse();
    let root = scratch("restore");
    let net = Testnet::up(&root, 6);
    let (c, paper) = Customer::init(&root, &net);
    let src = root.join("src");
    make_tree(&src);
    c.mount();
    ok(Command::new("rsync")
        .arg("-aH")
        .arg(format!("{}/", src.display()))
        .arg(format!("{}/", c.mnt.display())));
    let synced = ok(c.cmd().arg("sync"));
    assert!(synced.contains("snapshot 1 published"), "{synced}");
    c.umount();
    // Everything on the customer's side is gone.
    std::fs::remove_dir_all(&c.home).expect("rm home");
    let expected = manifest(&src);

    // A new machine: the paper key and a bootstrap address, nothing else.
    let c2 = Customer {
        home: root.join("home2"),
        mnt: c.mnt.clone(),
    };
    let t = Instant::now();
    let out = restore_ok(&c2.home, &net, &paper, &[]);
    eprintln!("restore of the metadata took {:?}:\n{out}", t.elapsed());
    c2.mount();
    c2.cache_drop();
    assert_same_tree(&expected, &manifest(&c2.mnt));
    // The restored home is a normal home: it writes, syncs and publishes the next snapshot.
    std::fs::write(c2.mnt.join("after-restore.txt"), b"hello again").expect("write");
    let synced = ok(c2.cmd().arg("sync"));
    assert!(synced.contains("snapshot 3 published"), "{synced}");
    c2.umount();
    std::fs::remove_dir_all(&c2.home).expect("rm home2");

    // Again with two of the six suppliers dead, and every block fetched (--all).
    net.kill(1);
    net.kill(2);
    let c3 = Customer {
        home: root.join("home3"),
        mnt: c.mnt.clone(),
    };
    let t = Instant::now();
    let out = restore_ok(&c3.home, &net, &paper, &["--all"]);
    eprintln!(
        "restore --all with 2 suppliers dead took {:?}:\n{out}",
        t.elapsed()
    );
    assert!(out.contains("fetched and verified"), "{out}");
    c3.mount();
    let got = manifest(&c3.mnt);
    let mut expected = expected;
    expected.insert(
        "after-restore.txt".into(),
        got.get(Path::new("after-restore.txt"))
            .cloned()
            .expect("the file written after the first restore"),
    );
    assert_same_tree(&expected, &got);
    assert_eq!(
        std::fs::read(c3.mnt.join("after-restore.txt")).expect("read"),
        b"hello again"
    );
    c3.umount();
}

#[test]
fn a_wrong_paper_key_is_refused_and_a_key_without_data_says_so() {
    require_root_and_fuse();
    let root = scratch("restore-keys");
    let net = Testnet::up(&root, 6);
    let (c, paper) = Customer::init(&root, &net);
    c.mount();
    std::fs::write(c.mnt.join("f"), b"data").expect("write");
    c.sync();
    c.umount();
    // Two words swapped: the checksum catches it (or, for a swap it cannot see, the key is
    // another identity, which has no data). Either way: a clear error and no home left.
    let mut words: Vec<&str> = paper.split_whitespace().collect();
    assert_eq!(words.len(), 24, "paper key: {paper}");
    words[3] = if words[3] == "abandon" {
        "ability"
    } else {
        "abandon"
    };
    let typo = words.join(" ");
    let home = root.join("typo-home");
    let err = restore_fails(&home, &net, &typo);
    assert!(
        err.contains("not a valid paper key") || err.contains("no snapshot"),
        "{err}"
    );
    assert!(
        !home.join("user.key").exists(),
        "a failed restore left an identity behind"
    );
    let err = restore_fails(&home, &net, "not a paper key at all");
    assert!(err.contains("not a valid paper key"), "{err}");
    // A valid key of another identity that never stored anything.
    let other_paper = net.init_home(&root.join("other"));
    let err = restore_fails(&root.join("empty-home"), &net, &other_paper);
    assert!(err.contains("no snapshot of this identity"), "{err}");
    // Restoring into a home that already holds an identity is refused, and that home is kept.
    let err = restore_fails(&c.home, &net, &paper);
    assert!(err.contains("already holds"), "{err}");
    assert!(c.home.join("user.key").exists());
}

#[test]
fn a_supplier_serving_a_forged_or_stale_root_record_does_not_fool_the_restore() {
    require_root_and_fuse();
    let root = scratch("restore-forged");
    let net = Testnet::up(&root, 6);
    // A seventh supplier that hides newer root records: it answers with its oldest genuine
    // one and a forgery claiming a higher sequence number.
    let liar_home = root.join("liar");
    net.init_home(&liar_home);
    let _liar = net.serve(&liar_home, &["--fault", "stale-roots"]);
    let (c, paper) = Customer::init(&root, &net);
    c.mount();
    c.wait_suppliers(7);
    std::fs::write(c.mnt.join("old.txt"), b"first version").expect("write");
    c.sync();
    std::fs::remove_file(c.mnt.join("old.txt")).expect("rm");
    std::fs::write(c.mnt.join("new.txt"), b"second version").expect("write");
    c.sync();
    c.umount();
    let home2 = root.join("home2");
    let out = restore_ok(&home2, &net, &paper, &[]);
    assert!(
        out.contains("forged or foreign root records ignored"),
        "{out}"
    );
    let c2 = Customer {
        home: home2,
        mnt: c.mnt.clone(),
    };
    c2.mount();
    assert!(
        !c2.mnt.join("old.txt").exists(),
        "an older snapshot was restored"
    );
    assert_eq!(
        std::fs::read(c2.mnt.join("new.txt")).expect("read"),
        b"second version"
    );
    c2.umount();
}

#[test]
fn an_earlier_snapshot_mounts_read_only_and_shows_the_earlier_tree() {
    require_root_and_fuse();
    let root = scratch("snapshots");
    let net = Testnet::up(&root, 6);
    let (c, _) = Customer::init(&root, &net);
    c.mount();
    let big = root.join("big.bin");
    write_random(&big, 6 << 20, 61);
    ok(Command::new("cp").arg(&big).arg(c.mnt.join("big.bin")));
    std::fs::write(c.mnt.join("kept.txt"), b"kept").expect("write");
    std::fs::write(c.mnt.join("changed.txt"), b"before").expect("write");
    std::fs::create_dir(c.mnt.join("gone")).expect("mkdir");
    std::fs::write(c.mnt.join("gone/file"), b"deleted later").expect("write");
    let s1 = ok(c.cmd().arg("sync"));
    assert!(s1.contains("snapshot 1 published"), "{s1}");
    std::fs::write(c.mnt.join("changed.txt"), b"after, and longer").expect("write");
    std::fs::remove_dir_all(c.mnt.join("gone")).expect("rm");
    std::fs::remove_file(c.mnt.join("big.bin")).expect("rm");
    std::fs::write(c.mnt.join("new.txt"), b"new").expect("write");
    c.sync();
    let list = ok(c.cmd().args(["snapshots", "--json"]));
    let list: serde_json::Value = serde_json::from_str(&list).expect("json");
    let seqs: Vec<u64> = list
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|s| s["seq"].as_u64())
        .collect();
    assert_eq!(seqs, vec![1, 2], "{list}");
    assert_eq!(list[0]["files"], 4, "{list}");

    // Snapshot 1, read-only, next to the live mount.
    let snap = root.join("snap");
    std::fs::create_dir_all(&snap).expect("mkdir");
    ok(c.cmd().arg("mount").arg(&snap).args(["-o", "snapshot=1"]));
    assert_eq!(
        std::fs::read(snap.join("changed.txt")).expect("read"),
        b"before"
    );
    assert_eq!(
        std::fs::read(snap.join("gone/file")).expect("read"),
        b"deleted later"
    );
    assert_eq!(sha256(&snap.join("big.bin")), sha256(&big));
    assert!(!snap.join("new.txt").exists());
    for attempt in [
        std::fs::write(snap.join("kept.txt"), b"x"),
        std::fs::write(snap.join("other.txt"), b"x"),
        std::fs::remove_file(snap.join("kept.txt")),
        std::fs::create_dir(snap.join("dir")),
    ] {
        let e = attempt.expect_err("a write to a snapshot succeeded");
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    }
    // The live tree is the newer one.
    assert_eq!(
        std::fs::read(c.mnt.join("changed.txt")).expect("read"),
        b"after, and longer"
    );
    assert!(!c.mnt.join("gone").exists());
    let pid: u32 = std::fs::read_to_string(c.home.join("snapshot-1.pid"))
        .expect("pid")
        .trim()
        .parse()
        .expect("pid");
    ok(Command::new("umount").arg(&snap));
    wait_gone(pid, std::time::Duration::from_secs(60));
    c.umount();
}

#[test]
fn a_second_machine_cannot_mount_the_same_identity_read_write_while_the_first_does() {
    require_root_and_fuse();
    let root = scratch("one-writer");
    let net = Testnet::up(&root, 6);
    let (c, paper) = Customer::init(&root, &net);
    c.mount();
    std::fs::write(c.mnt.join("f.txt"), b"from the first machine").expect("write");
    c.sync();
    // The second machine restores (reading is always allowed) while the first stays mounted.
    let c2 = Customer {
        home: root.join("home2"),
        mnt: root.join("mnt2"),
    };
    std::fs::create_dir_all(&c2.mnt).expect("mkdir");
    restore_ok(&c2.home, &net, &paper, &[]);
    let err = fails(c2.cmd().arg("mount").arg(&c2.mnt));
    assert!(
        err.contains("mounted read-write on another machine"),
        "{err}"
    );
    // Read-only works.
    ok(c2.cmd().arg("mount").arg(&c2.mnt).args(["-o", "ro"]));
    assert_eq!(
        std::fs::read(c2.mnt.join("f.txt")).expect("read"),
        b"from the first machine"
    );
    c2.umount();
    // Once the first machine unmounts (releasing its lease), the second may write.
    c.umount();
    c2.mount();
    std::fs::write(c2.mnt.join("g.txt"), b"from the second machine").expect("write");
    c2.sync();
    c2.umount();
}

#[test]
fn prune_frees_the_space_of_deleted_data_and_a_prune_killed_halfway_reruns_cleanly() {
    require_root_and_fuse();
    let root = scratch("prune");
    let net = Testnet::up(&root, 6);
    let (c, _) = Customer::init(&root, &net);
    // Keep only the newest snapshot.
    c.edit_config(&[
        ("keep_last = 10", "keep_last = 1"),
        ("keep_daily = 7", "keep_daily = 0"),
        ("keep_weekly = 4", "keep_weekly = 0"),
    ]);
    c.mount();
    let keep = root.join("keep.bin");
    write_random(&keep, 4 << 20, 71);
    ok(Command::new("cp").arg(&keep).arg(c.mnt.join("keep.bin")));
    let big = root.join("big.bin");
    write_random(&big, 40 << 20, 72);
    ok(Command::new("cp").arg(&big).arg(c.mnt.join("big.bin")));
    c.sync();
    let full = net.stored_bytes();
    std::fs::remove_file(c.mnt.join("big.bin")).expect("rm");
    c.sync();
    // A prune, and the mount process SIGKILLed as soon as it has marked blocks for deletion
    // (while it sends the deletes).
    let prune = c
        .cmd()
        .arg("prune")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let mut prune = prune.expect("prune");
    let start = Instant::now();
    while !c.log().contains("prune: blocks marked for deletion") {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(120),
            "the prune never marked anything:\n{}",
            c.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let pid = c.mount_pid().expect("pid");
    ok(Command::new("kill").arg("-KILL").arg(pid.to_string()));
    wait_gone(pid, std::time::Duration::from_secs(20));
    let _ = prune.wait();
    // Mount again and prune again: it finishes what was started and frees the space.
    c.mount();
    let out = ok(c.cmd().args(["prune", "--json"]));
    let report: serde_json::Value = serde_json::from_str(&out).expect("json");
    eprintln!("prune after the restart: {report}");
    assert_eq!(report["blocks_pending"], 0, "{report}");
    let after = net.stored_bytes();
    eprintln!(
        "stored {full} bytes with both files, {after} after deleting 40 of 44 MiB and pruning"
    );
    assert!(
        after < full * 3 / 10,
        "only {full} -> {after} bytes: {report}"
    );
    c.cache_drop();
    assert_eq!(sha256(&c.mnt.join("keep.bin")), sha256(&keep));
    let list: serde_json::Value =
        serde_json::from_str(&ok(c.cmd().args(["snapshots", "--json"]))).expect("json");
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    // Writing, syncing and restoring all still work after the prune.
    std::fs::write(c.mnt.join("later.txt"), b"later").expect("write");
    c.sync();
    c.umount();
}

#[test]
fn the_root_record_is_found_in_the_dht_when_no_supplier_has_it_on_disk() {
    require_root_and_fuse();
    let root = scratch("restore-dht");
    let net = Testnet::up(&root, 6);
    let (c, paper) = Customer::init(&root, &net);
    c.mount();
    std::fs::write(c.mnt.join("f.txt"), b"found through the DHT").expect("write");
    c.sync();
    c.umount();
    std::fs::remove_dir_all(&c.home).expect("rm home");
    // Every supplier loses the root records it kept on disk; the DHT copies remain.
    for i in 1..=6 {
        let _ = std::fs::remove_dir_all(net.node_dir(i).join("shards/roots"));
    }
    let home2 = root.join("home2");
    let out = restore_ok(&home2, &net, &paper, &[]);
    assert!(!out.contains("\n0 root records found in the DHT"), "{out}");
    let c2 = Customer {
        home: home2,
        mnt: c.mnt.clone(),
    };
    c2.mount();
    assert_eq!(
        std::fs::read(c2.mnt.join("f.txt")).expect("read"),
        b"found through the DHT"
    );
    c2.umount();
}
