//! Defects found when the proxy was attacked and used as a new user would (issue 9), each
//! through the real stack over HTTP against the simulator: client identity, key guessing,
//! request limits, honesty about broken upstream answers, and input that must be refused.

// Tests and benches: a failed unwrap is a failure with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::{assistant, quick_sim, user, Harness, Reply};

const MODEL: &str = "qwen3.7-plus";

async fn chat_with(h: &Harness, messages: &[Value], headers: &[(&str, &str)]) -> Reply {
    let body = json!({"model": MODEL, "messages": messages}).to_string();
    h.post_raw("/v1/chat/completions", "application/json", body, headers)
        .await
}

// === 1. one client identity, parsed once ===

#[tokio::test]
async fn the_bearer_scheme_in_any_case_keeps_tenants_apart() {
    let h = Harness::start_with(&[("API_KEYS", "k1,k2")], quick_sim()).await;
    let a1 = chat_with(&h, &[user("one")], &[("authorization", "bearer k1")])
        .await
        .message_content();
    // Tenant k2 sends k1's history: it must not continue k1's upstream chat.
    let history = [user("one"), assistant(&a1), user("two")];
    chat_with(&h, &history, &[("authorization", "BEARER k2")])
        .await
        .message_content();
    assert_eq!(
        h.sim_stats().await["chats_created"],
        2,
        "k2 got its own chat"
    );
    // k1, in yet another spelling of the scheme, continues its own.
    chat_with(&h, &history, &[("authorization", "Bearer k1")])
        .await
        .message_content();
    assert_eq!(h.sim_stats().await["chats_created"], 2, "k1 continued");
}

#[tokio::test]
async fn with_both_headers_authorization_decides_the_identity() {
    let h = Harness::start_with(&[("API_KEYS", "k1,k2")], quick_sim()).await;
    let a1 = chat_with(&h, &[user("one")], &[("x-api-key", "k2")])
        .await
        .message_content();
    let history = [user("one"), assistant(&a1), user("two")];
    let both = [("authorization", "bearer k1"), ("x-api-key", "k2")];
    chat_with(&h, &history, &both).await.message_content();
    assert_eq!(h.sim_stats().await["chats_created"], 2, "k1 is not k2");
    // A valid x-api-key does not rescue an invalid bearer key.
    let r = chat_with(
        &h,
        &[user("x")],
        &[("authorization", "Bearer nope"), ("x-api-key", "k2")],
    )
    .await;
    assert_eq!(r.status, 401);
}

#[tokio::test]
async fn the_rate_limit_is_per_key_whatever_the_scheme_spelling() {
    let h = Harness::start_with(
        &[
            ("API_KEYS", "k1,k2"),
            ("RATE_LIMIT_RPM", "60"),
            ("RATE_LIMIT_BURST", "1"),
        ],
        quick_sim(),
    )
    .await;
    let status = |r: Reply| r.status.as_u16();
    assert_eq!(
        status(chat_with(&h, &[user("a")], &[("authorization", "bearer k1")]).await),
        200
    );
    assert_eq!(
        status(chat_with(&h, &[user("b")], &[("authorization", "Bearer k1")]).await),
        429
    );
    // Same address, other key: its own bucket.
    assert_eq!(
        status(chat_with(&h, &[user("c")], &[("authorization", "bEaReR k2")]).await),
        200
    );
    assert_eq!(
        status(chat_with(&h, &[user("d")], &[("x-api-key", "k2")]).await),
        429
    );
}

// === 5. key guessing is throttled ===

#[tokio::test]
async fn repeated_wrong_keys_lock_the_address_out() {
    let h = Harness::start_with(
        &[("API_KEYS", "right"), ("AUTH_FAILURE_LIMIT", "3")],
        quick_sim(),
    )
    .await;
    for i in 0..3 {
        let r = chat_with(
            &h,
            &[user("x")],
            &[("authorization", &format!("Bearer guess-{i}"))],
        )
        .await;
        assert_eq!(r.status, 401);
        assert_eq!(r.headers["www-authenticate"], "Bearer");
        assert_eq!(r.error()["code"], "invalid_api_key");
    }
    // Locked out: even the right key is not looked at until the window ends.
    let r = chat_with(&h, &[user("x")], &[("authorization", "Bearer right")]).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.error()["code"], "too_many_authentication_failures");
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((290..=300).contains(&retry), "{retry}");
    assert_eq!(h.sim_stats().await["completion_requests"], 0);
    let metrics = String::from_utf8(h.state.metrics.render()).unwrap();
    assert!(
        metrics.contains("auth_failures_total{outcome=\"invalid_key\"} 3"),
        "{metrics}"
    );
    assert!(metrics.contains("auth_failures_total{outcome=\"throttled\"} 1"));
}

