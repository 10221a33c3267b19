//! The real stack against the simulator, every scenario streamed and not streamed.

// Tests and benches: a failed unwrap is a failure with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::{json, Value};
use support::{expected_answer, summarize, Harness, Reply};

const MODEL: &str = "qwen3.7-plus";

async fn both(h: &Harness, prompt: &str, model: &str) -> (Reply, Reply) {
    (
        h.ask(model, prompt, true).await,
        h.ask(model, prompt, false).await,
    )
}

fn assert_ok_stream(r: &Reply) -> support::StreamSummary {
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.headers["content-type"], "text/event-stream");
    assert_eq!(r.headers["cache-control"], "no-cache");
    assert_eq!(r.headers["x-accel-buffering"], "no");
    summarize(&r.events())
}

fn message(r: &Reply) -> Value {
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    v["choices"][0].clone()
}

/// Both modes answer `want` (content), with a clean stream.
async fn assert_answer_both(h: &Harness, prompt: &str, model: &str, want: &str) {
    let (s, n) = both(h, prompt, model).await;
    assert_eq!(assert_ok_stream(&s).content, want);
    assert_eq!(message(&n)["message"]["content"], want);
}

/// Content and finish reason of a reply, streamed or not.
fn content_and_finish(r: &Reply, stream: bool) -> (String, String) {
    if stream {
        let s = summarize(&r.events());
        (s.content, s.finish_reason.expect("finish reason"))
    } else {
        let m = message(r);
        (
            m["message"]["content"].as_str().unwrap().to_owned(),
            m["finish_reason"].as_str().unwrap().to_owned(),
        )
    }
}

fn assert_error(r: &Reply, status: u16, kind: &str, code: &str) {
    assert_eq!(r.status, status, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.headers["content-type"], "application/json");
    let e = r.error();
    assert_eq!(e["type"], kind, "{e}");
    assert_eq!(e["code"], code, "{e}");
    assert!(!e["message"].as_str().unwrap_or("").is_empty());
}

#[tokio::test]
async fn plain_answer() {
    let h = Harness::start().await;
    let (s, n) = both(&h, "Hello there", MODEL).await;
    let s = assert_ok_stream(&s);
    assert_eq!(
        s.content,
        "Simulated answer — 模拟回答: you said \"Hello there\"."
    );
    assert_eq!(s.finish_reason.as_deref(), Some("stop"));
    assert!(s.error.is_none() && s.usage.is_none());
    let m = message(&n);
    assert_eq!(m["message"]["content"], expected_answer("Hello there"));
    assert_eq!(m["finish_reason"], "stop");
    assert!(m["message"].get("reasoning_content").is_none());
    let usage = &n.json()["usage"];
    assert!(
        usage["prompt_tokens"].as_u64().unwrap() > 1000,
        "hidden prompt counted: {usage}"
    );
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
    );
}

#[tokio::test]
async fn thinking_model_streams_reasoning_once() {
    let h = Harness::start().await;
    let want_reasoning = "The user wrote: \"Why?\".\n\nI will answer briefly — 简短回答。";
    let (s, n) = both(&h, "Why?", "qwen3.7-plus-thinking").await;
    let s = assert_ok_stream(&s);
    assert_eq!(s.reasoning, want_reasoning);
    assert_eq!(s.content, expected_answer("Why?"));
    let m = message(&n);
    assert_eq!(m["message"]["reasoning_content"], want_reasoning);
    assert!(
        n.json()["usage"]["completion_tokens_details"]["reasoning_tokens"]
            .as_u64()
            .unwrap()
            > 0
    );
    // The directive gives thinking on the plain model too.
    let d = summarize(&h.ask(MODEL, "Why? @@sim:think", true).await.events());
    assert_eq!(d.reasoning, want_reasoning);
    assert_eq!(d.content, expected_answer("Why?"));
}

