//! Several proxy instances sharing a real `redis-server` (started on a free port): one
//! conversation continues across instances, locks and rate limits hold across them, a
//! Redis outage degrades to local state and recovers by itself, the first turn after a
//! Redis restart finds the shared store at once, and a Redis that stops answering costs
//! each command its timeout only.

// Tests and benches: a failed unwrap is a failure with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::{assistant, expected_answer, quick_sim, user, Harness, RedisServer};

const MODEL: &str = "qwen3.7-plus";

async fn answer(h: &Harness, addr: std::net::SocketAddr, messages: &[Value]) -> String {
    let r = h
        .chat_at(addr, json!({"model": MODEL, "messages": messages}))
        .await;
    r.message_content()
}

#[tokio::test]
async fn a_conversation_continues_across_instances() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let h = Harness::start_with(&[("REDIS_URL", &url)], quick_sim()).await;
    let b = h.another_proxy(&[("REDIS_URL", &url)]).await;
    let instances = [h.addr, b.addr];
    let mut messages = Vec::new();
    for k in 0..4 {
        let q = format!("turn {k}");
        messages.push(user(&q));
        let a = answer(&h, instances[k % 2], &messages).await;
        assert_eq!(a, expected_answer(&q));
        messages.push(assistant(&a));
    }
    let stats = h.sim_stats().await;
    assert_eq!(stats["chats_created"], 1, "{stats}");
    // Without CHAT_CLEANUP=delete nobody would take a chat's last use out again.
    assert!(
        !redis.keys().iter().any(|k| k == "qp:chats"),
        "{:?}",
        redis.keys()
    );
    let health = h.health_at(b.addr).await.json();
    assert_eq!(
        health["session_store"],
        json!({"backend": "redis", "status": "ok"})
    );
}

#[tokio::test]
async fn locks_and_rate_limits_hold_across_instances() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let h = Harness::start_with(&[("REDIS_URL", &url)], quick_sim()).await;
    let b = h.another_proxy(&[("REDIS_URL", &url)]).await;
    let a1 = answer(&h, h.addr, &[user("one")]).await;
    let history = vec![user("one"), assistant(&a1), user("two @@sim:delay=5")];
    let runs = (0..4).map(|i| {
        let addr = if i % 2 == 0 { h.addr } else { b.addr };
        let h = &h;
        let history = history.clone();
        async move { answer(h, addr, &history).await }
    });
    for a in futures::future::join_all(runs).await {
        assert_eq!(a, expected_answer("two"));
    }
    assert_eq!(
        h.sim_stats().await["chats_created"],
        1,
        "serialised on one chat across instances"
    );

    let limited = [
        ("REDIS_URL", url.as_str()),
        ("RATE_LIMIT_RPM", "60"),
        ("RATE_LIMIT_BURST", "2"),
    ];
    let p = h.another_proxy(&limited).await;
    let q = h.another_proxy(&limited).await;
    let body = json!({"model": MODEL, "messages": [user("x")]});
    assert_eq!(h.chat_at(p.addr, body.clone()).await.status, 200);
    assert_eq!(h.chat_at(q.addr, body.clone()).await.status, 200);
    let third = h.chat_at(p.addr, body).await;
    assert_eq!(third.status, 429, "the bucket is shared");
    assert_eq!(third.headers["x-ratelimit-limit"], "2");
}

