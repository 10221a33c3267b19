//! `POST /v1/chat/completions` request: parsed from JSON into a typed request with precise
//! errors (`param` names the offending field, e.g. `messages[2].content`).
//!
//! Parsing goes through `serde_json::Value` rather than derived structs because derived
//! errors cannot name the field path; requests are small and parsed once, so this is off
//! the hot path.

use serde_json::{Map, Value};

use crate::error::ProxyError;
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
    /// Text content (parts joined by newlines; assistant tool calls rendered as text).
    pub content: String,
    /// `name` for tool/function messages, used as the label of a tool result.
    pub name: Option<String>,
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

        let tools = ToolRequest::parse(obj)?;
        if tools.wants_calls() {
            return Err(bad(
                format!(
                    "`{}` (function calling) is not supported by this proxy yet; send \
                     tool_choice \"none\" to answer without tools.",
                    tools.param
                ),
                tools.param,
            ));
        }

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
        })
    }
}

/// `tools` / `tool_choice` (or the deprecated `functions` / `function_call`), checked the way
/// OpenAI checks them.
#[derive(Debug, Default)]
struct ToolRequest {
    /// Declared function names.
    names: Vec<String>,
    /// `tool_choice: "none"` (or `function_call: "none"`): answer without tools.
    none: bool,
    /// The parameter the tools came in (`tools` or `functions`).
    param: &'static str,
}

impl ToolRequest {
    fn parse(obj: &Map<String, Value>) -> Result<Self, ProxyError> {
        let present = |k: &str| obj.get(k).is_some_and(|v| !v.is_null());
        let list_key = if present("functions") && !present("tools") {
            "functions"
        } else {
            "tools"
        };
        let choice_key = if present("function_call") && !present("tool_choice") {
            "function_call"
        } else {
            "tool_choice"
        };
        let names = match obj.get(list_key) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, t)| tool_name(t, list_key, i))
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(bad(format!("`{list_key}` must be an array."), list_key)),
        };
        let choice = obj.get(choice_key);
        let mut none = false;
        match choice {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => match s.as_str() {
                "none" => none = true,
                "auto" | "required" if !names.is_empty() || s == "auto" => {}
                "required" => {
                    return Err(bad(
                        "`tool_choice` \"required\" needs at least one tool in `tools`.",
                        choice_key,
                    ))
                }
                _ => {
                    return Err(bad(
                        format!("`{choice_key}` must be \"none\", \"auto\", \"required\" or an object naming a function."),
                        choice_key,
                    ))
                }
            },
            Some(Value::Object(o)) => {
                let name = o
                    .get("function")
                    .and_then(|f| f.get("name"))
                    .or_else(|| o.get("name"))
                    .and_then(Value::as_str);
                match name {
                    Some(n) if names.iter().any(|t| t == n) => {}
                    Some(n) => {
                        return Err(bad(
                            format!(
                                "`{choice_key}` names the function `{}`, which is not in `{list_key}`.",
                                clip(n)
                            ),
                            choice_key,
                        ))
                    }
                    // `allowed_tools` and other forms without one name: checked when tools are used.
                    None if o.contains_key("allowed_tools") || o.get("type").and_then(Value::as_str) == Some("allowed_tools") => {}
                    None => {
                        return Err(bad(
                            format!("`{choice_key}` must name a function: {{\"type\": \"function\", \"function\": {{\"name\": …}}}}."),
                            choice_key,
                        ))
                    }
                }
            }
            Some(_) => {
                return Err(bad(
                    format!("`{choice_key}` must be a string or an object."),
                    choice_key,
                ))
            }
        }
        Ok(ToolRequest {
            names,
            none,
            param: list_key,
        })
    }

    /// Whether the client asks for function calling (tools, and not `none`).
    fn wants_calls(&self) -> bool {
        !self.names.is_empty() && !self.none
    }
}

/// The function name of `tools[i]` (`{"type":"function","function":{"name":…}}`) or
/// `functions[i]` (`{"name":…}`).
fn tool_name(t: &Value, list_key: &str, i: usize) -> Result<String, ProxyError> {
    let param = format!("{list_key}[{i}]");
    let Value::Object(o) = t else {
        return Err(bad("Each tool must be an object.", &param));
    };
    let function = if list_key == "tools" {
        match o.get("type").and_then(Value::as_str) {
            Some("function") => {}
            Some(other) => {
                return Err(bad(
                    format!(
                        "Tool type `{}` is not supported; use \"function\".",
                        clip(other)
                    ),
                    &format!("{param}.type"),
                ))
            }
            None => {
                return Err(bad(
                    "Each tool needs `type`: \"function\".",
                    &format!("{param}.type"),
                ))
            }
        }
        o.get("function")
            .and_then(Value::as_object)
            .ok_or_else(|| {
                bad(
                    "A function tool needs a `function` object.",
                    &format!("{param}.function"),
                )
            })?
    } else {
        o
    };
    let fparam = if list_key == "tools" {
        format!("{param}.function.name")
    } else {
        format!("{param}.name")
    };
    match function.get("name").and_then(Value::as_str) {
        Some(n) if valid_function_name(n) => Ok(n.to_owned()),
        Some(_) => Err(bad(
            "A function name must be 1 to 64 characters of a-z, A-Z, 0-9, underscores, dashes, dots or colons.",
            &fparam,
        )),
        None => Err(bad("Each function needs a string `name`.", &fparam)),
    }
}

/// OpenAI's rule for function names (`^[a-zA-Z0-9_-]{1,64}$`), plus the dots and colons that
/// MCP tool names carry.
fn valid_function_name(n: &str) -> bool {
    (1..=64).contains(&n.len())
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
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
    let mut content = match m.get("content") {
        Some(Value::String(s)) => s.clone(),
        None | Some(Value::Null) if role == Role::Assistant => String::new(),
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
    if role == Role::Assistant {
        if let Some(Value::Array(calls)) = m.get("tool_calls") {
            for call in calls {
                let f = call.get("function");
                let name = f
                    .and_then(|f| f.get("name"))
                    .and_then(Value::as_str)
                    .unwrap_or("?");
                let args = f
                    .and_then(|f| f.get("arguments"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                if !content.is_empty() {
                    content.push('\n');
                }
                content.push_str(&format!("[called tool {name} with {args}]"));
            }
        }
    }
    let name = m
        .get("name")
        .or_else(|| m.get("tool_call_id"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    Ok(Message {
        role,
        content,
        name,
    })
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
            // Function calling itself is not available yet.
            (format!(r#""tools":[{tool}]"#), "tools"),
        ] {
            assert_eq!(err_param(&with(&extra)).as_deref(), Some(param), "{extra}");
        }
        for ok in [
            format!(r#""tools":[{tool}],"tool_choice":"none""#),
            r#""tools":[],"tool_choice":"auto""#.to_owned(),
            r#""functions":[{"name":"f"}],"function_call":"none""#.to_owned(),
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
