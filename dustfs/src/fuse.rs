//! The FUSE adapter: translates kernel requests into [`Engine`] calls and [`FsError`]s into
//! errno values. No filesystem logic lives here.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use dustfs_core::fs::{Engine, FsError, Inode, Kind, SetAttr, Ts};
use fuser::{
    FileAttr, FileType, Filesystem, KernelConfig, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, TimeOrNow,
};
use tracing::warn;

/// How long the kernel may cache attributes and entries. Short, so that link counts and
/// ctimes changed through another name are seen promptly.
const TTL: Duration = Duration::from_secs(1);
/// Largest read/write request (the kernel's cap with max_pages = 256).
pub const MAX_REQUEST: u32 = 1 << 20;
/// Block size reported to stat.
const BLKSIZE: u32 = 1 << 20;

/// The errno for each engine error: one exhaustive match.
pub fn errno(e: &FsError) -> i32 {
    match e {
        FsError::NotFound => libc::ENOENT,
        FsError::Exists => libc::EEXIST,
        FsError::NotDir => libc::ENOTDIR,
        FsError::IsDir => libc::EISDIR,
        FsError::NotEmpty => libc::ENOTEMPTY,
        FsError::Invalid => libc::EINVAL,
        FsError::NameTooLong => libc::ENAMETOOLONG,
        FsError::NoAttr => libc::ENODATA,
        // A full local disk (dirty data and open blocks are local files): the writer is told
        // so, and nothing it wrote before is lost.
        FsError::Io(e) if matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)) => {
            libc::ENOSPC
        }
        FsError::Unavailable(_)
        | FsError::Corrupt(_)
        | FsError::Db(_)
        | FsError::Erasure(_)
        | FsError::Seal(_)
        | FsError::Io(_) => libc::EIO,
        _ => libc::EIO,
    }
}

fn file_type(k: Kind) -> FileType {
    match k {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
        Kind::CharDev => FileType::CharDevice,
        Kind::BlockDev => FileType::BlockDevice,
    }
}

fn attr(i: &Inode) -> FileAttr {
    FileAttr {
        ino: i.ino,
        size: i.size,
        blocks: i.size.div_ceil(512),
        atime: i.atime.into(),
        mtime: i.mtime.into(),
        ctime: i.ctime.into(),
        crtime: i.crtime.into(),
        kind: file_type(i.kind),
        perm: i.perm,
        nlink: i.nlink,
        uid: i.uid,
        gid: i.gid,
        rdev: i.rdev,
        blksize: BLKSIZE,
        flags: 0,
    }
}

/// The attributes of a negative entry: only the node id (0) means anything to the kernel.
fn negative_entry() -> FileAttr {
    FileAttr {
        ino: 0,
        size: 0,
        blocks: 0,
        atime: SystemTime::UNIX_EPOCH,
        mtime: SystemTime::UNIX_EPOCH,
        ctime: SystemTime::UNIX_EPOCH,
        crtime: SystemTime::UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: BLKSIZE,
        flags: 0,
    }
}

fn ts(t: TimeOrNow) -> Ts {
    match t {
        TimeOrNow::SpecificTime(s) => Ts::from(s),
        TimeOrNow::Now => Ts::from(SystemTime::now()),
    }
}

/// Most inodes tracked in [`KernelCache`]; files opened beyond it are not kept cached.
const MAX_KEPT: usize = 1 << 20;

/// File data the kernel keeps in its page cache from one open to the next
/// (`FOPEN_KEEP_CACHE`), so a file read or written a moment ago is read again at page-cache
/// speed instead of through this process (`scripts/bench.sh` warm read). Every write,
/// truncate and hole punch goes through the kernel, which updates or drops its pages, so
/// they stay true; only `dustfs cache drop` must drop them as well, so that the next read
/// really comes from suppliers (the tests rely on that): it invalidates every inode here.
///
/// Tracked: the inodes the kernel may hold pages of, from their creation or first open until
/// the kernel forgets them (and its pages with them). An inode opened while untracked is
/// opened without the flag once (the kernel drops whatever pages it had, which a cache drop
/// may have missed) and kept from its next open on.
#[derive(Default)]
pub struct KernelCache {
    notifier: std::sync::OnceLock<fuser::Notifier>,
    inodes: std::sync::Mutex<std::collections::HashSet<u64>>,
}

