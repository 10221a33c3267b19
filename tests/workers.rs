//! The binary on several worker threads (`WORKERS`, `src/workers.rs`): every worker accepts
//! from its socket on the port and serves what it accepts whole, a shutdown lets the streams
//! open on every worker finish before the process exits, and a second proxy cannot take the
//! port. `WORK_STEALING=true` keeps the one multi-threaded runtime.

// Tests and benches: a failed unwrap is a failure with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use futures::future::join_all;
use http_body_util::Full;
use hyper::Request;
use serde_json::json;
use support::process::{self, Running};
use support::{expected_answer, summarize, Harness};

use qwen_proxy::sim::{SimConfig, SimTiming};

fn proxy(sim: &str, env: &[(&str, &str)]) -> Running {
    let mut vars = vec![
        ("QWEN_BASE_URL", sim),
        ("QWEN_COOKIES", "token=workers-token"),
        ("CONVERSATION_MODE", "stateless"),
        ("CHAT_POOL_SIZE", "0"),
    ];
    vars.extend_from_slice(env);
    let mut cmd = process::command(&process::serve_args("0"), &vars);
    cmd.stderr(Stdio::null());
    process::start(cmd)
}

/// `http_connections_accepted_total` per worker label.
fn accepted_per_worker(metrics: &str) -> BTreeMap<String, u64> {
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix("http_connections_accepted_total{worker=\""))
        .filter_map(|rest| {
            let (worker, value) = rest.split_once("\"} ")?;
            Some((worker.to_owned(), value.trim().parse().ok()?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_worker_accepts_and_serves_whole_answers() {
    let h = Harness::start_with(&[], SimConfig::default()).await;
    let p = proxy(&h.sim.base_url(), &[("WORKERS", "3")]);

    // Bursts of concurrent requests, each on a new connection (`connection: close`), until
    // every worker has accepted some: the kernel picks a worker by the connection's address.
    let mut accepted = BTreeMap::new();
    for round in 0..20 {
        let replies = join_all((0..24).map(|i| {
            let prompt = format!("round {round} request {i}");
            let stream = i % 2 == 0;
            let h = &h;
            async move {
                let body = json!({
                    "model": "qwen3.7-plus",
                    "stream": stream,
                    "messages": [{"role": "user", "content": prompt}],
                });
                let req = Request::post(format!("http://{}/v1/chat/completions", p.addr))
                    .header("content-type", "application/json")
                    .header("connection", "close")
                    .body(Full::new(Bytes::from(body.to_string())))
                    .unwrap();
                (prompt, stream, Harness::read(h.send(req).await).await)
            }
        }))
        .await;
        for (prompt, stream, reply) in replies {
            assert_eq!(reply.status, 200, "{prompt}");
            let answer = if stream {
                let s = summarize(&reply.events());
                assert_eq!(s.finish_reason.as_deref(), Some("stop"), "{prompt}");
                s.content
            } else {
                reply.message_content()
            };
            assert_eq!(answer, expected_answer(&prompt), "{prompt}");
        }
        let metrics = h.get_at(p.addr, "/metrics").await;
        accepted = accepted_per_worker(std::str::from_utf8(&metrics.body).unwrap());
        if accepted.len() == 3 && accepted.values().all(|n| *n > 0) {
            break;
        }
    }
    assert_eq!(
        accepted.keys().map(String::as_str).collect::<Vec<_>>(),
        ["0", "1", "2"],
        "every worker accepted connections: {accepted:?}"
    );
    assert!(accepted.values().all(|n| *n > 0), "{accepted:?}");

    // One thread per worker besides the main one, named for `top -H`.
    #[cfg(target_os = "linux")]
    {
        let names: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", p.pid()))
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .map(|n| n.trim().to_owned())
            .collect();
        for worker in ["qwen-worker-1", "qwen-worker-2"] {
            assert!(names.iter().any(|n| n == worker), "{worker} in {names:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_lets_the_streams_on_every_worker_finish() {
    // Answers of 20 frames 50 ms apart: a second to stream each.
    let sim_config = SimConfig {
        timing: SimTiming {
            frame_delay: Duration::from_millis(50),
            ..SimTiming::default()
        },
        ..SimConfig::default()
    };
    let h = Harness::start_with(&[], sim_config).await;
    let mut p = proxy(
        &h.sim.base_url(),
        &[("WORKERS", "2"), ("SHUTDOWN_GRACE", "30000")],
    );
    let addr = p.addr;
    let streams = (0..16).map(|i| {
        let prompt = format!("stream {i} @@sim:long=80");
        let h = &h;
        async move {
            let body = json!({
                "model": "qwen3.7-plus",
                "stream": true,
                "messages": [{"role": "user", "content": prompt}],
            });
            h.chat_at(addr, body).await
        }
    });
    let stop = async {
        // Mid-answer for every stream, once both workers hold some of them (16 connections
        // spread by the kernel; the scrape is one more).
        tokio::time::sleep(Duration::from_millis(300)).await;
        let metrics = h.get_at(addr, "/metrics").await;
        let accepted = accepted_per_worker(std::str::from_utf8(&metrics.body).unwrap());
        p.request_stop();
        accepted
    };
    let (replies, accepted) = tokio::join!(join_all(streams), stop);
    assert!(
        accepted.len() == 2 && accepted.values().all(|n| *n > 0),
        "streams on both workers: {accepted:?}"
    );
    for (i, reply) in replies.iter().enumerate() {
        assert_eq!(reply.status, 200, "stream {i}");
        let s = summarize(&reply.events());
        assert_eq!(s.finish_reason.as_deref(), Some("stop"), "stream {i}");
        assert_eq!(s.content.chars().count(), 80, "stream {i}: {}", s.content);
    }
    let status = tokio::task::block_in_place(|| p.wait_exit(Duration::from_secs(10)));
    assert!(
        status.is_some_and(|s| s.success()),
        "exits cleanly once the streams have ended: {status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_stealing_serves_on_one_runtime() {
    let h = Harness::start_with(&[], SimConfig::default()).await;
    let p = proxy(
        &h.sim.base_url(),
        &[("WORKERS", "2"), ("WORK_STEALING", "true")],
    );
    let prompt = "stealing";
    let reply = h
        .chat_at(
            p.addr,
            json!({"model": "qwen3.7-plus", "messages": [{"role": "user", "content": prompt}]}),
        )
        .await;
    assert_eq!(reply.message_content(), expected_answer(prompt));
    let metrics = h.get_at(p.addr, "/metrics").await;
    let accepted = accepted_per_worker(std::str::from_utf8(&metrics.body).unwrap());
    // Each accept loop makes its worker's series at start (at 0), so a second loop would
    // show however few connections it got.
    assert_eq!(
        accepted.keys().map(String::as_str).collect::<Vec<_>>(),
        ["0"],
        "one runtime, one accept loop: {accepted:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_proxy_on_the_same_port_is_refused() {
    let h = Harness::start_with(&[], SimConfig::default()).await;
    let first = proxy(&h.sim.base_url(), &[("WORKERS", "2")]);
    let port = first.addr.port().to_string();
    // The same port, each with sockets of their own (SO_REUSEPORT): it must not join.
    for workers in ["2", "1"] {
        let out = tokio::task::block_in_place(|| {
            process::run(
                &process::serve_args(&port),
                &[
                    ("QWEN_BASE_URL", h.sim.base_url().as_str()),
                    ("QWEN_COOKIES", "token=workers-token"),
                    ("WORKERS", workers),
                ],
            )
        });
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "WORKERS={workers}: {stderr}");
        assert!(
            stderr.contains(&format!("cannot listen on 127.0.0.1:{port}")),
            "WORKERS={workers}: {stderr}"
        );
    }
    // The first still serves.
    let reply = h
        .chat_at(
            first.addr,
            json!({"model": "qwen3.7-plus", "messages": [{"role": "user", "content": "still here"}]}),
        )
        .await;
    assert_eq!(reply.message_content(), expected_answer("still here"));
}
