//! `FsStore`: the storage root, and every filesystem operation on a
//! system's backups (open, list, delete, upload, prune), sandboxed.
//!
//! The root is a [`Dir`] opened through [`DirPath`]; every operation opens
//! the system's directory through it, then names a file inside that,
//! refusing symlinks at both steps, so nothing a request names can resolve
//! outside the system's own directory. All of it is blocking and runs on the
//! blocking pool.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Instant, SystemTime};

use cap_fs_ext::{DirExt, FollowSymlinks, OpenOptionsFollowExt};
use cap_std::fs::{Dir, MetadataExt, OpenOptions, OpenOptionsExt};
use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::{Errno, ReadWriteFlags};

use crate::backup_id::BackupId;
use crate::sandbox::{DirPath, own_like};
use crate::storage::chunk::DIRECT_IO_ALIGN;
use crate::storage::metadata::{
    BackupInfo, MAX_CACHED_SIDECARS, MAX_SIDECAR_BYTES, SIDECAR_CACHE_TTL, sidecar_name,
};
use crate::storage::{Holding, StoreError};
use crate::system_name::SystemName;

/// Prefix of an upload's temporary file. It starts with a dot, so no
/// `BackupId` can name it: GET and list never see a partial upload.
const PARTIAL_PREFIX: &str = ".upload-";

/// An open backup, ready to stream.
#[derive(Debug)]
pub struct Backup {
    /// The open file; it stays the same file even if renamed or replaced.
    pub file: std::fs::File,
    /// What is known about it; `info.size` is the `Content-Length` promised.
    pub info: BackupInfo,
    /// Modification time, for `Last-Modified` and the `ETag`.
    pub modified: SystemTime,
    /// Inode number, for the `ETag`.
    pub ino: u64,
}

impl From<io::Error> for StoreError {
    fn from(e: io::Error) -> Self {
        classify(e)
    }
}

/// Room on the storage root's filesystem, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    /// Free to an unprivileged writer.
    pub free: u64,
    /// The filesystem's size.
    pub size: u64,
}

/// The directory in use as storage root, with its identity.
struct Root {
    dir: Arc<Dir>,
    dev: u64,
    ino: u64,
}

/// Which directory a storage root is (device and inode): a root replaced
/// under the same path has a different identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RootIdentity {
    dev: u64,
    ino: u64,
}

/// The storage root, re-checked by [`FsStore::refresh`] so a root that
/// is missing at start-up, removed or replaced is noticed and recovered from
/// without a restart.
pub struct FsStore {
    path: DirPath,
    /// Whether the next open may create the root: true until the first
    /// successful open when the root is the default one. A root that
    /// vanishes later is reported (503), never silently recreated empty.
    create: AtomicBool,
    root: RwLock<Option<Root>>,
    /// Whether partial uploads left by a crash were swept (once, at the
    /// first open of the root).
    swept: Mutex<bool>,
    /// Whether a root was ever in use: only the first root may be adopted
    /// without the marker (see [`STORAGE_MARKER`]).
    adopted_once: AtomicBool,
    /// Why the root is unavailable, for the start-up log.
    unavailable: Mutex<Option<String>>,
    /// Per-system locks serialising commit, retention and delete.
    locks: Mutex<HashMap<SystemName, Arc<tokio::sync::Mutex<()>>>>,
    /// Whether downloads try [`open_backup_cached`] first; false once the
    /// kernel said it has no `RESOLVE_CACHED` (before Linux 5.12).
    cached_opens: AtomicBool,
    /// Sidecars recent downloads read.
    sidecars: SidecarCache,
}

impl FsStore {
    /// A store over `path`, which the first `refresh` creates if `create` is set.
    /// Opens nothing yet: call [`refresh`](Self::refresh).
    pub fn new(path: DirPath, create: bool) -> Self {
        FsStore {
            path,
            create: AtomicBool::new(create),
            root: RwLock::new(None),
            swept: Mutex::new(false),
            adopted_once: AtomicBool::new(false),
            unavailable: Mutex::new(None),
            locks: Mutex::new(HashMap::new()),
            cached_opens: AtomicBool::new(true),
            sidecars: SidecarCache::default(),
        }
    }

    /// A store for a command run beside the server (`import`, `verify`,
    /// `prune`): never created, and never swept of partial uploads, which
    /// may be a running server's uploads in progress.
    pub fn for_command(path: DirPath) -> Self {
        let store = FsStore::new(path, false);
        *store.swept.lock().unwrap_or_else(|e| e.into_inner()) = true;
        store
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

    /// The identity of the root in use, if it is usable.
    pub fn identity(&self) -> Option<RootIdentity> {
        self.root
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|root| RootIdentity {
                dev: root.dev,
                ino: root.ino,
            })
    }

    /// The free and total bytes of the filesystem the root is on (what an
    /// unprivileged user may still write, as `df` shows it), if the root is
    /// usable. Blocking (one `fstatvfs`).
    pub fn space(&self) -> Option<Space> {
        let root = self.root_dir().ok()?;
        let stat = rustix::fs::fstatvfs(root.as_fd()).ok()?;
        Some(Space {
            free: stat.f_bavail.saturating_mul(stat.f_frsize),
            size: stat.f_blocks.saturating_mul(stat.f_frsize),
        })
    }

