//! Non-streaming bodies: the whole answer as one `message`, and the model list in
//! Anthropic's shape.

use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;

use super::encoder::{signature, stop_reason, tool_use_id};
use super::Options;
use crate::translate::aggregate::Collected;
use crate::translate::state::{FinishReason, Usage};
use crate::turn::AnswerHead;

/// The whole answer as one `message`: its blocks in order — the thinking (when the client
/// asked for it and there is some), the text (when there is some), then one `tool_use` per
/// call. Empty text or thinking gets no block: an answer with nothing in it has
/// `content: []`, as the stream has no block then (see `encoder`).
pub fn message(
    head: &AnswerHead<'_>,
    options: &Options,
    answer: &Collected,
    reason: FinishReason,
    usage: Usage,
) -> Bytes {
    let mut content = Vec::with_capacity(2 + answer.tool_calls.len());
    if options.thinking && !answer.reasoning.is_empty() {
        content.push(Block::Thinking {
            thinking: &answer.reasoning,
            signature: signature(&answer.reasoning),
        });
    }
    if !answer.content.is_empty() {
        content.push(Block::Text {
            text: &answer.content,
        });
    }
    content.extend(
        answer
            .tool_calls
            .iter()
            .map(|(name, arguments)| Block::ToolUse {
                id: tool_use_id(),
                name,
                input: input(arguments),
            }),
    );
    let (stop_reason, stop_sequence) = stop_reason(reason, &head.turn.stop);
    let body = Message {
        id: head.id,
        kind: "message",
        role: "assistant",
        model: &head.turn.model,
        content,
        stop_reason,
        stop_sequence,
        usage: UsageJson {
            input_tokens: usage.prompt_tokens,
            output_tokens: usage.completion_tokens,
        },
    };
    Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
}

/// A call's `input`: its arguments as they are (a JSON object, key order and numbers kept
/// exactly), or `{}` when they are not an object. The engine only hands out validated
/// object arguments; Anthropic's `input` must be an object whatever happens.
fn input(arguments: &str) -> Option<Box<RawValue>> {
    serde_json::from_str::<Box<RawValue>>(arguments)
        .ok()
        .filter(|raw| raw.get().starts_with('{'))
}

fn empty_object<S: serde::Serializer>(
    input: &Option<Box<RawValue>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match input {
        Some(raw) => raw.serialize(s),
        None => serde_json::Map::new().serialize(s),
    }
}

#[derive(Debug, Serialize)]
struct Message<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    role: &'static str,
    model: &'a str,
    content: Vec<Block<'a>>,
    stop_reason: &'static str,
    stop_sequence: Option<&'a str>,
    usage: UsageJson,
}

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block<'a> {
    Thinking {
        thinking: &'a str,
        signature: String,
    },
    Text {
        text: &'a str,
    },
    ToolUse {
        id: String,
        name: &'a str,
        #[serde(serialize_with = "empty_object")]
        input: Option<Box<RawValue>>,
    },
}

#[derive(Debug, Serialize)]
struct UsageJson {
    input_tokens: u64,
    output_tokens: u64,
}

