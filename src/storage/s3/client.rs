//! A small S3 client: signed requests to one bucket (path-style), sent with
//! the hyper client backupd already ships, and every answer classified the
//! way the service needs it: found, not found, or unavailable (with the
//! cause named, so an access or signature error is never taken for a 404).
//!
//! HTTPS through the rustls stack the server already ships (TLS 1.2 and
//! 1.3, ring), trusting the system's CA bundle or the operator's own CA
//! (`--s3-ca`); plain HTTP only to a loopback address (a local store, or a
//! TLS-terminating sidecar), refused otherwise when the endpoint is parsed.

use std::io;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper::body::Incoming;
use hyper::header::HeaderMap;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::sigv4::{self, Credentials, Payload};
use super::xml::{self, ListPage};

/// Default longest wait (`--s3-timeout`) for a store's answer to begin
/// (headers), for a whole small answer (an error document, a listing
/// page), and between two pieces of a backup being read: past it, the
/// store counts as unavailable, never as hanging a request.
pub const S3_ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// Most bytes of a small answer read (a listing page of 1,000 keys is
/// about 400 KiB; an error document under 1 KiB).
pub const MAX_ANSWER_BYTES: usize = 4 << 20;

/// A request body: empty, a buffer, or a stream.
pub type RequestBody = UnsyncBoxBody<Bytes, io::Error>;

/// Where the store is: `https://HOST[:PORT]`, or `http://HOST[:PORT]` on a
/// loopback address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    https: bool,
    host: String,
    port: u16,
}

impl Endpoint {
    /// Parses `https://host[:port]` or `http://host[:port]` (no path, no
    /// user); refuses plain HTTP to anything but a loopback address, saying
    /// why.
    pub fn parse(url: &str) -> Result<Self, String> {
        let (https, rest) = match (url.strip_prefix("https://"), url.strip_prefix("http://")) {
            (Some(rest), _) => (true, rest),
            (None, Some(rest)) => (false, rest),
            _ => {
                return Err(format!(
                    "{url}: expected https://HOST[:PORT] or http://HOST[:PORT]"
                ));
            }
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('/') || rest.contains('@') || rest.is_empty() {
            return Err(format!("{url}: expected a scheme, a host and a port only"));
        }
        let default = if https { 443 } else { 80 };
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || host.starts_with('[') => (
                host,
                port.parse::<u16>()
                    .map_err(|_| format!("{url}: bad port"))?,
            ),
            _ => (rest, default),
        };
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if bare.is_empty() {
            return Err(format!("{url}: no host"));
        }
        let loopback =
            bare == "localhost" || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
        if !https && !loopback {
            return Err(format!(
                "{url}: plain HTTP would send credentials and backups in the clear; use https:// (plain http:// only to a loopback address)"
            ));
        }
        Ok(Endpoint {
            https,
            host: host.to_owned(),
            port,
        })
    }

    /// The port connected to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the host is an address (no name to resolve).
    pub fn is_address(&self) -> bool {
        self.server_name().parse::<IpAddr>().is_ok()
    }

    /// `host:port`, as sent in `Host` and signed.
    pub fn authority(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// The host name the certificate must be for (no brackets).
    fn server_name(&self) -> &str {
        self.host.trim_start_matches('[').trim_end_matches(']')
    }
}

/// The certificates an HTTPS endpoint is checked against.
pub enum Trust {
    /// The system's CA bundle (PEM, read once at start-up).
    System(Vec<u8>),
    /// The operator's own CA (`--s3-ca`, PEM).
    Ca(Vec<u8>),
}

impl Trust {
    fn roots(&self) -> Result<rustls::RootCertStore, String> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let pem = match self {
            Trust::System(pem) | Trust::Ca(pem) => pem,
        };
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| format!("CA certificates: {e}"))?;
            // A system bundle may hold a certificate rustls cannot use;
            // skip it there, refuse it in the operator's own file.
            if let Err(e) = roots.add(cert)
                && matches!(self, Trust::Ca(_))
            {
                return Err(format!("CA certificate: {e}"));
            }
        }
        if roots.is_empty() {
            return Err("no CA certificate".into());
        }
        Ok(roots)
    }
}

