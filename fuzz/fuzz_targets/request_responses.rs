//! `POST /v1/responses` bodies (`api::responses::request::parse`).
//!
//! Invariants:
//! * No panic.
//! * Every error is a 400 `invalid_request_error` that names its parameter (unless the body
//!   as a whole is not a JSON object), with a bounded message that echoes client text only
//!   escaped, and the OpenAI error body says the same (`fuzz_support::check_request_error`).
//! * A parsed request: the model is not empty, a `previous_response_id` is not empty,
//!   every `item_reference` has an id and a position among the messages, the tool set is
//!   consistent (`fuzz_support::check_turn!`), and parsing is deterministic.
//!
//! Input: the body as it is; or, after a leading 0 byte, a JSON object generated from the
//! rest with the API's keys (`fuzz_support::request_body`).

#![no_main]

use fuzz_support::{check_request_parser, ErrorShape};
use libfuzzer_sys::fuzz_target;
use qwen_proxy::api::responses::request::parse;

const KEYS: &[&str] = &[
    "instructions",
    "input",
    "previous_response_id",
    "max_output_tokens",
    "reasoning",
    "effort",
    "summary",
    "text",
    "format",
    "store",
    "prompt_cache_key",
    "call_id",
    "output",
    "encrypted_content",
    "include",
    "truncation",
    "background",
    "verbosity",
    "status",
];

fuzz_target!(|data: &[u8]| {
    check_request_parser!(data, KEYS, parse, ErrorShape::OpenAi, |req, body| {
        let o = &req.options;
        assert!(
            o.previous_response_id
                .as_ref()
                .is_none_or(|id| !id.is_empty()),
            "an empty previous_response_id"
        );
        for (at, id) in &o.references {
            assert!(!id.is_empty(), "an empty item_reference id");
            assert!(
                *at <= req.turn.messages.len(),
                "a reference past the messages"
            );
        }
    });
});
