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
use crate::turn::{
    ApiRequest, CalledTool, Message, Output, Part, ResponseFormat, Role, ThinkingIntent,
    TurnRequest,
};
use crate::untrusted::clip;

/// What only the OpenAI API asks of an answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    /// `stream_options.include_usage`: a usage chunk before `[DONE]`.
    pub include_usage: bool,
    /// `tool_calls`, or `function_call` for the deprecated `functions` API.
    pub call_shape: CallShape,
}

/// `reasoning_effort`, as the turn's thinking intent.
fn effort_intent(effort: &str) -> Option<ThinkingIntent> {
    Some(match effort {
        "none" | "minimal" | "low" => ThinkingIntent::Off,
        "medium" => ThinkingIntent::Auto,
        "high" | "xhigh" => ThinkingIntent::On,
        _ => return None,
    })
}

fn bad(message: impl Into<String>, param: &str) -> ProxyError {
    ProxyError::bad_request(message, Some(param))
}

/// Parse a `POST /v1/chat/completions` body into the turn and the OpenAI options.
pub fn parse(body: &[u8]) -> Result<ApiRequest<Options>, ProxyError> {
    from_object(&json_object(body)?)
}

/// A request body that must be one JSON object (every OpenAI endpoint's).
pub(crate) fn json_object(body: &[u8]) -> Result<Map<String, Value>, ProxyError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ProxyError::bad_request(format!("Request body is not valid JSON: {e}"), None)
    })?;
    match value {
        Value::Object(obj) => Ok(obj),
        _ => Err(ProxyError::bad_request(
            "Request body must be a JSON object.",
            None,
        )),
    }
}

fn from_object(obj: &Map<String, Value>) -> Result<ApiRequest<Options>, ProxyError> {
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
        Some(Value::Array(_)) => return Err(bad("`stop` accepts at most 4 sequences.", "stop")),
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
        Some(Value::String(s)) => Some(effort_intent(s).ok_or_else(|| {
            bad(
                "`reasoning_effort` must be one of none, minimal, low, medium, high.",
                "reasoning_effort",
            )
        })?),
        Some(_) => {
            return Err(bad(
                "`reasoning_effort` must be a string.",
                "reasoning_effort",
            ))
        }
    };
    // `enable_thinking` (Qwen's own switch) before `reasoning_effort`.
    let thinking = opt_bool(obj, "enable_thinking")?
        .map(|on| {
            if on {
                ThinkingIntent::On
            } else {
                ThinkingIntent::Off
            }
        })
        .or(reasoning_effort);

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

    Ok(ApiRequest {
        turn: TurnRequest {
            output: Output::Text,
            session: None,
            web_search: false,
            model,
            messages,
            stream,
            max_tokens,
            stop,
            thinking,
            response_format,
            tools,
        },
        options: Options {
            include_usage,
            call_shape,
        },
    })
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
        Some(Value::String(s)) if s.is_empty() => Vec::new(),
        Some(Value::String(s)) => vec![Part::Text(s.clone())],
        None | Some(Value::Null) if matches!(role, Role::Assistant | Role::Tool) => Vec::new(),
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

/// Content parts: text and images. Empty text before any other part is dropped, so the
/// parts read as they always did: joined by newlines, starting with the first text.
fn parse_parts(parts: &[Value], param: &str) -> Result<Vec<Part>, ProxyError> {
    let mut content = Vec::new();
    for (j, part) in parts.iter().enumerate() {
        let part_param = format!("{param}[{j}]");
        let kind = part.get("type").and_then(Value::as_str);
        match kind {
            Some("text") | Some("input_text") => {
                let t = part
                    .get("text")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad("A text part needs a string `text`.", &format!("{part_param}.text")))?;
                if !(content.is_empty() && t.is_empty()) {
                    content.push(Part::Text(t.to_owned()));
                }
            }
            Some("image_url") => content.push(image_part(part, &format!("{part_param}.image_url"))?),
            Some("input_image" | "input_audio" | "file" | "image" | "audio") => {
                return Err(bad(
                    format!(
                        "Content parts of type `{}` (audio, files) are not supported by this proxy yet; send text or `image_url` parts.",
                        clip(kind.unwrap_or_default())
                    ),
                    &part_param,
                ))
            }
            Some(other) => return Err(bad(format!("Unknown content part type `{}`.", clip(other)), &part_param)),
            None => return Err(bad("Each content part needs a string `type`.", &format!("{part_param}.type"))),
        }
    }
    Ok(content)
}

/// `{"type":"image_url","image_url":{"url":…,"detail":…}}` (or `image_url` as the string
/// itself): a `data:` URI is decoded here; an address is fetched when a turn sends it (`media`).
pub(crate) fn image_part(part: &Value, param: &str) -> Result<Part, ProxyError> {
    let url = match part.get("image_url") {
        Some(Value::String(u)) => u.as_str(),
        Some(Value::Object(o)) => o.get("url").and_then(Value::as_str).ok_or_else(|| {
            bad(
                "An image part needs a string `image_url.url`.",
                &format!("{param}.url"),
            )
        })?,
        _ => return Err(bad("An image part needs `image_url` with a `url`.", param)),
    };
    let invalid = |message: String| ProxyError::BadRequest {
        message,
        param: Some(param.to_owned()),
        code: Some("invalid_image_url"),
    };
    let scheme = url.split_once(':').map(|(s, _)| s.to_ascii_lowercase());
    match scheme.as_deref() {
        Some("data") => crate::media::data_uri(url).map(Part::File).map_err(invalid),
        Some("http" | "https") => Ok(Part::ImageUrl(url.to_owned())),
        _ => Err(invalid(
            "An image URL must be an `https://` address or a `data:image/…;base64,…` URI."
                .to_owned(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err_param(body: &str) -> Option<String> {
        match parse(body.as_bytes()) {
            Err(ProxyError::BadRequest { param, .. }) => param,
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn minimal_request() {
        let r = parse(br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#)
            .unwrap()
            .turn;
        assert_eq!(r.model, "m");
        assert!(!r.stream);
        assert_eq!(r.messages[0].text(), "hi");
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
            Some("messages[0].content[0].image_url")
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
            assert!(parse(with(ok).as_bytes()).is_ok(), "{ok}");
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
            assert!(parse(with(&ok).as_bytes()).is_ok(), "{ok}");
        }
    }

    #[test]
    fn unknown_fields_and_sampling_params_are_accepted() {
        let r = parse(
            br#"{"model":"m","messages":[{"role":"developer","content":"s"},{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}],"cache_control":{}}],
                "temperature":0.2,"top_p":1,"user":"u","seed":1,"stop":["x","y"],"max_completion_tokens":9,
                "stream":true,"stream_options":{"include_usage":true},"something_new":[1]}"#,
        )
        .unwrap();
        let (r, options) = (r.turn, r.options);
        assert_eq!(r.messages[0].role, Role::System);
        assert_eq!(r.messages[1].text(), "a\nb");
        assert_eq!(r.stop, vec!["x", "y"]);
        assert_eq!(r.max_tokens, Some(9));
        assert!(r.stream && options.include_usage);
    }
}
