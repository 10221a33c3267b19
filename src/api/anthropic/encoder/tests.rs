//! The encoder's output read as a strict client reads it: every event parsed, the block
//! state machine checked (client-apis-and-files.md C8, C9, C11), the message rebuilt.

use serde_json::{json, Value};

use super::*;
use crate::error::{UpstreamClass, UpstreamError};
use crate::turn::{Output, ResponseFormat, TurnRequest};

fn turn(model: &str, stop: &[&str]) -> TurnRequest {
    TurnRequest {
        model: model.to_owned(),
        messages: Vec::new(),
        stream: true,
        max_tokens: None,
        stop: stop.iter().map(|s| (*s).to_owned()).collect(),
        thinking: None,
        response_format: ResponseFormat::Text,
        tools: None,
        output: Output::Text,
        session: None,
        web_search: false,
    }
}

fn encoder(stop: &[&str], thinking: bool) -> MessageEncoder {
    let turn = turn("claude-sonnet-4-5", stop);
    let head = AnswerHead {
        id: "msg_0123",
        created: 1,
        turn: &turn,
    };
    MessageEncoder::new(
        &head,
        &Options {
            thinking,
            input_tokens: 1234,
        },
    )
}

fn usage(input: u64, output: u64) -> Usage {
    Usage {
        prompt_tokens: input,
        completion_tokens: output,
        reasoning_tokens: None,
        cached_tokens: None,
    }
}

/// Each event as (name, data): exactly `event: <name>\ndata: <json>\n\n`, and the data's
/// `type` is the event's name.
fn events(bytes: &[u8]) -> Vec<(String, Value)> {
    let text = std::str::from_utf8(bytes).unwrap();
    assert!(text.ends_with("\n\n"), "{text:?}");
    text[..text.len() - 2]
        .split("\n\n")
        .map(|e| {
            let (event, data) = e.split_once('\n').unwrap();
            let name = event.strip_prefix("event: ").unwrap();
            let data: Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
            assert_eq!(data["type"], name, "{e}");
            (name.to_owned(), data)
        })
        .collect()
}

/// What a strict client makes of a stream.
#[derive(Debug, Default)]
struct Read {
    /// The message as `message_start` gave it.
    start: Value,
    /// The blocks, as the non-streamed `content` would have them (a tool's input parsed
    /// from the concatenated `partial_json`).
    content: Vec<Value>,
    /// Each tool block's `partial_json` slices.
    slices: Vec<Vec<String>>,
    /// The one `message_delta`.
    delta: Option<Value>,
    stopped: bool,
    error: Option<Value>,
    pings: usize,
}

