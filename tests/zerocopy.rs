//! Zero-copy downloads (`sendfile` under hyper's framing): used for plain
//! HTTP/1.1 and nowhere else, byte-exact, and in order when one connection
//! pipelines requests of different systems.
//!
//! This file is the gate for upgrading hyper (pinned to one minor version
//! in Cargo.toml): zero-copy is only safe while hyper passes a queued
//! frame's slice through to `poll_write_vectored` unchanged, and these
//! tests fail (different bytes, an aborted or reordered response, a zero
//! count of bytes sent with `sendfile`) if it copies, splits or reorders it.

mod common;

use common::*;
use hyper::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Whether this kernel has `cachestat` (6.5), without which every download
/// is copied and the counter stays at zero.
fn kernel_has_cachestat() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major: u32 = parts.next().unwrap().parse().unwrap();
    let minor: u32 = parts.next().unwrap().parse().unwrap();
    (major, minor) >= (6, 5)
}

async fn zero_copy_bytes(admin: std::net::SocketAddr) -> u64 {
    let text = get(admin, "/metrics", None).await.text();
    let line = text
        .lines()
        .find(|l| l.starts_with("backupd_sent_zero_copy_bytes_total "))
        .expect("the zero-copy counter is exported");
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

fn random(len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    getrandom::fill(&mut bytes).unwrap();
    bytes
}

/// Reads `count` responses to pipelined requests; returns (status, body).
async fn read_responses(stream: &mut TcpStream, count: usize) -> Vec<(u16, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let mut chunk = vec![0u8; 1 << 16];
    while out.len() < count {
        let parsed = buf
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .and_then(|end| {
                let head = std::str::from_utf8(&buf[..end])
                    .unwrap()
                    .to_ascii_lowercase();
                let status: u16 = head[9..12].parse().unwrap();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .unwrap()
                    .trim()
                    .parse()
                    .unwrap();
                (buf.len() >= end + 4 + len)
                    .then(|| (end + 4 + len, status, buf[end + 4..end + 4 + len].to_vec()))
            });
        if let Some((used, status, body)) = parsed {
            out.push((status, body));
            buf.drain(..used);
            continue;
        }
        let n = within(STEP, stream.read(&mut chunk)).await.unwrap();
        assert!(n > 0, "closed after {} of {count} responses", out.len());
        buf.extend_from_slice(&chunk[..n]);
    }
    assert!(
        buf.is_empty(),
        "{} bytes after the last response",
        buf.len()
    );
    out
}

#[tokio::test]
async fn plain_http1_downloads_are_sent_zero_copy_byte_exact_and_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(dir, &["--admin-listen", "127.0.0.1:0"]);
    let admin = admin_addr(&server);
    let alice = basic("alice", &server.add_system("alice"));
    let bob = basic("bob", &server.add_system("bob"));
    // Sizes that are not multiples of a chunk or a page; the same id for
    // both systems, different bytes.
    let alice_bytes = random((1 << 20) + 4321);
    let bob_bytes = random(300 * 1024 + 7);
    server.put("alice", ID, &alice_bytes);
    server.put("bob", ID, &bob_bytes);
    let path = backup_path(ID);
    let before = zero_copy_bytes(admin).await;

    // One request per connection.
    let reply = get(server.addr, &path, Some(&alice)).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.body == alice_bytes, "alice's body differs");
    let mut expected = alice_bytes.len();

    // Pipelined on one connection: alice, bob, a range of alice's, alice
    // again; every body must be its own system's bytes, in order.
    let mut stream = within(STEP, TcpStream::connect(server.addr)).await.unwrap();
    let get = |auth: &str, range: Option<&str>| {
        let range = range.map(|r| format!("Range: {r}\r\n")).unwrap_or_default();
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n{range}\r\n")
    };
    let batch = [
        get(&alice, None),
        get(&bob, None),
        get(&alice, Some("bytes=200000-900000")),
        get(&alice, None),
    ]
    .concat();
    within(STEP, stream.write_all(batch.as_bytes()))
        .await
        .unwrap();
    let responses = read_responses(&mut stream, 4).await;
    assert_eq!(responses[0].0, 200);
    assert!(responses[0].1 == alice_bytes, "pipelined alice differs");
    assert_eq!(responses[1].0, 200);
    assert!(responses[1].1 == bob_bytes, "pipelined bob differs");
    assert_eq!(responses[2].0, 206);
    assert!(
        responses[2].1 == alice_bytes[200000..=900000],
        "range differs"
    );
    assert_eq!(responses[3].0, 200);
    assert!(responses[3].1 == alice_bytes, "second alice differs");
    expected += 2 * alice_bytes.len() + bob_bytes.len() + 700001;

    // The files were just written, so every page was cached: every byte
    // went through sendfile (or none, on a kernel without cachestat).
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let sent = zero_copy_bytes(admin).await - before;
    if kernel_has_cachestat() {
        assert_eq!(sent, expected as u64);
    } else {
        assert_eq!(sent, 0);
    }

    // HTTP/2 frames its own data: never zero-copy, still byte-exact.
    let reply = get_h2(server.addr, &path, Some(&bob)).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.body == bob_bytes, "HTTP/2 body differs");
    assert_eq!(zero_copy_bytes(admin).await - before, sent);
}

/// Makes `cachestat` (451 on x86_64 and aarch64 alike) fail with EPERM in
/// the server, as a seccomp filter that does not know the call does
/// (systemd 252's `SystemCallFilter=`).
fn deny_cachestat(command: &mut std::process::Command) {
    deny_syscalls(command, &[451]);
}

#[tokio::test]
async fn without_cachestat_downloads_are_copied_and_the_log_says_so_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = serve_command(
        std::process::Command::new(bin()),
        dir.path(),
        &["--admin-listen", "127.0.0.1:0"],
    );
    deny_cachestat(&mut command);
    let server = Server::launch(dir, command).unwrap_or_else(|log| panic!("{log}"));
    let admin = admin_addr(&server);
    let auth = basic("fw1", &server.add_system("fw1"));
    let bytes = random((1 << 20) + 99);
    server.put("fw1", ID, &bytes);
    for _ in 0..3 {
        let reply = get(server.addr, &backup_path(ID), Some(&auth)).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert!(reply.body == bytes, "copied body differs");
    }
    assert_eq!(zero_copy_bytes(admin).await, 0);
    assert!(server.wait_for_log("cachestat unavailable", std::time::Duration::from_secs(2)));
    assert_eq!(
        server.count_log("cachestat unavailable"),
        1,
        "{}",
        server.log()
    );
}
