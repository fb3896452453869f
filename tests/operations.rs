//! Running it: the admin listener (metrics, health, readiness) and logs.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use hyper::StatusCode;

/// Parses Prometheus text with a parser independent of ours (the
/// `prometheus-parse` crate; CI also runs the Python reference parser on a
/// live scrape, `.ci/real-clients.sh`); returns `name{labels} value` lines,
/// labels sorted, histogram buckets as `_bucket{le=...}` samples.
fn parse_prometheus(text: &str) -> Vec<String> {
    use prometheus_parse::{Scrape, Value};
    let scrape =
        Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("/metrics does not parse");
    let line = |name: &str, labels: &[(String, String)], value: f64| {
        let mut labels = labels.to_vec();
        labels.sort();
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        format!("{name}{{{}}} {value}", labels.join(","))
    };
    let mut lines = Vec::new();
    for sample in &scrape.samples {
        let labels: Vec<(String, String)> = sample
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        match &sample.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => {
                lines.push(line(&sample.metric, &labels, *v));
            }
            Value::Histogram(buckets) => {
                for bucket in buckets {
                    let le = if bucket.less_than.is_infinite() {
                        "+Inf".to_owned()
                    } else {
                        bucket.less_than.to_string()
                    };
                    let mut with_le = labels.clone();
                    with_le.push(("le".into(), le));
                    lines.push(line(
                        &format!("{}_bucket", sample.metric),
                        &with_le,
                        bucket.count,
                    ));
                }
            }
            other => lines.push(format!("{}{{?}} {other:?}", sample.metric)),
        }
    }
    assert!(!lines.is_empty(), "no samples in /metrics:\n{text}");
    lines.sort();
    lines
}

