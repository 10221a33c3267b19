//! Upstream error classification (`qwen-protocol.md` §6): one predicate set for every place
//! an error can appear — a non-SSE JSON body, the first `data:` frame, a frame after some
//! content, an HTML challenge page, or a bare HTTP status.

use std::time::Duration;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::error::{UpstreamClass as C, UpstreamError};
use crate::qwen::frame::Frame;

#[derive(Debug, Default, Deserialize)]
struct ErrData {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    details: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    num: Option<f64>,
    #[serde(default)]
    url: Option<String>,
}

fn parse_obj(raw: Option<&RawValue>) -> Option<ErrData> {
    raw.and_then(|r| serde_json::from_str::<ErrData>(r.get()).ok())
}

/// Is this frame an error? Only the cold path parses the raw error fields.
pub fn frame_error(frame: &Frame<'_>) -> Option<UpstreamError> {
    if let Some(ret) = frame.ret {
        let text = ret.get();
        if text.contains("RGV587") || text.contains("FAIL_SYS") {
            return Some(UpstreamError::new(C::Challenge, punish_detail(text)));
        }
    }
    if let Some(data) = parse_obj(frame.data) {
        if data.url.as_deref().is_some_and(is_punish_url) {
            return Some(UpstreamError::new(C::Challenge, "anti-bot punish page"));
        }
        if frame.success == Some(false) || data.code.is_some() && frame.choice.is_none() {
            return Some(classify_code(
                data.code.as_deref().unwrap_or(""),
                data.details
                    .as_deref()
                    .or(data.message.as_deref())
                    .unwrap_or(""),
                data.num,
            ));
        }
    }
    if let Some(err) = frame.error {
        return Some(match serde_json::from_str::<String>(err.get()) {
            Ok(text) => classify_code("", &text, None),
            Err(_) => {
                let e = parse_obj(Some(err)).unwrap_or_default();
                classify_code(
                    e.code.as_deref().unwrap_or(""),
                    e.details.as_deref().or(e.message.as_deref()).unwrap_or(""),
                    e.num,
                )
            }
        });
    }
    if frame.success == Some(false) || frame.code.is_some() && frame.choice.is_none() {
        let code = frame
            .code
            .and_then(|c| serde_json::from_str::<String>(c.get()).ok())
            .unwrap_or_default();
        return Some(classify_code(
            &code,
            frame.details.as_deref().unwrap_or(""),
            None,
        ));
    }
    None
}

fn is_punish_url(url: &str) -> bool {
    url.contains("/punish") || url.contains("_____tmd_____") || url.contains("x5secdata")
}

fn punish_detail(ret: &str) -> String {
    // `ret` is a JSON array of strings such as "RGV587_ERROR::SM::…"; keep the code only.
    if ret.contains("RGV587") {
        "RGV587 punish".to_owned()
    } else {
        "FAIL_SYS_USER_VALIDATE".to_owned()
    }
}

/// Map an upstream `code` + `details` (+ `num` hours) to a class.
pub fn classify_code(code: &str, details: &str, num: Option<f64>) -> UpstreamError {
    let lower_details = details.to_ascii_lowercase();
    let has = |needle: &str| lower_details.contains(needle);
    let detail = if details.is_empty() {
        code.to_owned()
    } else if code.is_empty() {
        details.to_owned()
    } else {
        format!("{code}: {details}")
    };
    // Codes are compared in any case: the upstream has changed the case of some
    // (`Unauthorized` → `unauthorized`, 2026-09).
    let class = match code.to_ascii_lowercase().as_str() {
        "ratelimited" | "too_many_requests" | "parallellimited" | "quotalimited"
        | "exceedlimit" | "quota_exhausted" => C::RateLimited,
        "unauthorized" => C::AuthFailed,
        "forbidden" => C::Forbidden,
        "data_inspection_failed" => C::ContentFilter,
        "invalid_input" => C::InvalidInput,
        "not_found" => C::ChatNotFound,
        _ if has("chat is in progress") => C::ChatInProgress,
        _ if has("parent_id") && has("not exist") => C::ParentNotFound,
        _ if has("not exist") || code.eq_ignore_ascii_case("CHAT_NOT_FOUND") => C::ChatNotFound,
        _ if has("quota exceeded") || has("upper limit") => C::RateLimited,
        _ if has("token has expired") || has("unauthorized") || has("invalid token") => {
            C::AuthFailed
        }
        _ if has("overload") || has("temporarily unavailable") => C::Overloaded,
        _ if has("banned") || has("forbidden") => C::Forbidden,
        // A `Bad_Request` none of the above explains: the upstream refuses the request as
        // malformed (E5–E7: "Internal error", a validation error), not a passing failure.
        "bad_request" => C::Rejected,
        _ => C::ServerError,
    };
    let retry_after = match class {
        C::RateLimited => num
            .filter(|n| n.is_finite() && *n > 0.0)
            .map(|hours| Duration::from_secs((hours * 3600.0) as u64)),
        _ => None,
    };
    UpstreamError::new(class, detail).with_retry_after(retry_after)
}

