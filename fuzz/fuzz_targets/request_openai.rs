//! `POST /v1/chat/completions` bodies (`api::openai::request::parse`).
//!
//! Invariants:
//! * No panic.
//! * Every error is a 400 `invalid_request_error` that names its parameter (unless the body
//!   as a whole is not a JSON object), with a bounded message that echoes client text only
//!   escaped, and the OpenAI error body says the same (`fuzz_support::check_request_error`).
//! * A parsed request: the model is trimmed and not empty, the tool set is consistent
//!   (`fuzz_support::check_turn!`), and parsing is deterministic (the same turn twice).
//!
//! Input: the body as it is; or, after a leading 0 byte, a JSON object generated from the
//! rest with the API's keys (`fuzz_support::request_body`).

#![no_main]

use fuzz_support::{check_request_parser, ErrorShape};
use libfuzzer_sys::fuzz_target;
use qwen_proxy::api::openai::request::parse;

const KEYS: &[&str] = &[
    "n",
    "stream_options",
    "include_usage",
    "functions",
    "function_call",
    "reasoning_effort",
    "enable_thinking",
    "max_completion_tokens",
    "seed",
    "logprobs",
    "modalities",
    "audio",
    "allowed_tools",
    "mode",
    "refusal",
    "reasoning_content",
    "file",
    "file_data",
    "filename",
    "input_audio",
    "prediction",
    "web_search_options",
    "store",
    "service_tier",
];

fuzz_target!(|data: &[u8]| {
    check_request_parser!(data, KEYS, parse, ErrorShape::OpenAi, |req, body| {
        assert_eq!(req.turn.model, req.turn.model.trim(), "an untrimmed model");
    });
});