#[tokio::test]
async fn metrics_health_and_readiness_on_the_admin_listener_only() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(dir, &["--admin-listen", "127.0.0.1:0"]);
    let admin = admin_addr(&server);
    let secret = server.add_system("fw1");
    let auth = basic("fw1", &secret);
    server.put("fw1", ID, &[5u8; 1000]);
    assert_eq!(
        get(server.addr, &backup_path(ID), Some(&auth)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        get(server.addr, &backup_path(ID), None).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get(server.addr, &backup_path(ID2), Some(&auth))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let uploaded = upload(server.addr, Some(&auth), vec![1; 300], &[]).await;
    assert_eq!(uploaded.status, StatusCode::CREATED);
    let new_id = json(&uploaded)["data"]["id"].as_str().unwrap().to_string();

    // The public port has no such routes.
    for path in ["/metrics", "/healthz", "/readyz"] {
        assert_eq!(
            get(server.addr, path, None).await.status,
            StatusCode::NOT_FOUND
        );
    }
    assert_eq!(get(admin, "/healthz", None).await.status, StatusCode::OK);
    assert_eq!(get(admin, "/readyz", None).await.status, StatusCode::OK);

    // The streamed download's line is counted when its body ends: give it a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let metrics = get(admin, "/metrics", None).await;
    assert_eq!(metrics.status, StatusCode::OK);
    assert!(
        metrics
            .header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = metrics.text();
    let samples = parse_prometheus(&text);
    let has = |line: &str| samples.iter().any(|s| s == line);
    assert!(
        has(r#"backupd_requests_total{route="download",status="200"} 1"#),
        "{samples:#?}"
    );
    assert!(
        has(r#"backupd_requests_total{route="download",status="401"} 1"#),
        "{samples:#?}"
    );
    assert!(
        has(r#"backupd_requests_total{route="download",status="404"} 1"#),
        "{samples:#?}"
    );
    assert!(
        has(r#"backupd_requests_total{route="upload",status="201"} 1"#),
        "{samples:#?}"
    );
    assert!(
        has(r#"backupd_auth_failures_total{reason="missing"} 1"#),
        "{samples:#?}"
    );
    assert!(
        has(r#"backupd_auth_failures_total{reason="wrong_secret"} 0"#),
        "{samples:#?}"
    );
    assert!(has("backupd_uploads_total{} 1"), "{samples:#?}");
    assert!(has("backupd_received_bytes_total{} 300"), "{samples:#?}");
    assert!(
        samples
            .iter()
            .any(|s| s.starts_with("backupd_sent_bytes_total{} "))
    );
    assert!(
        samples
            .iter()
            .any(|s| s.starts_with("backupd_active_connections{} "))
    );
    assert!(samples.iter().any(|s| {
        s.starts_with(r#"backupd_request_duration_seconds_bucket{le="+Inf",route="download"} 3"#)
    }));
    // No label carries an id or a secret (the system's name is a label of
    // the per-system series only: see the test below).
    for secret_thing in [ID, ID2, new_id.as_str(), secret.as_str()] {
        assert!(
            !text.contains(secret_thing),
            "{secret_thing} leaked into /metrics"
        );
    }

    // Not ready while the storage root is gone; ready again when it is back.
    let storage = server.storage();
    std::fs::rename(&storage, server.data().join("away")).unwrap();
    let start = Instant::now();
    while get(admin, "/readyz", None).await.status != StatusCode::SERVICE_UNAVAILABLE {
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "readyz did not notice within 2 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(get(admin, "/healthz", None).await.status, StatusCode::OK);
    std::fs::rename(server.data().join("away"), &storage).unwrap();
    let start = Instant::now();
    while get(admin, "/readyz", None).await.status != StatusCode::OK {
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "readyz did not recover within 2 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of one series in `/metrics`, if present.
#[tokio::test]
async fn per_system_series_name_registered_systems_only_and_can_be_switched_off() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(dir, &["--admin-listen", "127.0.0.1:0"]);
    let admin = admin_addr(&server);
    let secret = server.add_system("fw1");
    server.add_system("fw2");
    let auth = basic("fw1", &secret);
    server.put("fw1", ID, &[5u8; 1000]);
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let uploaded = upload(server.addr, Some(&auth), vec![1; 300], &[]).await;
    assert_eq!(uploaded.status, StatusCode::CREATED);
    let wrong = basic("fw2", "not-its-secret");
    let intruder = basic("intruder-7", "whatever");
    for auth in [&wrong, &wrong, &intruder] {
        assert_eq!(
            get(server.addr, &backup_path(ID), Some(auth)).await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    // fw2 was registered after start-up: the credentials change makes the
    // next scan, within a second or so, list it with nothing held.
    let start = Instant::now();
    while series(admin, r#"backupd_system_backups{system="fw2"}"#).await != Some(0.0) {
        assert!(start.elapsed() < Duration::from_secs(5), "{}", server.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let at = |name: &str, system: &str| format!("{name}{{system=\"{system}\"}}");
    assert_eq!(
        series(admin, &at("backupd_system_backups", "fw1")).await,
        Some(2.0)
    );
    assert_eq!(
        series(admin, &at("backupd_system_bytes", "fw1")).await,
        Some(1300.0)
    );
    assert_eq!(
        series(admin, &at("backupd_system_bytes", "fw2")).await,
        Some(0.0)
    );
    assert_eq!(
        series(admin, &at("backupd_system_uploads_total", "fw1")).await,
        Some(1.0)
    );
    assert_eq!(
        series(admin, &at("backupd_system_uploads_total", "fw2")).await,
        Some(0.0)
    );
    assert_eq!(
        series(admin, &at("backupd_system_auth_failures_total", "fw2")).await,
        Some(2.0)
    );
    assert_eq!(
        series(admin, &at("backupd_system_auth_failures_total", "fw1")).await,
        Some(0.0)
    );
    let newest = series(
        admin,
        &at("backupd_system_newest_backup_timestamp_seconds", "fw1"),
    )
    .await
    .unwrap();
    assert!(
        newest >= before.floor() && newest <= before + 10.0,
        "{newest} vs {before}"
    );
    assert_eq!(
        series(
            admin,
            &at("backupd_system_newest_backup_timestamp_seconds", "fw2")
        )
        .await,
        None,
        "a system holding nothing has no newest backup"
    );
    let free = series(admin, "backupd_storage_free_bytes").await.unwrap();
    let size = series(admin, "backupd_storage_size_bytes").await.unwrap();
    assert!(free > 0.0 && free <= size, "{free} of {size}");
    assert_eq!(
        series(
            admin,
            r#"backupd_auth_failures_total{reason="unknown_system"}"#
        )
        .await,
        Some(1.0)
    );
    let text = get(admin, "/metrics", None).await.text();
    assert!(
        !text.contains("intruder"),
        "a claimed name became a label:\n{text}"
    );
    assert!(!text.contains(&secret) && !text.contains(ID));
    parse_prometheus(&text);

    // A removed system's series go with it.
    assert_eq!(cli(server.data(), &["systems", "remove", "fw2"]).0, 0);
    let start = Instant::now();
    while series(admin, &at("backupd_system_backups", "fw2"))
        .await
        .is_some()
    {
        assert!(start.elapsed() < Duration::from_secs(5), "{}", server.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Files dropped in under names that are not ids are reported at
    // start-up; the switch drops every per-system series.
    let fw1 = server.storage().join("fw1");
    std::fs::write(fw1.join("notes.txt"), b"x").unwrap();
    std::fs::write(fw1.join("nightly-2026-12-01.tgz"), b"y").unwrap();
    let dir = server.stop();
    let server = Server::start_with(
        dir,
        &["--admin-listen", "127.0.0.1:0", "--no-per-system-metrics"],
    );
    let admin = admin_addr(&server);
    assert!(
        server.wait_for_log("not named by a backup id", Duration::from_secs(5)),
        "{}",
        server.log()
    );
    let warning = server
        .log()
        .lines()
        .find(|l| l.contains("not named by a backup id"))
        .unwrap()
        .to_owned();
    assert!(
        warning.contains("WARN") && warning.contains("files=2") && warning.contains("systems=1"),
        "{warning}"
    );
    let text = get(admin, "/metrics", None).await.text();
    assert!(
        !text.contains("backupd_system_") && !text.contains("fw1"),
        "{text}"
    );
    assert!(text.contains("backupd_storage_free_bytes "));
}

#[test]
fn the_admin_listener_is_never_the_public_port() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:18931",
            "--admin-listen",
            "127.0.0.1:18931",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("must differ"));
}

#[tokio::test]
async fn json_logs_carry_one_access_line_per_request_and_never_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(dir, &["--log-format", "json"]);
    let secret = server.add_system("fw1");
    server.put("fw1", ID, b"abc");
    assert_eq!(
        get(server.addr, &backup_path(ID), Some(&basic("fw1", &secret)))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        get(
            server.addr,
            &backup_path(ID),
            Some(&basic("fw1", "wrong-secret"))
        )
        .await
        .status,
        StatusCode::UNAUTHORIZED
    );
    let stored = upload(
        server.addr,
        Some(&basic("fw1", &secret)),
        b"uploaded".to_vec(),
        &[],
    )
    .await;
    assert_eq!(stored.status, StatusCode::CREATED);
    let stored_id = json(&stored)["data"]["id"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = server.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let access: Vec<&serde_json::Value> =
        lines.iter().filter(|l| l["message"] == "request").collect();
    assert_eq!(access.len(), 3, "{log}");
    let ok = access.iter().find(|l| l["status"] == 200).unwrap();
    // Plain JSON strings, so `jq 'select(.id == "...")'` finds them; the
    // upload's line carries the id it stored.
    assert_eq!(ok["id"], ID, "{ok}");
    let post = access.iter().find(|l| l["status"] == 201).unwrap();
    assert_eq!(post["id"], stored_id.as_str(), "{post}");
    assert_eq!(post["method"], "POST");
    for field in [
        "timestamp",
        "peer",
        "system",
        "method",
        "id",
        "status",
        "bytes",
        "duration_ms",
    ] {
        assert!(!ok[field].is_null(), "access line lacks {field}: {ok}");
    }
    assert_eq!(ok["system"], "fw1");
    assert_eq!(ok["bytes"], 3);
    let failure = lines
        .iter()
        .find(|l| l["message"] == "authentication failed")
        .expect("auth failure logged");
    assert!(failure["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    // The system the client claimed and why it failed, so a device still
    // on an old secret can be found.
    assert_eq!(failure["claimed"], "fw1", "{failure}");
    assert_eq!(failure["reason"], "wrong secret", "{failure}");
    assert!(!log.contains(&secret) && !log.contains("wrong-secret"));
    assert!(!log.to_ascii_lowercase().contains("authorization: basic"));
    // Every line says which process wrote it: requests are the worker's,
    // by its pid (not the supervisor's, the process the test started).
    let workers = server.workers();
    assert_eq!(workers.len(), 1, "{log}");
    for line in &lines {
        assert!(
            matches!(line["role"].as_str(), Some("worker" | "supervisor")),
            "{line}"
        );
        assert!(line["pid"].as_u64().is_some(), "{line}");
    }
    for line in &access {
        assert_eq!(line["role"], "worker", "{line}");
        assert_eq!(line["pid"].as_u64(), Some(u64::from(workers[0])), "{line}");
    }
    assert_ne!(server.child.id(), workers[0]);
}

#[tokio::test]
async fn the_self_sandbox_is_reported_and_everything_works_under_it() {
    let server = Server::start();
    assert!(
        server.wait_for_log("self-sandbox (Landlock):", Duration::from_secs(2)),
        "{}",
        server.log()
    );
    if server
        .log()
        .contains("self-sandbox (Landlock): fully enforced")
    {
        // No outgoing TCP at all from a worker that keeps its backups on
        // the filesystem; only the object store's port from one on S3.
        let expected = match &server.s3 {
            None => "TCP connects allowed: none".to_owned(),
            Some((target, _)) => {
                let port = target
                    .endpoint
                    .rsplit(':')
                    .next()
                    .unwrap()
                    .trim_end_matches('/');
                format!("TCP connects allowed: to port [{port}] only")
            }
        };
        assert!(server.log().contains(&expected), "{}", server.log());
        // The server runs in one worker under the supervisor, and
        // restrict_self also sets no_new_privs on the whole worker.
        let workers = server.workers();
        assert_eq!(workers.len(), 1, "{workers:?}");
        let status = std::fs::read_to_string(format!("/proc/{}/status", workers[0])).unwrap();
        assert!(
            status
                .lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["NoNewPrivs:", "1"]),
            "{status}"
        );
    }
    // Upload, list, download, delete and a credentials reload under it.
    let auth = basic("fw1", &server.add_system("fw1"));
    let reply = upload(
        server.addr,
        Some(&auth),
        b"sandboxed".to_vec(),
        &[("x-filename", "s.gpg")],
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    let id = json(&reply)["data"]["id"].as_str().unwrap().to_string();
    assert_eq!(
        &get(server.addr, &backup_path(&id), Some(&auth)).await.body[..],
        b"sandboxed"
    );
    assert_eq!(
        json(&get(server.addr, "/api/systems/backups", Some(&auth)).await)["data"]["backups"][0]["id"],
        id.as_str()
    );
    assert_eq!(
        request(
            server.addr,
            hyper::Method::DELETE,
            &backup_path(&id),
            Some(&auth)
        )
        .await
        .status,
        StatusCode::OK
    );
    assert!(!server.log().contains("storage error"), "{}", server.log());

    // --no-self-sandbox turns it off, and says so.
    // (and runs in one process, without a supervisor).
    let off = Server::start_with(tempfile::tempdir().unwrap(), &["--no-self-sandbox"]);
    assert!(off.log().contains("self-sandbox disabled"), "{}", off.log());
    assert_eq!(off.workers(), Vec::<u32>::new());
}

/// systemd 252's `@system-service` does not list the Landlock system calls,
/// so with `SystemCallErrorNumber=EPERM` they fail with EPERM: the server
/// must say that (a WARN naming the seccomp filter), not that the kernel
/// lacks Landlock, and keep serving.
#[tokio::test]
async fn a_seccomp_filter_refusing_landlock_is_a_warning_that_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = serve_command(Command::new(bin()), dir.path(), &[]);
    // landlock_create_ruleset, landlock_add_rule, landlock_restrict_self:
    // the same numbers on x86_64 and aarch64.
    deny_syscalls(&mut command, &[444, 445, 446]);
    let server = Server::launch(dir, command).unwrap_or_else(|log| panic!("{log}"));
    assert!(
        server.wait_for_log("self-sandbox (Landlock):", Duration::from_secs(5)),
        "{}",
        server.log()
    );
    let log = server.log();
    let line = log
        .lines()
        .find(|l| l.contains("self-sandbox (Landlock):"))
        .unwrap();
    assert!(line.contains("WARN"), "{line}");
    assert!(
        line.contains("not enforced") && line.contains("seccomp"),
        "{line}"
    );
    assert!(!line.contains("kernel without Landlock"), "{line}");
    let auth = basic("fw1", &server.add_system("fw1"));
    server.put("fw1", ID, b"unconfined but serving");
    let reply = get(server.addr, &backup_path(ID), Some(&auth)).await;
    assert_eq!(reply.status, StatusCode::OK);
}

/// `Type=notify`: the service tells systemd it is ready (READY=1, with its
/// own pid as MAINPID) once it serves, so no reload reaches it before.
#[tokio::test]
async fn readiness_is_reported_to_systemd() {
    let sockets = tempfile::tempdir().unwrap();
    let path = sockets.path().join("notify");
    let notify = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut command = serve_command(Command::new(bin()), dir.path(), &[]);
    command.env("NOTIFY_SOCKET", &path);
    let server = Server::launch(dir, command).unwrap_or_else(|log| panic!("{log}"));
    let mut buf = [0u8; 256];
    let n = notify.recv(&mut buf).expect("no READY=1 within 10 s");
    let message = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(message.lines().any(|l| l == "READY=1"), "{message}");
    assert!(
        message
            .lines()
            .any(|l| l == format!("MAINPID={}", server.child.id())),
        "{message}"
    );
    // Ready means serving.
    assert_eq!(
        get(server.addr, "/api/systems/backups", None).await.status,
        StatusCode::UNAUTHORIZED
    );
}
