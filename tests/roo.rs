//! Roo Code through the real stack against the simulator: the body Roo Code 3.51's "OpenAI
//! Compatible" provider sends with native tool calling (its default Code-mode tool set with
//! the strict schemas of `BaseProvider.convertToolsForOpenAI`, a system prompt and user
//! messages as parts with `cache_control`, assistant history with `reasoning_details` and
//! `tool_calls`, a tool result) is accepted, and the answer is accumulated the way Roo's
//! stream parser accumulates it. The fixture and where it comes from:
//! `tests/fixtures/clients/README.md`.

// Tests: a failed unwrap is a failure with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;

use serde_json::{json, Value};
use support::{expected_answer, summarize, Harness, Reply};

use qwen_proxy::common::base64url_encode;

fn fixture() -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/clients/roo-code-native-request.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("fixture {} is required: {e}", path.display()));
    serde_json::from_str(&text).expect("the fixture is JSON")
}

/// The last user message, as Roo sends it: an array of text parts (the last one carries
/// `cache_control`, Roo marks the last two user messages for prompt caching).
fn last_user_parts(body: &mut Value) -> &mut Vec<Value> {
    body["messages"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .rev()
        .find(|m| m["role"] == "user")
        .expect("a user message")["content"]
        .as_array_mut()
        .expect("Roo sends user content as parts")
}

/// The text of the last user message (its parts joined, as the proxy joins them).
fn last_user_text(body: &Value) -> String {
    let mut body = body.clone();
    last_user_parts(&mut body)
        .iter()
        .map(|p| p["text"].as_str().unwrap().to_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The fixture with a simulator directive appended to the last text part of the last
/// user message (the simulated model reads it as an instruction; the text stays Roo's).
fn with_directive(directive: &str) -> Value {
    let mut body = fixture();
    let parts = last_user_parts(&mut body);
    let last = parts
        .iter_mut()
        .rev()
        .find(|p| p["type"] == "text")
        .unwrap();
    let text = format!("{}\n\n{directive}", last["text"].as_str().unwrap());
    last["text"] = Value::String(text);
    body
}

/// `@@sim:call=NAME,<base64url of the arguments>`.
fn call_directive(name: &str, arguments: &Value) -> String {
    format!(
        "@@sim:call={name},{}",
        base64url_encode(arguments.to_string().as_bytes())
    )
}

/// The strict parameters schema the fixture offers for `name`.
fn offered_schema(body: &Value, name: &str) -> Value {
    body["tools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["function"]["name"] == name)
        .unwrap_or_else(|| panic!("the fixture offers {name}"))["function"]["parameters"]
        .clone()
}

/// A tiny check of a value against an OpenAI strict-mode schema (what Roo's
/// `convertToolSchemaForOpenAI` produces): types (a `["string", "null"]` union allows
/// null), `enum`, every `required` key present, no key outside `properties` when
/// `additionalProperties` is false, recursively through objects and array items.
fn check_strict(schema: &Value, value: &Value, at: &str) {
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let kind = match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    assert!(
        types.is_empty()
            || types.contains(&kind)
            || (kind == "integer" && types.contains(&"number")),
        "{at}: {value} is not of type {types:?}"
    );
    if let Some(allowed) = schema["enum"].as_array() {
        assert!(allowed.contains(value), "{at}: {value} not in {allowed:?}");
    }
    match value {
        Value::Object(obj) => {
            let props = schema["properties"]
                .as_object()
                .cloned()
                .unwrap_or_default();
            for key in schema["required"].as_array().into_iter().flatten() {
                let key = key.as_str().unwrap();
                assert!(obj.contains_key(key), "{at}: required `{key}` is missing");
            }
            if schema["additionalProperties"] == false {
                for key in obj.keys() {
                    assert!(
                        props.contains_key(key),
                        "{at}: `{key}` is not a property of the strict schema"
                    );
                }
            }
            for (key, v) in obj {
                if let Some(s) = props.get(key) {
                    check_strict(s, v, &format!("{at}.{key}"));
                }
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                check_strict(&schema["items"], v, &format!("{at}[{i}]"));
            }
        }
        _ => {}
    }
}

/// A call as Roo Code finalises it.
#[derive(Debug)]
struct RooCall {
    id: String,
    name: String,
    /// `JSON.parse` of the accumulated arguments.
    args: Value,
}

/// What Roo Code makes of a stream.
#[derive(Debug, Default)]
struct RooTurn {
    text: String,
    calls: Vec<RooCall>,
    finish: Option<String>,
    usage: Option<Value>,
}

/// Roo's per-index tracking state (`rawChunkTracker`).
#[derive(Debug)]
struct Tracked {
    id: String,
    name: String,
    started: bool,
    ended: bool,
    buffered: Vec<String>,
    arguments: String,
}

/// The stream accumulated the way Roo Code 3.51 does it, with the chunk-shape rules of
/// tool-calling.md §1.3 checked on the way.
///
/// Roo's side (RooCodeInc/Roo-Code): `src/api/providers/openai.ts` turns every entry of
/// `delta.tool_calls` into a `tool_call_partial {index, id, name, arguments}`;
/// `src/core/assistant-message/NativeToolCallParser.ts` then
/// * `processRawChunk`: tracks calls by `index`; an entry for an index not yet tracked is
///   dropped unless it carries an `id`; a `name` sets the name; the call starts once it
///   has a name (arguments that came earlier are buffered, then flushed); a non-empty
///   `arguments` string is appended to the call (JavaScript truthiness: `""` adds nothing);
/// * `processFinishReason`: `finish_reason == "tool_calls"` ends every tracked call;
///   `finalizeRawChunks` ends the started ones still open when the stream ends;
/// * `parseToolCall` on the end: the name must be one of Roo's tools (resolved through its
///   aliases; here: one the request offered), the arguments are `JSON.parse`d (`""` is
///   `{}`), and the tool's `nativeArgs` must be buildable — else the call is rejected
///   (checked per tool by `roo_native_args`).
fn roo_turn(r: &Reply, offered: &[String]) -> RooTurn {
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.headers["content-type"], "text/event-stream");
    let events = r.events();
    // [DONE], one id/created/model, the role once, error events: the harness's rules.
    let summary = summarize(&events);
    assert!(summary.error.is_none(), "error event: {:?}", summary.error);

    let mut turn = RooTurn::default();
    let mut tracker: BTreeMap<u64, Tracked> = BTreeMap::new();
    let chunks = &events[..events.len() - 1];
    for (i, ev) in chunks.iter().enumerate() {
        let choices = ev["choices"].as_array().expect("choices is an array");
        let Some(choice) = choices.first() else {
            // include_usage: the usage chunk has no choices and comes last, before [DONE].
            assert_eq!(i, chunks.len() - 1, "the usage chunk is the last one: {ev}");
            turn.usage = Some(ev["usage"].clone());
            continue;
        };
        assert_eq!(choices.len(), 1, "{ev}");
        let delta = &choice["delta"];
        if let Some(c) = delta["content"].as_str() {
            turn.text.push_str(c);
        }
        for entry in delta["tool_calls"].as_array().into_iter().flatten() {
            let e = entry.as_object().unwrap();
            let index = e["index"].as_u64().expect("every entry has an index");
            let id = e.get("id").and_then(Value::as_str);
            let name = e
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str);
            let args = e
                .get("function")
                .and_then(|f| f.get("arguments"))
                .and_then(Value::as_str);
            // The OpenAI shape: a header (index, id, type, name, arguments ""), then
            // chunks of only index + arguments.
            if let Some(id) = id {
                assert!(!tracker.contains_key(&index), "one header per call: {ev}");
                assert_eq!(e["type"], "function", "{ev}");
                assert!(
                    name.is_some_and(|n| !n.is_empty()),
                    "the header names the tool: {ev}"
                );
                assert_eq!(args, Some(""), "a header opens with empty arguments: {ev}");
                assert!(!id.is_empty());
            } else {
                assert_eq!(e.len(), 2, "only index and function.arguments: {ev}");
                assert_eq!(e["function"].as_object().unwrap().len(), 1, "{ev}");
                assert!(args.is_some(), "{ev}");
            }
            // Roo's processRawChunk.
            if let (Some(id), false) = (id, tracker.contains_key(&index)) {
                tracker.insert(
                    index,
                    Tracked {
                        id: id.to_owned(),
                        name: name.unwrap_or_default().to_owned(),
                        started: false,
                        ended: false,
                        buffered: Vec::new(),
                        arguments: String::new(),
                    },
                );
            }
            let Some(t) = tracker.get_mut(&index) else {
                panic!("Roo drops a chunk for an index it has no id for: {ev}");
            };
            assert!(!t.ended, "a chunk after the call ended: {ev}");
            if let Some(n) = name.filter(|n| !n.is_empty()) {
                t.name = n.to_owned();
            }
            if !t.started && !t.name.is_empty() {
                t.started = true;
                let buffered = std::mem::take(&mut t.buffered);
                t.arguments.extend(buffered);
            }
            if let Some(a) = args.filter(|a| !a.is_empty()) {
                if t.started {
                    t.arguments.push_str(a);
                } else {
                    t.buffered.push(a.to_owned());
                }
            }
        }
        if let Some(f) = choice["finish_reason"].as_str() {
            assert!(turn.finish.is_none(), "one finish reason");
            turn.finish = Some(f.to_owned());
            // Roo's processFinishReason.
            if f == "tool_calls" {
                for t in tracker.values_mut() {
                    t.ended = true;
                }
            }
        }
    }
    // Roo's finalizeRawChunks, then parseToolCall for every ended call.
    for (_, t) in tracker {
        assert!(t.started, "a call that never got a name is never run");
        assert!(
            offered.contains(&t.name),
            "Roo rejects a tool it does not have: {}",
            t.name
        );
        let args = if t.arguments.is_empty() {
            json!({})
        } else {
            serde_json::from_str(&t.arguments)
                .unwrap_or_else(|e| panic!("JSON.parse fails ({e}): {}", t.arguments))
        };
        turn.calls.push(RooCall {
            id: t.id,
            name: t.name,
            args,
        });
    }
    turn
}

/// `parseToolCall`'s per-tool `nativeArgs` (NativeToolCallParser.ts, 3.46+): without them
/// Roo reports the call as invalid ("Native tool calls require a valid JSON payload
/// matching the tool schema") instead of running it.
fn roo_native_args(call: &RooCall) -> Value {
    let a = &call.args;
    match call.name.as_str() {
        // New format `{path, mode, offset, limit, indentation}`; the legacy `{files: […]}`
        // is still accepted by Roo but not what its schema asks for.
        "read_file" => {
            let path = a["path"].as_str().expect("read_file needs a string `path`");
            let indentation = &a["indentation"];
            json!({
                "path": path,
                "mode": a["mode"],
                "offset": a["offset"],
                "limit": a["limit"],
                "indentation": {
                    "anchor_line": indentation["anchor_line"],
                    "max_levels": indentation["max_levels"],
                    "max_lines": indentation["max_lines"],
                    "include_siblings": indentation["include_siblings"],
                    "include_header": indentation["include_header"],
                },
            })
        }
        // `if (args.result)`: a non-empty string.
        "attempt_completion" => {
            let result = a["result"].as_str().unwrap_or_default();
            assert!(!result.is_empty(), "attempt_completion needs a `result`");
            json!({ "result": result })
        }
        other => panic!("not modelled here: {other}"),
    }
}

fn offered_names(body: &Value) -> Vec<String> {
    body["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap().to_owned())
        .collect()
}

fn assert_usage(turn: &RooTurn) {
    let usage = turn
        .usage
        .as_ref()
        .expect("stream_options.include_usage: a usage chunk before [DONE]");
    for key in ["prompt_tokens", "completion_tokens", "total_tokens"] {
        assert!(usage[key].as_u64().is_some(), "usage.{key}: {usage}");
    }
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 0, "{usage}");
}

/// A call in the shape Roo's strict `read_file` schema requires: every property present
/// (`convertToolSchemaForOpenAI` lists them all in `required`), `indentation` complete.
fn read_file_args() -> Value {
    json!({
        "path": "src/range.test.ts",
        "mode": "slice",
        "offset": 1,
        "limit": 2000,
        "indentation": {
            "anchor_line": 1,
            "max_levels": 0,
            "include_siblings": false,
            "include_header": true,
            "max_lines": 2000
        }
    })
}

#[test]
fn the_fixture_is_the_request_roo_sends() {
    let body = fixture();
    assert_eq!(body["stream"], true);
    assert_eq!(body["stream_options"], json!({"include_usage": true}));
    assert_eq!(body["tool_choice"], "auto");
    assert_eq!(body["parallel_tool_calls"], true);
    let names = offered_names(&body);
    assert_eq!(
        names,
        [
            "apply_diff",
            "ask_followup_question",
            "attempt_completion",
            "execute_command",
            "list_files",
            "new_task",
            "read_command_output",
            "read_file",
            "skill",
            "search_files",
            "switch_mode",
            "update_todo_list",
            "write_to_file"
        ]
    );
    for tool in body["tools"].as_array().unwrap() {
        let f = &tool["function"];
        assert_eq!(f["strict"], true, "{}", f["name"]);
        // Strict: every property required, no additional ones, at every object level.
        fn strict_objects(schema: &Value, at: &str) {
            if let Some(props) = schema["properties"].as_object() {
                let required: Vec<&str> = schema["required"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|k| k.as_str().unwrap())
                    .collect();
                let keys: Vec<&str> = props.keys().map(String::as_str).collect();
                assert_eq!(required, keys, "{at}");
                assert_eq!(schema["additionalProperties"], false, "{at}");
                for (k, p) in props {
                    strict_objects(p, &format!("{at}.{k}"));
                    strict_objects(&p["items"], &format!("{at}.{k}[]"));
                }
            }
        }
        strict_objects(&f["parameters"], f["name"].as_str().unwrap());
    }
    let messages = body["messages"].as_array().unwrap();
    assert_eq!(messages[0]["role"], "system");
    assert_eq!(
        messages[0]["content"][0]["cache_control"]["type"],
        "ephemeral"
    );
    let assistant = &messages[2];
    assert_eq!(assistant["content"], "");
    assert!(assistant["reasoning_details"].is_array());
    assert_eq!(assistant["tool_calls"][0]["function"]["name"], "read_file");
    assert_eq!(messages[3]["role"], "tool");
    assert_eq!(
        messages[3]["tool_call_id"],
        assistant["tool_calls"][0]["id"]
    );
    // The history's own call satisfies the strict schema it was made under.
    let history_args: Value = serde_json::from_str(
        assistant["tool_calls"][0]["function"]["arguments"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    check_strict(
        &offered_schema(&body, "read_file"),
        &history_args,
        "history",
    );
    check_strict(
        &offered_schema(&body, "read_file"),
        &read_file_args(),
        "read_file_args",
    );
}

#[tokio::test]
async fn a_roo_request_gets_a_read_file_call_roo_accepts() {
    let h = Harness::start().await;
    let args = read_file_args();
    let body = with_directive(&call_directive("read_file", &args));
    let offered = offered_names(&body);
    let turn = roo_turn(&h.chat(body.clone()).await, &offered);

    assert_eq!(turn.calls.len(), 1, "{turn:?}");
    let call = &turn.calls[0];
    assert_eq!(call.name, "read_file");
    assert!(call.id.starts_with("call_"), "{}", call.id);
    assert_eq!(call.args, args);
    check_strict(&offered_schema(&body, "read_file"), &call.args, "read_file");
    assert_eq!(roo_native_args(call)["path"], "src/range.test.ts");
    assert_eq!(turn.finish.as_deref(), Some("tool_calls"));
    assert!(
        !turn.text.contains("TOOL"),
        "no marker leaks: {:?}",
        turn.text
    );
    assert_usage(&turn);
}

#[tokio::test]
async fn a_roo_request_gets_an_attempt_completion_roo_accepts() {
    let h = Harness::start().await;
    let args = json!({"result": "range() now includes `end`, as documented; src/range.test.ts covers range(1, 5) and range(3, 3)."});
    let body = with_directive(&call_directive("attempt_completion", &args));
    let offered = offered_names(&body);
    let turn = roo_turn(&h.chat(body.clone()).await, &offered);

    assert_eq!(turn.calls.len(), 1, "{turn:?}");
    let call = &turn.calls[0];
    assert_eq!(call.name, "attempt_completion");
    assert!(call.id.starts_with("call_"), "{}", call.id);
    assert_eq!(call.args, args);
    check_strict(
        &offered_schema(&body, "attempt_completion"),
        &call.args,
        "attempt_completion",
    );
    assert_eq!(roo_native_args(call), args);
    assert_eq!(turn.finish.as_deref(), Some("tool_calls"));
    assert_usage(&turn);
}

#[tokio::test]
async fn a_roo_request_without_a_call_gets_a_plain_answer() {
    let h = Harness::start().await;
    let body = fixture();
    let turn = roo_turn(&h.chat(body.clone()).await, &offered_names(&body));

    assert!(turn.calls.is_empty(), "{turn:?}");
    assert_eq!(turn.text, expected_answer(&last_user_text(&body)));
    assert_eq!(turn.finish.as_deref(), Some("stop"));
    assert_usage(&turn);
}
