//! The seam between the engine and a client API. The chat stack (validate → retry → core)
//! is written once over [`ClientApi`]; each API (`api::openai`, …) implements it and gets
//! its own stack (`stack::chat_stack::<A>`).

use bytes::Bytes;

use super::TurnRequest;
use crate::error::ProxyError;
use crate::translate::aggregate::Collected;
use crate::translate::body::Render;
use crate::translate::state::{FinishReason, Usage};

/// A parsed request of one client API: the turn and the options only that API has. Shared
/// (`Arc`) between the retry layer's attempts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiRequest<O> {
    pub turn: TurnRequest,
    pub options: O,
}

/// What every answer of one request is stamped with.
#[derive(Debug, Clone, Copy)]
pub struct AnswerHead<'a> {
    /// The response id (the API's prefix and a random part).
    pub id: &'a str,
    /// Unix seconds.
    pub created: u64,
    /// The request (the model as the client named it, its stop sequences, …).
    pub turn: &'a TurnRequest,
}

/// What a client API gives the engine.
pub trait ClientApi: Send + Sync + 'static {
    /// The request options only this API has.
    type Options: std::fmt::Debug + Clone + Send + Sync + 'static;
    /// The stream encoder: the engine's events in, the API's SSE bytes out.
    type Encoder: Render + Send + Unpin + 'static;

    /// The prefix of a response id (`chatcmpl-`).
    const ID_PREFIX: &'static str;

    /// The API in metrics and logs (`chat`, `messages`, `responses`, `images`).
    const LABEL: &'static str;

    /// Parse a request body; a bad one is a 400 naming its parameter.
    fn parse(body: &[u8]) -> Result<ApiRequest<Self::Options>, ProxyError>;

    /// The encoder of one streamed answer.
    fn encoder(head: &AnswerHead<'_>, options: &Self::Options) -> Self::Encoder;

    /// The body of one whole (non-streamed) answer.
    fn body(
        head: &AnswerHead<'_>,
        options: &Self::Options,
        answer: &Collected,
        reason: FinishReason,
        usage: Usage,
    ) -> Bytes;

    /// The error body before the answer began (in-band errors are the encoder's).
    fn error_body(e: &ProxyError) -> Bytes;

    /// The status of an error response (an API may answer some errors with a status of its
    /// own: Anthropic's 413 for a prompt too long).
    fn error_status(e: &ProxyError) -> hyper::StatusCode {
        e.status()
    }
}
