//! The tool-call scanner's cost (issue 11): the production stage chain of a turn
//! (`chat::turn::TurnStages`) over the same upstream bytes, once without tools (pass-through:
//! no scanner) and once with tools (emulation: the scanner watches every byte of the answer).
//! Inputs: 10,000 answer frames of plain prose; 10,000 frames of Markdown and code, full of
//! the characters that can start a marker (`[`, `<`, line-start `{`, fences), so text is
//! held back and re-checked often; and the prose followed by one call. Throughput is of the
//! upstream bytes, so the variants read as a ratio.

// Tests and benches: a failed unwrap is a failure with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use serde_json::json;

use qwen_proxy::api::openai::encoder::ChunkEncoder;
use qwen_proxy::chat::TurnStages;
use qwen_proxy::sim::wire::{self, Usage};
use qwen_proxy::tools::scan::{ScanConfig, ToolScan};
use qwen_proxy::tools::{Choice, ToolSet, ToolSpec, DEFAULT_RESERVED};
use qwen_proxy::translate::body::Render;
use qwen_proxy::translate::limits::Limits;
use qwen_proxy::translate::pipeline::{Pipeline, Progress};

const PROSE: [&str; 7] = ["Hello", " wor", "ld, ", "通义", "千问 ", "and ", "more"];
const MARKDOWN: [&str; 9] = [
    "See [the docs](https://x.y) ",
    "and `a[0] < b` ",
    "then\n```rust\nlet v = vec![1];\n```\n",
    "<div>html</div> ",
    "\n{\"not\": \"a call\"}\n",
    "- [ ] todo\n",
    "通义千问 ",
    "[TOOL-ish] text ",
    "x <= y\n",
];

const CALL_TEXT: &str = "\n[TOOL CALL]\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n[END TOOL CALL]";

fn frames(words: &[&str], n: usize) -> String {
    let mut s = wire::response_created("c", "u", "r", 0);
    for i in 0..n {
        let usage = Usage {
            input: 1049,
            output: i as u64 + 1,
            reasoning: None,
        };
        s.push_str(&wire::delta(
            "r",
            "answer",
            words[i % words.len()],
            usage,
            i,
            1_780_000_000,
        ));
    }
    s
}

fn finished(mut s: String) -> Bytes {
    s.push_str(&wire::finished("r", "answer", None));
    Bytes::from(s)
}

fn inputs() -> Vec<(&'static str, Bytes)> {
    let mut with_call = frames(&PROSE, 10_000);
    let usage = Usage {
        input: 1049,
        output: 10_001,
        reasoning: None,
    };
    with_call.push_str(&wire::delta(
        "r",
        "answer",
        CALL_TEXT,
        usage,
        0,
        1_780_000_000,
    ));
    vec![
        ("prose-10k-frames", finished(frames(&PROSE, 10_000))),
        ("markdown-10k-frames", finished(frames(&MARKDOWN, 10_000))),
        ("prose-then-a-call", finished(with_call)),
    ]
}

fn tool_set() -> Arc<ToolSet> {
    let reserved: Vec<String> = DEFAULT_RESERVED.iter().map(|s| (*s).to_owned()).collect();
    let spec = |name: &str| ToolSpec {
        name: name.to_owned(),
        description: Some("a tool".to_owned()),
        parameters: json!({"type": "object", "properties": {"city": {"type": "string"}}}),
    };
    Arc::new(ToolSet::new(
        vec![spec("get_weather"), spec("read_file"), spec("Write")],
        Choice::Auto,
        true,
        &reserved,
    ))
}

/// The turn's stage chain as the core builds it for a stream (no conversation transcript,
/// which is the same in both variants).
fn stages(tools: Option<&Arc<ToolSet>>) -> TurnStages {
    let scan = tools.map(|set| {
        ToolScan::new(ScanConfig {
            set: set.clone(),
            retry_allowed: false,
            streaming: true,
        })
    });
    (scan, (None, (Limits::default(), (None, None))))
}

/// The content text and the number of calls a client receives (not timed).
fn outcome(bytes: &Bytes, tools: Option<&Arc<ToolSet>>) -> (String, usize) {
    let mut p = Pipeline::new(stages(tools), 0);
    let mut enc = ChunkEncoder::new("c", 1, "m", false);
    if !matches!(p.feed(bytes.clone(), &mut enc), Ok(Progress::Done(_))) {
        let _ = p.end_of_input(&mut enc);
    }
    let out = enc.take().unwrap();
    let mut text = String::new();
    let mut calls = 0;
    for event in std::str::from_utf8(&out).unwrap().split("\n\n") {
        let Some(Ok(v)) = event
            .strip_prefix("data: ")
            .filter(|d| *d != "[DONE]")
            .map(serde_json::from_str::<serde_json::Value>)
        else {
            continue;
        };
        let delta = &v["choices"][0]["delta"];
        text.push_str(delta["content"].as_str().unwrap_or(""));
        calls += usize::from(delta["tool_calls"][0].get("id").is_some());
    }
    (text, calls)
}

fn run(bytes: &Bytes, tools: Option<&Arc<ToolSet>>) -> usize {
    let mut p = Pipeline::new(stages(tools), 0);
    let mut enc = ChunkEncoder::new("chatcmpl-bench", 1_780_000_000, "qwen3.7-plus", false);
    let mut total = 0;
    let done = matches!(
        p.feed(bytes.clone(), &mut enc),
        Ok(Progress::Done(_)) | Err(_)
    );
    if !done {
        let _ = p.end_of_input(&mut enc);
    }
    total += enc.take().map_or(0, |b| b.len());
    total
}

fn benches(c: &mut Criterion) {
    let set = tool_set();
    let mut g = c.benchmark_group("tool_scan");
    for (name, bytes) in inputs() {
        // The emulation variant really emits what the input holds (a sanity check that
        // the bench measures the scanner doing its job, not an early exit).
        let (text, calls) = outcome(&bytes, Some(&set));
        assert_eq!(calls, usize::from(name.ends_with("a-call")), "{name}");
        // The client sees the same text, up to the line break before the call block.
        let plain = outcome(&bytes, None).0.replace(CALL_TEXT, "\n");
        let tail = |t: &str| t.chars().rev().take(20).collect::<String>();
        assert!(
            text == plain,
            "{name}: {:?} vs {:?}",
            tail(&text),
            tail(&plain)
        );
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        g.bench_with_input(BenchmarkId::new("pass-through", name), &bytes, |b, x| {
            b.iter(|| run(black_box(x), None))
        });
        g.bench_with_input(BenchmarkId::new("emulation", name), &bytes, |b, x| {
            b.iter(|| run(black_box(x), Some(&set)))
        });
    }
    g.finish();
}

criterion_group!(name = tool_scan; config = Criterion::default().sample_size(20); targets = benches);
criterion_main!(tool_scan);
