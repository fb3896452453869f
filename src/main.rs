//! The `backupd` command line: read the configuration, open the sandbox
//! roots, bind, and serve until a signal; or manage the registered systems.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backupd::auth::credentials::{CredentialStore, CredentialsFile};
use backupd::config::{
    self, CREDENTIALS_CHECK_INTERVAL, CREDENTIALS_FILE_NAME, INVENTORY_INTERVAL, LISTEN_BACKLOG,
    Policy, STORAGE_CHECK_INTERVAL, STORAGE_DIR_NAME, SUCCESSOR_RETRY_INTERVAL, ServeConfig,
};
use backupd::confine;
use backupd::http::server::{self, Cores, Limits};
use backupd::http::tls::Tls;
use backupd::logging::{self, Role};
use backupd::metrics::Reloaded;
use backupd::sandbox::{DirPath, FilePath};
use backupd::service::App;
use backupd::storage::Holding;
use backupd::storage::Storage;
use backupd::storage::fs::{FsStore, RootIdentity};
use backupd::storage::s3::config::{self as s3config, Location};
use backupd::storage::s3::store::S3Store;
use backupd::supervise::{self, Supervisor};
use backupd::system_name::SystemName;
use backupd::systems::{self, Locations};
use clap::{Args, Parser, Subcommand};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

