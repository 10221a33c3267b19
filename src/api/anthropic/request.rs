//! A `POST /v1/messages` body → the turn and the Messages API's options, checked the way
//! Anthropic checks them (400s name the parameter). Unknown fields and betas
//! (`context_management`, `output_config`, `cache_control`, `metadata`, …) are accepted
//! without effect.
//!
//! * `system`: a string or text blocks → the turn's system text, without the per-request
//!   `x-anthropic-billing-header:` line (it changes with every request and would make every
//!   conversation key new).
//! * `messages`: `user` and `assistant` turns, and `system` entries anywhere (Claude Code
//!   sends one after the first user turn). Blocks: `text`; `image` (`base64` or `url`
//!   source); an assistant's `tool_use` → its calls; a user's `tool_result` → a tool message
//!   (text and image blocks, `is_error` said in the text); `thinking` and
//!   `redacted_thinking` are ours from an earlier answer and dropped; other block kinds
//!   (`tool_reference`, `document`, …) are dropped.
//! * `tools`: client tools (`name`, `description`, `input_schema`); tools marked
//!   `defer_loading` are not shown to the model; server tools (a `type` such as
//!   `web_search_20250305`) are refused — the proxy cannot run them.
//! * `tool_choice`: `auto`, `any`, `tool` (by name), `none`; `disable_parallel_tool_use`.
//! * `max_tokens` is required and never lowered; `stop_sequences`; `stream`; `thinking`
//!   (`enabled` → on, `adaptive` → the model decides, `disabled` → off).

use std::sync::Arc;

use serde_json::{Map, Value};

use super::Options;
use crate::error::ProxyError;
use crate::tools::{Choice, ToolSet, ToolSpec};
use crate::translate::limits::estimate_tokens;
use crate::turn::{
    ApiRequest, CalledTool, FileRef, Message, Output, Part, ResponseFormat, Role, ThinkingIntent,
    TurnRequest,
};
use crate::untrusted::clip;

/// The prefix of the per-request line Claude Code puts in its system prompt.
const BILLING_HEADER: &str = "x-anthropic-billing-header:";

fn bad(message: impl Into<String>, param: &str) -> ProxyError {
    ProxyError::bad_request(message, Some(param))
}

/// Parse a `POST /v1/messages` body.
pub fn parse(body: &[u8]) -> Result<ApiRequest<Options>, ProxyError> {
    let obj = crate::api::openai::request::json_object(body)?;
    let model = match obj.get("model") {
        Some(Value::String(m)) if !m.trim().is_empty() => m.trim().to_owned(),
        Some(_) => return Err(bad("`model` must be a non-empty string.", "model")),
        None => return Err(bad("model: Field required", "model")),
    };
    let max_tokens = match obj.get("max_tokens") {
        Some(v) => match v.as_u64() {
            Some(n) if n >= 1 => n,
            _ => return Err(bad("max_tokens: must be a positive integer", "max_tokens")),
        },
        None => return Err(bad("max_tokens: Field required", "max_tokens")),
    };
    let mut messages = system(&obj)?;
    match obj.get("messages") {
        Some(Value::Array(list)) if !list.is_empty() => {
            for (i, m) in list.iter().enumerate() {
                message(i, m, &mut messages)?;
            }
        }
        Some(Value::Array(_)) => {
            return Err(bad(
                "messages: at least one message is required",
                "messages",
            ))
        }
        _ => return Err(bad("messages: Field required (an array)", "messages")),
    }
    if !messages
        .iter()
        .any(|m| matches!(m.role, Role::User | Role::Tool))
    {
        return Err(bad(
            "messages: at least one user message is required",
            "messages",
        ));
    }
    let stop = match obj.get("stop_sequences") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|s| s.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| bad("stop_sequences: must be strings", "stop_sequences"))?,
        Some(_) => return Err(bad("stop_sequences: must be an array", "stop_sequences")),
    };
    let stream = match obj.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(bad("stream: must be a boolean", "stream")),
    };
    let thinking = match obj.get("thinking") {
        None | Some(Value::Null) => None,
        Some(Value::Object(t)) => match t.get("type").and_then(Value::as_str) {
            Some("enabled") => Some(ThinkingIntent::On),
            Some("adaptive") => Some(ThinkingIntent::Auto),
            Some("disabled") => Some(ThinkingIntent::Off),
            _ => {
                return Err(bad(
                    "thinking.type: must be enabled, adaptive or disabled",
                    "thinking.type",
                ))
            }
        },
        Some(_) => return Err(bad("thinking: must be an object", "thinking")),
    };
    let tools = tools(&obj)?.map(Arc::new);
    let input_tokens = messages
        .iter()
        .map(|m| estimate_tokens(&m.text()))
        .sum::<u64>()
        + tools.as_deref().map_or(0, |t| {
            t.tools
                .iter()
                .map(|s| estimate_tokens(&s.parameters.to_string()))
                .sum()
        });
    Ok(ApiRequest {
        turn: TurnRequest {
            model,
            messages,
            stream,
            max_tokens: Some(max_tokens),
            stop,
            thinking,
            response_format: ResponseFormat::Text,
            tools,
            output: Output::Text,
            session: session(&obj),
            web_search: false,
        },
        options: Options {
            thinking: matches!(thinking, Some(ThinkingIntent::On | ThinkingIntent::Auto)),
            input_tokens,
        },
    })
}

