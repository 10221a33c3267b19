//! How many requests per minute a pool of N accounts sustains with the pacing defaults
//! (`max_inflight` 4, `min_interval_ms` 1000 with up to +25 % jitter), measured end to end
//! in-process: the real proxy against the simulator with upstream-like timings
//! (`chats/new` 300 ms, first token 1.5 s, about 1.4 s of answer: ≈ 3.2 s a turn).
//!
//! Closed loop: 32 clients each send a new conversation the moment their previous answer
//! ended, for a fixed window; completed answers per minute are counted, with the p50 time
//! from request to the end of the answer (which includes waiting for an account). The
//! baseline, in the same run: the pool of one from `QWEN_COOKIES` (no pacing) under the
//! same load — what the upstream would see without pacing.
//!
//! `cargo bench --bench accounts` runs the full measurement (N = 1, 2, 4, 8; 40 s each);
//! under `cargo test` (no `--bench` argument) a quick version checks the pacing bound: a
//! pool never starts more turns than its accounts' intervals allow.

// Tests and benches: a failed unwrap is a failure with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use tokio::time::Instant;

use qwen_proxy::sim::{SimConfig, SimTiming, Simulator};
use qwen_proxy::{App, Config};

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

const CLIENTS: usize = 32;

/// One measured configuration.
struct Row {
    label: String,
    completed: u64,
    failed: u64,
    per_minute: f64,
    p50_ms: u64,
}

async fn simulator(quick: bool) -> Simulator {
    let timing = if quick {
        SimTiming {
            chat_latency: Duration::from_millis(20),
            ttft: Duration::from_millis(50),
            frame_delay: Duration::from_millis(5),
            chunk_chars: 8,
            prefill_per_1k_tokens: Duration::ZERO,
        }
    } else {
        SimTiming {
            chat_latency: Duration::from_millis(300),
            ttft: Duration::from_millis(1500),
            frame_delay: Duration::from_millis(50),
            chunk_chars: 3,
            prefill_per_1k_tokens: qwen_proxy::sim::PREFILL_PER_1K_TOKENS,
        }
    };
    Simulator::start(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        SimConfig {
            timing,
            ..SimConfig::default()
        },
    )
    .await
    .unwrap()
}

/// A proxy with `accounts` file accounts at the default pacing, or (`None`) the pool of
/// one from `QWEN_COOKIES`.
async fn proxy(sim: &Simulator, accounts: Option<usize>, dir: &std::path::Path) -> SocketAddr {
    let mut vars: HashMap<String, String> = HashMap::new();
    vars.insert("QWEN_BASE_URL".into(), sim.base_url());
    vars.insert("QWEN_AUTH_BASE_URL".into(), sim.base_url());
    vars.insert("LOG_LEVEL".into(), "error".into());
    vars.insert("ACCOUNT_QUEUE_TIMEOUT".into(), "120000".into());
    vars.insert("CONVERSATION_MODE".into(), "stateless".into());
    match accounts {
        Some(n) => {
            use std::os::unix::fs::PermissionsExt;
            let entries: Vec<_> = (0..n)
                .map(
                    |i| json!({"name": format!("acct-{i}"), "cookies": format!("token=bench-{i}")}),
                )
                .collect();
            let path = dir.join(format!("accounts-{n}.json"));
            std::fs::write(&path, serde_json::to_vec(&entries).unwrap()).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            vars.insert(
                "QWEN_ACCOUNTS_FILE".into(),
                path.to_string_lossy().into_owned(),
            );
        }
        None => {
            vars.insert("QWEN_COOKIES".into(), "token=bench-single".into());
        }
    }
    let config = Config::from_source(&vars, false).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(App::new(config).serve(listener, std::future::pending()));
    addr
}

