//! OpenAI request → upstream turn: model resolution and feature switches (`plan`), and the
//! fold format used whenever text goes into a chat that lacks the history.
//!
//! Where a turn goes — a fresh chat with the whole conversation folded into one message, or
//! an existing upstream chat with only the new messages — is decided by the conversation
//! store (`conversation::Conversations::prepare`), expressed as a `conversation::ChatTarget`.
//!
//! Fold format (documented in README, tested below):
//! * a single user message and nothing else is sent verbatim;
//! * otherwise each message becomes a labelled section, in order, separated by a blank
//!   line: `[System]`, `[User]`, `[Assistant]`, `[Tool result: <name>]`, each label on its
//!   own line followed by the text. All system/developer messages are merged into one
//!   `[System]` section at the top, so the instructions come first.

use super::request::{ChatRequest, Message, ReasoningEffort, ResponseFormat, Role};
use crate::error::ProxyError;
use crate::qwen::models::{Catalog, UpstreamModel, Variant};
use crate::qwen::request::{FeatureConfig, Thinking};

/// The upstream side of one request (where it goes and what text it sends is decided by
/// the conversation store: `conversation::Conversations::prepare`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub model: String,
    pub chat_type: &'static str,
    pub features: FeatureConfig,
}

/// Map a validated request onto the catalogue. Unknown models are a 404.
pub fn plan(req: &ChatRequest, catalog: &Catalog) -> Result<Plan, ProxyError> {
    let (model, variant) =
        catalog
            .resolve(&req.model)
            .ok_or_else(|| ProxyError::ModelNotFound {
                model: req.model.clone(),
            })?;
    let thinking = thinking_mode(req, model, variant);
    Ok(Plan {
        model: model.id.clone(),
        chat_type: "t2t",
        features: FeatureConfig::new(thinking, variant.search),
    })
}

/// Suffix first, then `enable_thinking`, then `reasoning_effort`, then the front-end
/// default (auto). Models without thinking are always off; models that cannot skip
/// thinking are never off (the upstream would reject the request).
fn thinking_mode(req: &ChatRequest, model: &UpstreamModel, variant: Variant) -> Thinking {
    if !model.thinking {
        return Thinking::Off;
    }
    let wanted = variant
        .thinking
        .map(|on| if on { Thinking::On } else { Thinking::Off })
        .or(req
            .enable_thinking
            .map(|on| if on { Thinking::On } else { Thinking::Off }))
        .or(req.reasoning_effort.map(|e| match e {
            ReasoningEffort::None | ReasoningEffort::Minimal | ReasoningEffort::Low => {
                Thinking::Off
            }
            ReasoningEffort::Medium => Thinking::Auto,
            ReasoningEffort::High => Thinking::On,
        }))
        .unwrap_or(Thinking::Auto);
    if wanted == Thinking::Off && model.thinking_required {
        Thinking::Auto
    } else {
        wanted
    }
}

/// Fold the conversation into one message (format in the module docs).
pub fn fold(req: &ChatRequest) -> String {
    let mut system: Vec<&str> = req
        .messages
        .iter()
        .filter(|m| m.role == Role::System)
        .map(|m| m.content.as_str())
        .collect();
    let instruction;
    match &req.response_format {
        ResponseFormat::Text => {}
        ResponseFormat::JsonObject => system.push(
            "Respond with a single valid JSON object and nothing else: no prose, no Markdown code fences.",
        ),
        ResponseFormat::JsonSchema(schema) => {
            instruction = format!(
                "Respond with a single valid JSON object that matches this JSON Schema, and nothing else \
                 (no prose, no Markdown code fences):\n{schema}"
            );
            system.push(&instruction);
        }
    }
    fold_with(&system, &req.messages)
}

/// Fold only `messages` (the new turns of a continued chat; system text is already there).
pub fn fold_turns(messages: &[Message]) -> String {
    fold_with(&[], messages)
}

fn fold_with(system: &[&str], messages: &[Message]) -> String {
    let turns: Vec<&Message> = messages.iter().filter(|m| m.role != Role::System).collect();
    if system.is_empty() && turns.len() == 1 && turns[0].role == Role::User {
        return turns[0].content.clone();
    }
    let mut out = String::new();
    if !system.is_empty() {
        out.push_str("[System]\n");
        out.push_str(&system.join("\n\n"));
    }
    for m in turns {
        if !out.is_empty() {
            out.push_str("\n\n");
        }
        match (m.role, &m.name) {
            (Role::Tool, Some(name)) => {
                out.push_str("[Tool result: ");
                out.push_str(name);
                out.push_str("]\n");
            }
            (role, _) => {
                out.push('[');
                out.push_str(role.label());
                out.push_str("]\n");
            }
        }
        out.push_str(&m.content);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(json: &str) -> ChatRequest {
        ChatRequest::from_slice(json.as_bytes()).unwrap()
    }

    #[test]
    fn single_user_message_is_verbatim() {
        assert_eq!(
            fold(&req(
                r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#
            )),
            "hi"
        );
    }

    #[test]
    fn conversation_is_labelled_with_system_first() {
        let r = req(r#"{"model":"m","messages":[
            {"role":"user","content":"one"},
            {"role":"system","content":"be brief"},
            {"role":"assistant","content":"two"},
            {"role":"tool","tool_call_id":"call_1","content":"42"},
            {"role":"user","content":"three"}]}"#);
        assert_eq!(
            fold(&r),
            "[System]\nbe brief\n\n[User]\none\n\n[Assistant]\ntwo\n\n[Tool result: call_1]\n42\n\n[User]\nthree"
        );
    }

    #[test]
    fn json_mode_adds_an_instruction() {
        let r = req(
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_object"}}"#,
        );
        let f = fold(&r);
        assert!(f.starts_with("[System]\nRespond with a single valid JSON object"));
        assert!(f.ends_with("[User]\nx"));
    }
}
