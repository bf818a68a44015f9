//! The control socket of a running mount (`HOME/control.sock`): `dustfs status`, `sync` and
//! `cache drop` talk to the mount process through it, one JSON object per line.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use dustfs_core::fs::Engine;
use dustfs_net::host::Node;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tracing::{debug, warn};

use crate::fuse::KernelCache;

/// A request on the control socket.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum ControlRequest {
    /// The node's and the engine's state.
    Status,
    /// Commit and upload everything; progress lines follow until `done`.
    Sync,
    /// Forget cached blocks that are stored on suppliers.
    CacheDrop,
    /// Delete what no kept snapshot references (retention from the configuration).
    Prune,
}

/// One line of an answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlReply {
    /// Status as JSON.
    Status(serde_json::Value),
    /// Sync progress: shards and bytes still queued.
    Progress {
        /// shards queued
        shards: u64,
        /// bytes queued
        bytes: u64,
        /// suppliers known
        suppliers: usize,
    },
    /// `sync` published a snapshot (a root record on suppliers).
    Snapshot(dustfs_core::fs::SnapshotInfo),
    /// What `prune` did.
    Pruned(dustfs_core::fs::PruneReport),
    /// The request finished.
    Done {
        /// bytes affected, where it applies
        bytes: u64,
    },
    /// The request failed.
    Error(String),
}

/// Binds the control socket (replacing a stale one left by a crashed process). Done before the
/// mount reports ready, so `dustfs status` right after `dustfs mount` always finds it.
pub fn bind(path: &Path) -> Result<std::os::unix::net::UnixListener> {
    let _ = std::fs::remove_file(path);
    let l = std::os::unix::net::UnixListener::bind(path)
        .with_context(|| format!("binding {}", path.display()))?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// Serves the control socket until the runtime stops.
pub async fn serve(
    listener: std::os::unix::net::UnixListener,
    engine: Arc<Engine>,
    node: Node,
    kernel_cache: Arc<KernelCache>,
    retention: dustfs_core::fs::Retention,
) -> Result<()> {
    let listener = tokio::net::UnixListener::from_std(listener)?;
    loop {
        let (stream, _) = listener.accept().await?;
        let engine = engine.clone();
        let node = node.clone();
        let kernel_cache = kernel_cache.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, engine, node, kernel_cache, retention).await {
                debug!(error = %e, "control connection ended");
            }
        });
    }
}

async fn send(w: &mut tokio::net::unix::OwnedWriteHalf, r: &ControlReply) -> Result<()> {
    let mut line = serde_json::to_vec(r)?;
    line.push(b'\n');
    w.write_all(&line).await?;
    Ok(())
}

/// The status object `dustfs status --json` prints.
pub fn status_json(engine: &Engine, node: &Node) -> Result<serde_json::Value> {
    let e = engine.status()?;
    let n = node.status();
    let r = engine.repair_status()?;
    let audits = serde_json::json!({ "passed": r.audits_passed, "failed": r.audits_failed });
    let (supplier_states, by_live, requeued) = (
        r.supplier_states,
        r.blocks_by_live_shards,
        r.shards_requeued,
    );
    let mut suppliers_by_state = std::collections::BTreeMap::<String, u64>::new();
    for st in supplier_states.values() {
        *suppliers_by_state.entry(st.clone()).or_default() += 1;
    }
    let by_live: std::collections::BTreeMap<String, u64> = by_live
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    Ok(serde_json::json!({
        "peer_id": n.peer_id,
        "listen": n.listen,
        "peers": { "connected": n.connected, "known": n.known },
        "connectivity": n.connectivity,
        "peer_paths": n.peer_paths,
        "peer_transports": n.peer_transports,
        "hole_punched_ms": n.hole_punched_ms,
        "relayed_bytes": { "per_peer": n.relayed_bytes, "total": n.relayed_bytes_total },
        "suppliers": n.suppliers,
        "upload_queue": { "shards": e.queued_shards, "bytes": e.queued_bytes },
        "blocks": e.blocks,
        "dirty_bytes": e.dirty_bytes,
        "open_block_bytes": e.open_block_bytes,
        "cache_bytes": e.cache_bytes,
        "readahead_bytes": e.readahead_bytes,
        "corrupt_shards_detected": e.corrupt_shards,
        "hedged_fetches": e.hedged_fetches,
        "fetched_bytes": e.fetched_bytes,
        "db_memtable_bytes": e.db_memtables,
        "supplier_states": supplier_states,
        "suppliers_by_state": suppliers_by_state,
        "blocks_by_live_shards": by_live,
        "repair": {
            "shards_requeued": requeued,
            "bytes_rebuilt": r.bytes_rebuilt,
            "blocks_backing_off": r.backing_off,
        },
        "audits": audits,
        "redundancy": { "k": engine.config().redundancy.k, "m": engine.config().redundancy.m },
        "block_bytes": engine.config().block_size,
    }))
}

