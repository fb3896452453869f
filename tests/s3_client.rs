//! The S3 client against a real object store (SeaweedFS in CI, started by
//! `.ci/s3.sh`, which runs these with `--ignored`). They need a store, so
//! the README's test command skips them; the store is named by
//! `BACKUPD_TEST_S3_ENDPOINT`, `_BUCKET`, `_ACCESS_KEY` and `_SECRET_KEY`.
//! HTTPS is checked without a store: against backupd's own TLS listener.

mod common;

use std::time::Duration;

use backupd::backup_id::BackupId;
use backupd::storage::key::{KeyPrefix, backup_in, backup_key, system_prefix};
use backupd::storage::s3::client::{Client, Endpoint, S3Error, Trust, full};
use backupd::storage::s3::sigv4::Credentials;
use backupd::system_name::SystemName;
use http_body_util::BodyExt;

fn env(name: &str) -> String {
    std::env::var(format!("BACKUPD_TEST_S3_{name}"))
        .unwrap_or_else(|_| panic!("BACKUPD_TEST_S3_{name} is not set: run .ci/s3.sh"))
}

fn credentials(access: &str, secret: &str) -> Credentials {
    Credentials {
        access_key: access.to_owned(),
        secret_key: secret.to_owned(),
        session_token: None,
    }
}

fn region() -> String {
    std::env::var("BACKUPD_TEST_S3_REGION").unwrap_or_else(|_| "us-east-1".into())
}

fn client_with(secret: &str) -> Client {
    Client::new(
        Endpoint::parse(&env("ENDPOINT")).unwrap(),
        &env("BUCKET"),
        &region(),
        credentials(&env("ACCESS_KEY"), secret),
        &Trust::Ca(Vec::new()),
    )
    .unwrap()
}

fn client() -> Client {
    client_with(&env("SECRET_KEY"))
}

/// A prefix no other run shares.
fn fresh_prefix() -> KeyPrefix {
    format!("test-{}", uuid::Uuid::now_v7().simple())
        .parse()
        .unwrap()
}

async fn within<T>(fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), fut)
        .await
        .expect("step timed out")
}

