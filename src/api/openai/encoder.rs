//! OpenAI SSE chunk encoder: writes `data: {chunk}\n\n` frames into one reused `BytesMut`.
//!
//! The constant part of every chunk (`id`, `object`, `created`, `model`) is serialised once
//! per stream into `head`; a content chunk then costs one `put_slice` of the head, a
//! `serde_json` string escape of the text, and a few literal slices. `take()` hands the
//! bytes written so far to the body as one frame.
//!
//! Tool calls follow the rules real client parsers enforce (tool-calling.md §1.3): per call
//! one chunk with `index`, `id`, `type`, `function.name` and `arguments: ""`, then the
//! arguments in slices of at most [`ARGUMENT_SLICE`] bytes, each chunk carrying only `index`
//! and `function.arguments`; indices contiguous from 0; ids unique. A request that used the
//! deprecated `functions` gets its one call as `delta.function_call` (name first, then the
//! argument slices) and the finish reason `function_call`.

use std::fmt::Write as _;

use bytes::{BufMut, Bytes, BytesMut};

use super::tools::CallShape;
use crate::api::{argument_slices, write_json_str};
use crate::error::ProxyError;
use crate::translate::body::Render;
use crate::translate::state::{Citation, Emit, FinishReason, ToolCall, Usage};

pub use crate::api::ARGUMENT_SLICE;

#[derive(Debug)]
pub struct ChunkEncoder {
    /// `data: {"id":…,"object":"chat.completion.chunk","created":…,"model":…,"choices":`
    head: Bytes,
    include_usage: bool,
    buf: BytesMut,
    role_sent: bool,
    /// Tool calls written so far (the next one's index).
    calls: usize,
    /// Annotations written so far (the next one's index).
    annotations: usize,
    call_shape: CallShape,
}

impl ChunkEncoder {
    pub fn new(id: &str, created: u64, model: &str, include_usage: bool) -> Self {
        // The literal parts below are under 128 bytes; ids and names may need escapes.
        let mut head = BytesMut::with_capacity(128 + 2 * (id.len() + model.len()));
        head.put_slice(b"data: {\"id\":");
        write_json_str(&mut head, id);
        head.put_slice(b",\"object\":\"chat.completion.chunk\",\"created\":");
        // `fmt::Write` for `BytesMut` cannot fail.
        let _ = write!(head, "{created}");
        head.put_slice(b",\"model\":");
        write_json_str(&mut head, model);
        head.put_slice(b",\"system_fingerprint\":null,\"choices\":");
        Self {
            head: head.freeze(),
            include_usage,
            // Room for a few chunks; `take()` hands out the written part and the space is
            // reclaimed once the body has written it (the buffer is then unique again).
            buf: BytesMut::with_capacity(1024),
            role_sent: false,
            calls: 0,
            annotations: 0,
            call_shape: CallShape::ToolCalls,
        }
    }

    /// Write calls in this shape (the default is `tool_calls`).
    pub fn with_call_shape(mut self, shape: CallShape) -> Self {
        self.call_shape = shape;
        self
    }

    /// The first chunk: `delta: {"role":"assistant","content":""}` (sent once, lazily), with
    /// `"content":null` when the reply opens with a call, as OpenAI sends it (accumulating
    /// SDKs then end with `content: None` for a reply that is only calls).
    fn ensure_role(&mut self) {
        self.ensure_role_with(b"{\"role\":\"assistant\",\"content\":\"\"}");
    }

    fn ensure_role_with(&mut self, delta: &[u8]) {
        if !self.role_sent {
            self.role_sent = true;
            self.open_choice();
            self.buf.put_slice(delta);
            self.close_choice(None);
        }
    }

    fn open_choice(&mut self) {
        self.buf.put_slice(&self.head);
        self.buf.put_slice(b"[{\"index\":0,\"delta\":");
    }

    fn close_choice(&mut self, finish: Option<&str>) {
        self.buf.put_slice(b",\"logprobs\":null,\"finish_reason\":");
        match finish {
            Some(reason) => {
                self.buf.put_u8(b'"');
                self.buf.put_slice(reason.as_bytes());
                self.buf.put_u8(b'"');
            }
            None => self.buf.put_slice(b"null"),
        }
        self.buf.put_u8(b'}');
        self.buf.put_u8(b']');
        if self.include_usage {
            self.buf.put_slice(b",\"usage\":null");
        }
        self.buf.put_slice(b"}\n\n");
    }

