//! The pure stream state machine: one upstream event in, zero or more semantic deltas out.
//!
//! No I/O, no async, no clocks: `on_data` is called with each SSE payload and reports what
//! the client should see through [`Emit`]. The same machine drives streaming (an encoder
//! behind `Emit`) and non-streaming (an aggregator behind `Emit`) responses.
//!
//! Rules (`qwen-protocol.md` §5):
//! * `answer` (or a missing phase) → content; `thinking_summary` → reasoning, computed as
//!   the new suffix of the cumulative `summary_thought` list joined by blank lines, so every
//!   paragraph is emitted once whichever way the list grows; legacy `think` → reasoning.
//! * `image_gen` content and `extra.image_list` images → a Markdown image in content.
//! * Built-in tool phases (`web_search`, …) and unknown phases are skipped.
//! * Dual responses: only the `response_index "0"` response passes; without a
//!   `response.created`, the first `response_id` seen is locked.
//! * End = `phase answer` + `status finished` (or `image_gen` + `finished` after an image),
//!   or `[DONE]`. A `finished` in any other phase (e.g. the thinking block) is not the end.
//!   EOF is a legitimate end only for streams without `response.created` (the 2025 v1
//!   format, which had no end frame): a v2 stream always sends its `finished` frame before
//!   closing (§5.1, every capture), so one that closes after text but before it was cut
//!   off — a truncated answer is an upstream failure, never a complete one.
//! * Error frames anywhere (first frame or after content) end the stream with a classified
//!   error. EOF or `finished` without any answer content is the empty-stream error (E18).

use crate::error::{UpstreamClass, UpstreamError};
use crate::qwen::classify::frame_error;
use crate::qwen::frame::{Frame, Text, UsageFrame};

/// Where translated deltas go.
pub trait Emit {
    fn reasoning(&mut self, text: &str);
    fn content(&mut self, text: &str);
    /// A validated tool call (function-calling emulation: `tools::scan`).
    fn tool_call(&mut self, call: &ToolCall<'_>) {
        let _ = call;
    }
    /// A frame of the platform's own function machinery. Only the tool-call scanner acts on
    /// these (it harvests intercepted calls); everything else ignores them, so the
    /// platform's "Tool X does not exists" never reaches a client.
    fn platform_call(&mut self, frame: PlatformFrame<'_>) {
        let _ = frame;
    }
    /// The sources the upstream's web search found, numbered from 1 in this order; the
    /// content cites them as `[[n]]` (the citation stage, `translate::cite`, reads them).
    fn sources(&mut self, sources: &[Source<'_>]) {
        let _ = sources;
    }
    /// A citation of a source in the content sent so far (from `translate::cite`).
    fn citation(&mut self, citation: &Citation<'_>) {
        let _ = citation;
    }
    /// An image the upstream made: its address. The content has it too, as a Markdown
    /// image; this is for the answers that are images (`/v1/images/generations`).
    fn image(&mut self, url: &str) {
        let _ = url;
    }
}

/// A web search result. `url` is empty when the upstream's was missing or not http(s) —
/// kept, so the numbering of the others stays the upstream's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Source<'a> {
    pub url: &'a str,
    pub title: &'a str,
}

/// Where the content cites a source: `start..end` in characters (Unicode scalar values) of
/// the content as the client receives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Citation<'a> {
    pub url: &'a str,
    pub title: &'a str,
    pub start: usize,
    pub end: usize,
}

/// A tool call for the client: its name and its arguments as compact JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ToolCall<'a> {
    pub name: &'a str,
    pub arguments: &'a str,
}

/// One platform frame, as the translator reports it (answer phase, no `function_id`: the
/// platform's own tools never get here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlatformFrame<'a> {
    /// A snapshot of a call: its name and the arguments so far.
    Call { name: &'a str, arguments: &'a str },
    /// The platform answered a call by that name.
    Result { name: &'a str },
}

/// Whether the upstream response is complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Finished,
}

/// Only web addresses become links a client may render (never `javascript:` or `data:`).
fn is_web_url(url: &str) -> bool {
    let lower = |n: usize| url.get(..n).map(str::to_ascii_lowercase);
    lower(8).as_deref() == Some("https://") || lower(7).as_deref() == Some("http://")
}

/// Why the answer ended, as the client sees it (each client API names it in its encoder).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The model ended its answer.
    Complete,
    /// A stop sequence of the request ended it: its index in the request's list.
    StopSequence(usize),
    /// The output limit (`max_tokens`) cut it.
    Length,
    /// The answer is tool calls (function-calling emulation).
    ToolCalls,
}

