//! Zero-copy downloads over plain HTTP/1.1: hyper frames the response, the
//! kernel moves the backup's cached pages to the socket (`sendfile`).
//!
//! # Why
//!
//! Profiling a 64 KiB download put 15 % of the server's CPU in two copies:
//! page cache to our buffer (`pread`) and buffer to socket (`writev`).
//! `sendfile` does neither: the socket takes references to the page-cache
//! pages. It is the one thing nginx does per request that we did not.
//!
//! # How, without giving up hyper's framing
//!
//! hyper owns the response: status line, headers, `Content-Length`, keep-alive
//! and pipelining. So it still gets a frame of the right length for every
//! chunk, but the frame is a *marker*: a slice of [`MARKERS`], memory that is
//! never read or written, whose address says "these bytes are chunk N of a
//! file". [`Outbox`] (one per connection) holds, in order, what each marker
//! stands for: the open file, the offset and the length. The connection's
//! socket wrapper hands every vectored write to [`Outbox::write`], which sends
//! the ordinary slices before a marker as they are and the marker itself
//! with `sendfile`. hyper's accounting is untouched: it sees `n` bytes
//! written, exactly as from `writev`, and advances its own buffers.
//!
//! # Why a marker can never turn into wrong bytes on the wire
//!
//! The danger is that a marker's own (zero) bytes, or another response's
//! file, reach a client. Each of these makes that impossible rather than
//! unlikely:
//!
//! * **Only plain HTTP/1.1 gets markers.** The outbox exists only for
//!   connections without TLS (TLS would encrypt the marker's zeros), and the
//!   download handler uses it only for HTTP/1.x requests (HTTP/2 copies
//!   frames into its own buffers). Everything else takes the copying path.
//! * **hyper must pass a marker through, not copy it.** It does so with its
//!   queueing write strategy (forced on with `writev(true)`). If it ever
//!   copied one (its flattening strategy) or dropped one unsent (a response
//!   abandoned mid-body), the marker's `Drop` finds its entry still queued
//!   and *poisons* the outbox: from then on every write on that connection
//!   fails, so the copied zeros are never sent and the connection closes.
//!   hyper copies and drops a frame when it buffers it, before it writes, so
//!   poisoning always comes first.
//! * **The wire order is the queue order, and it is checked.** A marker
//!   slice must be the head entry's, at exactly the head's progress
//!   (address) and with exactly its remaining length; consecutive markers use
//!   different [`MARKER_SLOTS`], so a mix-up cannot look right. Anything else
//!   poisons the outbox.
//! * **A short file aborts.** If the backup shrank after it was opened,
//!   `sendfile` reaches its end early and the write fails: hyper aborts the
//!   connection, and the client sees a failed transfer, never a clean short
//!   body (as on the copying path). One difference from copying: what is
//!   already queued in the socket buffers still refers to the page cache,
//!   so the part of it past the file's new end may arrive, before the
//!   abort, as the kernel's zero fill instead of the old bytes. Never as
//!   anything else: the queued data holds references to its pages, so they
//!   cannot be reused for another file until it is sent.
//! * **No blocking on the disk.** `sendfile` would wait for a page that is
//!   not cached, stalling an async worker. So a chunk is sent this way only
//!   if `cachestat` says every page of it is cached; anything else is read
//!   on the copying path ([`crate::http::body::FileBody`]), whose blocking reads
//!   also read ahead. Where `cachestat` is missing (kernels before 6.5, or a
//!   seccomp filter that does not know it, such as systemd 252's), every
//!   download takes the copying path.

#![allow(unsafe_code)]

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use rustix::io::Errno;
use rustix::net::SendFlags;

use crate::config::READ_CHUNK_BYTES;
use crate::metrics::Metrics;

/// Markers in distinct places that consecutive frames rotate through, so a
/// frame written out of turn never sits where the expected one would.
const MARKER_SLOTS: usize = 4;

/// The address space markers point into. Nothing reads or writes it, so it
/// costs no memory. Placed in `.bss` (zero-filled at load, no bytes in the
/// file) rather than where an immutable static would go, `.rodata`, where
/// its 768 KiB of zeros would be stored in the binary.
// SAFETY: `.bss.*` sections hold zero-initialised data, which is exactly
// this static's initial value; the linker merges it into `.bss`.
#[unsafe(link_section = ".bss.backupd_zerocopy_markers")]
static MARKERS: [u8; MARKER_SLOTS * READ_CHUNK_BYTES] = [0; MARKER_SLOTS * READ_CHUNK_BYTES];

