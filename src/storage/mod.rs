//! Storage: the one boundary the service calls to keep and serve backups.
//! Every name in it is built from an authenticated [`SystemName`] and a
//! parsed [`BackupId`]; nothing above it sees a path, and nothing above it
//! knows which store it talks to.
//!
//! [`Storage`] is an enum with inherent async methods rather than a trait
//! object: there are few backends, each known at compile time, and no
//! async-trait machinery is needed.

pub mod chunk;
pub mod fs;
pub mod key;
pub mod metadata;
pub mod s3;

use std::io;
use std::sync::Arc;

use crate::backup_id::BackupId;
use crate::system_name::SystemName;
use chunk::Chunk;
use metadata::BackupInfo;

/// How long an upload's body is: announced by `Content-Length`, or known
/// only once it ends (HTTP/1.1 chunked, HTTP/2 without `content-length`),
/// with the most it may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLength {
    /// Exactly this many bytes.
    Exact(u64),
    /// Unknown until the end, never more than this many bytes.
    AtMost(u64),
}

impl BodyLength {
    /// The most bytes the body may have.
    pub fn max(self) -> u64 {
        match self {
            BodyLength::Exact(n) | BodyLength::AtMost(n) => n,
        }
    }
}

/// What one system holds: how many backups, their bytes, and when the
/// newest (by id) was stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Holding {
    /// Backups held.
    pub backups: u64,
    /// Their bytes.
    pub bytes: u64,
    /// When the newest was stored (its upload record, or the file's time).
    pub newest: Option<std::time::SystemTime>,
}

impl Holding {
    /// The sum of `backups`, in any order.
    pub fn of(backups: &[BackupInfo]) -> Self {
        Holding {
            backups: backups.len() as u64,
            bytes: backups.iter().map(|b| b.size).sum(),
            newest: backups
                .iter()
                .max_by_key(|b| b.id.uuid())
                .map(|b| b.uploaded_at),
        }
    }
}

/// A backup opened for a download.
pub enum Backup {
    /// A file, open (it stays the same file even if renamed or replaced).
    File(fs::Backup),
    /// An object; its bytes are fetched with [`Storage::read`].
    Object(s3::store::Object),
}

impl Backup {
    /// What is known about it; `info().size` is the `Content-Length`.
    pub fn info(&self) -> &BackupInfo {
        match self {
            Backup::File(b) => &b.info,
            Backup::Object(o) => &o.info,
        }
    }

    /// When it was last modified (`Last-Modified`).
    pub fn modified(&self) -> std::time::SystemTime {
        match self {
            Backup::File(b) => b.modified,
            Backup::Object(o) => o.modified,
        }
    }

    /// Its strong validator (`ETag`): size, time and inode of a file, the
    /// store's own of an object.
    pub fn etag(&self) -> String {
        match self {
            Backup::File(b) => crate::http::ranges::etag(b.info.size, b.modified, b.ino),
            Backup::Object(o) => o.etag.clone(),
        }
    }
}

/// An upload on its way into storage, until it is committed.
pub enum PartialUpload {
    /// A temporary file in the system's directory.
    File(fs::PartialUpload),
    /// A PUT to an upload key of its own.
    Object(s3::store::Upload),
}

impl PartialUpload {
    /// Appends `chunk`. Blocking: call from the blocking pool. The object
    /// store keeps a share of the chunk until it has sent it.
    pub fn write(&mut self, chunk: &Arc<Chunk>) -> Result<(), StoreError> {
        match self {
            PartialUpload::File(upload) => upload.write(chunk.as_slice()),
            PartialUpload::Object(upload) => upload.write_blocking(Chunk::to_bytes(chunk)),
        }
    }
}

