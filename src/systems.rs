//! `backupd systems add|remove|list`: managing who may connect.
//!
//! Each command holds the credentials lock for its whole read-modify-write,
//! checks everything before changing anything, and replaces the credentials
//! file atomically, so a running server only ever sees a whole file.

use std::fmt;
use std::io;
use std::path::PathBuf;

use cap_fs_ext::DirExt;
use cap_std::fs::Dir;

use crate::auth::credentials::{Credentials, CredentialsFile, LoadError};
use crate::backup_id::BackupId;
use crate::sandbox::{DirPath, own_like};
use crate::storage::Holding;
use crate::storage::fs::{mark_root, summarize, sync_dir};
use crate::storage::s3::config::Location;
use crate::system_name::{InvalidSystemName, SystemName};
use rustix::fd::AsFd;

/// Where the credentials file and the storage root are.
#[derive(Debug, Clone)]
pub struct Locations {
    /// The credentials file.
    pub credentials: PathBuf,
    /// The storage root.
    pub storage: PathBuf,
    /// Whether the storage root may be created: only when it is the default
    /// inside the data dir (an explicit one is a mount that must exist).
    pub create_storage: bool,
    /// How to reach an object store, when `storage` is `s3://…`.
    pub s3: crate::storage::s3::config::Settings,
}

/// Why a `systems` command changed nothing.
#[derive(Debug)]
pub enum CommandError {
    /// The name is not a valid system name.
    InvalidName(String, InvalidSystemName),
    /// `add` of a name that is registered.
    Duplicate(SystemName),
    /// `add` of a name that differs from a registered one only in case.
    CaseDuplicate(SystemName, SystemName),
    /// `add` of a name whose storage directory still holds backups, without
    /// `--adopt`: the new secret would be handed the old system's backups.
    HoldsBackups(SystemName, usize, PathBuf),
    /// The same in an object store: backups under the name's key prefix.
    HoldsObjects(SystemName, usize, String),
    /// The object store could not be asked.
    Store(String),
    /// `remove` of a name that is not registered.
    Unknown(SystemName),
    /// The credentials file cannot be read or is malformed.
    Credentials(String, LoadError),
    /// A file operation failed.
    Io(String, io::Error),
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommandError::InvalidName(name, e) => write!(f, "invalid system name {name:?}: {e}"),
            CommandError::Duplicate(name) => write!(f, "system {name} already exists"),
            CommandError::CaseDuplicate(name, existing) => write!(
                f,
                "system {name} differs from the registered {existing} only in case; names are unique ignoring case (on a case-folding filesystem they would share one directory)"
            ),
            CommandError::HoldsBackups(name, count, dir) => write!(
                f,
                "{} still holds {count} backup(s) of an earlier system named {name}; the new secret would be handed them. To give them to the new system, run again with --adopt; to start afresh, remove them first (rm -r {})",
                dir.display(),
                dir.display()
            ),
            CommandError::HoldsObjects(name, count, prefix) => write!(
                f,
                "{prefix} still holds {count} backup(s) of an earlier system named {name}; the new secret would be handed them. To give them to the new system, run again with --adopt; to start afresh, delete the keys under {prefix} first"
            ),
            CommandError::Store(why) => write!(f, "object store: {why}"),
            CommandError::Unknown(name) => write!(f, "no system named {name}"),
            CommandError::Credentials(path, e) => write!(f, "credentials file {path}: {e}"),
            CommandError::Io(what, e) => write!(f, "{what}: {e}"),
        }
    }
}

impl std::error::Error for CommandError {}

fn parse_name(name: &str) -> Result<SystemName, CommandError> {
    name.parse()
        .map_err(|e| CommandError::InvalidName(name.to_owned(), e))
}

fn open_storage(loc: &Locations) -> Result<Dir, CommandError> {
    DirPath::new(&loc.storage)
        .open(loc.create_storage)
        .map_err(|e| {
            CommandError::Io(
                format!("cannot open storage root {}", loc.storage.display()),
                e,
            )
        })
}

fn credentials_file(loc: &Locations) -> Result<CredentialsFile, CommandError> {
    CredentialsFile::new(&loc.credentials)
        .map_err(|e| CommandError::Io("credentials path".into(), e))
}

