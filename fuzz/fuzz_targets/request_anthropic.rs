//! `POST /v1/messages` bodies (`api::anthropic::request::parse`).
//!
//! Invariants:
//! * No panic.
//! * Every error is a 400 `invalid_request_error` that names its parameter (unless the body
//!   as a whole is not a JSON object), with a bounded message that echoes client text only
//!   escaped, and the Anthropic error body says the same (`fuzz_support::check_request_error`).
//! * A parsed request: the model is trimmed and not empty, `max_tokens` is set and
//!   positive, at least one user (or tool result) message, the tool set is consistent
//!   (`fuzz_support::check_turn!`), and parsing is deterministic.
//!
//! Input: the body as it is; or, after a leading 0 byte, a JSON object generated from the
//! rest with the API's keys (`fuzz_support::request_body`).

#![no_main]

use fuzz_support::{check_request_parser, ErrorShape};
use libfuzzer_sys::fuzz_target;
use qwen_proxy::api::anthropic::request::parse;

const KEYS: &[&str] = &[
    "system",
    "max_tokens",
    "stop_sequences",
    "thinking",
    "budget_tokens",
    "input_schema",
    "tool_use_id",
    "is_error",
    "disable_parallel_tool_use",
    "defer_loading",
    "user_id",
    "signature",
    "citations",
    "top_k",
    "context_management",
    "output_config",
    "betas",
];

fuzz_target!(|data: &[u8]| {
    check_request_parser!(data, KEYS, parse, ErrorShape::Anthropic, |req, body| {
        assert_eq!(req.turn.model, req.turn.model.trim(), "an untrimmed model");
        assert!(
            req.turn.max_tokens.is_some_and(|n| n >= 1),
            "max_tokens {:?}",
            req.turn.max_tokens
        );
        assert!(
            req.turn
                .messages
                .iter()
                .any(|m| matches!(format!("{:?}", m.role).as_str(), "User" | "Tool")),
            "no user message"
        );
        let again = parse(&body).expect("the same body parses again");
        assert!(again.options == req.options, "parsing is not deterministic");
    });
});
