//! Anthropic SSE event encoder: writes `event: <type>\ndata: {json}\n\n` frames into one
//! reused `BytesMut`; `take()` hands the bytes written so far to the body as one frame.
//!
//! The stream is Anthropic's block state machine, as strict clients (Claude Code) check it
//! (client-apis-and-files.md C8, C9, C11):
//!
//! ```text
//!   message_start
//!   ( content_block_start(index i) → deltas of the block's own type → content_block_stop )*
//!   message_delta (exactly one: stop_reason, stop_sequence, usage)
//!   message_stop
//! ```
//!
//! * Block indices are contiguous from 0; at most one block is open, and every delta names
//!   it. A change of kind (text after thinking, thinking after text, a tool call) closes the
//!   open block and opens the next: never a thinking delta inside a text block.
//! * A `thinking` block is closed by a non-empty `signature_delta` ([`signature`]).
//! * A tool call is a block of its own: `tool_use` with `input: {}`, then its arguments as
//!   `input_json_delta` slices of at most [`ARGUMENT_SLICE`] bytes, then its stop.
//! * An error after the stream began is one `error` event, and nothing after it.
//!
//! An answer with nothing in it (which the engine does not finish with: an empty upstream
//! answer is an error) gets no block at all — `content: []`, as Anthropic itself sends an
//! empty `end_turn` answer — rather than an empty `text` block, which Anthropic refuses on
//! replay ("text content blocks must be non-empty"). Empty pieces of text or reasoning are
//! skipped for the same reason: they never open a block.

use std::fmt::Write as _;

use bytes::{BufMut, Bytes, BytesMut};
use sha2::{Digest, Sha256};

use super::Options;
use crate::api::{argument_slices, write_json_str};
use crate::error::ProxyError;
use crate::translate::body::Render;
use crate::translate::state::{Emit, FinishReason, ToolCall, Usage};
use crate::turn::AnswerHead;

pub use crate::api::ARGUMENT_SLICE;

/// The block that is open, if one is.
#[derive(Debug)]
enum Open {
    None,
    Text,
    /// A thinking block, and the hash of its text so far (its signature, once closed).
    Thinking(Sha256),
}

#[derive(Debug)]
pub struct MessageEncoder {
    buf: BytesMut,
    /// The request's stop sequences (`stop_sequence` names the one that ended the answer).
    stop: Vec<String>,
    /// Whether reasoning goes out as thinking blocks (otherwise it is dropped).
    thinking: bool,
    open: Open,
    /// Blocks started so far: the next block's index.
    blocks: usize,
    /// `finish` or `error` was written: nothing more goes out.
    ended: bool,
}

impl MessageEncoder {
    /// The encoder of one answer; `message_start` is written at once, so it is the first
    /// frame `take()` hands out.
    pub fn new(head: &AnswerHead<'_>, options: &Options) -> Self {
        let model = &head.turn.model;
        let mut buf = BytesMut::with_capacity(1024 + 2 * (head.id.len() + model.len()));
        buf.put_slice(
            b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":",
        );
        write_json_str(&mut buf, head.id);
        buf.put_slice(b",\"type\":\"message\",\"role\":\"assistant\",\"model\":");
        write_json_str(&mut buf, model);
        // `fmt::Write` for `BytesMut` cannot fail.
        let _ = write!(
            buf,
            ",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\
             \"usage\":{{\"input_tokens\":{},\"output_tokens\":0}}}}}}\n\n",
            options.input_tokens
        );
        Self {
            buf,
            stop: head.turn.stop.clone(),
            thinking: options.thinking,
            open: Open::None,
            blocks: 0,
            ended: false,
        }
    }

    /// The index of the open block (the last one started).
    fn index(&self) -> usize {
        self.blocks.saturating_sub(1)
    }

    /// `content_block_start` of the next block, up to its `content_block` object (which the
    /// caller writes, then `end_event`).
    fn start_block(&mut self) {
        let index = self.blocks;
        self.blocks += 1;
        let _ = write!(
            self.buf,
            "event: content_block_start\ndata: {{\"type\":\"content_block_start\",\"index\":{index},\"content_block\":"
        );
    }

    fn end_event(&mut self) {
        self.buf.put_slice(b"}\n\n");
    }

    /// `content_block_delta` of the open block, up to the delta's own fields.
    fn open_delta(&mut self, kind: &str) {
        let index = self.index();
        let _ = write!(
            self.buf,
            "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":{index},\"delta\":{{\"type\":\"{kind}\","
        );
    }

    /// Close the open block: a thinking block gets its signature first.
    fn close_block(&mut self) {
        match std::mem::replace(&mut self.open, Open::None) {
            Open::None => return,
            Open::Text => {}
            Open::Thinking(hash) => {
                self.open_delta("signature_delta");
                self.buf.put_slice(b"\"signature\":");
                write_json_str(&mut self.buf, &encode_signature(hash));
                self.buf.put_u8(b'}');
                self.end_event();
            }
        }
        self.stop_block();
    }

    /// `content_block_stop` of the last block started.
    fn stop_block(&mut self) {
        let index = self.index();
        let _ = write!(
            self.buf,
            "event: content_block_stop\ndata: {{\"type\":\"content_block_stop\",\"index\":{index}}}\n\n"
        );
    }
}

