//! The Responses API's typed event stream, and the `response` object it ends with (the
//! non-streamed body is the same object, built by the same encoder without events).
//!
//! ```text
//!   response.created → response.in_progress
//!   per output item, at a stable output_index:
//!     response.output_item.added
//!     reasoning:      reasoning_summary_part.added → reasoning_summary_text.delta* →
//!                     reasoning_summary_text.done → reasoning_summary_part.done
//!     message:        content_part.added → output_text.delta* (annotation.added) →
//!                     output_text.done → content_part.done
//!     function_call:  function_call_arguments.delta* → function_call_arguments.done
//!     custom call:    custom_tool_call_input.delta* → custom_tool_call_input.done
//!     response.output_item.done (the whole item: what Codex puts in its history)
//!   response.completed | response.incomplete (max_output_tokens) | response.failed
//! ```
//!
//! Every event carries `type` and a `sequence_number` from 0; every delta its `item_id`
//! and `output_index`. The last event always carries the whole `response` with its
//! numeric `usage` (Codex and the AI SDK refuse a stream without it: §2.1 R5, §2.3).
//! At most one item is open (reasoning or a message); a change of kind closes it first.

use std::fmt::Write as _;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::{json, Value};

use super::tools::{custom_input, CallKind, CallNames};
use super::{Echo, Options, Sink};
use crate::api::{argument_slices, write_json_str};
use crate::error::ProxyError;
use crate::translate::aggregate::Collected;
use crate::translate::body::Render;
use crate::translate::state::{Citation, Emit, FinishReason, ToolCall, Usage};
use crate::turn::{AnswerHead, Message};

/// One output item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Reasoning {
        id: String,
        text: String,
    },
    Message {
        id: String,
        text: String,
        /// Characters of the answer's content before this message (citations count from
        /// the start of the content).
        start_char: usize,
        annotations: Vec<Value>,
    },
    FunctionCall {
        id: String,
        call_id: String,
        name: String,
        namespace: Option<String>,
        arguments: String,
    },
    CustomToolCall {
        id: String,
        call_id: String,
        name: String,
        input: String,
    },
}

impl Item {
    pub fn id(&self) -> &str {
        match self {
            Item::Reasoning { id, .. }
            | Item::Message { id, .. }
            | Item::FunctionCall { id, .. }
            | Item::CustomToolCall { id, .. } => id,
        }
    }

    /// The item as the API shows it; `done`: complete (`output_item.done`, the response),
    /// else as it is announced (`output_item.added`: empty).
    pub fn json(&self, done: bool) -> Value {
        let status = if done { "completed" } else { "in_progress" };
        match self {
            Item::Reasoning { id, text } => json!({
                "id": id,
                "type": "reasoning",
                "summary": if done { json!([{"type": "summary_text", "text": text}]) } else { json!([]) },
            }),
            Item::Message {
                id,
                text,
                annotations,
                ..
            } => json!({
                "id": id,
                "type": "message",
                "status": status,
                "role": "assistant",
                "content": if done { json!([output_text(text, annotations)]) } else { json!([]) },
            }),
            Item::FunctionCall {
                id,
                call_id,
                name,
                namespace,
                arguments,
            } => {
                let mut item = json!({
                    "id": id,
                    "type": "function_call",
                    "status": status,
                    "call_id": call_id,
                    "name": name,
                    "arguments": if done { arguments.as_str() } else { "" },
                });
                if let Some(ns) = namespace {
                    item["namespace"] = json!(ns);
                }
                item
            }
            Item::CustomToolCall {
                id,
                call_id,
                name,
                input,
            } => json!({
                "id": id,
                "type": "custom_tool_call",
                "status": status,
                "call_id": call_id,
                "name": name,
                "input": if done { input.as_str() } else { "" },
            }),
        }
    }
}

fn output_text(text: &str, annotations: &[Value]) -> Value {
    json!({"type": "output_text", "text": text, "annotations": annotations, "logprobs": []})
}

