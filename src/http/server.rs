//! The accept loop: connection cap, timeouts (with a timer), graceful drain,
//! and the threads that serve the connections ([`Cores`]).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::Semaphore;

use crate::config::{HEADER_READ_TIMEOUT, MAX_CONCURRENT_STREAMS, MAX_HEADER_BYTES, MAX_HEADERS};
use crate::http::routes;
use crate::http::tls::Tls;
use crate::http::zerocopy::{self, Outbox};
use crate::service::App;

/// How the accept loop limits its clients.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most connections served at once; further ones wait in the backlog.
    pub max_connections: usize,
    /// Time in-flight requests get to finish once shutdown starts.
    pub grace_period: Duration,
    /// A connection idle this long is closed (see [`Activity`]).
    pub idle_timeout: Duration,
}

/// Pause after a failed `accept` (say, out of file descriptors) before the
/// next, so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// The threads that serve connections: one single-threaded runtime per
/// core, each with its own epoll and timers. The accept loop deals new
/// connections to them in turn, and a connection stays on its thread for
/// its whole life.
///
/// Why not tokio's work-stealing runtime: it has one epoll for all its
/// workers, so ready sockets are found by whichever worker holds it and
/// handed across threads, and a worker with nothing queued sleeps on a
/// futex until another wakes it. On the 2-core benchmark machine that left
/// 5-7 % of the CPU idle under a full 64 KiB load (nginx, one process per
/// core: under 0.5 %); runtimes per core, dealt to in turn, served 17 %
/// more requests per second with 15 % less CPU each (bench/RESULTS.md).
/// Dealing in turn, rather than letting each thread accept for itself,
/// keeps the count of connections even, so a few long downloads spread
/// over the cores (accepting on every thread left 8 streams 8 % slower).
///
/// What it costs: a connection cannot move to an idle core. A core busy
/// with many connections serves them more slowly even if another is idle;
/// every connection still progresses, since each yields between frames.
pub struct Cores {
    handles: Vec<Handle>,
    next: AtomicUsize,
}

impl Cores {
    /// The calling thread's runtime, plus `extra` threads with a runtime
    /// each. Those threads run until the process exits. Call it after the
    /// self-sandbox is applied: threads inherit it only from their creator.
    pub fn start(extra: usize) -> io::Result<Cores> {
        let mut handles = vec![Handle::current()];
        for n in 1..=extra {
            let (sent, handle) = std::sync::mpsc::channel();
            std::thread::Builder::new()
                .name(format!("backupd-core-{n}"))
                .spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build();
                    match runtime {
                        Ok(runtime) => {
                            let _ = sent.send(Ok(runtime.handle().clone()));
                            runtime.block_on(std::future::pending::<()>());
                        }
                        Err(e) => {
                            let _ = sent.send(Err(e));
                        }
                    }
                })?;
            handles.push(handle.recv().map_err(io::Error::other)??);
        }
        Ok(Cores {
            handles,
            next: AtomicUsize::new(0),
        })
    }

    /// How many threads serve connections.
    pub fn threads(&self) -> usize {
        self.handles.len()
    }

    /// The runtime the next connection goes to.
    fn deal(&self) -> &Handle {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        &self.handles[n % self.handles.len()]
    }
}

