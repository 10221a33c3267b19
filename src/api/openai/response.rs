//! Non-streaming response bodies: `chat.completion` and the model list.

use bytes::Bytes;
use serde::Serialize;

use super::encoder::{call_id, finish_reason, UsageJson};
use super::tools::CallShape;
use crate::translate::aggregate::Collected;
use crate::translate::state::{FinishReason, Usage};
use crate::turn::AnswerHead;

/// The whole answer as one `chat.completion`.
pub fn completion(
    head: &AnswerHead<'_>,
    shape: CallShape,
    answer: &Collected,
    reason: FinishReason,
    usage: Usage,
) -> Bytes {
    let mut calls = answer
        .tool_calls
        .iter()
        .map(|(name, arguments)| FunctionJson { name, arguments });
    let (tool_calls, function_call) = match shape {
        CallShape::ToolCalls => (
            calls
                .map(|function| ToolCallJson {
                    id: call_id(),
                    kind: "function",
                    function,
                })
                .collect(),
            None,
        ),
        CallShape::FunctionCall => (Vec::new(), calls.next()),
    };
    let body = ChatCompletion {
        id: head.id,
        object: "chat.completion",
        created: head.created,
        model: &head.turn.model,
        choices: [Choice {
            index: 0,
            message: AssistantMessage {
                role: "assistant",
                content: (!answer.content.is_empty() || answer.tool_calls.is_empty())
                    .then_some(answer.content.as_str()),
                reasoning_content: (!answer.reasoning.is_empty())
                    .then_some(answer.reasoning.as_str()),
                tool_calls,
                function_call,
                refusal: None,
                annotations: answer
                    .citations
                    .iter()
                    .map(|c| AnnotationJson {
                        kind: "url_citation",
                        url_citation: UrlCitationJson {
                            url: &c.url,
                            title: &c.title,
                            start_index: c.start,
                            end_index: c.end,
                        },
                    })
                    .collect(),
            },
            logprobs: None,
            finish_reason: finish_reason(reason, shape),
        }],
        usage: UsageJson::from(usage),
        system_fingerprint: None,
    };
    Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
}

#[derive(Debug, Serialize)]
pub struct ChatCompletion<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub model: &'a str,
    pub choices: [Choice<'a>; 1],
    pub usage: UsageJson,
    pub system_fingerprint: Option<&'static str>,
}

#[derive(Debug, Serialize)]
pub struct Choice<'a> {
    pub index: u32,
    pub message: AssistantMessage<'a>,
    pub logprobs: Option<()>,
    pub finish_reason: &'static str,
}

#[derive(Debug, Serialize)]
pub struct AssistantMessage<'a> {
    pub role: &'static str,
    /// `null` when the reply is only tool calls.
    pub content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCallJson<'a>>,
    /// The deprecated `functions` API's one call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub function_call: Option<FunctionJson<'a>>,
    pub refusal: Option<()>,
    /// Citations of a search answer's sources (`-search` models).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub annotations: Vec<AnnotationJson<'a>>,
}

/// `{"type":"url_citation","url_citation":{…}}`: positions in characters of `content`.
#[derive(Debug, Serialize)]
pub struct AnnotationJson<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub url_citation: UrlCitationJson<'a>,
}

#[derive(Debug, Serialize)]
pub struct UrlCitationJson<'a> {
    pub url: &'a str,
    pub title: &'a str,
    pub start_index: usize,
    pub end_index: usize,
}

/// One call of a non-streaming answer: `arguments` is a string of JSON, never an object.
#[derive(Debug, Serialize)]
pub struct ToolCallJson<'a> {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: FunctionJson<'a>,
}

#[derive(Debug, Serialize)]
pub struct FunctionJson<'a> {
    pub name: &'a str,
    pub arguments: &'a str,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ModelObject<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
}

impl<'a> ModelObject<'a> {
    pub fn new(id: &'a str, created: u64) -> Self {
        ModelObject {
            id,
            object: "model",
            created,
            owned_by: "qwen",
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ModelList<'a> {
    pub object: &'static str,
    pub data: Vec<ModelObject<'a>>,
    /// The same models as the Codex CLI's catalogue reads them
    /// (`api::responses::codex_models`): a client that reads only `data` ignores it.
    pub models: Vec<serde_json::Value>,
}
