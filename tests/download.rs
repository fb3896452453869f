//! The download contract: every status with its exact body and headers.

mod common;

use std::time::Duration;

use common::*;
use hyper::{Method, StatusCode};

fn assert_json_error(reply: &Reply, status: u16, body: &str) {
    assert_eq!(reply.status.as_u16(), status, "{}", reply.text());
    assert_eq!(reply.text(), body);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(
        reply.header("content-length"),
        Some(body.len().to_string().as_str())
    );
}

#[tokio::test]
async fn get_streams_the_exact_bytes_with_the_contract_headers() {
    let server = Server::start();
    let secret = server.add_system("fw1");
    let content: Vec<u8> = (0..3_000_017u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    server.put("fw1", ID, &content);

    let reply = get(server.addr, &backup_path(ID), Some(&basic("fw1", &secret))).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.body == content, "body differs");
    assert_eq!(
        reply.header("content-type"),
        Some("application/octet-stream")
    );
    assert_eq!(reply.header("content-length"), Some("3000017"));
    assert_eq!(reply.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(
        reply.header("content-disposition"),
        Some(format!("attachment; filename=\"{ID}\"; filename*=UTF-8''{ID}").as_str())
    );
    assert_eq!(reply.header("cache-control"), Some("no-store"));

    // HEAD: the same headers, no body.
    let head = request(
        server.addr,
        Method::HEAD,
        &backup_path(ID),
        Some(&basic("fw1", &secret)),
    )
    .await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());
    assert_eq!(head.stable_headers(), reply.stable_headers());

    // HTTP/2 with prior knowledge serves the same bytes.
    let h2 = get_h2(server.addr, &backup_path(ID), Some(&basic("fw1", &secret))).await;
    assert_eq!(h2.status, StatusCode::OK);
    assert!(h2.body == content);
    assert_eq!(h2.header("content-length"), Some("3000017"));

    // Every extension is served; an empty file is a 200 with no body.
    for (i, ext) in ["tar.gz", "tar.xz", "tar.bz2", "tar.zst", "gpg", "bin"]
        .iter()
        .enumerate()
    {
        let id = format!("01934fab-bc33-7890-a1b2-c3d4e5f6a7c{i}.{ext}");
        server.put("fw1", &id, &content[..i * 10]);
        let reply = get(server.addr, &backup_path(&id), Some(&basic("fw1", &secret))).await;
        assert_eq!(reply.status, StatusCode::OK, "{id}");
        assert_eq!(&reply.body[..], &content[..i * 10]);
    }
}

#[tokio::test]
async fn unauthorized_is_one_answer_for_every_reason() {
    let server = Server::start();
    let secret = server.add_system("fw1");
    server.add_system("fw2");
    server.put("fw1", ID, b"secret backup");
    let mut last_byte_off = secret.clone().into_bytes();
    *last_byte_off.last_mut().unwrap() ^= 1;
    let last_byte_off = String::from_utf8(last_byte_off).unwrap();

    let cases: Vec<Option<String>> = vec![
        None,
        Some("Basic".into()),
        Some("Basic ".into()),
        Some("Basic !!!notbase64".into()),
        Some("Bearer abc".into()),
        Some(basic("fw1", "wrong")),
        Some(basic("fw1", &last_byte_off)),
        Some(basic("fw1", "")),
        Some(basic("nobody", &secret)),
        Some(basic("fw2", &secret)),
        Some(basic("FW1", &secret)),
        Some(basic("..", &secret)),
        Some(basic("fw1/..", &secret)),
    ];
    let mut first: Option<Reply> = None;
    for auth in &cases {
        // Valid, invalid and unknown ids alike: authentication comes first.
        for id in [ID, ID2, "../../etc/passwd", "nonsense"] {
            let reply = get(server.addr, &backup_path(id), auth.as_deref()).await;
            assert_json_error(&reply, 401, UNAUTHORIZED_BODY);
            assert_eq!(
                reply.header("www-authenticate"),
                Some("Basic realm=\"backupd\"")
            );
            if let Some(first) = &first {
                assert_eq!(reply.stable_headers(), first.stable_headers(), "{auth:?}");
            } else {
                first = Some(reply);
            }
        }
    }
    // The scheme word is case-insensitive.
    let lower = basic("fw1", &secret).replacen("Basic", "bAsIc", 1);
    assert_eq!(
        get(server.addr, &backup_path(ID), Some(&lower))
            .await
            .status,
        StatusCode::OK
    );
    // The secret is never logged.
    assert!(!server.log().contains(&secret));
    assert!(!server.log().contains(&basic("fw1", &secret)));
    assert!(server.log().contains("authentication failed"));
}

