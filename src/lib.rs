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
//!   the same work for unknown systems ([`auth::credentials::Credentials::verify`]).
//!
//! # Layout
//!
//! Three rooms, each calling only the one below it: [`http`] speaks the
//! protocol, [`service`] decides what a request does, [`storage`] keeps
//! the bytes. Around them:
//!
//! * [`config`]: every limit and default, named and documented.
//! * [`system_name`], [`backup_id`]: `SystemName` and `BackupId`, the only
//!   spellings of a system name and a backup id.
//! * [`auth`]: `Authorization` header to an authenticated system; its
//!   [`auth::credentials`] file: format, hashing, verification, live reload.
//! * [`error`]: the error enum and its JSON envelope.
//! * [`metrics`]: counters, rendered in Prometheus text format.
//! * [`logging`]: each log line tagged with the process (supervisor,
//!   worker, command) and pid that wrote it.
//! * [`sandbox`]: the one ambient entry point to the filesystem.
//! * [`confine`]: the Landlock self-sandbox applied after start-up.
//! * [`supervise`]: the unconfined parent that holds the sockets and runs
//!   the server in a sandboxed worker, replaced when the storage root is.
//! * [`systems`]: the `backupd systems add|remove|rotate|list` commands.
//! * [`maintenance`]: `backupd import|verify|prune`, through the same
//!   storage boundary and upload pipeline as the server.
//!
//! [`http`]: [`http::server`] (the accept loop: connection cap, idle rule,
//! graceful drain, lingering close, one runtime per core), [`http::routes`]
//! (the route table; the one place errors become responses),
//! [`http::body`] (backups streamed with flat memory), [`http::zerocopy`],
//! [`http::ranges`] (`ETag`, conditional and range requests),
//! [`http::tls`], [`http::admin`] (`/metrics`, `/healthz`, `/readyz`).
//!
//! [`service`]: what an upload, a list, a delete and a download *are*:
//! limits (quota, upload rate, concurrent downloads), the per-system order
//! of commit and retention, metrics; [`service::upload`] receives a body.
//!
//! [`storage`]: the one boundary the service calls; [`storage::fs`] is the
//! cap-std filesystem store, [`storage::metadata`] the upload record.

// Denied everywhere but `supervise`, whose fork and signal mask have no
// safe wrapper, and `zerocopy`, for `cachestat`, which neither rustix nor
// libc wraps; each `unsafe` block says why it is sound.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod auth;
pub mod backup_id;
pub mod config;
pub mod confine;
pub mod error;
pub mod http;
pub mod logging;
pub mod maintenance;
pub mod metrics;
pub mod sandbox;
pub mod service;
pub mod storage;
pub mod supervise;
pub mod system_name;
pub mod systems;
