//! The client APIs: each one parses its requests into the engine's turn and renders the
//! engine's answers and errors in its own shapes (`turn::ClientApi`). Today the OpenAI Chat
//! Completions API (`openai`, and its image generation) and Anthropic's Messages API
//! (`anthropic`); OpenAI's Responses API will be a sibling of them.

pub mod anthropic;
pub mod openai;

use bytes::Bytes;
use hyper::StatusCode;

use crate::error::ProxyError;
use crate::routes::Api;
use crate::turn::ClientApi;

/// An error response's status and body in the shape of the route's API (the error layer's
/// dialect).
pub fn error_reply(api: Api, e: &ProxyError) -> (StatusCode, Bytes) {
    fn of<A: ClientApi>(e: &ProxyError) -> (StatusCode, Bytes) {
        (A::error_status(e), A::error_body(e))
    }
    match api {
        Api::OpenAi => of::<openai::OpenAi>(e),
        Api::Anthropic => of::<anthropic::Anthropic>(e),
    }
}
