//! Response bodies: small JSON buffers, and backups streamed with flat memory.

use std::future::Future;
use std::io;
use std::num::NonZeroU64;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker, ready};

use bytes::{Buf, Bytes};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use rustix::fs::Advice;
use tokio::task::JoinHandle;

use crate::config::{
    READ_AHEAD_BYTES, READ_CHUNK_BYTES, REFUSED_BODY_DRAIN_BYTES, REFUSED_BODY_DRAIN_TIMEOUT,
};
use crate::http::zerocopy::{self, Outbox};

/// Called once when a streamed body is over: the bytes of it written to
/// the connection, and whether that was all of them.
pub type OnEnd = Box<dyn FnOnce(u64, bool) + Send>;

/// The bytes of one frame, counted as the connection writes them out.
///
/// hyper calls [`Buf::advance`] on a frame once it has written that many of
/// its bytes to the socket (HTTP/1.1, including zero-copy markers sent with
/// `sendfile`) or to the HTTP/2 connection's send buffer, which only ever
/// holds what the peer's flow-control window admits. Bytes handed to hyper
/// but still queued when the client goes away are never advanced, so a
/// download's count is what actually left, not what was queued.
pub struct Sent {
    bytes: Bytes,
    delivery: Option<Arc<Delivery>>,
}

impl From<Bytes> for Sent {
    fn from(bytes: Bytes) -> Self {
        Sent {
            bytes,
            delivery: None,
        }
    }
}

impl bytes::Buf for Sent {
    fn remaining(&self) -> usize {
        self.bytes.len()
    }

    fn chunk(&self) -> &[u8] {
        // The very slice of the frame: a zero-copy marker keeps its address.
        &self.bytes
    }

