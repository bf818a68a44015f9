//! Bounded pools of reusable byte buffers.
//!
//! Shards are megabytes each and every one of them passes through a few buffers on its way
//! (read from a block file for upload, a store request's frame, an aligned copy for an
//! `O_DIRECT` write, a supplier's answer). A new `Vec` for each was zeroed by `memset` or
//! faulted in page by page and unmapped again, which the profiles of `scripts/profile.sh`
//! showed at 1.5-1.7% of all CPU samples per place. A [`BufPool`] keeps a few buffers given
//! back and hands them out again; it never holds more than its bounds, so a burst of large
//! frames costs memory only while it lasts.
//!
//! The pools are process-wide statics where they are used: several engines in one process
//! (the tests) share them harmlessly, since a buffer carries no meaning between uses.

use std::sync::Mutex;

/// The shards fetched from suppliers: an answer's shard is read into one of these
/// (`dustfs-net`'s `read_response_frame`), and a block's shards come back here when the block
/// is let go ([`BlockBytes`](crate::erasure::BlockBytes)). New buffers were zeroed before the
/// shard was read over them, 1.0% of a cold read's CPU samples.
pub static FETCHED: BufPool = BufPool::for_shards();

/// The smallest buffer [`BufPool::for_shards`] hands out or keeps; smaller requests get new
/// buffers.
pub const SHARD_BUF_MIN: usize = 64 << 10;

/// A bounded set of reusable buffers.
pub struct BufPool {
    bufs: Mutex<Vec<Vec<u8>>>,
    /// Buffers kept at most.
    max_bufs: usize,
    /// Requests for fewer bytes than this get a new buffer, and shorter buffers are not kept
    /// (small ones cost little to allocate and would crowd out the large).
    min_len: usize,
    /// Buffers with more capacity than this are not kept.
    max_bytes: usize,
}

impl BufPool {
    /// A pool keeping at most `max_bufs` buffers of `min_len..=max_bytes` bytes.
    pub const fn new(max_bufs: usize, min_len: usize, max_bytes: usize) -> Self {
        Self {
            bufs: Mutex::new(Vec::new()),
            max_bufs,
            min_len,
            max_bytes,
        }
    }

    /// A kept buffer with room for `len` bytes, if there is one: one with less room would be
    /// grown by `realloc`, which copies all its old bytes.
    fn pop(&self, len: usize) -> Option<Vec<u8>> {
        if len < self.min_len {
            return None;
        }
        let mut bufs = self.bufs.lock().unwrap_or_else(|e| e.into_inner());
        let i = bufs.iter().rposition(|b| b.capacity() >= len)?;
        Some(bufs.swap_remove(i))
    }

    /// A buffer of exactly `len` bytes, to be read or written over. Its bytes are zero where
    /// it is new; a reused buffer keeps its old bytes (only what it lacks is zeroed), so the
    /// caller must overwrite all of them before any is used.
    pub fn take(&self, len: usize) -> Vec<u8> {
        match self.pop(len) {
            Some(mut b) => {
                b.resize(len, 0);
                b
            }
            None => vec![0u8; len],
        }
    }

    /// A buffer of `pad + len` bytes, with `pad` below `align`, whose byte `pad + at` lies on
    /// an `align`-byte boundary (`align` a power of two): for a frame of `len` bytes whose
    /// byte `at` must be aligned for `O_DIRECT`. Its bytes are as [`take`](Self::take)'s.
    pub fn take_aligned(&self, len: usize, at: usize, align: usize) -> (Vec<u8>, usize) {
        debug_assert!(align.is_power_of_two());
        let mut b = self.take(len + align);
        let addr = b.as_ptr() as usize + at;
        let pad = addr.next_multiple_of(align) - addr;
        b.truncate(pad + len);
        (b, pad)
    }

    /// An empty buffer with room for at least `capacity` bytes.
    pub fn take_empty(&self, capacity: usize) -> Vec<u8> {
        let mut b = self.pop(capacity).unwrap_or_default();
        b.clear();
        b.reserve(capacity);
        b
    }

