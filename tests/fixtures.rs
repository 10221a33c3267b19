//! Every upstream capture in tests/fixtures/qwen through the decoder and the translator:
//! split at every byte offset and one byte per chunk gives identical events and identical
//! OpenAI output, and the output is what the fixture README states.

// Tests and benches: a failed unwrap is a failure with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use bytes::Bytes;
use qwen_proxy::api::openai::encoder::ChunkEncoder;
use qwen_proxy::error::UpstreamClass;
use qwen_proxy::translate::aggregate::Collected;
use qwen_proxy::translate::body::Render;
use qwen_proxy::translate::limits::Limits;
use qwen_proxy::translate::pipeline::{Pipeline, Progress};
use qwen_proxy::translate::state::FinishReason;
use qwen_proxy::translate::state::Usage;
use support::{fixture, parse_sse, sse_payloads, summarize};

const FIXTURES: [&str; 6] = [
    "plain-answer.sse",
    "thinking-answer.sse",
    "legacy-think.sse",
    "web-search.sse",
    "image-gen.sse",
    "quota-after-partial.sse",
];

#[test]
fn decoder_is_split_invariant_on_every_fixture() {
    for name in FIXTURES {
        let input = fixture(name);
        let whole = sse_payloads(&[&input]);
        assert!(!whole.is_empty(), "{name}");
        for cut in 0..=input.len() {
            assert_eq!(
                sse_payloads(&[&input[..cut], &input[cut..]]),
                whole,
                "{name} cut at {cut}"
            );
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(sse_payloads(&bytes), whole, "{name} byte by byte");
        // CRLF line ends give the same events.
        let crlf = String::from_utf8(input.clone())
            .unwrap()
            .replace('\n', "\r\n");
        assert_eq!(sse_payloads(&[crlf.as_bytes()]), whole, "{name} with CRLF");
    }
}

/// Run the pipeline over `chunks`; return the collected message, the outcome and usage.
fn translate(
    chunks: &[&[u8]],
) -> (
    Collected,
    Result<FinishReason, qwen_proxy::error::UpstreamError>,
    Usage,
) {
    let mut p = Pipeline::new(Limits::default(), 0);
    let mut out = Collected::default();
    for c in chunks {
        match p.feed(Bytes::copy_from_slice(c), &mut out) {
            Ok(Progress::Continue) => {}
            Ok(Progress::Done(r)) => return (out, Ok(r), p.usage()),
            Err(e) => return (out, Err(e), p.usage()),
        }
    }
    let r = p.end_of_input(&mut out);
    (out, r, p.usage())
}

/// The full OpenAI byte stream for `chunks`.
fn encode(chunks: &[&[u8]]) -> Vec<u8> {
    let mut p = Pipeline::new(Limits::default(), 0);
    let mut enc = ChunkEncoder::new("chatcmpl-test", 1, "m", true);
    let mut out = Vec::new();
    let mut end = None;
    for c in chunks {
        match p.feed(Bytes::copy_from_slice(c), &mut enc) {
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
        out.extend(enc.take().unwrap_or_default());
    }
    match end.unwrap_or_else(|| p.end_of_input(&mut enc)) {
        Ok(r) => enc.finish(r, p.usage()),
        Err(e) => enc.error(&e.into()),
    }
    out.extend(enc.take().unwrap_or_default());
    out
}

#[test]
fn openai_output_is_split_invariant_on_every_fixture() {
    for name in FIXTURES {
        let input = fixture(name);
        let whole = encode(&[&input]);
        for cut in 0..=input.len() {
            assert_eq!(
                encode(&[&input[..cut], &input[cut..]]),
                whole,
                "{name} cut at {cut}"
            );
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(encode(&bytes), whole, "{name} byte by byte");
    }
}

#[test]
fn plain_answer() {
    let (msg, end, usage) = translate(&[&fixture("plain-answer.sse")]);
    assert_eq!(msg.content, "Hi!");
    assert_eq!(msg.reasoning, "");
    assert_eq!(end, Ok(FinishReason::Complete));
    assert_eq!(
        (
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.total_tokens()
        ),
        (1049, 2, 1051)
    );
}

#[test]
fn thinking_answer() {
    let input = fixture("thinking-answer.sse");
    let (msg, end, usage) = translate(&[&input]);
    assert_eq!(
        msg.reasoning,
        "我是一位由阿里巴巴通义实验室研发的超大规模语言模型……\n\n我会说明身份与开发者，保持一句话。"
    );
    assert_eq!(
        msg.content,
        "我是通义千问（Qwen），由阿里巴巴研发的大语言模型。"
    );
    assert_eq!(end, Ok(FinishReason::Complete));
    assert_eq!((usage.prompt_tokens, usage.completion_tokens), (1438, 815));
    assert_eq!(usage.reasoning_tokens, Some(418));

    // Streamed: each paragraph appears exactly once across the reasoning deltas.
    let s = summarize(&parse_sse(&encode(&[&input])));
    assert_eq!(s.reasoning, msg.reasoning);
    assert_eq!(s.content, msg.content);
    assert_eq!(
        s.usage.unwrap()["completion_tokens_details"]["reasoning_tokens"],
        418
    );
}

#[test]
fn legacy_think() {
    let (msg, end, _) = translate(&[&fixture("legacy-think.sse")]);
    assert_eq!(msg.reasoning, "用户问的是……");
    assert_eq!(msg.content, "答案是……");
    assert_eq!(end, Ok(FinishReason::Complete));
}

#[test]
fn web_search_tool_frames_do_not_leak() {
    let input = fixture("web-search.sse");
    let (msg, end, usage) = translate(&[&input]);
    assert_eq!(msg.content, "北京今天晴，最高气温约 30℃[[1]]。");
    assert_eq!(msg.reasoning, "");
    assert_eq!(end, Ok(FinishReason::Complete));
    assert_eq!(usage.prompt_tokens, 3120);
    let out = String::from_utf8(encode(&[&input])).unwrap();
    assert!(
        !out.contains("tool_calls") && !out.contains("web_search") && !out.contains("example.com")
    );
}

#[test]
fn image_gen_url_reaches_the_client() {
    let (msg, end, _) = translate(&[&fixture("image-gen.sse")]);
    assert!(
        msg.content
            .contains("https://cdn.qwenlm.ai/output/<uid>/t2i/<rid>/1780470000.png?key=eyJ…"),
        "{}",
        msg.content
    );
    assert!(msg.content.starts_with("![image]("));
    assert_eq!(end, Ok(FinishReason::Complete));
}

#[test]
fn quota_after_partial() {
    let input = fixture("quota-after-partial.sse");
    let (msg, end, _) = translate(&[&input]);
    assert_eq!(msg.content, "Partial useful answer");
    let err = end.unwrap_err();
    assert_eq!(err.class, UpstreamClass::RateLimited);
    assert_eq!(
        err.retry_after,
        Some(std::time::Duration::from_secs(4 * 3600))
    );

    // Streamed: the partial content, then an in-band rate-limit error, then [DONE].
    let events = parse_sse(&encode(&[&input]));
    let s = summarize(&events);
    assert_eq!(s.content, "Partial useful answer");
    assert_eq!(s.finish_reason, None);
    assert_eq!(s.error.unwrap()["type"], "rate_limit_error");
}
