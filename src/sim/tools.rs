//! The simulated model's side of tool calling: it reads the tools a prompt describes (the
//! `# Tools` section, one JSON line per tool), remembers them for the chat as a real model
//! remembers its context, and writes the calls the `call` / `native_call` directives ask
//! for. Arguments it was not given are sampled from the tool's schema, so a test can make
//! a valid call to any client tool without spelling its arguments out.
//!
//! The marker format is written here as the model learned it from the prompt, not taken
//! from the proxy's constants: if the proxy's prompt and its scanner ever disagree with
//! what a model writes, tests see it.

use serde_json::{Map, Value};

use super::scenario::SimCall;

/// One tool as the prompt describes it (the name is the one the model was shown).
#[derive(Debug, Clone, PartialEq)]
pub struct SimTool {
    pub name: String,
    pub parameters: Value,
}

/// The tools of a prompt's `# Tools` section, or `None` when it has none.
pub fn catalogue(prompt: &str) -> Option<Vec<SimTool>> {
    let at = prompt.find("# Tools\n")?;
    let tools: Vec<SimTool> = prompt[at..]
        .lines()
        .skip(1)
        .take_while(|l| !l.starts_with("## "))
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| {
            Some(SimTool {
                name: v.get("name")?.as_str()?.to_owned(),
                parameters: v.get("parameters").cloned().unwrap_or(Value::Null),
            })
        })
        .collect();
    Some(tools)
}

/// The retry hint of the proxy asks for a call in the answer; an obedient model complies.
pub fn hinted(prompt: &str) -> bool {
    prompt.contains("Write the call now in the answer")
}

/// The name and argument text of a call: the tool the directive names — found as the
/// prompt spelled it, or by the client's own spelling of it (any case, `_` or `-`) — under
/// the name the model was shown, or the name as given when the prompt has no such tool;
/// the first tool without a name. Arguments as given, or ones that satisfy its schema.
pub fn resolve(call: &SimCall, tools: &[SimTool]) -> (String, String) {
    let tool = match &call.name {
        Some(name) => find(name, tools),
        None => tools.first(),
    };
    let name = tool
        .map(|t| t.name.clone())
        .or_else(|| call.name.clone())
        .unwrap_or_else(|| "sim_tool".to_owned());
    let arguments = call.arguments.clone().unwrap_or_else(|| {
        tool.map_or_else(|| "{}".to_owned(), |t| sample(&t.parameters).to_string())
    });
    (name, arguments)
}

/// The catalogue's tool for a name: exact, else the one whose name is the same ignoring
/// case, `_` and `-`, else the one shown under an alias of that name (`Read` for
/// `fs_open_file`: a model knows the name from the agent's prompt).
pub fn find<'a>(name: &str, tools: &'a [SimTool]) -> Option<&'a SimTool> {
    if let Some(t) = tools.iter().find(|t| t.name == name) {
        return Some(t);
    }
    if let Some(t) = tools
        .iter()
        .find(|t| t.name != name && own_name(&t.name) == name)
    {
        return Some(t);
    }
    let fold = crate::tools::validate::loose_name;
    let wanted = fold(name);
    let mut matching = tools.iter().filter(|t| fold(&t.name) == wanted);
    let first = matching.next()?;
    matching.next().is_none().then_some(first)
}

/// The name a model has read in the agent's prompt for a tool it is shown under an alias:
/// Claude Code's for the proxies' renames of it (tool-calling.md §3.3, the same table the
/// proxy uses), or the name without a proxy's `u_` / `My_` prefix.
pub fn own_name(shown: &str) -> String {
    if let Some((own, _)) = crate::tools::CLAUDE_CODE_ALIASES.iter().find(|(_, alias)| {
        shown == *alias
            || shown
                .strip_prefix(alias)
                .and_then(|rest| rest.strip_prefix('_'))
                .is_some_and(|n| n.chars().all(|c| c.is_ascii_digit()))
    }) {
        return (*own).to_owned();
    }
    shown
        .strip_prefix("u_")
        .or_else(|| shown.strip_prefix("My_"))
        .unwrap_or(shown)
        .to_owned()
}