/// Why a store operation failed.
#[derive(Debug)]
pub enum StoreError {
    /// No such backup for this system (or not a regular file).
    NotFound,
    /// The store cannot be used.
    Unavailable(io::Error),
    /// The store is full (`ENOSPC`, `EDQUOT`).
    Full,
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::NotFound => f.write_str("no such backup"),
            StoreError::Unavailable(e) => write!(f, "store unavailable: {e}"),
            StoreError::Full => f.write_str("store full"),
        }
    }
}

impl std::error::Error for StoreError {}

/// Where backups are kept.
pub enum Storage {
    /// A directory per system under a storage root, through cap-std.
    Fs(fs::FsStore),
    /// Objects in an S3-compatible bucket.
    S3(s3::store::S3Store),
}

impl Storage {
    /// Whether the store can be used right now (`/readyz`).
    pub fn is_available(&self) -> bool {
        match self {
            Storage::Fs(store) => store.is_available(),
            Storage::S3(store) => store.is_available(),
        }
    }

    /// The object store, for what only it has (its health probe).
    pub fn s3(&self) -> Option<&s3::store::S3Store> {
        match self {
            Storage::S3(store) => Some(store),
            Storage::Fs(_) => None,
        }
    }

    /// The filesystem store, for what only it has (the root watcher, the
    /// self-sandbox).
    pub fn fs(&self) -> Option<&fs::FsStore> {
        match self {
            Storage::Fs(store) => Some(store),
            Storage::S3(_) => None,
        }
    }

    /// The lock serialising `system`'s commits, pruning and deletes.
    pub fn system_lock(&self, system: &SystemName) -> Arc<tokio::sync::Mutex<()>> {
        match self {
            Storage::Fs(store) => store.system_lock(system),
            Storage::S3(store) => store.system_lock(system),
        }
    }

    /// Opens `system`'s backup `id` for reading.
    pub async fn open(&self, system: &SystemName, id: &BackupId) -> Result<Backup, StoreError> {
        match self {
            Storage::Fs(store) => store.open(system, id).await.map(Backup::File),
            Storage::S3(store) => store.open(system, id).await.map(Backup::Object),
        }
    }

    /// Bytes `start..start+count` of an object backup, streamed (a file's
    /// are read by the HTTP body itself).
    pub async fn read(
        &self,
        object: &s3::store::Object,
        start: u64,
        count: u64,
    ) -> Result<s3::store::ObjectBody, StoreError> {
        match self {
            Storage::S3(store) => store.read(object, start, count).await,
            Storage::Fs(_) => Err(StoreError::NotFound),
        }
    }

    /// Every backup of `system`, newest first (UUIDv7 order).
    pub async fn list(&self, system: &SystemName) -> Result<Vec<BackupInfo>, StoreError> {
        match self {
            Storage::Fs(store) => store.list(system).await,
            Storage::S3(store) => store.list(system).await,
        }
    }

    /// Requests sent to the object store so far, by S3 operation name;
    /// `None` for the filesystem.
    pub fn store_requests(&self) -> Option<Vec<(&'static str, u64)>> {
        match self {
            Storage::Fs(_) => None,
            Storage::S3(store) => Some(
                store
                    .requests()
                    .into_iter()
                    .map(|(op, n)| (op.name(), n))
                    .collect(),
            ),
        }
    }

