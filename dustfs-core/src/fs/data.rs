//! The data path: writes land as dirty extents, commits cut dirty runs into content-defined
//! chunks that are sealed and packed into the open block, reads assemble extents.
//!
//! Dirty bytes live in one append-only file per inode, `db/dirty/<ino>`; a dirty extent names
//! where its write starts in that file. They used to be RocksDB values: the profile of a
//! 512 MiB copy (`scripts/profile.sh write`, issue 8 note) had RocksDB's WAL appends and blob
//! flushes of bulk bytes at 35-40% of the mount process (copies into the page cache, CRC32C),
//! with dirty bytes written twice (WAL, then blob file) and read back from the blob file. A
//! file costs one copy. A long write cycles through the first 16-32 MiB of its dirty file
//! (`DIRTY_WRAP`), overwriting it in place; the file goes once no extent refers to it.
//!
//! Crash safety: bytes are written to their file before the RocksDB batch that makes an
//! extent point at them, and every step is one atomic batch that leaves the extent map pointing
//! at bytes that exist (dirty bytes until a chunk replaces them, the open block's file until
//! the block is sealed and queued), so a crash of the process at any point loses nothing that
//! was written. `fsync` syncs the files a file's data lives in before the WAL.

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use rocksdb::WriteBatch;

use super::blocks::Sealed;
use super::{
    DirtyFile, Engine, Extent, FsError, FsResult, Ino, Kind, ReadBytes, Src, State, Ts, lock,
};
use crate::chunk::{self, ChunkId};
use crate::db::{self, cf};
use crate::seal;

/// A piece of a read: where in the output it goes and where its bytes come from.
enum Piece {
    Chunk {
        at: usize,
        id: ChunkId,
        off: u64,
        len: usize,
    },
}

/// The dirty files' directory, inside the database directory.
pub(super) const DIRTY_DIR: &str = "dirty";

/// A dirty file whose live bytes all lie past this offset gets them moved to its start.
const DIRTY_WRAP: u64 = 16 << 20;

/// The largest commit buffer kept for the next commit (a long write's runs are about
/// `commit_bytes`, 16 MiB, plus the chunk left dirty by the commit before).
const COMMIT_BUF_KEEP: usize = 32 << 20;

impl Engine {
    fn dirty_path(&self, ino: Ino) -> std::path::PathBuf {
        self.dirty_dir.join(format!("{ino:016x}"))
    }

