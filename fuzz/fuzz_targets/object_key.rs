//! The object-store key function: for any prefix, system and id it accepts,
//! the key stays under that system's prefix (trailing slash included, so
//! `fw1/` never covers `fw10/`) and reads back as the same id; a listed key
//! is taken for a backup only in its one canonical spelling, and never for
//! another system's. A key of a listing of the whole prefix is taken for
//! one system's backup under the same rule.
//!
//! Input: prefix, system, id, other system and a listed key, separated by
//! 0xff bytes.
#![no_main]

use backupd::backup_id::BackupId;
use backupd::storage::key::{
    KeyPrefix, all_systems_prefix, backup_anywhere, backup_in, backup_key, system_prefix,
    uploads_prefix,
};
use backupd::system_name::SystemName;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.split(|&b| b == 0xff).map(|p| std::str::from_utf8(p).ok());
    let mut next = || parts.next().flatten();
    let (Some(prefix), Some(system), id, other, listed) = (next(), next(), next(), next(), next())
    else {
        return;
    };
    let Ok(prefix) = prefix.parse::<KeyPrefix>() else { return };
    let Ok(system) = system.parse::<SystemName>() else { return };
    let own = system_prefix(&prefix, &system);
    assert!(own.ends_with('/'));
    assert!(!own.starts_with('/'));
    assert!(!own.contains("//") && !own.contains("/../") && !own.contains("/./"));
    if let Some(id) = id.and_then(|i| i.parse::<BackupId>().ok()) {
        let key = backup_key(&prefix, &system, &id);
        assert!(key.starts_with(&own), "{key} outside {own}");
        assert_eq!(&key[own.len()..], id.to_string());
        assert_eq!(backup_in(&prefix, &system, &key), Some(id));
        assert_eq!(backup_anywhere(&prefix, &key), Some((system.clone(), id)));
        assert!(key.starts_with(&all_systems_prefix(&prefix)));
        assert!(!key.starts_with(&uploads_prefix(&prefix)));
        if let Some(other) = other.and_then(|o| o.parse::<SystemName>().ok())
            && other != system
        {
            assert_eq!(backup_in(&prefix, &other, &key), None, "{other} reads {key}");
            assert!(!key.starts_with(&system_prefix(&prefix, &other)));
        }
    }
    if let Some(listed) = listed
        && let Some(id) = backup_in(&prefix, &system, listed)
    {
        assert_eq!(listed, backup_key(&prefix, &system, &id), "not canonical");
        assert!(listed.starts_with(&own));
    }
    if let Some(listed) = listed
        && let Some((owner, id)) = backup_anywhere(&prefix, listed)
    {
        assert_eq!(listed, backup_key(&prefix, &owner, &id), "not canonical");
        assert_eq!(backup_in(&prefix, &owner, listed), Some(id));
        if owner != system {
            assert_eq!(backup_in(&prefix, &system, listed), None, "{system} reads {listed}");
        }
    }
});