#[tokio::test]
async fn absent_and_foreign_backups_are_the_same_404() {
    let server = Server::start();
    let a = server.add_system("alice");
    let b = server.add_system("bob");
    server.put("bob", ID, b"bob's backup");

    let foreign = get(server.addr, &backup_path(ID), Some(&basic("alice", &a))).await;
    let absent = get(server.addr, &backup_path(ID2), Some(&basic("alice", &a))).await;
    assert_json_error(&foreign, 404, NOT_FOUND_BODY);
    assert_json_error(&absent, 404, NOT_FOUND_BODY);
    assert_eq!(foreign.stable_headers(), absent.stable_headers());
    // Bob still gets his own.
    let own = get(server.addr, &backup_path(ID), Some(&basic("bob", &b))).await;
    assert_eq!(&own.body[..], b"bob's backup");

    // HEAD of an absent backup: the same status and headers, no body.
    let head = request(
        server.addr,
        Method::HEAD,
        &backup_path(ID),
        Some(&basic("alice", &a)),
    )
    .await;
    assert_eq!(head.status, StatusCode::NOT_FOUND);
    assert!(head.body.is_empty());
}

#[tokio::test]
async fn a_system_without_a_directory_gets_404() {
    let server = Server::start();
    let secret = server.add_system("fw1");
    std::fs::remove_dir(server.storage().join("fw1")).unwrap();
    let reply = get(server.addr, &backup_path(ID), Some(&basic("fw1", &secret))).await;
    assert_json_error(&reply, 404, NOT_FOUND_BODY);
}

#[tokio::test]
async fn unknown_paths_are_404_without_auth_and_other_methods_405() {
    let server = Server::start();
    let secret = server.add_system("fw1");
    for path in [
        "/",
        "/api",
        "/api/systems/backups.json",
        "/api/systems/backup/x",
        "/API/systems/backups/x",
        "//api/systems/backups/x",
        "/metrics",
    ] {
        for auth in [None, Some(basic("fw1", &secret))] {
            let reply = get(server.addr, path, auth.as_deref()).await;
            assert_json_error(&reply, 404, ROUTE_NOT_FOUND_BODY);
            assert!(reply.header("www-authenticate").is_none());
        }
    }
    // One backup answers GET, HEAD and DELETE; the collection GET, HEAD and POST.
    for method in [Method::POST, Method::PUT, Method::PATCH, Method::OPTIONS] {
        let reply = request(server.addr, method.clone(), &backup_path(ID), None).await;
        assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED, "{method}");
        assert_eq!(reply.header("allow"), Some("GET, HEAD, DELETE"));
        assert_eq!(reply.header("content-type"), Some("application/json"));
    }
    for method in [Method::PUT, Method::DELETE, Method::PATCH, Method::OPTIONS] {
        let reply = request(server.addr, method.clone(), "/api/systems/backups", None).await;
        assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED, "{method}");
        assert_eq!(reply.header("allow"), Some("GET, HEAD, POST"));
    }
}

#[tokio::test]
async fn every_other_spelling_of_an_id_is_400_and_echoed() {
    let server = Server::start();
    let secret = server.add_system("fw1");
    let auth = basic("fw1", &secret);
    let uuid = &ID[..36];
    server.put("fw1", ID, b"x");
    let upper = uuid.to_uppercase();
    let simple = uuid.replace('-', "");
    let long = "a".repeat(300);
    let cases: Vec<String> = vec![
        format!("{upper}.tar.gz"),
        format!("%7B{uuid}%7D.tar.gz"),
        format!("urn:uuid:{uuid}.tar.gz"),
        format!("{simple}.tar.gz"),
        "0f8fad5b-d9cb-469f-a165-70867728950e.tar.gz".into(),
        "c232ab00-9414-11ec-b3c8-9f6bdeced846.tar.gz".into(),
        uuid.to_string(),
        format!("{uuid}.zip"),
        format!("{uuid}.TAR.GZ"),
        format!("{uuid}.tar.gz%20"),
        format!("{uuid}.tar.gz%00"),
        format!("{uuid}%00.tar.gz"),
        format!("{uuid}.tar.gz/"),
        format!("../{ID}"),
        format!("..%2f{ID}"),
        format!("%2e%2e%2f{ID}"),
        format!("fw1%2f{ID}"),
        format!("fw1/{ID}"),
        format!("..%5c{ID}"),
        format!("{uuid}%2etar.gz"),
        format!("{uuid}.tar.gz%2f.."),
        "..".into(),
        ".".into(),
        "".into(),
        long.clone(),
    ];
    for id in &cases {
        let reply = get(server.addr, &backup_path(id), Some(&auth)).await;
        let echoed: String = id.chars().take(128).collect();
        assert_json_error(&reply, 400, &invalid_id_body(&echoed));
    }
    // The documented body, byte for byte.
    let reply = get(server.addr, &backup_path("nope"), Some(&auth)).await;
    assert_eq!(
        reply.text(),
        r#"{"code":400,"message":"validation failed","data":{"type":"validation_error","errors":[{"key":"id","message":"invalid backup id","value":"nope"}]}}"#
    );
}