    fn delta(&mut self, field: &[u8], text: &str) {
        self.ensure_role();
        self.open_choice();
        self.buf.put_slice(b"{\"");
        self.buf.put_slice(field);
        self.buf.put_slice(b"\":");
        write_json_str(&mut self.buf, text);
        self.buf.put_u8(b'}');
        self.close_choice(None);
    }

    fn done(&mut self) {
        self.buf.put_slice(b"data: [DONE]\n\n");
    }
}

impl Render for ChunkEncoder {
    /// The last choice chunk: empty delta with the finish reason; then the usage chunk when
    /// `include_usage` was requested; then `[DONE]`.
    fn finish(&mut self, reason: FinishReason, usage: Usage) {
        self.ensure_role();
        self.open_choice();
        self.buf.put_slice(b"{}");
        self.close_choice(Some(finish_reason(reason, self.call_shape)));
        if self.include_usage {
            self.buf.put_slice(&self.head);
            self.buf.put_slice(b"[],\"usage\":");
            let json = serde_json::to_vec(&UsageJson::from(usage)).unwrap_or_default();
            self.buf.put_slice(&json);
            self.buf.put_slice(b"}\n\n");
        }
        self.done();
    }

    /// An error after the stream started: an OpenAI error event, then `[DONE]`.
    fn error(&mut self, err: &ProxyError) {
        self.buf.put_slice(b"data: ");
        self.buf.put_slice(&super::error::body(err));
        self.buf.put_slice(b"\n\n");
        self.done();
    }

    /// An SSE comment that keeps idle connections (nginx, clients) open.
    fn keep_alive(&mut self) {
        self.buf.put_slice(b": keep-alive\n\n");
    }

    /// Bytes written since the last call, as one body frame.
    fn take(&mut self) -> Option<Bytes> {
        (!self.buf.is_empty()).then(|| self.buf.split().freeze())
    }

    fn buffered(&self) -> usize {
        self.buf.len()
    }
}

impl Emit for ChunkEncoder {
    fn reasoning(&mut self, text: &str) {
        self.delta(b"reasoning_content", text);
    }

    /// One chunk per citation: `delta.annotations` with one entry carrying its `index` in the
    /// message's list (contiguous from 0), as list deltas are merged by the SDKs' stream
    /// accumulators (openai-python's refuses a list entry of objects without `index`).
    fn citation(&mut self, c: &Citation<'_>) {
        self.ensure_role();
        let index = self.annotations;
        self.annotations += 1;
        self.open_choice();
        let _ = write!(
            self.buf,
            "{{\"annotations\":[{{\"index\":{index},\"type\":\"url_citation\",\"url_citation\":{{\"url\":"
        );
        write_json_str(&mut self.buf, c.url);
        self.buf.put_slice(b",\"title\":");
        write_json_str(&mut self.buf, c.title);
        let _ = write!(
            self.buf,
            ",\"start_index\":{},\"end_index\":{}}}}}]}}",
            c.start, c.end
        );
        self.close_choice(None);
    }

    fn content(&mut self, text: &str) {
        self.delta(b"content", text);
    }

    fn tool_call(&mut self, call: &ToolCall<'_>) {
        self.ensure_role_with(b"{\"role\":\"assistant\",\"content\":null}");
        let index = self.calls;
        self.calls += 1;
        // The header: everything a parser needs to open the call, and empty arguments (never
        // a placeholder such as `{}`, which the AI SDK would take for the whole call).
        self.open_choice();
        let legacy = self.call_shape == CallShape::FunctionCall;
        if legacy {
            self.buf.put_slice(b"{\"function_call\":{\"name\":");
        } else {
            let _ = write!(
                self.buf,
                "{{\"tool_calls\":[{{\"index\":{index},\"id\":\"{}\"",
                call_id()
            );
            self.buf
                .put_slice(b",\"type\":\"function\",\"function\":{\"name\":");
        }
        write_json_str(&mut self.buf, call.name);
        self.buf.put_slice(if legacy {
            b",\"arguments\":\"\"}}".as_slice()
        } else {
            b",\"arguments\":\"\"}}]}"
        });
        self.close_choice(None);
        for slice in argument_slices(call.arguments) {
            self.open_choice();
            if legacy {
                self.buf.put_slice(b"{\"function_call\":{\"arguments\":");
            } else {
                let _ = write!(
                    self.buf,
                    "{{\"tool_calls\":[{{\"index\":{index},\"function\":{{\"arguments\":"
                );
            }
            write_json_str(&mut self.buf, slice);
            self.buf
                .put_slice(if legacy { b"}}".as_slice() } else { b"}}]}" });
            self.close_choice(None);
        }
    }
}

