//! The command line: `systems add|remove|list`, start-up, live reload, signals.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use common::*;
use hyper::{Method, StatusCode};

fn snapshot(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in walk(dir) {
        let content = std::fs::read(&entry).unwrap_or_default();
        out.push((
            entry.strip_prefix(dir).unwrap().display().to_string(),
            content,
        ));
    }
    out.sort();
    out
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            out.push(path.clone());
            if path.is_dir() {
                out.extend(walk(&path));
            }
        }
    }
    out
}

#[test]
fn add_prints_only_a_strong_secret_and_stores_only_a_salted_hash() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = cli(dir.path(), &["systems", "add", "fw-01.example_com"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.lines().count(),
        1,
        "stdout must be the secret alone: {out:?}"
    );
    let secret = out.trim_end();
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(secret)
        .unwrap();
    assert!(raw.len() * 8 >= 256);

    let creds_path = dir.path().join("credentials");
    let creds = std::fs::read_to_string(&creds_path).unwrap();
    assert!(!creds.contains(secret));
    assert!(creds.contains("fw-01.example_com:sha256:"));
    assert_eq!(
        std::fs::metadata(&creds_path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(dir.path().join("backups/fw-01.example_com").is_dir());

    // Two systems get different secrets, and equal secrets would not collide
    // in the file thanks to the salt.
    let (_, out2, _) = cli(dir.path(), &["systems", "add", "fw2"]);
    assert_ne!(out2.trim_end(), secret);

    let (code, out, _) = cli(dir.path(), &["systems", "list"]);
    assert_eq!(code, 0);
    let names: Vec<&str> = out
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(names, ["fw-01.example_com", "fw2"], "{out}");
}

/// What an operator asks every morning: which systems backed up, how much
/// they hold, and which have not backed up lately (`--stale`, non-zero exit
/// for cron); `--json` for scripts.
#[test]
fn systems_list_shows_what_each_system_holds_and_which_are_stale() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["fresh", "old", "empty"] {
        assert_eq!(cli(dir.path(), &["systems", "add", name]).0, 0);
    }
    let backups = dir.path().join("backups");
    std::fs::write(backups.join("fresh").join(ID), vec![1u8; 1000]).unwrap();
    std::fs::write(backups.join("fresh").join(ID2), vec![1u8; 24]).unwrap();
    let old = backups.join("old").join(ID);
    std::fs::write(&old, vec![1u8; 7]).unwrap();
    let two_days_ago = std::time::SystemTime::now() - Duration::from_secs(2 * 86_400);
    std::fs::File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(two_days_ago)
        .unwrap();

    let (code, out, err) = cli(dir.path(), &["systems", "list", "--json"]);
    assert_eq!(code, 0, "{err}");
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    let row = |name: &str| {
        listed["systems"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("{name} not listed: {out}"))
            .clone()
    };
    assert_eq!(row("fresh")["backups"], 2);
    assert_eq!(row("fresh")["bytes"], 1024);
    assert!(row("fresh")["age_seconds"].as_u64().unwrap() < 600);
    assert_eq!(row("old")["backups"], 1);
    assert!(row("old")["age_seconds"].as_u64().unwrap() >= 2 * 86_400 - 60);
    assert_eq!(row("empty")["backups"], 0);
    assert!(row("empty")["newest"].is_null());

    let (code, out, _) = cli(dir.path(), &["systems", "list", "--stale", "26h"]);
    assert_eq!(code, 3, "stale systems exit 3: {out}");
    let names: Vec<&str> = out
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(names, ["empty", "old"], "{out}");
    let (code, _, _) = cli(dir.path(), &["systems", "list", "--stale", "30d"]);
    assert_eq!(code, 3, "a system with no backup at all is stale");
    assert_eq!(cli(dir.path(), &["systems", "remove", "empty"]).0, 0);
    let (code, out, _) = cli(dir.path(), &["systems", "list", "--stale", "30d"]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn invalid_and_duplicate_names_exit_non_zero_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    cli(dir.path(), &["systems", "add", "fw1"]);
    let before = snapshot(dir.path());
    let long = "a".repeat(129);
    for bad in [
        "",
        ".",
        "..",
        ".hidden",
        "-x",
        "a/b",
        "a\\b",
        "a:b",
        "a b",
        "é",
        "fw1\n",
        long.as_str(),
        "foo/config",
    ] {
        let (code, out, err) = cli(dir.path(), &["systems", "add", bad]);
        assert_ne!(code, 0, "{bad:?} accepted");
        assert!(out.is_empty());
        assert!(err.contains("invalid system name"), "{err}");
        assert_eq!(snapshot(dir.path()), before, "{bad:?} changed something");
    }
    let (code, out, err) = cli(dir.path(), &["systems", "add", "fw1"]);
    assert_ne!(code, 0);
    assert!(out.is_empty());
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(snapshot(dir.path()), before);

    let (code, _, err) = cli(dir.path(), &["systems", "remove", "nobody"]);
    assert_ne!(code, 0);
    assert!(err.contains("no system named nobody"), "{err}");
    assert_eq!(snapshot(dir.path()), before);

    // Remove revokes, keeps the backups, and the name can be added again.
    std::fs::write(dir.path().join("backups/fw1").join(ID), b"kept").unwrap();
    let (code, _, _) = cli(dir.path(), &["systems", "remove", "fw1"]);
    assert_eq!(code, 0);
    assert_eq!(
        cli(dir.path(), &["systems", "list"]).1.lines().count(),
        1,
        "only the header"
    );
    assert_eq!(
        std::fs::read(dir.path().join("backups/fw1").join(ID)).unwrap(),
        b"kept"
    );
}

/// Names are unique ignoring case: on a case-folding filesystem `FW1` and
/// `fw1` would be one directory, and one system would read the other's
/// backups. Refused by `systems add`, and in a hand-edited file.
#[test]
fn names_that_differ_only_in_case_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(cli(dir.path(), &["systems", "add", "fw1"]).0, 0);
    let before = snapshot(dir.path());
    for other in ["FW1", "Fw1", "fW1"] {
        let (code, out, err) = cli(dir.path(), &["systems", "add", other]);
        assert_ne!(code, 0, "{other} accepted");
        assert!(out.is_empty());
        assert!(err.contains("only in case"), "{err}");
        assert_eq!(snapshot(dir.path()), before, "{other} changed something");
    }
    // A credentials file edited by hand to hold both does not load.
    assert_eq!(cli(dir.path(), &["systems", "add", "other"]).0, 0);
    let path = dir.path().join("credentials");
    let text = std::fs::read_to_string(&path).unwrap();
    let line = text.lines().find(|l| l.starts_with("fw1:")).unwrap();
    std::fs::write(&path, format!("{text}{}\n", line.replacen("fw1", "FW1", 1))).unwrap();
    let (code, _, err) = cli(dir.path(), &["systems", "list"]);
    assert_ne!(code, 0);
    assert!(err.contains("only in case"), "{err}");
}

/// Re-adding a removed name must not silently hand the old system's
/// backups to whoever holds the new secret: refused, with a message that
/// says how to proceed, unless `--adopt` says to.
#[tokio::test]
async fn re_adding_a_name_whose_backups_remain_needs_adopt() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(cli(dir.path(), &["systems", "add", "fw1"]).0, 0);
    std::fs::write(dir.path().join("backups/fw1").join(ID), b"old system's").unwrap();
    assert_eq!(cli(dir.path(), &["systems", "remove", "fw1"]).0, 0);
    let before = snapshot(dir.path());
    let (code, out, err) = cli(dir.path(), &["systems", "add", "fw1"]);
    assert_ne!(code, 0);
    assert!(out.is_empty(), "a secret was printed: {out}");
    assert!(err.contains("--adopt") && err.contains("1 backup"), "{err}");
    assert!(err.contains("rm -r"), "{err}");
    assert_eq!(snapshot(dir.path()), before);
    // An empty leftover directory is simply reused.
    std::fs::create_dir(dir.path().join("backups/fw2")).unwrap();
    assert_eq!(cli(dir.path(), &["systems", "add", "fw2"]).0, 0);
    // With --adopt the new secret gets the old backups.
    let (code, secret, err) = cli(dir.path(), &["systems", "add", "fw1", "--adopt"]);
    assert_eq!(code, 0, "{err}");
    let server = Server::start_with(dir, &[]);
    let reply = get(
        server.addr,
        &backup_path(ID),
        Some(&basic("fw1", secret.trim_end())),
    )
    .await;
    assert_eq!(&reply.body[..], b"old system's");
}

