//! Range, If-Range and If-None-Match handling: never panics, and a partial
//! selection always lies inside the body.
#![no_main]

use std::time::{Duration, SystemTime};

use backupd::http::ranges::{Selection, not_modified, select};
use hyper::header::{HeaderMap, HeaderValue, IF_NONE_MATCH, IF_RANGE, RANGE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (u64, Vec<u8>, Vec<u8>, Vec<u8>)| {
    let (len, range, if_range, if_none_match) = input;
    let len = len % (1 << 44);
    let mut headers = HeaderMap::new();
    for (name, value) in [(RANGE, range), (IF_RANGE, if_range), (IF_NONE_MATCH, if_none_match)] {
        if let Ok(value) = HeaderValue::from_bytes(&value) {
            headers.insert(name, value);
        }
    }
    let modified = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let _ = not_modified(&headers, "\"etag\"");
    match select(&headers, len, "\"etag\"", modified) {
        Selection::Partial { start, end } => assert!(start <= end && end < len),
        Selection::Full | Selection::Unsatisfiable => {}
    }
});
