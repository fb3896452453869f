//! The certificate expiry reader: any bytes give a time or `None`, never a
//! panic; a time it gives is a valid instant (at most the year 9999's end).
#![no_main]

use backupd::http::certificate::not_after;
use libfuzzer_sys::fuzz_target;

/// 9999-12-31T23:59:60Z, the latest a GeneralizedTime can say.
const LATEST: u64 = 253_402_300_800;

fuzz_target!(|data: &[u8]| {
    if let Some(t) = not_after(data) {
        assert!(t <= LATEST);
    }
});
