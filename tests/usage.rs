//! Usage accounting end to end: turns of two API keys over two accounts, streamed and not,
//! read back from the admin API (JSON and CSV) and checked against what the clients were
//! told (`usage` of each answer) and what the simulator served per account; with Redis,
//! two instances sum and a restarted instance still reports the earlier counts.

// Tests: a failed unwrap is a failure with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use serde_json::{json, Value};

use support::{quick_sim, AccountsFile, Harness, RedisServer, Reply, ADMIN_KEY};

const KEYS: [&str; 2] = ["sk-usage-secret-one", "sk-usage-secret-two"];

/// Tokens a client was told: input, output, reasoning.
type Told = [u64; 3];

fn told(usage: &Value) -> Told {
    [
        usage["prompt_tokens"].as_u64().unwrap(),
        usage["completion_tokens"].as_u64().unwrap(),
        usage["completion_tokens_details"]["reasoning_tokens"]
            .as_u64()
            .unwrap_or(0),
    ]
}

async fn get_with(h: &Harness, addr: std::net::SocketAddr, path: &str, key: &str) -> Reply {
    let req = Request::get(format!("http://{addr}{path}"))
        .header("authorization", format!("Bearer {key}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    Harness::read(h.send(req).await).await
}

async fn admin(h: &Harness, addr: std::net::SocketAddr, path: &str) -> Reply {
    get_with(h, addr, path, ADMIN_KEY).await
}

/// One turn as client `key` on instance `addr`; the tokens its answer reported.
async fn turn(
    h: &Harness,
    addr: std::net::SocketAddr,
    key: &str,
    model: &str,
    prompt: &str,
    stream: bool,
) -> Told {
    let mut body = json!({"model": model, "stream": stream,
                          "messages": [{"role": "user", "content": prompt}]});
    if stream {
        body["stream_options"] = json!({"include_usage": true});
    }
    let req = Request::post(format!("http://{addr}/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {key}"))
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let reply = Harness::read(h.send(req).await).await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    if stream {
        let usage = reply
            .events()
            .into_iter()
            .rev()
            .find_map(|e| e.get("usage").filter(|u| !u.is_null()).cloned())
            .expect("a usage chunk (include_usage)");
        told(&usage)
    } else {
        told(&reply.json()["usage"])
    }
}

fn add(sum: &mut Told, t: Told) {
    for (s, v) in sum.iter_mut().zip(t) {
        *s += v;
    }
}

fn counts(row: &Value) -> (u64, Told, u64) {
    let n = |f: &str| row[f].as_u64().unwrap_or_else(|| panic!("{f} in {row}"));
    (
        n("requests"),
        [n("input_tokens"), n("output_tokens"), n("reasoning_tokens")],
        n("errors"),
    )
}

/// The report's rows keyed by one field.
fn by(report: &Value, field: &str) -> BTreeMap<String, (u64, Told, u64)> {
    report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r[field].as_str().unwrap().to_owned(), counts(r)))
        .collect()
}

/// The fingerprint the proxy gives `key` (the one-way hash is the proxy's business: it is
/// found as the one row each key's turns made).
fn fingerprints(report: &Value) -> Vec<String> {
    by(report, "key").into_keys().collect()
}

/// A minimal RFC 4180 reader: fields, quotes doubled inside quoted fields.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let (mut row, mut field, mut quoted, mut chars) =
        (Vec::new(), String::new(), false, text.chars().peekable());
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut field)),
            (false, '\r') => {}
            (false, '\n') => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            (false, c) => field.push(c),
        }
    }
    rows
}

