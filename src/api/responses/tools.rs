//! `tools`, `tool_choice` and `parallel_tool_calls` of a Responses request → the turn's
//! [`ToolSet`] and the way calls go back ([`CallNames`]).
//!
//! Every tool type is accepted (client-apis-and-files.md §2.4: one refused declaration
//! fails every request of an agent that sends it):
//!
//! * `function` — as in Chat Completions, with the flat `name`/`parameters`;
//! * `custom` (Codex's free-form `apply_patch`) — shown to the model as a function of one
//!   string parameter `input`, its grammar appended to the description; the call goes back
//!   as a `custom_tool_call` with that `input`;
//! * `namespace` (Codex's MCP servers) — each child a function named
//!   `<namespace>__<name>` for the model; the call goes back with `namespace` and the
//!   short `name` (§2.1 R7);
//! * hosted `web_search` (and its dated variants) — the upstream's own search, when it is
//!   the request's only tool or `tool_choice` asks for it (an agent that declares it next to
//!   its own tools gets its tools, not a search on every turn);
//! * anything else (file search, code interpreter, image generation, computer use, MCP
//!   by URL, local shell, tool search, …) — left out, named in the answer's
//!   `x-qwen-proxy-ignored-tools` header.

use std::collections::HashMap;

use serde_json::{json, Map, Value};

use crate::error::ProxyError;
use crate::tools::{Choice, ToolSet, ToolSpec};
use crate::untrusted::clip;

fn bad(message: impl Into<String>, param: &str) -> ProxyError {
    ProxyError::bad_request(message, Some(param))
}

/// What a tool the model may call is to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallKind {
    /// A function, in a namespace or not: the call is a `function_call`.
    Function {
        namespace: Option<String>,
        name: String,
    },
    /// A custom tool: the call is a `custom_tool_call` with free-form `input`.
    Custom { name: String },
}

/// The model's tool names (flat) → what each is to the client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallNames {
    by_flat: HashMap<String, CallKind>,
}

impl CallNames {
    /// What the model's call of `flat` is (a name the request did not declare is a plain
    /// function of that name).
    pub fn kind(&self, flat: &str) -> CallKind {
        self.by_flat
            .get(flat)
            .cloned()
            .unwrap_or_else(|| CallKind::Function {
                namespace: None,
                name: flat.to_owned(),
            })
    }

    fn add(&mut self, flat: &str, kind: CallKind) {
        self.by_flat.insert(flat.to_owned(), kind);
    }
}

/// The name the model knows a namespaced function by.
pub fn flat_name(namespace: Option<&str>, name: &str) -> String {
    match namespace.map(|n| n.trim_end_matches('_')) {
        Some(ns) if !ns.is_empty() => format!("{ns}__{name}"),
        _ => name.to_owned(),
    }
}

/// A custom tool's input from the arguments the model wrote for its one parameter (`input`;
/// a model that named it otherwise: the one string it gave; not an object: the text as is).
pub fn custom_input(arguments: &str) -> String {
    match serde_json::from_str::<Value>(arguments) {
        Ok(Value::Object(o)) => match o.get("input") {
            Some(Value::String(s)) => s.clone(),
            _ => {
                let mut strings = o.values().filter_map(Value::as_str);
                match (strings.next(), strings.next()) {
                    (Some(only), None) => only.to_owned(),
                    _ => arguments.to_owned(),
                }
            }
        },
        Ok(Value::String(s)) => s,
        _ => arguments.to_owned(),
    }
}

/// A custom tool's call as the model's arguments (a replayed `custom_tool_call`).
pub fn custom_arguments(input: &str) -> String {
    json!({ "input": input }).to_string()
}

/// The tools of one request.
#[derive(Debug, Default)]
pub struct Tools {
    /// `None`: plain text (no callable tool, or `tool_choice: "none"`).
    pub set: Option<ToolSet>,
    pub names: CallNames,
    /// The declared types left out, for the answer's header.
    pub ignored: Vec<String>,
    /// The upstream's web search is on for the turn.
    pub web_search: bool,
    /// `tool_choice` as the `response` object repeats it.
    pub choice: Value,
    pub parallel: bool,
}

