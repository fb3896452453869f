//! `BackupId`: the only spelling of a backup id the server accepts.

use std::fmt;
use std::str::FromStr;

use uuid::{Uuid, Variant, Version};

/// The extensions a backup may carry, in the one spelling each is accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Extension {
    /// `.tar.gz`
    TarGz,
    /// `.tar.xz`
    TarXz,
    /// `.tar.bz2`
    TarBz2,
    /// `.tar.zst`
    TarZst,
    /// `.gpg`
    Gpg,
    /// `.bin`
    Bin,
}

impl Extension {
    /// Every extension, for tests and documentation.
    pub const ALL: [Extension; 6] = [
        Extension::TarGz,
        Extension::TarXz,
        Extension::TarBz2,
        Extension::TarZst,
        Extension::Gpg,
        Extension::Bin,
    ];

    /// The extension without its leading dot.
    pub fn as_str(self) -> &'static str {
        match self {
            Extension::TarGz => "tar.gz",
            Extension::TarXz => "tar.xz",
            Extension::TarBz2 => "tar.bz2",
            Extension::TarZst => "tar.zst",
            Extension::Gpg => "gpg",
            Extension::Bin => "bin",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.as_str() == s)
    }
}

/// A backup id: `<uuid>.<ext>`, the UUID canonical (lowercase, hyphenated),
/// version 7, RFC 4122 variant, and `<ext>` one of [`Extension`].
///
/// Built only by parsing, and only from exactly the string it renders to, so
/// a `BackupId` is always one safe path component (`[0-9a-z.-]`, no `..`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BackupId {
    uuid: Uuid,
    ext: Extension,
}

/// Why a string is not a backup id. Deliberately carries no detail: the
/// client gets one message for every wrong spelling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidBackupId;

impl fmt::Display for InvalidBackupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid backup id")
    }
}

impl std::error::Error for InvalidBackupId {}

/// Length of a hyphenated UUID.
const HYPHENATED_LEN: usize = 36;

impl BackupId {
    /// Builds the id of a new backup (used by tools and tests).
    pub fn new(uuid: Uuid, ext: Extension) -> Result<Self, InvalidBackupId> {
        if uuid.get_version() == Some(Version::SortRand) && uuid.get_variant() == Variant::RFC4122 {
            Ok(BackupId { uuid, ext })
        } else {
            Err(InvalidBackupId)
        }
    }

    /// The UUID part.
    pub fn uuid(&self) -> Uuid {
        self.uuid
    }

    /// The extension.
    pub fn extension(&self) -> Extension {
        self.ext
    }
}

impl FromStr for BackupId {
    type Err = InvalidBackupId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Split by bytes, never by char index: the input is untrusted and may
        // hold multi-byte characters anywhere.
        let bytes = s.as_bytes();
        if bytes.len() <= HYPHENATED_LEN || bytes[HYPHENATED_LEN] != b'.' {
            return Err(InvalidBackupId);
        }
        let uuid_part = &bytes[..HYPHENATED_LEN];
        let ext_part =
            std::str::from_utf8(&bytes[HYPHENATED_LEN + 1..]).map_err(|_| InvalidBackupId)?;
        let ext = Extension::parse(ext_part).ok_or(InvalidBackupId)?;
        let uuid = Uuid::try_parse_ascii(uuid_part).map_err(|_| InvalidBackupId)?;
        // try_parse_ascii accepts several spellings (and either case): accept
        // the one that re-renders to exactly the input.
        let mut canonical = [0u8; HYPHENATED_LEN];
        if uuid.hyphenated().encode_lower(&mut canonical).as_bytes() != uuid_part {
            return Err(InvalidBackupId);
        }
        BackupId::new(uuid, ext)
    }
}

impl fmt::Display for BackupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.uuid.hyphenated(), self.ext.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UUID: &str = "01934fab-bc33-7890-a1b2-c3d4e5f6a7b8";

    #[test]
    fn accepts_every_extension_and_renders_back() {
        for ext in Extension::ALL {
            let s = format!("{UUID}.{}", ext.as_str());
            let id: BackupId = s.parse().unwrap();
            assert_eq!(id.to_string(), s);
            assert_eq!(id.extension(), ext);
        }
    }

    #[test]
    fn rejects_every_other_spelling() {
        let upper = UUID.to_uppercase();
        let simple = UUID.replace('-', "");
        for bad in [
            String::new(),
            UUID.to_string(),
            format!("{UUID}."),
            format!("{upper}.tar.gz"),
            format!("{{{UUID}}}.tar.gz"),
            format!("urn:uuid:{UUID}.tar.gz"),
            format!("{simple}.tar.gz"),
            format!("{UUID}.TAR.GZ"),
            format!("{UUID}.tar"),
            format!("{UUID}.zip"),
            format!("{UUID}.tar.gz "),
            format!(" {UUID}.tar.gz"),
            format!("{UUID}.tar.gz%00"),
            format!("{UUID}.tar.gz\0"),
            format!("{UUID}.tar.gz/"),
            format!("../{UUID}.tar.gz"),
            format!("{UUID}..tar.gz"),
            format!("{UUID}.tar.gz.bin"),
            format!("{UUID}\\.tar.gz"),
            // Version 4, version 1, nil, max.
            "0f8fad5b-d9cb-469f-a165-70867728950e.tar.gz".into(),
            "c232ab00-9414-11ec-b3c8-9f6bdeced846.tar.gz".into(),
            "00000000-0000-0000-0000-000000000000.bin".into(),
            "ffffffff-ffff-ffff-ffff-ffffffffffff.bin".into(),
            // Version 7 with the wrong variant (Microsoft, 0xc_).
            "01934fab-bc33-7890-c1b2-c3d4e5f6a7b8.bin".into(),
            // Multi-byte characters where the dot and digits should be.
            format!("{}\u{ff0e}tar.gz", UUID),
            "01934fab-bc33-7890-a1b2-c3d4e5f6a7b\u{0668}.bin".to_string(),
        ] {
            assert_eq!(bad.parse::<BackupId>(), Err(InvalidBackupId), "{bad:?}");
        }
    }
}
