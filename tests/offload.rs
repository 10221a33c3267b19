//! Long contexts never meet the upstream's anti-bot limit: a fold too large for one request
//! goes with its older part in attached documents (every upstream body under the limit, as
//! the simulator measured it), uploaded once per account and content; a parse step that
//! refuses the account is a 503 with `Retry-After`, never a turn sent on a cut history.

// Tests: a failed unwrap is a failure with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::{json, Value};
use support::{quick_sim, Harness};

/// The default `UPSTREAM_BODY_LIMIT`.
const LIMIT: u64 = 112 * 1024;

/// An agent-like history of about `kib` KiB: a system prompt, then turns of 10 KiB each,
/// ending with a user request.
fn long_history(kib: usize) -> Vec<Value> {
    let mut messages = vec![
        json!({"role": "system", "content": format!("You are a careful assistant. {}", "Rule. ".repeat(300))}),
    ];
    let turns = kib / 10;
    for i in 0..turns {
        let role = if i % 2 == 0 { "user" } else { "assistant" };
        let text = format!("turn {i}: {}", "lorem ipsum dolor sit amet ".repeat(380));
        messages.push(json!({"role": role, "content": text}));
    }
    messages.push(json!({"role": "user", "content": "Now summarise the conversation."}));
    messages
}

/// Every completion the simulator took: (body bytes, files attached, document chars).
fn turns(stats: &Value) -> Vec<(u64, u64, u64)> {
    stats["chats"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|c| c["turns"].as_array().unwrap().clone())
        .map(|t| {
            (
                t["body_bytes"].as_u64().unwrap(),
                t["files"].as_u64().unwrap(),
                t["file_chars"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_300_kib_history_is_answered_with_every_upstream_body_under_the_limit() {
    let h = Harness::start_with(&[], quick_sim()).await;
    let messages = long_history(300);
    let sent = serde_json::to_vec(&messages).unwrap().len();
    assert!(sent > 300 * 1024, "the history is {sent} bytes");
    let r = h
        .chat(json!({"model": "qwen3.7-plus", "messages": messages}))
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(r
        .message_content()
        .contains("Now summarise the conversation."));
    let stats = h.sim_stats().await;
    let seen = turns(&stats);
    assert_eq!(seen.len(), 1, "{seen:?}");
    let (body, files, file_chars) = seen[0];
    eprintln!("{sent} B of history -> completion body {body} B, {files} document(s) of {file_chars} chars");
    assert!(body <= LIMIT, "the completion body was {body} bytes");
    assert!(files >= 1, "the older part went as a document");
    assert!(
        file_chars > 200_000,
        "the document holds the history: {file_chars}"
    );
    assert_eq!(stats["files"]["uploads"], files, "{}", stats["files"]);
    assert_eq!(stats["files"]["attached"], files);
    let metrics = String::from_utf8(h.state.metrics.render()).unwrap();
    assert!(
        metrics.contains("conversation_offloaded_turns_total 1"),
        "{metrics}"
    );

    // The same history again (a regeneration): the documents are not uploaded twice.
    let grants = stats["files"]["grants"].as_u64().unwrap();
    let r = h
        .chat(json!({"model": "qwen3.7-plus", "messages": long_history(300)}))
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let stats = h.sim_stats().await;
    assert_eq!(
        stats["files"]["grants"], grants,
        "cached per account and content"
    );
    assert!(turns(&stats).iter().all(|(body, _, _)| *body <= LIMIT));
    let metrics = String::from_utf8(h.state.metrics.render()).unwrap();
    assert!(
        metrics.contains("upstream_uploads_total{kind=\"document\",outcome=\"cached\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_parse_challenge_is_a_503_with_retry_after_and_no_turn_on_a_cut_history() {
    let h = Harness::start_with(&[], quick_sim()).await;
    // The account's parse step draws its challenge (armed by a small completion).
    let r = h
        .ask("qwen3.7-plus", "arm @@sim:parse_challenge=60", false)
        .await;
    assert_eq!(r.status, 200);
    let before = h.sim_stats().await["completions"].as_u64().unwrap();
    let r = h
        .chat(json!({"model": "qwen3.7-plus", "messages": long_history(200)}))
        .await;
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.error()["code"], "upstream_uploads_paused");
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((170..=180).contains(&retry), "{retry}");
    assert_eq!(r.headers["x-should-retry"], "true");
    let stats = h.sim_stats().await;
    assert_eq!(
        stats["completions"].as_u64().unwrap(),
        before,
        "no turn was sent"
    );
    assert_eq!(stats["files"]["parses_refused"], 1);
    // Asked again at once: refused without asking the parse step again (that would restart
    // its challenge).
    let r = h
        .chat(json!({"model": "qwen3.7-plus", "messages": long_history(200)}))
        .await;
    assert_eq!(r.status, 503);
    assert_eq!(h.sim_stats().await["files"]["parses_refused"], 1);
}

#[tokio::test]
async fn a_message_too_large_alone_goes_as_a_document_of_its_own() {
    let h = Harness::start_with(&[], quick_sim()).await;
    // The newest message alone is over the limit: it moves whole, its ends stay inline.
    let big: String = (0..13_000).map(|i| format!("row {i:05}\n")).collect();
    assert!(big.len() > 120_000);
    let r = h
        .chat(json!({"model": "qwen3.7-plus", "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": format!("Count the rows.\n{big}")}]}))
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let seen = turns(&h.sim_stats().await);
    assert_eq!(seen.len(), 1, "{seen:?}");
    let (body, files, file_chars) = seen[0];
    assert!(body <= LIMIT, "the completion body was {body} bytes");
    assert_eq!(files, 1);
    assert!(file_chars as usize > big.len(), "{file_chars}");
}

#[tokio::test]
async fn a_continued_chat_sends_a_huge_tool_result_as_a_document() {
    let h = Harness::start_with(&[], quick_sim()).await;
    let tools = json!([{"type": "function", "function": {"name": "read_log", "description": "Read the log.",
        "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}}}]);
    let first = json!({"model": "qwen3.7-plus", "tools": tools, "messages": [
        {"role": "user", "content": "What failed? @@sim:call=read_log,eyJwYXRoIjoiL3Zhci9sb2cvYXBwLmxvZyJ9"}]});
    let r = h.chat(first.clone()).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let message = r.json()["choices"][0]["message"].clone();
    let call_id = message["tool_calls"][0]["id"].as_str().unwrap().to_owned();
    let log: String = (0..10_000)
        .map(|i| format!("2026-12-07 INFO step {i} ok\n"))
        .collect();
    assert!(log.len() > 200_000);
    let mut messages = first["messages"].as_array().unwrap().clone();
    messages.push(message);
    messages.push(json!({"role": "tool", "tool_call_id": call_id, "content": log}));
    let r = h
        .chat(json!({"model": "qwen3.7-plus", "tools": tools, "messages": messages}))
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let stats = h.sim_stats().await;
    // One chat, continued: its second turn carried the result as a document.
    assert_eq!(stats["chats_created"], 1, "{stats}");
    let seen = turns(&stats);
    assert_eq!(seen.len(), 2, "{seen:?}");
    let (body, files, file_chars) = seen[1];
    assert!(body <= LIMIT, "the completion body was {body} bytes");
    assert_eq!(files, 1);
    assert!(file_chars as usize > log.len(), "{file_chars}");
}

#[tokio::test]
async fn what_cannot_fit_even_so_is_still_a_400() {
    let h = Harness::start_with(&[], quick_sim()).await;
    // The tools alone are over the limit: they never move (the model needs them to call).
    let tools: Vec<Value> = (0..60)
        .map(|i| {
            json!({"type": "function", "function": {"name": format!("tool_{i}"),
            "description": "d".repeat(2_500), "parameters": {"type": "object", "properties": {}}}})
        })
        .collect();
    let r = h
        .chat(
            json!({"model": "qwen3.7-plus", "tools": tools, "messages": [
            {"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    let e = r.error();
    assert_eq!(e["code"], "context_length_exceeded");
    assert_eq!(e["type"], "invalid_request_error");
    assert_eq!(e["param"], "messages");
    let message = e["message"].as_str().unwrap();
    assert!(
        message.contains("114688 bytes"),
        "names the limit: {message}"
    );
    let size: usize = message
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .expect("names the size");
    assert!(size > 114_688, "{message}");
    // Refused before any upstream call: no chat, no completion.
    let stats = h.sim_stats().await;
    assert_eq!(stats["chats_created"], 0);
    assert_eq!(stats["completion_requests"], 0);
}

/// The real first requests of the coding agents (`tests/fixtures/clients/`, live captures;
/// Claude Code's converted by hand from its Messages API body): each answered, with the
/// completion body the simulator measured under the limit. Run with `--nocapture` for the
/// sizes (the numbers).
#[tokio::test]
async fn the_real_first_requests_of_coding_agents_fit_under_the_limit() {
    for name in [
        "qwen-code-first-request.json",
        "cline-first-request.json",
        "opencode-first-request.json",
        "claude-code-first-request.openai.json",
        "claude-code-all-tools-first-request.openai.json",
    ] {
        let h = Harness::start_with(&[], quick_sim()).await;
        let raw = std::fs::read(support::fixtures_dir().join("../clients").join(name)).unwrap();
        let mut body: Value = serde_json::from_slice(&raw).unwrap();
        body["model"] = json!("qwen3.7-plus");
        let r = h.chat(body).await;
        assert_eq!(
            r.status,
            200,
            "{name}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let seen = turns(&h.sim_stats().await);
        assert_eq!(seen.len(), 1, "{name}: {seen:?}");
        let (upstream, files, file_chars) = seen[0];
        assert!(
            upstream <= LIMIT,
            "{name}: the completion body was {upstream} bytes"
        );
        eprintln!(
            "{name}: client body {} B -> upstream completion body {upstream} B, {files} document(s), {file_chars} chars in them",
            raw.len()
        );
    }
}