#[tokio::test]
async fn search_variant_skips_tool_frames() {
    let h = Harness::start().await;
    let (s, n) = both(&h, "weather", "qwen3.7-plus-search").await;
    // The simulator cites source 1 before the colon and source 2 at the end (README
    // "Simulator"); source 3 is not cited.
    let want = "Simulated answer — 模拟回答[[1]]: you said \"weather\".[[2]]";
    let body = String::from_utf8_lossy(&s.body).to_string();
    assert_eq!(assert_ok_stream(&s).content, want);
    assert!(!body.contains("web_search") && !body.contains("tool_calls"));
    assert_eq!(message(&n)["message"]["content"], want);

    // Citations: character positions of each marker; the uncited source at the end.
    let chars = |s: &str| s.chars().count() as u64;
    let one = chars(&want[..want.find("[[1]]").unwrap()]);
    let two = chars(&want[..want.find("[[2]]").unwrap()]);
    let end = chars(want);
    let cited = |a: &Value| {
        let c = &a["url_citation"];
        assert_eq!(a["type"], "url_citation", "{a}");
        assert!(
            c["url"].as_str().unwrap().starts_with("https://example."),
            "{a}"
        );
        assert!(c["title"].as_str().unwrap().contains("weather"), "{a}");
        (
            c["start_index"].as_u64().unwrap(),
            c["end_index"].as_u64().unwrap(),
        )
    };
    let whole: Vec<_> = message(&n)["message"]["annotations"]
        .as_array()
        .unwrap()
        .iter()
        .map(cited)
        .collect();
    assert_eq!(whole, [(one, one + 5), (two, two + 5), (end, end)]);
    // Streamed: one chunk per citation, indexed from 0, each after the content it cites.
    let mut streamed = Vec::new();
    let mut content = String::new();
    for e in s.events() {
        let delta = &e["choices"][0]["delta"];
        content.push_str(delta["content"].as_str().unwrap_or(""));
        if let Some(list) = delta["annotations"].as_array() {
            assert_eq!(list.len(), 1);
            assert_eq!(list[0]["index"], streamed.len());
            let (start, end) = cited(&list[0]);
            assert!(end <= chars(&content), "a citation before its content");
            streamed.push((start, end));
        }
    }
    assert_eq!(streamed, whole);
}

#[tokio::test]
async fn dual_responses_keep_index_zero() {
    let h = Harness::start().await;
    assert_answer_both(
        &h,
        "pick one @@sim:dual",
        MODEL,
        &expected_answer("pick one"),
    )
    .await;
}

#[tokio::test]
async fn split_writes_inside_utf8_reassemble_exactly() {
    let h = Harness::start().await;
    assert_answer_both(
        &h,
        "你好，世界 @@sim:split",
        MODEL,
        &expected_answer("你好，世界"),
    )
    .await;
}

#[tokio::test]
async fn long_answer_and_done_terminator() {
    let h = Harness::start().await;
    let filler: String =
        "Lorem ipsum dolor sit amet, 通义千问 consectetur adipiscing elit; sed do eiusmod tempor. "
            .chars()
            .cycle()
            .take(3000)
            .collect();
    let (s, n) = both(&h, "x @@sim:long=3000 @@sim:done", MODEL).await;
    let s = assert_ok_stream(&s);
    assert_eq!(s.content, filler);
    assert!(s.chunks > 500);
    assert_eq!(message(&n)["message"]["content"], filler);
}

#[tokio::test]
async fn include_usage_semantics() {
    let h = Harness::start().await;
    let r = h
        .chat(
            json!({"model": MODEL, "stream": true, "stream_options": {"include_usage": true},
                     "messages": [{"role": "user", "content": "count"}]}),
        )
        .await;
    let events = r.events();
    let s = summarize(&events);
    for ev in &events[..events.len() - 2] {
        assert!(
            ev.get("usage").is_some_and(Value::is_null),
            "usage: null on every chunk: {ev}"
        );
    }
    let last = &events[events.len() - 2];
    assert_eq!(last["choices"], json!([]));
    let usage = s.usage.expect("usage chunk");
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 1000);
    assert!(usage["completion_tokens"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn max_tokens_cuts_with_length() {
    let h = Harness::start().await;
    let full = expected_answer("tell me more");
    for stream in [true, false] {
        let r = h
            .chat(json!({"model": MODEL, "stream": stream, "max_tokens": 3,
                         "messages": [{"role": "user", "content": "tell me more"}]}))
            .await;
        let (content, finish) = content_and_finish(&r, stream);
        assert_eq!(finish, "length");
        // 3 tokens = 12 ASCII characters by the documented estimate.
        assert_eq!(content, "Simulated an");
        assert!(full.starts_with(&content));
    }
}

#[tokio::test]
async fn stop_sequences_are_emulated() {
    let h = Harness::start().await;
    for stream in [true, false] {
        let r = h
            .chat(
                json!({"model": MODEL, "stream": stream, "stop": ["模拟", "never"],
                         "messages": [{"role": "user", "content": "hi"}]}),
            )
            .await;
        let (content, finish) = content_and_finish(&r, stream);
        assert_eq!(content, "Simulated answer — ");
        assert_eq!(finish, "stop");
    }
}

#[tokio::test]
async fn conversation_is_folded_with_system_first() {
    let h = Harness::start().await;
    let r = h
        .chat(json!({"model": MODEL, "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": [{"type": "text", "text": "second question"}]}]}))
        .await;
    assert_eq!(
        message(&r)["message"]["content"],
        expected_answer("second question")
    );
    let stats = h.sim_stats().await;
    assert_eq!(stats["chats_created"], 1);
    assert_eq!(stats["completions"], 1);
}

