//! The streaming body's paths, byte for byte: chunks wholly in the page
//! cache (read inline), wholly out of it (read on the blocking pool), and
//! half in, over HTTP/1.1 and HTTP/2 (where hyper may hold a frame longer).

mod common;

use std::os::unix::fs::FileExt;

use common::*;
use hyper::StatusCode;

/// A sparse file whose written stretches are in the page cache and whose
/// holes are not (a hole is read from "disk" the first time): every chunk
/// boundary case at once. Returns the expected bytes.
fn mixed_cache_file(path: &std::path::Path) -> Vec<u8> {
    let len: usize = (3 << 20) + 12_345;
    let mut expected = vec![0u8; len];
    let file = std::fs::File::create(path).unwrap();
    file.set_len(len as u64).unwrap();
    // Stretches that start and end mid-chunk, and one reaching the end.
    for (start, end) in [
        (0, 100_000),
        (300_000, 700_000),
        (1 << 20, (1 << 20) + 4096),
        (2_500_000, len),
    ] {
        let bytes: Vec<u8> = (start..end).map(|i| (i % 251) as u8).collect();
        file.write_at(&bytes, start as u64).unwrap();
        expected[start..end].copy_from_slice(&bytes);
    }
    expected
}

#[tokio::test]
async fn chunks_in_and_out_of_the_page_cache_stream_exactly_over_http1() {
    let server = Server::start();
    let secret = server.add_system("fw1");
    let expected = mixed_cache_file(&server.storage().join("fw1").join(ID));
    let reply = get(server.addr, &backup_path(ID), Some(&basic("fw1", &secret))).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body.len(), expected.len());
    assert!(reply.body[..] == expected[..], "body differs");
    assert!(server.wait_for_log("complete=true", STEP));
}

#[tokio::test]
async fn chunks_in_and_out_of_the_page_cache_stream_exactly_over_http2() {
    let server = Server::start();
    let secret = server.add_system("fw1");
    let expected = mixed_cache_file(&server.storage().join("fw1").join(ID));
    let reply = get_h2(server.addr, &backup_path(ID), Some(&basic("fw1", &secret))).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body.len(), expected.len());
    assert!(reply.body[..] == expected[..], "body differs");
    assert!(server.wait_for_log("complete=true", STEP));
}
