//! Long-running processes: `dustfs serve` (a supplier node) and the mount process (node,
//! engine, uploader, control socket and FUSE session in one process).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use dustfs_core::erasure::Redundancy;
use dustfs_core::fs::{Engine, EngineConfig};
use dustfs_net::host::{Node, NodeConfig};
use dustfs_net::store::NetStore;
use dustfs_net::supplier::{Fault, ShardDir};
use tracing::{info, warn};

use crate::config::Config;
use crate::home::Home;

/// A tokio runtime for the network side (two workers: this machine class has two cores and
/// the FUSE and upload threads need them too).
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(runtime_builder().build()?)
}

fn runtime_builder() -> tokio::runtime::Builder {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    b.worker_threads(2).enable_all();
    b
}

/// How much nicer than the FUSE thread a mount's background threads run: its network runtime,
/// uploaders, repair and lease keeper. The FUSE thread (and the fetches it starts for readers)
/// keeps the nice value the mount was started with. An application writing or reading waits on
/// the FUSE thread, while uploads only need to keep up on average (`dustfs sync` waits for
/// them), so under contention the CPU goes to the requests first and background work fills
/// what is left; a backup also yields to the other programs of the machine this way. Raising
/// one's own nice value needs no privilege. Measured on the 2-core testbed, where the suppliers
/// share the CPU (`scripts/bench.sh 512 5000` alternated with the build before, 7 pairs): write
/// until durable medians 149.5 -> 157.3 MB/s, cold read, rsync and repair unchanged within
/// noise; long copies no faster, with 8-12% more CPU per GiB (docs/DESIGN.md).
const BACKGROUND_NICE: i32 = 10;

/// Makes the calling thread [`BACKGROUND_NICE`] nicer than the process's main thread (the FUSE
/// thread of a mount), at most 19, the lowest priority; calling it again changes nothing.
/// Best effort: a failure is logged and changes nothing else.
fn background_priority() {
    // On Linux the nice value belongs to each thread: PRIO_PROCESS with the process id names
    // the main thread (its thread id is the process id), and with no id (0) the calling thread.
    let main = rustix::process::getpid();
    let r = rustix::process::getpriority_process(Some(main)).and_then(|base| {
        rustix::process::setpriority_process(None, (base + BACKGROUND_NICE).min(19))
    });
    if let Err(e) = r {
        tracing::debug!(error = %e, "background priority not set");
    }
}

/// [`runtime`] for a mount: its workers run at [`BACKGROUND_NICE`].
fn background_runtime() -> Result<tokio::runtime::Runtime> {
    Ok(runtime_builder()
        .on_thread_start(background_priority)
        .build()?)
}

/// Starts the node of a home (always a supplier too: every peer is client and server).
pub async fn start_node(home: &Home, cfg: &Config, fault: Fault) -> Result<Node> {
    let keypair = home.node_key()?;
    let signer = dustfs_net::protocol::signing_key_of(&keypair)
        .context("the node key is not an Ed25519 key")?;
    let dir = Arc::new(
        ShardDir::open(&home.path("shards"), cfg.supplier.quota_mb << 20, signer)
            .context("opening the shard store")?
            .with_fault(fault),
    );
    start_node_as(home, cfg, keypair, Some(dir)).await
}

