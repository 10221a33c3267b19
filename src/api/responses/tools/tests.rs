use super::*;

fn tools(body: &str) -> Result<Tools, ProxyError> {
    let v: Value = serde_json::from_str(body).unwrap();
    parse(v.as_object().unwrap())
}

fn names(t: &Tools) -> Vec<&str> {
    t.set
        .as_ref()
        .map(|s| s.tools.iter().map(|t| t.name.as_str()).collect())
        .unwrap_or_default()
}

/// Codex's mix: functions, a namespace, a custom tool, hosted web search, and types the
/// proxy cannot run — all accepted in one request.
const CODEX: &str = r#"{"tools":[
  {"type":"function","name":"exec_command","parameters":{"type":"object","properties":{"cmd":{"type":"string"}},"required":["cmd"]}},
  {"type":"namespace","name":"mcp__fs","description":"files","tools":[{"type":"function","name":"read","parameters":{"type":"object"}}]},
  {"type":"custom","name":"apply_patch","description":"Edit files.","format":{"type":"grammar","syntax":"lark","definition":"start: begin_patch"}},
  {"type":"web_search","external_web_access":false},
  {"type":"file_search","vector_store_ids":["vs_1"]},
  {"type":"image_generation"},
  {"type":"file_search"}
]}"#;

#[test]
fn every_tool_type_is_accepted_and_the_callable_ones_offered() {
    let t = tools(CODEX).unwrap();
    assert_eq!(names(&t), ["exec_command", "mcp__fs__read", "apply_patch"]);
    assert_eq!(t.ignored, ["file_search", "image_generation"], "each once");
    assert!(
        !t.web_search,
        "an agent's own tools come first: no search every turn"
    );
    assert_eq!(
        t.names.kind("mcp__fs__read"),
        CallKind::Function {
            namespace: Some("mcp__fs".to_owned()),
            name: "read".to_owned()
        }
    );
    assert_eq!(
        t.names.kind("apply_patch"),
        CallKind::Custom {
            name: "apply_patch".to_owned()
        }
    );
    let set = t.set.unwrap();
    let patch = set.spec("apply_patch").unwrap();
    assert_eq!(patch.parameters["required"], json!(["input"]));
    let description = patch.description.as_deref().unwrap();
    assert!(description.starts_with("Edit files."), "{description}");
    assert!(
        description.contains("lark grammar:\nstart: begin_patch"),
        "{description}"
    );
}

#[test]
fn web_search_alone_or_chosen_is_the_upstreams_search() {
    assert!(
        tools(r#"{"tools":[{"type":"web_search"}]}"#)
            .unwrap()
            .web_search
    );
    assert!(
        tools(r#"{"tools":[{"type":"web_search_preview"}],"tool_choice":{"type":"web_search_preview"}}"#)
            .unwrap()
            .web_search
    );
    let with_functions = tools(
        r#"{"tools":[{"type":"web_search"},{"type":"function","name":"f"}],"tool_choice":{"type":"web_search"}}"#,
    )
    .unwrap();
    assert!(with_functions.web_search, "asked for by tool_choice");
    assert!(
        !tools(r#"{"tools":[{"type":"web_search"}],"tool_choice":"none"}"#)
            .unwrap()
            .web_search
    );
}

#[test]
fn tool_choice_forms() {
    let two = r#"[{"type":"function","name":"a"},{"type":"custom","name":"b"}]"#;
    let with = |choice: &str| tools(&format!(r#"{{"tools":{two},"tool_choice":{choice}}}"#));
    assert!(with(r#""none""#).unwrap().set.is_none());
    assert_eq!(
        with(r#""required""#).unwrap().set.unwrap().choice,
        Choice::Required
    );
    let named = with(r#"{"type":"custom","name":"b"}"#).unwrap();
    assert_eq!(names(&named), ["b"]);
    assert_eq!(named.set.unwrap().choice, Choice::Named("b".to_owned()));
    let allowed = with(
        r#"{"type":"allowed_tools","mode":"required","tools":[{"type":"function","name":"a"}]}"#,
    )
    .unwrap();
    assert_eq!(names(&allowed), ["a"]);
    assert_eq!(allowed.set.unwrap().choice, Choice::Required);
    let err = with(r#"{"type":"function","name":"zzz"}"#).unwrap_err();
    assert_eq!(err.param(), Some("tool_choice.name"));
    assert_eq!(
        with(r#""sometimes""#).unwrap_err().param(),
        Some("tool_choice")
    );
}

#[test]
fn bad_declarations_name_their_parameter() {
    let param = |body: &str| tools(body).unwrap_err().param().map(str::to_owned);
    assert_eq!(param(r#"{"tools":{}}"#).as_deref(), Some("tools"));
    assert_eq!(
        param(r#"{"tools":[{"name":"x"}]}"#).as_deref(),
        Some("tools[0]")
    );
    assert_eq!(
        param(r#"{"tools":[{"type":"function"}]}"#).as_deref(),
        Some("tools[0].name")
    );
    assert_eq!(
        param(r#"{"tools":[{"type":"function","name":"f","parameters":"x"}]}"#).as_deref(),
        Some("tools[0].parameters")
    );
    assert_eq!(
        param(r#"{"parallel_tool_calls":"yes"}"#).as_deref(),
        Some("parallel_tool_calls")
    );
}

#[test]
fn a_custom_tools_input_from_what_the_model_wrote() {
    assert_eq!(
        custom_input(r#"{"input":"*** Begin Patch\n"}"#),
        "*** Begin Patch\n"
    );
    // Another name for the one parameter, or a bare string: the text it holds.
    assert_eq!(custom_input(r#"{"patch":"p"}"#), "p");
    assert_eq!(custom_input(r#""raw""#), "raw");
    // Not JSON, or several strings: as written.
    assert_eq!(custom_input("*** Begin"), "*** Begin");
    assert_eq!(custom_input(r#"{"a":"1","b":"2"}"#), r#"{"a":"1","b":"2"}"#);
    assert_eq!(custom_arguments("x\"y"), r#"{"input":"x\"y"}"#);
    assert_eq!(flat_name(Some("mcp__fs__"), "read"), "mcp__fs__read");
    assert_eq!(flat_name(None, "read"), "read");
}
