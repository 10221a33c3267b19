//! Anthropic's error body `{"type":"error","error":{"type","message"}}`, before an answer
//! and in-band (the stream encoder writes the same object as an `event: error`).
//!
//! One difference from the other APIs' status: a conversation too long for the upstream
//! (`ContextLengthExceeded`) is a 413 `request_too_large` whose message begins "prompt is
//! too long": Claude Code then compacts the conversation, where a 400 would end the turn and
//! a 5xx would be retried as it is (client-apis-and-files.md C16).

use bytes::Bytes;
use hyper::StatusCode;
use serde::Serialize;

use crate::error::ProxyError;

/// The status an Anthropic client sees: the error's own, except a conversation too long for
/// the upstream, which is 413.
pub fn status(e: &ProxyError) -> StatusCode {
    match e {
        ProxyError::ContextLengthExceeded { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        _ => e.status(),
    }
}

/// Anthropic's `error.type`, by the status the client sees.
pub fn error_type(e: &ProxyError) -> &'static str {
    match status(e).as_u16() {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        500..=599 => "api_error",
        _ => "invalid_request_error",
    }
}

/// The error's message; a conversation too long for the upstream begins with Anthropic's
/// own words for it, which Claude Code's compaction looks for.
pub fn message(e: &ProxyError) -> String {
    match e {
        ProxyError::ContextLengthExceeded { .. } => {
            format!("prompt is too long: {}", e.message())
        }
        _ => e.message(),
    }
}

/// The error body.
pub fn body(e: &ProxyError) -> Bytes {
    #[derive(Serialize)]
    struct Body {
        #[serde(rename = "type")]
        kind: &'static str,
        error: Inner,
    }
    #[derive(Serialize)]
    struct Inner {
        #[serde(rename = "type")]
        kind: &'static str,
        message: String,
    }
    let body = Body {
        kind: "error",
        error: Inner {
            kind: error_type(e),
            message: message(e),
        },
    };
    // Serialising plain strings cannot fail.
    Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::error::{UpstreamClass, UpstreamError};

    #[test]
    fn the_body_has_anthropic_shape() {
        let e = ProxyError::bad_request("messages: at least one message is required", None);
        let v: serde_json::Value = serde_json::from_slice(&body(&e)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type": "error", "error": {
                "type": "invalid_request_error",
                "message": "messages: at least one message is required"}})
        );
    }

    #[test]
    fn a_conversation_too_long_is_a_413_prompt_too_long() {
        let e = ProxyError::ContextLengthExceeded {
            size: 200_000,
            limit: 131_072,
        };
        assert_eq!(status(&e), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(e.status(), StatusCode::BAD_REQUEST, "other APIs keep 400");
        assert_eq!(error_type(&e), "request_too_large");
        let m = message(&e);
        assert!(m.starts_with("prompt is too long: "), "{m}");
        assert!(m.contains("200000 bytes"), "{m}");
        let v: serde_json::Value = serde_json::from_slice(&body(&e)).unwrap();
        assert_eq!(v["error"]["type"], "request_too_large");
        assert_eq!(v["error"]["message"], m.as_str());
    }

    #[test]
    fn the_type_follows_the_status() {
        let upstream = |class| ProxyError::from(UpstreamError::new(class, "x"));
        let cases: [(ProxyError, u16, &str); 12] = [
            (
                ProxyError::bad_request("x", Some("model")),
                400,
                "invalid_request_error",
            ),
            (ProxyError::InvalidApiKey, 401, "authentication_error"),
            (upstream(UpstreamClass::Forbidden), 403, "permission_error"),
            (
                ProxyError::ModelNotFound { model: "m".into() },
                404,
                "not_found_error",
            ),
            (
                ProxyError::MethodNotAllowed { allow: "POST" },
                405,
                "invalid_request_error",
            ),
            (
                ProxyError::PayloadTooLarge { limit: 10 },
                413,
                "request_too_large",
            ),
            (
                ProxyError::from(
                    UpstreamError::new(UpstreamClass::RateLimited, "limit")
                        .with_retry_after(Some(Duration::from_secs(60))),
                ),
                429,
                "rate_limit_error",
            ),
            (ProxyError::Internal("bug".into()), 500, "api_error"),
            (upstream(UpstreamClass::ServerError), 502, "api_error"),
            (ProxyError::Overloaded, 503, "overloaded_error"),
            (upstream(UpstreamClass::Challenge), 503, "overloaded_error"),
            (upstream(UpstreamClass::Timeout), 504, "api_error"),
        ];
        for (e, code, kind) in cases {
            assert_eq!(status(&e).as_u16(), code, "{e:?}");
            assert_eq!(error_type(&e), kind, "{e:?}");
            assert_eq!(message(&e), e.message(), "{e:?}");
        }
    }
}
