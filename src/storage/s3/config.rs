//! The S3 backend's configuration: `--storage s3://BUCKET[/PREFIX]` and
//! the `--s3-*` flags, turned into a [`Client`] and a key prefix, with
//! every mistake refused at start-up in a sentence.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::client::{Client, Endpoint, Trust};
use super::sigv4::Credentials;
use crate::sandbox::FilePath;
use crate::storage::key::KeyPrefix;

/// Region signed for when none is given.
pub const DEFAULT_REGION: &str = "us-east-1";

/// Where the system's CA bundle is read from for HTTPS endpoints when no
/// `--s3-ca` is given (Debian's and Ubuntu's path; RHEL links it too).
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Largest credentials or CA file read.
const MAX_FILE_BYTES: u64 = 1 << 20;

/// `s3://BUCKET[/PREFIX]`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The bucket.
    pub bucket: String,
    /// Where backupd's keys live in it.
    pub prefix: KeyPrefix,
}

impl Location {
    /// `Some` for a `--storage` that names a bucket (`s3://...`), with the
    /// parse result; `None` for a directory.
    pub fn of(storage: &Path) -> Option<Result<Self, String>> {
        let text = storage.to_str()?;
        let rest = text.strip_prefix("s3://")?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let valid_bucket = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && !bucket.starts_with(['-', '.'])
            && !bucket.ends_with(['-', '.'])
            && !bucket.contains("..");
        if !valid_bucket {
            return Some(Err(format!(
                "{text}: a bucket name is 3 to 63 characters of a-z 0-9 . -"
            )));
        }
        Some(
            prefix
                .parse::<KeyPrefix>()
                .map(|prefix| Location {
                    bucket: bucket.to_owned(),
                    prefix,
                })
                .map_err(|e| format!("{text}: {e}")),
        )
    }
}

/// The `--s3-*` settings.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// `--s3-endpoint`; AWS's regional endpoint when absent.
    pub endpoint: Option<String>,
    /// `--s3-region`.
    pub region: Option<String>,
    /// `--s3-credentials FILE`; the `AWS_*` variables when absent.
    pub credentials: Option<PathBuf>,
    /// `--s3-ca FILE`: the CA that signed an HTTPS endpoint's certificate.
    pub ca: Option<PathBuf>,
    /// `--s3-single-put-max`: above it, uploads go as multipart uploads
    /// (0 in a `Default` value means [`super::store::S3_SINGLE_PUT_MAX`]).
    pub single_put_max: u64,
    /// `--s3-timeout`: the longest wait for an answer (zero in a `Default`
    /// value means [`super::client::S3_ANSWER_TIMEOUT`]).
    pub timeout: Duration,
}

/// The client `settings` describe for `location`'s bucket. Reads the
/// credentials (file or environment) and the CA certificates once, here,
/// before the self-sandbox.
pub fn client(location: &Location, settings: &Settings) -> Result<Client, String> {
    let region = settings.region.as_deref().unwrap_or(DEFAULT_REGION);
    let endpoint = match &settings.endpoint {
        Some(url) => url.clone(),
        None => format!("https://s3.{region}.amazonaws.com"),
    };
    let endpoint = Endpoint::parse(&endpoint)?;
    let credentials = match &settings.credentials {
        Some(path) => credentials_file(path)?,
        None => credentials_from_env()?,
    };
    let trust = match &settings.ca {
        Some(path) => Trust::Ca(read(path)?),
        None => Trust::System(read(Path::new(SYSTEM_CA_BUNDLE)).unwrap_or_default()),
    };
    let timeout = match settings.timeout {
        Duration::ZERO => super::client::S3_ANSWER_TIMEOUT,
        t => t,
    };
    Ok(Client::new(endpoint, &location.bucket, region, credentials, &trust)?.with_timeout(timeout))
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    FilePath::new(path)
        .and_then(|file| file.read(MAX_FILE_BYTES))
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`.
fn credentials_from_env() -> Result<Credentials, String> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    match (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
        (Some(access_key), Some(secret_key)) => Ok(Credentials {
            access_key,
            secret_key,
            session_token: var("AWS_SESSION_TOKEN"),
        }),
        _ => Err(
            "S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or give --s3-credentials FILE"
                .into(),
        ),
    }
}

/// A credentials file in the AWS shared-credentials form: `key = value`
/// lines (`aws_access_key_id`, `aws_secret_access_key`, optional
/// `aws_session_token`); `[section]` lines and `#` comments are skipped.
/// Like the credentials file, it should be readable by its owner only: a
/// wider mode is warned about.
fn credentials_file(path: &Path) -> Result<Credentials, String> {
    let text = read(path)?;
    let text = String::from_utf8(text).map_err(|_| format!("{}: not UTF-8", path.display()))?;
    let file = FilePath::new(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if let Ok(meta) = file
        .dir()
        .open(false)
        .and_then(|dir| dir.metadata(file.name()))
    {
        use cap_std::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format!("{mode:04o}"),
                "S3 credentials file is readable by other users; run chmod 600 on it"
            );
        }
    }
    let mut access_key = None;
    let mut secret_key = None;
    let mut session_token = None;
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with('[') {
            continue;
        }
        let Some((name, value)) = line.split_once('=') else {
            return Err(format!("{}: expected NAME = VALUE lines", path.display()));
        };
        let value = Some(value.trim().to_owned());
        match name.trim() {
            "aws_access_key_id" => access_key = value,
            "aws_secret_access_key" => secret_key = value,
            "aws_session_token" => session_token = value,
            _ => {}
        }
    }
    match (access_key, secret_key) {
        (Some(access_key), Some(secret_key)) => Ok(Credentials {
            access_key,
            secret_key,
            session_token,
        }),
        _ => Err(format!(
            "{}: needs aws_access_key_id and aws_secret_access_key",
            path.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_credentials_file_in_the_aws_form() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s3-credentials");
        std::fs::write(
            &path,
            "# backupd's key\n[default]\naws_access_key_id = AKIAEXAMPLE\naws_secret_access_key=abc/def+ghi\n",
        )
        .unwrap();
        let creds = credentials_file(&path).unwrap();
        assert_eq!(creds.access_key, "AKIAEXAMPLE");
        assert_eq!(creds.secret_key, "abc/def+ghi");
        assert_eq!(creds.session_token, None);
        std::fs::write(&path, "aws_access_key_id = AKIAEXAMPLE\n").unwrap();
        assert!(
            credentials_file(&path)
                .unwrap_err()
                .contains("aws_secret_access_key")
        );
        std::fs::write(&path, "no equals sign\n").unwrap();
        assert!(credentials_file(&path).is_err());
    }

    #[test]
    fn storage_names_a_bucket_and_a_prefix() {
        let at = |s: &str| Location::of(Path::new(s));
        assert_eq!(at("/var/lib/backupd/backups"), None);
        let loc = at("s3://backups/site-a/").unwrap().unwrap();
        assert_eq!(loc.bucket, "backups");
        assert_eq!(loc.prefix.as_str(), "site-a");
        assert_eq!(at("s3://backups").unwrap().unwrap().prefix.as_str(), "");
        for bad in [
            "s3://",
            "s3://ab",
            "s3://Backups",
            "s3://b_b",
            "s3://bucket/../x",
            "s3://-ab",
        ] {
            assert!(at(bad).unwrap().is_err(), "{bad}");
        }
    }
}
