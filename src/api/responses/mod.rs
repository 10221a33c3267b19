//! OpenAI's Responses API (`POST /v1/responses`, `GET`/`DELETE /v1/responses/{id}`) over the
//! engine — what the Codex CLI and the Vercel AI SDK's default `openai(model)` speak: the
//! request parser (`request`, tools in `tools`), the typed event encoder that also builds the
//! whole `response` object (`encoder`), the stored responses that `previous_response_id`
//! and `item_reference` read (`store`) and the layer that resolves them before a turn and
//! serves the stored ones (`stored`). [`Responses`] is its `ClientApi`; errors take OpenAI's
//! shape (`api::openai::error`), in a stream `response.failed`.

pub mod encoder;
pub mod request;
pub mod store;
pub mod stored;
pub mod tools;

use std::sync::Arc;

use bytes::Bytes;

use crate::error::ProxyError;
use crate::translate::aggregate::Collected;
use crate::translate::state::{FinishReason, Usage};
use crate::turn::{AnswerHead, ApiRequest, ClientApi};
use encoder::ResponseEncoder;
use store::ResponseStore;
use tools::CallNames;

/// What only the Responses API asks of an answer.
#[derive(Debug, Clone)]
pub struct Options {
    /// How the model's calls go back: a function (in its namespace), or a custom tool's
    /// free-form input.
    pub names: Arc<CallNames>,
    /// The client asked for reasoning (`reasoning.effort` other than `none`/`minimal`): the
    /// answer's reasoning goes out as a `reasoning` item with a summary; otherwise dropped.
    pub reasoning: bool,
    /// The prompt's tokens as estimated from the request.
    pub input_tokens: u64,
    /// What the `response` object echoes of the request.
    pub echo: Arc<Echo>,
    /// `store` (default true): the response is kept for `GET`, `previous_response_id` and
    /// `item_reference`.
    pub store: bool,
    /// Resolved before the turn by the `stored` layer.
    pub previous_response_id: Option<String>,
    /// `item_reference`s of the input: where each stood among the messages, and its id.
    /// Resolved (spliced in) by the `stored` layer.
    pub references: Vec<(usize, String)>,
    /// The first message is the request's `instructions` (never carried into a later
    /// response's history: OpenAI's rule for `previous_response_id`).
    pub instructions: bool,
    /// Set by the `stored` layer: where the finished response is kept, and how many of the
    /// turn's messages came from `previous_response_id` (not stored again).
    pub sink: Option<Sink>,
}

/// Where a finished response goes.
#[derive(Debug, Clone)]
pub struct Sink {
    pub store: Arc<ResponseStore>,
    /// Messages at the start of the turn that the previous responses already hold.
    pub inherited: usize,
}

/// The request's settings the `response` object repeats.
#[derive(Debug, Clone, Default)]
pub struct Echo {
    pub tool_choice: serde_json::Value,
    pub parallel_tool_calls: bool,
    pub max_output_tokens: Option<u64>,
    pub reasoning_effort: Option<String>,
    /// `text.format` as sent (`{"type":"text"}` when absent).
    pub text_format: serde_json::Value,
    pub metadata: serde_json::Value,
    /// The declared tool types left out (named in a response header).
    pub ignored_tools: Vec<String>,
}

/// The widest context the Codex catalogue advertises: beyond it, histories go up as
/// documents (the offload), which the model reads less closely than its prompt; Codex
/// compacts before it.
const CODEX_CONTEXT_WINDOW: u64 = 262_144;

/// What Codex's catalogue replaces its own system prompt with (`base_instructions` is
/// required): short, because every token of it is sent on every turn.
const CODEX_BASE_INSTRUCTIONS: &str = "You are a coding agent working in the user's \
workspace through tools. Read files and run commands with the tools you are given; make the \
smallest change that solves the task and check it (build, tests) when you can. Edit files \
with apply_patch when it is available. Keep answers short: say what you changed and what you \
could not do.";

/// The catalogue as the Codex CLI reads `GET /models` (`{"models":[…]}`, with
/// `model_catalog_url` set): each listed name with its context window, reasoning levels,
/// and the free-form `apply_patch` and parallel calls this proxy supports.
pub fn codex_models(catalog: &crate::qwen::models::Catalog) -> Vec<serde_json::Value> {
    catalog
        .listed
        .iter()
        .enumerate()
        .filter_map(|(priority, listed)| {
            let (model, variant) = catalog.resolve(&listed.id)?;
            let thinks = model.thinking && variant.thinking != Some(false);
            let levels: Vec<serde_json::Value> = if thinks {
                ["low", "medium", "high"]
                    .iter()
                    .map(|e| serde_json::json!({"effort": e, "description": e}))
                    .collect()
            } else {
                Vec::new()
            };
            Some(serde_json::json!({
                "slug": listed.id,
                "display_name": listed.id,
                "description": model.name,
                "default_reasoning_level": if thinks { "medium" } else { "none" },
                "supported_reasoning_levels": levels,
                "shell_type": "shell_command",
                "visibility": "list",
                "supported_in_api": true,
                "priority": priority,
                "upgrade": null,
                "base_instructions": CODEX_BASE_INSTRUCTIONS,
                "supports_reasoning_summaries": thinks,
                "support_verbosity": false,
                "default_verbosity": null,
                "apply_patch_tool_type": "freeform",
                "truncation_policy": {"mode": "tokens", "limit": 10_000},
                "supports_parallel_tool_calls": true,
                "context_window": model.context_length.unwrap_or(CODEX_CONTEXT_WINDOW).min(CODEX_CONTEXT_WINDOW),
                "experimental_supported_tools": [],
                "input_modalities": if model.vision { serde_json::json!(["text", "image"]) } else { serde_json::json!(["text"]) },
            }))
        })
        .collect()
}

/// OpenAI's Responses API.
#[derive(Debug, Clone, Copy)]
pub struct Responses;

impl ClientApi for Responses {
    type Options = Options;
    type Encoder = ResponseEncoder;

    const ID_PREFIX: &'static str = "resp_";

    const LABEL: &'static str = "responses";

    fn parse(body: &[u8]) -> Result<ApiRequest<Options>, ProxyError> {
        request::parse(body)
    }

    fn encoder(head: &AnswerHead<'_>, options: &Options) -> ResponseEncoder {
        ResponseEncoder::streamed(head, options)
    }

    fn body(
        head: &AnswerHead<'_>,
        options: &Options,
        answer: &Collected,
        reason: FinishReason,
        usage: Usage,
    ) -> Bytes {
        encoder::whole(head, options, answer, reason, usage)
    }

    fn error_body(e: &ProxyError) -> Bytes {
        crate::api::openai::error::body(e)
    }
}