/// The allocator. musl's takes a global lock and hands big blocks back to
/// the kernel on every free: the static binary spent 3.5x the glibc build's
/// CPU per 64 KiB download (page faults, TLB shootdowns, futex waits;
/// `bench/RESULTS.md`). mimalloc (Microsoft's, widely used) brings the
/// static binary level with glibc, and using it in both builds means the
/// benchmarked binary allocates like the shipped one. Built without its
/// "secure" mode (guard pages, encrypted free lists, about 10 % slower):
/// that hardens against heap corruption, which safe Rust does not cause.
/// And with `no_thp`: its arenas asked for transparent huge pages, which
/// took the peak RSS of 8 concurrent downloads from 11 to 31 MiB.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Keeps and serves encrypted backups for registered systems.
#[derive(Parser)]
#[command(name = "backupd", version, about)]
struct Cli {
    #[command(flatten)]
    locations: LocationArgs,
    /// Log format on stderr; the filter is `RUST_LOG` (default `info`).
    #[arg(long, global = true, env = "BACKUPD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Where backupd keeps its files; every command takes these.
#[derive(Args)]
struct LocationArgs {
    /// Data directory: holds the credentials file and backups/<system>/<id>.
    #[arg(long, global = true, env = "BACKUPD_DATA_DIR", default_value = config::DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// Credentials file [default: DATA_DIR/credentials].
    #[arg(long, global = true, env = "BACKUPD_CREDENTIALS")]
    credentials: Option<PathBuf>,
    /// Storage root, one directory per system [default: DATA_DIR/backups].
    /// An explicit root is never created: a missing mount must not fill the
    /// root filesystem.
    #[arg(long, global = true, env = "BACKUPD_STORAGE")]
    storage: Option<PathBuf>,
    /// The S3 endpoint for an s3:// storage: https://HOST[:PORT], or
    /// http:// to a loopback address [default: AWS's regional endpoint].
    #[arg(long, global = true, env = "BACKUPD_S3_ENDPOINT")]
    s3_endpoint: Option<String>,
    /// The region requests are signed for [default: us-east-1].
    #[arg(long, global = true, env = "BACKUPD_S3_REGION")]
    s3_region: Option<String>,
    /// A file with aws_access_key_id and aws_secret_access_key (mode 0600)
    /// [default: the AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and
    /// AWS_SESSION_TOKEN variables].
    #[arg(long, global = true, env = "BACKUPD_S3_CREDENTIALS")]
    s3_credentials: Option<PathBuf>,
    /// The CA (PEM) that signed an HTTPS endpoint's certificate [default:
    /// the system's CA bundle].
    #[arg(long, global = true, env = "BACKUPD_S3_CA")]
    s3_ca: Option<PathBuf>,
}

impl LocationArgs {
    fn resolve(self) -> Locations {
        Locations {
            credentials: self
                .credentials
                .unwrap_or_else(|| self.data_dir.join(CREDENTIALS_FILE_NAME)),
            create_storage: self.storage.is_none(),
            storage: self
                .storage
                .unwrap_or_else(|| self.data_dir.join(STORAGE_DIR_NAME)),
            s3: backupd::storage::s3::config::Settings {
                endpoint: self.s3_endpoint,
                region: self.s3_region,
                credentials: self.s3_credentials,
                ca: self.s3_ca,
                ..Default::default()
            },
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(Box<ServeArgs>),
    /// Manage the systems that may connect.
    #[command(subcommand)]
    Systems(SystemsCommand),
    /// Store existing files as backups of a system, the way an upload would
    /// (id from each file's modification time, SHA-256 recorded; a file
    /// the system already holds, by SHA-256, is skipped).
    Import {
        /// The registered system the files belong to.
        #[arg(allow_hyphen_values = true)]
        name: String,
        /// The files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Say what would be stored; store nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Recompute the SHA-256 of every backup that has one recorded; exits 4
    /// when any does not match.
    Verify {
        /// Only this system [default: every registered one].
        #[arg(allow_hyphen_values = true)]
        name: Option<String>,
        /// Most bytes read per second, so serving keeps its speed; 0 = no
        /// limit.
        #[arg(long, default_value_t = backupd::maintenance::DEFAULT_VERIFY_BYTES_PER_SECOND)]
        max_rate: u64,
    },
    /// Apply the retention policy now (never removing a system's newest
    /// backup): after changing it, or when a full disk refuses the uploads
    /// that would have applied it.
    Prune {
        /// Only this system [default: every registered one].
        #[arg(allow_hyphen_values = true)]
        name: Option<String>,
        /// Backups kept per system; 0 = keep all.
        #[arg(long, env = "BACKUPD_RETENTION_COUNT", default_value_t = config::DEFAULT_RETENTION_COUNT)]
        retention_count: u32,
        /// Bytes of backups kept per system; 0 = no limit.
        #[arg(long, env = "BACKUPD_RETENTION_BYTES", default_value_t = 0)]
        retention_bytes: u64,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "BACKUPD_LISTEN", default_value = config::DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Address of the admin listener (/metrics, /healthz, /readyz); off
    /// unless given. It needs no credentials: keep it on loopback or a
    /// management network, never the public address.
    #[arg(long, env = "BACKUPD_ADMIN_LISTEN")]
    admin_listen: Option<SocketAddr>,
    /// Serve HTTPS with this PEM certificate chain (needs --tls-key).
    /// SIGHUP reloads it.
    #[arg(long, env = "BACKUPD_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "BACKUPD_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Run without the Landlock self-sandbox (for kernels or setups where
    /// it gets in the way; the log says whether it was enforced).
    #[arg(long, env = "BACKUPD_NO_SELF_SANDBOX")]
    no_self_sandbox: bool,
    /// Most connections served at once.
    #[arg(long, env = "BACKUPD_MAX_CONNECTIONS", default_value_t = config::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// Seconds in-flight downloads get to finish after SIGTERM or SIGINT.
    #[arg(long, env = "BACKUPD_GRACE_PERIOD", default_value_t = config::DEFAULT_GRACE_PERIOD.as_secs())]
    grace_period: u64,
    /// Seconds after which an idle connection is closed (HTTP/1.1: no byte
    /// moved; HTTP/2: no request or body frame moved, pings aside).
    #[arg(long, env = "BACKUPD_IDLE_TIMEOUT", default_value_t = config::DEFAULT_IDLE_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    idle_timeout: u64,
    /// Largest upload accepted, in bytes.
    #[arg(long, env = "BACKUPD_MAX_UPLOAD_BYTES", default_value_t = config::DEFAULT_MAX_UPLOAD_BYTES)]
    max_upload_bytes: u64,
    /// Most bytes of backups per system; 0 = no quota.
    #[arg(long, env = "BACKUPD_QUOTA_BYTES", default_value_t = 0)]
    quota_bytes: u64,
    /// Uploads allowed per system per minute; 0 = unlimited.
    #[arg(long, env = "BACKUPD_UPLOAD_RATE_PER_MINUTE", default_value_t = config::DEFAULT_UPLOADS_PER_MINUTE)]
    upload_rate_per_minute: u32,
    /// Uploads allowed per system per hour; 0 = unlimited.
    #[arg(long, env = "BACKUPD_UPLOAD_RATE_PER_HOUR", default_value_t = config::DEFAULT_UPLOADS_PER_HOUR)]
    upload_rate_per_hour: u32,
    /// Backups kept per system after each upload (oldest pruned first); 0 = keep all.
    #[arg(long, env = "BACKUPD_RETENTION_COUNT", default_value_t = config::DEFAULT_RETENTION_COUNT)]
    retention_count: u32,
    /// Bytes of backups kept per system after each upload; 0 = no limit.
    #[arg(long, env = "BACKUPD_RETENTION_BYTES", default_value_t = 0)]
    retention_bytes: u64,
    /// Largest upload sent to the store in one PUT (and copied in one
    /// CopyObject); larger ones go as multipart uploads. At least 5 MiB.
    #[arg(long, env = "BACKUPD_S3_SINGLE_PUT_MAX", default_value_t = backupd::storage::s3::store::S3_SINGLE_PUT_MAX)]
    s3_single_put_max: u64,
    /// Seconds to wait for the object store's answer (and between two
    /// pieces of a backup it sends) before answering 503 or aborting the
    /// transfer.
    #[arg(long, env = "BACKUPD_S3_TIMEOUT", default_value_t = backupd::storage::s3::client::S3_ANSWER_TIMEOUT.as_secs())]
    s3_timeout: u64,
    /// Refuse DELETE (403): only retention removes backups, so a stolen
    /// secret cannot wipe a system's history.
    #[arg(long, env = "BACKUPD_APPEND_ONLY")]
    append_only: bool,
    /// Most downloads one system may have in flight at once (429 above);
    /// 0 = no cap.
    #[arg(long, env = "BACKUPD_MAX_DOWNLOADS_PER_SYSTEM", default_value_t = config::DEFAULT_MAX_DOWNLOADS_PER_SYSTEM)]
    max_downloads_per_system: u32,
    /// Leave the series labelled by system out of /metrics (five per
    /// system: 500,000 for 100,000 systems), and the scan that feeds them.
    #[arg(long, env = "BACKUPD_NO_PER_SYSTEM_METRICS")]
    no_per_system_metrics: bool,
}

#[derive(Subcommand)]
enum SystemsCommand {
    /// Register a system; prints its new secret, alone, on stdout.
    Add {
        /// [A-Za-z0-9][A-Za-z0-9._-]{0,127}; unique ignoring case.
        #[arg(allow_hyphen_values = true)]
        name: String,
        /// Hand the backups an earlier system of this name left in its
        /// directory to the new one (refused without it).
        #[arg(long)]
        adopt: bool,
    },
    /// Revoke a system's access; its backups stay on disk.
    Remove {
        /// The system to revoke.
        #[arg(allow_hyphen_values = true)]
        name: String,
    },
    /// Give a system a new secret (printed, alone, on stdout) while its old
    /// one stays valid: until `--finish`, or for `--overlap`.
    Rotate {
        /// The system whose secret changes.
        #[arg(allow_hyphen_values = true)]
        name: String,
        /// End the rotation: only the new secret is valid from now on.
        #[arg(long, conflicts_with = "overlap")]
        finish: bool,
        /// Keep the old secret valid for this long (e.g. `7d`), then stop
        /// accepting it by itself; without it, until `--finish`.
        #[arg(long, value_parser = humantime::parse_duration)]
        overlap: Option<Duration>,
    },
    /// List registered systems with their backups, bytes, and the time
    /// and age of their newest backup.
    List {
        /// One JSON document, for scripts.
        #[arg(long)]
        json: bool,
        /// Only systems whose newest backup is older than this (or that have
        /// none), e.g. `26h`; exits 3 when there are any (for cron).
        #[arg(long, value_parser = humantime::parse_duration)]
        stale: Option<Duration>,
    },
}

/// The signal mask the process started with, saved by [`hold_signals`].
static STARTUP_MASK: std::sync::Mutex<Option<supervise::SavedMask>> = std::sync::Mutex::new(None);

/// Blocks the signals the server handles before even `main` runs (see
/// `supervise::block_signals`): a SIGHUP or SIGTERM sent the moment the
/// process exists (`systemctl reload` right after a start) is held until
/// the handlers are in place, never fatal. `main` itself would be too late
/// by the runtime's and allocator's start-up.
extern "C" fn hold_signals() {
    if let Ok(mask) = supervise::block_signals()
        && let Ok(mut saved) = STARTUP_MASK.lock()
    {
        *saved = Some(mask);
    }
}

// SAFETY: `.init_array` entries are called once, by the loader (or, in the
// static binary, the C runtime), before `main`, on the only thread, with
// no arguments used; `hold_signals` only calls pthread_sigmask and locks a
// const-initialised mutex, neither of which needs Rust's runtime set up.
#[used]
#[unsafe(link_section = ".init_array")]
static HOLD_SIGNALS: extern "C" fn() = hold_signals;

fn main() -> ExitCode {
    let saved = STARTUP_MASK.lock().ok().and_then(|mut m| m.take());
    let startup_mask = match saved.map_or_else(supervise::block_signals, Ok) {
        Ok(mask) => mask,
        Err(e) => {
            eprintln!("backupd: cannot block signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_)) {
        // The systems commands take Ctrl-C and SIGTERM as usual.
        if let Err(e) = supervise::unblock(startup_mask) {
            eprintln!("backupd: cannot unblock signals: {e}");
            return ExitCode::FAILURE;
        }
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    logging::set_role(match &cli.command {
        Command::Serve(args) if !args.no_self_sandbox => Role::Supervisor,
        Command::Serve(_) => Role::Worker,
        _ => Role::Command,
    });
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match cli.log_format {
        LogFormat::Text => logs
            .with_ansi(std::io::stderr().is_terminal())
            .with_timer(logging::TaggedTime)
            .init(),
        LogFormat::Json => {
            let json = tracing_subscriber::fmt::format()
                .json()
                .flatten_event(true)
                .with_current_span(false);
            logs.json().event_format(logging::TaggedJson(json)).init()
        }
    }
    let locations = cli.locations.resolve();
    match cli.command {
        Command::Serve(args) => serve(ServeConfig {
            startup_mask,
            listen: args.listen,
            admin_listen: args.admin_listen,
            tls: args.tls_cert.zip(args.tls_key),
            self_sandbox: !args.no_self_sandbox,
            credentials: locations.credentials,
            storage: locations.storage,
            s3: backupd::storage::s3::config::Settings {
                single_put_max: args.s3_single_put_max,
                timeout: std::time::Duration::from_secs(args.s3_timeout.max(1)),
                ..locations.s3.clone()
            },
            create_storage: locations.create_storage,
            max_connections: args.max_connections.max(1),
            grace_period: Duration::from_secs(args.grace_period),
            idle_timeout: Duration::from_secs(args.idle_timeout),
            policy: Policy {
                max_upload_bytes: args.max_upload_bytes,
                quota_bytes: args.quota_bytes,
                uploads_per_minute: args.upload_rate_per_minute,
                uploads_per_hour: args.upload_rate_per_hour,
                retention_count: args.retention_count,
                retention_bytes: args.retention_bytes,
                append_only: args.append_only,
                max_downloads_per_system: args.max_downloads_per_system,
            },
            per_system_metrics: !args.no_per_system_metrics,
        }),
        Command::Systems(command) => manage(&locations, command),
        Command::Import {
            name,
            files,
            dry_run,
        } => import(&locations, &name, &files, dry_run),
        Command::Verify { name, max_rate } => verify(&locations, name.as_deref(), max_rate),
        Command::Prune {
            name,
            retention_count,
            retention_bytes,
        } => prune(
            &locations,
            name.as_deref(),
            retention_count,
            retention_bytes,
        ),
    }
}

/// Exit code of `verify` when a backup does not match its SHA-256.
const MISMATCH_EXIT: u8 = 4;

fn import(locations: &Locations, name: &str, files: &[PathBuf], dry_run: bool) -> ExitCode {
    use backupd::maintenance::Imported;
    let outcomes = match backupd::maintenance::import(locations, name, files, dry_run) {
        Ok(outcomes) => outcomes,
        Err(e) => {
            eprintln!("backupd: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut failed = false;
    for outcome in outcomes {
        match outcome {
            Imported::Stored(path, id, size, sha) => println!(
                "imported {} as {id} ({size} bytes, sha256 {})",
                path.display(),
                backupd::storage::metadata::hex(sha)
            ),
            Imported::WouldStore(path, id, size, _) => {
                println!("would import {} as {id} ({size} bytes)", path.display())
            }
            Imported::Skipped(path, id) => println!(
                "skipped {}: {name} already holds it as {id} (same SHA-256)",
                path.display()
            ),
            Imported::Failed(path, why) => {
                failed = true;
                eprintln!("backupd: {}: not imported: {why}", path.display());
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn verify(locations: &Locations, name: Option<&str>, max_rate: u64) -> ExitCode {
    let found = match backupd::maintenance::verify(locations, name, max_rate) {
        Ok(found) => found,
        Err(e) => {
            eprintln!("backupd: {e}");
            return ExitCode::FAILURE;
        }
    };
    for (system, id, recorded, now) in &found.mismatches {
        println!("MISMATCH {system}/{id}: recorded sha256 {recorded}, content now {now}");
    }
    for error in &found.errors {
        eprintln!("backupd: {error}");
    }
    eprintln!(
        "verified {} backups ({} bytes): {} mismatched, {} without a recorded SHA-256 (not checked), {} unreadable",
        found.matched,
        found.bytes,
        found.mismatches.len(),
        found.unrecorded,
        found.errors.len()
    );
    if !found.mismatches.is_empty() {
        ExitCode::from(MISMATCH_EXIT)
    } else if !found.errors.is_empty() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn prune(locations: &Locations, name: Option<&str>, count: u32, bytes: u64) -> ExitCode {
    match backupd::maintenance::prune(locations, name, count, bytes) {
        Ok(pruned) => {
            for (system, id) in &pruned {
                println!("pruned {system}/{id}");
            }
            eprintln!("pruned {} backups", pruned.len());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("backupd: {e}");
            ExitCode::FAILURE
        }
    }
}

fn manage(locations: &Locations, command: SystemsCommand) -> ExitCode {
    let result = match command {
        SystemsCommand::Add { name, adopt } => systems::add(locations, &name, adopt).map(|secret| {
            println!("{secret}");
            eprintln!("added system {name}; its secret is printed above and is not stored anywhere: keep it now");
        }),
        SystemsCommand::Remove { name } => systems::remove(locations, &name).map(|()| {
            eprintln!(
                "removed system {name}; its backups stay in {} until you delete them",
                locations.storage.join(&name).display()
            );
        }),
        SystemsCommand::Rotate {
            name,
            finish,
            overlap,
        } => systems::rotate(locations, &name, finish, overlap).map(|rotated| match rotated {
            systems::Rotated::Started(secret, until) => {
                println!("{secret}");
                let until = until.map_or_else(
                    || format!("until `backupd systems rotate {name} --finish`"),
                    |t| {
                        let t = std::time::UNIX_EPOCH + Duration::from_secs(t);
                        format!("until {}", humantime::format_rfc3339_seconds(t))
                    },
                );
                eprintln!("rotated the secret of {name}: the new one is printed above and is not stored anywhere; the old one stays valid {until}");
            }
            systems::Rotated::Finished(true) => {
                eprintln!("finished the rotation of {name}: only its new secret is valid now");
            }
            systems::Rotated::Finished(false) => {
                eprintln!("{name} was not rotating: its secret is unchanged");
            }
        }),
        SystemsCommand::List { json, stale } => {
            return match systems::list(locations) {
                Ok(systems) => list_systems(&systems, json, stale),
                Err(e) => {
                    eprintln!("backupd: {e}");
                    ExitCode::FAILURE
                }
            };
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("backupd: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Exit code of `systems list --stale` when some system is stale.
const STALE_EXIT: u8 = 3;

/// Prints `systems list`: a table (or JSON) of each system's backups,
/// bytes and newest backup; with `stale`, only those whose newest backup
/// is older (or missing), and exit code 3 if there are any.
fn list_systems(
    systems: &[(SystemName, Option<Holding>)],
    json: bool,
    stale: Option<Duration>,
) -> ExitCode {
    let now = std::time::SystemTime::now();
    let age = |h: &Option<Holding>| {
        h.and_then(|h| h.newest)
            .map(|t| now.duration_since(t).unwrap_or_default())
    };
    let shown: Vec<&(SystemName, Option<Holding>)> = systems
        .iter()
        .filter(|(_, h)| stale.is_none_or(|limit| age(h).is_none_or(|a| a > limit)))
        .collect();
    if json {
        let rows: Vec<serde_json::Value> = shown
            .iter()
            .map(|(name, h)| {
                serde_json::json!({
                    "name": name.as_str(),
                    "backups": h.map(|h| h.backups),
                    "bytes": h.map(|h| h.bytes),
                    "newest": h.and_then(|h| h.newest).map(|t| humantime::format_rfc3339_seconds(t).to_string()),
                    "age_seconds": age(h).map(|a| a.as_secs()),
                })
            })
            .collect();
        println!("{}", serde_json::json!({ "systems": rows }));
    } else {
        println!(
            "{:<32} {:>8} {:>16}  {:<20}  AGE",
            "SYSTEM", "BACKUPS", "BYTES", "NEWEST"
        );
        for (name, h) in &shown {
            let (backups, bytes) = h.map_or(("?".into(), "?".into()), |h| {
                (h.backups.to_string(), h.bytes.to_string())
            });
            let newest = h.and_then(|h| h.newest).map_or("-".into(), |t| {
                humantime::format_rfc3339_seconds(t).to_string()
            });
            let age = age(h).map_or("-".into(), |a| {
                humantime::format_duration(Duration::from_secs(a.as_secs() / 60 * 60)).to_string()
            });
            println!(
                "{:<32} {:>8} {:>16}  {:<20}  {age}",
                name.as_str(),
                backups,
                bytes,
                newest
            );
        }
    }
    if stale.is_some() && !shown.is_empty() {
        ExitCode::from(STALE_EXIT)
    } else {
        ExitCode::SUCCESS
    }
}

fn serve(config: ServeConfig) -> ExitCode {
    let listeners = match Listeners::bind(&config) {
        Ok(listeners) => listeners,
        Err(message) => {
            tracing::error!("{message}");
            return ExitCode::FAILURE;
        }
    };
    let code = if config.self_sandbox {
        // One sandboxed worker per storage root, under an unconfined
        // supervisor that holds the sockets (see `supervise`). Nothing here
        // has started a thread yet, as `supervise::run` requires.
        supervise::run(listeners, &|supervisor, listeners| {
            worker(&config, listeners, Some(supervisor))
        })
        .unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot start the supervisor");
            1
        })
    } else {
        tracing::warn!("self-sandbox disabled by --no-self-sandbox");
        worker(&config, listeners, None)
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// The sockets, bound once (by the supervisor, when there is one) and
/// shared by every worker.
struct Listeners {
    public: std::net::TcpListener,
    admin: Option<std::net::TcpListener>,
}

impl Listeners {
    fn bind(config: &ServeConfig) -> Result<Self, String> {
        // Socket activation: systemd holds the sockets across restarts, so
        // none is refused while the service is down; --listen (and, with a
        // second socket, --admin-listen) are then the unit's.
        let mut inherited = supervise::inherited_listeners()
            .map_err(|e| format!("socket activation: {e}"))?
            .into_iter();
        if let Some(public) = inherited.next() {
            let admin = match (config.admin_listen, inherited.next()) {
                (_, Some(admin)) => Some(admin),
                (Some(addr), None) => Some(bind(addr)?),
                (None, None) => None,
            };
            tracing::info!(
                sockets = if admin.is_some() { 2 } else { 1 },
                "socket activation: serving on the sockets systemd passed"
            );
            return Ok(Listeners { public, admin });
        }
        let public = bind(config.listen)?;
        let admin = match config.admin_listen {
            None => None,
            Some(admin) => {
                let local = public.local_addr().map_err(|e| e.to_string())?;
                // Port 0 asks for a fresh port, which can never be the public one.
                if admin.port() != 0 && (admin == config.listen || admin == local) {
                    return Err(format!(
                        "--admin-listen {admin} must differ from the public --listen"
                    ));
                }
                Some(bind(admin)?)
            }
        };
        Ok(Listeners { public, admin })
    }
}

/// A non-blocking listening socket on `addr`, with a backlog of
/// [`LISTEN_BACKLOG`].
fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, String> {
    let listener = std::net::TcpListener::bind(addr)
        .and_then(|l| {
            rustix::net::listen(&l, LISTEN_BACKLOG)?;
            l.set_nonblocking(true)?;
            Ok(l)
        })
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    Ok(listener)
}

/// A worker whose sandbox covers one storage root, and so needs a successor
/// when the root is replaced.
#[derive(Clone, Copy)]
struct Succession {
    supervisor: Supervisor,
    /// The storage root the sandbox allows writes in, if it was there.
    confined_to: Option<RootIdentity>,
}

/// Serves on `listeners` until SIGTERM or SIGINT; returns the exit code.
fn worker(config: &ServeConfig, listeners: Listeners, supervisor: Option<Supervisor>) -> i32 {
    let fail = |message: String| {
        tracing::error!("{message}");
        1
    };
    // Everything that touches the filesystem by path happens here, before
    // the self-sandbox and before any other thread exists.
    let (app, tls) = match prepare(config) {
        Ok(prepared) => prepared,
        Err(message) => return fail(message),
    };
    let mut succession = None;
    if let Some(supervisor) = supervisor {
        let allowed = allowed_dirs(config, &app, tls.as_deref());
        match confine::apply(&allowed) {
            Ok(confine::Status::None) => {
                let why = confine::why_not_enforced();
                if why.starts_with("kernel without") {
                    tracing::info!("self-sandbox (Landlock): not enforced ({why})");
                } else {
                    tracing::warn!("self-sandbox (Landlock): not enforced: {why}");
                }
            }
            Ok(status) => {
                let ports = &allowed.connect;
                tracing::info!(
                    "self-sandbox (Landlock): {}; TCP connects allowed: {}",
                    status.describe(),
                    if ports.is_empty() {
                        "none".to_owned()
                    } else {
                        format!("to port {ports:?} only")
                    }
                );
                if status.enforced() {
                    succession = Some(Succession {
                        supervisor,
                        confined_to: app.storage.fs().and_then(FsStore::identity),
                    });
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "self-sandbox (Landlock) could not be applied; running without it")
            }
        }
    }
    // This thread's runtime runs the accept loop, signals and the admin
    // endpoints, and serves its share of connections; `server::Cores`
    // starts one more per further core.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(format!("cannot start the runtime: {e}")),
    };
    let served = runtime.block_on(serve_async(
        config, listeners, app, tls, supervisor, succession,
    ));
    match served {
        Ok(()) => 0,
        Err(message) => fail(message),
    }
}

/// Loads the credentials, opens the storage root and the TLS pair.
fn prepare(config: &ServeConfig) -> Result<(Arc<App>, Option<Arc<Tls>>), String> {
    let file =
        CredentialsFile::new(&config.credentials).map_err(|e| format!("credentials path: {e}"))?;
    let credentials = CredentialStore::open(file)
        .map_err(|e| format!("credentials file {}: {e}", config.credentials.display()))?;
    let storage = match Location::of(&config.storage) {
        Some(location) => {
            let location = location?;
            let client = s3config::client(&location, &config.s3)?;
            Storage::S3(S3Store::new(
                client,
                location.prefix,
                config.s3.single_put_max,
            )?)
        }
        None => {
            let store = FsStore::new(DirPath::new(&config.storage), config.create_storage);
            store.refresh();
            if !store.is_available() {
                tracing::error!(
                    path = %config.storage.display(),
                    error = store.unavailable_reason().unwrap_or_default(),
                    "storage root is unavailable; answering 503 until it is back"
                );
            }
            Storage::Fs(store)
        }
    };
    if credentials.current().names().is_empty() {
        tracing::info!(
            "no systems registered yet; add one with: backupd systems add NAME --credentials {} --storage {}",
            config.credentials.display(),
            config.storage.display()
        );
    }
    let tls = match &config.tls {
        None => None,
        Some((cert, key)) => {
            let files = FilePath::new(cert).and_then(|c| Ok((c, FilePath::new(key)?)));
            let (cert, key) = files.map_err(|e| format!("TLS files: {e}"))?;
            Some(Arc::new(
                Tls::new(cert, key).map_err(|e| format!("TLS: {e}"))?,
            ))
        }
    };
    let mut app = App::new(credentials, storage, config.policy);
    if !config.per_system_metrics {
        app = app.without_per_system_metrics();
    }
    if let Some(tls) = &tls {
        app.metrics.tls_expiry(tls.expiry());
    }
    if let Some(store) = app.storage.fs() {
        app.metrics.space(store.space());
    }
    Ok((Arc::new(app), tls))
}

/// The directories the self-sandbox allows (see `confine`); those that do
/// not open are simply not allowed.
fn allowed_dirs(config: &ServeConfig, app: &App, tls: Option<&Tls>) -> confine::Allowed {
    let parent_of = |path: &std::path::Path| match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut read = vec![parent_of(&config.storage), parent_of(&config.credentials)];
    if let Some(tls) = tls {
        for file in tls.files() {
            read.push(file.dir().path().to_path_buf());
            // certbot's live/ links point into archive/: reloads read there.
            read.extend(file.resolved_dir().ok());
        }
    }
    confine::Allowed {
        storage: app
            .storage
            .fs()
            .filter(|store| store.is_available())
            .and_then(|store| store.path().open(false).ok()),
        read: read
            .iter()
            .filter_map(|p| DirPath::new(p).open(false).ok())
            .collect(),
        connect: app
            .storage
            .s3()
            .map(S3Store::connect_ports)
            .unwrap_or_default(),
    }
}

async fn serve_async(
    config: &ServeConfig,
    listeners: Listeners,
    app: Arc<App>,
    tls: Option<Arc<Tls>>,
    supervisor: Option<Supervisor>,
    succession: Option<Succession>,
) -> Result<(), String> {
    // Signal handlers go in before "listening" is logged: until then SIGHUP
    // and SIGTERM still have their default action, which kills the process,
    // and a supervisor (or a test) may signal the moment it sees the server
    // listening.
    spawn_watchers(app.clone(), tls.clone(), succession)
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let shutdown = shutdown_signal().map_err(|e| format!("cannot install signal handlers: {e}"))?;
    // The handlers are in place: signals held since start-up arrive now.
    supervise::unblock(config.startup_mask).map_err(|e| format!("cannot unblock signals: {e}"))?;

    let adopt = |listener: std::net::TcpListener| {
        TcpListener::from_std(listener).map_err(|e| format!("cannot use the listening socket: {e}"))
    };
    let listener = adopt(listeners.public)?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(
        "listening on {local}; storage {}; credentials {}",
        config.storage.display(),
        config.credentials.display()
    );
    let limits = Limits {
        max_connections: config.max_connections,
        grace_period: config.grace_period,
        idle_timeout: config.idle_timeout,
    };
    let mut admin_task = None;
    if let Some(admin) = listeners.admin {
        let admin_listener = adopt(admin)?;
        let admin_local = admin_listener.local_addr().map_err(|e| e.to_string())?;
        tracing::info!("admin endpoints (/metrics, /healthz, /readyz) on {admin_local}");
        admin_task = Some(tokio::spawn(backupd::http::admin::run(
            admin_listener,
            app.clone(),
            limits.idle_timeout,
        )));
    }
    // A stopping worker stops answering probes and scrapes at once, so a
    // successor's metrics and readiness are the only ones on the socket.
    let shutdown = async move {
        shutdown.await;
        if let Some(task) = admin_task {
            task.abort();
        }
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cores =
        Cores::start(cores - 1).map_err(|e| format!("cannot start the serving threads: {e}"))?;
    tracing::debug!(threads = cores.threads(), "serving connections");
    match supervisor {
        Some(supervisor) => supervisor.ready(),
        None => supervise::notify_ready(),
    }
    server::run(listener, cores, app, tls, limits, shutdown).await;
    tracing::info!("stopped");
    Ok(())
}

/// Polls the storage root and the credentials file, and reloads the
/// credentials (and the TLS certificate) at once on SIGHUP.
fn spawn_watchers(
    app: Arc<App>,
    tls: Option<Arc<Tls>>,
    succession: Option<Succession>,
) -> std::io::Result<()> {
    let mut hangup = signal(SignalKind::hangup())?;
    let storage_app = app.clone();
    let app_for_inventory = app.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(STORAGE_CHECK_INTERVAL);
        let mut asked: Option<Instant> = None;
        loop {
            tick.tick().await;
            let app = storage_app.clone();
            if let Some(store) = app.storage.s3() {
                store.probe().await;
                continue;
            }
            let _ = tokio::task::spawn_blocking(move || {
                if let Some(store) = app.storage.fs() {
                    store.refresh();
                    app.metrics.space(store.space());
                }
            })
            .await;
            // A root the sandbox does not cover (replaced, or missing at
            // start-up): writes in it are denied until a successor serves.
            let Some(succession) = succession else {
                continue;
            };
            let now = storage_app.storage.fs().and_then(FsStore::identity);
            if now.is_some()
                && now != succession.confined_to
                && asked.is_none_or(|t| t.elapsed() >= SUCCESSOR_RETRY_INTERVAL)
            {
                tracing::warn!(
                    "the self-sandbox covers the storage root as it was at start-up; asking for a worker sandboxed to the new one (uploads and deletes answer 503 until it serves)"
                );
                succession.supervisor.request_successor();
                asked = Some(Instant::now());
            }
        }
    });
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(CREDENTIALS_CHECK_INTERVAL);
        loop {
            let forced = tokio::select! {
                _ = tick.tick() => false,
                _ = hangup.recv() => {
                    tracing::info!("SIGHUP: reloading credentials{}", if tls.is_some() { " and TLS certificate" } else { "" });
                    if let Some(tls) = tls.clone() {
                        let metrics = app.metrics.clone();
                        let _ = tokio::task::spawn_blocking(move || match tls.reload() {
                            Ok(()) => metrics.tls_expiry(tls.expiry()),
                            Err(_) => metrics.reload_failure(Reloaded::TlsCertificate),
                        })
                        .await;
                    }
                    true
                }
            };
            let app = app.clone();
            let _ = tokio::task::spawn_blocking(move || app.credentials.reload(forced)).await;
        }
    });
    let inventory_app = app_for_inventory;
    tokio::spawn(async move {
        // At once, so the per-system series are there from the first
        // scrape; then every INVENTORY_INTERVAL, and whenever the
        // credentials change (a system added shows, a removed one goes).
        let mut scanned: Option<(Instant, std::sync::Arc<_>)> = None;
        loop {
            let creds = inventory_app.credentials.current();
            let due = scanned.as_ref().is_none_or(|(at, seen)| {
                at.elapsed() >= INVENTORY_INTERVAL || !std::sync::Arc::ptr_eq(seen, &creds)
            });
            if due {
                inventory_app.scan_inventory().await;
                scanned = Some((Instant::now(), creds));
            }
            tokio::time::sleep(CREDENTIALS_CHECK_INTERVAL).await;
        }
    });
    Ok(())
}

/// Completes on the first SIGTERM or SIGINT.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
    })
}
