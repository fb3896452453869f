//! The object store failing under a running server: stopped between
//! requests, mid-download and mid-upload, and slow. A TCP proxy in front
//! of the store (SeaweedFS, from `.ci/s3.sh`, run with `--ignored`) is the
//! switch: "stopped" refuses new connections and cuts the open ones;
//! "paused" holds every byte, on new connections and open ones alike.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use hyper::StatusCode;
use tokio::net::{TcpListener, TcpStream};

/// A switchable TCP proxy to the store.
struct Switch {
    addr: std::net::SocketAddr,
    up: Arc<AtomicBool>,
    paused: Arc<AtomicBool>,
    connections: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Switch {
    async fn to(upstream: String) -> Switch {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let paused = Arc::new(AtomicBool::new(false));
        let connections: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (flag, open, hold) = (up.clone(), connections.clone(), paused.clone());
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                if !flag.load(Ordering::SeqCst) {
                    drop(client); // refused: the store is "stopped"
                    continue;
                }
                let (upstream, hold) = (upstream.clone(), hold.clone());
                let task = tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(&upstream).await {
                        let (client_in, client_out) = client.into_split();
                        let (server_in, server_out) = server.into_split();
                        tokio::join!(
                            pipe(client_in, server_out, hold.clone()),
                            pipe(server_in, client_out, hold),
                        );
                    }
                });
                open.lock().unwrap().push(task.abort_handle());
            }
        });
        Switch {
            addr,
            up,
            paused,
            connections,
        }
    }

    /// Holds every byte from now on (a store that has stopped answering
    /// but keeps its connections open).
    fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
    }

    fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
    }

    fn stop(&self) {
        self.up.store(false, Ordering::SeqCst);
        for c in self.connections.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    fn start(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// Copies `from` to `to`, holding each piece while `paused`.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    paused: Arc<AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        while paused.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// A server whose store is behind a switch.
async fn behind_a_switch(extra: &[&str]) -> (Server, Switch) {
    behind_a_switch_that(true, extra).await
}

/// A server whose store is behind a switch, `up` or stopped when it
/// starts.
async fn behind_a_switch_that(up: bool, extra: &[&str]) -> (Server, Switch) {
    let target = s3_target().expect("run with BACKUPD_TEST_BACKEND=s3");
    let upstream = target.endpoint.trim_start_matches("http://").to_owned();
    let switch = Switch::to(upstream).await;
    if !up {
        switch.stop();
    }
    let prefix = format!("t-{}", uuid::Uuid::now_v7().simple());
    let dir = tempfile::tempdir().unwrap();
    let location = format!("s3://{}/{prefix}", target.bucket);
    let endpoint = format!("http://{}", switch.addr);
    let mut args = vec![
        "--storage",
        &location,
        "--s3-endpoint",
        &endpoint,
        "--s3-region",
        &target.region,
    ];
    args.extend_from_slice(extra);
    let mut command = serve_command(std::process::Command::new(bin()), dir.path(), &args);
    command
        .env("AWS_ACCESS_KEY_ID", &target.access_key)
        .env("AWS_SECRET_ACCESS_KEY", &target.secret_key);
    let mut server = Server::launch(dir, command).unwrap_or_else(|log| panic!("{log}"));
    server.s3 = Some((target, prefix));
    (server, switch)
}

#[tokio::test]
#[ignore = "needs an S3 server: .ci/s3.sh"]
async fn a_stopped_store_is_503_and_the_server_recovers_by_itself() {
    let (server, switch) = behind_a_switch(&["--admin-listen", "127.0.0.1:0"]).await;
    let admin = admin_addr(&server);
    let auth = basic("fw1", &server.add_system("fw1"));
    let stored = upload(server.addr, Some(&auth), b"before".to_vec(), &[]).await;
    assert_eq!(stored.status, StatusCode::CREATED, "{}", stored.text());
    let id = json(&stored)["data"]["id"].as_str().unwrap().to_owned();

    switch.stop();
    for reply in [
        get(server.addr, &backup_path(&id), Some(&auth)).await,
        get(server.addr, "/api/systems/backups", Some(&auth)).await,
        upload(server.addr, Some(&auth), b"during".to_vec(), &[]).await,
    ] {
        assert_eq!(
            reply.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            reply.text()
        );
        assert!(reply.header("retry-after").is_some());
        assert_eq!(reply.text(), UNAVAILABLE_BODY);
    }
    wait_for_readyz(
        admin,
        StatusCode::SERVICE_UNAVAILABLE,
        Duration::from_secs(3),
    )
    .await;
    assert!(server.log().contains("ERROR"), "{}", server.log());

    switch.start();
    let start = Instant::now();
    loop {
        let reply = get(server.addr, &backup_path(&id), Some(&auth)).await;
        if reply.status == StatusCode::OK {
            assert_eq!(&reply.body[..], b"before");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "not back within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_for_readyz(admin, StatusCode::OK, Duration::from_secs(5)).await;
    // The upload refused during the outage left nothing.
    assert_eq!(server.stored_backups("fw1"), vec![id]);
    assert_eq!(server.uploads_in_progress("fw1"), Vec::<String>::new());
}

/// Waits (100 ms apart, no store request of its own) until `/readyz`
/// answers `status`, failing after `limit`.
async fn wait_for_readyz(admin: std::net::SocketAddr, status: StatusCode, limit: Duration) {
    let start = Instant::now();
    while get(admin, "/readyz", None).await.status != status {
        assert!(
            start.elapsed() < limit,
            "readyz not {status} after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The readiness probe costs a LIST-priced request: an idle replica sends
/// one every few seconds, a busy one none, and one whose store is down
/// asks twice a second, so it is ready again soon after the store is.
#[tokio::test]
#[ignore = "needs an S3 server: .ci/s3.sh"]
async fn the_readiness_probe_asks_only_an_idle_or_lost_store() {
    let (server, switch) = behind_a_switch(&["--admin-listen", "127.0.0.1:0"]).await;
    let admin = admin_addr(&server);
    let auth = basic("fw1", &server.add_system("fw1"));
    let stored = upload(server.addr, Some(&auth), b"kept".to_vec(), &[]).await;
    assert_eq!(stored.status, StatusCode::CREATED, "{}", stored.text());
    let id = json(&stored)["data"]["id"].as_str().unwrap().to_owned();
    let lists = || async {
        series(
            admin,
            "backupd_store_requests_total{operation=\"ListObjectsV2\"}",
        )
        .await
        .unwrap_or(0.0)
    };

    // Idle: 12 probes in 6 s at the old 500 ms, now one or two.
    let before = lists().await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let idle = lists().await - before;
    assert!((1.0..=2.0).contains(&idle), "{idle} probes in 6 s idle");

    // Busy: a download every 200 ms answers for the store; no probe.
    let before = lists().await;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(6) {
        let reply = get(server.addr, &backup_path(&id), Some(&auth)).await;
        assert_eq!(reply.status, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(lists().await - before, 0.0, "probes while busy");

    // Lost while idle: noticed by the probe within its interval, with the
    // cause logged; back by itself within a second or two of the store.
    switch.stop();
    wait_for_readyz(
        admin,
        StatusCode::SERVICE_UNAVAILABLE,
        Duration::from_secs(8),
    )
    .await;
    let log = server.log();
    let line = log
        .lines()
        .find(|l| l.contains("object store is unavailable"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains("error="), "{line}");
    switch.start();
    wait_for_readyz(admin, StatusCode::OK, Duration::from_secs(2)).await;
    assert!(server.log().contains("object store is available"));
}

/// A store down when the server starts is noticed by the first probe,
/// not after an idle interval (without the per-system scan, which asks
/// the store at start-up too).
#[tokio::test]
#[ignore = "needs an S3 server: .ci/s3.sh"]
async fn a_store_down_at_start_up_is_not_ready() {
    let (server, switch) = behind_a_switch_that(
        false,
        &["--admin-listen", "127.0.0.1:0", "--no-per-system-metrics"],
    )
    .await;
    let admin = admin_addr(&server);
    wait_for_readyz(
        admin,
        StatusCode::SERVICE_UNAVAILABLE,
        Duration::from_secs(2),
    )
    .await;
    switch.start();
    wait_for_readyz(admin, StatusCode::OK, Duration::from_secs(2)).await;
}

#[tokio::test]
#[ignore = "needs an S3 server: .ci/s3.sh"]
async fn a_store_stopped_mid_download_aborts_the_transfer() {
    let (server, switch) = behind_a_switch(&[]).await;
    let auth = basic("fw1", &server.add_system("fw1"));
    download_cut_short(&server, &auth, || switch.stop()).await;
}

/// Uploads 40 MB, reads 1 MiB of it back, calls `cut`, and checks the
/// transfer then ends aborted (never a clean short body) and is logged so.
async fn download_cut_short(server: &Server, auth: &str, cut: impl FnOnce()) {
    use http_body_util::BodyExt;
    let content: Vec<u8> = (0..40_000_000u32).map(|i| (i % 251) as u8).collect();
    let stored = upload(server.addr, Some(auth), content.clone(), &[]).await;
    assert_eq!(
        stored.status,
        StatusCode::CREATED,
        "{}\n{}",
        stored.text(),
        server.log()
    );
    let id = json(&stored)["data"]["id"].as_str().unwrap().to_owned();
    let res = open(
        server.addr,
        false,
        hyper::Method::GET,
        &backup_path(&id),
        Some(auth),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let mut body = res.into_body();
    let mut got = 0usize;
    // Read a little, then cut the store.
    while got < 1 << 20 {
        let frame = within(STEP, body.frame()).await.unwrap().unwrap();
        got += frame.into_data().map_or(0, |d| d.len());
    }
    cut();
    let mut failed = false;
    while let Some(frame) = within(STEP, body.frame()).await {
        match frame {
            Ok(frame) => got += frame.into_data().map_or(0, |d| d.len()),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    assert!(
        failed || got == content.len(),
        "a clean short body: {got} of {}",
        content.len()
    );
    assert!(
        got < content.len(),
        "the whole body arrived through a stopped store"
    );
    assert!(
        server.wait_for_log("complete=false", Duration::from_secs(5)),
        "{}",
        server.log()
    );
}

#[tokio::test]
#[ignore = "needs an S3 server: .ci/s3.sh"]
async fn a_store_stopped_mid_upload_leaves_nothing() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (server, switch) = behind_a_switch(&[]).await;
    let auth = basic("fw1", &server.add_system("fw1"));
    let mut stream = within(STEP, TcpStream::connect(server.addr)).await.unwrap();
    let head = format!(
        "POST /api/systems/backups HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nContent-Length: 8000000\r\nConnection: close\r\n\r\n"
    );
    within(STEP, stream.write_all(head.as_bytes()))
        .await
        .unwrap();
    within(STEP, stream.write_all(&[7u8; 3_000_000]))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    switch.stop();
    // The rest of the body; the server answers 503 (or closes) either way.
    let _ = within(STEP, stream.write_all(&[7u8; 5_000_000])).await;
    let mut out = Vec::new();
    let _ = within(STEP, stream.read_to_end(&mut out)).await;
    let status = raw_status(&out);
    assert!(
        status.is_none_or(|s| s == 503),
        "{}",
        String::from_utf8_lossy(&out)
    );
    switch.start();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(server.stored_everything("fw1"), Vec::<String>::new());
    let list = get(server.addr, "/api/systems/backups", Some(&auth)).await;
    assert_eq!(json(&list)["data"]["backups"], serde_json::json!([]));
}

/// A store that stops answering but keeps its connections open: with
/// `--s3-timeout 2`, every request gets its 503 within the timeout, an
/// upload leaves nothing, a download in progress is aborted, and the
/// server is back by itself once the store answers again.
#[tokio::test]
#[ignore = "needs an S3 server: .ci/s3.sh"]
async fn a_slow_store_times_out_and_never_hangs_a_connection() {
    let (server, switch) = behind_a_switch(&["--s3-timeout", "2"]).await;
    let auth = basic("fw1", &server.add_system("fw1"));
    let stored = upload(server.addr, Some(&auth), b"before".to_vec(), &[]).await;
    assert_eq!(stored.status, StatusCode::CREATED, "{}", stored.text());
    let id = json(&stored)["data"]["id"].as_str().unwrap().to_owned();

    switch.pause();
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 249) as u8).collect();
    type Asked<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Reply> + 'a>>;
    let path = backup_path(&id);
    let asks: [(&str, Asked); 3] = [
        ("download", Box::pin(get(server.addr, &path, Some(&auth)))),
        (
            "list",
            Box::pin(get(server.addr, "/api/systems/backups", Some(&auth))),
        ),
        (
            "upload",
            Box::pin(upload(server.addr, Some(&auth), big, &[])),
        ),
    ];
    for (what, reply) in asks {
        let start = Instant::now();
        let reply = within(Duration::from_secs(10), reply).await;
        assert_eq!(
            reply.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{what}: {}",
            reply.text()
        );
        assert!(reply.header("retry-after").is_some(), "{what}");
        assert!(
            start.elapsed() < Duration::from_secs(6),
            "{what}: 503 only after {:?}",
            start.elapsed()
        );
    }
    switch.resume();
    let start = Instant::now();
    while get(server.addr, &backup_path(&id), Some(&auth))
        .await
        .status
        != StatusCode::OK
    {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "not back within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The upload that timed out left nothing.
    let start = Instant::now();
    while server.stored_backups("fw1") != vec![id.clone()]
        || !server.uploads_in_progress("fw1").is_empty()
    {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "left behind: {:?}",
            server.stored_everything("fw1")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A store that stalls mid-download: the transfer is aborted within
    // the timeout, not held open.
    download_cut_short(&server, &auth, || switch.pause()).await;
    switch.resume();
}
