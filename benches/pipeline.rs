//! Streaming-core throughput: SSE decode, translate and encode alone, one token frame parsed
//! four ways, and the whole upstream-bytes → OpenAI-bytes pipeline, over every fixture in
//! tests/fixtures/qwen plus a long synthetic answer (10,000 frames) and a
//! one-byte-per-chunk split. Each pipeline group also runs a naive
//! baseline (parse into `serde_json::Value`, build the chunk as a `Value`, `to_string`,
//! `format!`) so the report reads as a ratio against it.

// Tests and benches: a failed unwrap is a failure with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::path::Path;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use serde::de::IgnoredAny;
use serde_json::{json, Value};

use qwen_proxy::api::openai::encoder::ChunkEncoder;
use qwen_proxy::qwen::frame::Frame;
use qwen_proxy::qwen::sse::SseDecoder;
use qwen_proxy::sim::wire;
use qwen_proxy::translate::body::Render;
use qwen_proxy::translate::limits::Limits;
use qwen_proxy::translate::pipeline::{Pipeline, Progress};
use qwen_proxy::translate::state::FinishReason;
use qwen_proxy::translate::state::{Emit, Flow, Translator, Usage};

struct Input {
    name: String,
    chunks: Vec<Bytes>,
    bytes: u64,
}

fn inputs() -> Vec<Input> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen");
    let mut out = Vec::new();
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("fixtures at {}: {e}", dir.display()))
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "sse"))
        .collect();
    names.sort();
    for path in names {
        let data = std::fs::read(&path).expect("fixture readable");
        out.push(Input {
            name: path.file_stem().unwrap().to_string_lossy().into_owned(),
            bytes: data.len() as u64,
            chunks: vec![Bytes::from(data)],
        });
    }
    let long = synthetic(10_000);
    out.push(Input {
        name: "synthetic-10k-frames".into(),
        bytes: long.len() as u64,
        chunks: vec![long.clone()],
    });
    let bytes = long.len() as u64;
    out.push(Input {
        name: "synthetic-10k-one-byte-chunks".into(),
        bytes,
        chunks: (0..long.len()).map(|i| long.slice(i..i + 1)).collect(),
    });
    out
}

/// A long answer in captured wire format: 10,000 small answer frames with usage.
fn synthetic(frames: usize) -> Bytes {
    let mut s = wire::long_answer_events(frames).concat();
    s.push_str(&wire::finished("r", "answer", None));
    Bytes::from(s)
}

fn run_pipeline(chunks: &[Bytes]) -> usize {
    let mut p = Pipeline::new(Limits::default(), 0);
    let mut enc = ChunkEncoder::new("chatcmpl-bench", 1_780_000_000, "qwen3.7-plus", false);
    let mut total = 0;
    for c in chunks {
        let done = matches!(p.feed(c.clone(), &mut enc), Ok(Progress::Done(_)) | Err(_));
        total += enc.take().map_or(0, |b| b.len());
        if done {
            break;
        }
    }
    total
}

/// What a straightforward implementation does per event.
fn run_naive(chunks: &[Bytes]) -> usize {
    let mut buf = String::new();
    let mut total = 0;
    for c in chunks {
        buf.push_str(&String::from_utf8_lossy(c));
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            let Some(data) = event.trim().strip_prefix("data:") else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<Value>(data.trim()) else {
                continue;
            };
            let delta = &v["choices"][0]["delta"];
            let Some(text) = delta["content"].as_str() else {
                continue;
            };
            if text.is_empty() {
                continue;
            }
            let chunk = json!({
                "id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1_780_000_000,
                "model": "qwen3.7-plus",
                "choices": [{"index": 0, "delta": {"content": text}, "logprobs": null, "finish_reason": null}]
            });
            let json = chunk.to_string();
            let frame = format!("data: {json}\n\n");
            total += frame.len();
        }
    }
    total
}

fn decode_only(chunks: &[Bytes]) -> usize {
    let mut d = SseDecoder::default();
    let mut n = 0;
    for c in chunks {
        d.push(c.clone());
        while let Ok(Some(ev)) = d.next_data() {
            n += ev.len();
        }
    }
    n
}

/// Every data payload of an input, for the per-frame parse group.
fn payloads(chunks: &[Bytes]) -> Vec<Bytes> {
    let mut d = SseDecoder::default();
    let mut out = Vec::new();
    for c in chunks {
        d.push(c.clone());
        while let Ok(Some(ev)) = d.next_data() {
            out.push(ev);
        }
    }
    out
}

/// A translated delta, recorded once so the encoder can be timed alone.
enum Delta {
    Reasoning(String),
    Content(String),
}

/// Sink for the translator alone: counts bytes, keeps nothing.
struct Count(usize);

impl Emit for Count {
    fn reasoning(&mut self, text: &str) {
        self.0 += text.len();
    }
    fn content(&mut self, text: &str) {
        self.0 += text.len();
    }
}

