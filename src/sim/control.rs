//! Control endpoints for tests: the sticky per-account penalties of the `@@sim:account_*`
//! directives, applied to a named account without a completion having to land there. (A
//! directive travels with its prompt: when the proxy moves a refused turn to another
//! account it sends the same prompt again, and the directive would hit that account too.)
//!
//! `POST /__sim/accounts/{key}/{action}[?arg]`, where `{key}` is the account's key in
//! `/__sim/stats` `accounts` — its email in strict mode, its token out of the box
//! (percent-encoding allowed). Answers `{"account": key, "applied": action}`; 404 for an
//! unknown action or, in strict mode, an email that is not listed; 400 for a malformed
//! argument.

use hyper::StatusCode;
use serde_json::json;
use tokio::time::Instant;

use super::handlers::{json_ok, respond, SimBody, SimService};
use super::scenario;
use super::state::lock;

type Rsp = hyper::Response<SimBody>;

fn refused(status: StatusCode, detail: String) -> Rsp {
    respond(
        status,
        None,
        "application/json",
        json!({ "detail": detail }).to_string(),
    )
}

/// `%XX` escapes decoded (an email's `@` may arrive as `%40`); `None` if malformed.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The value of `name` in a query string.
fn param<'q>(query: Option<&'q str>, name: &str) -> Option<&'q str> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
}

impl SimService {
    /// `POST /__sim/accounts/{key}/{action}`: see the module documentation and each action.
    pub(super) fn control(&self, path: &str, query: Option<&str>) -> Rsp {
        let Some((key, action)) = path
            .strip_prefix("/__sim/accounts/")
            .and_then(|rest| rest.trim_end_matches('/').rsplit_once('/'))
            .and_then(|(key, action)| Some((percent_decode(key)?, action)))
            .filter(|(key, _)| !key.is_empty())
        else {
            return refused(
                StatusCode::NOT_FOUND,
                "expected /__sim/accounts/{key}/{action}".to_owned(),
            );
        };
        // Penalties are keyed by who owns the chats: the account id in strict mode.
        let account = match &self.config.accounts {
            None => key.clone(),
            Some(accounts) => match accounts.id_of(&key) {
                Some(id) => id.to_owned(),
                None => {
                    return refused(
                        StatusCode::NOT_FOUND,
                        format!("no account {key:?} in the accounts file"),
                    )
                }
            },
        };
        let applied = match action {
            "ban" => self.ban(&account),
            "quota" => self.quota(&account, param(query, "hours")),
            "challenge" => self.challenge(&account, param(query, "secs")),
            "expire_token" => self.expire_token(&account),
            other => {
                return refused(
                    StatusCode::NOT_FOUND,
                    format!("unknown action {other:?} (ban, quota, challenge, expire_token)"),
                )
            }
        };
        match applied {
            Ok(()) => json_ok(json!({"account": key, "applied": action})),
            Err(detail) => refused(StatusCode::BAD_REQUEST, detail),
        }
    }

    /// Impose what `directive` (an `@@sim:` account directive) imposes, on `account`.
    fn impose(&self, account: &str, directive: &str) -> Result<(), String> {
        let (parsed, _) = scenario::parse(directive);
        if !parsed.unknown.is_empty() {
            return Err(format!("malformed argument: {}", parsed.unknown.join(", ")));
        }
        lock(&self.state.penalties).impose(account, &parsed.account, Instant::now());
        Ok(())
    }

    /// `POST /__sim/accounts/{key}/ban`: the account is disabled for good, as
    /// `@@sim:account_ban` does — its completions and `chats/new` get 403 "account is
    /// disabled" — and its streams running now end after their next frame with the
    /// in-stream error `{"error":{"code":"Forbidden","details":"account is disabled"}}`.
    fn ban(&self, account: &str) -> Result<(), String> {
        self.impose(account, "@@sim:account_ban")
    }

    /// `POST /__sim/accounts/{key}/quota[?hours=H]` (default 4, fractions allowed): the
    /// account's daily quota is used up for H hours, as `@@sim:account_quota=H` does — its
    /// completions get `RateLimited` with `num` H until then.
    fn quota(&self, account: &str, hours: Option<&str>) -> Result<(), String> {
        match hours {
            Some(h) => self.impose(account, &format!("@@sim:account_quota={h}")),
            None => self.impose(account, "@@sim:account_quota"),
        }
    }

    /// `POST /__sim/accounts/{key}/challenge[?secs=S]` (default 60, fractions allowed): the
    /// account's completions get the punish JSON for S seconds, as
    /// `@@sim:account_challenge=S` does.
    fn challenge(&self, account: &str, secs: Option<&str>) -> Result<(), String> {
        match secs {
            Some(s) => self.impose(account, &format!("@@sim:account_challenge={s}")),
            None => self.impose(account, "@@sim:account_challenge"),
        }
    }