// === 2. never send the upstream a request it punishes ===

// (What is too large for the upstream: tests/offload.rs — sent as documents, or refused before
// any upstream call.)

// === 4. a stalled request body is timed out ===

#[tokio::test]
async fn a_stalled_request_body_gets_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = Harness::start_with(&[("BODY_READ_TIMEOUT", "300")], quick_sim()).await;
    let mut s = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    // Complete headers, then 10 of the 81 announced body bytes, then nothing.
    s.write_all(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
          content-length: 81\r\n\r\n{\"model\":",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let n = s.read(&mut chunk).await.unwrap_or(0);
            buf.extend_from_slice(&chunk[..n]);
            if n == 0 || buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.ends_with(b"}}") {
                break;
            }
        }
    })
    .await;
    assert!(read.is_ok(), "answered within 10 s");
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains(r#""code":"request_timeout""#), "{text}");
}

// === 6. a truncated upstream stream is not a complete answer ===

/// The plain-answer capture cut `extra` bytes after its first answer frame ("Hi" of
/// "Hi!"); 0 is `head -c 632`, the cut users saw reported as a complete "Hi".
fn truncated_capture(extra: usize) -> Vec<u8> {
    let full = support::fixture("plain-answer.sse");
    let cut = full[..632 + extra].to_vec();
    let text = String::from_utf8_lossy(&cut);
    assert!(text.contains(r#""content": "Hi""#) && !text.contains(r#""content": "!""#));
    cut
}

#[tokio::test]
async fn a_truncated_stream_ends_with_an_error_not_a_stop() {
    let h = Harness::start_with(&[], quick_sim()).await;
    // Cut in the middle of the next event: "Hi" has reached the client when the
    // connection closes.
    h.sim_replay(truncated_capture(40), 0).await;
    let r = h.ask(MODEL, "hello", true).await;
    assert_eq!(r.status, 200);
    let s = support::summarize(&r.events());
    assert_eq!(s.content, "Hi");
    assert_eq!(
        s.finish_reason, None,
        "never finish_reason stop for a cut answer"
    );
    let e = s.error.expect("an in-band error event");
    assert_eq!(e["code"], "upstream_incomplete_response");
    assert_eq!(e["type"], "server_error");
}

#[tokio::test]
async fn a_truncated_answer_is_retried_or_a_502_when_not_streaming() {
    let h = Harness::start_with(&[("RETRY_MAX_ATTEMPTS", "1")], quick_sim()).await;
    h.sim_replay(truncated_capture(0), 0).await;
    let r = h.ask(MODEL, "hello", false).await;
    assert_eq!(r.status, 502, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.error()["code"], "upstream_incomplete_response");
    // With retries, the next (complete) generation is the answer.
    let h = Harness::start_with(&[], quick_sim()).await;
    h.sim_replay(truncated_capture(0), 0).await;
    let r = h.ask(MODEL, "hello", false).await;
    assert_eq!((r).message_content(), support::expected_answer("hello"));
    // The same when streaming: the cut is found before anything reached the client.
    h.sim_replay(truncated_capture(0), 0).await;
    let r = h.ask(MODEL, "hello", true).await;
    assert_eq!(
        support::summarize(&r.events()).content,
        support::expected_answer("hello")
    );
}

// === 9. input that OpenAI rejects is rejected ===

#[tokio::test]
async fn invalid_parameters_are_400s_naming_the_parameter() {
    let h = Harness::start_with(&[], quick_sim()).await;
    let tool = json!({"type": "function", "function": {"name": "read_file", "parameters": {"type": "object"}}});
    for (extra, param) in [
        (json!({"tools": "x"}), "tools"),
        (
            json!({"tools": [tool], "tool_choice": {"type": "function", "function": {"name": "write_file"}}}),
            "tool_choice",
        ),
        (json!({"temperature": 2.5}), "temperature"),
        (json!({"top_p": 1.5}), "top_p"),
    ] {
        let mut body = json!({"model": MODEL, "messages": [user("hi")]});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let r = h.chat(body).await;
        assert_eq!(r.status, 400, "{extra}");
        assert_eq!(r.error()["param"], param, "{extra}");
    }
    // tool_choice "none" with tools means: answer without tools.
    let r = h
        .chat(json!({"model": MODEL, "messages": [user("hi")], "tools": [tool], "tool_choice": "none"}))
        .await;
    assert_eq!((r).message_content(), support::expected_answer("hi"));
    assert_eq!(h.sim_stats().await["completion_requests"], 1);
}

#[tokio::test]
async fn a_compressed_body_is_415_not_a_json_error() {
    let h = Harness::start_with(&[], quick_sim()).await;
    let r = h
        .post_raw(
            "/v1/chat/completions",
            "application/json",
            json!({"model": MODEL, "messages": [user("hi")]}).to_string(),
            &[("content-encoding", "gzip")],
        )
        .await;
    assert_eq!(r.status, 415);
    assert_eq!(r.error()["code"], "unsupported_content_encoding");
}

// === 8. "chat in progress" waits have their own budget ===

#[tokio::test]
async fn busy_chat_waits_survive_a_spent_retry_budget() {
    let h = Harness::start_with(&[("RETRY_MAX_ATTEMPTS", "3")], quick_sim()).await;
    // A fault-heavy period: empty answers, each retried twice, until the shared budget is
    // spent (a final faulty request then gets no retry at all).
    let prompts: Vec<String> = (0..40).map(|i| format!("fault {i} @@sim:empty")).collect();
    let faulty = prompts.iter().map(|p| h.ask(MODEL, p, false));
    for r in futures::future::join_all(faulty).await {
        assert_eq!(r.status, 502);
    }
    let before = h.sim_stats().await["completion_requests"].as_u64().unwrap();
    assert_eq!(
        h.ask(MODEL, "one more @@sim:empty", false).await.status,
        502
    );
    let after = h.sim_stats().await["completion_requests"].as_u64().unwrap();
    assert_eq!(after - before, 1, "the budget is spent: no retry");
    // A busy chat is still waited out.
    let r = h.ask(MODEL, "busy @@sim:in_progress=2", false).await;
    assert_eq!((r).message_content(), support::expected_answer("busy"));
}

// === 7. errors a client must not retry, and the pause after a challenge ===

#[tokio::test]
async fn account_failures_tell_clients_not_to_retry() {
    for (directive, status, retry_after) in [
        ("rate_limited=2", 429, Some("7200")),
        ("unauthorized", 401, None),
        ("forbidden", 403, None),
        ("punish", 503, Some("300")),
        ("waf", 503, Some("300")),
    ] {
        for stream in [false, true] {
            // A fresh proxy each: the answer takes the only account out of rotation
            // (cooling, invalid, forbidden), which a later request would meet instead.
            let h = Harness::start_with(&[("CHALLENGE_COOLDOWN", "0")], quick_sim()).await;
            let r = h.ask(MODEL, &format!("q @@sim:{directive}"), stream).await;
            assert_eq!(r.status, status, "{directive}");
            assert_eq!(r.headers["x-should-retry"], "false", "{directive}");
            assert_eq!(
                r.headers.get("retry-after").map(|v| v.to_str().unwrap()),
                retry_after,
                "{directive}"
            );
        }
    }
    // A transient failure says a retry can help, and after how long.
    let h = Harness::start_with(&[("CHALLENGE_COOLDOWN", "0")], quick_sim()).await;
    let r = h.ask(MODEL, "q @@sim:overload", false).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.headers["x-should-retry"], "true");
    assert_eq!(r.headers["retry-after"], "5");
}

#[tokio::test]
async fn after_a_challenge_the_upstream_is_left_alone_for_the_cooldown() {
    let h = Harness::start_with(&[("CHALLENGE_COOLDOWN", "120000")], quick_sim()).await;
    let r = h.ask(MODEL, "q @@sim:punish", false).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.error()["code"], "upstream_challenge");
    assert_eq!(
        r.headers["retry-after"], "120",
        "the truthful wait: the cooldown"
    );
    let calls = h.sim_stats().await["completion_requests"].clone();
    // During the cooldown: fail fast, no upstream call, the time left.
    for stream in [false, true] {
        let r = h.ask(MODEL, "a normal question", stream).await;
        assert_eq!(r.status, 503);
        assert_eq!(r.error()["code"], "upstream_challenge_cooldown");
        assert_eq!(r.headers["x-should-retry"], "false");
        let left: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((115..=120).contains(&left), "{left}");
    }
    assert_eq!(h.sim_stats().await["completion_requests"], calls);
    let health = h.health().await;
    assert_eq!(health.status, 200);
    let health = health.json();
    assert_eq!(health["status"], "degraded");
    assert!(
        health["reasons"][0]
            .as_str()
            .unwrap()
            .contains("challenged"),
        "{health}"
    );
    assert!(!health.to_string().contains("test-token"), "no secrets");
    let metrics = h.get("/metrics").await;
    let text = String::from_utf8_lossy(&metrics.body);
    let line = text
        .lines()
        .find(|l| l.starts_with("upstream_challenge_cooldown_seconds "))
        .unwrap();
    let left: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!((115..=120).contains(&left), "{line}");
}

