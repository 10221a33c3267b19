//! `tools` / `tool_choice` / `parallel_tool_calls` (and the deprecated `functions` /
//! `function_call`) → the request's [`ToolSet`], checked the way OpenAI checks them (400s
//! name the parameter). `None` means plain text: no tools, or `tool_choice: "none"`.

use serde_json::{Map, Value};

use crate::error::ProxyError;
use crate::tools::{Choice, ToolSet, ToolSpec};
use crate::untrusted::clip;

fn bad(message: impl Into<String>, param: &str) -> ProxyError {
    ProxyError::bad_request(message, Some(param))
}

/// How calls are written back: `tool_calls`, or the deprecated single `function_call` for
/// a request that used `functions` (clients of that API read only `function_call`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CallShape {
    #[default]
    ToolCalls,
    FunctionCall,
}

/// The request's call shape: `function_call` when it offers `functions` and no `tools`.
pub fn call_shape(obj: &Map<String, Value>) -> CallShape {
    let present = |k: &str| obj.get(k).is_some_and(|v| !v.is_null());
    if present("functions") && !present("tools") {
        CallShape::FunctionCall
    } else {
        CallShape::ToolCalls
    }
}

/// Parse the tool fields of a request body.
pub fn parse(obj: &Map<String, Value>) -> Result<Option<ToolSet>, ProxyError> {
    let present = |k: &str| obj.get(k).is_some_and(|v| !v.is_null());
    let legacy = call_shape(obj) == CallShape::FunctionCall;
    let list_key = if legacy { "functions" } else { "tools" };
    let choice_key = if present("function_call") && !present("tool_choice") {
        "function_call"
    } else {
        "tool_choice"
    };
    let specs: Vec<ToolSpec> = match obj.get(list_key) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, t)| tool_spec(t, list_key, i))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(bad(format!("`{list_key}` must be an array."), list_key)),
    };
    let offered = |n: &str| specs.iter().any(|t| t.name == n);
    let choice = match obj.get(choice_key) {
        None | Some(Value::Null) => Some(Choice::Auto),
        Some(Value::String(s)) => match s.as_str() {
            "none" => None,
            "auto" => Some(Choice::Auto),
            "required" if !specs.is_empty() => Some(Choice::Required),
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
        Some(Value::Object(o)) if is_allowed_tools(o) => {
            return allowed_tools(o, choice_key, specs, parallel(obj)?).map(Some)
        }
        Some(Value::Object(o)) => {
            let name = o
                .get("function")
                .and_then(|f| f.get("name"))
                .or_else(|| o.get("name"))
                .and_then(Value::as_str);
            match name {
                Some(n) if offered(n) => Some(Choice::Named(n.to_owned())),
                Some(n) => {
                    return Err(bad(
                        format!(
                            "`{choice_key}` names the function `{}`, which is not in `{list_key}`.",
                            clip(n)
                        ),
                        choice_key,
                    ))
                }
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
    };
    // The deprecated API has room for one call per reply.
    let parallel = parallel(obj)? && !legacy;
    let (Some(choice), false) = (choice, specs.is_empty()) else {
        return Ok(None);
    };
    // A named choice describes only that tool to the model.
    let specs = match &choice {
        Choice::Named(n) => specs.into_iter().filter(|t| t.name == *n).collect(),
        _ => specs,
    };
    Ok(Some(tool_set(specs, choice, parallel)))
}

fn tool_set(specs: Vec<ToolSpec>, choice: Choice, parallel: bool) -> ToolSet {
    ToolSet::offered(specs, choice, parallel)
}

fn parallel(obj: &Map<String, Value>) -> Result<bool, ProxyError> {
    match obj.get("parallel_tool_calls") {
        None | Some(Value::Null) => Ok(true),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(bad(
            "`parallel_tool_calls` must be a boolean.",
            "parallel_tool_calls",
        )),
    }
}

fn is_allowed_tools(o: &Map<String, Value>) -> bool {
    o.get("type").and_then(Value::as_str) == Some("allowed_tools")
        || o.contains_key("allowed_tools")
}

/// `{"type":"allowed_tools","allowed_tools":{"mode":"auto"|"required","tools":[…]}}`: the
/// offered tools filtered to these.
fn allowed_tools(
    o: &Map<String, Value>,
    key: &str,
    specs: Vec<ToolSpec>,
    parallel: bool,
) -> Result<ToolSet, ProxyError> {
    let inner = o
        .get("allowed_tools")
        .and_then(Value::as_object)
        .ok_or_else(|| {
            bad(
                "`allowed_tools` must be an object with `mode` and `tools`.",
                key,
            )
        })?;
    let choice = match inner.get("mode").and_then(Value::as_str) {
        Some("auto") | None => Choice::Auto,
        Some("required") => Choice::Required,
        Some(_) => {
            return Err(bad(
                "`allowed_tools.mode` must be \"auto\" or \"required\".",
                key,
            ))
        }
    };
    let names: Vec<&str> = inner
        .get("tools")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("`allowed_tools.tools` must be an array.", key))?
        .iter()
        .filter_map(|t| {
            t.get("function")
                .and_then(|f| f.get("name"))
                .or_else(|| t.get("name"))
                .and_then(Value::as_str)
        })
        .collect();
    if let Some(n) = names.iter().find(|n| !specs.iter().any(|t| t.name == **n)) {
        return Err(bad(
            format!(
                "`allowed_tools` names `{}`, which is not in `tools`.",
                clip(n)
            ),
            key,
        ));
    }
    let allowed: Vec<ToolSpec> = specs
        .into_iter()
        .filter(|t| names.contains(&t.name.as_str()))
        .collect();
    if allowed.is_empty() {
        return Err(bad(
            "`allowed_tools.tools` must name at least one tool.",
            key,
        ));
    }
    Ok(tool_set(allowed, choice, parallel))
}

/// `tools[i]` (`{"type":"function","function":{…}}`) or `functions[i]` (`{"name", …}`).
fn tool_spec(t: &Value, list_key: &str, i: usize) -> Result<ToolSpec, ProxyError> {
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
        format!("{param}.function")
    } else {
        param
    };
    let name = match function.get("name").and_then(Value::as_str) {
        Some(n) if valid_function_name(n) => n.to_owned(),
        Some(_) => {
            return Err(bad(
                "A function name must be 1 to 64 characters of a-z, A-Z, 0-9, underscores, dashes, dots or colons.",
                &format!("{fparam}.name"),
            ))
        }
        None => {
            return Err(bad(
                "Each function needs a string `name`.",
                &format!("{fparam}.name"),
            ))
        }
    };
    let parameters = match function.get("parameters") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(p @ Value::Object(_)) => p.clone(),
        Some(_) => {
            return Err(bad(
                "`parameters` must be a JSON Schema object.",
                &format!("{fparam}.parameters"),
            ))
        }
    };
    Ok(ToolSpec {
        name,
        description: function
            .get("description")
            .and_then(Value::as_str)
            .map(str::to_owned),
        parameters,
    })
}