/// Serves `listener` until `shutdown` completes, then stops accepting, lets
/// in-flight connections finish for up to `limits.grace_period`, and returns.
/// With `tls`, every connection starts with a TLS handshake (bounded by
/// [`HEADER_READ_TIMEOUT`]); ALPN then picks HTTP/2 or HTTP/1.1.
pub async fn run(
    listener: TcpListener,
    cores: Cores,
    app: Arc<App>,
    tls: Option<Arc<Tls>>,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        // Without a timer hyper silently ignores header_read_timeout.
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_headers(MAX_HEADERS)
        // Caps the request head, and how much hyper queues for writing
        // before it asks the body for more.
        .max_buf_size(MAX_HEADER_BYTES)
        // Queue body frames instead of copying them into one buffer: zero-
        // copy markers must reach the socket wrapper as they are (a copied
        // one would poison the connection, see `zerocopy`).
        .writev(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_header_list_size(MAX_HEADER_BYTES as u32)
        // Pings find dead peers; they do not keep a connection open (see
        // `Activity`: only requests and their bodies count on HTTP/2).
        .keep_alive_interval(Some(limits.idle_timeout / 2))
        .keep_alive_timeout(limits.idle_timeout / 4);
    let builder = Arc::new(builder);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let drain = Drain::new();
    let clock = Instant::now();
    let app_metrics = app.metrics.clone();

    tokio::pin!(shutdown);
    loop {
        // Take a permit before accepting: past the cap, connections wait in
        // the kernel's backlog instead of costing us a task each.
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("semaphore never closed"),
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        // Leaves this thread's epoll, to join the one of the core it is dealt to.
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(peer = %peer, error = %e, "cannot hand over the connection");
                continue;
            }
        };
        let app = app.clone();
        let (builder, mut stop, tls) = (builder.clone(), drain.watcher(), tls.clone());
        let metrics = app_metrics.clone();
        metrics.connections(1);
        cores.deal().spawn(async move {
            let stream = match TcpStream::from_std(stream) {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::warn!(peer = %peer, error = %e, "cannot serve the connection");
                    metrics.connections(-1);
                    return;
                }
            };
            let activity = Activity::new(clock);
            // Zero-copy needs the plain socket: TLS would encrypt the markers.
            let outbox = tls.is_none().then(|| Outbox::new(metrics.clone()));
            let linger = Linger::of(&stream);
            let io = ActivityIo {
                inner: stream,
                activity: activity.clone(),
                outbox: outbox.clone(),
            };
            let service = {
                let activity = activity.clone();
                service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let stream = Stream::start(&activity);
                    let req = req.map(|body| Progress::new(body, activity.clone(), None));
                    let (app, outbox, activity) = (app.clone(), outbox.clone(), activity.clone());
                    async move {
                        let response = routes::handle(app, peer, outbox, req).await?;
                        Ok::<_, Infallible>(
                            response.map(|body| Progress::new(body, activity, Some(stream))),
                        )
                    }
                })
            };
            match tls {
                None => {
                    let io = Sniff::new(io, activity.clone());
                    serve_connection(&builder, io, service, &activity, &mut stop, peer, limits)
                        .await;
                }
                Some(tls) => {
                    match tokio::time::timeout(HEADER_READ_TIMEOUT, tls.acceptor().accept(io)).await
                    {
                        Ok(Ok(stream)) => {
                            if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                                activity.h2.store(true, Ordering::Relaxed);
                            }
                            let io = Sniff::new(stream, activity.clone());
                            serve_connection(
                                &builder, io, service, &activity, &mut stop, peer, limits,
                            )
                            .await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(peer = %peer, error = %e, "TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(peer = %peer, "TLS handshake timed out"),
                    }
                }
            }
            if let Some(linger) = linger {
                linger.close().await;
            }
            // Only now is the connection finished for the drain.
            drop(stop);
            metrics.connections(-1);
            drop(permit);
        });
    }
    drop(listener);
    tracing::info!(
        connections = drain.count(),
        "shutting down: no longer accepting"
    );
    tokio::select! {
        () = drain.shutdown() => tracing::info!("all connections finished"),
        () = tokio::time::sleep(limits.grace_period) => {
            tracing::warn!(grace_period_s = limits.grace_period.as_secs(), "grace period over; closing remaining connections");
        }
    }
}

/// Tells every connection to finish (HTTP/1.1: after the response in
/// flight; HTTP/2: GOAWAY, then the open streams) and waits until all have.
/// What hyper-util's `GracefulShutdown` does, open to a connection that
/// also closes itself when idle.
pub struct Drain {
    stop: tokio::sync::watch::Sender<bool>,
}

impl Drain {
    /// Nothing to drain yet.
    pub fn new() -> Self {
        Drain {
            stop: tokio::sync::watch::Sender::new(false),
        }
    }

    /// What one connection holds while it is served (and lingers).
    pub fn watcher(&self) -> tokio::sync::watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// Connections being served.
    pub fn count(&self) -> usize {
        self.stop.receiver_count()
    }

    /// Tells every connection to finish; completes when all have.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        self.stop.closed().await;
    }
}

impl Default for Drain {
    fn default() -> Self {
        Self::new()
    }
}

/// Pause between the GOAWAY that closes an idle connection (or a stalled
/// stream's) and dropping it: lets the peer read the GOAWAY and stop.
const GOAWAY_TO_CLOSE: Duration = Duration::from_secs(1);

