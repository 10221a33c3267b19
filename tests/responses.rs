//! OpenAI's Responses API through the real stack against the simulator: a whole response
//! and its event stream, a Codex-style function-call round trip on one upstream chat
//! (`store: false`, the whole history each turn), `previous_response_id` and the AI SDK's
//! `item_reference` continuing the chat from stored responses, `GET`/`DELETE` of stored
//! ones, tools the proxy cannot run named in a header, the hosted web search on the
//! upstream's search, and errors (before the stream: OpenAI's shape; after: `response.failed`).

// Tests: a failed unwrap is a failure with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::{json, Value};
use support::{expected_answer, quick_sim, Harness, Reply};

const MODEL: &str = "qwen3.7-plus";

async fn responses(h: &Harness, body: Value) -> Reply {
    responses_with(h, body, &[]).await
}

async fn responses_with(h: &Harness, body: Value, headers: &[(&str, &str)]) -> Reply {
    h.post_raw(
        "/v1/responses",
        "application/json",
        body.to_string(),
        headers,
    )
    .await
}

/// The events of a stream, each checked to carry its type in both places.
fn events(r: &Reply) -> Vec<Value> {
    let text = std::str::from_utf8(&r.body).unwrap();
    assert!(text.ends_with("\n\n"), "{text}");
    text.split("\n\n")
        .filter(|e| !e.is_empty() && !e.starts_with(':'))
        .map(|e| {
            let (event, data) = e.split_once('\n').unwrap();
            let v: Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
            assert_eq!(event.strip_prefix("event: "), v["type"].as_str(), "{e}");
            v
        })
        .collect()
}

/// The final `response` of a stream (`response.completed`), after checking the numbering.
fn completed(r: &Reply) -> Value {
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let evs = events(r);
    for (n, e) in evs.iter().enumerate() {
        assert_eq!(e["sequence_number"], n as u64);
    }
    let last = evs.last().unwrap();
    assert_eq!(last["type"], "response.completed", "{last}");
    last["response"].clone()
}

