//! `backupd systems add|remove|list`: managing who may connect.
//!
//! Each command holds the credentials lock for its whole read-modify-write,
//! checks everything before changing anything, and replaces the credentials
//! file atomically, so a running server only ever sees a whole file.

use std::fmt;
use std::io;
use std::path::PathBuf;

use cap_std::fs::Dir;

use crate::credentials::{Credentials, CredentialsFile, LoadError};
use crate::sandbox::DirPath;
use crate::system_name::{InvalidSystemName, SystemName};

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
}

/// Why a `systems` command changed nothing.
#[derive(Debug)]
pub enum CommandError {
    /// The name is not a valid system name.
    InvalidName(String, InvalidSystemName),
    /// `add` of a name that is registered.
    Duplicate(SystemName),
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

/// Registers `name`, creates its storage directory, and returns its new
/// secret: the only time the secret exists outside the client.
pub fn add(loc: &Locations, name: &str) -> Result<String, CommandError> {
    let name = parse_name(name)?;
    let (file, _lock, mut creds) = lock_and_load(loc)?;
    if creds.contains(&name) {
        return Err(CommandError::Duplicate(name));
    }
    let storage = open_storage(loc)?;
    let created = match storage.create_dir(name.as_str()) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            // Kept from an earlier registration under this name: reuse it,
            // but only if it really is a directory, not a planted symlink.
            let meta = storage
                .symlink_metadata(name.as_str())
                .map_err(|e| CommandError::Io("storage directory".into(), e))?;
            if !meta.is_dir() {
                return Err(CommandError::Io(
                    format!("{} exists in the storage root and is not a directory", name),
                    io::Error::from(io::ErrorKind::AlreadyExists),
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

/// The registered systems, sorted.
pub fn list(loc: &Locations) -> Result<Vec<SystemName>, CommandError> {
    let file = credentials_file(loc)?;
    let creds = file
        .load()
        .map_err(|e| CommandError::Credentials(file.display(), e))?;
    Ok(creds.names())
}
