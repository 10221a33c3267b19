//! The encoder's output read as a strict client reads it (the Codex CLI and the AI SDK,
//! client-apis-and-files.md §2.1 R5, §2.3): every event parsed, the item lifecycle and
//! the sequence numbers checked, the output rebuilt from deltas and compared with the
//! items the events say are done and with the final `response`.

use std::sync::Arc;

use serde_json::{json, Value};

use super::*;
use crate::api::responses::tools::{self, Tools};
use crate::error::{UpstreamClass, UpstreamError};
use crate::turn::{Output, ResponseFormat, TurnRequest};

fn turn() -> TurnRequest {
    TurnRequest {
        model: "qwen3.7-plus".to_owned(),
        messages: Vec::new(),
        stream: true,
        max_tokens: None,
        stop: Vec::new(),
        thinking: None,
        response_format: ResponseFormat::Text,
        tools: None,
        output: Output::Text,
        session: None,
        web_search: false,
    }
}

/// Options with a namespace and a custom tool declared.
fn options(reasoning: bool) -> Options {
    let declared: Value = json!({"tools": [
        {"type": "function", "name": "exec_command"},
        {"type": "custom", "name": "apply_patch"},
        {"type": "namespace", "name": "mcp__fs", "tools": [{"type": "function", "name": "read"}]},
    ]});
    let Tools { names, .. } = tools::parse(declared.as_object().unwrap()).unwrap();
    Options {
        names: Arc::new(names),
        reasoning,
        input_tokens: 10,
        echo: Arc::new(Echo::default()),
        store: false,
        previous_response_id: None,
        references: Vec::new(),
        instructions: false,
        sink: None,
    }
}

fn encoder(reasoning: bool) -> ResponseEncoder {
    let turn = turn();
    let head = AnswerHead {
        id: "resp_1",
        created: 7,
        turn: &turn,
    };
    ResponseEncoder::streamed(&head, &options(reasoning))
}

