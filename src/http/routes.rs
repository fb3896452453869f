//! Dispatch of (method, path) to handlers; the one place errors become
//! responses, and where each request's log line is written.
//!
//! | route | methods |
//! |---|---|
//! | `/api/systems/backups` | `GET`/`HEAD` list, `POST` upload |
//! | `/api/systems/backups/{id}` | `GET`/`HEAD` download, `DELETE` |
//!
//! Order on every route: method, then authentication, then id validation,
//! then storage, so a caller without credentials learns nothing about ids or
//! storage.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Version};
use serde_json::json;

use crate::backup_id::BackupId;
use crate::config::MAX_ECHOED_ID_CHARS;
use crate::error::{Error, json_response, truncate_chars};
use crate::http::body::{Body, FileBody, HeldRequest, StreamedBody};
use crate::http::ranges::{self, Selection};
use crate::http::zerocopy::Outbox;
use crate::metrics::{Metrics, Route};
use crate::service::upload;
use crate::service::{App, Upload};
use crate::storage::Backup;
use crate::storage::metadata::{BackupInfo, MIMETYPE};
use crate::system_name::SystemName;

/// The collection of the caller's backups.
pub const BACKUPS_PATH: &str = "/api/systems/backups";
/// Path prefix of one backup; the rest of the path is its id.
pub const BACKUP_PREFIX: &str = "/api/systems/backups/";

/// Methods the collection answers.
const COLLECTION_ALLOW: &str = "GET, HEAD, POST";
/// Methods one backup answers.
const ITEM_ALLOW: &str = "GET, HEAD, DELETE";
/// Header naming an upload's original file.
const X_FILENAME: &str = "x-filename";
/// RFC 9530 digest headers.
const CONTENT_DIGEST: &str = "content-digest";
const REPR_DIGEST: &str = "repr-digest";

/// What the log line of a request says.
struct RequestLog {
    peer: SocketAddr,
    method: Method,
    /// The id as received, truncated; empty off the item route.
    id: String,
    system: Option<SystemName>,
    start: Instant,
    route: Route,
    metrics: Arc<Metrics>,
}

impl RequestLog {
    /// Writes the request's log line and counts it.
    fn write(&self, status: StatusCode, bytes: u64, complete: bool) {
        self.metrics
            .request(self.route, status.as_u16(), bytes, self.start.elapsed());
        let system = self.system.as_ref().map_or("-", SystemName::as_str);
        tracing::info!(
            peer = %self.peer,
            method = %self.method,
            id = %self.id,
            system,
            status = status.as_u16(),
            bytes,
            complete,
            duration_ms = self.start.elapsed().as_secs_f64() * 1000.0,
            "request"
        );
    }
}

/// Answers one request. Never fails: every error is a response. `outbox`
/// is the connection's zero-copy queue, for plain HTTP/1 connections.
///
/// Generic over the request body so the whole-request fuzz target can drive
/// it without a socket; the server passes hyper's `Incoming`.
pub async fn handle<B>(
    app: Arc<App>,
    peer: SocketAddr,
    outbox: Option<Arc<Outbox>>,
    req: Request<B>,
) -> Result<Response<Body>, Infallible>
where
    B: http_body::Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: std::fmt::Display,
{
    // The handlers borrow the body; what they leave unread of an HTTP/2
    // request is held until the answer is sent (see `Body::Holding`).
    let version = req.version();
    let (parts, mut body) = req.into_parts();
    let mut response = answer(&app, peer, outbox, Request::from_parts(parts, &mut body)).await;
    if version == Version::HTTP_2 && !http_body::Body::is_end_stream(&body) {
        *response.body_mut() =
            std::mem::replace(response.body_mut(), Body::empty()).holding(HeldRequest::new(body));
    }
    Ok(response)
}

