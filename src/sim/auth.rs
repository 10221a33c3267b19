//! Sign-in and session refresh: chat.qwen.ai's `POST /api/v1/auths/signin` and the newer
//! auth.qwen.ai flow (`POST /api/v2/auths/signin`, `GET /api/v2/auths/refresh` with a
//! rotating refresh-token cookie), both behind the WAF's sign-in wall. The same simulator
//! serves both hosts.
//!
//! Out of the box any email with any 64-hex password signs in (token `sim-<id>`); with
//! `--accounts` only the listed accounts do, with JWT-shaped tokens that expire.

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue, SET_COOKIE};
use hyper::{Request, StatusCode};
use serde_json::{json, Value};
use tokio::time::Instant;

use super::handlers::{
    account_id, cookie, json_ok, punish, respond, unauthorized_code, waf_page, SimBody, SimService,
};
use super::state::lock;
use super::wire;
use crate::common::{epoch_millis, epoch_secs};

type Rsp = hyper::Response<SimBody>;

/// How long a refresh-token cookie lives (30 days).
const REFRESH_COOKIE_MAX_AGE: u64 = 30 * 86_400;

/// Lifetime of out-of-the-box tokens (they never really expire; this is what we announce).
const DEFAULT_TOKEN_TTL_SECS: u64 = 30 * 86_400;

/// A successful sign-in.
struct Grant {
    id: String,
    email: String,
    token: String,
    expires_in: u64,
}

fn incorrect() -> Rsp {
    respond(
        StatusCode::BAD_REQUEST,
        None,
        "application/json",
        r#"{"detail":"incorrect"}"#,
    )
}