/// Sink that records the deltas for the encoder group.
struct Record(Vec<Delta>);

impl Emit for Record {
    fn reasoning(&mut self, text: &str) {
        self.0.push(Delta::Reasoning(text.to_owned()));
    }
    fn content(&mut self, text: &str) {
        self.0.push(Delta::Content(text.to_owned()));
    }
}

/// The translator alone, over already-cut payloads (errors end the stream, as in the proxy).
fn translate_only(payloads: &[Bytes], out: &mut impl Emit) {
    let mut t = Translator::new();
    for p in payloads {
        if !matches!(t.on_data(p, out), Ok(Flow::Continue)) {
            break;
        }
    }
}

/// The encoder alone, over the deltas the translator produced, then the final chunks.
fn encode_only(deltas: &[Delta]) -> usize {
    let mut enc = ChunkEncoder::new("chatcmpl-bench", 1_780_000_000, "qwen3.7-plus", false);
    let mut total = 0;
    for d in deltas {
        match d {
            Delta::Reasoning(t) => enc.reasoning(t),
            Delta::Content(t) => enc.content(t),
        }
        total += enc.take().map_or(0, |b| b.len());
    }
    enc.finish(FinishReason::Complete, Usage::default());
    total + enc.take().map_or(0, |b| b.len())
}

/// One upstream token frame parsed four ways: the hand-written reader (with serde fallback),
/// serde into the same borrowed `Frame`, serde validating only (`IgnoredAny`: the floor of
/// any strict JSON pass with serde_json), and the naive `Value`.
fn frame_parse(c: &mut Criterion, inputs: &[Input]) {
    let Some(plain) = inputs.iter().find(|i| i.name == "plain-answer") else {
        return;
    };
    let token_frame = payloads(&plain.chunks).swap_remove(1);
    let mut g = c.benchmark_group("frame_parse");
    g.throughput(Throughput::Bytes(token_frame.len() as u64));
    g.bench_function("scan", |b| {
        b.iter(|| Frame::parse(black_box(&token_frame)).is_ok())
    });
    g.bench_function("serde-frame", |b| {
        b.iter(|| serde_json::from_slice::<Frame<'_>>(black_box(&token_frame)).is_ok())
    });
    g.bench_function("serde-ignored-any", |b| {
        b.iter(|| serde_json::from_slice::<IgnoredAny>(black_box(&token_frame)).is_ok())
    });
    g.bench_function("serde-value", |b| {
        b.iter(|| serde_json::from_slice::<Value>(black_box(&token_frame)).is_ok())
    });
    g.finish();
}

fn benches(c: &mut Criterion) {
    let inputs = inputs();
    frame_parse(c, &inputs);
    let mut g = c.benchmark_group("sse_decode");
    for i in &inputs {
        g.throughput(Throughput::Bytes(i.bytes));
        g.bench_with_input(BenchmarkId::new("decoder", &i.name), &i.chunks, |b, ch| {
            b.iter(|| decode_only(black_box(ch)))
        });
    }
    g.finish();
    // The stages alone, each with `Throughput::Bytes` of the upstream input so the three
    // groups and the pipeline read as shares of one budget.
    let mut g = c.benchmark_group("translate");
    for i in &inputs {
        let payloads = payloads(&i.chunks);
        g.throughput(Throughput::Bytes(i.bytes));
        g.bench_with_input(
            BenchmarkId::new("translator", &i.name),
            &payloads,
            |b, p| {
                b.iter(|| {
                    let mut sink = Count(0);
                    translate_only(black_box(p), &mut sink);
                    sink.0
                })
            },
        );
    }
    g.finish();
    let mut g = c.benchmark_group("encode");
    for i in &inputs {
        let mut deltas = Record(Vec::new());
        translate_only(&payloads(&i.chunks), &mut deltas);
        let deltas = deltas.0;
        g.throughput(Throughput::Bytes(i.bytes));
        g.bench_with_input(BenchmarkId::new("encoder", &i.name), &deltas, |b, d| {
            b.iter(|| encode_only(black_box(d)))
        });
    }
    g.finish();
    let mut g = c.benchmark_group("pipeline");
    for i in &inputs {
        g.throughput(Throughput::Bytes(i.bytes));
        g.bench_with_input(
            BenchmarkId::new("qwen-proxy", &i.name),
            &i.chunks,
            |b, ch| b.iter(|| run_pipeline(black_box(ch))),
        );
        g.bench_with_input(
            BenchmarkId::new("naive-value", &i.name),
            &i.chunks,
            |b, ch| b.iter(|| run_naive(black_box(ch))),
        );
    }
    g.finish();
}

criterion_group!(name = pipeline; config = Criterion::default().sample_size(20); targets = benches);
criterion_main!(pipeline);
