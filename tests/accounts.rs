//! The pool of Qwen accounts (`QWEN_ACCOUNTS_FILE`) through the real stack over HTTP against
//! the simulator: what a quota, a challenge, the chat challenge, an expired token and a ban
//! do to one account and to the turn that met them; sign-in pacing and token renewal;
//! conversations pinned to their account; reload without dropping streams; state shared
//! through Redis; the admin API; per-account outbound proxies; and a file the binary refuses.
//!
//! Per-account faults are set with the simulator's control endpoints
//! (`POST /__sim/accounts/{key}/…`), not with prompt directives: a turn the proxy moves to
//! another account carries its prompt along, and the directive would hit that account too.

// Tests and benches: a failed unwrap is a failure with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use qwen_proxy::sim::accounts::Accounts;
use qwen_proxy::sim::SimConfig;
use support::{
    assistant, expected_answer, parse_sse, quick_sim, summarize, user, Harness, RedisServer, Reply,
};

const MODEL: &str = "qwen3.7-plus";
const ADMIN_KEY: &str = "admin-key-for-tests";
const HOUR_MS: u64 = 3_600_000;

// === helpers ===

/// An accounts file in a fresh directory, never readable by others (mode 0600).
struct AccountsFile {
    dir: PathBuf,
    path: PathBuf,
}

impl AccountsFile {
    fn new(entries: &Value) -> Self {
        let dir = std::env::temp_dir().join(format!("qp-accounts-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = AccountsFile {
            path: dir.join("accounts.json"),
            dir,
        };
        file.write(entries);
        file
    }

    fn write(&self, entries: &Value) {
        self.write_text(&serde_json::to_string_pretty(entries).unwrap());
    }

    /// Rewrite it in place (mode 0600 from creation on, and restored if a test changed it).
    fn write_text(&self, text: &str) {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&self.path)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
        drop(f);
        self.chmod(0o600);
    }

