//! The supervisor: a small parent process that holds the listening sockets
//! and runs the server in a worker process, so that the self-sandbox can be
//! applied afresh when the storage root is replaced.
//!
//! Landlock rules attach to a directory as it was when the rule was made,
//! and a process can only ever narrow its own sandbox, never widen it. A
//! worker confined to the old storage root therefore cannot be given write
//! access to a new one without also being given its parent (which, in the
//! default layout, holds the credentials file). Instead, the worker asks the
//! supervisor for a successor: a new worker, forked from the unconfined
//! supervisor, opens the new root and confines itself to it. Once it serves,
//! the old worker stops accepting and finishes its downloads within the
//! grace period. The listening sockets belong to the supervisor, so no
//! connection is refused meanwhile: the kernel queues them until a worker
//! accepts. Per-process state (rate-limit windows, metrics) starts afresh in
//! the new worker.
//!
//! The supervisor never accepts a connection, reads a request or opens a
//! file after start-up: it binds, forks, then only waits for signals:
//!
//! | signal | from | meaning |
//! |---|---|---|
//! | SIGTERM, SIGINT | operator | forwarded to every worker; exit when all are gone, with the serving worker's status |
//! | SIGHUP | operator | forwarded to the serving worker (and to a starting one once it serves) |
//! | SIGUSR1 | serving worker | "the storage root was replaced": start a successor |
//! | SIGUSR2 | starting worker | "I serve now": the previous worker drains |
//! | SIGCHLD | kernel | a worker ended; if it was the serving one, stop |
//!
//! It is single-threaded, which is what makes `fork` without `exec` sound
//! (the child gets a consistent copy of the allocator and of every lock),
//! and it handles signals by blocking them and waiting with `sigwaitinfo`.
//! Workers start with those signals still blocked (see [`block_signals`])
//! and unblock them once their own handlers are installed.
//!
//! This is the crate's one module with `unsafe`: `fork`, the signal mask and
//! `sigwaitinfo` have no safe wrapper. Each block says why it is sound.

#![allow(unsafe_code)]

use std::io;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, WaitOptions, WaitStatus};

/// Shortest time between two successors started for a replaced storage
/// root, so a root that flaps does not fork a worker per storage check.
pub const MIN_RESPAWN_INTERVAL: Duration = Duration::from_secs(1);

/// What a worker uses to talk to its supervisor.
#[derive(Debug, Clone, Copy)]
pub struct Supervisor {
    pid: Pid,
}

impl Supervisor {
    /// Tells the supervisor this worker serves now (its predecessor, if any,
    /// may drain).
    pub fn ready(&self) {
        self.send(Signal::USR2);
    }

    /// Asks the supervisor for a successor sandboxed to the storage root as
    /// it is now.
    pub fn request_successor(&self) {
        self.send(Signal::USR1);
    }

    fn send(&self, signal: Signal) {
        if let Err(e) = rustix::process::kill_process(self.pid, signal) {
            tracing::error!(error = %e, "cannot signal the supervisor");
        }
    }
}

/// Tells systemd the service is ready (`Type=notify`): `READY=1` to the
/// socket in `$NOTIFY_SOCKET`, if there is one. Sent once the first worker
/// serves, so systemd runs no `ExecReload` (SIGHUP) before then and starts
/// what is ordered after backupd only once it answers.
pub fn notify_ready() {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
    let addr = match bytes.strip_prefix(b"@") {
        Some(abstract_name) => SocketAddr::from_abstract_name(abstract_name),
        None => SocketAddr::from_pathname(&path),
    };
    let message = format!("READY=1\nMAINPID={}", std::process::id());
    let sent =
        addr.and_then(|addr| UnixDatagram::unbound()?.send_to_addr(message.as_bytes(), &addr));
    if let Err(e) = sent {
        tracing::warn!(error = %e, "cannot tell systemd the service is ready");
    }
}

/// The signals the supervisor waits for, blocked in it (and unblocked again
/// in each worker).
fn supervised_signals() -> libc::sigset_t {
    // SAFETY: sigemptyset and sigaddset only write the set passed to them,
    // which is a plain value owned here; the signal numbers are valid.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in [
            libc::SIGTERM,
            libc::SIGINT,
            libc::SIGHUP,
            libc::SIGCHLD,
            libc::SIGUSR1,
            libc::SIGUSR2,
        ] {
            libc::sigaddset(&mut set, signal);
        }
        set
    }
}

