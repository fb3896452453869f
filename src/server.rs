//! The accept loop: connection cap, timeouts (with a timer), graceful drain,
//! and the threads that serve the connections ([`Cores`]).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::Semaphore;

use crate::config::{
    HEADER_READ_TIMEOUT, IDLE_TIMEOUT, MAX_CONCURRENT_STREAMS, MAX_HEADER_BYTES, MAX_HEADERS,
};
use crate::routes::{self, App};
use crate::tls::Tls;
use crate::zerocopy::{self, Outbox};

/// How the accept loop limits its clients.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most connections served at once; further ones wait in the backlog.
    pub max_connections: usize,
    /// Time in-flight requests get to finish once shutdown starts.
    pub grace_period: Duration,
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
        .keep_alive_interval(Some(IDLE_TIMEOUT / 2))
        .keep_alive_timeout(IDLE_TIMEOUT / 4);
    let builder = Arc::new(builder);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
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
        let (builder, watcher, tls) = (builder.clone(), graceful.watcher(), tls.clone());
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
            let last_activity = Arc::new(AtomicU64::new(clock.elapsed().as_millis() as u64));
            // Zero-copy needs the plain socket: TLS would encrypt the markers.
            let outbox = tls.is_none().then(|| Outbox::new(metrics.clone()));
            let io = ActivityIo {
                inner: stream,
                clock,
                last_activity: last_activity.clone(),
                outbox: outbox.clone(),
            };
            let service =
                service_fn(move |req| routes::handle(app.clone(), peer, outbox.clone(), req));
            let activity = (peer, clock, &*last_activity);
            match tls {
                None => serve(&builder, watcher, io, service, activity).await,
                Some(tls) => {
                    match tokio::time::timeout(HEADER_READ_TIMEOUT, tls.acceptor().accept(io)).await
                    {
                        Ok(Ok(stream)) => serve(&builder, watcher, stream, service, activity).await,
                        Ok(Err(e)) => {
                            tracing::debug!(peer = %peer, error = %e, "TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(peer = %peer, "TLS handshake timed out"),
                    }
                }
            }
            metrics.connections(-1);
            drop(permit);
        });
    }
    drop(listener);
    tracing::info!(
        connections = graceful.count(),
        "shutting down: no longer accepting"
    );
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections finished"),
        () = tokio::time::sleep(limits.grace_period) => {
            tracing::warn!(grace_period_s = limits.grace_period.as_secs(), "grace period over; closing remaining connections");
        }
    }
}

/// Serves HTTP on one (plain or TLS) stream until it ends, idles out or the
/// graceful shutdown closes it.
async fn serve<I, S>(
    builder: &auto::Builder<TokioExecutor>,
    watcher: Watcher,
    io: I,
    service: S,
    (peer, clock, last_activity): (SocketAddr, Instant, &AtomicU64),
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = hyper::Response<crate::body::Body>,
        > + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = watcher.watch(builder.serve_connection(TokioIo::new(io), service));
    serve_until_idle(conn, peer, clock, last_activity).await;
}

/// Drives one connection, closing it when no byte has moved for [`IDLE_TIMEOUT`].
async fn serve_until_idle<C, E>(
    conn: C,
    peer: SocketAddr,
    clock: Instant,
    last_activity: &AtomicU64,
) where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    tokio::pin!(conn);
    loop {
        let idle_since = Duration::from_millis(last_activity.load(Ordering::Relaxed));
        let deadline = clock + idle_since + IDLE_TIMEOUT;
        tokio::select! {
            result = &mut conn => {
                if let Err(e) = result {
                    tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
                }
                return;
            }
            () = tokio::time::sleep_until(deadline.into()) => {
                let now = clock.elapsed();
                let last = Duration::from_millis(last_activity.load(Ordering::Relaxed));
                if now.saturating_sub(last) >= IDLE_TIMEOUT {
                    tracing::info!(peer = %peer, "closing connection idle for {} s", IDLE_TIMEOUT.as_secs());
                    return;
                }
            }
        }
    }
}

/// A socket that records when a byte last moved through it, and sends
/// zero-copy frames (plain connections only).
struct ActivityIo {
    inner: TcpStream,
    clock: Instant,
    /// Milliseconds since `clock` of the last read or write that moved bytes.
    last_activity: Arc<AtomicU64>,
    /// The connection's zero-copy queue; `None` under TLS.
    outbox: Option<Arc<Outbox>>,
}

impl ActivityIo {
    fn touch(&self) {
        let now = self.clock.elapsed().as_millis() as u64;
        self.last_activity.store(now, Ordering::Relaxed);
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