/// The encoder of one answer.
#[derive(Debug)]
pub struct ResponseEncoder {
    buf: BytesMut,
    /// Events are written (a stream); otherwise only the final object is built.
    events: bool,
    sequence: u64,
    id: String,
    created: u64,
    model: String,
    names: Arc<CallNames>,
    reasoning: bool,
    echo: Arc<Echo>,
    store: bool,
    previous_response_id: Option<String>,
    /// Where the finished response goes, with the turn's own messages.
    sink: Option<(Sink, Vec<Message>)>,
    items: Vec<Item>,
    /// The last item is open (reasoning or a message still receiving text).
    open: bool,
    content_chars: usize,
    ended: bool,
}

impl ResponseEncoder {
    fn new(head: &AnswerHead<'_>, options: &Options, events: bool) -> Self {
        let sink = options.sink.clone().map(|sink| {
            let skip = sink.inherited + usize::from(options.instructions);
            let own = head.turn.messages.iter().skip(skip).cloned().collect();
            (sink, own)
        });
        let mut enc = Self {
            buf: BytesMut::with_capacity(if events { 2048 } else { 0 }),
            events,
            sequence: 0,
            id: head.id.to_owned(),
            created: head.created,
            model: head.turn.model.clone(),
            names: options.names.clone(),
            reasoning: options.reasoning,
            echo: options.echo.clone(),
            store: options.store,
            previous_response_id: options.previous_response_id.clone(),
            sink,
            items: Vec::new(),
            open: false,
            content_chars: 0,
            ended: false,
        };
        if events {
            let created = enc.response(Status::InProgress, None, None);
            enc.event("response.created", json!({"response": created}));
            let created = enc.response(Status::InProgress, None, None);
            enc.event("response.in_progress", json!({"response": created}));
        }
        enc
    }

    /// The encoder of a stream: `response.created` and `response.in_progress` are
    /// written at once.
    pub fn streamed(head: &AnswerHead<'_>, options: &Options) -> Self {
        Self::new(head, options, true)
    }

    /// `event: TYPE` and `data: {"type":TYPE,"sequence_number":N,…fields}`.
    fn event(&mut self, kind: &str, fields: Value) {
        if !self.events {
            return;
        }
        self.begin_event(kind);
        if let Value::Object(fields) = fields {
            for (k, v) in fields {
                self.buf.put_u8(b',');
                write_json_str(&mut self.buf, &k);
                self.buf.put_u8(b':');
                // Writing a `Value` into a `BytesMut` cannot fail.
                let _ = serde_json::to_writer((&mut self.buf).writer(), &v);
            }
        }
        self.buf.put_slice(b"}\n\n");
    }

    fn begin_event(&mut self, kind: &str) {
        let _ = write!(
            self.buf,
            "event: {kind}\ndata: {{\"type\":\"{kind}\",\"sequence_number\":{}",
            self.sequence
        );
        self.sequence += 1;
    }

    /// A text delta, written by hand: the hot path of a stream.
    fn delta(&mut self, kind: &str, index_field: &str, text: &str) {
        if !self.events {
            return;
        }
        let output_index = self.items.len() - 1;
        let item_id = self.items[output_index].id().to_owned();
        self.begin_event(kind);
        self.buf.put_slice(b",\"item_id\":");
        write_json_str(&mut self.buf, &item_id);
        let _ = write!(
            self.buf,
            ",\"output_index\":{output_index},\"{index_field}\":0,\"delta\":"
        );
        write_json_str(&mut self.buf, text);
        if kind == "response.output_text.delta" {
            self.buf.put_slice(b",\"logprobs\":[]");
        }
        self.buf.put_slice(b"}\n\n");
    }

