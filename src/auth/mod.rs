//! From an `Authorization` header to an authenticated [`SystemName`], and
//! the [`credentials`] file it is checked against.

pub mod credentials;

use base64::Engine;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use hyper::header::{AUTHORIZATION, HeaderMap};

use crate::auth::credentials::Credentials;
use crate::system_name::SystemName;

/// Longest `Authorization` value looked at; a name (128) and a secret (43)
/// encode to well under this. Longer values are rejected before decoding.
pub const MAX_AUTHORIZATION_BYTES: usize = 1024;

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
    /// Unknown system or wrong secret (deliberately not told apart).
    Rejected,
}

impl AuthError {
    /// Short reason for the log.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthError::Missing => "missing authorization",
            AuthError::Repeated => "repeated authorization header",
            AuthError::Malformed => "malformed authorization",
            AuthError::Rejected => "unknown system or wrong secret",
        }
    }
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

/// Authenticates a request's headers against `creds`.
pub fn authenticate(headers: &HeaderMap, creds: &Credentials) -> Result<SystemName, AuthError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let value = values.next().ok_or(AuthError::Missing)?;
    if values.next().is_some() {
        return Err(AuthError::Repeated);
    }
    let presented = parse_basic(value.as_bytes())?;
    creds
        .verify(&presented.user, &presented.password)
        .ok_or(AuthError::Rejected)
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
