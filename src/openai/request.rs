//! `POST /v1/chat/completions` request: parsed from JSON into a typed request with precise
//! errors (`param` names the offending field, e.g. `messages[2].content`).
//!
//! Parsing goes through `serde_json::Value` rather than derived structs because derived
//! errors cannot name the field path; requests are small and parsed once, so this is off
//! the hot path.

use serde_json::{Map, Value};

use std::sync::Arc;

use super::tools::{self, CallShape};
use crate::error::ProxyError;
use crate::tools::ToolSet;
use crate::untrusted::clip;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
    Tool,
}

impl Role {
    pub fn label(self) -> &'static str {
        match self {
            Role::System => "System",
            Role::User => "User",
            Role::Assistant => "Assistant",
            Role::Tool => "Tool",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub role: Role,
    /// Text content (parts joined by newlines).
    pub content: String,
    /// `name` of a tool result (or of a legacy `function` message).
    pub name: Option<String>,
    /// The calls an assistant message made.
    pub tool_calls: Vec<CalledTool>,
    /// The call a tool result answers.
    pub tool_call_id: Option<String>,
}

impl Message {
    /// What names a tool result in the conversation key and the fold: the call it answers,
    /// else the tool's name.
    pub fn result_label(&self) -> Option<&str> {
        self.tool_call_id.as_deref().or(self.name.as_deref())
    }
}

/// A call in an assistant message of the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalledTool {
    pub id: String,
    pub name: String,
    /// The arguments as the client sent them back (a string of JSON, usually).
    pub arguments: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReasoningEffort {
    None,
    Minimal,
    Low,
    Medium,
    High,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ResponseFormat {
    #[default]
    Text,
    JsonObject,
    /// The JSON schema, serialised, to put in the instruction.
    JsonSchema(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<Message>,
    pub stream: bool,
    pub include_usage: bool,
    pub max_tokens: Option<u64>,
    pub stop: Vec<String>,
    pub reasoning_effort: Option<ReasoningEffort>,
    pub enable_thinking: Option<bool>,
    pub response_format: ResponseFormat,
    /// Function calling (emulated upstream); `None` for plain text.
    pub tools: Option<Arc<ToolSet>>,
    /// `tool_calls`, or `function_call` for the deprecated `functions` API.
    pub call_shape: CallShape,
}

fn bad(message: impl Into<String>, param: &str) -> ProxyError {
    ProxyError::bad_request(message, Some(param))
}

impl ChatRequest {
    /// Parse a request body.
    pub fn from_slice(body: &[u8]) -> Result<Self, ProxyError> {
        let value: Value = serde_json::from_slice(body).map_err(|e| {
            ProxyError::bad_request(format!("Request body is not valid JSON: {e}"), None)
        })?;
        let Value::Object(obj) = value else {
            return Err(ProxyError::bad_request(
                "Request body must be a JSON object.",
                None,
            ));
        };
        Self::from_object(&obj)
    }

    fn from_object(obj: &Map<String, Value>) -> Result<Self, ProxyError> {
        let model = match obj.get("model") {
            Some(Value::String(m)) if !m.trim().is_empty() => m.trim().to_owned(),
            Some(Value::String(_)) => return Err(bad("`model` must not be empty.", "model")),
            Some(_) => return Err(bad("`model` must be a string.", "model")),
            None => return Err(bad("Missing required parameter: `model`.", "model")),
        };
        let messages = match obj.get("messages") {
            Some(Value::Array(a)) if a.is_empty() => {
                return Err(bad(
                    "`messages` must contain at least one message.",
                    "messages",
                ))
            }
            Some(Value::Array(a)) => a
                .iter()
                .enumerate()
                .map(|(i, m)| parse_message(i, m))
                .collect::<Result<Vec<_>, _>>()?,
            Some(_) => return Err(bad("`messages` must be an array.", "messages")),
            None => return Err(bad("Missing required parameter: `messages`.", "messages")),
        };
        if !messages.iter().any(|m| m.role == Role::User) {
            return Err(bad(
                "`messages` must contain at least one user message.",
                "messages",
            ));
        }

        let stream = opt_bool(obj, "stream")?.unwrap_or(false);
        let include_usage = match obj.get("stream_options") {
            None | Some(Value::Null) => false,
            Some(Value::Object(o)) => match o.get("include_usage") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => {
                    return Err(bad(
                        "`stream_options.include_usage` must be a boolean.",
                        "stream_options.include_usage",
                    ))
                }
            },
            Some(_) => return Err(bad("`stream_options` must be an object.", "stream_options")),
        };

        if let Some(n) = opt_u64(obj, "n")? {
            if n != 1 {
                return Err(bad(
                    "Only n=1 is supported: the upstream generates one answer.",
                    "n",
                ));
            }
        }
        let max_tokens = match (
            opt_u64(obj, "max_tokens")?,
            opt_u64(obj, "max_completion_tokens")?,
        ) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if max_tokens == Some(0) {
            let param = if obj.contains_key("max_tokens") {
                "max_tokens"
            } else {
                "max_completion_tokens"
            };
            return Err(bad(format!("`{param}` must be at least 1."), param));
        }

        let stop = match obj.get("stop") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(a)) if a.len() <= 4 => a
                .iter()
                .map(|s| s.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| bad("`stop` must be a string or an array of strings.", "stop"))?,
            Some(Value::Array(_)) => {
                return Err(bad("`stop` accepts at most 4 sequences.", "stop"))
            }
            Some(_) => {
                return Err(bad(
                    "`stop` must be a string or an array of strings.",
                    "stop",
                ))
            }
        };

        // Accepted without effect (the upstream has no equivalent), but checked against
        // OpenAI's ranges: silently taking a value OpenAI rejects hides a client bug.
        for (key, min, max) in [
            ("temperature", 0.0, 2.0),
            ("top_p", 0.0, 1.0),
            ("presence_penalty", -2.0, 2.0),
            ("frequency_penalty", -2.0, 2.0),
        ] {
            match obj.get(key) {
                None | Some(Value::Null) => {}
                Some(Value::Number(n)) if n.as_f64().is_some_and(|v| (min..=max).contains(&v)) => {}
                Some(Value::Number(_)) => {
                    return Err(bad(
                        format!("`{key}` must be between {min} and {max}."),
                        key,
                    ))
                }
                Some(_) => return Err(bad(format!("`{key}` must be a number."), key)),
            }
        }

        let reasoning_effort = match obj.get("reasoning_effort") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(match s.as_str() {
                "none" => ReasoningEffort::None,
                "minimal" => ReasoningEffort::Minimal,
                "low" => ReasoningEffort::Low,
                "medium" => ReasoningEffort::Medium,
                "high" | "xhigh" => ReasoningEffort::High,
                _ => {
                    return Err(bad(
                        "`reasoning_effort` must be one of none, minimal, low, medium, high.",
                        "reasoning_effort",
                    ))
                }
            }),
            Some(_) => {
                return Err(bad(
                    "`reasoning_effort` must be a string.",
                    "reasoning_effort",
                ))
            }
        };
        let enable_thinking = opt_bool(obj, "enable_thinking")?;

