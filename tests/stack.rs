//! The whole middleware stack over real HTTP: request ids, rate limiting, load shedding,
//! metrics (checked by `promtool`), CORS, and graceful shutdown.

// Tests and benches: a failed unwrap is a failure with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use serde_json::json;
use support::{expected_answer, summarize, Harness};

const MODEL: &str = "qwen3.7-plus";

fn chat_body(prompt: &str, stream: bool) -> String {
    json!({"model": MODEL, "stream": stream, "messages": [{"role": "user", "content": prompt}]})
        .to_string()
}

#[tokio::test]
async fn request_id_is_returned_and_minted() {
    let h = Harness::start().await;
    let r = h
        .post_raw(
            "/v1/chat/completions",
            "application/json",
            chat_body("hi", false),
            &[("x-request-id", "my-id-1")],
        )
        .await;
    assert_eq!(r.headers["x-request-id"], "my-id-1");
    let r = h.health().await;
    assert_eq!(r.headers["x-request-id"].len(), 36);
    // Also on errors produced by inner layers.
    let r = h
        .post_raw(
            "/v1/chat/completions",
            "text/plain",
            "x",
            &[("x-request-id", "err-id")],
        )
        .await;
    assert_eq!(
        (
            r.status.as_u16(),
            r.headers["x-request-id"].to_str().unwrap()
        ),
        (415, "err-id")
    );
}

#[tokio::test]
async fn rate_limit_rejects_at_once_with_headers() {
    let h = Harness::start_with(
        &[("RATE_LIMIT_RPM", "60"), ("RATE_LIMIT_BURST", "2")],
        Default::default(),
    )
    .await;
    for remaining in ["1", "0"] {
        let r = h.ask(MODEL, "hi", false).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.headers["x-ratelimit-limit"], "2");
        assert_eq!(r.headers["x-ratelimit-remaining"], remaining);
        assert_eq!(r.headers["x-ratelimit-limit-requests"], "2");
    }
    let r = h.ask(MODEL, "hi", false).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.error()["type"], "rate_limit_error");
    assert_eq!(r.error()["code"], "rate_limit_exceeded");
    assert_eq!(r.headers["retry-after"], "1");
    assert_eq!(r.headers["x-ratelimit-remaining"], "0");
    // /health is not limited; the upstream saw only the two allowed requests.
    assert_eq!(h.health().await.status, 200);
    assert_eq!(h.sim_stats().await["completion_requests"], 2);
}

#[tokio::test]
async fn spoofed_forwarded_for_does_not_bypass_the_limit() {
    let h = Harness::start_with(
        &[("RATE_LIMIT_RPM", "60"), ("RATE_LIMIT_BURST", "1")],
        Default::default(),
    )
    .await;
    for (ip, status) in [("1.1.1.1", 200), ("2.2.2.2", 429)] {
        let r = h
            .post_raw(
                "/v1/chat/completions",
                "application/json",
                chat_body("hi", false),
                &[("x-forwarded-for", ip)],
            )
            .await;
        assert_eq!(r.status, status, "{ip}");
    }
}

#[tokio::test]
async fn load_is_shed_past_max_concurrent_streams_and_the_permit_follows_the_body() {
    let h = Harness::start_with(&[("MAX_CONCURRENT_STREAMS", "1")], Default::default()).await;
    let req = Request::post(h.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(chat_body(
            "slow @@sim:delay=30",
            true,
        ))))
        .unwrap();
    let open = h.send(req).await;
    assert_eq!(open.status(), 200);
    // Headers are out, the stream is open: the one slot is taken.
    let r = h.ask(MODEL, "second", false).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.error()["code"], "server_overloaded");
    assert_eq!(r.headers["retry-after"], "1");
    // Finishing the stream frees the slot.
    let body = open.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        summarize(&support::parse_sse(&body)).content,
        expected_answer("slow")
    );
    assert_eq!(h.ask(MODEL, "third", false).await.status, 200);
}

async fn scrape(h: &Harness, token: Option<&str>) -> (u16, String) {
    let mut b = Request::get(h.url("/metrics"));
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    let r = Harness::read(h.send(b.body(Full::new(Bytes::new())).unwrap()).await).await;
    (
        r.status.as_u16(),
        String::from_utf8(r.body.to_vec()).unwrap(),
    )
}

fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample `{prefix}` in:\n{text}"))
}