#[tokio::test]
async fn thinking_required_model_never_sends_thinking_off() {
    let h = Harness::start().await;
    // reasoning_effort "low" would turn thinking off; qwen3.8-max cannot skip thinking,
    // so the proxy keeps it on instead of provoking the upstream's invalid_input.
    let r = h
        .chat(json!({"model": "qwen3.8-max", "reasoning_effort": "low",
                     "messages": [{"role": "user", "content": "q"}]}))
        .await;
    assert_eq!(message(&r)["message"]["content"], expected_answer("q"));
    assert_error(
        &h.ask("qwen3.8-max-fast", "q", false).await,
        404,
        "invalid_request_error",
        "model_not_found",
    );
}

// === errors before the first byte: an HTTP status, streamed or not ===

async fn assert_error_both(
    h: &Harness,
    prompt: &str,
    status: u16,
    kind: &str,
    code: &str,
) -> (Reply, Reply) {
    let (s, n) = both(h, prompt, MODEL).await;
    assert_error(&s, status, kind, code);
    assert_error(&n, status, kind, code);
    (s, n)
}

/// An account failure, streamed and not, each on a fresh proxy (the answer takes the only
/// account out of rotation; what later requests meet is `the_single_account_...`'s).
async fn assert_account_error(prompt: &str, status: u16, kind: &str, code: &str) -> (Reply, Reply) {
    let s = Harness::start().await.ask(MODEL, prompt, true).await;
    let n = Harness::start().await.ask(MODEL, prompt, false).await;
    assert_error(&s, status, kind, code);
    assert_error(&n, status, kind, code);
    (s, n)
}

#[tokio::test]
async fn rate_limited_json_body_is_429_with_retry_after() {
    let (s, n) = assert_account_error(
        "q @@sim:rate_limited=2",
        429,
        "rate_limit_error",
        "upstream_rate_limited",
    )
    .await;
    assert_eq!(s.headers["retry-after"], "7200");
    assert_eq!(n.headers["retry-after"], "7200");
    let (s, _) = assert_account_error(
        "q @@sim:rate_limited_frame=3",
        429,
        "rate_limit_error",
        "upstream_rate_limited",
    )
    .await;
    assert_eq!(s.headers["retry-after"], "10800");
}

#[tokio::test]
async fn the_single_account_rests_after_its_quota_a_ban_or_a_refused_token() {
    for (prompt, status, code) in [
        ("q @@sim:rate_limited=2", 429, "upstream_rate_limited"),
        ("q @@sim:forbidden", 403, "upstream_forbidden"),
        ("q @@sim:unauthorized", 401, "upstream_auth_failed"),
    ] {
        let h = Harness::start().await;
        assert_eq!(h.ask(MODEL, prompt, false).await.status, status, "{prompt}");
        let calls = h.sim_stats().await["completion_requests"].clone();
        // The next request is answered without calling the upstream with that account.
        let r = h.ask(MODEL, "a normal question", true).await;
        assert_eq!(
            h.sim_stats().await["completion_requests"],
            calls,
            "{prompt}"
        );
        if code == "upstream_rate_limited" {
            assert_error(&r, 429, "rate_limit_error", code);
            let wait: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
            assert!((7190..=7200).contains(&wait), "the time left: {wait}");
        } else {
            assert_error(&r, 503, "server_error", "no_usable_account");
            let message = r.error()["message"].as_str().unwrap().to_owned();
            let state = if status == 403 {
                "forbidden"
            } else {
                "invalid"
            };
            assert!(message.contains(&format!("1 {state}")), "{message}");
            assert!(
                message.contains(&format!("{state}: ")),
                "says why: {message}"
            );
        }
        let health = h.health().await.json();
        assert_eq!(health["accounts"]["counts"]["usable"], 0, "{health}");
    }
}

