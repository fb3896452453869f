//! X-Filename and Content-Digest handling: never panics; a stored file
//! name is never empty, never a dot-only name, at most 255 bytes of
//! `[A-Za-z0-9._-]`, and contains no path separator.
#![no_main]

use backupd::service::upload::{MAX_FILENAME_BYTES, expected_digest, extension_for, sanitize_filename};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let name = sanitize_filename(Some(data), uuid::Uuid::nil());
    assert!(!name.is_empty() && name.len() <= MAX_FILENAME_BYTES);
    assert!(!name.bytes().all(|b| b == b'.'));
    assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')));
    let _ = extension_for(Some(&name));
    let _ = expected_digest(Some(data));
});
