//! The backup lifecycle: upload, list, delete, retention, quotas, rate
//! limits, append-only, and resumable, verifiable downloads.

mod common;

use std::process::Command;
use std::time::Duration;

use base64::Engine;
use common::*;
use hyper::{Method, StatusCode};
use sha2::Digest;

fn sha256_hex(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn sha256_b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(bytes))
}

fn content(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 11) as u8)
        .collect()
}

/// Uploads in progress (or left behind) of a system.
fn partials(server: &Server, system: &str) -> Vec<String> {
    server.uploads_in_progress(system)
}

/// A server that neither rate-limits uploads nor prunes them.
fn server_without_upload_limits() -> Server {
    server_without_upload_limits_in(tempfile::tempdir().unwrap(), &[])
}

/// [`server_without_upload_limits`] on `dir`, with `extra` arguments.
fn server_without_upload_limits_in(dir: tempfile::TempDir, extra: &[&str]) -> Server {
    let mut args = vec![
        "--upload-rate-per-minute",
        "0",
        "--upload-rate-per-hour",
        "0",
        "--retention-count",
        "0",
    ];
    args.extend_from_slice(extra);
    Server::start_with(dir, &args)
}

/// Unmounts (lazily) what [`mount`] mounted, when dropped.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Runs `mount ARGS AT` (the tests that use it need root, as CI has).
fn mount(args: &[&str], at: &std::path::Path) -> Unmount {
    let status = Command::new("mount").args(args).arg(at).status().unwrap();
    assert!(
        status.success(),
        "mount {args:?} failed: this test needs root"
    );
    Unmount(at.to_path_buf())
}

fn assert_error(reply: &Reply, status: u16, body: &str) {
    assert_eq!(reply.status.as_u16(), status, "{}", reply.text());
    assert_eq!(reply.text(), body);
    assert_eq!(reply.header("content-type"), Some("application/json"));
}

#[tokio::test]
async fn upload_then_download_list_and_delete() {
    let server = Server::start();
    let secret = server.add_system("fw1");
    let auth = basic("fw1", &secret);
    let data = content(3_000_001, 1);

    let reply = upload(
        server.addr,
        Some(&auth),
        data.clone(),
        &[("x-filename", "nightly.tar.gz")],
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    let body = json(&reply);
    assert_eq!(body["code"], 201);
    assert_eq!(body["message"], "backup stored");
    let info = &body["data"];
    let id = info["id"].as_str().unwrap().to_string();
    assert!(id.ends_with(".tar.gz"), "{id}");
    let uuid = uuid::Uuid::parse_str(&id[..36]).unwrap();
    assert_eq!(uuid.get_version_num(), 7);
    assert_eq!(info["filename"], "nightly.tar.gz");
    assert_eq!(info["size"], 3_000_001);
    assert_eq!(info["sha256"], sha256_hex(&data));
    assert_eq!(info["mimetype"], "application/octet-stream");
    let uploaded = info["uploaded_at"].as_str().unwrap();
    humantime::parse_rfc3339(uploaded).unwrap_or_else(|e| panic!("{uploaded}: {e}"));
    assert_eq!(partials(&server, "fw1"), Vec::<String>::new());

    let got = get(server.addr, &backup_path(&id), Some(&auth)).await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(got.body == data);
    let digest = format!("sha-256=:{}:", sha256_b64(&data));
    assert_eq!(got.header("repr-digest"), Some(digest.as_str()));
    let head = request(server.addr, Method::HEAD, &backup_path(&id), Some(&auth)).await;
    assert_eq!(head.header("repr-digest"), Some(digest.as_str()));

    // The list is the same objects as upload returns.
    let list = get(server.addr, "/api/systems/backups", Some(&auth)).await;
    assert_eq!(list.status, StatusCode::OK);
    let list = json(&list);
    assert_eq!(list["code"], 200);
    assert_eq!(list["message"], "backups listed");
    assert_eq!(list["data"]["backups"], serde_json::json!([info]));

    // Delete, then it is gone for GET, list and a second DELETE.
    let del = request(server.addr, Method::DELETE, &backup_path(&id), Some(&auth)).await;
    assert_eq!(del.status, StatusCode::OK);
    assert_eq!(
        del.text(),
        format!(r#"{{"code":200,"message":"backup deleted","data":{{"id":"{id}"}}}}"#)
    );
    assert_error(
        &get(server.addr, &backup_path(&id), Some(&auth)).await,
        404,
        NOT_FOUND_BODY,
    );
    assert_error(
        &request(server.addr, Method::DELETE, &backup_path(&id), Some(&auth)).await,
        404,
        NOT_FOUND_BODY,
    );
    assert_eq!(
        json(&get(server.addr, "/api/systems/backups", Some(&auth)).await)["data"]["backups"],
        serde_json::json!([])
    );
    // Nothing is left beside it either (the sidecar went too).
    assert_eq!(server.stored_everything("fw1"), Vec::<String>::new());
}

#[tokio::test]
async fn upload_filenames_and_extensions() {
    let server = server_without_upload_limits();
    let auth = basic("fw1", &server.add_system("fw1"));
    let long = format!("{}.gpg", "a".repeat(300));
    let cases: [(Option<&str>, &str, &str); 10] = [
        (Some("x.tar.xz"), "x.tar.xz", "tar.xz"),
        (Some("x.tar.bz2"), "x.tar.bz2", "tar.bz2"),
        (Some("x.tar.zst"), "x.tar.zst", "tar.zst"),
        (Some("../../etc/passwd"), "passwd", "bin"),
        (Some("C:\\Users\\evil\\backup.gpg"), "backup.gpg", "gpg"),
        (
            Some("<img src=x onerror=alert(1)>.tar.gz"),
            "_img_src_x_onerror_alert_1__.tar.gz",
            "tar.gz",
        ),
        (Some("report.zip"), "report.zip", "bin"),
        (Some(".."), "", "bin"),
        (None, "", "bin"),
        (Some(long.as_str()), "", "bin"),
    ];
    for (header, want_name, want_ext) in cases {
        let headers: Vec<(&str, &str)> = header.map(|h| ("x-filename", h)).into_iter().collect();
        let reply = upload(server.addr, Some(&auth), b"x".to_vec(), &headers).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
        let info = &json(&reply)["data"];
        let id = info["id"].as_str().unwrap();
        let name = info["filename"].as_str().unwrap();
        assert!(id.ends_with(&format!(".{want_ext}")), "{header:?} -> {id}");
        if want_name.is_empty() && header != Some(long.as_str()) {
            assert_eq!(name, format!("backup-{}", &id[..36]), "{header:?}");
        } else if header == Some(long.as_str()) {
            assert_eq!(name.len(), 255);
        } else {
            assert_eq!(name, want_name, "{header:?}");
        }
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)),
            "{name}"
        );
    }
    // CR/LF cannot even reach us in a header (hyper refuses them), so the
    // raw bytes test is in the unit tests of upload::sanitize_filename.
}

