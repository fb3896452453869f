//! Stateless replicas: two `backupd serve` over one bucket and one
//! credentials file. They need an object store (`.ci/s3.sh` runs them with
//! `--ignored`, BACKUPD_TEST_BACKEND=s3).

mod common;

use std::process::Command;

use common::*;
use hyper::{Method, StatusCode};

/// A second server over the same prefix of the same bucket and the same
/// credentials file as `first`, with a data directory of its own.
fn replica_of(first: &Server, extra: &[&str]) -> Server {
    let (target, prefix) = first.s3.clone().expect("an S3 server");
    let dir = tempfile::tempdir().unwrap();
    let location = format!("s3://{}/{prefix}", target.bucket);
    let credentials = first.data().join("credentials");
    let mut command = serve_command(Command::new(bin()), dir.path(), extra);
    command
        .args(["--storage", &location, "--s3-endpoint", &target.endpoint])
        .args(["--s3-region", &target.region])
        .arg("--credentials")
        .arg(&credentials)
        .env("AWS_ACCESS_KEY_ID", &target.access_key)
        .env("AWS_SECRET_ACCESS_KEY", &target.secret_key);
    let mut server = Server::launch(dir, command).unwrap_or_else(|log| panic!("{log}"));
    server.s3 = Some((target, prefix));
    server
}

/// Registers `name` through `a`'s credentials file, and waits until `b`
/// (polling the same file) has reloaded it too: a request to `b` sooner
/// would race its poll and get 401.
fn add_system_to_both(a: &Server, b: &Server, name: &str) -> String {
    let reloads = b.count_log("credentials reloaded");
    let secret = a.add_system(name);
    b.wait_for_reload(reloads);
    secret
}