/// Reads the events, failing on whatever Claude Code refuses: not `message_start` first, a
/// second one, a block started at a wrong index or while another is open, a delta of
/// another block or of another type than its block's, a thinking block stopped without a
/// non-empty signature, a block open at `message_delta`, two `message_delta`s, anything
/// but `message_stop` after it, anything after `message_stop` or `error`.
fn read(events: &[(String, Value)]) -> Read {
    let mut r = Read::default();
    let mut open: Option<(usize, String)> = None;
    let mut json = String::new();
    let mut signature: Option<String> = None;
    for (i, (name, data)) in events.iter().enumerate() {
        assert!(!r.stopped && r.error.is_none(), "{name} after the end");
        if i == 0 {
            assert_eq!(name, "message_start");
        }
        match name.as_str() {
            "message_start" => {
                assert_eq!(i, 0, "a second message_start");
                r.start = data["message"].clone();
            }
            "ping" => r.pings += 1,
            "content_block_start" => {
                assert!(open.is_none(), "block started while {open:?} is open");
                assert!(r.delta.is_none(), "block after message_delta");
                assert_eq!(data["index"], r.content.len(), "indices are contiguous");
                let block = data["content_block"].clone();
                let kind = block["type"].as_str().unwrap().to_owned();
                match kind.as_str() {
                    "text" => assert_eq!(block, json!({"type": "text", "text": ""})),
                    "thinking" => {
                        assert_eq!(block, json!({"type": "thinking", "thinking": ""}));
                        signature = None;
                    }
                    "tool_use" => {
                        assert_eq!(block["input"], json!({}));
                        assert_eq!(block.as_object().unwrap().len(), 4, "{block}");
                        json.clear();
                        r.slices.push(Vec::new());
                    }
                    other => panic!("unknown block type {other}"),
                }
                open = Some((r.content.len(), kind));
                r.content.push(block);
            }
            "content_block_delta" => {
                let (index, kind) = open.as_ref().expect("delta without an open block");
                assert_eq!(data["index"], *index, "delta of another block");
                let delta = &data["delta"];
                let block = &mut r.content[*index];
                let field = |f: &str| delta[f].as_str().unwrap().to_owned();
                assert_eq!(delta.as_object().unwrap().len(), 2, "{delta}");
                match (kind.as_str(), delta["type"].as_str().unwrap()) {
                    ("text", "text_delta") => {
                        let text = block["text"].as_str().unwrap().to_owned() + &field("text");
                        block["text"] = text.into();
                    }
                    ("thinking", "thinking_delta") => {
                        assert!(signature.is_none(), "thinking after the signature");
                        let text =
                            block["thinking"].as_str().unwrap().to_owned() + &field("thinking");
                        block["thinking"] = text.into();
                    }
                    ("thinking", "signature_delta") => {
                        assert!(signature.is_none(), "two signatures");
                        signature = Some(field("signature"));
                    }
                    ("tool_use", "input_json_delta") => {
                        let slice = field("partial_json");
                        json.push_str(&slice);
                        if let Some(s) = r.slices.last_mut() {
                            s.push(slice);
                        }
                    }
                    (block, delta) => panic!("Mismatched content block type {delta} in {block}"),
                }
            }
            "content_block_stop" => {
                let (index, kind) = open.take().expect("stop without an open block");
                assert_eq!(data, &json!({"type": "content_block_stop", "index": index}));
                let block = &mut r.content[index];
                match kind.as_str() {
                    "thinking" => {
                        let s = signature.take().expect("thinking block without signature");
                        assert!(!s.is_empty(), "empty signature");
                        block["signature"] = s.into();
                    }
                    "tool_use" => block["input"] = serde_json::from_str(&json).unwrap(),
                    _ => {}
                }
            }
            "message_delta" => {
                assert!(open.is_none(), "message_delta with {open:?} open");
                assert!(r.delta.is_none(), "two message_delta events");
                r.delta = Some(data.clone());
            }
            "message_stop" => {
                assert!(r.delta.is_some(), "message_stop without message_delta");
                assert_eq!(data, &json!({"type": "message_stop"}));
                r.stopped = true;
            }
            "error" => r.error = Some(data.clone()),
            other => panic!("unknown event {other}"),
        }
    }
    r
}

/// The whole output of an encoder driven by `f`, then finished with `reason`, read.
fn stream(
    stop: &[&str],
    thinking: bool,
    reason: FinishReason,
    f: impl FnOnce(&mut MessageEncoder),
) -> Read {
    let mut e = encoder(stop, thinking);
    f(&mut e);
    e.finish(reason, usage(1500, 42));
    let r = read(&events(&e.take().unwrap()));
    assert!(r.stopped, "message_stop is last");
    r
}

