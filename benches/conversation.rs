//! Conversation continuation vs a fresh chat per turn, measured end to end in-process:
//! the real proxy stack against the simulator with `chats/new` latency 300 ms.
//!
//! * time to first token of turn 2 (streaming), continuation vs `CONVERSATION_MODE=stateless`;
//! * upstream request bytes per turn over a 20-turn conversation, both ways;
//! * an agent loop: 10 steps, each sent the moment the previous answer ended (as agents send
//!   tool results), while the upstream keeps each chat busy for a linger of 0.3–5 s after an
//!   answer and `chats/new` takes 0.3–0.6 s. Per step: continuation that waits out the busy
//!   window (`BUSY_CHAT_POLICY=wait`), a fresh chat with the folded history every turn
//!   (`CONVERSATION_MODE=stateless`), and the default (`adaptive`: the faster of the two
//!   from the learned estimates), with the simulator's busy refusals counted.
//!
//! * an agent's loop as Qwen Code sends it: its captured system prompt and 15 tools (an 80 KB
//!   first request), the simulated model calling `read_file` at every step and the agent
//!   sending back results that grow by 512 bytes a step; the simulator reads prompts at
//!   30 ms per 1,000 tokens it has not read (prefill). Upstream bytes, chats and the mean
//!   step time for `wait`, `adaptive` and a fresh chat every step, at several busy windows.
//!
//! * the first turn of a new conversation: time to first token against a `chats/new` of 0,
//!   300 and 600 ms, without and with chats made ahead (`CHAT_POOL_SIZE`), conversations
//!   arriving every 100 ms; pool hits and the upstream chats made beyond one per
//!   conversation.
//!
//! `cargo bench --bench conversation` runs (`CONVERSATION_BENCH=first_turn`: only the first
//! turns) the full measurement (30 conversations per mode);
//! under `cargo test` (no `--bench` argument) it runs a quick smoke version, which asserts
//! that the agent loop's answers are all complete and that the learned window spares the
//! later steps a busy refusal.

// Tests and benches: a failed unwrap is a failure with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tokio::time::Instant;

use qwen_proxy::sim::{SimConfig, SimTiming, Simulator};
use qwen_proxy::{App, Config};

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

const LINGER: Duration = Duration::from_millis(50);

/// The simulator's timing in most measurements: first token 20 ms, 8 characters every 2 ms,
/// no prefill; `chats/new` as given.
fn quick_timing(chat_latency: Duration) -> SimTiming {
    SimTiming {
        chat_latency,
        ttft: Duration::from_millis(20),
        frame_delay: Duration::from_millis(2),
        chunk_chars: 8,
        prefill_per_1k_tokens: Duration::ZERO,
    }
}

async fn start(mode: &str) -> (Simulator, SocketAddr) {
    start_with(mode, "adaptive", Duration::from_millis(300), LINGER).await
}

async fn start_with(
    mode: &str,
    busy_policy: &str,
    chat_latency: Duration,
    linger: Duration,
) -> (Simulator, SocketAddr) {
    let timing = quick_timing(chat_latency);
    start_timed(mode, busy_policy, timing, linger, &[]).await
}

