//! One row through the real stack: a fresh simulator and proxy, the fault set off, the
//! request sent, and what happened read back from the reply, the simulator's stats,
//! `/metrics` and `/health` — then what a plain request meets next.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use serde_json::{json, Value};

use qwen_proxy::sim::accounts::Accounts;
use qwen_proxy::sim::SimConfig;

use crate::cases::{Case, Creds, Inject};
use crate::support::{self, expected_answer, parse_sse, quick_sim, summarize, Harness, Reply};

pub const MODEL: &str = "qwen3.7-plus";

/// The counters a row reports the changes of (`/metrics`); `upstream_retries_total` has a
/// column of its own.
const COUNTERS: &[&str] = &[
    "upstream_errors_total",
    "upstream_account_cooldowns_total",
    "upstream_account_turns_total",
    "upstream_account_signins_total",
];

#[derive(Debug, Default)]
pub struct Observation {
    pub status: u16,
    /// The error's `type` and `code` (from the body, or the in-band event).
    pub error: Option<(String, String)>,
    /// The error's message (not shown: it is prose).
    pub message: String,
    /// The error came as an event in a 200 stream.
    pub in_band: bool,
    /// Answer text the client got (before the error, if any).
    pub content: String,
    pub finish: Option<String>,
    pub retry_after: Option<u64>,
    pub should_retry: Option<String>,
    /// Completion requests per account (the simulator's, refused ones included), in pool
    /// order.
    pub attempts: Vec<u64>,
    /// Upstream chats the request opened.
    pub chats: u64,
    pub retries: u64,
    /// Counters of `COUNTERS` that changed: sample → increase.
    pub counters: BTreeMap<String, u64>,
    /// Accounts after the request (name, state), in pool order.
    pub states: Vec<(String, String)>,
    /// What a plain non-streamed request meets next: its status, error code (empty for an
    /// answer) and the completion requests per account it made.
    pub next_status: u16,
    pub next_code: String,
    pub next_attempts: Vec<u64>,
}

impl Observation {
    pub fn code(&self) -> &str {
        self.error.as_ref().map_or("", |e| e.1.as_str())
    }

    pub fn kind(&self) -> &str {
        self.error.as_ref().map_or("", |e| e.0.as_str())
    }

    /// How much a counter sample rose.
    pub fn rose(&self, sample: &str) -> u64 {
        self.counters.get(sample).copied().unwrap_or(0)
    }

    /// The turn was moved off the first account (`upstream_account_turns_total{moved}`).
    pub fn moved(&self) -> bool {
        self.counters
            .iter()
            .any(|(k, n)| k.contains("moved=\"true\"") && *n > 0)
    }
}

// === the pool ===

/// An accounts file in a fresh directory, mode 0600 (the proxy refuses a world-readable one).
pub struct AccountsFile {
    dir: PathBuf,
    path: PathBuf,
}

