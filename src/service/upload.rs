//! Receiving an upload: the client's file name made harmless, the backup's
//! extension, the `Content-Digest` check, and the body streamed into
//! storage with its SHA-256 computed on the way.
//!
//! Three stages run at once: the connection's task copies the body into a
//! chunk while the chunk before is hashed on one thread of the blocking
//! pool and written on another. An upload owns two chunks, reused, so
//! memory stays flat, and a slow upload holds no thread while it waits
//! for its client.

use std::time::SystemTime;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use std::sync::Arc;

use bytes::Bytes;
use http_body::Body;
use http_body_util::BodyExt;
use sha2::{Digest, Sha256, Sha512};
use uuid::Uuid;

use crate::backup_id::{BackupId, Extension};
use crate::config::{UPLOAD_STALL_TIMEOUT, WRITE_CHUNK_BYTES};
use crate::storage::chunk::Chunk;
use crate::storage::metadata::BackupInfo;
use crate::storage::{PartialUpload, StoreError};

/// Longest stored file name, in bytes (a common filesystem's name limit).
pub const MAX_FILENAME_BYTES: usize = 255;

/// Other spellings of the known extensions, as tools write them: `.tgz`
/// is a `.tar.gz`, and so on (uploads and `backupd import` alike).
pub const EXTENSION_ALIASES: [(&str, Extension); 6] = [
    ("tgz", Extension::TarGz),
    ("txz", Extension::TarXz),
    ("tbz", Extension::TarBz2),
    ("tbz2", Extension::TarBz2),
    ("tzst", Extension::TarZst),
    ("pgp", Extension::Gpg),
];

/// The extension a backup gets from the client's file name (its own
/// extensions, then [`EXTENSION_ALIASES`]); `.bin` when it names none of
/// them.
pub fn extension_for(filename: Option<&str>) -> Extension {
    let Some(name) = filename else {
        return Extension::Bin;
    };
    let own = [
        Extension::TarGz,
        Extension::TarXz,
        Extension::TarBz2,
        Extension::TarZst,
        Extension::Gpg,
    ]
    .map(|ext| (ext.as_str(), ext));
    own.into_iter()
        .chain(EXTENSION_ALIASES)
        .find(|(suffix, _)| {
            name.strip_suffix(suffix)
                .is_some_and(|rest| rest.ends_with('.'))
        })
        .map_or(Extension::Bin, |(_, ext)| ext)
}

/// The file name kept for a backup: the last path component of what the
/// client sent (either separator), every byte outside `[A-Za-z0-9._-]`
/// replaced by `_`, at most [`MAX_FILENAME_BYTES`]; `backup-<uuid>` when
/// nothing usable is left. It is only ever data, never a path.
pub fn sanitize_filename(raw: Option<&[u8]>, uuid: Uuid) -> String {
    let fallback = || format!("backup-{}", uuid.hyphenated());
    let Some(raw) = raw else { return fallback() };
    let last = raw
        .rsplit(|&b| b == b'/' || b == b'\\')
        .next()
        .unwrap_or_default();
    let mut name: String = last
        .iter()
        .map(|&b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
                b as char
            } else {
                '_'
            }
        })
        .collect();
    name.truncate(MAX_FILENAME_BYTES);
    if name.is_empty() || name.bytes().all(|b| b == b'.') {
        return fallback();
    }
    name
}

/// The digests a `Content-Digest` header (RFC 9530) asks for: every
/// member we compute is checked, the others are ignored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExpectedDigest {
    /// `sha-256=:<base64>:`.
    pub sha256: Option<[u8; 32]>,
    /// `sha-512=:<base64>:`.
    pub sha512: Option<[u8; 64]>,
}

/// A `Content-Digest` header we cannot read: not ASCII, or a `sha-256` or
/// `sha-512` member that is not a byte sequence (`:<base64>:`) of the
/// algorithm's length. Answered 400 before the body is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MalformedDigest;

