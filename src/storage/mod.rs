//! Storage: the one boundary the service calls to keep and serve backups.
//! Every name in it is built from an authenticated [`SystemName`] and a
//! parsed [`BackupId`]; nothing above it sees a path, and nothing above it
//! knows which store it talks to.
//!
//! [`Storage`] is an enum with inherent async methods rather than a trait
//! object: there are few backends, each known at compile time, and no
//! async-trait machinery is needed.

pub mod fs;
pub mod key;
pub mod metadata;
pub mod s3;

use std::io;
use std::sync::Arc;

use crate::backup_id::BackupId;
use crate::system_name::SystemName;
pub use fs::{Backup, PartialUpload};
use metadata::BackupInfo;

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

/// Where backups are kept.
pub enum Storage {
    /// A directory per system under a storage root, through cap-std.
    Fs(fs::FsStore),
}

impl Storage {
    /// Whether the store can be used right now (`/readyz`).
    pub fn is_available(&self) -> bool {
        match self {
            Storage::Fs(store) => store.is_available(),
        }
    }

    /// The filesystem store, for what only it has (the root watcher, the
    /// self-sandbox).
    pub fn fs(&self) -> Option<&fs::FsStore> {
        match self {
            Storage::Fs(store) => Some(store),
        }
    }

    /// The lock serialising `system`'s commits, pruning and deletes.
    pub fn system_lock(&self, system: &SystemName) -> Arc<tokio::sync::Mutex<()>> {
        match self {
            Storage::Fs(store) => store.system_lock(system),
        }
    }

    /// Opens `system`'s backup `id` for reading.
    pub async fn open(&self, system: &SystemName, id: &BackupId) -> Result<Backup, StoreError> {
        match self {
            Storage::Fs(store) => store.open(system, id).await,
        }
    }

    /// Every backup of `system`, newest first (UUIDv7 order).
    pub async fn list(&self, system: &SystemName) -> Result<Vec<BackupInfo>, StoreError> {
        match self {
            Storage::Fs(store) => store.list(system).await,
        }
    }

    /// Deletes `system`'s backup `id` and its upload record.
    pub async fn delete(&self, system: &SystemName, id: &BackupId) -> Result<(), StoreError> {
        match self {
            Storage::Fs(store) => store.delete(system, id).await,
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
        }
    }

    /// Starts an upload of `system`: a place its bytes go until commit.
    pub async fn begin_upload(&self, system: &SystemName) -> Result<PartialUpload, StoreError> {
        match self {
            Storage::Fs(store) => store.begin_upload(system).await,
        }
    }

    /// Makes `upload` durable as backup `info.id` with its record.
    pub async fn commit(&self, upload: PartialUpload, info: &BackupInfo) -> Result<(), StoreError> {
        match self {
            Storage::Fs(_) => {
                let info = info.clone();
                tokio::task::spawn_blocking(move || upload.commit(&info))
                    .await
                    .unwrap_or_else(|e| Err(StoreError::Unavailable(io::Error::other(e))))
            }
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
        }
    }
}
