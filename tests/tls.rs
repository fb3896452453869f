//! HTTPS: a certificate generated at run time, HTTP/1.1 and HTTP/2 over
//! TLS via ALPN, TLS 1.2 and 1.3, and SIGHUP reloads without dropping
//! connections (a broken pair keeps the old one).

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Empty};
use hyper::StatusCode;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// A self-signed certificate for localhost; its DER and the files written.
fn make_cert(dir: &Path, name: &str) -> CertificateDer<'static> {
    let rcgen::CertifiedKey { cert, key_pair } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), key_pair.serialize_pem()).unwrap();
    cert.der().clone()
}

fn install(dir: &Path, name: &str) {
    std::fs::copy(dir.join(format!("{name}.pem")), dir.join("cert.pem")).unwrap();
    std::fs::copy(dir.join(format!("{name}.key")), dir.join("key.pem")).unwrap();
}

/// Connects with TLS trusting `roots`; `alpn` is what the client offers.
async fn connect(
    addr: std::net::SocketAddr,
    roots: &[CertificateDer<'static>],
    alpn: &[&[u8]],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> TlsStream<tokio::net::TcpStream> {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add(root.clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = within(STEP, tokio::net::TcpStream::connect(addr))
        .await
        .unwrap();
    within(
        STEP,
        TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost").unwrap(), tcp),
    )
    .await
    .unwrap()
}

fn peer_cert(stream: &TlsStream<tokio::net::TcpStream>) -> CertificateDer<'static> {
    stream.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned()
}

async fn get_over(
    stream: TlsStream<tokio::net::TcpStream>,
    path: &str,
    auth: &str,
) -> (StatusCode, Bytes) {
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    let req = hyper::Request::get(format!("https://localhost{path}"))
        .header("authorization", auth)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = if h2 {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        within(STEP, sender.send_request(req)).await.unwrap()
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        within(STEP, sender.send_request(req)).await.unwrap()
    };
    let status = res.status();
    (
        status,
        within(STEP, res.into_body().collect())
            .await
            .unwrap()
            .to_bytes(),
    )
}

#[tokio::test]
async fn https_serves_http1_and_http2_and_reloads_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let certs = tempfile::tempdir().unwrap();
    let first = make_cert(certs.path(), "first");
    let second = make_cert(certs.path(), "second");
    install(certs.path(), "first");
    let cert = certs.path().join("cert.pem");
    let key = certs.path().join("key.pem");
    let server = Server::start_with(
        dir,
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    let secret = server.add_system("fw1");
    let auth = basic("fw1", &secret);
    let data: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
    server.put("fw1", ID, &data);
    let roots = [first.clone(), second.clone()];
    let all = &[&rustls::version::TLS13, &rustls::version::TLS12][..];

    // HTTP/1.1 and HTTP/2, chosen by ALPN, over TLS 1.3 and TLS 1.2.
    for (alpn, versions) in [
        (&[&b"http/1.1"[..]][..], all),
        (&[&b"h2"[..], &b"http/1.1"[..]][..], all),
        (&[&b"h2"[..]][..], &[&rustls::version::TLS12][..]),
        (&[&b"http/1.1"[..]][..], &[&rustls::version::TLS12][..]),
    ] {
        let stream = connect(server.addr, &roots, alpn, versions).await;
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(alpn[0]));
        assert_eq!(peer_cert(&stream), first);
        let (status, body) = get_over(stream, &backup_path(ID), &auth).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body == data);
    }
    // Plain HTTP on the TLS port gets no answer.
    let reply = raw(
        server.addr,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(raw_status(&reply), None);

    // A keep-alive connection opened before the reload...
    let old = connect(server.addr, &roots, &[b"http/1.1"], all).await;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(old))
        .await
        .unwrap();
    tokio::spawn(conn);
    let send = |sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>| {
        sender.send_request(
            hyper::Request::get(backup_path(ID))
                .header("host", "localhost")
                .header("authorization", &auth)
                .body(Empty::new())
                .unwrap(),
        )
    };
    let res = within(STEP, send(&mut sender)).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    // Read it whole so the connection is ready for the next request.
    assert!(
        within(STEP, res.into_body().collect())
            .await
            .unwrap()
            .to_bytes()
            == data
    );

    // ...survives SIGHUP, and new handshakes get the new certificate.
    install(certs.path(), "second");
    sighup_until_logged(&server, "TLS certificate reloaded").await;
    let fresh = connect(server.addr, &roots, &[b"h2"], all).await;
    assert_eq!(peer_cert(&fresh), second);
    let res = within(STEP, send(&mut sender)).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(
        within(STEP, res.into_body().collect())
            .await
            .unwrap()
            .to_bytes()
            == data
    );

    // A broken pair keeps the previous certificate and logs an error.
    std::fs::write(
        &cert,
        b"-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    server.signal(1);
    assert!(
        server.wait_for_log("TLS certificate reload failed", Duration::from_secs(5)),
        "{}",
        server.log()
    );
    let still = connect(server.addr, &roots, &[b"http/1.1"], all).await;
    assert_eq!(peer_cert(&still), second);
    // A key that does not match the certificate is refused the same way.
    install(certs.path(), "first");
    std::fs::copy(certs.path().join("second.key"), &key).unwrap();
    sighup_until_logged(&server, "TLS certificate reload failed").await;
    assert_eq!(
        peer_cert(&connect(server.addr, &roots, &[b"h2"], all).await),
        second
    );
}

#[test]
fn a_broken_certificate_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    std::fs::write(&cert, b"garbage").unwrap();
    let out = std::process::Command::new(bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--tls-cert"])
        .arg(&cert)
        .arg("--tls-key")
        .arg(&cert)
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("TLS"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An HTTP/2 download over TLS (ALPN h2, what every HTTPS client
/// negotiates) when the server is told to stop arrives whole: the
/// connection is closed only after the peer has what was written.
#[tokio::test]
async fn an_https_http2_download_survives_a_graceful_stop() {
    let dir = tempfile::tempdir().unwrap();
    let certs = tempfile::tempdir().unwrap();
    make_cert(certs.path(), "only");
    install(certs.path(), "only");
    let cert = certs.path().join("cert.pem");
    let key = certs.path().join("key.pem");
    let server = Server::start_with(
        dir,
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    let secret = server.add_system("fw1");
    let content: Vec<u8> = (0..20_000_000u32).map(|i| (i % 249) as u8).collect();
    server.put("fw1", ID, &content);
    let url = format!(
        "https://localhost:{}{}",
        server.addr.port(),
        backup_path(ID)
    );
    let out = server.data().join("h2.bin");
    let curl = std::process::Command::new("curl")
        .args(["-sS", "--fail", "--http2", "--limit-rate", "4M", "--cacert"])
        .arg(&cert)
        .args([
            "--resolve",
            &format!("localhost:{}:127.0.0.1", server.addr.port()),
        ])
        .args([
            "--user",
            &format!("fw1:{secret}"),
            "-w",
            "%{http_version}",
            "-o",
        ])
        .arg(&out)
        .arg(&url)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("curl");
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.signal(15);
    let done = tokio::task::spawn_blocking(move || curl.wait_with_output().unwrap())
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert!(
        done.status.success(),
        "curl failed: {stderr}\n{}",
        server.log()
    );
    assert_eq!(String::from_utf8_lossy(&done.stdout), "2", "not HTTP/2");
    let got = std::fs::read(&out).unwrap();
    assert_eq!(got.len(), content.len());
    assert!(got == content, "the download differs");
}

/// The same over TLS when the download's worker is retired by a storage
/// root replacement: it arrives whole.
#[tokio::test]
async fn an_https_http2_download_survives_its_worker_being_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let certs = tempfile::tempdir().unwrap();
    make_cert(certs.path(), "only");
    install(certs.path(), "only");
    let cert = certs.path().join("cert.pem");
    let key = certs.path().join("key.pem");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(mnt.join("fw1")).unwrap();
    let server = Server::start_with(
        dir,
        &[
            "--storage",
            mnt.to_str().unwrap(),
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    if !server
        .log()
        .contains("self-sandbox (Landlock): fully enforced")
    {
        return; // one worker serves every root: nothing is retired
    }
    let secret = server.add_system("fw1");
    let content: Vec<u8> = (0..20_000_000u32).map(|i| (i % 239) as u8).collect();
    std::fs::write(mnt.join("fw1").join(ID), &content).unwrap();
    let out = server.data().join("h2.bin");
    let port = server.addr.port();
    let curl = std::process::Command::new("curl")
        .args(["-sS", "--fail", "--http2", "--limit-rate", "4M", "--cacert"])
        .arg(&cert)
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .args([
            "--user",
            &format!("fw1:{secret}"),
            "-w",
            "%{http_version}",
            "-o",
        ])
        .arg(&out)
        .arg(format!("https://localhost:{port}{}", backup_path(ID)))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("curl");
    tokio::time::sleep(Duration::from_secs(1)).await;
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
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert!(
        done.status.success(),
        "curl failed: {stderr}\n{}",
        server.log()
    );
    assert_eq!(String::from_utf8_lossy(&done.stdout), "2", "not HTTP/2");
    let got = std::fs::read(&out).unwrap();
    assert_eq!(got.len(), content.len());
    assert!(got == content, "the download differs");
}

/// Sends SIGHUP and waits (5 s at most) for one more `needle` in the log.
async fn sighup_until_logged(server: &Server, needle: &str) {
    let before = server.count_log(needle);
    server.signal(1);
    let start = std::time::Instant::now();
    while server.count_log(needle) == before {
        assert!(start.elapsed() < Duration::from_secs(5), "{}", server.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A self-signed certificate for localhost expiring on `year`-01-01, as
/// (DER, certificate PEM, key PEM).
fn cert_until(year: i32) -> (CertificateDer<'static>, String, String) {
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    params.not_after = rcgen::date_time_ymd(year, 1, 1);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.der().clone(), cert.pem(), key.serialize_pem())
}

/// Points certbot's `live/example/NAME.pem` at `archive/example/NAMEn.pem`,
/// the way a renewal does (a new symlink renamed over the old one).
fn point(certs: &Path, name: &str, n: u32) {
    let link = certs.join(format!("live/example/{name}.pem"));
    let tmp = certs.join(format!("live/example/.{name}.tmp"));
    std::os::unix::fs::symlink(format!("../../archive/example/{name}{n}.pem"), &tmp).unwrap();
    std::fs::rename(&tmp, &link).unwrap();
}

async fn metric(admin: std::net::SocketAddr, series: &str) -> Option<String> {
    let text = get(admin, "/metrics", None).await.text();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ').map(str::to_owned))
}

#[tokio::test]
async fn certbot_layout_is_served_and_reloaded_with_its_expiry_and_failures_in_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let certs = tempfile::tempdir().unwrap();
    let (archive, live) = (
        certs.path().join("archive/example"),
        certs.path().join("live/example"),
    );
    std::fs::create_dir_all(&archive).unwrap();
    std::fs::create_dir_all(&live).unwrap();
    let renewal = |n: u32, year: i32| {
        let (der, pem, key) = cert_until(year);
        std::fs::write(archive.join(format!("fullchain{n}.pem")), pem).unwrap();
        std::fs::write(archive.join(format!("privkey{n}.pem")), key).unwrap();
        point(certs.path(), "fullchain", n);
        point(certs.path(), "privkey", n);
        der
    };
    let first = renewal(1, 2031);
    let cert = live.join("fullchain.pem");
    let key = live.join("privkey.pem");
    let server = Server::start_with(
        dir,
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--admin-listen",
            "127.0.0.1:0",
        ],
    );
    let admin = admin_addr(&server);
    let all = &[&rustls::version::TLS13, &rustls::version::TLS12][..];
    let expiry = "backupd_tls_certificate_expiry_timestamp_seconds";
    let tls_failures = r#"backupd_reload_failures_total{file="tls_certificate"}"#;
    let credential_failures = r#"backupd_reload_failures_total{file="credentials"}"#;
    assert_eq!(
        peer_cert(&connect(server.addr, std::slice::from_ref(&first), &[b"h2"], all).await),
        first
    );
    // 2031-01-01T00:00:00Z
    assert_eq!(metric(admin, expiry).await.as_deref(), Some("1924992000"));
    assert_eq!(metric(admin, tls_failures).await.as_deref(), Some("0"));
    assert_eq!(
        metric(admin, credential_failures).await.as_deref(),
        Some("0")
    );

    // A renewal: new files in archive/, the live/ links re-pointed, SIGHUP.
    let second = renewal(2, 2032);
    sighup_until_logged(&server, "TLS certificate reloaded").await;
    let roots = [first.clone(), second.clone()];
    assert_eq!(
        peer_cert(&connect(server.addr, &roots, &[b"h2"], all).await),
        second
    );
    assert_eq!(metric(admin, expiry).await.as_deref(), Some("1956528000"));

    // A broken renewal keeps the certificate served, and is counted.
    std::fs::write(archive.join("fullchain3.pem"), b"not a certificate\n").unwrap();
    point(certs.path(), "fullchain", 3);
    sighup_until_logged(&server, "TLS certificate reload failed").await;
    assert_eq!(
        peer_cert(&connect(server.addr, &roots, &[b"http/1.1"], all).await),
        second
    );
    assert_eq!(metric(admin, tls_failures).await.as_deref(), Some("1"));
    assert_eq!(metric(admin, expiry).await.as_deref(), Some("1956528000"));

    // So is a credentials file that stops parsing.
    std::fs::write(
        server.data().join("credentials"),
        b"this is not a credentials line\n",
    )
    .unwrap();
    assert!(
        server.wait_for_log("credentials file is malformed", Duration::from_secs(5)),
        "{}",
        server.log()
    );
    assert_eq!(
        metric(admin, credential_failures).await.as_deref(),
        Some("1")
    );
}
