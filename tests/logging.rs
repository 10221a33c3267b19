//! Logs: every line of a request carries its request id, `LOG_FORMAT=json` gives one JSON
//! object per line, and configured secrets (cookies, tokens, API keys) never appear, even
//! at `trace` level.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use serde_json::json;
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
        ("q @@sim:unauthorized", false),
        ("q @@sim:internal_error", true),
        ("q @@sim:empty", false),
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

#[test]
fn json_log_format_is_one_object_per_line() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_qwen-proxy"))
        .args(["--demo", "--port", "0", "--env-file", "/dev/null"])
        .env("LOG_FORMAT", "json")
        .env("LOG_LEVEL", "debug")
        .env("QWEN_BX_UA", BX_UA)
        .env("API_KEYS", API_KEY)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary starts");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let addr = loop {
        line.clear();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "binary exited early"
        );
        if let Some(rest) = line.split("listening on http://").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    // One request through the binary, with curl-like raw HTTP/1.1.
    let body = json!({"model": "qwen3.7-plus", "messages": [{"role": "user", "content": "hi"}]})
        .to_string();
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nauthorization: Bearer {API_KEY}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reply = String::new();
    std::io::Read::read_to_string(&mut s, &mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    let logs = String::from_utf8(out.stderr).unwrap();
    let mut objects = 0;
    for l in logs.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v.get("level").is_some() && v.get("fields").is_some(), "{l}");
        objects += 1;
    }
    assert!(objects >= 3, "{logs}");
    assert!(logs.contains("request finished"));
    assert!(!logs.contains(BX_UA) && !logs.contains(API_KEY));
}