/// Tokens read (the prompt, some of it cached) and written (the answer, some of it
/// reasoning), whatever the client API calls them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub reasoning_tokens: Option<u64>,
    pub cached_tokens: Option<u64>,
}

impl Usage {
    pub fn total_tokens(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }
}

/// Identity of the upstream response (for continuing the chat later).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponseRef {
    pub chat_id: Option<String>,
    /// Server id of the user node this turn created.
    pub user_node_id: Option<String>,
    pub response_id: Option<String>,
}

#[derive(Debug, Default)]
pub struct Translator {
    /// Some `response.created` was seen: lock only by index, never by first frame.
    saw_created: bool,
    /// The cumulative thinking summary emitted so far (joined by "\n\n").
    summary: String,
    usage: Option<Usage>,
    response: ResponseRef,
    emitted_content: bool,
    emitted_reasoning: bool,
    /// The images emitted (a repeated one is not emitted again).
    images: Vec<String>,
}

impl Translator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Last cumulative usage, mapped to OpenAI names; `None` if the upstream never sent any.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    pub fn response(&self) -> &ResponseRef {
        &self.response
    }

    pub fn emitted_anything(&self) -> bool {
        self.emitted_content || self.emitted_reasoning
    }

    /// Handle one SSE data payload.
    pub fn on_data(&mut self, data: &[u8], out: &mut impl Emit) -> Result<Flow, UpstreamError> {
        let trimmed = data.trim_ascii();
        if trimmed == b"[DONE]" {
            return self.finished();
        }
        let frame = match Frame::parse(trimmed) {
            Ok(f) => f,
            Err(e) => {
                // A valid JSON document of an unexpected shape is skipped (the upstream adds
                // fields and frame kinds often); bytes that are not JSON at all are a
                // protocol error, never silently dropped.
                if serde_json::from_slice::<serde::de::IgnoredAny>(trimmed).is_ok() {
                    tracing::debug!(error = %e, "skipping upstream frame of unknown shape");
                    return Ok(Flow::Continue);
                }
                return Err(UpstreamError::new(
                    UpstreamClass::Protocol,
                    "upstream sent an event that is not JSON",
                ));
            }
        };
        if let Some(err) = frame_error(&frame) {
            return Err(err);
        }
        if let Some(created) = &frame.created {
            self.on_created(created);
            return Ok(Flow::Continue);
        }
        if !self.accepts(frame.response_id.as_deref()) {
            return Ok(Flow::Continue);
        }
        if let Some(u) = frame.usage {
            self.merge_usage(u);
        }
        let Some(delta) = frame.choice.and_then(|c| c.delta) else {
            return Ok(Flow::Continue);
        };
        let phase = delta.phase.as_deref().unwrap_or("answer");
        let finished = delta.status.as_deref() == Some("finished");
        if let Some(found) = delta
            .extra
            .as_ref()
            .and_then(|e| e.web_search_info.as_ref())
        {
            let sources: Vec<Source<'_>> = found
                .iter()
                .map(|s| Source {
                    url: s.url.as_deref().filter(|u| is_web_url(u)).unwrap_or(""),
                    title: s.title.as_deref().unwrap_or(""),
                })
                .collect();
            out.sources(&sources);
        }
        // The platform's function machinery. Its own tools (a `function_id`, or a phase of
        // their own) are skipped with their phase below; in the answer phase it is a call the
        // platform intercepted, reported for the tool-call scanner. A result frame's text
        // ("Tool X does not exists.") is never content.
        if phase == "answer" && !delta.platform_function {
            if let Some(call) = &delta.function_call {
                if let Some(name) = non_empty(&call.name) {
                    out.platform_call(PlatformFrame::Call {
                        name,
                        arguments: call.arguments.as_deref().unwrap_or(""),
                    });
                }
            }
        }
        if delta.function_role {
            if let (Some(name), "answer", false) =
                (non_empty(&delta.name), phase, delta.platform_function)
            {
                out.platform_call(PlatformFrame::Result { name });
            }
            return Ok(Flow::Continue);
        }
        match phase {
            "answer" => {
                if let Some(text) = non_empty(&delta.content) {
                    self.emitted_content = true;
                    out.content(text);
                }
            }
            "thinking_summary" => {
                if let Some(list) = delta
                    .extra
                    .as_ref()
                    .and_then(|e| e.summary_thought.as_ref())
                {
                    self.on_summary(&list.content, out);
                }
            }
            "think" | "thinking" => {
                if let Some(text) = non_empty(&delta.content) {
                    self.emitted_reasoning = true;
                    out.reasoning(text);
                }
            }
            "image_gen" => {
                if let Some(url) = non_empty(&delta.content) {
                    self.emit_image(url, out);
                }
            }
            _ => {}
        }
        if let Some(text) = non_empty(&delta.reasoning_content).or_else(|| {
            delta
                .extra
                .as_ref()
                .and_then(|e| non_empty(&e.reasoning_content))
        }) {
            self.emitted_reasoning = true;
            out.reasoning(text);
        }
        if let Some(images) = delta.extra.as_ref().and_then(|e| e.image_list.as_ref()) {
            for url in images.iter().filter_map(|i| non_empty(&i.image)) {
                self.emit_image(url, out);
            }
        }
        // Image generation streams may end with their own `finished` frame and no answer.
        if finished && (phase == "answer" || phase == "image_gen" && self.emitted_content) {
            return self.finished();
        }
        Ok(Flow::Continue)
    }

    /// The upstream closed the connection without an explicit end frame.
    pub fn on_eof(&mut self) -> Result<(), UpstreamError> {
        if self.saw_created && self.emitted_anything() {
            return Err(UpstreamError::new(
                UpstreamClass::Truncated,
                "the upstream closed the stream before its final frame",
            ));
        }
        self.finished().map(|_| ())
    }

    fn finished(&mut self) -> Result<Flow, UpstreamError> {
        if self.emitted_content {
            Ok(Flow::Finished)
        } else {
            let detail = if self.emitted_reasoning {
                "the stream ended after thinking, without an answer"
            } else {
                "the stream ended without any answer content"
            };
            Err(UpstreamError::new(UpstreamClass::EmptyStream, detail))
        }
    }

    fn on_created(&mut self, created: &crate::qwen::frame::Created<'_>) {
        self.saw_created = true;
        let index = created.response_index.as_deref().unwrap_or("0");
        // The locked response is `response.response_id`: set once, by `response.created`
        // with index "0" or else by the first `response_id` seen.
        if index == "0" && self.response.response_id.is_none() {
            if let Some(id) = &created.response_id {
                self.response = ResponseRef {
                    chat_id: created.chat_id.as_deref().map(str::to_owned),
                    user_node_id: created.parent_id.as_deref().map(str::to_owned),
                    response_id: Some(id.to_string()),
                };
            }
        }
    }

    /// Dual-response filter: frames of another candidate response are dropped.
    fn accepts(&mut self, response_id: Option<&str>) -> bool {
        let Some(id) = response_id else {
            return true;
        };
        match self.response.response_id.as_deref() {
            Some(locked) => locked == id,
            None if self.saw_created => false,
            None => {
                self.response.response_id = Some(id.to_owned());
                true
            }
        }
    }

    fn merge_usage(&mut self, u: UsageFrame) {
        let usage = self.usage.get_or_insert_with(Usage::default);
        if let Some(v) = u.input_tokens {
            usage.prompt_tokens = v;
        }
        if let Some(v) = u.output_tokens {
            usage.completion_tokens = v;
        }
        if let Some(v) = u.output_tokens_details.and_then(|d| d.reasoning_tokens) {
            usage.reasoning_tokens = Some(v);
        }
        if let Some(v) = u.prompt_tokens_details.and_then(|d| d.cached_tokens) {
            usage.cached_tokens = Some(v);
        }
    }

    /// Emit the part of the cumulative summary not emitted yet. Diffing the joined text
    /// handles both growth modes (new list elements, or the last element growing). Thinking
    /// frames are few, so joining into a fresh `String` here is not on the hot path.
    fn on_summary(&mut self, paragraphs: &[Text<'_>], out: &mut impl Emit) {
        let joined = paragraphs
            .iter()
            .map(|p| &**p)
            .collect::<Vec<&str>>()
            .join("\n\n");
        match joined.strip_prefix(self.summary.as_str()) {
            Some("") => {}
            Some(new) => {
                self.emitted_reasoning = true;
                out.reasoning(new);
            }
            // The upstream rewrote earlier text. Re-emitting would duplicate it; adopt the
            // new text as the baseline and emit nothing for this frame.
            None => tracing::debug!("thinking summary rewritten upstream; not re-emitted"),
        }
        self.summary = joined;
    }

    fn emit_image(&mut self, url: &str, out: &mut impl Emit) {
        // The same image may come twice (its `image_gen` frame, then an `image_list`).
        if self.images.iter().any(|seen| seen == url) {
            return;
        }
        self.images.push(url.to_owned());
        self.emitted_content = true;
        // A blank line between consecutive images keeps the Markdown readable.
        let md = format!("![image]({url})\n");
        out.content(&md);
        out.image(url);
    }
}