#[test]
fn credentials_and_storage_can_live_apart() {
    let dir = tempfile::tempdir().unwrap();
    let etc = dir.path().join("etc/backupd/credentials");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let out = Command::new(bin())
        .args(["systems", "add", "fw1", "--credentials"])
        .arg(&etc)
        .arg("--storage")
        .arg(&mnt)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(etc.is_file());
    assert!(mnt.join("fw1").is_dir());
    // The env vars work the same way.
    let out = Command::new(bin())
        .args(["systems", "list"])
        .env("BACKUPD_CREDENTIALS", &etc)
        .env("BACKUPD_STORAGE", &mnt)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<&str> = stdout.lines().skip(1).collect();
    assert_eq!(rows.len(), 1, "{stdout}");
    assert!(rows[0].starts_with("fw1 "), "{stdout}");
}

#[tokio::test]
async fn serve_with_no_arguments_starts_on_a_fresh_machine() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(bin());
    // No arguments at all: the listen address comes from the environment
    // only so the test does not collide with a real port 8080.
    command
        .arg("serve")
        .current_dir(dir.path())
        .env("BACKUPD_LISTEN", "127.0.0.1:0");
    let server = Server::launch(tempfile::tempdir().unwrap(), command).unwrap();
    let data = dir.path().join("backupd-data");
    assert!(data.join("credentials").is_file());
    assert!(data.join("backups").is_dir());
    assert!(
        server.log().contains("backupd systems add NAME"),
        "{}",
        server.log()
    );
    let reply = get(server.addr, &backup_path(ID), None).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
}

