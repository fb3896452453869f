//! The `backupd` command line: read the configuration, open the sandbox
//! roots, bind, and serve until a signal; or manage the registered systems.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use backupd::config::{
    self, CREDENTIALS_CHECK_INTERVAL, CREDENTIALS_FILE_NAME, STORAGE_CHECK_INTERVAL,
    STORAGE_DIR_NAME, ServeConfig,
};
use backupd::credentials::{CredentialStore, CredentialsFile};
use backupd::routes::App;
use backupd::sandbox::DirPath;
use backupd::server::{self, Limits};
use backupd::store::BackupStore;
use backupd::systems::{self, Locations};
use clap::{Args, Parser, Subcommand};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

/// Keeps and serves encrypted backups for registered systems.
#[derive(Parser)]
#[command(name = "backupd", version, about)]
struct Cli {
    #[command(flatten)]
    locations: LocationArgs,
    #[command(subcommand)]
    command: Command,
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
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Manage the systems that may connect.
    #[command(subcommand)]
    Systems(SystemsCommand),
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "BACKUPD_LISTEN", default_value = config::DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Most connections served at once.
    #[arg(long, env = "BACKUPD_MAX_CONNECTIONS", default_value_t = config::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// Seconds in-flight downloads get to finish after SIGTERM or SIGINT.
    #[arg(long, env = "BACKUPD_GRACE_PERIOD", default_value_t = config::DEFAULT_GRACE_PERIOD.as_secs())]
    grace_period: u64,
}

#[derive(Subcommand)]
enum SystemsCommand {
    /// Register a system; prints its new secret, alone, on stdout.
    Add {
        /// [A-Za-z0-9][A-Za-z0-9._-]{0,127}
        #[arg(allow_hyphen_values = true)]
        name: String,
    },
    /// Revoke a system's access; its backups stay on disk.
    Remove {
        /// The system to revoke.
        #[arg(allow_hyphen_values = true)]
        name: String,
    },
    /// List registered systems, one per line.
    List,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let locations = cli.locations.resolve();
    match cli.command {
        Command::Serve(args) => serve(ServeConfig {
            listen: args.listen,
            credentials: locations.credentials,
            storage: locations.storage,
            create_storage: locations.create_storage,
            max_connections: args.max_connections.max(1),
            grace_period: Duration::from_secs(args.grace_period),
        }),
        Command::Systems(command) => manage(&locations, command),
    }
}

fn manage(locations: &Locations, command: SystemsCommand) -> ExitCode {
    let result = match command {
        SystemsCommand::Add { name } => systems::add(locations, &name).map(|secret| {
            println!("{secret}");
            eprintln!("added system {name}; its secret is printed above and is not stored anywhere: keep it now");
        }),
        SystemsCommand::Remove { name } => systems::remove(locations, &name).map(|()| {
            eprintln!(
                "removed system {name}; its backups stay in {} until you delete them",
                locations.storage.join(&name).display()
            );
        }),
        SystemsCommand::List => systems::list(locations).map(|names| {
            for name in names {
                println!("{name}");
            }
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("backupd: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(config: ServeConfig) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve_async(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            tracing::error!("{message}");
            ExitCode::FAILURE
        }
    }
}

async fn serve_async(config: ServeConfig) -> Result<(), String> {
    let file =
        CredentialsFile::new(&config.credentials).map_err(|e| format!("credentials path: {e}"))?;
    let credentials = CredentialStore::open(file)
        .map_err(|e| format!("credentials file {}: {e}", config.credentials.display()))?;
    let store = BackupStore::new(DirPath::new(&config.storage), config.create_storage);
    store.refresh();
    if !store.is_available() {
        tracing::error!(path = %config.storage.display(), "storage root is unavailable; answering 503 until it is back");
    }
    if credentials.current().names().is_empty() {
        tracing::info!(
            "no systems registered yet; add one with: backupd systems add NAME --credentials {} --storage {}",
            config.credentials.display(),
            config.storage.display()
        );
    }
    let app = Arc::new(App { credentials, store });

    // Signal handlers go in before the socket is bound and "listening" is
    // logged: until then SIGHUP and SIGTERM still have their default action,
    // which kills the process, and a supervisor (or a test) may signal the
    // moment it sees the server listening.
    spawn_watchers(app.clone()).map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let shutdown = shutdown_signal().map_err(|e| format!("cannot install signal handlers: {e}"))?;

    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(
        "listening on {local}; storage {}; credentials {}",
        config.storage.display(),
        config.credentials.display()
    );

    let limits = Limits {
        max_connections: config.max_connections,
        grace_period: config.grace_period,
    };
    server::run(listener, app, limits, shutdown).await;
    tracing::info!("stopped");
    Ok(())
}

/// Polls the storage root and the credentials file, and reloads the
/// credentials at once on SIGHUP.
fn spawn_watchers(app: Arc<App>) -> std::io::Result<()> {
    let mut hangup = signal(SignalKind::hangup())?;
    let storage_app = app.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(STORAGE_CHECK_INTERVAL);
        loop {
            tick.tick().await;
            let app = storage_app.clone();
            let _ = tokio::task::spawn_blocking(move || app.store.refresh()).await;
        }
    });
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(CREDENTIALS_CHECK_INTERVAL);
        loop {
            let forced = tokio::select! {
                _ = tick.tick() => false,
                _ = hangup.recv() => {
                    tracing::info!("SIGHUP: reloading credentials");
                    true
                }
            };
            let app = app.clone();
            let _ = tokio::task::spawn_blocking(move || app.credentials.reload(forced)).await;
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
