//! Tool calls as a strict client assembles them, streamed or not (tool-calling.md §1.3):
//! shared by the function-calling tests.

use serde_json::Value;

use super::{summarize, Reply};

/// A call as the client assembles it.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

impl Call {
    pub fn args(&self) -> Value {
        serde_json::from_str(&self.arguments)
            .unwrap_or_else(|e| panic!("arguments are not JSON ({e}): {}", self.arguments))
    }
}

/// What a strict client accumulates from a stream, checking the tool-call chunk rules on
/// the way (tool-calling.md §1.3): a call opens with one chunk carrying `index` (the next
/// one), `id`, `type` and the name with empty arguments; later chunks of it carry only
/// `index` and `function.arguments`; one entry per chunk.
#[derive(Debug, Default)]
pub struct Streamed {
    pub content: String,
    pub reasoning: String,
    pub calls: Vec<Call>,
    pub finish: Option<String>,
}

pub fn streamed(r: &Reply) -> Streamed {
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.headers["content-type"], "text/event-stream");
    let events = r.events();
    // The chunk rules every stream keeps (role once, one id, `[DONE]`) and its text.
    let summary = summarize(&events);
    assert!(summary.error.is_none(), "error event: {:?}", summary.error);
    let mut s = Streamed {
        content: summary.content,
        reasoning: summary.reasoning,
        calls: Vec::new(),
        finish: summary.finish_reason,
    };
    let mut finishes = 0;
    for ev in &events[..events.len() - 1] {
        let Some(choice) = ev["choices"].as_array().unwrap().first() else {
            continue;
        };
        finishes += usize::from(choice["finish_reason"].is_string());
        let Some(entries) = choice["delta"].get("tool_calls") else {
            continue;
        };
        let entries = entries.as_array().unwrap();
        assert_eq!(entries.len(), 1, "one call entry per chunk: {ev}");
        let e = entries[0].as_object().unwrap();
        let index = e["index"].as_u64().unwrap() as usize;
        if let Some(id) = e.get("id") {
            assert_eq!(index, s.calls.len(), "indices are contiguous: {ev}");
            assert_eq!(e["type"], "function");
            assert_eq!(
                e["function"]["arguments"], "",
                "a header opens with empty arguments"
            );
            s.calls.push(Call {
                id: id.as_str().unwrap().to_owned(),
                name: e["function"]["name"].as_str().unwrap().to_owned(),
                arguments: String::new(),
            });
        } else {
            assert_eq!(e.len(), 2, "only index and arguments: {ev}");
            assert_eq!(e["function"].as_object().unwrap().len(), 1);
            let call = s.calls.get_mut(index).expect("arguments of an opened call");
            call.arguments
                .push_str(e["function"]["arguments"].as_str().unwrap());
        }
    }
    assert!(finishes <= 1, "one finish reason");
    let ids: std::collections::HashSet<&str> = s.calls.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids.len(), s.calls.len(), "ids are unique");
    s
}

/// The `chat.completion` message and finish reason.
pub fn completed(r: &Reply) -> (Value, String) {
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert!(v["usage"]["total_tokens"].as_u64().unwrap() > 0);
    let choice = &v["choices"][0];
    (
        choice["message"].clone(),
        choice["finish_reason"].as_str().unwrap().to_owned(),
    )
}

pub fn message_calls(message: &Value) -> Vec<Call> {
    message["tool_calls"]
        .as_array()
        .map(|calls| {
            calls
                .iter()
                .map(|c| {
                    assert_eq!(c["type"], "function");
                    Call {
                        id: c["id"].as_str().unwrap().to_owned(),
                        name: c["function"]["name"].as_str().unwrap().to_owned(),
                        arguments: c["function"]["arguments"].as_str().unwrap().to_owned(),
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}
