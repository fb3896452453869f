//! From an `Authorization` header to an authenticated [`SystemName`], and
//! the [`credentials`] file it is checked against.

pub mod credentials;

use base64::Engine;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use hyper::header::{AUTHORIZATION, HeaderMap};

use crate::auth::credentials::{Accepted, Credentials, Rejection};
use crate::system_name::SystemName;

/// Longest `Authorization` value looked at; a name (128) and a secret (43)
/// encode to well under this. Longer values are rejected before decoding.
pub const MAX_AUTHORIZATION_BYTES: usize = 1024;

/// Most characters of a claimed (unverified) system name written to the
/// log of a failed authentication.
pub const MAX_LOGGED_CLAIM_CHARS: usize = 64;

/// Standard base64, padding optional: some clients drop it.
const BASIC_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Credentials as a client presented them: unverified bytes.
#[derive(PartialEq, Eq)]
pub struct BasicCredentials {
    /// The claimed system name.
    pub user: Vec<u8>,
    /// The claimed secret.
    pub password: Vec<u8>,
}

impl std::fmt::Debug for BasicCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("BasicCredentials")
            .field("user", &String::from_utf8_lossy(&self.user))
            .finish_non_exhaustive()
    }
}

/// Why a request carries no usable credentials. All of them answer the same
/// 401; the reason only goes to the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// No `Authorization` header.
    Missing,
    /// More than one `Authorization` header.
    Repeated,
    /// Not `Basic <base64 of user:password>`.
    Malformed,
    /// No system of the claimed name.
    UnknownSystem,
    /// A registered system, a secret that is not (or no longer) its own.
    WrongSecret,
}

/// A failed authentication: why, and the system the client claimed, made
/// safe to log (see [`loggable_claim`]); the client gets the same 401
/// whatever the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthFailure {
    /// Why.
    pub reason: AuthError,
    /// The claimed name, sanitised; empty when there was none.
    pub claimed: String,
    /// The registered system whose secret was wrong ([`AuthError::WrongSecret`]
    /// only): the one failure that may be counted per system, since only a
    /// registered name can be a metric label.
    pub system: Option<SystemName>,
}

/// A claimed system name as the log may carry it: every byte outside
/// `[A-Za-z0-9._-]` replaced by `_`, at most [`MAX_LOGGED_CLAIM_CHARS`]
/// (with `...` when cut), so a client cannot forge log lines or fields.
pub fn loggable_claim(user: &[u8]) -> String {
    let mut out: String = user
        .iter()
        .take(MAX_LOGGED_CLAIM_CHARS)
        .map(|&b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
                b as char
            } else {
                '_'
            }
        })
        .collect();
    if user.len() > MAX_LOGGED_CLAIM_CHARS {
        out.push_str("...");
    }
    out
}

impl AuthError {
    /// Short reason for the log.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthError::Missing => "missing authorization",
            AuthError::Repeated => "repeated authorization header",
            AuthError::Malformed => "malformed authorization",
            AuthError::UnknownSystem => "unknown system",
            AuthError::WrongSecret => "wrong secret",
        }
    }

    /// The label of this reason in `backupd_auth_failures_total`.
    pub fn label(self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Repeated => "repeated",
            AuthError::Malformed => "malformed",
            AuthError::UnknownSystem => "unknown_system",
            AuthError::WrongSecret => "wrong_secret",
        }
    }

    /// Every reason, for the metric's series.
    pub const ALL: [AuthError; 5] = [
        AuthError::Missing,
        AuthError::Repeated,
        AuthError::Malformed,
        AuthError::UnknownSystem,
        AuthError::WrongSecret,
    ];
}

/// Parses one `Authorization` value: the scheme word `Basic` in any case, one
/// or more spaces, base64 of `user:password` split at the first colon.
pub fn parse_basic(value: &[u8]) -> Result<BasicCredentials, AuthError> {
    if value.len() > MAX_AUTHORIZATION_BYTES {
        return Err(AuthError::Malformed);
    }
    let scheme_len = value
        .iter()
        .position(|&b| b == b' ')
        .ok_or(AuthError::Malformed)?;
    if !value[..scheme_len].eq_ignore_ascii_case(b"basic") {
        return Err(AuthError::Malformed);
    }
    let token = value[scheme_len..].trim_ascii_start();
    if token.is_empty() {
        return Err(AuthError::Malformed);
    }
    let decoded = BASIC_BASE64
        .decode(token)
        .map_err(|_| AuthError::Malformed)?;
    let colon = decoded
        .iter()
        .position(|&b| b == b':')
        .ok_or(AuthError::Malformed)?;
    let (user, rest) = decoded.split_at(colon);
    if user.is_empty() {
        return Err(AuthError::Malformed);
    }
    Ok(BasicCredentials {
        user: user.to_vec(),
        password: rest[1..].to_vec(),
    })
}

/// Authenticates a request's headers against `creds` at Unix time `now`.
pub fn authenticate(
    headers: &HeaderMap,
    creds: &Credentials,
    now: u64,
) -> Result<(SystemName, Accepted), AuthFailure> {
    let fail = |reason, claimed: &[u8]| AuthFailure {
        reason,
        claimed: loggable_claim(claimed),
        system: None,
    };
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let value = values.next().ok_or(fail(AuthError::Missing, b""))?;
    if values.next().is_some() {
        return Err(fail(AuthError::Repeated, b""));
    }
    let presented = parse_basic(value.as_bytes()).map_err(|reason| fail(reason, b""))?;
    creds
        .verify(&presented.user, &presented.password, now)
        .map_err(|rejection| {
            let reason = match rejection {
                Rejection::UnknownSystem => AuthError::UnknownSystem,
                Rejection::WrongSecret => AuthError::WrongSecret,
            };
            AuthFailure {
                system: std::str::from_utf8(&presented.user)
                    .ok()
                    .filter(|_| reason == AuthError::WrongSecret)
                    .and_then(|user| user.parse().ok()),
                ..fail(reason, &presented.user)
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(s: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(s)
        )
    }

    #[test]
    fn parses_user_and_password_at_the_first_colon() {
        let c = parse_basic(basic("fw1:se:cr:et").as_bytes()).unwrap();
        assert_eq!(c.user, b"fw1");
        assert_eq!(c.password, b"se:cr:et");
        let c = parse_basic(b"bAsIc   ZncxOg").unwrap();
        assert_eq!(
            (c.user.as_slice(), c.password.as_slice()),
            (&b"fw1"[..], &b""[..])
        );
    }

    #[test]
    fn claims_are_logged_harmlessly() {
        assert_eq!(loggable_claim(b"fw1"), "fw1");
        assert_eq!(loggable_claim(b"a b\n\"c\"=x"), "a_b__c__x");
        let long = loggable_claim(&[b'a'; 300]);
        assert_eq!(long.len(), MAX_LOGGED_CLAIM_CHARS + 3);
        assert!(long.ends_with("..."));
    }

    #[test]
    fn rejects_malformed_values() {
        for bad in [
            "".to_string(),
            "Basic".into(),
            "Basic ".into(),
            "Basic !!!!".into(),
            "Bearer abc".into(),
            "Basicx ZncxOmE=".into(),
            basic("no-colon"),
            basic(":password"),
            format!("Basic {}", "A".repeat(MAX_AUTHORIZATION_BYTES)),
        ] {
            assert_eq!(
                parse_basic(bad.as_bytes()),
                Err(AuthError::Malformed),
                "{bad:?}"
            );
        }
    }
}
