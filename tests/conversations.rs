//! Conversation continuation through the stack: later turns reuse the upstream chat with the
//! right parent chain and only the new message; divergence gets a fresh chat; lost chats
//! recover; concurrent requests on one conversation are queued.

// Tests and benches: a failed unwrap is a failure with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::{json, Value};
use support::{assistant, expected_answer, quick_sim, summarize, user, Harness};

const MODEL: &str = "qwen3.7-plus";

async fn harness(env: &[(&str, &str)]) -> Harness {
    Harness::start_with(env, quick_sim()).await
}

/// Send `messages`; return the assistant's answer.
async fn turn(h: &Harness, messages: &[Value], stream: bool) -> String {
    let r = h
        .chat(json!({"model": MODEL, "stream": stream, "messages": messages}))
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    if stream {
        summarize(&r.events()).content
    } else {
        r.json()["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}

fn chats(stats: &Value) -> Vec<(String, Vec<Value>)> {
    stats["chats"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(id, c)| (id.clone(), c["turns"].as_array().unwrap().clone()))
        .collect()
}

#[tokio::test]
async fn five_turns_continue_one_chat_with_the_parent_chain() {
    let h = harness(&[]).await;
    let mut messages = vec![json!({"role": "system", "content": "Be brief."})];
    for k in 1..=5 {
        let question = format!("question number {k}");
        messages.push(user(&question));
        let answer = turn(&h, &messages, k % 2 == 0).await;
        assert_eq!(answer, expected_answer(&question));
        messages.push(assistant(&answer));
    }
    let stats = h.sim_stats().await;
    assert_eq!(
        stats["chats_created"], 1,
        "turns 2-5 created no chat: {stats}"
    );
    let chats = chats(&stats);
    assert_eq!(chats.len(), 1);
    let turns = &chats[0].1;
    assert_eq!(turns.len(), 5);
    assert!(turns[0]["parent_id"].is_null());
    for k in 1..5 {
        assert_eq!(
            turns[k]["parent_id"],
            turns[k - 1]["response_id"],
            "turn {} continues turn {k}",
            k + 1
        );
        // Only the new user message is sent.
        assert_eq!(
            turns[k]["content_chars"],
            format!("question number {}", k + 1).chars().count()
        );
    }
    let metrics = String::from_utf8(h.get("/metrics").await.body.to_vec()).unwrap();
    assert!(
        metrics.contains("conversation_turns_total{mode=\"continued\"} 4"),
        "{metrics}"
    );
}

#[tokio::test]
async fn regenerate_branches_from_the_earlier_response() {
    let h = harness(&[]).await;
    let a1 = turn(&h, &[user("one")], false).await;
    let history = vec![user("one"), assistant(&a1), user("two")];
    let a2 = turn(&h, &history, false).await;
    assert_eq!(a2, expected_answer("two"));
    // The client regenerates: the same history again.
    assert_eq!(turn(&h, &history, false).await, expected_answer("two"));
    let stats = h.sim_stats().await;
    assert_eq!(stats["chats_created"], 1);
    let turns = &chats(&stats)[0].1;
    assert_eq!(turns.len(), 3);
    assert_eq!(turns[1]["parent_id"], turns[0]["response_id"]);
    assert_eq!(
        turns[2]["parent_id"], turns[0]["response_id"],
        "regenerate branches from turn 1's response"
    );
}

#[tokio::test]
async fn divergent_history_gets_a_fresh_chat() {
    let h = harness(&[]).await;
    let a1 = turn(&h, &[user("one")], false).await;
    // Edited earlier user message.
    turn(
        &h,
        &[user("one, edited"), assistant(&a1), user("two")],
        false,
    )
    .await;
    assert_eq!(h.sim_stats().await["chats_created"], 2);
    // Assistant message modified by the client.
    turn(
        &h,
        &[user("one"), assistant("something else"), user("two")],
        false,
    )
    .await;
    assert_eq!(h.sim_stats().await["chats_created"], 3);
    // Different system text.
    turn(
        &h,
        &[
            json!({"role": "system", "content": "new rules"}),
            user("one"),
            assistant(&a1),
            user("two"),
        ],
        false,
    )
    .await;
    assert_eq!(h.sim_stats().await["chats_created"], 4);
    // Only whitespace differs: still the same conversation.
    let spaced = format!("  {}  ", a1.replace(' ', "   "));
    turn(&h, &[user("one\n"), assistant(&spaced), user("two")], false).await;
    assert_eq!(h.sim_stats().await["chats_created"], 4);
    // The fresh chats got the whole folded history.
    let stats = h.sim_stats().await;
    let max_first_turn = chats(&stats)
        .iter()
        .map(|(_, t)| t[0]["content_chars"].as_u64().unwrap())
        .max()
        .unwrap();
    assert!(max_first_turn > 40, "folded history sent to fresh chats");
}

#[tokio::test]
async fn cut_replies_are_not_continued() {
    let h = harness(&[]).await;
    let r = h
        .chat(json!({"model": MODEL, "max_tokens": 2, "messages": [user("one")]}))
        .await;
    let cut = r.json()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(r.json()["choices"][0]["finish_reason"], "length");
    turn(&h, &[user("one"), assistant(&cut), user("two")], false).await;
    assert_eq!(
        h.sim_stats().await["chats_created"],
        2,
        "upstream holds more than the client saw"
    );
}

#[tokio::test]
async fn a_lost_chat_falls_back_to_a_fresh_chat_transparently() {
    let h = harness(&[]).await;
    let a1 = turn(&h, &[user("one")], false).await;
    let stats = h.sim_stats().await;
    let chat_id = chats(&stats)[0].0.clone();
    // The chat disappears upstream (deleted in the browser, say).
    let req = hyper::Request::delete(format!("{}/api/v2/chats/{chat_id}", h.sim.base_url()))
        .header("cookie", "token=test-token")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    assert_eq!(Harness::read(h.send(req).await).await.status, 200);
    let a2 = turn(&h, &[user("one"), assistant(&a1), user("two")], true).await;
    assert_eq!(a2, expected_answer("two"));
    let stats = h.sim_stats().await;
    assert_eq!(stats["chats_created"], 2);
    let metrics = String::from_utf8(h.get("/metrics").await.body.to_vec()).unwrap();
    assert!(
        metrics.contains("conversation_fallbacks_total{reason=\"chat_not_found\"} 1"),
        "{metrics}"
    );
    // The next turn continues the new chat.
    turn(
        &h,
        &[
            user("one"),
            assistant(&a1),
            user("two"),
            assistant(&a2),
            user("three"),
        ],
        false,
    )
    .await;
    assert_eq!(h.sim_stats().await["chats_created"], 2);
}

#[tokio::test]
async fn concurrent_requests_on_one_conversation_are_queued() {
    let h = harness(&[]).await;
    let a1 = turn(&h, &[user("one")], false).await;
    let history = vec![user("one"), assistant(&a1), user("two @@sim:delay=10")];
    let results = futures::future::join_all((0..4).map(|_| turn(&h, &history, true))).await;
    for r in results {
        assert_eq!(r, expected_answer("two"));
    }
    let stats = h.sim_stats().await;
    assert_eq!(
        stats["chats_created"], 1,
        "all four continued the same chat, one at a time: {stats}"
    );
    assert_eq!(chats(&stats)[0].1.len(), 5);
}

#[tokio::test]
async fn the_queue_is_bounded() {
    let h = harness(&[
        ("CONVERSATION_QUEUE_MAX", "1"),
        ("CONVERSATION_QUEUE_TIMEOUT", "200"),
    ])
    .await;
    let a1 = turn(&h, &[user("one")], false).await;
    let slow = vec![
        user("one"),
        assistant(&a1),
        user("two @@sim:long=400 @@sim:delay=5"),
    ];
    let send = |m: Vec<Value>| {
        let h = &h;
        async move {
            h.chat(json!({"model": MODEL, "messages": m}))
                .await
                .status
                .as_u16()
        }
    };
    let statuses = futures::future::join_all((0..3).map(|_| send(slow.clone()))).await;
    assert!(statuses.contains(&200), "{statuses:?}");
    assert!(
        statuses.contains(&429),
        "queued beyond the limit or too long: {statuses:?}"
    );
}

#[tokio::test]
async fn stateless_mode_folds_every_turn() {
    let h = harness(&[("CONVERSATION_MODE", "stateless")]).await;
    let a1 = turn(&h, &[user("one")], false).await;
    turn(&h, &[user("one"), assistant(&a1), user("two")], false).await;
    assert_eq!(h.sim_stats().await["chats_created"], 2);
}

#[tokio::test]
async fn conversations_are_per_api_key() {
    let h = harness(&[("API_KEYS", "key-a,key-b")]).await;
    let body = |m: &[Value]| json!({"model": MODEL, "messages": m}).to_string();
    let ask = |key: &'static str, m: Vec<Value>| {
        let h = &h;
        let b = body(&m);
        async move {
            let auth = format!("Bearer {key}");
            let r = h
                .post_raw(
                    "/v1/chat/completions",
                    "application/json",
                    b,
                    &[("authorization", &auth)],
                )
                .await;
            r.json()["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let a1 = ask("key-a", vec![user("one")]).await;
    // Another tenant sending the same history does not land in key-a's chat.
    ask("key-b", vec![user("one"), assistant(&a1), user("two")]).await;
    assert_eq!(h.sim_stats().await["chats_created"], 2);
    ask("key-a", vec![user("one"), assistant(&a1), user("two")]).await;
    assert_eq!(h.sim_stats().await["chats_created"], 2);
}

/// An agent loop: each turn sent the moment the previous answer ended, through a simulator
/// that keeps chats busy for `linger_ms` and takes `chat_ms` to create a chat.
async fn agent_loop(env: &[(&str, &str)], linger_ms: u64, chat_ms: u64, turns: usize) -> Value {
    let mut sim = quick_sim();
    sim.linger = std::time::Duration::from_millis(linger_ms);
    sim.timing.chat_latency = std::time::Duration::from_millis(chat_ms);
    let h = Harness::start_with(env, sim).await;
    let mut messages = vec![];
    for k in 1..=turns {
        let question = format!("step {k}: here is the tool result");
        messages.push(user(&question));
        let answer = turn(&h, &messages, true).await;
        assert_eq!(answer, expected_answer(&question), "step {k}");
        messages.push(assistant(&answer));
    }
    let mut stats = h.sim_stats().await;
    stats["metrics"] = String::from_utf8(h.get("/metrics").await.body.to_vec())
        .unwrap()
        .into();
    stats
}

/// A sample's value in the proxy's metrics (kept in `stats["metrics"]` by `agent_loop`).
fn metric(stats: &Value, sample: &str) -> Option<f64> {
    stats["metrics"]
        .as_str()?
        .lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
        .map(|v| v.parse().unwrap())
}

#[tokio::test]
async fn an_agent_loop_waits_out_the_learned_busy_window_in_its_chat() {
    // Creating a chat (600 ms) costs more than the rest of a 300 ms window: wait and stay.
    let stats = agent_loop(&[], 300, 600, 6).await;
    assert_eq!(stats["chats_created"], 1, "{stats}");
    // Without the learned window every continued turn hits the busy chat at least once
    // (5 here); the first busy answers teach it (three: 0 → 100 → 200 → 300 ms), later
    // turns wait it out.
    let refused = stats["busy_refusals"].as_u64().unwrap();
    assert!(refused <= 4, "{refused} busy refusals: {stats}");
    let window = metric(&stats, "chat_busy_window_seconds").unwrap();
    // Near the simulator's 300 ms (counted from when the proxy saw the answer end, a little
    // after the simulator did).
    assert!((0.2..0.7).contains(&window), "learned window {window} s");
}

#[tokio::test]
async fn a_long_busy_window_sends_the_next_turn_to_a_fresh_chat_unless_told_to_wait() {
    // A 2 s window against 50 ms to create a chat: the adaptive default leaves the chat.
    let stats = agent_loop(&[], 2_000, 50, 4).await;
    let busy_turns = metric(&stats, "conversation_turns_total{mode=\"busy\"}").unwrap_or(0.0);
    assert!(busy_turns >= 1.0, "{}", stats["metrics"]);
    assert!(stats["chats_created"].as_u64().unwrap() >= 2, "{stats}");

    // BUSY_CHAT_POLICY=wait: one chat, however long the wait.
    let stats = agent_loop(&[("BUSY_CHAT_POLICY", "wait")], 2_000, 50, 3).await;
    assert_eq!(stats["chats_created"], 1, "{stats}");
}

#[tokio::test]
async fn an_agent_sized_conversation_is_never_folded_again_just_to_save_a_wait() {
    // A 2 s window against 50 ms to create a chat, as above — but the conversation carries an
    // agent's 40 KB system prompt: its fold is over BUSY_FRESH_MAX_BYTES (32 KiB), and would
    // cost the model reading it again and the bytes near the anti-bot limit. It waits.
    let mut sim = quick_sim();
    sim.linger = std::time::Duration::from_millis(2_000);
    sim.timing.chat_latency = std::time::Duration::from_millis(50);
    let h = Harness::start_with(&[], sim).await;
    let system = "You are a coding agent. Follow the rules below. ".repeat(850);
    assert!(system.len() > 40_000);
    let mut messages = vec![json!({"role": "system", "content": system})];
    for k in 1..=3 {
        let question = format!("step {k}: here is the tool result");
        messages.push(user(&question));
        let answer = turn(&h, &messages, true).await;
        assert_eq!(answer, expected_answer(&question), "step {k}");
        messages.push(assistant(&answer));
    }
    let stats = h.sim_stats().await;
    assert_eq!(stats["chats_created"], 1, "{stats}");
    let metrics = String::from_utf8(h.get("/metrics").await.body.to_vec()).unwrap();
    assert!(
        !metrics.contains("conversation_chats_left_total{reason=\"busy\"}"),
        "{metrics}"
    );
}

/// `conversation_sessions` as the last sweep set it.
async fn sessions_gauge(h: &Harness) -> f64 {
    let metrics = String::from_utf8(h.get("/metrics").await.body.to_vec()).unwrap();
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("conversation_sessions "))
        .map_or(-1.0, |v| v.trim().parse().unwrap())
}

/// The soak's stall: with `CHAT_CLEANUP=delete` the deletions (two a second, by design) ran
/// inside the sweep's loop, so a batch of expired chats stopped the sweep for its length.
#[tokio::test]
async fn chat_deletion_does_not_hold_up_the_session_sweep() {
    let h = harness(&[
        ("CHAT_CLEANUP", "delete"),
        ("SESSION_TIMEOUT", "1000"),
        ("SESSION_CLEANUP_INTERVAL", "50"),
    ])
    .await;
    // Ten at once, so that they expire in the same sweep interval.
    let prompts: Vec<Vec<Value>> = (0..10)
        .map(|i| vec![user(&format!("first batch {i}"))])
        .collect();
    futures::future::join_all(prompts.iter().map(|p| turn(&h, p, false))).await;
    // They expire; deleting their ten chats takes five seconds from here.
    tokio::time::sleep(std::time::Duration::from_millis(1300)).await;
    for i in 0..3 {
        turn(&h, &[user(&format!("second batch {i}"))], false).await;
    }
    // The sweep sees the three live, then expired.
    let mut seen = Vec::new();
    let start = std::time::Instant::now();
    while start.elapsed() < std::time::Duration::from_millis(2500) {
        let n = sessions_gauge(&h).await;
        if seen.last() != Some(&n) {
            seen.push(n);
        }
        if n == 0.0 && seen.iter().any(|&v| v >= 1.0) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let last = seen.last().copied();
    assert!(
        seen.iter().any(|&v| v >= 1.0) && last == Some(0.0),
        "the gauge over 2.5 s: {seen:?}"
    );
    let deleted = h
        .wait_for_stats(|s| s["chats"].as_object().is_some_and(|c| c.len() <= 3))
        .await;
    assert!(
        deleted["chats"].as_object().unwrap().len() <= 3,
        "{deleted}"
    );
}