#[tokio::test]
async fn auth_failure_says_to_refresh_cookies() {
    let (s, _) = assert_account_error(
        "q @@sim:unauthorized",
        401,
        "authentication_error",
        "upstream_auth_failed",
    )
    .await;
    assert!(s.error()["message"]
        .as_str()
        .unwrap()
        .contains("QWEN_COOKIES"));
}

#[tokio::test]
async fn punish_and_waf_are_upstream_challenges() {
    // The mapping of each challenge, not the pause after one (tests/hardening.rs).
    let h = Harness::start_with(&[("CHALLENGE_COOLDOWN", "0")], Default::default()).await;
    let (s, _) = assert_error_both(
        &h,
        "q @@sim:punish",
        503,
        "server_error",
        "upstream_challenge",
    )
    .await;
    assert!(s.headers.contains_key("retry-after"));
    assert_error_both(&h, "q @@sim:waf", 503, "server_error", "upstream_challenge").await;
}

#[tokio::test]
async fn overload_is_503() {
    let h = Harness::start().await;
    assert_error_both(
        &h,
        "q @@sim:overload",
        503,
        "server_error",
        "upstream_overloaded",
    )
    .await;
}

#[tokio::test]
async fn moderation_and_invalid_input_are_400() {
    let h = Harness::start().await;
    assert_error_both(
        &h,
        "q @@sim:moderation_input",
        400,
        "invalid_request_error",
        "content_filter",
    )
    .await;
    assert_error_both(
        &h,
        "q @@sim:invalid_input",
        400,
        "invalid_request_error",
        "invalid_input",
    )
    .await;
}

#[tokio::test]
async fn empty_stream_is_502_never_an_empty_200() {
    let h = Harness::start().await;
    assert_error_both(
        &h,
        "q @@sim:empty",
        502,
        "server_error",
        "upstream_empty_response",
    )
    .await;
}

#[tokio::test]
async fn chat_in_progress_is_retried_on_the_same_chat() {
    let h = Harness::start().await;
    let r = h.ask(MODEL, "q @@sim:in_progress=2", true).await;
    assert_eq!(assert_ok_stream(&r).content, expected_answer("q"));
    let stats = h.sim_stats().await;
    assert_eq!(stats["chats_created"], 1, "{stats}");
    assert_eq!(stats["completion_requests"], 3, "{stats}");
    // More "in progress" than the attempts allow: a 503 in the end.
    let h = Harness::start_with(&[("RETRY_MAX_ATTEMPTS", "2")], Default::default()).await;
    assert_error_both(
        &h,
        "q @@sim:in_progress=20",
        503,
        "server_error",
        "upstream_busy",
    )
    .await;
}

#[tokio::test]
async fn transient_failures_are_retried_then_reported() {
    let h = Harness::start().await;
    // Every attempt fails the same way, a new chat each: the second attempt repeats the
    // first, so there is no third (and the client is told to wait before trying again).
    let r = h.ask(MODEL, "q @@sim:empty", false).await;
    assert_error(&r, 502, "server_error", "upstream_empty_response");
    assert_eq!(r.headers["x-should-retry"], "true");
    assert_eq!(r.headers["retry-after"], "30");
    let stats = h.sim_stats().await;
    assert_eq!(
        (
            stats["chats_created"].as_u64(),
            stats["completion_requests"].as_u64()
        ),
        (Some(2), Some(2)),
        "{stats}"
    );
    // A passing failure (a 503) is retried up to RETRY_MAX_ATTEMPTS, within the request's
    // CHATS_PER_REQUEST upstream chats.
    let h = Harness::start_with(
        &[("CHATS_PER_REQUEST", "3"), ("RETRY_INITIAL_DELAY", "5")],
        Default::default(),
    )
    .await;
    let r = h.ask(MODEL, "q @@sim:overload", false).await;
    assert_error(&r, 503, "server_error", "upstream_overloaded");
    assert_eq!(h.sim_stats().await["chats_created"], 3);
    // Challenges are never retried.
    let h = Harness::start().await;
    assert_error(
        &h.ask(MODEL, "q @@sim:punish", false).await,
        503,
        "server_error",
        "upstream_challenge",
    );
    assert_eq!(h.sim_stats().await["completion_requests"], 1);
}

