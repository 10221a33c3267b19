//! The client APIs: each one parses its requests into the engine's turn and renders the
//! engine's answers and errors in its own shapes (`turn::ClientApi`). Today the OpenAI Chat
//! Completions API (`openai`, and its image generation), Anthropic's Messages API
//! (`anthropic`) and OpenAI's Responses API (`responses`).

pub mod anthropic;
pub mod openai;
pub mod responses;

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
        Api::Responses => of::<responses::Responses>(e),
    }
}

/// The `type` of an error in the body of the route's API (OpenAI's for the Chat
/// Completions, Images and Responses routes, Anthropic's for Messages): what the request
/// log records (`request_log`), before an answer and in-band alike.
pub fn error_type(api: Api, e: &ProxyError) -> &'static str {
    match api {
        Api::OpenAi | Api::Responses => openai::error::error_type(e),
        Api::Anthropic => anthropic::error::error_type(e),
    }
}

/// The longest piece of a tool call's arguments one stream event carries (both APIs' parsers
/// accumulate the pieces; a bounded event keeps frames bounded).
pub const ARGUMENT_SLICE: usize = 4096;

/// `text` in pieces of at most [`ARGUMENT_SLICE`] bytes, cut on character boundaries.
pub(crate) fn argument_slices(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut cut = rest.len().min(ARGUMENT_SLICE);
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        let (slice, tail) = rest.split_at(cut);
        rest = tail;
        Some(slice)
    })
}

/// A JSON string, escaped, into an encoder's buffer.
pub(crate) fn write_json_str(buf: &mut bytes::BytesMut, s: &str) {
    use bytes::BufMut;
    // Writing a `str` into a `BytesMut` cannot fail.
    let _ = serde_json::to_writer(buf.writer(), s);
}