/// Takes the credentials lock and reads the file under it; the lock is held
/// until the returned `File` is dropped.
fn lock_and_load(
    loc: &Locations,
) -> Result<(CredentialsFile, std::fs::File, Credentials), CommandError> {
    let file = credentials_file(loc)?;
    let lock = file
        .lock()
        .map_err(|e| CommandError::Io(format!("cannot lock {}", file.display()), e))?;
    let creds = file
        .load()
        .map_err(|e| CommandError::Credentials(file.display(), e))?;
    Ok((file, lock, creds))
}

/// Registers `name`, creates its storage directory (durably), and returns
/// its new secret: the only time the secret exists outside the client.
///
/// Refused when `name` differs from a registered name only in case, and
/// when its directory still holds backups of an earlier system of that name
/// unless `adopt` says to hand them to the new one.
pub fn add(loc: &Locations, name: &str, adopt: bool) -> Result<String, CommandError> {
    let name = parse_name(name)?;
    let (file, _lock, mut creds) = lock_and_load(loc)?;
    if creds.contains(&name) {
        return Err(CommandError::Duplicate(name));
    }
    if let Some(existing) = creds.find_ignoring_case(&name) {
        return Err(CommandError::CaseDuplicate(name, existing.clone()));
    }
    if let Some(location) = Location::of(&loc.storage) {
        // An object store has no directories to make: the key prefix of a
        // system exists with its first backup. Backups an earlier system
        // of this name left there need the operator's word, as on disk.
        let location = location.map_err(CommandError::Store)?;
        let held = backups_in_store(loc, &location, &name)?;
        if held > 0 && !adopt {
            return Err(CommandError::HoldsObjects(
                name.clone(),
                held,
                format!(
                    "s3://{}/{}",
                    location.bucket,
                    crate::storage::key::system_prefix(&location.prefix, &name)
                ),
            ));
        }
        let secret = creds
            .add(name.clone())
            .map_err(|e| CommandError::Io("random".into(), e))?;
        file.write(&creds)
            .map_err(|e| CommandError::Io(format!("cannot write {}", file.display()), e))?;
        return Ok(secret);
    }
    let storage = open_storage(loc)?;
    // The operator's own command names this root: it is one from now on.
    mark_root(&storage).map_err(|e| {
        CommandError::Io(
            format!("cannot mark the storage root {}", loc.storage.display()),
            e,
        )
    })?;
    let created = match storage.create_dir(name.as_str()) {
        Ok(()) => {
            storage
                .open_dir_nofollow(name.as_str())
                .and_then(|dir| own_like(&storage, dir.as_fd()))
                .map_err(|e| {
                    CommandError::Io("cannot give the storage directory its owner".into(), e)
                })?;
            sync_dir(&storage)
                .map_err(|e| CommandError::Io("cannot sync the storage root".into(), e))?;
            true
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            // Kept from an earlier registration under this name (or, on a
            // case-folding filesystem, under the same name in another
            // case): only a real directory, not a planted symlink, and only
            // with the operator's word if it holds backups.
            let meta = storage
                .symlink_metadata(name.as_str())
                .map_err(|e| CommandError::Io("storage directory".into(), e))?;
            if !meta.is_dir() {
                return Err(CommandError::Io(
                    format!("{} exists in the storage root and is not a directory", name),
                    io::Error::from(io::ErrorKind::AlreadyExists),
                ));
            }
            let held = count_backups(&storage, &name)
                .map_err(|e| CommandError::Io("storage directory".into(), e))?;
            if held > 0 && !adopt {
                return Err(CommandError::HoldsBackups(
                    name.clone(),
                    held,
                    loc.storage.join(name.as_str()),
                ));
            }
            false
        }
        Err(e) => {
            return Err(CommandError::Io(
                format!("cannot create storage directory for {name}"),
                e,
            ));
        }
    };
    let secret = creds
        .add(name.clone())
        .map_err(|e| CommandError::Io("random".into(), e))?;
    if let Err(e) = file.write(&creds) {
        if created {
            let _ = storage.remove_dir(name.as_str());
        }
        return Err(CommandError::Io(
            format!("cannot write {}", file.display()),
            e,
        ));
    }
    Ok(secret)
}