        let tools = tools::parse(obj)?.map(Arc::new);
        let call_shape = tools::call_shape(obj);

        let response_format = match obj.get("response_format") {
            None | Some(Value::Null) => ResponseFormat::Text,
            Some(Value::Object(o)) => match o.get("type").and_then(Value::as_str) {
                Some("text") => ResponseFormat::Text,
                Some("json_object") => ResponseFormat::JsonObject,
                Some("json_schema") => ResponseFormat::JsonSchema(
                    o.get("json_schema")
                        .and_then(|s| s.get("schema"))
                        .map(Value::to_string)
                        .unwrap_or_else(|| "{}".to_owned()),
                ),
                _ => {
                    return Err(bad(
                        "`response_format.type` must be text, json_object or json_schema.",
                        "response_format.type",
                    ))
                }
            },
            Some(_) => {
                return Err(bad(
                    "`response_format` must be an object.",
                    "response_format",
                ))
            }
        };

        Ok(ChatRequest {
            model,
            messages,
            stream,
            include_usage,
            max_tokens,
            stop,
            reasoning_effort,
            enable_thinking,
            response_format,
            tools,
            call_shape,
        })
    }
}

fn opt_bool(obj: &Map<String, Value>, key: &str) -> Result<Option<bool>, ProxyError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(bad(format!("`{key}` must be a boolean."), key)),
    }
}

fn opt_u64(obj: &Map<String, Value>, key: &str) -> Result<Option<u64>, ProxyError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| bad(format!("`{key}` must be a non-negative integer."), key)),
    }
}