/// The answer to one request, logged (streamed bodies log when they end).
async fn answer<B>(
    app: &Arc<App>,
    peer: SocketAddr,
    outbox: Option<Arc<Outbox>>,
    req: Request<B>,
) -> Response<Body>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let path = req.uri().path();
    let route = match (
        path == BACKUPS_PATH,
        path.starts_with(BACKUP_PREFIX),
        req.method(),
    ) {
        (true, _, &Method::GET | &Method::HEAD) => Route::List,
        (true, _, &Method::POST) => Route::Upload,
        (_, true, &Method::GET | &Method::HEAD) => Route::Download,
        (_, true, &Method::DELETE) => Route::Delete,
        _ => Route::Other,
    };
    let mut log = RequestLog {
        peer,
        method: req.method().clone(),
        id: String::new(),
        system: None,
        start: Instant::now(),
        route,
        metrics: app.metrics.clone(),
    };
    let response = if path == BACKUPS_PATH {
        collection(app, req, &mut log).await
    } else if let Some(raw_id) = path.strip_prefix(BACKUP_PREFIX) {
        let raw_id = raw_id.to_owned();
        log.id = truncate_chars(&raw_id, MAX_ECHOED_ID_CHARS).to_owned();
        // Zero-copy frames are for HTTP/1 only: HTTP/2 copies its frames.
        let outbox =
            outbox.filter(|_| matches!(req.version(), Version::HTTP_10 | Version::HTTP_11));
        item(app, &req, &raw_id, outbox, &mut log).await
    } else {
        Err(Error::RouteNotFound)
    };
    let mut response = response.unwrap_or_else(Error::into_response);
    if log.method == Method::HEAD {
        headers_only(&mut response);
    }
    // A streamed body writes its own line when it ends.
    if !matches!(response.body(), Body::File(_) | Body::Stream(_)) {
        let bytes = http_body::Body::size_hint(response.body()).lower();
        log.write(response.status(), bytes, true);
    }
    response
}

/// Turns a response into its answer to HEAD: the same status and headers
/// (with the `Content-Length` a GET would get), and no body at all. hyper
/// drops a HEAD's body over HTTP/1.1, but over HTTP/2 a body that is not
/// empty keeps the stream open after HEADERS, which clients take for a
/// protocol error; an empty one ends the stream with the headers.
fn headers_only(response: &mut Response<Body>) {
    let len = http_body::Body::size_hint(response.body()).exact();
    if let (Some(len), false) = (len, response.headers().contains_key(header::CONTENT_LENGTH)) {
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    *response.body_mut() = Body::empty();
}

/// `/api/systems/backups`.
async fn collection<B>(
    app: &App,
    req: Request<B>,
    log: &mut RequestLog,
) -> Result<Response<Body>, Error>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    match *req.method() {
        Method::GET | Method::HEAD => {
            let system = authenticate(app, &req, log)?;
            list(app, &system).await
        }
        Method::POST => {
            let system = authenticate(app, &req, log)?;
            let stored = upload(app, req, system).await;
            if let Ok((_, id)) = &stored {
                log.id = id.to_string();
            }
            stored.map(|(response, _)| response)
        }
        _ => Err(Error::MethodNotAllowed {
            allow: COLLECTION_ALLOW,
        }),
    }
}

/// `/api/systems/backups/{id}`.
async fn item<B>(
    app: &App,
    req: &Request<B>,
    raw_id: &str,
    outbox: Option<Arc<Outbox>>,
    log: &mut RequestLog,
) -> Result<Response<Body>, Error> {
    let method = req.method().clone();
    if !matches!(method, Method::GET | Method::HEAD | Method::DELETE) {
        return Err(Error::MethodNotAllowed { allow: ITEM_ALLOW });
    }
    let system = authenticate(app, req, log)?;
    let id: BackupId = raw_id.parse().map_err(|_| Error::InvalidId {
        value: raw_id.to_owned(),
    })?;
    if method == Method::DELETE {
        return delete(app, &system, id).await;
    }
    download(app, req, &system, id, outbox, log).await
}

fn authenticate<B>(app: &App, req: &Request<B>, log: &mut RequestLog) -> Result<SystemName, Error> {
    let system = app.authenticate(req.headers(), log.peer)?;
    log.system = Some(system.clone());
    Ok(system)
}