    /// What each of `systems` holds and how many of its backups failed
    /// `backupd verify`, for the per-system metrics; `None` for a system
    /// whose holding cannot be read right now. The filesystem reads each
    /// system's directory; the object store lists its whole prefix once
    /// (see [`s3::store::S3Store::inventory`]).
    pub async fn inventory(
        &self,
        systems: Vec<SystemName>,
    ) -> Vec<(SystemName, Option<(Holding, u64)>)> {
        match self {
            Storage::Fs(store) => {
                let mut out = Vec::with_capacity(systems.len());
                for system in systems {
                    let held = match store.list(&system).await {
                        Ok(backups) => Some((
                            Holding::of(&backups),
                            backups.iter().filter(|b| b.failed_verification).count() as u64,
                        )),
                        Err(StoreError::NotFound) => Some((Holding::default(), 0)),
                        Err(_) => None,
                    };
                    out.push((system, held));
                }
                out
            }
            Storage::S3(store) => match store.inventory(&systems).await {
                Ok(held) => held
                    .into_iter()
                    .map(|(system, holding, failed)| (system, Some((holding, failed))))
                    .collect(),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot list the store for the per-system metrics; they keep their last figures");
                    systems.into_iter().map(|s| (s, None)).collect()
                }
            },
        }
    }

    /// Deletes `system`'s backup `id` and its upload record.
    pub async fn delete(&self, system: &SystemName, id: &BackupId) -> Result<(), StoreError> {
        match self {
            Storage::Fs(store) => store.delete(system, id).await,
            Storage::S3(store) => store.delete(system, id).await,
        }
    }

    /// Records whether `backupd verify` found `system`'s backup `id`
    /// changed since its upload; true if the record changed. The object
    /// store keeps its records in object metadata, which only a copy can
    /// change: there `verify` reports, and records nothing (false).
    pub async fn set_verification(
        &self,
        system: &SystemName,
        id: &BackupId,
        failed: bool,
    ) -> Result<bool, StoreError> {
        match self {
            Storage::Fs(store) => store.set_verification(system, id, failed).await,
            Storage::S3(_) => Ok(false),
        }
    }

    /// Bytes `system`'s backups would take once a new one of `incoming`
    /// bytes is stored and retention (`count`, `bytes`) has run.
    pub async fn usage_after(
        &self,
        system: &SystemName,
        incoming: u64,
        count: u32,
        bytes: u64,
    ) -> Result<u64, StoreError> {
        match self {
            Storage::Fs(store) => store.usage_after(system, incoming, count, bytes).await,
            Storage::S3(store) => Ok(fs::retained_bytes(
                &store.sizes(system).await?,
                incoming,
                count,
                bytes,
            )),
        }
    }

    /// Starts an upload of `length` bytes for `system`: a place its
    /// bytes go until commit. `checksum` (from `Content-Digest`) is passed
    /// to a store that can check it too.
    pub async fn begin_upload(
        &self,
        system: &SystemName,
        length: BodyLength,
        checksum: Option<[u8; 32]>,
    ) -> Result<PartialUpload, StoreError> {
        match self {
            Storage::Fs(store) => store.begin_upload(system).await.map(PartialUpload::File),
            Storage::S3(store) => Ok(PartialUpload::Object(store.begin_upload(length, checksum))),
        }
    }

    /// Makes `upload` durable as backup `info.id` with its record.
    pub async fn commit(
        &self,
        system: &SystemName,
        upload: PartialUpload,
        info: &BackupInfo,
    ) -> Result<(), StoreError> {
        match (self, upload) {
            (Storage::S3(store), PartialUpload::Object(upload)) => {
                store.commit(system, upload, info).await
            }
            (_, PartialUpload::File(upload)) => {
                let info = info.clone();
                tokio::task::spawn_blocking(move || upload.commit(&info))
                    .await
                    .unwrap_or_else(|e| Err(StoreError::Unavailable(io::Error::other(e))))
            }
            (Storage::Fs(_), PartialUpload::Object(_)) => Err(StoreError::Unavailable(
                io::Error::other("an object upload committed to a filesystem store"),
            )),
        }
    }

    /// Removes `system`'s oldest backups until at most `count` and `bytes`
    /// remain, never `keep`; call with the system's lock held.
    pub async fn prune(
        &self,
        system: &SystemName,
        keep: BackupId,
        count: u32,
        bytes: u64,
    ) -> Result<Vec<BackupId>, StoreError> {
        match self {
            Storage::Fs(store) => store.prune(system, keep, count, bytes).await,
            Storage::S3(store) => store.prune(system, keep, count, bytes).await,
        }
    }
}