/// A connection's queue of chunks that hyper holds as markers.
pub struct Outbox {
    state: Mutex<State>,
    metrics: Arc<Metrics>,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Pending>,
    /// Sequence number of the next marker (its slot is this modulo
    /// [`MARKER_SLOTS`]).
    next: u64,
    /// A marker was copied, dropped unsent or written out of turn: this
    /// connection writes nothing more.
    poisoned: bool,
}

/// What one marker stands for.
struct Pending {
    seq: u64,
    file: Arc<File>,
    /// File offset of the chunk's first byte.
    offset: u64,
    len: usize,
    /// Bytes of it already sent.
    sent: usize,
}

impl Outbox {
    /// A fresh outbox for one plain HTTP/1 connection; bytes it sends are
    /// counted in `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Outbox {
            state: Mutex::default(),
            metrics,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A frame of `len` bytes standing for `file` from `offset`, sent by
    /// `sendfile` when hyper writes it. `len` is at most [`READ_CHUNK_BYTES`]
    /// and should be cached ([`cached`]).
    pub fn frame(self: &Arc<Self>, file: Arc<File>, offset: u64, len: usize) -> Bytes {
        assert!(len > 0 && len <= READ_CHUNK_BYTES, "marker length");
        let seq = {
            let mut state = self.lock();
            let seq = state.next;
            state.next += 1;
            state.queue.push_back(Pending {
                seq,
                file,
                offset,
                len,
                sent: 0,
            });
            seq
        };
        Bytes::from_owner(Marker {
            outbox: self.clone(),
            seq,
            len,
        })
    }

    /// Fails once the outbox is poisoned: called before every write that
    /// carries no marker, so zeros copied out of a marker never leave.
    pub fn check(&self) -> io::Result<()> {
        if self.lock().poisoned {
            return Err(poisoned());
        }
        Ok(())
    }

    /// Writes `bufs` up to and including the first marker, which is
    /// `bufs[at]`, to `socket` without blocking; returns the bytes written,
    /// as `writev` would. The ordinary slices go with `MSG_MORE`, so they
    /// share a packet with the file's first bytes.
    pub fn write(
        &self,
        socket: BorrowedFd<'_>,
        bufs: &[IoSlice<'_>],
        at: usize,
    ) -> io::Result<usize> {
        let mut state = self.lock();
        if state.poisoned {
            return Err(poisoned());
        }
        let marker = &bufs[at];
        let in_turn = state.queue.front().is_some_and(|head| {
            let expected = &slot(head.seq)[head.sent..head.len];
            marker.as_ptr() == expected.as_ptr() && marker.len() == expected.len()
        });
        if !in_turn {
            state.poisoned = true;
            return Err(poisoned());
        }
        let before: usize = bufs[..at].iter().map(|b| b.len()).sum();
        let mut written = 0;
        if before > 0 {
            written = retry(|| {
                rustix::net::sendmsg(
                    socket,
                    &bufs[..at],
                    &mut Default::default(),
                    SendFlags::MORE | SendFlags::NOSIGNAL,
                )
            })?;
            if written < before {
                return Ok(written);
            }
        }
        let head = state.queue.front_mut().expect("checked above");
        let mut offset = head.offset + head.sent as u64;
        let count = head.len - head.sent;
        match retry(|| rustix::fs::sendfile(socket, &*head.file, Some(&mut offset), count)) {
            Ok(0) if written == 0 => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "backup shrank while it was being sent",
            )),
            Ok(n) => {
                self.metrics.sent_zero_copy(n as u64);
                head.sent += n;
                if head.sent == head.len {
                    state.queue.pop_front();
                }
                Ok(written + n)
            }
            // The slices before the marker went out: report them; the
            // error (or `EAGAIN`) comes back on the next call.
            Err(_) if written > 0 => Ok(written),
            Err(e) => Err(e),
        }
    }
}