/// The model list (`GET /v1/models` for Anthropic clients): each model's id, display name
/// and creation time (Unix seconds, written in RFC 3339); one page, in the given order.
pub fn model_list(models: &[(&str, &str, u64)]) -> Bytes {
    #[derive(Serialize)]
    struct List<'a> {
        data: Vec<Model<'a>>,
        has_more: bool,
        first_id: Option<&'a str>,
        last_id: Option<&'a str>,
    }
    #[derive(Serialize)]
    struct Model<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        id: &'a str,
        display_name: &'a str,
        created_at: String,
    }
    let list = List {
        data: models
            .iter()
            .map(|&(id, display_name, created)| Model {
                kind: "model",
                id,
                display_name,
                created_at: crate::common::rfc3339(created),
            })
            .collect(),
        has_more: false,
        first_id: models.first().map(|m| m.0),
        last_id: models.last().map(|m| m.0),
    };
    Bytes::from(serde_json::to_vec(&list).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;
    use crate::turn::{Output, ResponseFormat, TurnRequest};

    fn turn(stop: &[&str]) -> TurnRequest {
        TurnRequest {
            model: "claude-sonnet-4-5".to_owned(),
            messages: Vec::new(),
            stream: false,
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

    fn body(
        stop: &[&str],
        thinking: bool,
        answer: &Collected,
        reason: FinishReason,
        usage: Usage,
    ) -> Value {
        let turn = turn(stop);
        let head = AnswerHead {
            id: "msg_1",
            created: 1,
            turn: &turn,
        };
        let options = Options {
            thinking,
            input_tokens: 999,
        };
        serde_json::from_slice(&message(&head, &options, answer, reason, usage)).unwrap()
    }

    fn usage(input: u64, output: u64) -> Usage {
        Usage {
            prompt_tokens: input,
            completion_tokens: output,
            reasoning_tokens: Some(3),
            cached_tokens: Some(2),
        }
    }

    #[test]
    fn a_text_answer() {
        let answer = Collected {
            content: "Hello \"world\"\n".to_owned(),
            reasoning: "hidden".to_owned(),
            ..Collected::default()
        };
        let v = body(&[], false, &answer, FinishReason::Complete, usage(12, 5));
        assert_eq!(
            v,
            json!({
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "model": "claude-sonnet-4-5",
                "content": [{"type": "text", "text": "Hello \"world\"\n"}],
                "stop_reason": "end_turn",
                "stop_sequence": null,
                "usage": {"input_tokens": 12, "output_tokens": 5}
            })
        );
    }

    #[test]
    fn thinking_comes_first_with_a_signature() {
        let answer = Collected {
            content: "4".to_owned(),
            reasoning: "abc".to_owned(),
            ..Collected::default()
        };
        let v = body(&[], true, &answer, FinishReason::Length, usage(1, 2));
        assert_eq!(
            v["content"],
            json!([
                // base64 of SHA-256("abc") (FIPS 180-2's test vector ba7816bf…15ad).
                {"type": "thinking", "thinking": "abc",
                 "signature": "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0="},
                {"type": "text", "text": "4"}
            ])
        );
        assert_eq!(v["stop_reason"], "max_tokens");
    }

    #[test]
    fn tool_calls_are_tool_use_blocks_with_object_input() {
        let answer = Collected {
            content: "Let me look.".to_owned(),
            tool_calls: vec![
                (
                    "Read".to_owned(),
                    r#"{"file_path":"/a.rs","limit":12345678901234567890123}"#.to_owned(),
                ),
                ("Bash".to_owned(), r#"{"command":"ls"}"#.to_owned()),
                ("Odd".to_owned(), "[1,2]".to_owned()),
                ("Broken".to_owned(), "{\"a\":".to_owned()),
            ],
            ..Collected::default()
        };
        let bytes = {
            let turn = turn(&[]);
            let head = AnswerHead {
                id: "msg_1",
                created: 1,
                turn: &turn,
            };
            message(
                &head,
                &Options::default(),
                &answer,
                FinishReason::ToolCalls,
                usage(1, 2),
            )
        };
        // The arguments are kept byte for byte (a number beyond f64 too).
        let text = std::str::from_utf8(&bytes).unwrap();
        assert!(
            text.contains(r#""input":{"file_path":"/a.rs","limit":12345678901234567890123}"#),
            "{text}"
        );
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        let content = v["content"].as_array().unwrap();
        assert_eq!(content.len(), 5);
        assert_eq!(content[0], json!({"type": "text", "text": "Let me look."}));
        assert_eq!(content[1]["type"], "tool_use");
        assert_eq!(content[1]["name"], "Read");
        assert_eq!(content[2]["name"], "Bash");
        assert_eq!(content[2]["input"], json!({"command": "ls"}));
        assert_eq!(content[3]["input"], json!({}));
        assert_eq!(content[4]["input"], json!({}));
        let ids: Vec<&str> = content[1..]
            .iter()
            .map(|b| b["id"].as_str().unwrap())
            .collect();
        for id in &ids {
            assert!(id.starts_with("toolu_") && id.len() == 30, "{id}");
            assert!(id[6..].chars().all(|c| c.is_ascii_alphanumeric()), "{id}");
        }
        assert_ne!(ids[0], ids[1]);
        assert_eq!(v["stop_reason"], "tool_use");
        assert_eq!(v["stop_sequence"], Value::Null);
    }

    #[test]
    fn a_stop_sequence_is_named_by_its_string() {
        let answer = Collected {
            content: "1, 2".to_owned(),
            ..Collected::default()
        };
        let v = body(
            &["\n\nHuman:", "3"],
            false,
            &answer,
            FinishReason::StopSequence(1),
            usage(1, 2),
        );
        assert_eq!(v["stop_reason"], "stop_sequence");
        assert_eq!(v["stop_sequence"], "3");
        // An index outside the list is an ordinary end.
        let v = body(
            &["3"],
            false,
            &answer,
            FinishReason::StopSequence(4),
            usage(1, 2),
        );
        assert_eq!(v["stop_reason"], "end_turn");
        assert_eq!(v["stop_sequence"], Value::Null);
    }

    #[test]
    fn an_empty_answer_has_no_blocks() {
        let v = body(
            &[],
            true,
            &Collected::default(),
            FinishReason::Complete,
            usage(1, 0),
        );
        assert_eq!(v["content"], json!([]));
    }

    #[test]
    fn the_model_list_has_anthropic_shape() {
        let v: Value = serde_json::from_slice(&model_list(&[
            (
                "claude-sonnet-4-5",
                "Claude Sonnet 4.5 (qwen3-max)",
                1_739_923_200,
            ),
            ("qwen3-coder-plus", "Qwen3 Coder Plus", 951_827_696),
        ]))
        .unwrap();
        assert_eq!(
            v,
            json!({
                "data": [
                    {"type": "model", "id": "claude-sonnet-4-5",
                     "display_name": "Claude Sonnet 4.5 (qwen3-max)",
                     "created_at": "2025-02-19T00:00:00Z"},
                    {"type": "model", "id": "qwen3-coder-plus",
                     "display_name": "Qwen3 Coder Plus",
                     "created_at": "2000-02-29T12:34:56Z"}
                ],
                "has_more": false,
                "first_id": "claude-sonnet-4-5",
                "last_id": "qwen3-coder-plus"
            })
        );
        let empty: Value = serde_json::from_slice(&model_list(&[])).unwrap();
        assert_eq!(
            empty,
            json!({"data": [], "has_more": false, "first_id": null, "last_id": null})
        );
    }
}
