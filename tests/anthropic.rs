//! Anthropic's Messages API through the real stack against the simulator: a whole message
//! and its stream (the block state machine a strict client checks), a tool-use round trip
//! on one upstream chat, thinking, `count_tokens`, the probes Claude Code sends, and errors
//! in Anthropic's shape — a prompt too long a 413 so Claude Code compacts.

// Tests: a failed unwrap is a failure with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::{json, Value};
use support::{expected_answer, quick_sim, Harness, Reply};

const MODEL: &str = "qwen3.7-plus";

async fn messages(h: &Harness, body: Value) -> Reply {
    h.post_raw(
        "/v1/messages?beta=true",
        "application/json",
        body.to_string(),
        &[("anthropic-version", "2023-06-01"), ("x-api-key", "unused")],
    )
    .await
}

/// `(event, data)` pairs of an Anthropic stream.
fn events(r: &Reply) -> Vec<(String, Value)> {
    let text = std::str::from_utf8(&r.body).unwrap();
    assert!(text.ends_with("\n\n"), "{text}");
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let mut lines = e.lines();
            let event = lines
                .next()
                .unwrap()
                .strip_prefix("event: ")
                .unwrap()
                .to_owned();
            let data: Value =
                serde_json::from_str(lines.next().unwrap().strip_prefix("data: ").unwrap())
                    .unwrap();
            assert_eq!(data["type"], event.as_str(), "{e}");
            (event, data)
        })
        .collect()
}

/// The blocks a strict client rebuilds from a stream, checking the state machine: one
/// `message_start` first, blocks opened, filled and closed in order with matching deltas, a
/// thinking block signed before it closes, one `message_delta`, `message_stop` last.
fn rebuild(evs: &[(String, Value)]) -> (Vec<Value>, Value) {
    assert_eq!(evs[0].0, "message_start", "{evs:?}");
    assert_eq!(evs.last().unwrap().0, "message_stop");
    let mut blocks: Vec<Value> = Vec::new();
    let mut open: Option<usize> = None;
    let mut signed = false;
    let mut delta = None;
    for (event, data) in &evs[1..evs.len() - 1] {
        match event.as_str() {
            "ping" => {}
            "content_block_start" => {
                assert!(open.is_none(), "a block opened inside another");
                let index = data["index"].as_u64().unwrap() as usize;
                assert_eq!(index, blocks.len(), "indices are contiguous");
                blocks.push(data["content_block"].clone());
                open = Some(index);
                signed = false;
            }
            "content_block_delta" => {
                let index = data["index"].as_u64().unwrap() as usize;
                assert_eq!(Some(index), open, "a delta for a block that is not open");
                let block = &mut blocks[index];
                let d = &data["delta"];
                match (block["type"].as_str().unwrap(), d["type"].as_str().unwrap()) {
                    ("text", "text_delta") => {
                        let t = format!(
                            "{}{}",
                            block["text"].as_str().unwrap(),
                            d["text"].as_str().unwrap()
                        );
                        block["text"] = json!(t);
                    }
                    ("thinking", "thinking_delta") => {
                        let t = format!(
                            "{}{}",
                            block["thinking"].as_str().unwrap(),
                            d["thinking"].as_str().unwrap()
                        );
                        block["thinking"] = json!(t);
                    }
                    ("thinking", "signature_delta") => {
                        assert!(!d["signature"].as_str().unwrap().is_empty());
                        signed = true;
                    }
                    ("tool_use", "input_json_delta") => {
                        let so_far = block
                            .get("partial")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_owned();
                        block["partial"] = json!(so_far + d["partial_json"].as_str().unwrap());
                    }
                    (b, d) => panic!("a {d} in a {b} block"),
                }
            }
            "content_block_stop" => {
                let index = data["index"].as_u64().unwrap() as usize;
                assert_eq!(Some(index), open);
                if blocks[index]["type"] == "thinking" {
                    assert!(signed, "a thinking block closed without its signature");
                }
                if blocks[index]["type"] == "tool_use" {
                    let partial = blocks[index]["partial"].as_str().unwrap().to_owned();
                    blocks[index]["input"] = serde_json::from_str(&partial).unwrap();
                }
                open = None;
            }
            "message_delta" => {
                assert!(delta.is_none(), "one message_delta only");
                assert!(open.is_none());
                delta = Some(data.clone());
            }
            other => panic!("unexpected event {other}"),
        }
    }
    (blocks, delta.expect("a message_delta"))
}

