//! Every limit and default of the server, named, with the reason for its value.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Address `backupd serve` listens on when none is given: loopback only, so a
/// fresh install is not exposed before the operator decides to expose it.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// Data directory when none is given, relative to the working directory.
pub const DEFAULT_DATA_DIR: &str = "./backupd-data";

/// Name of the credentials file inside the data directory.
pub const CREDENTIALS_FILE_NAME: &str = "credentials";

/// Name of the storage root inside the data directory.
pub const STORAGE_DIR_NAME: &str = "backups";

/// Most connections served at once. Each costs a socket, a task and, while
/// it downloads, one read buffer of at most [`READ_CHUNK_BYTES`]; 4,096
/// keeps a fleet's nightly burst served while bounding memory and file
/// descriptors (the default soft limit of open files is often 1,024, so
/// raise it for more).
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

/// Time a client has to send a complete request head, and also how long an
/// HTTP/1.1 connection may sit idle between requests (hyper starts the timer
/// whenever it waits for a head). Short enough to shed slowloris sockets,
/// long enough for a slow link.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(15);

/// Default idle time (`--idle-timeout`) after which a connection is closed:
/// on HTTP/1.1, no byte moved in either direction (a stalled reader of a
/// download); on HTTP/2, no request in progress or no body frame of one
/// moved, whatever PINGs or other control frames flow (see
/// [`crate::http::server::Activity`]). Long enough for a slow link between two
/// chunks of a download, short enough that idle sockets do not hold the
/// connection slots.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Most bytes of request head (request line plus headers) accepted. Real
/// clients send well under 2 KiB; a Basic header is ~200 bytes.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Most header fields accepted in one request.
pub const MAX_HEADERS: usize = 64;

/// Most concurrent HTTP/2 streams per connection; a system downloads one or a
/// few backups at a time.
pub const MAX_CONCURRENT_STREAMS: u32 = 64;

/// Default time in-flight downloads get to finish after SIGTERM or SIGINT.
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(30);

/// How often every registered system's holdings are re-read for the
/// per-system metrics (one list per system): a replica's own uploads show at
/// once, another replica's within this.
pub const INVENTORY_INTERVAL: Duration = Duration::from_secs(300);

/// How often the storage root is re-opened and compared with the one in use;
/// half the 2 s within which a removed or replaced root must be noticed.
pub const STORAGE_CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// Backlog of the listening sockets: connections the kernel completes and
/// queues while every worker is busy, or while a new worker takes over
/// from the previous one (std's default of 128 refuses a burst of a fleet's
/// nightly pushes).
pub const LISTEN_BACKLOG: i32 = 1024;

/// How often a worker whose sandbox does not cover the storage root in use
/// (replaced, or missing at start-up) asks the supervisor again for a
/// successor, if the last one did not start (see [`crate::supervise`]).
pub const SUCCESSOR_RETRY_INTERVAL: Duration = Duration::from_secs(10);

/// How often the credentials file is re-read; half the 2 s within which a
/// `systems add` or `remove` must take effect on a running server.
pub const CREDENTIALS_CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// Value of `Retry-After` (seconds) on a 503: a few storage checks later.
pub const RETRY_AFTER_SECONDS: u32 = 5;

/// Bytes read from a backup file per chunk, and so the size of the one
/// buffer a download holds (see [`crate::http::body::FileBody`]): 64 concurrent
/// downloads hold 12 MiB. Profiling showed the per-chunk cost is now a
/// syscall or two, not a thread hop, so 128-256 KiB measured alike on
/// loopback (`bench/run.sh`); larger ones only multiply memory by the number
/// of downloads. A multiple of the page size. (The >4 GiB test checks its
/// markers across frame boundaries, so any size passes it.)
pub const READ_CHUNK_BYTES: usize = 192 * 1024;

/// How far ahead of a download that missed the page cache the blocking pool
/// asks the kernel to read (`POSIX_FADV_WILLNEED`). Page cache, not process
/// memory: a few disk requests in flight keep a cold restore streaming
/// while costing one blocking-pool hop per stretch instead of per chunk.
pub const READ_AHEAD_BYTES: u64 = 4 << 20;

/// Most characters of a rejected id echoed back in a 400 body or a log line.
pub const MAX_ECHOED_ID_CHARS: usize = 128;

