//! Redis Cluster (`REDIS_CLUSTER=true`): three real `redis-server` masters on loopback,
//! joined by `redis-cli --cluster create`. Two proxy instances given the nodes as seeds
//! share a conversation, a chat's lock, rate-limit buckets and an operator's disable; the
//! keys spread over the nodes, and each account's keys (one hash tag) stay on one node.

// Tests and benches: a failed unwrap is a failure with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use serde_json::{json, Value};
use support::redis::RedisCluster;
use support::{
    assistant, expected_answer, quick_sim, user, AccountsFile, Harness, Reply, ADMIN_KEY,
};
use tokio::time::{Duration, Instant};

const MODEL: &str = "qwen3.7-plus";

async fn answer(h: &Harness, addr: SocketAddr, messages: &[Value]) -> String {
    h.chat_at(addr, json!({"model": MODEL, "messages": messages}))
        .await
        .message_content()
}

async fn admin_post(h: &Harness, addr: SocketAddr, path: &str) -> Reply {
    let req = Request::post(format!("http://{addr}{path}"))
        .header("authorization", format!("Bearer {ADMIN_KEY}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    Harness::read(h.send(req).await).await
}

async fn account_state(h: &Harness, addr: SocketAddr, name: &str) -> String {
    let health = h.health_at(addr).await.json();
    health["accounts"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == name)
        .map(|a| a["state"].as_str().unwrap().to_owned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_everything_through_a_cluster() {
    let cluster = RedisCluster::start().await;
    let url = cluster.url();
    let accounts = AccountsFile::new(&["a", "b"]);
    let file = &accounts.path;
    let env = [
        ("REDIS_URL", url.as_str()),
        ("REDIS_CLUSTER", "true"),
        ("QWEN_ACCOUNTS_FILE", file.as_str()),
    ];
    let h = Harness::start_with(&env, quick_sim()).await;
    let b = h.another_proxy(&env).await;

    // A conversation alternating instances continues one chat.
    let mut messages = Vec::new();
    for k in 0..4 {
        let q = format!("turn {k}");
        messages.push(user(&q));
        let a = answer(&h, [h.addr, b.addr][k % 2], &messages).await;
        assert_eq!(a, expected_answer(&q));
        messages.push(assistant(&a));
    }
    assert_eq!(h.sim_stats().await["chats_created"], 1);

    // Four continuations of one chat at once, on both instances: the chat's lock (a
    // script) serialises them on the one chat.
    messages.push(user("together @@sim:delay=5"));
    let runs = (0..4).map(|i| {
        let (h, messages) = (&h, messages.clone());
        let addr = [h.addr, b.addr][i % 2];
        async move { answer(h, addr, &messages).await }
    });
    for a in futures::future::join_all(runs).await {
        assert_eq!(a, expected_answer("together"));
    }
    assert_eq!(h.sim_stats().await["chats_created"], 1, "one chat, locked");

    // Rate-limit buckets (a script) are shared.
    let limited = [
        ("REDIS_URL", url.as_str()),
        ("REDIS_CLUSTER", "true"),
        ("RATE_LIMIT_RPM", "60"),
        ("RATE_LIMIT_BURST", "2"),
    ];
    let p = h.another_proxy(&limited).await;
    let q = h.another_proxy(&limited).await;
    let body = json!({"model": MODEL, "messages": [user("limited")]});
    assert_eq!(h.chat_at(p.addr, body.clone()).await.status, 200);
    assert_eq!(h.chat_at(q.addr, body.clone()).await.status, 200);
    assert_eq!(
        h.chat_at(p.addr, body).await.status,
        429,
        "the bucket is shared"
    );

    // An operator's disable (a script) reaches the other instance.
    assert_eq!(
        admin_post(&h, h.addr, "/admin/accounts/a/disable")
            .await
            .status,
        200
    );
    let deadline = Instant::now() + Duration::from_secs(12);
    while account_state(&h, b.addr, "a").await != "disabled" {
        assert!(Instant::now() < deadline, "the disable did not reach b");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for addr in [h.addr, b.addr] {
        let health = h.health_at(addr).await.json();
        assert_eq!(health["session_store"]["status"], "ok", "{health}");
    }

    // The keys spread over the nodes; an account's keys share a node (one slot).
    let per_node = cluster.keys_per_node();
    let holding = per_node.iter().filter(|keys| !keys.is_empty()).count();
    assert!(holding >= 2, "keys on {holding} node(s): {per_node:?}");
    let a_keys: Vec<usize> = per_node
        .iter()
        .enumerate()
        .filter(|(_, keys)| keys.iter().any(|k| k.starts_with("qp:acct:{a}:")))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(a_keys.len(), 1, "a's keys on one node: {per_node:?}");
    let on_it = &per_node[a_keys[0]];
    for what in ["health", "operator"] {
        assert!(
            on_it.contains(&format!("qp:acct:{{a}}:{what}")),
            "{what}: {per_node:?}"
        );
    }
}
