//! AWS Signature Version 4 header signing for S3 (service `s3`).
//!
//! Pure functions only: no I/O, no clock reads (the caller passes `now`), no async.
//! The caller sends the request with exactly the path `uri_encode(path, true)`, the
//! query string `canonical_query(query)`, the extra headers it passed in
//! [`Request::headers`], and the headers returned by [`sign`].

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// Hex SHA-256 of the empty body, the payload hash of GET, HEAD and DELETE requests.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// The `x-amz-content-sha256` value for a body that is not covered by the signature.
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";

const ALGORITHM: &str = "AWS4-HMAC-SHA256";
const SERVICE: &str = "s3";

/// Headers that [`sign`] computes itself; extra headers with these names are ignored.
const RESERVED: [&str; 5] = [
    "authorization",
    "host",
    "x-amz-content-sha256",
    "x-amz-date",
    "x-amz-security-token",
];

/// Access key pair, plus the session token of temporary credentials.
#[derive(Clone)]
pub struct Credentials {
    /// Access key id (`AKIA...`); not secret, it appears in every Authorization header.
    pub access_key: String,
    /// Secret access key; never printed by `Debug`.
    pub secret_key: String,
    /// Session token of temporary credentials, sent as `x-amz-security-token`; never printed.
    pub session_token: Option<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// What `x-amz-content-sha256` says about the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload<'a> {
    /// The body is not signed: `UNSIGNED-PAYLOAD` (allowed by S3 over TLS).
    Unsigned,
    /// Lowercase hex SHA-256 of the whole body (see [`sha256_hex`], [`EMPTY_SHA256`]).
    Sha256Hex(&'a str),
}

impl Payload<'_> {
    fn as_str(&self) -> &str {
        match self {
            Payload::Unsigned => UNSIGNED_PAYLOAD,
            Payload::Sha256Hex(hex) => hex,
        }
    }
}

/// The parts of an HTTP request that the signature covers.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// HTTP method, upper case (`GET`, `PUT`, ...).
    pub method: &'a str,
    /// `host[:port]` exactly as sent in the `Host` header.
    pub host: &'a str,
    /// Raw, unencoded path starting with `/`, e.g. `/bucket/prefix/fw1/x.tar.gz`.
    /// It is sent as `uri_encode(path, true)`.
    pub path: &'a str,
    /// Raw, unencoded query pairs; sent as `canonical_query(query)`.
    pub query: &'a [(&'a str, &'a str)],
    /// Extra headers to sign and send (`range`, `content-length`, `x-amz-meta-*`, ...).
    /// Names are case-insensitive. `host`, `authorization` and the `x-amz-*` headers that
    /// [`sign`] returns are ignored here. Repeated names are joined with `,` in order.
    pub headers: &'a [(&'a str, &'a str)],
    /// How the body is covered.
    pub payload: Payload<'a>,
}

/// Signs `req` and returns the headers to add to it: `authorization`, `x-amz-date`,
/// `x-amz-content-sha256` and, with a session token, `x-amz-security-token`.
pub fn sign(
    req: &Request,
    creds: &Credentials,
    region: &str,
    now: SystemTime,
) -> Vec<(&'static str, String)> {
    let amz_date = amz_date(now);
    let date = &amz_date[..8];
    let payload = req.payload.as_str();
    let token = creds.session_token.as_deref();

    let (canonical, signed_headers) = canonical_request(req, &amz_date, token);
    let scope = format!("{date}/{region}/{SERVICE}/aws4_request");
    let to_sign = string_to_sign(&amz_date, &scope, &canonical);
    let key = signing_key(&creds.secret_key, date, region);
    let signature = hex(&hmac(&key, to_sign.as_bytes()));

    let mut out = vec![
        (
            "authorization",
            format!(
                "{ALGORITHM} Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
                creds.access_key
            ),
        ),
        ("x-amz-date", amz_date.clone()),
        ("x-amz-content-sha256", payload.to_owned()),
    ];
    if let Some(token) = token {
        out.push(("x-amz-security-token", token.to_owned()));
    }
    out
}

/// RFC 3986 percent-encoding as SigV4 wants it: `A-Z a-z 0-9 - _ . ~` are kept,
/// every other byte of the UTF-8 form becomes `%XX` (upper-case hex).
/// With `keep_slash`, `/` is kept too (for paths).
pub fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else if b == b'/' && keep_slash {
            out.push('/');
        } else {
            out.push('%');
            out.push(char::from(HEX_UPPER[usize::from(b >> 4)]));
            out.push(char::from(HEX_UPPER[usize::from(b & 0xf)]));
        }
    }
    out
}

