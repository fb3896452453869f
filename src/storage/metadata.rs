//! What is known about a stored backup, and the sidecar record that keeps it.
//!
//! The sidecar of backup `<id>` is `.<id>.meta` in the same directory: its
//! name starts with a dot, which no [`BackupId`] can, so no request can ever
//! name it, and it is never listed or served.

use std::time::SystemTime;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use crate::backup_id::BackupId;

/// The only media type backups are stored and served as.
pub const MIMETYPE: &str = "application/octet-stream";

/// Longest sidecar read: a 255-byte filename and a few fields fit easily.
pub const MAX_SIDECAR_BYTES: u64 = 4096;

/// How long a download trusts a sidecar an earlier download read, while the
/// backup file itself is unchanged (same inode, size, mtime and ctime).
/// The server never rewrites a sidecar (`backupd verify` does, to record a
/// failed verification), so this bounds how late such a record, or a
/// sidecar edited or added by hand, is noticed.
pub const SIDECAR_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(10);

/// Most sidecars remembered at once (a few hundred bytes each); at this
/// many the cache starts afresh.
pub const MAX_CACHED_SIDECARS: usize = 1024;

/// A backup as the API describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupInfo {
    /// Its id.
    pub id: BackupId,
    /// The client's file name, sanitised; the id for files dropped in by hand.
    pub filename: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the content, when it was computed at upload.
    pub sha256: Option<[u8; 32]>,
    /// When it was stored (the file's modification time for dropped-in files).
    pub uploaded_at: SystemTime,
    /// `backupd verify` found its content no longer matches `sha256`.
    pub failed_verification: bool,
}

impl BackupInfo {
    /// The JSON object the API returns for this backup.
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id.to_string(),
            "filename": self.filename,
            "size": self.size,
            "sha256": self.sha256.map(hex),
            "mimetype": MIMETYPE,
            "uploaded_at": humantime::format_rfc3339_seconds(self.uploaded_at).to_string(),
        })
    }

    /// `Repr-Digest` value (RFC 9530), when the digest is known.
    pub fn repr_digest(&self) -> Option<String> {
        self.sha256
            .map(|d| format!("sha-256=:{}:", STANDARD.encode(d)))
    }

    /// Describes a file with no (valid) sidecar from its metadata alone.
    pub fn from_file(id: BackupId, size: u64, modified: SystemTime) -> Self {
        BackupInfo {
            id,
            filename: id.to_string(),
            size,
            sha256: None,
            uploaded_at: modified,
            failed_verification: false,
        }
    }

    /// The sidecar's bytes.
    pub fn encode_sidecar(&self) -> Vec<u8> {
        let uploaded = self
            .uploaded_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let mut record = json!({
            "filename": self.filename,
            "size": self.size,
            "sha256": self.sha256.map(hex),
            "uploaded_at_ms": uploaded.as_millis() as u64,
        });
        if self.failed_verification {
            record["failed_verification"] = Value::Bool(true);
        }
        record.to_string().into_bytes()
    }

    /// Reads a sidecar for `id`; `None` if it is malformed or describes a
    /// different size than the file now has (stale: the file was replaced).
    pub fn decode_sidecar(id: BackupId, file_size: u64, bytes: &[u8]) -> Option<Self> {
        let value: Value = serde_json::from_slice(bytes).ok()?;
        let size = value.get("size")?.as_u64()?;
        if size != file_size {
            return None;
        }
        let filename = value.get("filename")?.as_str()?.to_owned();
        let sha256 = match value.get("sha256")? {
            Value::Null => None,
            Value::String(s) => Some(unhex(s)?),
            _ => return None,
        };
        let ms = value.get("uploaded_at_ms")?.as_u64()?;
        let uploaded_at = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(ms);
        let failed_verification = value
            .get("failed_verification")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        Some(BackupInfo {
            id,
            filename,
            size,
            sha256,
            uploaded_at,
            failed_verification,
        })
    }
}

/// The sidecar's file name for `id`.
pub fn sidecar_name(id: &BackupId) -> String {
    format!(".{id}.meta")
}

/// Lowercase hex of a digest.
pub fn hex(bytes: [u8; 32]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sidecar_round_trips_and_goes_stale_with_size() {
        let id: BackupId = "01934fab-bc33-7890-a1b2-c3d4e5f6a7b8.gpg".parse().unwrap();
        let info = BackupInfo {
            id,
            filename: "nightly.gpg".into(),
            size: 42,
            sha256: Some([7; 32]),
            uploaded_at: SystemTime::UNIX_EPOCH
                + std::time::Duration::from_millis(1_700_000_000_123),
            failed_verification: false,
        };
        let bytes = info.encode_sidecar();
        assert_eq!(
            BackupInfo::decode_sidecar(id, 42, &bytes),
            Some(info.clone())
        );
        let failed = BackupInfo {
            failed_verification: true,
            ..info.clone()
        };
        assert_eq!(
            BackupInfo::decode_sidecar(id, 42, &failed.encode_sidecar()),
            Some(failed)
        );
        assert_eq!(BackupInfo::decode_sidecar(id, 43, &bytes), None);
        assert_eq!(BackupInfo::decode_sidecar(id, 42, b"{}"), None);
        assert!(sidecar_name(&id).parse::<BackupId>().is_err());
    }
}