    /// Re-opens the root by path and swaps it in if it is a different
    /// directory from the one in use (or drops it if the path no longer opens).
    /// Logs each transition once. Blocking.
    pub fn refresh(&self) {
        let create = self.create.load(Ordering::Relaxed);
        let opened = self.path.open(create).and_then(|dir| {
            let meta = dir.dir_metadata()?;
            Ok(Root {
                dev: meta.dev(),
                ino: meta.ino(),
                dir: Arc::new(dir),
            })
        });
        let mut root = self.root.write().unwrap_or_else(|e| e.into_inner());
        let same = |new: &Root| {
            root.as_ref()
                .is_some_and(|old| new.dev == old.dev && new.ino == old.ino)
        };
        // A root other than the one in use must carry the marker; only the
        // very first may be given one (see `STORAGE_MARKER`).
        let opened = opened.and_then(|new| {
            if same(&new) {
                return Ok(new);
            }
            let first = !self.adopted_once.load(Ordering::Relaxed);
            check_marker(&new.dir, first, create).map(|()| new)
        });
        *self.unavailable.lock().unwrap_or_else(|e| e.into_inner()) =
            opened.as_ref().err().map(ToString::to_string);
        let path = self.path.path().display();
        match (opened, root.as_ref()) {
            (Ok(new), Some(old)) if new.dev == old.dev && new.ino == old.ino => {}
            (Ok(new), old) => {
                if old.is_some() {
                    tracing::warn!(path = %path, "storage root was replaced; using the new directory");
                } else {
                    tracing::info!(path = %path, "storage root is available");
                }
                self.create.store(false, Ordering::Relaxed);
                self.adopted_once.store(true, Ordering::Relaxed);
                self.sweep_once(&new.dir);
                *root = Some(new);
            }
            (Err(e), Some(_)) => {
                tracing::error!(path = %path, error = %e, "storage root is unavailable; answering 503 until it is back");
                *root = None;
            }
            (Err(_), None) => {}
        }
    }

    /// Why the root is unavailable (for the log), if it is.
    pub fn unavailable_reason(&self) -> Option<String> {
        self.unavailable
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Removes partial uploads left by a crash, the first time a root opens.
    fn sweep_once(&self, root: &Dir) {
        let mut swept = self.swept.lock().unwrap_or_else(|e| e.into_inner());
        if !*swept {
            *swept = true;
            let swept = sweep_partials(root);
            if swept.removed > 0 {
                tracing::info!(
                    removed = swept.removed,
                    "removed partial uploads and orphaned upload records left by an earlier run"
                );
            }
            if swept.unrecognised > 0 {
                tracing::warn!(
                    files = swept.unrecognised,
                    systems = swept.systems_with_unrecognised,
                    example = swept.example.as_deref().unwrap_or_default(),
                    "files in system directories are not named by a backup id and are never served or listed; bring them in with backupd import"
                );
            }
        }
    }

    fn root_dir(&self) -> Result<Arc<Dir>, StoreError> {
        self.root
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|r| r.dir.clone())
            .ok_or_else(|| {
                StoreError::Unavailable(io::Error::new(
                    io::ErrorKind::NotFound,
                    "storage root is not open",
                ))
            })
    }

    /// Runs `op` on `system`'s directory on the blocking pool.
    async fn with_system<T: Send + 'static>(
        &self,
        system: &SystemName,
        op: impl FnOnce(Dir) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let root = self.root_dir()?;
        let system = system.clone();
        tokio::task::spawn_blocking(move || op(open_system(&root, &system)?))
            .await
            .unwrap_or_else(|e| Err(StoreError::Unavailable(io::Error::other(e))))
    }

    /// The lock serialising `system`'s commits, pruning and deletes.
    pub fn system_lock(&self, system: &SystemName) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.entry(system.clone()).or_default().clone()
    }

    /// Opens `system`'s backup `id`: a regular file directly inside the
    /// system's directory, never through a symlink.
    pub async fn open(&self, system: &SystemName, id: &BackupId) -> Result<Backup, StoreError> {
        if self.cached_opens.load(Ordering::Relaxed) {
            let root = self.root_dir()?;
            match open_backup_cached(&root, system, id, &self.sidecars) {
                Ok(result) => return result,
                Err(Fallback::Miss) => {}
                Err(Fallback::Unsupported) => self.cached_opens.store(false, Ordering::Relaxed),
            }
        }
        let id = *id;
        self.with_system(system, move |dir| open_backup(&dir, &id))
            .await
    }

    /// Every backup of `system`, newest first (UUIDv7 order).
    pub async fn list(&self, system: &SystemName) -> Result<Vec<BackupInfo>, StoreError> {
        self.with_system(system, |dir| {
            let mut all = list_backups(&dir)?;
            all.reverse();
            Ok(all)
        })
        .await
    }

    /// Deletes `system`'s backup `id` and its sidecar; `NotFound` unless it
    /// is a regular file.
    pub async fn delete(&self, system: &SystemName, id: &BackupId) -> Result<(), StoreError> {
        let id = *id;
        self.with_system(system, move |dir| {
            let name = id.to_string();
            if !dir.symlink_metadata(&name)?.is_file() {
                return Err(StoreError::NotFound);
            }
            dir.remove_file(&name)?;
            remove_if_exists(&dir, &sidecar_name(&id))?;
            sync_dir(&dir)?;
            Ok(())
        })
        .await
    }

    /// Records in `system`'s backup `id`'s upload record whether `backupd
    /// verify` found its content changed (`failed`); true if the record
    /// changed. A backup without a record (nothing to verify against) is
    /// left alone. The record is replaced atomically (temporary, fsync,
    /// rename, directory fsync).
    pub async fn set_verification(
        &self,
        system: &SystemName,
        id: &BackupId,
        failed: bool,
    ) -> Result<bool, StoreError> {
        let id = *id;
        self.with_system(system, move |dir| {
            let (_, meta) = open_regular(&dir, &id.to_string())?;
            let mut info = describe(&dir, id, meta.len(), modified(&meta));
            if info.sha256.is_none() || info.failed_verification == failed {
                return Ok(false);
            }
            info.failed_verification = failed;
            let temp = format!("{PARTIAL_PREFIX}{}.meta", uuid::Uuid::now_v7().simple());
            let mut file = dir.open_with(
                &temp,
                OpenOptions::new().write(true).create_new(true).mode(0o600),
            )?;
            let written = own_like(&dir, file.as_fd())
                .and_then(|()| file.write_all(&info.encode_sidecar()))
                .and_then(|()| file.sync_all())
                .and_then(|()| dir.rename(&temp, &dir, sidecar_name(&id)))
                .and_then(|()| sync_dir(&dir));
            if let Err(e) = written {
                let _ = dir.remove_file(&temp);
                return Err(classify(e));
            }
            Ok(true)
        })
        .await
    }

    /// Bytes `system`'s backups would take once a new backup of `incoming`
    /// bytes is stored and retention (`count`, `bytes`, as in
    /// [`prune`](Self::prune)) has run: what a quota is checked against, so
    /// an upload that fits once retention makes room is accepted.
    pub async fn usage_after(
        &self,
        system: &SystemName,
        incoming: u64,
        count: u32,
        bytes: u64,
    ) -> Result<u64, StoreError> {
        self.with_system(system, move |dir| {
            let sizes: Vec<u64> = list_backups(&dir)?.iter().map(|b| b.size).collect();
            Ok(retained_bytes(&sizes, incoming, count, bytes))
        })
        .await
    }

    /// Creates a temporary file for an upload inside `system`'s directory
    /// (creating the directory if the system has none yet).
    pub async fn begin_upload(&self, system: &SystemName) -> Result<PartialUpload, StoreError> {
        let root = self.root_dir()?;
        let system = system.clone();
        tokio::task::spawn_blocking(move || {
            let dir = match open_system(&root, &system) {
                Err(StoreError::NotFound) => {
                    create_system_dir(&root, &system)?;
                    open_system(&root, &system)?
                }
                other => other?,
            };
            let temp = format!("{PARTIAL_PREFIX}{}", uuid::Uuid::now_v7().simple());
            let file = dir
                .open_with(
                    &temp,
                    OpenOptions::new().write(true).create_new(true).mode(0o600),
                )?
                .into_std();
            own_like(&dir, file.as_fd())?;
            let direct = set_direct(&file, true).is_ok();
            Ok(PartialUpload {
                dir,
                temp,
                file: Some(file),
                direct,
                written: 0,
                submitted: 0,
                settled: 0,
            })
        })
        .await
        .unwrap_or_else(|e| Err(StoreError::Unavailable(io::Error::other(e))))
    }

    /// Removes the oldest backups of `system` (UUIDv7 order) until at most
    /// `count` (0 = any number) and `bytes` (0 = any size) remain, never
    /// `keep`. Returns what was removed. Call with the system's lock held.
    pub async fn prune(
        &self,
        system: &SystemName,
        keep: BackupId,
        count: u32,
        bytes: u64,
    ) -> Result<Vec<BackupId>, StoreError> {
        self.with_system(system, move |dir| {
            let all = list_backups(&dir)?;
            let mut left = all.len() as u64;
            let mut total: u64 = all.iter().map(|b| b.size).sum();
            let mut removed = Vec::new();
            for backup in &all {
                let over_count = count > 0 && left > u64::from(count);
                let over_bytes = bytes > 0 && total > bytes;
                if !over_count && !over_bytes {
                    break;
                }
                if backup.id == keep {
                    continue;
                }
                dir.remove_file(backup.id.to_string())?;
                remove_if_exists(&dir, &sidecar_name(&backup.id))?;
                left -= 1;
                total -= backup.size;
                removed.push(backup.id);
            }
            if !removed.is_empty() {
                sync_dir(&dir)?;
            }
            Ok(removed)
        })
        .await
    }
}