/// Serves HTTP on one (plain or TLS) stream until it ends, the drain
/// (`stop`) finishes it, or it has been idle for `limits.idle_timeout`
/// (see [`Activity::idle_since`]): then HTTP/2 gets a GOAWAY and, a moment
/// later, the connection is dropped.
pub async fn serve_connection<I, S, B>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    service: S,
    activity: &Activity,
    stop: &mut tokio::sync::watch::Receiver<bool>,
    peer: SocketAddr,
    limits: Limits,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = hyper::Response<B>,
        > + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let mut stopping = *stop.borrow();
    if stopping {
        conn.as_mut().graceful_shutdown();
    }
    let mut closing: Option<Instant> = None;
    loop {
        let idle_deadline = activity.clock + activity.idle_since() + limits.idle_timeout;
        let close_at = closing.unwrap_or(idle_deadline);
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
                }
                return;
            }
            changed = stop.changed(), if !stopping => {
                stopping = true;
                if changed.is_ok() {
                    conn.as_mut().graceful_shutdown();
                }
            }
            () = tokio::time::sleep_until(idle_deadline.into()), if closing.is_none() => {
                let idle = activity.clock.elapsed().saturating_sub(activity.idle_since());
                if idle >= limits.idle_timeout {
                    tracing::info!(peer = %peer, "closing connection idle for {} s", limits.idle_timeout.as_secs());
                    conn.as_mut().graceful_shutdown();
                    closing = Some(Instant::now() + GOAWAY_TO_CLOSE);
                }
            }
            () = tokio::time::sleep_until(close_at.into()), if closing.is_some() => return,
        }
    }
}

/// What a connection has done lately, for its idle rule.
///
/// On HTTP/1.1 any byte moving counts, so a slow but steady reader keeps
/// its download. On HTTP/2 bytes do not count: PINGs (ours, which the peer
/// acknowledges, or the peer's own), SETTINGS and WINDOW_UPDATEs flow
/// without anyone being served, and counting them let a client with no
/// credentials hold a connection slot forever. There only requests count:
/// one starting or ending, or a frame of a request or response body.
pub struct Activity {
    clock: Instant,
    /// Milliseconds since `clock` of the last read or write that moved bytes.
    bytes: AtomicU64,
    /// Milliseconds since `clock` of the last request start or end, or body
    /// frame in or out.
    progress: AtomicU64,
    /// Whether the connection speaks HTTP/2 (its preface, or ALPN `h2`).
    h2: AtomicBool,
}

impl Activity {
    /// A connection that starts now; `clock` is the server's epoch.
    pub fn new(clock: Instant) -> Arc<Self> {
        let now = clock.elapsed().as_millis() as u64;
        Arc::new(Activity {
            clock,
            bytes: AtomicU64::new(now),
            progress: AtomicU64::new(now),
            h2: AtomicBool::new(false),
        })
    }

    fn now(&self) -> u64 {
        self.clock.elapsed().as_millis() as u64
    }

    fn touch_bytes(&self) {
        self.bytes.store(self.now(), Ordering::Relaxed);
    }

    fn touch_progress(&self) {
        self.progress.store(self.now(), Ordering::Relaxed);
    }

    /// Since when (after `clock`) the connection has been idle.
    pub fn idle_since(&self) -> Duration {
        let progress = self.progress.load(Ordering::Relaxed);
        let since = if self.h2.load(Ordering::Relaxed) {
            progress
        } else {
            progress.max(self.bytes.load(Ordering::Relaxed))
        };
        Duration::from_millis(since)
    }
}

/// A request in flight, from its head to the end of its response; its
/// start and end count as progress.
pub struct Stream {
    activity: Arc<Activity>,
}

