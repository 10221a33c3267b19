//! What the model is told (tool-calling.md §5.2): the tools section after the client's
//! system text (stable for a conversation: it is part of the conversation key), a short
//! reminder on the last turn (it carries `tool_choice`, which may change from turn to turn),
//! and the hint of a retry. Tools are described to the model under their aliases.

use std::fmt::Write;

use serde_json::{Map, Value};

use super::{Choice, ToolSet, CALL_CLOSE, CALL_OPEN, RESULT_CLOSE};

/// The tools section: one compact JSON line per tool, then the calling rules.
pub fn tools_section(set: &ToolSet) -> String {
    let mut out = String::from(
        "# Tools\nYou can use the tools below. Each line is one tool: its name, what it does, \
         and a JSON Schema of its arguments.\n",
    );
    for t in &set.tools {
        let mut line = Map::new();
        line.insert(
            "name".to_owned(),
            Value::String(set.aliases.to_model(&t.name).to_owned()),
        );
        if let Some(d) = t.description.as_deref().filter(|d| !d.is_empty()) {
            line.insert("description".to_owned(), Value::String(d.to_owned()));
        }
        line.insert("parameters".to_owned(), clean_schema(&t.parameters));
        let _ = writeln!(out, "{}", Value::Object(line));
    }
    let several = if set.parallel {
        "- Several independent calls: write several blocks one after another."
    } else {
        "- Make at most one call per reply."
    };
    let _ = write!(
        out,
        "\n## Calling a tool\nWrite the call as a block, each marker on its own line:\n\
         {CALL_OPEN}\n{{\"name\": \"<tool name>\", \"arguments\": {{<arguments as a JSON object>}}}}\n{CALL_CLOSE}\n\n\
         Rules\n\
         - You may write a short sentence before a call. Nothing may follow the last {CALL_CLOSE}; stop there and wait.\n\
         {several}\n\
         - The JSON must be valid: double-quoted keys and strings, newlines inside strings written as \\n, no comments, no trailing commas. Never put the block inside ``` fences.\n\
         - Use only the names listed above, spelled exactly. This conversation has no other tools: web_search, code_interpreter, image generation or any built-in tool are NOT available.\n\
         - Never write a tool's result yourself. Results come back in the next message as:\n  \
           [TOOL RESULT #n: <tool name>]\n  …\n  {RESULT_CLOSE}\n\
         - If no tool is needed, answer normally and do not mention these markers."
    );
    out
}

/// The reminder appended to the last user-side turn: the names, and what `tool_choice` asks.
pub fn reminder(set: &ToolSet) -> String {
    let names: Vec<&str> = set
        .tools
        .iter()
        .map(|t| set.aliases.to_model(&t.name))
        .collect();
    let rule = match &set.choice {
        Choice::Auto => "Call a tool only when it helps; otherwise answer normally.".to_owned(),
        Choice::Required => "You must call at least one tool in this reply.".to_owned(),
        Choice::Named(n) => format!(
            "Call {} now, exactly once; no other text.",
            set.aliases.to_model(n)
        ),
    };
    format!(
        "(Tools: {}. {rule} A call is a {CALL_OPEN} … {CALL_CLOSE} block.)",
        names.join(", ")
    )
}

/// Why a retry is needed; its hint is appended to the last user-side turn of the retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hint {
    /// `required` or named, and the reply had no valid call.
    NoCall,
    /// The reply called a name that is not offered (or an invalid payload) first thing.
    BadCall,
    /// The platform intercepted a call to a client tool and none could be recovered.
    Intercepted,
    /// The call was written in the thinking phase only.
    CallInThinking,
}

impl Hint {
    pub fn text(self, set: &ToolSet) -> String {
        let what = match self {
            Hint::NoCall => "Your previous reply did not call a tool, but this reply must.",
            Hint::BadCall => {
                "Your previous reply called a tool that does not exist or wrote an invalid call."
            }
            Hint::Intercepted => "Your previous call did not reach the tools.",
            Hint::CallInThinking => {
                "Your previous reply wrote the call while thinking, where it does not count."
            }
        };
        format!(
            "{what} Write the call now in the answer, exactly as a {CALL_OPEN} block with valid JSON, using one of: {}.",
            set.tools
                .iter()
                .map(|t| set.aliases.to_model(&t.name))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }

    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Hint::NoCall => "no_call",
            Hint::BadCall => "bad_call",
            Hint::Intercepted => "intercepted",
            Hint::CallInThinking => "call_in_thinking",
        }
    }
}