#[tokio::test]
async fn unreachable_upstream_is_502() {
    // Bind and drop a listener to get a port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let h = Harness::start_with(&[("QWEN_BASE_URL", &url)], Default::default()).await;
    assert_error_both(&h, "q", 502, "server_error", "upstream_unreachable").await;
    let health = h.health().await.json();
    assert_eq!(health["status"], "degraded");
    assert_eq!(health["upstream"]["reachable"], false);
}

// === errors after the first byte: in-band error event, then [DONE] ===

async fn assert_midstream_error(
    h: &Harness,
    prompt: &str,
    kind: &str,
    code: &str,
    non_stream_status: u16,
) {
    let (s, n) = both(h, prompt, MODEL).await;
    let sum = assert_ok_stream(&s);
    assert!(!sum.content.is_empty(), "partial content first");
    assert_eq!(sum.finish_reason, None, "no clean finish after an error");
    let err = sum.error.expect("in-band error event");
    assert_eq!(err["type"], kind, "{err}");
    assert_eq!(err["code"], code, "{err}");
    // Non-streaming never presents a truncated answer as complete.
    assert_error(&n, non_stream_status, kind, code);
}

#[tokio::test]
async fn internal_error_midstream() {
    let h = Harness::start().await;
    assert_midstream_error(
        &h,
        "q @@sim:internal_error",
        "server_error",
        "upstream_error",
        502,
    )
    .await;
}

#[tokio::test]
async fn quota_midstream() {
    // A fresh proxy each: the quota cools the only account.
    assert_midstream_error(
        &Harness::start().await,
        "q @@sim:quota_midstream",
        "rate_limit_error",
        "upstream_rate_limited",
        429,
    )
    .await;
    assert_midstream_error(
        &Harness::start().await,
        "q @@sim:rate_limited_after=4",
        "rate_limit_error",
        "upstream_rate_limited",
        429,
    )
    .await;
}

#[tokio::test]
async fn moderation_output_midstream() {
    let h = Harness::start().await;
    assert_midstream_error(
        &h,
        "q @@sim:moderation_output",
        "invalid_request_error",
        "content_filter",
        400,
    )
    .await;
}

#[tokio::test]
async fn reset_midstream() {
    let h = Harness::start().await;
    assert_midstream_error(
        &h,
        "q @@sim:reset",
        "server_error",
        "upstream_unreachable",
        502,
    )
    .await;
}

#[tokio::test]
async fn stall_hits_the_idle_timeout() {
    let h = Harness::start_with(&[("UPSTREAM_IDLE_TIMEOUT", "300")], Default::default()).await;
    assert_midstream_error(
        &h,
        "q @@sim:stall=3000",
        "server_error",
        "upstream_timeout",
        504,
    )
    .await;
}

/// A trickling upstream (a byte every 100 ms: bytes keep coming, an event hardly ever
/// completes) meets the idle timeout per event, not per byte: the request fails at the
/// timeout instead of being held for the whole trickle (about a minute here).
#[tokio::test]
async fn a_trickle_of_bytes_does_not_restart_the_idle_timeout() {
    let h = Harness::start_with(&[("UPSTREAM_IDLE_TIMEOUT", "500")], Default::default()).await;
    for stream in [false, true] {
        let started = std::time::Instant::now();
        let r = h.ask(MODEL, "q @@sim:drip=100", stream).await;
        let waited = started.elapsed();
        assert!(
            waited < std::time::Duration::from_secs(5),
            "stream {stream}: held {waited:?} by a trickle"
        );
        // Before the first event: a status, streamed or not.
        assert_eq!(r.status, 504, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.error()["code"], "upstream_timeout");
    }
}

#[tokio::test]
async fn short_stall_within_timeout_is_fine() {
    let h = Harness::start().await;
    let (s, n) = both(&h, "q @@sim:stall=50", MODEL).await;
    assert_eq!(assert_ok_stream(&s).content, expected_answer("q"));
    assert_eq!(message(&n)["message"]["content"], expected_answer("q"));
}

// === replayed captures through the whole stack ===