/// One request, read to the end: whether it completed.
async fn ask(client: &HttpClient, addr: SocketAddr, n: u64) -> bool {
    let body = json!({
        "model": "qwen3.7-plus",
        "stream": true,
        "messages": [{"role": "user", "content": format!("question {n}")}],
    });
    let req = Request::post(format!("http://{addr}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let Ok(rsp) = client.request(req).await else {
        return false;
    };
    if !rsp.status().is_success() {
        return false;
    }
    match rsp.into_body().collect().await {
        Ok(b) => {
            let text = b.to_bytes();
            let text = String::from_utf8_lossy(&text);
            text.contains("\"finish_reason\":\"stop\"") && !text.contains("\"error\"")
        }
        Err(_) => false,
    }
}

/// `CLIENTS` closed-loop clients for `window`; requests still waiting or streaming at its
/// end are abandoned (not counted).
async fn drive(addr: SocketAddr, window: Duration, label: String) -> Row {
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let seq = Arc::new(AtomicU64::new(0));
    let results = Arc::new(std::sync::Mutex::new((Vec::<Duration>::new(), 0u64)));
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let (client, seq, results) = (client.clone(), seq.clone(), results.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let t = Instant::now();
                let ok = ask(&client, addr, seq.fetch_add(1, Ordering::Relaxed)).await;
                let mut r = results.lock().unwrap();
                if ok {
                    r.0.push(t.elapsed());
                } else {
                    r.1 += 1;
                }
            }
        }));
    }
    tokio::time::sleep(window).await;
    for t in &tasks {
        t.abort();
    }
    let (mut latencies, failed) = results.lock().unwrap().clone();
    latencies.sort();
    let completed = latencies.len() as u64;
    Row {
        label,
        completed,
        failed,
        per_minute: completed as f64 * 60.0 / window.as_secs_f64(),
        p50_ms: latencies
            .get(latencies.len() / 2)
            .map_or(0, |d| d.as_millis() as u64),
    }
}

#[tokio::main]
async fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let dir = std::env::temp_dir().join(format!("qp-bench-accounts-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (sizes, window): (&[usize], _) = if quick {
        (&[1, 2], Duration::from_millis(3_500))
    } else {
        (&[1, 2, 4, 8], Duration::from_secs(40))
    };
    let sim = simulator(quick).await;
    let mut rows = Vec::new();
    let baseline = proxy(&sim, None, &dir).await;
    rows.push(drive(baseline, window, "pool of one, unpaced (baseline)".into()).await);
    for &n in sizes {
        let addr = proxy(&sim, Some(n), &dir).await;
        rows.push(drive(addr, window, format!("{n} account(s), defaults")).await);
    }
    std::fs::remove_dir_all(&dir).ok();
    let base = rows[0].per_minute.max(f64::MIN_POSITIVE);
    println!(
        "\n{:<34} {:>10} {:>8} {:>12} {:>10} {:>9}",
        "pool", "completed", "failed", "req/min", "× baseline", "p50 ms"
    );
    for r in &rows {
        println!(
            "{:<34} {:>10} {:>8} {:>12.1} {:>10.2} {:>9}",
            r.label,
            r.completed,
            r.failed,
            r.per_minute,
            r.per_minute / base,
            r.p50_ms
        );
    }
    if quick {
        // The pacing bound: each account starts a turn at most once per 1 s, so in the
        // window a pool of n starts at most n × (window / 1 s + 1) turns; the unpaced
        // baseline has no such bound and does many more.
        for (r, &n) in rows[1..].iter().zip(sizes) {
            let bound = n as u64 * (window.as_secs() + 1);
            assert!(
                r.completed <= bound,
                "{}: {} turns > the pacing bound {bound}",
                r.label,
                r.completed
            );
            assert!(r.completed >= 1, "{}: nothing completed", r.label);
            assert_eq!(r.failed, 0, "{}: failures", r.label);
        }
        assert!(
            rows[0].completed
                > 4 * sizes
                    .iter()
                    .map(|&n| n as u64 * (window.as_secs() + 1))
                    .max()
                    .unwrap(),
            "the unpaced baseline is not held back"
        );
    }
}
