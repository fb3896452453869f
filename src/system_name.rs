//! `SystemName`: the only spelling of a registered system's name.

use std::fmt;
use std::str::FromStr;

/// Longest system name, in bytes.
pub const MAX_SYSTEM_NAME_LEN: usize = 128;

/// A system's name: `[A-Za-z0-9][A-Za-z0-9._-]{0,127}`.
///
/// The first character cannot be `.`, so a name is never `.`, `..` or a
/// hidden file, and no name contains `/`, `\`, `:` or NUL: a name is always
/// one safe path component and never splits a `name:secret` pair.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SystemName(String);

/// Why a string is not a system name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidSystemName;

impl fmt::Display for InvalidSystemName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a system name is 1 to {MAX_SYSTEM_NAME_LEN} characters of A-Z a-z 0-9 . _ -, starting with a letter or digit"
        )
    }
}

impl std::error::Error for InvalidSystemName {}

impl SystemName {
    /// The name as a string: also its directory name in the storage root.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `other` is the same name ignoring ASCII case. Names are
    /// unique by this test: on a case-folding filesystem (ext4 casefold,
    /// CIFS, some NAS mounts) `FW1` and `fw1` are one directory.
    pub fn same_ignoring_case(&self, other: &SystemName) -> bool {
        self.0.eq_ignore_ascii_case(&other.0)
    }

    /// Parses raw bytes (from an `Authorization` header, say).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, InvalidSystemName> {
        let (first, rest) = bytes.split_first().ok_or(InvalidSystemName)?;
        let valid = bytes.len() <= MAX_SYSTEM_NAME_LEN
            && first.is_ascii_alphanumeric()
            && rest
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !valid {
            return Err(InvalidSystemName);
        }
        // Every byte is ASCII, checked above.
        let name = std::str::from_utf8(bytes).map_err(|_| InvalidSystemName)?;
        Ok(SystemName(name.to_owned()))
    }
}

impl FromStr for SystemName {
    type Err = InvalidSystemName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_bytes(s.as_bytes())
    }
}

impl fmt::Display for SystemName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_alphabet() {
        for ok in ["a", "Z9", "fw-01.example_com", &"a".repeat(128), "a..b"] {
            assert_eq!(ok.parse::<SystemName>().unwrap().as_str(), ok);
        }
    }

    #[test]
    fn rejects_everything_else() {
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "-a",
            "_a",
            "a/b",
            "a\\b",
            "a:b",
            "a b",
            "a\0",
            "é",
            &"a".repeat(129),
            "foo/config",
            "a\n",
        ] {
            assert!(bad.parse::<SystemName>().is_err(), "{bad:?}");
        }
    }
}
