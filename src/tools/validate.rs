//! A completed payload → a call the client may receive (tool-calling.md §5.8): parsed (after a
//! small, deterministic repair), keys read under their usual aliases, the name resolved
//! against the request's tools (an unknown name is never emitted), the arguments an object
//! (double-encoded strings decoded), values coerced where the schema is unambiguous, and
//! serialised compactly in the model's key order.

use serde_json::{Map, Value};

use super::{ToolSet, ToolSpec};
use crate::untrusted::Untrusted;

/// A call ready for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidCall {
    /// The client's name for the tool (aliases reversed).
    pub name: String,
    /// Compact JSON of an object.
    pub arguments: String,
}

/// Why a block the model wrote is not a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalid {
    /// Not JSON, even after repair.
    NotJson,
    /// No string under any name key.
    NoName,
    /// A name the request does not offer.
    UnknownName(String),
    /// The arguments are not (and do not decode to) a JSON object.
    ArgumentsNotObject,
    /// The answer ended inside the payload.
    Unfinished,
    /// An opener with no payload after it.
    NoPayload,
    /// A call written only while thinking, and the answer went on without it.
    OnlyInThinking,
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Invalid::NotJson => f.write_str("its payload is not valid JSON"),
            Invalid::NoName => f.write_str("it names no tool"),
            Invalid::UnknownName(name) => write!(f, "it calls a tool named `{name}`"),
            Invalid::ArgumentsNotObject => f.write_str("its arguments are not a JSON object"),
            Invalid::Unfinished => f.write_str("the answer ended inside it"),
            Invalid::NoPayload => f.write_str("it has no payload"),
            Invalid::OnlyInThinking => f.write_str("it was written only while thinking"),
        }
    }
}

impl Invalid {
    /// What the client is told when the model's call could not be recovered (no retry was
    /// left): the answer ends with this instead of the raw block, which an agent would take
    /// for the model's answer.
    pub fn explain(&self, set: &ToolSet) -> String {
        const LISTED: usize = 24;
        let mut names: Vec<&str> = set
            .tools
            .iter()
            .map(|t| t.name.as_str())
            .take(LISTED)
            .collect();
        if set.tools.len() > LISTED {
            names.push("…");
        }
        let why = match self {
            Invalid::UnknownName(name) => format!(
                "called a tool named `{}`, which this request does not offer (its tools: {})",
                name.chars().take(64).collect::<String>(),
                names.join(", ")
            ),
            Invalid::OnlyInThinking => {
                "wrote its tool call while thinking, not in its answer".to_owned()
            }
            other => format!("wrote a tool call that could not be read ({other})"),
        };
        format!("(The model {why}; no tool was run.)")
    }
}

/// Whether a bare JSON object has the shape of a call — a name key and an arguments key —
/// rather than being JSON the model was asked for (`{"name": "Ada", "age": 36}`).
pub fn call_shaped(payload: &str) -> bool {
    let Some(Value::Object(obj)) = parse_lenient(payload) else {
        return false;
    };
    let named = ["name", "tool", "function"]
        .iter()
        .any(|k| obj.contains_key(*k));
    named && ARGUMENT_KEYS.iter().any(|k| obj.contains_key(*k))
}

/// Where a payload keeps its arguments.
const ARGUMENT_KEYS: [&str; 4] = ["arguments", "parameters", "args", "input"];

/// Validate a JSON payload `{"name": …, "arguments": {…}}`.
pub fn json_payload(payload: &str, set: &ToolSet) -> Result<ValidCall, Invalid> {
    let value = parse_lenient(payload).ok_or(Invalid::NotJson)?;
    let Value::Object(mut obj) = value else {
        return Err(Invalid::NotJson);
    };
    let name = take_name(&mut obj).ok_or(Invalid::NoName)?;
    let args = match ARGUMENT_KEYS.iter().find_map(|k| obj.remove(*k)) {
        Some(args) => args,
        // No arguments key: the other keys are the arguments (`{"name": "f", "city": "x"}`).
        None => {
            for key in ["name", "tool", "function"] {
                obj.shift_remove(key);
            }
            Value::Object(obj)
        }
    };
    call(&name, args, set)
}