/// Reads the `sha-256` and `sha-512` members of a `Content-Digest` value.
pub fn expected_digest(value: Option<&[u8]>) -> Result<ExpectedDigest, MalformedDigest> {
    let mut expected = ExpectedDigest::default();
    let Some(value) = value else {
        return Ok(expected);
    };
    let value = std::str::from_utf8(value).map_err(|_| MalformedDigest)?;
    for member in value.split(',') {
        let (algorithm, digest) = member.trim().split_once('=').unwrap_or((member.trim(), ""));
        let algorithm = algorithm.trim().to_ascii_lowercase();
        if algorithm != "sha-256" && algorithm != "sha-512" {
            continue;
        }
        let bytes = digest
            .trim()
            .strip_prefix(':')
            .and_then(|d| d.strip_suffix(':'))
            .and_then(|d| STANDARD.decode(d).ok())
            .ok_or(MalformedDigest)?;
        if algorithm == "sha-256" {
            expected.sha256 = Some(bytes.try_into().map_err(|_| MalformedDigest)?);
        } else {
            expected.sha512 = Some(bytes.try_into().map_err(|_| MalformedDigest)?);
        }
    }
    Ok(expected)
}

/// Why an upload's body was not stored.
#[derive(Debug)]
pub enum ReceiveError {
    /// The body ended early, ran long, failed or stalled.
    LengthMismatch(String),
    /// A body without a length grew past `--max-upload-bytes`.
    TooLarge,
    /// A body without a length grew past the system's quota.
    OverQuota,
    /// The content does not match `Content-Digest`.
    ChecksumMismatch,
    /// Writing failed.
    Store(StoreError),
}

/// How much of a body without a length is allowed, and which limit a
/// longer one breaks.
#[derive(Debug, Clone, Copy)]
pub struct StreamLimits {
    /// `--max-upload-bytes`.
    pub max_bytes: u64,
    /// The room left in the system's quota (`u64::MAX` without one).
    pub quota_room: u64,
}

/// A body received whole.
pub struct Received {
    /// The upload, ready for its commit.
    pub partial: PartialUpload,
    /// Its SHA-256.
    pub sha256: [u8; 32],
    /// Its length.
    pub size: u64,
}

/// The hashes computed over a body.
struct Hashes {
    sha256: Sha256,
    /// Only when the client sent a `sha-512` to check.
    sha512: Option<Sha512>,
}

impl Hashes {
    fn update(&mut self, data: &[u8]) {
        self.sha256.update(data);
        if let Some(h) = &mut self.sha512 {
            h.update(data);
        }
    }
}

/// Streams `body` into `partial` and returns the partial upload with the
/// content's SHA-256 and length. With `Content-Length` the body must be
/// exactly that long; without one it may be up to `limits`, and is refused
/// (nothing kept) the moment it grows past them. Memory stays flat: one
/// chunk of [`WRITE_CHUNK_BYTES`] being written, one being filled.
pub async fn receive<B>(
    mut body: B,
    partial: PartialUpload,
    length: Option<u64>,
    limits: StreamLimits,
    expected: ExpectedDigest,
) -> Result<Received, ReceiveError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let hashes = Hashes {
        sha256: Sha256::new(),
        sha512: expected.sha512.map(|_| Sha512::new()),
    };
    let mut writer = Writer {
        idle: Some((partial, hashes)),
        busy: None,
        spare: None,
    };
    let read = read_into(&mut body, length, limits, &mut writer).await;
    // Whatever happened, the chunk in the pool is finished first: a failed
    // upload is removed before its answer is sent.
    let written = writer.settle().await;
    let size = read?;
    written.map_err(ReceiveError::Store)?;
    let (partial, hashes) = writer.idle.take().expect("settled");
    let sha256: [u8; 32] = hashes.sha256.finalize().into();
    if expected.sha256.is_some_and(|want| want != sha256) {
        return Err(ReceiveError::ChecksumMismatch);
    }
    if let (Some(want), Some(hasher)) = (expected.sha512, hashes.sha512)
        && want[..] != hasher.finalize()[..]
    {
        return Err(ReceiveError::ChecksumMismatch);
    }
    Ok(Received {
        partial,
        sha256,
        size,
    })
}

