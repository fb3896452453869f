//! The id parser: never panics, and whatever it accepts re-renders to
//! exactly the input (one spelling per id).
#![no_main]

use backupd::backup_id::BackupId;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(id) = text.parse::<BackupId>() {
        assert_eq!(id.to_string(), text);
        assert_eq!(id.uuid().get_version_num(), 7);
        assert!(text.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'));
        assert!(!text.contains(".."));
    }
});