#[tokio::test]
async fn metrics_after_traffic_pass_promtool() {
    let h = Harness::start().await;
    h.ask(MODEL, "one", true).await;
    h.ask("qwen3.7-plus-thinking", "two", false).await;
    h.ask(MODEL, "q @@sim:empty", true).await;
    h.ask(MODEL, "q @@sim:internal_error", true).await;
    // A cancelled stream counts too.
    let req = Request::post(h.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(chat_body(
            "x @@sim:long=100000 @@sim:delay=20",
            true,
        ))))
        .unwrap();
    let mut body = h.send(req).await.into_body();
    body.frame().await.unwrap().unwrap();
    drop(body);
    h.wait_for_stats(|s| s["aborted_streams"] == 1).await;
    // Last: a refused token takes the only account out of rotation.
    h.ask(MODEL, "q @@sim:unauthorized", false).await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let text = loop {
        let (_, text) = scrape(&h, None).await;
        if text.contains("chat_streams_total{api=\"chat\",outcome=\"cancelled\"} 1")
            || tokio::time::Instant::now() > deadline
        {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        metric(
            &text,
            "http_requests_total{method=\"POST\",route=\"/v1/chat/completions\",status=\"200\"}"
        ),
        4.0
    );
    assert_eq!(
        metric(
            &text,
            "http_requests_total{method=\"POST\",route=\"/v1/chat/completions\",status=\"401\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "chat_streams_total{api=\"chat\",outcome=\"completed\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(&text, "chat_streams_total{api=\"chat\",outcome=\"error\"}"),
        1.0
    );
    // The accounts: the pool of one, now invalid; its turns counted by name.
    assert_eq!(metric(&text, "upstream_accounts{state=\"invalid\"}"), 1.0);
    assert_eq!(metric(&text, "upstream_accounts{state=\"ready\"}"), 0.0);
    assert_eq!(
        metric(
            &text,
            "upstream_account_cooldowns_total{reason=\"invalid\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "chat_streams_total{api=\"chat\",outcome=\"cancelled\"}"
        ),
        1.0
    );
    assert_eq!(metric(&text, "chat_active_streams"), 0.0);
    assert_eq!(
        metric(&text, "upstream_errors_total{class=\"auth_failed\"}"),
        1.0
    );
    assert_eq!(
        metric(&text, "upstream_errors_total{class=\"empty_stream\"}"),
        1.0
    );
    assert_eq!(
        metric(&text, "upstream_retries_total"),
        1.0,
        "an empty stream retried once: the second came back the same"
    );
    assert!(
        metric(
            &text,
            "chat_tokens_total{api=\"chat\",kind=\"reasoning\",model=\"qwen3.7-plus\"}"
        ) > 0.0
    );
    assert_eq!(
        metric(
            &text,
            "chat_time_to_first_token_seconds_count{api=\"chat\",model=\"qwen3.7-plus\",stream=\"true\"}"
        ),
        3.0
    );
    assert!(
        metric(
            &text,
            "upstream_requests_total{endpoint=\"chats_new\",outcome=\"ok\"}"
        ) >= 5.0
    );
    assert!(text.contains("process_resident_memory_bytes"));

    let promtool = std::env::var("PROMTOOL").unwrap_or_else(|_| "promtool".into());
    let mut child = std::process::Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("`{promtool}` is required (Debian package `prometheus`; scripts/test.sh installs it): {e}"));
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn metrics_token_protects_the_scrape() {
    let h = Harness::start_with(&[("METRICS_TOKEN", "scrape-secret")], Default::default()).await;
    assert_eq!(scrape(&h, None).await.0, 401);
    assert_eq!(scrape(&h, Some("wrong")).await.0, 401);
    let (status, text) = scrape(&h, Some("scrape-secret")).await;
    assert_eq!(status, 200);
    assert!(text.contains("http_requests_total"));
}

#[tokio::test]
async fn cors_when_enabled() {
    let h = Harness::start_with(
        &[
            ("CORS_ENABLED", "true"),
            ("CORS_ORIGIN", "https://app.example"),
        ],
        Default::default(),
    )
    .await;
    let req = Request::builder()
        .method("OPTIONS")
        .uri(h.url("/v1/chat/completions"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "content-type,authorization",
        )
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = Harness::read(h.send(req).await).await;
    assert!(r.status.is_success());
    assert_eq!(
        r.headers["access-control-allow-origin"],
        "https://app.example"
    );
    let r = h
        .post_raw(
            "/v1/chat/completions",
            "application/json",
            chat_body("hi", true),
            &[("origin", "https://app.example")],
        )
        .await;
    assert_eq!(
        r.headers["access-control-allow-origin"],
        "https://app.example"
    );
    // Streams are never compressed.
    assert!(r.headers.get("content-encoding").is_none());
}

#[tokio::test]
async fn graceful_shutdown_drains_then_ends_streams_in_band() {
    let mut h = Harness::start_with(&[("SHUTDOWN_GRACE", "300")], Default::default()).await;
    let req = Request::post(h.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(chat_body(
            "long @@sim:long=100000 @@sim:delay=20",
            true,
        ))))
        .unwrap();
    let rsp = h.send(req).await;
    assert_eq!(rsp.status(), 200);
    h.begin_shutdown();
    // During the grace period the listener still answers, on new connections too: health
    // probes see `draining`, new completions are sent elsewhere.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let health = raw_request(
        h.addr,
        "GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(health.starts_with("HTTP/1.1 503"), "{health}");
    assert!(health.contains(r#""status":"draining""#), "{health}");
    let body = chat_body("new", false);
    let refused = raw_request(
        h.addr,
        &format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .await;
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(refused.contains("retry-after: 1"), "{refused}");
    assert!(
        refused.contains(r#""code":"server_shutting_down""#),
        "{refused}"
    );
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    let s = summarize(&support::parse_sse(&body));
    assert!(
        !s.content.is_empty(),
        "the stream kept going during the grace period"
    );
    assert_eq!(s.error.unwrap()["code"], "server_shutting_down");
    assert!(h.state.is_draining());
    h.wait_stopped().await;
    // New connections are refused once the server stopped.
    assert!(tokio::net::TcpStream::connect(h.addr).await.is_err());
}

/// One request on a new connection; the whole reply.
async fn raw_request(addr: std::net::SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("still accepting");
    s.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("answered")
        .unwrap();
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test]
async fn shutdown_without_open_streams_is_immediate() {
    let mut h = Harness::start_with(&[("SHUTDOWN_GRACE", "30000")], Default::default()).await;
    assert_eq!(h.ask(MODEL, "hi", false).await.status, 200);
    let start = tokio::time::Instant::now();
    h.begin_shutdown();
    h.wait_stopped().await;
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn slow_headers_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = Harness::start_with(&[("HEADER_READ_TIMEOUT", "200")], Default::default()).await;
    let mut s = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    // A slowloris client: the request line and one header, then nothing.
    s.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    let closed = matches!(read, Ok(Ok(_)) | Ok(Err(_)));
    assert!(
        closed,
        "the server closes a connection whose headers do not arrive in time"
    );
    // A normal request still works.
    assert_eq!(h.health().await.status, 200);
}