/// Starts a node with a given network key, supplier or not. Only the home's own node (the
/// supplier) publishes its addresses in `HOME/addrs`.
async fn start_node_as(
    home: &Home,
    cfg: &Config,
    keypair: dustfs_net::Keypair,
    dir: Option<Arc<ShardDir>>,
) -> Result<Node> {
    let is_supplier = dir.is_some();
    let listen = cfg
        .listen
        .iter()
        .map(|a| a.parse().with_context(|| format!("listen address {a}")))
        .collect::<Result<Vec<_>>>()?;
    let node = Node::start(NodeConfig {
        keypair,
        listen,
        bootstrap: home.bootstrap(cfg)?,
        supplier: dir,
    })
    .await?;
    let addrs = node
        .wait_listening(cfg.listen.len(), Duration::from_secs(10))
        .await;
    if addrs.is_empty() {
        bail!("the node could not listen on any of {:?}", cfg.listen);
    }
    if !is_supplier {
        return Ok(node);
    }
    // Publish our full addresses for testnets and for people to hand out as bootstrap.
    let text: String = addrs
        .iter()
        .map(|a| format!("{a}/p2p/{}\n", node.peer_id))
        .collect();
    let tmp = home.path("addrs.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, home.path("addrs"))?;
    Ok(node)
}

/// `dustfs serve`: a node in the foreground until SIGINT or SIGTERM.
pub fn serve(home: &Home, fault: Fault) -> Result<()> {
    let cfg = home.config()?;
    let rt = runtime()?;
    rt.block_on(async {
        let node = start_node(home, &cfg, fault).await?;
        if fault != Fault::Honest {
            tracing::warn!(
                ?fault,
                "serving as a deliberately faulty supplier (test mode)"
            );
        }
        info!(peer = %node.peer_id, "serving");
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        info!("stopping");
        Ok::<_, anyhow::Error>(())
    })?;
    let _ = std::fs::remove_file(home.path("addrs"));
    Ok(())
}

/// Whether `target` (absolute) is mounted from `source`, per /proc/self/mountinfo.
fn mounted_from(target: &Path, source: &str) -> bool {
    let t = target.to_string_lossy();
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|info| {
            info.lines().any(|l| {
                let mount_point = l.split(' ').nth(4);
                let src = l
                    .split(" - ")
                    .nth(1)
                    .and_then(|rest| rest.split(' ').nth(1));
                mount_point == Some(&*t) && src == Some(source)
            })
        })
        .unwrap_or(false)
}

/// The source name of a home's mount in the mount table.
fn fs_name(home: &Home) -> String {
    format!("dustfs:{}", home.dir.display())
}

/// Whether the mount process recorded in `HOME/mount.pid` is still running.
fn mount_process_alive(home: &Home) -> bool {
    let Ok(pid) = std::fs::read_to_string(home.path("mount.pid")) else {
        return false;
    };
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).unwrap_or_default();
    !stat.is_empty()
        && !stat
            .rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z'))
}

/// A dustfs mount whose process died (killed, crashed) leaves a dead FUSE mount behind: every
/// access fails with ENOTCONN (after the kernel's attribute cache expires). If `p` is mounted
/// and this home's mount process is gone, or `p` answers ENOTCONN, detach it so the restart can
/// mount again. Mounts may be stacked and umount(8) can trip over the dead mount, so both tools
/// are tried until the mount is gone.
fn clear_dead_mount(p: &Path, home: &Home) {
    let Ok(target) = std::path::absolute(p) else {
        return;
    };
    for attempt in 0..50 {
        let enotconn = std::fs::metadata(&target)
            .err()
            .and_then(|e| e.raw_os_error())
            == Some(libc::ENOTCONN);
        // Only this home's own mount is taken down when its process is gone.
        let orphaned = mounted_from(&target, &fs_name(home)) && !mount_process_alive(home);
        if !enotconn && !orphaned {
            return;
        }
        if attempt == 0 {
            warn!(mountpoint = %target.display(), "clearing the dead mount left by a previous dustfs process");
        }
        let quiet = std::process::Stdio::null;
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&target)
            .stderr(quiet())
            .status();
        let _ = std::process::Command::new("fusermount3")
            .arg("-u")
            .arg("-z")
            .arg(&target)
            .stderr(quiet())
            .status();
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Checks that a mountpoint exists, is an empty directory and is not mounted already (a dead
/// mount left by a crashed mount process of `home` is cleared first).
pub fn check_mountpoint(p: &Path, home: &Home) -> Result<PathBuf> {
    clear_dead_mount(p, home);
    let meta = std::fs::metadata(p).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            anyhow::anyhow!("mountpoint {} does not exist", p.display())
        }
        _ => anyhow::anyhow!("mountpoint {}: {e}", p.display()),
    })?;
    if !meta.is_dir() {
        bail!("mountpoint {} is not a directory", p.display());
    }
    let abs = std::fs::canonicalize(p)?;
    if let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") {
        let target = abs.to_string_lossy();
        if info.lines().any(|l| l.split(' ').nth(4) == Some(&target)) {
            bail!("{} is already a mountpoint (busy)", abs.display());
        }
    }
    if std::fs::read_dir(&abs)?.next().is_some() {
        bail!("mountpoint {} is not empty", abs.display());
    }
    Ok(abs)
}

