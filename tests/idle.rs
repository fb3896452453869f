//! Idle connections are closed whatever control traffic they carry: an
//! HTTP/2 client that only answers PINGs, or whose stream never reads, must
//! not hold a connection slot (a denial of service without credentials),
//! on the public listener and the admin one.

mod common;

use std::time::{Duration, Instant};

use common::*;
use hyper::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The idle time the servers here run with (`--idle-timeout`).
const IDLE: Duration = Duration::from_secs(2);
/// What the close may take beyond it: the GOAWAY pause and scheduling.
const MARGIN: Duration = Duration::from_secs(3);

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A literal header field without indexing, new name, no Huffman (RFC 7541).
fn literal(name: &str, value: &str) -> Vec<u8> {
    assert!(name.len() < 127 && value.len() < 127);
    let mut out = vec![0, name.len() as u8];
    out.extend_from_slice(name.as_bytes());
    out.push(value.len() as u8);
    out.extend_from_slice(value.as_bytes());
    out
}

/// What a raw HTTP/2 client saw before the server closed the connection.
struct Seen {
    /// Time from the connection's start to its close by the server.
    closed_after: Duration,
    goaway: bool,
    pings_answered: usize,
    data_bytes: usize,
}

/// Speaks just enough HTTP/2 to stay "alive" forever: the preface,
/// SETTINGS, a PING of its own every 500 ms, an ACK for every PING and
/// SETTINGS; optionally one GET whose DATA it never acknowledges with a
/// WINDOW_UPDATE. Runs until the server closes (at most 30 s).
async fn h2_squatter(addr: std::net::SocketAddr, get: Option<(&str, &str)>) -> Seen {
    let start = Instant::now();
    let mut stream = within(STEP, TcpStream::connect(addr)).await.unwrap();
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(0x4, 0, 0, &[]));
    if let Some((path, auth)) = get {
        let mut block = Vec::new();
        block.extend(literal(":method", "GET"));
        block.extend(literal(":scheme", "http"));
        block.extend(literal(":path", path));
        block.extend(literal(":authority", "backupd.test"));
        block.extend(literal("authorization", auth));
        // HEADERS, END_STREAM | END_HEADERS, stream 1.
        hello.extend(frame(0x1, 0x5, 1, &block));
    }
    stream.write_all(&hello).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    let writer = tokio::spawn(async move {
        let mut ping = tokio::time::interval(Duration::from_millis(500));
        let mut n = 0u64;
        loop {
            tokio::select! {
                _ = ping.tick() => {
                    n += 1;
                    if write.write_all(&frame(0x6, 0, 0, &n.to_be_bytes())).await.is_err() {
                        return;
                    }
                }
                out = rx.recv() => match out {
                    Some(bytes) => if write.write_all(&bytes).await.is_err() { return },
                    None => return,
                },
            }
        }
    });
    let mut seen = Seen {
        closed_after: Duration::ZERO,
        goaway: false,
        pings_answered: 0,
        data_bytes: 0,
    };
    let read_all = async {
        loop {
            let mut head = [0u8; 9];
            if read.read_exact(&mut head).await.is_err() {
                return;
            }
            let len =
                (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
            let mut payload = vec![0u8; len];
            if read.read_exact(&mut payload).await.is_err() {
                return;
            }
            match (head[3], head[4] & 1) {
                (0x4, 0) => {
                    let _ = tx.send(frame(0x4, 1, 0, &[]));
                }
                (0x6, 0) => {
                    seen.pings_answered += 1;
                    let _ = tx.send(frame(0x6, 1, 0, &payload));
                }
                (0x7, _) => seen.goaway = true,
                (0x0, _) => seen.data_bytes += len,
                _ => {}
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(30), read_all).await;
    seen.closed_after = start.elapsed();
    writer.abort();
    seen
}

fn assert_closed_in_time(what: &str, seen: &Seen) {
    assert!(
        seen.closed_after < IDLE + MARGIN,
        "{what}: still open after {:?}",
        seen.closed_after
    );
    assert!(
        seen.closed_after >= IDLE - Duration::from_millis(200),
        "{what}: closed after {:?}, before the idle time",
        seen.closed_after
    );
    assert!(seen.goaway, "{what}: no GOAWAY before the close");
}

#[tokio::test]
async fn an_http2_connection_that_only_answers_pings_is_closed_when_idle() {
    let server = Server::start_with(
        tempfile::tempdir().unwrap(),
        &[
            "--idle-timeout",
            "2",
            "--max-connections",
            "1",
            "--admin-listen",
            "127.0.0.1:0",
        ],
    );
    let admin = admin_addr(&server);
    let auth = basic("fw1", &server.add_system("fw1"));
    server.put("fw1", ID, b"served");
    // The squatter takes the only slot; a normal client waits in the
    // backlog and is served once the squatter is closed.
    let addr = server.addr;
    let squatter = tokio::spawn(async move { h2_squatter(addr, None).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let reply = tokio::time::timeout(
        IDLE + MARGIN,
        get(server.addr, &backup_path(ID), Some(&auth)),
    )
    .await
    .expect("a normal client was never served while the squatter held the slot");
    assert_eq!(reply.status, StatusCode::OK);
    assert!(started.elapsed() < IDLE + MARGIN);
    let seen = squatter.await.unwrap();
    assert_closed_in_time("public listener", &seen);

    // The admin listener: the same rule.
    let seen = h2_squatter(admin, None).await;
    assert_closed_in_time("admin listener", &seen);
}

#[tokio::test]
async fn an_http2_stream_whose_reader_stalls_is_closed_when_idle() {
    let server = Server::start_with(tempfile::tempdir().unwrap(), &["--idle-timeout", "2"]);
    let secret = server.add_system("fw1");
    server.put("fw1", ID, &vec![7u8; 1 << 20]);
    let path = backup_path(ID);
    let auth = basic("fw1", &secret);
    let seen = h2_squatter(server.addr, Some((&path, &auth))).await;
    // It got the first window's worth, then stalled: no WINDOW_UPDATE.
    assert!(
        seen.data_bytes > 0 && seen.data_bytes < 1 << 20,
        "{}",
        seen.data_bytes
    );
    assert_closed_in_time("stalled stream", &seen);
    // A request that stalls like this is logged as incomplete.
    assert!(
        server.wait_for_log("complete=false", Duration::from_secs(2)),
        "{}",
        server.log()
    );
}

#[tokio::test]
async fn a_busy_http2_connection_is_not_idle() {
    // Requests every half idle time keep an HTTP/2 connection open.
    let server = Server::start_with(tempfile::tempdir().unwrap(), &["--idle-timeout", "2"]);
    let auth = basic("fw1", &server.add_system("fw1"));
    server.put("fw1", ID, b"again and again");
    let io =
        hyper_util::rt::TokioIo::new(within(STEP, TcpStream::connect(server.addr)).await.unwrap());
    let (mut sender, conn) = within(
        STEP,
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let start = Instant::now();
    while start.elapsed() < IDLE * 3 {
        let req = hyper::Request::get(format!("http://b{}", backup_path(ID)))
            .header("authorization", &auth)
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        within(STEP, sender.ready()).await.unwrap();
        let res = within(STEP, sender.send_request(req)).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        collect(res).await;
        tokio::time::sleep(IDLE / 2).await;
    }
}

/// A download is logged complete only if every byte was written out. Here
/// a raw HTTP/2 client never opens its flow-control window beyond the
/// initial 65,535 bytes, reads what that admits of a 150,000-byte backup
/// (one frame, which hyper takes whole into its buffers) and closes: the
/// request line says complete=false and counts at most what was sent.
#[tokio::test]
async fn a_download_cut_short_is_logged_with_the_bytes_written_out() {
    let server = Server::start_with(tempfile::tempdir().unwrap(), &["--log-format", "json"]);
    let secret = server.add_system("fw1");
    server.put("fw1", ID, &vec![3u8; 150_000]);
    let mut stream = within(STEP, TcpStream::connect(server.addr)).await.unwrap();
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(0x4, 0, 0, &[]));
    let mut block = Vec::new();
    block.extend(literal(":method", "GET"));
    block.extend(literal(":scheme", "http"));
    block.extend(literal(":path", &backup_path(ID)));
    block.extend(literal(":authority", "backupd.test"));
    block.extend(literal("authorization", &basic("fw1", &secret)));
    hello.extend(frame(0x1, 0x5, 1, &block));
    within(STEP, stream.write_all(&hello)).await.unwrap();
    let mut data = 0usize;
    within(STEP, async {
        while data < 65_535 {
            let mut head = [0u8; 9];
            stream.read_exact(&mut head).await.unwrap();
            let len =
                (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
            let mut payload = vec![0u8; len];
            stream.read_exact(&mut payload).await.unwrap();
            match (head[3], head[4] & 1) {
                (0x4, 0) => stream.write_all(&frame(0x4, 1, 0, &[])).await.unwrap(),
                (0x0, _) => data += len,
                _ => {}
            }
        }
    })
    .await;
    // All but the last part arrived; the client goes away.
    drop(stream);
    assert!(
        server.wait_for_log("\"status\":200", Duration::from_secs(5)),
        "{}",
        server.log()
    );
    let log = server.log();
    let line: serde_json::Value = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["message"] == "request" && l["status"] == 200)
        .unwrap();
    assert_eq!(line["complete"], false, "{line}");
    let bytes = line["bytes"].as_u64().unwrap();
    assert!(
        bytes <= 65_535,
        "{bytes} counted of 65,535 the window let out: {line}"
    );
}