#[tokio::test]
async fn usage_is_counted_per_key_account_and_model_and_reported_as_json_and_csv() {
    let accounts = AccountsFile::new(&["a", "b"]);
    let file = accounts.path.clone();
    let keys = KEYS.join(",");
    let h = Harness::start_with(
        &[("API_KEYS", &keys), ("QWEN_ACCOUNTS_FILE", &file)],
        quick_sim(),
    )
    .await;

    // Key one: three turns (one streamed, one thinking); key two: two (one streamed).
    let mut want = [[0u64; 3]; 2];
    let turns: [(usize, &str, &str, bool); 5] = [
        (0, "qwen3.7-plus", "Count the apples.", false),
        (0, "qwen3.7-plus-thinking", "Why is the sky blue?", true),
        (0, "qwen3.7-plus", "Name a river.", true),
        (1, "qwen3.7-plus", "Say hello to everyone here.", false),
        (
            1,
            "qwen3.7-plus",
            "A longer question about the tides, please.",
            true,
        ),
    ];
    for (i, (k, model, prompt, stream)) in turns.into_iter().enumerate() {
        let t = turn(
            &h,
            h.addr,
            KEYS[k],
            model,
            &format!("{prompt} ({i})"),
            stream,
        )
        .await;
        add(&mut want[k], t);
    }
    assert!(
        want[0][2] > 0,
        "the thinking turn reported reasoning tokens"
    );

    // Per key: what each client was told, summed; the fingerprints, never the keys.
    let report = admin(&h, h.addr, "/admin/usage?by=key").await;
    assert_eq!(
        report.status,
        200,
        "{}",
        String::from_utf8_lossy(&report.body)
    );
    let report = report.json();
    assert_eq!(report["source"], "memory");
    let per_key = by(&report, "key");
    assert_eq!(per_key.len(), 2, "{report}");
    let mut got: Vec<_> = per_key.values().cloned().collect();
    let mut expected = vec![(3, want[0], 0), (2, want[1], 0)];
    got.sort();
    expected.sort();
    assert_eq!(got, expected, "{report}");
    let fps = fingerprints(&report);
    assert!(fps
        .iter()
        .all(|f| f.len() == 32 && f.chars().all(|c| c.is_ascii_hexdigit())));
    let mut total = want[0];
    add(&mut total, want[1]);
    assert_eq!(counts(&report["totals"]), (5, total, 0));

    // Per account: the turns the simulator served with each account's token.
    let stats = h.sim_stats().await;
    let per_account = by(
        &admin(&h, h.addr, "/admin/usage?by=account").await.json(),
        "account",
    );
    let mut served = 0;
    for (name, (requests, _, _)) in &per_account {
        let completions = stats["accounts"][format!("tok-{name}")]["completions"]
            .as_u64()
            .unwrap_or(0);
        assert_eq!(*requests, completions, "account {name}: {stats}");
        served += requests;
    }
    assert_eq!(served, 5, "{per_account:?}");
    let tokens: u64 = per_account.values().map(|(_, t, _)| t[0]).sum();
    assert_eq!(tokens, total[0]);

    // Per model: resolved upstream models, summing to the same totals.
    let per_model = admin(&h, h.addr, "/admin/usage?by=model").await.json();
    assert_eq!(counts(&per_model["totals"]), (5, total, 0));
    assert!(per_model["rows"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r.get("key").is_none()));

    // The full rows as CSV: the same numbers; a raw key appears nowhere.
    let json_all = admin(&h, h.addr, "/admin/usage").await;
    let csv = admin(&h, h.addr, "/admin/usage.csv").await;
    assert_eq!(csv.status, 200);
    assert_eq!(csv.headers["content-type"], "text/csv; charset=utf-8");
    let csv_text = String::from_utf8(csv.body.to_vec()).unwrap();
    for key in KEYS {
        for body in [&json_all.body, &csv.body] {
            assert!(
                !String::from_utf8_lossy(body).contains(key),
                "the raw key leaked"
            );
        }
    }
    let table = parse_csv(&csv_text);
    assert_eq!(
        table[0],
        [
            "day",
            "account",
            "key",
            "model",
            "requests",
            "input_tokens",
            "output_tokens",
            "reasoning_tokens",
            "errors"
        ]
    );
    let json_rows = json_all.json()["rows"].as_array().unwrap().clone();
    assert_eq!(table.len() - 1, json_rows.len());
    let mut csv_sum = [0u64; 5];
    for (line, row) in table[1..].iter().zip(&json_rows) {
        assert_eq!(line[2], row["key"].as_str().unwrap());
        assert_eq!(line[1], row["account"].as_str().unwrap());
        for (i, n) in line[4..].iter().enumerate() {
            csv_sum[i] += n.parse::<u64>().unwrap();
        }
    }
    assert_eq!(csv_sum, [5, total[0], total[1], total[2], 0]);
    // `format=csv` is the same report.
    let csv_again = admin(&h, h.addr, "/admin/usage?format=csv").await;
    assert_eq!(csv_again.body, csv.body);

    // Bad parameters: 400 naming the parameter; a client key is not an operator's.
    for (query, param) in [
        ("from=2026-02-30", "from"),
        ("from=yesterday", "from"),
        ("to=2026-1-1", "to"),
        ("by=tenant", "by"),
        ("format=xml", "format"),
        ("from=2026-03-02&to=2026-03-01", "from"),
    ] {
        let r = admin(&h, h.addr, &format!("/admin/usage?{query}")).await;
        assert_eq!(
            r.status,
            400,
            "{query}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.error()["param"], param, "{query}");
        assert_eq!(r.error()["type"], "invalid_request_error", "{query}");
    }
    let r = get_with(&h, h.addr, "/admin/usage", KEYS[0]).await;
    assert_eq!(r.status, 401, "{}", String::from_utf8_lossy(&r.body));
    // A range before any turn: nothing.
    let old = admin(&h, h.addr, "/admin/usage?from=2020-01-01&to=2020-01-31")
        .await
        .json();
    assert_eq!(old["rows"], json!([]));
    assert_eq!(old["totals"]["requests"], 0);
}

/// The usage report of an instance, once `pred` holds (flushes run every few seconds).
async fn report_when(
    h: &Harness,
    addr: std::net::SocketAddr,
    path: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = admin(h, addr, path).await.json();
        if pred(&r) || tokio::time::Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn instances_sharing_redis_sum_their_usage_and_keep_it_across_a_restart() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let keys = KEYS.join(",");
    let env = [("API_KEYS", keys.as_str()), ("REDIS_URL", url.as_str())];
    let mut h = Harness::start_with(&env, quick_sim()).await;
    let b = h.another_proxy(&env).await;

    let mut want = [0u64; 3];
    add(
        &mut want,
        turn(&h, h.addr, KEYS[0], "qwen3.7-plus", "On one.", false).await,
    );
    add(
        &mut want,
        turn(&h, b.addr, KEYS[0], "qwen3.7-plus", "On two.", true).await,
    );
    add(
        &mut want,
        turn(&h, b.addr, KEYS[1], "qwen3.7-plus", "Two again.", false).await,
    );

    // Either instance reports all three turns, once the other's increments are flushed.
    let complete = |r: &Value| r["totals"]["requests"] == 3;
    for addr in [h.addr, b.addr] {
        let r = report_when(&h, addr, "/admin/usage?by=key", complete).await;
        assert_eq!(r["source"], "redis", "{r}");
        assert_eq!(counts(&r["totals"]), (3, want, 0), "{r}");
        assert_eq!(by(&r, "key").values().map(|c| c.0).sum::<u64>(), 3);
    }
    let day_keys: Vec<String> = redis
        .keys()
        .into_iter()
        .filter(|k| k.starts_with("qp:usage:{"))
        .collect();
    assert_eq!(day_keys.len(), 1, "one hash a day: {day_keys:?}");
    let ttl: i64 = redis.cli(&["TTL", &day_keys[0]]).trim().parse().unwrap();
    assert!(
        ttl > 30 * 86_400 && ttl <= 31 * 86_400,
        "USAGE_DAYS + 1 days: {ttl}"
    );
    let hash = redis.cli(&["HGETALL", &day_keys[0]]);
    for key in KEYS {
        assert!(!hash.contains(key), "the raw key reached Redis");
    }

    // Any range reads the days kept only (a range of millennia costs one read a day kept).
    let r = admin(&h, h.addr, "/admin/usage?from=1970-01-01&to=9999-12-31")
        .await
        .json();
    assert_eq!(counts(&r["totals"]), (3, want, 0), "{r}");

    // Both instances stop (the last increments are flushed) and a new one starts: the
    // day's counts are still there.
    drop(b);
    h.begin_shutdown();
    h.wait_stopped().await;
    let fresh = h.another_proxy(&env).await;
    let r = report_when(&h, fresh.addr, "/admin/usage", complete).await;
    assert_eq!(counts(&r["totals"]), (3, want, 0), "{r}");
}

/// Redis going away mid-run loses nothing the instance counted: turns keep being served and
/// counted, the report falls back to this instance's counts (`source: memory`), and once
/// Redis is back (empty: it keeps nothing across the restart here) the increments made
/// while it was gone arrive — once each.
#[tokio::test]
async fn usage_counted_while_redis_is_down_is_flushed_when_it_returns() {
    let mut redis = RedisServer::start().await;
    let url = redis.url();
    let keys = KEYS.join(",");
    let env = [("API_KEYS", keys.as_str()), ("REDIS_URL", url.as_str())];
    let h = Harness::start_with(&env, quick_sim()).await;

    let mut before = [0u64; 3];
    add(
        &mut before,
        turn(&h, h.addr, KEYS[0], "qwen3.7-plus", "Before.", false).await,
    );
    // Flushed into Redis itself (a report adds the increments not yet sent).
    let flushed = report_when(&h, h.addr, "/admin/usage", |_| !redis_day_is_empty(&redis)).await;
    assert!(!redis_day_is_empty(&redis), "never flushed");
    assert_eq!(counts(&flushed["totals"]), (1, before, 0), "{flushed}");

    redis.stop();
    let mut during = [0u64; 3];
    add(
        &mut during,
        turn(&h, h.addr, KEYS[0], "qwen3.7-plus", "During one.", true).await,
    );
    add(
        &mut during,
        turn(&h, h.addr, KEYS[1], "qwen3.7-plus", "During two.", false).await,
    );
    let r = admin(&h, h.addr, "/admin/usage").await.json();
    assert_eq!(r["source"], "memory", "{r}");
    let mut all = before;
    add(&mut all, during);
    assert_eq!(counts(&r["totals"]), (3, all, 0), "{r}");

    redis.restart().await;
    let back = report_when(&h, h.addr, "/admin/usage", |r| {
        r["source"] == "redis" && !redis_day_is_empty(&redis)
    })
    .await;
    assert_eq!(back["source"], "redis", "{back}");
    // Let another flush pass: what arrived must not arrive twice.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let r = admin(&h, h.addr, "/admin/usage").await.json();
    assert_eq!(counts(&r["totals"]), (2, during, 0), "{r}");
}

fn redis_day_is_empty(redis: &RedisServer) -> bool {
    !redis.keys().iter().any(|k| k.starts_with("qp:usage:{"))
}
