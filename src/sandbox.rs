//! The one place backupd turns a path into filesystem authority.
//!
//! Everything else reaches files through a [`Dir`] obtained here, and opens
//! names *inside* it, so a single grep for `ambient_authority` audits the
//! whole sandbox: the process only ever names the storage root and the
//! directory holding the credentials file by path, both chosen by the
//! operator, never by a client.

use std::io;
use std::path::{Path, PathBuf};

use cap_std::ambient_authority;
use cap_std::fs::Dir;

/// A directory the operator named on the command line.
#[derive(Debug, Clone)]
pub struct DirPath {
    path: PathBuf,
}

impl DirPath {
    /// Names a directory; nothing is opened yet.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        DirPath { path: path.into() }
    }

    /// The path, for messages to the operator.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the directory, creating it (and its parents) first when `create`
    /// is true. Called at start-up, and again by the watchers that notice a
    /// storage root or credentials directory replaced while running.
    pub fn open(&self, create: bool) -> io::Result<Dir> {
        let authority = ambient_authority();
        if create {
            Dir::create_ambient_dir_all(&self.path, authority)?;
        }
        Dir::open_ambient_dir(&self.path, authority)
    }
}
