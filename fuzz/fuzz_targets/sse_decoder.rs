//! The upstream SSE decoder (`qwen::sse`) and the frame reader (`qwen::scan`) over chunkings
//! the fuzzer chooses.
//!
//! Invariants:
//! * The events (data payloads) do not depend on how the bytes are split: the body whole,
//!   in chunking A (read borrowed: `next_data_ref`/`finish_ref`) and in chunking B (read
//!   owned: `next_data`/`finish`, and — config bit 0 — drained lazily, at most a few events
//!   between pushes, the decoder's "not drained" path) give the same list.
//! * With the default cap (1 MiB) an input this small never errors.
//! * With a small cap (config bit 1; cap from byte 1) the events before an
//!   `EventTooLarge` are a prefix of the uncapped events (all of them without an error),
//!   and a body no longer than the cap never errors.
//! * Every payload through the frame reader: whenever the hand-written reader accepts it,
//!   serde_json accepts it too and builds the identical `Frame` (its contract), and
//!   `Frame::parse` never panics.
//!
//! Header: see `fuzz_support`; config byte 0: bit 0 lazy draining in B, bit 1 small cap;
//! byte 1: the small cap (`8 + 4 * byte`).

#![no_main]

use bytes::Bytes;
use fuzz_support::{header, Recipe};
use libfuzzer_sys::fuzz_target;
use qwen_proxy::qwen::frame::Frame;
use qwen_proxy::qwen::scan;
use qwen_proxy::qwen::sse::{SseDecoder, SseError, DEFAULT_MAX_EVENT_BYTES};

/// Decode `chunks` reading owned payloads; `lazy`: take at most this many events after a
/// push before pushing the next chunk.
fn decode_owned(
    max: usize,
    chunks: &[&[u8]],
    lazy: Option<usize>,
) -> (Vec<Vec<u8>>, Option<SseError>) {
    let mut d = SseDecoder::new(max);
    let mut out = Vec::new();
    for c in chunks {
        d.push(Bytes::copy_from_slice(c));
        let mut taken = 0;
        loop {
            if lazy.is_some_and(|n| taken >= n) {
                break;
            }
            match d.next_data() {
                Ok(Some(ev)) => {
                    out.push(ev.to_vec());
                    taken += 1;
                }
                Ok(None) => break,
                Err(e) => return (out, Some(e)),
            }
        }
    }
    loop {
        match d.next_data() {
            Ok(Some(ev)) => out.push(ev.to_vec()),
            Ok(None) => break,
            Err(e) => return (out, Some(e)),
        }
    }
    match d.finish() {
        Ok(Some(ev)) => out.push(ev.to_vec()),
        Ok(None) => {}
        Err(e) => return (out, Some(e)),
    }
    // After the end nothing more comes out.
    assert_eq!(d.next_data(), Ok(None));
    (out, None)
}

/// The same, reading borrowed payloads (the pipeline's hot path).
fn decode_borrowed(max: usize, chunks: &[&[u8]]) -> (Vec<Vec<u8>>, Option<SseError>) {
    let mut d = SseDecoder::new(max);
    let mut out = Vec::new();
    for c in chunks {
        d.push(Bytes::copy_from_slice(c));
        loop {
            match d.next_data_ref() {
                Ok(Some(ev)) => out.push(ev.to_vec()),
                Ok(None) => break,
                Err(e) => return (out, Some(e)),
            }
        }
    }
    match d.finish_ref() {
        Ok(Some(ev)) => out.push(ev.to_vec()),
        Ok(None) => {}
        Err(e) => return (out, Some(e)),
    }
    (out, None)
}

/// The frame reader's contract on one payload.
fn check_frame(payload: &[u8]) {
    let trimmed = payload.trim_ascii();
    let _ = Frame::parse(trimmed);
    if let Ok(fast) = scan::frame(trimmed) {
        match serde_json::from_slice::<Frame<'_>>(trimmed) {
            Ok(reference) => assert_eq!(
                format!("{fast:?}"),
                format!("{reference:?}"),
                "the frame reader differs from serde on {:?}",
                String::from_utf8_lossy(trimmed)
            ),
            Err(e) => panic!(
                "the frame reader accepted what serde rejects ({e}): {:?}",
                String::from_utf8_lossy(trimmed)
            ),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let (h, body) = header(data);
    let lazy = (h.config[0] & 1 != 0).then_some(1 + usize::from(h.a.seed % 3));
    let small_cap = h.config[0] & 2 != 0;

    let (whole, err) = decode_owned(DEFAULT_MAX_EVENT_BYTES, &[body], None);
    assert_eq!(err, None, "a {}-byte body hit the default cap", body.len());

    let (a, err) = decode_borrowed(DEFAULT_MAX_EVENT_BYTES, &h.a.chunks(body));
    assert_eq!(err, None);
    assert_eq!(a, whole, "chunking A ({:?}) changed the events", h.a);

    let (b, err) = decode_owned(DEFAULT_MAX_EVENT_BYTES, &h.b.chunks(body), lazy);
    assert_eq!(err, None);
    assert_eq!(
        b, whole,
        "chunking B ({:?}, lazy {lazy:?}) changed the events",
        h.b
    );

    if small_cap {
        let cap = 8 + 4 * usize::from(h.config[1]);
        for recipe in [h.a, h.b, Recipe::WHOLE] {
            let (events, err) = decode_owned(cap, &recipe.chunks(body), None);
            match err {
                None => assert_eq!(events, whole, "cap {cap}, {recipe:?}"),
                Some(SseError::EventTooLarge { limit }) => {
                    assert_eq!(limit, cap);
                    assert!(
                        body.len() > cap,
                        "a {}-byte body broke the cap {cap}",
                        body.len()
                    );
                    assert!(
                        whole.starts_with(&events),
                        "cap {cap}, {recipe:?}: events before the error are not a prefix"
                    );
                }
            }
        }
    }

    for payload in &whole {
        check_frame(payload);
    }
});
