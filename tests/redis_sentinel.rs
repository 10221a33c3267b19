//! Redis behind Sentinel (`REDIS_SENTINEL_MASTER`): a real master, its replica and three
//! sentinels on loopback. The master is killed while requests run on two proxy instances;
//! the sentinels promote the replica, and the instances find the new master by
//! themselves: no request failed meanwhile, the conversation begun before goes on in its
//! chat, new conversations are shared again, and so are rate-limit buckets.

// Tests and benches: a failed unwrap is a failure with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use serde_json::{json, Value};
use support::redis::{SentinelSetup, SENTINEL_MASTER};
use support::{assistant, quick_sim, user, Harness};
use tokio::time::{Duration, Instant};

const MODEL: &str = "qwen3.7-plus";

async fn answer(h: &Harness, addr: SocketAddr, messages: &[Value]) -> String {
    h.chat_at(addr, json!({"model": MODEL, "messages": messages}))
        .await
        .message_content()
}

/// A chat request with an API key: its status.
async fn keyed(h: &Harness, addr: SocketAddr, key: &str) -> u16 {
    let body = json!({"model": MODEL, "messages": [user("limited")]});
    let req = Request::post(format!("http://{addr}/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {key}"))
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    Harness::read(h.send(req).await).await.status.as_u16()
}

async fn wait_for<F, Fut>(what: &str, within: Duration, mut ok: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !ok().await {
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_with_traffic_running_loses_nothing_shared() {
    let mut setup = SentinelSetup::start().await;
    let url = setup.url();
    let env = [
        ("REDIS_URL", url.as_str()),
        ("REDIS_SENTINEL_MASTER", SENTINEL_MASTER),
    ];
    let h = Harness::start_with(&env, quick_sim()).await;
    let b = h.another_proxy(&env).await;
    let limited = [
        ("REDIS_URL", url.as_str()),
        ("REDIS_SENTINEL_MASTER", SENTINEL_MASTER),
        ("API_KEYS", "before-key,after-key"),
        // One token a minute back: a bucket emptied stays empty through the test.
        ("RATE_LIMIT_RPM", "1"),
        ("RATE_LIMIT_BURST", "2"),
    ];
    let p = h.another_proxy(&limited).await;
    let q = h.another_proxy(&limited).await;

    // Before: a conversation over both instances, one chat; a shared bucket.
    let mut messages = vec![user("before")];
    for (k, addr) in [h.addr, b.addr].into_iter().enumerate() {
        let a = answer(&h, addr, &messages).await;
        messages.push(assistant(&a));
        messages.push(user(&format!("turn {}", k + 2)));
    }
    assert_eq!(h.sim_stats().await["chats_created"], 1);
    assert_eq!(keyed(&h, p.addr, "before-key").await, 200);
    assert_eq!(keyed(&h, q.addr, "before-key").await, 200);
    assert_eq!(keyed(&h, p.addr, "before-key").await, 429);
    assert!(setup.master.keys().iter().any(|k| k.starts_with("qp:s:")));
    let old_master = setup.master.port;
    // The replica has what the master had (replication is asynchronous).
    let setup_ref = &setup;
    wait_for(
        "the replica in step",
        Duration::from_secs(5),
        || async move { setup_ref.replica.keys().len() == setup_ref.master.keys().len() },
    )
    .await;

    // Traffic on both instances, fresh one-turn conversations, while the master dies.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic =
        {
            let (stop, addrs) = (stop.clone(), [h.addr, b.addr]);
            let client = h.client.clone();
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) && i < 2_000 {
                    let prompt = format!("during {i}");
                    let body = json!({"model": MODEL, "messages": [user(&prompt)]});
                    let req = Request::post(format!("http://{}/v1/chat/completions", addrs[i % 2]))
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from(body.to_string())))
                        .unwrap();
                    let status =
                        match tokio::time::timeout(Duration::from_secs(10), client.request(req))
                            .await
                        {
                            Ok(Ok(r)) => r.status().as_u16(),
                            _ => 0,
                        };
                    statuses.push(status);
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                statuses
            })
        };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let killed = Instant::now();
    setup.master.stop();
    let setup_ref = &setup;
    let promoted = wait_for(
        "the replica promoted",
        Duration::from_secs(30),
        || async move { setup_ref.master_port() == setup_ref.replica.port },
    )
    .await;
    let (hh, addrs) = (&h, [h.addr, b.addr]);
    wait_for(
        "both instances on the new master",
        Duration::from_secs(15),
        || async move {
            for addr in addrs {
                let health = hh.health_at(addr).await.json();
                if health["session_store"]["status"] != "ok" {
                    return false;
                }
            }
            true
        },
    )
    .await;
    let back = killed.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let statuses = traffic.await.unwrap();
    let failed = statuses.iter().filter(|s| **s != 200).count();
    eprintln!(
        "failover: replica promoted {promoted:?} after the kill, both instances on it after \
         {back:?}; {} requests meanwhile, {failed} failed",
        statuses.len()
    );
    assert_eq!(failed, 0, "every request answered: {statuses:?}");
    assert!(statuses.len() >= 20, "traffic ran: {}", statuses.len());
    assert_ne!(setup.master_port(), old_master);

    // After: the conversation goes on in its chat, on both instances.
    let chats_before = h.sim_stats().await["chats_created"].as_u64().unwrap();
    for addr in [b.addr, h.addr] {
        let a = answer(&h, addr, &messages).await;
        messages.push(assistant(&a));
        messages.push(user("and on"));
    }
    // A new conversation over both instances: one chat.
    let mut fresh = vec![user("after")];
    for addr in [h.addr, b.addr] {
        let a = answer(&h, addr, &fresh).await;
        fresh.push(assistant(&a));
        fresh.push(user("next"));
    }
    let chats_after = h.sim_stats().await["chats_created"].as_u64().unwrap();
    assert_eq!(
        chats_after - chats_before,
        1,
        "the old conversation kept its chat; the new one has one"
    );
    // Buckets: shared again, and the one emptied before the failover is still empty.
    assert_eq!(keyed(&h, p.addr, "after-key").await, 200);
    assert_eq!(keyed(&h, q.addr, "after-key").await, 200);
    assert_eq!(keyed(&h, p.addr, "after-key").await, 429);
    assert_eq!(keyed(&h, q.addr, "before-key").await, 429);
}