impl AccountsFile {
    fn new(entries: &Value) -> Self {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = std::env::temp_dir().join(format!("qp-fault-matrix-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("accounts.json");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .unwrap();
        f.write_all(entries.to_string().as_bytes()).unwrap();
        AccountsFile { dir, path }
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

fn accounts_file(case: &Case) -> Option<AccountsFile> {
    let entry = |name: &str| match case.fault.creds {
        Creds::Cookies => {
            json!({"name": name, "cookies": format!("other=1; token=tok-{name}"), "min_interval_ms": 0})
        }
        Creds::Passwords => json!({"name": name, "email": format!("{name}@example.com"),
                "password": format!("pw-{name}"), "min_interval_ms": 0}),
    };
    match (case.fault.creds, case.accounts) {
        (Creds::Cookies, 1) => None,
        _ => Some(AccountsFile::new(&Value::Array(
            case.names().iter().map(|n| entry(n)).collect(),
        ))),
    }
}

fn sim_config(case: &Case) -> SimConfig {
    match case.fault.creds {
        Creds::Cookies => quick_sim(),
        Creds::Passwords => {
            let lines = "a@example.com pw-a\nb@example.com pw-b\n";
            SimConfig {
                accounts: Some(Arc::new(
                    Accounts::parse(lines, Duration::from_secs(3600)).unwrap(),
                )),
                ..quick_sim()
            }
        }
    }
}

// === reading the stack ===

/// `POST /__sim/accounts/{key}/{action}`.
async fn sim_control(h: &Harness, key: &str, action: &str) {
    let req = Request::post(format!(
        "{}/__sim/accounts/{key}/{action}",
        h.sim.base_url()
    ))
    .body(Full::new(Bytes::new()))
    .unwrap();
    let r = Harness::read(h.send(req).await).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

/// Every sample of `/metrics`: `name{labels}` → value.
async fn metrics(h: &Harness) -> BTreeMap<String, f64> {
    let text = String::from_utf8(h.get("/metrics").await.body.to_vec()).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// `/metrics` once it has stopped changing (a stream's bookkeeping ends just after its last
/// byte), bounded.
async fn settled_metrics(h: &Harness) -> BTreeMap<String, f64> {
    let mut last = metrics(h).await;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(25)).await;
        let now = metrics(h).await;
        let same = COUNTERS
            .iter()
            .chain(["upstream_retries_total"].iter())
            .all(|c| family(&now, c) == family(&last, c));
        last = now;
        if same {
            break;
        }
    }
    last
}

fn family<'a>(m: &'a BTreeMap<String, f64>, name: &str) -> Vec<(&'a String, &'a f64)> {
    m.iter()
        .filter(|(k, _)| k.as_str() == name || k.starts_with(&format!("{name}{{")))
        .collect()
}

fn stat(stats: &Value, key: &str, field: &str) -> u64 {
    stats["accounts"][key][field].as_u64().unwrap_or(0)
}

async fn health(h: &Harness) -> Value {
    h.health().await.json()
}

/// Wait (bounded) until the pool's `n` accounts are ready (password accounts sign in first).
async fn wait_ready(h: &Harness, n: usize) {
    for _ in 0..200 {
        if health(h).await["accounts"]["counts"]["ready"] == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{n} account(s) not ready: {}", health(h).await);
}

fn states(case: &Case, health: &Value) -> Vec<(String, String)> {
    let list = health["accounts"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    case.names()
        .iter()
        .map(|name| {
            let state = list
                .iter()
                .find(|a| a["name"] == *name)
                .and_then(|a| a["state"].as_str())
                .unwrap_or("?");
            ((*name).to_owned(), state.to_owned())
        })
        .collect()
}

/// The plain-answer capture cut 40 bytes into its second answer frame: "Hi" has come.
fn cut_capture() -> Vec<u8> {
    let full = support::fixture("plain-answer.sse");
    let cut = full[..632 + 40].to_vec();
    let text = String::from_utf8_lossy(&cut);
    assert!(text.contains(r#""content": "Hi""#) && !text.contains(r#""content": "!""#));
    cut
}

/// Whether the SSE text so far has a complete event with answer text.
fn has_content(body: &[u8]) -> bool {
    let text = String::from_utf8_lossy(body);
    let complete = match text.rfind("\n\n") {
        Some(end) => &text[..end],
        None => return false,
    };
    complete.split("\n\n").any(|e| {
        e.strip_prefix("data: ")
            .and_then(|d| serde_json::from_str::<Value>(d).ok())
            .is_some_and(|v| {
                v["choices"][0]["delta"]["content"]
                    .as_str()
                    .is_some_and(|c| !c.is_empty())
            })
    })
}

/// The request of `BanMidStream`: the first account is banned once its answer has begun.
async fn ban_mid_stream(h: &Harness, case: &Case) -> Reply {
    let body = json!({"model": MODEL, "stream": case.stream,
        "messages": [{"role": "user", "content": case.prompt()}]});
    let req = Request::post(h.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    if case.stream {
        // Read until the first answer text has reached the client, then ban.
        let mut rsp = h.send(req).await;
        let (status, headers) = (rsp.status(), rsp.headers().clone());
        let mut got = Vec::new();
        while !has_content(&got) {
            let frame = tokio::time::timeout(Duration::from_secs(10), rsp.body_mut().frame())
                .await
                .expect("a frame within 10 s");
            match frame {
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        got.extend_from_slice(&data);
                    }
                }
                _ => break,
            }
        }
        sim_control(h, case.first_key(), "ban").await;
        let rest = Harness::read(rsp).await;
        got.extend_from_slice(&rest.body);
        Reply {
            status,
            headers,
            body: Bytes::from(got),
        }
    } else {
        // Nothing reaches the client before the end: ban while the upstream stream runs
        // (the simulator holds it 1 s after its first text).
        let ban = async {
            let s = h.wait_for_stats(|s| s["in_flight"] == 1).await;
            assert_eq!(s["in_flight"], 1, "the upstream stream began");
            tokio::time::sleep(Duration::from_millis(300)).await;
            sim_control(h, case.first_key(), "ban").await;
        };
        let (reply, ()) = tokio::join!(async { Harness::read(h.send(req).await).await }, ban);
        reply
    }
}

fn message_of(e: &Value) -> String {
    e["message"].as_str().unwrap_or("").to_owned()
}

/// What the reply says, into `o`.
fn read_reply(case: &Case, r: &Reply, o: &mut Observation) {
    o.status = r.status.as_u16();
    o.retry_after = r
        .headers
        .get("retry-after")
        .map(|v| v.to_str().unwrap().parse().unwrap());
    o.should_retry = r
        .headers
        .get("x-should-retry")
        .map(|v| v.to_str().unwrap().to_owned());
    let error_of = |e: &Value| {
        (
            e["type"].as_str().unwrap_or("?").to_owned(),
            e["code"].as_str().unwrap_or("?").to_owned(),
        )
    };
    if o.status != 200 {
        assert_eq!(
            r.headers.get("content-type").map(|v| v.to_str().unwrap()),
            Some("application/json"),
            "{}: an error status has a JSON body",
            case.label()
        );
        o.error = Some(error_of(&r.error()));
        o.message = message_of(&r.error());
        return;
    }
    if case.stream {
        let s = summarize(&parse_sse(&r.body));
        o.content = s.content;
        o.finish = s.finish_reason;
        if let Some(e) = s.error {
            o.error = Some(error_of(&e));
            o.message = message_of(&e);
            o.in_band = true;
        }
    } else {
        let v = r.json();
        o.content = v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        o.finish = v["choices"][0]["finish_reason"].as_str().map(str::to_owned);
        if let Some(e) = v.get("error") {
            o.error = Some(error_of(e));
            o.message = message_of(e);
        }
    }
}

pub async fn observe(case: &Case) -> Observation {
    let file = accounts_file(case);
    let dead;
    let mut env: Vec<(&str, &str)> = case.fault.env.to_vec();
    if let Some(f) = &file {
        env.push(("QWEN_ACCOUNTS_FILE", f.path()));
        env.push(("QWEN_SIGNIN_INTERVAL", "50"));
    }
    if let Inject::Unreachable = case.fault.inject {
        // Bind and drop a listener: a port nobody listens on.
        let port = support::free_port();
        dead = format!("http://127.0.0.1:{port}");
        env.push(("QWEN_BASE_URL", &dead));
    }
    let h = Harness::start_with(&env, sim_config(case)).await;
    wait_ready(&h, case.accounts).await;
    let (stats0, metrics0) = (h.sim_stats().await, settled_metrics(&h).await);
    match case.fault.inject {
        Inject::Account(action) => sim_control(&h, case.first_key(), action).await,
        Inject::CutOnce => h.sim_replay(cut_capture(), 0).await,
        _ => {}
    }
    let reply = match case.fault.inject {
        Inject::BanMidStream => ban_mid_stream(&h, case).await,
        _ => h.ask(MODEL, &case.prompt(), case.stream).await,
    };
    let mut o = Observation::default();
    read_reply(case, &reply, &mut o);
    let metrics1 = settled_metrics(&h).await;
    let stats1 = h.sim_stats().await;
    o.attempts = case
        .keys()
        .iter()
        .map(|k| stat(&stats1, k, "completions") - stat(&stats0, k, "completions"))
        .collect();
    o.chats = stats1["chats_created"].as_u64().unwrap_or(0)
        - stats0["chats_created"].as_u64().unwrap_or(0);
    let delta = |sample: &str| {
        metrics1.get(sample).copied().unwrap_or(0.0) - metrics0.get(sample).copied().unwrap_or(0.0)
    };
    o.retries = delta("upstream_retries_total") as u64;
    for c in COUNTERS {
        for (sample, _) in family(&metrics1, c) {
            let d = delta(sample);
            if d != 0.0 {
                o.counters.insert(sample.clone(), d as u64);
            }
        }
    }
    o.states = states(case, &health(&h).await);

    // What a plain request meets now.
    let question = "and now a plain question";
    let r = h.ask(MODEL, question, false).await;
    let stats2 = h.sim_stats().await;
    o.next_attempts = case
        .keys()
        .iter()
        .map(|k| stat(&stats2, k, "completions") - stat(&stats1, k, "completions"))
        .collect();
    o.next_status = r.status.as_u16();
    if r.status == 200 {
        assert_eq!(
            r.message_content(),
            expected_answer(question),
            "{}",
            case.label()
        );
    } else {
        o.next_code = r.error()["code"].as_str().unwrap_or("?").to_owned();
    }
    o
}
