//! The only builder of object-store keys, and the only reader of listed
//! ones. What cap-std's directory handles guarantee on the filesystem, this
//! module guarantees for a bucket: a system's backups are exactly the keys
//! `PREFIX/SYSTEM/ID`, built from an authenticated [`SystemName`] and a
//! parsed [`BackupId`] and from nothing else, so no request can name a key
//! outside its own system's prefix.
//!
//! Listing a system asks for `PREFIX/SYSTEM/` *with* its trailing slash
//! (`fw1/` never matches `fw10/`), and every key that comes back is parsed
//! again: only the exact canonical spelling of a backup of that system is
//! accepted ([`backup_in`]); anything else in the bucket (another system's
//! key, an upload in progress, an object dropped in by hand under another
//! spelling) is ignored. A foreign id is therefore simply a missing key
//! under the caller's own prefix: the same 404 as an absent one.

use std::fmt;
use std::str::FromStr;

use crate::backup_id::BackupId;
use crate::system_name::SystemName;

/// Longest key prefix accepted, in bytes: keys are at most 1,024 bytes, and
/// a system name (128) and an id (about 45) must fit after it.
pub const MAX_PREFIX_BYTES: usize = 512;

/// The directory-like part of the bucket all of backupd's keys live under
/// (`s3://BUCKET/PREFIX`): zero or more segments of `[A-Za-z0-9._-]`, none
/// of them `.` or `..`, separated by single slashes, without a leading or
/// trailing slash. Empty means the bucket's top.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyPrefix(String);

/// Why a string is not a key prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidPrefix;

impl fmt::Display for InvalidPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a key prefix is segments of A-Z a-z 0-9 . _ - separated by '/', none of them '.' or '..', at most {MAX_PREFIX_BYTES} bytes"
        )
    }
}

impl std::error::Error for InvalidPrefix {}

impl FromStr for KeyPrefix {
    type Err = InvalidPrefix;

    /// Accepts a leading or trailing slash (`s3://bucket/backups/` is
    /// `backups`); nothing else is rewritten.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let trimmed = s.strip_prefix('/').unwrap_or(s);
        let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
        if trimmed.is_empty() {
            // "" or "/": the bucket's top; "//" is no spelling of it.
            return if s.len() <= 1 {
                Ok(KeyPrefix(String::new()))
            } else {
                Err(InvalidPrefix)
            };
        }
        let valid = trimmed.len() <= MAX_PREFIX_BYTES
            && trimmed.split('/').all(|segment| {
                !segment.is_empty()
                    && segment != "."
                    && segment != ".."
                    && segment
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
            });
        if valid {
            Ok(KeyPrefix(trimmed.to_owned()))
        } else {
            Err(InvalidPrefix)
        }
    }
}

impl KeyPrefix {
    /// The prefix as written in keys (no trailing slash); empty for none.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `PREFIX/` (or nothing): what every key of backupd's starts with.
    fn head(&self) -> String {
        if self.0.is_empty() {
            String::new()
        } else {
            format!("{}/", self.0)
        }
    }
}

/// The key of `system`'s backup `id`: `PREFIX/SYSTEM/ID`. The one place a
/// backup's key is made.
pub fn backup_key(prefix: &KeyPrefix, system: &SystemName, id: &BackupId) -> String {
    format!("{}{id}", system_prefix(prefix, system))
}

/// What every key of `system`'s backups starts with, trailing slash
/// included: the `prefix` of a listing.
pub fn system_prefix(prefix: &KeyPrefix, system: &SystemName) -> String {
    format!("{}{system}/", prefix.head())
}

/// The backup a listed `key` is, if it is exactly the canonical key of one
/// of `system`'s backups; `None` for anything else.
pub fn backup_in(prefix: &KeyPrefix, system: &SystemName, key: &str) -> Option<BackupId> {
    let id: BackupId = key
        .strip_prefix(&system_prefix(prefix, system))?
        .parse()
        .ok()?;
    // BackupId accepts only its canonical spelling; rebuilding the key and
    // comparing says so once more, whatever parse accepts in the future.
    (backup_key(prefix, system, &id) == key).then_some(id)
}

/// What a listing of every system's backups at once asks for: the whole
/// prefix, trailing slash included (the whole bucket without a prefix).
pub fn all_systems_prefix(prefix: &KeyPrefix) -> String {
    prefix.head()
}