fn ids(reply: &Reply) -> Vec<String> {
    json(reply)["data"]["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
#[ignore = "needs an S3 server: .ci/s3.sh"]
async fn an_upload_through_one_replica_is_served_by_another_at_once() {
    let a = Server::start_with(tempfile::tempdir().unwrap(), &["--retention-count", "0"]);
    assert!(a.s3.is_some(), "run with BACKUPD_TEST_BACKEND=s3");
    let b = replica_of(&a, &["--retention-count", "0"]);
    let auth = basic("fw1", &add_system_to_both(&a, &b, "fw1"));
    let content: Vec<u8> = (0..1_500_000u32).map(|i| (i % 253) as u8).collect();
    let stored = upload(
        a.addr,
        Some(&auth),
        content.clone(),
        &[("x-filename", "n.tar.gz")],
    )
    .await;
    assert_eq!(stored.status, StatusCode::CREATED, "{}", stored.text());
    let id = json(&stored)["data"]["id"].as_str().unwrap().to_owned();
    // Listed and served by the other replica at once, record included.
    let list = get(b.addr, "/api/systems/backups", Some(&auth)).await;
    assert_eq!(ids(&list), vec![id.clone()]);
    assert_eq!(json(&list)["data"]["backups"][0], json(&stored)["data"]);
    let got = get(b.addr, &backup_path(&id), Some(&auth)).await;
    assert!(
        got.body == content,
        "the other replica served different bytes"
    );
    assert!(got.header("repr-digest").is_some());
    // Deleted through the other: gone for the first at once.
    let deleted = request(b.addr, Method::DELETE, &backup_path(&id), Some(&auth)).await;
    assert_eq!(deleted.status, StatusCode::OK);
    assert_eq!(
        get(a.addr, &backup_path(&id), Some(&auth)).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        ids(&get(a.addr, "/api/systems/backups", Some(&auth)).await),
        Vec::<String>::new()
    );
}

/// Retention under concurrent uploads of one system through two replicas:
/// never fewer than the count, never the newest removed, and at most the
/// count after the next upload.
#[tokio::test]
#[ignore = "needs an S3 server: .ci/s3.sh"]
async fn retention_converges_across_replicas() {
    let flags = [
        "--retention-count",
        "2",
        "--upload-rate-per-minute",
        "0",
        "--upload-rate-per-hour",
        "0",
    ];
    let a = Server::start_with(tempfile::tempdir().unwrap(), &flags);
    assert!(a.s3.is_some(), "run with BACKUPD_TEST_BACKEND=s3");
    let b = replica_of(&a, &flags);
    let auth = basic("fw1", &add_system_to_both(&a, &b, "fw1"));
    let mut tasks = Vec::new();
    for i in 0..8u8 {
        let (addr, auth) = (if i % 2 == 0 { a.addr } else { b.addr }, auth.clone());
        tasks.push(tokio::spawn(async move {
            let reply = upload(addr, Some(&auth), vec![i; 5000], &[]).await;
            assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
            json(&reply)["data"]["id"].as_str().unwrap().to_owned()
        }));
    }
    let mut stored = Vec::new();
    for task in tasks {
        stored.push(task.await.unwrap());
    }
    stored.sort();
    let newest = stored.last().unwrap().clone();
    let left = a.stored_backups("fw1");
    assert!(left.len() >= 2, "fewer than the count: {left:?}");
    assert!(left.contains(&newest), "the newest was removed: {left:?}");
    // The next upload brings it to the count.
    let next = upload(b.addr, Some(&auth), vec![9; 10], &[]).await;
    let next = json(&next)["data"]["id"].as_str().unwrap().to_owned();
    let left = a.stored_backups("fw1");
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left.contains(&next), "{left:?}");
}

/// `systems add` of a name whose keys still hold an earlier system's
/// backups is refused without `--adopt`, as with a directory on disk: the
/// new secret would otherwise be handed them silently.
#[tokio::test]
#[ignore = "needs an S3 server: .ci/s3.sh"]
async fn re_adding_a_name_whose_objects_remain_needs_adopt() {
    let server = Server::start();
    let (target, prefix) = server.s3.clone().expect("run with BACKUPD_TEST_BACKEND=s3");
    let auth = basic("fw1", &server.add_system("fw1"));
    let stored = upload(server.addr, Some(&auth), b"old".to_vec(), &[]).await;
    assert_eq!(stored.status, StatusCode::CREATED, "{}", stored.text());
    let (code, _, err) = cli(server.data(), &["systems", "remove", "fw1"]);
    assert_eq!(code, 0, "{err}");
    let location = format!("s3://{}/{prefix}", target.bucket);
    let add = |name: &str, adopt: bool| {
        let mut command = Command::new(bin());
        command
            .args(["systems", "add", name, "--storage", &location])
            .args([
                "--s3-endpoint",
                &target.endpoint,
                "--s3-region",
                &target.region,
            ])
            .arg("--credentials")
            .arg(server.data().join("credentials"))
            .env("AWS_ACCESS_KEY_ID", &target.access_key)
            .env("AWS_SECRET_ACCESS_KEY", &target.secret_key);
        if adopt {
            command.arg("--adopt");
        }
        let out = command.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, secret, err) = add("fw1", false);
    assert_ne!(code, Some(0), "added over an earlier system's backups");
    assert!(secret.is_empty());
    assert!(
        err.contains(&format!(
            "s3://{}/{prefix}/fw1/ still holds 1 backup(s)",
            target.bucket
        )) && err.contains("--adopt"),
        "{err}"
    );
    // A name with nothing stored needs no word.
    let (code, _, err) = add("fw10", false);
    assert_eq!(code, Some(0), "{err}");
    // With --adopt, the new secret is handed the old backup.
    let (code, secret, err) = add("fw1", true);
    assert_eq!(code, Some(0), "{err}");
    let start = std::time::Instant::now();
    loop {
        let list = get(
            server.addr,
            "/api/systems/backups",
            Some(&basic("fw1", &secret)),
        )
        .await;
        if list.status == StatusCode::OK {
            assert_eq!(ids(&list).len(), 1);
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(3),
            "{}",
            list.text()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A replica's per-system metrics count what the bucket holds for every
/// registered system, other replicas' uploads included, from one listing
/// of the whole prefix: keys of a system that is not registered, a name
/// that is not an id, an id not spelled canonically, and uploads in
/// progress count for nothing.
#[tokio::test]
#[ignore = "needs an S3 server: .ci/s3.sh"]
async fn a_replicas_per_system_metrics_count_what_the_bucket_holds() {
    let a = Server::start_with(
        tempfile::tempdir().unwrap(),
        &[
            "--retention-count",
            "0",
            "--upload-rate-per-minute",
            "0",
            "--upload-rate-per-hour",
            "0",
        ],
    );
    assert!(a.s3.is_some(), "run with BACKUPD_TEST_BACKEND=s3");
    let fw1 = basic("fw1", &a.add_system("fw1"));
    let fw2 = basic("fw2", &a.add_system("fw2"));
    a.add_system("fw3");
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    for (auth, len) in [(&fw1, 1000), (&fw1, 300), (&fw2, 77)] {
        let reply = upload(a.addr, Some(auth), vec![3; len], &[]).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    }
    // Systems that hold nothing: a scan must not cost a request for each.
    for n in 0..60 {
        a.add_system(&format!("idle{n}"));
    }
    a.put("fw10", ID, &[1; 5000]);
    a.put("fw1", "notes.txt", &[1; 9]);
    a.put("fw1", &ID.to_uppercase(), &[1; 11]);
    // Started after all that, b's first scan (at start-up) counts it.
    let b = replica_of(&a, &["--admin-listen", "127.0.0.1:0"]);
    let admin = admin_addr(&b);
    let at = |name: &str, system: &str| format!("{name}{{system=\"{system}\"}}");
    wait_for_series(
        admin,
        &at("backupd_system_backups", "idle59"),
        Some(0.0),
        &b,
    )
    .await;
    for (system, backups, bytes) in [("fw1", 2.0, 1300.0), ("fw2", 1.0, 77.0), ("fw3", 0.0, 0.0)] {
        assert_eq!(
            series(admin, &at("backupd_system_backups", system)).await,
            Some(backups),
            "{system}"
        );
        assert_eq!(
            series(admin, &at("backupd_system_bytes", system)).await,
            Some(bytes),
            "{system}"
        );
    }
    let newest = series(
        admin,
        &at("backupd_system_newest_backup_timestamp_seconds", "fw1"),
    )
    .await
    .unwrap();
    assert!(
        newest >= before.floor() && newest <= before + 30.0,
        "{newest} vs {before}"
    );
    assert_eq!(
        series(
            admin,
            &at("backupd_system_newest_backup_timestamp_seconds", "fw3")
        )
        .await,
        None
    );
    let text = get(admin, "/metrics", None).await.text();
    assert!(!text.contains("fw10"), "{text}");

    // A scan of 64 systems is one listing of the prefix, and the records
    // it needed are kept: a system added sets one off.
    let sent = |op: &'static str| async move {
        series(
            admin,
            &format!("backupd_store_requests_total{{operation=\"{op}\"}}"),
        )
        .await
        .expect(op)
    };
    let (lists, heads) = (sent("ListObjectsV2").await, sent("HeadObject").await);
    let start = std::time::Instant::now();
    a.add_system("late");
    wait_for_series(admin, &at("backupd_system_backups", "late"), Some(0.0), &b).await;
    // Besides the scan's one page, an idle replica's readiness probe lists
    // one page every 5 s.
    let probes = (start.elapsed().as_secs_f64() / 5.0).ceil() + 1.0;
    let listed = sent("ListObjectsV2").await - lists;
    assert!(
        listed <= 1.0 + probes,
        "{listed} lists for one scan of 64 systems"
    );
    assert_eq!(sent("HeadObject").await - heads, 0.0);
}