/// How a request to the store went wrong.
#[derive(Debug)]
pub enum S3Error {
    /// No such key (404 `NoSuchKey`), or a range outside it.
    NotFound,
    /// The store cannot serve now: unreachable, timed out, a 5xx, `SlowDown`.
    Unavailable(String),
    /// The store refused us: access denied, a bad signature, no such
    /// bucket. A configuration error, never a 404.
    Refused(String),
}

impl std::fmt::Display for S3Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            S3Error::NotFound => f.write_str("no such key"),
            S3Error::Unavailable(why) => write!(f, "store unavailable: {why}"),
            S3Error::Refused(why) => write!(f, "store refused the request: {why}"),
        }
    }
}

impl std::error::Error for S3Error {}

/// The S3 operations backupd sends, by their API names: the `operation`
/// label of `backupd_store_requests_total` (a store such as AWS charges by
/// them, and a LIST costs what a PUT does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// An object's bytes (a download).
    GetObject,
    /// An object's headers (its upload record).
    HeadObject,
    /// An object in one request (an upload up to the single-PUT limit).
    PutObject,
    /// A server-side copy (an upload's commit).
    CopyObject,
    /// A removal.
    DeleteObject,
    /// A page of up to 1,000 keys.
    ListObjectsV2,
    /// The start of an upload in parts.
    CreateMultipartUpload,
    /// One part.
    UploadPart,
    /// One part copied on the server (the commit of a large upload).
    UploadPartCopy,
    /// The end of an upload in parts.
    CompleteMultipartUpload,
    /// An upload in parts given up.
    AbortMultipartUpload,
    /// A page of the uploads in parts in progress.
    ListMultipartUploads,
}

impl Operation {
    /// Every operation, in the order they are reported.
    pub const ALL: [Operation; 12] = [
        Operation::GetObject,
        Operation::HeadObject,
        Operation::PutObject,
        Operation::CopyObject,
        Operation::DeleteObject,
        Operation::ListObjectsV2,
        Operation::CreateMultipartUpload,
        Operation::UploadPart,
        Operation::UploadPartCopy,
        Operation::CompleteMultipartUpload,
        Operation::AbortMultipartUpload,
        Operation::ListMultipartUploads,
    ];

    /// Its name in the S3 API.
    pub fn name(self) -> &'static str {
        match self {
            Operation::GetObject => "GetObject",
            Operation::HeadObject => "HeadObject",
            Operation::PutObject => "PutObject",
            Operation::CopyObject => "CopyObject",
            Operation::DeleteObject => "DeleteObject",
            Operation::ListObjectsV2 => "ListObjectsV2",
            Operation::CreateMultipartUpload => "CreateMultipartUpload",
            Operation::UploadPart => "UploadPart",
            Operation::UploadPartCopy => "UploadPartCopy",
            Operation::CompleteMultipartUpload => "CompleteMultipartUpload",
            Operation::AbortMultipartUpload => "AbortMultipartUpload",
            Operation::ListMultipartUploads => "ListMultipartUploads",
        }
    }

    /// Which operation a request of [`Client::send`] is.
    fn of(
        method: &Method,
        key: Option<&str>,
        query: &[(&str, &str)],
        headers: &[(&str, &str)],
    ) -> Self {
        let asks = |name: &str| query.iter().any(|(n, _)| *n == name);
        let copies = headers.iter().any(|(n, _)| *n == "x-amz-copy-source");
        match *method {
            Method::HEAD => Operation::HeadObject,
            Method::GET if asks("uploads") => Operation::ListMultipartUploads,
            Method::GET if key.is_none() => Operation::ListObjectsV2,
            Method::PUT if asks("partNumber") && copies => Operation::UploadPartCopy,
            Method::PUT if asks("partNumber") => Operation::UploadPart,
            Method::PUT if copies => Operation::CopyObject,
            Method::PUT => Operation::PutObject,
            Method::POST if asks("uploads") => Operation::CreateMultipartUpload,
            Method::POST => Operation::CompleteMultipartUpload,
            Method::DELETE if asks("uploadId") => Operation::AbortMultipartUpload,
            Method::DELETE => Operation::DeleteObject,
            _ => Operation::GetObject,
        }
    }
}

