//! Who is calling. The auth layer parses the presented credential once and puts a
//! [`ClientIdentity`] in the request extensions; everything after it (rate limiting,
//! conversation keys) reads only that, never the headers. The identity holds a one-way
//! fingerprint of the API key, never the key itself, so it can be logged, used as a
//! Redis key and compared without exposing a secret.

use std::fmt;

use hyper::header::{HeaderMap, AUTHORIZATION};
use sha2::{Digest, Sha256};

use crate::common::Secret;

/// The caller, as established by the auth layer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum ClientIdentity {
    /// API keys are configured and the request presented this one (fingerprinted).
    Key(KeyFingerprint),
    /// API keys are off: every client shares one identity (and one set of conversations).
    Anonymous,
}

impl ClientIdentity {
    /// A stable, secret-free name: the key's fingerprint, or `anon`.
    pub(crate) fn as_str(&self) -> &str {
        match self {
            ClientIdentity::Key(f) => f.as_str(),
            ClientIdentity::Anonymous => "anon",
        }
    }
}

/// The request presented the operators' key (`ADMIN_KEY`), as the auth layer checked it:
/// the admin API answers, `/health` lists every account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OperatorAccess;

/// A domain-separated SHA-256 of an API key, truncated to 128 bits, hex-encoded. The same
/// key gives the same fingerprint on every instance (sessions and rate-limit buckets in
/// Redis are shared), and adding or removing another key changes nobody else's.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct KeyFingerprint(String);

impl KeyFingerprint {
    pub(crate) fn of(key: &str) -> Self {
        let mut h = Sha256::new();
        h.update(b"qwen-proxy/client-identity/v1\xff");
        h.update(key.as_bytes());
        KeyFingerprint(crate::common::hex(&h.finalize()[..16]))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for KeyFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyFingerprint({})", self.0)
    }
}

/// The credential a request presents: `Authorization: Bearer <key>` (the scheme in any
/// case, RFC 9110 §11.1) or, when there is no bearer credential, `x-api-key: <key>`.
/// Surrounding whitespace is not part of the key. `Authorization` wins when both are
/// present, as it does for OpenAI itself; a non-Bearer `Authorization` (Basic, …) is not a
/// credential for us and falls through to `x-api-key`.
pub(crate) fn presented_credential(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let v = v.trim_start();
            let (scheme, rest) = v.split_once([' ', '\t'])?;
            scheme.eq_ignore_ascii_case("bearer").then_some(rest)
        });
    bearer
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
        .map(str::trim)
        .filter(|k| !k.is_empty())
}

/// Whether the request presents `secret` (an operator's key: `ADMIN_KEY`, `METRICS_TOKEN`),
/// compared in constant time.
pub(crate) fn presents(headers: &HeaderMap, secret: &Secret) -> bool {
    let presented = presented_credential(headers).unwrap_or("");
    constant_time_eq(presented.as_bytes(), secret.expose().as_bytes())
}

/// Equal-length comparison whose time does not depend on where the bytes differ.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn bearer_scheme_in_any_case() {
        for auth in [
            "Bearer k1",
            "bearer k1",
            "BEARER k1",
            "bEaReR   k1 ",
            " Bearer\tk1",
        ] {
            assert_eq!(
                presented_credential(&headers(&[("authorization", auth)])),
                Some("k1"),
                "{auth:?}"
            );
        }
        assert_eq!(
            presented_credential(&headers(&[("authorization", "Basic azE6")])),
            None
        );
        assert_eq!(
            presented_credential(&headers(&[("authorization", "Bearerk1")])),
            None
        );
        assert_eq!(
            presented_credential(&headers(&[("authorization", "Bearer ")])),
            None
        );
    }

    #[test]
    fn authorization_wins_over_x_api_key() {
        let h = headers(&[("x-api-key", "k2"), ("authorization", "bearer k1")]);
        assert_eq!(presented_credential(&h), Some("k1"));
        let h = headers(&[("x-api-key", " k2 "), ("authorization", "Basic x")]);
        assert_eq!(presented_credential(&h), Some("k2"));
    }

    #[test]
    fn fingerprints_are_stable_distinct_and_not_the_key() {
        let a = KeyFingerprint::of("sk-secret-1");
        assert_eq!(a, KeyFingerprint::of("sk-secret-1"));
        assert_ne!(a, KeyFingerprint::of("sk-secret-2"));
        assert_eq!(a.as_str().len(), 32);
        assert!(!a.as_str().contains("secret"));
        assert!(!format!("{:?}", ClientIdentity::Key(a)).contains("secret"));
    }
}
