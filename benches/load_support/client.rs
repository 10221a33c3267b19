//! The client side: one chat request, in the Qwen web protocol or OpenAI's — streamed and
//! timed chunk by chunk, or read whole (non-stream mode) — and its failures sorted by kind.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;

use crate::servers::{CHUNK_CHARS, FRAMES};

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A client whose pool keeps up to `idle` connections (one per stream of a herd), as an
/// SDK's keep-alive pool would.
pub fn new_client(idle: usize) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(idle.max(1))
        .build(connector)
}

/// Every stream's answer: the simulator's `long=80` filler, 20 frames of 4 characters.
pub fn expected_answer() -> String {
    qwen_proxy::sim::answer::long_answer(FRAMES * CHUNK_CHARS)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ErrorKind {
    /// No connection: refused, reset or timed out while connecting (hyper's `is_connect`).
    Connect,
    /// Connected, but the request failed before a response head (e.g. the connection was
    /// closed or reset).
    Request,
    /// A response other than 200.
    Status,
    /// The response body failed, or was not what the protocol says.
    Body,
}

pub struct StreamError {
    pub kind: ErrorKind,
    pub message: String,
}

fn fail(kind: ErrorKind, message: impl Into<String>) -> StreamError {
    StreamError {
        kind,
        message: message.into(),
    }
}

fn request_failed(what: &str, e: &hyper_util::client::legacy::Error) -> StreamError {
    let kind = if e.is_connect() {
        ErrorKind::Connect
    } else {
        ErrorKind::Request
    };
    // hyper's Display is terse ("client error (Connect)"); the source says why.
    let cause = std::error::Error::source(e).map_or(String::new(), |s| format!(": {s}"));
    fail(kind, format!("{what}: {e}{cause}"))
}

/// A stream that ran to its end.
pub struct Stream {
    /// Request start (for the Qwen protocol, before `chats/new`) → first non-empty answer
    /// chunk; `None` if none came.
    pub ttft: Option<Duration>,
    /// Between consecutive answer chunks.
    pub gaps: Vec<Duration>,
    pub chunks: usize,
    pub answer: String,
}

/// One streaming chat to `port`. `qwen`: the Qwen web protocol (`chats/new`, then the
/// completion); else OpenAI's. `open` counts streams whose response has begun.
pub async fn one_stream(
    client: &HttpClient,
    port: u16,
    qwen: bool,
    open: &AtomicUsize,
) -> Result<Stream, StreamError> {
    let start = Instant::now();
    let req = if qwen {
        qwen_completion(client, port).await?
    } else {
        openai_completion(port, true)?
    };
    let rsp = send(client, req).await?;
    open.fetch_add(1, Ordering::Relaxed);
    let result = read_events(rsp.into_body(), start, qwen).await;
    open.fetch_sub(1, Ordering::Relaxed);
    result
}

/// One request of the non-stream mode's open loop.
pub struct Scheduled {
    /// How late it started: its task began this long after its scheduled start.
    pub late: Duration,
    /// Scheduled start → the body's last byte, and the answer; or why it failed.
    pub outcome: Result<(Duration, String), StreamError>,
}

/// A non-streamed chat whose scheduled start was `at`, timed from then: a client that starts
/// it late (busy, or waiting for other responses) is charged the wait, as a user would be —
/// the open loop's guard against coordinated omission. `open` counts requests in flight.
pub async fn scheduled_completion(
    client: &HttpClient,
    port: u16,
    qwen: bool,
    at: Instant,
    open: &AtomicUsize,
) -> Scheduled {
    let late = at.elapsed();
    open.fetch_add(1, Ordering::Relaxed);
    let outcome = one_completion(client, port, qwen)
        .await
        .map(|answer| (at.elapsed(), answer));
    open.fetch_sub(1, Ordering::Relaxed);
    Scheduled { late, outcome }
}

/// One non-streamed chat to `port`, its whole answer. The Qwen web protocol only streams:
/// there the answer is the SSE body read to its end; OpenAI's is `stream: false`, one JSON
/// body whose `choices[0].message.content` is the answer.
async fn one_completion(client: &HttpClient, port: u16, qwen: bool) -> Result<String, StreamError> {
    if qwen {
        let rsp = send(client, qwen_completion(client, port).await?).await?;
        return Ok(read_events(rsp.into_body(), Instant::now(), true)
            .await?
            .answer);
    }
    let rsp = send(client, openai_completion(port, false)?).await?;
    let body = rsp
        .into_body()
        .collect()
        .await
        .map_err(|e| fail(ErrorKind::Body, format!("body: {e}")))?
        .to_bytes();
    let v: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| fail(ErrorKind::Body, format!("body: {e}")))?;
    v["choices"][0]["message"]["content"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| fail(ErrorKind::Body, "no choices[0].message.content"))
}