/// Bytes read from a store's connection at a time: the most of a download
/// a piece (a frame passed on to the client) holds, so with the piece in
/// flight to the client, about what each download keeps in memory. hyper's
/// default reads up to about 400 KiB, growing and shrinking with the
/// reads: 64 concurrent 1 GiB downloads peaked at 58-69 MiB (the target is
/// 64). At exactly 384 KiB they peaked at 42 MiB with the same CPU per GiB;
/// at 256 KiB at 33 MiB with 20 % more, at 64 KiB at 21 MiB with 70 %
/// more, a piece costing about 14 us (bench/RESULTS.md).
pub const S3_READ_BUFFER_BYTES: usize = 384 << 10;

/// One bucket of one store, with its credentials.
pub struct Client {
    endpoint: Endpoint,
    bucket: String,
    region: String,
    credentials: Credentials,
    /// How connections are made, for each thread's pool.
    connector: Connector,
    /// A connection pool per thread that sends requests: see
    /// [`Client::http`].
    pools: std::sync::Mutex<
        std::collections::HashMap<std::thread::ThreadId, HyperClient<Connector, RequestBody>>,
    >,
    /// Longest wait for an answer (see [`S3_ANSWER_TIMEOUT`]).
    timeout: Duration,
    /// Requests sent, by [`Operation`] (its index in [`Operation::ALL`]).
    sent: [std::sync::atomic::AtomicU64; Operation::ALL.len()],
}

/// A body that is all in memory.
pub fn full(bytes: impl Into<Bytes>) -> RequestBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// No body.
pub fn empty() -> RequestBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