/// Bytes of one data shard of a full block: blocks are `k` such shards (8 MiB at 4+2).
///
/// Each shard costs its supplier a file (inode allocation, fsync, rename, directory fsync) and
/// both sides a signed request, whatever its size; doubling it from 1 MiB cut the CPU time of a
/// 512 MiB copy until durable on a local testnet by about 10% (19.5-20.0 -> 17.1-18.4 CPU
/// s/GiB, 2 alternated pairs) and of a cold read by about 7% (8.5-9.2 -> 7.9-8.4). 4 MiB
/// shards saved no more CPU and left more bytes to sync at the end of a copy (disk wait
/// 0.3-0.5 -> 0.9 s), and would double again the memory held by readahead and the upload
/// queue's staged shards. Blocks written before keep their size (their records say it).
const SHARD_BYTES: usize = 2 << 20;

fn engine_config(cfg: &Config) -> EngineConfig {
    let redundancy = Redundancy {
        k: cfg.storage.data_shards,
        m: cfg.storage.parity_shards,
    };
    EngineConfig {
        redundancy,
        block_size: redundancy.k as usize * SHARD_BYTES,
        durable_shards: cfg.storage.durable_shards,
        cache_bytes: cfg.storage.cache_mb << 20,
        ..EngineConfig::default()
    }
}

fn open_engine(home: &Home, cfg: &Config, store: Arc<NetStore>) -> Result<Arc<Engine>> {
    let keys = home.user_secret()?.derive();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match Engine::open(
            &home.path("db"),
            keys.clone(),
            engine_config(cfg),
            store.clone(),
        ) {
            Ok(e) => return Ok(e),
            // A previous mount of this home may still be uploading after its unmount.
            Err(e) if e.to_string().contains("lock") && Instant::now() < deadline => {
                warn!("the database is still held by an earlier mount process; waiting");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => return Err(e).context("opening the local database"),
        }
    }
}