impl Stream {
    /// A request starts on the connection `activity` describes.
    pub fn start(activity: &Arc<Activity>) -> Self {
        activity.touch_progress();
        Stream {
            activity: activity.clone(),
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.activity.touch_progress();
    }
}

/// A request or response body whose frames count as progress.
pub struct Progress<B> {
    inner: B,
    activity: Arc<Activity>,
    /// The request this (response) body belongs to, ended when it is dropped.
    _stream: Option<Stream>,
}

impl<B> Progress<B> {
    /// `inner`, counted on `activity`.
    pub fn new(inner: B, activity: Arc<Activity>, stream: Option<Stream>) -> Self {
        Progress {
            inner,
            activity,
            _stream: stream,
        }
    }
}

impl<B: http_body::Body + Unpin> http_body::Body for Progress<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(Some(Ok(_)))) {
            self.activity.touch_progress();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The HTTP/2 connection preface (RFC 9113, section 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads through to the stream it wraps, and marks the connection HTTP/2
/// if the first bytes read are the HTTP/2 preface (plain h2c, or h2 over
/// TLS without ALPN). Writes pass through untouched, vectored as they came
/// (the zero-copy markers rely on that).
pub struct Sniff<I> {
    inner: I,
    activity: Arc<Activity>,
    /// Bytes of the preface matched so far; `None` once decided.
    matched: Option<usize>,
}

impl<I> Sniff<I> {
    /// Wraps `inner`, marking `activity` HTTP/2 if the preface comes.
    pub fn new(inner: I, activity: Arc<Activity>) -> Self {
        Sniff {
            inner,
            activity,
            matched: Some(0),
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Sniff<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Some(matched) = self.matched {
            let new = &buf.filled()[before..];
            let want = &H2_PREFACE[matched..];
            let n = new.len().min(want.len());
            self.matched = if new[..n] != want[..n] {
                None
            } else if matched + n == H2_PREFACE.len() {
                self.activity.h2.store(true, Ordering::Relaxed);
                None
            } else {
                Some(matched + n)
            };
        }
        result
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Sniff<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Longest a closed connection keeps reading what the peer still sends.
const LINGER_TIMEOUT: Duration = Duration::from_secs(5);
/// Most bytes read (and dropped) while lingering.
const LINGER_MAX_BYTES: usize = 1 << 20;

/// A second descriptor of a connection's socket, so it can be closed the
/// way nginx's lingering close does once hyper is done with it: shut down
/// the write side (so the peer sees the end of what was written), then
/// read and drop what the peer still sends (WINDOW_UPDATEs, PINGs, a
/// pipelined request) until it closes too, for at most [`LINGER_TIMEOUT`].
/// Closing a socket that has unread data makes the kernel answer with a
/// reset, and a reset makes the peer discard what it had received but not
/// yet read: the end of a download, cut short.
struct Linger {
    socket: std::os::fd::OwnedFd,
}

impl Linger {
    fn of(stream: &TcpStream) -> Option<Self> {
        stream
            .as_fd()
            .try_clone_to_owned()
            .ok()
            .map(|socket| Linger { socket })
    }

    async fn close(self) {
        let _ = rustix::net::shutdown(&self.socket, rustix::net::Shutdown::Write);
        let std = std::net::TcpStream::from(self.socket);
        if std.set_nonblocking(true).is_err() {
            return;
        }
        let Ok(stream) = TcpStream::from_std(std) else {
            return;
        };
        let mut scratch = [0u8; 4096];
        let mut dropped = 0;
        let _ = tokio::time::timeout(LINGER_TIMEOUT, async {
            while dropped < LINGER_MAX_BYTES {
                if stream.readable().await.is_err() {
                    return;
                }
                match stream.try_read(&mut scratch) {
                    Ok(0) => return,
                    Ok(n) => dropped += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return,
                }
            }
        })
        .await;
    }
}

/// A socket that records when a byte last moved through it, and sends
/// zero-copy frames (plain connections only).
struct ActivityIo {
    inner: TcpStream,
    activity: Arc<Activity>,
    /// The connection's zero-copy queue; `None` under TLS.
    outbox: Option<Arc<Outbox>>,
}

impl ActivityIo {
    fn touch(&self) {
        self.activity.touch_bytes();
    }

    /// Writes `bufs` through the marker at `at` ([`Outbox::write`]) once
    /// the socket is writable.
    fn poll_write_zero_copy(
        &self,
        cx: &mut Context<'_>,
        outbox: &Outbox,
        bufs: &[io::IoSlice<'_>],
        at: usize,
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.inner.poll_write_ready(cx))?;
            let socket = self.inner.as_fd();
            match self
                .inner
                .try_io(Interest::WRITABLE, || outbox.write(socket, bufs, at))
            {
                Ok(n) => {
                    if n > 0 {
                        self.touch();
                    }
                    return Poll::Ready(Ok(n));
                }
                // Readiness was stale; `try_io` cleared it, so wait again.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncRead for ActivityIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        result
    }
}

impl AsyncWrite for ActivityIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.outbox.is_some() {
            return self.poll_write_vectored(cx, &[io::IoSlice::new(buf)]);
        }
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Some(outbox) = &self.outbox {
            match zerocopy::find(bufs) {
                Some(at) => return self.poll_write_zero_copy(cx, outbox, bufs, at),
                // A poisoned outbox may mean copied marker bytes in `bufs`.
                None => outbox.check()?,
            }
        }
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_are_dealt_to_every_core_in_turn() {
        let cores = Cores::start(2).unwrap();
        assert_eq!(cores.threads(), 3);
        let mut ran_on = Vec::new();
        for _ in 0..6 {
            let task = cores.deal().spawn(async { std::thread::current().id() });
            let id = tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("a core never ran its task")
                .unwrap();
            ran_on.push(id);
        }
        let here = std::thread::current().id();
        assert_eq!(ran_on[0], here, "the calling runtime takes the first turn");
        let turn: Vec<_> = ran_on[..3].to_vec();
        assert!(turn[1] != here && turn[2] != here && turn[1] != turn[2]);
        assert_eq!(
            ran_on[3..],
            turn[..],
            "the same three threads, in the same order"
        );
    }
}