/// Where the first marker is in `bufs`, if anywhere.
pub fn find(bufs: &[IoSlice<'_>]) -> Option<usize> {
    let base = MARKERS.as_ptr() as usize;
    bufs.iter().position(|b| {
        let at = b.as_ptr() as usize;
        !b.is_empty() && at >= base && at < base + MARKERS.len()
    })
}

fn slot(seq: u64) -> &'static [u8] {
    let start = (seq % MARKER_SLOTS as u64) as usize * READ_CHUNK_BYTES;
    &MARKERS[start..start + READ_CHUNK_BYTES]
}

fn poisoned() -> io::Error {
    io::Error::other("zero-copy frame copied, dropped or out of order; closing the connection")
}

fn retry<T>(mut call: impl FnMut() -> rustix::io::Result<T>) -> io::Result<T> {
    loop {
        match call() {
            Err(Errno::INTR) => {}
            result => return result.map_err(io::Error::from),
        }
    }
}

/// The frame hyper holds for a chunk: a slice of [`MARKERS`].
struct Marker {
    outbox: Arc<Outbox>,
    seq: u64,
    len: usize,
}

impl AsRef<[u8]> for Marker {
    fn as_ref(&self) -> &[u8] {
        &slot(self.seq)[..self.len]
    }
}

impl Drop for Marker {
    fn drop(&mut self) {
        let mut state = self.outbox.lock();
        if state.queue.iter().any(|p| p.seq == self.seq) {
            // Dropped before all of it was sent: copied or abandoned.
            state.poisoned = true;
        }
    }
}

/// False once `cachestat` failed for want of support: never ask again.
static CACHESTAT_WORKS: AtomicBool = AtomicBool::new(true);

/// Whether every page of `len` bytes of `file` from `offset` is in the page
/// cache, so that `sendfile` of them cannot wait for the disk. False where
/// the kernel cannot tell (before 6.5, or filtered by seccomp).
pub fn cached(file: &File, offset: u64, len: u64) -> bool {
    if len == 0 || !CACHESTAT_WORKS.load(Ordering::Relaxed) {
        return false;
    }
    let page = rustix::param::page_size() as u64;
    let pages = (offset + len - 1) / page - offset / page + 1;
    match cachestat(file.as_fd(), offset, len) {
        Ok(resident) => resident >= pages,
        Err(Errno::NOSYS | Errno::PERM | Errno::ACCESS) => {
            CACHESTAT_WORKS.store(false, Ordering::Relaxed);
            tracing::info!("cachestat unavailable: downloads are copied, not sent with sendfile");
            false
        }
        Err(_) => false,
    }
}

/// `struct cachestat_range` of `<linux/mman.h>`.
#[repr(C)]
struct CachestatRange {
    off: u64,
    len: u64,
}

/// `struct cachestat` of `<linux/mman.h>`.
#[repr(C)]
#[derive(Default)]
#[allow(dead_code)] // Written by the kernel; only `nr_cache` is read.
struct Cachestat {
    nr_cache: u64,
    nr_dirty: u64,
    nr_writeback: u64,
    nr_evicted: u64,
    nr_recently_evicted: u64,
}

/// `cachestat(2)`'s number here and on every architecture with the unified
/// syscall table. Neither rustix nor libc wraps it yet.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const SYS_CACHESTAT: libc::c_long = 451;

/// Pages of the range that are in the page cache.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn cachestat(fd: BorrowedFd<'_>, off: u64, len: u64) -> Result<u64, Errno> {
    let range = CachestatRange { off, len };
    let mut stat = Cachestat::default();
    // SAFETY: cachestat(fd, const struct cachestat_range *, struct cachestat
    // *, unsigned int flags) reads `range` and writes `stat`, both live
    // `#[repr(C)]` values of the kernel's layout (u64 fields only) for the
    // whole call; `fd` is borrowed, so open for it. It touches no other
    // memory of ours.
    let result = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            fd.as_raw_fd(),
            &range as *const CachestatRange,
            &mut stat as *mut Cachestat,
            0 as libc::c_uint,
        )
    };
    if result < 0 {
        return Err(Errno::from_io_error(&io::Error::last_os_error()).unwrap_or(Errno::IO));
    }
    Ok(stat.nr_cache)
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn cachestat(_fd: BorrowedFd<'_>, _off: u64, _len: u64) -> Result<u64, Errno> {
    Err(Errno::NOSYS)
}