    fn advance(&mut self, n: usize) {
        self.bytes.advance(n);
        if let Some(delivery) = &self.delivery {
            delivery.written.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

/// What a download has written out; reports it ([`OnEnd`]) once the body
/// and every frame of it are gone, that is, when nothing more can be sent.
struct Delivery {
    written: AtomicU64,
    len: u64,
    on_end: Mutex<Option<OnEnd>>,
}

impl Drop for Delivery {
    fn drop(&mut self) {
        let on_end = self
            .on_end
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(on_end) = on_end {
            let written = *self.written.get_mut();
            on_end(written, written == self.len);
        }
    }
}

/// Every response body the server sends.
pub enum Body {
    /// A complete, small body (JSON errors); `None` once sent or when empty.
    Full(Option<Bytes>),
    /// A backup, streamed from its file.
    File(FileBody),
    /// A backup, streamed from the object store.
    Stream(StreamedBody),
    /// A complete body sent while the request's body is still arriving
    /// (an upload refused early), which it holds until the answer is
    /// sent: over HTTP/2 a request body dropped before its response makes
    /// the stream reset (`CANCEL`) and the client never reads the answer;
    /// dropped after, the reset is `NO_ERROR`, which tells the client to
    /// stop sending and read it (RFC 9113 8.1).
    Holding(Option<Bytes>, HeldRequest),
}

/// The unread body of the request a [`Body::Holding`] answers. Once the
/// answer is sent it is read on and discarded, up to
/// [`REFUSED_BODY_DRAIN_BYTES`] for at most [`REFUSED_BODY_DRAIN_TIMEOUT`],
/// and then dropped (a `NO_ERROR` reset if the client is still sending).
pub struct HeldRequest(Option<Pin<Box<dyn Future<Output = ()> + Send>>>);

impl HeldRequest {
    /// Holds `body`.
    pub fn new<B>(mut body: B) -> Self
    where
        B: http_body::Body + Unpin + Send + 'static,
    {
        HeldRequest(Some(Box::pin(async move {
            let drain = async {
                let mut read = 0u64;
                while read < REFUSED_BODY_DRAIN_BYTES {
                    match body.frame().await {
                        Some(Ok(frame)) => {
                            read += frame.data_ref().map_or(0, |d| d.remaining() as u64);
                        }
                        _ => break,
                    }
                }
            };
            let _ = tokio::time::timeout(REFUSED_BODY_DRAIN_TIMEOUT, drain).await;
        })))
    }
}

impl Drop for HeldRequest {
    fn drop(&mut self) {
        if let (Some(drain), Ok(runtime)) = (self.0.take(), tokio::runtime::Handle::try_current()) {
            runtime.spawn(drain);
        }
    }
}

impl Body {
    /// No body (HEAD, 405).
    pub fn empty() -> Self {
        Body::Full(None)
    }

    /// A complete body.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        Body::Full((!bytes.is_empty()).then_some(bytes))
    }

    /// This body, holding `request` until it is sent; bodies that stream a
    /// backup are left as they are (their requests have no body).
    pub fn holding(self, request: HeldRequest) -> Self {
        match self {
            Body::Full(bytes) | Body::Holding(bytes, _) => Body::Holding(bytes, request),
            other => other,
        }
    }
}

impl http_body::Body for Body {
    type Data = Sent;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<io::Result<Frame<Sent>>>> {
        match self.get_mut() {
            Body::Full(bytes) | Body::Holding(bytes, _) => {
                Poll::Ready(bytes.take().map(|b| Ok(Frame::data(Sent::from(b)))))
            }
            Body::File(file) => {
                let polled = Pin::new(&mut *file).poll_frame(cx);
                polled.map(|next| next.map(|frame| frame.map(|f| f.map_data(|b| file.sent(b)))))
            }
            Body::Stream(stream) => stream.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Full(bytes) | Body::Holding(bytes, _) => bytes.is_none(),
            Body::File(file) => file.is_end_stream(),
            Body::Stream(stream) => stream.received == stream.len,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(bytes) | Body::Holding(bytes, _) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            Body::File(file) => SizeHint::with_exact(file.len - file.sent),
            Body::Stream(stream) => SizeHint::with_exact(stream.len - stream.received),
        }
    }
}

/// Streams `len` bytes of a file from offset `start`, one [`READ_CHUNK_BYTES`]
/// frame at a time, through a single buffer that is reused for the whole
/// download.
///
/// # Where the time went, and the design that follows
///
/// Profiling the first version (a fresh buffer and a `spawn_blocking` per
/// 128 KiB chunk) showed most of the server's CPU in thread hand-offs: the
/// blocking-pool thread parking and waking on a futex, the async worker
/// parking and being woken for every chunk, plus zeroing a new buffer each
/// time. The copies themselves were a minority. So:
///
/// * **Page-cache reads happen inline, without ever blocking.** A chunk is
///   first read with `preadv2(RWF_NOWAIT)`, which copies from the page cache
///   or returns `EAGAIN` at once, never waiting for the disk (it can start
///   the kernel's readahead, which does not wait either). A restore of a
///   warm file therefore costs no thread hop at all. Only what is not cached
///   is read on the blocking pool, as before; so a cold disk still never
///   stalls an async worker. Filesystems without `RWF_NOWAIT` fall back to
///   the blocking pool for every chunk.
/// * **Reading ahead is ours, on the blocking pool.** The kernel's readahead
///   would run inside the inline read and submit disk I/O there (measured:
///   milliseconds per chunk on a cold file), so it is switched off for the
///   download's file (`POSIX_FADV_RANDOM`); each blocking read first asks for
///   the next [`READ_AHEAD_BYTES`] (`POSIX_FADV_WILLNEED`), which the inline
///   reads then find cached. A cold file costs a blocking hop per stretch,
///   not per chunk.
/// * **One buffer per download, reused.** A frame is a [`Bytes`] that owns
///   the buffer ([`Bytes::from_owner`]); when hyper has written and dropped
///   it, the buffer goes home and the next chunk is read into it. No
///   allocation, no zeroing, and a download's memory is exactly one chunk
///   whatever the file size. hyper over HTTP/1.1 writes a frame out
///   (`writev`, no copy) before it asks for the next (its write queue is
///   capped at [`MAX_HEADER_BYTES`](crate::config::MAX_HEADER_BYTES)), so
///   the buffer is home by then; HTTP/2 may hold a frame longer, and the
///   body then waits for it instead of allocating another.
///
/// * **Cached chunks over plain HTTP/1.1 are not read at all.** With an
///   [`Outbox`], a chunk whose pages are all cached becomes a marker frame
///   that the connection sends with `sendfile` ([`crate::http::zerocopy`] says
///   why that is safe); no buffer is needed for it. Chunks that are not
///   cached still come through the buffer, as above.
///
/// Not chosen: `mmap` (a file truncated underneath turns a read into
/// `SIGBUS`).
///
/// Reads are positional (`pread`) so the file offset is never shared state.
/// If the file yields fewer bytes than promised (truncated while streaming),
/// the body ends with an error, which makes hyper abort the connection: the
/// client sees a failed transfer, never a clean short body.
pub struct FileBody {
    file: Arc<std::fs::File>,
    /// File offset of the first byte to send (a range request's start).
    start: u64,
    /// Bytes to send.
    len: u64,
    /// Bytes handed to hyper.
    sent: u64,
    /// Where the chunk buffer is kept while no frame or read holds it.
    home: Arc<BufferHome>,
    /// A read of the chunk at `sent` on the blocking pool.
    in_flight: Option<BlockingRead>,
    /// Whether to try `RWF_NOWAIT` reads; false once the filesystem said it
    /// cannot do them.
    nowait: bool,
    /// The connection's zero-copy queue (plain HTTP/1.x only).
    outbox: Option<Arc<Outbox>>,
    /// Shared with every frame: reports once the last of them is gone.
    delivery: Arc<Delivery>,
    /// A read failed: the stream has ended short.
    failed: bool,
}

/// A chunk read on the blocking pool; it gives back the buffer, how many
/// bytes of it belong to the chunk, and how the read went.
type BlockingRead = JoinHandle<(Vec<u8>, usize, io::Result<()>)>;

impl FileBody {
    /// Streams `len` bytes of `file` starting at offset `start`; cached
    /// chunks go through `outbox` without a copy, if there is one.
    pub fn new(
        file: std::fs::File,
        start: u64,
        len: u64,
        outbox: Option<Arc<Outbox>>,
        on_end: OnEnd,
    ) -> Self {
        // Turns off the kernel's own readahead on this open file (a flag on
        // it, no I/O): left on, it runs inside the inline `RWF_NOWAIT` reads
        // and submits disk I/O from the async worker. Reading ahead is done
        // on the blocking pool instead (`WILLNEED` before each blocking read).
        let _ = rustix::fs::fadvise(&file, 0, None, Advice::Random);
        FileBody {
            file: Arc::new(file),
            start,
            len,
            sent: 0,
            // A small backup gets a buffer its size, not a whole chunk.
            home: Arc::new(BufferHome::new(len.min(READ_CHUNK_BYTES as u64) as usize)),
            in_flight: None,
            nowait: true,
            outbox,
            delivery: Arc::new(Delivery {
                written: AtomicU64::new(0),
                len,
                on_end: Mutex::new(Some(on_end)),
            }),
            failed: false,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.sent == self.len
    }

    /// A frame of this body, counted as it is written.
    fn sent(&self, frame: Bytes) -> Sent {
        Sent {
            bytes: frame,
            delivery: Some(self.delivery.clone()),
        }
    }

    fn fail(&mut self, e: io::Error) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        // Ends the stream: `sent` stays short of `len`, so `is_end_stream`
        // stays false and the delivery reports an incomplete download.
        self.failed = true;
        Poll::Ready(Some(Err(e)))
    }

    /// Hands `want` bytes of `buf` to hyper as one frame.
    fn frame(&mut self, buf: Vec<u8>, want: usize) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        self.sent += want as u64;
        let chunk = Chunk {
            buf,
            len: want,
            home: self.home.clone(),
        };
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_owner(chunk)))))
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        if let Some(in_flight) = self.in_flight.as_mut() {
            let result = ready!(Pin::new(in_flight).poll(cx));
            self.in_flight = None;
            return match result {
                Ok((buf, want, Ok(()))) => self.frame(buf, want),
                Ok((buf, _, Err(e))) => {
                    self.home.put(buf);
                    self.fail(e)
                }
                Err(join) => self.fail(io::Error::other(join)),
            };
        }
        if self.sent == self.len || self.failed {
            // Done, or failed before: stay ended.
            return Poll::Ready(None);
        }
        let want = (self.len - self.sent).min(READ_CHUNK_BYTES as u64) as usize;
        let offset = self.start + self.sent;
        if let Some(outbox) = &self.outbox
            && zerocopy::cached(&self.file, offset, want as u64)
        {
            let frame = outbox.frame(self.file.clone(), offset, want);
            self.sent += want as u64;
            return Poll::Ready(Some(Ok(Frame::data(frame))));
        }
        let Some(mut buf) = self.home.take(cx) else {
            return Poll::Pending;
        };
        let mut filled = 0;
        if self.nowait {
            match read_cached(&self.file, &mut buf[..want], offset) {
                Cached::All => return self.frame(buf, want),
                Cached::Part(n) => filled = n,
                Cached::Unsupported => self.nowait = false,
                Cached::End => {
                    self.home.put(buf);
                    return self.fail(shrank());
                }
            }
        }
        let file = self.file.clone();
        let ahead = (self.len - self.sent - filled as u64).min(want as u64 + READ_AHEAD_BYTES);
        self.in_flight = Some(tokio::task::spawn_blocking(move || {
            let at = offset + filled as u64;
            // Starts the disk on this chunk and the stretch after it, so
            // the next chunks are cached by the time they are asked for.
            let _ = rustix::fs::fadvise(&*file, at, NonZeroU64::new(ahead), Advice::WillNeed);
            let result = read_exact_at(&file, &mut buf[filled..want], at);
            (buf, want, result)
        }));
        // Registers the waker with the read just started.
        self.poll_frame(cx)
    }
}

