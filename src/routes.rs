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

use crate::auth;
use crate::backup_id::BackupId;
use crate::body::{Body, FileBody};
use crate::config::{DOWNLOAD_RETRY_AFTER_SECONDS, MAX_ECHOED_ID_CHARS, Policy};
use crate::credentials::CredentialStore;
use crate::error::{Error, json_response, truncate_chars};
use crate::metadata::{BackupInfo, MIMETYPE};
use crate::metrics::{Metrics, Route};
use crate::ranges::{self, Selection};
use crate::ratelimit::{DownloadSlots, UploadRateLimiter};
use crate::store::{BackupStore, StoreError};
use crate::system_name::SystemName;
use crate::upload::{self, ReceiveError};
use crate::zerocopy::Outbox;

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

/// What the server needs to answer requests.
pub struct App {
    /// Who may authenticate.
    pub credentials: CredentialStore,
    /// Where backups are.
    pub store: BackupStore,
    /// What systems may do.
    pub policy: Policy,
    /// Upload admissions per system.
    pub uploads: UploadRateLimiter,
    /// Downloads in flight per system.
    pub downloads: DownloadSlots,
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
}

impl App {
    /// An app enforcing `policy`.
    pub fn new(credentials: CredentialStore, store: BackupStore, policy: Policy) -> Self {
        let uploads = UploadRateLimiter::new(policy.uploads_per_minute, policy.uploads_per_hour);
        App {
            credentials,
            store,
            policy,
            uploads,
            downloads: DownloadSlots::new(policy.max_downloads_per_system),
            metrics: Arc::new(Metrics::default()),
        }
    }
}

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
        collection(&app, req, &mut log).await
    } else if let Some(raw_id) = path.strip_prefix(BACKUP_PREFIX) {
        let raw_id = raw_id.to_owned();
        log.id = truncate_chars(&raw_id, MAX_ECHOED_ID_CHARS).to_owned();
        // Zero-copy frames are for HTTP/1 only: HTTP/2 copies its frames.
        let outbox =
            outbox.filter(|_| matches!(req.version(), Version::HTTP_10 | Version::HTTP_11));
        item(&app, &req, &raw_id, outbox, &mut log).await
    } else {
        Err(Error::RouteNotFound)
    };
    let mut response = response.unwrap_or_else(Error::into_response);
    if log.method == Method::HEAD {
        headers_only(&mut response);
    }
    // A streamed body writes its own line when it ends.
    if !matches!(response.body(), Body::File(_)) {
        let bytes = http_body::Body::size_hint(response.body()).lower();
        log.write(response.status(), bytes, true);
    }
    Ok(response)
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
    let creds = app.credentials.fresh();
    let system = auth::authenticate(req.headers(), &creds).map_err(|reason| {
        tracing::warn!(peer = %log.peer, reason = reason.as_str(), "authentication failed");
        app.metrics.auth_failure();
        Error::Unauthorized
    })?;
    log.system = Some(system.clone());
    Ok(system)
}

/// Maps a storage failure to its response, logging the detail.
fn storage_error(app: &App, e: StoreError, system: &SystemName) -> Error {
    if !matches!(e, StoreError::NotFound) {
        app.metrics.storage_error();
    }
    match e {
        StoreError::NotFound => Error::BackupNotFound,
        StoreError::Full => {
            tracing::error!(system = %system, "storage is full");
            Error::InsufficientStorage
        }
        StoreError::Unavailable(e) => {
            tracing::error!(error = %e, system = %system, "storage error");
            Error::StorageUnavailable
        }
    }
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
    // A slot for the whole of the body (given back when the download is
    // over); a HEAD holds one only while it is answered.
    let slot = app.downloads.take(system).ok_or(Error::TooManyDownloads {
        retry_after_seconds: DOWNLOAD_RETRY_AFTER_SECONDS,
    })?;
    let backup = app
        .store
        .open(system, &id)
        .await
        .map_err(|e| storage_error(app, e, system))?;
    let len = backup.info.size;
    let etag = ranges::etag(len, backup.modified, backup.ino);

    let mut builder = Response::builder()
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(header::CACHE_CONTROL, "no-store")
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::ETAG, &etag)
        .header(
            header::LAST_MODIFIED,
            ranges::last_modified(backup.modified),
        );
    if let Some(digest) = backup.info.repr_digest() {
        builder = builder.header(REPR_DIGEST, digest);
    }
    if ranges::not_modified(req.headers(), &etag) {
        return Ok(builder
            .status(StatusCode::NOT_MODIFIED)
            .body(Body::empty())
            .expect("valid headers"));
    }
    let (status, start, count) = match ranges::select(req.headers(), len, &etag, backup.modified) {
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
        Body::File(FileBody::new(
            backup.file,
            start,
            count,
            outbox,
            Box::new(move |sent, complete| {
                drop(slot);
                log.write(status, sent, complete)
            }),
        ))
    };
    Ok(builder
        .status(status)
        .header(header::CONTENT_TYPE, MIMETYPE)
        .header(header::CONTENT_LENGTH, count)
        .header(
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{id}\""),
        )
        .body(body)
        .expect("a BackupId and digits are valid header values"))
}

/// `DELETE` of one backup.
async fn delete(app: &App, system: &SystemName, id: BackupId) -> Result<Response<Body>, Error> {
    if app.policy.append_only {
        return Err(Error::AppendOnly);
    }
    let lock = app.store.system_lock(system);
    let _guard = lock.lock().await;
    app.store
        .delete(system, &id)
        .await
        .map_err(|e| storage_error(app, e, system))?;
    tracing::info!(system = %system, id = %id, "backup deleted");
    Ok(json_response(
        StatusCode::OK,
        &json!({ "code": 200, "message": "backup deleted", "data": { "id": id.to_string() } }),
    ))
}

