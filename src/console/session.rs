//! The console's sign-in: a session cookie signed with a key derived from `ADMIN_KEY`, and
//! the CSRF token that goes with it.
//!
//! Stateless on purpose: every instance behind a load balancer accepts a session another
//! instance issued (they share `ADMIN_KEY`), nothing is stored per session, and changing
//! `ADMIN_KEY` signs everybody out. A session lives [`MAX_AGE`] from sign-in; signing out
//! clears the cookie in the browser and revokes the session on the instance that served
//! the sign-out (a bounded list until the session would have expired anyway). The cookie is
//! `HttpOnly` (no script reads it) and `SameSite=Strict` (no other site sends it); the CSRF
//! token, derived from the session, is handed to the page by `GET`/`POST /admin/session`
//! and required in `X-CSRF-Token` on every request that changes something.
//!
//! Cookie value: `v1.<issued, unix seconds>.<nonce, 32 hex>.<HMAC-SHA256, base64url>`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::common::{base64url_decode, base64url_encode, epoch_secs, hex, Secret};
use crate::error::SessionRefusal as Refusal;
use crate::identity::constant_time_eq;

/// The cookie's name.
pub(crate) const COOKIE: &str = "qp_session";
/// The request header that carries the CSRF token.
pub(crate) const CSRF_HEADER: &str = "x-csrf-token";
/// How long a session lasts from sign-in.
pub(crate) const MAX_AGE: Duration = Duration::from_secs(12 * 3600);
/// Revoked sessions remembered at most; past it the oldest are forgotten first (a flood of
/// sign-outs cannot grow memory; a forgotten one still expires at `MAX_AGE`).
const MAX_REVOKED: usize = 10_000;

/// A session a cookie proved (its nonce identifies it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Session {
    nonce: [u8; 16],
    issued: u64,
}

pub(crate) struct Sessions {
    /// Never printed (`Debug` below).
    key: [u8; 32],
    /// Revoked nonces → when their session expires (unix seconds).
    revoked: Mutex<HashMap<[u8; 16], u64>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").finish_non_exhaustive()
    }
}

impl Sessions {
    pub(crate) fn new(admin_key: &Secret) -> Self {
        // Domain-separated, so the signing key is never the operators' key itself.
        let mut h = Sha256::new();
        h.update(b"qwen-proxy console session v1\0");
        h.update(admin_key.expose().as_bytes());
        Self {
            key: h.finalize().into(),
            revoked: Mutex::new(HashMap::new()),
        }
    }

    /// A new session and its cookie value.
    pub(crate) fn issue(&self) -> (Session, String) {
        self.issue_at(epoch_secs())
    }

    fn issue_at(&self, now: u64) -> (Session, String) {
        // From the OS generator: a session id must not be predictable.
        let nonce: [u8; 16] = *uuid::Uuid::new_v4().as_bytes();
        let session = Session { nonce, issued: now };
        let payload = format!("v1.{now}.{}", hex(&nonce));
        let mac = base64url_encode(&self.mac(payload.as_bytes()));
        (session, format!("{payload}.{mac}"))
    }

    /// The session a cookie value proves.
    pub(crate) fn verify(&self, cookie: &str) -> Result<Session, Refusal> {
        self.verify_at(cookie, epoch_secs())
    }

    fn verify_at(&self, cookie: &str, now: u64) -> Result<Session, Refusal> {
        let (payload, mac) = cookie.rsplit_once('.').ok_or(Refusal::Invalid)?;
        let mac = base64url_decode(mac).ok_or(Refusal::Invalid)?;
        if !constant_time_eq(&mac, &self.mac(payload.as_bytes())) {
            return Err(Refusal::Invalid);
        }
        // Signed by us: the fields are ours, parsed strictly all the same.
        let mut fields = payload.split('.');
        let (Some("v1"), Some(issued), Some(nonce), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(Refusal::Invalid);
        };
        let issued: u64 = issued.parse().map_err(|_| Refusal::Invalid)?;
        let nonce = parse_nonce(nonce).ok_or(Refusal::Invalid)?;
        if now.saturating_sub(issued) >= MAX_AGE.as_secs() || issued > now + 60 {
            return Err(Refusal::Expired);
        }
        let revoked = self.revoked.lock().unwrap_or_else(|p| p.into_inner());
        if revoked.contains_key(&nonce) {
            return Err(Refusal::SignedOut);
        }
        Ok(Session { nonce, issued })
    }

    /// The CSRF token of a session (the page sends it back in [`CSRF_HEADER`]).
    pub(crate) fn csrf_token(&self, session: &Session) -> String {
        let mut input = b"csrf.".to_vec();
        input.extend_from_slice(&session.nonce);
        base64url_encode(&self.mac(&input))
    }

    /// Whether `presented` is the session's CSRF token (constant time).
    pub(crate) fn csrf_matches(&self, session: &Session, presented: &str) -> bool {
        constant_time_eq(presented.as_bytes(), self.csrf_token(session).as_bytes())
    }

    /// Seconds the session has left.
    pub(crate) fn seconds_left(&self, session: &Session) -> u64 {
        (session.issued + MAX_AGE.as_secs()).saturating_sub(epoch_secs())
    }

    /// Sign a session out on this instance.
    pub(crate) fn revoke(&self, session: &Session) {
        let now = epoch_secs();
        let mut revoked = self.revoked.lock().unwrap_or_else(|p| p.into_inner());
        revoked.retain(|_, expires| *expires > now);
        if revoked.len() >= MAX_REVOKED {
            if let Some(oldest) = revoked.iter().min_by_key(|(_, e)| **e).map(|(n, _)| *n) {
                revoked.remove(&oldest);
            }
        }
        revoked.insert(session.nonce, session.issued + MAX_AGE.as_secs());
    }