/// `GET`/`HEAD` of one backup, with conditional and range requests.
async fn download<B>(
    app: &App,
    req: &Request<B>,
    system: &SystemName,
    id: BackupId,
    outbox: Option<Arc<Outbox>>,
    log: &RequestLog,
) -> Result<Response<Body>, Error> {
    // The slot is held for the whole of the body (given back when the
    // download is over); a HEAD holds it only while it is answered.
    let (backup, slot) = app.open(system, &id).await?;
    let len = backup.info().size;
    let modified = backup.modified();
    let etag = backup.etag();
    let disposition = content_disposition(&backup.info().filename, &id);

    let mut builder = Response::builder()
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(header::CACHE_CONTROL, "no-store")
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::ETAG, &etag)
        .header(header::LAST_MODIFIED, ranges::last_modified(modified));
    if let Some(digest) = backup.info().repr_digest() {
        builder = builder.header(REPR_DIGEST, digest);
    }
    if ranges::not_modified(req.headers(), &etag) {
        return Ok(builder
            .status(StatusCode::NOT_MODIFIED)
            .body(Body::empty())
            .expect("valid headers"));
    }
    let (status, start, count) = match ranges::select(req.headers(), len, &etag, modified) {
        Selection::Full => (StatusCode::OK, 0, len),
        Selection::Partial { start, end } => {
            builder = builder.header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{len}"));
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
        Selection::Unsatisfiable => return Err(Error::RangeNotSatisfiable { len }),
    };
    let body = if req.method() == Method::HEAD {
        Body::empty()
    } else {
        let log = RequestLog {
            system: Some(system.clone()),
            id: id.to_string(),
            method: log.method.clone(),
            metrics: log.metrics.clone(),
            ..*log
        };
        let on_end: crate::http::body::OnEnd = Box::new(move |sent, complete| {
            drop(slot);
            log.write(status, sent, complete)
        });
        match backup {
            Backup::File(backup) => {
                Body::File(FileBody::new(backup.file, start, count, outbox, on_end))
            }
            Backup::Object(object) => {
                let stream = app.read(system, &object, start, count).await?;
                Body::Stream(StreamedBody::new(stream, count, on_end))
            }
        }
    };
    Ok(builder
        .status(status)
        .header(header::CONTENT_TYPE, MIMETYPE)
        .header(header::CONTENT_LENGTH, count)
        .header(header::CONTENT_DISPOSITION, disposition)
        .body(body)
        .expect("a BackupId, digits and a sanitised name are valid header values"))
}

/// `Content-Disposition` of a download (RFC 6266): the name the system
/// uploaded the backup under, so `curl -OJ` restores it under that name;
/// the id for a backup without one. Only `[A-Za-z0-9._-]` is kept (the
/// upload record's own alphabet, enforced again here since a record edited
/// by hand is read as it is), so the quoted `filename` and the RFC 8187
/// `filename*` are the same string and neither needs escaping.
fn content_disposition(filename: &str, id: &BackupId) -> String {
    let safe: String = filename
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .take(crate::service::upload::MAX_FILENAME_BYTES)
        .collect();
    let name = if safe.is_empty() || safe.chars().all(|c| c == '.') {
        id.to_string()
    } else {
        safe
    };
    format!("attachment; filename=\"{name}\"; filename*=UTF-8''{name}")
}

/// `DELETE` of one backup.
async fn delete(app: &App, system: &SystemName, id: BackupId) -> Result<Response<Body>, Error> {
    app.delete(system, id).await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({ "code": 200, "message": "backup deleted", "data": { "id": id.to_string() } }),
    ))
}

/// `GET /api/systems/backups`: the caller's backups, newest first.
async fn list(app: &App, system: &SystemName) -> Result<Response<Body>, Error> {
    let backups: Vec<_> = app
        .list(system)
        .await?
        .iter()
        .map(BackupInfo::to_json)
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({ "code": 200, "message": "backups listed", "data": { "backups": backups } }),
    ))
}

/// `POST /api/systems/backups`: the limits its headers decide are checked
/// before the body is read; then the service streams it into storage.
async fn upload<B>(
    app: &App,
    req: Request<B>,
    system: SystemName,
) -> Result<(Response<Body>, BackupId), Error>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    // No `Content-Length` is a body streamed to its end (hyper has already
    // refused a malformed one, and any with `Transfer-Encoding`).
    let declared: Option<u64> = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let expected =
        upload::expected_digest(req.headers().get(CONTENT_DIGEST).map(HeaderValue::as_bytes))
            .map_err(|_| {
                tracing::warn!(system = %system, "malformed Content-Digest");
                Error::MalformedDigest
            })?;
    let upload = Upload {
        declared,
        filename: req.headers().get(X_FILENAME).map(|v| v.as_bytes().to_vec()),
        expected,
    };
    let info = app.upload(&system, upload, req.into_body()).await?;
    let id = info.id;
    Ok((
        json_response(
            StatusCode::CREATED,
            &json!({ "code": 201, "message": "backup stored", "data": info.to_json() }),
        ),
        id,
    ))
}
