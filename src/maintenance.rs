//! `backupd import|verify|prune`: work on the backups without a client,
//! through the same storage boundary and upload pipeline the server uses,
//! so they behave the same on the filesystem and in an object store, and
//! can run while the server serves.
//!
//! - `import` stores existing files the way an upload would: SHA-256 and
//!   upload record, atomic commit, nothing left on failure. The id comes
//!   from the file's modification time, so imported backups sort by age.
//! - `verify` recomputes the SHA-256 of every backup that has one recorded,
//!   at a bounded rate, and names each mismatch.
//! - `prune` applies the retention policy now, for when uploads cannot (a
//!   full disk refuses the upload that would have run it).

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};

use crate::auth::credentials::CredentialsFile;
use crate::backup_id::BackupId;
use crate::sandbox::{DirPath, FilePath};
use crate::service::upload::{self, ExpectedDigest, StreamLimits};
use crate::storage::fs::FsStore;
use crate::storage::metadata::hex;
use crate::storage::s3::config::Location;
use crate::storage::s3::store::S3Store;
use crate::storage::{Backup, BodyLength, Storage, StoreError};
use crate::system_name::SystemName;
use crate::systems::{CommandError, Locations};

/// Bytes read from a file at a time by `import` and `verify`.
const READ_CHUNK_BYTES: usize = 1 << 20;

/// `verify`'s default read rate, bytes per second (`--max-rate`): enough to
/// check a few TB overnight, well under what a disk or a store serves, so
/// restores and uploads keep their speed.
pub const DEFAULT_VERIFY_BYTES_PER_SECOND: u64 = 100 << 20;

/// The storage `loc` names, opened for a command: the filesystem store
/// without the start-up sweep (a running server's uploads in progress are
/// its own), or the object store.
pub(crate) fn open_storage(loc: &Locations) -> Result<Storage, CommandError> {
    if let Some(location) = Location::of(&loc.storage) {
        let location = location.map_err(CommandError::Store)?;
        let client =
            crate::storage::s3::config::client(&location, &loc.s3).map_err(CommandError::Store)?;
        let store = S3Store::new(client, location.prefix, loc.s3.single_put_max)
            .map_err(CommandError::Store)?;
        return Ok(Storage::S3(store));
    }
    let store = FsStore::for_command(DirPath::new(&loc.storage));
    store.refresh();
    if let Some(why) = store.unavailable_reason() {
        return Err(CommandError::Io(
            format!("storage root {}", loc.storage.display()),
            io::Error::other(why),
        ));
    }
    Ok(Storage::Fs(store))
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, CommandError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CommandError::Io("runtime".into(), e))
}

fn store_error(what: String) -> impl FnOnce(StoreError) -> CommandError {
    move |e| match e {
        StoreError::Unavailable(e) => CommandError::Io(what, e),
        StoreError::NotFound => CommandError::Io(what, io::ErrorKind::NotFound.into()),
        StoreError::Full => CommandError::Io(what, io::Error::other("storage is full")),
    }
}

/// The registered systems `name` selects: that one (refused if it is not
/// registered), or every one.
fn systems(loc: &Locations, name: Option<&str>) -> Result<Vec<SystemName>, CommandError> {
    let file = CredentialsFile::new(&loc.credentials)
        .map_err(|e| CommandError::Io("credentials path".into(), e))?;
    let creds = file
        .load()
        .map_err(|e| CommandError::Credentials(file.display(), e))?;
    match name {
        None => Ok(creds.names()),
        Some(name) => {
            let name: SystemName = name
                .parse()
                .map_err(|e| CommandError::InvalidName(name.to_owned(), e))?;
            if creds.contains(&name) {
                Ok(vec![name])
            } else {
                Err(CommandError::Unknown(name))
            }
        }
    }
}

/// What `import` did with one file.
#[derive(Debug)]
pub enum Imported {
    /// Stored as this backup.
    Stored(PathBuf, BackupId, u64, [u8; 32]),
    /// `--dry-run`: would be stored as this backup.
    WouldStore(PathBuf, BackupId, u64, [u8; 32]),
    /// The system already holds a backup with the same SHA-256.
    Skipped(PathBuf, BackupId),
    /// Not stored, and why (nothing of it kept).
    Failed(PathBuf, String),
}

/// A file's bytes as an upload body: read in [`READ_CHUNK_BYTES`] pieces
/// on the caller's thread (a command's own runtime: blocking it is fine).
struct FileBody {
    file: std::fs::File,
    left: u64,
}

impl Body for FileBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let mut buf = vec![0; READ_CHUNK_BYTES.min(self.left as usize)];
        match self.file.read(&mut buf) {
            Ok(0) => Poll::Ready(None), // shrank: the length check refuses it
            Ok(n) => {
                buf.truncate(n);
                self.left -= n as u64;
                Poll::Ready(Some(Ok(Frame::data(Bytes::from(buf)))))
            }
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }
}

