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

#[path = "../support/mod.rs"]
mod support;

mod health;
mod operators;
mod redis;
mod renewal;
mod traffic;

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Output;
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

/// The file most tests use: browser sessions `a` and `b` (tokens `tok-a`, `tok-b`).
fn two_cookie_accounts() -> AccountsFile {
    AccountsFile::new(&json!([cookie_account("a"), cookie_account("b")]))
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
    h.health_at(addr).await.json()
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
/// Wait (up to 5 s) until `n` accounts of the proxy at `addr` are ready.
async fn wait_ready(h: &Harness, addr: SocketAddr, n: u64) {
    eventually(
        &format!("{n} account(s) ready"),
        Duration::from_secs(5),
        || async move { (health(h, addr).await["accounts"]["counts"]["ready"] == n).then_some(()) },
    )
    .await;
}

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