/// Bytes left of backups sized `oldest_first` plus a new one of `incoming`
/// bytes once retention removes the oldest (never the new one) until at
/// most `count` (0 = any number) and `bytes` (0 = any size) remain: the
/// same rule as [`FsStore::prune`].
pub(crate) fn retained_bytes(oldest_first: &[u64], incoming: u64, count: u32, bytes: u64) -> u64 {
    let mut left = oldest_first.len() as u64 + 1;
    let mut total = oldest_first.iter().sum::<u64>().saturating_add(incoming);
    for size in oldest_first {
        let over_count = count > 0 && left > u64::from(count);
        let over_bytes = bytes > 0 && total > bytes;
        if !over_count && !over_bytes {
            break;
        }
        left -= 1;
        total -= size;
    }
    total
}

/// An upload being written: a temporary file in the system's directory,
/// removed on drop unless [`commit`](Self::commit) renamed it into place.
pub struct PartialUpload {
    dir: Dir,
    temp: String,
    file: Option<std::fs::File>,
    /// Whether the file is written with `O_DIRECT` (see [`PartialUpload::write`]).
    direct: bool,
    /// Bytes written so far.
    written: u64,
    /// Bytes handed to writeback so far (`sync_file_range`).
    submitted: u64,
    /// Bytes known to be written back.
    settled: u64,
}

/// Whether `data`, written at `offset`, can go with `O_DIRECT`.
fn direct_io_fits(data: &[u8], offset: u64) -> bool {
    let align = DIRECT_IO_ALIGN;
    data.len().is_multiple_of(align)
        && (data.as_ptr() as usize).is_multiple_of(align)
        && offset.is_multiple_of(align as u64)
}

/// Turns `O_DIRECT` on or off for `file`.
fn set_direct(file: &std::fs::File, on: bool) -> io::Result<()> {
    let flags = rustix::fs::fcntl_getfl(file)?;
    let flags = if on {
        flags | OFlags::DIRECT
    } else {
        flags - OFlags::DIRECT
    };
    rustix::fs::fcntl_setfl(file, flags)?;
    Ok(())
}

/// An upload's file is handed to the kernel's writeback every this many
/// bytes as it grows (`sync_file_range`), and the writer waits for the
/// window before the last one: the disk works while the body arrives, the
/// dirty pages of one upload stay under about twice this, and the fsync at
/// commit has little left to do. The fsync still makes it durable.
pub const WRITEBACK_BYTES: u64 = 8 << 20;