fn events(enc: &mut ResponseEncoder) -> Vec<Value> {
    let mut text = String::new();
    while let Some(b) = enc.take() {
        text.push_str(std::str::from_utf8(&b).unwrap());
    }
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

/// A strict reader: the lifecycle checked, the items rebuilt from their events. Returns
/// the items as rebuilt and the final event.
fn read(evs: &[Value]) -> (Vec<Value>, Value) {
    for (n, e) in evs.iter().enumerate() {
        assert_eq!(e["sequence_number"], n as u64, "numbered from 0: {e}");
    }
    assert_eq!(evs[0]["type"], "response.created");
    assert_eq!(evs[0]["response"]["status"], "in_progress");
    assert_eq!(evs[1]["type"], "response.in_progress");
    let last = evs.last().unwrap().clone();
    let mut items: Vec<Value> = Vec::new();
    // The item being written, its accumulated text or arguments, and whether it is done.
    let mut open: Option<(usize, String)> = None;
    for e in &evs[2..evs.len() - 1] {
        let kind = e["type"].as_str().unwrap();
        let at = e["output_index"].as_u64().map(|i| i as usize);
        match kind {
            "response.output_item.added" => {
                assert!(open.is_none(), "an item added while another is open: {e}");
                assert_eq!(at, Some(items.len()), "output indices are contiguous");
                let item = e["item"].clone();
                assert!(item["id"].as_str().is_some_and(|i| !i.is_empty()));
                items.push(item);
                open = Some((items.len() - 1, String::new()));
            }
            "response.output_item.done" => {
                let (index, text) = open.take().expect("done without an open item");
                assert_eq!(at, Some(index));
                let done = &e["item"];
                assert_eq!(done["id"], items[index]["id"]);
                match done["type"].as_str().unwrap() {
                    "message" => {
                        assert_eq!(done["status"], "completed");
                        assert_eq!(done["content"][0]["text"], text.as_str());
                    }
                    "reasoning" => assert_eq!(done["summary"][0]["text"], text.as_str()),
                    "function_call" => {
                        assert_eq!(done["status"], "completed");
                        assert_eq!(done["arguments"], text.as_str());
                        assert!(done["call_id"].as_str().unwrap().starts_with("call_"));
                    }
                    "custom_tool_call" => assert_eq!(done["input"], text.as_str()),
                    other => panic!("unknown item {other}"),
                }
                items[index] = done.clone();
            }
            _ => {
                let (index, text) = open.as_mut().expect("an event outside an item");
                assert_eq!(at, Some(*index), "{e}");
                assert_eq!(e["item_id"], items[*index]["id"], "{e}");
                let item_kind = items[*index]["type"].as_str().unwrap();
                match (item_kind, kind) {
                    ("message", "response.output_text.delta")
                    | ("reasoning", "response.reasoning_summary_text.delta")
                    | ("function_call", "response.function_call_arguments.delta")
                    | ("custom_tool_call", "response.custom_tool_call_input.delta") => {
                        text.push_str(e["delta"].as_str().unwrap())
                    }
                    ("message", "response.output_text.done") => {
                        assert_eq!(e["text"], text.as_str())
                    }
                    ("function_call", "response.function_call_arguments.done") => {
                        assert_eq!(e["arguments"], text.as_str())
                    }
                    ("custom_tool_call", "response.custom_tool_call_input.done") => {
                        assert_eq!(e["input"], text.as_str())
                    }
                    ("reasoning", "response.reasoning_summary_text.done") => {
                        assert_eq!(e["text"], text.as_str())
                    }
                    ("message", "response.content_part.added" | "response.content_part.done")
                    | ("message", "response.output_text.annotation.added")
                    | (
                        "reasoning",
                        "response.reasoning_summary_part.added"
                        | "response.reasoning_summary_part.done",
                    ) => {}
                    other => panic!("{other:?} is not an event of that item"),
                }
            }
        }
    }
    // A failure ends the stream where it is (OpenAI's too): only a finished answer closes
    // every item.
    assert!(
        open.is_none() || last["type"] == "response.failed",
        "an item left open at the end"
    );
    (items, last)
}

#[test]
fn text_reasoning_and_calls_make_a_whole_lifecycle() {
    let mut enc = encoder(true);
    enc.reasoning("Let me ");
    enc.reasoning("look.");
    enc.content("I'll ");
    enc.content("check — 检查.");
    enc.tool_call(&ToolCall {
        name: "mcp__fs__read",
        arguments: r#"{"path":"a"}"#,
    });
    enc.tool_call(&ToolCall {
        name: "apply_patch",
        arguments: r#"{"input":"*** Begin Patch\n*** End Patch"}"#,
    });
    enc.finish(
        FinishReason::ToolCalls,
        Usage {
            prompt_tokens: 10,
            completion_tokens: 5,
            reasoning_tokens: Some(2),
            cached_tokens: None,
        },
    );
    let evs = events(&mut enc);
    let (items, last) = read(&evs);
    let kinds: Vec<&str> = items.iter().map(|i| i["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["reasoning", "message", "function_call", "custom_tool_call"]
    );
    assert_eq!(items[0]["summary"][0]["text"], "Let me look.");
    assert_eq!(items[1]["content"][0]["text"], "I'll check — 检查.");
    assert_eq!(
        items[2]["namespace"], "mcp__fs",
        "the namespace and the short name"
    );
    assert_eq!(items[2]["name"], "read");
    assert_eq!(items[3]["input"], "*** Begin Patch\n*** End Patch");
    assert_eq!(last["type"], "response.completed");
    let response = &last["response"];
    assert_eq!(response["status"], "completed");
    assert_eq!(response["id"], "resp_1");
    assert_eq!(response["output"], Value::Array(items));
    assert_eq!(
        response["usage"],
        json!({"input_tokens": 10, "input_tokens_details": {"cached_tokens": 0},
               "output_tokens": 5, "output_tokens_details": {"reasoning_tokens": 2}, "total_tokens": 15})
    );
}

#[test]
fn reasoning_is_dropped_unless_asked_and_a_cut_answer_is_incomplete() {
    let mut enc = encoder(false);
    enc.reasoning("hidden");
    enc.content("partial");
    enc.finish(FinishReason::Length, Usage::default());
    let evs = events(&mut enc);
    let (items, last) = read(&evs);
    assert_eq!(items.len(), 1, "no reasoning item: {items:?}");
    assert_eq!(last["type"], "response.incomplete");
    assert_eq!(last["response"]["status"], "incomplete");
    assert_eq!(
        last["response"]["incomplete_details"]["reason"],
        "max_output_tokens"
    );
}

#[test]
fn citations_are_annotations_of_their_message() {
    let mut enc = encoder(false);
    enc.content("Rust is fast");
    enc.citation(&Citation {
        url: "https://a.example",
        title: "A",
        start: 8,
        end: 12,
    });
    enc.finish(FinishReason::Complete, Usage::default());
    let evs = events(&mut enc);
    let added = evs
        .iter()
        .find(|e| e["type"] == "response.output_text.annotation.added")
        .unwrap();
    let expected = json!({"type": "url_citation", "start_index": 8, "end_index": 12,
                          "url": "https://a.example", "title": "A"});
    assert_eq!(added["annotation"], expected);
    let (items, _) = read(&evs);
    assert_eq!(items[0]["content"][0]["annotations"], json!([expected]));
}

#[test]
fn errors_in_a_stream_are_response_failed_with_codes_codex_classifies() {
    let failed = |e: ProxyError| {
        let mut enc = encoder(false);
        enc.content("so far");
        enc.error(&e);
        enc.finish(FinishReason::Complete, Usage::default());
        let evs = events(&mut enc);
        let last = evs.last().unwrap().clone();
        assert_eq!(last["type"], "response.failed", "nothing after it");
        assert_eq!(last["response"]["status"], "failed");
        last["response"]["error"].clone()
    };
    let limited: ProxyError = UpstreamError::new(UpstreamClass::RateLimited, "slow down")
        .with_retry_after(Some(std::time::Duration::from_secs(30)))
        .into();
    let e = failed(limited);
    assert_eq!(e["code"], "rate_limit_exceeded");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .ends_with("Please try again in 30s."),
        "{e}"
    );
    let e = failed(ProxyError::ContextLengthExceeded { size: 10, limit: 5 });
    assert_eq!(e["code"], "context_length_exceeded");
    assert_eq!(
        failed(UpstreamError::new(UpstreamClass::ServerError, "boom").into())["code"],
        "server_error"
    );
    assert_eq!(
        failed(UpstreamError::new(UpstreamClass::ContentFilter, "no").into())["code"],
        "invalid_prompt"
    );
    assert_eq!(
        failed(ProxyError::NoUsableAccount {
            summary: "2 invalid".to_owned(),
            retry_after_secs: None
        })["code"],
        "insufficient_quota"
    );
}

#[test]
fn the_whole_body_is_the_streams_final_response() {
    let answer = Collected {
        content: "Hello".to_owned(),
        reasoning: "Think".to_owned(),
        tool_calls: vec![("exec_command".to_owned(), r#"{"cmd":"ls"}"#.to_owned())],
        citations: Vec::new(),
        images: Vec::new(),
    };
    let turn = turn();
    let head = AnswerHead {
        id: "resp_1",
        created: 7,
        turn: &turn,
    };
    let body: Value = serde_json::from_slice(&whole(
        &head,
        &options(true),
        &answer,
        FinishReason::ToolCalls,
        Usage::default(),
    ))
    .unwrap();
    let mut enc = encoder(true);
    enc.reasoning("Think");
    enc.content("Hello");
    enc.tool_call(&ToolCall {
        name: "exec_command",
        arguments: r#"{"cmd":"ls"}"#,
    });
    enc.finish(FinishReason::ToolCalls, Usage::default());
    let streamed = events(&mut enc).last().unwrap()["response"].clone();
    // Equal but for the random item and call ids.
    let strip = |mut v: Value| {
        for item in v["output"].as_array_mut().unwrap() {
            item["id"] = Value::Null;
            if item.get("call_id").is_some() {
                item["call_id"] = Value::Null;
            }
        }
        v
    };
    assert_eq!(strip(body), strip(streamed));
}

#[test]
fn random_walks_keep_the_lifecycle() {
    // A fixed pseudo-random walk over every kind of event (xorshift), read strictly.
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..200 {
        let mut enc = encoder(round % 2 == 0);
        for _ in 0..(next() % 12) {
            match next() % 5 {
                0 => enc.reasoning("r\"é"),
                1 => enc.content("c\n文"),
                2 => enc.content(""),
                3 => enc.tool_call(&ToolCall {
                    name: "exec_command",
                    arguments: r#"{"cmd":"echo \"hi\""}"#,
                }),
                _ => enc.tool_call(&ToolCall {
                    name: "apply_patch",
                    arguments: r#"{"input":"x"}"#,
                }),
            }
        }
        match next() % 3 {
            0 => enc.error(&ProxyError::Internal("x".to_owned())),
            1 => enc.finish(FinishReason::Length, Usage::default()),
            _ => enc.finish(FinishReason::Complete, Usage::default()),
        }
        let evs = events(&mut enc);
        let (_, last) = read(&evs);
        let kind = last["type"].as_str().unwrap();
        assert!(
            matches!(
                kind,
                "response.completed" | "response.incomplete" | "response.failed"
            ),
            "round {round}: ended with {kind}"
        );
    }
}
