//! Faults while serving: the storage root going away or becoming unreadable,
//! the credentials file corrupted, signals at awkward moments, SIGTERM under
//! load. The server must answer as the contract says, never crash, and
//! recover without a restart.

mod common;

use std::time::Duration;

use common::*;

/// A signal sent the moment the server says it is listening is handled, not
/// fatal: the handlers are installed before the socket is bound. (They used
/// to be installed after the "listening" line, so a supervisor's early
/// SIGHUP killed the server and an early SIGTERM skipped the graceful exit.)
#[tokio::test]
async fn signals_right_after_listening_are_handled() {
    for _ in 0..10 {
        let server = Server::start();
        server.signal(1);
        assert!(
            server.wait_for_log("SIGHUP: reloading credentials", Duration::from_secs(2)),
            "{}",
            server.log()
        );
        let reply = get(server.addr, &backup_path(ID), None).await;
        assert_eq!(reply.status.as_u16(), 401);
    }
    for _ in 0..10 {
        let mut server = Server::start();
        server.signal(15);
        let code = tokio::task::spawn_blocking(move || {
            let code = server.wait_exit(Duration::from_secs(10));
            (code, server.log())
        })
        .await
        .unwrap();
        assert_eq!(code.0, Some(0), "{}", code.1);
        assert!(code.1.contains("SIGTERM: shutting down"), "{}", code.1);
    }
}

/// `systemctl reload` (SIGHUP) or stop (SIGTERM) at any moment of start-up
/// does what it does later: a reload, or a clean exit 0, never a crash.
/// The storage root holds many system directories, which the first worker
/// walks at start-up, to widen the window.
///
/// "After spawn" counts from when the process runs backupd's own code (a
/// constructor blocks the signals first thing; seen here once Rust's
/// runtime, which starts after it, shows in /proc): before it, the dynamic loader is still relocating the binary
/// (milliseconds for this 100 MB debug build, microseconds for the static
/// release binary), and no program can act on a signal there. systemd
/// sends no reload before the service reports READY (`Type=notify`).
#[tokio::test]
async fn signals_at_any_moment_of_start_up_are_handled() {
    let dir = tempfile::tempdir().unwrap();
    let secret = cli(dir.path(), &["systems", "add", "fw1"])
        .1
        .trim_end()
        .to_owned();
    for n in 0..5000 {
        std::fs::create_dir(dir.path().join(format!("backups/sys{n}"))).unwrap();
    }
    std::fs::write(dir.path().join("backups/fw1").join(ID), b"served").unwrap();
    let data = dir.path().to_path_buf();
    for delay_ms in [0u64, 5, 20, 100] {
        for (sig, name) in [(1, "SIGHUP"), (15, "SIGTERM")] {
            let command = serve_command(std::process::Command::new(bin()), &data, &[]);
            // The data dir is shared by every round: a TempDir that is not ours.
            let holder = tempfile::tempdir().unwrap();
            let launched = tokio::task::spawn_blocking(move || {
                Server::launch_then(holder, command, |pid| {
                    wait_until_signals_are_held(pid);
                    std::thread::sleep(Duration::from_millis(delay_ms));
                    assert_eq!(unsafe_free_kill(pid, sig), 0, "kill failed");
                })
            })
            .await
            .unwrap();
            let what = format!("{name} {delay_ms} ms after spawn");
            let mut server = launched.unwrap_or_else(|log| panic!("{what}: did not start: {log}"));
            if sig == 1 {
                assert!(
                    server.wait_for_log("SIGHUP: reloading credentials", Duration::from_secs(10)),
                    "{what}: {}",
                    server.log()
                );
                let reply = get(server.addr, &backup_path(ID), Some(&basic("fw1", &secret))).await;
                assert_eq!(&reply.body[..], b"served", "{what}");
                server.signal(15);
            }
            let (code, log) = tokio::task::spawn_blocking(move || {
                let code = server.wait_exit(Duration::from_secs(20));
                (code, server.log())
            })
            .await
            .unwrap();
            assert_eq!(code, Some(0), "{what}: {log}");
            assert!(log.contains("SIGTERM: shutting down"), "{what}: {log}");
        }
    }
}