impl Client {
    /// Where the store is.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// A client of `bucket` at `endpoint`, signing for `region`; an HTTPS
    /// endpoint is checked against `trust`.
    pub fn new(
        endpoint: Endpoint,
        bucket: &str,
        region: &str,
        credentials: Credentials,
        trust: &Trust,
    ) -> Result<Self, String> {
        let mut tcp = HttpConnector::new();
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(S3_ANSWER_TIMEOUT));
        tcp.enforce_http(false);
        let tls = if endpoint.https {
            let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
                .map_err(|e| e.to_string())?
                .with_root_certificates(trust.roots()?)
                .with_no_client_auth();
            let name = rustls::pki_types::ServerName::try_from(endpoint.server_name().to_owned())
                .map_err(|e| format!("{}: {e}", endpoint.server_name()))?;
            Some((
                tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)),
                name,
            ))
        } else {
            None
        };
        Ok(Client {
            bucket: bucket.to_owned(),
            region: region.to_owned(),
            credentials,
            connector: Connector { tcp, tls },
            pools: Default::default(),
            endpoint,
            timeout: S3_ANSWER_TIMEOUT,
            sent: Default::default(),
        })
    }

    /// The same client, waiting at most `timeout` for an answer (and for
    /// connecting, up to [`S3_ANSWER_TIMEOUT`]).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The calling thread's connection pool. Each core's runtime is one
    /// thread, and a pooled connection's task runs on the runtime that
    /// opened it: with one pool for all, a download served on one core
    /// often read the store's answer on the other and handed every piece
    /// across threads, which made those downloads take 1.7x the CPU and
    /// 1.2x the time (bench/RESULTS.md). With a pool per thread, the store's
    /// connection and the client's are served by the same thread.
    fn http(&self) -> HyperClient<Connector, RequestBody> {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools
            .entry(std::thread::current().id())
            .or_insert_with(|| {
                HyperClient::builder(TokioExecutor::new())
                    .http1_read_buf_exact_size(S3_READ_BUFFER_BYTES)
                    .build(self.connector.clone())
            })
            .clone()
    }

    /// Longest wait for an answer, or for the next piece of one.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Requests sent so far (answered or not), by operation.
    pub fn requests(&self) -> Vec<(Operation, u64)> {
        Operation::ALL
            .iter()
            .zip(&self.sent)
            .map(|(op, n)| (*op, n.load(std::sync::atomic::Ordering::Relaxed)))
            .collect()
    }

    /// Sends one signed request for `key` (or the bucket itself) and gives
    /// back the response if its status is a success; any other status is
    /// read (bounded) and classified.
    pub async fn send(
        &self,
        method: Method,
        key: Option<&str>,
        query: &[(&str, &str)],
        headers: &[(&str, &str)],
        body: RequestBody,
        payload: Payload<'_>,
    ) -> Result<Response<Incoming>, S3Error> {
        let operation = Operation::of(&method, key, query, headers);
        self.sent[operation as usize].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = match key {
            Some(key) => format!("/{}/{key}", self.bucket),
            None => format!("/{}", self.bucket),
        };
        let host = self.endpoint.authority();
        let signed = sigv4::sign(
            &sigv4::Request {
                method: method.as_str(),
                host: &host,
                path: &path,
                query,
                headers,
                payload,
            },
            &self.credentials,
            &self.region,
            SystemTime::now(),
        );
        let mut target = sigv4::uri_encode(&path, true);
        if !query.is_empty() {
            target.push('?');
            target.push_str(&sigv4::canonical_query(query));
        }
        let mut request = Request::builder().method(method).uri(format!(
            "{}://{host}{target}",
            if self.endpoint.https { "https" } else { "http" }
        ));
        for (name, value) in headers
            .iter()
            .copied()
            .chain(signed.iter().map(|(n, v)| (*n, v.as_str())))
        {
            request = request.header(name, value);
        }
        let request = request
            .body(body)
            .map_err(|e| S3Error::Unavailable(format!("request: {e}")))?;
        let response = tokio::time::timeout(self.timeout, self.http().request(request))
            .await
            .map_err(|_| S3Error::Unavailable("no answer in time".into()))?
            .map_err(|e| S3Error::Unavailable(format!("{e:?}")))?;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(classify(response, self.timeout).await)
    }

    /// Stores `body` (`len` bytes) at `key` in one PUT, streamed, with the
    /// extra `headers` (metadata, `x-amz-checksum-sha256`).
    pub async fn put(
        &self,
        key: &str,
        len: u64,
        headers: &[(&str, &str)],
        body: RequestBody,
    ) -> Result<(), S3Error> {
        let len = len.to_string();
        let mut all = vec![("content-length", len.as_str())];
        all.extend_from_slice(headers);
        self.send(Method::PUT, Some(key), &[], &all, body, Payload::Unsigned)
            .await
            .map(drop)
    }

    /// The object at `key`, whole or bytes `first..=last`.
    pub async fn get(
        &self,
        key: &str,
        range: Option<(u64, u64)>,
    ) -> Result<Response<Incoming>, S3Error> {
        let range = range.map(|(first, last)| format!("bytes={first}-{last}"));
        let headers: Vec<(&str, &str)> = range.iter().map(|r| ("range", r.as_str())).collect();
        self.send(
            Method::GET,
            Some(key),
            &[],
            &headers,
            empty(),
            Payload::Sha256Hex(sigv4::EMPTY_SHA256),
        )
        .await
    }

    /// The headers of the object at `key` (size, `ETag`, `Last-Modified`,
    /// `x-amz-meta-*`).
    pub async fn head(&self, key: &str) -> Result<HeaderMap, S3Error> {
        let response = self
            .send(
                Method::HEAD,
                Some(key),
                &[],
                &[],
                empty(),
                Payload::Sha256Hex(sigv4::EMPTY_SHA256),
            )
            .await?;
        Ok(response.into_parts().0.headers)
    }

    /// Deletes the object at `key` (S3 answers 204 whether it was there or not).
    pub async fn delete(&self, key: &str) -> Result<(), S3Error> {
        self.send(
            Method::DELETE,
            Some(key),
            &[],
            &[],
            empty(),
            Payload::Sha256Hex(sigv4::EMPTY_SHA256),
        )
        .await
        .map(drop)
    }

    /// Copies the object at `from` to `to` inside the bucket, replacing its
    /// metadata with `headers` (`x-amz-meta-*`).
    pub async fn copy(
        &self,
        from: &str,
        to: &str,
        headers: &[(&str, &str)],
    ) -> Result<(), S3Error> {
        let source = sigv4::uri_encode(&format!("/{}/{from}", self.bucket), true);
        let mut all = vec![
            ("x-amz-copy-source", source.as_str()),
            ("x-amz-metadata-directive", "REPLACE"),
        ];
        all.extend_from_slice(headers);
        let response = self
            .send(
                Method::PUT,
                Some(to),
                &[],
                &all,
                empty(),
                Payload::Sha256Hex(sigv4::EMPTY_SHA256),
            )
            .await?;
        // A copy can fail after its 200 has been sent: the body is then an
        // error document.
        let body = read_small(response.into_body(), self.timeout).await?;
        match xml::parse_error(&body) {
            Some(e) => Err(S3Error::Unavailable(format!(
                "copy failed: {} {}",
                e.code, e.message
            ))),
            None => Ok(()),
        }
    }

    /// Starts a multipart upload to `key` with the extra `headers`
    /// (metadata); its upload id.
    pub async fn create_multipart(
        &self,
        key: &str,
        headers: &[(&str, &str)],
    ) -> Result<String, S3Error> {
        let response = self
            .send(
                Method::POST,
                Some(key),
                &[("uploads", "")],
                headers,
                empty(),
                Payload::Sha256Hex(sigv4::EMPTY_SHA256),
            )
            .await?;
        let body = read_small(response.into_body(), self.timeout).await?;
        xml::parse_initiate_multipart(&body)
            .map_err(|e| S3Error::Unavailable(format!("multipart upload not started: {e}")))
    }

    /// Sends part `number` of multipart upload `upload_id` (`len` bytes
    /// whose SHA-256 is `sha256_hex`: the signature covers the payload, so
    /// the store checks every part); its `ETag`.
    pub async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        (len, sha256_hex): (u64, &str),
        body: RequestBody,
    ) -> Result<String, S3Error> {
        let (number, len) = (number.to_string(), len.to_string());
        let response = self
            .send(
                Method::PUT,
                Some(key),
                &[("partNumber", &number), ("uploadId", upload_id)],
                &[("content-length", &len)],
                body,
                Payload::Sha256Hex(sha256_hex),
            )
            .await?;
        response
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or_else(|| S3Error::Unavailable(format!("part {number} stored without an ETag")))
    }

    /// Makes bytes `first..=last` of the object at `from` part `number` of
    /// multipart upload `upload_id` (a copy inside the store); its `ETag`.
    pub async fn upload_part_copy(
        &self,
        (key, upload_id, number): (&str, &str, u32),
        from: &str,
        (first, last): (u64, u64),
    ) -> Result<String, S3Error> {
        let source = sigv4::uri_encode(&format!("/{}/{from}", self.bucket), true);
        let range = format!("bytes={first}-{last}");
        let number = number.to_string();
        let response = self
            .send(
                Method::PUT,
                Some(key),
                &[("partNumber", &number), ("uploadId", upload_id)],
                &[
                    ("x-amz-copy-source", &source),
                    ("x-amz-copy-source-range", &range),
                ],
                empty(),
                Payload::Sha256Hex(sigv4::EMPTY_SHA256),
            )
            .await?;
        let body = read_small(response.into_body(), self.timeout).await?;
        xml::parse_copy_part(&body).map_err(|e| match xml::parse_error(&body) {
            Some(err) => {
                S3Error::Unavailable(format!("part copy failed: {} {}", err.code, err.message))
            }
            None => S3Error::Unavailable(format!("part copy answer: {e}")),
        })
    }

    /// Completes multipart upload `upload_id` from `parts` (number, `ETag`,
    /// in order): the object appears whole, at once.
    pub async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(u32, &str)],
    ) -> Result<(), S3Error> {
        let document = xml::complete_multipart_body(parts);
        let sha = sigv4::sha256_hex(document.as_bytes());
        let len = document.len().to_string();
        let response = self
            .send(
                Method::POST,
                Some(key),
                &[("uploadId", upload_id)],
                &[
                    ("content-length", &len),
                    ("content-type", "application/xml"),
                ],
                full(document),
                Payload::Sha256Hex(&sha),
            )
            .await?;
        // Like a copy, completion can fail after its 200.
        let body = read_small(response.into_body(), self.timeout).await?;
        match xml::parse_error(&body) {
            Some(e) => Err(S3Error::Unavailable(format!(
                "multipart completion failed: {} {}",
                e.code, e.message
            ))),
            None => Ok(()),
        }
    }

    /// Abandons multipart upload `upload_id`: the store drops its parts.
    pub async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), S3Error> {
        self.send(
            Method::DELETE,
            Some(key),
            &[("uploadId", upload_id)],
            &[],
            empty(),
            Payload::Sha256Hex(sigv4::EMPTY_SHA256),
        )
        .await
        .map(drop)
    }

    /// One page of the multipart uploads in progress under `prefix`,
    /// after `markers` (from the previous page).
    pub async fn list_multipart(
        &self,
        prefix: &str,
        markers: Option<&xml::NextMarkers>,
    ) -> Result<xml::MultipartPage, S3Error> {
        let mut query = vec![("uploads", ""), ("prefix", prefix)];
        if let Some(m) = markers {
            query.push(("key-marker", &m.key_marker));
            query.push(("upload-id-marker", &m.upload_id_marker));
        }
        let response = self
            .send(
                Method::GET,
                None,
                &query,
                &[],
                empty(),
                Payload::Sha256Hex(sigv4::EMPTY_SHA256),
            )
            .await?;
        let body = read_small(response.into_body(), self.timeout).await?;
        xml::parse_list_multipart_uploads(&body)
            .map_err(|e| S3Error::Unavailable(format!("multipart listing does not parse: {e}")))
    }

    /// One page (at most 1,000 keys) of the keys under `prefix`, after
    /// `token` (from the previous page).
    pub async fn list(&self, prefix: &str, token: Option<&str>) -> Result<ListPage, S3Error> {
        let mut query = vec![("list-type", "2"), ("prefix", prefix)];
        if let Some(token) = token {
            query.push(("continuation-token", token));
        }
        let response = self
            .send(
                Method::GET,
                None,
                &query,
                &[],
                empty(),
                Payload::Sha256Hex(sigv4::EMPTY_SHA256),
            )
            .await?;
        let body = read_small(response.into_body(), self.timeout).await?;
        xml::parse_list_objects_v2(&body)
            .map_err(|e| S3Error::Unavailable(format!("listing does not parse: {e}")))
    }
}