// === 10. the HTTP library's own rejections ===

/// A raw request on a new connection; the reply as text.
async fn raw(h: &Harness, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

/// `/health` without the operators' key gives counts, never the list of accounts (it is
/// large with thousands of accounts, and names are the operators'); with it, the list.
/// Guessing the operators' key is throttled like the API keys, on `/admin` and `/health`
/// alike, and logged in aggregate.
#[tokio::test]
async fn operators_keys_guard_the_account_list_and_guessing_is_throttled() {
    let h = Harness::start_with(&[("AUTH_FAILURE_LIMIT", "3")], quick_sim()).await;
    let open = h.get("/health").await.json();
    assert!(open["accounts"]["counts"].is_object(), "{open}");
    assert!(open["accounts"].get("list").is_none(), "{open}");
    let operator = h.health().await.json();
    assert_eq!(operator["accounts"]["list"].as_array().unwrap().len(), 1);
    let with = |key: &'static str, path: &'static str| {
        let h = &h;
        async move {
            let req = hyper::Request::get(h.url(path))
                .header("authorization", format!("Bearer {key}"))
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap();
            Harness::read(h.send(req).await).await
        }
    };
    // A wrong key on /health: no list, still 200 (the probe stays open).
    let wrong = with("not-the-admin-key", "/health").await;
    assert_eq!(wrong.status, 200);
    assert!(wrong.json()["accounts"].get("list").is_none());
    for _ in 0..2 {
        assert_eq!(
            with("not-the-admin-key", "/admin/accounts").await.status,
            401
        );
    }
    // The third failure locked the address out: even the right key is not checked.
    let locked = with(support::ADMIN_KEY, "/admin/accounts").await;
    assert_eq!(
        locked.status,
        429,
        "{}",
        String::from_utf8_lossy(&locked.body)
    );
    assert!(locked.headers.contains_key("retry-after"));
    assert!(h.health().await.json()["accounts"].get("list").is_none());
    assert_eq!(h.get("/health").await.status, 200);
    let metrics = String::from_utf8(h.get("/metrics").await.body.to_vec()).unwrap();
    assert!(
        metrics.contains("auth_failures_total{outcome=\"invalid_admin_key\"} 3"),
        "{metrics}"
    );
    assert!(metrics.contains("auth_failures_total{outcome=\"admin_throttled\"} 2"));
}

#[tokio::test]
async fn an_http11_request_without_host_is_400() {
    let h = Harness::start_with(&[], quick_sim()).await;
    let reply = raw(&h, b"GET /v1/models HTTP/1.1\r\nconnection: close\r\n\r\n").await;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    assert!(reply.contains("`Host`"), "{reply}");
    let reply = raw(&h, b"GET /v1/models HTTP/1.0\r\n\r\n").await;
    assert!(
        reply.starts_with("HTTP/1.0 200"),
        "HTTP/1.0 needs no Host: {reply}"
    );
}

#[tokio::test]
async fn oversized_headers_get_431_in_the_openai_shape() {
    let h = Harness::start_with(&[], quick_sim()).await;
    let many: String = (0..150).map(|i| format!("x-h{i}: v\r\n")).collect();
    let big = format!("x-big: {}\r\n", "v".repeat(70 * 1024));
    for headers in [many, big] {
        let reply = raw(
            &h,
            format!("GET /v1/models HTTP/1.1\r\nhost: x\r\n{headers}connection: close\r\n\r\n")
                .as_bytes(),
        )
        .await;
        assert!(
            reply.starts_with("HTTP/1.1 431"),
            "{}",
            &reply[..reply.len().min(200)]
        );
        assert!(
            reply.contains(r#""code":"request_headers_too_large""#),
            "{reply}"
        );
        assert!(
            reply.contains(r#""type":"invalid_request_error""#),
            "{reply}"
        );
    }
}

#[tokio::test]
async fn what_hyper_rejects_itself_is_still_a_clean_400() {
    let h = Harness::start_with(&[], quick_sim()).await;
    // hyper reads the body lazily: a bad chunk size reaches our body reader, which answers
    // in the OpenAI shape.
    let reply = raw(
        &h,
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
          transfer-encoding: chunked\r\n\r\nzz\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply:?}");
    assert!(
        reply.contains("Could not read the request body"),
        "{reply:?}"
    );
    // Conflicting lengths and control characters in a header never reach a service: hyper
    // answers them itself, with a bare 400 (documented in README "Errors").
    for request in [
        &b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello"[..],
        &b"GET /v1/models HTTP/1.1\r\nhost: x\r\nx-bad: a\x01b\r\n\r\n"[..],
    ] {
        let reply = raw(&h, request).await;
        assert!(reply.starts_with("HTTP/1.1 400"), "{reply:?}");
    }
}

// === 13. a small index, and methods the routes take ===

#[tokio::test]
async fn the_root_describes_the_api_and_wrong_methods_say_what_is_allowed() {
    let h = Harness::start_with(&[], quick_sim()).await;
    let root = h.get("/").await;
    assert_eq!(root.status, 200);
    let index = root.json();
    assert_eq!(index["name"], "qwen-proxy");
    assert_eq!(
        index["endpoints"]["chat_completions"],
        "POST /v1/chat/completions"
    );
    assert_eq!(index["endpoints"]["models"], "GET /v1/models");
    for (method, path, allow) in [
        ("GET", "/v1/chat/completions", "POST"),
        ("POST", "/v1/models", "GET"),
        ("DELETE", "/v1/models/qwen3.7-plus", "GET"),
        ("POST", "/health", "GET"),
    ] {
        let req = hyper::Request::builder()
            .method(method)
            .uri(h.url(path))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let r = Harness::read(h.send(req).await).await;
        assert_eq!(r.status, 405, "{method} {path}");
        assert_eq!(r.headers["allow"], allow, "{method} {path}");
        assert_eq!(r.error()["code"], "method_not_allowed");
    }
    // An unknown /v1 route says which routes exist.
    let r = h
        .post_raw("/v1/embeddings", "application/json", "{}", &[])
        .await;
    assert_eq!(r.status, 404);
    let message = r.error()["message"].as_str().unwrap().to_owned();
    assert!(message.contains("POST /v1/chat/completions"), "{message}");
}

// === a hung upstream ===

/// An upstream that accepts connections and never answers: a burst of ten requests fails
/// together at the configured timeout — not one after another, each waiting for the one
/// before (they shared the catalogue's fetch, and each fetched again after the last failed);
/// other requests are answered meanwhile, and no task is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_upstream_fails_a_burst_together() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", hole.local_addr().unwrap());
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((c, _)) = hole.accept().await {
            held.push(c);
        }
    });
    let proxy = support::Proxy::start(&url, &[("UPSTREAM_HEADER_TIMEOUT", "1000")]).await;
    let body = json!({"model": "qwen3.7-plus", "messages": [{"role": "user", "content": "hi"}]})
        .to_string();
    let started = std::time::Instant::now();
    let one = |body: String| async move {
        let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        let request = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(request.as_bytes()).await.unwrap();
        let mut reply = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut reply)).await;
        (
            String::from_utf8_lossy(&reply).into_owned(),
            started.elapsed(),
        )
    };
    let tasks = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    let idle_tasks = tasks();
    // Other requests are unaffected while the burst hangs: the metrics answer at once.
    let burst = futures::future::join_all((0..10).map(|_| one(body.clone())));
    let probe = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut reply = Vec::new();
        let read = tokio::time::timeout(Duration::from_millis(500), s.read_to_end(&mut reply));
        assert!(read.await.is_ok(), "/metrics answers while the burst hangs");
        assert!(String::from_utf8_lossy(&reply).starts_with("HTTP/1.1 200"));
    };
    let (replies, ()) = tokio::join!(burst, probe);
    holder.abort();
    // Nothing is left behind: the runtime's tasks come back to where they were.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while tasks() > idle_tasks + 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        tasks() <= idle_tasks + 2,
        "tasks grew: {idle_tasks} before, {} after",
        tasks()
    );
    let times: Vec<Duration> = replies.iter().map(|(_, t)| *t).collect();
    for (reply, _) in &replies {
        assert!(
            reply.starts_with("HTTP/1.1 504"),
            "{}",
            &reply[..reply.len().min(300)]
        );
    }
    let (first, last) = (times.iter().min().unwrap(), times.iter().max().unwrap());
    assert!(
        *last - *first < Duration::from_millis(1500),
        "the burst failed one after another: {times:?}"
    );
}