    fn chmod(&self, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn path(&self) -> &str {
        self.path.to_str().unwrap()
    }
}

impl Drop for AccountsFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A browser-session account `name` whose token (and simulator stats key) is `tok-NAME`.
fn cookie_account(name: &str) -> Value {
    json!({"name": name, "cookies": format!("other=1; token=tok-{name}"), "min_interval_ms": 0})
}

fn password_account(name: &str, email: &str, password: &str) -> Value {
    json!({"name": name, "email": email, "password": password, "min_interval_ms": 0})
}

/// The simulator in strict mode: these `email password` lines only, tokens living `ttl`.
fn strict_sim(lines: &str, ttl: Duration) -> SimConfig {
    SimConfig {
        accounts: Some(Arc::new(Accounts::parse(lines, ttl).unwrap())),
        ..quick_sim()
    }
}

const ALICE: &str = "alice@example.com wonderland\n";
const BOB: &str = "bob@example.com builder\n";
const CAROL: &str = "carol@example.com secret-garden\n";

/// Any request to any address (the harness's proxy, another instance, the simulator).
async fn call(
    h: &Harness,
    url: String,
    method: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> Reply {
    let mut b = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    if body.is_some() {
        b = b.header("content-type", "application/json");
    }
    let body = body.map_or_else(Bytes::new, |v| Bytes::from(v.to_string()));
    Harness::read(h.send(b.body(Full::new(body)).unwrap()).await).await
}

/// `POST /__sim/accounts/{key}/{action}` on the simulator.
async fn sim_control(h: &Harness, key: &str, action: &str) {
    let url = format!("{}/__sim/accounts/{key}/{action}", h.sim.base_url());
    let r = call(h, url, "POST", &[], None).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

/// An admin call with the right key.
async fn admin(h: &Harness, addr: SocketAddr, method: &str, path: &str) -> Reply {
    let auth = format!("Bearer {ADMIN_KEY}");
    call(
        h,
        format!("http://{addr}{path}"),
        method,
        &[("authorization", &auth)],
        None,
    )
    .await
}

async fn health(h: &Harness, addr: SocketAddr) -> Value {
    h.get_at(addr, "/health").await.json()
}

/// One account of `/health`'s list.
fn listed(health: &Value, name: &str) -> Value {
    health["accounts"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == name)
        .unwrap_or_else(|| panic!("no account {name} in {health}"))
        .clone()
}

fn state(health: &Value, name: &str) -> String {
    listed(health, name)["state"].as_str().unwrap().to_owned()
}

/// Completions that reached account `key` in the simulator (answered or refused).
fn completions(stats: &Value, key: &str) -> u64 {
    stats["accounts"][key]["completions"].as_u64().unwrap_or(0)
}

fn refused(stats: &Value, key: &str) -> u64 {
    stats["accounts"][key]["refused"].as_u64().unwrap_or(0)
}

/// The value of one sample of `/metrics` (0 when absent: a counter never incremented).
async fn metric(h: &Harness, addr: SocketAddr, sample: &str) -> f64 {
    let text = String::from_utf8(h.get_at(addr, "/metrics").await.body.to_vec()).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Poll `probe` until it gives a value (bounded; for what happens in the background).
async fn eventually<T, F, Fut>(what: &str, within: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A one-message conversation; asserts the simulator's answer came back.
async fn ask_ok(h: &Harness, addr: SocketAddr, prompt: &str) {
    let r = h
        .chat_at(addr, json!({"model": MODEL, "messages": [user(prompt)]}))
        .await;
    assert_eq!(r.message_content(), expected_answer(prompt));
}

fn error_code(r: &Reply) -> String {
    r.error()["code"].as_str().unwrap_or("").to_owned()
}

fn retry_after(r: &Reply) -> u64 {
    r.headers["retry-after"].to_str().unwrap().parse().unwrap()
}

// === 1. daily quota ===

#[tokio::test]
async fn a_daily_quota_moves_the_turn_and_the_cooled_account_rests() {
    let file = AccountsFile::new(&json!([cookie_account("a"), cookie_account("b")]));
    let h = Harness::start_with(&[("QWEN_ACCOUNTS_FILE", file.path())], quick_sim()).await;
    sim_control(&h, "tok-a", "quota?hours=1").await;

    // New conversations until one lands on a: it is answered all the same (moved to b).
    let cooled_at = now_ms();
    let mut sent = 0;
    while completions(&h.sim_stats().await, "tok-a") == 0 {
        assert!(sent < 2, "two idle accounts alternate: a gets one of two");
        let prompt = format!("quota {sent}");
        let r = h.ask(MODEL, &prompt, false).await;
        assert_eq!(r.message_content(), expected_answer(&prompt));
        assert!(r.headers.get("retry-after").is_none());
        sent += 1;
    }
    let health = h.get("/health").await.json();
    let a = listed(&health, "a");
    assert_eq!(a["state"], "cooling", "{health}");
    assert!(a["reason"].as_str().unwrap().contains("daily quota"), "{a}");
    let until = a["until_ms"].as_u64().unwrap();
    assert!(
        until >= cooled_at + HOUR_MS && until <= now_ms() + HOUR_MS,
        "`num` hours from the refusal: {until}"
    );
    assert_eq!(state(&health, "b"), "ready");
    assert_eq!(health["status"], "ok", "b still serves");
    let stats = h.sim_stats().await;
    assert_eq!(
        (completions(&stats, "tok-a"), refused(&stats, "tok-a")),
        (1, 1)
    );
    let b_before = completions(&stats, "tok-b");
    assert_eq!(b_before, sent, "every request was answered by b");

    // The cooled account is not called while it rests.
    for i in 0..4 {
        ask_ok(&h, h.addr, &format!("after {i}")).await;
    }
    let stats = h.sim_stats().await;
    assert_eq!(
        (completions(&stats, "tok-a"), refused(&stats, "tok-a")),
        (1, 1),
        "exactly the one refused call on a"
    );
    assert_eq!(completions(&stats, "tok-b"), b_before + 4);
    assert_eq!(refused(&stats, "tok-b"), 0);
    let turns = r#"upstream_account_turns_total{account="a",moved="true"}"#;
    assert_eq!(metric(&h, h.addr, turns).await, 1.0);
    let cooldowns = r#"upstream_account_cooldowns_total{reason="rate_limited"}"#;
    assert_eq!(metric(&h, h.addr, cooldowns).await, 1.0);
    assert_eq!(
        metric(&h, h.addr, r#"upstream_accounts{state="cooling"}"#).await,
        1.0
    );

    // b's quota too: 429 with the earliest return (a's), then no upstream call at all.
    sim_control(&h, "tok-b", "quota?hours=2").await;
    let r = h.ask(MODEL, "nobody left", false).await;
    assert_eq!(r.status, 429, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(error_code(&r), "upstream_rate_limited");
    let wait = retry_after(&r);
    assert!(wait <= 3600 && wait > 3500, "a's return, not b's: {wait}");
    let stats = h.sim_stats().await;
    assert_eq!(refused(&stats, "tok-b"), 1, "b refused the turn once");
    let calls = stats["completion_requests"].clone();
    let r = h.ask(MODEL, "still nobody", true).await;
    assert_eq!(r.status, 429);
    assert_eq!(error_code(&r), "upstream_rate_limited");
    let wait = retry_after(&r);
    assert!(wait <= 3600 && wait > 3500, "{wait}");
    assert_eq!(
        h.sim_stats().await["completion_requests"],
        calls,
        "no upstream call"
    );
    let health = h.get("/health").await.json();
    assert_eq!(health["status"], "degraded");
    assert_eq!(health["accounts"]["counts"]["cooling"], 2);
    assert_eq!(health["accounts"]["counts"]["usable"], 0);
}

// === 2. a challenge on one account ===

#[tokio::test]
async fn a_challenge_quarantines_that_account_only() {
    let file = AccountsFile::new(&json!([cookie_account("a"), cookie_account("b")]));
    let h = Harness::start_with(
        &[
            ("QWEN_ACCOUNTS_FILE", file.path()),
            ("CHALLENGE_COOLDOWN", "60000"),
        ],
        quick_sim(),
    )
    .await;
    sim_control(&h, "tok-a", "challenge?secs=60").await;
    let challenged_at = now_ms();
    let mut sent = 0;
    while completions(&h.sim_stats().await, "tok-a") == 0 {
        assert!(sent < 2, "two idle accounts alternate: a gets one of two");
        ask_ok(&h, h.addr, &format!("challenge {sent}")).await;
        sent += 1;
    }
    let health = h.get("/health").await.json();
    let a = listed(&health, "a");
    assert_eq!(a["state"], "quarantined", "{health}");
    assert!(a["reason"].as_str().unwrap().contains("challenge"), "{a}");
    let until = a["until_ms"].as_u64().unwrap();
    assert!(
        until >= challenged_at + 60_000 && until <= now_ms() + 60_000,
        "{until}"
    );
    assert_eq!(state(&health, "b"), "ready");
    assert_eq!(
        health["status"], "ok",
        "one account's challenge pauses nobody else"
    );
    assert_eq!(health["upstream"]["challenge_cooldown_seconds"], 0);

    let stats = h.sim_stats().await;
    assert_eq!(
        (completions(&stats, "tok-a"), refused(&stats, "tok-a")),
        (1, 1)
    );
    let b_before = completions(&stats, "tok-b");
    for i in 0..4 {
        ask_ok(&h, h.addr, &format!("meanwhile {i}")).await;
    }
    let stats = h.sim_stats().await;
    assert_eq!(
        completions(&stats, "tok-a"),
        1,
        "a is not called in quarantine"
    );
    assert_eq!(completions(&stats, "tok-b"), b_before + 4);
    let m = |reason: &str| format!("upstream_account_cooldowns_total{{reason=\"{reason}\"}}");
    assert_eq!(metric(&h, h.addr, &m("challenge")).await, 1.0);
    assert_eq!(metric(&h, h.addr, &m("chat_challenge")).await, 0.0);
    let moved = r#"upstream_account_turns_total{account="a",moved="true"}"#;
    assert_eq!(metric(&h, h.addr, moved).await, 1.0);
}

// === 3. the chat challenge ===

#[tokio::test]
async fn a_chat_challenge_pauses_everyone_and_blames_nobody() {
    let file = AccountsFile::new(&json!([cookie_account("a"), cookie_account("b")]));
    let h = Harness::start_with(
        &[
            ("QWEN_ACCOUNTS_FILE", file.path()),
            ("CHALLENGE_COOLDOWN", "60000"),
        ],
        quick_sim(),
    )
    .await;
    // The time-of-day challenge: every account's completions draw the punish JSON.
    let r = h.ask(MODEL, "hello @@sim:chat_challenge=30", false).await;
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(error_code(&r), "upstream_challenge");
    let wait = retry_after(&r);
    assert!(wait <= 60 && wait > 50, "the pause: {wait}");
    let stats = h.sim_stats().await;
    // Tried on a, moved once to b, which was challenged too.
    for key in ["tok-a", "tok-b"] {
        assert_eq!(
            (completions(&stats, key), refused(&stats, key)),
            (1, 1),
            "{key}"
        );
    }
    let health = h.get("/health").await.json();
    assert_eq!(state(&health, "a"), "ready", "not blamed: {health}");
    assert_eq!(state(&health, "b"), "ready", "not blamed: {health}");
    assert_eq!(health["status"], "degraded");
    let reasons = health["reasons"].to_string();
    assert!(reasons.contains("paused"), "{reasons}");
    let left = health["upstream"]["challenge_cooldown_seconds"]
        .as_u64()
        .unwrap();
    assert!(left > 50 && left <= 60, "{left}");
    let m = |reason: &str| format!("upstream_account_cooldowns_total{{reason=\"{reason}\"}}");
    assert_eq!(metric(&h, h.addr, &m("chat_challenge")).await, 1.0);

    // Every completion waits out the pause, without an upstream call.
    let calls = stats["completion_requests"].clone();
    for stream in [false, true] {
        let r = h.ask(MODEL, "and now?", stream).await;
        assert_eq!(r.status, 503);
        assert_eq!(error_code(&r), "upstream_challenge_cooldown");
        let wait = retry_after(&r);
        assert!(wait <= 60 && wait > 50, "{wait}");
    }
    assert_eq!(h.sim_stats().await["completion_requests"], calls);
}

// === a ban, a refused session ===

#[tokio::test]
async fn a_ban_or_a_refused_session_takes_the_account_out_and_the_turn_moves() {
    let file = AccountsFile::new(&json!([
        cookie_account("a"),
        cookie_account("b"),
        cookie_account("c")
    ]));
    let h = Harness::start_with(&[("QWEN_ACCOUNTS_FILE", file.path())], quick_sim()).await;
    // a is banned upstream (403); b's session is revoked, and a browser session without a
    // refresh token cannot renew it.
    sim_control(&h, "tok-a", "ban").await;
    sim_control(&h, "tok-b", "expire_token").await;
    for i in 0..3 {
        ask_ok(&h, h.addr, &format!("around them {i}")).await;
    }
    let health = h.get("/health").await.json();
    let a = listed(&health, "a");
    assert_eq!(a["state"], "forbidden", "{health}");
    assert!(a["reason"].as_str().unwrap().contains("403"), "{a}");
    let b = listed(&health, "b");
    assert_eq!(b["state"], "invalid", "{health}");
    assert!(b["reason"].as_str().unwrap().contains("cookies"), "{b}");
    assert_eq!(state(&health, "c"), "ready");
    let stats = h.sim_stats().await;
    // a's new chat was refused already (a ban refuses `chats/new` too); b's completion was.
    assert_eq!(stats["accounts"]["tok-a"], Value::Null, "{stats}");
    assert_eq!(
        (completions(&stats, "tok-b"), refused(&stats, "tok-b")),
        (1, 1)
    );
    assert_eq!(completions(&stats, "tok-c"), 3);
    assert_eq!(refused(&stats, "tok-c"), 0);
    for (sample, value) in [
        (
            r#"upstream_account_cooldowns_total{reason="forbidden"}"#,
            1.0,
        ),
        (r#"upstream_account_cooldowns_total{reason="invalid"}"#, 1.0),
        (r#"upstream_account_signins_total{kind="refused"}"#, 1.0),
        (
            r#"upstream_account_turns_total{account="a",moved="true"}"#,
            1.0,
        ),
        (
            r#"upstream_account_turns_total{account="b",moved="true"}"#,
            1.0,
        ),
        (
            r#"upstream_account_turns_total{account="c",moved="false"}"#,
            3.0,
        ),
        (r#"upstream_accounts{state="ready"}"#, 1.0),
    ] {
        assert_eq!(metric(&h, h.addr, sample).await, value, "{sample}");
    }
    // Neither is called again.
    ask_ok(&h, h.addr, "only c").await;
    let stats = h.sim_stats().await;
    assert_eq!(
        completions(&stats, "tok-a") + completions(&stats, "tok-b"),
        1
    );
    assert_eq!(completions(&stats, "tok-c"), 4);
}

// === 4. token renewal ===

#[tokio::test]
async fn tokens_are_refreshed_before_expiry() {
    // 35 s tokens are renewed 30 s before they expire: 5 s after each sign-in or refresh,
    // at the background task's next pass (every 5 s).
    let sim = strict_sim(&format!("{ALICE}{BOB}"), Duration::from_secs(35));
    let file = AccountsFile::new(&json!([
        password_account("alice", "alice@example.com", "wonderland"),
        password_account("bob", "bob@example.com", "builder"),
    ]));
    let h = Harness::start_with(
        &[
            ("QWEN_ACCOUNTS_FILE", file.path()),
            ("QWEN_SIGNIN_INTERVAL", "300"),
        ],
        sim,
    )
    .await;
    let hh = &h;
    eventually("both accounts signed in", Duration::from_secs(5), || async move {
        (health(hh, hh.addr).await["accounts"]["counts"]["ready"] == 2).then_some(())
    })
    .await;
    // Each account is refreshed twice within about 11 s: the second refresh presents the
    // rotated refresh token the first one answered, so that one was stored and used.
    let mut asked = 0;
    let stats = eventually("two refreshes per account", Duration::from_secs(15), || {
        asked += 1;
        let prompt = format!("while refreshing {asked}");
        async move {
            ask_ok(hh, hh.addr, &prompt).await;
            let stats = hh.sim_stats().await;
            assert_eq!(
                stats["refreshes_refused"], 0,
                "a spent refresh token was used"
            );
            assert_eq!(
                stats["signins"], 2,
                "renewed by refresh, not by signing in again"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
            (stats["refreshes"].as_u64().unwrap() >= 4).then_some(stats)
        }
    })
    .await;
    assert_eq!(stats["signins_refused"], 0);
    assert!(
        metric(
            &h,
            h.addr,
            r#"upstream_account_signins_total{kind="refresh"}"#
        )
        .await
            >= 4.0
    );
    assert_eq!(
        metric(
            &h,
            h.addr,
            r#"upstream_account_signins_total{kind="refused"}"#
        )
        .await,
        0.0
    );
    let health = health(&h, h.addr).await;
    assert_eq!(health["accounts"]["counts"]["ready"], 2, "{health}");
}

#[tokio::test]
async fn an_expired_token_is_renewed_once_and_the_turn_sent_again() {
    // Long-lived tokens: nothing is renewed ahead, every renewal below is the expiry's.
    let sim = strict_sim(&format!("{ALICE}{BOB}"), Duration::from_secs(3600));
    let file = AccountsFile::new(&json!([
        password_account("alice", "alice@example.com", "wonderland"),
        password_account("bob", "bob@example.com", "builder"),
    ]));
    let h = Harness::start_with(
        &[
            ("QWEN_ACCOUNTS_FILE", file.path()),
            ("QWEN_SIGNIN_INTERVAL", "50"),
        ],
        sim,
    )
    .await;
    let hh = &h;
    eventually("both accounts signed in", Duration::from_secs(5), || async move {
        (health(hh, hh.addr).await["accounts"]["counts"]["ready"] == 2).then_some(())
    })
    .await;
    let refreshes = r#"upstream_account_signins_total{kind="refresh"}"#;
    assert_eq!(metric(&h, h.addr, refreshes).await, 0.0);

    // The upstream expires alice's token (server-side): the turn that meets it is answered.
    sim_control(&h, "alice@example.com", "expire_token").await;
    let mut sent = 0;
    while refused(&h.sim_stats().await, "alice@example.com") == 0 {
        assert!(
            sent < 2,
            "two idle accounts alternate: alice gets one of two"
        );
        ask_ok(&h, h.addr, &format!("expiry {sent}")).await;
        sent += 1;
    }
    let stats = h.sim_stats().await;
    assert_eq!(stats["refreshes"], 1, "one refresh");
    assert_eq!(stats["refreshes_refused"], 0);
    assert_eq!(stats["signins"], 2, "no new sign-in");
    let alice = &stats["accounts"]["alice@example.com"];
    assert_eq!(
        (
            alice["completions"].clone(),
            alice["refused"].clone(),
            alice["chats_created"].clone()
        ),
        (json!(2), json!(1), json!(1)),
        "the same turn again, in the same chat, with the new token"
    );
    assert_eq!(metric(&h, h.addr, refreshes).await, 1.0);
    let health = health(&h, h.addr).await;
    assert_eq!(state(&health, "alice"), "ready");

    // A token refused again right after its renewal: one refresh and one retry, then the
    // account is invalid with the reason, and the turn moves on. (The directive revokes
    // every token that sends it, so bob, where the turn goes next, meets the same.)
    let calls_before = h.sim_stats().await["completion_requests"].as_u64().unwrap();
    let r = h.ask(MODEL, "revoke me @@sim:expire_token", false).await;
    assert_eq!(r.status, 401, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(error_code(&r), "upstream_auth_failed");
    let stats = h.sim_stats().await;
    assert_eq!(stats["refreshes"], 3, "one more refresh on each account");
    assert_eq!(stats["signins"], 2);
    assert_eq!(
        stats["completion_requests"].as_u64().unwrap() - calls_before,
        4,
        "on each account: the turn, then once more after the renewal"
    );
    assert_eq!(metric(&h, h.addr, refreshes).await, 3.0);
    let after = h.get("/health").await.json();
    for name in ["alice", "bob"] {
        assert_eq!(state(&after, name), "invalid", "{after}");
        let reason = listed(&after, name)["reason"].as_str().unwrap().to_owned();
        assert!(reason.contains("again right after renewing"), "{reason}");
    }
}

#[tokio::test]
async fn turns_that_meet_one_expiry_share_one_renewal() {
    let sim = strict_sim(ALICE, Duration::from_secs(3600));
    let file = AccountsFile::new(&json!([password_account(
        "alice",
        "alice@example.com",
        "wonderland"
    )]));
    let h = Harness::start_with(
        &[
            ("QWEN_ACCOUNTS_FILE", file.path()),
            ("QWEN_SIGNIN_INTERVAL", "50"),
        ],
        sim,
    )
    .await;
    let hh = &h;
    eventually("signed in", Duration::from_secs(5), || async move {
        (health(hh, hh.addr).await["accounts"]["counts"]["ready"] == 1).then_some(())
    })
    .await;
    // The first completion revokes the token; every one sent with it after that is refused.
    // Five turns at once: the renewal is not repeated for each.
    sim_control(&h, "alice@example.com", "expire_token").await;
    let prompts: Vec<String> = (0..5).map(|i| format!("together {i}")).collect();
    futures::future::join_all(prompts.iter().map(|p| ask_ok(&h, h.addr, p))).await;
    let stats = h.sim_stats().await;
    // Those sent before the renewal met the expiry (all but the latest, as a rule); each
    // was sent again, once, with the renewed token.
    let met = refused(&stats, "alice@example.com");
    assert!(met >= 2, "several turns met the expiry: {met}");
    assert_eq!(completions(&stats, "alice@example.com"), 5 + met);
    assert_eq!(stats["refreshes"], 1, "one renewal for all of them");
    assert_eq!(stats["signins"], 1);
    assert_eq!(
        metric(
            &h,
            h.addr,
            r#"upstream_account_signins_total{kind="refresh"}"#
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn the_legacy_flow_renews_by_signing_in_again() {
    let sim = strict_sim(ALICE, Duration::from_secs(3600));
    let file = AccountsFile::new(&json!([password_account(
        "alice",
        "alice@example.com",
        "wonderland"
    )]));
    let h = Harness::start_with(
        &[
            ("QWEN_ACCOUNTS_FILE", file.path()),
            ("QWEN_SIGNIN_FLOW", "legacy"),
            ("QWEN_SIGNIN_INTERVAL", "50"),
        ],
        sim,
    )
    .await;
    let hh = &h;
    eventually("signed in", Duration::from_secs(5), || async move {
        (health(hh, hh.addr).await["accounts"]["counts"]["ready"] == 1).then_some(())
    })
    .await;
    sim_control(&h, "alice@example.com", "expire_token").await;
    ask_ok(&h, h.addr, "legacy").await;
    let stats = h.sim_stats().await;
    assert_eq!(
        stats["signins"], 2,
        "signed in again: legacy has no refresh token"
    );
    assert_eq!(stats["refreshes"], 0);
    assert_eq!(refused(&stats, "alice@example.com"), 1);
    assert_eq!(
        metric(
            &h,
            h.addr,
            r#"upstream_account_signins_total{kind="signin"}"#
        )
        .await,
        2.0
    );
}

// === 5. sign-in pacing ===

#[tokio::test]
async fn sign_ins_are_paced() {
    let sim = strict_sim(&format!("{ALICE}{BOB}{CAROL}"), Duration::from_secs(3600));
    let file = AccountsFile::new(&json!([
        password_account("alice", "alice@example.com", "wonderland"),
        password_account("bob", "bob@example.com", "builder"),
        password_account("carol", "carol@example.com", "secret-garden"),
    ]));
    let h = Harness::start_with(
        &[
            ("QWEN_ACCOUNTS_FILE", file.path()),
            ("QWEN_SIGNIN_INTERVAL", "300"),
        ],
        sim,
    )
    .await;
    let before = h.get("/health").await.json();
    assert_eq!(before["accounts"]["counts"]["total"], 3);
    let hh = &h;
    eventually("all signed in", Duration::from_secs(5), || async move {
        (health(hh, hh.addr).await["accounts"]["counts"]["ready"] == 3).then_some(())
    })
    .await;
    let stats = h.sim_stats().await;
    assert_eq!(stats["signins"], 3);
    assert_eq!(stats["signins_refused"], 0);
    let times: Vec<u64> = stats["signin_times_ms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap())
        .collect();
    assert_eq!(times.len(), 3, "{times:?}");
    // As the upstream sees them (arrival times), not as the proxy meant them: an
    // intermittent failure here is the pacing defect the next test shows every time.
    for pair in times.windows(2) {
        assert!(pair[1] - pair[0] >= 300, "sign-ins 300 ms apart: {times:?}");
    }
    assert_eq!(
        metric(
            &h,
            h.addr,
            r#"upstream_account_signins_total{kind="signin"}"#
        )
        .await,
        3.0
    );
    for i in 0..3 {
        ask_ok(&h, h.addr, &format!("signed in {i}")).await;
    }
    let stats = h.sim_stats().await;
    for email in ["alice@example.com", "bob@example.com", "carol@example.com"] {
        assert_eq!(completions(&stats, email), 1, "{email}");
    }
}

#[tokio::test]
async fn sign_ins_are_paced_as_the_upstream_sees_them() {
    // Three accounts behind one outbound proxy (one egress address), whose first tunnel
    // is slow to open: the upstream must still see the sign-ins 300 ms apart.
    let (_proxy, proxy_addr) = ConnectProxy::start_with(Duration::from_millis(150)).await;
    let via = format!("http://{proxy_addr}");
    let mut entries = Vec::new();
    for (name, email, password) in [
        ("alice", "alice@example.com", "wonderland"),
        ("bob", "bob@example.com", "builder"),
        ("carol", "carol@example.com", "secret-garden"),
    ] {
        let mut e = password_account(name, email, password);
        e["proxy"] = json!(via);
        entries.push(e);
    }
    let file = AccountsFile::new(&Value::Array(entries));
    let sim = strict_sim(&format!("{ALICE}{BOB}{CAROL}"), Duration::from_secs(3600));
    let h = Harness::start_with(
        &[
            ("QWEN_ACCOUNTS_FILE", file.path()),
            ("QWEN_SIGNIN_INTERVAL", "300"),
        ],
        sim,
    )
    .await;
    let hh = &h;
    eventually("all signed in", Duration::from_secs(5), || async move {
        (health(hh, hh.addr).await["accounts"]["counts"]["ready"] == 3).then_some(())
    })
    .await;
    let stats = h.sim_stats().await;
    assert_eq!(stats["signins"], 3);
    let times: Vec<u64> = stats["signin_times_ms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap())
        .collect();
    assert_eq!(times.len(), 3, "{times:?}");
    for pair in times.windows(2) {
        assert!(
            pair[1] - pair[0] >= 300,
            "the upstream saw two sign-ins less than 300 ms apart: {times:?}"
        );
    }
}

// === 6. a conversation stays on its account ===

#[tokio::test]
async fn a_conversation_stays_on_its_account() {
    let file = AccountsFile::new(&json!([
        cookie_account("a"),
        cookie_account("b"),
        cookie_account("c")
    ]));
    let h = Harness::start_with(&[("QWEN_ACCOUNTS_FILE", file.path())], quick_sim()).await;
    let keys = ["tok-a", "tok-b", "tok-c"];
    let per_account = |stats: &Value| keys.map(|k| completions(stats, k));
    let mut histories: Vec<Vec<Value>> = (0..3)
        .map(|c| vec![user(&format!("conversation {c}, turn 0"))])
        .collect();
    let mut owners: Vec<Option<usize>> = vec![None; 3];
    for turn in 0..3 {
        for c in 0..3 {
            let before = per_account(&h.sim_stats().await);
            let r = h
                .chat(json!({"model": MODEL, "messages": histories[c]}))
                .await;
            let answer = r.message_content();
            assert_eq!(
                answer,
                expected_answer(&format!("conversation {c}, turn {turn}"))
            );
            let after = per_account(&h.sim_stats().await);
            // One account took the turn (more than one completion request when the chat
            // was still busy with its last answer and the proxy waited and sent it again).
            let grew: Vec<usize> = (0..3).filter(|&i| after[i] != before[i]).collect();
            assert_eq!(grew.len(), 1, "one account: {before:?} → {after:?}");
            match owners[c] {
                None => owners[c] = Some(grew[0]),
                Some(owner) => assert_eq!(
                    keys[owner], keys[grew[0]],
                    "conversation {c}, turn {turn} left its account"
                ),
            }
            histories[c].push(assistant(&answer));
            histories[c].push(user(&format!("conversation {c}, turn {}", turn + 1)));
        }
    }
    let mut owners: Vec<usize> = owners.into_iter().map(Option::unwrap).collect();
    owners.sort_unstable();
    assert_eq!(
        owners,
        [0, 1, 2],
        "new conversations spread over the idle accounts"
    );
    let stats = h.sim_stats().await;
    assert_eq!(stats["chats_created"], 3, "each conversation kept its chat");
    for chat in stats["chats"].as_object().unwrap().values() {
        assert_eq!(chat["completions"], 3, "three answered turns in each chat");
    }
    for key in keys {
        let a = &stats["accounts"][key];
        assert_eq!(a["chats_created"], 1, "{key}");
    }
    for key in keys {
        assert_eq!(refused(&stats, key), 0);
    }
}

// === 7. an account banned mid-traffic ===

#[tokio::test]
async fn an_account_dying_mid_traffic_loses_nothing_but_its_started_streams() {
    const STREAMS: usize = 50;
    let mut entries = Vec::new();
    for name in ["a", "b", "c"] {
        let mut e = cookie_account(name);
        e["max_inflight"] = json!(100);
        entries.push(e);
    }
    let file = AccountsFile::new(&Value::Array(entries));
    let h = Harness::start_with(&[("QWEN_ACCOUNTS_FILE", file.path())], quick_sim()).await;
    // 150 frames 20 ms apart: each stream runs about three seconds.
    let expected = qwen_proxy::sim::answer::long_answer(600);
    let requests = (0..STREAMS).map(|i| {
        h.chat(json!({"model": MODEL, "stream": true,
            "messages": [user(&format!("stream {i} @@sim:long=600 @@sim:delay=20"))]}))
    });
    let hh = &h;
    let (replies, on_a) = tokio::join!(futures::future::join_all(requests), async move {
        // Once every stream has begun (its first chunk is out), kill a.
        eventually(
            "every stream running",
            Duration::from_secs(10),
            || async move {
                let active = metric(hh, hh.addr, "chat_active_streams").await;
                (active == STREAMS as f64).then_some(())
            },
        )
        .await;
        let on_a = listed(&health(hh, hh.addr).await, "a")["inflight"]
            .as_u64()
            .unwrap();
        sim_control(hh, "tok-a", "ban").await;
        on_a
    });
    assert!(on_a > 0, "a had streams running");
    let mut cut = 0;
    for (i, r) in replies.iter().enumerate() {
        assert_eq!(r.status, 200, "stream {i}");
        let s = summarize(&parse_sse(&r.body));
        match (&s.error, s.finish_reason.as_deref()) {
            (None, Some("stop")) => assert_eq!(s.content, expected, "stream {i}"),
            (Some(e), None) => {
                cut += 1;
                assert_eq!(e["code"], "upstream_forbidden", "stream {i}: {e}");
                assert!(
                    expected.starts_with(&s.content) && s.content.len() < expected.len(),
                    "stream {i}: what came is the start of the answer"
                );
            }
            other => panic!("stream {i} ended neither complete nor with an error: {other:?}"),
        }
    }
    // Every stream had begun and none was near its end when a was banned: exactly a's
    // streams are cut, the others and every turn a had not begun are complete.
    assert_eq!(
        cut as u64, on_a,
        "the streams running on a, and only those, are cut"
    );

    let health = h.get("/health").await.json();
    assert_eq!(state(&health, "a"), "forbidden", "{health}");
    let forbidden = r#"upstream_account_cooldowns_total{reason="forbidden"}"#;
    assert_eq!(metric(&h, h.addr, forbidden).await, 1.0);
    let a_before = completions(&h.sim_stats().await, "tok-a");
    for i in 0..4 {
        ask_ok(&h, h.addr, &format!("after the ban {i}")).await;
    }
    assert_eq!(
        completions(&h.sim_stats().await, "tok-a"),
        a_before,
        "a banned account is never called again"
    );
}

// === 8. reload ===

/// Names of the accounts the admin API lists.
async fn admin_names(h: &Harness, addr: SocketAddr) -> Vec<String> {
    let r = admin(h, addr, "GET", "/admin/accounts").await;
    assert_eq!(r.status, 200);
    r.json()["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_reload_keeps_open_streams() {
    let file = AccountsFile::new(&json!([cookie_account("a"), cookie_account("b")]));
    let h = Harness::start_with(
        &[
            ("QWEN_ACCOUNTS_FILE", file.path()),
            ("ADMIN_KEY", ADMIN_KEY),
        ],
        quick_sim(),
    )
    .await;
    let expected = qwen_proxy::sim::answer::long_answer(400);
    let requests = (0..4).map(|i| {
        h.chat(json!({"model": MODEL, "stream": true,
            "messages": [user(&format!("slow {i} @@sim:long=400 @@sim:delay=20"))]}))
    });
    let hh = &h;
    let file = &file;
    let (replies, reload) = tokio::join!(futures::future::join_all(requests), async move {
        eventually(
            "four streams running",
            Duration::from_secs(10),
            || async move {
                let active = metric(hh, hh.addr, "chat_active_streams").await;
                (active == 4.0).then_some(())
            },
        )
        .await;
        let health = health(hh, hh.addr).await;
        assert_eq!(listed(&health, "a")["inflight"], 2, "{health}");
        assert_eq!(listed(&health, "b")["inflight"], 2, "{health}");
        file.write(&json!([cookie_account("b"), cookie_account("c")]));
        admin(hh, hh.addr, "POST", "/admin/accounts/reload").await
    });
    assert_eq!(
        reload.status,
        200,
        "{}",
        String::from_utf8_lossy(&reload.body)
    );
    assert_eq!(
        reload.json()["reloaded"],
        json!({"kept": 1, "added": 1, "changed": 0, "removed": 1})
    );
    assert_eq!(reload.json()["counts"]["total"], 2);
    for (i, r) in replies.iter().enumerate() {
        let s = summarize(&parse_sse(&r.body));
        assert!(s.error.is_none(), "stream {i}: {:?}", s.error);
        assert_eq!(s.finish_reason.as_deref(), Some("stop"), "stream {i}");
        assert_eq!(s.content, expected, "stream {i}");
    }
    assert_eq!(admin_names(&h, h.addr).await, ["b", "c"]);
    let stats = h.sim_stats().await;
    let (a0, b0, c0) = (
        completions(&stats, "tok-a"),
        completions(&stats, "tok-b"),
        completions(&stats, "tok-c"),
    );
    assert_eq!((a0, b0, c0), (2, 2, 0));
    for i in 0..4 {
        ask_ok(&h, h.addr, &format!("after the reload {i}")).await;
    }
    let stats = h.sim_stats().await;
    assert_eq!(completions(&stats, "tok-a"), a0, "a is gone");
    assert!(completions(&stats, "tok-c") > 0, "c takes turns");
    assert_eq!(
        completions(&stats, "tok-b") + completions(&stats, "tok-c"),
        b0 + 4
    );

    // A changed entry is rebuilt, an unchanged one kept.
    let mut c = cookie_account("c");
    c["max_inflight"] = json!(2);
    file.write(&json!([cookie_account("b"), c]));
    let r = admin(&h, h.addr, "POST", "/admin/accounts/reload").await;
    assert_eq!(
        r.json()["reloaded"],
        json!({"kept": 1, "added": 0, "changed": 1, "removed": 0})
    );

    // An unchanged account is kept as it is: cooling stays cooling. (The rebuilt c has the
    // fewest turns: it takes the next one.)
    sim_control(&h, "tok-c", "quota?hours=1").await;
    ask_ok(&h, h.addr, "c cools").await;
    assert_eq!(refused(&h.sim_stats().await, "tok-c"), 1);
    let until = listed(&h.get("/health").await.json(), "c")["until_ms"].clone();
    let r = admin(&h, h.addr, "POST", "/admin/accounts/reload").await;
    assert_eq!(
        r.json()["reloaded"],
        json!({"kept": 2, "added": 0, "changed": 0, "removed": 0})
    );
    let c = listed(&h.get("/health").await.json(), "c");
    assert_eq!(
        (c["state"].clone(), c["until_ms"].clone()),
        (json!("cooling"), until)
    );

    // A bad file changes nothing.
    file.write_text(r#"[{"name": "x"}, {"name": "b", "cookies": "token=tok-b"}]"#);
    let r = admin(&h, h.addr, "POST", "/admin/accounts/reload").await;
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(error_code(&r), "invalid_accounts_file");
    assert_eq!(admin_names(&h, h.addr).await, ["b", "c"]);
    // Nor does a file everyone may read.
    file.write(&json!([cookie_account("d")]));
    file.chmod(0o644);
    let r = admin(&h, h.addr, "POST", "/admin/accounts/reload").await;
    assert_eq!(r.status, 400);
    assert_eq!(error_code(&r), "invalid_accounts_file");
    assert!(r.error()["message"].as_str().unwrap().contains("chmod 600"));
    assert_eq!(admin_names(&h, h.addr).await, ["b", "c"]);
    ask_ok(&h, h.addr, "still served").await;
}

#[tokio::test]
async fn sighup_reloads_the_accounts_file() {
    use support::process;
    // The harness's own proxy is unused: the binary is the proxy here.
    let h = Harness::start_with(&[], quick_sim()).await;
    let file = AccountsFile::new(&json!([cookie_account("a"), cookie_account("b")]));
    let sim_url = h.sim.base_url();
    let env = [
        ("QWEN_ACCOUNTS_FILE", file.path().to_owned()),
        ("QWEN_BASE_URL", sim_url.clone()),
        ("QWEN_AUTH_BASE_URL", sim_url),
        ("ADMIN_KEY", ADMIN_KEY.to_owned()),
    ];
    // Its log, to see when it has handled a signal.
    let log = file.dir.join("stderr.log");
    let stderr = std::fs::File::create(&log).unwrap();
    let running = tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut cmd = process::command(&["--env-file", "/dev/null", "--port", "0"], &env);
        cmd.stderr(stderr);
        process::start(cmd)
    })
    .await
    .unwrap();
    assert_eq!(admin_names(&h, running.addr).await, ["a", "b"]);
    file.write(&json!([cookie_account("b"), cookie_account("c")]));
    let status = std::process::Command::new("kill")
        .args(["-HUP", &running.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let (hh, addr) = (&h, running.addr);
    eventually("the reload", Duration::from_secs(5), || async move {
        (admin_names(hh, addr).await == ["b", "c"]).then_some(())
    })
    .await;
    ask_ok(&h, running.addr, "after SIGHUP").await;
    // A bad file on SIGHUP: the accounts in use stay.
    file.write_text("not json");
    std::process::Command::new("kill")
        .args(["-HUP", &running.pid().to_string()])
        .status()
        .unwrap();
    let log = &log;
    eventually(
        "the bad file handled",
        Duration::from_secs(5),
        || async move {
            let text = std::fs::read_to_string(log).unwrap();
            text.contains("SIGHUP: the accounts file was not reloaded")
                .then_some(())
        },
    )
    .await;
    assert_eq!(admin_names(&h, running.addr).await, ["b", "c"]);
    ask_ok(&h, running.addr, "after a bad SIGHUP").await;
}

// === 9. Redis ===

#[tokio::test]
async fn two_instances_share_cooldowns_through_redis() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let file = AccountsFile::new(&json!([cookie_account("a"), cookie_account("b")]));
    let env = [
        ("QWEN_ACCOUNTS_FILE", file.path()),
        ("REDIS_URL", url.as_str()),
    ];
    let h = Harness::start_with(&env, quick_sim()).await;
    let second = h.another_proxy(&env).await;
    assert_eq!(state(&health(&h, second.addr).await, "a"), "ready");

    sim_control(&h, "tok-a", "quota?hours=1").await;
    let mut sent = 0;
    while completions(&h.sim_stats().await, "tok-a") == 0 {
        assert!(sent < 2, "two idle accounts alternate: a gets one of two");
        ask_ok(&h, h.addr, &format!("first instance {sent}")).await;
        sent += 1;
    }
    let here = listed(&health(&h, h.addr).await, "a");
    assert_eq!(here["state"], "cooling");
    let (hh, second_addr) = (&h, second.addr);
    let there = eventually(
        "the second instance learns",
        Duration::from_secs(12),
        || async move {
            let a = listed(&health(hh, second_addr).await, "a");
            (a["state"] == "cooling").then_some(a)
        },
    )
    .await;
    assert_eq!(there["until_ms"], here["until_ms"], "the same pause");
    for i in 0..4 {
        ask_ok(&h, second.addr, &format!("second instance {i}")).await;
    }
    let stats = h.sim_stats().await;
    assert_eq!(
        completions(&stats, "tok-a"),
        1,
        "only the refused call, on the first"
    );
    assert_eq!(refused(&stats, "tok-a"), 1);
}

#[tokio::test]
async fn an_instance_started_later_adopts_the_shared_state() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let file = AccountsFile::new(&json!([
        cookie_account("a"),
        cookie_account("b"),
        cookie_account("c")
    ]));
    let env = [
        ("QWEN_ACCOUNTS_FILE", file.path()),
        ("REDIS_URL", url.as_str()),
        ("ADMIN_KEY", ADMIN_KEY),
    ];
    let h = Harness::start_with(&env, quick_sim()).await;
    // On the first instance: a cools on its quota, the operator disables b.
    sim_control(&h, "tok-a", "quota?hours=1").await;
    let mut sent = 0;
    while completions(&h.sim_stats().await, "tok-a") == 0 {
        assert!(
            sent < 3,
            "three idle accounts take turns: a gets one of three"
        );
        ask_ok(&h, h.addr, &format!("first instance {sent}")).await;
        sent += 1;
    }
    let r = admin(&h, h.addr, "POST", "/admin/accounts/b/disable").await;
    assert_eq!(r.status, 200);
    let here = health(&h, h.addr).await;
    assert_eq!(
        (state(&here, "a"), state(&here, "b")),
        ("cooling".into(), "disabled".into())
    );
    let port = redis.port;
    eventually(
        "both states stored",
        Duration::from_secs(5),
        || async move {
            let a = redis_get(port, "qp:acct:a:health").await?;
            let b = redis_get(port, "qp:acct:b:health").await?;
            (a.contains("cooling") && b.contains("disabled")).then_some(())
        },
    )
    .await;

    // Started (or restarted, as in a deploy) afterwards: it knows both within a sync or
    // two, and sends neither account a turn.
    let later = h.another_proxy(&env).await;
    let deadline = Instant::now() + Duration::from_secs(12);
    let seen = loop {
        let seen = health(&h, later.addr).await;
        let adopted = state(&seen, "a") == "cooling" && state(&seen, "b") == "disabled";
        if adopted || Instant::now() > deadline {
            break seen;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert_eq!(state(&seen, "a"), "cooling", "{seen}");
    assert_eq!(state(&seen, "b"), "disabled", "{seen}");
    assert_eq!(
        listed(&seen, "a")["until_ms"],
        listed(&here, "a")["until_ms"]
    );
    let before = h.sim_stats().await;
    for i in 0..3 {
        ask_ok(&h, later.addr, &format!("new instance {i}")).await;
    }
    let after = h.sim_stats().await;
    for key in ["tok-a", "tok-b"] {
        assert_eq!(completions(&after, key), completions(&before, key), "{key}");
    }
    assert_eq!(
        completions(&after, "tok-c"),
        completions(&before, "tok-c") + 3
    );
}

/// `GET key` on the Redis at `port`, over a plain connection (`None`: no such key).
async fn redis_get(port: u16, key: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let cmd = format!("*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n", key.len());
    s.write_all(cmd.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if text.starts_with("$-1\r\n") {
            return None;
        }
        if let Some((len, rest)) = text.strip_prefix('$').and_then(|t| t.split_once("\r\n")) {
            let len: usize = len.parse().ok()?;
            if rest.len() >= len {
                return Some(rest[..len].to_owned());
            }
        }
    }
}

#[tokio::test]
async fn a_token_survives_a_restart_through_redis() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let file = AccountsFile::new(&json!([password_account(
        "alice",
        "alice@example.com",
        "wonderland"
    )]));
    let env = [
        ("QWEN_ACCOUNTS_FILE", file.path()),
        ("REDIS_URL", url.as_str()),
        ("QWEN_SIGNIN_INTERVAL", "50"),
    ];
    let mut h = Harness::start_with(&env, strict_sim(ALICE, Duration::from_secs(3600))).await;
    let hh = &h;
    eventually("signed in", Duration::from_secs(5), || async move {
        (health(hh, hh.addr).await["accounts"]["counts"]["ready"] == 1).then_some(())
    })
    .await;
    ask_ok(&h, h.addr, "before the restart").await;
    let port = redis.port;
    eventually("the token stored", Duration::from_secs(5), || async move {
        redis_get(port, "qp:acct:alice:token").await
    })
    .await;
    assert_eq!(h.sim_stats().await["signins"], 1);
    h.begin_shutdown();
    h.wait_stopped().await;

    let restarted = h.another_proxy(&env).await;
    let (hh, restarted_addr) = (&h, restarted.addr);
    eventually(
        "ready with the stored token",
        Duration::from_secs(5),
        || async move {
            (health(hh, restarted_addr).await["accounts"]["counts"]["ready"] == 1).then_some(())
        },
    )
    .await;
    ask_ok(&h, restarted.addr, "after the restart").await;
    let stats = h.sim_stats().await;
    assert_eq!(stats["signins"], 1, "no second sign-in");
    assert_eq!(completions(&stats, "alice@example.com"), 2);
    assert_eq!(refused(&stats, "alice@example.com"), 0);
}

// === 10. admin API ===

#[tokio::test]
async fn the_admin_api_needs_its_key() {
    let file = AccountsFile::new(&json!([
        cookie_account("a"),
        cookie_account("b"),
        password_account("p", "p@example.com", "pass-word-SECRET"),
    ]));
    // Without ADMIN_KEY there is no admin API.
    let h = Harness::start_with(&[("QWEN_ACCOUNTS_FILE", file.path())], quick_sim()).await;
    let r = admin(&h, h.addr, "GET", "/admin/accounts").await;
    assert_eq!(r.status, 404);
    let p = h
        .another_proxy(&[
            ("QWEN_ACCOUNTS_FILE", file.path()),
            ("ADMIN_KEY", ADMIN_KEY),
        ])
        .await;
    let url = |path: &str| format!("http://{}{path}", p.addr);
    let r = call(&h, url("/admin/accounts"), "GET", &[], None).await;
    assert_eq!(r.status, 401);
    assert_eq!(error_code(&r), "invalid_admin_key");
    let wrong = [("authorization", "Bearer not-the-key")];
    let r = call(&h, url("/admin/accounts"), "GET", &wrong, None).await;
    assert_eq!(r.status, 401);
    assert_eq!(error_code(&r), "invalid_admin_key");
    let r = call(&h, url("/admin/accounts/a/disable"), "POST", &wrong, None).await;
    assert_eq!(r.status, 401);
    let hh = &h;
    let paddr = p.addr;
    eventually("p signed in", Duration::from_secs(5), || async move {
        (health(hh, paddr).await["accounts"]["counts"]["ready"] == 3).then_some(())
    })
    .await;
    let r = admin(&h, p.addr, "GET", "/admin/accounts").await;
    assert_eq!(r.status, 200);
    let list = r.json();
    assert_eq!(list["counts"]["total"], 3);
    let a = &list["accounts"][0];
    assert_eq!(
        (a["name"].clone(), a["kind"].clone(), a["state"].clone()),
        (json!("a"), json!("cookies"), json!("ready"))
    );
    assert_eq!(
        (
            a["inflight"].clone(),
            a["max_inflight"].clone(),
            a["min_interval_ms"].clone()
        ),
        (json!(0), json!(4), json!(0))
    );
    assert_eq!(
        (a["turns"].clone(), a["proxy"].clone()),
        (json!(0), json!(false))
    );
    assert_eq!(a["recent_errors"], json!([]));
    assert_eq!(list["accounts"][2]["kind"], "password");

    // Wrong method, unknown account.
    assert_eq!(
        admin(&h, p.addr, "GET", "/admin/accounts/a/disable")
            .await
            .status,
        405
    );
    assert_eq!(
        admin(&h, p.addr, "POST", "/admin/accounts").await.status,
        405
    );
    assert_eq!(
        admin(&h, p.addr, "POST", "/admin/accounts/zz/disable")
            .await
            .status,
        404
    );

    // Disabled: no turns; enabled: back in rotation.
    let r = admin(&h, p.addr, "POST", "/admin/accounts/a/disable").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["account"]["state"], "disabled");
    let health_now = health(&h, p.addr).await;
    assert_eq!(state(&health_now, "a"), "disabled");
    for i in 0..4 {
        ask_ok(&h, p.addr, &format!("a disabled {i}")).await;
    }
    assert_eq!(completions(&h.sim_stats().await, "tok-a"), 0);
    let r = admin(&h, p.addr, "POST", "/admin/accounts/a/enable").await;
    assert_eq!(r.json()["account"]["state"], "ready");
    // Back in rotation: it started a turn longest ago, so it takes the next one.
    ask_ok(&h, p.addr, "a enabled").await;
    let stats = h.sim_stats().await;
    assert_eq!(completions(&stats, "tok-a"), 1, "{stats}");
    assert_eq!(
        metric(
            &h,
            p.addr,
            r#"upstream_account_cooldowns_total{reason="disabled"}"#
        )
        .await,
        1.0
    );

    // Purging deletes every chat of that account, and only those.
    ask_ok(&h, p.addr, "a again").await;
    let stats = h.sim_stats().await;
    let chats_before = stats["chats"].as_object().unwrap().len();
    let on_a = stats["accounts"]["tok-a"]["chats_created"]
        .as_u64()
        .unwrap();
    assert!(on_a >= 1, "{stats}");
    let r = admin(&h, p.addr, "POST", "/admin/accounts/a/purge-chats").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.json(),
        json!({"account": "a", "purged": true, "deleted": on_a})
    );
    let stats = h.sim_stats().await;
    assert_eq!(stats["chats_purged"], on_a);
    assert_eq!(
        stats["chats"].as_object().unwrap().len() as u64,
        chats_before as u64 - on_a
    );

    // No secret anywhere an operator looks.
    let token = p.state.accounts.get("p").unwrap().token().unwrap();
    let mut secrets = vec![
        "tok-a".to_owned(),
        "tok-b".to_owned(),
        "pass-word-SECRET".to_owned(),
        ADMIN_KEY.to_owned(),
        token.access.clone(),
    ];
    secrets.extend(token.refresh.clone());
    for path in ["/admin/accounts", "/health", "/metrics"] {
        let body = admin(&h, p.addr, "GET", path).await.body;
        let text = String::from_utf8_lossy(&body);
        for s in &secrets {
            assert!(!text.contains(s.as_str()), "{path} shows a secret");
        }
    }
}

// === 11. per-account outbound proxy ===

/// A minimal HTTP CONNECT proxy: counts tunnels, keeps each `Proxy-Authorization` and
/// everything the client sent through the tunnels (plain HTTP to the simulator).
#[derive(Default)]
struct ConnectProxy {
    /// How long the first tunnel takes to open (as a first TLS handshake through a proxy).
    first_tunnel_delay: Duration,
    connects: AtomicUsize,
    auth: Mutex<Vec<String>>,
    targets: Mutex<Vec<String>>,
    sent: Mutex<Vec<u8>>,
}

impl ConnectProxy {
    async fn start() -> (Arc<Self>, SocketAddr) {
        Self::start_with(Duration::ZERO).await
    }

    async fn start_with(first_tunnel_delay: Duration) -> (Arc<Self>, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let proxy = Arc::new(ConnectProxy {
            first_tunnel_delay,
            ..ConnectProxy::default()
        });
        let p = proxy.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(p.clone().tunnel(conn));
            }
        });
        (proxy, addr)
    }

    async fn tunnel(self: Arc<Self>, mut client: TcpStream) {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if client.read_exact(&mut byte).await.is_err() {
                return;
            }
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap_or("");
        let Some(target) = request_line
            .strip_prefix("CONNECT ")
            .and_then(|r| r.split_whitespace().next())
        else {
            let _ = client
                .write_all(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
                .await;
            return;
        };
        if self.connects.fetch_add(1, Ordering::SeqCst) == 0 {
            tokio::time::sleep(self.first_tunnel_delay).await;
        }
        self.targets.lock().unwrap().push(target.to_owned());
        for line in lines {
            if let Some((k, v)) = line.split_once(':') {
                if k.trim().eq_ignore_ascii_case("proxy-authorization") {
                    self.auth.lock().unwrap().push(v.trim().to_owned());
                }
            }
        }
        let Ok(upstream) = TcpStream::connect(target).await else {
            let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
            return;
        };
        if client
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await
            .is_err()
        {
            return;
        }
        let (mut client_rd, mut client_wr) = client.into_split();
        let (mut up_rd, mut up_wr) = upstream.into_split();
        let log = self.clone();
        let to_upstream = async move {
            let mut buf = [0u8; 8192];
            loop {
                match client_rd.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        log.sent.lock().unwrap().extend_from_slice(&buf[..n]);
                        if up_wr.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = up_wr.shutdown().await;
        };
        let to_client = async move {
            let _ = tokio::io::copy(&mut up_rd, &mut client_wr).await;
            let _ = client_wr.shutdown().await;
        };
        tokio::join!(to_upstream, to_client);
    }

    fn sent(&self) -> String {
        String::from_utf8_lossy(&self.sent.lock().unwrap()).into_owned()
    }
}

#[tokio::test]
async fn an_account_proxy_carries_its_traffic() {
    let (proxy, proxy_addr) = ConnectProxy::start().await;
    let mut tunnelled = cookie_account("x");
    tunnelled["proxy"] = json!(format!("http://user:pw@{proxy_addr}"));
    let file = AccountsFile::new(&json!([tunnelled, cookie_account("y")]));
    let h = Harness::start_with(&[("QWEN_ACCOUNTS_FILE", file.path())], quick_sim()).await;
    for i in 0..4 {
        ask_ok(&h, h.addr, &format!("proxied {i}")).await;
    }
    let stats = h.sim_stats().await;
    assert_eq!(
        (completions(&stats, "tok-x"), completions(&stats, "tok-y")),
        (2, 2)
    );
    assert!(proxy.connects.load(Ordering::SeqCst) >= 1);
    let auth = proxy.auth.lock().unwrap().clone();
    assert!(!auth.is_empty());
    assert!(auth.iter().all(|a| a == "Basic dXNlcjpwdw=="), "{auth:?}");
    let sim_authority = h.sim.addr().to_string();
    assert!(proxy
        .targets
        .lock()
        .unwrap()
        .iter()
        .all(|t| *t == sim_authority));
    // x's turns went through the tunnel, y's did not.
    let sent = proxy.sent();
    assert_eq!(
        sent.matches("POST /api/v2/chat/completions").count(),
        2,
        "{sent}"
    );
    assert!(sent.contains("token=tok-x"));
    assert!(!sent.contains("tok-y"), "y's traffic stays direct");
    let admin_view = h.get("/health").await.json();
    assert_eq!(admin_view["accounts"]["counts"]["ready"], 2);
}

// === 12. the binary refuses a file it must not use ===

/// Run the binary to completion (bounded).
fn run(env: &[(&str, &str)]) -> Output {
    let child = support::process::command(&["--env-file", "/dev/null"], env)
        .env("PORT", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary starts");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let id = child.id();
    let waiter = std::thread::spawn(move || child.wait_with_output().unwrap());
    while !waiter.is_finished() {
        assert!(
            std::time::Instant::now() < deadline,
            "pid {id} did not exit"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    waiter.join().unwrap()
}

#[test]
fn a_world_readable_accounts_file_is_refused() {
    let file = AccountsFile::new(&json!([{"name": "a", "cookies": "token=tok-SECRET0"}]));
    file.chmod(0o644);
    let out = run(&[("QWEN_ACCOUNTS_FILE", file.path())]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("chmod 600"), "{stderr}");
    assert!(stderr.contains(file.path()), "names the file: {stderr}");
    assert!(!stderr.contains("SECRET0"));

    file.write_text(
        r#"[{"name": "a", "cookies": "no-token-SECRET1"},
            {"name": "b", "email": "b@x.io", "password": "SECRET2", "cookies": "token=SECRET3"}]"#,
    );
    let out = run(&[("QWEN_ACCOUNTS_FILE", file.path())]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("entry 1") && stderr.contains("entry 2"),
        "{stderr}"
    );
    for secret in ["SECRET1", "SECRET2", "SECRET3"] {
        assert!(
            !stderr.contains(secret) && !stdout.contains(secret),
            "{secret}: {stderr}"
        );
    }
}