/// The mount process: runs until the filesystem is unmounted. `ready` is called once the
/// mount is in place (or with the error that prevented it).
pub fn run_mount(
    home: &Home,
    mountpoint: &Path,
    opts: &crate::mountopts::MountOpts,
    ready: &mut dyn FnMut(Result<(), String>),
) -> Result<()> {
    let setup = (|| {
        let mp = check_mountpoint(mountpoint, home)?;
        let mut cfg = home.config()?;
        if let Some(c) = opts.cache_mb {
            cfg.storage.cache_mb = c;
        }
        let rt = background_runtime()?;
        let key = home.user_secret()?.derive().signing.clone();
        let (node, engine, lease) = match opts.snapshot {
            None => {
                let node = rt.block_on(start_node(home, &cfg, Fault::Honest))?;
                let store = Arc::new(NetStore::new(node.clone(), key, rt.handle().clone()));
                let engine = open_engine(home, &cfg, store.clone())?;
                let lease = if opts.ro {
                    None
                } else {
                    take_writer_lease(&node, &store, &engine)?;
                    Some(store)
                };
                (node, engine, lease)
            }
            Some(seq) => {
                // A snapshot mount is a second, read-only client of the same identity: its own
                // throwaway network key (no supplier role, so no second peer with the home's
                // id) and its own database, restored from that snapshot's root record.
                let node = rt.block_on(start_client(home, &cfg))?;
                let store = Arc::new(NetStore::new(node.clone(), key, rt.handle().clone()));
                let engine = open_snapshot(home, &cfg, store, seq)?;
                (node, engine, None)
            }
        };
        Ok::<_, anyhow::Error>((mp, cfg, rt, node, engine, lease))
    })();
    let (mp, cfg, rt, node, engine, lease) = match setup {
        Ok(v) => v,
        Err(e) => {
            ready(Err(format!("{e:#}")));
            return Err(e);
        }
    };
    let (pid_file, sock_file) = match opts.snapshot {
        None => ("mount.pid".to_string(), "control.sock".to_string()),
        Some(n) => (format!("snapshot-{n}.pid"), format!("snapshot-{n}.sock")),
    };
    let ro = opts.ro || opts.snapshot.is_some();
    std::fs::write(home.path(&pid_file), format!("{}\n", std::process::id()))?;

    // The uploaders: drain the upload queue in the background.
    let stop = Arc::new(AtomicBool::new(false));
    // The writer lease is renewed while mounted read-write, and released at the very end.
    let lease_stop = Arc::new(AtomicBool::new(false));
    let leaser = match lease {
        Some(store) => {
            let (node, engine, stop) = (node.clone(), engine.clone(), lease_stop.clone());
            Some(
                std::thread::Builder::new()
                    .name("lease".into())
                    .spawn(move || {
                        background_priority();
                        lease_keeper(node, store, engine, stop)
                    })?,
            )
        }
        None => None,
    };
    // Several rounds at once: one waiting for the slowest store of its blocks does not leave
    // the network idle (see Engine::upload_round).
    let mut uploaders = Vec::new();
    for n in 0..dustfs_core::fs::UPLOAD_ROUNDS {
        let engine = engine.clone();
        let stop = stop.clone();
        uploaders.push(
            std::thread::Builder::new()
                .name(format!("uploader-{n}"))
                .spawn(move || {
                    background_priority();
                    while !stop.load(Ordering::SeqCst) {
                        match engine.upload_round() {
                            Ok(0) => engine.wait_progress(Duration::from_millis(500)),
                            Ok(_) => {}
                            Err(e) => {
                                warn!(error = %e, "upload round failed");
                                std::thread::sleep(Duration::from_secs(1));
                            }
                        }
                    }
                })?,
        );
    }
    // Liveness checks of suppliers and repair of blocks that lost shards, in the background.
    let repairer = {
        let engine = engine.clone();
        let stop = stop.clone();
        let rcfg = cfg.repair.clone();
        // A snapshot is read-only: nothing to check or repair from it (the rw mount does).
        let repairs = opts.snapshot.is_none();
        std::thread::Builder::new()
            .name("repair".into())
            .spawn(move || {
                background_priority();
                let scfg = dustfs_core::fsm::supplier::SupplierConfig {
                    suspect_after: rcfg.suspect_after,
                    grace_ms: rcfg.grace_secs * 1000,
                };
                let interval = Duration::from_secs(rcfg.check_interval_secs.max(1));
                let mut next_round = Instant::now();
                while repairs && !stop.load(Ordering::SeqCst) {
                    if Instant::now() >= next_round {
                        let now_ms = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map(|d| d.as_millis() as u64)
                            .unwrap_or(0);
                        if let Err(e) = engine.liveness_round(now_ms, &scfg) {
                            warn!(error = %e, "liveness round failed");
                        }
                        if let Err(e) =
                            engine.audit_round(rand::random(), rcfg.audit_bytes_per_round)
                        {
                            warn!(error = %e, "audit round failed");
                        }
                        next_round = Instant::now() + interval;
                    }
                    // Repair passes follow each other while there is work; the budget bounds
                    // each one and the bandwidth limit spreads them out.
                    let now_ms = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_millis() as u64)
                        .unwrap_or(0);
                    let budget = dustfs_core::fs::RepairBudget {
                        max_blocks: rcfg.blocks_per_pass.max(1),
                        bytes_per_sec: rcfg.bandwidth_mb << 20,
                    };
                    match engine.repair_round(now_ms, budget) {
                        Ok(n) if n > 0 => continue,
                        Ok(_) => {}
                        Err(e) => warn!(error = %e, "repair round failed"),
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            })?
    };
    let sock = home.path(&sock_file);
    let listener = crate::control::bind(&sock)?;
    let kernel_cache = Arc::new(crate::fuse::KernelCache::default());
    rt.spawn(crate::control::serve(
        listener,
        engine.clone(),
        node.clone(),
        kernel_cache.clone(),
        cfg.snapshots,
    ));
    // SIGTERM / SIGINT unmount cleanly, which ends the FUSE session below.
    {
        let mp = mp.clone();
        rt.spawn(async move {
            let Ok(mut term) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            else {
                return;
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            info!("signal received; unmounting");
            let _ = tokio::task::spawn_blocking(move || {
                std::process::Command::new("umount").arg(&mp).status()
            })
            .await;
        });
    }

    let mut options = vec![
        fuser::MountOption::FSName(match opts.snapshot {
            None => fs_name(home),
            Some(n) => format!("{}@snapshot-{n}", fs_name(home)),
        }),
        fuser::MountOption::Subtype("dustfs".into()),
    ];
    if opts.default_permissions {
        options.push(fuser::MountOption::DefaultPermissions);
    }
    if opts.allow_other {
        options.push(fuser::MountOption::AllowOther);
    }
    options.push(if ro {
        fuser::MountOption::RO
    } else {
        fuser::MountOption::RW
    });
    let mut session = match fuser::Session::new(
        crate::fuse::DustFs::new(engine.clone(), opts.uid, opts.gid, kernel_cache.clone()),
        &mp,
        &options,
    ) {
        Ok(s) => s,
        Err(e) => {
            let msg = format!(
                "mounting {} failed: {e} (is /dev/fuse available and are you root?)",
                mp.display()
            );
            ready(Err(msg.clone()));
            stop.store(true, Ordering::SeqCst);
            bail!(msg);
        }
    };
    kernel_cache.set_notifier(session.notifier());
    info!(mountpoint = %mp.display(), "mounted");
    ready(Ok(()));
    let result = session.run();
    drop(session);
    info!("unmounted; flushing");
    if let Err(e) = engine.seal_all() {
        warn!(error = %e, "final commit failed; data stays in the local queue");
    }
    let deadline = Instant::now() + Duration::from_secs(cfg.storage.unmount_drain_secs);
    let drained = || wait_drained(&engine, deadline).is_ok();
    // A clean unmount publishes a snapshot, so the namespace on the network is this one.
    if drained() && !ro {
        match engine.snapshot_metadata() {
            Ok(p) if drained() => match engine.publish_snapshot(p) {
                Ok(s) => {
                    info!(
                        seq = s.seq,
                        files = s.files,
                        "snapshot published at unmount"
                    );
                    rt.block_on(publish_in_dht(&node, &engine, s.seq));
                }
                Err(e) => warn!(error = %e, "snapshot not published at unmount"),
            },
            Ok(_) => warn!("metadata uploads did not finish in time; no snapshot published"),
            Err(e) => warn!(error = %e, "metadata snapshot failed"),
        }
    }
    stop.store(true, Ordering::SeqCst);
    for u in uploaders {
        let _ = u.join();
    }
    let _ = repairer.join();
    lease_stop.store(true, Ordering::SeqCst);
    if let Some(l) = leaser {
        let _ = l.join();
    }
    let _ = std::fs::remove_file(&sock);
    let _ = std::fs::remove_file(home.path(&pid_file));
    drop(engine);
    rt.shutdown_timeout(Duration::from_secs(2));
    result.context("FUSE session")?;
    let _ = std::io::stdout().flush();
    Ok(())
}

fn progress_bar(what: &str) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let b = indicatif::ProgressBar::new(0);
    b.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{{spinner}} {what} [{{bar:30}}] {{bytes}}/{{total_bytes}} ({{bytes_per_sec}})"
        ))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    Some(b)
}

