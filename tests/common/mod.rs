//! Test harness: the real `backupd` binary on 127.0.0.1:0 in a temporary
//! data directory, a real HTTP client, raw TCP where a client would
//! normalise the request. Every wait is bounded so a hang fails the test.

#![allow(dead_code)]

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::header::HeaderMap;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest any single step of a test may take.
pub const STEP: Duration = Duration::from_secs(20);

/// A backup id that parses (UUIDv7, RFC 4122 variant).
pub const ID: &str = "01934fab-bc33-7890-a1b2-c3d4e5f6a7b8.tar.gz";
/// Another valid id.
pub const ID2: &str = "01934fab-bc33-7890-a1b2-c3d4e5f6a7b9.gpg";

/// Runs `fut`, failing the test if it takes longer than `limit`.
pub async fn within<T>(limit: Duration, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, fut)
        .await
        .expect("step timed out")
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_backupd")
}

/// Runs `backupd <args>` with `--data-dir dir`, returning (status, stdout, stderr).
pub fn cli(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .env_remove("BACKUPD_DATA_DIR")
        .env_remove("BACKUPD_STORAGE")
        .env_remove("BACKUPD_CREDENTIALS")
        .output()
        .expect("run backupd");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `command` (the binary, or a wrapper that runs it) given the arguments of
/// a `backupd serve` on an ephemeral port over `dir`, plus `extra`.
pub fn serve_command(mut command: Command, dir: &Path, extra: &[&str]) -> Command {
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .args(extra);
    command
}

/// The object store the suites run against instead of the filesystem,
/// when `BACKUPD_TEST_BACKEND=s3` (set by `.ci/s3.sh`, with the store in
/// `BACKUPD_TEST_S3_ENDPOINT`, `_BUCKET`, `_ACCESS_KEY`, `_SECRET_KEY`).
#[derive(Debug, Clone)]
pub struct S3Target {
    pub endpoint: String,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
    /// `BACKUPD_TEST_S3_REGION`, default `us-east-1` (Garage: `garage`).
    pub region: String,
}

/// The object store of this run, if the suites run against one.
pub fn s3_target() -> Option<S3Target> {
    if std::env::var("BACKUPD_TEST_BACKEND").ok()? != "s3" {
        return None;
    }
    let var = |name: &str| {
        std::env::var(format!("BACKUPD_TEST_S3_{name}"))
            .unwrap_or_else(|_| panic!("BACKUPD_TEST_S3_{name} is not set"))
    };
    Some(S3Target {
        endpoint: var("ENDPOINT"),
        bucket: var("BUCKET"),
        access_key: var("ACCESS_KEY"),
        secret_key: var("SECRET_KEY"),
        region: std::env::var("BACKUPD_TEST_S3_REGION").unwrap_or_else(|_| "us-east-1".into()),
    })
}

/// curl, signing for `target` with its own SigV4 (a client independent of
/// backupd's).
pub fn s3_curl(target: &S3Target) -> Command {
    let mut curl = Command::new("curl");
    curl.args(["-sS", "--fail", "--user"])
        .arg(format!("{}:{}", target.access_key, target.secret_key))
        .arg("--aws-sigv4")
        .arg(format!("aws:amz:{}:s3", target.region))
        // Garage (like AWS) wants it; curl 7.88 does not send it.
        .args(["-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"]);
    curl
}

/// True (and says so) when the suite runs against an object store and
/// the test checks something only the filesystem store has (files,
/// symlinks, permissions, mounts): the test then returns early.
pub fn fs_only(what: &str) -> bool {
    let s3 = s3_target().is_some();
    if s3 {
        eprintln!("not on S3 (filesystem only): {what}");
    }
    s3
}

/// A running `backupd serve`.
pub struct Server {
    pub dir: tempfile::TempDir,
    pub addr: SocketAddr,
    pub child: Child,
    log: Arc<Mutex<String>>,
    /// `s3://BUCKET/PREFIX` when the server keeps its backups in the
    /// object store (a fresh prefix per server).
    pub s3: Option<(S3Target, String)>,
}

impl Server {
    /// Starts a server on a fresh data directory.
    pub fn start() -> Server {
        Self::start_with(tempfile::tempdir().unwrap(), &[])
    }

    /// Starts a server on `dir` with extra arguments; on the object store
    /// of the run, if there is one and `extra` names no storage itself.
    pub fn start_with(dir: tempfile::TempDir, extra: &[&str]) -> Server {
        let mut command = serve_command(Command::new(bin()), dir.path(), extra);
        let s3 = s3_target()
            .filter(|_| !extra.contains(&"--storage"))
            .map(|target| {
                let prefix = format!("t-{}", uuid::Uuid::now_v7().simple());
                let location = format!("s3://{}/{prefix}", target.bucket);
                command
                    .args(["--storage", &location, "--s3-endpoint", &target.endpoint])
                    .args(["--s3-region", &target.region])
                    .env("AWS_ACCESS_KEY_ID", &target.access_key)
                    .env("AWS_SECRET_ACCESS_KEY", &target.secret_key);
                (target, prefix)
            });
        let mut server =
            Self::launch(dir, command).unwrap_or_else(|log| panic!("server did not start: {log}"));
        server.s3 = s3;
        server
    }

    /// Runs `command` (a `backupd serve`) and waits for it to listen; on
    /// failure, everything it logged.
    pub fn launch(dir: tempfile::TempDir, command: Command) -> Result<Server, String> {
        Self::launch_then(dir, command, |_| {})
    }

    /// [`launch`](Self::launch), calling `just_spawned` with the process id
    /// the moment the process exists (before it can have started up).
    pub fn launch_then(
        dir: tempfile::TempDir,
        mut command: Command,
        just_spawned: impl FnOnce(u32),
    ) -> Result<Server, String> {
        let mut child = command
            .env("RUST_LOG", "info")
            .env_remove("BACKUPD_DATA_DIR")
            .env_remove("BACKUPD_STORAGE")
            .env_remove("BACKUPD_CREDENTIALS")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn backupd serve");
        just_spawned(child.id());
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        // Drain stderr for the whole life of the server, or it blocks on a full pipe.
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let addr: SocketAddr = rest.split(';').next().unwrap().trim().parse().unwrap();
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr);
                    }
                }
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let addr = match rx.recv_timeout(STEP) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                // Let the drain thread take the last lines.
                std::thread::sleep(Duration::from_millis(100));
                return Err(log.lock().unwrap().clone());
            }
        };
        Ok(Server {
            dir,
            addr,
            child,
            log,
            s3: None,
        })
    }

    /// Kills the server and hands back its data directory for a restart.
    pub fn stop(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }

    pub fn data(&self) -> &Path {
        self.dir.path()
    }

    /// The default storage root.
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("backups")
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the log contains `needle`.
    pub fn wait_for_log(&self, needle: &str, limit: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < limit {
            if self.log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Keys (relative to the server's prefix) the object store holds under
    /// `under`, listed with curl's own SigV4 signing.
    fn s3_keys(&self, target: &S3Target, prefix: &str, under: &str) -> Vec<String> {
        let mut keys = Vec::new();
        let mut token = String::new();
        loop {
            // Query values percent-encoded as SigV4 signs them ('/' too).
            let mut url = format!(
                "{}/{}?list-type=2&prefix={}",
                target.endpoint,
                target.bucket,
                format!("{prefix}/{under}").replace('/', "%2F")
            );
            if !token.is_empty() {
                url.push_str("&continuation-token=");
                url.push_str(
                    &token
                        .replace('+', "%2B")
                        .replace('/', "%2F")
                        .replace('=', "%3D"),
                );
            }
            let out = s3_curl(target).arg(&url).output().expect("curl");
            assert!(
                out.status.success(),
                "LIST {url}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let field = |from: &str, tag: &str| -> Vec<String> {
                from.split(&format!("<{tag}>"))
                    .skip(1)
                    .filter_map(|p| p.split(&format!("</{tag}>")).next())
                    .map(str::to_owned)
                    .collect()
            };
            for key in field(&text, "Key") {
                keys.push(
                    key.strip_prefix(&format!("{prefix}/"))
                        .unwrap_or(&key)
                        .to_owned(),
                );
            }
            match field(&text, "NextContinuationToken").pop() {
                Some(next) if text.contains("<IsTruncated>true</IsTruncated>") => token = next,
                _ => break,
            }
        }
        keys.sort();
        keys
    }

    /// The names of `system`'s backups as stored (files in its directory,
    /// or keys under its prefix), whatever the server says of them.
    pub fn stored_backups(&self, system: &str) -> Vec<String> {
        match &self.s3 {
            None => names_in(&self.storage().join(system))
                .into_iter()
                .filter(|n| !n.starts_with('.'))
                .collect(),
            Some((target, prefix)) => self
                .s3_keys(target, prefix, &format!("{system}/"))
                .into_iter()
                .filter_map(|k| k.strip_prefix(&format!("{system}/")).map(str::to_owned))
                .collect(),
        }
    }

    /// Uploads in progress, or left behind: `.upload-*` files in `system`'s
    /// directory, or objects under the server's `.uploads/` prefix.
    pub fn uploads_in_progress(&self, system: &str) -> Vec<String> {
        match &self.s3 {
            None => names_in(&self.storage().join(system))
                .into_iter()
                .filter(|n| n.starts_with(".upload-"))
                .collect(),
            Some((target, prefix)) => self.s3_keys(target, prefix, ".uploads/"),
        }
    }

    /// Multipart uploads the store holds in progress under the server's
    /// prefix (ListMultipartUploads, by curl); none on the filesystem.
    pub fn multipart_uploads(&self) -> Vec<String> {
        let Some((target, prefix)) = &self.s3 else {
            return Vec::new();
        };
        let url = format!(
            "{}/{}?prefix={prefix}%2F&uploads=",
            target.endpoint, target.bucket
        );
        let out = s3_curl(target).arg(&url).output().expect("curl");
        assert!(
            out.status.success(),
            "ListMultipartUploads {url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("ListMultipartUploadsResult"), "{text}");
        text.split("<Upload>")
            .skip(1)
            .filter_map(|u| u.split("<Key>").nth(1)?.split("</Key>").next())
            .map(str::to_owned)
            .collect()
    }

    /// Everything stored for `system` (backups, upload records, uploads in
    /// progress), for tests that check a failure left nothing.
    pub fn stored_everything(&self, system: &str) -> Vec<String> {
        match &self.s3 {
            None => names_in(&self.storage().join(system)),
            Some((target, prefix)) => {
                let mut all = self.s3_keys(target, prefix, &format!("{system}/"));
                all.extend(self.s3_keys(target, prefix, ".uploads/"));
                all
            }
        }
    }

    /// `backupd ARGS` against this server's data dir and storage (its
    /// bucket and prefix, with the store's flags and keys, when it keeps
    /// its backups in an object store): (status, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let mut command = Command::new(bin());
        command
            .args(args)
            .arg("--data-dir")
            .arg(self.data())
            .env_remove("BACKUPD_DATA_DIR")
            .env_remove("BACKUPD_STORAGE")
            .env_remove("BACKUPD_CREDENTIALS");
        if let Some((target, prefix)) = &self.s3 {
            command
                .arg("--storage")
                .arg(format!("s3://{}/{prefix}", target.bucket))
                .args([
                    "--s3-endpoint",
                    &target.endpoint,
                    "--s3-region",
                    &target.region,
                ])
                .env("AWS_ACCESS_KEY_ID", &target.access_key)
                .env("AWS_SECRET_ACCESS_KEY", &target.secret_key);
        }
        let out = command.output().expect("run backupd");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Replaces the content of `system`'s backup `id` behind the server's
    /// back, keeping its upload record (the file's sidecar; the object's
    /// `x-amz-meta-*`, copied onto the new PUT): bit rot, as `verify`
    /// should find it.
    pub fn replace_content(&self, system: &str, id: &str, bytes: &[u8]) {
        let Some((target, prefix)) = &self.s3 else {
            std::fs::write(self.storage().join(system).join(id), bytes).unwrap();
            return;
        };
        let url = format!(
            "{}/{}/{prefix}/{system}/{id}",
            target.endpoint, target.bucket
        );
        let head = s3_curl(target).arg("-I").arg(&url).output().expect("curl");
        assert!(head.status.success(), "HEAD {url}");
        let file = self.dir.path().join(".replace-content");
        std::fs::write(&file, bytes).unwrap();
        let mut put = s3_curl(target);
        for line in String::from_utf8_lossy(&head.stdout).lines() {
            if line.to_ascii_lowercase().starts_with("x-amz-meta-") {
                put.arg("-H").arg(line.trim_end());
            }
        }
        let out = put.arg("-T").arg(&file).arg(&url).output().expect("curl");
        assert!(
            out.status.success(),
            "PUT {url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::remove_file(&file).unwrap();
    }

    /// `backupd systems add NAME` against this server's data dir: the secret.
    /// Waits (at most 2 s, the contract) for the server to pick it up.
    pub fn add_system(&self, name: &str) -> String {
        let reloads = self.count_log("credentials reloaded");
        let (code, out, err) = cli(self.data(), &["systems", "add", name]);
        assert_eq!(code, 0, "systems add failed: {err}");
        self.wait_for_reload(reloads);
        out.trim_end().to_string()
    }

    /// How many log lines contain `needle`.
    pub fn count_log(&self, needle: &str) -> usize {
        self.log().matches(needle).count()
    }

    /// Waits for a credentials reload after `before` of them, at most 2 s.
    pub fn wait_for_reload(&self, before: usize) {
        let start = Instant::now();
        while self.count_log("credentials reloaded") <= before {
            assert!(
                start.elapsed() < Duration::from_secs(2),
                "no reload within 2 s: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Writes an object at `key` (relative to the server's prefix) in the
    /// object store, whatever its name: for planting keys no upload makes.
    pub fn put_key(&self, key: &str, bytes: &[u8]) {
        let (target, prefix) = self.s3.as_ref().expect("an S3 server");
        let file = self.dir.path().join(".put-key");
        std::fs::write(&file, bytes).unwrap();
        let encoded: String = key
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        let url = format!("{}/{}/{prefix}/{encoded}", target.endpoint, target.bucket);
        let out = s3_curl(target)
            .arg("-T")
            .arg(&file)
            .arg(&url)
            .output()
            .expect("curl");
        assert!(
            out.status.success(),
            "PUT {url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Writes a backup for `system` by other means than an upload: a file
    /// in its directory, or an object under its prefix (PUT with curl's own
    /// SigV4 signing, a client independent of backupd's).
    pub fn put(&self, system: &str, id: &str, bytes: &[u8]) -> PathBuf {
        let path = self.storage().join(system).join(id);
        match &self.s3 {
            None => std::fs::write(&path, bytes).unwrap(),
            Some((target, prefix)) => {
                let file = self.dir.path().join(format!(".put-{system}-{id}"));
                std::fs::write(&file, bytes).unwrap();
                let url = format!(
                    "{}/{}/{prefix}/{system}/{id}",
                    target.endpoint, target.bucket
                );
                let out = s3_curl(target)
                    .arg("-T")
                    .arg(&file)
                    .arg(&url)
                    .output()
                    .expect("curl");
                assert!(
                    out.status.success(),
                    "PUT {url}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                std::fs::remove_file(&file).unwrap();
            }
        }
        path
    }

    pub fn signal(&self, sig: i32) {
        let rc = unsafe_free_kill(self.child.id(), sig);
        assert_eq!(rc, 0, "kill failed");
    }

    /// The worker processes the supervisor runs (the server itself with
    /// --no-self-sandbox, which has none).
    pub fn workers(&self) -> Vec<u32> {
        let pid = self.child.id();
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .map(|p| p.parse().unwrap())
            .collect()
    }

    /// Sends `sig` to the one worker.
    pub fn signal_worker(&self, sig: i32) {
        let workers = self.workers();
        assert_eq!(workers.len(), 1, "{workers:?}");
        assert_eq!(unsafe_free_kill(workers[0], sig), 0, "kill failed");
    }

    /// Waits for the process to exit; its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `kill(2)` through the `kill` command, keeping the tests free of `unsafe`.
pub fn unsafe_free_kill(pid: u32, sig: i32) -> i32 {
    Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .map(|s| s.code().unwrap_or(1))
        .unwrap_or(1)
}

pub fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// A complete response.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// Headers other than `date`, which differs by the second.
    pub fn stable_headers(&self) -> Vec<(String, String)> {
        let mut v: Vec<_> = self
            .headers
            .iter()
            .filter(|(k, _)| k.as_str() != "date")
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        v.sort();
        v
    }
}

/// The value of the series `name` (with its labels) on an admin listener's
/// `/metrics`, if it is there.
pub async fn series(admin: std::net::SocketAddr, name: &str) -> Option<f64> {
    get(admin, "/metrics", None)
        .await
        .text()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Waits (up to 10 s) until the series `name` on `admin` reads `want`
/// (`None`: until it is gone); fails with `server`'s log.
pub async fn wait_for_series(
    admin: std::net::SocketAddr,
    name: &str,
    want: Option<f64>,
    server: &Server,
) {
    let start = Instant::now();
    while series(admin, name).await != want {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{name} is not {want:?}: {}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The admin listener's address, from the server's start-up log line.
pub fn admin_addr(server: &Server) -> std::net::SocketAddr {
    assert!(
        server.wait_for_log("admin endpoints", Duration::from_secs(5)),
        "{}",
        server.log()
    );
    let log = server.log();
    let line = log.lines().find(|l| l.contains("admin endpoints")).unwrap();
    line.rsplit(" on ")
        .next()
        .unwrap()
        .trim_end_matches('"')
        .trim()
        .parse()
        .unwrap()
}

/// Sends one request on a fresh connection (HTTP/1.1, or HTTP/2 with prior
/// knowledge) and returns the response with its body still streaming.
pub async fn open(
    addr: SocketAddr,
    h2: bool,
    method: Method,
    path: &str,
    auth: Option<&str>,
) -> hyper::Response<Incoming> {
    within(STEP, async {
        let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
        let mut req = Request::builder().method(method);
        req = if h2 {
            req.uri(format!("http://{addr}{path}"))
        } else {
            req.uri(path).header("host", addr.to_string())
        };
        if let Some(auth) = auth {
            req = req.header("authorization", auth);
        }
        let req = req.body(Empty::<Bytes>::new()).unwrap();
        if h2 {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .unwrap();
            tokio::spawn(conn);
            sender.send_request(req).await.unwrap()
        } else {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            sender.send_request(req).await.unwrap()
        }
    })
    .await
}

/// Reads a whole response.
pub async fn collect(res: hyper::Response<Incoming>) -> Reply {
    let (parts, body) = res.into_parts();
    let body = within(STEP, body.collect()).await.unwrap().to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// One HTTP/1.1 request on a fresh connection, read whole.
pub async fn request(addr: SocketAddr, method: Method, path: &str, auth: Option<&str>) -> Reply {
    collect(open(addr, false, method, path, auth).await).await
}

pub async fn get(addr: SocketAddr, path: &str, auth: Option<&str>) -> Reply {
    request(addr, Method::GET, path, auth).await
}

/// One GET over HTTP/2 with prior knowledge, read whole.
pub async fn get_h2(addr: SocketAddr, path: &str, auth: Option<&str>) -> Reply {
    collect(open(addr, true, Method::GET, path, auth).await).await
}

/// Sends raw bytes, half-closes nothing, and reads until the server closes
/// or `limit` passes; returns everything read.
pub async fn raw(addr: SocketAddr, request: &[u8], limit: Duration) -> Vec<u8> {
    let mut stream = within(STEP, TcpStream::connect(addr)).await.unwrap();
    let _ = within(STEP, stream.write_all(request)).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(limit, stream.read_to_end(&mut out)).await;
    out
}

/// The status code of a raw HTTP/1.x response.
pub fn raw_status(response: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(response.get(..12)?).ok()?;
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

pub fn backup_path(id: &str) -> String {
    format!("/api/systems/backups/{id}")
}

pub const NOT_FOUND_BODY: &str = r#"{"code":404,"message":"backup not found","data":{}}"#;
pub const ROUTE_NOT_FOUND_BODY: &str = r#"{"code":404,"message":"not found","data":{}}"#;
pub const UNAUTHORIZED_BODY: &str = r#"{"code":401,"message":"invalid token","data":{}}"#;
pub const UNAVAILABLE_BODY: &str =
    r#"{"code":503,"message":"backup storage unavailable","data":{}}"#;

pub fn invalid_id_body(value: &str) -> String {
    serde_json::json!({
        "code": 400,
        "message": "validation failed",
        "data": {"type": "validation_error", "errors": [{"key": "id", "message": "invalid backup id", "value": value}]}
    })
    .to_string()
}

/// POSTs `body` to the collection with `auth` and extra headers (hyper sets
/// Content-Length from the body).
pub async fn upload(
    addr: SocketAddr,
    auth: Option<&str>,
    body: Vec<u8>,
    headers: &[(&str, &str)],
) -> Reply {
    within(STEP, async {
        let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        let mut req = Request::post("/api/systems/backups").header("host", addr.to_string());
        if let Some(auth) = auth {
            req = req.header("authorization", auth);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = sender
            .send_request(
                req.body(http_body_util::Full::new(Bytes::from(body)))
                    .unwrap(),
            )
            .await
            .unwrap();
        collect(res).await
    })
    .await
}

/// The JSON body of a reply.
pub fn json(reply: &Reply) -> serde_json::Value {
    serde_json::from_slice(&reply.body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", reply.text()))
}

/// Names in `dir`, sorted.
pub fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Makes the system calls numbered `numbers` fail with EPERM in the process
/// `command` starts, as a seccomp filter that refuses them does (systemd's
/// `SystemCallFilter=` with `SystemCallErrorNumber=EPERM`).
pub fn deny_syscalls(command: &mut Command, numbers: &'static [u32]) {
    use std::os::unix::process::CommandExt;
    // SAFETY: between fork and exec the closure only builds a value on the
    // stack and makes two `prctl` calls, which are async-signal-safe; the
    // filter program outlives the call that installs it (the kernel copies
    // it).
    unsafe {
        command.pre_exec(move || {
            let op = |code: u32, jt: u8, jf: u8, k: u32| libc::sock_filter {
                code: code as u16,
                jt,
                jf,
                k,
            };
            // Load the syscall number; each listed one returns EPERM. A
            // fixed array: no allocation between fork and exec.
            let mut filter = [op(libc::BPF_RET | libc::BPF_K, 0, 0, libc::SECCOMP_RET_ALLOW); 8];
            assert!(numbers.len() <= filter.len() - 3, "too many system calls");
            filter[0] = op(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0, 0, 0);
            let count = numbers.len() as u8;
            for (i, &nr) in numbers.iter().enumerate() {
                // Match: jump over the remaining tests and the ALLOW.
                filter[1 + i] = op(
                    libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
                    count - i as u8,
                    0,
                    nr,
                );
            }
            let len = numbers.len() + 3;
            filter[len - 2] = op(libc::BPF_RET | libc::BPF_K, 0, 0, libc::SECCOMP_RET_ALLOW);
            filter[len - 1] = op(
                libc::BPF_RET | libc::BPF_K,
                0,
                0,
                libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
            );
            let program = libc::sock_fprog {
                len: len as u16,
                filter: filter.as_ptr() as *mut libc::sock_filter,
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &program as *const libc::sock_fprog,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
