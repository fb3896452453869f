//! Response bodies: small JSON buffers, and backups streamed with flat memory.

use std::future::Future;
use std::io;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http_body::{Frame, SizeHint};
use tokio::task::JoinHandle;

use crate::config::READ_CHUNK_BYTES;

/// Called once when a streamed body ends: bytes delivered to hyper, and
/// whether that was the whole file.
pub type OnEnd = Box<dyn FnOnce(u64, bool) + Send>;

/// Every response body the server sends.
pub enum Body {
    /// A complete, small body (JSON errors); `None` once sent or when empty.
    Full(Option<Bytes>),
    /// A backup, streamed from its file.
    File(FileBody),
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
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        match self.get_mut() {
            Body::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Body::File(file) => Pin::new(file).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Full(bytes) => bytes.is_none(),
            Body::File(file) => file.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Body::File(file) => SizeHint::with_exact(file.len - file.sent),
        }
    }
}

/// Streams `len` bytes of a file from offset `start`, one [`READ_CHUNK_BYTES`] chunk read ahead
/// on the blocking pool while hyper writes the previous one.
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
    /// Bytes requested from the file (sent + the read in flight).
    requested: u64,
    in_flight: Option<JoinHandle<io::Result<Bytes>>>,
    on_end: Option<OnEnd>,
}

impl FileBody {
    /// Streams `len` bytes of `file` starting at offset `start`.
    pub fn new(file: std::fs::File, start: u64, len: u64, on_end: OnEnd) -> Self {
        FileBody {
            file: Arc::new(file),
            start,
            len,
            sent: 0,
            requested: 0,
            in_flight: None,
            on_end: Some(on_end),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.sent == self.len
    }

    /// Starts reading the next chunk, if any is left and none is in flight.
    fn read_ahead(&mut self) {
        if self.in_flight.is_some() || self.requested == self.len {
            return;
        }
        let want = (self.len - self.requested).min(READ_CHUNK_BYTES as u64) as usize;
        let offset = self.start + self.requested;
        self.requested += want as u64;
        let file = self.file.clone();
        self.in_flight = Some(tokio::task::spawn_blocking(move || {
            read_chunk(&file, offset, want)
        }));
    }

    fn finish(&mut self) {
        if let Some(on_end) = self.on_end.take() {
            on_end(self.sent, self.sent == self.len);
        }
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        if self.sent == self.len {
            self.finish();
            return Poll::Ready(None);
        }
        self.read_ahead();
        let Some(in_flight) = self.in_flight.as_mut() else {
            return Poll::Ready(None);
        };
        let result = ready!(Pin::new(in_flight).poll(cx));
        self.in_flight = None;
        match result.unwrap_or_else(|e| Err(io::Error::other(e))) {
            Ok(chunk) => {
                self.sent += chunk.len() as u64;
                self.read_ahead();
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
            Err(e) => {
                self.requested = self.sent;
                self.finish();
                Poll::Ready(Some(Err(e)))
            }
        }
    }
}

impl Drop for FileBody {
    fn drop(&mut self) {
        // The client went away mid-stream (or a HEAD never polled the body).
        self.finish();
    }
}

/// Reads exactly `want` bytes at `offset`, or fails if the file ends first.
fn read_chunk(file: &std::fs::File, offset: u64, want: usize) -> io::Result<Bytes> {
    let mut buf = BytesMut::zeroed(want);
    let mut filled = 0;
    while filled < want {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "backup shrank while it was being sent",
                ));
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(buf.freeze())
}