/// Waits until the node has found suppliers through the DHT and their number has settled.
async fn wait_for_suppliers(node: &Node, timeout: Duration) -> usize {
    let start = Instant::now();
    let (mut last, mut since) = (0, Instant::now());
    loop {
        let n = node.suppliers().len();
        if n != last {
            (last, since) = (n, Instant::now());
        }
        let settled = since.elapsed() >= Duration::from_secs(3);
        if (n > 0 && settled) || start.elapsed() >= timeout {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `dustfs restore`: a new home from the paper key alone. On failure, whatever this created is
/// removed again, so the user can simply retry.
pub fn restore(home: &Home, paper: &str, cfg: Config, all: bool) -> Result<()> {
    let secret = dustfs_core::keys::MasterSecret::from_paper_key(paper)
        .context("that is not a valid paper key (check the words and their order)")?;
    if home.initialized() {
        bail!(
            "{} already holds a dustfs identity; restore into a new home (--home DIR)",
            home.dir.display()
        );
    }
    let fresh =
        !home.dir.exists() || std::fs::read_dir(&home.dir).is_ok_and(|mut d| d.next().is_none());
    if !fresh {
        bail!(
            "{} is not empty; restore into a new or empty directory",
            home.dir.display()
        );
    }
    home.init(&secret, &cfg)?;
    let result = restore_into(home, &cfg, all);
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&home.dir);
    }
    result
}

fn restore_into(home: &Home, cfg: &Config, all: bool) -> Result<()> {
    let keys = home.user_secret()?.derive();
    println!("user id: {}", hex::encode(keys.public().as_bytes()));
    let rt = runtime()?;
    let node = rt.block_on(start_node(home, cfg, Fault::Honest))?;
    let n = rt.block_on(wait_for_suppliers(&node, Duration::from_secs(60)));
    if n == 0 {
        bail!("no suppliers found through the bootstrap peers within 60 s");
    }
    println!("asking {n} suppliers and the DHT for snapshots of this identity");
    let dht_roots = rt.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(10),
            node.get_records(dustfs_net::host::root_key(&keys.public().to_bytes())),
        )
        .await
        .unwrap_or_default()
    });
    println!("{} root records found in the DHT", dht_roots.len());
    let store = Arc::new(NetStore::new(
        node.clone(),
        keys.signing.clone(),
        rt.handle().clone(),
    ));
    let started = Instant::now();
    let info = {
        let engine = Engine::open(
            &home.path("db"),
            keys.clone(),
            engine_config(cfg),
            store.clone(),
        )
        .context("creating the local database")?;
        let bar = progress_bar("metadata");
        let r = engine.restore_from_network(None, dht_roots, |done, total| {
            if let Some(b) = &bar {
                b.set_length(total);
                b.set_position(done);
            }
        });
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        r?
    };
    let s = &info.snapshot;
    println!(
        "restored snapshot {} of {}: {} files, {} bytes in files, {} bytes of metadata, in {:.1} s",
        s.seq,
        humantime_ms(s.time_ms),
        s.files,
        s.file_bytes,
        s.stream_bytes,
        started.elapsed().as_secs_f64()
    );
    println!(
        "{} of {} suppliers answered; {} of {} blocks have every shard (the rest are repaired after mounting){}",
        info.suppliers_answered,
        info.suppliers_asked,
        info.blocks_complete,
        info.blocks,
        if info.roots_refused > 0 {
            format!(
                "; {} forged or foreign root records ignored",
                info.roots_refused
            )
        } else {
            String::new()
        }
    );
    if all {
        let engine = Engine::open(&home.path("db"), keys, engine_config(cfg), store)
            .context("opening the restored database")?;
        let bar = progress_bar("data");
        let t = Instant::now();
        let bytes = engine.prefetch_all(|done, total| {
            if let Some(b) = &bar {
                b.set_length(total);
                b.set_position(done);
            }
        });
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        let bytes = bytes?;
        let secs = t.elapsed().as_secs_f64().max(1e-3);
        println!(
            "fetched and verified {} MiB of blocks in {secs:.1} s ({:.1} MiB/s)",
            bytes >> 20,
            bytes as f64 / secs / (1 << 20) as f64
        );
    }
    drop(node);
    rt.shutdown_timeout(Duration::from_secs(2));
    println!(
        "done: mount it with `dustfs --home {} mount MOUNTPOINT`",
        home.dir.display()
    );
    Ok(())
}

