//! Sign-in and refresh (qwen-protocol §2.3): the legacy `POST /api/v1/auths/signin` on the
//! chat domain (a 30-day JWT in the body), and the auth-domain flow
//! (`QWEN_AUTH_BASE_URL`, auth.qwen.ai, since 2026-09-30): `POST /api/v2/auths/signin`
//! gives a short-lived access token (≈ 900 s) and a refresh token, and
//! `GET /api/v2/auths/refresh` trades the refresh token for new ones — the refresh token
//! is rotated every time, so the new one must be kept.
//!
//! Passwords go out as the lowercase hex SHA-256 the web front end sends; the plaintext
//! never leaves the process.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, COOKIE, SET_COOKIE};
use hyper::{Method, Request};
use serde_json::Value;

use super::classify::body_error;
use super::client::{
    effective_status, header_str, json_or_error, read_limited, Caller, QwenClient,
};
use super::headers::Page;
use crate::common::{sha256_hex, Secret};
use crate::error::{ProxyError, UpstreamClass, UpstreamError};

pub use crate::config::SigninFlow;

/// What a sign-in or refresh yields.
#[derive(Debug, Clone)]
pub struct Tokens {
    pub access: Secret,
    /// Only the auth-domain flow has one; store the newest, the old one is spent.
    pub refresh: Option<Secret>,
}

impl QwenClient {
    /// Sign in with email and password.
    pub async fn sign_in(
        &self,
        who: &Caller,
        flow: SigninFlow,
        email: &str,
        password: &Secret,
    ) -> Result<Tokens, ProxyError> {
        let r = async {
            let body = serde_json::json!({
                "email": email,
                "password": sha256_hex(password.expose().as_bytes()),
            });
            let (base, path) = match flow {
                SigninFlow::Auth => (self.auth_base(), "/api/v2/auths/signin"),
                SigninFlow::Legacy => (self.chat_base(), "/api/v1/auths/signin"),
            };
            let req = self.auth_request(
                who,
                Method::POST,
                format!("{base}{path}"),
                None,
                Bytes::from(body.to_string()),
            )?;
            self.tokens_from(who, req).await
        }
        .await;
        self.record("signin", r)
    }

    /// Trade a refresh token for new tokens (auth-domain flow). The answer's refresh token
    /// replaces the one sent, which is spent.
    pub async fn refresh(&self, who: &Caller, refresh: &Secret) -> Result<Tokens, ProxyError> {
        let r = async {
            let cookie = format!("refresh_token={}", refresh.expose());
            let req = self.auth_request(
                who,
                Method::GET,
                format!("{}/api/v2/auths/refresh", self.auth_base()),
                Some(cookie),
                Bytes::new(),
            )?;
            let mut new = self.tokens_from(who, req).await?;
            // Not rotated this time: the one sent stays valid.
            new.refresh.get_or_insert_with(|| refresh.clone());
            Ok(new)
        }
        .await;
        self.record("refresh", r)
    }

    /// Send a sign-in or refresh request and read the tokens from its answer.
    async fn tokens_from(
        &self,
        who: &Caller,
        req: Request<Full<Bytes>>,
    ) -> Result<Tokens, ProxyError> {
        let rsp = self.dispatch(who, req).await?;
        let status = effective_status(&rsp);
        if matches!(status, 400 | 401 | 403) {
            let content_type = header_str(&rsp, CONTENT_TYPE).to_ascii_lowercase();
            let body = read_limited(rsp.into_body()).await?;
            return Err(refusal(
                status,
                &body,
                body_error(status, &content_type, &body),
            ));
        }
        let cookies = set_cookies(rsp.headers());
        let json = json_or_error(rsp).await?;
        tokens(&json, &cookies).ok_or_else(|| {
            ProxyError::upstream(UpstreamClass::Protocol, "answered without an access token")
        })
    }

    /// The account's browser headers, without its old token, as the auth pages send them.
    fn auth_request(
        &self,
        who: &Caller,
        method: Method,
        uri: String,
        cookie: Option<String>,
        body: Bytes,
    ) -> Result<Request<Full<Bytes>>, ProxyError> {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .body(Full::new(body))
            .map_err(|e| ProxyError::Internal(format!("building a sign-in request: {e}")))?;
        let mut h = who.headers().build(Page::Home, false);
        h.remove(AUTHORIZATION);
        h.remove(COOKIE);
        if let Some(c) = cookie {
            let mut v = HeaderValue::from_str(&c).map_err(|_| {
                ProxyError::Internal("a refresh token that is not a header value".to_owned())
            })?;
            v.set_sensitive(true);
            h.insert(COOKIE, v);
        }
        // The auth domain refuses requests without these ("Invalid request header").
        h.insert("x-request-origin", HeaderValue::from_static("web"));
        h.insert("sec-fetch-site", HeaderValue::from_static("same-site"));
        *req.headers_mut() = h;
        Ok(req)
    }
}