/// Reads `body` (exactly `length` bytes when given, else up to `limits`),
/// copying it into chunks of [`WRITE_CHUNK_BYTES`] that go to `writer`;
/// returns its length.
///
/// Why copy: holding hyper's frames until their batch was written kept its
/// read buffers alive, so it allocated new ones for every read and freed
/// the old ones on the writing thread. With 8 uploads the worker's peak
/// RSS grew to 38-50 MiB of allocator churn (bench/RESULTS.md). Copied,
/// each frame is dropped on the thread that allocated it, hyper reuses
/// one buffer per connection, and an upload holds exactly its two chunks,
/// which stay in the cache between the copy, the hash and the write.
async fn read_into<B>(
    body: &mut B,
    length: Option<u64>,
    limits: StreamLimits,
    writer: &mut Writer,
) -> Result<u64, ReceiveError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut chunk = writer.spare();
    let mut received: u64 = 0;
    loop {
        let frame = match tokio::time::timeout(UPLOAD_STALL_TIMEOUT, body.frame()).await {
            Err(_) => return Err(ReceiveError::LengthMismatch("body stalled".into())),
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(ReceiveError::LengthMismatch(format!("body failed: {e}")));
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        received += data.len() as u64;
        match length {
            Some(declared) if received > declared => {
                return Err(ReceiveError::LengthMismatch(
                    "more bytes than Content-Length".into(),
                ));
            }
            None if received > limits.max_bytes => return Err(ReceiveError::TooLarge),
            None if received > limits.quota_room => return Err(ReceiveError::OverQuota),
            _ => {}
        }
        let mut rest = &data[..];
        while !rest.is_empty() {
            rest = &rest[chunk.fill(rest)..];
            if chunk.is_full() {
                writer.submit(chunk).await.map_err(ReceiveError::Store)?;
                chunk = writer.spare();
            }
        }
    }
    if let Some(declared) = length
        && received != declared
    {
        return Err(ReceiveError::LengthMismatch(format!(
            "{received} of {declared} bytes"
        )));
    }
    writer.submit(chunk).await.map_err(ReceiveError::Store)?;
    Ok(received)
}

/// Hashes and writes chunks on the blocking pool, one at a time, while the
/// caller fills the next. The hash and the write of a chunk run at once,
/// on two threads, sharing it: SHA-256 runs at about the disk's speed, so
/// doing one after the other on one thread halved the pipeline's speed
/// (bench/RESULTS.md, issue 16).
struct Writer {
    /// The upload and its hashes, when no chunk is being written.
    idle: Option<(PartialUpload, Hashes)>,
    /// The chunk being hashed and written; they hand them back.
    busy: Option<InFlight>,
    /// A written chunk, to fill again.
    spare: Option<Chunk>,
}

/// One chunk's two halves on the blocking pool.
struct InFlight {
    chunk: Arc<Chunk>,
    write: tokio::task::JoinHandle<Result<PartialUpload, StoreError>>,
    hash: tokio::task::JoinHandle<Hashes>,
}

impl Writer {
    /// An empty chunk to fill: the last one written, when the store gave it
    /// back (the filesystem does; the object store keeps it until sent).
    fn spare(&mut self) -> Chunk {
        let mut chunk = self
            .spare
            .take()
            .unwrap_or_else(|| Chunk::with_capacity(WRITE_CHUNK_BYTES));
        chunk.clear();
        chunk
    }

    /// Starts hashing and writing `chunk` once the one before it is done.
    async fn submit(&mut self, chunk: Chunk) -> Result<(), StoreError> {
        self.settle().await?;
        let Some((mut partial, mut hashes)) = self.idle.take() else {
            return Err(StoreError::NotFound);
        };
        let chunk = Arc::new(chunk);
        let (to_hash, to_write) = (Arc::clone(&chunk), Arc::clone(&chunk));
        let hash = tokio::task::spawn_blocking(move || {
            hashes.update(to_hash.as_slice());
            hashes
        });
        let write = tokio::task::spawn_blocking(move || {
            // On an error the upload is dropped here, which removes it.
            partial.write(&to_write)?;
            Ok(partial)
        });
        self.busy = Some(InFlight { chunk, write, hash });
        Ok(())
    }

    /// Waits for the chunk being hashed and written, if any.
    async fn settle(&mut self) -> Result<(), StoreError> {
        if let Some(InFlight { chunk, write, hash }) = self.busy.take() {
            let (written, hashed) = tokio::join!(write, hash);
            let lost =
                |e: tokio::task::JoinError| StoreError::Unavailable(std::io::Error::other(e));
            let partial = written.unwrap_or_else(|e| Err(lost(e)))?;
            let hashes = hashed.map_err(lost)?;
            self.idle = Some((partial, hashes));
            self.spare = Arc::try_unwrap(chunk).ok();
        }
        Ok(())
    }
}