fn parse_message(i: usize, m: &Value) -> Result<Message, ProxyError> {
    let Value::Object(m) = m else {
        return Err(bad(
            "Each message must be an object.",
            &format!("messages[{i}]"),
        ));
    };
    let role = match m.get("role").and_then(Value::as_str) {
        Some("system" | "developer") => Role::System,
        Some("user") => Role::User,
        Some("assistant") => Role::Assistant,
        Some("tool" | "function") => Role::Tool,
        Some(other) => {
            return Err(bad(
                format!(
                    "Invalid role `{}`: expected system, developer, user, assistant or tool.",
                    clip(other)
                ),
                &format!("messages[{i}].role"),
            ))
        }
        None => {
            return Err(bad(
                "Each message needs a string `role`.",
                &format!("messages[{i}].role"),
            ))
        }
    };
    let param = format!("messages[{i}].content");
    let content = match m.get("content") {
        Some(Value::String(s)) => s.clone(),
        None | Some(Value::Null) if matches!(role, Role::Assistant | Role::Tool) => String::new(),
        None | Some(Value::Null) => {
            return Err(bad(
                format!(
                    "`content` is required for {} messages.",
                    role.label().to_lowercase()
                ),
                &param,
            ))
        }
        Some(Value::Array(parts)) => parse_parts(parts, &param)?,
        Some(_) => {
            return Err(bad(
                "`content` must be a string or an array of content parts.",
                &param,
            ))
        }
    };
    let tool_calls = if role == Role::Assistant {
        called_tools(m, i)?
    } else {
        Vec::new()
    };
    let text = |k: &str| m.get(k).and_then(Value::as_str).map(str::to_owned);
    Ok(Message {
        role,
        content,
        name: text("name"),
        tool_calls,
        tool_call_id: text("tool_call_id"),
    })
}

/// `tool_calls` of an assistant message (or its legacy `function_call`). Arguments may be a
/// string (the norm) or an object (some clients re-serialise); both are kept as JSON text.
fn called_tools(m: &Map<String, Value>, i: usize) -> Result<Vec<CalledTool>, ProxyError> {
    let one = |call: &Value, param: &str| -> Result<CalledTool, ProxyError> {
        let f = call.get("function").unwrap_or(call);
        let name = f
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("A tool call needs `function.name`.", param))?;
        let arguments = match f.get("arguments") {
            None | Some(Value::Null) => "{}".to_owned(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
        };
        Ok(CalledTool {
            id: call
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            name: name.to_owned(),
            arguments,
        })
    };
    match (m.get("tool_calls"), m.get("function_call")) {
        (Some(Value::Array(calls)), _) => calls
            .iter()
            .enumerate()
            .map(|(j, c)| one(c, &format!("messages[{i}].tool_calls[{j}]")))
            .collect(),
        (None | Some(Value::Null), Some(f @ Value::Object(_))) => {
            Ok(vec![one(f, &format!("messages[{i}].function_call"))?])
        }
        (None | Some(Value::Null), _) => Ok(Vec::new()),
        (Some(_), _) => Err(bad(
            "`tool_calls` must be an array.",
            &format!("messages[{i}].tool_calls"),
        )),
    }
}