/// The session `metadata.user_id` names. Claude Code sends a JSON object in the string
/// (`{"device_id":…,"session_id":…}`), older versions `user_…_account_…_session_<uuid>`;
/// any other client's user id scopes its conversations as it is.
fn session(obj: &Map<String, Value>) -> Option<String> {
    let user = obj.get("metadata")?.get("user_id")?.as_str()?;
    if user.is_empty() {
        return None;
    }
    if let Ok(Value::Object(ids)) = serde_json::from_str::<Value>(user) {
        if let Some(id) = ids.get("session_id").and_then(Value::as_str) {
            return Some(id.to_owned());
        }
    }
    Some(match user.rsplit_once("_session_") {
        Some((_, id)) if !id.is_empty() => id.to_owned(),
        _ => user.to_owned(),
    })
}

/// `system`: a string, or text blocks.
fn system(obj: &Map<String, Value>) -> Result<Vec<Message>, ProxyError> {
    let text = match obj.get("system") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(blocks)) => texts(blocks, "system")?.join("\n\n"),
        Some(_) => return Err(bad("system: must be a string or text blocks", "system")),
    };
    let text = without_billing_header(&text);
    Ok(if text.trim().is_empty() {
        Vec::new()
    } else {
        vec![Message::text_message(Role::System, text)]
    })
}

/// The system text without Claude Code's per-request billing line (and the blank lines that
/// separated it from the rest).
fn without_billing_header(text: &str) -> String {
    if !text.contains(BILLING_HEADER) {
        return text.to_owned();
    }
    text.lines()
        .filter(|l| !l.trim_start().starts_with(BILLING_HEADER))
        .collect::<Vec<_>>()
        .join("\n")
        .trim_matches('\n')
        .to_owned()
}

/// The texts of text blocks (other kinds are refused where only text may be).
fn texts(blocks: &[Value], param: &str) -> Result<Vec<String>, ProxyError> {
    blocks
        .iter()
        .enumerate()
        .map(
            |(i, b)| match (b.get("type").and_then(Value::as_str), b.get("text")) {
                (Some("text"), Some(Value::String(t))) => Ok(t.clone()),
                _ => Err(bad(
                    format!("{param}.{i}: must be a text block"),
                    &format!("{param}.{i}"),
                )),
            },
        )
        .collect()
}

