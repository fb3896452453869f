//! The Authorization header parser: never panics; what it accepts has a
//! non-empty user without a colon, and the same credentials re-encoded
//! parse back to themselves.
#![no_main]

use backupd::auth::parse_basic;
use base64::Engine;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(creds) = parse_basic(data) {
        assert!(!creds.user.is_empty());
        assert!(!creds.user.contains(&b':'));
        let mut pair = creds.user.clone();
        pair.push(b':');
        pair.extend_from_slice(&creds.password);
        let header = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(&pair));
        if header.len() <= backupd::auth::MAX_AUTHORIZATION_BYTES {
            assert_eq!(parse_basic(header.as_bytes()).unwrap(), creds);
        }
    }
});
