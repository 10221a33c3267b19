//! Logs: every line of a request carries its request id, `LOG_FORMAT=json` gives one JSON
//! object per line, and configured secrets (cookies, tokens, API keys) never appear, even
//! at `trace` level.

// Tests and benches: a failed unwrap is a failure with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::Write;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use serde_json::json;
use support::process::{self, Running};
use support::Harness;

const COOKIE_TOKEN: &str = "SECRET-COOKIE-TOKEN-4242";
const BX_UA: &str = "231!SECRET-BX-UA-777";
const UMID: &str = "SECRET-UMID-TOKEN-999";
const API_KEY: &str = "sk-SECRET-API-KEY-31337";
const METRICS_TOKEN: &str = "SECRET-METRICS-TOKEN-5150";

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn secrets_never_reach_the_logs_even_at_trace() {
    let capture = Capture::default();
    let writer = capture.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let cookies = format!("token={COOKIE_TOKEN}; cna=abc");
    let h = Harness::start_with(
        &[
            ("QWEN_COOKIES", &cookies),
            ("QWEN_BX_UA", BX_UA),
            ("QWEN_TOKEN", UMID),
            ("API_KEYS", API_KEY),
            ("METRICS_TOKEN", METRICS_TOKEN),
        ],
        Default::default(),
    )
    .await;
    let auth = format!("Bearer {API_KEY}");
    let body = |prompt: &str, stream: bool| {
        json!({"model": "qwen3.7-plus", "stream": stream, "messages": [{"role": "user", "content": prompt}]}).to_string()
    };
    for (prompt, stream) in [
        ("hello", true),
        ("hello", false),
        ("q @@sim:internal_error", true),
        ("q @@sim:empty", false),
        // Last: it takes the only account out of rotation.
        ("q @@sim:unauthorized", false),
    ] {
        let r = h
            .post_raw(
                "/v1/chat/completions",
                "application/json",
                body(prompt, stream),
                &[("authorization", &auth), ("x-request-id", "trace-me-1")],
            )
            .await;
        assert!(r.status.as_u16() > 0);
    }
    // A wrong key and a wrong metrics token are rejected (and not logged either).
    let r = h
        .post_raw(
            "/v1/chat/completions",
            "application/json",
            body("x", false),
            &[("authorization", "Bearer sk-wrong")],
        )
        .await;
    assert_eq!(r.status, 401);
    h.get("/metrics").await;

    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(logs.len() > 1000, "trace logs were captured");
    for secret in [COOKIE_TOKEN, BX_UA, UMID, API_KEY, METRICS_TOKEN] {
        assert!(
            !logs.contains(secret),
            "secret {secret} leaked into the logs"
        );
    }
    let tagged: Vec<&str> = logs.lines().filter(|l| l.contains("trace-me-1")).collect();
    assert!(
        tagged.iter().any(|l| l.contains("request finished")),
        "request lines carry the request id"
    );
    assert!(tagged.iter().any(|l| l.contains("stream finished")));
    assert!(
        tagged.iter().any(|l| l.contains("retrying upstream")),
        "retries are logged in the request span"
    );
}

/// `qwen-proxy --demo` with `env`, stderr captured.
fn spawn_demo(env: &[(&str, &str)]) -> (Running, String) {
    let mut vars = vec![("RETRY_INITIAL_DELAY", "10"), ("RETRY_MAX_DELAY", "40")];
    vars.extend_from_slice(env);
    let mut cmd = process::command(&["--demo", "--port", "0", "--env-file", "/dev/null"], &vars);
    cmd.stderr(Stdio::piped());
    let running = process::start(cmd);
    let addr = running.addr.to_string();
    (running, addr)
}

/// One raw HTTP/1.1 POST of `body` (curl-like); the whole reply.
fn post(addr: &str, body: &str, extra_headers: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n{extra_headers}content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reply = String::new();
    std::io::Read::read_to_string(&mut s, &mut reply).unwrap();
    reply
}

/// Stop the process; its stderr.
fn logs_of(running: Running) -> String {
    running.stop_and_read_stderr()
}

#[test]
fn json_log_format_is_one_object_per_line() {
    let (child, addr) = spawn_demo(&[
        ("LOG_FORMAT", "json"),
        ("LOG_LEVEL", "debug"),
        ("QWEN_BX_UA", BX_UA),
        ("API_KEYS", API_KEY),
    ]);
    let auth = format!("authorization: Bearer {API_KEY}\r\n");
    let ok = json!({"model": "qwen3.7-plus", "messages": [{"role": "user", "content": "hi"}]});
    let reply = post(&addr, &ok.to_string(), &auth);
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    // Errors of each kind are logged too.
    let missing =
        json!({"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]});
    assert!(post(&addr, &missing.to_string(), &auth).starts_with("HTTP/1.1 404"));
    let quota = json!({"model": "qwen3.7-plus", "messages": [{"role": "user", "content": "q @@sim:rate_limited=2"}]});
    assert!(post(&addr, &quota.to_string(), &auth).starts_with("HTTP/1.1 429"));
    let logs = logs_of(child);
    let mut objects = 0;
    for l in logs.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v.get("level").is_some() && v.get("fields").is_some(), "{l}");
        // serde_json keeps the last of duplicate keys: count them in the raw line.
        assert!(
            l.matches("\"message\":").count() <= 1,
            "one message key: {l}"
        );
        objects += 1;
    }
    assert!(objects >= 3, "{logs}");
    assert!(logs.contains("request finished"));
    assert!(
        logs.contains("\"detail\":\"The model `no-such-model` does not exist"),
        "{logs}"
    );
    assert!(!logs.contains(BX_UA) && !logs.contains(API_KEY));
    // Each request's lines carry its client API.
    let finished = logs
        .lines()
        .find(|l| l.contains("request finished"))
        .unwrap();
    assert!(finished.contains("\"api\":\"chat\""), "{finished}");
}