async fn handle(
    stream: tokio::net::UnixStream,
    engine: Arc<Engine>,
    node: Node,
    kernel_cache: Arc<KernelCache>,
    retention: dustfs_core::fs::Retention,
) -> Result<()> {
    let (r, mut w) = stream.into_split();
    let mut lines = tokio::io::BufReader::new(r).lines();
    let Some(line) = lines.next_line().await? else {
        return Ok(());
    };
    if line.len() > 4096 {
        return send(&mut w, &ControlReply::Error("request too long".into())).await;
    }
    let req: ControlRequest = match serde_json::from_str(&line) {
        Ok(r) => r,
        Err(e) => return send(&mut w, &ControlReply::Error(format!("bad request: {e}"))).await,
    };
    match req {
        ControlRequest::Status => {
            let e = engine.clone();
            let n = node.clone();
            let v = tokio::task::spawn_blocking(move || status_json(&e, &n)).await?;
            match v {
                Ok(v) => send(&mut w, &ControlReply::Status(v)).await,
                Err(e) => send(&mut w, &ControlReply::Error(e.to_string())).await,
            }
        }
        ControlRequest::Prune => {
            let e = engine.clone();
            let policy = retention;
            match tokio::task::spawn_blocking(move || prune(&e, &policy)).await? {
                Ok((r, published)) => {
                    if let Some(seq) = published {
                        crate::daemon::publish_in_dht(&node, &engine, seq).await;
                    }
                    send(&mut w, &ControlReply::Pruned(r)).await
                }
                Err(e) => send(&mut w, &ControlReply::Error(format!("{e:#}"))).await,
            }
        }
        ControlRequest::CacheDrop => {
            let e = engine.clone();
            // The local block cache, then the kernel's pages of the files (which would
            // otherwise answer the next read without asking this process).
            let drop = move || {
                let bytes = e.cache_drop()?;
                kernel_cache.drop_all();
                Ok::<_, dustfs_core::fs::FsError>(bytes)
            };
            match tokio::task::spawn_blocking(drop).await? {
                Ok(bytes) => send(&mut w, &ControlReply::Done { bytes }).await,
                Err(e) => send(&mut w, &ControlReply::Error(e.to_string())).await,
            }
        }
        ControlRequest::Sync => {
            // Data first, then the namespace packed behind it, then the root record naming it.
            let e = engine.clone();
            if let Err(err) = tokio::task::spawn_blocking(move || e.seal_all()).await? {
                return send(&mut w, &ControlReply::Error(err.to_string())).await;
            }
            if !drain(&engine, &node, &mut w).await? {
                return Ok(());
            }
            let e = engine.clone();
            let pending = match tokio::task::spawn_blocking(move || e.snapshot_metadata()).await? {
                Ok(p) => p,
                Err(err) => return send(&mut w, &ControlReply::Error(err.to_string())).await,
            };
            if !drain(&engine, &node, &mut w).await? {
                return Ok(());
            }
            let e = engine.clone();
            match tokio::task::spawn_blocking(move || e.publish_snapshot(pending)).await? {
                Ok(info) => {
                    crate::daemon::publish_in_dht(&node, &engine, info.seq).await;
                    send(&mut w, &ControlReply::Snapshot(info)).await?;
                    send(&mut w, &ControlReply::Done { bytes: 0 }).await
                }
                Err(err) => send(&mut w, &ControlReply::Error(err.to_string())).await,
            }
        }
    }
}