/// An HTML body in place of JSON/SSE: the WAF challenge page (E11) or something else.
pub fn html_error(body: &[u8]) -> UpstreamError {
    let text = String::from_utf8_lossy(&body[..body.len().min(64 * 1024)]).to_ascii_lowercase();
    let markers = [
        "aliyun_waf",
        "captcha",
        "slider",
        "acw_sc__v2",
        "baxia",
        "awsc",
        "punish",
    ];
    if markers.iter().any(|m| text.contains(m)) {
        UpstreamError::new(C::Challenge, "WAF challenge page")
    } else {
        UpstreamError::new(C::ServerError, "unexpected HTML page")
    }
}

/// A non-success HTTP status with a body that was not recognised as an error document.
pub fn status_error(status: u16, retry_after: Option<Duration>) -> UpstreamError {
    let class = match status {
        401 => C::AuthFailed,
        403 => C::Forbidden,
        404 => C::ChatNotFound,
        408 | 504 => C::Timeout,
        429 => C::RateLimited,
        503 => C::Overloaded,
        400..=499 => C::InvalidInput,
        _ => C::ServerError,
    };
    UpstreamError::new(class, format!("HTTP {status}")).with_retry_after(retry_after)
}

/// Classify a complete non-stream error body (JSON or HTML) that came with `status`.
pub fn body_error(status: u16, content_type: &str, body: &[u8]) -> UpstreamError {
    let trimmed = body.trim_ascii_start();
    if content_type.contains("html") || trimmed.starts_with(b"<") {
        return html_error(body);
    }
    if let Ok(frame) = Frame::parse(body) {
        if let Some(e) = frame_error(&frame) {
            // The body's code is more specific than the status, except that a generic
            // body must not hide what an auth/limit/availability status already says.
            let status_is_specific = matches!(status, 401 | 403 | 408 | 429 | 503 | 504);
            let generic = matches!(e.class, C::ServerError | C::Rejected);
            if !generic || !status_is_specific {
                return e;
            }
        }
    }
    if status == 200 {
        UpstreamError::new(C::Protocol, "unrecognised non-stream response")
    } else {
        status_error(status, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classify(json: &str) -> Option<UpstreamError> {
        let frame: Frame<'_> = serde_json::from_str(json).unwrap();
        frame_error(&frame)
    }

    #[test]
    fn rate_limited_with_num_hours() {
        let e = classify(
            r#"{"success":false,"request_id":"x","data":{"code":"RateLimited","details":"You've reached the upper limit for today's usage.","template":"…{{num}}…","num":4}}"#,
        )
        .unwrap();
        assert_eq!(e.class, C::RateLimited);
        assert_eq!(e.retry_after, Some(Duration::from_secs(4 * 3600)));
    }

    #[test]
    fn codes_are_matched_in_any_case() {
        // Details that name nothing: only the code can classify these.
        for (code, class) in [
            ("unauthorized", C::AuthFailed),
            ("UNAUTHORIZED", C::AuthFailed),
            ("Unauthorized", C::AuthFailed),
            ("ratelimited", C::RateLimited),
            ("too_many_requests", C::RateLimited),
            ("forbidden", C::Forbidden),
            ("not_found", C::ChatNotFound),
            ("chat_not_found", C::ChatNotFound),
        ] {
            assert_eq!(classify_code(code, "x", None).class, class, "{code}");
        }
        assert_eq!(
            classify_code("Something_New", "x", None).class,
            C::ServerError
        );
    }

    #[test]
    fn each_catalogue_body_gets_its_class() {
        let cases = [
            (
                r#"{"success":false,"data":{"code":"Bad_Request","details":"The chat is in progress!"}}"#,
                C::ChatInProgress,
            ),
            (
                r#"{"success":false,"data":{"code":"Bad_Request","details":"Invalid input chat parent_id abc is not exist."}}"#,
                C::ParentNotFound,
            ),
            (
                r#"{"success":false,"data":{"code":"Not_Found","details":"Chat not exist"}}"#,
                C::ChatNotFound,
            ),
            (
                r#"{"success":false,"data":{"code":"Bad_Request","details":"RequestValidationError: Field 'chat_id': Field required"}}"#,
                C::Rejected,
            ),
            (
                r#"{"success":false,"code":"Bad_Request","details":"missing version"}"#,
                C::Rejected,
            ),
            (
                r#"{"success":false,"data":{"code":"Bad_Request","details":"Internal error"}}"#,
                C::Rejected,
            ),
            (
                r#"{"success":false,"data":{"code":"Unauthorized","details":"Token has expired"}}"#,
                C::AuthFailed,
            ),
            (
                r#"{"ret":["FAIL_SYS_USER_VALIDATE","RGV587_ERROR::SM::x"],"data":{"url":"https://chat.qwen.ai:443//api/v2/chat/completions/_____tmd_____/punish?x5secdata=x"}}"#,
                C::Challenge,
            ),
            (
                r#"{"success":false,"data":{"code":"data_inspection_failed","details":"内容安全警告"}}"#,
                C::ContentFilter,
            ),
            (
                r#"{"error":{"code":"data_inspection_failed","details":"输出内容"}}"#,
                C::ContentFilter,
            ),
            (
                r#"{"error":{"code":"internal_error","details":"Allocated quota exceeded, please increase your quota limit."}}"#,
                C::RateLimited,
            ),
            (r#"{"error":"Internal error!"}"#, C::ServerError),
            (
                r#"{"error":{"code":"invalid_input","details":"输入或附件无效。请检查后重试。"}}"#,
                C::InvalidInput,
            ),
            (
                r#"{"success":false,"data":{"code":"Service","details":"server overload"}}"#,
                C::Overloaded,
            ),
        ];
        for (json, class) in cases {
            assert_eq!(classify(json).map(|e| e.class), Some(class), "{json}");
        }
    }

    #[test]
    fn normal_frames_are_not_errors() {
        assert!(classify(r#"{"choices":[{"delta":{"content":"x"}}],"response_id":"r"}"#).is_none());
        assert!(classify(r#"{"response.created":{"chat_id":"c"}}"#).is_none());
    }

    #[test]
    fn html_waf_page_is_a_challenge() {
        let e = body_error(
            200,
            "text/html",
            br#"<!doctypehtml><meta name="aliyun_waf_aa" content="x">"#,
        );
        assert_eq!(e.class, C::Challenge);
    }

    #[test]
    fn bare_status_codes() {
        assert_eq!(body_error(503, "", b"").class, C::Overloaded);
        assert_eq!(
            body_error(401, "application/json", b"{}").class,
            C::AuthFailed
        );
        assert_eq!(
            body_error(502, "text/plain", b"bad gateway").class,
            C::ServerError
        );
        // x-actual-status-code 400 with an "Internal error" body: the request is refused.
        let e7 = br#"{"success":false,"data":{"code":"Bad_Request","details":"Internal error"}}"#;
        assert_eq!(body_error(400, "application/json", e7).class, C::Rejected);
        assert_eq!(body_error(401, "application/json", e7).class, C::AuthFailed);
    }
}