/// Reads a small answer whole, bounded in size and time.
async fn read_small(body: Incoming, timeout: Duration) -> Result<Bytes, S3Error> {
    tokio::time::timeout(timeout, Limited::new(body, MAX_ANSWER_BYTES).collect())
        .await
        .map_err(|_| S3Error::Unavailable("answer not read in time".into()))?
        .map(|collected| collected.to_bytes())
        .map_err(|e| S3Error::Unavailable(format!("answer: {e}")))
}

/// What an unsuccessful answer means for backupd.
async fn classify(response: Response<Incoming>, timeout: Duration) -> S3Error {
    let status = response.status();
    let body = read_small(response.into_body(), timeout)
        .await
        .unwrap_or_default();
    let detail = xml::parse_error(&body);
    let code = detail.as_ref().map_or("", |e| e.code.as_str());
    let why = match &detail {
        Some(e) => format!("{status} {}: {}", e.code, e.message),
        None => status.to_string(),
    };
    match (status, code) {
        (StatusCode::NOT_FOUND, "NoSuchKey") | (StatusCode::RANGE_NOT_SATISFIABLE, _) => {
            S3Error::NotFound
        }
        // A HEAD's 404 has no body to name the code.
        (StatusCode::NOT_FOUND, "") => S3Error::NotFound,
        (_, "SlowDown" | "ServiceUnavailable" | "InternalError" | "RequestTimeout") => {
            S3Error::Unavailable(why)
        }
        (s, _) if s.is_server_error() => S3Error::Unavailable(why),
        _ => S3Error::Refused(why),
    }
}