impl KernelCache {
    /// The session's notifier: until it is set, nothing is kept.
    pub fn set_notifier(&self, n: fuser::Notifier) {
        let _ = self.notifier.set(n);
    }

    fn has_notifier(&self) -> bool {
        self.notifier.get().is_some()
    }

    /// Tracks `ino` from now on (while there is room); whether it was tracked already.
    fn track(&self, ino: u64) -> bool {
        let mut set = self.inodes.lock().unwrap_or_else(|e| e.into_inner());
        if set.contains(&ino) {
            return true;
        }
        if set.len() < MAX_KEPT {
            set.insert(ino);
        }
        false
    }

    /// Whether an open of `ino` may keep the kernel's pages; tracks it from now on.
    fn keep(&self, ino: u64) -> bool {
        self.has_notifier() && self.track(ino)
    }

    /// A new file: no pages yet, tracked from the start.
    fn created(&self, ino: u64) {
        if self.has_notifier() {
            self.track(ino);
        }
    }

    fn forget(&self, ino: u64) {
        self.inodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&ino);
    }

    /// Drops the kernel's cached pages of every tracked file; returns how many files.
    pub fn drop_all(&self) -> usize {
        let inodes: Vec<u64> = self
            .inodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .copied()
            .collect();
        let Some(n) = self.notifier.get() else {
            return 0;
        };
        for &ino in &inodes {
            // ENOENT: the kernel forgot the inode already (its FORGET is on the way).
            if let Err(e) = n.inval_inode(ino, 0, 0)
                && e.raw_os_error() != Some(libc::ENOENT)
            {
                warn!(ino, error = %e, "cannot drop the kernel's cached pages");
            }
        }
        inodes.len()
    }
}

/// How a file handle was opened, kept as its `fh` (the kernel hands it back at release).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
enum OpenMode {
    /// Through the kernel's page cache (reads cached, `FOPEN_KEEP_CACHE` when tracked).
    Cached = 0,
    /// Write-only, past the page cache (`FOPEN_DIRECT_IO`).
    DirectWrite = 1,
    /// Any other open while a [`OpenMode::DirectWrite`] handle is open: past the page cache
    /// too, so that no page the direct writes would leave stale gets cached.
    Uncached = 2,
}

impl OpenMode {
    fn from_fh(fh: u64) -> Self {
        match fh {
            1 => Self::DirectWrite,
            2 => Self::Uncached,
            _ => Self::Cached,
        }
    }
}

/// Which open handles each inode has, to choose how the next one is opened.
///
/// Write-only opens (`cp`, `rsync`, `tar -x` and the like open what they write that way)
/// bypass the kernel's page cache: the kernel hands the writer's own pages to this process
/// instead of copying them into new page-cache pages first. In a profile of a 512 MiB copy
/// (`scripts/profile.sh write`) `cp`'s `copy_folio_from_iter_atomic` into the FUSE file's
/// pages took 165-780 of about 3,000 CPU samples (the most when the pages were new to this
/// VM, see docs/DESIGN.md); with `FOPEN_DIRECT_IO` 43-55. The pages of a backup being
/// written were also the least likely to be read again, yet pushed other files out of memory.
///
/// A direct write does not touch cached pages on kernels before 6.6 (later ones drop the
/// range written), so the page cache must not hold a file's pages while a direct writer has
/// it open: a write-only open is direct only while no cached handle is open (its open without
/// `FOPEN_KEEP_CACHE` drops whatever pages the kernel held), other opens made meanwhile are
/// uncached, and the file leaves [`KernelCache`] so its next cached open drops its pages
/// again. (A private `mmap` of an uncached handle still reads through the page cache; on
/// kernels before 6.6 it may miss a later direct write to the same range.)
#[derive(Default)]
struct OpenModes {
    /// Inode -> (cached handles, direct-write handles); absent when both are zero.
    open: std::collections::HashMap<u64, (u32, u32)>,
}