/// `dustfs prune`: plan, compact sparse blocks, publish a snapshot naming the moved chunks
/// (before anything they moved from is deleted), then mark and delete. Returns the report and
/// the snapshot published, if any.
fn prune(
    engine: &Engine,
    policy: &dustfs_core::fs::Retention,
) -> Result<(dustfs_core::fs::PruneReport, Option<u64>)> {
    let mut plan = engine.prune_plan(policy)?;
    let mut published = None;
    if engine.prune_compact(&mut plan, 0.5)? > 0 {
        let deadline = std::time::Instant::now() + Duration::from_secs(3600);
        let drained = || {
            crate::daemon::wait_drained(engine, deadline).map_err(|shards| {
                anyhow::anyhow!(
                    "{shards} shards still wait for upload; prune stopped before deleting anything"
                )
            })
        };
        drained()?;
        let pending = engine.snapshot_metadata()?;
        drained()?;
        let info = engine.publish_snapshot(pending)?;
        engine.prune_keep_also(&mut plan, info.seq)?;
        published = Some(info.seq);
    }
    Ok((engine.prune_finish(plan)?, published))
}

/// Waits until the upload queue is empty, sending progress lines. False if the client left
/// (uploads go on in the background).
async fn drain(
    engine: &Arc<Engine>,
    node: &Node,
    w: &mut tokio::net::unix::OwnedWriteHalf,
) -> Result<bool> {
    let mut last_progress: Option<std::time::Instant> = None;
    loop {
        let e = engine.clone();
        let (shards, bytes) = match tokio::task::spawn_blocking(move || e.pending()).await? {
            Ok(p) => p,
            Err(err) => {
                send(w, &ControlReply::Error(err.to_string())).await?;
                return Ok(false);
            }
        };
        if shards == 0 {
            return Ok(true);
        }
        // Woken by every upload round (not a fixed sleep: a 250 ms poll added up to half a
        // second to every sync, twice); progress lines go out four times a second at most.
        if last_progress.is_some_and(|t| t.elapsed() < Duration::from_millis(250)) {
            let e = engine.clone();
            tokio::task::spawn_blocking(move || e.wait_progress(Duration::from_millis(250)))
                .await?;
            continue;
        }
        last_progress = Some(std::time::Instant::now());
        let suppliers = node.suppliers().len();
        if send(
            w,
            &ControlReply::Progress {
                shards,
                bytes,
                suppliers,
            },
        )
        .await
        .is_err()
        {
            warn!("sync client went away; uploads continue in the background");
            return Ok(false);
        }
        let e = engine.clone();
        tokio::task::spawn_blocking(move || e.wait_progress(Duration::from_millis(250))).await?;
    }
}

/// Client side: sends a request and calls `on_reply` for each answer line until done.
pub fn call(
    sock: &Path,
    req: &ControlRequest,
    mut on_reply: impl FnMut(ControlReply) -> Result<bool>,
) -> Result<()> {
    let mut s = match UnixStream::connect(sock) {
        Ok(s) => s,
        Err(_) => bail!(
            "no dustfs mount is running for this home (no answer on {}); start one with `dustfs mount MOUNTPOINT`",
            sock.display()
        ),
    };
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    s.write_all(&line)?;
    let mut r = BufReader::new(s);
    let mut buf = String::new();
    loop {
        buf.clear();
        if r.read_line(&mut buf)? == 0 {
            bail!("the mount process closed the control connection early");
        }
        let reply: ControlReply =
            serde_json::from_str(buf.trim()).context("bad reply from the mount process")?;
        if let ControlReply::Error(e) = reply {
            bail!("{e}");
        }
        if !on_reply(reply)? {
            return Ok(());
        }
    }
}
