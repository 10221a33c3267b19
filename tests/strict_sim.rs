//! The simulator's strict mode (`--accounts`): sign-in with the SHA-256 password, expiring
//! JWT-shaped tokens and per-account quota — and how the proxy and `qwen-proxy check` report
//! each of them.

// Tests and benches: a failed unwrap is a failure with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use serde_json::json;
use sha2::{Digest, Sha256};
use support::Harness;

use qwen_proxy::sim::accounts::Accounts;
use qwen_proxy::sim::{BxUaGate, Gate, SimConfig, Simulator};
use support::Reply;

fn strict(ttl: Duration) -> SimConfig {
    let accounts = Accounts::parse(
        "alice@example.com wonderland 2\nbob@example.com builder\n",
        ttl,
    )
    .unwrap();
    SimConfig {
        accounts: Some(Arc::new(accounts)),
        ..SimConfig::default()
    }
}

async fn sign_in(h: &Harness, email: &str, password: &str) -> (u16, serde_json::Value) {
    let hashed: String = Sha256::digest(password.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let req = Request::post(format!("{}/api/v1/auths/signin", h.sim.base_url()))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            json!({"email": email, "password": hashed}).to_string(),
        )))
        .unwrap();
    let r = Harness::read(h.send(req).await).await;
    (r.status.as_u16(), r.json())
}

fn check(sim_url: &str, token: &str) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_qwen-proxy"))
        .args(["check", "--env-file", "/dev/null"])
        .env("QWEN_BASE_URL", sim_url)
        .env("QWEN_COOKIES", format!("token={token}"))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test]
async fn sign_in_quota_and_the_proxy() {
    // The harness's own proxy is unused here: it has no valid token yet.
    let h = Harness::start_with(&[], strict(Duration::from_secs(3600))).await;
    let (status, _) = sign_in(&h, "alice@example.com", "wrong").await;
    assert_eq!(status, 400);
    let (status, body) = sign_in(&h, "alice@example.com", "wonderland").await;
    assert_eq!(status, 200);
    let token = body["token"].as_str().unwrap().to_owned();
    assert_eq!(token.split('.').count(), 3, "JWT-shaped");

    let cookies = format!("token={token}");
    let p = h.another_proxy(&[("QWEN_COOKIES", &cookies)]).await;
    let ask = json!({"model": "qwen3.7-plus", "messages": [{"role": "user", "content": "hi"}]});
    for _ in 0..2 {
        assert_eq!(h.chat_at(p.addr, ask.clone()).await.status, 200);
    }
    // Alice's quota is 2: the third completion is the upstream's RateLimited → 429.
    let r = h.chat_at(p.addr, ask).await;
    assert_eq!(r.status, 429, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.headers["retry-after"], "14400");

    let (ok, out) = tokio::task::spawn_blocking({
        let (url, token) = (h.sim.base_url(), token.clone());
        move || check(&url, &token)
    })
    .await
    .unwrap();
    assert!(ok, "{out}");
    // The account table: the pool of one, its kind, state, expiry and verdict.
    let row = out
        .lines()
        .find(|l| l.starts_with("default "))
        .unwrap_or_else(|| panic!("no account row: {out}"));
    for part in ["cookies", "ready", "in 60 min", "token accepted"] {
        assert!(row.contains(part), "{part}: {row}");
    }
    assert!(!out.contains(&token), "no secrets in the table");
}