/// Opens connections for the pool: TCP, then TLS for an HTTPS endpoint.
#[derive(Clone)]
struct Connector {
    tcp: HttpConnector,
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    )>,
}

impl tower_service::Service<hyper::Uri> for Connector {
    type Response = Stream;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Stream, Self::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.tcp.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: hyper::Uri) -> Self::Future {
        // The pool asks for the endpoint's own URI; the TCP connector only
        // dials, so give it plain http for the same host and port.
        let dial = format!("http://{}", uri.authority().map_or("", |a| a.as_str()));
        let connecting = match dial.parse::<hyper::Uri>() {
            Ok(dial) => self.tcp.call(dial),
            Err(e) => return Box::pin(async move { Err(e.into()) }),
        };
        let tls = self.tls.clone();
        Box::pin(async move {
            let tcp = connecting.await?;
            match tls {
                None => Ok(Stream::Plain(tcp)),
                Some((connector, name)) => {
                    let tls = connector.connect(name, tcp.into_inner()).await?;
                    Ok(Stream::Tls(Box::new(TokioIo::new(tls))))
                }
            }
        })
    }
}

/// A connection to the store, plain or TLS.
enum Stream {
    Plain(TokioIo<tokio::net::TcpStream>),
    // Boxed: a TLS session is a kilobyte, a plain socket a few words.
    Tls(Box<TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>>),
}

