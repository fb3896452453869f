//! backupd keeps and serves encrypted backups for many registered systems.
//!
//! A system authenticates with HTTP Basic (`system name : secret`) and can only
//! ever reach its own backups. The bad outcomes are made impossible by
//! construction rather than avoided by care:
//!
//! * the filesystem is reached through [`cap_std::fs::Dir`] handles only, one
//!   per system directory, so no path, `..`, symlink or encoding trick can
//!   leave it; [`sandbox::DirPath::open`] is the single place where the
//!   process turns a path into a directory handle (cap-std's ambient
//!   authority is asked for once in the crate);
//! * a backup id is a parsed [`BackupId`](backup_id::BackupId): nothing
//!   downstream ever sees the raw string;
//! * secrets are stored salted and hashed and compared in constant time, with
//!   the same work for unknown systems ([`credentials::Credentials::verify`]).
//!
//! # Layout
//!
//! * [`config`]: every limit and default, named and documented.
//! * [`sandbox`]: the one ambient entry point to the filesystem.
//! * [`confine`]: the Landlock self-sandbox applied after start-up.
//! * [`system_name`]: `SystemName`, the only spelling of a system name.
//! * [`backup_id`]: `BackupId`, the only spelling of a backup id.
//! * [`credentials`]: the credentials file: format, hashing, verification,
//!   live reload.
//! * [`auth`]: `Authorization` header to credentials to an authenticated system.
//! * [`store`]: `BackupStore`: the storage root watcher and every sandboxed
//!   file operation (open, list, delete, upload, prune).
//! * [`metadata`]: what is known about a backup, and its sidecar record.
//! * [`upload`]: receiving an upload: file name, extension, digest, body.
//! * [`ranges`]: `ETag`, conditional and range requests.
//! * [`ratelimit`]: per-system upload rate limits.
//! * [`metrics`]: counters, rendered in Prometheus text format.
//! * [`tls`]: rustls, with the certificate reloaded on SIGHUP.
//! * [`admin`]: the optional admin listener: `/metrics`, `/healthz`, `/readyz`.
//! * [`body`]: response bodies; streams a backup with flat memory.
//! * [`zerocopy`]: cached chunks sent with `sendfile` under hyper's framing.
//! * [`error`]: the error enum and its JSON envelope.
//! * [`routes`]: dispatch of (method, path) to handlers; the one place errors
//!   become responses.
//! * [`supervise`]: the unconfined parent that holds the sockets and runs
//!   the server in a sandboxed worker, replaced when the storage root is.
//! * [`server`]: the accept loop: connection cap, timeouts, graceful drain.
//! * [`systems`]: the `backupd systems add|remove|list` commands.

// Denied everywhere but `supervise`, whose fork and signal mask have no
// safe wrapper, and `zerocopy`, for `cachestat`, which neither rustix nor
// libc wraps; each `unsafe` block says why it is sound.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod auth;
pub mod backup_id;
pub mod body;
pub mod config;
pub mod confine;
pub mod credentials;
pub mod error;
pub mod metadata;
pub mod metrics;
pub mod ranges;
pub mod ratelimit;
pub mod routes;
pub mod sandbox;
pub mod server;
pub mod store;
pub mod supervise;
pub mod system_name;
pub mod systems;
pub mod tls;
pub mod upload;
pub mod zerocopy;