/// Where a download's one chunk buffer lives while no frame or read holds it.
struct BufferHome {
    /// Size of the buffer: a chunk, or the whole body if smaller.
    size: usize,
    /// `None` at first (allocated on first use, so a HEAD or an error never
    /// pays for it) and while the buffer is out.
    state: Mutex<HomeState>,
}

#[derive(Default)]
struct HomeState {
    /// Allocated yet? Distinguishes "not yet made" from "out in a frame".
    made: bool,
    buf: Option<Vec<u8>>,
    /// The body, waiting for the buffer to come back from hyper.
    waiter: Option<Waker>,
}

impl BufferHome {
    fn new(size: usize) -> Self {
        BufferHome {
            size,
            state: Mutex::default(),
        }
    }

    /// The buffer, or `None` (and a wake-up registered) while a frame holds it.
    fn take(&self, cx: &Context<'_>) -> Option<Vec<u8>> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if !state.made {
            state.made = true;
            return Some(vec![0; self.size]);
        }
        let buf = state.buf.take();
        if buf.is_none() {
            state.waiter = Some(cx.waker().clone());
        }
        buf
    }

    fn put(&self, buf: Vec<u8>) {
        let waiter = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.buf = Some(buf);
            state.waiter.take()
        };
        if let Some(waiter) = waiter {
            waiter.wake();
        }
    }
}