    /// A new item at the next output index, announced.
    fn add(&mut self, item: Item) {
        let output_index = self.items.len();
        let added = item.json(false);
        self.items.push(item);
        self.event(
            "response.output_item.added",
            json!({"output_index": output_index, "item": added}),
        );
    }

    /// Close the open item: its text's `done` events, then `output_item.done`.
    fn close(&mut self) {
        if !std::mem::take(&mut self.open) {
            return;
        }
        let output_index = self.items.len() - 1;
        let item = self.items[output_index].clone();
        let item_id = item.id();
        match &item {
            Item::Reasoning { text, .. } => {
                self.event(
                    "response.reasoning_summary_text.done",
                    json!({"item_id": item_id, "output_index": output_index, "summary_index": 0, "text": text}),
                );
                self.event(
                    "response.reasoning_summary_part.done",
                    json!({"item_id": item_id, "output_index": output_index, "summary_index": 0,
                           "part": {"type": "summary_text", "text": text}}),
                );
            }
            Item::Message {
                text, annotations, ..
            } => {
                self.event(
                    "response.output_text.done",
                    json!({"item_id": item_id, "output_index": output_index, "content_index": 0,
                           "text": text, "logprobs": []}),
                );
                self.event(
                    "response.content_part.done",
                    json!({"item_id": item_id, "output_index": output_index, "content_index": 0,
                           "part": output_text(text, annotations)}),
                );
            }
            Item::FunctionCall { .. } | Item::CustomToolCall { .. } => {}
        }
        self.event(
            "response.output_item.done",
            json!({"output_index": output_index, "item": item.json(true)}),
        );
    }

    /// The `response` object.
    fn response(&self, status: Status, usage: Option<Usage>, error: Option<Value>) -> Value {
        let done = !matches!(status, Status::InProgress);
        let echo = &self.echo;
        json!({
            "id": self.id,
            "object": "response",
            "created_at": self.created,
            "status": status.name(),
            "background": false,
            "error": error,
            "incomplete_details": match status {
                Status::Incomplete => json!({"reason": "max_output_tokens"}),
                _ => Value::Null,
            },
            "instructions": null,
            "max_output_tokens": echo.max_output_tokens,
            "model": self.model,
            "output": if done { self.items.iter().map(|i| i.json(true)).collect::<Vec<_>>() } else { Vec::new() },
            "parallel_tool_calls": echo.parallel_tool_calls,
            "previous_response_id": self.previous_response_id,
            "reasoning": {"effort": echo.reasoning_effort, "summary": null},
            "store": self.store,
            "temperature": null,
            "text": {"format": echo.text_format},
            "tool_choice": echo.tool_choice,
            "tools": [],
            "top_p": null,
            "truncation": "disabled",
            "usage": usage.map(usage_json),
            "metadata": echo.metadata,
        })
    }

    /// The final object, kept when the client asked to store it.
    fn conclude(&mut self, status: Status, usage: Usage) -> Value {
        self.ended = true;
        self.close();
        let object = self.response(status, Some(usage), None);
        if let Some((sink, own)) = self.sink.take() {
            sink.store.save(
                &self.id,
                self.previous_response_id.as_deref(),
                &object,
                own,
                &self.items,
            );
        }
        object
    }
}

/// The whole (non-streamed) response of a collected answer.
pub fn whole(
    head: &AnswerHead<'_>,
    options: &Options,
    answer: &Collected,
    reason: FinishReason,
    usage: Usage,
) -> Bytes {
    let mut enc = ResponseEncoder::new(head, options, false);
    enc.reasoning(&answer.reasoning);
    enc.content(&answer.content);
    for c in &answer.citations {
        enc.citation(&Citation {
            url: &c.url,
            title: &c.title,
            start: c.start,
            end: c.end,
        });
    }
    for (name, arguments) in &answer.tool_calls {
        enc.tool_call(&ToolCall { name, arguments });
    }
    let object = enc.conclude(Status::of(reason), usage);
    Bytes::from(object.to_string())
}