#[tokio::test]
async fn upload_with_curl_and_a_content_digest() {
    let server = Server::start();
    let secret = server.add_system("fw1");
    let data = content(1_234_567, 2);
    let file = server.data().join("payload.gpg");
    std::fs::write(&file, &data).unwrap();
    let url = format!("http://{}/api/systems/backups", server.addr);
    let out = Command::new("curl")
        .args([
            "-sS",
            "--fail-with-body",
            "--user",
            &format!("fw1:{secret}"),
        ])
        .args([
            "-H",
            "Content-Type: application/octet-stream",
            "-H",
            "X-Filename: payload.gpg",
        ])
        .args([
            "-H",
            &format!("Content-Digest: sha-256=:{}:", sha256_b64(&data)),
        ])
        .arg("--data-binary")
        .arg(format!("@{}", file.display()))
        .arg(&url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let body: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(body["data"]["sha256"], sha256_hex(&data));

    // A digest that does not match: 400, nothing stored.
    let before = server.stored_everything("fw1");
    let wrong = format!("sha-256=:{}:", sha256_b64(b"something else"));
    let reply = upload(
        server.addr,
        Some(&basic("fw1", &secret)),
        data.clone(),
        &[("content-digest", &wrong)],
    )
    .await;
    assert_error(
        &reply,
        400,
        r#"{"code":400,"message":"checksum mismatch","data":{}}"#,
    );
    assert_eq!(server.stored_everything("fw1"), before);
}

/// `Content-Digest` with `sha-512` is checked too; a digest that cannot be
/// read is a 400 that says so, before the body is read.
#[tokio::test]
async fn sha512_digests_are_checked_and_malformed_ones_named() {
    let server = Server::start();
    let auth = basic("fw1", &server.add_system("fw1"));
    let data = content(300_000, 9);
    let b64 = |d: &[u8]| base64::engine::general_purpose::STANDARD.encode(d);
    let sha512 = format!("sha-512=:{}:", b64(&sha2::Sha512::digest(&data)));
    let reply = upload(
        server.addr,
        Some(&auth),
        data.clone(),
        &[("content-digest", &sha512)],
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    assert_eq!(json(&reply)["data"]["sha256"], sha256_hex(&data));
    let both = format!("{sha512}, sha-256=:{}:", sha256_b64(&data));
    let reply = upload(
        server.addr,
        Some(&auth),
        data.clone(),
        &[("content-digest", &both)],
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    let stored = server.stored_everything("fw1");

    // The right SHA-256 with a wrong SHA-512: every member is checked.
    let wrong = format!(
        "sha-256=:{}:, sha-512=:{}:",
        sha256_b64(&data),
        b64(&sha2::Sha512::digest(b"other"))
    );
    let reply = upload(
        server.addr,
        Some(&auth),
        data.clone(),
        &[("content-digest", &wrong)],
    )
    .await;
    assert_error(
        &reply,
        400,
        r#"{"code":400,"message":"checksum mismatch","data":{}}"#,
    );
    for malformed in ["sha-512=:AAAA:", "sha-256=abc", "sha-256=:!!:", "sha-512"] {
        let reply = upload(
            server.addr,
            Some(&auth),
            data.clone(),
            &[("content-digest", malformed)],
        )
        .await;
        assert_error(
            &reply,
            400,
            r#"{"code":400,"message":"malformed Content-Digest","data":{}}"#,
        );
    }
    assert!(server.log().contains("malformed Content-Digest"));
    assert_eq!(server.stored_everything("fw1"), stored);
}

/// `tar c DIR | curl -T -`: a body without a length (HTTP/1.1 chunked,
/// HTTP/2 without `content-length`) is stored whole, with its SHA-256 and
/// an atomic commit; one longer than `--max-upload-bytes` or the quota is
/// a 413 the client reads, and leaves nothing.
#[tokio::test]
async fn uploads_from_a_pipe_over_http1_and_http2() {
    let server = Server::start_with(
        tempfile::tempdir().unwrap(),
        &[
            "--max-upload-bytes",
            "6000000",
            "--quota-bytes",
            "9000000",
            "--upload-rate-per-minute",
            "0",
            "--upload-rate-per-hour",
            "0",
        ],
    );
    let secret = server.add_system("fw1");
    let tree = server.data().join("etc");
    std::fs::create_dir(&tree).unwrap();
    std::fs::write(tree.join("a.conf"), content(1_500_000, 1)).unwrap();
    std::fs::write(tree.join("b.conf"), content(700_000, 2)).unwrap();
    let url = format!("http://{}/api/systems/backups", server.addr);
    // The pipe: `tar c` (or `head -c N` of a stream) through `tee`, which
    // keeps what was sent; curl reads it from stdin and cannot know its
    // length.
    let pipe = |source: &str, sent: &std::path::Path, http: &str| {
        let script = format!(
            "set -o pipefail; {source} | tee {sent} | curl -sS -X POST -T - {http} -H 'X-Filename: etc.tar.gz' -w '\\n%{{http_code}} %{{http_version}}' --user fw1:{secret} {url}",
            sent = sent.display(),
        );
        let out = Command::new("bash")
            .arg("-c")
            .arg(&script)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, status) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
        (
            status.to_owned(),
            body.to_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // Over --max-upload-bytes (the quota leaves more), on either
    // protocol: a 413 with the limit that the client reads, nothing kept.
    for (http, version) in [("--http1.1", "1.1"), ("--http2-prior-knowledge", "2")] {
        let sent = server.data().join("big");
        let (status, body, stderr) = pipe("head -c 7000000 /dev/zero", &sent, http);
        assert_eq!(
            status,
            format!("413 {version}"),
            "{body} {stderr}\n{}",
            server.log()
        );
        assert_eq!(
            body,
            r#"{"code":413,"message":"backup exceeds max upload size","data":{"max_bytes":6000000}}"#
        );
    }
    let mut ids = Vec::new();
    for (http, version) in [("--http1.1", "1.1"), ("--http2-prior-knowledge", "2")] {
        let sent = server.data().join(format!("sent-{version}.tar"));
        let source = format!("tar c -C {} etc", server.data().display());
        let (status, body, stderr) = pipe(&source, &sent, http);
        assert_eq!(
            status,
            format!("201 {version}"),
            "{body} {stderr}\n{}",
            server.log()
        );
        let sent = std::fs::read(&sent).unwrap();
        assert!(sent.len() > 2_200_000);
        let reply: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(reply["data"]["size"], sent.len(), "{reply}");
        assert_eq!(reply["data"]["sha256"], sha256_hex(&sent), "{reply}");
        assert_eq!(reply["data"]["filename"], "etc.tar.gz", "{reply}");
        let id = reply["data"]["id"].as_str().unwrap().to_owned();
        assert!(id.ends_with(".tar.gz"), "{id}");
        let got = get(server.addr, &backup_path(&id), Some(&basic("fw1", &secret))).await;
        assert_eq!(got.status, StatusCode::OK);
        assert!(got.body == sent, "the stored backup differs from the pipe");
        ids.push(id);
    }
    let stored = server.stored_everything("fw1");

    // Within the size limit, over what the quota leaves (9 MB less the
    // two backups): 413 quota exceeded.
    for (http, version) in [("--http1.1", "1.1"), ("--http2-prior-knowledge", "2")] {
        let sent = server.data().join("big");
        let (status, body, stderr) = pipe("head -c 5000000 /dev/zero", &sent, http);
        assert_eq!(
            status,
            format!("413 {version}"),
            "{body} {stderr}\n{}",
            server.log()
        );
        assert_eq!(
            body,
            r#"{"code":413,"message":"backup quota exceeded","data":{}}"#
        );
    }
    assert!(server.log().contains("streamed upload over the size limit"));
    assert!(server.log().contains("streamed upload over the quota"));
    // Nothing of the refused ones is left: no file, no object, no
    // multipart upload.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while (server.stored_everything("fw1") != stored || !server.multipart_uploads().is_empty())
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(server.stored_everything("fw1"), stored);
    assert_eq!(server.multipart_uploads(), Vec::<String>::new());
    assert_eq!(server.stored_backups("fw1").len(), ids.len());
}

#[tokio::test]
async fn limits_are_checked_before_the_body() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        dir,
        &[
            "--max-upload-bytes",
            "1000",
            "--quota-bytes",
            "1500",
            "--upload-rate-per-minute",
            "3",
        ],
    );
    let auth = basic("fw1", &server.add_system("fw1"));

    // Unauthenticated: 401 before anything else.
    assert_error(
        &upload(server.addr, None, vec![0; 10], &[]).await,
        401,
        UNAUTHORIZED_BODY,
    );
    // Over the upload limit: 413 with the limit.
    let reply = upload(server.addr, Some(&auth), vec![0; 1001], &[]).await;
    assert_error(
        &reply,
        413,
        r#"{"code":413,"message":"backup exceeds max upload size","data":{"max_bytes":1000}}"#,
    );
    // Within limits.
    assert_eq!(
        upload(server.addr, Some(&auth), vec![0; 900], &[])
            .await
            .status,
        StatusCode::CREATED
    );
    // Over the quota (900 + 700 > 1500): 413.
    let reply = upload(server.addr, Some(&auth), vec![0; 700], &[]).await;
    assert_error(
        &reply,
        413,
        r#"{"code":413,"message":"backup quota exceeded","data":{}}"#,
    );
    assert_eq!(
        upload(server.addr, Some(&auth), vec![0; 600], &[])
            .await
            .status,
        StatusCode::CREATED
    );
    // Third admitted upload this minute is fine, the fourth is rate limited.
    // (hyper's client sends no Content-Length for an empty body: say it.)
    let empty = [("content-length", "0")];
    assert_eq!(
        upload(server.addr, Some(&auth), vec![], &empty)
            .await
            .status,
        StatusCode::CREATED
    );
    let reply = upload(server.addr, Some(&auth), vec![], &empty).await;
    assert_eq!(
        reply.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        reply.text()
    );
    let retry: u64 = reply.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(
        reply.text(),
        format!(
            r#"{{"code":429,"message":"upload rate limit exceeded","data":{{"retry_after_seconds":{retry}}}}}"#
        )
    );
    assert_eq!(partials(&server, "fw1"), Vec::<String>::new());

    // No Content-Length (chunked), over the limit: 413 once the limit is
    // passed, nothing kept. (A streamed upload is admitted before its
    // length is known, so it counts against the rate: another server.)
    let server = Server::start_with(
        tempfile::tempdir().unwrap(),
        &["--max-upload-bytes", "1000"],
    );
    let auth = basic("fw1", &server.add_system("fw1"));
    let chunk = format!("{:x}\r\n{}\r\n", 600, "x".repeat(600));
    let req = format!(
        "POST /api/systems/backups HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nTransfer-Encoding: chunked\r\n\r\n{chunk}{chunk}0\r\n\r\n"
    );
    let raw_reply = raw(server.addr, req.as_bytes(), Duration::from_secs(2)).await;
    let text = String::from_utf8_lossy(&raw_reply);
    assert_eq!(raw_status(&raw_reply), Some(413), "{text}");
    assert!(
        text.ends_with(
            r#"{"code":413,"message":"backup exceeds max upload size","data":{"max_bytes":1000}}"#
        ),
        "{text}"
    );
    assert_eq!(server.stored_everything("fw1"), Vec::<String>::new());
}

/// Starts a raw upload that declares 100,000 bytes and sends 5,000.
async fn partial_upload(server: &Server, auth: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut stream = within(STEP, tokio::net::TcpStream::connect(server.addr))
        .await
        .unwrap();
    let head = format!(
        "POST /api/systems/backups HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nContent-Length: 100000\r\n\r\n"
    );
    within(STEP, stream.write_all(head.as_bytes()))
        .await
        .unwrap();
    within(STEP, stream.write_all(&[1u8; 5000])).await.unwrap();
    stream
}

#[tokio::test]
async fn a_short_body_is_400_and_leaves_nothing() {
    let server = Server::start();
    let auth = basic("fw1", &server.add_system("fw1"));
    let mut stream = partial_upload(&server, &auth).await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // The client stops sending but can still hear the answer.
    within(STEP, stream.shutdown()).await.unwrap();
    let mut out = Vec::new();
    within(STEP, stream.read_to_end(&mut out)).await.unwrap();
    let text = String::from_utf8_lossy(&out);
    assert_eq!(raw_status(&out), Some(400), "{text}");
    assert!(
        text.ends_with(r#"{"code":400,"message":"upload length mismatch","data":{}}"#),
        "{text}"
    );
    assert_eq!(server.stored_everything("fw1"), Vec::<String>::new());
}

#[tokio::test]
async fn a_stalled_upload_is_cut_and_leaves_nothing() {
    let server = Server::start();
    let auth = basic("fw1", &server.add_system("fw1"));
    let mut stream = partial_upload(&server, &auth).await;
    use tokio::io::AsyncReadExt;
    // While it is in flight, the partial file exists but is never listed
    // (an object store shows an object only once its PUT is complete).
    tokio::time::sleep(Duration::from_millis(500)).await;
    if server.s3.is_none() {
        assert_eq!(partials(&server, "fw1").len(), 1);
    }
    let list = get(server.addr, "/api/systems/backups", Some(&auth)).await;
    assert_eq!(json(&list)["data"]["backups"], serde_json::json!([]));
    // Then the client stalls: the upload stall timeout (30 s) answers 400.
    let mut out = Vec::new();
    within(Duration::from_secs(45), stream.read_to_end(&mut out))
        .await
        .unwrap();
    assert_eq!(
        raw_status(&out),
        Some(400),
        "{}",
        String::from_utf8_lossy(&out)
    );
    assert_eq!(partials(&server, "fw1"), Vec::<String>::new());
}

#[tokio::test]
async fn a_full_disk_is_507_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let _unmount = mount(&["-t", "tmpfs", "-o", "size=1m", "tmpfs"], &mnt);
    // A new, empty mount becomes a storage root through `systems add`
    // naming it (which marks it).
    let (code, secret, err) = cli(
        dir.path(),
        &["systems", "add", "fw1", "--storage", mnt.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{err}");
    let server = Server::start_with(dir, &["--storage", mnt.to_str().unwrap()]);
    let auth = basic("fw1", secret.trim_end());
    let reply = upload(server.addr, Some(&auth), vec![9; 3 << 20], &[]).await;
    assert_error(
        &reply,
        507,
        r#"{"code":507,"message":"insufficient storage","data":{}}"#,
    );
    assert_eq!(names_in(&mnt.join("fw1")), Vec::<String>::new());
    // A backup that fits still goes through afterwards.
    assert_eq!(
        upload(server.addr, Some(&auth), vec![9; 1000], &[])
            .await
            .status,
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn metadata_survives_a_restart_and_crash_leftovers_are_swept() {
    if fs_only("files left in a system's directory by a crash") {
        return;
    }
    let server = Server::start();
    let auth = basic("fw1", &server.add_system("fw1"));
    let reply = upload(
        server.addr,
        Some(&auth),
        b"persist me".to_vec(),
        &[("x-filename", "keep.gpg")],
    )
    .await;
    let info = json(&reply)["data"].clone();
    // A crash leaves a partial upload behind; so does a dropped-in file.
    std::fs::write(
        server.storage().join("fw1/.upload-0193deadbeef"),
        b"partial",
    )
    .unwrap();
    std::fs::write(server.storage().join("fw1").join(ID), b"dropped in").unwrap();
    // A crash between the record's rename and the backup's leaves a record
    // with no backup: swept. A record whose backup is there stays.
    let orphan = format!(".{ID2}.meta");
    std::fs::write(server.storage().join("fw1").join(&orphan), b"{}").unwrap();
    let dir = server.stop();

    let server = Server::start_with(dir, &[]);
    assert_eq!(partials(&server, "fw1"), Vec::<String>::new());
    let names = names_in(&server.storage().join("fw1"));
    assert!(!names.contains(&orphan), "{names:?}");
    let kept_record = format!(".{}.meta", info["id"].as_str().unwrap());
    assert!(names.contains(&kept_record), "{names:?}");
    let list = json(&get(server.addr, "/api/systems/backups", Some(&auth)).await);
    let backups = list["data"]["backups"].as_array().unwrap().clone();
    assert_eq!(backups.len(), 2);
    let uploaded = backups.iter().find(|b| b["id"] == info["id"]).unwrap();
    assert_eq!(uploaded, &info);
    let dropped = backups.iter().find(|b| b["id"] == ID).unwrap();
    assert_eq!(dropped["size"], 10);
    assert_eq!(dropped["filename"], ID);
    assert!(dropped["sha256"].is_null());
    let got = get(server.addr, &backup_path(ID), Some(&auth)).await;
    assert_eq!(&got.body[..], b"dropped in");
    assert!(got.header("repr-digest").is_none());
}

#[tokio::test]
async fn list_is_newest_first_and_only_the_callers() {
    let server = Server::start();
    let a = basic("alice", &server.add_system("alice"));
    let b = basic("bob", &server.add_system("bob"));
    let mut ids = Vec::new();
    for i in 0..3u8 {
        let reply = upload(server.addr, Some(&a), vec![i; 10], &[]).await;
        ids.push(json(&reply)["data"]["id"].as_str().unwrap().to_string());
    }
    upload(server.addr, Some(&b), vec![7; 10], &[]).await;
    let list = json(&get(server.addr, "/api/systems/backups", Some(&a)).await);
    let listed: Vec<&str> = list["data"]["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap())
        .collect();
    ids.reverse();
    assert_eq!(listed, ids);
    // Bob cannot delete (or see) Alice's: the same 404 as an absent one.
    let foreign = request(server.addr, Method::DELETE, &backup_path(&ids[0]), Some(&b)).await;
    let absent = request(server.addr, Method::DELETE, &backup_path(ID), Some(&b)).await;
    assert_error(&foreign, 404, NOT_FOUND_BODY);
    assert_eq!(foreign.stable_headers(), absent.stable_headers());
    assert!(server.stored_backups("alice").contains(&ids[0]));
    // Invalid ids are 400 for DELETE too, after auth.
    assert_eq!(
        request(server.addr, Method::DELETE, &backup_path("../x"), Some(&b))
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        request(server.addr, Method::DELETE, &backup_path("../x"), None)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn append_only_refuses_delete() {
    let server = Server::start_with(tempfile::tempdir().unwrap(), &["--append-only"]);
    let auth = basic("fw1", &server.add_system("fw1"));
    let id = json(&upload(server.addr, Some(&auth), b"history".to_vec(), &[]).await)["data"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    for target in [id.as_str(), ID] {
        let reply = request(
            server.addr,
            Method::DELETE,
            &backup_path(target),
            Some(&auth),
        )
        .await;
        assert_error(
            &reply,
            403,
            r#"{"code":403,"message":"append-only","data":{}}"#,
        );
    }
    assert_eq!(
        get(server.addr, &backup_path(&id), Some(&auth))
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn retention_prunes_oldest_first_and_concurrent_uploads_end_consistent() {
    let server = Server::start_with(
        tempfile::tempdir().unwrap(),
        &[
            "--retention-count",
            "3",
            "--retention-bytes",
            "250",
            "--upload-rate-per-minute",
            "0",
            "--upload-rate-per-hour",
            "0",
        ],
    );
    let auth = basic("fw1", &server.add_system("fw1"));
    let mut ids = Vec::new();
    for i in 0..5u8 {
        let reply = upload(server.addr, Some(&auth), vec![i; 50], &[]).await;
        ids.push(json(&reply)["data"]["id"].as_str().unwrap().to_string());
    }
    let mut on_disk: Vec<String> = server.stored_backups("fw1");
    on_disk.sort();
    assert_eq!(on_disk, ids[2..].to_vec());
    // Bytes: a 200-byte upload leaves at most 250 bytes, never removing itself.
    let big = json(&upload(server.addr, Some(&auth), vec![9; 200], &[]).await)["data"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let left: Vec<String> = server.stored_backups("fw1");
    assert_eq!(left, vec![ids[4].clone(), big.clone()]);
    let huge = json(&upload(server.addr, Some(&auth), vec![9; 400], &[]).await)["data"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let left: Vec<String> = server.stored_backups("fw1");
    assert_eq!(left, vec![huge]);

    // Twelve concurrent uploads: exactly three backups remain, each with
    // its sidecar, and no partial file.
    let mut tasks = Vec::new();
    for i in 0..12u8 {
        let (addr, auth) = (server.addr, auth.clone());
        tasks.push(tokio::spawn(async move {
            upload(addr, Some(&auth), vec![i; 60], &[]).await.status
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), StatusCode::CREATED);
    }
    let backups = server.stored_backups("fw1");
    assert_eq!(backups.len(), 3, "{backups:?}");
    if server.s3.is_none() {
        // On the filesystem each has its upload record beside it.
        let names = names_in(&server.storage().join("fw1"));
        let sidecars: Vec<&String> = names.iter().filter(|n| n.ends_with(".meta")).collect();
        assert_eq!(sidecars.len(), 3, "{names:?}");
        assert!(
            backups
                .iter()
                .all(|b| sidecars.contains(&&format!(".{b}.meta"))),
            "{names:?}"
        );
    }
    // Every listed backup carries its record (on S3, from its metadata).
    let list = json(&get(server.addr, "/api/systems/backups", Some(&auth)).await);
    for b in list["data"]["backups"].as_array().unwrap() {
        assert!(b["sha256"].is_string(), "{b}");
    }
    assert_eq!(partials(&server, "fw1"), Vec::<String>::new());
}

#[tokio::test]
async fn ranges_and_validators() {
    let server = Server::start();
    let auth = basic("fw1", &server.add_system("fw1"));
    let data = content(10_000, 3);
    let id = json(&upload(server.addr, Some(&auth), data.clone(), &[]).await)["data"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let path = backup_path(&id);
    let full = get(server.addr, &path, Some(&auth)).await;
    assert_eq!(full.header("accept-ranges"), Some("bytes"));
    let etag = full.header("etag").unwrap().to_string();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
    let last_modified = full.header("last-modified").unwrap().to_string();
    httpdate::parse_http_date(&last_modified).unwrap();

    let with = |headers: Vec<(&'static str, String)>| {
        let (addr, auth, path) = (server.addr, auth.clone(), path.clone());
        async move {
            let io =
                hyper_util::rt::TokioIo::new(tokio::net::TcpStream::connect(addr).await.unwrap());
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            let mut req = hyper::Request::get(path)
                .header("host", "x")
                .header("authorization", auth);
            for (k, v) in headers {
                req = req.header(k, v);
            }
            collect(
                within(
                    STEP,
                    sender.send_request(
                        req.body(http_body_util::Empty::<bytes::Bytes>::new())
                            .unwrap(),
                    ),
                )
                .await
                .unwrap(),
            )
            .await
        }
    };
    let r = with(vec![("range", "bytes=100-199".into())]).await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.header("content-range"), Some("bytes 100-199/10000"));
    assert_eq!(r.header("content-length"), Some("100"));
    assert_eq!(&r.body[..], &data[100..200]);
    let r = with(vec![("range", "bytes=-10".into())]).await;
    assert_eq!(&r.body[..], &data[9990..]);
    assert_eq!(r.header("content-range"), Some("bytes 9990-9999/10000"));
    let r = with(vec![("range", "bytes=9000-".into())]).await;
    assert_eq!(&r.body[..], &data[9000..]);
    let r = with(vec![("range", "bytes=10000-".into())]).await;
    assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r.header("content-range"), Some("bytes */10000"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    // Several ranges: the whole body.
    let r = with(vec![("range", "bytes=0-1,5-6".into())]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body == data);
    // If-Range: a current validator honours the range, a stale one gets 200.
    let r = with(vec![
        ("range", "bytes=0-9".into()),
        ("if-range", etag.clone()),
    ])
    .await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    let r = with(vec![
        ("range", "bytes=0-9".into()),
        ("if-range", last_modified.clone()),
    ])
    .await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    let r = with(vec![
        ("range", "bytes=0-9".into()),
        ("if-range", "\"stale\"".into()),
    ])
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body == data);
    // If-None-Match: 304 with the validators and no body.
    let r = with(vec![("if-none-match", etag.clone())]).await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    assert!(r.body.is_empty());
    assert_eq!(r.header("etag"), Some(etag.as_str()));
    let r = with(vec![("if-none-match", "\"other\"".into())]).await;
    assert_eq!(r.status, StatusCode::OK);
    // HEAD with a range: the 206 headers, no body.
    let r = within(STEP, async {
        let res = open(server.addr, false, Method::HEAD, &path, Some(&auth)).await;
        collect(res).await
    })
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.is_empty());
    if fs_only("replacing a backup's file in place") {
        return;
    }
    // Replacing the file changes the ETag.
    std::fs::write(server.storage().join("fw1").join(&id), b"new content").unwrap();
    let r = get(server.addr, &path, Some(&auth)).await;
    assert_ne!(r.header("etag").unwrap(), etag);
    // The sidecar no longer matches the size: no digest is claimed.
    assert!(r.header("repr-digest").is_none());
}

/// Runs a shell command line, asserting success.
fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (is curl installed?)"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn curl_resumes_an_interrupted_download() {
    let server = Server::start();
    let secret = server.add_system("fw1");
    let data = content(20 << 20, 4);
    let id = json(
        &upload(
            server.addr,
            Some(&basic("fw1", &secret)),
            data.clone(),
            &[("x-filename", "big.tar.zst")],
        )
        .await,
    )["data"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let url = format!("http://{}{}", server.addr, backup_path(&id));
    let work = tempfile::tempdir().unwrap();
    let addr = server.addr;
    let (secret2, url2, data2, work_path) = (
        secret.clone(),
        url.clone(),
        data.clone(),
        work.path().to_path_buf(),
    );
    tokio::task::spawn_blocking(move || {
        let (secret, url, data, work) = (secret2, url2, data2, work_path);
        // curl -C -: an interrupted transfer (the first 7 MiB) is resumed.
        let curl_out = work.join("curl.bin");
        std::fs::write(&curl_out, &data[..7 << 20]).unwrap();
        run(Command::new("curl")
            .args([
                "-sS",
                "--fail",
                "-C",
                "-",
                "--user",
                &format!("fw1:{secret}"),
                "-o",
            ])
            .arg(&curl_out)
            .arg(&url));
        assert!(
            std::fs::read(&curl_out).unwrap() == data,
            "curl -C - result differs"
        );

        // wget -c and aria2c -x4 (one download split over four
        // connections) are checked by .ci/real-clients.sh, which installs
        // them: the README's test command needs only curl beside cargo.
    })
    .await
    .unwrap();
    // curl really resumed with a range: the log shows a 206.
    assert!(
        server.log().contains("status=206"),
        "no ranged request seen"
    );
    let _ = addr;
}

#[tokio::test]
async fn hostile_upload_framing_stores_nothing() {
    let server = Server::start_with(
        tempfile::tempdir().unwrap(),
        &[
            "--upload-rate-per-minute",
            "0",
            "--upload-rate-per-hour",
            "0",
        ],
    );
    let secret = server.add_system("fw1");
    let auth = basic("fw1", &secret);
    let head = |extra: &str| {
        format!(
            "POST /api/systems/backups HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n{extra}\r\n"
        )
    };
    // (request, expected status). hyper rejects broken framing itself with a
    // bare 400 before our handler runs; either way nothing may be stored.
    let cases: Vec<(String, u16)> = vec![
        (head("Content-Length: -1\r\n") + "x", 400),
        (head("Content-Length: +5\r\n") + "hello", 400),
        (head("Content-Length: 99999999999999999999999999\r\n"), 400),
        (
            head("Content-Length: 5\r\nContent-Length: 6\r\n") + "hello!",
            400,
        ),
        (head("Content-Length: 0x10\r\n"), 400),
        // A transfer coding other than chunked last cannot be framed (RFC 9112 6.3).
        (
            head("Transfer-Encoding: xchunked\r\n") + "5\r\nhello\r\n0\r\n\r\n",
            400,
        ),
        // Far over the limit: refused before a byte of body is read.
        (head("Content-Length: 9223372036854775807\r\n"), 413),
    ];
    for (request, want) in &cases {
        let reply = raw(server.addr, request.as_bytes(), Duration::from_secs(2)).await;
        assert_eq!(
            raw_status(&reply),
            Some(*want),
            "{request:?}: {}",
            String::from_utf8_lossy(&reply)
        );
    }
    // Content-Length and Transfer-Encoding together: hyper uses chunked
    // framing and drops Content-Length, so the upload is an empty streamed
    // body and the "smuggled" request after it is parsed as a request of
    // its own, which is not authenticated.
    let smuggle = head("Content-Length: 200\r\nTransfer-Encoding: chunked\r\n")
        + "0\r\n\r\nDELETE /api/systems/backups/"
        + ID
        + " HTTP/1.1\r\nHost: x\r\n\r\n";
    let reply = raw(server.addr, smuggle.as_bytes(), Duration::from_secs(2)).await;
    let text = String::from_utf8_lossy(&reply);
    // hyper closes the connection after such a request: the smuggled one
    // is never read at all.
    assert!(!text.contains("backup deleted"), "{text}");
    assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "{text}");
    assert!(text.starts_with("HTTP/1.1 201"), "{text}");
    assert!(text.contains("connection: close"), "{text}");
    let stored = server.stored_backups("fw1");
    assert_eq!(stored.len(), 1, "{stored:?}");
    let listed = json(&get(server.addr, "/api/systems/backups", Some(&auth)).await);
    assert_eq!(listed["data"]["backups"][0]["size"], 0, "{listed}");
    // The server is fine afterwards.
    assert_eq!(
        upload(server.addr, Some(&auth), b"ok".to_vec(), &[])
            .await
            .status,
        StatusCode::CREATED
    );
}

/// Uploads of a system whose directory does not exist yet, all at once:
/// every one is stored (creating the directory is not a 503 for the ones
/// that lose the race).
#[tokio::test]
async fn concurrent_first_uploads_all_succeed() {
    let server = server_without_upload_limits();
    let auth = basic("fw1", &server.add_system("fw1"));
    std::fs::remove_dir(server.storage().join("fw1")).unwrap();
    let mut tasks = Vec::new();
    for i in 0..8u8 {
        let (addr, auth) = (server.addr, auth.clone());
        tasks.push(tokio::spawn(async move {
            let reply = upload(addr, Some(&auth), vec![i; 1000], &[]).await;
            (reply.status, reply.text())
        }));
    }
    for task in tasks {
        let (status, text) = task.await.unwrap();
        assert_eq!(status, StatusCode::CREATED, "{text}");
    }
    assert_eq!(server.stored_backups("fw1").len(), 8);
}

/// Two overlapping uploads with `--retention-count 1`: the one that
/// started first and finished last is the one kept, and it is the newest by
/// id, so retention never removed a backup newer than one it keeps.
#[tokio::test]
async fn retention_keeps_the_backup_committed_last_and_it_is_the_newest() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = Server::start_with(
        tempfile::tempdir().unwrap(),
        &[
            "--retention-count",
            "1",
            "--upload-rate-per-minute",
            "0",
            "--upload-rate-per-hour",
            "0",
        ],
    );
    let auth = basic("fw1", &server.add_system("fw1"));
    // A starts first and sends half its body.
    let mut first = within(STEP, tokio::net::TcpStream::connect(server.addr))
        .await
        .unwrap();
    let head = format!(
        "POST /api/systems/backups HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nContent-Length: 2000\r\nConnection: close\r\n\r\n"
    );
    within(STEP, first.write_all(head.as_bytes()))
        .await
        .unwrap();
    within(STEP, first.write_all(&[1u8; 1000])).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // B starts later and finishes first.
    let second = upload(server.addr, Some(&auth), vec![2u8; 1000], &[]).await;
    assert_eq!(second.status, StatusCode::CREATED, "{}", second.text());
    let second_id = json(&second)["data"]["id"].as_str().unwrap().to_owned();
    // A finishes last.
    within(STEP, first.write_all(&[1u8; 1000])).await.unwrap();
    let mut out = Vec::new();
    within(STEP, first.read_to_end(&mut out)).await.unwrap();
    assert_eq!(
        raw_status(&out),
        Some(201),
        "{}",
        String::from_utf8_lossy(&out)
    );
    let body = &out[out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4..];
    let first_json: serde_json::Value = serde_json::from_slice(body).unwrap();
    let first_id = first_json["data"]["id"].as_str().unwrap().to_owned();
    assert!(
        first_id > second_id,
        "the backup committed last must be the newest by id: {first_id} vs {second_id}"
    );
    let list = json(&get(server.addr, "/api/systems/backups", Some(&auth)).await);
    let kept: Vec<&str> = list["data"]["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap())
        .collect();
    assert_eq!(kept, vec![first_id.as_str()]);
    assert_eq!(
        &get(server.addr, &backup_path(&first_id), Some(&auth))
            .await
            .body[..],
        &[1u8; 2000][..]
    );
}

/// A quota and retention compose: an upload that fits once retention has
/// made room is accepted, both when admitted and when committed.
#[tokio::test]
async fn an_upload_that_fits_after_retention_is_within_the_quota() {
    let server = Server::start_with(
        tempfile::tempdir().unwrap(),
        &[
            "--quota-bytes",
            "100",
            "--retention-count",
            "1",
            "--upload-rate-per-minute",
            "0",
            "--upload-rate-per-hour",
            "0",
        ],
    );
    let auth = basic("fw1", &server.add_system("fw1"));
    for round in 0..3u8 {
        let reply = upload(server.addr, Some(&auth), vec![round; 80], &[]).await;
        assert_eq!(
            reply.status,
            StatusCode::CREATED,
            "round {round}: {}",
            reply.text()
        );
    }
    // Still a real quota: a single backup over it is refused.
    let reply = upload(server.addr, Some(&auth), vec![9; 101], &[]).await;
    assert_eq!(
        reply.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        reply.text()
    );
    assert_eq!(
        reply.text(),
        r#"{"code":413,"message":"backup quota exceeded","data":{}}"#
    );
    let list = json(&get(server.addr, "/api/systems/backups", Some(&auth)).await);
    assert_eq!(list["data"]["backups"].as_array().unwrap().len(), 1);
}

/// A download carries the name the system uploaded it under
/// (`Content-Disposition`, RFC 6266), so `curl -OJ` restores it under that
/// name; a record edited by hand cannot put anything else in the header.
#[tokio::test]
async fn curl_oj_restores_under_the_uploaded_name() {
    let server = Server::start();
    let secret = server.add_system("fw1");
    let auth = basic("fw1", &secret);
    let reply = upload(
        server.addr,
        Some(&auth),
        b"restore me".to_vec(),
        &[("x-filename", "/var/backups/fw1 nightly.tar.gz")],
    )
    .await;
    let id = json(&reply)["data"]["id"].as_str().unwrap().to_owned();
    let got = get(server.addr, &backup_path(&id), Some(&auth)).await;
    assert_eq!(
        got.header("content-disposition"),
        Some("attachment; filename=\"fw1_nightly.tar.gz\"; filename*=UTF-8''fw1_nightly.tar.gz")
    );
    let work = tempfile::tempdir().unwrap();
    let url = format!("http://{}{}", server.addr, backup_path(&id));
    let out = Command::new("curl")
        .args([
            "-sS",
            "--fail",
            "-OJ",
            "--user",
            &format!("fw1:{secret}"),
            &url,
        ])
        .current_dir(work.path())
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(work.path().join("fw1_nightly.tar.gz")).unwrap(),
        b"restore me"
    );
    if fs_only("a record edited by hand") {
        return;
    }
    // A record edited by hand: only the safe characters reach the header.
    let record = server.storage().join("fw1").join(format!(".{id}.meta"));
    let text = std::fs::read_to_string(&record).unwrap();
    let edited = text.replace("fw1_nightly.tar.gz", "evil\\\"\\r\\nSet-Cookie: x=1");
    assert_ne!(edited, text);
    std::fs::write(&record, edited).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(11_000)).await;
    let got = get(server.addr, &backup_path(&id), Some(&auth)).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(
        got.header("content-disposition"),
        Some("attachment; filename=\"evilSet-Cookiex1\"; filename*=UTF-8''evilSet-Cookiex1")
    );
}

/// Above `--s3-single-put-max` an upload goes to the object store as a
/// multipart upload (8 MiB signed parts) and is committed by part copies
/// (5 MiB here); on the filesystem the flag changes nothing. Either way
/// the backup is stored whole, and a cut or mismatched upload of that size
/// leaves nothing: no object, no record, no multipart upload in progress.
#[tokio::test]
async fn an_upload_above_the_single_put_limit_is_stored_whole_or_not_at_all() {
    let server = Server::start_with(
        tempfile::tempdir().unwrap(),
        &["--s3-single-put-max", "5242880"],
    );
    let secret = server.add_system("fw1");
    let auth = basic("fw1", &secret);
    let data = content((20 << 20) + 12_345, 9);
    let digest = format!("sha-256=:{}:", sha256_b64(&data));
    let reply = upload(
        server.addr,
        Some(&auth),
        data.clone(),
        &[("content-digest", &digest), ("x-filename", "big.tar.gz")],
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    let id = json(&reply)["data"]["id"].as_str().unwrap().to_string();
    assert_eq!(json(&reply)["data"]["sha256"], sha256_hex(&data));
    let whole = get(server.addr, &backup_path(&id), Some(&auth)).await;
    assert_eq!(whole.status, StatusCode::OK);
    assert!(whole.body == data, "the backup came back different");
    // A range across the first part boundary (8 MiB) and a copy boundary
    // (5 MiB, 10 MiB).
    let url = format!("http://{}{}", server.addr, backup_path(&id));
    let out = Command::new("curl")
        .args(["-sS", "--fail", "--user", &format!("fw1:{secret}")])
        .args(["-r", "5000000-11000000", &url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stdout == data[5_000_000..=11_000_000],
        "the range came back different"
    );
    assert_eq!(server.stored_backups("fw1"), vec![id.clone()]);
    assert_eq!(partials(&server, "fw1"), Vec::<String>::new());
    assert_eq!(server.multipart_uploads(), Vec::<String>::new());

    // Cut after two parts' worth: nothing of it stays.
    {
        use tokio::io::AsyncWriteExt;
        let mut stream = within(STEP, tokio::net::TcpStream::connect(server.addr))
            .await
            .unwrap();
        let head = format!(
            "POST /api/systems/backups HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nContent-Length: {}\r\n\r\n",
            data.len()
        );
        within(STEP, stream.write_all(head.as_bytes()))
            .await
            .unwrap();
        within(STEP, stream.write_all(&data[..18 << 20]))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // A mismatched digest: 400.
    let wrong = format!("sha-256=:{}:", sha256_b64(b"other"));
    let reply = upload(
        server.addr,
        Some(&auth),
        data.clone(),
        &[("content-digest", &wrong)],
    )
    .await;
    assert_error(
        &reply,
        400,
        r#"{"code":400,"message":"checksum mismatch","data":{}}"#,
    );
    let start = std::time::Instant::now();
    loop {
        let left = (
            server.stored_backups("fw1"),
            partials(&server, "fw1"),
            server.multipart_uploads(),
        );
        let only_the_backup = left.0 == vec![id.clone()] && left.1.is_empty() && left.2.is_empty();
        if only_the_backup {
            break;
        }
        assert!(start.elapsed() < STEP, "left behind: {left:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Uploads are copied into chunks of 512 KiB (`WRITE_CHUNK_BYTES`) written
/// with O_DIRECT while they are whole and aligned, the rest through the
/// page cache: every length around those boundaries comes back byte for
/// byte, with the right SHA-256.
#[tokio::test]
async fn uploads_of_every_length_around_the_chunk_and_block_sizes_come_back_whole() {
    let server = server_without_upload_limits();
    let secret = server.add_system("fw1");
    uploads_of_every_length_come_back_whole(&server, &basic("fw1", &secret)).await;
    assert_eq!(partials(&server, "fw1"), Vec::<String>::new());
}

/// Uploads of lengths around the chunk (512 KiB) and block (4 KiB) sizes,
/// from nothing to three chunks and a block: each answers 201 with its
/// length and SHA-256 and downloads byte for byte.
async fn uploads_of_every_length_come_back_whole(server: &Server, auth: &str) {
    let chunk = 512 << 10;
    for (n, len) in [
        0,
        1,
        4095,
        4096,
        4097,
        chunk - 1,
        chunk,
        chunk + 1,
        2 * chunk + 4096,
        3 * chunk + 4097,
    ]
    .into_iter()
    .enumerate()
    {
        let data = content(len, n as u32);
        let reply = upload(
            server.addr,
            Some(auth),
            data.clone(),
            &[(
                "content-digest",
                &format!("sha-256=:{}:", sha256_b64(&data)),
            )],
        )
        .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{len}: {}", reply.text());
        let info = &json(&reply)["data"];
        assert_eq!(info["size"], len, "{len}");
        assert_eq!(info["sha256"], sha256_hex(&data), "{len}");
        let id = info["id"].as_str().unwrap();
        let got = get(server.addr, &backup_path(id), Some(auth)).await;
        assert_eq!(got.status, StatusCode::OK, "{len}");
        assert!(got.body == data, "{len}: the body differs");
    }
}

#[tokio::test]
async fn uploads_to_a_filesystem_without_direct_io_come_back_whole() {
    // ramfs refuses O_DIRECT (EINVAL when it is asked for), so every chunk
    // takes the page-cache path that full chunks skip everywhere else.
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("ram");
    std::fs::create_dir(&mnt).unwrap();
    let _unmount = mount(&["-t", "ramfs", "ramfs"], &mnt);
    {
        use std::os::unix::fs::OpenOptionsExt;
        let refused = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .custom_flags(libc::O_DIRECT)
            .open(mnt.join("probe"));
        assert!(
            refused.is_err(),
            "ramfs took O_DIRECT: this test proves nothing here"
        );
        let _ = std::fs::remove_file(mnt.join("probe"));
    }
    let (code, secret, err) = cli(
        dir.path(),
        &["systems", "add", "fw1", "--storage", mnt.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{err}");
    let server = server_without_upload_limits_in(dir, &["--storage", mnt.to_str().unwrap()]);
    uploads_of_every_length_come_back_whole(&server, &basic("fw1", secret.trim_end())).await;
    let left: Vec<String> = names_in(&mnt.join("fw1"))
        .into_iter()
        .filter(|n| n.starts_with(".upload-"))
        .collect();
    assert_eq!(left, Vec::<String>::new());
}