const WEB_SEARCH: [&str; 4] = [
    "web_search",
    "web_search_preview",
    "web_search_2025_08_26",
    "web_search_preview_2025_03_11",
];

/// Parse the tool fields of a request.
pub fn parse(obj: &Map<String, Value>) -> Result<Tools, ProxyError> {
    let mut out = Tools {
        parallel: match obj.get("parallel_tool_calls") {
            None | Some(Value::Null) => true,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(bad(
                    "`parallel_tool_calls` must be a boolean.",
                    "parallel_tool_calls",
                ))
            }
        },
        choice: obj.get("tool_choice").cloned().unwrap_or(json!("auto")),
        ..Tools::default()
    };
    let mut specs = Vec::new();
    let mut search_declared = false;
    match obj.get("tools") {
        None | Some(Value::Null) => {}
        Some(Value::Array(list)) => {
            for (i, t) in list.iter().enumerate() {
                let param = format!("tools[{i}]");
                let Some(kind) = t.get("type").and_then(Value::as_str) else {
                    return Err(bad("Each tool needs a string `type`.", &param));
                };
                match kind {
                    "function" => {
                        let spec = function(t, &param)?;
                        out.names.add(
                            &spec.name,
                            CallKind::Function {
                                namespace: None,
                                name: spec.name.clone(),
                            },
                        );
                        specs.push(spec);
                    }
                    "custom" => {
                        let spec = custom(t, &param)?;
                        out.names.add(
                            &spec.name,
                            CallKind::Custom {
                                name: spec.name.clone(),
                            },
                        );
                        specs.push(spec);
                    }
                    "namespace" => namespace(t, &param, &mut specs, &mut out.names)?,
                    k if WEB_SEARCH.contains(&k) => search_declared = true,
                    other => {
                        let other = clip(other);
                        if !out.ignored.contains(&other) {
                            out.ignored.push(other);
                        }
                    }
                }
            }
        }
        Some(_) => return Err(bad("`tools` must be an array.", "tools")),
    }
    let choice = match obj.get("tool_choice") {
        None | Some(Value::Null) => Some(Choice::Auto),
        Some(Value::String(s)) => match s.as_str() {
            "none" => None,
            "auto" => Some(Choice::Auto),
            "required" => Some(Choice::Required),
            _ => {
                return Err(bad(
                    "`tool_choice` must be \"none\", \"auto\", \"required\" or an object.",
                    "tool_choice",
                ))
            }
        },
        Some(Value::Object(o)) => {
            let kind = o.get("type").and_then(Value::as_str).unwrap_or_default();
            match kind {
                "function" | "custom" => {
                    let name = o.get("name").and_then(Value::as_str).ok_or_else(|| {
                        bad("`tool_choice.name` is required.", "tool_choice.name")
                    })?;
                    let flat = flat_name(o.get("namespace").and_then(Value::as_str), name);
                    if !specs.iter().any(|s| s.name == flat) {
                        return Err(bad(
                            format!(
                                "`tool_choice` names the tool `{}`, which is not in `tools`.",
                                clip(name)
                            ),
                            "tool_choice.name",
                        ));
                    }
                    Some(Choice::Named(flat))
                }
                "allowed_tools" => {
                    let allowed: Vec<String> = o
                        .get("tools")
                        .and_then(Value::as_array)
                        .map(|l| {
                            l.iter()
                                .filter_map(|t| {
                                    let name = t.get("name").and_then(Value::as_str)?;
                                    Some(flat_name(
                                        t.get("namespace").and_then(Value::as_str),
                                        name,
                                    ))
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    specs.retain(|s| allowed.contains(&s.name));
                    Some(
                        if o.get("mode").and_then(Value::as_str) == Some("required") {
                            Choice::Required
                        } else {
                            Choice::Auto
                        },
                    )
                }
                k if WEB_SEARCH.contains(&k) => {
                    out.web_search = true;
                    Some(Choice::Auto)
                }
                // Another hosted tool: nothing to force.
                _ => Some(Choice::Auto),
            }
        }
        Some(_) => {
            return Err(bad(
                "`tool_choice` must be a string or an object.",
                "tool_choice",
            ))
        }
    };
    // A search the client offered as its only tool is the turn's search.
    out.web_search |= search_declared && specs.is_empty() && choice.is_some();
    if let (Some(choice), false) = (choice, specs.is_empty()) {
        let specs = match &choice {
            Choice::Named(n) => specs.into_iter().filter(|t| t.name == *n).collect(),
            _ => specs,
        };
        out.set = Some(ToolSet::offered(specs, choice, out.parallel));
    }
    Ok(out)
}

fn name_of(t: &Value, param: &str) -> Result<String, ProxyError> {
    t.get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| {
            bad(
                "Each function or custom tool needs a string `name`.",
                &format!("{param}.name"),
            )
        })
}

fn description(t: &Value) -> Option<String> {
    t.get("description")
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// `{"type":"function","name","description","parameters","strict"}`.
fn function(t: &Value, param: &str) -> Result<ToolSpec, ProxyError> {
    let parameters = match t.get("parameters") {
        None | Some(Value::Null) => json!({"type": "object"}),
        Some(p @ Value::Object(_)) => p.clone(),
        Some(_) => {
            return Err(bad(
                "`parameters` must be a JSON Schema object.",
                &format!("{param}.parameters"),
            ))
        }
    };
    Ok(ToolSpec {
        name: name_of(t, param)?,
        description: description(t),
        parameters,
    })
}

/// `{"type":"custom","name","description","format":{"type":"grammar","syntax","definition"}}`.
fn custom(t: &Value, param: &str) -> Result<ToolSpec, ProxyError> {
    let mut text = description(t).unwrap_or_default();
    let format = t.get("format");
    if let Some(definition) = format
        .and_then(|f| f.get("definition"))
        .and_then(Value::as_str)
    {
        let syntax = format
            .and_then(|f| f.get("syntax"))
            .and_then(Value::as_str)
            .unwrap_or("grammar");
        text.push_str(&format!(
            "\n\nThe input is free-form text that must follow this {syntax} grammar:\n{definition}"
        ));
    }
    Ok(ToolSpec {
        name: name_of(t, param)?,
        description: Some(text.trim().to_owned()).filter(|d| !d.is_empty()),
        parameters: json!({
            "type": "object",
            "properties": {"input": {"type": "string", "description": "The tool's whole input, as free-form text (not JSON)."}},
            "required": ["input"],
        }),
    })
}

/// `{"type":"namespace","name","description","tools":[functions…]}`: its children, flat.
fn namespace(
    t: &Value,
    param: &str,
    specs: &mut Vec<ToolSpec>,
    names: &mut CallNames,
) -> Result<(), ProxyError> {
    let ns = name_of(t, param)?;
    let children = t.get("tools").and_then(Value::as_array);
    for (j, child) in children.into_iter().flatten().enumerate() {
        let child_param = format!("{param}.tools[{j}]");
        let mut spec = match child.get("type").and_then(Value::as_str) {
            Some("function") | None => function(child, &child_param)?,
            Some("custom") => custom(child, &child_param)?,
            Some(_) => continue,
        };
        let short = std::mem::take(&mut spec.name);
        spec.name = flat_name(Some(&ns), &short);
        let kind = if child.get("type").and_then(Value::as_str) == Some("custom") {
            CallKind::Custom { name: short }
        } else {
            CallKind::Function {
                namespace: Some(ns.clone()),
                name: short,
            }
        };
        names.add(&spec.name, kind);
        specs.push(spec);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