impl PartialUpload {
    /// Appends `chunk` (blocking).
    ///
    /// While every chunk is aligned for it (in memory, in length and in
    /// the file: [`DIRECT_IO_ALIGN`]), the file is written with
    /// `O_DIRECT`, from the chunk straight to the disk. Backups are written
    /// once and rarely read, so the page cache gains nothing from them; the
    /// copy into it was the upload's largest cost after SHA-256, and a
    /// night of uploads no longer evicts what the rest of the machine
    /// caches (bench/RESULTS.md, issue 16). The last, short chunk, and any
    /// filesystem that refuses direct I/O (`EINVAL`), go through the page
    /// cache as before. Durability does not depend on it: the commit
    /// fsyncs either way.
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), StoreError> {
        let file = self.file.as_mut().ok_or(StoreError::NotFound)?;
        let mut rest = chunk;
        while !rest.is_empty() {
            if self.direct && !direct_io_fits(rest, self.written) {
                self.direct = false;
                set_direct(file, false).map_err(classify)?;
            }
            match file.write(rest) {
                Ok(0) => return Err(classify(io::Error::from(io::ErrorKind::WriteZero))),
                Ok(n) => {
                    self.written += n as u64;
                    rest = &rest[n..];
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if self.direct && e.raw_os_error() == Some(libc::EINVAL) => {
                    // This filesystem takes O_DIRECT but not these writes.
                    self.direct = false;
                    set_direct(file, false).map_err(classify)?;
                }
                Err(e) => return Err(classify(e)),
            }
        }
        if self.direct {
            // Nothing of it waits in the page cache.
            (self.submitted, self.settled) = (self.written, self.written);
        } else if self.written - self.submitted >= WRITEBACK_BYTES {
            self.write_back();
        }
        Ok(())
    }

    /// Starts writeback of what was written since the last call, and waits
    /// for the window before it. Best effort: a filesystem without
    /// `sync_file_range` simply leaves it all to the fsync at commit.
    fn write_back(&mut self) {
        use std::os::fd::AsRawFd;
        let Some(file) = &self.file else { return };
        let fd = file.as_raw_fd();
        let range = |from: u64, to: u64, flags: libc::c_uint| {
            // SAFETY: `fd` is this upload's file, open for the whole call;
            // sync_file_range takes numbers only and touches no memory of
            // ours. Its result is not needed: the fsync at commit reports
            // any write error.
            #[allow(unsafe_code)]
            let _ = unsafe { libc::sync_file_range(fd, from as i64, (to - from) as i64, flags) };
        };
        if self.submitted > self.settled {
            range(
                self.settled,
                self.submitted,
                libc::SYNC_FILE_RANGE_WAIT_BEFORE
                    | libc::SYNC_FILE_RANGE_WRITE
                    | libc::SYNC_FILE_RANGE_WAIT_AFTER,
            );
            self.settled = self.submitted;
        }
        range(self.submitted, self.written, libc::SYNC_FILE_RANGE_WRITE);
        self.submitted = self.written;
    }

    /// Makes the upload durable as backup `info.id`: fsync the data, write
    /// the sidecar (temporary + rename), rename the data into place, fsync
    /// the directory. Blocking.
    pub fn commit(mut self, info: &BackupInfo) -> Result<(), StoreError> {
        let file = self.file.take().ok_or(StoreError::NotFound)?;
        file.sync_all()?;
        drop(file);
        let sidecar_temp = format!("{}.meta", self.temp);
        let mut sidecar = self.dir.open_with(
            &sidecar_temp,
            OpenOptions::new().write(true).create_new(true).mode(0o600),
        )?;
        let written = own_like(&self.dir, sidecar.as_fd())
            .and_then(|()| sidecar.write_all(&info.encode_sidecar()))
            .and_then(|()| sidecar.sync_all());
        drop(sidecar);
        let renamed = written
            .and_then(|()| {
                self.dir
                    .rename(&sidecar_temp, &self.dir, sidecar_name(&info.id))
            })
            .and_then(|()| self.dir.rename(&self.temp, &self.dir, info.id.to_string()));
        if let Err(e) = renamed {
            let _ = self.dir.remove_file(&sidecar_temp);
            let _ = self.dir.remove_file(sidecar_name(&info.id));
            return Err(classify(e));
        }
        self.temp.clear();
        sync_dir(&self.dir).map_err(classify)
    }
}

impl Drop for PartialUpload {
    fn drop(&mut self) {
        if !self.temp.is_empty() {
            drop(self.file.take());
            if let Err(e) = self.dir.remove_file(&self.temp) {
                tracing::warn!(error = %e, "cannot remove a partial upload");
            }
        }
    }
}

/// Errors that mean "nothing servable under that name": absent, a symlink
/// (`ELOOP` from `O_NOFOLLOW`), not a directory, or a socket (`ENXIO`).
fn is_absent(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
        || matches!(
            e.raw_os_error(),
            Some(libc::ELOOP | libc::ENOTDIR | libc::ENXIO | libc::EISDIR)
        )
}

fn classify(e: io::Error) -> StoreError {
    if is_absent(&e) {
        StoreError::NotFound
    } else if matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)) {
        StoreError::Full
    } else {
        StoreError::Unavailable(e)
    }
}

/// Name of the file that makes a directory a backupd storage root. It
/// starts with a dot, so it is never a system's directory.
///
/// Why: with `--storage` on a mountpoint, a lost mount reveals the empty
/// directory beneath it. Without a mark of identity the server would take
/// that for a replaced root and write the next uploads onto the root
/// filesystem. So a root is used only if it carries this file. backupd
/// writes it the first time it uses a root: into the default root it
/// creates, into a root that `systems add` uses, and into the first root
/// `serve` opens if that one already holds something (existing data, or a
/// fresh filesystem's `lost+found`). It never writes it into an empty
/// directory on its own, and never into a root that turns up while it runs.
pub const STORAGE_MARKER: &str = ".backupd-root";

/// Whether `root` is a storage root backupd may use: it carries
/// [`STORAGE_MARKER`], or it is the `first` root this process opens and
/// either was `created` by it or already holds something, in which case it
/// gets the marker now.
fn check_marker(root: &Dir, first: bool, created: bool) -> io::Result<()> {
    match root.symlink_metadata(STORAGE_MARKER) {
        Ok(meta) if meta.is_file() => return Ok(()),
        Ok(_) => {
            return Err(io::Error::other(format!(
                "{STORAGE_MARKER} is not a regular file"
            )));
        }
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        Err(_) => {}
    }
    let holds_something = root.entries()?.next().is_some();
    if !first || !(created || holds_something) {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "no {STORAGE_MARKER} here: not a backupd storage root (a missing mount?); it is never adopted while running. A new, empty root is initialised by `backupd systems add`"
            ),
        ));
    }
    // A worker confined to another root (Landlock) cannot write here; the
    // successor it then asks for, started unconfined, writes the marker.
    match mark_root(root) {
        Ok(()) => tracing::info!("storage root initialised ({STORAGE_MARKER} written)"),
        Err(e) => {
            // Under --no-self-sandbox nothing confines us: `error` then
            // names the real cause (a read-only or foreign directory).
            tracing::info!(error = %e, "storage root adopted without writing {STORAGE_MARKER}; a worker sandboxed to another root cannot, and its successor sandboxed to this one does")
        }
    }
    Ok(())
}