    fn mac(&self, data: &[u8]) -> [u8; 32] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).unwrap_or_else(|_| unreachable!());
        mac.update(data);
        mac.finalize().into_bytes().into()
    }
}

fn parse_nonce(s: &str) -> Option<[u8; 16]> {
    if s.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// `GET /admin/session` (a trailing slash allowed): whether the console is signed in,
/// answered to anyone — the one exemption from the operators' key on `/admin`, decided here
/// for the auth layer and the admin API alike.
pub(crate) fn is_probe(method: &hyper::Method, path: &str) -> bool {
    method == hyper::Method::GET && path.trim_end_matches('/') == "/admin/session"
}

/// `Set-Cookie` for a new session (`secure`: the browser reached us over HTTPS).
pub(crate) fn set_cookie(value: &str, secure: bool) -> String {
    format!(
        "{COOKIE}={value}; Path=/admin; Max-Age={}; HttpOnly; SameSite=Strict{}",
        MAX_AGE.as_secs(),
        if secure { "; Secure" } else { "" }
    )
}

/// `Set-Cookie` that removes the session cookie.
pub(crate) fn clear_cookie(secure: bool) -> String {
    format!(
        "{COOKIE}=; Path=/admin; Max-Age=0; HttpOnly; SameSite=Strict{}",
        if secure { "; Secure" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sessions(key: &str) -> Sessions {
        Sessions::new(&Secret::new(key))
    }

    #[test]
    fn an_issued_cookie_verifies_until_it_expires() {
        let s = sessions("an-admin-key-of-some-length");
        let (session, cookie) = s.issue_at(1_000_000);
        assert!(cookie.starts_with("v1.1000000."));
        assert_eq!(s.verify_at(&cookie, 1_000_000), Ok(session));
        assert_eq!(s.verify_at(&cookie, 1_000_000 + 12 * 3600 - 1), Ok(session));
        assert_eq!(
            s.verify_at(&cookie, 1_000_000 + 12 * 3600),
            Err(Refusal::Expired)
        );
        // Issued in the future (a clock far off, or forged): refused.
        assert_eq!(s.verify_at(&cookie, 1_000_000 - 120), Err(Refusal::Expired));
    }

    #[test]
    fn another_admin_key_or_a_changed_byte_is_refused() {
        let a = sessions("an-admin-key-of-some-length");
        let b = sessions("another-admin-key-of-length");
        let (_, cookie) = a.issue_at(1_000_000);
        assert_eq!(b.verify_at(&cookie, 1_000_000), Err(Refusal::Invalid));
        // A later issue time with the old signature.
        let forged = cookie.replacen("v1.1000000.", "v1.1000001.", 1);
        assert_eq!(a.verify_at(&forged, 1_000_001), Err(Refusal::Invalid));
        for junk in ["", ".", "v1", "v1.1.2.3", "x.y.z.w", "v1.1000000.zz.AAAA"] {
            assert_eq!(
                a.verify_at(junk, 1_000_000),
                Err(Refusal::Invalid),
                "{junk}"
            );
        }
    }

    #[test]
    fn instances_sharing_the_key_accept_each_others_sessions() {
        let a = sessions("an-admin-key-of-some-length");
        let b = sessions("an-admin-key-of-some-length");
        let (session, cookie) = a.issue_at(1_000_000);
        assert_eq!(b.verify_at(&cookie, 1_000_100), Ok(session));
        assert_eq!(a.csrf_token(&session), b.csrf_token(&session));
    }

    #[test]
    fn csrf_tokens_are_per_session() {
        let s = sessions("an-admin-key-of-some-length");
        let (one, _) = s.issue_at(1_000_000);
        let (two, _) = s.issue_at(1_000_000);
        let token = s.csrf_token(&one);
        assert!(s.csrf_matches(&one, &token));
        assert!(!s.csrf_matches(&two, &token));
        assert!(!s.csrf_matches(&one, ""));
        assert_eq!(token.len(), 43, "32 bytes, base64url without padding");
    }

    #[test]
    fn a_revoked_session_is_signed_out_and_others_are_not() {
        let s = sessions("an-admin-key-of-some-length");
        let now = epoch_secs();
        let (one, c1) = s.issue_at(now);
        let (_, c2) = s.issue_at(now);
        s.revoke(&one);
        assert_eq!(s.verify_at(&c1, now), Err(Refusal::SignedOut));
        assert!(s.verify_at(&c2, now).is_ok());
    }

    #[test]
    fn only_a_get_of_the_session_itself_is_the_probe() {
        use hyper::Method;
        assert!(is_probe(&Method::GET, "/admin/session"));
        assert!(is_probe(&Method::GET, "/admin/session/"));
        for (method, path) in [
            (Method::HEAD, "/admin/session"),
            (Method::POST, "/admin/session"),
            (Method::GET, "/admin//session"),
            (Method::GET, "/admin/./session"),
            (Method::GET, "/admin/session/x"),
            (Method::GET, "/admin/sessions"),
            (Method::GET, "/admin/accounts"),
        ] {
            assert!(!is_probe(&method, path), "{method} {path}");
        }
    }

    #[test]
    fn cookies_are_http_only_strict_and_secure_over_https() {
        let c = set_cookie("v", true);
        assert_eq!(
            c,
            "qp_session=v; Path=/admin; Max-Age=43200; HttpOnly; SameSite=Strict; Secure"
        );
        assert!(!set_cookie("v", false).contains("Secure"));
        assert!(clear_cookie(false).contains("Max-Age=0"));
    }
}
