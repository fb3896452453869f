//! The self-sandbox: after start-up, Landlock limits the whole process to
//! the files it serves, best effort (older kernels enforce less or nothing,
//! and the log says which).
//!
//! | where | access |
//! |---|---|
//! | the storage root, as opened at start-up | read, write files, make and remove files and system directories |
//! | the storage root's parent | read only: a root replaced while running can be re-opened |
//! | the credentials file's directory | read only: reloads re-read it |
//! | the TLS files' directories | read only: SIGHUP re-reads them |
//! | TCP connects | none, or only to the object store's port (ABI 4) |
//!
//! Everything else (no exec, no other files, no device nodes, no symlink or
//! FIFO creation) is denied. Rules attach to directories as they are when
//! the rule is made, and a sandbox can only narrow: after the storage root
//! is *replaced* (or appears after start-up), downloads keep working through
//! the parent's read rule, and the worker asks its supervisor for a
//! successor sandboxed to the new root ([`crate::supervise`]); until that
//! one serves (milliseconds), uploads and deletes there are denied
//! (answered 503 and logged). Must run before any other thread exists:
//! Landlock restricts the calling thread and the threads it creates later.

use cap_std::fs::Dir;
use landlock::{
    ABI, Access, AccessFs, AccessNet, BitFlags, NetPort, PathBeneath, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetStatus,
};

/// The newest Landlock ABI this code asks for; older kernels get the
/// subset they support.
const ABI_WANTED: ABI = ABI::V5;

/// Directories to allow, already opened through the sandbox's `DirPath`.
pub struct Allowed {
    /// The storage root (read and write), if it was usable at start-up.
    pub storage: Option<Dir>,
    /// Directories to read: the root's parent, the credentials directory,
    /// the TLS files' directories.
    pub read: Vec<Dir>,
    /// The only TCP ports the process may connect to (Landlock ABI 4,
    /// Linux 6.7; older kernels enforce the rest): none with the filesystem
    /// store, the object store's (and DNS's, for a host name) with S3.
    pub connect: Vec<u16>,
}

/// What the kernel enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Every rule asked for.
    Full,
    /// The subset an older kernel supports.
    Partial,
    /// Nothing: a kernel without Landlock.
    None,
}

impl Status {
    /// Whether any rule is in force (then a replaced storage root needs a
    /// new worker to be written to).
    pub fn enforced(self) -> bool {
        self != Status::None
    }

    /// One line for the log.
    pub fn describe(self) -> &'static str {
        match self {
            Status::Full => "fully enforced",
            Status::Partial => "partially enforced (older kernel)",
            Status::None => "not enforced",
        }
    }
}

/// What the read-only directories (and the storage root, besides writing)
/// allow: reading files and listing directories, never `Execute`, which
/// landlock's `from_read` includes: nothing backupd opens is a program.
pub fn read_access() -> BitFlags<AccessFs> {
    AccessFs::from_read(ABI_WANTED) & !BitFlags::from(AccessFs::Execute)
}

/// Why the kernel did not enforce the rules, asked of the kernel directly:
/// the landlock crate reports "not enforced" alike for a kernel without
/// Landlock and for a seccomp filter that refuses its system calls with
/// `EPERM` (systemd 252's `@system-service` does not list them).
pub fn why_not_enforced() -> &'static str {
    // LANDLOCK_CREATE_RULESET_VERSION: asks for the ABI version, creates nothing.
    const VERSION_FLAG: libc::c_uint = 1;
    // SAFETY: with a null attribute pointer, size 0 and the VERSION flag the
    // call reads no memory and returns a number or an errno; no pointer
    // outlives it.
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            VERSION_FLAG,
        )
    };
    if rc >= 0 {
        return "the kernel has Landlock but refused the rules";
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::EPERM) => {
            "refused with EPERM, as a seccomp filter does (allow landlock_create_ruleset, landlock_add_rule and landlock_restrict_self)"
        }
        Some(libc::EOPNOTSUPP) => {
            "Landlock is disabled in this kernel (boot with lsm=...,landlock)"
        }
        _ => "kernel without Landlock",
    }
}

/// Applies the rules to the calling process.
pub fn apply(allowed: &Allowed) -> Result<Status, String> {
    let read = read_access();
    let write = AccessFs::WriteFile
        | AccessFs::RemoveFile
        | AccessFs::MakeReg
        | AccessFs::MakeDir
        | AccessFs::Truncate;
    let read_write: BitFlags<AccessFs> = read | write;
    let mut ruleset = Ruleset::default()
        .handle_access(AccessFs::from_all(ABI_WANTED))
        .and_then(|r| r.handle_access(AccessNet::ConnectTcp))
        .and_then(|r| r.create())
        .map_err(|e| e.to_string())?;
    for port in &allowed.connect {
        ruleset = ruleset
            .add_rule(NetPort::new(*port, AccessNet::ConnectTcp))
            .map_err(|e| e.to_string())?;
    }
    if let Some(storage) = &allowed.storage {
        ruleset = ruleset
            .add_rule(PathBeneath::new(storage, read_write))
            .map_err(|e| e.to_string())?;
    }
    for dir in &allowed.read {
        ruleset = ruleset
            .add_rule(PathBeneath::new(dir, read))
            .map_err(|e| e.to_string())?;
    }
    let status = ruleset.restrict_self().map_err(|e| e.to_string())?;
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced => Status::Full,
        RulesetStatus::PartiallyEnforced => Status::Partial,
        RulesetStatus::NotEnforced => Status::None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_directory_is_granted_execute() {
        let read = read_access();
        assert!(!read.contains(AccessFs::Execute));
        assert!(read.contains(AccessFs::ReadFile) && read.contains(AccessFs::ReadDir));
    }
}