/// `FIRST_TOKEN_TIMEOUT` is the most a client waits for its answer to begin, whatever the
/// per-step timeouts add up to: against a hung upstream with a 10 s header timeout, 504 after
/// about one second, streamed and not. An answer that began in time takes as long as it
/// needs (a non-streamed one included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_waits_at_most_the_first_token_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", hole.local_addr().unwrap());
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((c, _)) = hole.accept().await {
            held.push(c);
        }
    });
    let proxy = support::Proxy::start(
        &url,
        &[
            ("UPSTREAM_HEADER_TIMEOUT", "10000"),
            ("FIRST_TOKEN_TIMEOUT", "1000"),
        ],
    )
    .await;
    for stream in [false, true] {
        let body = json!({"model": "qwen3.7-plus", "stream": stream,
            "messages": [{"role": "user", "content": "hi"}]})
        .to_string();
        let started = std::time::Instant::now();
        let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        let request = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(request.as_bytes()).await.unwrap();
        let mut reply = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut reply)).await;
        let reply = String::from_utf8_lossy(&reply);
        let waited = started.elapsed();
        assert!(reply.starts_with("HTTP/1.1 504"), "{reply}");
        assert!(reply.contains("FIRST_TOKEN_TIMEOUT"), "{reply}");
        assert!(
            waited < Duration::from_secs(3),
            "stream {stream}: waited {waited:?}"
        );
    }
    holder.abort();
    // An answer that begins in time may take longer than the bound.
    let h = Harness::start_with(&[("FIRST_TOKEN_TIMEOUT", "500")], quick_sim()).await;
    let started = std::time::Instant::now();
    let r = h
        .ask("qwen3.7-plus", "q @@sim:long=300 @@sim:delay=10", false)
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        started.elapsed() > Duration::from_millis(500),
        "the answer took its time"
    );
}

