//! Chats made ahead (`CHAT_POOL_SIZE`): a new conversation's first turn takes a ready chat
//! (hit) or waits for one (miss); the pool is topped up after each take; expired chats are
//! taken out (deleted under `CHAT_CLEANUP=delete`); a ready chat the upstream no longer knows
//! is replaced unseen; no chat serves two conversations, also across two instances sharing
//! Redis.

// Tests and benches: a failed unwrap is a failure with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::time::Duration;

use qwen_proxy::sim::SimConfig;
use serde_json::{json, Value};
use support::redis::RedisServer;
use support::{expected_answer, quick_sim, user, Harness};

const MODEL: &str = "qwen3.7-plus";

/// The simulator with a `chats/new` that takes `ms`.
fn sim_with_chat_latency(ms: u64) -> SimConfig {
    let mut sim = quick_sim();
    sim.timing.chat_latency = Duration::from_millis(ms);
    sim
}

/// A new conversation's first turn at `addr`; asserts the answer.
async fn first_turn(h: &Harness, addr: std::net::SocketAddr, prompt: &str) {
    let r = h
        .chat_at(addr, json!({"model": MODEL, "messages": [user(prompt)]}))
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.message_content(), expected_answer(prompt));
}

/// `upstream_chat_pool_total{event}` at `addr` (0 when absent).
async fn pool_events(h: &Harness, addr: std::net::SocketAddr) -> HashMap<String, u64> {
    let metrics = String::from_utf8(h.get_at(addr, "/metrics").await.body.to_vec()).unwrap();
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix("upstream_chat_pool_total{event=\""))
        .filter_map(|l| {
            let (event, value) = l.split_once("\"} ")?;
            Some((event.to_owned(), value.trim().parse().ok()?))
        })
        .collect()
}

/// The simulator's chats: id → the user turns each received.
fn chats(stats: &Value) -> HashMap<String, usize> {
    stats["chats"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(id, c)| (id.clone(), c["turns"].as_array().map_or(0, Vec::len)))
        .collect()
}

/// Wait until the simulator has `n` chats.
async fn chats_reach(h: &Harness, n: usize) -> Value {
    let stats = h
        .wait_for_stats(|s| s["chats"].as_object().is_some_and(|c| c.len() >= n))
        .await;
    assert!(chats(&stats).len() >= n, "{stats}");
    stats
}

#[tokio::test]
async fn a_first_turn_misses_then_the_next_ones_take_ready_chats() {
    let h = Harness::start_with(&[("CHAT_POOL_SIZE", "2")], sim_with_chat_latency(100)).await;
    first_turn(&h, h.addr, "first conversation").await;
    // The miss made one chat while the turn waited; the pool then fills to two.
    chats_reach(&h, 3).await;
    first_turn(&h, h.addr, "second conversation").await;
    first_turn(&h, h.addr, "third conversation").await;
    let stats = chats_reach(&h, 5).await;
    let events = pool_events(&h, h.addr).await;
    assert_eq!(events.get("miss"), Some(&1), "{events:?}");
    assert_eq!(events.get("hit"), Some(&2), "{events:?}");
    // Two made ahead at first, one after each hit.
    assert_eq!(events.get("made"), Some(&4), "{events:?}");
    let turns = chats(&stats);
    assert_eq!(turns.len(), 5, "{stats}");
    // Three conversations, one chat each; two chats wait unused.
    assert_eq!(turns.values().filter(|&&n| n == 1).count(), 3, "{turns:?}");
    assert_eq!(turns.values().filter(|&&n| n == 0).count(), 2, "{turns:?}");
}

#[tokio::test]
async fn no_chat_serves_two_conversations() {
    let h = Harness::start_with(&[("CHAT_POOL_SIZE", "3")], sim_with_chat_latency(20)).await;
    first_turn(&h, h.addr, "warm").await;
    chats_reach(&h, 4).await;
    let prompts: Vec<String> = (0..40).map(|i| format!("at once {i}")).collect();
    futures::future::join_all(prompts.iter().map(|p| first_turn(&h, h.addr, p))).await;
    let stats = h.sim_stats().await;
    let turns = chats(&stats);
    assert!(
        turns.values().all(|&n| n <= 1),
        "a chat used twice: {turns:?}"
    );
    assert_eq!(turns.values().filter(|&&n| n == 1).count(), 41, "{turns:?}");
    let events = pool_events(&h, h.addr).await;
    assert!(events.get("hit").is_some_and(|&n| n >= 3), "{events:?}");
}

