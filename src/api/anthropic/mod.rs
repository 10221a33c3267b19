//! Anthropic's Messages API (`POST /v1/messages`) over the engine — what Claude Code speaks:
//! the request parser (`request`, with tools in `tools`), the SSE event encoder with
//! Anthropic's block state machine (`encoder`), the `message` body (`response`) and the error
//! shape (`error`). [`Anthropic`] is its `ClientApi`.

pub mod encoder;
pub mod error;
pub mod request;
pub mod response;

use bytes::Bytes;
use hyper::StatusCode;

use crate::error::ProxyError;
use crate::translate::aggregate::Collected;
use crate::translate::state::{FinishReason, Usage};
use crate::turn::{AnswerHead, ApiRequest, ClientApi};
use encoder::MessageEncoder;

/// What only the Messages API asks of an answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    /// The client asked for thinking (`thinking.type` `enabled` or `adaptive`): the answer's
    /// reasoning is sent as `thinking` blocks; otherwise it is dropped.
    pub thinking: bool,
    /// The prompt's tokens as estimated from the request (`message_start`'s `input_tokens`,
    /// before the upstream's own count is known).
    pub input_tokens: u64,
}

/// Anthropic's Messages API.
#[derive(Debug, Clone, Copy)]
pub struct Anthropic;

impl ClientApi for Anthropic {
    type Options = Options;
    type Encoder = MessageEncoder;

    const ID_PREFIX: &'static str = "msg_";

    const LABEL: &'static str = "messages";

    fn parse(body: &[u8]) -> Result<ApiRequest<Options>, ProxyError> {
        request::parse(body)
    }

    fn encoder(head: &AnswerHead<'_>, options: &Options) -> MessageEncoder {
        MessageEncoder::new(head, options)
    }

    fn body(
        head: &AnswerHead<'_>,
        options: &Options,
        answer: &Collected,
        reason: FinishReason,
        usage: Usage,
    ) -> Bytes {
        response::message(head, options, answer, reason, usage)
    }

    fn error_body(e: &ProxyError) -> Bytes {
        error::body(e)
    }

    fn error_status(e: &ProxyError) -> StatusCode {
        error::status(e)
    }
}

/// `POST /v1/messages/count_tokens`: a fast estimate of the prompt's tokens — the system
/// text, the messages and the tool definitions — without an upstream call (Claude Code asks
/// it many times at start-up). `{"input_tokens": n}`.
pub(crate) async fn count_tokens(
    state: &crate::app::AppState,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<crate::body::ProxyBody>, ProxyError> {
    use http_body_util::BodyExt;
    let limit = state.config.max_body_bytes;
    let body = http_body_util::Limited::new(req.into_body(), limit)
        .collect()
        .await
        .map_err(|_| ProxyError::PayloadTooLarge { limit })?
        .to_bytes();
    let obj = crate::api::openai::request::json_object(&body)?;
    let counted = |key: &str| {
        obj.get(key).map_or(0, |v| match v {
            serde_json::Value::String(s) => crate::translate::limits::estimate_tokens(s),
            other => crate::translate::limits::estimate_tokens(&other.to_string()),
        })
    };
    let tokens = counted("system") + counted("messages") + counted("tools");
    Ok(crate::body::json_response(
        serde_json::json!({"input_tokens": tokens}).to_string(),
    ))
}
