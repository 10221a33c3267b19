//! OpenAI SSE chunk encoder: writes `data: {chunk}\n\n` frames into one reused `BytesMut`.
//!
//! The constant part of every chunk (`id`, `object`, `created`, `model`) is serialised once
//! per stream into `head`; a content chunk then costs one `put_slice` of the head, a
//! `serde_json` string escape of the text, and a few literal slices. `take()` hands the
//! bytes written so far to the body as one frame.

use std::fmt::Write as _;

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::ProxyError;
use crate::translate::body::Render;
use crate::translate::state::{Emit, FinishReason, Usage};

#[derive(Debug)]
pub struct ChunkEncoder {
    /// `data: {"id":…,"object":"chat.completion.chunk","created":…,"model":…,"choices":`
    head: Bytes,
    include_usage: bool,
    buf: BytesMut,
    role_sent: bool,
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
        }
    }

    /// The first chunk: `delta: {"role":"assistant","content":""}` (sent once, lazily).
    fn ensure_role(&mut self) {
        if !self.role_sent {
            self.role_sent = true;
            self.open_choice();
            self.buf
                .put_slice(b"{\"role\":\"assistant\",\"content\":\"\"}");
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
        self.close_choice(Some(reason.as_str()));
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
        self.buf.put_slice(&err.to_json());
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

    fn has_output(&self) -> bool {
        !self.buf.is_empty()
    }
}

impl Emit for ChunkEncoder {
    fn reasoning(&mut self, text: &str) {
        self.delta(b"reasoning_content", text);
    }

    fn content(&mut self, text: &str) {
        self.delta(b"content", text);
    }
}

fn write_json_str(buf: &mut BytesMut, s: &str) {
    // Writing a `str` into a `BytesMut` cannot fail.
    let _ = serde_json::to_writer(buf.writer(), s);
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

    #[test]
    fn chunks_follow_the_openai_rules() {
        let mut e = ChunkEncoder::new("chatcmpl-1", 7, "qwen\"x", true);
        e.content("he said \"hi\"\n");
        e.reasoning("r");
        e.finish(
            FinishReason::Stop,
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
