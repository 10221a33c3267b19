//! The client APIs: each one parses its requests into the engine's turn and renders the
//! engine's answers and errors in its own shapes (`turn::ClientApi`). Today the OpenAI Chat
//! Completions API (`openai`); Anthropic's Messages API and OpenAI's Responses API will be
//! siblings of it.

pub mod openai;

use bytes::Bytes;

use crate::error::ProxyError;
use crate::routes::Api;
use crate::turn::ClientApi;

/// An error body in the shape of the route's API (the error layer's dialect).
pub fn error_body(api: Api, e: &ProxyError) -> Bytes {
    match api {
        Api::OpenAi => openai::OpenAi::error_body(e),
    }
}
