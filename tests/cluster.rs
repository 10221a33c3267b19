//! Two `qwen-proxy` processes sharing a real Redis behind a real nginx (round-robin), all
//! on free loopback ports: a conversation alternating instances continues one upstream
//! chat, and killing and restarting an instance mid-conversation loses nothing.

// Tests and benches: a failed unwrap is a failure with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use support::process::{self, Running};
use support::{expected_answer, start_nginx, Harness, RedisServer};

use qwen_proxy::sim::SimConfig;

/// A proxy process; restarted on the port it first bound (so nginx's upstream list stays
/// valid across restarts).
fn instance(port: u16, sim: &str, redis: &str) -> Running {
    let port = port.to_string();
    let mut cmd = process::command(
        &process::serve_args(&port),
        &[
            ("QWEN_BASE_URL", sim),
            ("QWEN_COOKIES", "token=cluster-token"),
            ("REDIS_URL", redis),
            ("RETRY_INITIAL_DELAY", "10"),
            ("RETRY_MAX_DELAY", "40"),
            ("SHUTDOWN_GRACE", "0"),
        ],
    );
    cmd.stderr(Stdio::null());
    process::start(cmd)
}

fn requests_served(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("http_requests_total{") && l.contains("/v1/chat/completions"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversation_survives_alternating_and_restarted_instances() {
    let redis = RedisServer::start().await;
    let sim_config = SimConfig {
        linger: Duration::from_millis(20),
        ..SimConfig::default()
    };
    // The harness provides the simulator and an HTTP client; its in-process proxy is unused.
    let h = Harness::start_with(&[], sim_config).await;
    let sim_url = h.sim.base_url();
    let a = instance(0, &sim_url, &redis.url());
    let mut b = instance(0, &sim_url, &redis.url());
    let p2 = b.addr.port();
    let nginx = start_nginx(&[a.addr, b.addr]).await;
    let through_nginx = SocketAddr::from(([127, 0, 0, 1], nginx.port));

    let mut messages: Vec<Value> = vec![json!({"role": "system", "content": "You are terse."})];
    for k in 0..8 {
        if k == 4 {
            // Mid-conversation: one instance dies and comes back on the same port.
            b.kill();
            b = instance(p2, &sim_url, &redis.url());
        }
        let q = format!("message {k}");
        messages.push(json!({"role": "user", "content": q}));
        let r = h
            .chat_at(
                through_nginx,
                json!({"model": "qwen3.7-plus", "messages": messages}),
            )
            .await;
        assert_eq!(
            r.status,
            200,
            "turn {k}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let answer = r.json()["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(answer, expected_answer(&q));
        messages.push(json!({"role": "assistant", "content": answer}));
    }
    let stats = h.sim_stats().await;
    assert_eq!(
        stats["chats_used"], 1,
        "all eight turns continued one upstream chat: {stats}"
    );
    // The one chat with turns (the instances also make chats ahead, which stay unused).
    let turns = stats["chats"]
        .as_object()
        .unwrap()
        .values()
        .filter_map(|c| c["turns"].as_array().filter(|t| !t.is_empty()))
        .next()
        .unwrap()
        .clone();
    assert_eq!(turns.len(), 8);
    for k in 1..8 {
        assert_eq!(turns[k]["parent_id"], turns[k - 1]["response_id"]);
    }
    // Both instances served turns (nginx round-robin).
    let served_a =
        requests_served(std::str::from_utf8(&h.get_at(a.addr, "/metrics").await.body).unwrap());
    let served_b =
        requests_served(std::str::from_utf8(&h.get_at(b.addr, "/metrics").await.body).unwrap());
    assert!(served_a > 0 && served_b > 0, "a={served_a} b={served_b}");
}
