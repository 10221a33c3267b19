//! The request log end to end, against the simulator: successes streamed and not, refusals
//! before any upstream turn (a bad key, an invalid request), upstream failures (retried,
//! in-band after the 200, moved to the other account), each read back from
//! `/admin/requests` and checked against what its client got (status, error, `usage`);
//! filters; the live feed; the overview's counts; no prompt text or key anywhere; the ring's
//! bound (`REQUEST_LOG_SIZE`) with the real binary; and a feed that ends when the proxy
//! drains.

// Tests: a failed unwrap is a failure with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::{json, Value};

use support::process;
use support::{quick_sim, AccountsFile, Harness, Reply, ADMIN_KEY};

const KEY: &str = "sk-request-log-secret";
const MODEL: &str = "qwen3.7-plus";

/// A POST to `path` of `h`'s proxy with `body`, as request `id`, presenting `key`.
async fn post(h: &Harness, path: &str, id: &str, key: &str, body: Value) -> Reply {
    let mut req = Request::post(h.url(path))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {key}"))
        .header("x-request-id", id);
    if path == "/v1/messages" {
        req = req.header("anthropic-version", "2023-06-01");
    }
    let req = req.body(Full::new(Bytes::from(body.to_string()))).unwrap();
    let reply = Harness::read(h.send(req).await).await;
    assert_eq!(reply.headers["x-request-id"], id);
    reply
}

/// A chat completion of `prompt` as request `id`, presenting `key`.
async fn ask(h: &Harness, id: &str, key: &str, prompt: &str, stream: bool) -> Reply {
    post(h, "/v1/chat/completions", id, key, chat(prompt, stream)).await
}

fn chat(prompt: &str, stream: bool) -> Value {
    json!({"model": MODEL, "stream": stream, "stream_options": {"include_usage": stream},
           "messages": [{"role": "user", "content": prompt}]})
}

