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
    ///
    /// A directory it creates is owned like its parent when running as
    /// root (see [`own_like`]): root's first `systems add` must not leave a
    /// storage root the service's user cannot write.
    pub fn open(&self, create: bool) -> io::Result<Dir> {
        let authority = ambient_authority();
        let missing = create && !self.path.is_dir();
        if create {
            Dir::create_ambient_dir_all(&self.path, authority)?;
        }
        let dir = Dir::open_ambient_dir(&self.path, authority)?;
        if missing {
            let parent = match self.path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            own_like(
                &Dir::open_ambient_dir(parent, authority)?,
                rustix::fd::AsFd::as_fd(&dir),
            )?;
        }
        Ok(dir)
    }
}

/// A file the operator named (a certificate, a key): its directory, opened
/// through [`DirPath`], and its name inside it. The path may be a symlink
/// anywhere (certbot's `live/NAME/fullchain.pem` links to
/// `../../archive/NAME/fullchainN.pem`, re-pointed at each renewal): it is
/// operator configuration, so each read resolves it afresh and opens the
/// file it names now.
#[derive(Debug, Clone)]
pub struct FilePath {
    dir: DirPath,
    name: std::ffi::OsString,
}

impl FilePath {
    /// Names the file at `path`; nothing is opened yet.
    pub fn new(path: &Path) -> io::Result<Self> {
        let name = path.file_name().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} names no file", path.display()),
            )
        })?;
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        Ok(FilePath {
            dir: DirPath::new(dir),
            name: name.to_owned(),
        })
    }

    /// The directory holding it.
    pub fn dir(&self) -> &DirPath {
        &self.dir
    }

    /// The file's name inside its directory.
    pub fn name(&self) -> &std::ffi::OsStr {
        &self.name
    }

    /// The file's path, for messages.
    pub fn display(&self) -> String {
        self.dir.path().join(&self.name).display().to_string()
    }

    /// The directory of the file the path names now, symlinks resolved
    /// (where the self-sandbox must allow reads).
    pub fn resolved_dir(&self) -> io::Result<PathBuf> {
        Ok(self.resolve()?.dir.path)
    }

    /// The same file, named by its path with every symlink resolved.
    fn resolve(&self) -> io::Result<FilePath> {
        FilePath::new(&std::fs::canonicalize(self.dir.path.join(&self.name))?)
    }

    /// Opens the file the path names now, for reading.
    pub fn open(&self) -> io::Result<std::fs::File> {
        let real = self.resolve()?;
        Ok(real.dir.open(false)?.open(&real.name)?.into_std())
    }

    /// Reads the whole file, refusing one larger than `max` bytes.
    pub fn read(&self, max: u64) -> io::Result<Vec<u8>> {
        use std::io::Read;
        let real = self.resolve()?;
        let file = real.dir.open(false)?.open(&real.name)?;
        let mut bytes = Vec::new();
        file.take(max + 1).read_to_end(&mut bytes)?;
        if bytes.len() as u64 > max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is too large", self.display()),
            ));
        }
        Ok(bytes)
    }
}

/// Gives what the process just created in `dir` (the open `created`) the
/// owner and group of `dir` itself, when running as root: `systems`,
/// `import` and the other commands run by root beside a server that runs
/// as its own user (the shipped unit's `DynamicUser`) then leave files that
/// user can still read and replace. Not root, or `dir` owned by root:
/// nothing to do (files are created owned by the process, as always).
pub fn own_like(dir: &Dir, created: rustix::fd::BorrowedFd<'_>) -> io::Result<()> {
    use cap_std::fs::MetadataExt;
    if !rustix::process::geteuid().is_root() {
        return Ok(());
    }
    let meta = dir.dir_metadata()?;
    if meta.uid() == 0 && meta.gid() == 0 {
        return Ok(());
    }
    // By descriptor with AT_EMPTY_PATH: works for cap-std's O_PATH
    // directory handles too, where fchown would be EBADF.
    rustix::fs::chownat(
        created,
        "",
        Some(rustix::fs::Uid::from_raw(meta.uid())),
        Some(rustix::fs::Gid::from_raw(meta.gid())),
        rustix::fs::AtFlags::EMPTY_PATH,
    )
    .map_err(io::Error::from)
}