impl hyper_util::client::legacy::connect::Connection for Stream {
    fn connected(&self) -> hyper_util::client::legacy::connect::Connected {
        hyper_util::client::legacy::connect::Connected::new()
    }
}

impl hyper::rt::Read for Stream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl hyper::rt::Write for Stream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_request_is_counted_as_its_s3_operation() {
        let op = Operation::of;
        let copy = [("x-amz-copy-source", "/b/k")];
        let part = [("partNumber", "1"), ("uploadId", "u")];
        assert_eq!(op(&Method::GET, Some("k"), &[], &[]), Operation::GetObject);
        assert_eq!(
            op(&Method::HEAD, Some("k"), &[], &[]),
            Operation::HeadObject
        );
        assert_eq!(op(&Method::PUT, Some("k"), &[], &[]), Operation::PutObject);
        assert_eq!(
            op(&Method::PUT, Some("k"), &[], &copy),
            Operation::CopyObject
        );
        assert_eq!(
            op(&Method::DELETE, Some("k"), &[], &[]),
            Operation::DeleteObject
        );
        let list = [("list-type", "2"), ("prefix", "p/")];
        assert_eq!(op(&Method::GET, None, &list, &[]), Operation::ListObjectsV2);
        let uploads = [("uploads", "")];
        assert_eq!(
            op(&Method::POST, Some("k"), &uploads, &[]),
            Operation::CreateMultipartUpload
        );
        assert_eq!(
            op(&Method::PUT, Some("k"), &part, &[]),
            Operation::UploadPart
        );
        assert_eq!(
            op(&Method::PUT, Some("k"), &part, &copy),
            Operation::UploadPartCopy
        );
        let id = [("uploadId", "u")];
        assert_eq!(
            op(&Method::POST, Some("k"), &id, &[]),
            Operation::CompleteMultipartUpload
        );
        assert_eq!(
            op(&Method::DELETE, Some("k"), &id, &[]),
            Operation::AbortMultipartUpload
        );
        assert_eq!(
            op(&Method::GET, None, &uploads, &[]),
            Operation::ListMultipartUploads
        );
        let names: std::collections::BTreeSet<_> = Operation::ALL.map(Operation::name).into();
        assert_eq!(
            names.len(),
            Operation::ALL.len(),
            "two operations share a name"
        );
        for (i, o) in Operation::ALL.iter().enumerate() {
            assert_eq!(*o as usize, i, "{o:?} out of place in ALL");
        }
    }

    #[test]
    fn plain_http_goes_to_loopback_only() {
        let ok = Endpoint::parse("http://127.0.0.1:8333").unwrap();
        assert_eq!(ok.authority(), "127.0.0.1:8333");
        assert_eq!(
            Endpoint::parse("http://localhost/").unwrap().authority(),
            "localhost:80"
        );
        assert_eq!(
            Endpoint::parse("http://[::1]:9000").unwrap().authority(),
            "[::1]:9000"
        );
        let tls = Endpoint::parse("https://s3.eu-west-1.amazonaws.com").unwrap();
        assert_eq!(tls.authority(), "s3.eu-west-1.amazonaws.com:443");
        assert!(Endpoint::parse("https://10.0.0.5:3900").is_ok());
        for bad in [
            "http://10.0.0.5:8333",
            "http://s3.example.com",
            "ftp://127.0.0.1",
            "http://127.0.0.1:8333/bucket",
            "https://user@s3.example.com",
            "http://127.0.0.1:notaport",
            "127.0.0.1:8333",
            "https://",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }
}