#[derive(Debug, Clone, Copy)]
enum Status {
    InProgress,
    Completed,
    Incomplete,
}

impl Status {
    fn of(reason: FinishReason) -> Self {
        match reason {
            FinishReason::Length => Status::Incomplete,
            FinishReason::Complete | FinishReason::StopSequence(_) | FinishReason::ToolCalls => {
                Status::Completed
            }
        }
    }

    fn name(self) -> &'static str {
        match self {
            Status::InProgress => "in_progress",
            Status::Completed => "completed",
            Status::Incomplete => "incomplete",
        }
    }
}

/// `usage` with the detail objects the SDKs' types require.
fn usage_json(u: Usage) -> Value {
    json!({
        "input_tokens": u.prompt_tokens,
        "input_tokens_details": {"cached_tokens": u.cached_tokens.unwrap_or(0)},
        "output_tokens": u.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens.unwrap_or(0)},
        "total_tokens": u.total_tokens(),
    })
}

/// The `error` of a failed response, with the codes the Codex CLI classifies
/// (`context_length_exceeded`: compact; `rate_limit_exceeded` with "try again in N s":
/// wait that long; `insufficient_quota` and `invalid_prompt`: stop; `server_error`: retry).
pub fn failure(e: &ProxyError) -> Value {
    let message = e.message();
    let (code, message) = match e {
        ProxyError::ContextLengthExceeded { .. } => ("context_length_exceeded", message),
        ProxyError::NoUsableAccount {
            retry_after_secs: None,
            ..
        } => ("insufficient_quota", message),
        _ if e.status().as_u16() == 429 => (
            "rate_limit_exceeded",
            format!(
                "{message} Please try again in {}s.",
                e.retry_after().unwrap_or(1)
            ),
        ),
        // Codex retries `server_error` and gives up on `invalid_prompt`: what a retry can
        // change is the one, what it cannot the other. Our own code stays in the message.
        _ => {
            let code = if e.status().is_server_error() {
                "server_error"
            } else {
                "invalid_prompt"
            };
            let ours = e.code().unwrap_or("error");
            (code, format!("{message} ({ours})"))
        }
    };
    json!({"code": code, "message": message})
}

impl Emit for ResponseEncoder {
    fn reasoning(&mut self, text: &str) {
        if self.ended || !self.reasoning || text.is_empty() {
            return;
        }
        if !(self.open && matches!(self.items.last(), Some(Item::Reasoning { .. }))) {
            self.close();
            self.add(Item::Reasoning {
                id: crate::common::random_id("rs_"),
                text: String::new(),
            });
            self.open = true;
            let output_index = self.items.len() - 1;
            let item_id = self.items[output_index].id().to_owned();
            self.event(
                "response.reasoning_summary_part.added",
                json!({"item_id": item_id, "output_index": output_index, "summary_index": 0,
                       "part": {"type": "summary_text", "text": ""}}),
            );
        }
        if let Some(Item::Reasoning { text: all, .. }) = self.items.last_mut() {
            all.push_str(text);
        }
        self.delta(
            "response.reasoning_summary_text.delta",
            "summary_index",
            text,
        );
    }

    fn content(&mut self, text: &str) {
        if self.ended || text.is_empty() {
            return;
        }
        if !(self.open && matches!(self.items.last(), Some(Item::Message { .. }))) {
            self.close();
            self.add(Item::Message {
                id: crate::common::random_id("msg_"),
                text: String::new(),
                start_char: self.content_chars,
                annotations: Vec::new(),
            });
            self.open = true;
            let output_index = self.items.len() - 1;
            let item_id = self.items[output_index].id().to_owned();
            self.event(
                "response.content_part.added",
                json!({"item_id": item_id, "output_index": output_index, "content_index": 0,
                       "part": output_text("", &[])}),
            );
        }
        self.content_chars += text.chars().count();
        if let Some(Item::Message { text: all, .. }) = self.items.last_mut() {
            all.push_str(text);
        }
        self.delta("response.output_text.delta", "content_index", text);
    }