/// One entry of `messages`, appended to `out` (a user turn with tool results becomes the
/// tool messages, then the user's own text).
fn message(i: usize, m: &Value, out: &mut Vec<Message>) -> Result<(), ProxyError> {
    let param = format!("messages.{i}");
    let role = match m.get("role").and_then(Value::as_str) {
        Some("user") => Role::User,
        Some("assistant") => Role::Assistant,
        Some("system") => Role::System,
        Some(other) => {
            return Err(bad(
                format!("{param}.role: unknown role `{}`", clip(other)),
                &format!("{param}.role"),
            ))
        }
        None => {
            return Err(bad(
                format!("{param}.role: Field required"),
                &format!("{param}.role"),
            ))
        }
    };
    let blocks = match m.get("content") {
        Some(Value::String(s)) => {
            let text = if role == Role::System {
                without_billing_header(s)
            } else {
                s.clone()
            };
            out.push(Message::text_message(role, text));
            return Ok(());
        }
        Some(Value::Array(blocks)) => blocks,
        _ => {
            return Err(bad(
                format!("{param}.content: must be a string or content blocks"),
                &format!("{param}.content"),
            ))
        }
    };
    let mut mine = Message::text_message(role, "");
    for (j, block) in blocks.iter().enumerate() {
        let at = format!("{param}.content.{j}");
        match block.get("type").and_then(Value::as_str) {
            Some("text") => {
                let text = block
                    .get("text")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad(format!("{at}.text: Field required"), &at))?;
                let text = if role == Role::System {
                    without_billing_header(text)
                } else {
                    text.to_owned()
                };
                mine.content.push(Part::Text(text));
            }
            Some("image") => mine.content.push(image(block, &at)?),
            Some("tool_use") if role == Role::Assistant => {
                let name = block
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad(format!("{at}.name: Field required"), &at))?;
                mine.tool_calls.push(CalledTool {
                    id: block
                        .get("id")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                    name: name.to_owned(),
                    arguments: block
                        .get("input")
                        .map_or_else(|| "{}".to_owned(), Value::to_string),
                });
            }
            Some("tool_result") if role == Role::User => out.push(tool_result(block, &at)?),
            Some("tool_use" | "tool_result") => {
                return Err(bad(
                    format!(
                        "{at}: this block is not allowed in a {} message",
                        role.label().to_lowercase()
                    ),
                    &at,
                ))
            }
            // Ours from an earlier answer (its signature is ours too), and kinds that carry
            // nothing the upstream can read.
            Some(_) => {}
            None => return Err(bad(format!("{at}.type: Field required"), &at)),
        }
    }
    if !mine.content.is_empty() || !mine.tool_calls.is_empty() {
        out.push(mine);
    }
    Ok(())
}

/// An `image` block: `{"source":{"type":"base64","media_type","data"}}` or
/// `{"source":{"type":"url","url"}}`.
fn image(block: &Value, at: &str) -> Result<Part, ProxyError> {
    let source = block.get("source");
    let kind = source.and_then(|s| s.get("type")).and_then(Value::as_str);
    let invalid = |message: String| ProxyError::BadRequest {
        message,
        param: Some(format!("{at}.source")),
        code: Some("invalid_image_url"),
    };
    match kind {
        Some("base64") => {
            let media_type = source
                .and_then(|s| s.get("media_type"))
                .and_then(Value::as_str)
                .unwrap_or("image/png");
            let data = source
                .and_then(|s| s.get("data"))
                .and_then(Value::as_str)
                .ok_or_else(|| invalid(format!("{at}.source.data: Field required")))?;
            let file: FileRef = crate::media::data_uri(&format!("data:{media_type};base64,{data}"))
                .map_err(invalid)?;
            Ok(Part::File(file))
        }
        Some("url") => match source.and_then(|s| s.get("url")).and_then(Value::as_str) {
            Some(url) if url.starts_with("https://") || url.starts_with("http://") => {
                Ok(Part::ImageUrl(url.to_owned()))
            }
            _ => Err(invalid(format!("{at}.source.url: must be an http(s) URL"))),
        },
        _ => Err(invalid(format!("{at}.source.type: must be base64 or url"))),
    }
}

