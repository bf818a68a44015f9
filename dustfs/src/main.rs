//! dustfs: a decentralized, encrypted, self-repairing backup filesystem.
//!
//! This binary is the whole user interface: identity (`init`), the node (`serve`), the mount
//! (`mount`, with the FUSE adapter in [`fuse`]), talking to a running mount (`sync`,
//! `status`, `cache drop`), a local test network (`testnet`) and `quickstart`.

mod config;
mod control;
mod daemon;
mod fuse;
mod home;
mod mountopts;
mod testnet;

use std::io::{BufRead, BufReader, IsTerminal, Read, Seek, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use dustfs_core::fsm;
use dustfs_core::keys::MasterSecret;

use crate::config::Config;
use crate::control::{ControlReply, ControlRequest};
use crate::home::Home;

/// Environment variable set for the background mount process: it reports readiness on stdout.
const NOTIFY_ENV: &str = "DUSTFS_NOTIFY_READY";

#[derive(Parser)]
#[command(
    name = "dustfs",
    version,
    about = "A decentralized, encrypted, self-repairing backup filesystem"
)]
struct Cli {
    /// Home directory (identity, configuration, local state). Default: $DUSTFS_HOME, else the
    /// XDG data directory.
    #[arg(long, global = true)]
    home: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a new identity and configuration; prints the paper key once, as the last line.
    Init {
        /// A peer to join through: a multiaddr with /p2p/<id>, or a file listing them.
        #[arg(long)]
        bootstrap: Vec<String>,
        /// Address to listen on (repeatable). Default: all interfaces, ephemeral TCP and QUIC ports.
        #[arg(long)]
        listen: Vec<String>,
    },
    /// Rebuild a home from the paper key alone (read from standard input, or --paper-key-file):
    /// finds the newest snapshot on the network; the next mount shows the whole tree.
    Restore {
        /// A peer to join through: a multiaddr with /p2p/<id>, or a file listing them.
        #[arg(long, required = true)]
        bootstrap: Vec<String>,
        /// Address to listen on (repeatable). Default: all interfaces, ephemeral ports.
        #[arg(long)]
        listen: Vec<String>,
        /// Read the paper key from this file instead of standard input.
        #[arg(long)]
        paper_key_file: Option<PathBuf>,
        /// Also fetch every block now (verifying it), with a progress bar.
        #[arg(long)]
        all: bool,
    },
    /// List the snapshots kept on the network (each `sync` and clean unmount publishes one);
    /// mount one read-only with `-o snapshot=ID`.
    Snapshots {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Reclaim space: keep the snapshots `[snapshots]` in the configuration selects (and the
    /// live tree), delete every other block from the suppliers. Runs through the mount.
    Prune {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run a node (supplier + DHT) in the foreground.
    Serve {
        /// Test hook: misbehave as a supplier (garbage, drop) so the adversarial tests have a
        /// real faulty node to detect.
        #[arg(long, hide = true, default_value = "honest")]
        fault: dustfs_net::supplier::Fault,
    },
    /// Mount the filesystem; returns once the mount is ready.
    Mount {
        /// Where to mount (an existing, empty directory).
        mountpoint: PathBuf,
        /// Stay in the foreground instead of running in the background.
        #[arg(long)]
        foreground: bool,
        /// Mount options, comma-separated: allow_other, default_permissions (both on by
        /// default), ro, uid=N, gid=N, cache_mb=N.
        #[arg(short = 'o')]
        options: Option<String>,
    },
    /// Wait until everything written so far is durable on suppliers.
    Sync,
    /// Show peers, suppliers, the upload queue and blocks by health.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Manage the local cache.
    Cache {
        #[command(subcommand)]
        cmd: CacheCmd,
    },
    /// A local network of supplier nodes on 127.0.0.1.
    Testnet {
        #[command(subcommand)]
        cmd: TestnetCmd,
    },
    /// Start a 6-node testnet, create an identity and mount it: try dustfs in one command.
    Quickstart {
        /// Where to put everything.
        #[arg(long, default_value = "/tmp/dustfs-quickstart")]
        dir: PathBuf,
    },
    /// Print a state machine's transition table (or Graphviz drawing) from the code.
    Fsm {
        /// Print Graphviz dot instead of a table.
        #[arg(long)]
        dot: bool,
        /// The machine: block, supplier or node.
        name: String,
    },
}

#[derive(Subcommand)]
enum CacheCmd {
    /// Forget cached data that is durable on suppliers.
    Drop,
}

#[derive(Subcommand)]
enum TestnetCmd {
    /// Start N nodes in the background.
    Up {
        /// Directory for the nodes' homes, PIDs and the bootstrap file.
        #[arg(long)]
        dir: PathBuf,
        /// How many nodes.
        #[arg(long, default_value_t = 6)]
        nodes: usize,
        /// Quota each node grants each customer, in MiB.
        #[arg(long)]
        quota_mb: Option<u64>,
        /// IPv4 address the nodes listen on (e.g. inside a network namespace).
        #[arg(long, default_value = "127.0.0.1")]
        ip: std::net::Ipv4Addr,
        /// Transports the nodes listen on: both, tcp or quic.
        #[arg(long, default_value = "both")]
        transport: testnet::Transports,
    },
    /// Stop the nodes.
    Down {
        /// The testnet's directory.
        #[arg(long)]
        dir: PathBuf,
    },
}

/// Logs go to stderr (the background mount's stderr is `HOME/mount.log`). fuser's unmount
/// at session end reports EINVAL after an external `umount`, which is expected: silenced.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(
            "info,libp2p=warn,libp2p_kad=error,fuser::mnt::fuse_pure=off",
        )
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() {
    // Called by mount(8) (as /sbin/mount.dustfs, a link to this binary)?
    let argv: Vec<String> = std::env::args().collect();
    if argv
        .first()
        .and_then(|a| Path::new(a).file_name())
        .is_some_and(|n| n == "mount.dustfs")
    {
        init_logging();
        if let Err(e) = mount_helper(&argv[1..]) {
            eprintln!("mount.dustfs: {e:#}");
            std::process::exit(32); // mount(8)'s "mount failure"
        }
        return;
    }
    let cli = Cli::parse();
    init_logging();
    if let Err(e) = run(cli) {
        // Output cut short by a closed pipe (`dustfs status | head`) is not an error.
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
        {
            return;
        }
        eprintln!("dustfs: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Init { bootstrap, listen } => {
            let home = Home::resolve(cli.home)?;
            init(&home, bootstrap, listen)
        }
        Cmd::Restore {
            bootstrap,
            listen,
            paper_key_file,
            all,
        } => {
            let home = Home::resolve(cli.home)?;
            let paper = zeroize::Zeroizing::new(match paper_key_file {
                Some(f) => std::fs::read_to_string(&f)
                    .with_context(|| format!("reading {}", f.display()))?,
                None => {
                    if std::io::stdin().is_terminal() {
                        eprintln!("type the 24 words of the paper key, then Enter:");
                    }
                    let mut line = String::new();
                    std::io::stdin().read_line(&mut line)?;
                    line
                }
            });
            let mut cfg = Config {
                bootstrap: absolute_bootstrap(bootstrap)?,
                ..Config::default()
            };
            if !listen.is_empty() {
                cfg.listen = listen;
            }
            daemon::restore(&home, &paper, cfg, all)
        }
        Cmd::Snapshots { json } => {
            let list = daemon::snapshots(&Home::resolve(cli.home)?)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else if list.is_empty() {
                println!("no snapshots yet: `dustfs sync` publishes one");
            } else {
                println!(
                    "{:>6}  {:<20}  {:>8}  {:>14}  {:>9}",
                    "ID", "TIME", "FILES", "BYTES", "SUPPLIERS"
                );
                for s in list {
                    println!(
                        "{:>6}  {:<20}  {:>8}  {:>14}  {:>9}",
                        s.seq,
                        daemon::humantime_ms(s.time_ms),
                        s.files,
                        s.file_bytes,
                        s.suppliers
                    );
                }
            }
            Ok(())
        }
        Cmd::Prune { json } => {
            let home = Home::resolve(cli.home)?;
            let mut report = None;
            control::call(&home.path("control.sock"), &ControlRequest::Prune, |r| {
                if let ControlReply::Pruned(p) = r {
                    report = Some(p);
                }
                Ok(false)
            })?;
            let r = report.context("the mount process sent no prune report")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!(
                    "kept snapshots {:?}, dropped {:?}; compacted {} blocks ({} KiB of live chunks moved); deleted {} blocks ({} shards, {} MiB freed on suppliers), kept {}{}",
                    r.snapshots_kept,
                    r.snapshots_dropped,
                    r.blocks_compacted,
                    r.bytes_compacted >> 10,
                    r.blocks_deleted,
                    r.shards_deleted,
                    r.bytes_freed >> 20,
                    r.blocks_kept,
                    if r.blocks_pending > 0 {
                        format!(
                            "; {} blocks wait for unreachable suppliers (the next prune retries)",
                            r.blocks_pending
                        )
                    } else {
                        String::new()
                    }
                );
            }
            Ok(())
        }
        Cmd::Serve { fault } => daemon::serve(&Home::resolve(cli.home)?, fault),
        Cmd::Mount {
            mountpoint,
            foreground,
            options,
        } => {
            let mut opts = mountopts::MountOpts::default();
            if let Some(o) = options {
                opts.apply(&o, false)?;
            }
            mount(&Home::resolve(cli.home)?, &mountpoint, foreground, &opts)
        }
        Cmd::Sync => sync(&Home::resolve(cli.home)?),
        Cmd::Status { json } => status(&Home::resolve(cli.home)?, json),
        Cmd::Cache {
            cmd: CacheCmd::Drop,
        } => {
            let home = Home::resolve(cli.home)?;
            let mut dropped = 0;
            control::call(
                &home.path("control.sock"),
                &ControlRequest::CacheDrop,
                |r| {
                    if let ControlReply::Done { bytes } = r {
                        dropped = bytes;
                    }
                    Ok(false)
                },
            )?;
            println!(
                "dropped {} MiB of cached data; further reads come from suppliers",
                dropped >> 20
            );
            Ok(())
        }
        Cmd::Testnet {
            cmd:
                TestnetCmd::Up {
                    dir,
                    nodes,
                    quota_mb,
                    ip,
                    transport,
                },
        } => testnet::up(&dir, nodes, quota_mb, ip, transport),
        Cmd::Testnet {
            cmd: TestnetCmd::Down { dir },
        } => testnet::down(&dir),
        Cmd::Quickstart { dir } => quickstart(&dir),
        Cmd::Fsm { dot, name } => {
            use fsm::block::BlockMachine;
            use fsm::supplier::SupplierMachine;
            let text = match (name.as_str(), dot) {
                ("block", true) => fsm::dot::<BlockMachine>(),
                ("block", false) => fsm::table::<BlockMachine>(),
                ("supplier", true) => fsm::dot::<SupplierMachine>(),
                ("supplier", false) => fsm::table::<SupplierMachine>(),
                ("node", true) => fsm::dot::<fsm::node::NodeMachine>(),
                ("node", false) => fsm::table::<fsm::node::NodeMachine>(),
                (other, _) => {
                    bail!("unknown state machine {other:?}; known: block, supplier, node")
                }
            };
            print!("{text}");
            Ok(())
        }
    }
}

fn absolute_bootstrap(entries: Vec<String>) -> Result<Vec<String>> {
    entries
        .into_iter()
        .map(|b| {
            if Path::new(&b).exists() {
                Ok(std::fs::canonicalize(&b)?.to_string_lossy().into_owned())
            } else if b.starts_with('/') && b.parse::<dustfs_net::Multiaddr>().is_ok() {
                Ok(b)
            } else {
                bail!(
                    "--bootstrap {b}: neither a multiaddr (/ip4/.../p2p/...) nor an existing file"
                )
            }
        })
        .collect()
}

fn init(home: &Home, bootstrap: Vec<String>, listen: Vec<String>) -> Result<()> {
    let mut cfg = Config {
        bootstrap: absolute_bootstrap(bootstrap)?,
        ..Config::default()
    };
    if !listen.is_empty() {
        cfg.listen = listen;
    }
    let secret = MasterSecret::generate();
    home.init(&secret, &cfg)?;
    let keys = secret.derive();
    println!("created a dustfs identity in {}", home.dir.display());
    println!("user id: {}", hex::encode(keys.public().as_bytes()));
    println!(
        "Write down this paper key and keep it safe. It is shown only now, and it alone restores everything:"
    );
    println!("{}", *secret.paper_key());
    Ok(())
}

/// `mount.dustfs SOURCE MOUNTPOINT [-sfnv] [-o OPTIONS]`, as mount(8) and fstab call it.
fn mount_helper(args: &[String]) -> Result<()> {
    let h = mountopts::parse_helper(args)?;
    let home = Home::resolve(Some(h.source))?;
    home.config()?;
    if h.fake {
        daemon::check_mountpoint(&h.mountpoint, &home)?;
        return Ok(());
    }
    mount(&home, &h.mountpoint, false, &h.opts)
}

fn mount(
    home: &Home,
    mountpoint: &Path,
    foreground: bool,
    opts: &mountopts::MountOpts,
) -> Result<()> {
    if foreground {
        let notify = std::env::var_os(NOTIFY_ENV).is_some();
        let mut ready = |r: Result<(), String>| {
            if notify {
                match r {
                    Ok(()) => println!("READY"),
                    Err(e) => println!("ERROR {e}"),
                }
            }
        };
        return daemon::run_mount(home, mountpoint, opts, &mut ready);
    }
    // Check what we can before starting the background process, for a clear message.
    daemon::check_mountpoint(mountpoint, home)?;
    home.config()?;
    let log_path = home.path("mount.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)?;
    let log_start = log.metadata()?.len();
    let mut child = Command::new(std::env::current_exe()?)
        .arg("--home")
        .arg(&home.dir)
        .arg("mount")
        .arg(mountpoint)
        .arg("--foreground")
        .arg("-o")
        .arg(opts.to_arg())
        .env(NOTIFY_ENV, "1")
        // glibc gives each thread that allocates its own malloc arena and keeps freed
        // block-sized buffers in every one. Measured on a 512 MiB cold read (6-node testnet,
        // 4 runs): peak RSS 192-210 MiB with the default, 96-99 MiB with two arenas, at the
        // same speed (190-200 MB/s). The user's own setting wins.
        .env(
            "MALLOC_ARENA_MAX",
            std::env::var("MALLOC_ARENA_MAX").unwrap_or_else(|_| "2".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting the mount process")?;
    let out = child
        .stdout
        .take()
        .context("no pipe to the mount process")?;
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line)?;
    match line.trim() {
        "READY" => {
            println!(
                "dustfs mounted at {} (pid {}, log {})",
                mountpoint.display(),
                child.id(),
                log_path.display()
            );
            Ok(())
        }
        l => {
            let _ = child.wait();
            match l.strip_prefix("ERROR ") {
                Some(e) => bail!("{e}"),
                None => bail!(
                    "the mount process exited before the mount was ready; see {}{}",
                    log_path.display(),
                    log_tail(&log_path, log_start)
                ),
            }
        }
    }
}

/// The last lines the mount process wrote to its log (from `start` on), to show with an
/// error so that the user (and a CI log) sees why the mount failed without opening a file.
fn log_tail(path: &Path, start: u64) -> String {
    const LINES: usize = 15;
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let mut buf = Vec::new();
    if f.seek(std::io::SeekFrom::Start(start)).is_err() || f.read_to_end(&mut buf).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    let tail = &lines[lines.len().saturating_sub(LINES)..];
    if tail.is_empty() {
        String::new()
    } else {
        format!("; it printed:\n{}", tail.join("\n"))
    }
}

fn sync(home: &Home) -> Result<()> {
    let bar = if std::io::stderr().is_terminal() {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} uploading {msg} [{bar:30}] {bytes}/{total_bytes}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Some(b)
    } else {
        None
    };
    let mut max = 0u64;
    let mut snapshot = None;
    control::call(
        &home.path("control.sock"),
        &ControlRequest::Sync,
        |r| match r {
            ControlReply::Progress {
                shards,
                bytes,
                suppliers,
            } => {
                max = max.max(bytes);
                if let Some(b) = &bar {
                    b.set_length(max);
                    b.set_position(max - bytes);
                    b.set_message(format!("{shards} shards to {suppliers} suppliers"));
                }
                Ok(true)
            }
            ControlReply::Snapshot(info) => {
                snapshot = Some(info);
                Ok(true)
            }
            _ => Ok(false),
        },
    )?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    // Blocks lost before they reached suppliers (a power cut damaged their local copy) are
    // out of the queue: say so rather than claim everything is durable.
    match mount_status(home)?["blocks"]["lost"].as_u64().unwrap_or(0) {
        0 => println!("everything written so far is durable on suppliers"),
        n => {
            eprintln!(
                "warning: {n} block(s) are lost (see `dustfs status` and the mount's log): the data in them cannot be read"
            );
            println!("everything else written so far is durable on suppliers");
        }
    }
    if let Some(s) = snapshot {
        println!(
            "snapshot {} published to {} suppliers ({} files, {} bytes of metadata)",
            s.seq, s.suppliers, s.files, s.stream_bytes
        );
    }
    Ok(())
}

/// The running mount's status, as `dustfs status --json` prints it.
fn mount_status(home: &Home) -> Result<serde_json::Value> {
    let mut out = serde_json::Value::Null;
    control::call(&home.path("control.sock"), &ControlRequest::Status, |r| {
        if let ControlReply::Status(v) = r {
            out = v;
        }
        Ok(false)
    })?;
    Ok(out)
}

fn status(home: &Home, json: bool) -> Result<()> {
    // A closed pipe (`dustfs status | head`) ends the output quietly (see main).
    let mut out_w = std::io::stdout().lock();
    let out = mount_status(home)?;
    if json {
        writeln!(out_w, "{}", serde_json::to_string_pretty(&out)?)?;
        return Ok(());
    }
    writeln!(
        out_w,
        "node       {}",
        out["peer_id"].as_str().unwrap_or("?")
    )?;
    writeln!(
        out_w,
        "peers      {} connected, {} known; connectivity {}",
        out["peers"]["connected"],
        out["peers"]["known"],
        out["connectivity"].as_str().unwrap_or("?")
    )?;
    if let Some(paths) = out["peer_paths"].as_object() {
        let relayed = paths.values().filter(|p| *p == "relayed").count();
        let over = |t: &str| {
            out["peer_transports"].as_object().map_or(0, |m| {
                m.values()
                    .filter(|v| v.as_str().is_some_and(|v| v.contains(t)))
                    .count()
            })
        };
        writeln!(
            out_w,
            "paths      {} direct ({} over TCP, {} over QUIC), {relayed} through a relay ({} KiB relayed)",
            paths.len() - relayed,
            over("tcp"),
            over("quic"),
            out["relayed_bytes"]["total"].as_u64().unwrap_or(0) >> 10
        )?;
    }
    writeln!(
        out_w,
        "suppliers  {}",
        out["suppliers"].as_array().map(Vec::len).unwrap_or(0)
    )?;
    writeln!(
        out_w,
        "queue      {} shards, {} MiB waiting for upload",
        out["upload_queue"]["shards"],
        out["upload_queue"]["bytes"].as_u64().unwrap_or(0) >> 20
    )?;
    write!(out_w, "blocks    ")?;
    if let Some(b) = out["blocks"].as_object() {
        for (k, v) in b {
            if v.as_u64().unwrap_or(0) > 0 {
                write!(out_w, " {k}={v}")?;
            }
        }
    }
    writeln!(out_w,)?;
    if let Some(b) = out["suppliers_by_state"].as_object() {
        let parts: Vec<String> = b.iter().map(|(k, v)| format!("{k}={v}")).collect();
        writeln!(out_w, "suppliers  by state: {}", parts.join(" "))?;
    }
    if let Some(b) = out["blocks_by_live_shards"].as_object() {
        let parts: Vec<String> = b.iter().map(|(k, v)| format!("{v} with {k}")).collect();
        writeln!(
            out_w,
            "redundancy {} (live shards per block); repair rebuilt {} MiB, requeued {} shards",
            parts.join(", "),
            out["repair"]["bytes_rebuilt"].as_u64().unwrap_or(0) >> 20,
            out["repair"]["shards_requeued"]
        )?;
    }
    writeln!(
        out_w,
        "cache      {} MiB",
        out["cache_bytes"].as_u64().unwrap_or(0) >> 20
    )?;
    Ok(())
}

fn quickstart(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let net = dir.join("testnet");
    let home = Home {
        dir: dir.join("home"),
    };
    let mnt = dir.join("mnt");
    testnet::up(
        &net,
        6,
        None,
        std::net::Ipv4Addr::LOCALHOST,
        testnet::Transports::Both,
    )?;
    if !home.initialized() {
        init(
            &home,
            vec![net.join("bootstrap").to_string_lossy().into_owned()],
            testnet::listen_on(std::net::Ipv4Addr::LOCALHOST, testnet::Transports::Both),
        )?;
    } else {
        println!("using the existing identity in {}", home.dir.display());
    }
    std::fs::create_dir_all(&mnt)?;
    mount(&home, &mnt, false, &mountopts::MountOpts::default())?;
    println!();
    println!(
        "dustfs is mounted at {}. Copy files in, then make them durable with:",
        mnt.display()
    );
    println!("  dustfs --home {} sync", home.dir.display());
    println!("  dustfs --home {} status", home.dir.display());
    println!("Stop everything with:");
    println!(
        "  umount {} && dustfs testnet down --dir {}",
        mnt.display(),
        net.display()
    );
    Ok(())
}
