//! `BackupStore`: the storage root and the sandboxed open of one backup.
//!
//! The root is a [`Dir`] opened once through [`DirPath`]; a request opens the
//! system's directory through it, then the backup through that, refusing
//! symlinks at both steps, so nothing a request names can resolve outside
//! the system's own directory.

use std::io;
use std::sync::{Arc, RwLock};

use cap_fs_ext::{DirExt, FollowSymlinks, OpenOptionsFollowExt};
use cap_std::fs::{Dir, MetadataExt, OpenOptions, OpenOptionsExt};

use crate::backup_id::BackupId;
use crate::sandbox::DirPath;
use crate::system_name::SystemName;

/// An open backup, ready to stream.
#[derive(Debug)]
pub struct Backup {
    /// The open file; it stays the same file even if renamed or replaced.
    pub file: std::fs::File,
    /// Its length when opened: the `Content-Length` promised to the client.
    pub len: u64,
}

/// Why a backup could not be opened.
#[derive(Debug)]
pub enum StoreError {
    /// No such backup for this system (or not a regular file).
    NotFound,
    /// The storage root cannot be used.
    Unavailable(io::Error),
}

/// The directory in use as storage root, with its identity.
struct Root {
    dir: Arc<Dir>,
    dev: u64,
    ino: u64,
}

/// The storage root, re-checked by [`BackupStore::refresh`] so a root that
/// is missing at start-up, removed or replaced is noticed and recovered from
/// without a restart.
pub struct BackupStore {
    path: DirPath,
    create: bool,
    root: RwLock<Option<Root>>,
}

impl BackupStore {
    /// A store over `path`, which `refresh` creates first if `create` is set.
    /// Opens nothing yet: call [`refresh`](Self::refresh).
    pub fn new(path: DirPath, create: bool) -> Self {
        BackupStore {
            path,
            create,
            root: RwLock::new(None),
        }
    }

    /// Where the root is, for messages.
    pub fn path(&self) -> &DirPath {
        &self.path
    }

    /// Whether the root is usable right now.
    pub fn is_available(&self) -> bool {
        self.root
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// Re-opens the root by path and swaps it in if it is a different
    /// directory from the one in use (or drops it if the path no longer opens).
    /// Logs each transition once. Blocking.
    pub fn refresh(&self) {
        let opened = self.path.open(self.create).and_then(|dir| {
            let meta = dir.dir_metadata()?;
            Ok(Root {
                dev: meta.dev(),
                ino: meta.ino(),
                dir: Arc::new(dir),
            })
        });
        let mut root = self.root.write().unwrap_or_else(|e| e.into_inner());
        match (opened, root.as_ref()) {
            (Ok(new), Some(old)) if new.dev == old.dev && new.ino == old.ino => {}
            (Ok(new), old) => {
                if old.is_some() {
                    tracing::warn!(path = %self.path.path().display(), "storage root was replaced; using the new directory");
                } else {
                    tracing::info!(path = %self.path.path().display(), "storage root is available");
                }
                *root = Some(new);
            }
            (Err(e), Some(_)) => {
                tracing::error!(path = %self.path.path().display(), error = %e, "storage root is unavailable; answering 503 until it is back");
                *root = None;
            }
            (Err(_), None) => {}
        }
    }

    fn root_dir(&self) -> Option<Arc<Dir>> {
        self.root
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|r| r.dir.clone())
    }

    /// Opens `system`'s backup `id`: a regular file directly inside the
    /// system's directory, never through a symlink. Runs on a blocking thread.
    pub async fn open(&self, system: &SystemName, id: &BackupId) -> Result<Backup, StoreError> {
        let root = self.root_dir().ok_or_else(|| {
            StoreError::Unavailable(io::Error::new(
                io::ErrorKind::NotFound,
                "storage root is not open",
            ))
        })?;
        let system = system.clone();
        let id = *id;
        tokio::task::spawn_blocking(move || open_backup(&root, &system, &id))
            .await
            .unwrap_or_else(|e| Err(StoreError::Unavailable(io::Error::other(e))))
    }
}

/// Errors that mean "nothing servable under that name": absent, a symlink
/// (`ELOOP` from `O_NOFOLLOW`), not a directory, or a socket (`ENXIO`).
fn is_absent(e: &io::Error) -> bool {
    if e.kind() == io::ErrorKind::NotFound {
        return true;
    }
    matches!(
        e.raw_os_error(),
        Some(libc::ELOOP | libc::ENOTDIR | libc::ENXIO | libc::EISDIR)
    )
}

fn classify(e: io::Error) -> StoreError {
    if is_absent(&e) {
        StoreError::NotFound
    } else {
        StoreError::Unavailable(e)
    }
}

fn open_backup(root: &Dir, system: &SystemName, id: &BackupId) -> Result<Backup, StoreError> {
    let system_dir = root.open_dir_nofollow(system.as_str()).map_err(classify)?;
    let mut options = OpenOptions::new();
    options
        .read(true)
        .follow(FollowSymlinks::No)
        // A FIFO would block `open` until a writer appears: O_NONBLOCK makes
        // it return at once, and the type check below then refuses it. It
        // has no effect on reads of regular files.
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY);
    let file = system_dir
        .open_with(id.to_string(), &options)
        .map_err(classify)?;
    let meta = file.metadata().map_err(StoreError::Unavailable)?;
    if !meta.is_file() {
        return Err(StoreError::NotFound);
    }
    Ok(Backup {
        file: file.into_std(),
        len: meta.len(),
    })
}