#[test]
fn message_start_is_the_first_frame() {
    let mut e = encoder(&[], false);
    assert!(e.buffered() > 0);
    let first = e.take().unwrap();
    assert_eq!(e.buffered(), 0);
    assert_eq!(e.take(), None);
    let evs = events(&first);
    assert_eq!(evs.len(), 1);
    assert_eq!(evs[0].0, "message_start");
    assert_eq!(
        evs[0].1,
        json!({"type": "message_start", "message": {
            "id": "msg_0123", "type": "message", "role": "assistant",
            "model": "claude-sonnet-4-5", "content": [],
            "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 1234, "output_tokens": 0}}})
    );
}

#[test]
fn a_text_answer() {
    let mut e = encoder(&[], false);
    e.content("Hello");
    e.content(", world");
    e.finish(FinishReason::Complete, usage(1500, 42));
    let bytes = e.take().unwrap();
    let names: Vec<String> = events(&bytes).into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    let r = read(&events(&bytes));
    assert_eq!(r.content, [json!({"type": "text", "text": "Hello, world"})]);
    assert_eq!(
        r.delta.unwrap(),
        json!({"type": "message_delta",
               "delta": {"stop_reason": "end_turn", "stop_sequence": null},
               "usage": {"input_tokens": 1500, "output_tokens": 42}})
    );
}

#[test]
fn thinking_is_closed_by_a_signature_before_the_text() {
    let r = stream(&[], true, FinishReason::Complete, |e| {
        e.reasoning("ab");
        e.reasoning("c");
        e.content("4");
    });
    assert_eq!(
        r.content,
        [
            // base64 of SHA-256("abc") (FIPS 180-2's test vector ba7816bf…15ad): the same
            // signature the non-streamed body gives the same thinking.
            json!({"type": "thinking", "thinking": "abc",
                   "signature": "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0="}),
            json!({"type": "text", "text": "4"}),
        ]
    );
}

#[test]
fn text_then_thinking_then_text_opens_three_blocks() {
    let r = stream(&[], true, FinishReason::Complete, |e| {
        e.content("Let me think.");
        e.reasoning("Hmm.");
        e.content("Done.");
    });
    assert_eq!(r.content.len(), 3);
    assert_eq!(
        r.content[0],
        json!({"type": "text", "text": "Let me think."})
    );
    assert_eq!(r.content[1]["type"], "thinking");
    assert_eq!(r.content[1]["thinking"], "Hmm.");
    assert_eq!(r.content[2], json!({"type": "text", "text": "Done."}));
}

#[test]
fn reasoning_is_dropped_unless_thinking_was_asked_for() {
    let r = stream(&[], false, FinishReason::Complete, |e| {
        e.reasoning("secret");
        e.content("A");
        e.reasoning("more");
        e.content("B");
    });
    assert_eq!(r.content, [json!({"type": "text", "text": "AB"})]);
}

#[test]
fn each_tool_call_is_a_block_with_its_arguments_in_slices() {
    // 10,178 bytes of two-, three- and four-byte characters and escapes: the 4096-byte
    // cuts fall inside characters, so the slices are 4094, 4095 and 1989 bytes long.
    let long = format!(
        "{{\"file_path\":\"/tmp/a.md\",\"content\":\"{}\"}}",
        "é€😀\\n\\\"".repeat(780)
    );
    assert_eq!(long.len(), 10_178);
    let r = stream(&[], true, FinishReason::ToolCalls, |e| {
        e.content("Writing it.");
        e.tool_call(&ToolCall {
            name: "Write",
            arguments: &long,
        });
        e.tool_call(&ToolCall {
            name: "Bash",
            arguments: r#"{"command":"ls -la"}"#,
        });
    });
    assert_eq!(r.content.len(), 3);
    assert_eq!(r.content[0], json!({"type": "text", "text": "Writing it."}));
    let (write, bash) = (&r.content[1], &r.content[2]);
    assert_eq!(write["name"], "Write");
    assert_eq!(bash["name"], "Bash");
    assert_eq!(bash["input"], json!({"command": "ls -la"}));
    assert_eq!(write["input"]["file_path"], "/tmp/a.md");
    // Every slice at most 4096 bytes; together exactly the arguments.
    let lengths: Vec<usize> = r.slices[0].iter().map(String::len).collect();
    assert_eq!(lengths, [4094, 4095, 1989]);
    assert_eq!(r.slices[0].concat(), long);
    assert_eq!(r.slices[1], [r#"{"command":"ls -la"}"#]);
    let ids = [write["id"].as_str().unwrap(), bash["id"].as_str().unwrap()];
    for id in ids {
        assert!(id.starts_with("toolu_") && id.len() == 30, "{id}");
        assert!(id[6..].chars().all(|c| c.is_ascii_alphanumeric()), "{id}");
    }
    assert_ne!(ids[0], ids[1]);
    assert_eq!(r.delta.unwrap()["delta"]["stop_reason"], "tool_use");
}

#[test]
fn content_and_reasoning_after_a_tool_call_open_new_blocks() {
    let r = stream(&[], true, FinishReason::Complete, |e| {
        e.tool_call(&ToolCall {
            name: "Read",
            arguments: r#"{"file_path":"a"}"#,
        });
        e.reasoning("Now the answer.");
        e.tool_call(&ToolCall {
            name: "Read",
            arguments: r#"{"file_path":"b"}"#,
        });
        e.content("Both read.");
    });
    let kinds: Vec<&str> = r
        .content
        .iter()
        .map(|b| b["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["tool_use", "thinking", "tool_use", "text"]);
    assert_eq!(r.content[2]["input"], json!({"file_path": "b"}));
}

#[test]
fn one_message_delta_names_the_finish_reason() {
    let cases: [(FinishReason, Value, Value); 6] = [
        (FinishReason::Complete, json!("end_turn"), Value::Null),
        (FinishReason::Length, json!("max_tokens"), Value::Null),
        (FinishReason::ToolCalls, json!("tool_use"), Value::Null),
        (
            FinishReason::StopSequence(0),
            json!("stop_sequence"),
            json!("\n\nHuman:"),
        ),
        (
            FinishReason::StopSequence(1),
            json!("stop_sequence"),
            json!("\"END\""),
        ),
        // An index outside the request's list: an ordinary end.
        (
            FinishReason::StopSequence(2),
            json!("end_turn"),
            Value::Null,
        ),
    ];
    for (reason, stop_reason, sequence) in cases {
        let r = stream(&["\n\nHuman:", "\"END\""], false, reason, |e| {
            e.content("x")
        });
        assert_eq!(
            r.delta.unwrap(),
            json!({"type": "message_delta",
                   "delta": {"stop_reason": stop_reason, "stop_sequence": sequence},
                   "usage": {"input_tokens": 1500, "output_tokens": 42}}),
            "{reason:?}"
        );
    }
}

#[test]
fn the_end_is_written_once() {
    let mut e = encoder(&[], false);
    e.content("x");
    e.finish(FinishReason::Complete, usage(1, 1));
    e.finish(FinishReason::Length, usage(1, 1));
    e.content("late");
    e.reasoning("late");
    e.keep_alive();
    e.error(&ProxyError::Overloaded);
    let r = read(&events(&e.take().unwrap()));
    assert!(r.stopped && r.error.is_none());
    assert_eq!(r.content.len(), 1);
}

#[test]
fn an_answer_with_nothing_in_it_has_no_block() {
    let r = stream(&[], true, FinishReason::Complete, |e| {
        e.content("");
        e.reasoning("");
    });
    assert!(r.content.is_empty());
    // Empty pieces inside a block add no delta either.
    let mut e = encoder(&[], false);
    e.take();
    e.content("a");
    e.content("");
    let names: Vec<String> = events(&e.take().unwrap())
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, ["content_block_start", "content_block_delta"]);
}

#[test]
fn keep_alive_is_a_ping_event() {
    let mut e = encoder(&[], false);
    e.take();
    e.keep_alive();
    assert_eq!(
        e.take().unwrap(),
        Bytes::from_static(b"event: ping\ndata: {\"type\": \"ping\"}\n\n")
    );
    // Between deltas too, and the block stays open.
    e.content("a");
    e.keep_alive();
    e.content("b");
    e.finish(FinishReason::Complete, usage(1, 1));
    let mut all = BytesMut::new();
    all.put_slice(b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{}}\n\n");
    all.put_slice(&e.take().unwrap());
    let r = read(&events(&all));
    assert_eq!(r.pings, 1);
    assert_eq!(r.content, [json!({"type": "text", "text": "ab"})]);
}

#[test]
fn an_error_is_one_error_event_and_the_end() {
    let mut e = encoder(&[], true);
    e.reasoning("thinking");
    e.content("partial");
    let limit: ProxyError =
        UpstreamError::new(UpstreamClass::RateLimited, "Allowed usage exceeded").into();
    e.error(&limit);
    e.finish(FinishReason::Complete, usage(1, 1));
    e.keep_alive();
    let evs = events(&e.take().unwrap());
    let r = read(&evs);
    assert!(r.delta.is_none() && !r.stopped);
    let (name, data) = evs.last().unwrap();
    assert_eq!(name, "error");
    assert_eq!(data["type"], "error");
    assert_eq!(data["error"]["type"], "rate_limit_error");
    assert_eq!(data["error"]["message"], limit.message().as_str());
    assert_eq!(data.as_object().unwrap().len(), 2);
    assert_eq!(data["error"].as_object().unwrap().len(), 2);
    // Nothing is closed after the error: the text block's last event is its delta.
    assert_eq!(evs[evs.len() - 2].0, "content_block_delta");
}

#[test]
fn every_string_is_escaped() {
    let nasty = "\"quoted\" \\ back\nnew\tline \u{0} \u{1f} </script> é 😀 \u{2028}";
    let turn = turn(nasty, &[nasty]);
    let head = AnswerHead {
        id: "msg_\"x\"",
        created: 1,
        turn: &turn,
    };
    let mut e = MessageEncoder::new(
        &head,
        &Options {
            thinking: true,
            input_tokens: 0,
        },
    );
    e.reasoning(nasty);
    e.content(nasty);
    e.tool_call(&ToolCall {
        name: nasty,
        arguments: r#"{"s":"\"\\\n"}"#,
    });
    e.finish(FinishReason::StopSequence(0), usage(0, 0));
    let bytes = e.take().unwrap();
    // No raw newline inside any event's data line.
    for event in std::str::from_utf8(&bytes)
        .unwrap()
        .split_terminator("\n\n")
    {
        assert_eq!(event.lines().count(), 2, "{event:?}");
    }
    let r = read(&events(&bytes));
    assert_eq!(r.start["id"], "msg_\"x\"");
    assert_eq!(r.start["model"], nasty);
    assert_eq!(r.content[0]["thinking"], nasty);
    assert_eq!(r.content[1]["text"], nasty);
    assert_eq!(r.content[2]["name"], nasty);
    assert_eq!(r.content[2]["input"], json!({"s": "\"\\\n"}));
    assert_eq!(r.delta.unwrap()["delta"]["stop_sequence"], nasty);
}

#[test]
fn any_sequence_of_events_keeps_the_state_machine() {
    // A fixed pseudo-random walk over every kind of event (xorshift), read strictly.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..200 {
        let thinking = round % 3 != 0;
        let mut e = encoder(&["STOP"], thinking);
        let mut frames = BytesMut::new();
        let mut expect_blocks = 0usize;
        let mut last: Option<u64> = None;
        for _ in 0..next() % 12 {
            let op = next() % 5;
            match op {
                0 => e.content("t"),
                1 => e.reasoning("r"),
                2 => e.tool_call(&ToolCall {
                    name: "f",
                    arguments: "{}",
                }),
                3 => e.keep_alive(),
                _ => {
                    if let Some(b) = e.take() {
                        frames.put_slice(&b);
                    }
                }
            }
            // A block per change of kind (dropped reasoning is no kind).
            let kind = match op {
                0 => Some(0),
                1 if thinking => Some(1),
                2 => Some(2),
                _ => None,
            };
            if let Some(k) = kind {
                if last != Some(k) || k == 2 {
                    expect_blocks += 1;
                }
                last = Some(k);
            }
        }
        let reason = match next() % 4 {
            0 => FinishReason::Complete,
            1 => FinishReason::Length,
            2 => FinishReason::ToolCalls,
            _ => FinishReason::StopSequence((next() % 2) as usize),
        };
        if next() % 5 == 0 {
            e.error(&ProxyError::Internal("boom".into()));
        } else {
            e.finish(reason, usage(3, 4));
        }
        if let Some(b) = e.take() {
            frames.put_slice(&b);
        }
        let r = read(&events(&frames));
        assert!(r.stopped || r.error.is_some(), "round {round}");
        assert_eq!(r.content.len(), expect_blocks, "round {round}");
    }
}