/// The SHA-256 of everything `file` holds from where it is.
fn sha256_of(mut file: &std::fs::File) -> io::Result<[u8; 32]> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0; READ_CHUNK_BYTES];
    loop {
        match file.read(&mut buf)? {
            0 => return Ok(hasher.finalize().into()),
            n => hasher.update(&buf[..n]),
        }
    }
}

/// The backup id an imported file gets: a UUIDv7 of its modification time
/// and the extension its name maps to ([`upload::extension_for`]).
fn id_for(modified: SystemTime, filename: &str) -> BackupId {
    let since = modified
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let ts = uuid::Timestamp::from_unix(uuid::NoContext, since.as_secs(), since.subsec_nanos());
    BackupId::new(
        uuid::Uuid::new_v7(ts),
        upload::extension_for(Some(filename)),
    )
    .expect("new_v7 is a version 7 RFC 4122 UUID")
}

/// Stores `files` as backups of the registered system `name`, each the way
/// an upload would be (see the module's notes); with `dry_run`, only says
/// what it would do. One outcome per file, in order.
pub fn import(
    loc: &Locations,
    name: &str,
    files: &[PathBuf],
    dry_run: bool,
) -> Result<Vec<Imported>, CommandError> {
    let system = systems(loc, Some(name))?.remove(0);
    let storage = open_storage(loc)?;
    runtime()?.block_on(async {
        let held = match storage.list(&system).await {
            Ok(held) => held,
            Err(StoreError::NotFound) => Vec::new(),
            Err(e) => return Err(store_error(format!("cannot list {system}"))(e)),
        };
        let mut known: Vec<([u8; 32], BackupId)> = held
            .iter()
            .filter_map(|b| b.sha256.map(|s| (s, b.id)))
            .collect();
        let mut outcomes = Vec::with_capacity(files.len());
        for path in files {
            let outcome = import_one(&storage, &system, path, dry_run, &known).await;
            if let Imported::Stored(_, id, _, sha) | Imported::WouldStore(_, id, _, sha) = &outcome
            {
                known.push((*sha, *id));
            }
            outcomes.push(outcome);
        }
        Ok(outcomes)
    })
}

async fn import_one(
    storage: &Storage,
    system: &SystemName,
    path: &Path,
    dry_run: bool,
    known: &[([u8; 32], BackupId)],
) -> Imported {
    let failed = |why: String| Imported::Failed(path.to_owned(), why);
    let opened = FilePath::new(path).and_then(|f| f.open());
    let file = match opened {
        Ok(file) => file,
        Err(e) => return failed(e.to_string()),
    };
    let meta = match file.metadata() {
        Ok(meta) if meta.is_file() => meta,
        Ok(_) => return failed("not a regular file".into()),
        Err(e) => return failed(e.to_string()),
    };
    let sha256 = match sha256_of(&file) {
        Ok(sha) => sha,
        Err(e) => return failed(e.to_string()),
    };
    if let Some((_, id)) = known.iter().find(|(sha, _)| *sha == sha256) {
        return Imported::Skipped(path.to_owned(), *id);
    }
    let modified = meta.modified().unwrap_or_else(|_| SystemTime::now());
    let raw_name = path
        .file_name()
        .map(|n| n.as_encoded_bytes().to_vec())
        .unwrap_or_default();
    let probe = id_for(modified, "");
    let filename = upload::sanitize_filename(Some(&raw_name), probe.uuid());
    let id = id_for(modified, &filename);
    let size = meta.len();
    if dry_run {
        return Imported::WouldStore(path.to_owned(), id, size, sha256);
    }
    // The second read is checked against the first: a file that changed
    // in between is refused, not stored half-old.
    let file = match FilePath::new(path).and_then(|f| f.open()) {
        Ok(file) => file,
        Err(e) => return failed(e.to_string()),
    };
    let partial = match storage
        .begin_upload(system, BodyLength::Exact(size), Some(sha256))
        .await
    {
        Ok(partial) => partial,
        Err(e) => return failed(format!("{e:?}")),
    };
    let limits = StreamLimits {
        max_bytes: u64::MAX,
        quota_room: u64::MAX,
    };
    let expected = ExpectedDigest {
        sha256: Some(sha256),
        sha512: None,
    };
    let body = FileBody { file, left: size };
    let received = match upload::receive(body, partial, Some(size), limits, expected).await {
        Ok(received) => received,
        Err(e) => {
            return failed(format!(
                "changed while it was read, or cannot be stored: {e:?}"
            ));
        }
    };
    let mut info = upload::new_info(id, filename, received.size, received.sha256);
    info.uploaded_at = modified;
    let lock = storage.system_lock(system);
    let _guard = lock.lock().await;
    match storage.commit(system, received.partial, &info).await {
        Ok(()) => Imported::Stored(path.to_owned(), id, size, sha256),
        Err(e) => failed(format!("{e:?}")),
    }
}