/// The finish reason as OpenAI names it (a stop sequence is a `stop` like any other end).
pub fn finish_reason(reason: FinishReason, shape: CallShape) -> &'static str {
    match (reason, shape) {
        (FinishReason::Complete | FinishReason::StopSequence(_), _) => "stop",
        (FinishReason::Length, _) => "length",
        (FinishReason::ToolCalls, CallShape::FunctionCall) => "function_call",
        (FinishReason::ToolCalls, CallShape::ToolCalls) => "tool_calls",
    }
}

/// `call_` and 24 random letters and digits, as OpenAI's ids look.
pub fn call_id() -> String {
    crate::common::random_id("call_")
}

/// The OpenAI `usage` object.
#[derive(Debug, serde::Serialize, PartialEq, Eq)]
pub struct UsageJson {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<CachedTokens>,
    pub completion_tokens_details: ReasoningTokens,
}

#[derive(Debug, serde::Serialize, PartialEq, Eq)]
pub struct CachedTokens {
    pub cached_tokens: u64,
}

#[derive(Debug, serde::Serialize, PartialEq, Eq)]
pub struct ReasoningTokens {
    pub reasoning_tokens: u64,
}

impl From<Usage> for UsageJson {
    fn from(u: Usage) -> Self {
        UsageJson {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.total_tokens(),
            prompt_tokens_details: u.cached_tokens.map(|c| CachedTokens { cached_tokens: c }),
            completion_tokens_details: ReasoningTokens {
                reasoning_tokens: u.reasoning_tokens.unwrap_or(0),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn events(bytes: &[u8]) -> Vec<Value> {
        std::str::from_utf8(bytes)
            .unwrap()
            .split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| {
                let data = e.strip_prefix("data: ").unwrap();
                if data == "[DONE]" {
                    Value::String("[DONE]".into())
                } else {
                    serde_json::from_str(data).unwrap()
                }
            })
            .collect()
    }

    /// The `delta` of every chunk before `[DONE]`.
    fn deltas(evs: &[Value]) -> Vec<&Value> {
        evs[..evs.len() - 1]
            .iter()
            .map(|ev| &ev["choices"][0]["delta"])
            .collect()
    }

    #[test]
    fn citations_are_annotation_deltas_indexed_from_zero() {
        let mut enc = ChunkEncoder::new("chatcmpl-1", 1, "m", false);
        enc.content("Sunny [[1]]");
        for (url, title) in [
            ("https://a.example/1", "A \"quoted\""),
            ("https://b.example/", "B"),
        ] {
            enc.citation(&Citation {
                url,
                title,
                start: 6,
                end: 11,
            });
        }
        enc.finish(FinishReason::Complete, Usage::default());
        let evs = events(&enc.take().unwrap());
        let d = deltas(&evs);
        assert_eq!(d[0]["role"], "assistant");
        assert_eq!(d[1]["content"], "Sunny [[1]]");
        assert_eq!(
            d[2]["annotations"],
            serde_json::json!([{"index": 0, "type": "url_citation", "url_citation": {
                "url": "https://a.example/1", "title": "A \"quoted\"", "start_index": 6, "end_index": 11}}])
        );
        assert_eq!(d[3]["annotations"][0]["index"], 1);
        assert_eq!(d[3]["annotations"][0]["url_citation"]["title"], "B");
        assert_eq!(evs[3]["choices"][0]["finish_reason"], Value::Null);
    }

    #[test]
    fn tool_calls_open_with_a_header_then_argument_slices() {
        let mut e = ChunkEncoder::new("chatcmpl-1", 7, "m", false);
        e.content("Let me check.");
        let long = format!("{{\"content\":\"{}\"}}", "é".repeat(3000));
        e.tool_call(&ToolCall {
            name: "write_file",
            arguments: &long,
        });
        e.tool_call(&ToolCall {
            name: "get_weather",
            arguments: "{\"city\":\"Paris\"}",
        });
        e.finish(FinishReason::ToolCalls, Usage::default());
        let evs = events(&e.take().unwrap());
        let deltas = deltas(&evs);
        assert_eq!(deltas[1]["content"], "Let me check.");
        let first = &deltas[2]["tool_calls"];
        assert_eq!(first.as_array().unwrap().len(), 1);
        assert_eq!(first[0]["index"], 0);
        assert_eq!(first[0]["type"], "function");
        assert_eq!(first[0]["function"]["name"], "write_file");
        assert_eq!(first[0]["function"]["arguments"], "");
        let id0 = first[0]["id"].as_str().unwrap().to_owned();
        assert!(id0.starts_with("call_") && id0.len() == 29, "{id0}");
        // 6,000+ bytes of arguments: two slices, each only index and arguments.
        let mut args = String::new();
        let mut i = 3;
        while deltas[i]["tool_calls"][0].get("id").is_none() {
            let entry = deltas[i]["tool_calls"][0].as_object().unwrap();
            assert_eq!(entry.len(), 2, "{entry:?}");
            assert_eq!(entry["index"], 0);
            args.push_str(entry["function"]["arguments"].as_str().unwrap());
            assert_eq!(entry["function"].as_object().unwrap().len(), 1);
            i += 1;
        }
        assert_eq!(i, 5, "two slices");
        assert_eq!(args, long);
        let second = &deltas[i]["tool_calls"][0];
        assert_eq!(second["index"], 1);
        assert_ne!(second["id"].as_str().unwrap(), id0);
        assert_eq!(
            deltas[i + 1]["tool_calls"][0]["function"]["arguments"],
            "{\"city\":\"Paris\"}"
        );
        assert_eq!(
            evs[evs.len() - 2]["choices"][0]["finish_reason"],
            "tool_calls"
        );
        assert_eq!(evs.last().unwrap(), &Value::String("[DONE]".into()));
    }

    #[test]
    fn the_deprecated_functions_api_gets_function_call_deltas() {
        let mut e =
            ChunkEncoder::new("chatcmpl-1", 7, "m", false).with_call_shape(CallShape::FunctionCall);
        e.tool_call(&ToolCall {
            name: "get_weather",
            arguments: "{\"city\":\"Paris\"}",
        });
        e.finish(FinishReason::ToolCalls, Usage::default());
        let evs = events(&e.take().unwrap());
        let deltas = deltas(&evs);
        assert_eq!(
            deltas[1],
            &serde_json::json!({"function_call": {"name": "get_weather", "arguments": ""}})
        );
        assert_eq!(
            deltas[2],
            &serde_json::json!({"function_call": {"arguments": "{\"city\":\"Paris\"}"}})
        );
        assert!(deltas.iter().all(|d| d.get("tool_calls").is_none()));
        // A reply that opens with a call has no content, not an empty one.
        assert_eq!(
            deltas[0],
            &serde_json::json!({"role": "assistant", "content": null})
        );
        assert_eq!(
            evs[evs.len() - 2]["choices"][0]["finish_reason"],
            "function_call"
        );
    }

    #[test]
    fn chunks_follow_the_openai_rules() {
        let mut e = ChunkEncoder::new("chatcmpl-1", 7, "qwen\"x", true);
        e.content("he said \"hi\"\n");
        e.reasoning("r");
        e.finish(
            FinishReason::Complete,
            Usage {
                prompt_tokens: 3,
                completion_tokens: 2,
                ..Usage::default()
            },
        );
        let evs = events(&e.take().unwrap());
        assert_eq!(evs.len(), 6);
        assert_eq!(
            evs[0]["choices"][0]["delta"],
            serde_json::json!({"role":"assistant","content":""})
        );
        assert_eq!(evs[1]["choices"][0]["delta"]["content"], "he said \"hi\"\n");
        assert_eq!(evs[2]["choices"][0]["delta"]["reasoning_content"], "r");
        assert_eq!(evs[3]["choices"][0]["finish_reason"], "stop");
        for ev in &evs[..4] {
            assert_eq!(ev["object"], "chat.completion.chunk");
            assert_eq!(ev["id"], "chatcmpl-1");
            assert_eq!(ev["model"], "qwen\"x");
            assert_eq!(ev["created"], 7);
            assert!(ev["usage"].is_null() && ev.get("usage").is_some());
        }
        assert_eq!(evs[4]["choices"], serde_json::json!([]));
        assert_eq!(evs[4]["usage"]["total_tokens"], 5);
        assert_eq!(evs[5], "[DONE]");
    }

    #[test]
    fn without_include_usage_there_is_no_usage_field() {
        let mut e = ChunkEncoder::new("c", 1, "m", false);
        e.content("x");
        e.finish(FinishReason::Length, Usage::default());
        let evs = events(&e.take().unwrap());
        assert_eq!(evs.len(), 4);
        assert!(evs.iter().take(3).all(|v| v.get("usage").is_none()));
        assert_eq!(evs[2]["choices"][0]["finish_reason"], "length");
    }
}