/// The text of a response's message items.
fn output_text(response: &Value) -> String {
    response["output"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["type"] == "message")
        .flat_map(|i| i["content"].as_array().unwrap().iter())
        .map(|c| c["text"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn a_response_whole_and_streamed() {
    let h = Harness::start_with(&[], quick_sim()).await;
    let r = responses(
        &h,
        json!({"model": MODEL, "instructions": "Be brief.", "input": "Hello, Codex"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let whole = r.json();
    assert_eq!(whole["object"], "response");
    assert_eq!(whole["status"], "completed");
    assert!(whole["id"].as_str().unwrap().starts_with("resp_"));
    assert_eq!(whole["model"], MODEL);
    assert_eq!(output_text(&whole), expected_answer("Hello, Codex"));
    assert!(whole["usage"]["input_tokens"].as_u64().unwrap() > 0);
    assert!(whole["usage"]["total_tokens"].as_u64().unwrap() > 0);

    let r = responses(
        &h,
        json!({"model": MODEL, "input": [{"role": "user", "content": [{"type": "input_text", "text": "Hello, Codex"}]}], "stream": true}),
    )
    .await;
    let evs = events(&r);
    assert_eq!(evs[0]["type"], "response.created");
    let deltas: String = evs
        .iter()
        .filter(|e| e["type"] == "response.output_text.delta")
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    assert_eq!(deltas, expected_answer("Hello, Codex"));
    let done = completed(&r);
    assert_eq!(output_text(&done), deltas);
}

/// Codex: `store: false`, the whole history every turn; the second turn continues the
/// first's upstream chat, and the call comes back as Codex routes it.
#[tokio::test]
async fn a_codex_style_round_trip_continues_one_chat() {
    let h = Harness::start_with(&[], quick_sim()).await;
    let tools = json!([
        {"type": "function", "name": "exec_command", "parameters": {"type": "object",
            "properties": {"cmd": {"type": "string"}}, "required": ["cmd"]}},
        {"type": "web_search", "external_web_access": false}
    ]);
    // eyJjbWQiOiJjYXQgbm90ZXMudHh0In0 is {"cmd":"cat notes.txt"}.
    let user = json!({"type": "message", "role": "user", "content": [{"type": "input_text",
        "text": "Read notes.txt @@sim:call=exec_command,eyJjbWQiOiJjYXQgbm90ZXMudHh0In0"}]});
    let r = responses_with(
        &h,
        json!({"model": MODEL, "stream": true, "store": false, "tools": tools,
               "input": [{"role": "developer", "content": "You are Codex."}, user],
               "reasoning": {"summary": "auto"}, "include": ["reasoning.encrypted_content"],
               "prompt_cache_key": "thread-1"}),
        &[("session-id", "thread-1")],
    )
    .await;
    let first = completed(&r);
    let call = first["output"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["type"] == "function_call")
        .expect("a function call")
        .clone();
    assert_eq!(call["name"], "exec_command");
    let arguments: Value = serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(arguments, json!({"cmd": "cat notes.txt"}));
    assert!(call.get("namespace").is_none());
    // Codex replays every item it was given (ids included) and its own reasoning.
    let r = responses_with(
        &h,
        json!({"model": MODEL, "stream": true, "store": false, "tools": tools,
               "input": [
                   {"role": "developer", "content": "You are Codex."}, user,
                   {"type": "reasoning", "id": "rs_x", "summary": [], "encrypted_content": null},
                   call,
                   {"type": "function_call_output", "call_id": call["call_id"], "output": "alpha\nlast line here"}],
               "prompt_cache_key": "thread-1"}),
        &[("session-id", "thread-1")],
    )
    .await;
    let second = completed(&r);
    assert_eq!(output_text(&second), expected_answer("last line here"));
    let stats = h.sim_stats().await;
    assert_eq!(stats["chats_created"], 1, "one upstream chat: {stats}");
    assert_eq!(
        h.get(&format!("/v1/responses/{}", first["id"].as_str().unwrap()))
            .await
            .status,
        404,
        "store: false keeps nothing"
    );
}

/// `previous_response_id`: only the new input is sent; the proxy rebuilds the history
/// from the stored responses, and the conversation continues the same upstream chat.
#[tokio::test]
async fn previous_response_id_continues_the_chat_and_stored_responses_are_served() {
    let h = Harness::start_with(&[], quick_sim()).await;
    let tools = json!([{"type": "namespace", "name": "mcp__fs", "tools": [
        {"type": "function", "name": "read", "parameters": {"type": "object", "properties": {"path": {"type": "string"}}}}]}]);
    // eyJwYXRoIjoiYS50eHQifQ is {"path":"a.txt"}: the model calls the namespaced tool by
    // the flat name it was shown.
    let r = responses(
        &h,
        json!({"model": MODEL, "tools": tools, "instructions": "Use the tools.",
               "input": "Read a.txt @@sim:call=mcp__fs__read,eyJwYXRoIjoiYS50eHQifQ"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let first = r.json();
    let call = first["output"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["type"] == "function_call")
        .unwrap_or_else(|| panic!("a function call: {first}"));
    assert_eq!(call["namespace"], "mcp__fs", "{call}");
    assert_eq!(call["name"], "read");
    let id = first["id"].as_str().unwrap();
    let r = responses(
        &h,
        json!({"model": MODEL, "tools": tools, "instructions": "Use the tools.",
               "previous_response_id": id, "stream": true,
               "input": [{"type": "function_call_output", "call_id": call["call_id"], "output": "x\ny\nthe answer"}]}),
    )
    .await;
    let second = completed(&r);
    assert_eq!(output_text(&second), expected_answer("the answer"));
    assert_eq!(second["previous_response_id"], id);
    assert_eq!(h.sim_stats().await["chats_created"], 1);
    // A third turn from the second: the chain is followed back. (Instructions are not
    // inherited, OpenAI's rule: the same ones again keep the chat.)
    let r = responses(
        &h,
        json!({"model": MODEL, "tools": tools, "instructions": "Use the tools.",
               "previous_response_id": second["id"], "input": "Thanks"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(output_text(&r.json()), expected_answer("Thanks"));
    assert_eq!(h.sim_stats().await["chats_created"], 1);

    // Stored: GET returns the object, DELETE forgets it, then 404 in OpenAI's shape.
    let got = h.get(&format!("/v1/responses/{id}")).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.json()["output"], first["output"]);
    let deleted = h.delete(&format!("/v1/responses/{id}")).await;
    assert_eq!(deleted.status, 200);
    assert_eq!(
        deleted.json(),
        json!({"id": id, "object": "response", "deleted": true})
    );
    let gone = h.get(&format!("/v1/responses/{id}")).await;
    assert_eq!(gone.status, 404);
    assert_eq!(gone.json()["error"]["code"], "response_not_found");
    // A continuation of a forgotten response is a 400 naming the parameter.
    let r = responses(
        &h,
        json!({"model": MODEL, "previous_response_id": second["id"], "input": "more"}),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["param"], "previous_response_id");
    assert_eq!(r.json()["error"]["code"], "previous_response_not_found");
}

/// The AI SDK with `store` on sends earlier assistant text as `item_reference`.
#[tokio::test]
async fn item_references_resolve_to_the_stored_items() {
    let h = Harness::start_with(&[], quick_sim()).await;
    let r = responses(
        &h,
        json!({"model": MODEL, "input": [{"role": "user", "content": "Plan the trip"}]}),
    )
    .await;
    let first = r.json();
    let item = first["output"][0]["id"].as_str().unwrap().to_owned();
    let r = responses(
        &h,
        json!({"model": MODEL, "input": [
            {"role": "user", "content": "Plan the trip"},
            {"type": "item_reference", "id": item},
            {"role": "user", "content": "And the budget"}]}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(output_text(&r.json()), expected_answer("And the budget"));
    assert_eq!(
        h.sim_stats().await["chats_created"],
        1,
        "the referenced answer is the history the chat holds"
    );
    let r = responses(
        &h,
        json!({"model": MODEL, "input": [{"type": "item_reference", "id": "msg_unknown"}, {"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], "item_not_found");
}

#[tokio::test]
async fn hosted_tools_are_named_when_left_out_and_web_search_runs_upstream() {
    let h = Harness::start_with(&[], quick_sim()).await;
    let r = responses(
        &h,
        json!({"model": MODEL, "input": "hi", "tools": [
            {"type": "function", "name": "f"}, {"type": "file_search", "vector_store_ids": ["vs"]},
            {"type": "code_interpreter", "container": {"type": "auto"}}]}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.headers.get("x-qwen-proxy-ignored-tools").unwrap(),
        "file_search, code_interpreter"
    );
    // The hosted search alone: the upstream's own search, its sources as url_citation
    // annotations.
    let r = responses(
        &h,
        json!({"model": MODEL, "input": "Rust news", "tools": [{"type": "web_search"}]}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.headers.get("x-qwen-proxy-ignored-tools").is_none());
    let message = &r.json()["output"][0];
    let annotations = message["content"][0]["annotations"].as_array().unwrap();
    assert!(!annotations.is_empty(), "{message}");
    assert_eq!(annotations[0]["type"], "url_citation");
    assert!(annotations[0]["url"].as_str().unwrap().starts_with("http"));
}

#[tokio::test]
async fn errors_before_and_after_the_stream_began() {
    let h = Harness::start_with(&[], quick_sim()).await;
    let r = responses(&h, json!({"model": "nope", "input": "x"})).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "model_not_found");
    let r = responses(&h, json!({"model": MODEL})).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["param"], "input");
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    let r = h
        .post_raw("/v1/responses/resp_1", "application/json", "{}", &[])
        .await;
    assert_eq!(r.status, 405);
    // A failure before the answer began is a status even when streamed (the stream's
    // head, `response.created`, is not the answer). (Its own proxy: the quota rests the
    // only account.)
    let limited = Harness::start_with(&[], quick_sim()).await;
    let r = responses(
        &limited,
        json!({"model": MODEL, "stream": true, "input": "go @@sim:rate_limited=2"}),
    )
    .await;
    assert_eq!(r.status, 429, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["error"]["code"], "upstream_rate_limited");
    // An upstream failure mid-stream: `response.failed`, and the stream ends there.
    let r = responses(
        &h,
        json!({"model": MODEL, "stream": true, "input": "go @@sim:internal_error"}),
    )
    .await;
    assert_eq!(r.status, 200);
    let evs = events(&r);
    let last = evs.last().unwrap();
    assert_eq!(last["type"], "response.failed", "{evs:?}");
    assert_eq!(last["response"]["status"], "failed");
    assert!(last["response"]["error"]["code"].is_string());
}