/// A signal mask saved by [`block_signals`], to be put back once the
/// process can handle the signals it held.
#[derive(Clone, Copy)]
pub struct SavedMask(libc::sigset_t);

/// Blocks SIGTERM, SIGINT, SIGHUP (and the supervisor's SIGCHLD, SIGUSR1,
/// SIGUSR2) in the calling thread, and so in every process and thread it
/// starts; returns the mask to restore.
///
/// Called first thing in `main`: until a worker has installed its
/// handlers, a SIGHUP (`systemctl reload` during a start) or SIGTERM would
/// take its default action and kill it. Blocked, it stays pending and is
/// handled the moment [`unblock`] runs after the handlers are in place:
/// a reload, or a clean shutdown, at any moment of start-up.
pub fn block_signals() -> io::Result<SavedMask> {
    set_mask(libc::SIG_BLOCK, &supervised_signals()).map(SavedMask)
}

/// Restores the mask [`block_signals`] saved: signals held while starting
/// are delivered now.
pub fn unblock(saved: SavedMask) -> io::Result<()> {
    set_mask(libc::SIG_SETMASK, &saved.0).map(|_| ())
}

/// Sets the calling thread's signal mask; returns the previous one.
fn set_mask(how: libc::c_int, set: &libc::sigset_t) -> io::Result<libc::sigset_t> {
    // SAFETY: both pointers are to valid, initialised sigset_t values that
    // outlive the call.
    unsafe {
        let mut old: libc::sigset_t = std::mem::zeroed();
        match libc::pthread_sigmask(how, set, &mut old) {
            0 => Ok(old),
            e => Err(io::Error::from_raw_os_error(e)),
        }
    }
}

