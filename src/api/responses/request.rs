//! A Responses request body → the turn (`TurnRequest`) and the API's options.
//!
//! * `instructions` → the first system message; `developer` and `system` messages → system
//!   messages where they stand.
//! * `input`: a string (one user message) or items — `message` (`input_text`,
//!   `output_text`, `refusal`, `input_image` by address or `data:` URI), `function_call`
//!   and `custom_tool_call` (the assistant's calls, merged into the assistant message
//!   before them as a chat history has them), `function_call_output` and
//!   `custom_tool_call_output` (tool results; text or parts), `item_reference` (resolved
//!   from stored responses by the `stored` layer). `reasoning` (its `encrypted_content`
//!   is another issuer's), `compaction`, `web_search_call` and every other item are
//!   dropped: never echoed into the prompt (§2.4 item 6).
//! * `max_output_tokens`, `reasoning.effort`, `text.format` (`json_object`,
//!   `json_schema`), `store`, `previous_response_id`, `prompt_cache_key` (the session);
//!   tools in `tools`. Unknown fields are ignored, as OpenAI's SDKs send new ones first.

use std::sync::Arc;

use serde_json::{Map, Value};

use super::tools::{self, custom_arguments, flat_name};
use super::{Echo, Options};
use crate::api::openai::request::json_object;
use crate::error::ProxyError;
use crate::translate::limits::estimate_tokens;
use crate::turn::{
    ApiRequest, CalledTool, Message, Output, Part, ResponseFormat, Role, ThinkingIntent,
    TurnRequest,
};
use crate::untrusted::clip;

fn bad(message: impl Into<String>, param: &str) -> ProxyError {
    ProxyError::bad_request(message, Some(param))
}

/// Parse a request body.
pub fn parse(body: &[u8]) -> Result<ApiRequest<Options>, ProxyError> {
    let obj = json_object(body)?;
    let model = match obj.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        _ => return Err(bad("`model` is required.", "model")),
    };
    let stream = match obj.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(bad("`stream` must be a boolean.", "stream")),
    };
    let mut messages = Vec::new();
    let instructions = match obj.get("instructions") {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) if s.trim().is_empty() => false,
        Some(Value::String(s)) => {
            messages.push(Message::text_message(Role::System, s.clone()));
            true
        }
        Some(_) => return Err(bad("`instructions` must be a string.", "instructions")),
    };
    let previous_response_id = match obj.get("previous_response_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) if !id.is_empty() => Some(id.clone()),
        Some(_) => {
            return Err(bad(
                "`previous_response_id` must be a response id.",
                "previous_response_id",
            ))
        }
    };
    let mut references = Vec::new();
    match obj.get("input") {
        Some(Value::String(s)) => messages.push(Message::text_message(Role::User, s.clone())),
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                input_item(i, item, &mut messages, &mut references)?;
            }
        }
        None | Some(Value::Null) if previous_response_id.is_some() => {}
        None | Some(Value::Null) => return Err(bad("`input` is required.", "input")),
        Some(_) => {
            return Err(bad(
                "`input` must be a string or an array of items.",
                "input",
            ))
        }
    }
    if references.is_empty() {
        merge_calls(&mut messages);
    }
    let max_tokens = match obj.get("max_output_tokens") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(n) if n > 0 => Some(n),
            _ => {
                return Err(bad(
                    "`max_output_tokens` must be a positive integer.",
                    "max_output_tokens",
                ))
            }
        },
    };
    let effort = obj
        .get("reasoning")
        .and_then(|r| r.get("effort"))
        .and_then(Value::as_str);
    let thinking = match effort {
        None => None,
        Some("none" | "minimal") => Some(ThinkingIntent::Off),
        Some("low" | "medium" | "high" | "xhigh") => Some(ThinkingIntent::On),
        Some(other) => {
            return Err(bad(
                format!(
                "`reasoning.effort` must be none, minimal, low, medium, high or xhigh, not `{}`.",
                clip(other)
            ),
                "reasoning.effort",
            ))
        }
    };
    let text_format = obj
        .get("text")
        .and_then(|t| t.get("format"))
        .cloned()
        .unwrap_or_else(|| serde_json::json!({"type": "text"}));
    let response_format = match text_format.get("type").and_then(Value::as_str) {
        None | Some("text") => ResponseFormat::Text,
        Some("json_object") => ResponseFormat::JsonObject,
        Some("json_schema") => match text_format.get("schema") {
            Some(schema @ Value::Object(_)) => ResponseFormat::JsonSchema(schema.to_string()),
            _ => {
                return Err(bad(
                    "`text.format.schema` must be a JSON Schema object.",
                    "text.format.schema",
                ))
            }
        },
        Some(other) => {
            return Err(bad(
                format!("Unknown `text.format.type` `{}`.", clip(other)),
                "text.format.type",
            ))
        }
    };
    let store = match obj.get("store") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(bad("`store` must be a boolean.", "store")),
    };
    let tools = tools::parse(&obj)?;
    let set = tools.set.map(Arc::new);
    let input_tokens = messages
        .iter()
        .map(|m| estimate_tokens(&m.text()))
        .sum::<u64>()
        + set.as_deref().map_or(0, |t| {
            t.tools
                .iter()
                .map(|s| estimate_tokens(&s.parameters.to_string()))
                .sum()
        });
    let session = obj
        .get("prompt_cache_key")
        .and_then(Value::as_str)
        .filter(|k| !k.is_empty())
        .map(str::to_owned);
    Ok(ApiRequest {
        turn: TurnRequest {
            model,
            messages,
            stream,
            max_tokens,
            stop: Vec::new(),
            thinking,
            response_format,
            tools: set,
            output: Output::Text,
            session,
            web_search: tools.web_search,
        },
        options: Options {
            names: Arc::new(tools.names),
            // Reasoning goes out when the client asked for it (an effort, or a summary as
            // Codex asks), unless it asked for none.
            reasoning: thinking != Some(ThinkingIntent::Off)
                && obj.get("reasoning").is_some_and(Value::is_object),
            input_tokens,
            echo: Arc::new(Echo {
                tool_choice: tools.choice,
                parallel_tool_calls: tools.parallel,
                max_output_tokens: max_tokens,
                reasoning_effort: effort.map(str::to_owned),
                text_format,
                metadata: obj
                    .get("metadata")
                    .filter(|m| m.is_object())
                    .cloned()
                    .unwrap_or_else(|| serde_json::json!({})),
                ignored_tools: tools.ignored,
            }),
            store,
            previous_response_id,
            references,
            instructions,
            sink: None,
        },
    })
}