/// Validate a call given as a name and raw arguments (native frames, the XML form).
pub fn call(name: &str, args: Value, set: &ToolSet) -> Result<ValidCall, Invalid> {
    let client = resolve_name(name, set).ok_or_else(|| Invalid::UnknownName(name.to_owned()))?;
    let mut args = as_object(args).ok_or(Invalid::ArgumentsNotObject)?;
    let spec = set.spec(&client);
    if let Some(schema) = spec.map(|s| &s.parameters) {
        coerce_object(&mut args, schema);
        let missing: Vec<&str> = schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .filter(|k| !args.contains_key(*k))
            .collect();
        if !missing.is_empty() {
            // Still emitted: the client's error about it is useful feedback to the model.
            let missing = missing.join(", ");
            tracing::warn!(
                tool = %Untrusted(&client),
                missing = %Untrusted(&missing),
                "tool call without required arguments"
            );
        }
    }
    Ok(ValidCall {
        name: client,
        arguments: Value::Object(args).to_string(),
    })
}

/// A raw parameter value of the XML form, converted by the tool's schema (§4.2).
pub fn xml_value(raw: &str, schema: Option<&Value>) -> Value {
    let text = raw.strip_prefix('\n').unwrap_or(raw);
    let text = text.strip_suffix('\n').unwrap_or(text);
    let kinds = schema.map(types).unwrap_or_default();
    if kinds.contains(&"string") || kinds.is_empty() && schema.is_some() {
        return Value::String(text.to_owned());
    }
    let t = text.trim();
    if matches!(t, "null" | "None") && (kinds.is_empty() || kinds.contains(&"null")) {
        return Value::Null;
    }
    serde_json::from_str(t).unwrap_or_else(|_| Value::String(text.to_owned()))
}

/// The name under `name`, `tool`, `function` (a string) or `function.name`.
fn take_name(obj: &mut Map<String, Value>) -> Option<String> {
    for key in ["name", "tool", "function"] {
        match obj.get(key) {
            Some(Value::String(s)) => return Some(s.clone()),
            Some(Value::Object(f)) if key == "function" => {
                let name = f.get("name").and_then(Value::as_str)?.to_owned();
                // `{"function": {"name", "arguments"}}`: lift the arguments too.
                if let Some(Value::Object(mut f)) = obj.remove("function") {
                    if let Some(a) = f.remove("arguments") {
                        obj.insert("arguments".to_owned(), a);
                    }
                }
                return Some(name);
            }
            _ => {}
        }
    }
    None
}

/// The offered tool a model-side name stands for.
pub fn resolve<'a>(name: &str, set: &'a ToolSet) -> Option<&'a ToolSpec> {
    let client = resolve_name(name, set)?;
    set.spec(&client)
}

/// The client tool a name the model wrote stands for: the name the model was shown (an
/// alias, or the client's own name), the client's own name of an aliased tool (an agent's
/// system prompt names its tools, and a model calls what it has read), then the one tool
/// whose name matches ignoring case, `_`, `-` and a `u_` / `My_` prefix (the prefixes
/// proxies put on names, which a model may have seen). Two tools matching that loosely is
/// no match: the call is not guessed.
fn resolve_name(name: &str, set: &ToolSet) -> Option<String> {
    let name = name.trim();
    if let Some(client) = set.aliases.to_client(name) {
        return Some(client.to_owned());
    }
    if set.spec(name).is_some() {
        return Some(name.to_owned());
    }
    let wanted = loose_name(name);
    if wanted.is_empty() {
        return None;
    }
    let mut matching = set.tools.iter().filter(|t| {
        loosely_names(&wanted, &t.name) || loosely_names(&wanted, set.aliases.to_model(&t.name))
    });
    let tool = matching.next()?;
    match matching.next() {
        None => Some(tool.name.clone()),
        Some(_) => None,
    }
}