/// Writes [`STORAGE_MARKER`] into `root` (if missing), durably.
pub fn mark_root(root: &Dir) -> io::Result<()> {
    match root.open_with(
        STORAGE_MARKER,
        OpenOptions::new().write(true).create_new(true).mode(0o600),
    ) {
        Ok(mut file) => {
            own_like(root, file.as_fd())?;
            file.write_all(b"backupd storage root: backups are in the directory of each system\n")?;
            file.sync_all()?;
            sync_dir(root)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Creates `system`'s directory in the storage root, durably (the root is
/// fsynced, so a crash cannot lose a directory a backup was committed in).
/// A directory that already exists is success: concurrent first uploads of
/// one system race to create it, and all of them must go on.
pub fn create_system_dir(root: &Dir, system: &SystemName) -> io::Result<()> {
    match root.create_dir(system.as_str()) {
        Ok(()) => {
            own_like(root, root.open_dir_nofollow(system.as_str())?.as_fd())?;
            sync_dir(root)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

fn open_system(root: &Dir, system: &SystemName) -> Result<Dir, StoreError> {
    root.open_dir_nofollow(system.as_str()).map_err(classify)
}

/// Opens a regular file by name in `dir`, refusing symlinks and never
/// blocking: a FIFO would block `open` until a writer appears, O_NONBLOCK
/// makes it return at once and the type check refuses it. O_NONBLOCK has no
/// effect on reads of regular files.
fn open_regular(
    dir: &Dir,
    name: &str,
) -> Result<(cap_std::fs::File, cap_std::fs::Metadata), StoreError> {
    let mut options = OpenOptions::new();
    options
        .read(true)
        .follow(FollowSymlinks::No)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY);
    let file = dir.open_with(name, &options).map_err(classify)?;
    let meta = file.metadata().map_err(StoreError::Unavailable)?;
    if !meta.is_file() {
        return Err(StoreError::NotFound);
    }
    Ok((file, meta))
}

fn modified(meta: &cap_std::fs::Metadata) -> SystemTime {
    meta.modified()
        .map(|t| t.into_std())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// What is known about backup `id` of size `size` in `dir`: its sidecar if
/// one matches, else what the file itself says.
fn describe(dir: &Dir, id: BackupId, size: u64, modified: SystemTime) -> BackupInfo {
    let sidecar = open_regular(dir, &sidecar_name(&id))
        .ok()
        .and_then(|(file, _)| {
            let mut bytes = Vec::new();
            file.take(MAX_SIDECAR_BYTES).read_to_end(&mut bytes).ok()?;
            BackupInfo::decode_sidecar(id, size, &bytes)
        });
    sidecar.unwrap_or_else(|| BackupInfo::from_file(id, size, modified))
}

/// Why an inline attempt (one that must not block an async worker) gives
/// way to the blocking pool.
#[derive(Debug, Clone, Copy)]
enum Fallback {
    /// It would have had to wait: a lookup or read not in the kernel's
    /// caches.
    Miss,
    /// This kernel cannot do it without blocking; do not try again.
    Unsupported,
}

/// How the inline fast path resolves a name: what cap-std asks of the
/// kernel on Linux (stay beneath the directory, no magic links), no symlinks
/// at all (the names are single components, and the blocking path refuses
/// symlinks there too), and `RESOLVE_CACHED`: fail with `EAGAIN` rather than
/// wait for a lookup the dentry cache cannot answer (or on a filesystem that
/// must revalidate, such as NFS).
const INLINE_RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS)
    .union(ResolveFlags::CACHED);

/// Opens `name` in `dir` (never following a symlink) without blocking.
fn open_inline(dir: impl AsFd, name: &str, flags: OFlags) -> Result<io::Result<OwnedFd>, Fallback> {
    let flags = flags | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    loop {
        match rustix::fs::openat2(&dir, name, flags, Mode::empty(), INLINE_RESOLVE) {
            Ok(fd) => return Ok(Ok(fd)),
            Err(Errno::AGAIN) => return Err(Fallback::Miss),
            // No openat2 (before 5.6) or no RESOLVE_CACHED (before 5.12).
            Err(Errno::NOSYS | Errno::INVAL) => return Err(Fallback::Unsupported),
            Err(Errno::INTR) => {}
            Err(e) => return Ok(Err(e.into())),
        }
    }
}

/// Sidecars read by recent downloads, by backup id. An entry answers only
/// for the same system and the same backup file (see [`FileStamp`]), and
/// only for [`SIDECAR_CACHE_TTL`].
#[derive(Default)]
struct SidecarCache {
    entries: Mutex<HashMap<BackupId, CachedSidecar>>,
}

struct CachedSidecar {
    system: SystemName,
    /// The backup file it was read for.
    stamp: FileStamp,
    read_at: Instant,
    /// What it said, or `None` if there was no usable sidecar.
    info: Option<BackupInfo>,
}

/// What identifies a backup file's version: a file replaced, rewritten,
/// truncated or touched gets a different stamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileStamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        FileStamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

impl SidecarCache {
    /// The remembered sidecar of `system`'s `id`, if it was read for the
    /// file `stamp` describes, recently enough.
    fn get(
        &self,
        system: &SystemName,
        id: &BackupId,
        stamp: FileStamp,
    ) -> Option<Option<BackupInfo>> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let entry = entries.get(id)?;
        (entry.system == *system
            && entry.stamp == stamp
            && entry.read_at.elapsed() < SIDECAR_CACHE_TTL)
            .then(|| entry.info.clone())
    }

    fn put(&self, system: &SystemName, id: &BackupId, stamp: FileStamp, info: Option<BackupInfo>) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= MAX_CACHED_SIDECARS {
            entries.clear();
        }
        entries.insert(
            *id,
            CachedSidecar {
                system: system.clone(),
                stamp,
                read_at: Instant::now(),
                info,
            },
        );
    }
}

/// [`open_backup`] without blocking, for the common case where everything
/// it touches is in the kernel's caches: this saves a blocking-pool round
/// trip (two thread wake-ups) per download, which profiling showed as the
/// largest cost of a small download. Same checks, same answers: the backup
/// is opened beneath the storage root's `Dir` as `system/id`, without
/// following symlinks at either step, only a regular file is served, and
/// its sidecar is read only if it is a regular file. Anything not cached
/// falls back, and the caller takes the blocking path.
///
/// Both names are resolved from the root rather than from an opened system
/// directory, which saves an open and a close per download (a tenth of a
/// small download's CPU). The cost: if the operator renames the system's
/// directory between the two opens, the sidecar may come from the directory
/// that now has the name. That is still this system's directory, so nothing
/// crosses systems, and a sidecar is used only if it records this id at
/// this file's size ([`BackupInfo::decode_sidecar`]).
///
/// The sidecar (or its absence) is remembered in `sidecars` for the same
/// file for [`SIDECAR_CACHE_TTL`], which saves its open, `statx`, read and
/// close: another tenth of a small download's CPU.
fn open_backup_cached(
    root: &Dir,
    system: &SystemName,
    id: &BackupId,
    sidecars: &SidecarCache,
) -> Result<Result<Backup, StoreError>, Fallback> {
    let regular = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY;
    // `SystemName` and `BackupId` admit no `/`, so each is one component.
    let file = match open_inline(root, &format!("{system}/{id}"), regular)? {
        Ok(file) => std::fs::File::from(file),
        Err(e) => return Ok(Err(classify(e))),
    };
    let meta = match file.metadata() {
        Ok(meta) if meta.is_file() => meta,
        Ok(_) => return Ok(Err(StoreError::NotFound)),
        Err(e) => return Ok(Err(StoreError::Unavailable(e))),
    };
    let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    let stamp = FileStamp::of(&meta);
    let sidecar = match sidecars.get(system, id, stamp) {
        Some(sidecar) => sidecar,
        None => {
            let path = format!("{system}/{}", sidecar_name(id));
            // Only "there is no usable sidecar" is remembered; a failure
            // that may pass (EMFILE, ENFILE, EIO) goes to the blocking path
            // and is never cached as "no upload record".
            let bytes = match open_inline(root, &path, regular)? {
                Ok(fd) => {
                    let sidecar = std::fs::File::from(fd);
                    match sidecar.metadata() {
                        Ok(m) if m.is_file() => Some(
                            read_inline(&sidecar, MAX_SIDECAR_BYTES as usize)?
                                .ok_or(Fallback::Miss)?,
                        ),
                        Ok(_) => None,
                        Err(_) => return Err(Fallback::Miss),
                    }
                }
                Err(e) if remembered_as_absent(&e) => None,
                Err(_) => return Err(Fallback::Miss),
            };
            let sidecar =
                bytes.and_then(|bytes| BackupInfo::decode_sidecar(*id, meta.len(), &bytes));
            sidecars.put(system, id, stamp, sidecar.clone());
            sidecar
        }
    };
    let info = sidecar.unwrap_or_else(|| BackupInfo::from_file(*id, meta.len(), modified));
    Ok(Ok(Backup {
        file,
        info,
        modified,
        ino: std::os::unix::fs::MetadataExt::ino(&meta),
    }))
}

/// Whether an error opening a sidecar means "this backup has no usable
/// record", which may be remembered; anything else (out of descriptors,
/// an I/O error) may pass and must not be.
fn remembered_as_absent(e: &io::Error) -> bool {
    is_absent(e)
}

/// Reads up to `max` bytes from the start of `file`, from the page cache
/// only (`RWF_NOWAIT`); `None` for a read error, which the blocking path
/// also treats as "no sidecar".
fn read_inline(file: &std::fs::File, max: usize) -> Result<Option<Vec<u8>>, Fallback> {
    let mut bytes = vec![0; max];
    let mut filled = 0;
    while filled < max {
        let mut slices = [io::IoSliceMut::new(&mut bytes[filled..])];
        match rustix::io::preadv2(file, &mut slices, filled as u64, ReadWriteFlags::NOWAIT) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN | Errno::OPNOTSUPP) => return Err(Fallback::Miss),
            Err(_) => return Ok(None),
        }
    }
    bytes.truncate(filled);
    Ok(Some(bytes))
}

fn open_backup(dir: &Dir, id: &BackupId) -> Result<Backup, StoreError> {
    let (file, meta) = open_regular(dir, &id.to_string())?;
    let modified = modified(&meta);
    let info = describe(dir, *id, meta.len(), modified);
    Ok(Backup {
        file: file.into_std(),
        info,
        modified,
        ino: meta.ino(),
    })
}

/// What one system holds (see [`Holding`]). Blocking; for the `systems
/// list` command.
pub fn summarize(root: &Dir, system: &SystemName) -> Result<Holding, StoreError> {
    match open_system(root, system) {
        Ok(dir) => Ok(Holding::of(&list_backups(&dir)?)),
        Err(StoreError::NotFound) => Ok(Holding::default()),
        Err(e) => Err(e),
    }
}

/// Every regular file in `dir` whose name is a backup id, oldest first.
fn list_backups(dir: &Dir) -> Result<Vec<BackupInfo>, StoreError> {
    let mut all = Vec::new();
    for entry in dir.entries()? {
        let entry = entry?;
        let Some(id) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<BackupId>().ok())
        else {
            continue;
        };
        // file_type does not follow symlinks: only regular files are backups.
        if !entry.file_type()?.is_file() {
            continue;
        }
        let meta = match entry.metadata() {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue, // deleted meanwhile
            Err(e) => return Err(classify(e)),
        };
        all.push(describe(dir, id, meta.len(), modified(&meta)));
    }
    all.sort_by_key(|b| b.id.uuid());
    Ok(all)
}

