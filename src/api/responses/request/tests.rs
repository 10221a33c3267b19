use super::*;

fn ok(body: &str) -> ApiRequest<Options> {
    parse(body.as_bytes()).unwrap_or_else(|e| panic!("{e:?}"))
}

fn param_of(body: &str) -> String {
    match parse(body.as_bytes()) {
        Err(ProxyError::BadRequest { param, .. }) => param.unwrap_or_default(),
        other => panic!("expected a 400, got {other:?}"),
    }
}

#[test]
fn codexs_first_request_becomes_the_turn() {
    let body = include_str!("../../../../tests/fixtures/clients/codex-first-request.json");
    let req = ok(body);
    let t = &req.turn;
    assert!(t.stream);
    let roles: Vec<Role> = t.messages.iter().map(|m| m.role).collect();
    assert_eq!(
        roles,
        [Role::System, Role::System, Role::User, Role::User],
        "developer messages are system messages where they stand"
    );
    assert!(t.messages[3].text().contains("notes.txt"));
    assert_eq!(
        t.session.as_deref(),
        serde_json::from_str::<Value>(body).unwrap()["prompt_cache_key"].as_str()
    );
    let tools: Vec<&str> = t
        .tools
        .as_ref()
        .unwrap()
        .tools
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert!(tools.contains(&"exec_command"), "{tools:?}");
    assert!(tools.contains(&"multi_agent_v1__spawn_agent"), "{tools:?}");
    assert!(!t.web_search, "Codex's own tools, not a search every turn");
    assert!(!req.options.store);
    assert!(!req.options.instructions, "Codex sends no `instructions`");
    assert!(req.options.reasoning, "Codex asks for a reasoning summary");
    assert_eq!(t.thinking, None, "no effort named: the model decides");
}

#[test]
fn a_history_of_calls_and_results_becomes_chat_turns() {
    let req = ok(r#"{"model":"m","instructions":"Be terse.","input":[
        {"role":"user","content":"list files"},
        {"type":"reasoning","id":"rs_1","summary":[],"encrypted_content":"SECRET-CIPHERTEXT"},
        {"type":"message","role":"assistant","content":[{"type":"output_text","text":"Looking."}]},
        {"type":"function_call","call_id":"c1","name":"exec_command","arguments":"{\"cmd\":\"ls\"}"},
        {"type":"function_call","call_id":"c2","namespace":"mcp__fs","name":"read","arguments":"{}"},
        {"type":"function_call_output","call_id":"c1","output":"a.txt"},
        {"type":"function_call_output","call_id":"c2","output":[{"type":"input_text","text":"b"}]},
        {"type":"custom_tool_call","call_id":"c3","name":"apply_patch","input":"*** Begin Patch"},
        {"type":"custom_tool_call_output","call_id":"c3","output":"Done"},
        {"type":"compaction","encrypted_content":"MORE-CIPHERTEXT"},
        {"role":"developer","content":"mind the tests"},
        {"role":"user","content":[{"type":"input_text","text":"now"},{"type":"input_image","image_url":"https://example.com/a.png"}]}
    ]}"#);
    let m = &req.turn.messages;
    let roles: Vec<Role> = m.iter().map(|m| m.role).collect();
    assert_eq!(
        roles,
        [
            Role::System,
            Role::User,
            Role::Assistant,
            Role::Tool,
            Role::Tool,
            Role::Assistant,
            Role::Tool,
            Role::System,
            Role::User
        ]
    );
    assert!(req.options.instructions);
    assert_eq!(m[0].text(), "Be terse.");
    // The text and both calls are one assistant turn, the namespaced call by its flat name.
    assert_eq!(m[2].text(), "Looking.");
    let calls: Vec<(&str, &str)> = m[2]
        .tool_calls
        .iter()
        .map(|c| (c.id.as_str(), c.name.as_str()))
        .collect();
    assert_eq!(calls, [("c1", "exec_command"), ("c2", "mcp__fs__read")]);
    assert_eq!(m[3].tool_call_id.as_deref(), Some("c1"));
    assert_eq!(m[4].text(), "b");
    assert_eq!(
        m[5].tool_calls[0].arguments,
        r#"{"input":"*** Begin Patch"}"#
    );
    assert_eq!(
        m[8].content[1],
        Part::ImageUrl("https://example.com/a.png".to_owned())
    );
    let all: String = m.iter().map(|m| m.text().into_owned()).collect();
    assert!(
        !all.contains("CIPHERTEXT"),
        "another issuer's ciphertext never reaches the prompt"
    );
}

