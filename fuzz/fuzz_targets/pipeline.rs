//! The translation pipeline end to end: upstream bytes → SSE decoder → translator → the
//! chat core's stages (tool-call scanner, JSON fence remover, output limits, citations;
//! `chat::TurnStages` without the transcript) → the OpenAI chunk encoder.
//!
//! Invariants:
//! * No panic, whatever the bytes and the stage configuration.
//! * Split invariance: the body whole and in two fuzzer-chosen chunkings gives the same
//!   deltas in the same order (reasoning, content, calls, platform frames, sources,
//!   citations, images), the same end (finish reason or upstream error), usage, event
//!   count, response identity and scanner outcome, and the same OpenAI stream (tool call
//!   ids aside: they are random).
//! * The OpenAI stream is UTF-8 SSE: `data: <JSON>` events, one `data: [DONE]` last; its
//!   content, reasoning and tool calls reassemble to exactly the deltas the stages emitted;
//!   the finish reason matches the end; an upstream error is one OpenAI error event.
//! * Tool calls only with tools on, at most one without parallel calls, only offered names
//!   (the named one under a named `tool_choice`), arguments a JSON object; a `tool_calls`
//!   finish has calls, and an answer with calls that ends without an error ends with
//!   `tool_calls` (not with a limit's `length` or `stop`).
//!
//! Header (see `fuzz_support`). Config byte 0: bit 0 tools, bits 1-2 `tool_choice` (auto,
//! required, named `get_weather`, auto), bit 3 parallel calls, bit 4 retry allowed, bit 5
//! streaming, bit 6 JSON fence remover, bit 7 citations. Byte 1: bits 0-2 `max_tokens`,
//! bits 3-4 stop sequences, bit 5 citation footnotes, bit 6 include usage, bit 7 a prompt
//! token estimate.

#![no_main]

use std::sync::Arc;

use bytes::Bytes;
use fuzz_support::{header, Recipe};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

use qwen_proxy::api::openai::encoder::ChunkEncoder;
use qwen_proxy::chat::TurnStages;
use qwen_proxy::error::UpstreamError;
use qwen_proxy::tools::prompt::Hint;
use qwen_proxy::tools::scan::{ScanConfig, ScanStats, ToolScan};
use qwen_proxy::tools::{Choice, ToolSet, ToolSpec};
use qwen_proxy::translate::body::Render;
use qwen_proxy::translate::cite::Citations;
use qwen_proxy::translate::fence::JsonFence;
use qwen_proxy::translate::limits::Limits;
use qwen_proxy::translate::pipeline::{Pipeline, Progress};
use qwen_proxy::translate::state::{
    Citation, Emit, FinishReason, PlatformFrame, ResponseRef, Source, ToolCall, Usage,
};

const MAX_TOKENS: [Option<u64>; 8] = [
    None,
    Some(1),
    Some(2),
    Some(3),
    Some(8),
    Some(20),
    Some(100),
    Some(4000),
];
const STOPS: [&[&str]; 4] = [&[], &["\n\n"], &["Hi", "。"], &["[TOOL", "END", "```"]];

#[derive(Debug)]
struct Config {
    tools: Option<Arc<ToolSet>>,
    retry_allowed: bool,
    streaming: bool,
    fence: bool,
    citations: bool,
    footnotes: bool,
    max_tokens: Option<u64>,
    stops: &'static [&'static str],
    include_usage: bool,
    estimate: u64,
}

fn config(c: [u8; 2]) -> Config {
    let tools = (c[0] & 1 != 0).then(|| {
        let choice = match (c[0] >> 1) & 3 {
            1 => Choice::Required,
            2 => Choice::Named("get_weather".to_owned()),
            _ => Choice::Auto,
        };
        let spec = |name: &str, parameters: Value| ToolSpec {
            name: name.to_owned(),
            description: Some("a tool".to_owned()),
            parameters,
        };
        let mut tools = vec![
            spec(
                "get_weather",
                json!({"type":"object","properties":{"city":{"type":"string"},"days":{"type":"integer"}},"required":["city"]}),
            ),
            spec(
                "write_file",
                json!({"type":"object","properties":{"path":{"type":"string"},"content":{"type":"string"}}}),
            ),
            spec("Write", json!({"type":"object","properties":{"path":{"type":"string"}}})),
            spec("read_file", json!({})),
        ];
        if let Choice::Named(n) = &choice {
            tools.retain(|t| t.name == *n);
        }
        Arc::new(ToolSet::offered(tools, choice, c[0] & 8 != 0))
    });
    Config {
        tools,
        retry_allowed: c[0] & 16 != 0,
        streaming: c[0] & 32 != 0,
        fence: c[0] & 64 != 0,
        citations: c[0] & 128 != 0,
        max_tokens: MAX_TOKENS[usize::from(c[1] & 7)],
        stops: STOPS[usize::from((c[1] >> 3) & 3)],
        footnotes: c[1] & 32 != 0,
        include_usage: c[1] & 64 != 0,
        estimate: if c[1] & 128 != 0 { 1234 } else { 0 },
    }
}