/// Waits for one of `set`'s signals; returns it and the sending process.
fn wait_signal(set: &libc::sigset_t) -> io::Result<(libc::c_int, libc::pid_t)> {
    loop {
        // SAFETY: `set` is initialised and `info` is a zeroed siginfo_t the
        // kernel fills; si_pid is meaningful for the signals we wait for
        // (sent by kill(2), or SIGCHLD) and merely 0 otherwise.
        let (signal, sender) = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let signal = libc::sigwaitinfo(set, &mut info);
            (signal, info.si_pid())
        };
        if signal >= 0 {
            return Ok((signal, sender));
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Forks a worker that runs `worker` with `held` and exits with its status.
fn spawn<T>(
    held: &mut Option<T>,
    worker: &dyn Fn(Supervisor, T) -> i32,
    supervisor: Supervisor,
) -> io::Result<Pid> {
    // SAFETY: the supervisor is single-threaded (see `run`), so the child
    // is a complete copy of a consistent process: no lock is held by a
    // thread that does not exist in it.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if let Some(pid) = Pid::from_raw(pid) {
        return Ok(pid);
    }
    crate::logging::set_role(crate::logging::Role::Worker);
    // The worker. Die with the supervisor (a SIGKILLed supervisor must not
    // leave a worker serving behind it), and take default signal handling
    // back before the runtime installs its own.
    let code = match rustix::process::set_parent_process_death_signal(Some(Signal::KILL)) {
        Err(e) => {
            tracing::error!(error = %e, "cannot tie the worker to the supervisor");
            1
        }
        // The supervisor may have died before the line above.
        Ok(()) if rustix::process::getppid() != Some(supervisor.pid) => 1,
        // The child's own copy of `held`: taking it leaves the supervisor's.
        // Its signals stay blocked until it has installed its handlers
        // (the worker calls `unblock`), so a signal forwarded while it
        // starts is held, not fatal.
        Ok(()) => match held.take() {
            Some(held) => worker(supervisor, held),
            None => 1,
        },
    };
    std::process::exit(code)
}

/// How a worker ended, as an exit code (a worker killed by the signal the
/// supervisor forwarded to stop it counts as a clean stop).
fn exit_code(status: WaitStatus, stopping: bool) -> i32 {
    if let Some(code) = status.exit_status() {
        return code;
    }
    match status.terminating_signal() {
        Some(libc::SIGTERM | libc::SIGINT) if stopping => 0,
        Some(signal) => {
            tracing::error!(signal, "worker killed by a signal");
            1
        }
        None => 1,
    }
}

/// The workers the supervisor knows of.
struct Workers {
    /// The one that serves.
    serving: Pid,
    /// A successor that has not said it serves yet.
    starting: Option<Pid>,
    /// Predecessors finishing their connections.
    draining: Vec<Pid>,
    /// A SIGHUP came while `starting` was starting: it gets one too.
    hangup_pending: bool,
    /// Set once SIGTERM or SIGINT arrived.
    stopping: bool,
    /// The serving worker's exit code, once it ended.
    exit: Option<i32>,
    /// When the last successor was started.
    last_successor: Option<Instant>,
    /// Whether systemd was told the service is ready (the first worker serves).
    ready: bool,
}

impl Workers {
    fn all(&self) -> impl Iterator<Item = Pid> + '_ {
        std::iter::once(self.serving)
            .filter(|_| self.exit.is_none())
            .chain(self.starting)
            .chain(self.draining.iter().copied())
    }

    fn signal_all(&self, signal: Signal) {
        for pid in self.all() {
            let _ = rustix::process::kill_process(pid, signal);
        }
    }

    /// Reaps every ended worker.
    fn reap(&mut self) {
        while let Ok(Some((pid, status))) = rustix::process::waitpid(None, WaitOptions::NOHANG) {
            if pid == self.serving && self.exit.is_none() {
                let code = exit_code(status, self.stopping);
                self.exit = Some(code);
                if !self.stopping {
                    // It stopped on its own (a fatal error, already logged):
                    // so does the service, and the others go too. Code 0
                    // unasked is no error, but still the end of serving.
                    if code == 0 {
                        tracing::warn!(worker = pid.as_raw_pid(), code, "worker exited; stopping");
                    } else {
                        tracing::error!(worker = pid.as_raw_pid(), code, "worker exited; stopping");
                    }
                    self.stopping = true;
                    self.signal_all(Signal::TERM);
                }
            } else if Some(pid) == self.starting {
                self.starting = None;
                if self.stopping {
                    continue;
                }
                tracing::error!(
                    worker = pid.as_raw_pid(),
                    code = exit_code(status, self.stopping),
                    "new worker failed to start; the current one keeps serving"
                );
            } else if self.draining.contains(&pid) {
                self.draining.retain(|&p| p != pid);
                let code = exit_code(status, true);
                if code == 0 {
                    tracing::info!(
                        worker = pid.as_raw_pid(),
                        "previous worker finished its connections and exited"
                    );
                } else {
                    tracing::warn!(
                        worker = pid.as_raw_pid(),
                        code,
                        "previous worker exited with an error while finishing its connections"
                    );
                }
            }
        }
    }
}

