//! `dustfs testnet`: a local network of supplier nodes (on 127.0.0.1 by default), one process each, for
//! trying dustfs out and for the end-to-end tests.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use dustfs_core::keys::MasterSecret;

use crate::config::Config;
use crate::home::Home;

/// Which transports testnet nodes listen on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Transports {
    /// TCP and QUIC.
    Both,
    /// TCP only.
    Tcp,
    /// QUIC only.
    Quic,
}

/// Listen addresses of local test nodes: one address, ephemeral ports.
pub fn listen_on(ip: std::net::Ipv4Addr, t: Transports) -> Vec<String> {
    let mut v = Vec::new();
    if t != Transports::Quic {
        v.push(format!("/ip4/{ip}/tcp/0"));
    }
    if t != Transports::Tcp {
        v.push(format!("/ip4/{ip}/udp/0/quic-v1"));
    }
    v
}

fn node_dir(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("node-{i}"))
}

fn wait_for_file(p: &Path, timeout: Duration, pid: u32) -> Result<String> {
    let start = Instant::now();
    loop {
        if let Ok(s) = std::fs::read_to_string(p)
            && !s.trim().is_empty()
        {
            return Ok(s);
        }
        if start.elapsed() > timeout {
            bail!(
                "node (pid {pid}) did not write {} within {timeout:?}",
                p.display()
            );
        }
        if !Path::new(&format!("/proc/{pid}")).exists() {
            bail!(
                "node (pid {pid}) exited; see its log next to {}",
                p.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts `n` supplier nodes under `dir`; writes `dir/bootstrap` and `dir/node-I/pid`.
pub fn up(
    dir: &Path,
    n: usize,
    quota_mb: Option<u64>,
    ip: std::net::Ipv4Addr,
    transports: Transports,
) -> Result<()> {
    if n == 0 {
        bail!("a testnet needs at least one node");
    }
    std::fs::create_dir_all(dir)?;
    let dir = std::fs::canonicalize(dir)?;
    let exe = std::env::current_exe()?;
    let mut bootstrap = String::new();
    for i in 1..=n {
        let home = Home {
            dir: node_dir(&dir, i),
        };
        if let Ok(pid) = std::fs::read_to_string(home.path("pid"))
            && Path::new(&format!("/proc/{}", pid.trim())).exists()
        {
            bail!(
                "node {i} of {} is already running (pid {}); run `dustfs testnet down` first",
                dir.display(),
                pid.trim()
            );
        }
        if !home.initialized() {
            let mut cfg = Config {
                listen: listen_on(ip, transports),
                ..Config::default()
            };
            if let Some(q) = quota_mb {
                cfg.supplier.quota_mb = q;
            }
            if i > 1 {
                cfg.bootstrap = vec![
                    node_dir(&dir, 1)
                        .join("addrs")
                        .to_string_lossy()
                        .into_owned(),
                ];
            }
            home.init(&MasterSecret::generate(), &cfg)?;
        }
        let _ = std::fs::remove_file(home.path("addrs"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(home.path("log"))?;
        let child = Command::new(&exe)
            .arg("--home")
            .arg(&home.dir)
            .arg("serve")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .context("starting a node")?;
        std::fs::write(home.path("pid"), format!("{}\n", child.id()))?;
        let addrs = wait_for_file(&home.path("addrs"), Duration::from_secs(30), child.id())?;
        bootstrap.push_str(&addrs);
    }
    let tmp = dir.join("bootstrap.tmp");
    std::fs::write(&tmp, &bootstrap)?;
    std::fs::rename(&tmp, dir.join("bootstrap"))?;
    println!("testnet of {n} nodes is up in {}", dir.display());
    println!("bootstrap addresses: {}", dir.join("bootstrap").display());
    Ok(())
}

/// Stops the nodes started by [`up`] (SIGTERM, then SIGKILL after 5 s).
pub fn down(dir: &Path) -> Result<()> {
    let mut stopped = 0;
    for i in 1.. {
        let nd = node_dir(dir, i);
        if !nd.exists() {
            break;
        }
        let Ok(pid) = std::fs::read_to_string(nd.join("pid")) else {
            continue;
        };
        let pid = pid.trim().to_string();
        let alive = || Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(&pid);
        if alive() {
            let _ = Command::new("kill").arg("-TERM").arg(&pid).status();
            let start = Instant::now();
            while alive() && start.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(50));
            }
            if alive() {
                let _ = Command::new("kill").arg("-KILL").arg(&pid).status();
            }
            stopped += 1;
        }
        let _ = std::fs::remove_file(nd.join("pid"));
    }
    println!("stopped {stopped} nodes in {}", dir.display());
    Ok(())
}

fn is_zombie(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}