async fn admin_at(h: &Harness, addr: std::net::SocketAddr, path: &str) -> Reply {
    let req = Request::get(format!("http://{addr}{path}"))
        .header("authorization", format!("Bearer {ADMIN_KEY}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    Harness::read(h.send(req).await).await
}

async fn admin(h: &Harness, path: &str) -> Reply {
    admin_at(h, h.addr, path).await
}

/// `/admin/requests?{query}`: the entries by id, and their ids newest first.
async fn requests(h: &Harness, query: &str) -> (BTreeMap<String, Value>, Vec<String>) {
    let r = admin(h, &format!("/admin/requests?{query}")).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let list = r.json()["requests"].as_array().unwrap().clone();
    let order = list
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    let by_id = list
        .into_iter()
        .map(|e| (e["id"].as_str().unwrap().to_owned(), e))
        .collect();
    (by_id, order)
}

/// Opens the live feed (`?{query}`); the response, its hello already read.
async fn subscribe(h: &Harness, query: &str) -> (Response<Incoming>, String) {
    let req = Request::get(h.url(&format!("/admin/requests/stream?{query}")))
        .header("authorization", format!("Bearer {ADMIN_KEY}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let mut rsp = h.send(req).await;
    assert_eq!(rsp.status(), 200);
    assert_eq!(rsp.headers()["content-type"], "text/event-stream");
    assert_eq!(rsp.headers()["cache-control"], "no-store");
    assert_eq!(rsp.headers()["x-accel-buffering"], "no");
    let hello = read_until(&mut rsp, |t| t.contains("\n\n")).await;
    (rsp, hello)
}

/// The feed's text from now until `done` says it has enough (bounded).
async fn read_until(rsp: &mut Response<Incoming>, done: impl Fn(&str) -> bool) -> String {
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !done(&text) {
        let frame = tokio::time::timeout_at(deadline, rsp.body_mut().frame())
            .await
            .unwrap_or_else(|_| panic!("the feed said only: {text}"));
        match frame {
            Some(f) => text.push_str(&String::from_utf8_lossy(&f.unwrap().into_data().unwrap())),
            None => break,
        }
    }
    text
}

/// The `event: request` entries of a feed's text.
fn feed_entries(text: &str) -> Vec<Value> {
    text.split("\n\n")
        .filter_map(|e| e.strip_prefix("event: request\ndata: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

fn usage_of(reply: &Reply, stream: bool) -> [u64; 2] {
    let usage = if stream {
        reply
            .events()
            .into_iter()
            .rev()
            .find_map(|e| e.get("usage").filter(|u| !u.is_null()).cloned())
            .expect("a usage chunk (include_usage)")
    } else {
        reply.json()["usage"].clone()
    };
    let n = |a: &str, b: &str| usage[a].as_u64().or(usage[b].as_u64()).unwrap();
    [
        n("prompt_tokens", "input_tokens"),
        n("completion_tokens", "output_tokens"),
    ]
}

/// The error event of a stream that failed after its 200.
fn in_band_error(reply: &Reply) -> Value {
    reply
        .events()
        .into_iter()
        .find_map(|e| e.get("error").cloned())
        .expect("an in-band error")
}

fn tokens_of(entry: &Value) -> [u64; 2] {
    [
        entry["input_tokens"].as_u64().unwrap(),
        entry["output_tokens"].as_u64().unwrap(),
    ]
}

/// Every field an entry has, and nothing else.
const FIELDS: [&str; 20] = [
    "seq",
    "id",
    "time",
    "time_ms",
    "api",
    "model",
    "key",
    "account",
    "chat",
    "stream",
    "status",
    "error_type",
    "error_code",
    "ttft_ms",
    "duration_ms",
    "input_tokens",
    "output_tokens",
    "reasoning_tokens",
    "retries",
    "moved",
];

#[tokio::test]
async fn every_completion_request_is_recorded_as_its_client_saw_it() {
    let accounts = AccountsFile::new(&["a", "b"]);
    let h = Harness::start_with(
        &[
            ("API_KEYS", KEY),
            ("QWEN_ACCOUNTS_FILE", &accounts.path),
            // A stream not begun by then gets its 200 at once (the last case below).
            ("STREAM_COMMIT_DELAY", "300"),
        ],
        quick_sim(),
    )
    .await;
    // A marker in every prompt: it must appear in no answer of the admin API.
    let marker = format!("secret-prompt-{}", uuid::Uuid::new_v4().simple());
    let m = |text: &str| format!("{text} {marker}");
    let (mut feed, hello) = subscribe(&h, "").await;
    assert_eq!(hello, "event: hello\ndata: {\"capacity\":1000}\n\n");

    // Successes: plain, streamed, and Anthropic's Messages API.
    let plain = ask(&h, "rl-plain", KEY, &m("Hello"), false).await;
    assert_eq!(plain.status, 200);
    let streamed = ask(&h, "rl-stream", KEY, &m("Stream"), true).await;
    assert_eq!(streamed.status, 200);
    let messages = post(
        &h,
        "/v1/messages",
        "rl-messages",
        KEY,
        json!({"model": MODEL, "max_tokens": 100,
               "messages": [{"role": "user", "content": format!("Messages {marker}")}]}),
    )
    .await;
    assert_eq!(
        messages.status,
        200,
        "{}",
        String::from_utf8_lossy(&messages.body)
    );
    // Refused before any upstream turn: a bad key, an invalid request.
    let bad_key = ask(&h, "rl-bad-key", "sk-wrong", &marker, false).await;
    assert_eq!(bad_key.status, 401);
    let invalid = post(
        &h,
        "/v1/chat/completions",
        "rl-invalid",
        KEY,
        json!({"model": MODEL, "note": marker}),
    )
    .await;
    assert_eq!(invalid.status, 400);
    // The upstream fails: overloaded (retried on the other account, then a 503), and an
    // error in the stream after some text (a 200, then the error in-band).
    let overload = ask(&h, "rl-overload", KEY, &m("@@sim:overload"), false).await;
    assert_eq!(overload.status, 503);
    assert_eq!(overload.error()["code"], "upstream_overloaded");
    let midstream = ask(&h, "rl-midstream", KEY, &m("@@sim:internal_error"), true).await;
    assert_eq!(midstream.status, 200);
    let in_band = in_band_error(&midstream);
    let made = [
        "rl-plain",
        "rl-stream",
        "rl-messages",
        "rl-bad-key",
        "rl-invalid",
        "rl-overload",
        "rl-midstream",
    ];

    let (log, order) = requests(&h, "").await;
    let expected_order: Vec<&str> = made.iter().rev().copied().collect();
    assert_eq!(order, expected_order, "newest first");
    for (id, e) in &log {
        let keys: Vec<&str> = e.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, FIELDS, "{id}: every field, in order");
        // RFC 3339 with milliseconds, the same instant as `time_ms`.
        let time = e["time"].as_str().unwrap();
        assert_eq!(time.len(), "2026-12-08T13:04:05.250Z".len(), "{time}");
        assert!(time.ends_with('Z') && &time[10..11] == "T", "{time}");
        assert_eq!(
            time[20..23].parse::<u64>().unwrap(),
            e["time_ms"].as_u64().unwrap() % 1000
        );
    }
    // Numbered from 1 in the order recorded (these ran one after another).
    let seqs: Vec<u64> = order
        .iter()
        .map(|id| log[id]["seq"].as_u64().unwrap())
        .collect();
    let n = seqs.len() as u64;
    assert_eq!(seqs, (1..=n).rev().collect::<Vec<u64>>());
    let fingerprint = log["rl-plain"]["key"].as_str().unwrap().to_owned();
    assert!(
        fingerprint.len() == 32 && fingerprint.chars().all(|c| c.is_ascii_hexdigit()),
        "{fingerprint}"
    );

    // The successes: account, chat, tokens as the client's `usage` said, the first token
    // within the whole.
    for (id, reply, stream, api) in [
        ("rl-plain", &plain, false, "chat_completions"),
        ("rl-stream", &streamed, true, "chat_completions"),
        ("rl-messages", &messages, false, "messages"),
    ] {
        let e = &log[id];
        assert_eq!(e["api"], api, "{id}");
        assert_eq!(e["model"], MODEL, "{id}");
        assert_eq!(e["key"], fingerprint.as_str(), "{id}");
        assert!(
            ["a", "b"].contains(&e["account"].as_str().unwrap()),
            "{id}: {e}"
        );
        assert!(!e["chat"].as_str().unwrap().is_empty(), "{id}");
        assert_eq!(e["stream"], stream, "{id}");
        assert_eq!(e["status"], 200, "{id}");
        assert_eq!(
            (e["error_type"].clone(), e["error_code"].clone()),
            (Value::Null, Value::Null),
            "{id}"
        );
        assert_eq!(tokens_of(e), usage_of(reply, stream), "{id}");
        let ttft = e["ttft_ms"].as_u64().unwrap_or_else(|| panic!("{id}: {e}"));
        assert!(e["duration_ms"].as_u64().unwrap() >= ttft, "{id}: {e}");
        assert_eq!(
            (e["retries"].clone(), e["moved"].clone()),
            (json!(0), json!(0)),
            "{id}"
        );
    }
    // The chats are the simulator's.
    let stats = h.sim_stats().await;
    for id in ["rl-plain", "rl-stream", "rl-messages"] {
        let chat = log[id]["chat"].as_str().unwrap();
        assert!(
            stats["chats"].get(chat).is_some(),
            "{id}: {chat} in {stats}"
        );
    }

    // The refusals: no upstream turn, the error the client got.
    let e = &log["rl-bad-key"];
    assert_eq!(
        (e["status"].clone(), e["key"].clone(), e["account"].clone()),
        (json!(401), Value::Null, Value::Null)
    );
    assert_eq!(
        (e["error_type"].as_str(), e["error_code"].as_str()),
        (bad_key.error()["type"].as_str(), Some("invalid_api_key"))
    );
    let e = &log["rl-invalid"];
    assert_eq!(
        (e["status"].clone(), e["model"].clone(), e["chat"].clone()),
        (json!(400), Value::Null, Value::Null)
    );
    assert_eq!(e["error_type"], "invalid_request_error");
    assert_eq!(e["key"], fingerprint.as_str());
    assert_eq!(e["ttft_ms"], Value::Null);
    assert_eq!(e["input_tokens"], Value::Null);

    // The upstream's failures.
    let e = &log["rl-overload"];
    assert_eq!(e["status"], 503);
    assert_eq!(e["error_type"], overload.error()["type"]);
    assert_eq!(e["error_code"], "upstream_overloaded");
    assert_eq!(e["retries"], 1, "{e}");
    assert!(e["account"].is_string() && e["chat"].is_string(), "{e}");
    assert_eq!(e["ttft_ms"], Value::Null);
    let e = &log["rl-midstream"];
    assert_eq!(e["status"], 200, "the status sent");
    assert_eq!(e["error_type"], in_band["type"], "not a success: {e}");
    assert_eq!(e["error_code"], in_band["code"]);
    assert_eq!(e["error_code"], "upstream_error");
    assert!(e["ttft_ms"].is_u64(), "the answer began: {e}");

    // Filters.
    let ids = |(_, order): (BTreeMap<String, Value>, Vec<String>)| order;
    assert_eq!(
        ids(requests(&h, "status=error").await),
        ["rl-midstream", "rl-overload", "rl-invalid", "rl-bad-key"]
    );
    assert_eq!(
        ids(requests(&h, "errors=only&status=2xx").await),
        ["rl-midstream"]
    );
    assert_eq!(
        ids(requests(&h, "status=4xx").await),
        ["rl-invalid", "rl-bad-key"]
    );
    assert_eq!(ids(requests(&h, "status=401").await), ["rl-bad-key"]);
    assert_eq!(ids(requests(&h, "api=messages").await), ["rl-messages"]);
    assert_eq!(
        ids(requests(&h, &format!("key={fingerprint}&status=200&limit=2")).await),
        ["rl-midstream", "rl-messages"]
    );
    let account = log["rl-plain"]["account"].as_str().unwrap();
    let (by_account, _) = requests(&h, &format!("account={account}")).await;
    assert!(
        by_account.contains_key("rl-plain") && by_account.values().all(|e| e["account"] == account)
    );
    let (by_model, _) = requests(&h, &format!("model={MODEL}")).await;
    assert_eq!(
        by_model.len(),
        5,
        "all but the two refused before parsing: {by_model:?}"
    );
    // Arrived at or after rl-overload's millisecond: the two after it, and any that arrived
    // within that same millisecond before it.
    let since = log["rl-overload"]["time_ms"].as_u64().unwrap();
    let want: Vec<&str> = order
        .iter()
        .filter(|id| log[*id]["time_ms"].as_u64().unwrap() >= since)
        .map(String::as_str)
        .collect();
    assert_eq!(want[..2], ["rl-midstream", "rl-overload"]);
    assert_eq!(ids(requests(&h, &format!("since={since}")).await), want);
    for (query, param) in [
        ("status=teapot", "status"),
        ("limit=0", "limit"),
        ("since=noon", "since"),
        ("prompt=1", "prompt"),
    ] {
        let r = admin(&h, &format!("/admin/requests?{query}")).await;
        assert_eq!(r.status, 400, "{query}");
        assert_eq!(r.error()["param"], param, "{query}");
    }

    // The live feed got every one, as the list has them.
    let text = read_until(&mut feed, |t| feed_entries(t).len() >= made.len()).await;
    let fed = feed_entries(&text);
    assert_eq!(
        fed.iter()
            .map(|e| e["id"].as_str().unwrap())
            .collect::<Vec<_>>(),
        made
    );
    for e in &fed {
        assert_eq!(e, &log[e["id"].as_str().unwrap()]);
    }
    // A filtered feed gets only what matches, made after it subscribed.
    let (mut errors_feed, _) = subscribe(&h, "status=error").await;
    ask(&h, "rl-after-ok", KEY, "fine", false).await;
    ask(&h, "rl-after-bad", "sk-wrong", "no", false).await;
    let text = read_until(&mut errors_feed, |t| !feed_entries(t).is_empty()).await;
    let fed = feed_entries(&text);
    assert_eq!(fed.len(), 1, "{text}");
    assert_eq!(fed[0]["id"], "rl-after-bad");

    // The overview counts them: 9 requests, 5 errors, 5 answers begun.
    let overview = admin(&h, "/admin/overview").await;
    assert_eq!(overview.status, 200);
    assert_eq!(overview.headers["cache-control"], "no-store");
    let o = overview.json();
    assert_eq!(o["status"], "ok", "{o}");
    assert_eq!(o["reasons"], json!([]));
    assert_eq!(o["version"], env!("CARGO_PKG_VERSION"));
    assert!(o["uptime_seconds"].is_u64());
    assert_eq!(o["accounts"]["total"], 2);
    assert!(o["workers"].as_u64().unwrap() >= 1);
    assert_eq!(o["last_hour"]["requests"], 9, "{o}");
    assert_eq!(o["last_hour"]["errors"], 5, "{o}");
    let ttft = &o["last_hour"]["ttft_ms"];
    assert_eq!(ttft["count"], 5, "{o}");
    let slowest = log
        .values()
        .filter_map(|e| e["ttft_ms"].as_u64())
        .max()
        .unwrap();
    assert!(ttft["p50"].as_u64().unwrap() <= ttft["p99"].as_u64().unwrap());
    assert!(
        ttft["p99"].as_u64().unwrap() >= slowest,
        "an upper bound: {o}"
    );
    let minutes = o["per_minute"].as_array().unwrap();
    assert_eq!(minutes.len(), 60);
    assert!(minutes
        .windows(2)
        .all(|w| w[1]["minute"].as_u64().unwrap() == w[0]["minute"].as_u64().unwrap() + 60_000));
    assert_eq!(
        minutes
            .iter()
            .map(|m| m["requests"].as_u64().unwrap())
            .sum::<u64>(),
        9
    );
    assert_eq!(
        minutes
            .iter()
            .map(|m| m["errors"].as_u64().unwrap())
            .sum::<u64>(),
        5
    );
    let now_minute = minutes[59]["minute"].as_u64().unwrap();
    assert!(log["rl-midstream"]["time_ms"].as_u64().unwrap() / 60_000 * 60_000 <= now_minute);

    // A stream committed while it waits (`STREAM_COMMIT_DELAY`), whose turn moves to the
    // other account when the first hits its quota, and fails there too: a 200, then the
    // quota in-band; one move.
    let prompt = m("@@sim:ttft=600 @@sim:rate_limited_frame=2");
    let committed = ask(&h, "rl-committed", KEY, &prompt, true).await;
    assert_eq!(committed.status, 200);
    assert!(String::from_utf8_lossy(&committed.body).starts_with(": waiting for the upstream"));
    let in_band = in_band_error(&committed);
    let (log, _) = requests(&h, "errors=only&since=0&limit=1").await;
    let e = &log["rl-committed"];
    assert_eq!(
        (e["status"].clone(), e["stream"].clone()),
        (json!(200), json!(true))
    );
    assert_eq!(e["error_type"], in_band["type"]);
    assert_eq!(e["error_code"], in_band["code"]);
    assert_eq!(e["error_code"], "upstream_rate_limited");
    assert_eq!(
        (e["moved"].clone(), e["retries"].clone()),
        (json!(1), json!(0)),
        "{e}"
    );
    assert_eq!(e["ttft_ms"], Value::Null, "no answer began");
    assert!(
        e["duration_ms"].as_u64().unwrap() >= 1200,
        "two turns of 600 ms: {e}"
    );

    // No prompt text and no key in anything the admin API said.
    let all = admin(&h, "/admin/requests").await;
    for (what, body) in [
        ("the list", all.body.to_vec()),
        ("the feed", text.into_bytes()),
        ("the overview", overview.body.to_vec()),
    ] {
        let body = String::from_utf8_lossy(&body);
        assert!(!body.contains(&marker), "{what} holds prompt text");
        assert!(!body.contains("Hello") && !body.contains("@@sim"), "{what}");
        assert!(
            !body.contains(KEY) && !body.contains("sk-wrong"),
            "{what} holds a key"
        );
        assert!(
            !body.contains("Simulated answer"),
            "{what} holds answer text"
        );
    }
    // A client's key is not an operator's.
    let r = post(&h, "/admin/requests", "rl-admin", KEY, json!({})).await;
    assert_eq!(r.status, 401);
}

#[tokio::test]
async fn request_log_size_bounds_the_ring_not_the_overview() {
    let h = Harness::start_with(&[], quick_sim()).await;
    let sim = h.sim.base_url();
    let mut cmd = process::command(
        &process::serve_args("0"),
        &[
            ("QWEN_BASE_URL", sim.as_str()),
            ("QWEN_COOKIES", "token=request-log-token"),
            ("CHAT_POOL_SIZE", "0"),
            ("ADMIN_KEY", ADMIN_KEY),
            ("REQUEST_LOG_SIZE", "2"),
        ],
    );
    cmd.stderr(Stdio::null());
    let proxy = process::start(cmd);
    for i in 1..=3 {
        let req = Request::post(format!("http://{}/v1/chat/completions", proxy.addr))
            .header("content-type", "application/json")
            .header("x-request-id", format!("rl-{i}"))
            .body(Full::new(Bytes::from(
                chat(&format!("turn {i}"), i == 2).to_string(),
            )))
            .unwrap();
        let reply = Harness::read(h.send(req).await).await;
        assert_eq!(reply.status, 200);
    }
    let list = admin_at(&h, proxy.addr, "/admin/requests").await.json();
    assert_eq!(
        (list["capacity"].clone(), list["size"].clone()),
        (json!(2), json!(2))
    );
    let ids: Vec<&str> = list["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["rl-3", "rl-2"]);
    assert_eq!(list["requests"][0]["key"], "anon", "no API_KEYS");
    assert_eq!(list["requests"][0]["account"], "default");
    // A limit above the capacity is the capacity.
    let limited = admin_at(&h, proxy.addr, "/admin/requests?limit=50")
        .await
        .json();
    assert_eq!(limited["requests"].as_array().unwrap().len(), 2);
    // The overview's hour counts all three.
    let o = admin_at(&h, proxy.addr, "/admin/overview").await.json();
    assert_eq!(o["last_hour"]["requests"], 3, "{o}");
    assert_eq!(o["last_hour"]["ttft_ms"]["count"], 3, "{o}");
}

#[tokio::test]
async fn a_live_feed_ends_when_the_proxy_drains_and_does_not_hold_it() {
    let mut h = Harness::start().await;
    let (mut feed, _) = subscribe(&h, "").await;
    h.begin_shutdown();
    // The body ends cleanly (its end, not an error), and the server stops.
    let rest = read_until(&mut feed, |_| false).await;
    assert!(!rest.contains("event: request"), "{rest}");
    h.wait_stopped().await;
}

#[tokio::test]
async fn a_client_that_leaves_mid_stream_is_recorded_as_closed() {
    let h = Harness::start_with(&[], quick_sim()).await;
    let mut rsp = h
        .chat_response(&chat("A long one @@sim:long=5000 @@sim:delay=50", true))
        .await;
    assert_eq!(rsp.status(), 200);
    let first = read_until(&mut rsp, |t| t.contains("data: ")).await;
    assert!(first.contains("data: "));
    drop(rsp);
    // The proxy notices when it writes next.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let entry = loop {
        let list = admin(&h, "/admin/requests").await.json();
        if let Some(e) = list["requests"].as_array().unwrap().first() {
            break e.clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "never recorded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(entry["status"], 200, "{entry}");
    assert_eq!(entry["error_type"], "client_closed");
    assert_eq!(entry["error_code"], Value::Null);
    assert!(
        entry["ttft_ms"].is_u64() && entry["input_tokens"].is_null(),
        "{entry}"
    );
    assert_eq!(entry["key"], "anon");
}