#[tokio::test]
async fn chats_unused_past_their_lifetime_are_deleted() {
    for shared in [false, true] {
        let redis = RedisServer::start().await;
        let url = redis.url();
        let mut env = vec![
            ("CHAT_POOL_SIZE", "2"),
            ("CHAT_POOL_TTL", "300"),
            ("CHAT_CLEANUP", "delete"),
            ("SESSION_CLEANUP_INTERVAL", "50"),
        ];
        if shared {
            env.push(("REDIS_URL", &url));
        }
        let h = Harness::start_with(&env, quick_sim()).await;
        first_turn(&h, h.addr, "one").await;
        chats_reach(&h, 3).await;
        // The two made ahead expire and are deleted; the conversation's chat stays.
        let stats = h
            .wait_for_stats(|s| s["chats"].as_object().is_some_and(|c| c.len() == 1))
            .await;
        let turns = chats(&stats);
        assert_eq!(turns.len(), 1, "redis={shared}: {stats}");
        assert_eq!(turns.values().next(), Some(&1));
        let events = pool_events(&h, h.addr).await;
        assert_eq!(
            events.get("expired"),
            Some(&2),
            "redis={shared}: {events:?}"
        );
        assert_eq!(
            events.get("deleted"),
            Some(&2),
            "redis={shared}: {events:?}"
        );
        // An expired chat is never handed out: the next conversation misses.
        first_turn(&h, h.addr, "two").await;
        let events = pool_events(&h, h.addr).await;
        assert_eq!(events.get("hit"), None, "redis={shared}: {events:?}");
    }
}

#[tokio::test]
async fn a_ready_chat_the_upstream_lost_is_replaced_unseen() {
    let h = Harness::start_with(&[("CHAT_POOL_SIZE", "2")], quick_sim()).await;
    first_turn(&h, h.addr, "one").await;
    chats_reach(&h, 3).await;
    // Every chat of the account deleted upstream (in the browser, say).
    let req = hyper::Request::delete(format!("{}/api/v2/chats/", h.sim.base_url()))
        .header("cookie", "token=test-token")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    assert_eq!(Harness::read(h.send(req).await).await.status, 200);
    // Streamed and not: the client sees a whole answer, nothing else.
    first_turn(&h, h.addr, "two").await;
    let r = h
        .chat(json!({"model": MODEL, "stream": true, "messages": [user("three")]}))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        support::summarize(&r.events()).content,
        expected_answer("three")
    );
    let events = pool_events(&h, h.addr).await;
    // "two" took a lost chat, met chat_not_found, dropped the other and made its own.
    assert!(events.get("stale").is_some_and(|&n| n >= 2), "{events:?}");
    let metrics = String::from_utf8(h.get("/metrics").await.body.to_vec()).unwrap();
    assert!(
        !metrics.contains("conversation_fallbacks_total"),
        "no fallback counted: {metrics}"
    );
}

#[tokio::test]
async fn two_instances_share_the_pool_over_redis_and_never_share_a_chat() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let env = [("CHAT_POOL_SIZE", "3"), ("REDIS_URL", url.as_str())];
    let h = Harness::start_with(&env, sim_with_chat_latency(20)).await;
    let b = h.another_proxy(&env).await;
    first_turn(&h, h.addr, "warm on a").await;
    chats_reach(&h, 4).await;
    // b's first turn takes a chat a made.
    first_turn(&h, b.addr, "first on b").await;
    let on_b = pool_events(&h, b.addr).await;
    assert_eq!(on_b.get("hit"), Some(&1), "{on_b:?}");
    assert_eq!(on_b.get("miss"), None, "{on_b:?}");
    // Both at once: every conversation in a chat of its own.
    let prompts: Vec<String> = (0..30).map(|i| format!("shared {i}")).collect();
    futures::future::join_all(prompts.iter().enumerate().map(|(i, p)| {
        let addr = if i % 2 == 0 { h.addr } else { b.addr };
        first_turn(&h, addr, p)
    }))
    .await;
    let stats = h.sim_stats().await;
    let turns = chats(&stats);
    assert!(
        turns.values().all(|&n| n <= 1),
        "a chat used twice: {turns:?}"
    );
    assert_eq!(turns.values().filter(|&&n| n == 1).count(), 32, "{turns:?}");
}