fn remove_if_exists(dir: &Dir, name: &str) -> io::Result<()> {
    match dir.remove_file(name) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Makes renames, removals and new entries in `dir` durable. The `Dir`
/// handle itself may be an `O_PATH` descriptor, which cannot be fsynced:
/// open it for reading.
pub fn sync_dir(dir: &Dir) -> io::Result<()> {
    dir.open(".")?.sync_all()
}

/// What [`sweep_partials`] found.
#[derive(Debug, Default)]
struct Swept {
    /// Partial uploads and orphaned records removed.
    removed: usize,
    /// Entries that are neither a backup, its record nor a partial upload
    /// (files dropped in under other names): never served, so reported.
    unrecognised: usize,
    /// Systems holding any of those.
    systems_with_unrecognised: usize,
    /// One of them, `SYSTEM/NAME` (the name sanitised like a claimed
    /// system name), for the log.
    example: Option<String>,
}

/// Removes what a crash can leave in every system directory: `.upload-*`
/// files (uploads in progress, and their records before the rename), and
/// upload records `.<id>.meta` whose backup is not there (a crash between
/// the record's rename and the backup's); counts what is there under any
/// other name.
fn sweep_partials(root: &Dir) -> Swept {
    let mut swept = Swept::default();
    let Ok(systems) = root.entries() else {
        return swept;
    };
    for system in systems.flatten() {
        let Some(name) = system
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<SystemName>().ok())
        else {
            continue;
        };
        let Ok(dir) = open_system(root, &name) else {
            continue;
        };
        let Ok(entries) = dir.entries() else { continue };
        let mut unrecognised = 0;
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let known = file_name.to_str().is_some_and(|n| {
                n.starts_with(PARTIAL_PREFIX)
                    || n.parse::<BackupId>().is_ok()
                    || n.strip_prefix('.')
                        .and_then(|n| n.strip_suffix(".meta"))
                        .is_some_and(|id| id.parse::<BackupId>().is_ok())
            });
            if !known {
                unrecognised += 1;
                swept.example.get_or_insert_with(|| {
                    format!(
                        "{name}/{}",
                        crate::auth::loggable_claim(file_name.as_encoded_bytes())
                    )
                });
                continue;
            }
            let Some(name) = file_name.to_str() else {
                continue;
            };
            let orphan_record = name
                .strip_prefix('.')
                .and_then(|n| n.strip_suffix(".meta"))
                .and_then(|id| id.parse::<BackupId>().ok())
                .is_some_and(|id| {
                    matches!(dir.symlink_metadata(id.to_string()), Err(e) if e.kind() == io::ErrorKind::NotFound)
                });
            if (name.starts_with(PARTIAL_PREFIX) || orphan_record)
                && dir.remove_file(&file_name).is_ok()
            {
                swept.removed += 1;
            }
        }
        swept.unrecognised += unrecognised;
        swept.systems_with_unrecognised += usize::from(unrecognised > 0);
    }
    swept
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// What a download would see of `result`: the same for both paths.
    fn outcome(result: Result<Backup, StoreError>) -> String {
        match result {
            Ok(b) => format!(
                "ok {} {:?} {} {}",
                b.info.to_json(),
                b.modified,
                b.ino,
                b.file.metadata().unwrap().len()
            ),
            Err(StoreError::NotFound) => "not found".into(),
            Err(StoreError::Full) => "full".into(),
            Err(StoreError::Unavailable(e)) => format!("unavailable {:?}", e.kind()),
        }
    }

    /// The inline fast path answers exactly as the blocking path for every
    /// kind of thing that can sit at a backup's (or its sidecar's) name.
    #[test]
    fn the_cached_open_answers_as_the_blocking_one() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let fw = root.join("fw1");
        std::fs::create_dir_all(&fw).unwrap();
        std::fs::create_dir(root.join("other")).unwrap();
        symlink("other", root.join("linked")).unwrap();
        std::fs::write(root.join("notadir"), b"x").unwrap();
        let id = |n: u32| -> BackupId {
            format!("01934fab-bc33-7890-a1b2-c3d4e5f6{n:04x}.gpg")
                .parse()
                .unwrap()
        };
        let plain = id(1);
        std::fs::write(fw.join(plain.to_string()), b"plain").unwrap();
        let with_meta = id(2);
        std::fs::write(fw.join(with_meta.to_string()), b"described").unwrap();
        let mut sidecar_info = BackupInfo::from_file(with_meta, 9, SystemTime::UNIX_EPOCH);
        sidecar_info.filename = "x.gpg".into();
        std::fs::write(
            fw.join(sidecar_name(&with_meta)),
            sidecar_info.encode_sidecar(),
        )
        .unwrap();
        let bad_meta = id(3);
        std::fs::write(fw.join(bad_meta.to_string()), b"bad sidecar").unwrap();
        std::fs::write(fw.join(sidecar_name(&bad_meta)), b"{not json").unwrap();
        let dir_meta = id(4);
        std::fs::write(fw.join(dir_meta.to_string()), b"dir sidecar").unwrap();
        std::fs::create_dir(fw.join(sidecar_name(&dir_meta))).unwrap();
        let link_meta = id(5);
        std::fs::write(fw.join(link_meta.to_string()), b"link sidecar").unwrap();
        symlink(sidecar_name(&with_meta), fw.join(sidecar_name(&link_meta))).unwrap();
        let link = id(6);
        symlink(plain.to_string(), fw.join(link.to_string())).unwrap();
        let dir = id(7);
        std::fs::create_dir(fw.join(dir.to_string())).unwrap();
        let fifo = id(8);
        let made = std::process::Command::new("mkfifo")
            .arg(fw.join(fifo.to_string()))
            .status()
            .unwrap();
        assert!(made.success());
        let socket = id(9);
        let _listener =
            std::os::unix::net::UnixListener::bind(fw.join(socket.to_string())).unwrap();
        let absent = id(10);

        let store = FsStore::new(DirPath::new(root), false);
        store.refresh();
        let root_dir = store.root_dir().unwrap();
        let sidecars = SidecarCache::default();
        let mut checked = 0;
        for system in ["fw1", "other", "linked", "notadir", "absent"] {
            let system: SystemName = system.parse().unwrap();
            for id in [
                plain, with_meta, bad_meta, dir_meta, link_meta, link, dir, fifo, socket, absent,
            ] {
                // The blocking path first: it also fills the kernel's caches.
                let blocking =
                    outcome(open_system(&root_dir, &system).and_then(|dir| open_backup(&dir, &id)));
                // Twice, the second from the sidecar cache where it answers.
                for _ in 0..2 {
                    let cached = match open_backup_cached(&root_dir, &system, &id, &sidecars) {
                        Ok(result) => outcome(result),
                        Err(Fallback::Unsupported) => return, // kernel before 5.12
                        Err(Fallback::Miss) => continue,
                    };
                    assert_eq!(cached, blocking, "{system}/{id}");
                    checked += 1;
                }
            }
        }
        assert!(checked >= 80, "only {checked} of 100 compared");
        // And the sidecar was used where it is a regular file, not elsewhere.
        let fw1: SystemName = "fw1".parse().unwrap();
        let described = open_backup_cached(&root_dir, &fw1, &with_meta, &SidecarCache::default())
            .unwrap()
            .unwrap();
        assert_eq!(described.info.filename, "x.gpg");
        let linked = open_backup_cached(&root_dir, &fw1, &link_meta, &SidecarCache::default())
            .unwrap()
            .unwrap();
        assert_ne!(linked.info.filename, "x.gpg");
    }

    #[test]
    fn a_remembered_sidecar_answers_only_for_its_system_and_file() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let id: BackupId = "01934fab-bc33-7890-a1b2-c3d4e5f60001.gpg".parse().unwrap();
        let described = |dir: &std::path::Path, bytes: &[u8], filename: &str| {
            // Written aside and renamed in, as an upload does: a new file.
            std::fs::write(dir.join("new"), bytes).unwrap();
            std::fs::rename(dir.join("new"), dir.join(id.to_string())).unwrap();
            let mut info = BackupInfo::from_file(id, bytes.len() as u64, SystemTime::UNIX_EPOCH);
            info.filename = filename.into();
            std::fs::write(dir.join(sidecar_name(&id)), info.encode_sidecar()).unwrap();
        };
        for system in ["alice", "bob"] {
            std::fs::create_dir(root.join(system)).unwrap();
        }
        described(&root.join("alice"), b"alice's", "alice.gpg");
        described(&root.join("bob"), b"bob's!!", "bob.gpg");
        let store = FsStore::new(DirPath::new(root), false);
        store.refresh();
        let root_dir = store.root_dir().unwrap();
        let sidecars = SidecarCache::default();
        let filename = |system: &str| -> Option<String> {
            let system: SystemName = system.parse().unwrap();
            match open_backup_cached(&root_dir, &system, &id, &sidecars) {
                Ok(result) => Some(result.unwrap().info.filename),
                Err(Fallback::Unsupported) => None, // kernel before 5.12
                Err(Fallback::Miss) => Some(store_filename(&root_dir, &system, &id)),
            }
        };
        let Some(first) = filename("alice") else {
            return;
        };
        assert_eq!(first, "alice.gpg");
        // Same id, another system: its own sidecar, alternately.
        for _ in 0..2 {
            assert_eq!(filename("bob").unwrap(), "bob.gpg");
            assert_eq!(filename("alice").unwrap(), "alice.gpg");
        }
        // Even the very same file, hard-linked into another system's
        // directory next to that system's own sidecar.
        std::fs::remove_file(root.join("bob").join(id.to_string())).unwrap();
        std::fs::hard_link(
            root.join("alice").join(id.to_string()),
            root.join("bob").join(id.to_string()),
        )
        .unwrap();
        let mut info = BackupInfo::from_file(id, 7, SystemTime::UNIX_EPOCH);
        info.filename = "bob-linked.gpg".into();
        std::fs::write(
            root.join("bob").join(sidecar_name(&id)),
            info.encode_sidecar(),
        )
        .unwrap();
        for _ in 0..2 {
            assert_eq!(filename("alice").unwrap(), "alice.gpg");
            assert_eq!(filename("bob").unwrap(), "bob-linked.gpg");
        }
        // A replaced backup file (new inode) has its sidecar read again.
        described(&root.join("alice"), b"alice's v2", "alice-v2.gpg");
        assert_eq!(filename("alice").unwrap(), "alice-v2.gpg");
        // So has one touched in place (new mtime and ctime), and one without
        // a usable sidecar is remembered as such until its file changes.
        std::fs::write(root.join("alice").join(sidecar_name(&id)), b"{not json").unwrap();
        let file = std::fs::File::options()
            .write(true)
            .open(root.join("alice").join(id.to_string()))
            .unwrap();
        file.set_modified(SystemTime::UNIX_EPOCH).unwrap();
        assert_ne!(filename("alice").unwrap(), "alice-v2.gpg");
        described(&root.join("alice"), b"alice's v3", "alice-v3.gpg");
        assert_eq!(filename("alice").unwrap(), "alice-v3.gpg");
    }

    #[test]
    fn transient_open_errors_are_never_remembered_as_no_record() {
        for errno in [
            libc::EMFILE,
            libc::ENFILE,
            libc::EIO,
            libc::EACCES,
            libc::ENOMEM,
        ] {
            assert!(
                !remembered_as_absent(&io::Error::from_raw_os_error(errno)),
                "{errno}"
            );
        }
        for errno in [libc::ENOENT, libc::ELOOP, libc::ENOTDIR] {
            assert!(
                remembered_as_absent(&io::Error::from_raw_os_error(errno)),
                "{errno}"
            );
        }
    }

    #[test]
    fn quota_usage_counts_what_retention_will_leave() {
        // Nothing to prune: everything plus the new one.
        assert_eq!(retained_bytes(&[10, 20], 5, 0, 0), 35);
        // Count 2: the oldest goes to make room for the new one.
        assert_eq!(retained_bytes(&[10, 20], 5, 2, 0), 25);
        // Bytes 30: oldest first until it fits, never the new one.
        assert_eq!(retained_bytes(&[10, 20, 5], 8, 0, 30), 13);
        assert_eq!(retained_bytes(&[10, 20], 50, 0, 30), 50);
        assert_eq!(retained_bytes(&[], 7, 1, 1), 7);
    }

    /// The filename the blocking path reads, for a test whose inline open
    /// missed the kernel's caches.
    fn store_filename(root: &Dir, system: &SystemName, id: &BackupId) -> String {
        open_system(root, system)
            .and_then(|dir| open_backup(&dir, id))
            .unwrap()
            .info
            .filename
    }
}
