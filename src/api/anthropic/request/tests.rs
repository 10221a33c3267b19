use super::*;

fn ok(body: &str) -> ApiRequest<Options> {
    parse(body.as_bytes()).unwrap_or_else(|e| panic!("{body}: {e:?}"))
}

fn param_of(body: &str) -> String {
    match parse(body.as_bytes()) {
        Err(ProxyError::BadRequest { param, .. }) => param.unwrap_or_default(),
        other => panic!("expected a 400 for {body}, got {other:?}"),
    }
}

#[test]
fn a_claude_code_shaped_request_becomes_the_turn() {
    let r = ok(
        r#"{"model":"qwen3.7-plus","max_tokens":128000,"stream":true,
        "system":[{"type":"text","text":"x-anthropic-billing-header: cc_version=2.1; cc_entrypoint=cli;"},
                  {"type":"text","text":"You are Claude Code.","cache_control":{"type":"ephemeral"}}],
        "messages":[
          {"role":"user","content":[{"type":"text","text":"Read notes.txt"}]},
          {"role":"system","content":[{"type":"text","text":"Today is Monday."}]},
          {"role":"assistant","content":[{"type":"thinking","thinking":"hm","signature":"s"},
             {"type":"text","text":"Reading."},
             {"type":"tool_use","id":"toolu_1","name":"Read","input":{"file_path":"notes.txt"}}]},
          {"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_1","content":"line 1"},
             {"type":"text","text":"Thanks"}]}],
        "tools":[{"name":"Read","description":"Read a file","input_schema":{"type":"object","properties":{"file_path":{"type":"string"}}}},
                 {"name":"Later","input_schema":{"type":"object"},"defer_loading":true}],
        "thinking":{"type":"adaptive"},"metadata":{"user_id":"u"},"context_management":{"edits":[]},
        "output_config":{"effort":"medium"},"stop_sequences":["END"]}"#,
    );
    let t = &r.turn;
    assert_eq!(t.model, "qwen3.7-plus");
    assert!(t.stream);
    assert_eq!(t.max_tokens, Some(128_000), "never lowered");
    assert_eq!(t.stop, ["END"]);
    assert_eq!(t.thinking, Some(ThinkingIntent::Auto));
    assert!(r.options.thinking);
    assert!(r.options.input_tokens > 0);
    let roles: Vec<Role> = t.messages.iter().map(|m| m.role).collect();
    assert_eq!(
        roles,
        [
            Role::System,
            Role::User,
            Role::System,
            Role::Assistant,
            Role::Tool,
            Role::User
        ]
    );
    // The billing line is gone; the rest of the system text stays.
    assert_eq!(t.messages[0].text(), "You are Claude Code.");
    // Thinking dropped; the call kept with its id and input.
    assert_eq!(t.messages[3].text(), "Reading.");
    assert_eq!(t.messages[3].tool_calls[0].name, "Read");
    assert_eq!(t.messages[3].tool_calls[0].id, "toolu_1");
    assert_eq!(
        t.messages[3].tool_calls[0].arguments,
        r#"{"file_path":"notes.txt"}"#
    );
    assert_eq!(t.messages[4].tool_call_id.as_deref(), Some("toolu_1"));
    assert_eq!(t.messages[4].text(), "line 1");
    assert_eq!(t.messages[5].text(), "Thanks");
    // The deferred tool is not offered.
    let tools = t.tools.as_deref().unwrap();
    assert_eq!(tools.tools.len(), 1);
    assert_eq!(tools.choice, Choice::Auto);
}