#[tokio::test]
async fn a_message_whole_and_streamed() {
    let h = Harness::start_with(&[], quick_sim()).await;
    let body = json!({"model": MODEL, "max_tokens": 1024,
        "system": [{"type": "text", "text": "x-anthropic-billing-header: cc_version=1;"}, {"type": "text", "text": "Be brief."}],
        "messages": [{"role": "user", "content": "Hello, Claude"}]});
    let r = messages(&h, body.clone()).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let m = r.json();
    assert_eq!(m["type"], "message");
    assert_eq!(m["role"], "assistant");
    assert_eq!(m["model"], MODEL);
    assert!(m["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(m["content"][0]["type"], "text");
    assert_eq!(m["content"][0]["text"], expected_answer("Hello, Claude"));
    assert_eq!(m["stop_reason"], "end_turn");
    assert!(m["usage"]["output_tokens"].as_u64().unwrap() > 0);

    let mut stream = body;
    stream["stream"] = json!(true);
    let r = messages(&h, stream).await;
    assert_eq!(r.status, 200);
    assert!(r.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let evs = events(&r);
    assert!(
        evs[0].1["message"]["usage"]["input_tokens"]
            .as_u64()
            .unwrap()
            > 0
    );
    let (blocks, delta) = rebuild(&evs);
    assert_eq!(blocks.len(), 1);
    assert_eq!(blocks[0]["text"], expected_answer("Hello, Claude"));
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
}

#[tokio::test]
async fn a_tool_use_round_trip_continues_one_chat() {
    let h = Harness::start_with(&[], quick_sim()).await;
    let tools = json!([{"name": "Read", "description": "Read a file",
        "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"}}, "required": ["file_path"]}}]);
    // eyJmaWxlX3BhdGgiOiJub3Rlcy50eHQifQ is {"file_path":"notes.txt"}.
    let first = json!({"role": "user", "content": "Read notes.txt @@sim:call=Read,eyJmaWxlX3BhdGgiOiJub3Rlcy50eHQifQ"});
    let r = messages(&h, json!({"model": MODEL, "max_tokens": 4096, "stream": true, "tools": tools, "messages": [first]})).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let (blocks, delta) = rebuild(&events(&r));
    assert_eq!(delta["delta"]["stop_reason"], "tool_use");
    let call = blocks
        .iter()
        .find(|b| b["type"] == "tool_use")
        .expect("a tool_use block");
    assert_eq!(call["name"], "Read");
    assert_eq!(call["input"], json!({"file_path": "notes.txt"}));
    let id = call["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("toolu_"));
    let assistant: Vec<Value> = blocks
        .iter()
        .map(|b| match b["type"].as_str().unwrap() {
            "tool_use" => {
                json!({"type": "tool_use", "id": b["id"], "name": b["name"], "input": b["input"]})
            }
            _ => b.clone(),
        })
        .collect();
    let r = messages(&h, json!({"model": MODEL, "max_tokens": 4096, "tools": tools, "messages": [
        first,
        {"role": "assistant", "content": assistant},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": id, "content": "line one\nline two"}]}]})).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["stop_reason"], "end_turn");
    let stats = h.sim_stats().await;
    assert_eq!(
        stats["chats_created"], 1,
        "the result continued the call's chat: {stats}"
    );
}

/// A session Claude Code names (its header, else `metadata.user_id`) scopes the
/// conversations: two sessions with equal histories each continue their own upstream chat,
/// and a third session never continues either.
#[tokio::test]
async fn each_named_session_continues_its_own_chat() {
    let h = Harness::start_with(&[], quick_sim()).await;
    let post = |body: Value, session: Option<&'static str>| {
        let h = &h;
        async move {
            let mut headers = vec![("anthropic-version", "2023-06-01")];
            headers.extend(session.map(|s| ("x-claude-code-session-id", s)));
            let r = h
                .post_raw(
                    "/v1/messages",
                    "application/json",
                    body.to_string(),
                    &headers,
                )
                .await;
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            r.json()["content"][0]["text"].as_str().unwrap().to_owned()
        }
    };
    let first = json!({"role": "user", "content": "Plan the release"});
    let turn = |history: Vec<Value>, user_id: Option<&str>| {
        let mut body = json!({"model": MODEL, "max_tokens": 1024, "messages": history});
        if let Some(id) = user_id {
            body["metadata"] =
                json!({"user_id": json!({"device_id": "d", "session_id": id}).to_string()});
        }
        body
    };
    // Session A by header, session B by metadata.user_id (Claude Code's JSON form).
    let answer = post(turn(vec![first.clone()], None), Some("session-a")).await;
    assert_eq!(
        post(turn(vec![first.clone()], Some("session-b")), None).await,
        answer
    );
    assert_eq!(h.sim_stats().await["chats_created"], 2);
    let second = vec![
        first,
        json!({"role": "assistant", "content": answer}),
        json!({"role": "user", "content": "And the changelog"}),
    ];
    post(turn(second.clone(), None), Some("session-a")).await;
    post(turn(second.clone(), Some("session-b")), None).await;
    assert_eq!(
        h.sim_stats().await["chats_created"],
        2,
        "each session continued its own chat"
    );
    post(turn(second, None), Some("session-c")).await;
    assert_eq!(
        h.sim_stats().await["chats_created"],
        3,
        "another session's history is not continued"
    );
}

#[tokio::test]
async fn thinking_is_a_signed_block_when_asked_and_dropped_when_not() {
    let h = Harness::start_with(&[], quick_sim()).await;
    let ask = |thinking: Value| {
        json!({"model": MODEL, "max_tokens": 2048, "stream": true, "thinking": thinking,
            "messages": [{"role": "user", "content": "Why is the sky blue? @@sim:think"}]})
    };
    let r = messages(&h, ask(json!({"type": "enabled", "budget_tokens": 1024}))).await;
    let (blocks, _) = rebuild(&events(&r));
    assert_eq!(blocks[0]["type"], "thinking");
    assert!(!blocks[0]["thinking"].as_str().unwrap().is_empty());
    assert_eq!(blocks.last().unwrap()["type"], "text");
    let r = messages(&h, ask(json!({"type": "disabled"}))).await;
    let (blocks, _) = rebuild(&events(&r));
    assert!(blocks.iter().all(|b| b["type"] == "text"), "{blocks:?}");
}

#[tokio::test]
async fn count_tokens_and_the_probes_answer_without_the_upstream() {
    let h = Harness::start_with(&[], quick_sim()).await;
    let r = h
        .post_raw(
            "/v1/messages/count_tokens?beta=true",
            "application/json",
            json!({"model": MODEL, "system": "s".repeat(4000),
                "messages": [{"role": "user", "content": "hi"}],
                "tools": [{"name": "Read", "input_schema": {"type": "object"}}]})
            .to_string(),
            &[],
        )
        .await;
    assert_eq!(r.status, 200);
    let n = r.json()["input_tokens"].as_u64().unwrap();
    assert!(n >= 1000, "the system text counts: {n}");
    for path in ["/", "/api/hello"] {
        let req = hyper::Request::head(h.url(path))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let r = Harness::read(h.send(req).await).await;
        assert_eq!(r.status, 200, "HEAD {path}");
    }
    assert_eq!(h.sim_stats().await["completion_requests"], 0);
    // Model discovery in Anthropic's list shape when the caller speaks Anthropic.
    let req = hyper::Request::get(h.url("/v1/models?limit=1000"))
        .header("anthropic-version", "2023-06-01")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let list = Harness::read(h.send(req).await).await.json();
    assert_eq!(list["data"][0]["type"], "model", "{list}");
    assert!(list["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["id"] == MODEL));
    assert_eq!(list["has_more"], false);
    assert_eq!(h.get("/v1/models").await.json()["object"], "list");
}

#[tokio::test]
async fn errors_come_in_anthropics_shape() {
    let h = Harness::start_with(&[], quick_sim()).await;
    // A bad request.
    let r = messages(
        &h,
        json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(r.status, 400);
    let e = r.json();
    assert_eq!(e["type"], "error");
    assert_eq!(e["error"]["type"], "invalid_request_error");
    assert!(e["error"]["message"]
        .as_str()
        .unwrap()
        .contains("max_tokens"));
    // An unknown model (no alias part in it either).
    let r = messages(&h, json!({"model": "no-such-model", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["type"], "not_found_error");
    // A prompt that cannot fit even as documents: 413 "prompt is too long" (Claude Code
    // compacts on it instead of retrying).
    let tools: Vec<Value> = (0..60)
        .map(|i| json!({"name": format!("tool_{i}"), "description": "d".repeat(2_500), "input_schema": {"type": "object"}}))
        .collect();
    let r = messages(&h, json!({"model": MODEL, "max_tokens": 5, "tools": tools, "messages": [{"role": "user", "content": "hi"}]})).await;
    assert_eq!(r.status, 413, "{}", String::from_utf8_lossy(&r.body));
    let e = r.json();
    assert_eq!(e["error"]["type"], "request_too_large");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("prompt is too long"),
        "{e}"
    );
    // A failure before the answer began is a status even when streamed (the stream's head,
    // `message_start`, is not the answer): a quota a 429 with `Retry-After`. (Its own
    // proxy: the quota rests the only account.)
    let limited = Harness::start_with(&[], quick_sim()).await;
    let r = messages(
        &limited,
        json!({"model": MODEL, "max_tokens": 50, "stream": true,
        "messages": [{"role": "user", "content": "go @@sim:rate_limited=2"}]}),
    )
    .await;
    assert_eq!(r.status, 429, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["error"]["type"], "rate_limit_error");
    assert!(r.headers.contains_key("retry-after"));
    // An upstream failure mid-stream: an `error` event.
    let r = messages(
        &h,
        json!({"model": MODEL, "max_tokens": 50, "stream": true,
        "messages": [{"role": "user", "content": "go @@sim:internal_error"}]}),
    )
    .await;
    let evs = events(&r);
    assert!(
        evs.iter()
            .any(|(e, d)| e == "error" && d["error"]["type"].is_string()),
        "{evs:?}"
    );
}

#[tokio::test]
async fn claude_model_names_are_served_by_their_aliases() {
    // The default MODEL_ALIASES: sonnet → qwen3.7-plus, haiku → its fast variant.
    let h = Harness::start_with(&[], quick_sim()).await;
    for model in [
        "claude-sonnet-4-5-20250929",
        "claude-haiku-4-5",
        "claude-opus-5-5",
    ] {
        let r = messages(
            &h,
            json!({"model": model, "max_tokens": 64,
            "messages": [{"role": "user", "content": "Title this chat"}]}),
        )
        .await;
        assert_eq!(
            r.status,
            200,
            "{model}: {}",
            String::from_utf8_lossy(&r.body)
        );
        // Answered under the name the client asked for.
        assert_eq!(r.json()["model"], model);
    }
    // An operator's own map replaces the default: a family it leaves out is unknown.
    let h = Harness::start_with(&[("MODEL_ALIASES", "sonnet=qwen3.7-plus")], quick_sim()).await;
    let ask = |model: &str| json!({"model": model, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(messages(&h, ask("claude-sonnet-4-5")).await.status, 200);
    assert_eq!(messages(&h, ask("claude-opus-5-5")).await.status, 404);
    // An alias to a model the catalogue lacks is no model either.
    let h = Harness::start_with(&[("MODEL_ALIASES", "claude=qwen9-ultra")], quick_sim()).await;
    assert_eq!(messages(&h, ask("claude-sonnet-4-5")).await.status, 404);
}