/// Where the server finds its files and how it limits its clients.
#[derive(Clone)]
pub struct ServeConfig {
    /// The signal mask to restore once the worker's handlers are installed
    /// (signals are blocked from the first line of `main`).
    pub startup_mask: crate::supervise::SavedMask,
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Address of the admin listener, if any.
    pub admin_listen: Option<SocketAddr>,
    /// TLS certificate chain and key files (PEM), if serving HTTPS.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Whether to apply the Landlock self-sandbox after start-up.
    pub self_sandbox: bool,
    /// Where the credentials file is.
    pub credentials: PathBuf,
    /// The storage root: one directory per system below it; or
    /// `s3://BUCKET[/PREFIX]`.
    pub storage: PathBuf,
    /// The object store's settings, for an `s3://` storage.
    pub s3: crate::storage::s3::config::Settings,
    /// Whether the storage root may be created at start-up. True only for the
    /// default location inside the data dir: creating an explicit `--storage`
    /// would write backups onto the root filesystem when a mount is missing.
    pub create_storage: bool,
    /// Most connections served at once.
    pub max_connections: usize,
    /// Time in-flight requests get to finish on shutdown.
    pub grace_period: Duration,
    /// A connection idle this long is closed.
    pub idle_timeout: Duration,
    /// What systems may do with their backups.
    pub policy: Policy,
    /// Whether `/metrics` carries the series labelled by system.
    pub per_system_metrics: bool,
}

/// Default largest upload accepted, in bytes (`--max-upload-bytes`): 2 GiB,
/// above any appliance's nightly backup we know of.
pub const DEFAULT_MAX_UPLOAD_BYTES: u64 = 2 << 30;

/// Default uploads allowed per system per minute (`--upload-rate-per-minute`).
/// A system pushes one backup a night; six a minute allows retries.
pub const DEFAULT_UPLOADS_PER_MINUTE: u32 = 6;

/// Default uploads allowed per system per hour (`--upload-rate-per-hour`).
pub const DEFAULT_UPLOADS_PER_HOUR: u32 = 60;

/// Default most downloads one system may have in flight at once
/// (`--max-downloads-per-system`): a restore, or a client that splits one
/// over a few connections (`aria2c -x4`), fits; one tenant cannot hold the
/// connections and buffers every other tenant needs. Each download holds
/// at most one [`READ_CHUNK_BYTES`] buffer, so one system's downloads
/// hold at most 8 x 192 KiB = 1.5 MiB.
pub const DEFAULT_MAX_DOWNLOADS_PER_SYSTEM: u32 = 8;

/// `Retry-After` (seconds) of a 429 for a system over its concurrent
/// downloads: one of its own downloads has to finish first.
pub const DOWNLOAD_RETRY_AFTER_SECONDS: u64 = 5;

/// Default backups kept per system (`--retention-count`).
pub const DEFAULT_RETENTION_COUNT: u32 = 10;

/// The most of a refused HTTP/2 upload's body read (and discarded) after
/// its answer, so that clients which cannot take an early answer with a
/// `NO_ERROR` reset (curl before 8.x reports "Stream error in the HTTP/2
/// framing layer" and drops it) finish sending and read it; a longer body
/// is then reset. Costs no more than the upload the client was sending.
pub const REFUSED_BODY_DRAIN_BYTES: u64 = 64 << 20;

/// The longest a refused HTTP/2 upload's body is read after its answer.
pub const REFUSED_BODY_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// An upload body on which no byte arrives for this long is abandoned (and
/// its temporary file removed); shorter than [`IDLE_TIMEOUT`] so the client
/// can still be told (the default one).
pub const UPLOAD_STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Bytes of an upload copied into one chunk, which is hashed and written
/// (one `write` to disk, with `O_DIRECT`, or one piece of the PUT to the
/// object store) on the blocking pool while the next is filled: one upload
/// holds two chunks. A multiple of the direct-I/O alignment. 512 KiB: with
/// 8 uploads, 1 MiB chunks were no faster and raised the worker's peak RSS
/// by 8 MiB (bench/RESULTS.md, issue 16).
pub const WRITE_CHUNK_BYTES: usize = 512 << 10;
const _: () = assert!(WRITE_CHUNK_BYTES.is_multiple_of(crate::storage::chunk::DIRECT_IO_ALIGN));

/// What the server allows systems to do with their backups.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Largest upload, in bytes.
    pub max_upload_bytes: u64,
    /// Most bytes of backups per system; 0 = no quota.
    pub quota_bytes: u64,
    /// Uploads per system per minute; 0 = unlimited.
    pub uploads_per_minute: u32,
    /// Uploads per system per hour; 0 = unlimited.
    pub uploads_per_hour: u32,
    /// Backups kept per system after an upload; 0 = keep all.
    pub retention_count: u32,
    /// Bytes of backups kept per system after an upload; 0 = no limit.
    pub retention_bytes: u64,
    /// Refuse DELETE: only retention removes backups.
    pub append_only: bool,
    /// Most downloads one system may have in flight at once; 0 = no cap.
    pub max_downloads_per_system: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_upload_bytes: DEFAULT_MAX_UPLOAD_BYTES,
            quota_bytes: 0,
            uploads_per_minute: DEFAULT_UPLOADS_PER_MINUTE,
            uploads_per_hour: DEFAULT_UPLOADS_PER_HOUR,
            retention_count: DEFAULT_RETENTION_COUNT,
            retention_bytes: 0,
            append_only: false,
            max_downloads_per_system: DEFAULT_MAX_DOWNLOADS_PER_SYSTEM,
        }
    }
}