/// The lowercase hex SHA-256 the upstream expects, never the plaintext.
fn is_sha256_hex(password: &str) -> bool {
    password.len() == 64
        && password
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn set_cookie(rsp: &mut Rsp, value: String) {
    if let Ok(v) = HeaderValue::from_str(&value) {
        rsp.headers_mut().append(SET_COOKIE, v);
    }
}

/// The session cookies the auth host sets: the refresh token (HttpOnly) and the token.
fn set_session_cookies(rsp: &mut Rsp, refresh_token: &str, token: &str) {
    set_cookie(
        rsp,
        format!(
            "refresh_token={refresh_token}; Path=/; HttpOnly; Max-Age={REFRESH_COOKIE_MAX_AGE}"
        ),
    );
    set_cookie(rsp, format!("token={token}; Path=/"));
}

/// An out-of-the-box token for `email`: `sim-<id>` at sign-in, as v1 always issued;
/// refreshes get a new one each (`sim-<id>-<random>`), so a revoked token can be replaced.
fn open_token(email: &str, refreshed: bool) -> String {
    if refreshed {
        let nonce = uuid::Uuid::new_v4().simple().to_string();
        format!("sim-{}-{}", account_id(email), &nonce[..12])
    } else {
        format!("sim-{}", account_id(email))
    }
}

impl SimService {
    /// The WAF's sign-in wall: record this attempt; the slider page if it is one too many.
    fn signin_wall(&self) -> Option<Rsp> {
        lock(&self.state.auth).signin_times_ms.push(epoch_millis());
        let admitted =
            lock(&self.state.signin_wall).admit(Instant::now(), self.config.signin_limit);
        (!admitted).then(waf_page)
    }

    /// Count a sign-in's outcome and pass its answer on.
    fn signin_outcome(&self, rsp: Rsp, accepted: bool) -> Rsp {
        let mut auth = lock(&self.state.auth);
        if accepted {
            auth.signins += 1;
        } else {
            auth.signins_refused += 1;
        }
        rsp
    }

    /// Check email and hashed password of a sign-in body.
    fn credentials(&self, body: &Bytes) -> Option<Grant> {
        let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let email = v.get("email").and_then(Value::as_str).unwrap_or("");
        let password = v.get("password").and_then(Value::as_str).unwrap_or("");
        if email.is_empty() || !is_sha256_hex(password) {
            return None;
        }
        match &self.config.accounts {
            Some(accounts) => {
                let (a, token) = accounts.sign_in(email, password)?;
                Some(Grant {
                    id: a.id,
                    email: a.email,
                    token,
                    expires_in: accounts.token_ttl().as_secs(),
                })
            }
            None => Some(Grant {
                id: account_id(email),
                email: email.to_owned(),
                token: open_token(email, false),
                expires_in: DEFAULT_TOKEN_TTL_SECS,
            }),
        }
    }

    /// `POST /api/v1/auths/signin` (chat.qwen.ai).
    pub(super) async fn signin_v1(&self, req: Request<Incoming>) -> Rsp {
        if let Some(wall) = self.signin_wall() {
            return self.signin_outcome(wall, false);
        }
        let Some(body) = self.read_body(req.into_body()).await else {
            return self.signin_outcome(punish(), false);
        };
        match self.credentials(&body) {
            Some(g) => self.signin_outcome(
                json_ok(
                    json!({"id": g.id, "email": g.email, "name": g.email, "role": "user",
                           "token": g.token, "token_type": "Bearer", "expires_at": epoch_secs() + 30 * 86_400}),
                ),
                true,
            ),
            None => self.signin_outcome(incorrect(), false),
        }
    }

    /// `POST /api/v2/auths/signin` (auth.qwen.ai): the front end's headers are required;
    /// the answer opens a session (refresh-token cookie).
    pub(super) async fn signin_v2(&self, req: Request<Incoming>) -> Rsp {
        if let Some(wall) = self.signin_wall() {
            return self.signin_outcome(wall, false);
        }
        let (parts, body) = req.into_parts();
        let front_end = ["version", "source", "x-request-origin"];
        if front_end.iter().any(|k| !parts.headers.contains_key(*k)) {
            let rsp = respond(
                StatusCode::BAD_REQUEST,
                None,
                "application/json",
                wire::INVALID_REQUEST_HEADER_JSON,
            );
            return self.signin_outcome(rsp, false);
        }
        let Some(body) = self.read_body(body).await else {
            return self.signin_outcome(punish(), false);
        };
        let Some(g) = self.credentials(&body) else {
            return self.signin_outcome(incorrect(), false);
        };
        let refresh_token = lock(&self.state.sessions).open(&g.email);
        let mut rsp = json_ok(json!({
            "success": true,
            "request_id": uuid::Uuid::new_v4().to_string(),
            "data": {"access_token": g.token, "token_type": "Bearer", "expires_in": g.expires_in,
                     "id": g.id, "email": g.email},
        }));
        set_session_cookies(&mut rsp, &refresh_token, &g.token);
        self.signin_outcome(rsp, true)
    }

    /// `GET /api/v2/auths/refresh` with `Cookie: refresh_token=…`: a new access token and
    /// a new refresh token; the presented one is spent. Not behind the sign-in wall.
    pub(super) fn refresh(&self, h: &HeaderMap) -> Rsp {
        let rotated = cookie(h, "refresh_token")
            .and_then(|presented| lock(&self.state.sessions).rotate(&presented));
        let issued = rotated.and_then(|(email, next)| {
            let token = match &self.config.accounts {
                Some(accounts) => accounts.issue_for(&email)?.1,
                None => open_token(&email, true),
            };
            Some((token, next))
        });
        let mut auth = lock(&self.state.auth);
        let Some((token, next)) = issued else {
            auth.refreshes_refused += 1;
            let code = unauthorized_code(self.config.lowercase_codes);
            return respond(
                StatusCode::UNAUTHORIZED,
                None,
                "application/json",
                wire::refresh_token_invalid_json(code),
            );
        };
        auth.refreshes += 1;
        let mut rsp = json_ok(json!({
            "success": true,
            "data": {"access_token": token, "refresh_token": next},
        }));
        set_session_cookies(&mut rsp, &next, &token);
        rsp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_lowercase_hex_digests_are_passwords() {
        let digest = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8";
        assert!(is_sha256_hex(digest));
        assert!(!is_sha256_hex(&digest.to_uppercase()));
        assert!(!is_sha256_hex("password"));
        assert!(!is_sha256_hex(&digest[1..]));
    }

    #[test]
    fn open_tokens_are_stable_at_sign_in_and_new_on_refresh() {
        assert_eq!(open_token("a@x.io", false), open_token("a@x.io", false));
        assert_ne!(open_token("a@x.io", false), open_token("b@x.io", false));
        let (r1, r2) = (open_token("a@x.io", true), open_token("a@x.io", true));
        assert_ne!(r1, r2);
        assert!(r1.starts_with(&open_token("a@x.io", false)));
    }
}