    /// Keeps `buf` for a later [`take`](Self::take), within the pool's bounds. A full pool
    /// keeps the larger of `buf` and its smallest buffer, so buffers of mixed sizes (a
    /// block's last shards are shorter) do not leave it holding only small ones.
    pub fn put(&self, buf: Vec<u8>) {
        if buf.capacity() < self.min_len || buf.capacity() > self.max_bytes {
            return;
        }
        let mut bufs = self.bufs.lock().unwrap_or_else(|e| e.into_inner());
        if bufs.len() < self.max_bufs {
            bufs.push(buf);
        } else if let Some(small) = bufs
            .iter_mut()
            .min_by_key(|b| b.capacity())
            .filter(|b| b.capacity() < buf.capacity())
        {
            // The smaller one is freed after the lock is let go.
            let _freed = std::mem::replace(small, buf);
            drop(bufs);
        }
    }

    /// The pool for shard-sized buffers (frames, answers, aligned copies): at most 4 of 64 KiB
    /// to 4 MiB (a 2 MiB shard with its frame's head and alignment padding fits), 16 MiB.
    pub const fn for_shards() -> Self {
        Self::new(4, SHARD_BUF_MIN, 4 << 20)
    }

    /// Lets every kept buffer go back to the allocator.
    pub fn clear(&self) {
        self.bufs.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Buffers kept now.
    pub fn len(&self) -> usize {
        self.bufs.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether no buffer is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_within_the_bounds_and_hold_what_was_asked() {
        let pool = BufPool::new(2, 1024, 8192);
        // Too small, too large: not kept.
        pool.put(Vec::with_capacity(100));
        pool.put(Vec::with_capacity(10_000));
        assert!(pool.is_empty());
        let room = |cap: usize, len: usize| {
            let mut v = Vec::with_capacity(cap);
            v.resize(len, 0xAA);
            v
        };
        for _ in 0..3 {
            pool.put(room(8000, 4096));
        }
        assert_eq!(pool.len(), 2, "at most max_bufs kept");

        // A reused buffer is exactly as long as asked; what it lacked is zero.
        let b = pool.take(6000);
        assert_eq!(b.len(), 6000);
        assert!(b[..4096].iter().all(|&x| x == 0xAA));
        assert!(b[4096..].iter().all(|&x| x == 0));
        assert_eq!(pool.len(), 1);

        // take_empty is empty with the room asked, reused or not.
        let e = pool.take_empty(5000);
        assert!(e.is_empty() && e.capacity() >= 5000);
        assert!(pool.is_empty());
        let e = pool.take_empty(5000);
        assert!(e.is_empty() && e.capacity() >= 5000);

        // Small requests never take a kept buffer.
        pool.put(vec![1; 2048]);
        let small = pool.take(10);
        assert_eq!(small, vec![0; 10]);
        assert_eq!(pool.len(), 1);

        // A buffer with less room than asked stays kept (growing it would copy it), and a
        // new zeroed one comes instead.
        let fresh = pool.take(3000);
        assert!(fresh.iter().all(|&x| x == 0) && fresh.len() == 3000);
        assert_eq!(pool.len(), 1);
        // A full pool keeps the larger buffers: the 2048 one goes for a 6000 one; a smaller
        // one is not kept.
        pool.put(room(4096, 10));
        pool.put(room(6000, 10));
        let mut caps: Vec<usize> = (0..2).map(|_| pool.take(1024).capacity()).collect();
        caps.sort_unstable();
        assert!(caps[0] >= 4096 && caps[1] >= 6000, "{caps:?}");
        pool.put(room(4096, 10));
        pool.put(room(4096, 10));
        pool.put(room(2048, 10));
        assert!(pool.take(1024).capacity() >= 4096 && pool.take(1024).capacity() >= 4096);
        pool.clear();
        assert!(pool.is_empty());
    }

    #[test]
    fn aligned_buffers_put_the_asked_byte_on_the_boundary() {
        let pool = BufPool::new(2, 1024, 1 << 20);
        for round in 0..2 {
            for (len, at, align) in [(5000, 0, 4096), (100_000, 37, 4096), (3000, 2999, 512)] {
                let (b, pad) = pool.take_aligned(len, at, align);
                assert!(pad < align, "{len} {at} {align}");
                assert_eq!(b.len(), pad + len);
                assert_eq!((b.as_ptr() as usize + pad + at) % align, 0, "round {round}");
                pool.put(b);
            }
        }
    }
}