/// What `verify` found.
#[derive(Debug, Default)]
pub struct Verified {
    /// Backups whose content matched their recorded SHA-256.
    pub matched: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Backups with no SHA-256 recorded (dropped in by hand): not checked.
    pub unrecorded: u64,
    /// Backups whose content does not match: system, id, recorded, found.
    pub mismatches: Vec<(SystemName, BackupId, String, String)>,
    /// Backups or systems that could not be read, and why.
    pub errors: Vec<String>,
}

/// Paces reads to at most `rate` bytes per second (0: unpaced).
struct Pace {
    rate: u64,
    start: Instant,
    read: u64,
}

impl Pace {
    async fn after(&mut self, n: usize) {
        self.read += n as u64;
        if self.rate > 0 {
            let due = Duration::from_secs_f64(self.read as f64 / self.rate as f64);
            if let Some(wait) = due.checked_sub(self.start.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Recomputes the SHA-256 of every backup of `name` (or of every
/// registered system) that has one recorded, reading at most
/// `bytes_per_second` (0: as fast as storage gives).
pub fn verify(
    loc: &Locations,
    name: Option<&str>,
    bytes_per_second: u64,
) -> Result<Verified, CommandError> {
    let names = systems(loc, name)?;
    let storage = open_storage(loc)?;
    runtime()?.block_on(async {
        let mut found = Verified::default();
        let mut pace = Pace {
            rate: bytes_per_second,
            start: Instant::now(),
            read: 0,
        };
        for system in names {
            let backups = match storage.list(&system).await {
                Ok(backups) => backups,
                Err(StoreError::NotFound) => continue,
                Err(e) => {
                    found.errors.push(format!("{system}: cannot list: {e:?}"));
                    continue;
                }
            };
            for info in backups {
                let Some(recorded) = info.sha256 else {
                    found.unrecorded += 1;
                    continue;
                };
                let content = content_sha256(&storage, &system, &info.id, &mut pace).await;
                if let Ok(sha) = &content {
                    // The upload record says so, for the server: it logs and
                    // counts each download of a backup that failed.
                    let failed = *sha != recorded;
                    if failed != info.failed_verification
                        && let Err(e) = storage.set_verification(&system, &info.id, failed).await
                    {
                        found.errors.push(format!(
                            "{system}/{}: cannot record the result: {e:?}",
                            info.id
                        ));
                    }
                }
                match content {
                    Ok(sha) if sha == recorded => {
                        found.matched += 1;
                        found.bytes += info.size;
                    }
                    Ok(sha) => {
                        found
                            .mismatches
                            .push((system.clone(), info.id, hex(recorded), hex(sha)));
                    }
                    // Deleted or pruned since the list: nothing to check.
                    Err(StoreError::NotFound) => {}
                    Err(e) => found.errors.push(format!("{system}/{}: {e:?}", info.id)),
                }
            }
        }
        Ok(found)
    })
}

/// The SHA-256 of `system`'s backup `id` as storage holds it now.
async fn content_sha256(
    storage: &Storage,
    system: &SystemName,
    id: &BackupId,
    pace: &mut Pace,
) -> Result<[u8; 32], StoreError> {
    let mut hasher = Sha256::new();
    match storage.open(system, id).await? {
        Backup::File(backup) => {
            let mut file = backup.file;
            let mut buf = vec![0; READ_CHUNK_BYTES];
            loop {
                let n = file.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                pace.after(n).await;
            }
        }
        Backup::Object(object) => {
            let size = object.info.size;
            let mut body = storage.read(&object, 0, size).await?;
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame.map_err(StoreError::Unavailable)?.into_data() {
                    hasher.update(&data);
                    pace.after(data.len()).await;
                }
            }
        }
    }
    Ok(hasher.finalize().into())
}

/// What `prune` removed: system and id, oldest first per system.
pub type Pruned = Vec<(SystemName, BackupId)>;

/// Applies retention (`count` backups, `bytes` bytes; 0 = no limit) to
/// `name` (or every registered system) now. Never removes a system's
/// newest backup.
pub fn prune(
    loc: &Locations,
    name: Option<&str>,
    count: u32,
    bytes: u64,
) -> Result<Pruned, CommandError> {
    let names = systems(loc, name)?;
    let storage = open_storage(loc)?;
    runtime()?.block_on(async {
        let mut pruned = Vec::new();
        for system in names {
            let newest = match storage.list(&system).await {
                Ok(backups) => backups.iter().map(|b| b.id).max_by_key(BackupId::uuid),
                Err(StoreError::NotFound) => None,
                Err(e) => return Err(store_error(format!("cannot list {system}"))(e)),
            };
            let Some(newest) = newest else { continue };
            let lock = storage.system_lock(&system);
            let _guard = lock.lock().await;
            let removed = storage
                .prune(&system, newest, count, bytes)
                .await
                .map_err(store_error(format!("cannot prune {system}")))?;
            pruned.extend(removed.into_iter().map(|id| (system.clone(), id)));
        }
        Ok(pruned)
    })
}