fn parse_parts(parts: &[Value], param: &str) -> Result<String, ProxyError> {
    let mut text = String::new();
    for (j, part) in parts.iter().enumerate() {
        let part_param = format!("{param}[{j}]");
        let kind = part.get("type").and_then(Value::as_str);
        match kind {
            Some("text") | Some("input_text") => {
                let t = part
                    .get("text")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad("A text part needs a string `text`.", &format!("{part_param}.text")))?;
                if !text.is_empty() {
                    text.push('\n');
                }
                text.push_str(t);
            }
            Some("image_url" | "input_image" | "input_audio" | "file" | "image" | "audio") => {
                return Err(bad(
                    format!(
                        "Content parts of type `{}` (images, audio, files) are not supported by this proxy yet; send text only.",
                        clip(kind.unwrap_or_default())
                    ),
                    &part_param,
                ))
            }
            Some(other) => return Err(bad(format!("Unknown content part type `{}`.", clip(other)), &part_param)),
            None => return Err(bad("Each content part needs a string `type`.", &format!("{part_param}.type"))),
        }
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err_param(body: &str) -> Option<String> {
        match ChatRequest::from_slice(body.as_bytes()) {
            Err(ProxyError::BadRequest { param, .. }) => param,
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn minimal_request() {
        let r = ChatRequest::from_slice(
            br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#,
        )
        .unwrap();
        assert_eq!(r.model, "m");
        assert!(!r.stream);
        assert_eq!(r.messages[0].content, "hi");
    }

    #[test]
    fn precise_params() {
        assert_eq!(err_param(r#"{"messages":[]}"#).as_deref(), Some("model"));
        assert_eq!(err_param(r#"{"model":"m"}"#).as_deref(), Some("messages"));
        assert_eq!(
            err_param(r#"{"model":"m","messages":[]}"#).as_deref(),
            Some("messages")
        );
        assert_eq!(
            err_param(r#"{"model":"m","messages":[{"role":"wizard","content":"x"}]}"#).as_deref(),
            Some("messages[0].role")
        );
        assert_eq!(
            err_param(r#"{"model":"m","messages":[{"role":"user","content":5}]}"#).as_deref(),
            Some("messages[0].content")
        );
        assert_eq!(
            err_param(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"n":2}"#)
                .as_deref(),
            Some("n")
        );
        assert_eq!(
            err_param(
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":-1}"#
            )
            .as_deref(),
            Some("max_tokens")
        );
        assert_eq!(
            err_param(r#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}]}"#).as_deref(),
            Some("messages[0].content[0]")
        );
    }

    #[test]
    fn out_of_range_sampling_parameters_are_rejected() {
        let with = |extra: &str| {
            format!(r#"{{"model":"m","messages":[{{"role":"user","content":"x"}}],{extra}}}"#)
        };
        for (extra, param) in [
            (r#""temperature":2.5"#, "temperature"),
            (r#""temperature":-0.1"#, "temperature"),
            (r#""top_p":1.01"#, "top_p"),
            (r#""presence_penalty":3"#, "presence_penalty"),
            (r#""frequency_penalty":"1""#, "frequency_penalty"),
        ] {
            assert_eq!(err_param(&with(extra)).as_deref(), Some(param), "{extra}");
        }
        for ok in [r#""temperature":0"#, r#""temperature":2"#, r#""top_p":0.5"#] {
            assert!(ChatRequest::from_slice(with(ok).as_bytes()).is_ok(), "{ok}");
        }
    }

    #[test]
    fn tools_are_checked_and_tool_choice_none_means_no_tools() {
        let with = |extra: &str| {
            format!(r#"{{"model":"m","messages":[{{"role":"user","content":"x"}}],{extra}}}"#)
        };
        let tool = r#"{"type":"function","function":{"name":"read_file","parameters":{}}}"#;
        for (extra, param) in [
            (r#""tools":"x""#.to_owned(), "tools"),
            (r#""tools":[1]"#.to_owned(), "tools[0]"),
            (r#""tools":[{"type":"code"}]"#.to_owned(), "tools[0].type"),
            (
                r#""tools":[{"type":"function","function":{"name":"bad name"}}]"#.to_owned(),
                "tools[0].function.name",
            ),
            (
                format!(
                    r#""tools":[{tool}],"tool_choice":{{"type":"function","function":{{"name":"write_file"}}}}"#
                ),
                "tool_choice",
            ),
            (
                format!(r#""tools":[{tool}],"tool_choice":"sometimes""#),
                "tool_choice",
            ),
            (r#""tool_choice":"required""#.to_owned(), "tool_choice"),
            (
                r#""functions":[{"name":"f"}],"function_call":{"name":"g"}"#.to_owned(),
                "function_call",
            ),
        ] {
            assert_eq!(err_param(&with(&extra)).as_deref(), Some(param), "{extra}");
        }
        for ok in [
            format!(r#""tools":[{tool}],"tool_choice":"none""#),
            r#""tools":[],"tool_choice":"auto""#.to_owned(),
            r#""functions":[{"name":"f"}],"function_call":"none""#.to_owned(),
            format!(r#""tools":[{tool}]"#),
        ] {
            assert!(
                ChatRequest::from_slice(with(&ok).as_bytes()).is_ok(),
                "{ok}"
            );
        }
    }

    #[test]
    fn unknown_fields_and_sampling_params_are_accepted() {
        let r = ChatRequest::from_slice(
            br#"{"model":"m","messages":[{"role":"developer","content":"s"},{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}],"cache_control":{}}],
                "temperature":0.2,"top_p":1,"user":"u","seed":1,"stop":["x","y"],"max_completion_tokens":9,
                "stream":true,"stream_options":{"include_usage":true},"something_new":[1]}"#,
        )
        .unwrap();
        assert_eq!(r.messages[0].role, Role::System);
        assert_eq!(r.messages[1].content, "a\nb");
        assert_eq!(r.stop, vec!["x", "y"]);
        assert_eq!(r.max_tokens, Some(9));
        assert!(r.stream && r.include_usage);
    }
}
