use serde_json::json;

use super::*;
use crate::turn::Part;

fn text(role: Role, t: &str) -> Message {
    Message::text_message(role, t)
}

fn message_item(id: &str, t: &str) -> Item {
    Item::Message {
        id: id.to_owned(),
        text: t.to_owned(),
        start_char: 0,
        annotations: Vec::new(),
    }
}

fn call_item(id: &str, call_id: &str) -> Item {
    Item::FunctionCall {
        id: id.to_owned(),
        call_id: call_id.to_owned(),
        name: "read".to_owned(),
        namespace: Some("mcp__fs".to_owned()),
        arguments: "{}".to_owned(),
    }
}

#[test]
fn a_chain_of_responses_is_one_history() {
    let store = ResponseStore::default();
    store.save(
        "resp_1",
        None,
        &json!({"id": "resp_1"}),
        vec![text(Role::User, "hi")],
        &[
            Item::Reasoning {
                id: "rs_1".to_owned(),
                text: "hmm".to_owned(),
            },
            message_item("msg_1", "Looking."),
            call_item("fc_1", "call_1"),
        ],
    );
    let result = Message {
        role: Role::Tool,
        content: vec![Part::Text("a.txt".to_owned())],
        name: None,
        tool_calls: Vec::new(),
        tool_call_id: Some("call_1".to_owned()),
    };
    store.save(
        "resp_2",
        Some("resp_1"),
        &json!({"id": "resp_2"}),
        vec![result],
        &[message_item("msg_2", "Done.")],
    );
    let history = store.history("resp_2").unwrap();
    let roles: Vec<Role> = history.iter().map(|m| m.role).collect();
    assert_eq!(
        roles,
        [Role::User, Role::Assistant, Role::Tool, Role::Assistant],
        "reasoning holds nothing; the text and the call are one assistant turn"
    );
    assert_eq!(history[1].text(), "Looking.");
    assert_eq!(history[1].tool_calls[0].name, "mcp__fs__read");
    assert_eq!(history[1].tool_calls[0].id, "call_1");
    assert_eq!(history[3].text(), "Done.");
    assert_eq!(store.item("msg_1").unwrap().text(), "Looking.");
    assert_eq!(store.item("fc_1").unwrap().tool_calls[0].id, "call_1");
    assert!(store.item("rs_1").is_none());
    assert_eq!(&store.get("resp_2").unwrap()[..], br#"{"id":"resp_2"}"#);
    // A missing link is a 400 naming the parameter, never a shorter history.
    assert!(store.delete("resp_1"));
    assert!(!store.delete("resp_1"));
    let e = store.history("resp_2").unwrap_err();
    assert_eq!(e.param(), Some("previous_response_id"));
    assert!(store.item("msg_1").is_none(), "its items went with it");
}

#[test]
fn the_oldest_go_first_past_the_budget_and_none_outlives_the_ttl() {
    let store = ResponseStore::new(2_000, Duration::from_secs(60));
    for i in 0..20 {
        let id = format!("resp_{i}");
        store.save(
            &id,
            None,
            &json!({"id": id}),
            vec![text(Role::User, &"x".repeat(300))],
            &[],
        );
    }
    assert!(store.get("resp_0").is_none(), "evicted");
    assert!(store.get("resp_19").is_some());
    let kept = (0..20)
        .filter(|i| store.get(&format!("resp_{i}")).is_some())
        .count();
    assert!((1..20).contains(&kept), "{kept}");
    // One larger than the whole budget is not kept at all.
    store.save(
        "big",
        None,
        &json!({}),
        vec![text(Role::User, &"x".repeat(5_000))],
        &[],
    );
    assert!(store.get("big").is_none());
    assert!(store.get("resp_19").is_some(), "and evicts nothing");
}

#[tokio::test(start_paused = true)]
async fn responses_expire() {
    let store = ResponseStore::new(1 << 20, Duration::from_secs(60));
    store.save(
        "resp_1",
        None,
        &json!({}),
        vec![text(Role::User, "hi")],
        &[message_item("msg_1", "a")],
    );
    tokio::time::advance(Duration::from_secs(59)).await;
    assert!(store.get("resp_1").is_some());
    tokio::time::advance(Duration::from_secs(2)).await;
    assert!(store.get("resp_1").is_none());
    assert!(store.item("msg_1").is_none());
}
