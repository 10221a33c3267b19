//! The tool lists real agents send (`tests/fixtures/clients/`: Qwen Code, the Cline CLI,
//! opencode — captured first requests — and Claude Code's tool names), and a model that
//! calls each tool by the name the proxy showed it, by the agent's own name, and in another
//! case: every call reaches the agent under the agent's name. Agents' prompts tell the model
//! their own names ("use the read tool"); a real model writes what it has read.

// Tests: a failed unwrap is a failure with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::{json, Value};
use support::calls::{completed, message_calls, streamed};
use support::Harness;

use qwen_proxy::common::base64url_encode;

const MODEL: &str = "qwen3.7-plus";

fn captured(agent: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/clients")
        .join(format!("{agent}-first-request.json"));
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

fn tool_names(tools: &Value) -> Vec<String> {
    tools
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap().to_owned())
        .collect()
}

/// Claude Code's tools (the names the platform intercepts, shown under aliases).
fn claude_code_tools() -> Value {
    let names = [
        "Read",
        "Write",
        "Edit",
        "MultiEdit",
        "Bash",
        "Grep",
        "Glob",
        "LS",
        "WebFetch",
        "WebSearch",
        "TodoWrite",
        "Task",
    ];
    Value::Array(
        names
            .iter()
            .map(|n| json!({"type": "function", "function": {"name": n, "description": format!("Claude Code's {n}"), "parameters": {"type": "object", "properties": {}}}}))
            .collect(),
    )
}

/// The name the proxy shows the model for each tool: the lines of the tools section its
/// prompt writer produces for this request.
fn shown_names(tools: &Value) -> Vec<String> {
    let body = json!({"tools": tools});
    let set = qwen_proxy::api::openai::tools::parse(body.as_object().unwrap())
        .unwrap()
        .unwrap();
    qwen_proxy::tools::prompt::tools_section(&set)
        .lines()
        .filter(|l| l.starts_with("{\"name\":\""))
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["name"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

/// `read_file` → `Read_File`, `read` → `READ`, `Read` → `read`.
fn case_variant(name: &str) -> String {
    if name.contains('_') {
        name.split('_')
            .map(|w| {
                let mut c = w.chars();
                c.next()
                    .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("_")
    } else if name.chars().any(|c| c.is_ascii_uppercase()) {
        name.to_ascii_lowercase()
    } else {
        name.to_ascii_uppercase()
    }
}

/// The model writes exactly one call block naming `written`; the client must get its own
/// tool `expected`, streamed and not.
async fn call_by(h: &Harness, tools: &Value, written: &str, expected: &str) {
    let block = format!(
        "[TOOL CALL]\n{{\"name\": \"{written}\", \"arguments\": {{\"n\": 1}}}}\n[END TOOL CALL]"
    );
    let prompt = format!(
        "call {written} @@sim:reply={}",
        base64url_encode(block.as_bytes())
    );
    for stream in [true, false] {
        let body = json!({"model": MODEL, "stream": stream, "tools": tools,
            "messages": [{"role": "user", "content": prompt}]});
        let r = h.chat(body).await;
        let calls = if stream {
            let s = streamed(&r);
            assert!(
                !s.content.contains("TOOL CALL"),
                "{written}: {:?}",
                s.content
            );
            s.calls
        } else {
            let (message, finish) = completed(&r);
            assert_eq!(finish, "tool_calls", "{written}: {message}");
            message_calls(&message)
        };
        assert_eq!(calls.len(), 1, "{written} (stream {stream})");
        assert_eq!(calls[0].name, expected, "{written} (stream {stream})");
        assert_eq!(calls[0].args(), json!({"n": 1}));
    }
}

async fn every_tool_by_every_name(tools: Value) -> usize {
    let h = Harness::start().await;
    let names = tool_names(&tools);
    let shown = shown_names(&tools);
    assert_eq!(shown.len(), names.len());
    let mut checked = 0;
    for (own, shown) in names.iter().zip(&shown) {
        let mut forms = vec![shown.clone(), own.clone(), case_variant(own)];
        forms.dedup();
        for written in forms {
            call_by(&h, &tools, &written, own).await;
            checked += 1;
        }
    }
    checked
}

#[tokio::test]
async fn qwen_code_tools_by_every_name() {
    let tools = captured("qwen-code")["tools"].clone();
    assert_eq!(tool_names(&tools).len(), 15);
    assert_eq!(every_tool_by_every_name(tools).await, 30);
}

#[tokio::test]
async fn cline_tools_by_every_name() {
    let tools = captured("cline")["tools"].clone();
    assert_eq!(tool_names(&tools).len(), 25);
    assert_eq!(every_tool_by_every_name(tools).await, 50);
}

#[tokio::test]
async fn opencode_tools_are_shown_by_their_own_names_and_called_by_every_name() {
    let tools = captured("opencode")["tools"].clone();
    // Nine of opencode's ten tools share a lower-case name with a Claude Code tool; none
    // is renamed for the model.
    assert_eq!(shown_names(&tools), tool_names(&tools));
    assert_eq!(every_tool_by_every_name(tools).await, 20);
}

#[tokio::test]
async fn claude_code_tools_by_alias_own_name_and_case() {
    let tools = claude_code_tools();
    let shown = shown_names(&tools);
    assert_eq!(
        &shown[..3],
        ["fs_open_file", "fs_put_file", "fs_patch_file"]
    );
    assert_eq!(every_tool_by_every_name(tools).await, 36);
}