#[test]
fn tool_choice_and_thinking_map_to_the_turn() {
    let base = r#""model":"m","max_tokens":10,"messages":[{"role":"user","content":"hi"}],"tools":[{"name":"a","input_schema":{}},{"name":"b","input_schema":{}}]"#;
    let any = ok(&format!(
        r#"{{{base},"tool_choice":{{"type":"any","disable_parallel_tool_use":true}}}}"#
    ));
    let set = any.turn.tools.as_deref().unwrap();
    assert_eq!(set.choice, Choice::Required);
    assert!(!set.parallel);
    let named = ok(&format!(
        r#"{{{base},"tool_choice":{{"type":"tool","name":"b"}}}}"#
    ));
    let set = named.turn.tools.as_deref().unwrap();
    assert_eq!(set.choice, Choice::Named("b".into()));
    assert_eq!(set.tools.len(), 1);
    assert!(
        ok(&format!(r#"{{{base},"tool_choice":{{"type":"none"}}}}"#))
            .turn
            .tools
            .is_none()
    );
    let off = ok(
        r#"{"model":"m","max_tokens":10,"messages":[{"role":"user","content":"hi"}],"thinking":{"type":"disabled"}}"#,
    );
    assert_eq!(off.turn.thinking, Some(ThinkingIntent::Off));
    assert!(!off.options.thinking);
    let on = ok(
        r#"{"model":"m","max_tokens":10,"messages":[{"role":"user","content":"hi"}],"thinking":{"type":"enabled","budget_tokens":1024}}"#,
    );
    assert_eq!(on.turn.thinking, Some(ThinkingIntent::On));
}

#[test]
fn images_in_messages_and_tool_results() {
    let png = crate::common::base64_encode(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR");
    let r = ok(&format!(
        r#"{{"model":"m","max_tokens":10,"messages":[
          {{"role":"user","content":[{{"type":"image","source":{{"type":"base64","media_type":"image/png","data":"{png}"}}}},
                                    {{"type":"image","source":{{"type":"url","url":"https://example.com/a.png"}}}}]}},
          {{"role":"assistant","content":[{{"type":"tool_use","id":"t1","name":"shot","input":{{}}}}]}},
          {{"role":"user","content":[{{"type":"tool_result","tool_use_id":"t1","is_error":true,
             "content":[{{"type":"text","text":"failed"}},{{"type":"image","source":{{"type":"base64","media_type":"image/png","data":"{png}"}}}}]}}]}}]}}"#
    ));
    let m = &r.turn.messages;
    assert!(matches!(&m[0].content[0], Part::File(f) if f.media_type == "image/png"));
    assert!(matches!(&m[0].content[1], Part::ImageUrl(u) if u == "https://example.com/a.png"));
    assert_eq!(m[2].role, Role::Tool);
    assert!(m[2].text().contains("error") && m[2].text().contains("failed"));
    assert!(matches!(m[2].content.last(), Some(Part::File(_))));
}

#[test]
fn bad_requests_name_their_parameter() {
    let msgs = r#""messages":[{"role":"user","content":"hi"}]"#;
    assert_eq!(
        param_of(&format!(r#"{{"model":"m",{msgs}}}"#)),
        "max_tokens"
    );
    assert_eq!(
        param_of(&format!(r#"{{"model":"m","max_tokens":0,{msgs}}}"#)),
        "max_tokens"
    );
    assert_eq!(param_of(&format!(r#"{{"max_tokens":5,{msgs}}}"#)), "model");
    assert_eq!(
        param_of(r#"{"model":"m","max_tokens":5,"messages":[]}"#),
        "messages"
    );
    assert_eq!(
        param_of(r#"{"model":"m","max_tokens":5,"messages":[{"role":"robot","content":"x"}]}"#),
        "messages.0.role"
    );
    assert_eq!(
        param_of(
            r#"{"model":"m","max_tokens":5,"messages":[{"role":"assistant","content":[{"type":"tool_result","tool_use_id":"x"}]},{"role":"user","content":"x"}]}"#
        ),
        "messages.0.content.0"
    );
    assert_eq!(
        param_of(&format!(
            r#"{{"model":"m","max_tokens":5,{msgs},"tools":[{{"type":"web_search_20250305","name":"web_search"}}]}}"#
        )),
        "tools.0"
    );
    assert_eq!(
        param_of(&format!(
            r#"{{"model":"m","max_tokens":5,{msgs},"tools":[{{"name":"a","input_schema":{{}}}}],"tool_choice":{{"type":"tool","name":"zz"}}}}"#
        )),
        "tool_choice.name"
    );
    assert_eq!(
        param_of(&format!(
            r#"{{"model":"m","max_tokens":5,{msgs},"thinking":{{"type":"maybe"}}}}"#
        )),
        "thinking.type"
    );
    assert_eq!(
        param_of(
            r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":[{"type":"image","source":{"type":"base64","media_type":"image/png","data":"PGh0bWw+"}}]}]}"#
        ),
        "messages.0.content.0.source"
    );
}

#[test]
fn metadata_user_id_names_the_session() {
    let with = |user: &str| {
        let body = format!(
            r#"{{"model":"m","max_tokens":5,"messages":[{{"role":"user","content":"hi"}}],"metadata":{{"user_id":{}}}}}"#,
            serde_json::Value::String(user.to_owned())
        );
        ok(&body).turn.session
    };
    // Claude Code today: JSON in the string.
    assert_eq!(
        with(r#"{"device_id":"d1","account_uuid":"","session_id":"5b0c-77"}"#).as_deref(),
        Some("5b0c-77")
    );
    // Older Claude Code.
    assert_eq!(
        with("user_ab12_account__session_9f3e-11").as_deref(),
        Some("9f3e-11")
    );
    // Anyone else's user id, as it is.
    assert_eq!(with("alice").as_deref(), Some("alice"));
    assert_eq!(with(""), None);
    assert_eq!(
        ok(r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#)
            .turn
            .session,
        None
    );
}
