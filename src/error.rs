//! The errors a request can end in, and their JSON envelope.
//!
//! Each variant maps to exactly one status and body. Bodies never carry a
//! path, a secret or an I/O error's text: those go to the log only.

use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};
use serde_json::json;

use crate::config::{MAX_ECHOED_ID_CHARS, RETRY_AFTER_SECONDS};
use crate::http::body::Body;

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
    /// A `Content-Digest` header that cannot be read: 400.
    MalformedDigest,
    /// An upload larger than `--max-upload-bytes`: 413.
    UploadTooLarge {
        /// The limit.
        max_bytes: u64,
    },
    /// An upload that would exceed the system's quota: 413.
    QuotaExceeded,
    /// Too many uploads from this system: 429 with `Retry-After`.
    RateLimited {
        /// Seconds until the next upload is admitted.
        retry_after_seconds: u64,
    },
    /// The system has its most downloads in flight: 429 with `Retry-After`.
    TooManyDownloads {
        /// Seconds to wait before trying again.
        retry_after_seconds: u64,
    },
    /// The body was shorter or longer than `Content-Length`: 400.
    LengthMismatch,
    /// The body does not match `Content-Digest`: 400.
    ChecksumMismatch,
    /// The filesystem is full: 507.
    InsufficientStorage,
    /// DELETE on an append-only server: 403.
    AppendOnly,
    /// A range outside the backup: 416 with `Content-Range: bytes */len`.
    RangeNotSatisfiable {
        /// The backup's length.
        len: u64,
    },
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
            Error::UploadTooLarge { .. } | Error::QuotaExceeded => StatusCode::PAYLOAD_TOO_LARGE,
            Error::RateLimited { .. } | Error::TooManyDownloads { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Error::LengthMismatch | Error::ChecksumMismatch | Error::MalformedDigest => {
                StatusCode::BAD_REQUEST
            }
            Error::InsufficientStorage => StatusCode::INSUFFICIENT_STORAGE,
            Error::AppendOnly => StatusCode::FORBIDDEN,
            Error::RangeNotSatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
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
                let (message, data) = match other {
                    Error::RouteNotFound => ("not found", json!({})),
                    Error::MethodNotAllowed { .. } => ("method not allowed", json!({})),
                    Error::Unauthorized => ("invalid token", json!({})),
                    Error::BackupNotFound => ("backup not found", json!({})),
                    Error::StorageUnavailable => ("backup storage unavailable", json!({})),
                    Error::UploadTooLarge { max_bytes } => (
                        "backup exceeds max upload size",
                        json!({ "max_bytes": max_bytes }),
                    ),
                    Error::QuotaExceeded => ("backup quota exceeded", json!({})),
                    Error::RateLimited {
                        retry_after_seconds,
                    } => (
                        "upload rate limit exceeded",
                        json!({ "retry_after_seconds": retry_after_seconds }),
                    ),
                    Error::TooManyDownloads {
                        retry_after_seconds,
                    } => (
                        "too many concurrent downloads",
                        json!({ "retry_after_seconds": retry_after_seconds }),
                    ),
                    Error::LengthMismatch => ("upload length mismatch", json!({})),
                    Error::ChecksumMismatch => ("checksum mismatch", json!({})),
                    Error::MalformedDigest => ("malformed Content-Digest", json!({})),
                    Error::InsufficientStorage => ("insufficient storage", json!({})),
                    Error::AppendOnly => ("append-only", json!({})),
                    Error::RangeNotSatisfiable { .. } => ("range not satisfiable", json!({})),
                    Error::InvalidId { .. } => unreachable!("handled above"),
                };
                json!({ "code": code, "message": message, "data": data })
            }
        }
    }

    /// The complete response: status, JSON body, and the headers the
    /// contract ties to this status.
    pub fn into_response(self) -> Response<Body> {
        let mut response = json_response(self.status(), &self.body());
        let headers = response.headers_mut();
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
            Error::RateLimited {
                retry_after_seconds,
            }
            | Error::TooManyDownloads {
                retry_after_seconds,
            } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_seconds));
            }
            Error::RangeNotSatisfiable { len } => {
                let value = format!("bytes */{len}");
                headers.insert(
                    header::CONTENT_RANGE,
                    HeaderValue::from_str(&value).expect("digits"),
                );
            }
            _ => {}
        }
        response
    }
}

/// A JSON response with the headers every JSON answer carries.
pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Body> {
    let mut response = Response::new(Body::full(body.to_string()));
    *response.status_mut() = status;
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
    response
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