impl OpenModes {
    /// The mode of a new handle of `ino` opened with `flags` (the `open(2)` flags), counted.
    fn open(&mut self, ino: u64, flags: i32) -> OpenMode {
        let (cached, direct) = self.open.entry(ino).or_default();
        if flags & libc::O_ACCMODE == libc::O_WRONLY && *cached == 0 {
            *direct += 1;
            OpenMode::DirectWrite
        } else if *direct > 0 {
            OpenMode::Uncached
        } else {
            *cached += 1;
            OpenMode::Cached
        }
    }

    /// A handle of `ino` opened as `mode` is released.
    fn release(&mut self, ino: u64, mode: OpenMode) {
        if let Some((cached, direct)) = self.open.get_mut(&ino) {
            match mode {
                OpenMode::Cached => *cached = cached.saturating_sub(1),
                OpenMode::DirectWrite => *direct = direct.saturating_sub(1),
                OpenMode::Uncached => {}
            }
            if (*cached, *direct) == (0, 0) {
                self.open.remove(&ino);
            }
        }
    }
}

/// The mounted filesystem.
pub struct DustFs {
    engine: Arc<Engine>,
    /// `uid=` / `gid=` mount options: every file shown as owned by them.
    uid: Option<u32>,
    gid: Option<u32>,
    kernel_cache: Arc<KernelCache>,
    open_modes: OpenModes,
}

impl DustFs {
    /// Wraps an engine.
    pub fn new(
        engine: Arc<Engine>,
        uid: Option<u32>,
        gid: Option<u32>,
        kernel_cache: Arc<KernelCache>,
    ) -> Self {
        Self {
            engine,
            uid,
            gid,
            kernel_cache,
            open_modes: OpenModes::default(),
        }
    }

    fn attr(&self, i: &Inode) -> FileAttr {
        let mut a = attr(i);
        a.uid = self.uid.unwrap_or(a.uid);
        a.gid = self.gid.unwrap_or(a.gid);
        a
    }

    fn entry(&self, r: Result<Inode, FsError>, reply: ReplyEntry) {
        match r {
            Ok(i) => reply.entry(&TTL, &self.attr(&i), 0),
            Err(e) => reply.error(errno(&e)),
        }
    }

    /// Counts a new handle of `ino` (just `created`, or opened) and returns its `fh` and the
    /// `FOPEN_*` flags it is opened with (see [`OpenModes`]).
    fn open_handle(&mut self, ino: u64, flags: i32, created: bool) -> (u64, u32) {
        let mode = self.open_modes.open(ino, flags);
        let open_flags = match mode {
            OpenMode::DirectWrite => {
                self.kernel_cache.forget(ino);
                fuser::consts::FOPEN_DIRECT_IO
            }
            OpenMode::Uncached => fuser::consts::FOPEN_DIRECT_IO,
            OpenMode::Cached if created => {
                self.kernel_cache.created(ino);
                0
            }
            OpenMode::Cached if self.kernel_cache.keep(ino) => fuser::consts::FOPEN_KEEP_CACHE,
            OpenMode::Cached => 0,
        };
        (mode as u64, open_flags)
    }

    fn empty(&self, op: &str, r: Result<(), FsError>, reply: ReplyEmpty) {
        match r {
            Ok(()) => reply.ok(),
            Err(e) => {
                if !matches!(
                    e,
                    FsError::NotFound | FsError::Exists | FsError::NoAttr | FsError::NotEmpty
                ) {
                    warn!(op, error = %e, "operation failed");
                }
                reply.error(errno(&e))
            }
        }
    }
}