#[tokio::test]
async fn replayed_fixtures_through_the_stack() {
    for stream in [true, false] {
        // A fresh proxy each: the quota at the end cools the only account.
        let h = Harness::start().await;
        h.sim_replay(support::fixture("thinking-answer.sse"), 7)
            .await;
        let r = h.ask(MODEL, "whatever", stream).await;
        let (content, reasoning) = if stream {
            let s = summarize(&r.events());
            (s.content, s.reasoning)
        } else {
            let m = message(&r);
            (
                m["message"]["content"].as_str().unwrap().to_owned(),
                m["message"]["reasoning_content"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            )
        };
        assert_eq!(
            content,
            "我是通义千问（Qwen），由阿里巴巴研发的大语言模型。"
        );
        assert!(reasoning.ends_with("我会说明身份与开发者，保持一句话。"));

        h.sim_replay(support::fixture("quota-after-partial.sse"), 5)
            .await;
        let r = h.ask(MODEL, "whatever", stream).await;
        if stream {
            let s = summarize(&r.events());
            assert_eq!(s.content, "Partial useful answer");
            assert_eq!(s.error.unwrap()["type"], "rate_limit_error");
        } else {
            assert_error(&r, 429, "rate_limit_error", "upstream_rate_limited");
            assert_eq!(r.headers["retry-after"], "14400");
        }
    }
}

// === request validation ===

#[tokio::test]
async fn bad_requests_name_the_parameter() {
    let h = Harness::start().await;
    let cases = [
        (
            json!({"messages": [{"role": "user", "content": "x"}]}),
            "model",
        ),
        (json!({"model": MODEL}), "messages"),
        (json!({"model": MODEL, "messages": []}), "messages"),
        (
            json!({"model": MODEL, "messages": [{"role": "robot", "content": "x"}]}),
            "messages[0].role",
        ),
        (
            json!({"model": MODEL, "messages": [{"role": "user", "content": 1}]}),
            "messages[0].content",
        ),
        (
            json!({"model": MODEL, "n": 2, "messages": [{"role": "user", "content": "x"}]}),
            "n",
        ),
        (
            json!({"model": MODEL, "max_tokens": -5, "messages": [{"role": "user", "content": "x"}]}),
            "max_tokens",
        ),
        (
            // Plain http is not fetched by default (IMAGE_FETCH_ALLOW_HTTP).
            json!({"model": MODEL, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/a.png"}}]}]}),
            "messages[0].content[0].image_url",
        ),
        (
            json!({"model": MODEL, "messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]}]}),
            "messages[0].content[0]",
        ),
    ];
    for (body, param) in cases {
        let r = h.chat(body.clone()).await;
        assert_eq!(r.status, 400, "{body}");
        assert_eq!(r.error()["type"], "invalid_request_error");
        assert_eq!(r.error()["param"], param, "{body}");
    }
    let r = h
        .post_raw("/v1/chat/completions", "application/json", "{not json", &[])
        .await;
    assert_eq!(r.status, 400);
    let r = h
        .post_raw("/v1/chat/completions", "text/plain", "{}", &[])
        .await;
    assert_eq!(r.status, 415);
    assert_eq!(
        h.sim_stats().await["completion_requests"],
        0,
        "no upstream work for bad input"
    );
}

#[tokio::test]
async fn oversized_body_is_413() {
    let h = Harness::start_with(&[("MAX_BODY_BYTES", "2048")], Default::default()).await;
    let big = "x".repeat(4096);
    let r = h.ask(MODEL, &big, false).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.error()["code"], "payload_too_large");
}

#[tokio::test]
async fn unknown_model_is_404() {
    let h = Harness::start().await;
    let r = h.ask("gpt-4o", "x", true).await;
    assert_error(&r, 404, "invalid_request_error", "model_not_found");
    assert_eq!(r.error()["param"], "model");
}

// === models, health, routing ===

#[tokio::test]
async fn models_list_and_lookup() {
    let h = Harness::start().await;
    let list = h.get("/v1/models").await.json();
    assert_eq!(list["object"], "list");
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    for id in [
        "qwen3.7-plus",
        "qwen3.7-plus-thinking",
        "qwen3.7-plus-fast",
        "qwen3.7-plus-search",
        "qwen3.8-max-thinking",
        "qwen3.5-omni-plus",
    ] {
        assert!(ids.contains(&id), "{id} in {ids:?}");
    }
    assert!(!ids.contains(&"qwen3.8-max-fast") && !ids.contains(&"qwen3.5-omni-plus-thinking"));
    let one = h.get("/v1/models/qwen3.7-plus-thinking").await;
    assert_eq!(one.status, 200);
    assert_eq!(one.json()["object"], "model");
    assert_error(
        &h.get("/v1/models/nope").await,
        404,
        "invalid_request_error",
        "model_not_found",
    );
}

#[tokio::test]
async fn health_and_routing() {
    let h = Harness::start().await;
    let health = h.health().await;
    assert_eq!(health.status, 200);
    let v = health.json();
    assert_eq!(v["status"], "ok");
    assert_eq!(v["upstream"]["reachable"], true);
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(h.get("/nope").await.status, 404);
    assert_eq!(h.get("/v1/chat/completions").await.status, 405);
}

#[tokio::test]
async fn api_keys_protect_v1() {
    let h = Harness::start_with(&[("API_KEYS", "k-one, k-two")], Default::default()).await;
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": "x"}]}).to_string();
    let r = h
        .post_raw(
            "/v1/chat/completions",
            "application/json",
            body.clone(),
            &[],
        )
        .await;
    assert_error(&r, 401, "authentication_error", "invalid_api_key");
    let r = h
        .post_raw(
            "/v1/chat/completions",
            "application/json",
            body,
            &[("authorization", "Bearer k-two")],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(h.health().await.status, 200);
}

// === cancellation ===

#[tokio::test]
async fn client_disconnect_aborts_the_upstream_stream() {
    use http_body_util::BodyExt;
    let h = Harness::start().await;
    let body = json!({"model": MODEL, "stream": true,
                      "messages": [{"role": "user", "content": "x @@sim:long=100000 @@sim:delay=20"}]});
    let rsp = h.chat_response(&body).await;
    assert_eq!(rsp.status(), 200);
    let mut body = rsp.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.data_ref().is_some_and(|d| !d.is_empty()));
    assert_eq!(h.sim_stats().await["in_flight"], 1);
    drop(body);
    let stats = h.wait_for_stats(|s| s["aborted_streams"] == 1).await;
    assert_eq!(stats["aborted_streams"], 1, "{stats}");
    assert_eq!(stats["in_flight"], 0, "{stats}");
}

#[tokio::test]
async fn forbidden_account_is_403() {
    assert_account_error(
        "q @@sim:forbidden",
        403,
        "permission_error",
        "upstream_forbidden",
    )
    .await;
}

#[tokio::test]
async fn upstream_bad_request_internal_error_is_a_refused_request() {
    let h = Harness::start().await;
    let (s, n) = assert_error_both(
        &h,
        "q @@sim:bad_request",
        400,
        "invalid_request_error",
        "upstream_rejected_request",
    )
    .await;
    for r in [s, n] {
        assert_eq!(r.headers["x-should-retry"], "false");
    }
}

#[tokio::test]
async fn a_json_answer_loses_its_markdown_fence() {
    // tool-calling.md §6 test 45: clients parse JSON-mode content as JSON.
    let h = Harness::start().await;
    let fenced = "```json\n{\"a\":1}\n```";
    let prompt = format!(
        "Give JSON @@sim:split @@sim:reply={}",
        qwen_proxy::common::base64url_encode(fenced.as_bytes())
    );
    for format in [
        json!({"type": "json_object"}),
        json!({"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}}),
    ] {
        for stream in [true, false] {
            let r = h
                .chat(
                    json!({"model": MODEL, "stream": stream, "response_format": format,
                    "messages": [{"role": "user", "content": prompt}]}),
                )
                .await;
            let (content, finish) = content_and_finish(&r, stream);
            assert_eq!(content, "{\"a\":1}", "{format} stream={stream}");
            assert_eq!(finish, "stop");
        }
    }
    // Plain text requests get what the model wrote.
    let (s, _) = both(&h, &prompt, MODEL).await;
    assert_eq!(assert_ok_stream(&s).content, fenced);
}

#[tokio::test]
async fn logprobs_are_accepted_and_answered_with_null() {
    // tool-calling.md §6 test 44: the upstream has no log probabilities.
    let h = Harness::start().await;
    let body = json!({"model": MODEL, "logprobs": true, "top_logprobs": 2,
        "messages": [{"role": "user", "content": "hi"}]});
    let choice = message(&h.chat(body).await);
    assert_eq!(choice["logprobs"], Value::Null);
    assert_eq!(choice["message"]["content"], expected_answer("hi"));
}