/// The query string to put on the wire, identical to the canonical one: each name and
/// value encoded with [`uri_encode`], pairs sorted by encoded name then encoded value,
/// `name=value` joined by `&` (an empty value still gets its `=`).
pub fn canonical_query(query: &[(&str, &str)]) -> String {
    let mut pairs: Vec<(String, String)> = query
        .iter()
        .map(|(k, v)| (uri_encode(k, false), uri_encode(v, false)))
        .collect();
    pairs.sort();
    let mut out = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    out
}

/// Lowercase hex SHA-256 of `data`, for [`Payload::Sha256Hex`].
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// Builds the canonical request; returns it with the signed-headers list.
fn canonical_request(req: &Request, amz_date: &str, token: Option<&str>) -> (String, String) {
    let mut headers: Vec<(String, String)> = vec![
        ("host".to_owned(), trim_value(req.host)),
        (
            "x-amz-content-sha256".to_owned(),
            req.payload.as_str().to_owned(),
        ),
        ("x-amz-date".to_owned(), amz_date.to_owned()),
    ];
    if let Some(token) = token {
        headers.push(("x-amz-security-token".to_owned(), trim_value(token)));
    }
    for (name, value) in req.headers {
        let name = name.trim().to_ascii_lowercase();
        if name.is_empty() || RESERVED.contains(&name.as_str()) {
            continue;
        }
        let value = trim_value(value);
        match headers.iter_mut().find(|(n, _)| *n == name) {
            Some((_, existing)) => {
                existing.push(',');
                existing.push_str(&value);
            }
            None => headers.push((name, value)),
        }
    }
    headers.sort_by(|a, b| a.0.cmp(&b.0));

    let mut canonical_headers = String::new();
    let mut signed = String::new();
    for (name, value) in &headers {
        canonical_headers.push_str(name);
        canonical_headers.push(':');
        canonical_headers.push_str(value);
        canonical_headers.push('\n');
        if !signed.is_empty() {
            signed.push(';');
        }
        signed.push_str(name);
    }

    let uri = if req.path.starts_with('/') {
        uri_encode(req.path, true)
    } else {
        format!("/{}", uri_encode(req.path, true))
    };
    let canonical = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        req.method,
        uri,
        canonical_query(req.query),
        canonical_headers,
        signed,
        req.payload.as_str()
    );
    (canonical, signed)
}

fn string_to_sign(amz_date: &str, scope: &str, canonical_request: &str) -> String {
    format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical_request.as_bytes())
    )
}

fn signing_key(secret: &str, date: &str, region: &str) -> [u8; 32] {
    let k_date = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k_region = hmac(&k_date, region.as_bytes());
    let k_service = hmac(&k_region, SERVICE.as_bytes());
    hmac(&k_service, b"aws4_request")
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// Trims surrounding spaces and tabs and collapses internal runs of spaces to one.
fn trim_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut last_space = false;
    for c in value.trim_matches([' ', '\t']).chars() {
        if c == ' ' {
            if !last_space {
                out.push(' ');
            }
            last_space = true;
        } else {
            out.push(c);
            last_space = false;
        }
    }
    out
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";
const HEX_LOWER: &[u8; 16] = b"0123456789abcdef";

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(HEX_LOWER[usize::from(b >> 4)]));
        out.push(char::from(HEX_LOWER[usize::from(b & 0xf)]));
    }
    out
}