async fn start_timed(
    mode: &str,
    busy_policy: &str,
    timing: SimTiming,
    linger: Duration,
    env: &[(&str, &str)],
) -> (Simulator, SocketAddr) {
    let sim = Simulator::start(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        SimConfig {
            timing,
            linger,
            ..SimConfig::default()
        },
    )
    .await
    .expect("simulator");
    let vars: HashMap<String, String> = [
        ("QWEN_BASE_URL", sim.base_url()),
        ("QWEN_COOKIES", "token=bench".to_owned()),
        ("CONVERSATION_MODE", mode.to_owned()),
        ("BUSY_CHAT_POLICY", busy_policy.to_owned()),
        ("LOG_LEVEL", "error".to_owned()),
        // Chats made ahead only where measured (`first_turns`).
        ("CHAT_POOL_SIZE", "0".to_owned()),
    ]
    .into_iter()
    .chain(env.iter().map(|&(k, v)| (k, v.to_owned())))
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let app = App::new(Config::from_source(&vars, false).expect("config"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(app.serve(listener, std::future::pending()));
    (sim, addr)
}

/// One streamed turn: (time to the first content byte, full answer).
async fn turn(client: &HttpClient, addr: SocketAddr, messages: &[Value]) -> (Duration, String) {
    let body = json!({"model": "qwen3.7-plus", "stream": true, "messages": messages}).to_string();
    let req = Request::post(format!("http://{addr}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("request");
    let start = Instant::now();
    let rsp = client.request(req).await.expect("response");
    assert_eq!(rsp.status(), 200);
    let mut body = rsp.into_body();
    let mut ttft = None;
    let mut text = String::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.expect("frame").into_data() else {
            continue;
        };
        for line in std::str::from_utf8(&data).expect("utf-8").lines() {
            let Some(json) = line.strip_prefix("data: ") else {
                continue;
            };
            if json == "[DONE]" {
                continue;
            }
            let v: Value = serde_json::from_str(json).expect("chunk");
            if let Some(c) = v["choices"][0]["delta"]["content"]
                .as_str()
                .filter(|c| !c.is_empty())
            {
                ttft.get_or_insert_with(|| start.elapsed());
                text.push_str(c);
            }
        }
    }
    (ttft.expect("content arrived"), text)
}

async fn stats(client: &HttpClient, sim: &Simulator) -> Value {
    let req = Request::get(format!("{}/__sim/stats", sim.base_url()))
        .body(Full::new(Bytes::new()))
        .expect("request");
    let body = client
        .request(req)
        .await
        .expect("stats")
        .into_body()
        .collect()
        .await
        .expect("body");
    serde_json::from_slice(&body.to_bytes()).expect("json")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Turn-2 TTFT over `n` conversations.
async fn turn2_ttft(mode: &str, n: usize) -> Vec<Duration> {
    let (_sim, addr) = start(mode).await;
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let mut out = Vec::new();
    for i in 0..n {
        let mut messages =
            vec![json!({"role": "user", "content": format!("conversation {i}, first question")})];
        let (_, a1) = turn(&client, addr, &messages).await;
        messages.push(json!({"role": "assistant", "content": a1}));
        messages.push(json!({"role": "user", "content": "and a follow-up"}));
        // A person reads before answering; the upstream's chat linger has passed by then.
        tokio::time::sleep(LINGER * 2).await;
        out.push(turn(&client, addr, &messages).await.0);
    }
    out.sort();
    out
}

/// Upstream request bytes of each turn of one `turns`-turn conversation.
async fn bytes_per_turn(mode: &str, turns: usize) -> Vec<u64> {
    let (sim, addr) = start(mode).await;
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let mut messages = vec![
        json!({"role": "system", "content": "You are a helpful assistant. Answer briefly and precisely."}),
    ];
    for k in 0..turns {
        messages.push(json!({"role": "user", "content": format!("Question {k}: please explain the next step of the plan in detail.")}));
        let (_, a) = turn(&client, addr, &messages).await;
        messages.push(json!({"role": "assistant", "content": a}));
        tokio::time::sleep(LINGER * 2).await;
    }
    let s = stats(&client, &sim).await;
    let chats: Vec<Vec<u64>> = s["chats"]
        .as_object()
        .expect("chats")
        .values()
        .map(|c| {
            c["turns"]
                .as_array()
                .expect("turns")
                .iter()
                .map(|t| t["body_bytes"].as_u64().expect("bytes"))
                .collect()
        })
        .collect();
    match chats.as_slice() {
        // Continuation: one chat, its turns in order.
        [one] => one.clone(),
        // A fresh chat per turn: listed unordered, but each request carries the whole history,
        // so sizes grow turn by turn and sorting restores the order.
        many => {
            let mut sizes: Vec<u64> = many.iter().flatten().copied().collect();
            sizes.sort_unstable();
            sizes
        }
    }
}

/// What one agent loop cost: per-step latency (request to the answer's end) and the
/// simulator's busy refusals.
struct AgentLoop {
    steps: Vec<Duration>,
    busy_refusals: u64,
    chats_created: u64,
}

/// One `steps`-step agent loop, each request sent as soon as the previous answer ended.
async fn agent_loop(
    mode: &str,
    policy: &str,
    chat_latency: Duration,
    linger: Duration,
    steps: usize,
) -> AgentLoop {
    let (sim, addr) = start_with(mode, policy, chat_latency, linger).await;
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let mut messages = vec![json!({"role": "user", "content": "step 0: read the file"})];
    let mut out = Vec::new();
    for k in 0..steps {
        let began = Instant::now();
        let (_, answer) = turn(&client, addr, &messages).await;
        out.push(began.elapsed());
        assert!(!answer.is_empty(), "step {k} answered nothing");
        messages.push(json!({"role": "assistant", "content": answer}));
        messages.push(
            json!({"role": "user", "content": format!("step {}: the result is ok, go on", k + 1)}),
        );
    }
    let s = stats(&client, &sim).await;
    AgentLoop {
        steps: out,
        busy_refusals: s["busy_refusals"].as_u64().expect("busy_refusals"),
        chats_created: s["chats_created"].as_u64().expect("chats_created"),
    }
}

/// One streamed turn of a tool-calling request: the calls it made (id, name, arguments)
/// and its text.
async fn tool_turn(
    client: &HttpClient,
    addr: SocketAddr,
    body: &Value,
) -> (Vec<(String, String, String)>, String) {
    let req = Request::post(format!("http://{addr}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request");
    let rsp = client.request(req).await.expect("response");
    let status = rsp.status();
    let bytes = rsp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
    let mut calls: Vec<(String, String, String)> = Vec::new();
    let mut text = String::new();
    for line in std::str::from_utf8(&bytes).expect("utf-8").lines() {
        let Some(json) = line.strip_prefix("data: ").filter(|j| *j != "[DONE]") else {
            continue;
        };
        let v: Value = serde_json::from_str(json).expect("chunk");
        let delta = &v["choices"][0]["delta"];
        if let Some(c) = delta["content"].as_str() {
            text.push_str(c);
        }
        for tc in delta["tool_calls"].as_array().into_iter().flatten() {
            let i = tc["index"].as_u64().expect("index") as usize;
            if i == calls.len() {
                calls.push((
                    tc["id"].as_str().expect("id").to_owned(),
                    tc["function"]["name"].as_str().expect("name").to_owned(),
                    String::new(),
                ));
            }
            if let Some(a) = tc["function"]["arguments"].as_str() {
                calls[i].2.push_str(a);
            }
        }
    }
    (calls, text)
}

/// What one 80 KB agent loop cost upstream.
struct AgentCost {
    steps: Vec<Duration>,
    bytes: u64,
    chats: u64,
    busy_refusals: u64,
}

/// Qwen Code's captured first request: its system prompt and its tools.
fn qwen_code_request() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/clients/qwen-code-first-request.json"
    );
    serde_json::from_slice(&std::fs::read(path).expect("fixture")).expect("fixture JSON")
}

/// The simulated model's next call: `read_file` on the step's file.
fn read_directive(step: usize) -> String {
    format!(
        "@@sim:call=read_file,{}",
        json!({"file_path": format!("/home/dev/project/src/module_{step}.rs")})
    )
}

/// An agent loop of `steps` tool calls with Qwen Code's system prompt and tools: each
/// request sent the moment the previous answer ended, each tool result 512 bytes longer
/// than the one before.
async fn agent_loop_80k(mode: &str, policy: &str, linger: Duration, steps: usize) -> AgentCost {
    let timing = SimTiming {
        chat_latency: Duration::from_millis(300),
        ttft: Duration::from_millis(200),
        frame_delay: Duration::from_millis(2),
        chunk_chars: 16,
        prefill_per_1k_tokens: qwen_proxy::sim::PREFILL_PER_1K_TOKENS,
    };
    let (sim, addr) = start_timed(mode, policy, timing, linger, &[]).await;
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let captured = qwen_code_request();
    let mut messages = vec![
        captured["messages"][0].clone(),
        json!({"role": "user", "content": format!("Find why the build fails and fix it. {}", read_directive(0))}),
    ];
    let mut out = Vec::new();
    for k in 0..steps {
        let began = Instant::now();
        let body = json!({"model": "qwen3.7-plus", "stream": true, "stream_options": {"include_usage": true},
            "messages": messages, "tools": captured["tools"]});
        let (calls, _) = tool_turn(&client, addr, &body).await;
        out.push(began.elapsed());
        let [(id, name, arguments)] = calls.as_slice() else {
            panic!("step {k}: one call expected, got {calls:?}");
        };
        assert_eq!(name, "read_file");
        messages.push(json!({"role": "assistant", "content": "", "tool_calls": [
            {"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}]}));
        let mut result = format!(
            "// module {k}\n{}",
            "let x = compute(x);\n".repeat(26 * (k + 1))
        );
        if k + 1 < steps {
            result.push_str(&read_directive(k + 1));
        }
        messages.push(json!({"role": "tool", "tool_call_id": id, "content": result}));
    }
    let s = stats(&client, &sim).await;
    let bytes = s["chats"]
        .as_object()
        .expect("chats")
        .values()
        .flat_map(|c| c["turns"].as_array().expect("turns").iter())
        .map(|t| t["body_bytes"].as_u64().expect("bytes"))
        .sum();
    AgentCost {
        steps: out,
        bytes,
        chats: s["chats_created"].as_u64().expect("chats_created"),
        busy_refusals: s["busy_refusals"].as_u64().expect("busy_refusals"),
    }
}

/// The 80 KB agent loop table: every way, at several busy windows.
async fn agent_loops_80k(full: bool) {
    let (lingers, steps): (&[u64], usize) = if full {
        (&[300, 1_000, 2_000, 5_000], 8)
    } else {
        (&[300], 3)
    };
    println!("agent loop with Qwen Code's system prompt and tools (80 KB first request), {steps} read_file steps, results growing 512 B a step; chats/new 300 ms, TTFT 200 ms + 30 ms per 1k unread tokens");
    println!(
        "  window   way                mean step (2..{steps})   upstream bytes   chats   busy"
    );
    for &linger in lingers {
        let linger_d = Duration::from_millis(linger);
        let wait = agent_loop_80k("continue", "wait", linger_d, steps).await;
        let adaptive = agent_loop_80k("continue", "adaptive", linger_d, steps).await;
        let fresh = agent_loop_80k("stateless", "adaptive", linger_d, steps).await;
        for (way, c) in [
            ("wait", &wait),
            ("adaptive", &adaptive),
            ("fresh every step", &fresh),
        ] {
            println!(
                "  {:>5} ms  {:<17} {:>10.0} ms {:>16} {:>7} {:>6}   ({:.2}x wait's bytes, {:.2}x its time)",
                linger,
                way,
                mean_ms(&c.steps[1..]),
                c.bytes,
                c.chats,
                c.busy_refusals,
                c.bytes as f64 / wait.bytes as f64,
                mean_ms(&c.steps[1..]) / mean_ms(&wait.steps[1..]),
            );
        }
        // The targets: adaptive is never slower than waiting (within measurement noise) and
        // never sends more than 1.5× its bytes.
        assert!(
            adaptive.bytes as f64 <= 1.5 * wait.bytes as f64,
            "adaptive sent {} bytes, wait {}",
            adaptive.bytes,
            wait.bytes
        );
        if !full {
            assert_eq!(wait.chats, 1, "wait keeps one chat");
        }
    }
}

fn mean_ms(v: &[Duration]) -> f64 {
    v.iter().map(Duration::as_secs_f64).sum::<f64>() / v.len().max(1) as f64 * 1e3
}

/// The agent-loop table: steps 2..N (step 1 opens a chat in every way).
async fn agent_loops(full: bool) {
    let (lingers, latencies, steps): (&[u64], &[u64], usize) = if full {
        (&[300, 1_000, 2_000, 5_000], &[300, 600], 10)
    } else {
        (&[300], &[300], 4)
    };
    println!("agent loop: {steps} steps, each sent when the previous answer ended; mean step time over steps 2..{steps} (busy refusals, upstream chats)");
    println!("  linger  chats/new   continue+wait              fresh chat per step        adaptive (default)");
    for &linger in lingers {
        for &latency in latencies {
            let (linger_d, latency_d) = (
                Duration::from_millis(linger),
                Duration::from_millis(latency),
            );
            let wait = agent_loop("continue", "wait", latency_d, linger_d, steps).await;
            let fresh = agent_loop("stateless", "adaptive", latency_d, linger_d, steps).await;
            let adaptive = agent_loop("continue", "adaptive", latency_d, linger_d, steps).await;
            let cell = |l: &AgentLoop| {
                format!(
                    "{:>7.0} ms ({:>2} busy, {:>2} chats)",
                    mean_ms(&l.steps[1..]),
                    l.busy_refusals,
                    l.chats_created
                )
            };
            println!(
                "  {:>5} ms  {:>5} ms   {}   {}   {}",
                linger,
                latency,
                cell(&wait),
                cell(&fresh),
                cell(&adaptive)
            );
            if !full {
                // The first continued step meets the busy window unknown and learns it in
                // three refusals (0 → 100 → 200 → 400 ms); later steps wait it out.
                assert!(
                    adaptive.busy_refusals <= 3,
                    "{} busy refusals",
                    adaptive.busy_refusals
                );
                assert!(
                    wait.busy_refusals <= 3,
                    "{} busy refusals",
                    wait.busy_refusals
                );
            }
        }
    }
}

/// What `first_turns` measured.
struct FirstTurns {
    ttft: Vec<Duration>,
    hits: u64,
    /// Upstream chats made beyond one per conversation, the warm-up's included: the
    /// pool's chats still waiting at the end (none expired within a run).
    extra_chats: u64,
}

/// `n` new conversations, one every `every` (open loop), each a streamed first turn, against
/// a `chats/new` of `chat_latency` with `pool` chats made ahead (after one conversation that
/// fills the pool and a pause for it to fill).
async fn first_turns(chat_latency: Duration, pool: usize, n: usize, every: Duration) -> FirstTurns {
    let timing = quick_timing(chat_latency);
    let size = pool.to_string();
    let (sim, addr) = start_timed(
        "continue",
        "adaptive",
        timing,
        LINGER,
        &[("CHAT_POOL_SIZE", size.as_str())],
    )
    .await;
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    turn(
        &client,
        addr,
        &[json!({"role": "user", "content": "warm-up"})],
    )
    .await;
    tokio::time::sleep(chat_latency * 2 + Duration::from_millis(200)).await;
    let start = Instant::now();
    let runs: Vec<_> = (0..n)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                tokio::time::sleep_until(start + every * i as u32).await;
                let prompt = format!("first turn of conversation {i}");
                turn(&client, addr, &[json!({"role": "user", "content": prompt})])
                    .await
                    .0
            })
        })
        .collect();
    let mut ttft = Vec::with_capacity(n);
    for run in runs {
        ttft.push(run.await.expect("turn"));
    }
    ttft.sort();
    // Let the last top-ups land before counting.
    tokio::time::sleep(chat_latency + Duration::from_millis(100)).await;
    let after = stats(&client, &sim).await["chats_created"]
        .as_u64()
        .unwrap_or(0);
    let metrics = {
        let req = Request::get(format!("http://{addr}/metrics"))
            .body(Full::new(Bytes::new()))
            .expect("request");
        let body = client.request(req).await.expect("metrics").into_body();
        String::from_utf8(body.collect().await.expect("body").to_bytes().to_vec()).expect("utf-8")
    };
    let hits = metrics
        .lines()
        .find_map(|l| l.strip_prefix("upstream_chat_pool_total{event=\"hit\"} "))
        .map_or(0, |v| v.trim().parse().unwrap_or(0));
    FirstTurns {
        ttft,
        hits,
        extra_chats: after.saturating_sub(n as u64 + 1),
    }
}

/// The first turn's time to first token with and without chats made ahead (issue 23).
async fn first_turn_latency(full: bool) {
    let every = Duration::from_millis(100);
    // (chats/new latency ms, pool size, conversation counts)
    let runs: Vec<(u64, usize, Vec<usize>)> = if full {
        vec![
            (0, 0, vec![1, 100, 1000]),
            (300, 0, vec![1, 100]),
            (300, 2, vec![1, 100]),
            (300, 8, vec![1, 100, 1000]),
            (600, 0, vec![1, 100]),
            (600, 2, vec![1, 100]),
            (600, 8, vec![1, 100, 1000]),
        ]
    } else {
        vec![(0, 0, vec![3]), (300, 2, vec![3])]
    };
    println!(
        "first turn of a new conversation, one every {} ms: time to first token (simulator TTFT 20 ms)",
        every.as_millis()
    );
    println!("  chats/new   pool      N       p50        p90        p99   pool hits   extra chats per 1,000");
    for (latency_ms, pool, counts) in runs {
        for n in counts {
            let r = first_turns(Duration::from_millis(latency_ms), pool, n, every).await;
            println!(
                "  {:>6} ms {:>6} {:>6} {:>7.1} ms {:>7.1} ms {:>7.1} ms {:>7}/{:<5} {:>10.0}",
                latency_ms,
                pool,
                n,
                percentile(&r.ttft, 0.5).as_secs_f64() * 1e3,
                percentile(&r.ttft, 0.9).as_secs_f64() * 1e3,
                percentile(&r.ttft, 0.99).as_secs_f64() * 1e3,
                r.hits,
                n,
                r.extra_chats as f64 * 1000.0 / n as f64
            );
            if !full && pool > 0 {
                assert!(r.hits >= 1, "a warm pool hands out chats");
            }
        }
    }
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (n, turns) = if full { (30, 20) } else { (2, 3) };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        // `CONVERSATION_BENCH=first_turn`: only the first-turn measurement.
        if std::env::var("CONVERSATION_BENCH").is_ok_and(|v| v == "first_turn") {
            first_turn_latency(full).await;
            return;
        }
        let cont = turn2_ttft("continue", n).await;
        let fresh = turn2_ttft("stateless", n).await;
        println!("conversation benchmark ({} conversations per mode; chats/new latency 300 ms, TTFT 20 ms)", n);
        println!("turn-2 time to first token      p50        p90        max");
        for (name, v) in [("continuation", &cont), ("fresh chat per turn", &fresh)] {
            println!(
                "  {name:<28} {:>7.1} ms {:>7.1} ms {:>7.1} ms",
                percentile(v, 0.5).as_secs_f64() * 1e3,
                percentile(v, 0.9).as_secs_f64() * 1e3,
                v[v.len() - 1].as_secs_f64() * 1e3
            );
        }
        let c = bytes_per_turn("continue", turns).await;
        let f = bytes_per_turn("stateless", turns).await;
        println!("upstream request bytes per turn ({turns}-turn conversation)");
        println!("  turn   continuation   fresh chat per turn");
        let mut rows = vec![0, turns / 4, turns / 2, turns - 1];
        rows.dedup();
        for k in rows {
            println!("  {:>4}   {:>12}   {:>19}", k + 1, c[k], f[k]);
        }
        println!(
            "  total  {:>12}   {:>19}",
            c.iter().sum::<u64>(),
            f.iter().sum::<u64>()
        );
        agent_loops(full).await;
        agent_loops_80k(full).await;
        first_turn_latency(full).await;
    });
}