/// A tool name without case or separators: `Read-File` → `readfile`.
pub fn loose_name(name: &str) -> String {
    name.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// Whether a loosely written name is `tool`'s, with or without a proxy's `u_` / `My_`
/// prefix (in any spelling: `u_read`, `uRead`, `My-Read`).
fn loosely_names(wanted: &str, tool: &str) -> bool {
    let tool = loose_name(tool);
    [
        wanted,
        wanted.strip_prefix('u').unwrap_or(""),
        wanted.strip_prefix("my").unwrap_or(""),
    ]
    .iter()
    .any(|w| !w.is_empty() && *w == tool)
}

/// An object, or a string that decodes to one (at most twice: double-encoded arguments).
fn as_object(v: Value) -> Option<Map<String, Value>> {
    match v {
        Value::Object(o) => Some(o),
        Value::Null => Some(Map::new()),
        Value::String(s) => {
            let inner: Value = parse_lenient(&s)?;
            match inner {
                Value::Object(o) => Some(o),
                Value::String(s2) => match parse_lenient(&s2)? {
                    Value::Object(o) => Some(o),
                    _ => None,
                },
                _ => None,
            }
        }
        _ => None,
    }
}

/// The schema's type names (`"type": "x"` or `["x", "null"]`).
fn types(schema: &Value) -> Vec<&str> {
    match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

/// Strings that the schema says are numbers, booleans, objects or arrays — and that parse
/// as such — become them; nothing else changes.
fn coerce_object(args: &mut Map<String, Value>, schema: &Value) {
    let Some(props) = schema.get("properties").and_then(Value::as_object) else {
        return;
    };
    for (key, value) in args.iter_mut() {
        let Some(prop) = props.get(key) else {
            continue;
        };
        let kinds = types(prop);
        if let Value::String(s) = value {
            if kinds.contains(&"string") || kinds.is_empty() {
                continue;
            }
            let t = s.trim();
            let parsed = if kinds.contains(&"boolean") {
                match t {
                    "true" | "True" => Some(Value::Bool(true)),
                    "false" | "False" => Some(Value::Bool(false)),
                    _ => None,
                }
            } else {
                None
            };
            let parsed = parsed.or_else(|| {
                let v: Value = serde_json::from_str(t).ok()?;
                let fits = match &v {
                    Value::Number(n) => {
                        kinds.contains(&"number")
                            || kinds.contains(&"integer") && n.is_i64()
                            || kinds.contains(&"integer") && n.is_u64()
                    }
                    Value::Object(_) => kinds.contains(&"object"),
                    Value::Array(_) => kinds.contains(&"array"),
                    Value::Null => kinds.contains(&"null"),
                    _ => false,
                };
                fits.then_some(v)
            });
            if let Some(v) = parsed {
                *value = v;
            }
        } else if let (Value::Object(inner), true) = (&mut *value, kinds.contains(&"object")) {
            coerce_object(inner, prop);
        }
    }
}

/// JSON, or JSON with trailing commas removed (the one repair that is always safe).
fn parse_lenient(text: &str) -> Option<Value> {
    serde_json::from_str(text)
        .ok()
        .or_else(|| serde_json::from_str(&strip_trailing_commas(text)).ok())
}

fn strip_trailing_commas(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut escape) = (false, false);
    let chars: Vec<char> = text.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        if in_string {
            out.push(c);
            match (escape, c) {
                (true, _) => escape = false,
                (false, '\\') => escape = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        if c == '"' {
            in_string = true;
        }
        if c == ',' {
            let next = chars[i + 1..].iter().find(|c| !c.is_whitespace());
            if matches!(next, Some('}' | ']')) {
                continue;
            }
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::Choice;
    use serde_json::json;

    fn set() -> ToolSet {
        let tool = |name: &str, params: Value| ToolSpec {
            name: name.to_owned(),
            description: None,
            parameters: params,
        };
        ToolSet::new(
            vec![
                tool(
                    "get_weather",
                    json!({"type":"object","properties":{"city":{"type":"string"},"days":{"type":"integer"},"metric":{"type":["boolean","null"]}},"required":["city"]}),
                ),
                tool(
                    "write_file",
                    json!({"type":"object","properties":{"path":{"type":"string"},"content":{"type":"string"}}}),
                ),
                tool("Write", json!({"type":"object"})),
            ],
            Choice::Auto,
            true,
            &["Write".to_owned()],
        )
    }

    fn ok(payload: &str) -> (String, String) {
        let c = json_payload(payload, &set()).unwrap();
        (c.name, c.arguments)
    }

    #[test]
    fn plain_and_aliased_keys() {
        assert_eq!(
            ok(r#"{"name":"get_weather","arguments":{"city":"Paris"}}"#),
            ("get_weather".into(), r#"{"city":"Paris"}"#.into())
        );
        assert_eq!(
            ok(r#"{"tool":"get_weather","parameters":{"city":"Paris"}}"#).1,
            r#"{"city":"Paris"}"#
        );
        assert_eq!(
            ok(r#"{"function":{"name":"get_weather","arguments":{"city":"X"}}}"#).1,
            r#"{"city":"X"}"#
        );
        assert_eq!(ok(r#"{"name":"get_weather"}"#).1, "{}");
        // Arguments written next to the name.
        assert_eq!(
            ok(r#"{"name":"get_weather","city":"Oslo","days":2}"#).1,
            r#"{"city":"Oslo","days":2}"#
        );
    }

    #[test]
    fn double_encoded_arguments_and_coercion() {
        assert_eq!(
            ok(r#"{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}"#).1,
            r#"{"city":"Paris"}"#
        );
        assert_eq!(
            ok(r#"{"name":"get_weather","arguments":"\"{\\\"city\\\":\\\"P\\\"}\""}"#).1,
            r#"{"city":"P"}"#
        );
        // Integer from a string; a string-typed value that looks like a number stays.
        assert_eq!(
            ok(r#"{"name":"get_weather","arguments":{"city":"3","days":"3","metric":"true"}}"#).1,
            r#"{"city":"3","days":3,"metric":true}"#
        );
        assert_eq!(
            ok(r#"{"name":"get_weather","arguments":{"city":"x","days":"soon"}}"#).1,
            r#"{"city":"x","days":"soon"}"#
        );
    }

    #[test]
    fn names_resolve_by_alias_own_name_and_a_unique_loose_match_only_to_offered_tools() {
        // The alias the model was shown, and the client's own name of that tool.
        assert_eq!(ok(r#"{"name":"fs_put_file","arguments":{}}"#).0, "Write");
        assert_eq!(ok(r#"{"name":"Write","arguments":{}}"#).0, "Write");
        // Case, `_` / `-` and a proxy's prefix ignored.
        for variant in [
            "Get-Weather",
            "GET_WEATHER",
            "getWeather",
            "u_get_weather",
            "My_Get_Weather",
        ] {
            let payload = format!(r#"{{"name":"{variant}","arguments":{{"city":"a"}}}}"#);
            assert_eq!(
                json_payload(&payload, &set()).map(|c| c.name),
                Ok("get_weather".to_owned()),
                "{variant}"
            );
        }
        assert_eq!(ok(r#"{"name":"FS-PUT-FILE","arguments":{}}"#).0, "Write");
        assert_eq!(
            json_payload(r#"{"name":"delete_everything","arguments":{}}"#, &set()),
            Err(Invalid::UnknownName("delete_everything".into()))
        );
    }

    #[test]
    fn a_loose_match_of_two_tools_is_no_match() {
        let tool = |name: &str| ToolSpec {
            name: name.to_owned(),
            description: None,
            parameters: json!({"type":"object"}),
        };
        let set = ToolSet::new(
            vec![tool("read_file"), tool("readFile")],
            Choice::Auto,
            true,
            &[],
        );
        // Exact names still resolve; a spelling both share loosely does not.
        assert_eq!(
            json_payload(r#"{"name":"readFile"}"#, &set).unwrap().name,
            "readFile"
        );
        assert_eq!(
            json_payload(r#"{"name":"READ_FILE"}"#, &set),
            Err(Invalid::UnknownName("READ_FILE".into()))
        );
        assert_eq!(loose_name(" My_Read-File "), "myreadfile");
        for spelling in ["u_read", "uRead", "u-READ", "My_Read", "myread", "READ"] {
            assert!(loosely_names(&loose_name(spelling), "read"), "{spelling}");
        }
        assert!(!loosely_names(&loose_name("unread"), "read"));
    }

    #[test]
    fn repairs_and_refusals() {
        assert_eq!(
            ok(r#"{"name":"get_weather","arguments":{"city":"a",},}"#).1,
            r#"{"city":"a"}"#
        );
        assert_eq!(json_payload("{oops", &set()), Err(Invalid::NotJson));
        assert_eq!(
            json_payload(r#"{"arguments":{}}"#, &set()),
            Err(Invalid::NoName)
        );
        assert_eq!(
            json_payload(r#"{"name":"get_weather","arguments":[1]}"#, &set()),
            Err(Invalid::ArgumentsNotObject)
        );
    }

    #[test]
    fn key_order_is_the_models() {
        assert_eq!(
            ok(r#"{"name":"write_file","arguments":{"path":"a","content":"b"}}"#).1,
            r#"{"path":"a","content":"b"}"#
        );
        assert_eq!(
            ok(r#"{"name":"write_file","arguments":{"content":"b","path":"a"}}"#).1,
            r#"{"content":"b","path":"a"}"#
        );
    }

    #[test]
    fn xml_values_follow_the_schema() {
        let int = json!({"type":"integer"});
        let text = json!({"type":"string"});
        assert_eq!(xml_value("\n2\n", Some(&int)), json!(2));
        assert_eq!(xml_value("\n2\n", Some(&text)), json!("2"));
        assert_eq!(
            xml_value("\nline1\nline2\n", Some(&text)),
            json!("line1\nline2")
        );
        assert_eq!(
            xml_value("[1, 2]", Some(&json!({"type":"array"}))),
            json!([1, 2])
        );
        assert_eq!(xml_value("abc", None), json!("abc"));
    }
}
