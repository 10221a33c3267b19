//! The tool-call scanner (`tools::scan::ToolScan`, a pipeline stage) over answer text split
//! at fuzzer-chosen places (on character boundaries, as the translator's deltas are).
//!
//! Invariants:
//! * Split invariance (tool-calling.md §6.5): the text whole and in two chunkings gives the
//!   same content (as one text; how it is cut may differ), the same calls at the same places
//!   in it, the same reasoning, finish reason, retry hint and statistics.
//! * Calls: only offered names (the named one under a named `tool_choice`), arguments
//!   compact JSON of an object (re-serialising them changes nothing), at most one without
//!   parallel calls.
//! * A `tool_calls` finish if and only if there are calls (and `emitted` counts them); a
//!   retry hint only when retries are allowed and no call went out, and — streaming — only
//!   while nothing (no content, no reasoning) reached the client.
//!
//! Input: the header (see `fuzz_support`), then UTF-8 text (invalid bytes replaced). Config
//! byte 0: bits 0-1 `tool_choice` (auto, required, named `get_weather`, named `Write` — a
//! reserved name the model sees aliased), bit 2 parallel calls, bit 3 retry allowed, bit 4
//! streaming, bit 5: the text up to its first NUL is the thinking (reasoning), the rest the
//! answer. Byte 1: unused.
//!
//! As in the pipeline, content stops once the scanner has decided the answer
//! (`finish_reason` set), then the stage is flushed.

#![no_main]

use std::sync::Arc;

use fuzz_support::header;
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

use qwen_proxy::tools::prompt::Hint;
use qwen_proxy::tools::scan::{ScanConfig, ScanStats, ToolScan};
use qwen_proxy::tools::{Choice, ToolSet, ToolSpec, DEFAULT_RESERVED};
use qwen_proxy::translate::stage::Stage;
use qwen_proxy::translate::state::{Emit, FinishReason, PlatformFrame, ToolCall};

fn tool_set(c: u8) -> ToolSet {
    let choice = match c & 3 {
        0 => Choice::Auto,
        1 => Choice::Required,
        2 => Choice::Named("get_weather".to_owned()),
        _ => Choice::Named("Write".to_owned()),
    };
    let spec = |name: &str, parameters: Value| ToolSpec {
        name: name.to_owned(),
        description: None,
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
        spec(
            "Write",
            json!({"type":"object","properties":{"path":{"type":"string"}}}),
        ),
        spec("read_file", json!({})),
    ];
    if let Choice::Named(n) = &choice {
        tools.retain(|t| t.name == *n);
    }
    let reserved: Vec<String> = DEFAULT_RESERVED.iter().map(|s| (*s).to_owned()).collect();
    ToolSet::new(tools, choice, c & 4 != 0, &reserved)
}

/// What the client receives: content merged into runs, calls between them.
#[derive(Debug, Default, PartialEq)]
struct Out {
    answer: Vec<Piece>,
    reasoning: String,
    platform: usize,
}

#[derive(Debug, PartialEq)]
enum Piece {
    Text(String),
    Call(String, String),
}

impl Emit for Out {
    fn reasoning(&mut self, text: &str) {
        self.reasoning.push_str(text);
    }
    fn content(&mut self, text: &str) {
        if let Some(Piece::Text(t)) = self.answer.last_mut() {
            t.push_str(text);
        } else if !text.is_empty() {
            self.answer.push(Piece::Text(text.to_owned()));
        }
    }
    fn tool_call(&mut self, call: &ToolCall<'_>) {
        self.answer
            .push(Piece::Call(call.name.to_owned(), call.arguments.to_owned()));
    }
    fn platform_call(&mut self, _: PlatformFrame<'_>) {
        self.platform += 1;
    }
}

#[derive(Debug, PartialEq)]
struct Outcome {
    out: Out,
    finish: Option<FinishReason>,
    retry: Option<Hint>,
    stats: ScanStats,
}

fn scan(set: &Arc<ToolSet>, c: u8, thinking: &[&str], answer: &[&str]) -> Outcome {
    let mut scan = ToolScan::new(ScanConfig {
        set: set.clone(),
        retry_allowed: c & 8 != 0,
        streaming: c & 16 != 0,
    });
    let mut out = Out::default();
    for t in thinking {
        scan.reasoning(t, &mut out);
    }
    for piece in answer {
        if scan.finish_reason().is_some() {
            break;
        }
        scan.content(piece, &mut out);
    }
    scan.flush(&mut out);
    Outcome {
        out,
        finish: scan.finish_reason(),
        retry: scan.retry(),
        stats: scan.stats(),
    }
}

fuzz_target!(|data: &[u8]| {
    let (h, body) = header(data);
    let c = h.config[0];
    let text = String::from_utf8_lossy(body);
    let (thinking, answer) = match text.split_once('\0') {
        Some((t, a)) if c & 32 != 0 => (t, a),
        _ => ("", &*text),
    };
    let set = Arc::new(tool_set(c));
    let whole = scan(
        &set,
        c,
        &[thinking]
            .into_iter()
            .filter(|t| !t.is_empty())
            .collect::<Vec<_>>(),
        &[answer]
            .into_iter()
            .filter(|t| !t.is_empty())
            .collect::<Vec<_>>(),
    );
    for recipe in [h.a, h.b] {
        let split = scan(&set, c, &recipe.pieces(thinking), &recipe.pieces(answer));
        assert_eq!(split, whole, "chunking {recipe:?} changed the outcome");
    }

    let calls: Vec<(&String, &String)> = whole
        .out
        .answer
        .iter()
        .filter_map(|p| match p {
            Piece::Call(n, a) => Some((n, a)),
            Piece::Text(_) => None,
        })
        .collect();
    for (name, args) in &calls {
        assert!(set.spec(name).is_some(), "a call to {name:?}, not offered");
        if let Choice::Named(n) = &set.choice {
            assert_eq!(*name, n);
        }
        let v: Value = serde_json::from_str(args)
            .unwrap_or_else(|e| panic!("arguments not JSON ({e}): {args:?}"));
        assert!(v.is_object(), "arguments not an object: {args}");
        assert_eq!(v.to_string(), **args, "arguments not compact");
    }
    if !set.parallel {
        assert!(
            calls.len() <= 1,
            "{} calls with parallel calls off",
            calls.len()
        );
    }
    assert_eq!(whole.stats.emitted as usize, calls.len());
    assert_eq!(
        whole.finish == Some(FinishReason::ToolCalls),
        !calls.is_empty(),
        "finish {:?} with {} calls",
        whole.finish,
        calls.len()
    );
    if whole.retry.is_some() {
        assert!(c & 8 != 0, "a retry hint with retries off");
        assert!(calls.is_empty(), "a retry after a call went out");
        if c & 16 != 0 {
            assert!(
                whole.out.answer.is_empty() && whole.out.reasoning.is_empty(),
                "a retry after the client saw part of the streamed answer: {:?}",
                whole.out
            );
        }
    }
});
