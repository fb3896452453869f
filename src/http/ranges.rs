//! Conditional and range requests on a backup: `ETag`, `Last-Modified`,
//! `If-None-Match`, `Range` and `If-Range` (RFC 9110, sections 8.8, 13, 14).
//!
//! One range per request: a request for several ranges gets the whole body
//! (200), which the RFC allows and every resuming client handles.

use std::time::SystemTime;

use hyper::header::{HeaderMap, IF_NONE_MATCH, IF_RANGE, RANGE};

/// A strong validator for a file: changes when its size, modification time
/// or inode does, which covers replacement by rename and rewrites.
pub fn etag(len: u64, modified: SystemTime, ino: u64) -> String {
    let nanos = modified
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("\"{len:x}-{nanos:x}-{ino:x}\"")
}

/// `Last-Modified` value.
pub fn last_modified(modified: SystemTime) -> String {
    httpdate::fmt_http_date(modified)
}

/// Whether `If-None-Match` matches `etag` (weak comparison), so a GET or
/// HEAD should answer 304.
pub fn not_modified(headers: &HeaderMap, etag: &str) -> bool {
    headers.get_all(IF_NONE_MATCH).iter().any(|value| {
        value.to_str().is_ok_and(|list| {
            list.split(',')
                .map(str::trim)
                .any(|tag| tag == "*" || tag.trim_start_matches("W/") == etag)
        })
    })
}

/// What part of the body to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    /// All of it (no usable Range, several ranges, or a stale If-Range).
    Full,
    /// Bytes `start..=end`.
    Partial {
        /// First byte.
        start: u64,
        /// Last byte, inclusive.
        end: u64,
    },
    /// A well-formed range that lies outside the body: 416.
    Unsatisfiable,
}

/// Decides what to send of a `len`-byte body with validators `etag` and
/// `modified`.
pub fn select(headers: &HeaderMap, len: u64, etag: &str, modified: SystemTime) -> Selection {
    let mut ranges = headers.get_all(RANGE).iter();
    let (Some(range), None) = (ranges.next(), ranges.next()) else {
        return Selection::Full;
    };
    if let Some(if_range) = headers.get(IF_RANGE) {
        let Ok(validator) = if_range.to_str() else {
            return Selection::Full;
        };
        let fresh = if validator.starts_with('"') {
            validator == etag
        } else {
            httpdate::parse_http_date(validator)
                .is_ok_and(|date| date == truncate_to_seconds(modified))
        };
        if !fresh {
            return Selection::Full;
        }
    }
    range
        .to_str()
        .ok()
        .and_then(|r| parse_single(r, len))
        .unwrap_or(Selection::Full)
}

fn truncate_to_seconds(t: SystemTime) -> SystemTime {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs)
}

/// Parses `bytes=a-b`, `bytes=a-` or `bytes=-n`; `None` for anything the
/// RFC says to ignore (bad syntax, other units, several ranges).
fn parse_single(value: &str, len: u64) -> Option<Selection> {
    let (unit, spec) = value.split_once('=')?;
    if !unit.trim().eq_ignore_ascii_case("bytes") || spec.contains(',') {
        return None;
    }
    let (first, last) = spec.trim().split_once('-')?;
    let digits = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    if first.is_empty() {
        let suffix = digits(last)?;
        if suffix == 0 || len == 0 {
            return Some(Selection::Unsatisfiable);
        }
        return Some(Selection::Partial {
            start: len - suffix.min(len),
            end: len - 1,
        });
    }
    let start = digits(first)?;
    let end = if last.is_empty() {
        u64::MAX
    } else {
        digits(last)?
    };
    if end < start {
        return None;
    }
    if start >= len {
        return Some(Selection::Unsatisfiable);
    }
    Some(Selection::Partial {
        start,
        end: end.min(len - 1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::{HeaderName, HeaderValue};

    fn with(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn single_ranges() {
        let t = SystemTime::UNIX_EPOCH;
        let e = "\"x\"";
        let sel = |r: &str| select(&with(&[("range", r)]), 100, e, t);
        assert_eq!(sel("bytes=0-9"), Selection::Partial { start: 0, end: 9 });
        assert_eq!(sel("bytes=90-"), Selection::Partial { start: 90, end: 99 });
        assert_eq!(
            sel("bytes=90-1000"),
            Selection::Partial { start: 90, end: 99 }
        );
        assert_eq!(sel("bytes=-10"), Selection::Partial { start: 90, end: 99 });
        assert_eq!(sel("bytes=-1000"), Selection::Partial { start: 0, end: 99 });
        assert_eq!(sel("BYTES=1-1"), Selection::Partial { start: 1, end: 1 });
        assert_eq!(sel("bytes=100-"), Selection::Unsatisfiable);
        assert_eq!(sel("bytes=-0"), Selection::Unsatisfiable);
        for ignored in [
            "bytes=5-1",
            "bytes=a-b",
            "items=0-1",
            "bytes=0-1,5-6",
            "bytes=--1",
            "bytes=+1-2",
            "bytes 0-1",
        ] {
            assert_eq!(sel(ignored), Selection::Full, "{ignored}");
        }
        let two = with(&[("range", "bytes=0-1"), ("range", "bytes=2-3")]);
        assert_eq!(select(&two, 100, e, t), Selection::Full);
    }

    #[test]
    fn if_range_and_if_none_match() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_500);
        let e = etag(100, t, 7);
        let date = last_modified(t);
        let fresh = with(&[("range", "bytes=0-9"), ("if-range", &e)]);
        assert_eq!(
            select(&fresh, 100, &e, t),
            Selection::Partial { start: 0, end: 9 }
        );
        let by_date = with(&[("range", "bytes=0-9"), ("if-range", &date)]);
        assert_eq!(
            select(&by_date, 100, &e, t),
            Selection::Partial { start: 0, end: 9 }
        );
        let stale = with(&[("range", "bytes=0-9"), ("if-range", "\"other\"")]);
        assert_eq!(select(&stale, 100, &e, t), Selection::Full);
        assert!(not_modified(
            &with(&[("if-none-match", &format!("\"a\", W/{e}"))]),
            &e
        ));
        assert!(not_modified(&with(&[("if-none-match", "*")]), &e));
        assert!(!not_modified(&with(&[("if-none-match", "\"a\"")]), &e));
    }
}