impl Emit for MessageEncoder {
    /// A `thinking_delta`, in a thinking block opened for it when another kind is open.
    /// Dropped unless the client asked for thinking.
    fn reasoning(&mut self, text: &str) {
        if self.ended || !self.thinking || text.is_empty() {
            return;
        }
        if !matches!(self.open, Open::Thinking(_)) {
            self.close_block();
            self.start_block();
            self.buf
                .put_slice(b"{\"type\":\"thinking\",\"thinking\":\"\"}");
            self.end_event();
            self.open = Open::Thinking(Sha256::new());
        }
        if let Open::Thinking(hash) = &mut self.open {
            hash.update(text.as_bytes());
        }
        self.open_delta("thinking_delta");
        self.buf.put_slice(b"\"thinking\":");
        write_json_str(&mut self.buf, text);
        self.buf.put_u8(b'}');
        self.end_event();
    }

    /// A `text_delta`, in a text block opened for it when another kind is open.
    fn content(&mut self, text: &str) {
        if self.ended || text.is_empty() {
            return;
        }
        if !matches!(self.open, Open::Text) {
            self.close_block();
            self.start_block();
            self.buf.put_slice(b"{\"type\":\"text\",\"text\":\"\"}");
            self.end_event();
            self.open = Open::Text;
        }
        self.open_delta("text_delta");
        self.buf.put_slice(b"\"text\":");
        write_json_str(&mut self.buf, text);
        self.buf.put_u8(b'}');
        self.end_event();
    }

    /// A whole `tool_use` block: its start (`input: {}`), the arguments in slices cut on
    /// character boundaries whose concatenation is exactly the arguments, its stop.
    fn tool_call(&mut self, call: &ToolCall<'_>) {
        if self.ended {
            return;
        }
        self.close_block();
        self.start_block();
        self.buf.put_slice(b"{\"type\":\"tool_use\",\"id\":");
        write_json_str(&mut self.buf, &tool_use_id());
        self.buf.put_slice(b",\"name\":");
        write_json_str(&mut self.buf, call.name);
        self.buf.put_slice(b",\"input\":{}}");
        self.end_event();
        for slice in argument_slices(call.arguments) {
            self.open_delta("input_json_delta");
            self.buf.put_slice(b"\"partial_json\":");
            write_json_str(&mut self.buf, slice);
            self.buf.put_u8(b'}');
            self.end_event();
        }
        self.stop_block();
    }
}

impl Render for MessageEncoder {
    /// Close the open block, then the one `message_delta` (stop reason, usage) and
    /// `message_stop`.
    fn finish(&mut self, reason: FinishReason, usage: Usage) {
        if self.ended {
            return;
        }
        self.ended = true;
        self.close_block();
        let (stop_reason, sequence) = stop_reason(reason, &self.stop);
        let _ = write!(
            self.buf,
            "event: message_delta\ndata: {{\"type\":\"message_delta\",\"delta\":{{\"stop_reason\":\"{stop_reason}\",\"stop_sequence\":"
        );
        match sequence {
            Some(s) => write_json_str(&mut self.buf, s),
            None => self.buf.put_slice(b"null"),
        }
        let _ = write!(
            self.buf,
            "}},\"usage\":{{\"input_tokens\":{},\"output_tokens\":{}}}}}\n\n",
            usage.prompt_tokens, usage.completion_tokens
        );
        self.buf
            .put_slice(b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
    }

    /// An `error` event and nothing after it (no block stop, no `message_delta`).
    fn error(&mut self, e: &ProxyError) {
        if self.ended {
            return;
        }
        self.ended = true;
        self.buf.put_slice(b"event: error\ndata: ");
        self.buf.put_slice(&super::error::body(e));
        self.buf.put_slice(b"\n\n");
    }

    /// A `ping` event, as Anthropic keeps idle streams open.
    fn keep_alive(&mut self) {
        if !self.ended {
            self.buf
                .put_slice(b"event: ping\ndata: {\"type\": \"ping\"}\n\n");
        }
    }

    /// Bytes written since the last call, as one body frame.
    fn take(&mut self) -> Option<Bytes> {
        (!self.buf.is_empty()).then(|| self.buf.split().freeze())
    }

    fn buffered(&self) -> usize {
        self.buf.len()
    }
}

/// `stop_reason` and `stop_sequence` as Anthropic names them: a stop sequence by its string
/// in the request's list (an index outside it is an ordinary `end_turn`).
pub fn stop_reason(reason: FinishReason, stop: &[String]) -> (&'static str, Option<&str>) {
    match reason {
        FinishReason::Complete => ("end_turn", None),
        FinishReason::StopSequence(i) => match stop.get(i) {
            Some(s) => ("stop_sequence", Some(s.as_str())),
            None => ("end_turn", None),
        },
        FinishReason::Length => ("max_tokens", None),
        FinishReason::ToolCalls => ("tool_use", None),
    }
}

/// The `signature` of a thinking block: base64 of the SHA-256 of its text (44 characters).
///
/// Claude Code discards a turn whose thinking block has no signature, or an empty one
/// (C9), and never looks inside it: only Anthropic can check a signature. This one is
/// opaque and non-empty, and the same for the same text streamed or not. It proves
/// nothing, and need not: the request parser drops thinking blocks that come back in a
/// history (C10), so no signature is ever trusted or forwarded upstream.
pub fn signature(thinking: &str) -> String {
    encode_signature(Sha256::new_with_prefix(thinking.as_bytes()))
}

fn encode_signature(hash: Sha256) -> String {
    crate::common::base64_encode(&hash.finalize())
}

/// `toolu_` and 24 random letters and digits, as Anthropic's tool use ids look.
pub fn tool_use_id() -> String {
    crate::common::random_id("toolu_")
}

#[cfg(test)]
mod tests;