fn field<'a>(item: &'a Value, key: &str, param: &str) -> Result<&'a str, ProxyError> {
    item.get(key).and_then(Value::as_str).ok_or_else(|| {
        bad(
            format!("`{key}` is required and must be a string."),
            &format!("{param}.{key}"),
        )
    })
}

/// One item of `input`, onto the messages.
fn input_item(
    i: usize,
    item: &Value,
    messages: &mut Vec<Message>,
    references: &mut Vec<(usize, String)>,
) -> Result<(), ProxyError> {
    let param = format!("input[{i}]");
    let Value::Object(o) = item else {
        return Err(bad("Each input item must be an object.", &param));
    };
    let kind = o.get("type").and_then(Value::as_str);
    match kind {
        // An easy input message has a role and no type.
        Some("message") | None if o.contains_key("role") => {
            messages.push(message(o, &param)?);
        }
        Some("function_call") => {
            let name = field(item, "name", &param)?;
            let namespace = o.get("namespace").and_then(Value::as_str);
            messages.push(call_message(CalledTool {
                id: field(item, "call_id", &param)?.to_owned(),
                name: flat_name(namespace, name),
                arguments: field(item, "arguments", &param)?.to_owned(),
            }));
        }
        Some("custom_tool_call") => {
            messages.push(call_message(CalledTool {
                id: field(item, "call_id", &param)?.to_owned(),
                name: field(item, "name", &param)?.to_owned(),
                arguments: custom_arguments(field(item, "input", &param)?),
            }));
        }
        Some("function_call_output" | "custom_tool_call_output") => {
            let call_id = field(item, "call_id", &param)?;
            let content = match o.get("output") {
                Some(Value::String(s)) => vec![Part::Text(s.clone())],
                Some(Value::Array(parts)) => parts_of(parts, &format!("{param}.output"))?,
                _ => {
                    return Err(bad(
                        "`output` must be a string or an array of content parts.",
                        &format!("{param}.output"),
                    ))
                }
            };
            messages.push(Message {
                role: Role::Tool,
                content,
                name: None,
                tool_calls: Vec::new(),
                tool_call_id: Some(call_id.to_owned()),
            });
        }
        Some("item_reference") => {
            references.push((messages.len(), field(item, "id", &param)?.to_owned()));
        }
        // Reasoning (another issuer's ciphertext), compaction, hosted tools' calls, agent
        // messages and whatever comes next: not the model's to read.
        Some(_) => {}
        None => {
            return Err(bad(
                "Each input item needs a `type` (or a `role`, for a message).",
                &param,
            ))
        }
    }
    Ok(())
}

