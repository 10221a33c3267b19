//! An account's current token and the cookie jar built around it.
//!
//! Tokens are JWTs whose payload has `id` and `exp` (qwen-protocol §2.1); the payload is
//! read, never verified (that is the upstream's business): `exp` says when to refresh, `id`
//! gives the `aui`/`cnaui` cookies the browser carries when they were not captured.

use serde::{Deserialize, Serialize};

use crate::common::{base64url_decode, epoch_secs, Secret};

/// The claims we use of an account token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claims {
    pub exp: Option<u64>,
    pub user_id: Option<String>,
}

/// Read a JWT's payload (unverified). Not a JWT: no claims.
pub fn claims(token: &str) -> Claims {
    let read = || -> Option<serde_json::Value> {
        let payload = token.split('.').nth(1)?;
        serde_json::from_slice(&base64url_decode(payload)?).ok()
    };
    let Some(v) = read() else {
        return Claims::default();
    };
    Claims {
        exp: v.get("exp").and_then(serde_json::Value::as_u64),
        user_id: v
            .get("id")
            .and_then(serde_json::Value::as_str)
            // It goes into a cookie: keep it to the characters an id has.
            .filter(|id| {
                !id.is_empty()
                    && id.len() <= 128
                    && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            })
            .map(str::to_owned),
    }
}

/// The token in use, with what came with it.
#[derive(Clone, Serialize, Deserialize)]
pub struct Token {
    pub access: String,
    /// Auth-domain refresh token (rotated on each refresh: only the newest is valid).
    #[serde(default)]
    pub refresh: Option<String>,
    /// When it was obtained (Unix s): with `exp`, the token's lifetime.
    pub obtained: u64,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("exp", &self.exp())
            .field("refresh", &self.refresh.is_some())
            .finish_non_exhaustive()
    }
}

impl Token {
    pub fn new(access: &Secret, refresh: Option<&Secret>) -> Self {
        Token {
            access: access.expose().to_owned(),
            refresh: refresh.map(|r| r.expose().to_owned()),
            obtained: epoch_secs(),
        }
    }

    pub fn exp(&self) -> Option<u64> {
        claims(&self.access).exp
    }

    /// Expired at `now` (Unix s)? Unknown expiry: no.
    pub fn expired(&self, now: u64) -> bool {
        self.exp().is_some_and(|exp| exp <= now)
    }

    /// When to renew it: a fifth of its lifetime before `exp` (three minutes of a 15-minute
    /// access token), at least 30 s and at most a day before (30-day tokens: a day
    /// ahead, as peers do). `None`: no known expiry.
    pub fn renew_at(&self) -> Option<u64> {
        let exp = self.exp()?;
        let lifetime = exp.saturating_sub(self.obtained);
        let ahead = (lifetime / 5).clamp(30, 86_400);
        Some(exp.saturating_sub(ahead))
    }
}

/// The Cookie header for an account: the captured jar (if any) with `token=` set to the
/// current token, plus `aui`/`cnaui` from the token's user id when the jar lacks them.
pub fn cookie_jar(captured: Option<&str>, token: &str) -> String {
    let mut pairs: Vec<(String, String)> = captured
        .unwrap_or("")
        .split(';')
        .filter_map(|p| {
            let (k, v) = p.trim().split_once('=')?;
            let k = k.trim();
            (!k.is_empty()).then(|| (k.to_owned(), v.trim().to_owned()))
        })
        .filter(|(k, _)| k != "token" && k != "refresh_token")
        .collect();
    pairs.push(("token".to_owned(), token.to_owned()));
    if let Some(id) = claims(token).user_id {
        for name in ["aui", "cnaui"] {
            if !pairs.iter().any(|(k, _)| k == name) {
                pairs.push((name.to_owned(), id.clone()));
            }
        }
    }
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::common::base64url_encode;

    fn jwt(payload: &str) -> String {
        format!(
            "{}.{}.sig",
            base64url_encode(br#"{"alg":"HS256","typ":"JWT"}"#),
            base64url_encode(payload.as_bytes())
        )
    }

    #[test]
    fn claims_are_read_from_the_payload() {
        let t = jwt(r#"{"id":"u-42","last_password_change":0,"exp":1900000000}"#);
        assert_eq!(
            claims(&t),
            Claims {
                exp: Some(1_900_000_000),
                user_id: Some("u-42".into())
            }
        );
        assert_eq!(claims("not-a-jwt"), Claims::default());
        let odd = jwt(r#"{"id":"a; b=c","exp":1}"#);
        assert_eq!(claims(&odd).user_id, None, "no cookie syntax from a token");
    }

    #[test]
    fn renewal_is_a_fifth_of_the_lifetime_ahead_within_bounds() {
        let token = |lifetime: u64| Token {
            access: jwt(&format!(r#"{{"exp":{}}}"#, 1_000_000 + lifetime)),
            refresh: None,
            obtained: 1_000_000,
        };
        assert_eq!(token(900).renew_at(), Some(1_000_000 + 900 - 180));
        assert_eq!(token(60).renew_at(), Some(1_000_000 + 60 - 30));
        assert_eq!(
            token(30 * 86_400).renew_at(),
            Some(1_000_000 + 29 * 86_400),
            "a day ahead at most"
        );
        assert!(token(900).expired(1_000_900));
        assert!(!token(900).expired(1_000_899));
    }

    #[test]
    fn the_jar_carries_the_current_token_and_derived_ids() {
        let t = jwt(r#"{"id":"u1","exp":5}"#);
        assert_eq!(
            cookie_jar(Some("a=1; token=old; refresh_token=r"), &t),
            format!("a=1; token={t}; aui=u1; cnaui=u1")
        );
        assert_eq!(
            cookie_jar(Some("aui=mine; cnaui=mine"), &t),
            format!("aui=mine; cnaui=mine; token={t}")
        );
        assert_eq!(cookie_jar(None, "opaque"), "token=opaque");
    }

    #[test]
    fn debug_never_shows_tokens() {
        let t = Token {
            access: "SECRET-A".into(),
            refresh: Some("SECRET-R".into()),
            obtained: 0,
        };
        let s = format!("{t:?}");
        assert!(!s.contains("SECRET"), "{s}");
    }
}
