//! Non-streaming response bodies: `chat.completion` and the model list.

use serde::Serialize;

use super::encoder::UsageJson;

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
}