#[test]
fn text_logs_cannot_be_forged_or_coloured_by_clients() {
    let (child, addr) = spawn_demo(&[]);
    let forged = "m\n2026-11-29T00:00:00.000000Z  INFO qwen_proxy: forged line\u{1b}[31m\u{7}";
    let long_model = "L".repeat(100_000);
    for body in [
        json!({"model": forged, "messages": [{"role": "user", "content": "hi"}]}),
        json!({"model": long_model, "messages": [{"role": "user", "content": "hi"}]}),
        json!({"model": "qwen3.7-plus", "messages": [{"role": "user\n2026-11-29T00:00:00.000000Z  WARN forged", "content": "hi"}]}),
        json!({"model": "qwen3.7-plus", "messages": [{"role": "user", "content": [{"type": "te\u{1b}]0;pwned\u{7}xt"}]}]}),
    ] {
        let reply = post(&addr, &body.to_string(), "");
        assert!(reply.starts_with("HTTP/1.1 4"), "{reply}");
        // A 100 kB model name is not echoed back in full either.
        assert!(reply.len() < 2_000, "reply of {} bytes", reply.len());
    }
    // A retried request (attempts) and an upstream quota failure.
    let empty = json!({"model": "qwen3.7-plus", "messages": [{"role": "user", "content": "q @@sim:empty"}]});
    assert!(post(&addr, &empty.to_string(), "").starts_with("HTTP/1.1 502"));
    let quota = json!({"model": "qwen3.7-plus", "messages": [{"role": "user", "content": "q @@sim:rate_limited=2"}]});
    assert!(post(&addr, &quota.to_string(), "").starts_with("HTTP/1.1 429"));
    let logs = logs_of(child);
    assert!(
        !logs.contains('\u{1b}'),
        "no escape sequence reaches the terminal: {logs:?}"
    );
    assert!(!logs.contains('\u{7}'));
    for line in logs.lines() {
        assert!(
            !line.starts_with("2026-11-29T00:00:00"),
            "a client forged a log line: {line}"
        );
        assert!(
            line.len() < 2_000,
            "a client string was logged in full: {} bytes",
            line.len()
        );
        assert!(
            line.matches("attempts=").count() <= 1,
            "attempts once per line: {line}"
        );
    }
    assert!(
        logs.contains(r"forged line\u{1b}[31m\u{7}"),
        "the value is logged, escaped: {logs}"
    );
    assert!(
        logs.contains("bytes in all"),
        "long values are cut with their length"
    );
    let quota_line = logs
        .lines()
        .find(|l| l.contains("error=\"rate_limited\""))
        .expect("the quota failure is logged");
    assert!(
        quota_line.contains("WARN") && quota_line.contains("upstream failure"),
        "upstream account problems are upstream failures at WARN: {quota_line}"
    );
    let rejected = logs
        .lines()
        .find(|l| l.contains("error=\"model_not_found\""))
        .expect("the bad model is logged");
    assert!(
        rejected.contains("INFO") && rejected.contains("request rejected"),
        "{rejected}"
    );
}

/// Key guessing is logged in aggregate: thirty wrong operators' keys make one warning (the
/// lockout), not a line or two per attempt — a guesser cannot fill the disk.
#[test]
fn key_guessing_is_logged_in_aggregate() {
    let (child, addr) = spawn_demo(&[
        ("LOG_FORMAT", "json"),
        ("ADMIN_KEY", "the-operators-key-0123456789"),
        ("AUTH_FAILURE_LIMIT", "5"),
    ]);
    for _ in 0..30 {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        write!(
            s,
            "GET /admin/accounts HTTP/1.1\r\nhost: x\r\nauthorization: Bearer guess\r\nconnection: close\r\n\r\n"
        )
        .unwrap();
        let mut reply = String::new();
        std::io::Read::read_to_string(&mut s, &mut reply).unwrap();
        assert!(
            reply.starts_with("HTTP/1.1 401") || reply.starts_with("HTTP/1.1 429"),
            "{reply}"
        );
    }
    let logs = logs_of(child);
    // (The only requests were the guesses.)
    let per_attempt: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("request finished") || l.contains("request rejected"))
        .collect();
    assert!(per_attempt.is_empty(), "per-attempt lines: {per_attempt:?}");
    assert_eq!(logs.matches("locking it out").count(), 1, "{logs}");
}