/// OpenAI's rule for function names (`^[a-zA-Z0-9_-]{1,64}$`), plus the dots and colons that
/// MCP tool names carry.
fn valid_function_name(n: &str) -> bool {
    (1..=64).contains(&n.len())
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tools(body: &str) -> Result<Option<ToolSet>, ProxyError> {
        let v: Value = serde_json::from_str(body).unwrap();
        parse(v.as_object().unwrap())
    }

    const T: &str = r#"[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object"}}},{"type":"function","function":{"name":"write_file"}}]"#;

    #[test]
    fn choices() {
        let set = tools(&format!(r#"{{"tools":{T}}}"#)).unwrap().unwrap();
        assert_eq!(set.choice, Choice::Auto);
        assert!(set.parallel);
        assert_eq!(set.tools.len(), 2);
        assert!(tools(&format!(r#"{{"tools":{T},"tool_choice":"none"}}"#))
            .unwrap()
            .is_none());
        assert!(tools(r#"{"tools":[]}"#).unwrap().is_none());
        let named = tools(&format!(
            r#"{{"tools":{T},"tool_choice":{{"type":"function","function":{{"name":"write_file"}}}},"parallel_tool_calls":false}}"#
        ))
        .unwrap()
        .unwrap();
        assert_eq!(named.choice, Choice::Named("write_file".into()));
        assert_eq!(named.tools.len(), 1, "only the named tool is described");
        assert!(!named.parallel);
        let allowed = tools(&format!(
            r#"{{"tools":{T},"tool_choice":{{"type":"allowed_tools","allowed_tools":{{"mode":"required","tools":[{{"type":"function","function":{{"name":"get_weather"}}}}]}}}}}}"#
        ))
        .unwrap()
        .unwrap();
        assert_eq!(allowed.choice, Choice::Required);
        assert_eq!(allowed.tools[0].name, "get_weather");
        assert_eq!(allowed.tools.len(), 1);
    }

    #[test]
    fn deprecated_functions_map_to_tools() {
        let set = tools(r#"{"functions":[{"name":"f","parameters":{"type":"object"}}],"function_call":{"name":"f"}}"#)
            .unwrap()
            .unwrap();
        assert_eq!(set.choice, Choice::Named("f".into()));
        assert!(
            tools(r#"{"functions":[{"name":"f"}],"function_call":"none"}"#)
                .unwrap()
                .is_none()
        );
    }
}