fn stages(cfg: &Config) -> TurnStages {
    let scan = cfg.tools.as_ref().map(|set| {
        ToolScan::new(ScanConfig {
            set: set.clone(),
            retry_allowed: cfg.retry_allowed,
            streaming: cfg.streaming,
        })
    });
    let limits = Limits::new(
        cfg.stops.iter().map(|s| (*s).to_owned()).collect(),
        cfg.max_tokens,
    );
    (
        scan,
        (
            cfg.fence.then(JsonFence::default),
            (
                limits,
                (cfg.citations.then(|| Citations::new(cfg.footnotes)), None),
            ),
        ),
    )
}

/// One thing the stages emitted.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Delta {
    Reasoning(String),
    Content(String),
    Call(String, String),
    Platform(String),
    Sources(Vec<(String, String)>),
    Citation(String, String, usize, usize),
    Image(String),
}

/// Records every delta and passes it on to the encoder.
struct Tee {
    deltas: Vec<Delta>,
    enc: ChunkEncoder,
}

impl Emit for Tee {
    fn reasoning(&mut self, text: &str) {
        self.deltas.push(Delta::Reasoning(text.to_owned()));
        self.enc.reasoning(text);
    }
    fn content(&mut self, text: &str) {
        self.deltas.push(Delta::Content(text.to_owned()));
        self.enc.content(text);
    }
    fn tool_call(&mut self, call: &ToolCall<'_>) {
        self.deltas
            .push(Delta::Call(call.name.to_owned(), call.arguments.to_owned()));
        self.enc.tool_call(call);
    }
    fn platform_call(&mut self, frame: PlatformFrame<'_>) {
        self.deltas.push(Delta::Platform(format!("{frame:?}")));
        self.enc.platform_call(frame);
    }
    fn sources(&mut self, sources: &[Source<'_>]) {
        self.deltas.push(Delta::Sources(
            sources
                .iter()
                .map(|s| (s.url.to_owned(), s.title.to_owned()))
                .collect(),
        ));
        self.enc.sources(sources);
    }
    fn citation(&mut self, c: &Citation<'_>) {
        self.deltas.push(Delta::Citation(
            c.url.to_owned(),
            c.title.to_owned(),
            c.start,
            c.end,
        ));
        self.enc.citation(c);
    }
    fn image(&mut self, url: &str) {
        self.deltas.push(Delta::Image(url.to_owned()));
        self.enc.image(url);
    }
}

#[derive(Debug, PartialEq)]
struct Run {
    deltas: Vec<Delta>,
    end: Result<FinishReason, UpstreamError>,
    usage: Usage,
    events: u64,
    emitted_anything: bool,
    response: ResponseRef,
    scan: Option<(ScanStats, Option<Hint>)>,
    /// The OpenAI stream's events, decoded (tool call ids blanked).
    stream: Vec<Value>,
}

fn run(cfg: &Config, chunks: &[&[u8]]) -> Run {
    let mut p = Pipeline::new(stages(cfg), cfg.estimate);
    let mut out = Tee {
        deltas: Vec::new(),
        enc: ChunkEncoder::new("chatcmpl-fuzz", 1, "qwen3.7-plus", cfg.include_usage),
    };
    let mut sse = Vec::new();
    let mut end = None;
    for c in chunks {
        match p.feed(Bytes::copy_from_slice(c), &mut out) {
            Ok(Progress::Continue) => {}
            Ok(Progress::Done(r)) => {
                end = Some(Ok(r));
                break;
            }
            Err(e) => {
                end = Some(Err(e));
                break;
            }
        }
        sse.extend(out.enc.take().unwrap_or_default());
    }
    let end = end.unwrap_or_else(|| p.end_of_input(&mut out));
    match &end {
        Ok(r) => out.enc.finish(*r, p.usage()),
        Err(e) => out.enc.error(&e.clone().into()),
    }
    sse.extend(out.enc.take().unwrap_or_default());
    let stream = check_stream(&sse, &out.deltas, &end);
    Run {
        deltas: out.deltas,
        end,
        usage: p.usage(),
        events: p.events(),
        emitted_anything: p.emitted_anything(),
        response: p.response().clone(),
        scan: p.stages().0.as_ref().map(|s| (s.stats(), s.retry())),
        stream,
    }
}

/// Check the OpenAI stream against the deltas and the end; return its events.
fn check_stream(
    sse: &[u8],
    deltas: &[Delta],
    end: &Result<FinishReason, UpstreamError>,
) -> Vec<Value> {
    let text = std::str::from_utf8(sse).expect("the OpenAI stream is UTF-8");
    let body = text
        .strip_suffix("\n\n")
        .expect("the stream ends with a blank line");
    let mut events: Vec<Value> = Vec::new();
    let mut done = 0;
    for event in body.split("\n\n") {
        let payload = event
            .strip_prefix("data: ")
            .unwrap_or_else(|| panic!("not a data event: {event:?}"));
        assert!(
            !payload.contains('\n'),
            "a line break inside an event: {event:?}"
        );
        if payload == "[DONE]" {
            done += 1;
            continue;
        }
        assert_eq!(done, 0, "an event after [DONE]");
        let mut v: Value =
            serde_json::from_str(payload).unwrap_or_else(|e| panic!("not JSON ({e}): {payload:?}"));
        // Tool call ids are random: check their shape, then blank them.
        if let Some(calls) = v.pointer_mut("/choices/0/delta/tool_calls") {
            for call in calls.as_array_mut().expect("tool_calls is an array") {
                if let Some(id) = call.get_mut("id") {
                    assert!(id.as_str().is_some_and(|s| s.starts_with("call_")), "{id}");
                    *id = Value::Null;
                }
            }
        }
        events.push(v);
    }
    assert_eq!(done, 1, "one [DONE], last");

    // Reassemble what a client sees.
    let (mut content, mut reasoning) = (String::new(), String::new());
    let mut calls: Vec<(String, String)> = Vec::new();
    let mut finish = None;
    let mut error = None;
    for v in &events {
        if let Some(e) = v.get("error") {
            assert!(error.is_none(), "two error events");
            error = Some(e.clone());
            continue;
        }
        assert_eq!(v["object"], "chat.completion.chunk", "{v}");
        let Some(choice) = v["choices"].get(0) else {
            continue; // the usage chunk
        };
        let delta = &choice["delta"];
        if let Some(t) = delta["content"].as_str() {
            content.push_str(t);
        }
        if let Some(t) = delta["reasoning_content"].as_str() {
            reasoning.push_str(t);
        }
        if let Some(list) = delta["tool_calls"].as_array() {
            for c in list {
                let index = c["index"].as_u64().expect("a call index") as usize;
                if let Some(name) = c["function"]["name"].as_str() {
                    assert_eq!(index, calls.len(), "call indices are contiguous");
                    calls.push((name.to_owned(), String::new()));
                }
                let args = c["function"]["arguments"].as_str().expect("arguments text");
                calls
                    .get_mut(index)
                    .expect("arguments of an opened call")
                    .1
                    .push_str(args);
            }
        }
        if let Some(r) = choice["finish_reason"].as_str() {
            assert!(finish.is_none(), "two finish reasons");
            finish = Some(r.to_owned());
        }
    }
    let mut want = (String::new(), String::new(), Vec::new());
    for d in deltas {
        match d {
            Delta::Content(t) => want.0.push_str(t),
            Delta::Reasoning(t) => want.1.push_str(t),
            Delta::Call(n, a) => want.2.push((n.clone(), a.clone())),
            _ => {}
        }
    }
    assert_eq!(
        (content, reasoning, calls),
        want,
        "the stream does not say what the stages emitted"
    );
    match end {
        Ok(r) => {
            assert!(error.is_none());
            let name = match r {
                FinishReason::Complete | FinishReason::StopSequence(_) => "stop",
                FinishReason::Length => "length",
                FinishReason::ToolCalls => "tool_calls",
            };
            assert_eq!(finish.as_deref(), Some(name));
        }
        Err(_) => {
            assert!(finish.is_none(), "an error stream with a finish reason");
            let e = error.expect("an upstream error is an error event");
            assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
        }
    }
    events
}

fn check_calls(cfg: &Config, run: &Run) {
    let calls: Vec<_> = run
        .deltas
        .iter()
        .filter_map(|d| match d {
            Delta::Call(n, a) => Some((n, a)),
            _ => None,
        })
        .collect();
    let Some(set) = &cfg.tools else {
        assert!(calls.is_empty(), "a tool call without tools: {calls:?}");
        assert_ne!(run.end, Ok(FinishReason::ToolCalls));
        return;
    };
    if run.end == Ok(FinishReason::ToolCalls) {
        assert!(!calls.is_empty(), "finish tool_calls without a call");
    }
    if !calls.is_empty() && run.end.is_ok() {
        // A call that went out whole is what the answer ended with, even when a limit cut
        // text after it.
        assert_eq!(
            run.end,
            Ok(FinishReason::ToolCalls),
            "calls without tool_calls"
        );
    }
    if !set.parallel {
        assert!(
            calls.len() <= 1,
            "{} calls with parallel calls off",
            calls.len()
        );
    }
    for (name, args) in calls {
        assert!(set.spec(name).is_some(), "a call to {name:?}, not offered");
        if let Choice::Named(n) = &set.choice {
            assert_eq!(name, n);
        }
        let v: Value = serde_json::from_str(args)
            .unwrap_or_else(|e| panic!("arguments not JSON ({e}): {args:?}"));
        assert!(v.is_object(), "arguments not an object: {args}");
    }
}

fuzz_target!(|data: &[u8]| {
    let (h, body) = header(data);
    let cfg = config(h.config);
    let whole = run(&cfg, &[body]);
    check_calls(&cfg, &whole);
    for recipe in [h.a, h.b] {
        if recipe.mode % 7 == Recipe::WHOLE.mode {
            continue;
        }
        let split = run(&cfg, &recipe.chunks(body));
        assert_eq!(split, whole, "chunking {recipe:?} changed the outcome");
    }
});