#[tokio::test]
async fn redis_outage_degrades_then_recovers() {
    let mut redis = RedisServer::start().await;
    let url = redis.url();
    let h = Harness::start_with(&[("REDIS_URL", &url)], quick_sim()).await;
    let a1 = answer(&h, h.addr, &[user("one")]).await;
    redis.stop();
    // Requests keep working (local state), the degradation is visible.
    let a2 = answer(&h, h.addr, &[user("one"), assistant(&a1), user("two")]).await;
    assert_eq!(a2, expected_answer("two"));
    let health = h.health().await.json();
    assert_eq!(health["status"], "degraded");
    assert_eq!(health["session_store"]["status"], "degraded");
    let metrics = String::from_utf8(h.get("/metrics").await.body.to_vec()).unwrap();
    assert!(metrics.contains("session_store_up 0"), "{metrics}");
    // Redis comes back: so does the shared store, by itself.
    redis.restart().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let health = h.health().await.json();
        if health["session_store"]["status"] == "ok" {
            assert_eq!(health["status"], "ok");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "store did not recover: {health}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = String::from_utf8(h.get("/metrics").await.body.to_vec()).unwrap();
    assert!(metrics.contains("session_store_up 1"), "{metrics}");
}

/// Before, a restart left every pooled connection dead, and the first commands after it
/// failed on them: the instance fell back to local state, and the conversation's next
/// turn, on another instance, opened a second upstream chat. The client now reconnects as
/// soon as Redis goes, and a command waits for the new connection.
#[tokio::test]
async fn the_first_turns_after_a_redis_restart_continue_one_chat() {
    let mut redis = RedisServer::start().await;
    let url = redis.url();
    let h = Harness::start_with(&[("REDIS_URL", &url)], quick_sim()).await;
    let b = h.another_proxy(&[("REDIS_URL", &url)]).await;
    // Both instances have used Redis (their connections are open and idle).
    for (i, addr) in [h.addr, b.addr].into_iter().enumerate() {
        let first = answer(&h, addr, &[user(&format!("warm {i}"))]).await;
        let next = [user(&format!("warm {i}")), assistant(&first), user("again")];
        answer(&h, addr, &next).await;
    }
    let before = h.sim_stats().await["chats_created"].as_u64().unwrap();

    redis.restart().await;
    // At once: a two-turn conversation over both instances, then a third turn.
    let mut messages = vec![user("after the restart")];
    for (k, addr) in [h.addr, b.addr, h.addr].into_iter().enumerate() {
        let a = answer(&h, addr, &messages).await;
        messages.push(assistant(&a));
        messages.push(user(&format!("turn {}", k + 2)));
    }
    let stats = h.sim_stats().await;
    assert_eq!(
        stats["chats_created"].as_u64().unwrap() - before,
        1,
        "one upstream chat for the conversation: {stats}"
    );
    for addr in [h.addr, b.addr] {
        let health = h.health_at(addr).await.json();
        assert_eq!(health["session_store"]["status"], "ok", "{health}");
        let metrics = String::from_utf8(h.get_at(addr, "/metrics").await.body.to_vec()).unwrap();
        assert!(metrics.contains("session_store_up 1"), "no command failed");
    }
    assert!(
        redis.keys().iter().any(|k| k.starts_with("qp:s:")),
        "the session is in the new Redis"
    );
}

/// While Redis is away, a request pays `REDIS_TIMEOUT` once, not on every command: once a
/// command failed unconnected, the others fail at once (rate limits and sessions go local)
/// until the client has reconnected by itself.
#[tokio::test]
async fn an_outage_costs_one_timeout_not_one_per_command() {
    let mut redis = RedisServer::start().await;
    let url = redis.url();
    let env = [
        ("REDIS_URL", url.as_str()),
        ("REDIS_TIMEOUT", "1000"),
        ("RATE_LIMIT_RPM", "60000"),
        ("RATE_LIMIT_BURST", "1000"),
    ];
    let h = Harness::start_with(&env, quick_sim()).await;
    answer(&h, h.addr, &[user("before")]).await;
    redis.stop();
    answer(&h, h.addr, &[user("the first after")]).await;
    let started = tokio::time::Instant::now();
    for i in 0..10 {
        let q = format!("during {i}");
        assert_eq!(answer(&h, h.addr, &[user(&q)]).await, expected_answer(&q));
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "ten requests took {took:?} (a second each would be a wait per command)"
    );
    redis.restart().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while h.health().await.json()["session_store"]["status"] != "ok" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "store did not recover"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let keys = redis.keys();
    answer(&h, h.addr, &[user("after")]).await;
    assert!(
        redis.keys().len() > keys.len(),
        "Redis used again: {:?}",
        redis.keys()
    );
}

/// A Redis that stops answering without closing its connections (frozen, or a network
/// fault): each command gives up after `REDIS_TIMEOUT`, requests go on with local state,
/// and Redis is used again when it answers.
#[tokio::test]
async fn a_frozen_redis_costs_each_command_its_timeout() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let h = Harness::start_with(
        &[("REDIS_URL", &url), ("REDIS_TIMEOUT", "300")],
        quick_sim(),
    )
    .await;
    let a1 = answer(&h, h.addr, &[user("one")]).await;
    redis.signal("STOP");
    let started = tokio::time::Instant::now();
    let a2 = answer(&h, h.addr, &[user("one"), assistant(&a1), user("two")]).await;
    assert_eq!(a2, expected_answer("two"));
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "took {took:?}");
    let health = h.health().await.json();
    assert_eq!(health["session_store"]["status"], "degraded", "{health}");
    redis.signal("CONT");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let health = h.health().await.json();
        if health["session_store"]["status"] == "ok" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "store did not recover: {health}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn expired_sessions_chats_are_deleted_upstream() {
    for redis in [true, false] {
        let server = RedisServer::start().await;
        let url = server.url();
        let mut env = vec![
            ("SESSION_TIMEOUT", "150"),
            ("SESSION_CLEANUP_INTERVAL", "50"),
            ("CHAT_CLEANUP", "delete"),
        ];
        if redis {
            env.push(("REDIS_URL", &url));
        }
        let h = Harness::start_with(&env, quick_sim()).await;
        answer(&h, h.addr, &[user("one")]).await;
        assert_eq!(h.sim_stats().await["chats"].as_object().unwrap().len(), 1);
        let stats = h
            .wait_for_stats(|s| s["chats"].as_object().is_some_and(|c| c.is_empty()))
            .await;
        assert!(
            stats["chats"].as_object().unwrap().is_empty(),
            "redis={redis}: {stats}"
        );
        let metrics = String::from_utf8(h.get("/metrics").await.body.to_vec()).unwrap();
        assert!(
            metrics.contains("upstream_chats_deleted_total{outcome=\"deleted\"} 1"),
            "{metrics}"
        );
    }
}

#[tokio::test]
async fn redis_locks_are_owned_renewable_and_expire() {
    use qwen_proxy::conversation::store::SessionStore;
    use qwen_proxy::redis::sessions::RedisStore;
    let redis = RedisServer::start().await;
    let client = std::sync::Arc::new(redis.client());
    let store = RedisStore::new(client, Duration::from_secs(60));
    let ttl = Duration::from_millis(300);
    assert!(store.try_lock("chat", "me", ttl).await.unwrap());
    assert!(!store.try_lock("chat", "you", ttl).await.unwrap());
    store.unlock("chat", "you").await.unwrap();
    assert!(
        !store.try_lock("chat", "you", ttl).await.unwrap(),
        "only the owner releases"
    );
    // Renewal by the owner keeps it held past the first TTL.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(store.try_lock("chat", "me", ttl).await.unwrap());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !store.try_lock("chat", "you", ttl).await.unwrap(),
        "renewed"
    );
    // A holder that stops renewing (crashed) loses it when the TTL runs out.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(store.try_lock("chat", "you", ttl).await.unwrap());
    store.unlock("chat", "you").await.unwrap();
    assert!(store.try_lock("chat", "me", ttl).await.unwrap());
}