/// A 400/401/403 to a sign-in or refresh: refused credentials — the account's fault, not
/// a passing failure — on 401/403, and on a 400 that says so (`{"detail":"incorrect"}`,
/// "not registered", a bad token); the sign-in wall's WAF page stays a challenge (try later,
/// from elsewhere), and a 400 "Internal error" stays the upstream's fault.
fn refusal(status: u16, body: &[u8], err: UpstreamError) -> ProxyError {
    if err.class == UpstreamClass::Challenge {
        return err.into();
    }
    let text = String::from_utf8_lossy(body).to_ascii_lowercase();
    let says_refused = [
        "incorrect",
        "not registered",
        "password",
        "refresh",
        "token",
    ]
    .iter()
    .any(|w| text.contains(w));
    if status != 400 || says_refused {
        return ProxyError::upstream(
            UpstreamClass::AuthFailed,
            format!("refused (HTTP {status}): wrong email or password, or a spent refresh token"),
        );
    }
    err.into()
}

/// The tokens of a sign-in or refresh answer: the access token in the body
/// (`data.access_token`; the legacy `token`) or its `token` cookie; the refresh token in the
/// body or its `refresh_token` cookie.
fn tokens(json: &Value, set_cookies: &[String]) -> Option<Tokens> {
    let body = |pointer: &str| {
        json.pointer(pointer)
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let access = body("/data/access_token")
        .or_else(|| body("/token"))
        .or_else(|| body("/data/token"))
        .or_else(|| cookie_value(set_cookies, "token"))?;
    let refresh =
        body("/data/refresh_token").or_else(|| cookie_value(set_cookies, "refresh_token"));
    Some(Tokens {
        access: Secret::new(access),
        refresh: refresh.map(Secret::new),
    })
}

fn set_cookies(h: &hyper::HeaderMap) -> Vec<String> {
    h.get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_owned)
        .collect()
}

/// The value of cookie `name` among `Set-Cookie` headers.
fn cookie_value(set_cookies: &[String], name: &str) -> Option<String> {
    set_cookies.iter().find_map(|c| {
        let first = c.split(';').next()?;
        let (k, v) = first.split_once('=')?;
        (k.trim() == name && !v.trim().is_empty()).then(|| v.trim().to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_sent_as_lowercase_hex_sha256() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn refusals_are_told_from_upstream_faults() {
        let class = |status: u16, body: &str| {
            let err = body_error(status, "application/json", body.as_bytes());
            refusal(status, body.as_bytes(), err).upstream_class()
        };
        assert_eq!(
            class(400, r#"{"detail":"incorrect"}"#),
            Some(UpstreamClass::AuthFailed)
        );
        assert_eq!(class(401, "{}"), Some(UpstreamClass::AuthFailed));
        assert_eq!(
            class(
                400,
                r#"{"success":false,"data":{"code":"Bad_Request","details":"Internal error"}}"#
            ),
            Some(UpstreamClass::Rejected),
            "not a refusal of the credentials: tried again later, the account stays"
        );
        let waf = "<!doctypehtml><meta name=\"aliyun_waf_aa\" content=\"x\">";
        let err = body_error(403, "text/html", waf.as_bytes());
        assert_eq!(
            refusal(403, waf.as_bytes(), err).upstream_class(),
            Some(UpstreamClass::Challenge)
        );
    }

    #[test]
    fn tokens_come_from_the_body_or_the_cookies() {
        let auth = tokens(
            &serde_json::json!({"success": true, "data": {"access_token": "a1"}}),
            &["refresh_token=r1; Path=/; HttpOnly".to_owned()],
        )
        .unwrap();
        assert_eq!(auth.access.expose(), "a1");
        assert_eq!(auth.refresh.unwrap().expose(), "r1");
        let legacy = tokens(&serde_json::json!({"id": "u", "token": "t1"}), &[]).unwrap();
        assert_eq!(legacy.access.expose(), "t1");
        assert!(legacy.refresh.is_none());
        let v2_cookie_only = tokens(&serde_json::json!({"id": "u"}), &["token=t2".to_owned()]);
        assert_eq!(v2_cookie_only.unwrap().access.expose(), "t2");
        assert!(tokens(&serde_json::json!({"data": {}}), &[]).is_none());
    }

    #[test]
    fn cookie_values_come_from_the_first_attribute_only() {
        let c = vec![
            "refresh_token=r1; Path=/; HttpOnly".to_owned(),
            "token=t1; Path=/".to_owned(),
            "other=; Path=/".to_owned(),
        ];
        assert_eq!(cookie_value(&c, "refresh_token").as_deref(), Some("r1"));
        assert_eq!(cookie_value(&c, "token").as_deref(), Some("t1"));
        assert_eq!(cookie_value(&c, "other"), None);
        assert_eq!(cookie_value(&c, "Path"), None);
    }
}
