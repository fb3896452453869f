//! The credentials file parser: never panics, and a file it accepts renders
//! to one that parses to the same systems.
#![no_main]

use backupd::auth::credentials::Credentials;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(creds) = Credentials::parse(data) {
        let again = Credentials::parse(creds.render().as_bytes()).expect("rendered file parses");
        assert_eq!(again.names(), creds.names());
        assert_eq!(again.render(), creds.render());
    }
});