/// A streamed answer that has not begun after `STREAM_COMMIT_DELAY` is committed: 200 and a
/// comment right then, comments while it waits, then the answer. A failure after the
/// commit is an in-band error event; a failure before it keeps its status.
#[tokio::test]
async fn a_waiting_stream_is_committed_with_comments() {
    let h = Harness::start_with(&[("STREAM_COMMIT_DELAY", "300")], quick_sim()).await;
    let post = |prompt: &str| {
        let body = json!({"model": "qwen3.7-plus", "stream": true,
            "messages": [{"role": "user", "content": prompt}]});
        hyper::Request::post(h.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(
                body.to_string(),
            )))
            .unwrap()
    };
    let started = std::time::Instant::now();
    let rsp = h.send(post("q @@sim:ttft=1500")).await;
    let head_after = started.elapsed();
    assert_eq!(rsp.status(), 200);
    assert!(
        head_after < Duration::from_millis(1200),
        "headers after {head_after:?}: the commit waited for the first token"
    );
    assert_eq!(rsp.headers()["content-type"], "text/event-stream");
    let r = Harness::read(rsp).await;
    let text = String::from_utf8_lossy(&r.body).into_owned();
    assert!(text.starts_with(": waiting for the upstream\n\n"), "{text}");
    let s = support::summarize(&r.events());
    assert_eq!(s.content, support::expected_answer("q"));
    assert_eq!(s.finish_reason.as_deref(), Some("stop"));
    // A failure after the commit: the API's in-band error, never a clean end.
    let r = Harness::read(
        h.send(post("q @@sim:ttft=1000 @@sim:rate_limited_frame=2"))
            .await,
    )
    .await;
    assert_eq!(r.status, 200);
    let s = support::summarize(&r.events());
    assert!(s.error.is_some(), "{}", String::from_utf8_lossy(&r.body));
    assert!(s.finish_reason.is_none());
    // A failure before the delay keeps its honest status (another proxy: the quota above
    // rests the only account).
    let h = Harness::start_with(&[("STREAM_COMMIT_DELAY", "300")], quick_sim()).await;
    let r = h
        .post_raw(
            "/v1/chat/completions",
            "application/json",
            json!({"model": "qwen3.7-plus", "stream": true,
                "messages": [{"role": "user", "content": "q @@sim:rate_limited=2"}]})
            .to_string(),
            &[],
        )
        .await;
    assert_eq!(r.status, 429);
    assert!(r.headers.contains_key("retry-after"));
}