/// How many backups the object store holds under `name`'s prefix (one
/// LIST request per 1,000).
fn backups_in_store(
    loc: &Locations,
    location: &Location,
    name: &SystemName,
) -> Result<usize, CommandError> {
    let client =
        crate::storage::s3::config::client(location, &loc.s3).map_err(CommandError::Store)?;
    let store = crate::storage::s3::store::S3Store::new(client, location.prefix.clone(), 0)
        .map_err(CommandError::Store)?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CommandError::Io("runtime".into(), e))?
        .block_on(store.sizes(name))
        .map(|sizes| sizes.len())
        .map_err(|e| {
            CommandError::Store(match e {
                crate::storage::StoreError::Unavailable(e) => e.to_string(),
                other => format!("{other:?}"),
            })
        })
}

/// What `systems rotate` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Rotated {
    /// A new secret; the previous one valid until this Unix time, or
    /// until `--finish` when `None`.
    Started(String, Option<u64>),
    /// `--finish`: the previous secret is no longer valid (false: there
    /// was none).
    Finished(bool),
}

/// Rotates `name`'s secret: a new one, with the old one still accepted for
/// `overlap` (until `--finish` when `None`); or, with `finish`, ends the
/// rotation. Running servers pick the change up with the file.
pub fn rotate(
    loc: &Locations,
    name: &str,
    finish: bool,
    overlap: Option<std::time::Duration>,
) -> Result<Rotated, CommandError> {
    let name = parse_name(name)?;
    let (file, _lock, mut creds) = lock_and_load(loc)?;
    let rotated = if finish {
        Rotated::Finished(
            creds
                .finish_rotation(&name)
                .ok_or_else(|| CommandError::Unknown(name.clone()))?,
        )
    } else {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let until = overlap.map(|d| now.saturating_add(d.as_secs().max(1)));
        let secret = creds
            .rotate(&name, until, now)
            .map_err(|e| CommandError::Io("rotate".into(), e))?
            .ok_or_else(|| CommandError::Unknown(name.clone()))?;
        Rotated::Started(secret, until)
    };
    file.write(&creds)
        .map_err(|e| CommandError::Io(format!("cannot write {}", file.display()), e))?;
    Ok(rotated)
}

/// Unregisters `name`. Its backups stay where they are.
pub fn remove(loc: &Locations, name: &str) -> Result<(), CommandError> {
    let name = parse_name(name)?;
    let (file, _lock, mut creds) = lock_and_load(loc)?;
    if !creds.remove(&name) {
        return Err(CommandError::Unknown(name));
    }
    file.write(&creds)
        .map_err(|e| CommandError::Io(format!("cannot write {}", file.display()), e))
}

/// The registered systems, sorted, each with what it holds in storage
/// (`None` when the storage root cannot be read: the names still list).
pub fn list(loc: &Locations) -> Result<Vec<(SystemName, Option<Holding>)>, CommandError> {
    let file = credentials_file(loc)?;
    let creds = file
        .load()
        .map_err(|e| CommandError::Credentials(file.display(), e))?;
    if Location::of(&loc.storage).is_some() {
        // An object store: one list per system, through the storage
        // boundary (as `import` and the server's scan do).
        let storage = crate::maintenance::open_storage(loc)?;
        let runtime = crate::maintenance::runtime()?;
        return Ok(creds
            .names()
            .into_iter()
            .map(|name| {
                let holding = match runtime.block_on(storage.list(&name)) {
                    Ok(backups) => Some(Holding::of(&backups)),
                    Err(crate::storage::StoreError::NotFound) => Some(Holding::default()),
                    Err(_) => None,
                };
                (name, holding)
            })
            .collect());
    }
    let storage = DirPath::new(&loc.storage).open(false).ok();
    Ok(creds
        .names()
        .into_iter()
        .map(|name| {
            let holding = storage
                .as_ref()
                .and_then(|root| summarize(root, &name).ok());
            (name, holding)
        })
        .collect())
}

/// Backups (files named by a backup id) in `name`'s directory.
fn count_backups(storage: &Dir, name: &SystemName) -> io::Result<usize> {
    let dir = storage.open_dir_nofollow(name.as_str())?;
    let mut count = 0;
    for entry in dir.entries()? {
        let is_backup = entry?
            .file_name()
            .to_str()
            .is_some_and(|n| n.parse::<BackupId>().is_ok());
        count += usize::from(is_backup);
    }
    Ok(count)
}