/// A proxy with `cookies` answers a completion with 401 and says what to refresh.
async fn assert_refused_with_advice(h: &Harness, cookies: &str) {
    let p = h.another_proxy(&[("QWEN_COOKIES", cookies)]).await;
    let r = h
        .chat_at(
            p.addr,
            json!({"model": "qwen3.7-plus", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(r.status, 401, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.error()["message"]
        .as_str()
        .unwrap()
        .contains("QWEN_COOKIES"));
}

#[tokio::test]
async fn expired_and_unknown_tokens_are_401_with_advice() {
    let h = Harness::start_with(&[], strict(Duration::ZERO)).await;
    let (_, body) = sign_in(&h, "bob@example.com", "builder").await;
    let expired = body["token"].as_str().unwrap().to_owned();
    for token in [expired.as_str(), "not-a-token"] {
        assert_refused_with_advice(&h, &format!("token={token}")).await;
    }
    let (ok, out) = tokio::task::spawn_blocking({
        let url = h.sim.base_url();
        move || check(&url, &expired)
    })
    .await
    .unwrap();
    assert!(!ok);
    assert!(out.contains("expired"), "{out}");
}

#[tokio::test]
async fn a_lower_case_unauthorized_code_is_still_an_expired_credential() {
    // Since 2026-09 the upstream writes the 401 code as `unauthorized`.
    let sim = SimConfig {
        lowercase_codes: true,
        ..strict(Duration::ZERO)
    };
    let h = Harness::start_with(&[], sim).await;
    let (_, body) = sign_in(&h, "bob@example.com", "builder").await;
    let cookies = format!("token={}", body["token"].as_str().unwrap());
    assert_refused_with_advice(&h, &cookies).await;
    // The simulator really wrote it in lower case.
    let req = Request::post(format!("{}/api/v2/chats/new", h.sim.base_url()))
        .header("cookie", &cookies)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    let raw = Harness::read(h.send(req).await).await;
    assert_eq!(raw.json()["data"]["code"], "unauthorized", "{:?}", raw.body);
}

// ---- The simulator alone, over HTTP: auth.qwen.ai sessions, the sign-in wall, account
// ---- penalties, purge-all, the guest catalogue, the stale bx-ua gate, the minimal body.

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The simulator out of the box without the browser header gate, chats unlocked quickly.
fn open_sim() -> SimConfig {
    SimConfig {
        gate: Gate::None,
        linger: Duration::from_millis(5),
        ..SimConfig::default()
    }
}

/// A simulator and a plain client for it (no proxy).
struct Sim {
    sim: Simulator,
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
}

/// The front-end headers auth.qwen.ai requires on sign-in.
const FRONT_END: [(&str, &str); 3] = [
    ("version", "0.3.12"),
    ("source", "web"),
    ("x-request-origin", "https://chat.qwen.ai"),
];

impl Sim {
    async fn start(config: SimConfig) -> Self {
        let sim = Simulator::start(std::net::SocketAddr::from(([127, 0, 0, 1], 0)), config)
            .await
            .unwrap();
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        Sim { sim, client }
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<serde_json::Value>,
    ) -> Reply {
        let mut b = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.sim.base_url()));
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let body = body.map_or_else(Bytes::new, |v| Bytes::from(v.to_string()));
        let req = b.body(Full::new(body)).unwrap();
        let rsp = tokio::time::timeout(Duration::from_secs(30), self.client.request(req))
            .await
            .unwrap()
            .unwrap();
        support::Harness::read(rsp).await
    }

    async fn stats(&self) -> serde_json::Value {
        self.send("GET", "/__sim/stats", &[], None).await.json()
    }

    async fn signin_v1(&self, email: &str, password: &str) -> Reply {
        let body = json!({"email": email, "password": sha256_hex(password)});
        self.send("POST", "/api/v1/auths/signin", &[], Some(body))
            .await
    }

    async fn signin_v2(&self, email: &str, password_field: &str) -> Reply {
        let body = json!({"email": email, "password": password_field});
        self.send("POST", "/api/v2/auths/signin", &FRONT_END, Some(body))
            .await
    }

    async fn refresh(&self, refresh_token: &str) -> Reply {
        let cookie = format!("other=1; refresh_token={refresh_token}; token=whatever");
        self.send("GET", "/api/v2/auths/refresh", &[("cookie", &cookie)], None)
            .await
    }

    async fn new_chat(&self, token: &str, extra: &[(&str, &str)]) -> Reply {
        let cookie = format!("token={token}");
        let mut headers = vec![("cookie", cookie.as_str())];
        headers.extend_from_slice(extra);
        self.send("POST", "/api/v2/chats/new", &headers, Some(json!({})))
            .await
    }

    /// The id of a new chat.
    async fn chat_id(&self, token: &str, extra: &[(&str, &str)]) -> String {
        let r = self.new_chat(token, extra).await;
        r.json()["data"]["id"].as_str().unwrap().to_owned()
    }

    /// A completion with the minimal body the front end sends now.
    async fn complete(
        &self,
        token: &str,
        chat_id: &str,
        model: &str,
        text: &str,
        extra: &[(&str, &str)],
    ) -> Reply {
        let body = json!({
            "chat_id": chat_id, "model": model, "parent_id": null,
            "stream": true, "incremental_output": true,
            "messages": [{"role": "user", "content": text, "chat_type": "t2t",
                          "feature_config": {"output_schema": "phase", "thinking_enabled": false}}],
        });
        let cookie = format!("token={token}");
        let mut headers = vec![("cookie", cookie.as_str())];
        headers.extend_from_slice(extra);
        let path = format!("/api/v2/chat/completions?chat_id={chat_id}");
        self.send("POST", &path, &headers, Some(body)).await
    }

    /// A new chat and one completion in it.
    async fn ask(&self, token: &str, text: &str) -> Reply {
        let id = self.chat_id(token, &[]).await;
        self.complete(token, &id, "qwen3.7-plus", text, &[]).await
    }
}

/// The answer text of a simulated stream.
fn answer_of(r: &Reply) -> String {
    assert_eq!(r.status, 200);
    let text = String::from_utf8_lossy(&r.body);
    text.split("\n\n")
        .filter_map(|e| e.trim().strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .filter(|v| v["choices"][0]["delta"]["phase"] == "answer")
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

fn is_stream(r: &Reply) -> bool {
    r.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream")
}

fn set_cookies(r: &Reply) -> Vec<String> {
    r.headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn v2_sign_in_opens_a_session_whose_refresh_token_rotates() {
    let s = Sim::start(strict(Duration::from_secs(600))).await;
    let bare = s
        .send(
            "POST",
            "/api/v2/auths/signin",
            &FRONT_END[..2],
            Some(json!({"email": "bob@example.com", "password": sha256_hex("builder")})),
        )
        .await;
    assert_eq!(bare.status, 400);
    assert_eq!(
        bare.json(),
        json!({"success": false, "data": {"code": "Bad_Request", "details": "Invalid request header"}})
    );
    let plain = s.signin_v2("bob@example.com", "builder").await;
    assert_eq!(
        (plain.status.as_u16(), plain.json()),
        (400, json!({"detail": "incorrect"}))
    );

    let ok = s.signin_v2("bob@example.com", &sha256_hex("builder")).await;
    assert_eq!(ok.status, 200);
    let body = ok.json();
    assert_eq!(body["success"], true);
    assert_eq!(body["request_id"].as_str().unwrap().len(), 36);
    let data = &body["data"];
    assert_eq!(data["token_type"], "Bearer");
    assert_eq!(data["expires_in"], 600);
    assert_eq!(data["email"], "bob@example.com");
    assert_eq!(data["id"].as_str().unwrap().len(), 24);
    let token = data["access_token"].as_str().unwrap().to_owned();
    assert_eq!(token.split('.').count(), 3, "JWT-shaped");
    let cookies = set_cookies(&ok);
    assert_eq!(cookies.len(), 2, "{cookies:?}");
    let first_rt = cookies[0]
        .strip_prefix("refresh_token=")
        .and_then(|c| c.strip_suffix("; Path=/; HttpOnly; Max-Age=2592000"))
        .unwrap()
        .to_owned();
    assert!(first_rt.starts_with("rt-"), "{first_rt}");
    assert_eq!(cookies[1], format!("token={token}; Path=/"));
    assert_eq!(s.new_chat(&token, &[]).await.status, 200);

    let refreshed = s.refresh(&first_rt).await;
    assert_eq!(refreshed.status, 200);
    let data = refreshed.json()["data"].clone();
    let (new_token, second_rt) = (
        data["access_token"].as_str().unwrap().to_owned(),
        data["refresh_token"].as_str().unwrap().to_owned(),
    );
    assert_ne!(second_rt, first_rt);
    assert!(set_cookies(&refreshed)[0].starts_with(&format!("refresh_token={second_rt};")));
    assert_eq!(s.new_chat(&new_token, &[]).await.status, 200);

    // Rotation: the spent token is refused from now on, its successor works once.
    let spent = s.refresh(&first_rt).await;
    assert_eq!(spent.status, 401);
    assert_eq!(
        spent.json(),
        json!({"success": false, "data": {"code": "Unauthorized", "details": "refresh token is invalid"}})
    );
    assert_eq!(s.refresh(&second_rt).await.status, 200);
    assert_eq!(s.refresh(&second_rt).await.status, 401);
    let no_cookie = s.send("GET", "/api/v2/auths/refresh", &[], None).await;
    assert_eq!(no_cookie.status, 401);

    let stats = s.stats().await;
    assert_eq!(stats["signins"], 1);
    assert_eq!(stats["signins_refused"], 2);
    assert_eq!(stats["refreshes"], 2);
    assert_eq!(stats["refreshes_refused"], 3);
    let times: Vec<u64> = serde_json::from_value(stats["signin_times_ms"].clone()).unwrap();
    assert_eq!(times.len(), 3);
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
}

#[tokio::test]
async fn out_of_the_box_sessions_rotate_too() {
    let s = Sim::start(SimConfig {
        lowercase_codes: true,
        ..open_sim()
    })
    .await;
    let ok = s.signin_v2("anyone@example.com", &sha256_hex("x")).await;
    assert_eq!(ok.status, 200);
    let token = ok.json()["data"]["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(token.starts_with("sim-"), "{token}");
    assert_eq!(ok.json()["data"]["expires_in"], 2_592_000);
    let rt = set_cookies(&ok)[0]
        .strip_prefix("refresh_token=")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let refreshed = s.refresh(&rt).await.json();
    let new_token = refreshed["data"]["access_token"].as_str().unwrap();
    assert!(
        new_token.starts_with(&token) && new_token != token,
        "{new_token}"
    );
    let spent = s.refresh(&rt).await;
    assert_eq!(spent.status, 401);
    assert_eq!(spent.json()["data"]["code"], "unauthorized");
}

#[tokio::test]
async fn the_sign_in_wall_counts_v1_and_v2_but_not_refreshes() {
    let s = Sim::start(SimConfig {
        signin_limit: 3,
        ..strict(Duration::from_secs(600))
    })
    .await;
    assert_eq!(s.signin_v1("bob@example.com", "builder").await.status, 200);
    assert_eq!(s.signin_v1("bob@example.com", "wrong").await.status, 400);
    let v2 = s.signin_v2("bob@example.com", &sha256_hex("builder")).await;
    assert_eq!(v2.status, 200);
    let mut rt = set_cookies(&v2)[0]
        .trim_start_matches("refresh_token=")
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    // Refreshes are not sign-ins: the wall does not see them.
    for _ in 0..5 {
        let r = s.refresh(&rt).await;
        assert_eq!(r.status, 200);
        rt = r.json()["data"]["refresh_token"]
            .as_str()
            .unwrap()
            .to_owned();
    }
    let walled = s.signin_v1("bob@example.com", "builder").await;
    assert_eq!(walled.status, 200);
    assert!(walled.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(String::from_utf8_lossy(&walled.body).contains("aliyun_waf_aa"));
    let walled_v2 = s.signin_v2("bob@example.com", &sha256_hex("builder")).await;
    assert!(String::from_utf8_lossy(&walled_v2.body).contains("aliyun_waf_aa"));

    let stats = s.stats().await;
    assert_eq!(stats["signins"], 2);
    assert_eq!(
        stats["signins_refused"], 3,
        "a wrong password and two walled"
    );
    assert_eq!(stats["refreshes"], 5);
    assert_eq!(stats["signin_times_ms"].as_array().unwrap().len(), 5);
}

#[tokio::test]
async fn expire_token_revokes_the_token_on_the_server() {
    let s = Sim::start(SimConfig {
        gate: Gate::None,
        ..strict(Duration::from_secs(600))
    })
    .await;
    let signed = s.signin_v1("bob@example.com", "builder").await.json();
    let token = signed["token"].as_str().unwrap().to_owned();
    assert_eq!(
        answer_of(&s.ask(&token, "hi").await),
        "Simulated answer — 模拟回答: you said \"hi\"."
    );
    let expired = s.ask(&token, "hi @@sim:expire_token").await;
    assert_eq!(expired.headers["x-actual-status-code"], "401");
    assert_eq!(expired.json()["data"]["code"], "Unauthorized");
    assert_eq!(expired.json()["data"]["details"], "Token has expired");
    // From now on the token has expired everywhere, though its `exp` is ahead.
    let chat = s.new_chat(&token, &[]).await;
    assert_eq!(chat.json()["data"]["details"], "Token has expired");
    let cookie = format!("token={token}");
    let path = "/api/v2/chat/completions?chat_id=x";
    let again = s
        .send("POST", path, &[("cookie", &cookie)], Some(json!({})))
        .await;
    assert_eq!(again.json()["data"]["details"], "Token has expired");
    // A new sign-in gives a token that works.
    let fresh = s.signin_v1("bob@example.com", "builder").await.json();
    assert_eq!(
        s.ask(fresh["token"].as_str().unwrap(), "hi").await.status,
        200
    );

    let stats = s.stats().await;
    assert_eq!(
        stats["accounts"]["bob@example.com"],
        json!({"completions": 4, "refused": 2, "chats_created": 3})
    );

    // Out of the box: the raw token is revoked, others are not.
    let s = Sim::start(open_sim()).await;
    assert_eq!(
        s.ask("tok-a", "@@sim:expire_token").await.headers["x-actual-status-code"],
        "401"
    );
    assert_eq!(
        s.new_chat("tok-a", &[]).await.json()["data"]["details"],
        "Token has expired"
    );
    assert_eq!(s.ask("tok-b", "hi").await.status, 200);
    let stats = s.stats().await;
    assert_eq!(stats["accounts"]["tok-a"]["refused"], 1);
    assert_eq!(
        stats["accounts"]["tok-b"],
        json!({"completions": 1, "refused": 0, "chats_created": 1})
    );
}

#[tokio::test]
async fn account_quota_is_sticky_until_its_hours_pass() {
    let s = Sim::start(open_sim()).await;
    // 0.0002 h = 0.72 s.
    let first = s.ask("tok-a", "hi @@sim:account_quota=0.0002").await;
    let quota = first.json();
    assert_eq!(quota["data"]["code"], "RateLimited");
    assert_eq!(quota["data"]["num"], 0.0002);
    assert!(!is_stream(&first));
    let later = s.ask("tok-a", "hi").await.json();
    assert_eq!(
        (later["data"]["code"].clone(), later["data"]["num"].clone()),
        (json!("RateLimited"), json!(0.0002))
    );
    assert_eq!(
        answer_of(&s.ask("tok-b", "hi").await).len(),
        "Simulated answer — 模拟回答: you said \"hi\".".len()
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(is_stream(&s.ask("tok-a", "hi").await), "the quota is back");
    let stats = s.stats().await;
    assert_eq!(
        stats["accounts"]["tok-a"],
        json!({"completions": 3, "refused": 2, "chats_created": 3})
    );
    assert_eq!(stats["accounts"]["tok-b"]["refused"], 0);
}

#[tokio::test]
async fn challenges_hit_one_account_or_every_account() {
    let s = Sim::start(open_sim()).await;
    let punished = |r: &Reply| r.json()["ret"][0] == "FAIL_SYS_USER_VALIDATE";
    assert!(punished(
        &s.ask("tok-a", "@@sim:account_challenge=0.5").await
    ));
    assert!(punished(&s.ask("tok-a", "hi").await));
    assert!(
        is_stream(&s.ask("tok-b", "hi").await),
        "another account is not challenged"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(is_stream(&s.ask("tok-a", "hi").await));

    // The chat challenge follows the time of day: every account draws it.
    assert!(punished(&s.ask("tok-a", "@@sim:chat_challenge=0.5").await));
    assert!(punished(&s.ask("tok-b", "hi").await));
    assert!(punished(&s.ask("tok-c", "hi").await));
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(is_stream(&s.ask("tok-b", "hi").await));
    let stats = s.stats().await;
    assert_eq!(stats["accounts"]["tok-a"]["refused"], 3);
    assert_eq!(
        stats["accounts"]["tok-b"],
        json!({"completions": 3, "refused": 1, "chats_created": 3})
    );
    assert_eq!(stats["accounts"]["tok-c"]["refused"], 1);

    // The newer punish variant.
    let connect = s.ask("tok-d", "@@sim:punish=captchaconnect").await.json();
    assert!(connect["data"]["url"]
        .as_str()
        .unwrap()
        .contains("&action=captchaconnect&"));
    let classic = s.ask("tok-d", "@@sim:punish").await.json();
    assert!(classic["data"]["url"]
        .as_str()
        .unwrap()
        .contains("&action=captcha&"));
}

#[tokio::test]
async fn a_banned_account_is_refused_completions_and_new_chats_for_good() {
    let s = Sim::start(open_sim()).await;
    let forbidden =
        json!({"success": false, "data": {"code": "Forbidden", "details": "account is disabled"}});
    let banned = s.ask("tok-a", "@@sim:account_ban").await;
    assert_eq!(
        (banned.status.as_u16(), banned.json()),
        (403, forbidden.clone())
    );
    let chat = s.new_chat("tok-a", &[]).await;
    assert_eq!((chat.status.as_u16(), chat.json()), (403, forbidden));
    assert_eq!(s.new_chat("tok-b", &[]).await.status, 200);
    let stats = s.stats().await;
    assert_eq!(
        stats["accounts"]["tok-a"],
        json!({"completions": 1, "refused": 1, "chats_created": 1})
    );
}

#[tokio::test]
async fn deleting_without_an_id_purges_only_the_callers_chats() {
    let s = Sim::start(open_sim()).await;
    let mut ids = Vec::new();
    for token in ["tok-a", "tok-a", "tok-a", "tok-b", "tok-b"] {
        ids.push(s.chat_id(token, &[]).await);
    }
    let purged = s
        .send(
            "DELETE",
            "/api/v2/chats/",
            &[("cookie", "token=tok-a")],
            None,
        )
        .await;
    assert_eq!(
        purged.json(),
        json!({"success": true, "data": {"status": true, "deleted": 3}})
    );
    let again = s
        .send(
            "DELETE",
            "/api/v2/chats",
            &[("authorization", "Bearer tok-a")],
            None,
        )
        .await;
    assert_eq!(again.json()["data"]["deleted"], 0);
    let nobody = s.send("DELETE", "/api/v2/chats/", &[], None).await;
    assert_eq!(nobody.headers["x-actual-status-code"], "401");
    // tok-a's chats are gone, tok-b's are there.
    let gone = s
        .complete("tok-a", &ids[0], "qwen3.7-plus", "hi", &[])
        .await;
    assert_eq!(gone.headers["x-actual-status-code"], "404");
    assert!(is_stream(
        &s.complete("tok-b", &ids[3], "qwen3.7-plus", "hi", &[])
            .await
    ));
    // Deleting by id is unchanged.
    let by_id = format!("/api/v2/chats/{}", ids[4]);
    let one = s
        .send("DELETE", &by_id, &[("cookie", "token=tok-b")], None)
        .await;
    assert_eq!(
        one.json(),
        json!({"success": true, "data": {"status": true}})
    );
    let stats = s.stats().await;
    assert_eq!(stats["chats_purged"], 3);
    assert_eq!(stats["chats"].as_object().unwrap().len(), 1);
}

#[tokio::test]
async fn the_guest_catalogue_varies_the_signed_in_one_is_whole() {
    let s = Sim::start(open_sim()).await;
    let len = |r: Reply| r.json()["data"].as_array().unwrap().len();
    let mut guest = Vec::new();
    for _ in 0..5 {
        guest.push(len(s.send("GET", "/api/models", &[], None).await));
    }
    assert_eq!(guest, [2, 3, 4, 5, 2]);
    for auth in [
        ("cookie", "a=1; token=tok-a"),
        ("authorization", "Bearer tok-a"),
    ] {
        for _ in 0..3 {
            assert_eq!(len(s.send("GET", "/api/models", &[auth], None).await), 5);
        }
    }
    let ids: Vec<String> = s
        .send("GET", "/api/models", &[("cookie", "token=t")], None)
        .await
        .json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        ids,
        [
            "qwen3.7-plus",
            "qwen3.8-max",
            "qwen3.5-omni-plus",
            "qwen3.8-omni-flash",
            "qwen3.8-max-preview"
        ]
    );
}

#[tokio::test]
async fn the_stale_bx_ua_gate() {
    let s = Sim::start(SimConfig {
        bx_ua_gate: BxUaGate::Stale,
        fresh_bx_ua: vec!["231!fresh==".to_owned()],
        ..open_sim()
    })
    .await;
    let punished = |r: &Reply| r.json()["ret"][0] == "FAIL_SYS_USER_VALIDATE";
    let stale = [("bx-ua", "231!stale==")];
    let fresh = [("bx-ua", "231!fresh==")];
    assert!(punished(&s.new_chat("tok-a", &stale).await));
    let id = s.chat_id("tok-a", &fresh).await;
    let id2 = s.chat_id("tok-a", &[]).await;
    assert!(punished(
        &s.complete("tok-a", &id, "qwen3.7-plus", "hi", &stale).await
    ));
    assert!(is_stream(
        &s.complete("tok-a", &id, "qwen3.7-plus", "hi", &fresh).await
    ));
    assert!(is_stream(
        &s.complete("tok-a", &id2, "qwen3.7-plus", "hi", &[]).await
    ));

    // Without the option, bx headers are not looked at.
    let s = Sim::start(open_sim()).await;
    let id = s.chat_id("tok-a", &stale).await;
    assert!(is_stream(
        &s.complete("tok-a", &id, "qwen3.7-plus", "hi", &stale).await
    ));
}

#[tokio::test]
async fn the_minimal_body_is_enough_and_unskippable_thinking_is_enforced() {
    // The default header gate, as the front end passes it: the minimal body still works.
    let s = Sim::start(SimConfig {
        linger: Duration::from_millis(5),
        ..SimConfig::default()
    })
    .await;
    let browser = [
        ("x-request-id", "3f1c0d6e-0000-4000-8000-000000000000"),
        ("version", "0.3.12"),
        ("sec-fetch-dest", "empty"),
        ("sec-fetch-mode", "cors"),
        ("sec-fetch-site", "same-origin"),
        ("timezone", "Mon Jan 05 2026 10:00:00 GMT+0100"),
    ];
    let id = s.chat_id("tok-a", &[]).await;
    let r = s
        .complete("tok-a", &id, "qwen3.7-plus", "hello", &browser)
        .await;
    assert_eq!(
        answer_of(&r),
        "Simulated answer — 模拟回答: you said \"hello\"."
    );
    for model in ["qwen3.8-max-preview", "qwen3.8-max"] {
        let id = s.chat_id("tok-a", &[]).await;
        let r = s.complete("tok-a", &id, model, "hello", &browser).await;
        assert!(
            String::from_utf8_lossy(&r.body).contains("\"code\":\"invalid_input\""),
            "{model}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    let id = s.chat_id("tok-a", &[]).await;
    let r = s
        .complete("tok-a", &id, "qwen3.8-omni-flash", "hello", &browser)
        .await;
    assert_eq!(
        answer_of(&r),
        "Simulated answer — 模拟回答: you said \"hello\"."
    );
}