/// The record of a freshly received backup.
pub fn new_info(id: BackupId, filename: String, size: u64, sha256: [u8; 32]) -> BackupInfo {
    BackupInfo {
        id,
        filename,
        size,
        sha256: Some(sha256),
        uploaded_at: SystemTime::now(),
        failed_verification: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filenames_come_out_harmless() {
        let u = Uuid::nil();
        let s = |raw: &[u8]| sanitize_filename(Some(raw), u);
        assert_eq!(s(b"nightly.tar.gz"), "nightly.tar.gz");
        assert_eq!(s(b"../../etc/passwd"), "passwd");
        assert_eq!(s(b"C:\\Windows\\evil.tar.gz"), "evil.tar.gz");
        assert_eq!(s(b"a\r\nSet-Cookie: x"), "a__Set-Cookie__x");
        // The `/` of the closing tag is a separator: only `script>.gpg` stays.
        assert_eq!(s(b"<script>alert(1)</script>.gpg"), "script_.gpg");
        assert_eq!(
            s(b"<b onmouseover=alert(1)>x.gpg"),
            "_b_onmouseover_alert_1__x.gpg"
        );
        assert_eq!(s("caf\u{e9}.bin".as_bytes()), "caf__.bin");
        assert_eq!(s(b".."), format!("backup-{}", u.hyphenated()));
        assert_eq!(s(b"dir/"), format!("backup-{}", u.hyphenated()));
        assert_eq!(s(&[b'a'; 300]).len(), MAX_FILENAME_BYTES);
        assert_eq!(
            sanitize_filename(None, u),
            format!("backup-{}", u.hyphenated())
        );
    }

    #[test]
    fn extensions_come_from_the_filename() {
        assert_eq!(extension_for(Some("x.tar.gz")), Extension::TarGz);
        assert_eq!(extension_for(Some("x.tar.zst")), Extension::TarZst);
        assert_eq!(extension_for(Some("x.gpg")), Extension::Gpg);
        assert_eq!(extension_for(Some("x.tar")), Extension::Bin);
        assert_eq!(extension_for(Some("nightly.tgz")), Extension::TarGz);
        assert_eq!(extension_for(Some("a.txz")), Extension::TarXz);
        assert_eq!(extension_for(Some("a.tbz")), Extension::TarBz2);
        assert_eq!(extension_for(Some("a.tbz2")), Extension::TarBz2);
        assert_eq!(extension_for(Some("a.tzst")), Extension::TarZst);
        assert_eq!(extension_for(Some("a.pgp")), Extension::Gpg);
        assert_eq!(extension_for(Some("tgz")), Extension::Bin);
        assert_eq!(extension_for(Some("a.xtgz")), Extension::Bin);
        assert_eq!(extension_for(Some("x.TAR.GZ")), Extension::Bin);
        assert_eq!(extension_for(None), Extension::Bin);
    }

    #[test]
    fn content_digest_members() {
        let d = [3u8; 32];
        let e = [4u8; 64];
        let v = format!(
            "sha-512=:{}:, sha-256=:{}:, unixsum=:AAAA:",
            STANDARD.encode(e),
            STANDARD.encode(d)
        );
        assert_eq!(
            expected_digest(Some(v.as_bytes())),
            Ok(ExpectedDigest {
                sha256: Some(d),
                sha512: Some(e)
            })
        );
        for bad in [
            &b"sha-256=:AAAA:"[..],
            b"sha-512=:AAAA:",
            b"sha-256=AAAA",
            b"sha-256",
            b"SHA-256=:%%%:",
            b"sha-256=:\xff:",
            &[0xff, 0xfe][..],
        ] {
            assert_eq!(expected_digest(Some(bad)), Err(MalformedDigest), "{bad:?}");
        }
        assert_eq!(
            expected_digest(Some(b"md5=:AAAA:")),
            Ok(ExpectedDigest::default())
        );
        assert_eq!(expected_digest(None), Ok(ExpectedDigest::default()));
    }
}