#[tokio::test]
async fn only_regular_files_directly_in_the_systems_directory_are_served() {
    if fs_only("symlinks, FIFOs and directories planted in the storage root") {
        return;
    }
    let server = Server::start();
    let alice = server.add_system("alice");
    server.add_system("bob");
    let bob_file = server.put("bob", ID, b"bob's secret backup");
    let own = server.put("alice", ID2, b"alice's own");
    let alice_dir = server.storage().join("alice");
    let auth = basic("alice", &alice);

    let planted = [
        (
            "01934fab-bc33-7890-a1b2-c3d4e5f6a701.tar.gz",
            bob_file.clone(),
        ),
        (
            "01934fab-bc33-7890-a1b2-c3d4e5f6a702.tar.gz",
            "/etc/passwd".into(),
        ),
        ("01934fab-bc33-7890-a1b2-c3d4e5f6a703.tar.gz", own.clone()),
        ("01934fab-bc33-7890-a1b2-c3d4e5f6a704.tar.gz", ID2.into()),
        (
            "01934fab-bc33-7890-a1b2-c3d4e5f6a705.tar.gz",
            ("../bob/".to_string() + ID).into(),
        ),
        (
            "01934fab-bc33-7890-a1b2-c3d4e5f6a706.tar.gz",
            "01934fab-bc33-7890-a1b2-c3d4e5f6a701.tar.gz".into(),
        ),
        (
            "01934fab-bc33-7890-a1b2-c3d4e5f6a707.tar.gz",
            server.storage().join("bob"),
        ),
    ];
    for (name, target) in &planted {
        std::os::unix::fs::symlink(target, alice_dir.join(name)).unwrap();
    }
    std::fs::create_dir(alice_dir.join("01934fab-bc33-7890-a1b2-c3d4e5f6a708.tar.gz")).unwrap();
    let fifo = alice_dir.join("01934fab-bc33-7890-a1b2-c3d4e5f6a709.tar.gz");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let socket = alice_dir.join("01934fab-bc33-7890-a1b2-c3d4e5f6a70a.tar.gz");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();

    let names: Vec<String> = planted
        .iter()
        .map(|(n, _)| n.to_string())
        .chain([
            "01934fab-bc33-7890-a1b2-c3d4e5f6a708.tar.gz".into(),
            "01934fab-bc33-7890-a1b2-c3d4e5f6a709.tar.gz".into(),
            "01934fab-bc33-7890-a1b2-c3d4e5f6a70a.tar.gz".into(),
        ])
        .collect();
    for name in &names {
        // The FIFO must not hang the request: `within` fails the test if it does.
        let reply = within(
            Duration::from_secs(5),
            get(server.addr, &backup_path(name), Some(&auth)),
        )
        .await;
        assert_json_error(&reply, 404, NOT_FOUND_BODY);
    }
    // A system directory that is a symlink (to another system's) is refused too.
    let eve = server.add_system("eve");
    std::fs::remove_dir(server.storage().join("eve")).unwrap();
    std::os::unix::fs::symlink(server.storage().join("bob"), server.storage().join("eve")).unwrap();
    let reply = get(server.addr, &backup_path(ID), Some(&basic("eve", &eve))).await;
    assert_json_error(&reply, 404, NOT_FOUND_BODY);
    // The server keeps serving real files after all that.
    let reply = get(server.addr, &backup_path(ID2), Some(&auth)).await;
    assert_eq!(&reply.body[..], b"alice's own");
}

