//! The hand-written frame reader (`qwen::scan`) against serde_json, its authority: on every
//! upstream capture, the simulator's frames, hand-picked edge cases and many thousands of
//! random mutations of them, whenever the reader accepts a payload serde must accept it too
//! and build the identical `Frame`. The reader must also actually take the hot path on the
//! captured token frames (otherwise the benchmark would measure the fallback).

// Tests and benches: a failed unwrap is a failure with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use qwen_proxy::qwen::frame::Frame;
use qwen_proxy::qwen::scan;
use qwen_proxy::sim::wire;
use support::{fixture, fixtures_dir, sse_payloads};

fn payloads(sse: &[u8]) -> Vec<Vec<u8>> {
    sse_payloads(&[sse])
        .iter()
        .map(|ev| ev.trim_ascii().to_vec())
        .collect()
}

fn captured() -> Vec<Vec<u8>> {
    let mut names: Vec<_> = std::fs::read_dir(fixtures_dir())
        .expect("fixtures directory")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".sse"))
        .collect();
    names.sort();
    assert!(names.len() >= 6, "fixtures missing: {names:?}");
    names.iter().flat_map(|n| payloads(&fixture(n))).collect()
}

fn simulated() -> Vec<Vec<u8>> {
    let usage = wire::Usage {
        input: 12,
        output: 3,
        reasoning: Some(2),
    };
    let mut sse = wire::response_created("c", "u", "r", 0);
    for shape in 0..4 {
        sse.push_str(&wire::delta(
            "r",
            "answer",
            "line\n\"q\" 通义",
            usage,
            shape,
            1,
        ));
    }
    sse.push_str(&wire::thinking(
        "r",
        &["t".into()],
        &["a".into(), "b\\c".into()],
        usage,
        1,
    ));
    for ev in wire::web_search("r", "天气", 1) {
        sse.push_str(&ev);
    }
    sse.push_str(&wire::finished("r", "answer", Some(1)));
    payloads(sse.as_bytes())
}

fn edge_cases() -> Vec<Vec<u8>> {
    [
        r#"{"choices":null,"usage":null,"response_id":null,"response.created":null}"#,
        r#"{"choices":[],"x":{}}"#,
        r#"{"choices":[{"delta":null},{"delta":{"content":"second"}}]}"#,
        r#"{"choices":[{"delta":{"content":null,"phase":null,"status":null,"reasoning_content":"r","extra":null}}]}"#,
        r#"{"choices":[{"delta":{"extra":{"image_list":[{"image":"u1"},{"image":null},{}],"reasoning_content":"x","summary_thought":{"content":[]}}}}]}"#,
        r#"{"choices":[{"delta":{"extra":{"image_list":null,"summary_thought":null}}}]}"#,
        r#"{"usage":{"input_tokens":0,"output_tokens":18446744073709551615,"output_tokens_details":null,"prompt_tokens_details":{"cached_tokens":null}}}"#,
        r#"{"choices":[{"delta":{"content":"\u00e9\ud83d\ude00\b\f\r\t\/\\\""}}]}"#,
        r#"{"response.created":{"chat_id":"c","parent_id":null,"response_id":"r","response_index":"1","x":[1,2]}}"#,
        r#"{"choices":[{"delta":{"content":"a"}}],"response_id":"r","timestamp":-1.5E-3}"#,
        "{\"choices\":[{\"delta\":{\"content\":\"\u{7f}\u{a0}\u{1F600}\"}}]}",
        "\t{ \"response_id\" :\r\n\"x\" }\n",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

/// The reader's result must be serde's whenever the reader accepts.
fn check(payload: &[u8]) -> bool {
    let Ok(fast) = scan::frame(payload) else {
        return false;
    };
    let reference: Result<Frame<'_>, _> = serde_json::from_slice(payload);
    match reference {
        Ok(reference) => assert_eq!(
            format!("{fast:?}"),
            format!("{reference:?}"),
            "differs from serde on {:?}",
            String::from_utf8_lossy(payload)
        ),
        Err(e) => panic!(
            "accepted what serde rejects ({e}): {:?}",
            String::from_utf8_lossy(payload)
        ),
    }
    true
}

#[test]
fn captured_token_frames_take_the_fast_path_and_agree() {
    for payload in captured().iter().chain(&simulated()).chain(&edge_cases()) {
        let text = String::from_utf8_lossy(payload);
        let error_shaped = text.contains("\"success\"") || text.contains("\"error\"");
        if payload.as_slice() == b"[DONE]" || error_shaped {
            assert!(scan::frame(payload).is_err(), "{text}");
            continue;
        }
        assert!(check(payload), "the fast path declined {text}");
    }
}

/// xorshift64*: deterministic, so a failure names a reproducible case.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Bytes that change JSON's meaning, plus invalid and multi-byte UTF-8.
const INTERESTING: &[u8] = b"{}[]\",:\\ \t\n0123456789-+.eEnultrfaubx/\x00\x1f\x7f\xc3\xa9\xff";

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut out = seed.to_vec();
    for _ in 0..1 + rng.below(3) {
        if out.is_empty() {
            out.push(INTERESTING[rng.below(INTERESTING.len())]);
            continue;
        }
        let at = rng.below(out.len());
        match rng.below(5) {
            0 => {
                out.remove(at);
            }
            1 => out.insert(at, INTERESTING[rng.below(INTERESTING.len())]),
            2 => out[at] = INTERESTING[rng.below(INTERESTING.len())],
            3 => out.truncate(at),
            _ => {
                // Duplicate a slice: repeated keys, nested values in odd places.
                let end = (at + 1 + rng.below(24)).min(out.len());
                let piece = out[at..end].to_vec();
                let to = rng.below(out.len());
                out.splice(to..to, piece);
            }
        }
    }
    out
}

#[test]
fn random_mutations_never_make_the_reader_disagree_with_serde() {
    let seeds: Vec<Vec<u8>> = captured()
        .into_iter()
        .chain(simulated())
        .chain(edge_cases())
        .collect();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let (mut accepted, mut declined) = (0u32, 0u32);
    for round in 0..200_000 {
        let seed = &seeds[round % seeds.len()];
        let input = mutate(&mut rng, seed);
        if check(&input) {
            accepted += 1;
        } else {
            declined += 1;
        }
    }
    // Both outcomes must be common, or the test exercises only one side of the contract.
    assert!(accepted > 10_000, "accepted {accepted}");
    assert!(declined > 10_000, "declined {declined}");
}
