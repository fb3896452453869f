//! The optional admin listener: `/metrics` (Prometheus text), `/healthz`
//! (the process answers) and `/readyz` (storage root usable and credentials
//! loaded). Never on the public port: it needs no credentials, so it must be
//! reachable only where the operator puts it (`--admin-listen`).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::header::{self, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::config::{HEADER_READ_TIMEOUT, MAX_HEADER_BYTES};
use crate::http::body::Body;
use crate::http::server::{Activity, Drain, Limits, Progress, Sniff, Stream, serve_connection};
use crate::service::App;

/// Most admin connections at once: scrapers and probes, a handful.
const MAX_ADMIN_CONNECTIONS: usize = 64;

/// Serves the admin endpoints on `listener` until the task is dropped.
/// Connections idle for `idle_timeout` are closed by the same rule as on
/// the public listener (HTTP/2 pings do not count).
pub async fn run(listener: TcpListener, app: Arc<App>, idle_timeout: Duration) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_ADMIN_CONNECTIONS));
    // Never drained: a stopping worker drops this task (and its listener).
    let drain = Drain::new();
    let clock = Instant::now();
    let limits = Limits {
        max_connections: MAX_ADMIN_CONNECTIONS,
        grace_period: Duration::ZERO,
        idle_timeout,
    };
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let (app, builder, mut stop) = (app.clone(), builder.clone(), drain.watcher());
        tokio::spawn(async move {
            let activity = Activity::new(clock);
            let service = {
                let activity = activity.clone();
                service_fn(move |req| {
                    let stream = Stream::start(&activity);
                    let (app, activity) = (app.clone(), activity.clone());
                    async move {
                        let response = answer(app, req).await?;
                        Ok::<_, Infallible>(
                            response.map(|body| Progress::new(body, activity, Some(stream))),
                        )
                    }
                })
            };
            let io = Sniff::new(stream, activity.clone());
            serve_connection(&builder, io, service, &activity, &mut stop, peer, limits).await;
            drop(permit);
        });
    }
}

async fn answer<B>(app: Arc<App>, req: Request<B>) -> Result<Response<Body>, Infallible> {
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            {
                app.metrics.reload_failures(
                    crate::metrics::Reloaded::Credentials,
                    app.credentials.reload_failures(),
                );
                if let Some(sent) = app.storage.store_requests() {
                    app.metrics.store_requests(sent);
                }
                app.metrics.render()
            },
        ),
        (&Method::GET, "/healthz") => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        (&Method::GET, "/readyz") => {
            // Credentials are loaded before the listeners start, so readiness
            // is the storage root.
            if app.storage.is_available() {
                (StatusCode::OK, "text/plain", "ready\n".to_owned())
            } else {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "storage unavailable\n".to_owned(),
                )
            }
        }
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_owned(),
        ),
    };
    let mut response = Response::new(Body::full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    Ok(response)
}