    /// A `url_citation` on the message that holds it.
    fn citation(&mut self, c: &Citation<'_>) {
        if self.ended {
            return;
        }
        let Some((
            output_index,
            Item::Message {
                id,
                start_char,
                annotations,
                ..
            },
        )) =
            self.items.iter_mut().enumerate().rev().find(
                |(_, i)| matches!(i, Item::Message { start_char, .. } if *start_char <= c.start),
            )
        else {
            return;
        };
        let annotation = json!({
            "type": "url_citation",
            "start_index": c.start - *start_char,
            "end_index": c.end.saturating_sub(*start_char),
            "url": c.url,
            "title": c.title,
        });
        annotations.push(annotation.clone());
        let fields = json!({"item_id": id, "output_index": output_index, "content_index": 0,
            "annotation_index": annotations.len() - 1, "annotation": annotation});
        self.event("response.output_text.annotation.added", fields);
    }

    /// A whole call: added, its arguments (or input) in slices, done.
    fn tool_call(&mut self, call: &ToolCall<'_>) {
        if self.ended {
            return;
        }
        self.close();
        let call_id = crate::common::random_id("call_");
        let (item, delta_kind, done_kind, field, value) = match self.names.kind(call.name) {
            CallKind::Function { namespace, name } => (
                Item::FunctionCall {
                    id: crate::common::random_id("fc_"),
                    call_id,
                    name,
                    namespace,
                    arguments: call.arguments.to_owned(),
                },
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "arguments",
                call.arguments.to_owned(),
            ),
            CallKind::Custom { name } => {
                let input = custom_input(call.arguments);
                (
                    Item::CustomToolCall {
                        id: crate::common::random_id("ctc_"),
                        call_id,
                        name,
                        input: input.clone(),
                    },
                    "response.custom_tool_call_input.delta",
                    "response.custom_tool_call_input.done",
                    "input",
                    input,
                )
            }
        };
        let output_index = self.items.len();
        let item_id = item.id().to_owned();
        let done = item.json(true);
        self.add(item);
        if self.events {
            for slice in argument_slices(&value) {
                self.event(
                    delta_kind,
                    json!({"item_id": item_id, "output_index": output_index, "delta": slice}),
                );
            }
        }
        self.event(
            done_kind,
            json!({"item_id": item_id, "output_index": output_index, field: value}),
        );
        self.event(
            "response.output_item.done",
            json!({"output_index": output_index, "item": done}),
        );
    }
}

impl Render for ResponseEncoder {
    /// `response.completed` (or `response.incomplete` when the output limit cut it).
    fn finish(&mut self, reason: FinishReason, usage: Usage) {
        if self.ended {
            return;
        }
        let status = Status::of(reason);
        let object = self.conclude(status, usage);
        let kind = match status {
            Status::Incomplete => "response.incomplete",
            Status::InProgress | Status::Completed => "response.completed",
        };
        self.event(kind, json!({ "response": object }));
    }

    /// `response.failed` with the error, and nothing after it.
    fn error(&mut self, e: &ProxyError) {
        if self.ended {
            return;
        }
        self.ended = true;
        let mut object = self.response(Status::InProgress, None, Some(failure(e)));
        object["status"] = json!("failed");
        // What was written before the failure (an SDK shows a failed response's output).
        object["output"] = self.items.iter().map(|i| i.json(true)).collect();
        self.event("response.failed", json!({ "response": object }));
    }

    fn keep_alive(&mut self) {
        if !self.ended && self.events {
            self.buf.put_slice(b": keep-alive\n\n");
        }
    }

    fn take(&mut self) -> Option<Bytes> {
        (!self.buf.is_empty()).then(|| self.buf.split().freeze())
    }

    fn buffered(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests;