/// A Unix time in ms as RFC 3339 (UTC, seconds).
pub fn humantime_ms(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// The database of a snapshot mount: `HOME/snapshots/SEQ/db`, restored from that snapshot's
/// root record on first use (and kept: a snapshot never changes).
fn open_snapshot(home: &Home, cfg: &Config, store: Arc<NetStore>, seq: u64) -> Result<Arc<Engine>> {
    let keys = home.user_secret()?.derive();
    let dir = home.path("snapshots").join(seq.to_string());
    let db = dir.join("db");
    if !dir.join("complete").exists() {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let engine = Engine::open(&db, keys.clone(), engine_config(cfg), store.clone())?;
        let info = engine.restore_from_network(Some(seq), Vec::new(), |_, _| {});
        drop(engine);
        let info = info.with_context(|| format!("restoring snapshot {seq}"))?;
        info!(
            seq,
            files = info.snapshot.files,
            "snapshot restored for a read-only mount"
        );
        std::fs::write(dir.join("complete"), b"")?;
    }
    Ok(Engine::open(&db, keys, engine_config(cfg), store)?)
}

/// `dustfs snapshots`: the snapshots suppliers keep for this identity, asked through a
/// short-lived client node (works with or without a running mount).
pub fn snapshots(home: &Home) -> Result<Vec<dustfs_core::fs::SnapshotInfo>> {
    let cfg = home.config()?;
    let keys = home.user_secret()?.derive();
    let rt = runtime()?;
    let node = rt.block_on(start_client(home, &cfg))?;
    let store = NetStore::new(node.clone(), keys.signing.clone(), rt.handle().clone());
    let list = dustfs_core::fs::list_snapshots(&store, &keys)?;
    drop(store);
    drop(node);
    rt.shutdown_timeout(Duration::from_secs(2));
    Ok(list)
}

/// How long a writer lease lasts without renewal, and how often the mount renews it.
const LEASE_TTL: Duration = Duration::from_secs(60);
/// Renewal interval of the writer lease.
pub const LEASE_RENEW: Duration = Duration::from_secs(15);

fn device_id(node: &Node) -> [u8; 32] {
    *blake3::hash(&node.peer_id.to_bytes()).as_bytes()
}

/// Asks `targets` for the writer lease (`ttl` zero releases it). Returns the first other
/// holder found, with the time left on its lease.
fn lease_round(
    store: &NetStore,
    device: [u8; 32],
    targets: &std::collections::BTreeSet<String>,
    ttl: Duration,
) -> Option<([u8; 32], u64)> {
    std::thread::scope(|sc| {
        let hs: Vec<_> = targets
            .iter()
            .map(|s| sc.spawn(move || store.lease(s, device, ttl.as_millis() as u64)))
            .collect();
        hs.into_iter()
            .filter_map(|h| h.join().ok())
            .find_map(|r| match r {
                Ok(dustfs_net::store::LeaseAnswer::HeldBy {
                    device,
                    remaining_ms,
                }) => Some((device, remaining_ms)),
                _ => None,
            })
    })
}

/// One writer per identity: takes the lease on every supplier of this identity before a
/// read-write mount, refusing with a clear message when another machine holds it.
fn take_writer_lease(node: &Node, store: &NetStore, engine: &Engine) -> Result<()> {
    let holding = engine.holding_suppliers()?;
    // Our suppliers must be known to ask them: wait until discovery has found all of them
    // (or, if some are gone, until it has settled).
    let start = Instant::now();
    let (mut last, mut since) = (0, Instant::now());
    while !holding.is_empty() {
        let known: std::collections::BTreeSet<String> = node
            .suppliers()
            .into_iter()
            .map(|p| p.to_string())
            .collect();
        if known.len() != last {
            (last, since) = (known.len(), Instant::now());
        }
        let settled =
            start.elapsed() > Duration::from_secs(5) && since.elapsed() > Duration::from_secs(2);
        if holding.is_subset(&known) || settled || start.elapsed() > Duration::from_secs(20) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut targets = holding;
    targets.extend(node.suppliers().into_iter().map(|p| p.to_string()));
    if let Some((other, remaining_ms)) = lease_round(store, device_id(node), &targets, LEASE_TTL) {
        bail!(
            "this identity is mounted read-write on another machine (device {}…, its lease ends in {} s unless renewed); \
             unmount it there, or mount here read-only with -o ro",
            &hex::encode(other)[..12],
            remaining_ms.div_ceil(1000)
        );
    }
    Ok(())
}

/// Renews the writer lease until `stop`, then releases it.
fn lease_keeper(node: Node, store: Arc<NetStore>, engine: Arc<Engine>, stop: Arc<AtomicBool>) {
    let device = device_id(&node);
    let targets = || {
        let mut t = engine.holding_suppliers().unwrap_or_default();
        t.extend(node.suppliers().into_iter().map(|p| p.to_string()));
        t
    };
    // Suppliers found since the last round get the lease at once, not at the next renewal: a
    // fresh mount knows no supplier yet when it takes the lease, and for the first 15 s a
    // second machine could otherwise mount the identity read-write too (it did, in CI).
    let mut leased: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    let mut next = Instant::now() + LEASE_RENEW;
    while !stop.load(Ordering::SeqCst) {
        let renew = Instant::now() >= next;
        let ask = if renew {
            targets()
        } else {
            node.suppliers()
                .into_iter()
                .map(|p| p.to_string())
                .filter(|s| !leased.contains(s))
                .collect()
        };
        if !ask.is_empty() {
            if let Some((other, _)) = lease_round(&store, device, &ask, LEASE_TTL) {
                tracing::error!(
                    other = %hex::encode(other),
                    "another machine holds this identity's writer lease: two writers at once"
                );
            }
            leased.extend(ask);
        }
        if renew {
            next = Instant::now() + LEASE_RENEW;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    lease_round(&store, device, &targets(), Duration::ZERO);
}

/// Publishes snapshot `seq`'s root record in the DHT too (best effort: suppliers have it).
pub async fn publish_in_dht(node: &Node, engine: &Engine, seq: u64) {
    let Ok(Some(signed)) = engine.root_record(seq) else {
        return;
    };
    if signed.len() > dustfs_net::host::MAX_DHT_VALUE {
        info!(
            seq,
            bytes = signed.len(),
            "root record too large for the DHT; suppliers keep it"
        );
        return;
    }
    let key = dustfs_net::host::root_key(&engine.user_id());
    match tokio::time::timeout(Duration::from_secs(10), node.put_record(key, signed)).await {
        Ok(Ok(())) => info!(seq, "root record published in the DHT"),
        Ok(Err(e)) => warn!(seq, error = %e, "root record not published in the DHT"),
        Err(_) => warn!(seq, "publishing the root record in the DHT timed out"),
    }
}

/// A short-lived client of this identity (a snapshot mount, `dustfs snapshots`): a throwaway
/// network key, so it is never a second peer with the home's own id, no supplier role; waits
/// until suppliers are found.
async fn start_client(home: &Home, cfg: &Config) -> Result<Node> {
    let node = start_node_as(home, cfg, dustfs_net::Keypair::generate_ed25519(), None).await?;
    if wait_for_suppliers(&node, Duration::from_secs(30)).await == 0 {
        bail!("no suppliers found through the bootstrap peers within 30 s");
    }
    Ok(node)
}

/// Waits until the upload queue is empty, or `deadline`; `Err` carries the shards still
/// queued (`u64::MAX` when the queue could not be read).
pub fn wait_drained(engine: &Engine, deadline: Instant) -> Result<(), u64> {
    loop {
        let shards = engine.pending().map_err(|_| u64::MAX)?.0;
        if shards == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(shards);
        }
        info!(shards, "waiting for uploads");
        engine.wait_progress(Duration::from_millis(250));
    }
}