fn non_empty<'s>(v: &'s Option<Text<'_>>) -> Option<&'s str> {
    v.as_deref().filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::translate::testing::Recorder;

    fn thinking_frame(paragraphs: &[&str]) -> String {
        let list: Vec<String> = paragraphs.iter().map(|p| format!("{p:?}")).collect();
        format!(
            r#"{{"choices":[{{"delta":{{"content":"","phase":"thinking_summary","extra":{{"summary_thought":{{"content":[{}]}}}},"status":"typing"}}}}],"response_id":"r"}}"#,
            list.join(",")
        )
    }

    #[test]
    fn summary_append_mode_emits_each_paragraph_once() {
        let mut t = Translator::new();
        let mut out = Recorder::default();
        for frame in [
            thinking_frame(&["A"]),
            thinking_frame(&["A", "B"]),
            thinking_frame(&["A", "B"]),
        ] {
            t.on_data(frame.as_bytes(), &mut out).unwrap();
        }
        assert_eq!(out.reasoning, "A\n\nB");
        assert_eq!(out.pieces, ["r:A", "r:\n\nB"]);
    }

    #[test]
    fn summary_last_element_growth_mode() {
        let mut t = Translator::new();
        let mut out = Recorder::default();
        for frame in [
            thinking_frame(&["Th"]),
            thinking_frame(&["Thin"]),
            thinking_frame(&["Think", "X"]),
        ] {
            t.on_data(frame.as_bytes(), &mut out).unwrap();
        }
        assert_eq!(out.reasoning, "Think\n\nX");
    }

    #[test]
    fn summary_rewrite_is_not_duplicated() {
        let mut t = Translator::new();
        let mut out = Recorder::default();
        t.on_data(thinking_frame(&["Alpha"]).as_bytes(), &mut out)
            .unwrap();
        t.on_data(thinking_frame(&["Alps"]).as_bytes(), &mut out)
            .unwrap();
        t.on_data(thinking_frame(&["Alps", "B"]).as_bytes(), &mut out)
            .unwrap();
        assert_eq!(out.reasoning, "Alpha\n\nB");
    }

    #[test]
    fn thinking_finished_is_not_the_end() {
        let mut t = Translator::new();
        let mut out = Recorder::default();
        let f = br#"{"choices":[{"delta":{"content":"","phase":"thinking_summary","status":"finished"}}]}"#;
        assert_eq!(t.on_data(f, &mut out), Ok(Flow::Continue));
    }

    #[test]
    fn finished_without_content_is_an_empty_stream() {
        let mut t = Translator::new();
        let mut out = Recorder::default();
        let f = br#"{"choices":[{"delta":{"content":"","phase":"answer","status":"finished"}}]}"#;
        assert_eq!(
            t.on_data(f, &mut out).unwrap_err().class,
            UpstreamClass::EmptyStream
        );
        assert_eq!(
            Translator::new().on_eof().unwrap_err().class,
            UpstreamClass::EmptyStream
        );
    }

    const CREATED: &[u8] = br#"{"response.created":{"chat_id":"c","parent_id":"p","response_id":"r","response_index":"0"}}"#;
    const HI: &[u8] = br#"{"choices":[{"delta":{"content":"Hi","phase":"answer","status":"typing"}}],"response_id":"r"}"#;

    #[test]
    fn a_v2_stream_closed_before_its_finished_frame_was_truncated() {
        let mut t = Translator::new();
        let mut out = Recorder::default();
        t.on_data(CREATED, &mut out).unwrap();
        t.on_data(HI, &mut out).unwrap();
        assert_eq!(t.on_eof().unwrap_err().class, UpstreamClass::Truncated);
        // Without anything to show, it stays the empty-stream error.
        let mut t = Translator::new();
        t.on_data(CREATED, &mut out).unwrap();
        assert_eq!(t.on_eof().unwrap_err().class, UpstreamClass::EmptyStream);
        // `[DONE]` is an explicit end.
        let mut t = Translator::new();
        t.on_data(CREATED, &mut out).unwrap();
        t.on_data(HI, &mut out).unwrap();
        assert_eq!(t.on_data(b"[DONE]", &mut out), Ok(Flow::Finished));
    }

    #[test]
    fn search_results_are_reported_as_sources_in_order_and_only_web_addresses_link() {
        /// Records the sources it is given.
        #[derive(Default)]
        struct Sources(Vec<String>);
        impl Emit for Sources {
            fn reasoning(&mut self, _: &str) {}
            fn content(&mut self, _: &str) {}
            fn sources(&mut self, sources: &[Source<'_>]) {
                self.0
                    .extend(sources.iter().map(|s| format!("{}|{}", s.url, s.title)));
            }
        }
        let mut t = Translator::new();
        let mut out = Sources::default();
        // §5.9: the result frame is a `function` frame of the platform's own tool.
        let frame = r#"{"choices":[{"delta":{"role":"function","content":"","phase":"web_search","status":"finished","name":"web_search","function_id":"call_1","extra":{"web_search_info":[{"url":"https://example.com/a","title":"A","snippet":"s","hostname":"example.com"},{"url":"javascript:alert(1)","title":"B"},{"title":"C"},{"url":"HTTP://Example.org/d"}]}}}],"response_id":"r"}"#;
        assert_eq!(
            t.on_data(frame.as_bytes(), &mut out).unwrap(),
            Flow::Continue
        );
        assert_eq!(
            out.0,
            [
                "https://example.com/a|A",
                "|B",
                "|C",
                "HTTP://Example.org/d|"
            ]
        );
        assert!(!t.emitted_anything());
    }

    #[test]
    fn c28_c29_intercepted_calls_are_reported_and_platform_tools_are_not() {
        let mut t = Translator::new();
        let mut out = Recorder::default();
        let frames: [&[u8]; 6] = [
            CREATED,
            // §6 test 29: the platform's own tool (a `function_id`, its own phase).
            br#"{"choices":[{"delta":{"role":"assistant","content":"","phase":"web_search","status":"typing","function_call":{"name":"web_search","arguments":"{}"},"function_id":"call_1"}}],"response_id":"r"}"#,
            br#"{"choices":[{"delta":{"role":"function","content":"results","phase":"web_search","status":"finished","name":"web_search","function_id":"call_1"}}],"response_id":"r"}"#,
            // §6 test 28: the model's call, intercepted in the answer phase.
            br#"{"choices":[{"delta":{"role":"assistant","content":"","phase":"answer","status":"typing","function_call":{"name":"get_weather","arguments":"{\"ci"}}}],"response_id":"r"}"#,
            br#"{"choices":[{"delta":{"role":"function","content":"Tool get_weather does not exists.","phase":"answer","status":"typing","name":"get_weather"}}],"response_id":"r"}"#,
            HI,
        ];
        for (i, f) in frames.iter().enumerate() {
            assert_eq!(t.on_data(f, &mut out), Ok(Flow::Continue), "frame {i}");
        }
        assert_eq!(
            out.platform,
            [r#"call:get_weather {"ci"#, "result:get_weather"]
        );
        // The platform's texts are never content; the answer after them is.
        assert_eq!(out.content, "Hi");
    }

    #[test]
    fn a_v1_stream_may_end_at_eof() {
        let mut t = Translator::new();
        let mut out = Recorder::default();
        t.on_data(HI, &mut out).unwrap();
        assert_eq!(t.on_eof(), Ok(()));
    }

    #[test]
    fn missing_phase_is_answer_and_done_ends() {
        let mut t = Translator::new();
        let mut out = Recorder::default();
        t.on_data(br#"{"choices":[{"delta":{"content":"x"}}]}"#, &mut out)
            .unwrap();
        assert_eq!(t.on_data(b"[DONE]", &mut out), Ok(Flow::Finished));
        assert_eq!(out.content, "x");
    }

    #[test]
    fn garbage_is_a_protocol_error_but_unknown_shapes_are_skipped() {
        let mut t = Translator::new();
        let mut out = Recorder::default();
        assert_eq!(
            t.on_data(br#"{"choices":"odd"}"#, &mut out),
            Ok(Flow::Continue)
        );
        assert_eq!(
            t.on_data(b"not json", &mut out).unwrap_err().class,
            UpstreamClass::Protocol
        );
    }
}
