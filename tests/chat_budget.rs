//! How many upstream chats a client's retries can make (`conversation::budget`): an agent
//! that retries whatever it is told — ignoring `x-should-retry` and `Retry-After`, as the
//! Vercel AI SDK does — meets a failing upstream. Each upstream chat is one more in the
//! user's account and a step towards its anti-bot challenge.

// Tests: a failed unwrap is a failure with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::Value;
use support::{quick_sim, Harness, Reply};

const MODEL: &str = "qwen3.7-plus";

/// Fast backoff, so the proxy's own retries take milliseconds.
const QUICK_RETRIES: [(&str, &str); 2] = [("RETRY_INITIAL_DELAY", "5"), ("RETRY_MAX_DELAY", "10")];

/// An agent-like client: the request, then up to six retries at once on any 5xx (and, the
/// worst client, on anything but a success). Returns every reply.
async fn agent(h: &Harness, prompt: &str, retry_on_4xx: bool) -> Vec<Reply> {
    let mut replies = Vec::new();
    for _ in 0..7 {
        let r = h.ask(MODEL, prompt, false).await;
        let status = r.status.as_u16();
        let again = status >= 500 || (retry_on_4xx && status >= 400);
        replies.push(r);
        if !again {
            break;
        }
    }
    replies
}

fn chats(stats: &Value) -> u64 {
    stats["chats_created"].as_u64().unwrap()
}

fn header<'a>(r: &'a Reply, name: &str) -> &'a str {
    r.headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
}

#[tokio::test]
async fn a_request_the_upstream_refuses_as_malformed_opens_two_chats_however_often_it_is_sent() {
    let h = Harness::start_with(&QUICK_RETRIES, quick_sim()).await;
    // `Bad_Request` "Internal error" (qwen-protocol E7), on every chat.
    let replies = agent(&h, "q @@sim:bad_request", true).await;
    assert_eq!(replies.len(), 7, "the worst client retries all the same");
    let first = &replies[0];
    assert_eq!(first.status, 400);
    assert_eq!(first.error()["code"], "upstream_rejected_request");
    assert_eq!(header(first, "x-should-retry"), "false");
    assert!(
        first.error()["message"]
            .as_str()
            .unwrap()
            .contains("sending it again will not help"),
        "{}",
        first.error()
    );
    // Once on a second fresh chat, then never again: not by the proxy, not for the client's
    // six retries, which get the same answer without an upstream call.
    let stats = h.sim_stats().await;
    assert_eq!(chats(&stats), 2, "{stats}");
    assert_eq!(stats["completion_requests"], 2, "{stats}");
    for r in &replies[1..] {
        assert_eq!(r.status, 400);
        assert_eq!(r.error()["code"], first.error()["code"]);
        assert_eq!(header(r, "x-should-retry"), "false");
    }
    // Streamed, the same request is answered the same.
    let s = h.ask(MODEL, "q @@sim:bad_request", true).await;
    assert_eq!(s.status, 400);
    assert_eq!(chats(&h.sim_stats().await), 2);
}

#[tokio::test]
async fn a_5xx_that_repeats_on_a_fresh_chat_is_not_tried_again() {
    let h = Harness::start_with(&QUICK_RETRIES, quick_sim()).await;
    // An in-stream `{"error":"Internal error!"}` after some text, on every chat: a passing
    // failure, but not one that a third chat right away would cure.
    let replies = agent(&h, "q @@sim:internal_error", false).await;
    assert_eq!(replies.len(), 7, "a 5xx: the agent retries six times");
    for r in &replies {
        assert_eq!(r.status, 502);
        assert_eq!(r.error()["code"], "upstream_error");
        // Worth a retry, after a while: the same request is not tried again before then.
        assert_eq!(header(r, "x-should-retry"), "true");
        assert_eq!(header(r, "retry-after"), "30");
    }
    assert!(replies[0].error()["message"]
        .as_str()
        .unwrap()
        .contains("failed the same way again when the proxy tried a fresh chat"));
    let stats = h.sim_stats().await;
    assert_eq!(chats(&stats), 2, "{stats}");
    let m = h.get("/metrics").await;
    let text = String::from_utf8_lossy(&m.body).into_owned();
    assert!(
        text.contains("upstream_chats_per_request_bucket{le=\"0\"} 6"),
        "the six retries opened none: {text}"
    );
    assert!(text.contains("upstream_chats_per_request_sum 2"), "{text}");
}

#[tokio::test]
async fn a_conversation_opens_at_most_its_chats_per_minute_through_transient_failures() {
    let env = [
        QUICK_RETRIES[0],
        QUICK_RETRIES[1],
        ("CHATS_PER_CONVERSATION_PER_MINUTE", "4"),
    ];
    let h = Harness::start_with(&env, quick_sim()).await;
    // 503 from the upstream on every chat: a passing failure, which a retry may cure.
    let replies = agent(&h, "q @@sim:overload", false).await;
    let first = &replies[0];
    assert_eq!(first.status, 503);
    assert_eq!(header(first, "x-should-retry"), "true");
    assert_eq!(header(first, "retry-after"), "5");
    // Two chats per request (CHATS_PER_REQUEST), four per conversation per minute: the
    // third request is refused before any upstream call, with the time until a chat frees.
    let stats = h.sim_stats().await;
    assert_eq!(chats(&stats), 4, "{stats}");
    let limited = replies.last().unwrap();
    assert_eq!(replies.len(), 3, "a 429 ends the agent's 5xx retries");
    assert_eq!(limited.status, 429);
    assert_eq!(limited.error()["code"], "conversation_chat_limit");
    let wait: u64 = header(limited, "retry-after").parse().unwrap();
    assert!((55..=60).contains(&wait), "{wait}");
    // Another conversation is not held back by this one.
    let other = h.ask(MODEL, "another question", false).await;
    assert_eq!(other.status, 200);
}

#[tokio::test]
async fn answered_turns_do_not_count_against_the_conversation() {
    // A fresh chat every turn (stateless mode, or a client that rewrites its history) is
    // progress, not a storm: only chats that came to nothing fill the window.
    let env = [
        ("CONVERSATION_MODE", "stateless"),
        ("CHATS_PER_CONVERSATION_PER_MINUTE", "2"),
    ];
    let h = Harness::start_with(&env, quick_sim()).await;
    let mut messages = vec![serde_json::json!({"role": "user", "content": "step 0"})];
    for k in 1..=5 {
        let r = h
            .chat(serde_json::json!({"model": MODEL, "messages": messages}))
            .await;
        assert_eq!(
            r.status,
            200,
            "turn {k}: {}",
            String::from_utf8_lossy(&r.body)
        );
        messages.push(serde_json::json!({"role": "assistant", "content": r.message_content()}));
        messages.push(serde_json::json!({"role": "user", "content": format!("step {k}")}));
    }
    assert_eq!(chats(&h.sim_stats().await), 5);
}