/// Runs `worker` in a supervised child process until SIGTERM or SIGINT
/// (forwarded to it), starting successors on request; returns the serving
/// worker's exit code. Each worker gets its own copy of `held` (the
/// listening sockets); the supervisor closes its copy when it stops, so new
/// connections are refused from then on rather than queued for nobody.
/// Must be called while the process has one thread.
pub fn run<T>(held: T, worker: &dyn Fn(Supervisor, T) -> i32) -> io::Result<i32> {
    let mut held = Some(held);
    let set = supervised_signals();
    set_mask(libc::SIG_BLOCK, &set)?;
    let supervisor = Supervisor {
        pid: rustix::process::getpid(),
    };
    let first = spawn(&mut held, worker, supervisor)?;
    let mut workers = Workers {
        serving: first,
        starting: None,
        draining: Vec::new(),
        hangup_pending: false,
        stopping: false,
        exit: None,
        last_successor: None,
        ready: false,
    };
    loop {
        if workers.exit.is_some() && workers.all().next().is_none() {
            return Ok(workers.exit.unwrap_or(1));
        }
        let (signal, sender) = wait_signal(&set)?;
        let from = |pid: Pid| sender == pid.as_raw_pid();
        match signal {
            libc::SIGTERM | libc::SIGINT => {
                workers.stopping = true;
                drop(held.take());
                workers.signal_all(if signal == libc::SIGINT {
                    Signal::INT
                } else {
                    Signal::TERM
                });
            }
            libc::SIGHUP => {
                if workers.exit.is_none() {
                    let _ = rustix::process::kill_process(workers.serving, Signal::HUP);
                }
                workers.hangup_pending = workers.starting.is_some();
            }
            libc::SIGUSR1 if from(workers.serving) => {
                if workers.stopping
                    || workers.starting.is_some()
                    || workers
                        .last_successor
                        .is_some_and(|t| t.elapsed() < MIN_RESPAWN_INTERVAL)
                {
                    continue;
                }
                workers.last_successor = Some(Instant::now());
                match spawn(&mut held, worker, supervisor) {
                    Ok(pid) => {
                        tracing::info!(
                            worker = pid.as_raw_pid(),
                            "starting a worker sandboxed to the new storage root"
                        );
                        workers.starting = Some(pid);
                    }
                    Err(e) => tracing::error!(error = %e, "cannot start a new worker"),
                }
            }
            libc::SIGUSR2 if from(workers.serving) && !workers.ready => {
                workers.ready = true;
                notify_ready();
            }
            libc::SIGUSR2 if workers.starting.is_some_and(from) => {
                let Some(new) = workers.starting.take() else {
                    continue;
                };
                let old = std::mem::replace(&mut workers.serving, new);
                tracing::info!(
                    serving = workers.serving.as_raw_pid(),
                    draining = old.as_raw_pid(),
                    "new worker serves; the previous one finishes its connections"
                );
                let _ = rustix::process::kill_process(old, Signal::TERM);
                workers.draining.push(old);
                if std::mem::take(&mut workers.hangup_pending) {
                    let _ = rustix::process::kill_process(workers.serving, Signal::HUP);
                }
            }
            libc::SIGCHLD => workers.reap(),
            _ => {}
        }
    }
}

/// The first file descriptor systemd passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: i32 = 3;

/// Most sockets taken from systemd: the public one and the admin one.
const MAX_LISTEN_FDS: i32 = 2;

/// Whether [`inherited_listeners`] has run: it may take ownership of the
/// passed descriptors only once.
static LISTEN_FDS_TAKEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The listening sockets systemd passed (socket activation, as
/// `sd_listen_fds(3)` reads them): descriptors 3 and on, `LISTEN_FDS` of
/// them, when `LISTEN_PID` is this process; none otherwise. Each is
/// checked to be a listening stream socket, and made close-on-exec.
pub fn inherited_listeners() -> io::Result<Vec<std::net::TcpListener>> {
    use std::os::fd::{FromRawFd, OwnedFd};
    let var = |name: &str| std::env::var(name).ok();
    if var("LISTEN_PID").and_then(|p| p.parse::<u32>().ok()) != Some(std::process::id()) {
        return Ok(Vec::new());
    }
    let count = var("LISTEN_FDS")
        .and_then(|n| n.parse::<i32>().ok())
        .unwrap_or(0);
    if !(0..=MAX_LISTEN_FDS).contains(&count) {
        return Err(io::Error::other(format!(
            "LISTEN_FDS={count}: systemd may pass at most {MAX_LISTEN_FDS} sockets (the public one, then the admin one)"
        )));
    }
    if LISTEN_FDS_TAKEN.swap(true, std::sync::atomic::Ordering::SeqCst) {
        return Err(io::Error::other(
            "the sockets systemd passed were taken already",
        ));
    }
    (LISTEN_FDS_START..LISTEN_FDS_START + count)
        .map(|fd| {
            // SAFETY: systemd passes descriptors LISTEN_FDS_START..+LISTEN_FDS
            // open and owned by this process (LISTEN_PID says so), and the
            // flag above makes this the only place that takes them, once:
            // each becomes exactly one owner.
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            let listening = rustix::net::sockopt::socket_type(&owned)
                .is_ok_and(|t| t == rustix::net::SocketType::STREAM)
                && rustix::net::sockopt::socket_acceptconn(&owned).unwrap_or(false);
            if !listening {
                // Not ours to close: leave it as it was.
                std::mem::forget(owned);
                return Err(io::Error::other(format!(
                    "descriptor {fd} passed by systemd is not a listening stream socket"
                )));
            }
            rustix::io::fcntl_setfd(&owned, rustix::io::FdFlags::CLOEXEC)?;
            let listener = std::net::TcpListener::from(owned);
            listener.set_nonblocking(true)?;
            Ok(listener)
        })
        .collect()
}