fn build(e: hyper::http::Error) -> StreamError {
    fail(ErrorKind::Request, e.to_string())
}

/// The Qwen web protocol's completion request, for a chat made first with `chats/new`.
async fn qwen_completion(
    client: &HttpClient,
    port: u16,
) -> Result<Request<Full<Bytes>>, StreamError> {
    let base = format!("http://127.0.0.1:{port}");
    let new = Request::post(format!("{base}/api/v2/chats/new"))
        .header("cookie", "token=load")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(
            b"{\"models\":[\"qwen3.7-plus\"],\"chat_type\":\"t2t\"}",
        )))
        .map_err(build)?;
    let rsp = client
        .request(new)
        .await
        .map_err(|e| request_failed("chats/new", &e))?;
    if rsp.status() != 200 {
        return Err(fail(
            ErrorKind::Status,
            format!("chats/new: status {}", rsp.status()),
        ));
    }
    let body = rsp
        .into_body()
        .collect()
        .await
        .map_err(|e| fail(ErrorKind::Body, format!("chats/new body: {e}")))?
        .to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| fail(ErrorKind::Body, format!("chats/new body: {e}")))?;
    let chat = v["data"]["id"]
        .as_str()
        .ok_or_else(|| fail(ErrorKind::Body, "chats/new: no chat id"))?
        .to_owned();
    let payload = serde_json::json!({"stream": true, "incremental_output": true, "chat_id": chat, "model": "qwen3.7-plus",
        "parent_id": null, "messages": [{"role": "user", "content": "load @@sim:long=80", "feature_config": {"output_schema": "phase"}}]});
    Request::post(format!("{base}/api/v2/chat/completions?chat_id={chat}"))
        .header("cookie", "token=load")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(payload.to_string())))
        .map_err(build)
}

/// An OpenAI chat completion request, streamed or not.
fn openai_completion(port: u16, stream: bool) -> Result<Request<Full<Bytes>>, StreamError> {
    let payload = serde_json::json!({"model": "qwen3.7-plus", "stream": stream,
        "messages": [{"role": "user", "content": "load @@sim:long=80"}]});
    Request::post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(payload.to_string())))
        .map_err(build)
}

/// Send the completion request; its response, if 200.
async fn send(
    client: &HttpClient,
    req: Request<Full<Bytes>>,
) -> Result<hyper::Response<hyper::body::Incoming>, StreamError> {
    let rsp = client
        .request(req)
        .await
        .map_err(|e| request_failed("completion", &e))?;
    if rsp.status() != 200 {
        return Err(fail(
            ErrorKind::Status,
            format!("completion: status {}", rsp.status()),
        ));
    }
    Ok(rsp)
}

/// The answer chunks of an SSE body, timed.
async fn read_events(
    mut body: hyper::body::Incoming,
    start: Instant,
    qwen: bool,
) -> Result<Stream, StreamError> {
    let mut s = Stream {
        ttft: None,
        gaps: Vec::new(),
        chunks: 0,
        answer: String::new(),
    };
    let (mut last, mut pending) = (None::<Instant>, String::new());
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| fail(ErrorKind::Body, format!("body: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        pending.push_str(&String::from_utf8_lossy(&data));
        while let Some(end) = pending.find("\n\n") {
            let event: String = pending.drain(..end + 2).collect();
            let Some(json) = event.trim().strip_prefix("data:") else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(json.trim()) else {
                continue; // `[DONE]`
            };
            let delta = &v["choices"][0]["delta"];
            // Qwen streams say which phase a delta belongs to; only the answer counts.
            let text = if qwen && delta["phase"] != "answer" {
                None
            } else {
                delta["content"].as_str()
            };
            if let Some(t) = text.filter(|t| !t.is_empty()) {
                let now = Instant::now();
                s.ttft.get_or_insert(now - start);
                if let Some(prev) = last {
                    s.gaps.push(now - prev);
                }
                last = Some(now);
                s.chunks += 1;
                s.answer.push_str(t);
            }
        }
    }
    Ok(s)
}