#[test]
fn a_malformed_credentials_file_stops_start_up_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    cli(dir.path(), &["systems", "add", "fw1"]);
    let path = dir.path().join("credentials");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("\nthis is not a credential\n");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 4"), "{err}");
}

#[tokio::test]
async fn a_world_readable_credentials_file_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    cli(dir.path(), &["systems", "add", "fw1"]);
    std::fs::set_permissions(
        dir.path().join("credentials"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let server = Server::start_with(dir, &[]);
    assert!(
        server.log().contains("readable by other users"),
        "{}",
        server.log()
    );
}

/// The README's own example: `systems add`, then at once a request with
/// the new secret. A change made by `systems add|remove` is in force for
/// the very next request (no polling delay), every time.
#[tokio::test]
async fn systems_added_and_removed_are_in_force_for_the_very_next_request() {
    let server = Server::start();
    let dir = server.data().to_path_buf();
    for round in 0..5 {
        let name = format!("fw{round}");
        let (code, secret, err) = cli(&dir, &["systems", "add", &name]);
        assert_eq!(code, 0, "{err}");
        let auth = basic(&name, secret.trim());
        let reply = get(server.addr, "/api/systems/backups", Some(&auth)).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "round {round}: add not in force"
        );
        let (code, _, err) = cli(&dir, &["systems", "remove", &name]);
        assert_eq!(code, 0, "{err}");
        let reply = get(server.addr, "/api/systems/backups", Some(&auth)).await;
        assert_eq!(
            reply.status,
            StatusCode::UNAUTHORIZED,
            "round {round}: remove not in force"
        );
    }
}