/// A `tool_result` block → a tool message answering its `tool_use_id`.
fn tool_result(block: &Value, at: &str) -> Result<Message, ProxyError> {
    let id = block
        .get("tool_use_id")
        .and_then(Value::as_str)
        .ok_or_else(|| bad(format!("{at}.tool_use_id: Field required"), at))?;
    let mut result = Message::text_message(Role::Tool, "");
    result.tool_call_id = Some(id.to_owned());
    if block.get("is_error").and_then(Value::as_bool) == Some(true) {
        result
            .content
            .push(Part::Text("(The tool reported an error.)".to_owned()));
    }
    match block.get("content") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => result.content.push(Part::Text(s.clone())),
        Some(Value::Array(parts)) => {
            for (k, part) in parts.iter().enumerate() {
                let at = format!("{at}.content.{k}");
                match part.get("type").and_then(Value::as_str) {
                    Some("text") => result.content.push(Part::Text(
                        part.get("text")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned(),
                    )),
                    Some("image") => result.content.push(image(part, &at)?),
                    _ => {}
                }
            }
        }
        Some(_) => {
            return Err(bad(
                format!("{at}.content: must be a string or content blocks"),
                at,
            ))
        }
    }
    Ok(result)
}

/// `tools` and `tool_choice` → the request's tools (`None`: plain text).
fn tools(obj: &Map<String, Value>) -> Result<Option<ToolSet>, ProxyError> {
    let specs: Vec<ToolSpec> = match obj.get("tools") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(list)) => {
            let mut specs = Vec::new();
            for (i, t) in list.iter().enumerate() {
                let at = format!("tools.{i}");
                if let Some(kind) = t
                    .get("type")
                    .and_then(Value::as_str)
                    .filter(|k| *k != "custom")
                {
                    return Err(bad(
                        format!(
                            "{at}: the server tool `{}` is not available through this proxy (it runs client tools only)",
                            clip(kind)
                        ),
                        &at,
                    ));
                }
                if t.get("defer_loading").and_then(Value::as_bool) == Some(true) {
                    continue;
                }
                let name = t
                    .get("name")
                    .and_then(Value::as_str)
                    .filter(|n| !n.is_empty())
                    .ok_or_else(|| bad(format!("{at}.name: Field required"), &at))?;
                specs.push(ToolSpec {
                    name: name.to_owned(),
                    description: t
                        .get("description")
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                    parameters: t
                        .get("input_schema")
                        .cloned()
                        .unwrap_or_else(|| serde_json::json!({"type": "object"})),
                });
            }
            specs
        }
        Some(_) => return Err(bad("tools: must be an array", "tools")),
    };
    let choice = obj.get("tool_choice");
    let parallel = choice
        .and_then(|c| c.get("disable_parallel_tool_use"))
        .and_then(Value::as_bool)
        != Some(true);
    let choice = match choice.and_then(|c| c.get("type")).and_then(Value::as_str) {
        None | Some("auto") => Choice::Auto,
        Some("any") => Choice::Required,
        Some("none") => return Ok(None),
        Some("tool") => {
            let name = choice
                .and_then(|c| c.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| bad("tool_choice.name: Field required", "tool_choice.name"))?;
            if !specs.iter().any(|t| t.name == name) {
                return Err(bad(
                    format!("tool_choice.name: `{}` is not in `tools`", clip(name)),
                    "tool_choice.name",
                ));
            }
            Choice::Named(name.to_owned())
        }
        Some(other) => {
            return Err(bad(
                format!("tool_choice.type: unknown type `{}`", clip(other)),
                "tool_choice.type",
            ))
        }
    };
    if specs.is_empty() {
        return match choice {
            Choice::Auto => Ok(None),
            _ => Err(bad(
                "tool_choice: needs at least one tool in `tools`",
                "tool_choice",
            )),
        };
    }
    let specs = match &choice {
        Choice::Named(n) => specs.into_iter().filter(|t| &t.name == n).collect(),
        _ => specs,
    };
    Ok(Some(ToolSet::offered(specs, choice, parallel)))
}

#[cfg(test)]
mod tests;
