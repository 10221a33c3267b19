//! A real nginx with `deploy/nginx.conf` (ports templated) in front of the proxy and the
//! simulator: chunks arrive incrementally through nginx — the first content chunk reaches
//! the client while the upstream generation is still running — and the stream is complete.

// Tests and benches: a failed unwrap is a failure with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use serde_json::json;
use support::{expected_answer, parse_sse, start_nginx, summarize, Harness};

#[tokio::test]
async fn chunks_stream_incrementally_through_nginx() {
    let h = Harness::start().await;
    let nginx = start_nginx(&[h.addr]).await;
    let body = json!({"model": "qwen3.7-plus", "stream": true,
                      "messages": [{"role": "user", "content": "through nginx @@sim:stall=1500"}]});
    let req = Request::post(format!(
        "http://127.0.0.1:{}/v1/chat/completions",
        nginx.port
    ))
    .header("content-type", "application/json")
    .body(Full::new(Bytes::from(body.to_string())))
    .unwrap();
    let rsp = h.send(req).await;
    assert_eq!(rsp.status(), 200);
    assert_eq!(rsp.headers()["content-type"], "text/event-stream");
    assert!(
        rsp.headers().contains_key("x-request-id"),
        "nginx's $request_id is passed through"
    );
    let mut body = rsp.into_body();
    let mut received = Vec::new();
    // Read until the first content chunk has arrived…
    while !String::from_utf8_lossy(&received).contains("\"content\":\"Simu") {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("a chunk arrives")
            .expect("stream open")
            .unwrap();
        if let Some(d) = frame.data_ref() {
            received.extend_from_slice(d);
        }
    }
    // …while the upstream is still generating (stalled after its first frame): nginx did
    // not buffer the response.
    let stats = h.sim_stats().await;
    assert_eq!(
        stats["in_flight"], 1,
        "first chunk reached the client before the upstream finished: {stats}"
    );
    received.extend_from_slice(&body.collect().await.unwrap().to_bytes());
    let s = summarize(&parse_sse(&received));
    assert_eq!(s.content, expected_answer("through nginx"));
    assert_eq!(s.finish_reason.as_deref(), Some("stop"));
}

#[tokio::test]
async fn trust_proxy_uses_the_address_nginx_saw() {
    let h = Harness::start_with(
        &[
            ("TRUST_PROXY", "true"),
            ("RATE_LIMIT_RPM", "60"),
            ("RATE_LIMIT_BURST", "1"),
        ],
        Default::default(),
    )
    .await;
    let nginx = start_nginx(&[h.addr]).await;
    let send = |xff: &'static str| {
        let body = json!({"model": "qwen3.7-plus", "messages": [{"role": "user", "content": "x"}]});
        Request::post(format!(
            "http://127.0.0.1:{}/v1/chat/completions",
            nginx.port
        ))
        .header("content-type", "application/json")
        .header("x-forwarded-for", xff)
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
    };
    // A client forging X-Forwarded-For still lands in the bucket of its real address.
    assert_eq!(h.send(send("1.1.1.1")).await.status(), 200);
    assert_eq!(h.send(send("2.2.2.2")).await.status(), 429);
}

/// nginx reloaded (`nginx -s reload`, as a configuration change or a certificate renewal
/// does) while streams run: every stream already going finishes whole, and new requests go
/// on through the new workers.
#[tokio::test]
async fn streams_survive_an_nginx_reload() {
    let h = Harness::start().await;
    let nginx = start_nginx(&[h.addr]).await;
    let url = format!("http://127.0.0.1:{}/v1/chat/completions", nginx.port);
    let open = |i: usize| {
        let body = json!({"model": "qwen3.7-plus", "stream": true,
            "messages": [{"role": "user", "content": format!("reload {i} @@sim:long=300 @@sim:delay=15")}]});
        Request::post(&url)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap()
    };
    let mut bodies = Vec::new();
    for i in 0..4 {
        let rsp = h.send(open(i)).await;
        assert_eq!(rsp.status(), 200);
        let mut body = rsp.into_body();
        // Each stream has begun before the reload.
        let first = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("a chunk arrives")
            .expect("stream open")
            .unwrap();
        bodies.push((first.into_data().unwrap_or_default(), body));
    }
    let stats = h.sim_stats().await;
    assert_eq!(
        stats["in_flight"], 4,
        "the streams run through the reload: {stats}"
    );
    nginx.reload();
    let after = h.send(open(9)).await;
    assert_eq!(after.status(), 200, "a request after the reload");
    let expected = qwen_proxy::sim::answer::long_answer(300);
    for (i, (first, body)) in bodies.into_iter().enumerate() {
        let mut all = first.to_vec();
        all.extend_from_slice(&body.collect().await.unwrap().to_bytes());
        let s = summarize(&parse_sse(&all));
        assert!(s.error.is_none(), "stream {i}: {:?}", s.error);
        assert_eq!(s.finish_reason.as_deref(), Some("stop"), "stream {i}");
        assert_eq!(s.content, expected, "stream {i} whole");
    }
    let rest = after.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(summarize(&parse_sse(&rest)).content, expected);
}