#[tokio::test]
async fn systems_added_and_removed_take_effect_within_2_s() {
    let server = Server::start();
    let dir = server.data().to_path_buf();
    let (code, secret, _) = cli(&dir, &["systems", "add", "late"]);
    assert_eq!(code, 0);
    let auth = basic("late", secret.trim());
    std::fs::write(server.storage().join("late").join(ID), b"hello").unwrap();
    let start = Instant::now();
    loop {
        let reply = get(server.addr, &backup_path(ID), Some(&auth)).await;
        if reply.status == StatusCode::OK {
            assert_eq!(&reply.body[..], b"hello");
            break;
        }
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "add not in effect within 2 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (code, _, _) = cli(&dir, &["systems", "remove", "late"]);
    assert_eq!(code, 0);
    let start = Instant::now();
    loop {
        let reply = get(server.addr, &backup_path(ID), Some(&auth)).await;
        if reply.status == StatusCode::UNAUTHORIZED {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "remove not in effect within 2 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_corrupted_credentials_file_keeps_the_previous_credentials() {
    let server = Server::start();
    let secret = server.add_system("fw1");
    server.put("fw1", ID, b"still here");
    let path = server.data().join("credentials");
    std::fs::write(&path, "fw1:sha256:garbage\n").unwrap();
    assert!(
        server.wait_for_log("line 1", Duration::from_secs(2)),
        "{}",
        server.log()
    );
    let reply = get(server.addr, &backup_path(ID), Some(&basic("fw1", &secret))).await;
    assert_eq!(reply.status, StatusCode::OK);
    // Removing the file also keeps them.
    std::fs::remove_file(&path).unwrap();
    assert!(server.wait_for_log("credentials file is missing", Duration::from_secs(2)));
    let reply = get(server.addr, &backup_path(ID), Some(&basic("fw1", &secret))).await;
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test]
async fn sighup_reloads_at_once() {
    let server = Server::start();
    let before = server.count_log("credentials reloaded");
    server.signal(1);
    assert!(server.wait_for_log("SIGHUP: reloading credentials", Duration::from_secs(2)));
    server.wait_for_reload(before);
}

#[tokio::test]
async fn sigterm_lets_a_download_finish_then_exits_0() {
    use http_body_util::BodyExt;
    let mut server = Server::start();
    let secret = server.add_system("fw1");
    let len: u64 = 256 << 20;
    let file = std::fs::File::create(server.storage().join("fw1").join(ID)).unwrap();
    file.set_len(len).unwrap();

    let auth = basic("fw1", &secret);
    let res = open(
        server.addr,
        false,
        Method::GET,
        &backup_path(ID),
        Some(&auth),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let mut body = res.into_body();
    let mut seen = within(STEP, body.frame())
        .await
        .unwrap()
        .unwrap()
        .into_data()
        .unwrap()
        .len() as u64;

    server.signal(15);
    assert!(
        server.wait_for_log("no longer accepting", Duration::from_secs(5)),
        "{}",
        server.log()
    );
    // New connections are refused once shutdown starts.
    assert!(tokio::net::TcpStream::connect(server.addr).await.is_err());
    // The download in flight still completes, slowly read.
    while let Some(frame) = within(STEP, body.frame()).await {
        seen += frame.unwrap().into_data().unwrap().len() as u64;
        if seen < 8 << 20 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    assert_eq!(seen, len);
    let code = tokio::task::spawn_blocking(move || server.wait_exit(Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(code, Some(0));
}

/// `systems rotate`: a new secret, the old one still valid (both checked
/// on every request) until `--finish` or the end of `--overlap`; requests
/// with the old one are logged so the devices left behind can be found,
/// and a 401 names the system claimed and why.
#[tokio::test]
async fn rotating_a_secret_keeps_the_old_one_until_the_rotation_ends() {
    let server = Server::start();
    let old = server.add_system("fw1");
    let other = server.add_system("fw2");
    server.put("fw1", ID, b"payload");
    let status = |secret: String| {
        let addr = server.addr;
        async move {
            get(addr, &backup_path(ID), Some(&basic("fw1", &secret)))
                .await
                .status
        }
    };
    let rotate = |args: &[&str]| {
        let reloads = server.count_log("credentials reloaded");
        let mut all = vec!["systems", "rotate", "fw1"];
        all.extend_from_slice(args);
        let out = cli(server.data(), &all);
        if out.0 == 0 {
            server.wait_for_reload(reloads);
        }
        out
    };
    let (code, new, err) = rotate(&[]);
    assert_eq!(code, 0, "{err}");
    let new = new.trim_end().to_owned();
    assert!(err.contains("--finish"), "{err}");
    assert_ne!(new, old);
    assert_eq!(status(new.clone()).await, StatusCode::OK);
    assert_eq!(status(old.clone()).await, StatusCode::OK);
    assert_eq!(status(other.clone()).await, StatusCode::UNAUTHORIZED);
    assert!(
        server.wait_for_log(
            "authenticated with the previous secret of a rotation",
            Duration::from_secs(2)
        ),
        "{}",
        server.log()
    );
    // A second rotation waits for the first.
    let (code, _, err) = rotate(&[]);
    assert_ne!(code, 0);
    assert!(err.contains("under way"), "{err}");
    // --finish: only the new secret.
    let (code, _, err) = rotate(&["--finish"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(status(old.clone()).await, StatusCode::UNAUTHORIZED);
    assert_eq!(status(new.clone()).await, StatusCode::OK);
    let log = server.log();
    let failed = log
        .lines()
        .filter(|l| l.contains("authentication failed"))
        .collect::<Vec<_>>();
    assert!(
        failed
            .iter()
            .any(|l| l.contains("claimed=\"fw1\"") && l.contains("wrong secret")),
        "{failed:#?}"
    );
    // --overlap: the old secret stops working by itself.
    let (code, newer, err) = rotate(&["--overlap", "2s"]);
    assert_eq!(code, 0, "{err}");
    let newer = newer.trim_end().to_owned();
    assert_eq!(status(new.clone()).await, StatusCode::OK);
    assert_eq!(status(newer.clone()).await, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(3100)).await;
    assert_eq!(status(new.clone()).await, StatusCode::UNAUTHORIZED);
    assert_eq!(status(newer).await, StatusCode::OK);
    // Unknown systems and a bad duration are refused.
    let (code, _, err) = cli(server.data(), &["systems", "rotate", "nope"]);
    assert_ne!(code, 0);
    assert!(err.contains("no system named nope"), "{err}");
    let (code, _, _) = cli(
        server.data(),
        &["systems", "rotate", "fw1", "--overlap", "soon"],
    );
    assert_ne!(code, 0);
    // The secrets never reach the log.
    let log = server.log();
    assert!(
        !log.contains(&old) && !log.contains(&new),
        "a secret in the log"
    );
}

/// systemd socket activation: the listening socket is passed the way
/// systemd passes it (descriptor 3, `LISTEN_FDS=1`, `LISTEN_PID` the
/// server's own pid), by a holder that keeps it across a restart, so a
/// request made while no server runs waits in the backlog and is answered
/// by the next one: a restart refuses no connection.
#[tokio::test]
async fn socket_activation_serves_the_passed_socket_and_a_restart_refuses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_owned();
    let (code, secret, err) = cli(&data, &["systems", "add", "fw1"]);
    assert_eq!(code, 0, "{err}");
    let auth = basic("fw1", secret.trim_end());
    let log_path = data.join("server.log");
    // The holder: binds, then on "start" forks and execs backupd with the
    // socket as descriptor 3, on "stop" sends SIGTERM and waits.
    let holder = r#"
import os, signal, socket, sys
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(128)
print(s.getsockname()[1], flush=True)
child = None
for line in sys.stdin:
    if line.strip() == "start":
        child = os.fork()
        if child == 0:
            if s.fileno() != 3:
                os.dup2(s.fileno(), 3)
            os.set_inheritable(3, True)
            env = dict(os.environ, LISTEN_PID=str(os.getpid()), LISTEN_FDS="1", RUST_LOG="info")
            # --listen names another port: the passed socket must win.
            os.execve(sys.argv[1], [sys.argv[1], "serve", "--data-dir", sys.argv[2], "--listen", "127.0.0.1:1"], env)
        print("started", flush=True)
    elif line.strip() == "stop":
        os.kill(child, signal.SIGTERM)
        os.waitpid(child, 0)
        print("stopped", flush=True)
"#;
    let log = std::fs::File::create(&log_path).unwrap();
    let mut holder = Command::new("python3")
        .arg("-c")
        .arg(holder)
        .arg(bin())
        .arg(&data)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("python3");
    let mut to = holder.stdin.take().unwrap();
    let mut from = std::io::BufReader::new(holder.stdout.take().unwrap());
    let mut say = |command: &str| {
        use std::io::{BufRead, Write};
        if !command.is_empty() {
            writeln!(to, "{command}").unwrap();
        }
        let mut line = String::new();
        from.read_line(&mut line).unwrap();
        line.trim_end().to_owned()
    };
    let port: u16 = say("").parse().unwrap();
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let server_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let wait_for = |needle: &str| {
        let start = Instant::now();
        while !server_log().contains(needle) {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "no {needle:?}: {}",
                server_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    assert_eq!(say("start"), "started");
    wait_for("socket activation: serving on the sockets systemd passed");
    let stored = upload(addr, Some(&auth), b"nightly".to_vec(), &[]).await;
    assert_eq!(stored.status, StatusCode::CREATED, "{}", server_log());
    let id = json(&stored)["data"]["id"].as_str().unwrap().to_owned();

    // No server runs now; the socket stays open in the holder.
    assert_eq!(say("stop"), "stopped");
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n",
        backup_path(&id)
    );
    let pending =
        tokio::spawn(async move { raw(addr, request.as_bytes(), Duration::from_secs(20)).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!pending.is_finished(), "answered while no server ran");
    assert_eq!(say("start"), "started");
    let reply = within(Duration::from_secs(20), pending).await.unwrap();
    let text = String::from_utf8_lossy(&reply);
    assert_eq!(raw_status(&reply), Some(200), "{text}\n{}", server_log());
    assert!(text.ends_with("nightly"), "{text}");
    assert_eq!(say("stop"), "stopped");
    drop(to);
    let _ = holder.wait();
    // Neither server bound --listen's port.
    assert!(!server_log().contains("cannot listen"), "{}", server_log());
}

#[tokio::test]
async fn import_verify_and_prune_work_beside_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(dir, &[]);
    let secret = server.add_system("fw1");
    let auth = basic("fw1", &secret);
    let inbox = tempfile::tempdir().unwrap();
    let old: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    let new: Vec<u8> = (0..200_000u32).map(|i| (i % 241) as u8).collect();
    std::fs::write(inbox.path().join("fw1 2026-11-01.tgz"), &old).unwrap();
    std::fs::write(inbox.path().join("nightly.tar.gpg"), &new).unwrap();
    std::fs::write(inbox.path().join("copy.bin"), &new).unwrap();
    let set_mtime = |name: &str, unix: i64| {
        let status = Command::new("touch")
            .arg("-d")
            .arg(format!("@{unix}"))
            .arg(inbox.path().join(name))
            .status()
            .unwrap();
        assert!(status.success());
    };
    set_mtime("fw1 2026-11-01.tgz", 1_761_966_000); // 2025-11-01T03:00:00Z
    set_mtime("nightly.tar.gpg", 1_762_052_400); // a day later
    let files = |names: &[&str]| -> Vec<String> {
        names
            .iter()
            .map(|n| inbox.path().join(n).display().to_string())
            .collect()
    };
    let args = |cmd: &[&str], names: &[&str]| -> Vec<String> {
        cmd.iter()
            .map(|s| s.to_string())
            .chain(files(names))
            .collect()
    };
    let run = |args: Vec<String>| {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        server.cli(&refs)
    };
    let all = ["fw1 2026-11-01.tgz", "nightly.tar.gpg", "copy.bin"];

    // A dry run stores nothing; an unregistered system is refused.
    let (code, out, err) = run(args(&["import", "fw1", "--dry-run"], &all));
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.matches("would import").count(), 2, "{out}");
    assert_eq!(
        out.matches("skipped").count(),
        1,
        "the copy is a duplicate: {out}"
    );
    assert!(server.stored_backups("fw1").is_empty());
    let (code, _, err) = run(args(&["import", "nobody"], &all));
    assert_ne!(code, 0);
    assert!(err.contains("no system named nobody"), "{err}");

    let (code, out, err) = run(args(&["import", "fw1"], &all));
    assert_eq!(code, 0, "{err}");
    let imported: Vec<(String, String)> = out
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("imported ")?;
            let (path, rest) = rest.split_once(" as ")?;
            Some((path.to_owned(), rest.split(' ').next()?.to_owned()))
        })
        .collect();
    assert_eq!(imported.len(), 2, "{out}");
    let old_id = &imported[0].1;
    let new_id = &imported[1].1;
    // The id carries the file's time and the extension its name maps to.
    assert!(
        old_id.ends_with(".tar.gz") && new_id.ends_with(".gpg"),
        "{out}"
    );
    let ms = |id: &str| u64::from_str_radix(&id.replace('-', "")[..12], 16).unwrap();
    assert_eq!(ms(old_id), 1_761_966_000_000);
    assert_eq!(ms(new_id), 1_762_052_400_000);
    // Served like an upload: same bytes, digest, name; listed.
    let got = get(server.addr, &backup_path(old_id), Some(&auth)).await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(got.body == old);
    let sha = base64::engine::general_purpose::STANDARD
        .encode(<sha2::Sha256 as sha2::Digest>::digest(&old));
    assert_eq!(
        got.header("repr-digest"),
        Some(format!("sha-256=:{sha}:").as_str())
    );
    assert!(
        got.header("content-disposition")
            .is_some_and(|d| d.contains("fw1_2026-11-01.tgz")),
        "{:?}",
        got.header("content-disposition")
    );
    let list = get(server.addr, "/api/systems/backups", Some(&auth)).await;
    let listed = json(&list);
    assert_eq!(
        listed["data"]["backups"].as_array().unwrap().len(),
        2,
        "{listed}"
    );
    // Importing again stores nothing twice.
    let (code, out, _) = run(args(&["import", "fw1"], &all));
    assert_eq!(code, 0);
    assert_eq!(out.matches("skipped").count(), 3, "{out}");
    assert_eq!(server.stored_backups("fw1").len(), 2);

    // verify: all match; one flipped byte is named, exit 4.
    let (code, out, err) = run(vec!["verify".into()]);
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
    assert!(
        err.contains("verified 2 backups (500000 bytes): 0 mismatched"),
        "{err}"
    );
    let mut bytes = new.clone();
    bytes[1234] ^= 1;
    server.replace_content("fw1", new_id, &bytes);
    let (code, out, err) = run(vec![
        "verify".into(),
        "fw1".into(),
        "--max-rate".into(),
        "1000000".into(),
    ]);
    assert_eq!(code, 4, "{out}{err}");
    assert!(
        out.starts_with(&format!("MISMATCH fw1/{new_id}: ")),
        "{out}"
    );
    assert!(err.contains("1 mismatched"), "{err}");
    // The server learns it from the record (the filesystem store's; an
    // object's metadata is not rewritten): still served, the client can
    // check Repr-Digest, but logged and counted.
    if !fs_only("verify marks the upload record") {
        verify_marks_the_record(&server, &auth, new_id).await;
    }
    // Repaired (restored from elsewhere), it verifies again.
    server.replace_content("fw1", new_id, &new);
    let (code, _, err) = run(vec!["verify".into(), "fw1".into()]);
    assert_eq!(code, 0, "{err}");
    if s3_target().is_none() {
        let record =
            std::fs::read_to_string(server.storage().join("fw1").join(format!(".{new_id}.meta")))
                .unwrap();
        assert!(!record.contains("failed_verification"), "{record}");
    }

    // prune: the policy now, never the newest.
    let (code, out, err) = run(vec!["prune".into(), "--retention-count".into(), "1".into()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), format!("pruned fw1/{old_id}"));
    assert_eq!(server.stored_backups("fw1"), vec![new_id.clone()]);
    let (code, out, _) = run(vec!["prune".into(), "--retention-count".into(), "1".into()]);
    assert_eq!((code, out.as_str()), (0, ""));
}

/// A download of `id`, which `verify` found changed, is served but logged.
async fn verify_marks_the_record(server: &Server, auth: &str, id: &str) {
    let got = get(server.addr, &backup_path(id), Some(auth)).await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(
        server.wait_for_log(
            "serving a backup that failed verification",
            Duration::from_secs(5)
        ),
        "{}",
        server.log()
    );
    let line = server
        .log()
        .lines()
        .find(|l| l.contains("failed verification"))
        .unwrap()
        .to_owned();
    assert!(line.contains("ERROR") && line.contains(id), "{line}");
}

#[tokio::test]
async fn commands_run_as_root_keep_the_service_users_ownership() {
    use std::os::unix::fs::MetadataExt;
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root (CI runs as root)");
        return;
    }
    const SERVICE: u32 = 4321;
    let dir = tempfile::tempdir().unwrap();
    // The service's user must reach its data dir, as under /var/lib.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(&data, Some(SERVICE), Some(SERVICE)).unwrap();
    let owner = |path: &std::path::Path| {
        let meta = std::fs::symlink_metadata(path).unwrap();
        (meta.uid(), meta.gid(), meta.mode() & 0o7777)
    };

    let (code, secret, err) = cli(&data, &["systems", "add", "fw1"]);
    assert_eq!(code, 0, "{err}");
    let secret = secret.trim().to_owned();
    assert_eq!(owner(&data.join("credentials")), (SERVICE, SERVICE, 0o600));
    assert_eq!(owner(&data.join("backups")).0, SERVICE);
    assert_eq!(owner(&data.join("backups/fw1")).0, SERVICE);
    assert_eq!(owner(&data.join("backups/.backupd-root")).0, SERVICE);
    assert_eq!(owner(&data.join(".credentials.lock")).0, SERVICE);
    // An operator's choice of group and mode is kept too.
    std::os::unix::fs::chown(data.join("credentials"), None, Some(SERVICE + 1)).unwrap();
    std::fs::set_permissions(
        data.join("credentials"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    assert_eq!(cli(&data, &["systems", "add", "fw2"]).0, 0);
    assert_eq!(cli(&data, &["systems", "remove", "fw2"]).0, 0);
    assert_eq!(
        owner(&data.join("credentials")),
        (SERVICE, SERVICE + 1, 0o640)
    );
    let file = dir.path().join("nightly.tgz");
    std::fs::write(&file, b"an old backup").unwrap();
    let (code, out, err) = cli(&data, &["import", "fw1", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let id = out
        .split(" as ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(owner(&data.join("backups/fw1").join(&id)).0, SERVICE);
    assert_eq!(
        owner(&data.join(format!("backups/fw1/.{id}.meta"))).0,
        SERVICE
    );

    // The service, as its own user, reads all of it and serves the backup.
    let mut command = serve_command(Command::new(bin()), &data, &[]);
    std::os::unix::process::CommandExt::uid(&mut command, SERVICE);
    std::os::unix::process::CommandExt::gid(&mut command, SERVICE);
    let server = Server::launch(dir, command).unwrap_or_else(|log| panic!("{log}"));
    let got = get(server.addr, &backup_path(&id), Some(&basic("fw1", &secret))).await;
    assert_eq!(got.status, StatusCode::OK, "{}", server.log());
    assert_eq!(&got.body[..], b"an old backup");
    let uploaded = upload(server.addr, Some(&basic("fw1", &secret)), vec![7; 100], &[]).await;
    assert_eq!(uploaded.status, StatusCode::CREATED, "{}", server.log());
}
