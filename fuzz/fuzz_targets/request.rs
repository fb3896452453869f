//! The whole request handler: arbitrary method, path, headers and
//! credentials go through `backupd::http::routes::handle` against a real store
//! with two systems and planted traps.
//!
//! Invariants:
//! - no panic;
//! - 200 only for GET/HEAD of an existing regular file of the system whose
//!   credentials were presented, with exactly its bytes (HEAD: none, and the
//!   right Content-Length);
//! - GET with the right credentials and exactly the right path is a 200
//!   (so the oracle above is not vacuous);
//! - never a 5xx: the storage is healthy throughout.
//!
//! The store lives in a temporary directory created once per process
//! (`/tmp/backupd-fuzz-request-<pid>`), left behind when libFuzzer exits.
#![no_main]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use backupd::auth::parse_basic;
use backupd::auth::credentials::{CredentialStore, CredentialsFile};
use backupd::config::Policy;
use backupd::http::routes::{self, BACKUPS_PATH, BACKUP_PREFIX};
use backupd::service::App;
use backupd::storage::Storage;
use backupd::sandbox::DirPath;
use backupd::storage::fs::FsStore;
use backupd::systems::{self, Locations};
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, Request};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

const ALICE_ID: &str = "01934fab-bc33-7890-a1b2-c3d4e5f6a7b8.tar.gz";
const BOB_ID: &str = "01934fab-bc33-7890-a1b2-c3d4e5f6a7b9.gpg";
const SHARED_ID: &str = "01934fab-bc33-7890-a1b2-c3d4e5f6a7ba.bin";

struct Fixture {
    app: Arc<App>,
    runtime: tokio::runtime::Runtime,
    /// (system, secret), both registered.
    systems: Vec<(String, String)>,
    /// (system, id, bytes): the regular files a system may get.
    files: Vec<(String, String, Vec<u8>)>,
    /// Ids in alice's directory that are traps (never a 200).
    traps: Vec<String>,
}

fn trap(n: u8) -> String {
    format!("01934fab-bc33-7890-a1b2-c3d4e5f6a{n:03x}.tar.gz")
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = PathBuf::from(format!("/tmp/backupd-fuzz-request-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let locations = Locations {
            credentials: dir.join("credentials"),
            storage: dir.join("backups"),
            create_storage: true,
            s3: Default::default(),
        };
        let mut systems_ = Vec::new();
        for name in ["alice", "bob"] {
            let secret = systems::add(&locations, name, false).unwrap();
            systems_.push((name.to_string(), secret));
        }
        let storage = &locations.storage;
        let alice = storage.join("alice");
        let bob = storage.join("bob");
        let files = vec![
            (
                "alice".to_string(),
                ALICE_ID.to_string(),
                b"alice's backup".to_vec(),
            ),
            (
                "alice".to_string(),
                SHARED_ID.to_string(),
                b"alice's other".to_vec(),
            ),
            (
                "bob".to_string(),
                BOB_ID.to_string(),
                b"bob's backup".to_vec(),
            ),
            (
                "bob".to_string(),
                SHARED_ID.to_string(),
                b"bob's other".to_vec(),
            ),
        ];
        for (system, id, bytes) in &files {
            std::fs::write(storage.join(system).join(id), bytes).unwrap();
        }
        std::fs::write(storage.join(ALICE_ID), b"root-level file").unwrap();
        std::fs::write(dir.join(BOB_ID), b"next to credentials").unwrap();
        let link =
            |target: &Path, n: u8| std::os::unix::fs::symlink(target, alice.join(trap(n))).unwrap();
        link(Path::new("/etc/passwd"), 1);
        link(&bob.join(BOB_ID), 2);
        link(Path::new(&format!("../bob/{BOB_ID}")), 3);
        link(Path::new(ALICE_ID), 4);
        link(&bob, 5);
        link(&dir.join("credentials"), 6);
        std::fs::create_dir(alice.join(trap(7))).unwrap();
        let fifo = std::process::Command::new("mkfifo")
            .arg(alice.join(trap(8)))
            .status()
            .unwrap();
        assert!(fifo.success());
        let traps = (1..=8).map(trap).collect();

        let credentials =
            CredentialStore::open(CredentialsFile::new(&locations.credentials).unwrap()).unwrap();
        let store = FsStore::new(DirPath::new(storage), false);
        store.refresh();
        assert!(store.is_available());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        Fixture {
            // Append-only, so a fuzzed DELETE cannot remove the fixture's
            // files; uploads are capped at 0 bytes and rate-limited, so the
            // store grows by at most a few empty backups a minute.
            app: Arc::new(App::new(
                credentials,
                Storage::Fs(store),
                Policy { append_only: true, max_upload_bytes: 0, ..Policy::default() },
            )),
            runtime,
            systems: systems_,
            files,
            traps,
        }
    })
}