#[tokio::test]
#[ignore = "needs an S3 server: .ci/s3.sh"]
async fn put_head_get_range_list_copy_delete() {
    let s3 = client();
    let prefix = fresh_prefix();
    let fw1: SystemName = "fw1".parse().unwrap();
    let fw10: SystemName = "fw10".parse().unwrap();
    let id: BackupId = "01934fab-bc33-7890-a1b2-c3d4e5f6a7b8.tar.gz"
        .parse()
        .unwrap();
    let content: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let key = backup_key(&prefix, &fw1, &id);
    within(s3.put(
        &key,
        content.len() as u64,
        &[("x-amz-meta-filename", "nightly.tar.gz")],
        full(content.clone()),
    ))
    .await
    .unwrap();
    // The same id for fw10: listing fw1 must not see it.
    within(s3.put(&backup_key(&prefix, &fw10, &id), 3, &[], full("ten")))
        .await
        .unwrap();

    let head = within(s3.head(&key)).await.unwrap();
    assert_eq!(head["content-length"], content.len().to_string().as_str());
    assert_eq!(head["x-amz-meta-filename"], "nightly.tar.gz");
    assert!(head.contains_key("etag") && head.contains_key("last-modified"));

    let whole = within(s3.get(&key, None)).await.unwrap();
    let got = within(whole.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    assert!(got == content, "GET differs");
    let part = within(s3.get(&key, Some((1000, 1999)))).await.unwrap();
    assert_eq!(part.status(), 206);
    let got = within(part.into_body().collect()).await.unwrap().to_bytes();
    assert_eq!(&got[..], &content[1000..2000]);

    let page = within(s3.list(&system_prefix(&prefix, &fw1), None))
        .await
        .unwrap();
    let ids: Vec<BackupId> = page
        .objects
        .iter()
        .filter_map(|o| backup_in(&prefix, &fw1, &o.key))
        .collect();
    assert_eq!(ids, vec![id]);
    assert_eq!(page.objects.len(), 1, "fw10's key listed under fw1/");
    assert_eq!(page.objects[0].size, content.len() as u64);

    // Copy with new metadata (how an upload is committed under its id).
    let copy = backup_key(
        &prefix,
        &fw1,
        &"01934fab-bc33-7890-a1b2-c3d4e5f6a7b9.gpg".parse().unwrap(),
    );
    within(s3.copy(&key, &copy, &[("x-amz-meta-sha256", "ab12")]))
        .await
        .unwrap();
    let head = within(s3.head(&copy)).await.unwrap();
    assert_eq!(head["x-amz-meta-sha256"], "ab12");
    assert!(
        !head.contains_key("x-amz-meta-filename"),
        "metadata not replaced"
    );

    for k in [&key, &copy, &backup_key(&prefix, &fw10, &id)] {
        within(s3.delete(k)).await.unwrap();
    }
    assert!(matches!(
        within(s3.head(&key)).await,
        Err(S3Error::NotFound)
    ));
    assert!(matches!(
        within(s3.get(&key, None)).await,
        Err(S3Error::NotFound)
    ));
    assert!(
        within(s3.list(&system_prefix(&prefix, &fw1), None))
            .await
            .unwrap()
            .objects
            .is_empty()
    );
}

#[tokio::test]
#[ignore = "needs an S3 server: .ci/s3.sh"]
async fn listing_pages_beyond_1000_keys() {
    let s3 = client();
    let prefix = fresh_prefix();
    let fw: SystemName = "fw".parse().unwrap();
    let mut tasks = Vec::new();
    let s3 = std::sync::Arc::new(s3);
    for n in 0..1005u32 {
        let id: BackupId = format!("01934fab-bc33-7890-a1b2-{n:012x}.bin")
            .parse()
            .unwrap();
        let (s3, key) = (s3.clone(), backup_key(&prefix, &fw, &id));
        tasks.push(tokio::spawn(async move {
            s3.put(&key, 1, &[], full("x")).await
        }));
        if tasks.len() == 32 {
            for t in tasks.drain(..) {
                within(t).await.unwrap().unwrap();
            }
        }
    }
    for t in tasks {
        within(t).await.unwrap().unwrap();
    }
    let mut seen = 0;
    let mut token = None;
    let mut pages = 0;
    loop {
        let page = within(s3.list(&system_prefix(&prefix, &fw), token.as_deref()))
            .await
            .unwrap();
        pages += 1;
        seen += page
            .objects
            .iter()
            .filter(|o| backup_in(&prefix, &fw, &o.key).is_some())
            .count();
        match page.next_continuation_token {
            Some(next) => token = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, 1005);
    assert!(pages >= 2, "{pages} page(s)");
}

#[tokio::test]
#[ignore = "needs an S3 server: .ci/s3.sh"]
async fn a_signature_error_is_a_refusal_never_a_404() {
    let s3 = client_with("not-the-secret");
    let prefix = fresh_prefix();
    let key = format!(
        "{}/fw1/01934fab-bc33-7890-a1b2-c3d4e5f6a7b8.bin",
        prefix.as_str()
    );
    for result in [
        within(s3.head(&key)).await.map(drop),
        within(s3.get(&key, None)).await.map(drop),
        within(s3.list(&format!("{}/", prefix.as_str()), None))
            .await
            .map(drop),
    ] {
        assert!(matches!(result, Err(S3Error::Refused(_))), "{result:?}");
    }
}

#[tokio::test]
async fn an_unreachable_store_is_unavailable() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let s3 = Client::new(
        Endpoint::parse(&format!("http://127.0.0.1:{port}")).unwrap(),
        "backups",
        "us-east-1",
        credentials("a", "b"),
        &Trust::Ca(Vec::new()),
    )
    .unwrap();
    let result = within(s3.head("fw1/x")).await;
    assert!(matches!(result, Err(S3Error::Unavailable(_))), "{result:?}");
}

/// HTTPS through rustls, checked against the operator's CA: backupd's own
/// TLS listener stands in for the store (it answers a HEAD of any object
/// path with a 404, which the client reads as a missing key). A server
/// whose certificate the CA did not sign is unavailable, never trusted.
#[tokio::test]
async fn https_endpoints_are_checked_against_the_ca() {
    let certs = tempfile::tempdir().unwrap();
    let pem = |name: &str| {
        let rcgen::CertifiedKey { cert, key_pair } =
            rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        std::fs::write(certs.path().join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(
            certs.path().join(format!("{name}.key")),
            key_pair.serialize_pem(),
        )
        .unwrap();
        cert.pem().into_bytes()
    };
    let served = pem("served");
    let other = pem("other");
    let server = common::Server::start_with(
        tempfile::tempdir().unwrap(),
        &[
            "--tls-cert",
            certs.path().join("served.pem").to_str().unwrap(),
            "--tls-key",
            certs.path().join("served.key").to_str().unwrap(),
        ],
    );
    let endpoint = Endpoint::parse(&format!("https://localhost:{}", server.addr.port())).unwrap();
    let trusting = Client::new(
        endpoint.clone(),
        "backups",
        "us-east-1",
        credentials("a", "b"),
        &Trust::Ca(served),
    )
    .unwrap();
    let result = within(trusting.head("fw1/x")).await;
    assert!(matches!(result, Err(S3Error::NotFound)), "{result:?}");
    let distrusting = Client::new(
        endpoint,
        "backups",
        "us-east-1",
        credentials("a", "b"),
        &Trust::Ca(other),
    )
    .unwrap();
    let result = within(distrusting.head("fw1/x")).await;
    assert!(matches!(result, Err(S3Error::Unavailable(_))), "{result:?}");
}
