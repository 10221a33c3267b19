//! The OpenAI Chat Completions API over the engine: the request parser (`request`, with the
//! tool fields in `tools`), the SSE chunk encoder (`encoder`), the `chat.completion` and
//! model bodies (`response`) and the error body (`error`). [`OpenAi`] is its
//! [`ClientApi`]: `stack::chat_stack::<OpenAi>` is the `POST /v1/chat/completions` stack.
//! Image generation (`images`) is a second one over the same engine.

pub mod encoder;
pub mod error;
pub mod images;
pub mod request;
pub mod response;
pub mod tools;

use bytes::Bytes;

use crate::error::ProxyError;
use crate::translate::aggregate::Collected;
use crate::translate::state::{FinishReason, Usage};
use crate::turn::{AnswerHead, ApiRequest, ClientApi};
use encoder::ChunkEncoder;
use request::Options;

/// The OpenAI Chat Completions API.
#[derive(Debug, Clone, Copy)]
pub struct OpenAi;

impl ClientApi for OpenAi {
    type Options = Options;
    type Encoder = ChunkEncoder;

    const ID_PREFIX: &'static str = "chatcmpl-";

    const LABEL: &'static str = "chat";

    fn parse(body: &[u8]) -> Result<ApiRequest<Options>, ProxyError> {
        request::parse(body)
    }

    fn encoder(head: &AnswerHead<'_>, options: &Options) -> ChunkEncoder {
        ChunkEncoder::new(
            head.id,
            head.created,
            &head.turn.model,
            options.include_usage,
        )
        .with_call_shape(options.call_shape)
    }

    fn body(
        head: &AnswerHead<'_>,
        options: &Options,
        answer: &Collected,
        reason: FinishReason,
        usage: Usage,
    ) -> Bytes {
        response::completion(head, options.call_shape, answer, reason, usage)
    }

    fn error_body(e: &ProxyError) -> Bytes {
        error::body(e)
    }
}