impl Filesystem for DustFs {
    fn init(&mut self, _req: &Request<'_>, config: &mut KernelConfig) -> Result<(), libc::c_int> {
        if let Err(max) = config.set_max_write(MAX_REQUEST) {
            let _ = config.set_max_write(max);
        }
        if let Err(max) = config.set_max_readahead(MAX_REQUEST) {
            let _ = config.set_max_readahead(max);
        }
        Ok(())
    }

    fn destroy(&mut self) {
        // Unmount: commit dirty data and seal the open block so the daemon can upload it.
        if let Err(e) = self.engine.seal_all() {
            warn!(error = %e, "flushing at unmount failed; the data stays queued locally");
        }
    }

    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        match self.engine.lookup(parent, name) {
            // A name that is not there is remembered by the kernel for `TTL`, as names that
            // are there are (node id 0: a negative entry with a lifetime). `rsync` looks up
            // each file's name before it creates it and again before it renames its temporary
            // file onto it; `cp` and `tar` look before they create. Every change to the
            // namespace comes through the kernel, which replaces the negative entry itself.
            Err(FsError::NotFound) => reply.entry(&TTL, &negative_entry(), 0),
            r => self.entry(r, reply),
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        match self.engine.get_inode(ino) {
            Ok(i) => reply.attr(&TTL, &self.attr(&i)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn setattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        let a = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(ts),
            mtime: mtime.map(ts),
        };
        match self.engine.setattr(ino, a) {
            Ok(i) => reply.attr(&TTL, &self.attr(&i)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readlink(&mut self, _req: &Request<'_>, ino: u64, reply: ReplyData) {
        match self.engine.readlink(ino) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn mknod(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let kind = match mode & libc::S_IFMT {
            libc::S_IFREG | 0 => Kind::File,
            libc::S_IFIFO => Kind::Fifo,
            libc::S_IFSOCK => Kind::Socket,
            libc::S_IFCHR => Kind::CharDev,
            libc::S_IFBLK => Kind::BlockDev,
            _ => return reply.error(libc::EINVAL),
        };
        let r = self.engine.create(
            parent,
            name,
            kind,
            mode & !umask,
            req.uid(),
            req.gid(),
            rdev,
            None,
        );
        self.entry(r, reply);
    }

    fn mkdir(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let r = self.engine.create(
            parent,
            name,
            Kind::Dir,
            mode & !umask,
            req.uid(),
            req.gid(),
            0,
            None,
        );
        self.entry(r, reply);
    }

    fn unlink(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        self.empty("unlink", self.engine.unlink(parent, name), reply);
    }

    fn rmdir(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        self.empty("rmdir", self.engine.rmdir(parent, name), reply);
    }

    fn symlink(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let r = self.engine.create(
            parent,
            link_name,
            Kind::Symlink,
            0o777,
            req.uid(),
            req.gid(),
            0,
            Some(target),
        );
        self.entry(r, reply);
    }

    fn rename(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
        reply: ReplyEmpty,
    ) {
        let noreplace = flags & libc::RENAME_NOREPLACE != 0;
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        if flags & !(libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE) != 0 {
            return reply.error(libc::EINVAL);
        }
        self.empty(
            "rename",
            self.engine
                .rename(parent, name, newparent, newname, noreplace, exchange),
            reply,
        );
    }

    fn link(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        newparent: u64,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        self.entry(self.engine.link(ino, newparent, newname), reply);
    }

    fn forget(&mut self, _req: &Request<'_>, ino: u64, _nlookup: u64) {
        self.kernel_cache.forget(ino);
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        if let Err(e) = self.engine.opened(ino) {
            return reply.error(errno(&e));
        }
        let (fh, open_flags) = self.open_handle(ino, flags, false);
        reply.opened(fh, open_flags)
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        if offset < 0 {
            return reply.error(libc::EINVAL);
        }
        match self.engine.read_shared(ino, offset as u64, size) {
            Ok(d) => {
                reply.data(&d);
                self.engine.read_ahead(ino, offset as u64, d.len() as u64);
            }
            Err(e) => {
                warn!(ino, offset, error = %e, "read failed");
                reply.error(errno(&e))
            }
        }
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        data: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        if offset < 0 {
            return reply.error(libc::EINVAL);
        }
        match self.engine.write(ino, offset as u64, data) {
            Ok(n) => reply.written(n),
            Err(e) => {
                warn!(ino, offset, error = %e, "write failed");
                reply.error(errno(&e))
            }
        }
    }

    fn flush(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        _lock_owner: u64,
        reply: ReplyEmpty,
    ) {
        self.empty("flush", self.engine.flush(ino), reply);
    }

    fn release(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        _flags: i32,
        _lock_owner: Option<u64>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.open_modes.release(ino, OpenMode::from_fh(fh));
        self.empty("release", self.engine.released(ino), reply);
    }

    fn fsync(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.empty("fsync", self.engine.fsync(ino), reply);
    }

    fn opendir(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        match self.engine.get_inode(ino) {
            Ok(i) if i.kind == Kind::Dir => reply.opened(0, 0),
            Ok(_) => reply.error(libc::ENOTDIR),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        let start = offset.max(0) as usize;
        match self.engine.readdir(ino, start, 512) {
            Ok(entries) => {
                for (n, e) in entries.iter().enumerate() {
                    if reply.add(
                        e.ino,
                        (start + n + 1) as i64,
                        file_type(e.kind),
                        OsStr::from_bytes(&e.name),
                    ) {
                        break;
                    }
                }
                reply.ok()
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdirplus(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let start = offset.max(0) as usize;
        match self.engine.readdir(ino, start, 256) {
            Ok(entries) => {
                for (n, e) in entries.iter().enumerate() {
                    let Ok(i) = self.engine.get_inode(e.ino) else {
                        continue;
                    };
                    if reply.add(
                        e.ino,
                        (start + n + 1) as i64,
                        OsStr::from_bytes(&e.name),
                        &TTL,
                        &self.attr(&i),
                        0,
                    ) {
                        break;
                    }
                }
                reply.ok()
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn releasedir(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        _fh: u64,
        _flags: i32,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsyncdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.empty(
            "fsyncdir",
            self.engine.fsync(ino).or_else(|e| match e {
                FsError::IsDir => Ok(()),
                e => Err(e),
            }),
            reply,
        );
    }

    fn statfs(&mut self, _req: &Request<'_>, _ino: u64, reply: ReplyStatfs) {
        match self.engine.stats() {
            Ok(s) => {
                let bsize = BLKSIZE as u64;
                let blocks = s.total_bytes / bsize;
                let free = s.total_bytes.saturating_sub(s.used_bytes) / bsize;
                reply.statfs(
                    blocks,
                    free,
                    free,
                    u32::MAX as u64,
                    u32::MAX as u64 - s.inodes,
                    BLKSIZE,
                    255,
                    BLKSIZE,
                );
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn setxattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let create = flags & libc::XATTR_CREATE != 0;
        let replace = flags & libc::XATTR_REPLACE != 0;
        self.empty(
            "setxattr",
            self.engine.setxattr(ino, name, value, create, replace),
            reply,
        );
    }

    fn getxattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        name: &OsStr,
        size: u32,
        reply: ReplyXattr,
    ) {
        match self.engine.getxattr(ino, name) {
            Ok(v) => xattr_reply(&v, size, reply),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn listxattr(&mut self, _req: &Request<'_>, ino: u64, size: u32, reply: ReplyXattr) {
        match self.engine.listxattr(ino) {
            Ok(names) => {
                let mut buf = Vec::new();
                for n in names {
                    buf.extend_from_slice(&n);
                    buf.push(0);
                }
                xattr_reply(&buf, size, reply)
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn removexattr(&mut self, _req: &Request<'_>, ino: u64, name: &OsStr, reply: ReplyEmpty) {
        self.empty("removexattr", self.engine.removexattr(ino, name), reply);
    }

    fn fallocate(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        length: i64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        if offset < 0 || length <= 0 {
            return reply.error(libc::EINVAL);
        }
        let keep_size = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let punch = mode & libc::FALLOC_FL_PUNCH_HOLE != 0;
        if mode & !(libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE) != 0
            || (punch && !keep_size)
        {
            return reply.error(libc::EOPNOTSUPP);
        }
        let r = self
            .engine
            .fallocate(ino, offset as u64, length as u64, !keep_size, punch);
        self.empty("fallocate", r, reply);
    }

    fn access(&mut self, _req: &Request<'_>, ino: u64, _mask: i32, reply: ReplyEmpty) {
        // Permission checks are the kernel's (default_permissions); only existence here.
        self.empty("access", self.engine.get_inode(ino).map(|_| ()), reply);
    }

    fn create(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let r = self
            .engine
            .create(
                parent,
                name,
                Kind::File,
                mode & !umask,
                req.uid(),
                req.gid(),
                0,
                None,
            )
            .and_then(|i| self.engine.opened(i.ino));
        match r {
            Ok(i) => {
                let (fh, open_flags) = self.open_handle(i.ino, flags, true);
                reply.created(&TTL, &self.attr(&i), 0, fh, open_flags)
            }
            Err(e) => reply.error(errno(&e)),
        }
    }
}

fn xattr_reply(v: &[u8], size: u32, reply: ReplyXattr) {
    if size == 0 {
        reply.size(v.len() as u32);
    } else if v.len() > size as usize {
        reply.error(libc::ERANGE);
    } else {
        reply.data(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_has_an_errno() {
        assert_eq!(errno(&FsError::NotFound), libc::ENOENT);
        assert_eq!(errno(&FsError::NotEmpty), libc::ENOTEMPTY);
        assert_eq!(errno(&FsError::Unavailable("x".into())), libc::EIO);
        let full = std::io::Error::from_raw_os_error(libc::ENOSPC);
        assert_eq!(errno(&FsError::Io(full)), libc::ENOSPC);
        let other = std::io::Error::from_raw_os_error(libc::EROFS);
        assert_eq!(errno(&FsError::Io(other)), libc::EIO);
    }

    #[test]
    fn write_only_handles_bypass_the_page_cache_unless_a_cached_one_is_open() {
        let mut m = OpenModes::default();
        let (rd, wr, rw) = (libc::O_RDONLY, libc::O_WRONLY, libc::O_RDWR);
        // Alone, a write-only handle is direct; readers meanwhile are uncached.
        assert_eq!(m.open(1, wr | libc::O_TRUNC), OpenMode::DirectWrite);
        assert_eq!(m.open(1, rd), OpenMode::Uncached);
        assert_eq!(m.open(1, rw), OpenMode::Uncached);
        assert_eq!(m.open(1, wr), OpenMode::DirectWrite);
        m.release(1, OpenMode::Uncached);
        m.release(1, OpenMode::DirectWrite);
        assert_eq!(
            m.open(1, rd),
            OpenMode::Uncached,
            "one direct writer is still open"
        );
        m.release(1, OpenMode::DirectWrite);
        // All direct writers gone: cached again, and then write-only opens go cached too.
        assert_eq!(m.open(1, rd), OpenMode::Cached);
        assert_eq!(m.open(1, wr), OpenMode::Cached);
        // Other inodes are not affected.
        assert_eq!(m.open(2, wr), OpenMode::DirectWrite);
        m.release(1, OpenMode::Cached);
        m.release(1, OpenMode::Cached);
        assert_eq!(m.open(1, wr), OpenMode::DirectWrite);
        m.release(1, OpenMode::DirectWrite);
        m.release(2, OpenMode::DirectWrite);
        assert!(m.open.is_empty(), "released inodes are forgotten");
        // The handle's mode survives the round trip through the kernel's fh.
        for mode in [OpenMode::Cached, OpenMode::DirectWrite, OpenMode::Uncached] {
            assert_eq!(OpenMode::from_fh(mode as u64), mode);
        }
    }
}