    /// `POST /__sim/accounts/{key}/expire_token`: the account's next completion finds the
    /// token it presents expired — revoked, 401 "Token has expired" — as with
    /// `@@sim:expire_token`, but once: the same prompt sent again with a renewed token
    /// passes (the directive would revoke that one too).
    fn expire_token(&self, account: &str) -> Result<(), String> {
        lock(&self.state.penalties).expire_next(account);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper::Request;
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use serde_json::{json, Value};
    use sha2::{Digest, Sha256};

    use crate::sim::accounts::Accounts;
    use crate::sim::{Gate, SimConfig, Simulator};

    struct Sim {
        sim: Simulator,
        client: Client<HttpConnector, Full<Bytes>>,
    }

    impl Sim {
        async fn start(accounts: Option<Accounts>) -> Self {
            let config = SimConfig {
                gate: Gate::None,
                linger: Duration::from_millis(5),
                accounts: accounts.map(Arc::new),
                ..SimConfig::default()
            };
            let sim = Simulator::start(SocketAddr::from(([127, 0, 0, 1], 0)), config)
                .await
                .unwrap();
            let client = Client::builder(TokioExecutor::new()).build_http();
            Sim { sim, client }
        }

        async fn request(
            &self,
            method: &str,
            path: &str,
            token: Option<&str>,
            body: Value,
        ) -> hyper::Response<hyper::body::Incoming> {
            let mut b = Request::builder()
                .method(method)
                .uri(format!("{}{path}", self.sim.base_url()));
            if let Some(t) = token {
                b = b.header("cookie", format!("token={t}"));
            }
            let req = b.body(Full::new(Bytes::from(body.to_string()))).unwrap();
            tokio::time::timeout(Duration::from_secs(10), self.client.request(req))
                .await
                .unwrap()
                .unwrap()
        }

        /// Status and body.
        async fn call(&self, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
            let rsp = self.request(method, path, token, json!({})).await;
            let status = rsp.status().as_u16();
            let body = rsp.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8_lossy(&body).into_owned())
        }

        /// A new chat of `token` and one completion in it (not read yet).
        async fn complete(
            &self,
            token: &str,
            text: &str,
        ) -> hyper::Response<hyper::body::Incoming> {
            let chat = self
                .request("POST", "/api/v2/chats/new", Some(token), json!({}))
                .await;
            let chat: Value =
                serde_json::from_slice(&chat.into_body().collect().await.unwrap().to_bytes())
                    .unwrap();
            // A refused `chats/new` (a revoked token): the completion is refused the same way.
            let id = chat["data"]["id"].as_str().unwrap_or("none").to_owned();
            let body = json!({"chat_id": id, "model": "qwen3.7-plus", "stream": true,
                "messages": [{"role": "user", "content": text}]});
            self.request("POST", "/api/v2/chat/completions", Some(token), body)
                .await
        }

        /// The whole answer of a completion, as text.
        async fn ask(&self, token: &str, text: &str) -> String {
            let rsp = self.complete(token, text).await;
            let body = rsp.into_body().collect().await.unwrap().to_bytes();
            String::from_utf8_lossy(&body).into_owned()
        }

        async fn stats(&self) -> Value {
            serde_json::from_str(&self.call("GET", "/__sim/stats", None).await.1).unwrap()
        }
    }

    /// A completion that streamed its answer to the end.
    fn answered(text: &str) -> bool {
        text.starts_with("data: {\"response.created\"")
            && text.contains("\"status\": \"finished\", \"phase\": \"answer\"")
    }

    #[tokio::test]
    async fn quota_and_challenge_stick_to_the_named_account() {
        let s = Sim::start(None).await;
        let (status, body) = s
            .call("POST", "/__sim/accounts/tok-a/quota?hours=0.5", None)
            .await;
        assert_eq!(status, 200);
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap(),
            json!({"account": "tok-a", "applied": "quota"})
        );
        for _ in 0..2 {
            let refused: Value = serde_json::from_str(&s.ask("tok-a", "hi").await).unwrap();
            assert_eq!(refused["data"]["code"], "RateLimited");
            assert_eq!(refused["data"]["num"], 0.5);
        }
        assert!(answered(&s.ask("tok-b", "hi").await));

        assert_eq!(
            s.call("POST", "/__sim/accounts/tok-c/challenge", None)
                .await
                .0,
            200
        );
        let punished: Value = serde_json::from_str(&s.ask("tok-c", "hi").await).unwrap();
        assert_eq!(punished["ret"][0], "FAIL_SYS_USER_VALIDATE");
        // A short challenge ends by itself.
        s.call("POST", "/__sim/accounts/tok-d/challenge?secs=0.2", None)
            .await;
        assert!(!answered(&s.ask("tok-d", "hi").await));
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(answered(&s.ask("tok-d", "hi").await));