#[test]
fn settings_map_to_the_turn() {
    let req = ok(
        r#"{"model":"m","input":"hi","max_output_tokens":50,"reasoning":{"effort":"none"},
        "text":{"format":{"type":"json_schema","name":"x","schema":{"type":"object"}}},
        "store":false,"previous_response_id":"resp_1","prompt_cache_key":"k1","metadata":{"a":"b"}}"#,
    );
    assert_eq!(req.turn.max_tokens, Some(50));
    assert_eq!(req.turn.thinking, Some(ThinkingIntent::Off));
    assert!(!req.options.reasoning);
    assert_eq!(
        req.turn.response_format,
        ResponseFormat::JsonSchema(r#"{"type":"object"}"#.to_owned())
    );
    assert!(!req.options.store);
    assert_eq!(req.options.previous_response_id.as_deref(), Some("resp_1"));
    assert_eq!(req.turn.session.as_deref(), Some("k1"));
    assert_eq!(req.options.echo.metadata, serde_json::json!({"a": "b"}));
    let high = ok(r#"{"model":"m","input":"hi","reasoning":{"effort":"high"}}"#);
    assert_eq!(high.turn.thinking, Some(ThinkingIntent::On));
    assert!(high.options.reasoning);
    assert!(
        ok(r#"{"model":"m","input":"hi"}"#).options.store,
        "the API's default"
    );
    // `input` may be left out only when continuing a stored response.
    assert!(ok(r#"{"model":"m","previous_response_id":"resp_1"}"#)
        .turn
        .messages
        .is_empty());
}

#[test]
fn item_references_are_left_for_the_store_to_resolve() {
    let req = ok(r#"{"model":"m","input":[
        {"role":"user","content":"hi"},
        {"type":"item_reference","id":"msg_1"},
        {"role":"user","content":"and?"}]}"#);
    assert_eq!(req.options.references, [(1, "msg_1".to_owned())]);
    assert_eq!(req.turn.messages.len(), 2);
}

#[test]
fn bad_requests_name_their_parameter() {
    assert_eq!(param_of(r#"{"input":"hi"}"#), "model");
    assert_eq!(param_of(r#"{"model":"m"}"#), "input");
    assert_eq!(param_of(r#"{"model":"m","input":5}"#), "input");
    assert_eq!(param_of(r#"{"model":"m","input":[5]}"#), "input[0]");
    assert_eq!(param_of(r#"{"model":"m","input":[{"foo":1}]}"#), "input[0]");
    assert_eq!(
        param_of(r#"{"model":"m","input":[{"role":"robot","content":"x"}]}"#),
        "input[0].role"
    );
    assert_eq!(
        param_of(r#"{"model":"m","input":[{"type":"function_call","name":"f","arguments":"{}"}]}"#),
        "input[0].call_id"
    );
    assert_eq!(
        param_of(
            r#"{"model":"m","input":[{"role":"user","content":[{"type":"input_file","file_id":"f"}]}]}"#
        ),
        "input[0].content[0]"
    );
    assert_eq!(
        param_of(r#"{"model":"m","input":"x","reasoning":{"effort":"extreme"}}"#),
        "reasoning.effort"
    );
    assert_eq!(
        param_of(r#"{"model":"m","input":"x","max_output_tokens":0}"#),
        "max_output_tokens"
    );
    assert_eq!(
        param_of(r#"{"model":"m","input":"x","text":{"format":{"type":"yaml"}}}"#),
        "text.format.type"
    );
    assert_eq!(
        param_of(r#"{"model":"m","input":"x","store":"yes"}"#),
        "store"
    );
}
