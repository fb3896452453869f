//! Dispatch of (method, path) to handlers; the one place errors become
//! responses, and where each request's log line is written.
//!
//! Order on the backup route: method, then authentication, then id
//! validation, then storage, so a caller without credentials learns nothing
//! about ids or storage.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use crate::auth;
use crate::backup_id::BackupId;
use crate::body::{Body, FileBody};
use crate::config::MAX_ECHOED_ID_CHARS;
use crate::credentials::CredentialStore;
use crate::error::{Error, truncate_chars};
use crate::store::{BackupStore, StoreError};
use crate::system_name::SystemName;

/// Path prefix of one backup; the rest of the path is its id.
pub const BACKUP_PREFIX: &str = "/api/systems/backups/";

/// Methods the backup route answers.
const BACKUP_ALLOW: &str = "GET, HEAD";

/// What the server needs to answer requests.
pub struct App {
    /// Who may authenticate.
    pub credentials: CredentialStore,
    /// Where backups are.
    pub store: BackupStore,
}

/// What the log line of a request says.
struct RequestLog {
    peer: SocketAddr,
    method: Method,
    /// The id as received, truncated; empty off the backup route.
    id: String,
    system: Option<SystemName>,
    start: Instant,
}

impl RequestLog {
    fn write(&self, status: StatusCode, bytes: u64, complete: bool) {
        let system = self.system.as_ref().map_or("-", SystemName::as_str);
        tracing::info!(
            peer = %self.peer,
            method = %self.method,
            id = ?self.id,
            system,
            status = status.as_u16(),
            bytes,
            complete,
            duration_ms = self.start.elapsed().as_secs_f64() * 1000.0,
            "request"
        );
    }
}

/// Answers one request. Never fails: every error is a response.
///
/// Generic over the request body so the whole-request fuzz target can drive
/// it without a socket; the server passes hyper's `Incoming`.
pub async fn handle<B>(
    app: Arc<App>,
    peer: SocketAddr,
    req: Request<B>,
) -> Result<Response<Body>, Infallible> {
    let mut log = RequestLog {
        peer,
        method: req.method().clone(),
        id: String::new(),
        system: None,
        start: Instant::now(),
    };
    let response = match req.uri().path().strip_prefix(BACKUP_PREFIX) {
        Some(raw_id) => {
            log.id = truncate_chars(raw_id, MAX_ECHOED_ID_CHARS).to_owned();
            get_backup(&app, &req, raw_id, &mut log).await
        }
        None => Err(Error::RouteNotFound),
    };
    let response = match response {
        Ok(response) => response,
        Err(error) => error.into_response(),
    };
    // A streamed body writes its own line when it ends.
    if !matches!(response.body(), Body::File(_)) {
        log.write(
            response.status(),
            http_body::Body::size_hint(response.body()).lower(),
            true,
        );
    }
    Ok(response)
}

/// `GET`/`HEAD /api/systems/backups/{id}`.
async fn get_backup<B>(
    app: &App,
    req: &Request<B>,
    raw_id: &str,
    log: &mut RequestLog,
) -> Result<Response<Body>, Error> {
    let head = match *req.method() {
        Method::GET => false,
        Method::HEAD => true,
        _ => {
            return Err(Error::MethodNotAllowed {
                allow: BACKUP_ALLOW,
            });
        }
    };
    let system = authenticate(app, req, log)?;
    log.system = Some(system.clone());
    let id: BackupId = raw_id.parse().map_err(|_| Error::InvalidId {
        value: raw_id.to_owned(),
    })?;
    let backup = match app.store.open(&system, &id).await {
        Ok(backup) => backup,
        Err(StoreError::NotFound) => return Err(Error::BackupNotFound),
        Err(StoreError::Unavailable(e)) => {
            tracing::error!(error = %e, system = %system, "storage error");
            return Err(Error::StorageUnavailable);
        }
    };

    let len = backup.len;
    let body = if head {
        Body::empty()
    } else {
        let log = RequestLog {
            system: Some(system),
            id: id.to_string(),
            method: log.method.clone(),
            ..*log
        };
        Body::File(FileBody::new(
            backup.file,
            0,
            len,
            Box::new(move |sent, complete| log.write(StatusCode::OK, sent, complete)),
        ))
    };
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    let disposition = format!("attachment; filename=\"{id}\"");
    headers.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_str(&disposition).expect("a BackupId is a valid header value"),
    );
    Ok(response)
}

fn authenticate<B>(app: &App, req: &Request<B>, log: &RequestLog) -> Result<SystemName, Error> {
    let creds = app.credentials.current();
    auth::authenticate(req.headers(), &creds).map_err(|reason| {
        tracing::warn!(peer = %log.peer, reason = reason.as_str(), "authentication failed");
        Error::Unauthorized
    })
}