        let stats = s.stats().await;
        assert_eq!(stats["accounts"]["tok-a"]["refused"], 2);
        assert_eq!(stats["accounts"]["tok-b"]["refused"], 0);
        assert_eq!(stats["accounts"]["tok-c"]["refused"], 1);
        assert_eq!(stats["accounts"]["tok-d"]["refused"], 1);
    }

    #[tokio::test]
    async fn malformed_calls_are_refused_and_change_nothing() {
        let s = Sim::start(None).await;
        for (path, status) in [
            ("/__sim/accounts/tok-a/quota?hours=soon", 400),
            ("/__sim/accounts/tok-a/challenge?secs=-1", 400),
            ("/__sim/accounts/tok-a/explode", 404),
            ("/__sim/accounts/ban", 404),
            ("/__sim/accounts//ban", 404),
        ] {
            assert_eq!(s.call("POST", path, None).await.0, status, "{path}");
        }
        assert_eq!(
            s.call("GET", "/__sim/accounts/tok-a/ban", None).await.0,
            404
        );
        assert!(answered(&s.ask("tok-a", "hi").await));
    }

    #[tokio::test]
    async fn a_ban_ends_the_running_streams_at_a_frame_boundary() {
        let s = Sim::start(None).await;
        // 100 frames of 4 characters, 20 ms apart: about two seconds.
        let running = s.complete("tok-a", "@@sim:long=400 @@sim:delay=20").await;
        let other = s.complete("tok-b", "@@sim:long=40 @@sim:delay=20").await;
        let mut body = running.into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert!(first.starts_with(b"data: {\"response.created\""));

        let (status, _) = s.call("POST", "/__sim/accounts/tok-a/ban", None).await;
        assert_eq!(status, 200);
        let rest = body.collect().await.unwrap().to_bytes();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&first),
            String::from_utf8_lossy(&rest)
        );
        let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
        assert_eq!(
            events.last().copied(),
            Some(r#"data: {"error":{"code":"Forbidden","details":"account is disabled"}}"#),
            "{text}"
        );
        // Ended early: far fewer than the 100 answer frames, each one whole.
        assert!(events.len() < 50, "{}", events.len());
        for e in &events[..events.len() - 1] {
            let json = e.strip_prefix("data: ").unwrap();
            serde_json::from_str::<Value>(json.trim_end()).unwrap();
        }
        // Another account's stream is untouched.
        let other = other.into_body().collect().await.unwrap().to_bytes();
        let other = String::from_utf8_lossy(&other);
        assert!(!other.contains("error"), "{other}");
        assert!(other.contains("\"status\": \"finished\""), "{other}");
        // From now on the account is refused, completions and new chats alike.
        let refused = s.call("POST", "/api/v2/chats/new", Some("tok-a")).await;
        assert_eq!(refused.0, 403);
        assert!(refused.1.contains("account is disabled"));
        let stats = s.stats().await;
        assert_eq!(
            stats["aborted_streams"], 0,
            "the server ended it: not an abort"
        );
        assert_eq!(stats["in_flight"], 0);
    }

    #[tokio::test]
    async fn strict_mode_keys_are_emails_and_an_armed_expiry_is_used_once() {
        let accounts =
            Accounts::parse("alice@example.com wonderland\n", Duration::from_secs(600)).unwrap();
        let s = Sim::start(Some(accounts)).await;
        let sign_in = || async {
            let hashed: String = Sha256::digest(b"wonderland")
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            let rsp = s
                .request(
                    "POST",
                    "/api/v1/auths/signin",
                    None,
                    json!({"email": "alice@example.com", "password": hashed}),
                )
                .await;
            let v: Value =
                serde_json::from_slice(&rsp.into_body().collect().await.unwrap().to_bytes())
                    .unwrap();
            v["token"].as_str().unwrap().to_owned()
        };
        let token = sign_in().await;
        assert_eq!(
            s.call("POST", "/__sim/accounts/bob@example.com/ban", None)
                .await
                .0,
            404,
            "not listed"
        );
        assert_eq!(
            s.call(
                "POST",
                "/__sim/accounts/alice%40example.com/expire_token",
                None
            )
            .await
            .0,
            200
        );
        let expired = s.ask(&token, "hi").await;
        assert!(expired.contains("Token has expired"), "{expired}");
        // The revoked token stays revoked; a new one passes: the expiry was used up.
        assert!(s.ask(&token, "hi").await.contains("Token has expired"));
        let renewed = sign_in().await;
        assert!(answered(&s.ask(&renewed, "hi").await));

        s.call(
            "POST",
            "/__sim/accounts/alice@example.com/quota?hours=1",
            None,
        )
        .await;
        assert!(s.ask(&renewed, "hi").await.contains("RateLimited"));
        let stats = s.stats().await;
        assert_eq!(
            stats["accounts"]["alice@example.com"],
            json!({"completions": 4, "refused": 3, "chats_created": 3})
        );
    }
}