/// A request built from fuzz input, plus what the oracle needs to know.
struct Built {
    request: Request<Empty<Bytes>>,
}

const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "TRACE", "get", "PATCH",
];
const FRAGMENTS: &[&str] = &[
    "..",
    "/",
    "%2f",
    "%2e",
    ".",
    "\\",
    "%00",
    "%5c",
    "?",
    "#",
    "bob",
    "alice",
    "%c0%ae",
    "%EF%BC%8E",
    "//",
    ".tar.gz",
    ".gpg",
    ".bin",
    "01934fab-bc33-7890-a1b2-c3d4e5f6a7b8",
    "A",
    "%",
    "%25",
];

fn pick<'a>(u: &mut Unstructured<'_>, from: &[&'a str]) -> Result<&'a str> {
    Ok(from[u.choose_index(from.len())?])
}

fn build(u: &mut Unstructured<'_>, f: &Fixture) -> Result<Option<Built>> {
    let method = if u.ratio(1, 8)? {
        let raw: &[u8] = u.arbitrary()?;
        match Method::from_bytes(raw) {
            Ok(m) => m,
            Err(_) => return Ok(None),
        }
    } else {
        Method::from_bytes(pick(u, METHODS)?.as_bytes()).unwrap()
    };

    // The path: a known id (a real file, a foreign one, a trap), pieces of
    // traversal glued together, or raw text, usually under the route.
    let known: Vec<String> = f
        .files
        .iter()
        .map(|(_, id, _)| id.clone())
        .chain(f.traps.iter().cloned())
        .collect();
    let mut path = String::new();
    if !u.ratio(1, 10)? {
        path.push_str(BACKUP_PREFIX);
    }
    match u.int_in_range(0..=3u8)? {
        0 => path.push_str(&known[u.choose_index(known.len())?]),
        1 => {
            for _ in 0..u.int_in_range(0..=6u8)? {
                path.push_str(pick(u, FRAGMENTS)?);
            }
        }
        2 => {
            path.push_str(&known[u.choose_index(known.len())?]);
            path.push_str(pick(u, FRAGMENTS)?);
        }
        _ => path.push_str(u.arbitrary::<&str>()?),
    }
    if !path.starts_with('/') && u.ratio(1, 2)? {
        path.insert(0, '/');
    }

    let mut builder = Request::builder().method(method).uri(path.as_str());
    // Credentials: right, wrong, swapped, mangled, raw, repeated.
    for _ in 0..u.int_in_range(0..=2u8)? {
        let (system, secret) = &f.systems[u.choose_index(f.systems.len())?];
        let value: Vec<u8> = match u.int_in_range(0..=5u8)? {
            0 | 1 => basic(system.as_bytes(), secret.as_bytes()),
            2 => {
                let (other, _) = &f.systems[u.choose_index(f.systems.len())?];
                basic(other.as_bytes(), secret.as_bytes())
            }
            3 => {
                let mut s = secret.clone().into_bytes();
                let i = u.choose_index(s.len())?;
                s[i] ^= u.int_in_range(1..=255u8)?;
                basic(system.as_bytes(), &s)
            }
            4 => {
                let user: &[u8] = u.arbitrary()?;
                let pass: &[u8] = u.arbitrary()?;
                basic(user, pass)
            }
            _ => u.arbitrary::<&[u8]>()?.to_vec(),
        };
        let Ok(value) = HeaderValue::from_bytes(&value) else {
            return Ok(None);
        };
        builder = builder.header(hyper::header::AUTHORIZATION, value);
    }
    for _ in 0..u.int_in_range(0..=3u8)? {
        let name: &[u8] = u.arbitrary()?;
        let value: &[u8] = u.arbitrary()?;
        let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        else {
            return Ok(None);
        };
        builder = builder.header(name, value);
    }
    // An invalid URI never reaches the handler: hyper refuses it first.
    Ok(builder
        .body(Empty::new())
        .ok()
        .map(|request| Built { request }))
}

fn basic(user: &[u8], pass: &[u8]) -> Vec<u8> {
    let mut pair = user.to_vec();
    pair.push(b':');
    pair.extend_from_slice(pass);
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
    .into_bytes()
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let mut u = Unstructured::new(data);
    let Ok(Some(Built { request })) = build(&mut u, f) else {
        return;
    };

    // What the oracle expects, computed from the request alone.
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let auths: Vec<Vec<u8>> = request
        .headers()
        .get_all(hyper::header::AUTHORIZATION)
        .iter()
        .map(|v| v.as_bytes().to_vec())
        .collect();
    // The one system these credentials are exactly right for, if any.
    let authenticated: Option<&str> = match auths.as_slice() {
        [one] => parse_basic(one).ok().and_then(|c| {
            f.systems
                .iter()
                .find(|(s, secret)| c.user == s.as_bytes() && c.password == secret.as_bytes())
                .map(|(s, _)| s.as_str())
        }),
        _ => None,
    };
    let file: Option<&Vec<u8>> = authenticated.and_then(|system| {
        f.files
            .iter()
            .find(|(s, id, _)| s == system && path == format!("{BACKUP_PREFIX}{id}"))
            .map(|(_, _, bytes)| bytes)
    });

    let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let (status, headers, body) = f.runtime.block_on(async {
        let response = routes::handle(f.app.clone(), peer, None, request).await.unwrap();
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .expect("body error on a healthy store")
            .to_bytes();
        (parts.status, parts.headers, body)
    });

    assert!(!status.is_server_error(), "{status} with healthy storage");
    if status.is_success() && path == BACKUPS_PATH {
        // The collection: a list (GET/HEAD) or an empty upload (POST), and
        // only for an authenticated system; a list names only its own files.
        let system = authenticated.unwrap_or_else(|| panic!("{status} for {method} without credentials"));
        match (&method, status.as_u16()) {
            (&Method::GET, 200) | (&Method::HEAD, 200) => {
                // (An id both systems have, each its own file, is the
                // caller's to list: only ids that are never the caller's.)
                for (owner, id, _) in &f.files {
                    let own = f.files.iter().any(|(o, i, _)| o == system && i == id);
                    if owner != system && !own {
                        assert!(!body.windows(id.len()).any(|w| w == id.as_bytes()), "{system} listed {owner}'s {id}");
                    }
                }
            }
            (&Method::POST, 201) => {}
            _ => panic!("{status} for {method} on the collection"),
        }
    } else if status.is_success() {
        let bytes = file.unwrap_or_else(|| panic!("{status} for {method} {path:?} by {authenticated:?}"));
        let len = headers[hyper::header::CONTENT_LENGTH].to_str().unwrap().parse::<usize>().unwrap();
        let (start, expected) = match status.as_u16() {
            200 => (0, bytes.len()),
            206 => {
                // Content-Range: bytes START-END/LEN, within this file.
                let range = headers[hyper::header::CONTENT_RANGE].to_str().unwrap();
                let (span, total) = range.strip_prefix("bytes ").unwrap().split_once('/').unwrap();
                let (a, b) = span.split_once('-').unwrap();
                let (a, b): (usize, usize) = (a.parse().unwrap(), b.parse().unwrap());
                assert_eq!(total, bytes.len().to_string());
                assert!(a <= b && b < bytes.len());
                (a, b - a + 1)
            }
            other => panic!("{other} for {method} {path:?}"),
        };
        assert_eq!(len, expected);
        match method {
            Method::GET => assert_eq!(&body[..], &bytes[start..start + len], "wrong bytes for {path:?}"),
            Method::HEAD => assert!(body.is_empty()),
            other => panic!("{status} for {other}"),
        }
    } else if file.is_some()
        && (method == Method::GET || method == Method::HEAD)
        && !matches!(status.as_u16(), 304 | 416)
    {
        // A valid request for an existing file fails only through its own
        // conditional or range headers.
        panic!("{status} for a valid request: {method} {path:?} as {authenticated:?}");
    }
    // Nothing ever reveals a secret the request did not itself carry in
    // its path (a 400 echoes the id as received, whatever it holds).
    for (_, secret) in &f.systems {
        if !path.contains(secret.as_str()) {
            assert!(!body.windows(secret.len()).any(|w| w == secret.as_bytes()));
        }
    }
});