/// One frame's bytes: the first `len` of the download's buffer, which goes
/// back home when hyper drops the frame.
struct Chunk {
    buf: Vec<u8>,
    len: usize,
    home: Arc<BufferHome>,
}

impl AsRef<[u8]> for Chunk {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        self.home.put(std::mem::take(&mut self.buf));
    }
}

/// What a page-cache-only read found.
enum Cached {
    /// The whole range was cached and is in the buffer.
    All,
    /// This many leading bytes were; the rest needs the disk.
    Part(usize),
    /// The file ends before the range does.
    End,
    /// The filesystem cannot read without blocking; never ask again.
    Unsupported,
}

/// Fills `buf` from `offset` with what the page cache holds, without ever
/// waiting for the disk: `RWF_NOWAIT` makes the kernel return `EAGAIN`
/// instead of blocking, so this is safe to call on an async worker.
fn read_cached(file: &std::fs::File, buf: &mut [u8], offset: u64) -> Cached {
    let mut filled = 0;
    while filled < buf.len() {
        let mut slices = [io::IoSliceMut::new(&mut buf[filled..])];
        match rustix::io::preadv2(
            file,
            &mut slices,
            offset + filled as u64,
            rustix::io::ReadWriteFlags::NOWAIT,
        ) {
            Ok(0) => return Cached::End,
            Ok(n) => filled += n,
            Err(rustix::io::Errno::INTR) => {}
            // Not supported by this kernel or filesystem.
            Err(rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::INVAL) if filled == 0 => {
                return Cached::Unsupported;
            }
            // EAGAIN (not cached) or an error the blocking read will report.
            Err(_) => return Cached::Part(filled),
        }
    }
    Cached::All
}

/// Fills `buf` from `offset`, or fails if the file ends first. Blocks: runs
/// on the blocking pool.
fn read_exact_at(file: &std::fs::File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => return Err(shrank()),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn shrank() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "backup shrank while it was being sent",
    )
}

/// A backup streamed from the object store: the store's response body,
/// passed on frame by frame (flat memory), counted as it is written out.
/// A store that ends early, runs long or fails mid-way ends the body with
/// an error, so the client sees an aborted transfer, never a clean short
/// body.
pub struct StreamedBody {
    inner: crate::storage::s3::store::ObjectBody,
    /// Bytes promised.
    len: u64,
    /// Bytes received from the store so far.
    received: u64,
    delivery: Arc<Delivery>,
    failed: bool,
}

impl StreamedBody {
    /// Streams `len` bytes of `inner`.
    pub fn new(inner: crate::storage::s3::store::ObjectBody, len: u64, on_end: OnEnd) -> Self {
        StreamedBody {
            inner,
            len,
            received: 0,
            delivery: Arc::new(Delivery {
                written: AtomicU64::new(0),
                len,
                on_end: Mutex::new(Some(on_end)),
            }),
            failed: false,
        }
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Frame<Sent>>>> {
        if self.failed || self.received == self.len && self.len > 0 {
            return Poll::Ready(None);
        }
        loop {
            let frame = match ready!(http_body::Body::poll_frame(Pin::new(&mut self.inner), cx)) {
                None if self.received == self.len => return Poll::Ready(None),
                None => return self.fail("the object store ended the backup early"),
                Some(Err(e)) => return self.fail(&format!("the object store failed mid-way: {e}")),
                Some(Ok(frame)) => frame,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            self.received += data.len() as u64;
            if self.received > self.len {
                return self.fail("the object store sent more than the backup's length");
            }
            return Poll::Ready(Some(Ok(Frame::data(Sent {
                bytes: data,
                delivery: Some(self.delivery.clone()),
            }))));
        }
    }

    fn fail(&mut self, why: &str) -> Poll<Option<io::Result<Frame<Sent>>>> {
        self.failed = true;
        Poll::Ready(Some(Err(io::Error::other(why.to_owned()))))
    }
}
