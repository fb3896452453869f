//! The errors a request can end in, and their JSON envelope.
//!
//! Each variant maps to exactly one status and body. Bodies never carry a
//! path, a secret or an I/O error's text: those go to the log only.

use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};
use serde_json::json;

use crate::body::Body;
use crate::config::{MAX_ECHOED_ID_CHARS, RETRY_AFTER_SECONDS};

/// Everything a request to backupd can fail with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// No route at this path: 404 `not found`.
    RouteNotFound,
    /// A route exists, not for this method: 405 with `Allow`.
    MethodNotAllowed {
        /// Value of the `Allow` header.
        allow: &'static str,
    },
    /// No valid credentials: 401, the same for every reason.
    Unauthorized,
    /// The id is not a canonical backup id: 400 echoing (a prefix of) it.
    InvalidId {
        /// The id as received.
        value: String,
    },
    /// No such backup for this system (or another system's): 404.
    BackupNotFound,
    /// The storage root cannot be used: 503 with `Retry-After`.
    StorageUnavailable,
}

impl Error {
    /// The status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::RouteNotFound | Error::BackupNotFound => StatusCode::NOT_FOUND,
            Error::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Error::Unauthorized => StatusCode::UNAUTHORIZED,
            Error::InvalidId { .. } => StatusCode::BAD_REQUEST,
            Error::StorageUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn body(&self) -> serde_json::Value {
        let code = self.status().as_u16();
        match self {
            Error::InvalidId { value } => json!({
                "code": code,
                "message": "validation failed",
                "data": {
                    "type": "validation_error",
                    "errors": [{
                        "key": "id",
                        "message": "invalid backup id",
                        "value": truncate_chars(value, MAX_ECHOED_ID_CHARS),
                    }],
                },
            }),
            other => {
                let message = match other {
                    Error::RouteNotFound => "not found",
                    Error::MethodNotAllowed { .. } => "method not allowed",
                    Error::Unauthorized => "invalid token",
                    Error::BackupNotFound => "backup not found",
                    Error::StorageUnavailable => "backup storage unavailable",
                    Error::InvalidId { .. } => unreachable!("handled above"),
                };
                json!({ "code": code, "message": message, "data": {} })
            }
        }
    }

    /// The complete response: status, JSON body, and the headers the
    /// contract ties to this status.
    pub fn into_response(self) -> Response<Body> {
        let body = self.body().to_string();
        let mut response = Response::new(Body::full(body));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        match self {
            Error::MethodNotAllowed { allow } => {
                headers.insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            Error::Unauthorized => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"backupd\""),
                );
            }
            Error::StorageUnavailable => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
            }
            _ => {}
        }
        response
    }
}

/// At most `max` characters of `s`, never splitting one.
pub fn truncate_chars(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((end, _)) => &s[..end],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncates_by_characters() {
        assert_eq!(truncate_chars("abc", 2), "ab");
        assert_eq!(truncate_chars("é€x", 2), "é€");
        assert_eq!(truncate_chars("ab", 5), "ab");
    }
}
