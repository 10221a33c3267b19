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
use qwen_proxy::sim::SimConfig;

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
        let url = h.sim.base_url();
        move || check(&url, &token)
    })
    .await
    .unwrap();
    assert!(ok, "{out}");
    assert!(
        out.contains("credentials    ok") && out.contains("expires in"),
        "{out}"
    );
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