/// `GET /api/systems/backups`: the caller's backups, newest first.
async fn list(app: &App, system: &SystemName) -> Result<Response<Body>, Error> {
    let backups = match app.store.list(system).await {
        Err(StoreError::NotFound) => Vec::new(),
        other => other.map_err(|e| storage_error(app, e, system))?,
    };
    let backups: Vec<_> = backups.iter().map(BackupInfo::to_json).collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({ "code": 200, "message": "backups listed", "data": { "backups": backups } }),
    ))
}

/// `POST /api/systems/backups`: every limit is checked before the body is
/// read; the body streams to a temporary file that becomes the backup only
/// once complete, verified and durable.
async fn upload<B>(
    app: &App,
    req: Request<B>,
    system: SystemName,
) -> Result<(Response<Body>, BackupId), Error>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let policy = app.policy;
    let declared: u64 = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .ok_or(Error::LengthRequired)?;
    if declared > policy.max_upload_bytes {
        return Err(Error::UploadTooLarge {
            max_bytes: policy.max_upload_bytes,
        });
    }
    check_quota(app, &system, declared).await?;
    app.uploads
        .admit(&system)
        .map_err(|retry_after_seconds| Error::RateLimited {
            retry_after_seconds,
        })?;
    let stored = receive_and_store(app, req, &system, declared).await;
    if stored.as_ref().is_err_and(|e| e.status().is_server_error()) {
        // The server's fault (storage unavailable or full), not the
        // system's: a retry after the outage must not meet a 429.
        app.uploads.refund(&system);
    }
    stored
}

/// The part of an upload after admission: receive, verify, commit, prune.
async fn receive_and_store<B>(
    app: &App,
    req: Request<B>,
    system: &SystemName,
    declared: u64,
) -> Result<(Response<Body>, BackupId), Error>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let policy = app.policy;
    let x_filename = req.headers().get(X_FILENAME).map(|v| v.as_bytes().to_vec());
    let expected =
        upload::expected_digest(req.headers().get(CONTENT_DIGEST).map(HeaderValue::as_bytes));

    let partial = app
        .store
        .begin_upload(system)
        .await
        .map_err(|e| storage_error(app, e, system))?;
    let (partial, sha256) = upload::receive(req.into_body(), partial, declared, expected)
        .await
        .map_err(|e| match e {
            ReceiveError::LengthMismatch(detail) => {
                tracing::warn!(system = %system, detail, "upload length mismatch");
                Error::LengthMismatch
            }
            ReceiveError::ChecksumMismatch => {
                tracing::warn!(system = %system, "upload checksum mismatch");
                Error::ChecksumMismatch
            }
            ReceiveError::Store(e) => storage_error(app, e, system),
        })?;
    // Commit and prune under the system's lock, so concurrent uploads (and
    // deletes) of one system leave a consistent directory.
    let lock = app.store.system_lock(system);
    let _guard = lock.lock().await;
    check_quota(app, system, declared).await?;
    // The id is taken now, under the lock, not when the upload started: the
    // backup just stored is then always the newest by id, so retention
    // never removes a backup newer than one it keeps (an upload that
    // started first and finished last would otherwise prune the later one).
    let uuid = uuid::Uuid::now_v7();
    let filename = upload::sanitize_filename(x_filename.as_deref(), uuid);
    let ext = upload::extension_for(x_filename.as_ref().map(|_| filename.as_str()));
    let id = BackupId::new(uuid, ext).expect("now_v7 is a version 7 RFC 4122 UUID");
    let info = upload::new_info(id, filename, declared, sha256);
    let committed = info.clone();
    tokio::task::spawn_blocking(move || partial.commit(&committed))
        .await
        .unwrap_or_else(|e| Err(StoreError::Unavailable(std::io::Error::other(e))))
        .map_err(|e| storage_error(app, e, system))?;
    tracing::info!(system = %system, id = %id, size = declared, "backup stored");
    app.metrics.upload(declared);
    if policy.retention_count > 0 || policy.retention_bytes > 0 {
        match app
            .store
            .prune(system, id, policy.retention_count, policy.retention_bytes)
            .await
        {
            Ok(pruned) => {
                app.metrics.pruned(pruned.len() as u64);
                for old in pruned {
                    tracing::info!(system = %system, id = %old, "backup pruned by retention");
                }
            }
            // The upload is stored; a failed prune is retried after the next one.
            Err(e) => tracing::error!(system = %system, error = ?e, "retention failed"),
        }
    }
    Ok((
        json_response(
            StatusCode::CREATED,
            &json!({ "code": 201, "message": "backup stored", "data": info.to_json() }),
        ),
        id,
    ))
}

/// 413 if `system` would be over its quota once a backup of `incoming`
/// bytes is stored and retention has made what room it makes.
async fn check_quota(app: &App, system: &SystemName, incoming: u64) -> Result<(), Error> {
    let policy = app.policy;
    if policy.quota_bytes == 0 {
        return Ok(());
    }
    let used = match app
        .store
        .usage_after(
            system,
            incoming,
            policy.retention_count,
            policy.retention_bytes,
        )
        .await
    {
        Err(StoreError::NotFound) => incoming,
        other => other.map_err(|e| storage_error(app, e, system))?,
    };
    if used > policy.quota_bytes {
        return Err(Error::QuotaExceeded);
    }
    Ok(())
}
