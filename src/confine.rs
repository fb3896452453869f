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
//!
//! Everything else (no exec, no other files, no device nodes, no symlink or
//! FIFO creation) is denied. Rules attach to directories as they are when
//! the rule is made: after the storage root is *replaced*, downloads keep
//! working through the parent's read rule, but uploads and deletes in the
//! new root are denied (answered 503 and logged) until a restart applies
//! the sandbox to it. Must run before any other thread exists: Landlock
//! restricts the calling thread and the threads it creates later.

use cap_std::fs::Dir;
use landlock::{
    ABI, Access, AccessFs, BitFlags, PathBeneath, Ruleset, RulesetAttr, RulesetCreatedAttr,
    RulesetStatus,
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
}

/// Applies the rules; returns a one-line description of what the kernel
/// enforced, for the log.
pub fn apply(allowed: &Allowed) -> Result<&'static str, String> {
    let read = AccessFs::from_read(ABI_WANTED);
    let write = AccessFs::WriteFile
        | AccessFs::RemoveFile
        | AccessFs::MakeReg
        | AccessFs::MakeDir
        | AccessFs::Truncate;
    let read_write: BitFlags<AccessFs> = read | write;
    let mut ruleset = Ruleset::default()
        .handle_access(AccessFs::from_all(ABI_WANTED))
        .and_then(|r| r.create())
        .map_err(|e| e.to_string())?;
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
        RulesetStatus::FullyEnforced => "fully enforced",
        RulesetStatus::PartiallyEnforced => "partially enforced (older kernel)",
        RulesetStatus::NotEnforced => "not enforced (kernel without Landlock)",
    })
}