/// The system and backup a key of such a listing is, if it is exactly the
/// canonical key of one ([`backup_in`] for the system its first segment
/// names); `None` for anything else (uploads in progress, a name that is
/// not a system name, another spelling, a foreign key).
pub fn backup_anywhere(prefix: &KeyPrefix, key: &str) -> Option<(SystemName, BackupId)> {
    let (system, _) = key.strip_prefix(&prefix.head())?.split_once('/')?;
    let system: SystemName = system.parse().ok()?;
    let id = backup_in(prefix, &system, key)?;
    Some((system, id))
}

/// Where uploads in progress go, apart from every system's keys (a system
/// name cannot start with a dot): `PREFIX/.uploads/`.
pub fn uploads_prefix(prefix: &KeyPrefix) -> String {
    format!("{}.uploads/", prefix.head())
}

/// The key of one upload in progress, `PREFIX/.uploads/<uuid>`.
pub fn upload_key(prefix: &KeyPrefix, upload: uuid::Uuid) -> String {
    format!("{}{}", uploads_prefix(prefix), upload.simple())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn system(s: &str) -> SystemName {
        s.parse().unwrap()
    }

    const ID: &str = "01934fab-bc33-7890-a1b2-c3d4e5f6a7b8.tar.gz";

    #[test]
    fn keys_are_prefix_system_id() {
        let id: BackupId = ID.parse().unwrap();
        let none = KeyPrefix::default();
        let some: KeyPrefix = "/site-a/backups/".parse().unwrap();
        assert_eq!(backup_key(&none, &system("fw1"), &id), format!("fw1/{ID}"));
        assert_eq!(
            backup_key(&some, &system("fw1"), &id),
            format!("site-a/backups/fw1/{ID}")
        );
        assert_eq!(system_prefix(&some, &system("fw1")), "site-a/backups/fw1/");
        assert_eq!(uploads_prefix(&some), "site-a/backups/.uploads/");
    }

    #[test]
    fn only_canonical_keys_of_the_system_are_its_backups() {
        let p: KeyPrefix = "p".parse().unwrap();
        let fw1 = system("fw1");
        assert!(backup_in(&p, &fw1, &format!("p/fw1/{ID}")).is_some());
        for other in [
            format!("p/fw10/{ID}"),
            format!("p/fw1/x/{ID}"),
            format!("p/fw1//{ID}"),
            format!("p/FW1/{ID}"),
            format!("p/fw1/{}", ID.to_uppercase()),
            format!("p/fw1/{ID}.meta"),
            format!("p/fw1/.{ID}"),
            format!("fw1/{ID}"),
            format!("/p/fw1/{ID}"),
            format!("p/.uploads/{ID}"),
            "p/fw1/".to_owned(),
            format!("p/fw1/{}", ID.replace('-', "")),
        ] {
            assert_eq!(backup_in(&p, &fw1, &other), None, "{other}");
        }
    }

    #[test]
    fn a_listing_of_the_whole_prefix_names_each_backups_system() {
        let p: KeyPrefix = "p".parse().unwrap();
        let id: BackupId = ID.parse().unwrap();
        assert_eq!(all_systems_prefix(&p), "p/");
        assert_eq!(
            backup_anywhere(&p, &format!("p/fw10/{ID}")),
            Some((system("fw10"), id))
        );
        assert_eq!(
            backup_anywhere(&KeyPrefix::default(), &format!("fw1/{ID}")),
            Some((system("fw1"), id))
        );
        for other in [
            format!("p/.uploads/{ID}"),
            format!("p/fw1/x/{ID}"),
            format!("p/fw1/{}", ID.to_uppercase()),
            format!("p/fw1/{ID}/"),
            format!("p/fw1//{ID}"),
            format!("q/fw1/{ID}"),
            format!("p/{ID}"),
            format!("p/../fw1/{ID}"),
            format!("p/fw 1/{ID}"),
            "p/fw1/notes.txt".to_owned(),
        ] {
            assert_eq!(backup_anywhere(&p, &other), None, "{other}");
        }
    }

    #[test]
    fn prefixes_have_one_spelling_and_no_traversal() {
        for ok in ["", "/", "a", "a/b", "a.b/c_d-e", "/a/b/"] {
            assert!(ok.parse::<KeyPrefix>().is_ok(), "{ok:?}");
        }
        for bad in [
            "a//b",
            "a/../b",
            "..",
            ".",
            "a/./b",
            "a b",
            "a\\b",
            "a%2fb",
            "é",
            "//",
            &"a".repeat(MAX_PREFIX_BYTES + 1),
        ] {
            assert!(bad.parse::<KeyPrefix>().is_err(), "{bad:?}");
        }
    }
}