/// The schema without the noise that costs prompt space and teaches nothing: `strict`,
/// `$schema`, `additionalProperties: false`, titles. Only schema keywords are removed:
/// the names under `properties` (a parameter may be called `title`) and values such as
/// `enum`, `const` or `default` are data and stay as they are.
fn clean_schema(schema: &Value) -> Value {
    let Value::Object(o) = schema else {
        return schema.clone();
    };
    let kept = o.iter().filter(|(k, v)| {
        let noise = matches!(k.as_str(), "strict" | "$schema" | "title")
            || (k.as_str() == "additionalProperties" && **v == Value::Bool(false));
        !noise
    });
    Value::Object(
        kept.map(|(k, v)| {
            let cleaned = match k.as_str() {
                // Maps from names to schemas.
                "properties" | "patternProperties" | "$defs" | "definitions"
                | "dependentSchemas" => match v {
                    Value::Object(m) => Value::Object(
                        m.iter()
                            .map(|(name, s)| (name.clone(), clean_schema(s)))
                            .collect(),
                    ),
                    other => other.clone(),
                },
                // A schema, or a list of them.
                "items"
                | "additionalProperties"
                | "not"
                | "if"
                | "then"
                | "else"
                | "contains"
                | "propertyNames"
                | "additionalItems"
                | "unevaluatedItems"
                | "unevaluatedProperties"
                | "anyOf"
                | "oneOf"
                | "allOf"
                | "prefixItems" => match v {
                    Value::Array(list) => Value::Array(list.iter().map(clean_schema).collect()),
                    other => clean_schema(other),
                },
                _ => v.clone(),
            };
            (k.clone(), cleaned)
        })
        .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::ToolSpec;
    use serde_json::json;

    fn set(choice: Choice, parallel: bool) -> ToolSet {
        ToolSet::new(
            vec![
                ToolSpec {
                    name: "get_weather".into(),
                    description: Some("Weather for a city".into()),
                    parameters: json!({"type":"object","properties":{"city":{"type":"string"}},"required":["city"],"additionalProperties":false,"$schema":"x"}),
                },
                ToolSpec {
                    name: "Write".into(),
                    description: None,
                    parameters: json!({"type":"object"}),
                },
            ],
            choice,
            parallel,
            &["Write".to_owned()],
        )
    }

    #[test]
    fn the_section_lists_each_tool_as_one_clean_json_line_under_its_alias() {
        let s = tools_section(&set(Choice::Auto, true));
        assert!(s.contains(r#"{"name":"get_weather","description":"Weather for a city","parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}"#), "{s}");
        assert!(s.contains(r#"{"name":"fs_put_file","parameters":{"type":"object"}}"#));
        assert!(
            !s.contains("\"Write\""),
            "the client name of an aliased tool is hidden"
        );
        assert!(s.contains("[TOOL CALL]\n{\"name\": \"<tool name>\""));
        assert!(s.contains("Several independent calls"));
        assert!(tools_section(&set(Choice::Auto, false)).contains("at most one call"));
    }

    #[test]
    fn schema_keywords_go_but_parameters_with_their_names_stay() {
        let schema = json!({"type": "object", "title": "Issue", "strict": true,
            "properties": {
                "title": {"type": "string", "title": "Title"},
                "strict": {"type": "boolean"},
                "labels": {"type": "array", "items": {"type": "string", "title": "Label"}},
                "meta": {"anyOf": [{"type": "object", "additionalProperties": false}, {"type": "null"}]}
            },
            "required": ["title", "strict"], "additionalProperties": false,
            "default": {"title": "kept: data"}});
        assert_eq!(
            clean_schema(&schema),
            json!({"type": "object",
                "properties": {
                    "title": {"type": "string"},
                    "strict": {"type": "boolean"},
                    "labels": {"type": "array", "items": {"type": "string"}},
                    "meta": {"anyOf": [{"type": "object"}, {"type": "null"}]}
                },
                "required": ["title", "strict"],
                "default": {"title": "kept: data"}})
        );
    }

    #[test]
    fn the_reminder_carries_tool_choice() {
        assert!(reminder(&set(Choice::Required, true)).contains("must call at least one tool"));
        let named = reminder(&set(Choice::Named("Write".into()), true));
        assert!(named.contains("Call fs_put_file now"), "{named}");
        assert!(reminder(&set(Choice::Auto, true)).contains("get_weather, fs_put_file"));
    }
}