#[tokio::test]
async fn storage_root_missing_is_503_until_it_appears() {
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("mnt");
    let server = Server::start_with(dir, &["--storage", storage.to_str().unwrap()]);
    // `systems add` refuses to create an explicit storage root...
    let (code, _, err) = cli(
        server.data(),
        &[
            "systems",
            "add",
            "fw1",
            "--storage",
            storage.to_str().unwrap(),
        ],
    );
    assert_ne!(code, 0);
    assert!(err.contains("storage root"), "{err}");
    // ...so the operator creates it (or mounts it). An empty directory is
    // not a storage root until backupd has marked it (a lost mount reveals
    // one just like it): still 503.
    std::fs::create_dir(&storage).unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!server.log().contains("storage root is available"));
    // `systems add` naming it marks it; the server takes it within 2 s.
    let (code, secret, err) = cli(
        server.data(),
        &[
            "systems",
            "add",
            "fw1",
            "--storage",
            storage.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(storage.join(".backupd-root").is_file());
    // Under Landlock the root's appearance brings a new worker sandboxed to
    // it, which reads the credentials at its start.
    if server
        .log()
        .contains("self-sandbox (Landlock): fully enforced")
    {
        assert!(
            server.wait_for_log("new worker serves", Duration::from_secs(2)),
            "{}",
            server.log()
        );
    }
    let auth = basic("fw1", secret.trim());
    assert!(server.wait_for_log("storage root is available", Duration::from_secs(2)));
    let outages = server.count_log("storage root is unavailable");
    std::fs::rename(&storage, server.data().join("elsewhere")).unwrap();
    let start = std::time::Instant::now();
    while server.count_log("storage root is unavailable") == outages {
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "removal not noticed within 2 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let reply = get(server.addr, &backup_path(ID), Some(&auth)).await;
    assert_json_error(&reply, 503, UNAVAILABLE_BODY);
    assert!(reply.header("retry-after").unwrap().parse::<u32>().unwrap() > 0);
    // Authentication still comes first.
    let reply = get(server.addr, &backup_path(ID), None).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    // Not a directory: still 503.
    std::fs::write(&storage, b"not a directory").unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        get(server.addr, &backup_path(ID), Some(&auth)).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    std::fs::remove_file(&storage).unwrap();

    // The root comes back: served within 2 s, without a restart.
    let elsewhere = server.data().join("elsewhere");
    std::fs::write(elsewhere.join("fw1").join(ID), b"on the mount").unwrap();
    std::fs::rename(&elsewhere, &storage).unwrap();
    let start = std::time::Instant::now();
    loop {
        let reply = get(server.addr, &backup_path(ID), Some(&auth)).await;
        if reply.status == StatusCode::OK {
            assert_eq!(&reply.body[..], b"on the mount");
            break;
        }
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "not recovered within 2 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Replaced while running by a directory without the marker (a mount
    // lost, revealing what is beneath): never adopted, 503 and an ERROR.
    std::fs::rename(&storage, server.data().join("old-mount")).unwrap();
    std::fs::create_dir_all(storage.join("fw1")).unwrap();
    std::fs::write(storage.join("fw1").join(ID), b"new mount").unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let reply = get(server.addr, &backup_path(ID), Some(&auth)).await;
    assert_json_error(&reply, 503, UNAVAILABLE_BODY);
    assert!(
        server.log().contains("no .backupd-root here"),
        "{}",
        server.log()
    );
    // With the marker (a restored or remounted root carries it): used
    // within 2 s.
    std::fs::copy(
        server.data().join("old-mount/.backupd-root"),
        storage.join(".backupd-root"),
    )
    .unwrap();
    let start = std::time::Instant::now();
    loop {
        let reply = get(server.addr, &backup_path(ID), Some(&auth)).await;
        if reply.status == StatusCode::OK && &reply.body[..] == b"new mount" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "replacement not noticed within 2 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_backup_larger_than_4_gib_streams_whole() {
    if fs_only("a sparse 4 GiB file") {
        return;
    }
    let server = Server::start();
    let secret = server.add_system("fw1");
    let path = server.storage().join("fw1").join(ID);
    let len: u64 = (4 << 30) + 4099;
    let markers: [(u64, &[u8]); 4] = [
        (0, b"START"),
        ((4 << 30) - 2, b"EDGE"),
        (len - 9, b"THE-END"),
        (1 << 31, b"MIDDLE"),
    ];
    {
        use std::os::unix::fs::FileExt;
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(len).unwrap();
        for (offset, bytes) in markers {
            file.write_at(bytes, offset).unwrap();
        }
    }
    use http_body_util::BodyExt;
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
    assert_eq!(res.headers()["content-length"], len.to_string().as_str());
    let mut body = res.into_body();
    let mut seen: u64 = 0;
    // Bytes of each marker checked so far: a marker may span two frames.
    let mut matched = [0usize; 4];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
    while let Some(frame) = tokio::time::timeout_at(deadline, body.frame())
        .await
        .expect("download too slow")
    {
        let data = frame.unwrap().into_data().unwrap();
        let end = seen + data.len() as u64;
        for (i, (offset, bytes)) in markers.iter().enumerate() {
            let from = (*offset).max(seen);
            let to = (offset + bytes.len() as u64).min(end);
            if from < to {
                let got = &data[(from - seen) as usize..(to - seen) as usize];
                let want = &bytes[(from - offset) as usize..(to - offset) as usize];
                assert_eq!(got, want, "marker at {offset}");
                matched[i] += got.len();
            }
        }
        seen = end;
    }
    assert_eq!(seen, len);
    let complete: Vec<bool> = markers
        .iter()
        .zip(matched)
        .map(|((_, b), m)| m == b.len())
        .collect();
    assert!(
        complete.iter().all(|c| *c),
        "markers seen whole: {complete:?}"
    );
}

#[tokio::test]
async fn a_file_truncated_while_streaming_aborts_the_transfer() {
    if fs_only("truncating the file under a download") {
        return;
    }
    use http_body_util::BodyExt;
    let server = Server::start();
    let secret = server.add_system("fw1");
    let path = server.put("fw1", ID, &vec![7u8; 64 << 20]);
    let auth = basic("fw1", &secret);
    let res = open(
        server.addr,
        false,
        Method::GET,
        &backup_path(ID),
        Some(&auth),
    )
    .await;
    assert_eq!(
        res.headers()["content-length"],
        (64u64 << 20).to_string().as_str()
    );
    let mut body = res.into_body();
    // Read a little, then cut the file short underneath the download.
    let first = within(STEP, body.frame())
        .await
        .unwrap()
        .unwrap()
        .into_data()
        .unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let mut seen = first.len() as u64;
    let mut failed = false;
    loop {
        match within(STEP, body.frame()).await {
            Some(Ok(frame)) => seen += frame.into_data().map(|d| d.len() as u64).unwrap_or(0),
            Some(Err(_)) => {
                failed = true;
                break;
            }
            None => break,
        }
    }
    assert!(failed, "a short body ended cleanly after {seen} bytes");
    assert!(seen < 64 << 20);
    // The server keeps serving.
    std::fs::write(&path, b"fine again").unwrap();
    let reply = get(server.addr, &backup_path(ID), Some(&basic("fw1", &secret))).await;
    assert_eq!(&reply.body[..], b"fine again");
    assert!(server.wait_for_log("complete=false", Duration::from_secs(2)));
}

/// One system cannot hold every connection and buffer: past
/// `--max-downloads-per-system` its downloads get 429 with Retry-After,
/// while other systems are served; a finished download frees its slot.
#[tokio::test]
async fn one_system_gets_429_past_its_concurrent_downloads() {
    let server = Server::start_with(
        tempfile::tempdir().unwrap(),
        &["--max-downloads-per-system", "2"],
    );
    let fw1 = basic("fw1", &server.add_system("fw1"));
    let fw2 = basic("fw2", &server.add_system("fw2"));
    let big = vec![1u8; 32 << 20];
    server.put("fw1", ID, &big);
    server.put("fw2", ID, b"other tenant");
    // Two downloads in flight, not read.
    let first = open(
        server.addr,
        false,
        hyper::Method::GET,
        &backup_path(ID),
        Some(&fw1),
    )
    .await;
    let second = open(
        server.addr,
        true,
        hyper::Method::GET,
        &backup_path(ID),
        Some(&fw1),
    )
    .await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(second.status(), StatusCode::OK);
    let third = get(server.addr, &backup_path(ID), Some(&fw1)).await;
    assert_eq!(third.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(third.header("retry-after"), Some("5"));
    assert_eq!(
        third.text(),
        r#"{"code":429,"message":"too many concurrent downloads","data":{"retry_after_seconds":5}}"#
    );
    // Another tenant is not affected.
    let other = get(server.addr, &backup_path(ID), Some(&fw2)).await;
    assert_eq!(&other.body[..], b"other tenant");
    // A download that ends frees its slot.
    drop(first);
    let start = std::time::Instant::now();
    loop {
        let res = open(
            server.addr,
            false,
            hyper::Method::HEAD,
            &backup_path(ID),
            Some(&fw1),
        )
        .await;
        if res.status() == StatusCode::OK {
            break;
        }
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(start.elapsed() < Duration::from_secs(5), "slot never freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(second);
}