/// `YYYYMMDD'T'HHMMSS'Z'` in UTC. Times before 1970 are handled; sub-seconds are dropped
/// (rounded towards the past).
fn amz_date(now: SystemTime) -> String {
    let secs: i64 = match now.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => {
            let d = e.duration();
            let whole = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            let floor = if d.subsec_nanos() > 0 { 1 } else { 0 };
            0i64.saturating_sub(whole).saturating_sub(floor)
        }
    };
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (H. Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March-based
    let day = doy - (153 * mp + 2) / 5 + 1; // [1, 31]
    let month = if mp < 10 { mp + 3 } else { mp - 9 }; // [1, 12]
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const AK: &str = "AKIAIOSFODNN7EXAMPLE";
    const SK: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    const HOST: &str = "examplebucket.s3.amazonaws.com";
    /// 2013-05-24T00:00:00Z, the date of all the AWS S3 examples.
    const T2013: u64 = 1_369_353_600;

    fn creds() -> Credentials {
        Credentials {
            access_key: AK.to_owned(),
            secret_key: SK.to_owned(),
            session_token: None,
        }
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn header<'a>(out: &'a [(&'static str, String)], name: &str) -> &'a str {
        out.iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("missing header {name}"))
    }

    /// Checks the StringToSign that the AWS example prints for `canonical`.
    fn assert_sts(canonical: &str, canonical_hash: &str) {
        assert_eq!(
            string_to_sign(
                "20130524T000000Z",
                "20130524/us-east-1/s3/aws4_request",
                canonical
            ),
            format!(
                "AWS4-HMAC-SHA256\n20130524T000000Z\n20130524/us-east-1/s3/aws4_request\n{canonical_hash}"
            )
        );
    }

    fn auth(signed_headers: &str, signature: &str) -> String {
        format!(
            "AWS4-HMAC-SHA256 Credential={AK}/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders={signed_headers}, Signature={signature}"
        )
    }

    /// AWS S3 API reference, "Signature Calculations for the Authorization Header:
    /// Transferring Payload in a Single Chunk", Example: GET Object.
    #[test]
    fn aws_example_get_object() {
        let req = Request {
            method: "GET",
            host: HOST,
            path: "/test.txt",
            query: &[],
            headers: &[("Range", "bytes=0-9")],
            payload: Payload::Sha256Hex(EMPTY_SHA256),
        };
        let (canonical, signed) = canonical_request(&req, "20130524T000000Z", None);
        assert_eq!(
            canonical,
            "GET\n/test.txt\n\n\
             host:examplebucket.s3.amazonaws.com\n\
             range:bytes=0-9\n\
             x-amz-content-sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n\
             x-amz-date:20130524T000000Z\n\n\
             host;range;x-amz-content-sha256;x-amz-date\n\
             e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_sts(
            &canonical,
            "7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972",
        );
        assert_eq!(signed, "host;range;x-amz-content-sha256;x-amz-date");

        let out = sign(&req, &creds(), "us-east-1", at(T2013));
        assert_eq!(
            header(&out, "authorization"),
            auth(
                "host;range;x-amz-content-sha256;x-amz-date",
                "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
            )
        );
        assert_eq!(header(&out, "x-amz-date"), "20130524T000000Z");
        assert_eq!(header(&out, "x-amz-content-sha256"), EMPTY_SHA256);
        assert_eq!(out.len(), 3);
    }

    /// Same document, Example: PUT Object (`PUT test$file.text`, body "Welcome to Amazon S3.").
    #[test]
    fn aws_example_put_object() {
        let body_hash = sha256_hex(b"Welcome to Amazon S3.");
        assert_eq!(
            body_hash,
            "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072"
        );
        let req = Request {
            method: "PUT",
            host: HOST,
            path: "/test$file.text",
            query: &[],
            headers: &[
                ("Date", "Fri, 24 May 2013 00:00:00 GMT"),
                ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
            ],
            payload: Payload::Sha256Hex(&body_hash),
        };
        let (canonical, _) = canonical_request(&req, "20130524T000000Z", None);
        assert_eq!(
            canonical,
            "PUT\n/test%24file.text\n\n\
             date:Fri, 24 May 2013 00:00:00 GMT\n\
             host:examplebucket.s3.amazonaws.com\n\
             x-amz-content-sha256:44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072\n\
             x-amz-date:20130524T000000Z\n\
             x-amz-storage-class:REDUCED_REDUNDANCY\n\n\
             date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class\n\
             44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072"
        );
        assert_sts(
            &canonical,
            "9e0e90d9c76de8fa5b200d8c849cd5b8dc7a3be3951ddb7f6a76b4158342019d",
        );
        let out = sign(&req, &creds(), "us-east-1", at(T2013));
        assert_eq!(
            header(&out, "authorization"),
            auth(
                "date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class",
                "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd"
            )
        );
    }

    /// Same document, Example: GET Bucket Lifecycle (`GET /?lifecycle`).
    #[test]
    fn aws_example_get_bucket_lifecycle() {
        let req = Request {
            method: "GET",
            host: HOST,
            path: "/",
            query: &[("lifecycle", "")],
            headers: &[],
            payload: Payload::Sha256Hex(EMPTY_SHA256),
        };
        let (canonical, _) = canonical_request(&req, "20130524T000000Z", None);
        assert_eq!(
            canonical,
            "GET\n/\nlifecycle=\n\
             host:examplebucket.s3.amazonaws.com\n\
             x-amz-content-sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n\
             x-amz-date:20130524T000000Z\n\n\
             host;x-amz-content-sha256;x-amz-date\n\
             e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_sts(
            &canonical,
            "9766c798316ff2757b517bc739a67f6213b4ab36dd5da2f94eaebf79c77395ca",
        );
        let out = sign(&req, &creds(), "us-east-1", at(T2013));
        assert_eq!(
            header(&out, "authorization"),
            auth(
                "host;x-amz-content-sha256;x-amz-date",
                "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543"
            )
        );
    }

    /// Same document, Example: Get Bucket (List Objects) (`GET /?max-keys=2&prefix=J`).
    /// The pairs are given out of order to exercise sorting.
    #[test]
    fn aws_example_list_objects() {
        let req = Request {
            method: "GET",
            host: HOST,
            path: "/",
            query: &[("prefix", "J"), ("max-keys", "2")],
            headers: &[],
            payload: Payload::Sha256Hex(EMPTY_SHA256),
        };
        let (canonical, _) = canonical_request(&req, "20130524T000000Z", None);
        assert!(canonical.starts_with("GET\n/\nmax-keys=2&prefix=J\nhost:"));
        assert_sts(
            &canonical,
            "df57d21db20da04d7fa30298dd4488ba3a2b47ca3a489c74750e0f1e7df1b9b7",
        );
        let out = sign(&req, &creds(), "us-east-1", at(T2013));
        assert_eq!(
            header(&out, "authorization"),
            auth(
                "host;x-amz-content-sha256;x-amz-date",
                "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"
            )
        );
    }

    #[test]
    fn session_token_is_signed_and_returned() {
        let mut c = creds();
        let req = Request {
            method: "GET",
            host: HOST,
            path: "/test.txt",
            query: &[],
            headers: &[("Range", "bytes=0-9")],
            payload: Payload::Sha256Hex(EMPTY_SHA256),
        };
        let plain = sign(&req, &c, "us-east-1", at(T2013));
        c.session_token = Some("FQoGZXIvYXdzE//token+value=".to_owned());
        let out = sign(&req, &c, "us-east-1", at(T2013));
        assert_eq!(out.len(), 4);
        assert_eq!(
            header(&out, "x-amz-security-token"),
            "FQoGZXIvYXdzE//token+value="
        );
        let a = header(&out, "authorization");
        assert!(a.contains(
            "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date;x-amz-security-token,"
        ));
        assert_ne!(a, header(&plain, "authorization"));
        let (canonical, _) =
            canonical_request(&req, "20130524T000000Z", c.session_token.as_deref());
        assert!(canonical.contains("\nx-amz-security-token:FQoGZXIvYXdzE//token+value=\n"));
    }

    #[test]
    fn unsigned_payload() {
        let req = Request {
            method: "PUT",
            host: "127.0.0.1:8333",
            path: "/bucket/prefix/fw1/01934fab-7c3e-7a1b-9d2e-0123456789ab.tar.gz",
            query: &[("partNumber", "3"), ("uploadId", "abc/def+g==")],
            headers: &[("Content-Length", "5242880")],
            payload: Payload::Unsigned,
        };
        let out = sign(&req, &creds(), "us-east-1", at(T2013));
        assert_eq!(header(&out, "x-amz-content-sha256"), "UNSIGNED-PAYLOAD");
        let (canonical, signed) = canonical_request(&req, "20130524T000000Z", None);
        assert!(canonical.ends_with("\nUNSIGNED-PAYLOAD"));
        assert!(canonical.contains("\npartNumber=3&uploadId=abc%2Fdef%2Bg%3D%3D\n"));
        assert!(canonical.contains("\nhost:127.0.0.1:8333\n"));
        assert_eq!(
            signed,
            "content-length;host;x-amz-content-sha256;x-amz-date"
        );
    }

    #[test]
    fn header_canonicalisation() {
        let req = Request {
            method: "PUT",
            host: HOST,
            path: "/k",
            query: &[],
            headers: &[
                ("X-Amz-Meta-Filename", "  my   file\t.txt  "),
                (
                    "x-amz-checksum-sha256",
                    "n4bQgYhMfWWaL+qgxVrQFaO/TxsrC4Is0V1sFbDwCgg=",
                ),
                ("x-amz-meta-tag", "a"),
                ("X-AMZ-META-TAG", "b"),
                // Computed by sign(); ignored when given.
                ("Host", "evil.example"),
                ("x-amz-date", "19990101T000000Z"),
                ("Authorization", "nope"),
            ],
            payload: Payload::Sha256Hex(EMPTY_SHA256),
        };
        let (canonical, signed) = canonical_request(&req, "20130524T000000Z", None);
        assert_eq!(
            signed,
            "host;x-amz-checksum-sha256;x-amz-content-sha256;x-amz-date;\
             x-amz-meta-filename;x-amz-meta-tag"
        );
        assert!(canonical.contains("\nx-amz-meta-filename:my file\t.txt\n"));
        assert!(canonical.contains("\nx-amz-meta-tag:a,b\n"));
        assert!(canonical.contains("\nhost:examplebucket.s3.amazonaws.com\n"));
        assert!(!canonical.contains("evil"));
        assert!(!canonical.contains("1999"));
    }

    #[test]
    fn uri_encode_keys() {
        assert_eq!(uri_encode("/a b/c d.txt", true), "/a%20b/c%20d.txt");
        assert_eq!(uri_encode("/test$file.text", true), "/test%24file.text");
        assert_eq!(uri_encode("~user/-_.", true), "~user/-_.");
        assert_eq!(uri_encode("a/b", false), "a%2Fb");
        assert_eq!(uri_encode("ü€", true), "%C3%BC%E2%82%AC");
        assert_eq!(uri_encode("日本", false), "%E6%97%A5%E6%9C%AC");
        assert_eq!(
            uri_encode("+=&?#%*!'()", false),
            "%2B%3D%26%3F%23%25%2A%21%27%28%29"
        );
        assert_eq!(uri_encode("AZaz09", false), "AZaz09");
        assert_eq!(uri_encode("", true), "");
        // Percent signs are encoded, never taken as an existing escape (no double-decoding).
        assert_eq!(uri_encode("/a%20b", true), "/a%2520b");
    }

    #[test]
    fn canonical_query_sorting_and_encoding() {
        assert_eq!(canonical_query(&[]), "");
        assert_eq!(
            canonical_query(&[
                ("prefix", "fw1/"),
                ("list-type", "2"),
                (
                    "continuation-token",
                    "1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM="
                ),
            ]),
            "continuation-token=1ueGcxLPRx1Tr%2FXYExHnhbYLgveDs2J%2Fwm36Hy4vbOwM%3D\
             &list-type=2&prefix=fw1%2F"
        );
        assert_eq!(
            canonical_query(&[("continuation-token", "a+b c")]),
            "continuation-token=a%2Bb%20c"
        );
        // Sorted by the encoded form: raw '-' < '/', but encoded "%2F" < "-".
        assert_eq!(canonical_query(&[("k", "-"), ("k", "/")]), "k=%2F&k=-");
        // Same name: sorted by value; empty values keep '='.
        assert_eq!(
            canonical_query(&[("uploads", ""), ("b", "2"), ("b", "1")]),
            "b=1&b=2&uploads="
        );
        // Upper case sorts before lower case (byte order).
        assert_eq!(
            canonical_query(&[("uploadId", "x"), ("partNumber", "1"), ("Zeta", "")]),
            "Zeta=&partNumber=1&uploadId=x"
        );
    }

    #[test]
    fn amz_date_formatting() {
        assert_eq!(amz_date(at(T2013)), "20130524T000000Z");
        assert_eq!(amz_date(UNIX_EPOCH), "19700101T000000Z");
        assert_eq!(amz_date(at(951_782_400)), "20000229T000000Z");
        assert_eq!(amz_date(at(951_868_800)), "20000301T000000Z");
        assert_eq!(amz_date(at(1_709_251_199)), "20240229T235959Z");
        assert_eq!(amz_date(at(4_102_444_800)), "21000101T000000Z");
        assert_eq!(amz_date(at(4_107_542_400)), "21000301T000000Z");
        assert_eq!(amz_date(at(1_735_689_599)), "20241231T235959Z");
        // Sub-seconds are dropped.
        assert_eq!(
            amz_date(at(T2013) + Duration::from_millis(999)),
            "20130524T000000Z"
        );
        // Before the epoch.
        assert_eq!(
            amz_date(UNIX_EPOCH - Duration::from_secs(1)),
            "19691231T235959Z"
        );
        assert_eq!(
            amz_date(UNIX_EPOCH - Duration::from_millis(1)),
            "19691231T235959Z"
        );
    }

    #[test]
    fn debug_hides_secrets() {
        let c = Credentials {
            access_key: AK.to_owned(),
            secret_key: SK.to_owned(),
            session_token: Some("TOKEN-SECRET-VALUE".to_owned()),
        };
        let shown = format!("{c:?}");
        assert!(shown.contains(AK));
        assert!(!shown.contains("wJalr"));
        assert!(!shown.contains("TOKEN-SECRET-VALUE"));
        assert!(shown.contains("redacted"));
    }

    #[test]
    fn hex_and_sha256() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa0, 0xff]), "000fa0ff");
        assert_eq!(sha256_hex(b""), EMPTY_SHA256);
    }
}