    /// The dirty file of `ino`, opened (and created) if needed.
    fn dirty_file<'a>(&self, st: &'a mut State, ino: Ino) -> FsResult<&'a mut DirtyFile> {
        match st.dirty_files.entry(ino) {
            std::collections::hash_map::Entry::Occupied(e) => Ok(e.into_mut()),
            std::collections::hash_map::Entry::Vacant(v) => {
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(self.dirty_path(ino))?;
                // Appending after whatever is there: bytes past the last extent (a write cut
                // short by a crash) are dead and freed with the file.
                let end = file.metadata()?.len();
                Ok(v.insert(DirtyFile { file, end }))
            }
        }
    }

    /// Bytes `[pos, pos + out.len())` of the dirty file of `ino`.
    fn read_dirty(&self, st: &mut State, ino: Ino, pos: u64, out: &mut [u8]) -> FsResult<()> {
        let df = self.dirty_file(st, ino)?;
        df.file.read_exact_at(out, pos).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                FsError::Corrupt(format!("dirty data of inode {ino} is missing at {pos}"))
            } else {
                FsError::Io(e)
            }
        })
    }

    /// Deletes the dirty file of `ino` (no extent refers to it any more).
    pub(super) fn remove_dirty_file(&self, st: &mut State, ino: Ino) -> FsResult<()> {
        st.dirty_files.remove(&ino);
        match std::fs::remove_file(self.dirty_path(ino)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// After a commit: counts the dirty bytes `ino` still has; removes its dirty file when
    /// nothing is left, and wraps it when its live bytes lie far enough past its start.
    fn reclaim_dirty(&self, st: &mut State, ino: Ino) -> FsResult<()> {
        let mut left = 0;
        let mut first = u64::MAX;
        for (_, e) in self.extents_in(st, ino, 0, u64::MAX)? {
            if let Src::Dirty { pos, off } = e.src {
                left += e.len;
                first = first.min(pos + off);
            }
        }
        if left == 0 {
            st.dirty.remove(&ino);
            return self.remove_dirty_file(st, ino);
        }
        st.dirty.insert(ino, left);
        // After a restart the file is not open yet: its end is its length.
        let end = self.dirty_file(st, ino)?.end;
        if first >= DIRTY_WRAP && end.saturating_sub(first) <= first {
            return self.wrap_dirty(st, ino, first, end);
        }
        // The committed part before `first` is left as it is, not punched out: the file is
        // overwritten in place when it wraps, so its pages stay in the page cache instead of
        // being freed and allocated again every 16 MiB (on this kind of VM, memory freed goes
        // back to the host and costs a fault per page when used again; see `WRITTEN_KEEP` in
        // blocks.rs). The file stays within the wrap bound either way.
        Ok(())
    }

    /// Moves the live tail `[first, end)` of a dirty file to its start, over dead bytes, and
    /// repoints its extents: a long write then cycles through the same pages of the file
    /// instead of growing it (on this kind of VM, page-cache pages the host has not backed yet
    /// cost a fault each when first written; see `scripts/profile.sh` in the issue 8 note).
    /// The bytes are in place before the batch, so a crash on the way changes nothing.
    fn wrap_dirty(&self, st: &mut State, ino: Ino, first: u64, end: u64) -> FsResult<()> {
        let mut tail = vec![0u8; (end - first) as usize];
        self.read_dirty(st, ino, first, &mut tail)?;
        let df = self.dirty_file(st, ino)?;
        df.file.write_all_at(&tail, 0)?;
        let mut b = WriteBatch::default();
        let ext = self.cf(cf::EXTENTS);
        let map = self.extent_map(st, ino)?;
        for (off, e) in map.iter_mut() {
            if let Src::Dirty { pos, off: o } = e.src {
                e.src = Src::Dirty {
                    pos: pos + o - first,
                    off: 0,
                };
                b.put_cf(&ext, db::key2(ino, *off), db::encode(&*e));
            }
        }
        self.write_extents(st, ino, b)?;
        if let Some(df) = st.dirty_files.get_mut(&ino) {
            df.end = end - first;
        }
        Ok(())
    }

    /// After a restart: dirty bytes per inode from the extents of inodes with a dirty file;
    /// dirty files no extent refers to (a crash after their last commit) are deleted, the
    /// others cut after their last live byte (and wrapped if that is due).
    pub(super) fn recover_dirty(&self, st: &mut State) -> FsResult<()> {
        let mut inos = Vec::new();
        for e in std::fs::read_dir(&self.dirty_dir)?.flatten() {
            match e
                .file_name()
                .to_str()
                .filter(|n| n.len() == 16)
                .and_then(|n| u64::from_str_radix(n, 16).ok())
            {
                Some(ino) => inos.push(ino),
                None => {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        for ino in inos {
            // Bytes past the last one an extent refers to are a write the crash cut short.
            let live_end = self
                .extents_in(st, ino, 0, u64::MAX)?
                .into_iter()
                .filter_map(|(_, e)| match e.src {
                    Src::Dirty { pos, off } => Some(pos + off + e.len),
                    _ => None,
                })
                .max()
                .unwrap_or(0);
            let df = self.dirty_file(st, ino)?;
            if df.end > live_end {
                df.file.set_len(live_end)?;
                df.end = live_end;
            }
            self.reclaim_dirty(st, ino)?;
            st.dirty_files.remove(&ino);
        }
        Ok(())
    }

    /// Databases written before dirty files kept dirty writes in the DIRTY column family:
    /// each is moved into its inode's dirty file and its extents repointed, in one batch per
    /// inode (the old values are deleted in the same batch, so a crash midway redoes the rest).
    pub(super) fn migrate_dirty_cf(&self, st: &mut State) -> FsResult<()> {
        let dirty = self.cf(cf::DIRTY);
        let mut by_ino: BTreeMap<Ino, Vec<(u64, Vec<u8>)>> = BTreeMap::new();
        for item in self.db.iterator_cf(&dirty, rocksdb::IteratorMode::Start) {
            let (k, v) = item?;
            if let (Some(ino), Some(seq)) = (db::be_u64(&k, 0), db::be_u64(&k, 8)) {
                by_ino.entry(ino).or_default().push((seq, v.to_vec()));
            }
        }
        for (ino, writes) in by_ino {
            let mut moved = std::collections::HashMap::new();
            let df = self.dirty_file(st, ino)?;
            for (seq, bytes) in &writes {
                df.file.write_all_at(bytes, df.end)?;
                moved.insert(*seq, df.end);
                df.end += bytes.len() as u64;
            }
            df.file.sync_data()?;
            let mut b = WriteBatch::default();
            let ext = self.cf(cf::EXTENTS);
            for (off, mut e) in self.extents_in(st, ino, 0, u64::MAX)? {
                if let Src::Dirty { pos, off: o } = e.src
                    && let Some(&at) = moved.get(&pos)
                {
                    e.src = Src::Dirty { pos: at, off: o };
                    b.put_cf(&ext, db::key2(ino, off), db::encode(&e));
                }
            }
            b.delete_range_cf(&dirty, db::key2(ino, 0), db::key2(ino + 1, 0));
            st.extents.pop(&ino);
            self.db.write(b)?;
            tracing::info!(
                ino,
                writes = writes.len(),
                "moved dirty data out of the database"
            );
        }
        Ok(())
    }

    /// The extent map of `ino`, loaded from RocksDB into the cache if needed.
    fn extent_map<'a>(
        &self,
        st: &'a mut State,
        ino: Ino,
    ) -> FsResult<&'a mut BTreeMap<u64, Extent>> {
        if !st.extents.contains(&ino) {
            let mut map = BTreeMap::new();
            let ext = self.cf(cf::EXTENTS);
            let mut it = self.db.raw_iterator_cf(&ext);
            it.seek(db::key2(ino, 0));
            while it.valid() {
                let (Some(k), Some(v)) = (it.key(), it.value()) else {
                    break;
                };
                if db::be_u64(k, 0) != Some(ino) {
                    break;
                }
                map.insert(db::be_u64(k, 8).unwrap_or(0), db::decode(cf::EXTENTS, v)?);
                it.next();
            }
            it.status()?;
            st.extents.put(ino, map);
        }
        st.extents
            .get_mut(&ino)
            .ok_or_else(|| FsError::Corrupt(format!("extent map of {ino} vanished")))
    }

    /// The extents of `ino` overlapping `[start, end)`, in order.
    pub(super) fn extents_in(
        &self,
        st: &mut State,
        ino: Ino,
        start: u64,
        end: u64,
    ) -> FsResult<Vec<(u64, Extent)>> {
        let map = self.extent_map(st, ino)?;
        let mut out = Vec::new();
        // The extent that starts before `start` may reach into the range.
        if let Some((&off, e)) = map.range(..start).next_back()
            && off + e.len > start
        {
            out.push((off, *e));
        }
        out.extend(map.range(start..end).map(|(o, e)| (*o, *e)));
        Ok(out)
    }

    /// Writes a batch that changed the extents of `ino`; if it fails, the cached map (already
    /// changed) is dropped so that it is reloaded from what RocksDB really holds.
    pub(super) fn write_extents(&self, st: &mut State, ino: Ino, b: WriteBatch) -> FsResult<()> {
        self.db.write(b).map_err(|e| {
            st.extents.pop(&ino);
            FsError::from(e)
        })
    }

    /// Replaces `[start, start+len)` of the extent map with `new` (or a hole), splitting the
    /// extents at the edges. Goes into `b` (which the caller writes with [`Self::write_extents`])
    /// and into the cached map.
    pub(super) fn replace_range(
        &self,
        st: &mut State,
        b: &mut WriteBatch,
        ino: Ino,
        start: u64,
        len: u64,
        new: Option<Extent>,
    ) -> FsResult<()> {
        let end = start.saturating_add(len);
        let ext = self.cf(cf::EXTENTS);
        let overlapping = self.extents_in(st, ino, start, end)?;
        let map = self.extent_map(st, ino)?;
        for (off, e) in overlapping {
            let e_end = off + e.len;
            b.delete_cf(&ext, db::key2(ino, off));
            map.remove(&off);
            if off < start {
                let left = Extent {
                    len: start - off,
                    src: e.src,
                };
                b.put_cf(&ext, db::key2(ino, off), db::encode(&left));
                map.insert(off, left);
            }
            if e_end > end {
                let right = Extent {
                    len: e_end - end,
                    src: e.src.advance(end - off),
                };
                b.put_cf(&ext, db::key2(ino, end), db::encode(&right));
                map.insert(end, right);
            }
        }
        if let Some(n) = new {
            b.put_cf(&ext, db::key2(ino, start), db::encode(&n));
            map.insert(start, n);
        }
        Ok(())
    }

    /// The inode of a regular file (EISDIR for a directory, EINVAL for anything else).
    fn file_inode(&self, ino: Ino) -> FsResult<super::Inode> {
        let inode = self.get_inode(ino)?;
        match inode.kind {
            Kind::File => Ok(inode),
            Kind::Dir => Err(FsError::IsDir),
            _ => Err(FsError::Invalid),
        }
    }

    /// Writes `data` at `off`; returns the bytes written.
    pub fn write(&self, ino: Ino, off: u64, data: &[u8]) -> FsResult<u32> {
        if data.is_empty() {
            return Ok(0);
        }
        let mut st = lock(&self.state);
        let mut inode = self.file_inode(ino)?;
        let len = data.len() as u64;
        // The bytes first, then the batch that points at them (a failed write, e.g. a full
        // disk, changes nothing the file shows).
        let df = self.dirty_file(&mut st, ino)?;
        let pos = df.end;
        df.file.write_all_at(data, pos)?;
        df.end += len;
        let mut b = WriteBatch::default();
        self.replace_range(
            &mut st,
            &mut b,
            ino,
            off,
            len,
            Some(Extent {
                len,
                src: Src::Dirty { pos, off: 0 },
            }),
        )?;
        let now = Ts::now();
        inode.size = inode.size.max(off + len);
        inode.mtime = now;
        inode.ctime = now;
        self.put_inode(&mut b, &inode);
        self.write_extents(&mut st, ino, b)?;
        let d = st.dirty.entry(ino).or_default();
        *d += len;
        if *d >= self.cfg.commit_bytes {
            self.commit_locked(&mut st, ino, false)?;
        }
        Ok(data.len() as u32)
    }

    /// fallocate: `extend` makes the file at least `off + len` long (dustfs reserves no local
    /// space: the data lives on suppliers); `punch` turns the range into a hole, keeping the size.
    pub fn fallocate(
        &self,
        ino: Ino,
        off: u64,
        len: u64,
        extend: bool,
        punch: bool,
    ) -> FsResult<()> {
        let mut st = lock(&self.state);
        let mut inode = self.file_inode(ino)?;
        let end = off.checked_add(len).ok_or(FsError::Invalid)?;
        let mut b = WriteBatch::default();
        let now = Ts::now();
        if punch {
            let to = end.min(inode.size);
            if to > off {
                self.replace_range(&mut st, &mut b, ino, off, to - off, None)?;
                inode.mtime = now;
                inode.ctime = now;
            }
        } else if extend && end > inode.size {
            inode.size = end;
            inode.ctime = now;
        }
        self.put_inode(&mut b, &inode);
        self.write_extents(&mut st, ino, b)
    }

    /// Reads up to `size` bytes at `off` (short at end of file).
    pub fn read(&self, ino: Ino, off: u64, size: u32) -> FsResult<Vec<u8>> {
        Ok(self.read_shared(ino, off, size)?.into_vec())
    }

    /// [`Self::read`], without copying a range that lies inside one chunk: that range is
    /// handed out as a slice of the chunk's plaintext, shared with the chunk cache. A
    /// sequential reader's requests (up to 1 MiB) mostly lie inside one chunk; a profile of a
    /// cold 256 MiB read had zeroing and filling a fresh reply buffer for each of them at about
    /// 2% of the mount's samples, on the one thread that serves FUSE requests.
    pub fn read_shared(&self, ino: Ino, off: u64, size: u32) -> FsResult<ReadBytes> {
        let mut pieces = Vec::new();
        let mut out;
        {
            let mut st = lock(&self.state);
            let inode = self.file_inode(ino)?;
            if off >= inode.size {
                return Ok(ReadBytes::Owned(Vec::new()));
            }
            let end = inode.size.min(off + size as u64);
            let extents = self.extents_in(&mut st, ino, off, end)?;
            if let [(e_off, e)] = extents.as_slice()
                && *e_off <= off
                && e_off + e.len >= end
                && let Src::Chunk { id, off: c_off } = e.src.advance(off - e_off)
            {
                drop(st);
                let plain = self.chunk_plain(&id)?;
                let range = chunk_range(&plain, &id, c_off as usize, (end - off) as usize)?;
                return Ok(ReadBytes::Shared(plain, range));
            }
            out = vec![0u8; (end - off) as usize];
            for (e_off, e) in extents {
                let from = e_off.max(off);
                let to = (e_off + e.len).min(end);
                if from >= to {
                    continue;
                }
                let at = (from - off) as usize;
                let len = (to - from) as usize;
                match e.src.advance(from - e_off) {
                    Src::Dirty { pos, off: d_off } => {
                        self.read_dirty(&mut st, ino, pos + d_off, &mut out[at..at + len])?;
                    }
                    Src::Chunk { id, off: c_off } => pieces.push(Piece::Chunk {
                        at,
                        id,
                        off: c_off,
                        len,
                    }),
                }
            }
        }
        // Chunks are immutable: their bytes can be fetched without holding the namespace lock.
        for Piece::Chunk { at, id, off, len } in pieces {
            let plain = self.chunk_plain(&id)?;
            let range = chunk_range(&plain, &id, off as usize, len)?;
            out[at..at + len].copy_from_slice(&plain[range]);
        }
        Ok(ReadBytes::Owned(out))
    }

    /// The plaintext of a chunk: from the in-memory cache, or from its block (local or fetched).
    pub(super) fn chunk_plain(&self, id: &ChunkId) -> FsResult<Arc<Vec<u8>>> {
        if let Some(p) = lock(&self.chunk_cache).get(id) {
            return Ok(p.clone());
        }
        let loc: super::ChunkLoc = match self.db.get_cf(&self.cf(cf::CHUNKS), id.0)? {
            Some(v) => db::decode(cf::CHUNKS, &v)?,
            None => {
                return Err(FsError::Corrupt(format!(
                    "{id:?} is not in the chunk index"
                )));
            }
        };
        let (off, len) = (loc.off as usize, loc.len as usize);
        let open = |sealed: FsResult<Sealed>| -> FsResult<Vec<u8>> {
            let (key, id_key) = (&self.keys.seal, &self.keys.chunk_id);
            let opened = match sealed? {
                Sealed::Owned(sealed) => seal::open_owned(key, id_key, id, sealed),
                Sealed::InBlock(block, off, len) => {
                    let parts = block.parts(off, len).ok_or_else(|| {
                        FsError::Corrupt(format!("chunk past the end of block {}", loc.block))
                    })?;
                    // A new buffer, not one kept for reuse: kept plaintext buffers (given
                    // back by the chunk cache) saved its zeroing, but held 15-25 MiB more
                    // of the mount's memory after a cold read (heap they pinned).
                    let mut plain = vec![0u8; len.saturating_sub(seal::SEAL_OVERHEAD)];
                    seal::open_parts_into(key, id_key, id, &parts, &mut plain).map(|()| plain)
                }
            };
            opened.map_err(|e| match e {
                // The cipher library failing (out of memory) says nothing about the bytes.
                seal::SealError::Cipher(_) => FsError::Seal(e),
                _ => FsError::Corrupt(format!("{id:?}: {e}")),
            })
        };
        let plain = match open(self.block_sealed(loc.block, off, len)) {
            Ok(p) => Arc::new(p),
            Err(FsError::Corrupt(e)) => {
                // A bad cached copy (a rotting local disk), or a block fetched ahead with a
                // bad shard (those are not checked on arrival): forget it and rebuild the
                // block from checked shards once, which also reports the bad shard.
                tracing::warn!(error = %e, block = loc.block, "chunk fails authentication; fetching its block again, every shard checked");
                self.discard_cached_block(loc.block)?;
                Arc::new(open(
                    self.block_slice(loc.block, off, len).map(Sealed::Owned),
                )?)
            }
            Err(e) => return Err(e),
        };
        lock(&self.chunk_cache).put(*id, plain.clone());
        Ok(plain)
    }

    /// Cuts the dirty runs of `ino` into chunks and packs them. With `final` false the last
    /// chunk of each run stays dirty, since more writes may extend it (its end is not a
    /// content-defined cut yet).
    pub(super) fn commit_locked(&self, st: &mut State, ino: Ino, final_: bool) -> FsResult<()> {
        if st.dirty.get(&ino).copied().unwrap_or(0) == 0 {
            return Ok(());
        }
        let all = self.extents_in(st, ino, 0, u64::MAX)?;
        // Maximal runs of contiguous dirty extents.
        let mut runs: Vec<Vec<(u64, Extent)>> = Vec::new();
        for (off, e) in all {
            if !matches!(e.src, Src::Dirty { .. }) {
                continue;
            }
            match runs.last_mut() {
                Some(r) if r.last().is_some_and(|(o, l)| o + l.len == off) => r.push((off, e)),
                _ => runs.push(vec![(off, e)]),
            }
        }
        let mut whole = std::mem::take(&mut st.commit_buf);
        let r = self.commit_runs(st, ino, final_, runs, &mut whole);
        if whole.capacity() <= COMMIT_BUF_KEEP {
            st.commit_buf = whole;
        }
        r?;
        // Free the dirty bytes no extent refers to any more, and recount what is left.
        self.reclaim_dirty(st, ino)
    }

    /// [`Self::commit_locked`]'s work on each dirty run, read into `whole`.
    fn commit_runs(
        &self,
        st: &mut State,
        ino: Ino,
        final_: bool,
        runs: Vec<Vec<(u64, Extent)>>,
        whole: &mut Vec<u8>,
    ) -> FsResult<()> {
        for run in runs {
            let run_start = run[0].0;
            let total = run.iter().map(|(_, e)| e.len).sum::<u64>() as usize;
            // Grown (zeroed) only past what earlier commits used: every byte is read over.
            if whole.len() < total {
                whole.resize(total, 0);
            }
            let buf = &mut whole[..total];
            let mut at = 0;
            for (_, e) in &run {
                let Src::Dirty { pos, off } = e.src else {
                    continue;
                };
                let n = e.len as usize;
                self.read_dirty(st, ino, pos + off, &mut buf[at..at + n])?;
                at += n;
            }
            for (o, l) in chunk::cuts(buf) {
                // Unless the file is done, the run's last piece stays dirty: its end is where
                // the writer stopped so far, not a content-defined cut.
                if !final_ && o + l == buf.len() {
                    break;
                }
                let data = &buf[o..o + l];
                let id = ChunkId::of(&self.keys.chunk_id, data);
                let mut b = WriteBatch::default();
                if self.db.get_pinned_cf(&self.cf(cf::CHUNKS), id.0)?.is_none() {
                    self.seal_into_open(st, &mut b, &id, data)?;
                }
                let ext = Extent {
                    len: l as u64,
                    src: Src::Chunk { id, off: 0 },
                };
                self.replace_range(st, &mut b, ino, run_start + o as u64, l as u64, Some(ext))?;
                self.write_extents(st, ino, b)?;
            }
        }
        Ok(())
    }

    /// Commits a file's dirty data (on flush and close).
    pub fn flush(&self, ino: Ino) -> FsResult<()> {
        let mut st = lock(&self.state);
        self.commit_locked(&mut st, ino, true)
    }

    /// Makes a file durable locally: its dirty data is committed and the database synced.
    /// Upload to suppliers continues in the background; `sync` waits for it.
    pub fn fsync(&self, ino: Ino) -> FsResult<()> {
        {
            let mut st = lock(&self.state);
            self.commit_locked(&mut st, ino, true)?;
            self.sync_block_files(&mut st)?;
        }
        self.db.flush_wal(true)?;
        Ok(())
    }

    /// Commits every file, seals the open block and syncs the local database. After this,
    /// everything written so far is in the upload queue or on suppliers.
    pub fn seal_all(&self) -> FsResult<()> {
        let mut st = lock(&self.state);
        let inos: Vec<Ino> = st.dirty.keys().copied().collect();
        for ino in inos {
            self.commit_locked(&mut st, ino, true)?;
        }
        self.seal_open_locked(&mut st)?;
        self.sync_block_files(&mut st)?;
        drop(st);
        self.db.flush_wal(true)?;
        Ok(())
    }
}

/// `len` bytes at `off` of chunk `id`'s plaintext, checked to lie within it (an extent that
/// points past its chunk's end is corrupt metadata, not a reason to panic).
fn chunk_range(
    plain: &[u8],
    id: &ChunkId,
    off: usize,
    len: usize,
) -> FsResult<std::ops::Range<usize>> {
    let end = off
        .checked_add(len)
        .filter(|&e| e <= plain.len())
        .ok_or_else(|| FsError::Corrupt(format!("extent past end of {id:?}")))?;
    Ok(off..end)
}