/// An assistant message that is one call.
pub(crate) fn call_message(call: CalledTool) -> Message {
    Message {
        role: Role::Assistant,
        content: Vec::new(),
        name: None,
        tool_calls: vec![call],
        tool_call_id: None,
    }
}

/// Calls into the assistant message before them (its text, its other calls), as a chat
/// history has them: a turn is one assistant message.
pub(crate) fn merge_calls(messages: &mut Vec<Message>) {
    let mut merged: Vec<Message> = Vec::with_capacity(messages.len());
    for m in messages.drain(..) {
        let is_call_only =
            m.role == Role::Assistant && m.content.is_empty() && !m.tool_calls.is_empty();
        match merged.last_mut() {
            Some(prev) if is_call_only && prev.role == Role::Assistant => {
                prev.tool_calls.extend(m.tool_calls);
            }
            _ => merged.push(m),
        }
    }
    *messages = merged;
}

/// `{"type":"message","role","content"}` (or without `type`).
fn message(o: &Map<String, Value>, param: &str) -> Result<Message, ProxyError> {
    let role = match o.get("role").and_then(Value::as_str) {
        Some("user") => Role::User,
        Some("assistant") => Role::Assistant,
        Some("system" | "developer") => Role::System,
        Some(other) => {
            return Err(bad(
                format!(
                    "Unknown role `{}`; use user, assistant, system or developer.",
                    clip(other)
                ),
                &format!("{param}.role"),
            ))
        }
        None => return Err(bad("A message needs a `role`.", &format!("{param}.role"))),
    };
    let content = match o.get("content") {
        Some(Value::String(s)) if s.is_empty() => Vec::new(),
        Some(Value::String(s)) => vec![Part::Text(s.clone())],
        Some(Value::Array(parts)) => parts_of(parts, &format!("{param}.content"))?,
        _ => {
            return Err(bad(
                "A message's `content` must be a string or an array of parts.",
                &format!("{param}.content"),
            ))
        }
    };
    Ok(Message {
        role,
        content,
        name: None,
        tool_calls: Vec::new(),
        tool_call_id: None,
    })
}

/// Content parts: text of every kind, images; files are refused by name.
fn parts_of(parts: &[Value], param: &str) -> Result<Vec<Part>, ProxyError> {
    let mut content = Vec::new();
    for (j, part) in parts.iter().enumerate() {
        let at = format!("{param}[{j}]");
        match part.get("type").and_then(Value::as_str) {
            Some("input_text" | "output_text" | "text" | "summary_text") => {
                let text = field(part, "text", &at)?;
                if !text.is_empty() {
                    content.push(Part::Text(text.to_owned()));
                }
            }
            Some("refusal") => content.push(Part::Text(field(part, "refusal", &at)?.to_owned())),
            Some("input_image") => match part.get("image_url") {
                Some(Value::String(_)) => content.push(
                    crate::api::openai::request::image_part(part, &format!("{at}.image_url"))?,
                ),
                _ => {
                    return Err(bad(
                        "An `input_image` needs `image_url` (an https address or a data: URI); uploaded `file_id`s are not kept by this proxy.",
                        &format!("{at}.image_url"),
                    ))
                }
            },
            Some(other) => {
                return Err(bad(
                    format!(
                        "Content parts of type `{}` are not supported; send text or `input_image`.",
                        clip(other)
                    ),
                    &at,
                ))
            }
            None => return Err(bad("Each content part needs a `type`.", &format!("{at}.type"))),
        }
    }
    Ok(content)
}

#[cfg(test)]
mod tests;