/// A call in the marker format the prompt teaches.
pub fn call_block(name: &str, arguments: &str) -> String {
    format!("[TOOL CALL]\n{{\"name\": \"{name}\", \"arguments\": {arguments}}}\n[END TOOL CALL]")
}

/// A value the schema accepts: its default, its first enum value or constant, else a
/// plain value of its type; objects get their required properties.
pub fn sample(schema: &Value) -> Value {
    let Some(s) = schema.as_object() else {
        return Value::Object(Map::new());
    };
    if let Some(v) = s.get("default").or_else(|| s.get("const")) {
        return v.clone();
    }
    if let Some(first) = s
        .get("enum")
        .and_then(Value::as_array)
        .and_then(|e| e.first())
    {
        return first.clone();
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        if let Some(first) = s.get(key).and_then(Value::as_array).and_then(|e| e.first()) {
            return sample(first);
        }
    }
    let ty = match s.get("type") {
        Some(Value::String(t)) => t.as_str(),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("null"),
        _ if s.contains_key("properties") => "object",
        _ => "string",
    };
    match ty {
        "string" => Value::String("sim".to_owned()),
        "integer" | "number" => Value::from(1),
        "boolean" => Value::Bool(true),
        "array" => Value::Array(Vec::new()),
        "null" => Value::Null,
        _ => {
            let props = s.get("properties").and_then(Value::as_object);
            let required = s.get("required").and_then(Value::as_array);
            let mut out = Map::new();
            for name in required.into_iter().flatten().filter_map(Value::as_str) {
                let prop = props.and_then(|p| p.get(name)).unwrap_or(&Value::Null);
                out.insert(name.to_owned(), sample(prop));
            }
            Value::Object(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_catalogue_is_read_from_the_tools_section() {
        let prompt = "You are terse.\n\n# Tools\nYou can use the tools below.\n\
            {\"name\":\"get_weather\",\"parameters\":{\"type\":\"object\"}}\n\
            {\"name\":\"fs_put_file\",\"description\":\"d\",\"parameters\":{}}\n\n\
            ## Calling a tool\n{\"name\": \"<tool name>\"}\n";
        let tools = catalogue(prompt).unwrap();
        let names: Vec<&str> = tools.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["get_weather", "fs_put_file"]);
        assert_eq!(catalogue("no tools here"), None);
    }

    #[test]
    fn arguments_are_sampled_from_the_schema() {
        let schema = json!({"type": "object", "properties": {
            "city": {"type": "string"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "days": {"type": ["integer", "null"]},
            "opts": {"type": "object", "properties": {"deep": {"type": "boolean"}}, "required": ["deep"]},
            "tags": {"type": "array"},
            "optional": {"type": "string"}
        }, "required": ["city", "unit", "days", "opts", "tags"]});
        assert_eq!(
            sample(&schema),
            json!({"city": "sim", "unit": "celsius", "days": 1, "opts": {"deep": true}, "tags": []})
        );
        assert_eq!(sample(&json!({"default": 7})), json!(7));
        assert_eq!(sample(&json!({"anyOf": [{"type": "number"}]})), json!(1));
    }

    #[test]
    fn calls_resolve_to_a_name_and_arguments() {
        let tools = vec![SimTool {
            name: "get_weather".into(),
            parameters: json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
        }];
        let default = SimCall {
            name: None,
            arguments: None,
        };
        assert_eq!(
            resolve(&default, &tools),
            ("get_weather".to_owned(), r#"{"city":"sim"}"#.to_owned())
        );
        let given = SimCall {
            name: Some("other".into()),
            arguments: Some("{\"x\":1}".into()),
        };
        assert_eq!(
            resolve(&given, &tools),
            ("other".to_owned(), "{\"x\":1}".to_owned())
        );
        // The client's own spelling of a tool the prompt shows finds it.
        let by_spelling = SimCall {
            name: Some("Get-Weather".into()),
            arguments: None,
        };
        assert_eq!(
            resolve(&by_spelling, &tools),
            ("get_weather".to_owned(), r#"{"city":"sim"}"#.to_owned())
        );
        assert_eq!(
            call_block("a", "{}"),
            "[TOOL CALL]\n{\"name\": \"a\", \"arguments\": {}}\n[END TOOL CALL]"
        );
    }
}
