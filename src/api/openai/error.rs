//! The OpenAI error body `{"error":{"message","type","param","code"}}`, before an answer and
//! in-band (the stream encoder writes the same object as a `data:` event).

use bytes::Bytes;
use serde::Serialize;

use crate::error::ProxyError;

/// OpenAI's `error.type`, by status.
pub fn error_type(e: &ProxyError) -> &'static str {
    match e.status().as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        429 => "rate_limit_error",
        500..=599 => "server_error",
        _ => "invalid_request_error",
    }
}

/// The error body.
pub fn body(e: &ProxyError) -> Bytes {
    #[derive(Serialize)]
    struct Body<'a> {
        error: Inner<'a>,
    }
    #[derive(Serialize)]
    struct Inner<'a> {
        message: String,
        #[serde(rename = "type")]
        kind: &'static str,
        param: Option<&'a str>,
        code: Option<&'static str>,
    }
    let body = Body {
        error: Inner {
            message: e.message(),
            kind: error_type(e),
            param: e.param(),
            code: e.code(),
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
    fn error_body_has_openai_shape() {
        let e = ProxyError::bad_request("n must be 1", Some("n"));
        let v: serde_json::Value = serde_json::from_slice(&body(&e)).unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["param"], "n");
        assert!(v["error"]["code"].is_null());
        assert_eq!(v["error"]["message"], "n must be 1");
    }

    #[test]
    fn the_type_follows_the_status() {
        let e: ProxyError = UpstreamError::new(UpstreamClass::RateLimited, "limit")
            .with_retry_after(Some(Duration::from_secs(4 * 3600)))
            .into();
        assert_eq!(error_type(&e), "rate_limit_error");
        assert_eq!(
            error_type(&ProxyError::InvalidApiKey),
            "authentication_error"
        );
        assert_eq!(
            error_type(&ProxyError::Internal("x".to_owned())),
            "server_error"
        );
    }
}