/// Waits (at most 5 s) until process `pid` runs its own code: Rust's
/// runtime has installed its SIGSEGV handler (SigCgt in /proc), which it
/// does after the constructors, so the signals are held by then.
fn wait_until_signals_are_held(pid: u32) {
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let caught = status
            .lines()
            .find_map(|l| l.strip_prefix("SigCgt:"))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0);
        if caught & (1 << (11 - 1)) != 0 {
            return;
        }
        std::thread::yield_now();
    }
    panic!("process {pid} never started running");
}

/// Whether this process is root (then chmod alone cannot lock it out).
fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    let probe = tempfile::NamedTempFile::new().unwrap();
    probe.as_file().metadata().unwrap().uid() == 0
}

fn chmod(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn wait_for_status(server: &Server, auth: &str, status: u16, limit: Duration) -> Reply {
    let start = std::time::Instant::now();
    let rt = tokio::runtime::Handle::current();
    loop {
        let reply = tokio::task::block_in_place(|| {
            rt.block_on(get(server.addr, &backup_path(ID), Some(auth)))
        });
        if reply.status.as_u16() == status {
            return reply;
        }
        assert!(
            start.elapsed() < limit,
            "no {status} within {limit:?}: last {} {}",
            reply.status,
            reply.text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn assert_unavailable(reply: &Reply) {
    assert_eq!(reply.status.as_u16(), 503);
    assert_eq!(reply.text(), UNAVAILABLE_BODY);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let retry: u32 = reply.header("retry-after").unwrap().parse().unwrap();
    assert!(retry > 0);
}

/// An unreadable storage root is a 503 with Retry-After, and serving resumes
/// once it is readable again, without a restart.
///
/// Permission bits do not stop root, and these tests run as root in CI, so
/// the server is started as `nobody` (via `setpriv`) over a data dir that
/// `nobody` owns; the test itself stays root to flip the bits. Run as
/// another user, the server simply runs as that user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_storage_root_is_503_until_readable_again() {
    const NOBODY: u32 = 65534;
    let dir = tempfile::tempdir().unwrap();
    let (code, secret, err) = cli(dir.path(), &["systems", "add", "fw1"]);
    assert_eq!(code, 0, "{err}");
    let storage = dir.path().join("backups");
    std::fs::write(storage.join("fw1").join(ID), b"readable").unwrap();
    let command = if running_as_root() {
        let chown = std::process::Command::new("chown")
            .arg("-R")
            .arg(format!("{NOBODY}:{NOBODY}"))
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(chown.success());
        let mut c = std::process::Command::new("setpriv");
        c.args([
            format!("--reuid={NOBODY}"),
            format!("--regid={NOBODY}"),
            "--clear-groups".into(),
            "--".into(),
            bin().into(),
        ]);
        c
    } else {
        std::process::Command::new(bin())
    };
    let command = serve_command(command, dir.path(), &[]);
    let server = Server::launch(dir, command).unwrap_or_else(|log| panic!("{log}"));
    let auth = basic("fw1", secret.trim());
    let reply = get(server.addr, &backup_path(ID), Some(&auth)).await;
    assert_eq!(&reply.body[..], b"readable");

    chmod(&storage, 0o000);
    let reply = wait_for_status(&server, &auth, 503, Duration::from_secs(2));
    assert_unavailable(&reply);
    // Authentication still comes first, and the server is still up.
    assert_eq!(
        get(server.addr, &backup_path(ID), None)
            .await
            .status
            .as_u16(),
        401
    );
    // A system directory that cannot be searched is a storage failure too.
    chmod(&storage, 0o755);
    let reply = wait_for_status(&server, &auth, 200, Duration::from_secs(2));
    assert_eq!(&reply.body[..], b"readable");
    chmod(&storage.join("fw1"), 0o000);
    let reply = get(server.addr, &backup_path(ID), Some(&auth)).await;
    assert_unavailable(&reply);
    chmod(&storage.join("fw1"), 0o755);
    let reply = get(server.addr, &backup_path(ID), Some(&auth)).await;
    assert_eq!(&reply.body[..], b"readable");
    // The root itself still opens (as a path handle), so the failure shows
    // at the lookup inside it; either way it is logged with its cause.
    assert!(
        server.log().contains("storage error") && server.log().contains("ermission denied"),
        "{}",
        server.log()
    );
}

/// A server whose storage root is an explicit `mnt` directory, with fw1's
/// 24 MiB backup (bytes `i % modulus`) there and a download of it started:
/// the server, the root, fw1's credentials, the bytes and the body.
async fn download_from_a_mount(
    modulus: u32,
) -> (
    Server,
    std::path::PathBuf,
    String,
    Vec<u8>,
    hyper::body::Incoming,
) {
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("mnt");
    std::fs::create_dir_all(storage.join("fw1")).unwrap();
    let server = Server::start_with(dir, &["--storage", storage.to_str().unwrap()]);
    let auth = basic("fw1", &server.add_system("fw1"));
    let content: Vec<u8> = (0..(24u32 << 20)).map(|i| (i % modulus) as u8).collect();
    std::fs::write(storage.join("fw1").join(ID), &content).unwrap();
    let res = open(
        server.addr,
        false,
        hyper::Method::GET,
        &backup_path(ID),
        Some(&auth),
    )
    .await;
    assert_eq!(res.status(), 200);
    (server, storage, auth, content, res.into_body())
}

/// The root removed while a download streams: the download finishes from
/// its open file; new requests get 503; a symlink loop in its place is 503
/// too; putting it back serves again, all without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_root_removed_mid_download_and_replaced_by_a_symlink_loop() {
    use http_body_util::BodyExt;
    let (server, storage, auth, content, mut body) = download_from_a_mount(241).await;
    let mut got = within(STEP, body.frame())
        .await
        .unwrap()
        .unwrap()
        .into_data()
        .unwrap()
        .to_vec();

    let moved = server.data().join("moved");
    std::fs::rename(&storage, &moved).unwrap();
    let reply = wait_for_status(&server, &auth, 503, Duration::from_secs(2));
    assert_unavailable(&reply);
    while let Some(frame) = within(STEP, body.frame()).await {
        got.extend_from_slice(&frame.unwrap().into_data().unwrap());
    }
    assert!(got == content, "the in-flight download changed");

    symlink_loop(&storage);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_unavailable(&get(server.addr, &backup_path(ID), Some(&auth)).await);
    std::fs::remove_file(&storage).unwrap();
    std::fs::rename(&moved, &storage).unwrap();
    let reply = wait_for_status(&server, &auth, 200, Duration::from_secs(2));
    assert!(reply.body == content);
}

fn symlink_loop(path: &std::path::Path) {
    let other = path.with_extension("loop");
    std::os::unix::fs::symlink(&other, path).unwrap();
    std::os::unix::fs::symlink(path, &other).unwrap();
}

/// Every way the credentials file can go bad while running keeps the
/// previous credentials in force and logs an error; a good file is then
/// picked up again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_credentials_keep_the_previous_ones_and_log_an_error() {
    let server = Server::start();
    let secret = server.add_system("fw1");
    server.put("fw1", ID, b"still served");
    let auth = basic("fw1", &secret);
    let path = server.data().join("credentials");
    let good = std::fs::read(&path).unwrap();
    let line = String::from_utf8(good.clone())
        .unwrap()
        .lines()
        .find(|l| l.starts_with("fw1:"))
        .unwrap()
        .to_string();
    let big = {
        let mut v = good.clone();
        v.extend(std::iter::repeat_n(b'#', 17 << 20));
        v
    };
    type Corrupt<'a> = Box<dyn Fn() + 'a>;
    let cases: Vec<(&str, Corrupt)> = vec![
        (
            "binary garbage",
            Box::new(|| std::fs::write(&path, [0xff, 0xfe, 0x00, 0x80, b'\n']).unwrap()),
        ),
        (
            "truncated mid-line",
            Box::new(|| std::fs::write(&path, &line[..line.len() / 2]).unwrap()),
        ),
        (
            "a field short",
            Box::new(|| std::fs::write(&path, line.rsplit_once(':').unwrap().0).unwrap()),
        ),
        (
            "over 16 MiB",
            Box::new(|| std::fs::write(&path, &big).unwrap()),
        ),
        (
            "a directory in its place",
            Box::new(|| {
                std::fs::remove_file(&path).unwrap();
                std::fs::create_dir(&path).unwrap();
            }),
        ),
    ];
    for (name, corrupt) in &cases {
        let errors = server.count_log("keeping the previous credentials");
        corrupt();
        let start = std::time::Instant::now();
        while server.count_log("keeping the previous credentials") == errors {
            assert!(
                start.elapsed() < Duration::from_secs(2),
                "{name}: no error logged\n{}",
                server.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let log = server.log();
        let last = log
            .lines()
            .rfind(|l| l.contains("keeping the previous credentials"))
            .unwrap();
        assert!(last.contains("ERROR"), "{name}: {last}");
        let reply = get(server.addr, &backup_path(ID), Some(&auth)).await;
        assert_eq!(&reply.body[..], b"still served", "{name}");
        // Restore, and check the good file is taken again.
        if path.is_dir() {
            std::fs::remove_dir(&path).unwrap();
        }
        let reloads = server.count_log("credentials reloaded");
        std::fs::write(&path, &good).unwrap();
        server.wait_for_reload(reloads);
    }
    // Still one process, never restarted, and a new system works.
    let secret2 = server.add_system("fw2");
    server.put("fw2", ID, b"fw2");
    let reply = get(server.addr, &backup_path(ID), Some(&basic("fw2", &secret2))).await;
    assert_eq!(&reply.body[..], b"fw2");
    assert!(!server.log().contains(&secret));
}

/// Reads a raw HTTP/1.1 response whose body is `content-length` long.
async fn read_response(stream: &mut tokio::net::TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if bytes.len() >= end + 4 + len {
                return bytes;
            }
        }
        let n = within(STEP, stream.read(&mut buf)).await.unwrap();
        assert!(n > 0, "closed mid-response");
        bytes.extend_from_slice(&buf[..n]);
    }
}

/// SIGTERM while downloads stream and new requests keep coming: every
/// in-flight download completes byte for byte, an idle keep-alive
/// connection is closed at once, new connections are refused, exit 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_load_drains_in_flight_downloads_and_exits_0() {
    use http_body_util::BodyExt;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    let mut server = Server::start_with(tempfile::tempdir().unwrap(), &["--grace-period", "20"]);
    let secret = server.add_system("fw1");
    let auth = basic("fw1", &secret);
    let content: Arc<Vec<u8>> = Arc::new((0..(32u32 << 20)).map(|i| (i % 239) as u8).collect());
    server.put("fw1", ID, &content);
    let addr = server.addr;

    // Background load: a new connection and request every few ms.
    let stop = Arc::new(AtomicBool::new(false));
    let (served, refused) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = {
        let (stop, served, refused) = (stop.clone(), served.clone(), refused.clone());
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n",
            backup_path(ID2)
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match TcpStream::connect(addr).await {
                    Ok(mut s) => {
                        let mut out = Vec::new();
                        let ok = s.write_all(request.as_bytes()).await.is_ok()
                            && tokio::time::timeout(STEP, s.read_to_end(&mut out))
                                .await
                                .is_ok()
                            && out.starts_with(b"HTTP/1.1 401 ");
                        // Accepted by the kernel but never by the server: reset, no bytes.
                        assert!(ok || out.is_empty(), "{:?}", String::from_utf8_lossy(&out));
                        if ok { &served } else { &refused }.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    // Eight downloads in flight, each one frame in.
    let mut bodies = Vec::new();
    for _ in 0..8 {
        let res = open(
            addr,
            false,
            hyper::Method::GET,
            &backup_path(ID),
            Some(&auth),
        )
        .await;
        assert_eq!(res.status(), 200);
        let mut body = res.into_body();
        let first = within(STEP, body.frame())
            .await
            .unwrap()
            .unwrap()
            .into_data()
            .unwrap();
        bodies.push((body, first.to_vec()));
    }
    // An idle keep-alive connection that already had its answer.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(format!("GET {} HTTP/1.1\r\nHost: b\r\n\r\n", backup_path(ID)).as_bytes())
        .await
        .unwrap();
    read_response(&mut idle).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(served.load(Ordering::Relaxed) > 0, "load never got through");

    server.signal(15);
    assert!(
        server.wait_for_log("no longer accepting", Duration::from_secs(5)),
        "{}",
        server.log()
    );
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "a new connection was accepted"
    );
    // The idle connection is closed at once rather than held to the grace period.
    let mut buf = [0u8; 16];
    assert_eq!(
        within(Duration::from_secs(2), idle.read(&mut buf))
            .await
            .unwrap_or(0),
        0
    );

    let drains = bodies.into_iter().map(|(mut body, mut got)| {
        let content = content.clone();
        tokio::spawn(async move {
            while let Some(frame) = within(STEP, body.frame()).await {
                got.extend_from_slice(&frame.expect("download aborted").into_data().unwrap());
            }
            assert!(got == *content, "download incomplete: {} bytes", got.len());
        })
    });
    for drain in drains.collect::<Vec<_>>() {
        drain.await.unwrap();
    }
    let refused_before = refused.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, Ordering::Relaxed);
    within(STEP, load).await.unwrap();
    assert!(refused.load(Ordering::Relaxed) >= refused_before.max(1));
    let start = std::time::Instant::now();
    let (code, log) = tokio::task::spawn_blocking(move || {
        (server.wait_exit(Duration::from_secs(10)), server.log())
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0), "{log}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "exit waited on something"
    );
    assert!(log.contains("all connections finished"), "{log}");
}

/// A client that stops reading cannot hold shutdown past the grace period:
/// the server exits 0 when it ends, and that client sees a cut transfer.
/// A half-sent request head is cut the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grace_period_bounds_shutdown_when_clients_stall() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    let mut server = Server::start_with(tempfile::tempdir().unwrap(), &["--grace-period", "2"]);
    let secret = server.add_system("fw1");
    let len: u64 = 512 << 20;
    std::fs::File::create(server.storage().join("fw1").join(ID))
        .unwrap()
        .set_len(len)
        .unwrap();
    let mut stalled = TcpStream::connect(server.addr).await.unwrap();
    stalled
        .write_all(
            format!(
                "GET {} HTTP/1.1\r\nHost: b\r\nAuthorization: {}\r\n\r\n",
                backup_path(ID),
                basic("fw1", &secret)
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut half = TcpStream::connect(server.addr).await.unwrap();
    half.write_all(b"GET /api/systems/backups/x HTTP/1.1\r\nHost: b\r\n")
        .await
        .unwrap();
    // Let the download fill the socket buffers, then stop reading.
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.signal(15);
    let start = std::time::Instant::now();
    let (code, log, server) = tokio::task::spawn_blocking(move || {
        let code = server.wait_exit(Duration::from_secs(10));
        (code, server.log(), server)
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0), "{log}");
    let took = start.elapsed();
    assert!(took < Duration::from_secs(5), "exit took {took:?}");
    assert!(log.contains("grace period over"), "{log}");
    // The stalled client now drains what was buffered and finds the end short.
    let mut got: u64 = 0;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match within(STEP, stalled.read(&mut buf)).await {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n as u64,
        }
    }
    assert!(got < len, "the whole body arrived");
    assert_eq!(within(STEP, half.read(&mut buf)).await.unwrap_or(0), 0);
    drop(server);
}

/// Uploads `body` until it is stored (a 503 is the only other answer
/// allowed meanwhile); its id.
async fn upload_until_stored(server: &Server, auth: &str, body: &[u8], limit: Duration) -> String {
    let start = std::time::Instant::now();
    loop {
        let reply = upload(
            server.addr,
            Some(auth),
            body.to_vec(),
            &[("x-filename", "n.gpg")],
        )
        .await;
        if reply.status.as_u16() == 201 {
            return json(&reply)["data"]["id"].as_str().unwrap().to_string();
        }
        assert_eq!(
            reply.status.as_u16(),
            503,
            "{}\n{}",
            reply.text(),
            server.log()
        );
        assert_unavailable(&reply);
        assert!(
            start.elapsed() < limit,
            "no upload stored within {limit:?}\n{}",
            server.log()
        );
        // (Slow enough to stay within the default 6 uploads a minute.)
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The storage root replaced while running (a remount, a restore): the
/// self-sandbox is applied afresh to the new root by a new worker, so
/// uploads and deletes work there again without a restart, while the old
/// worker finishes its in-flight download. (Landlock rules attach to the
/// directory as it was; before the supervisor, writes stayed denied here
/// until a restart.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_storage_root_takes_uploads_and_deletes_without_a_restart() {
    use http_body_util::BodyExt;
    let (server, storage, auth, content, mut body) = download_from_a_mount(251).await;
    let sandboxed = server
        .log()
        .contains("self-sandbox (Landlock): fully enforced");
    let first_worker = server.workers();
    assert_eq!(first_worker.len(), 1);
    let mut got = Vec::new();

    std::fs::rename(&storage, server.data().join("old-mount")).unwrap();
    std::fs::create_dir_all(storage.join("fw1")).unwrap();
    // A restored or remounted root carries backupd's marker; a directory
    // without it is never adopted while running.
    std::fs::copy(
        server.data().join("old-mount/.backupd-root"),
        storage.join(".backupd-root"),
    )
    .unwrap();
    // Until the watcher notices (within 2 s), uploads still go to the old
    // directory, as downloads still come from it.
    assert!(
        server.wait_for_log("storage root was replaced", Duration::from_secs(2)),
        "{}",
        server.log()
    );
    let id =
        upload_until_stored(&server, &auth, b"into the new root", Duration::from_secs(4)).await;
    assert_eq!(
        std::fs::read(storage.join("fw1").join(&id)).unwrap(),
        b"into the new root"
    );
    // The in-flight download, still on the old worker, ends whole.
    while let Some(frame) = within(STEP, body.frame()).await {
        got.extend_from_slice(&frame.unwrap().into_data().unwrap());
    }
    assert!(got == content, "the in-flight download changed");

    let reply = get(server.addr, "/api/systems/backups", Some(&auth)).await;
    assert_eq!(json(&reply)["data"]["backups"][0]["id"], id.as_str());
    let reply = request(
        server.addr,
        hyper::Method::DELETE,
        &backup_path(&id),
        Some(&auth),
    )
    .await;
    assert_eq!(reply.status.as_u16(), 200, "{}", reply.text());
    assert!(!storage.join("fw1").join(&id).exists());

    // Same server process; under Landlock, a new worker now serves.
    let mut server = server;
    assert!(server.child.try_wait().unwrap().is_none());
    if sandboxed {
        assert!(
            server.log().contains("new worker serves"),
            "{}",
            server.log()
        );
        let start = std::time::Instant::now();
        while server.workers() == first_worker || server.workers().len() != 1 {
            assert!(
                start.elapsed() < STEP,
                "old worker still running: {:?}",
                server.workers()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // SIGTERM still stops the whole service cleanly.
    server.signal(15);
    let code = tokio::task::spawn_blocking(move || server.wait_exit(Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(code, Some(0));
}

/// A storage root missing at start-up (an explicit mount point not mounted
/// yet) takes uploads once it appears, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storage_root_missing_at_start_takes_uploads_once_it_appears() {
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("mnt");
    let server = Server::start_with(dir, &["--storage", storage.to_str().unwrap()]);
    // Registered first: once the root appears, a new worker takes over (and
    // reads the credentials at its start, with no "reloaded" line to wait for).
    let auth = basic("fw1", &server.add_system("fw1"));
    std::fs::create_dir_all(storage.join("fw1")).unwrap();
    assert!(
        server.wait_for_log("storage root is available", Duration::from_secs(2)),
        "{}",
        server.log()
    );
    let id = upload_until_stored(&server, &auth, b"after the mount", Duration::from_secs(4)).await;
    // The first root this server uses gets the marker (from the worker
    // sandboxed to it).
    assert!(storage.join(".backupd-root").is_file());
    let reply = get(server.addr, &backup_path(&id), Some(&auth)).await;
    assert_eq!(&reply.body[..], b"after the mount");
}

/// The supervisor and its worker end together: a worker that dies stops
/// the service with a failure (so systemd restarts it), and a supervisor
/// killed outright takes its worker with it (no orphan keeps serving).
#[tokio::test]
async fn the_supervisor_and_its_worker_end_together() {
    let mut server = Server::start();
    let Some(&worker) = server.workers().first() else {
        return; // no supervisor: nothing to check
    };
    server.signal_worker(9);
    let code = tokio::task::spawn_blocking(move || {
        let code = server.wait_exit(Duration::from_secs(5));
        (code, server.log())
    })
    .await
    .unwrap();
    assert_eq!(code.0, Some(1), "{}", code.1);
    assert!(code.1.contains("worker killed by a signal"), "{}", code.1);
    assert!(!std::path::Path::new(&format!("/proc/{worker}")).exists());

    let server = Server::start();
    let worker = server.workers()[0];
    let addr = server.addr;
    server.signal(9);
    let start = std::time::Instant::now();
    while tokio::net::TcpStream::connect(addr).await.is_ok()
        || std::path::Path::new(&format!("/proc/{worker}/status")).exists()
            && !std::fs::read_to_string(format!("/proc/{worker}/status"))
                .unwrap_or_default()
                .contains("State:\tZ")
    {
        assert!(start.elapsed() < STEP, "the worker outlived its supervisor");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An upload the server refuses through its own fault (storage root gone:
/// 503) does not count against the system's upload rate limit: once the
/// root is back, the retry is stored, not met with a 429.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_refused_for_a_storage_outage_do_not_count_against_the_rate_limit() {
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("mnt");
    std::fs::create_dir_all(storage.join("fw1")).unwrap();
    let server = Server::start_with(
        dir,
        &[
            "--storage",
            storage.to_str().unwrap(),
            "--upload-rate-per-minute",
            "1",
        ],
    );
    let auth = basic("fw1", &server.add_system("fw1"));
    let moved = server.data().join("unmounted");
    std::fs::rename(&storage, &moved).unwrap();
    assert!(
        server.wait_for_log("storage root is unavailable", Duration::from_secs(2)),
        "{}",
        server.log()
    );
    for _ in 0..3 {
        let reply = upload(server.addr, Some(&auth), b"x".to_vec(), &[]).await;
        assert_unavailable(&reply);
    }
    // The same directory comes back (so the same sandbox still covers it).
    let returns = server.count_log("storage root is available");
    std::fs::rename(&moved, &storage).unwrap();
    let start = std::time::Instant::now();
    while server.count_log("storage root is available") == returns {
        assert!(start.elapsed() < Duration::from_secs(2), "{}", server.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reply = upload(server.addr, Some(&auth), b"stored".to_vec(), &[]).await;
    assert_eq!(reply.status.as_u16(), 201, "{}", reply.text());
    // The limit itself still holds: that was this minute's one upload.
    let reply = upload(server.addr, Some(&auth), b"again".to_vec(), &[]).await;
    assert_eq!(reply.status.as_u16(), 429, "{}", reply.text());
}

/// A rate-limited HTTP/2 download (curl, h2c) when the server is told to
/// stop: it arrives whole, as over HTTP/1.1. The connection is closed only
/// once what was written has been delivered: write side shut, the peer's
/// frames read and dropped until it closes (a lingering close), so the
/// kernel never answers unread WINDOW_UPDATEs with a reset that makes the
/// client discard the end of the download.
#[tokio::test]
async fn an_http2_download_survives_a_graceful_stop() {
    let server = Server::start();
    let secret = server.add_system("fw1");
    let content: Vec<u8> = (0..20_000_000u32).map(|i| (i % 253) as u8).collect();
    server.put("fw1", ID, &content);
    let url = format!("http://{}{}", server.addr, backup_path(ID));
    let out = server.data().join("h2c.bin");
    let curl = {
        let out = out.clone();
        std::process::Command::new("curl")
            .args([
                "-sS",
                "--fail",
                "--http2-prior-knowledge",
                "--limit-rate",
                "4M",
            ])
            .args(["--user", &format!("fw1:{secret}"), "-o"])
            .arg(&out)
            .arg(&url)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("curl")
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.signal(15);
    let (status, stderr) = tokio::task::spawn_blocking(move || {
        let out = curl.wait_with_output().unwrap();
        (
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap();
    assert!(status.success(), "curl failed: {stderr}\n{}", server.log());
    let got = std::fs::read(&out).unwrap();
    assert_eq!(got.len(), content.len(), "{}", server.log());
    assert!(got == content, "the download differs");
    let mut server = server;
    let code = tokio::task::spawn_blocking(move || server.wait_exit(Duration::from_secs(20)))
        .await
        .unwrap();
    assert_eq!(code, Some(0));
}

/// With `--storage` on a mountpoint, losing the mount reveals the empty
/// directory beneath it. That is not the storage root: it lacks the marker
/// backupd wrote into the real one, so it is never adopted: 503, /readyz
/// 503, an ERROR, and no upload lands on the root filesystem. When the
/// mount is back, everything is.
#[tokio::test]
async fn a_lost_mount_is_never_taken_for_the_storage_root() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(mnt.join("fw1")).unwrap();
    let server = Server::start_with(
        dir,
        &[
            "--storage",
            mnt.to_str().unwrap(),
            "--admin-listen",
            "127.0.0.1:0",
            "--upload-rate-per-minute",
            "0",
        ],
    );
    let admin = admin_addr(&server);
    let auth = basic("fw1", &server.add_system("fw1"));
    assert!(
        mnt.join(".backupd-root").is_file(),
        "the first root was not marked"
    );
    let mounted = server.data().join("the-filesystem");
    std::fs::rename(&mnt, &mounted).unwrap();
    std::fs::create_dir(&mnt).unwrap();
    let start = std::time::Instant::now();
    while get(admin, "/readyz", None).await.status.as_u16() != 503 {
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "readyz stayed 200"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(get(admin, "/readyz", None).await.status.as_u16(), 503);
    let reply = upload(server.addr, Some(&auth), b"must not land".to_vec(), &[]).await;
    assert_unavailable(&reply);
    assert_eq!(
        names_in(&mnt),
        Vec::<String>::new(),
        "something was written"
    );
    let log = server.log();
    assert!(
        log.lines()
            .any(|l| l.contains("ERROR") && l.contains("no .backupd-root here")),
        "{log}"
    );
    // The mount is back.
    std::fs::remove_dir(&mnt).unwrap();
    std::fs::rename(&mounted, &mnt).unwrap();
    let start = std::time::Instant::now();
    while get(admin, "/readyz", None).await.status.as_u16() != 200 {
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "not back within 2 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reply = upload_until_stored(&server, &auth, b"landed", Duration::from_secs(4)).await;
    assert_eq!(
        std::fs::read(mnt.join("fw1").join(&reply)).unwrap(),
        b"landed"
    );
}

/// An HTTP/2 download on a worker retired by a storage-root replacement
/// (it is told to stop, as by SIGTERM, once its successor serves) arrives
/// whole.
#[tokio::test]
async fn an_http2_download_survives_its_worker_being_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(mnt.join("fw1")).unwrap();
    let server = Server::start_with(dir, &["--storage", mnt.to_str().unwrap()]);
    if !server
        .log()
        .contains("self-sandbox (Landlock): fully enforced")
    {
        // Without Landlock one worker serves every root: nothing is retired.
        return;
    }
    let secret = server.add_system("fw1");
    let content: Vec<u8> = (0..20_000_000u32).map(|i| (i % 241) as u8).collect();
    std::fs::write(mnt.join("fw1").join(ID), &content).unwrap();
    let out = server.data().join("h2c.bin");
    let curl = std::process::Command::new("curl")
        .args([
            "-sS",
            "--fail",
            "--http2-prior-knowledge",
            "--limit-rate",
            "4M",
        ])
        .args(["--user", &format!("fw1:{secret}"), "-o"])
        .arg(&out)
        .arg(format!("http://{}{}", server.addr, backup_path(ID)))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("curl");
    tokio::time::sleep(Duration::from_secs(1)).await;
    // A restore: the root is replaced by a copy that carries the marker.
    let old = server.data().join("old-mnt");
    std::fs::rename(&mnt, &old).unwrap();
    std::fs::create_dir_all(mnt.join("fw1")).unwrap();
    std::fs::copy(old.join(".backupd-root"), mnt.join(".backupd-root")).unwrap();
    assert!(
        server.wait_for_log("new worker serves", Duration::from_secs(5)),
        "{}",
        server.log()
    );
    let done = tokio::task::spawn_blocking(move || curl.wait_with_output().unwrap())
        .await
        .unwrap();
    assert!(
        done.status.success(),
        "curl failed: {}\n{}",
        String::from_utf8_lossy(&done.stderr),
        server.log()
    );
    let got = std::fs::read(&out).unwrap();
    assert_eq!(got.len(), content.len());
    assert!(got == content, "the download differs");
    // With its last connection done, the old worker exits, and says so.
    assert!(
        server.wait_for_log(
            "previous worker finished its connections and exited",
            Duration::from_secs(10)
        ),
        "{}",
        server.log()
    );
}
