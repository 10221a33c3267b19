//! The upstream client against the simulator: chat state errors (E2–E5), the header gate,
//! and SSE keep-alives through the stack.

// Tests and benches: a failed unwrap is a failure with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use qwen_proxy::error::{ProxyError, UpstreamClass};
use qwen_proxy::qwen::client::{Caller, QwenClient, Route};
use qwen_proxy::qwen::headers::Credentials;
use qwen_proxy::qwen::request::{FeatureConfig, Thinking, Turn};
use qwen_proxy::sim::{Gate, SimConfig, Simulator};
use qwen_proxy::translate::aggregate;
use qwen_proxy::translate::body::UpstreamStream;
use qwen_proxy::translate::limits::Limits;
use qwen_proxy::translate::pipeline::Pipeline;
use qwen_proxy::Config;
use support::Harness;

/// The client with one account's side of the requests (`token=acct-1`).
struct AccountClient {
    client: QwenClient,
    who: Caller,
}

impl AccountClient {
    async fn start_completion(&self, t: &Turn<'_>) -> Result<hyper::body::Incoming, ProxyError> {
        self.client.start_completion(&self.who, t).await
    }
    async fn create_chat(&self, model: &str, chat_type: &str) -> Result<String, ProxyError> {
        self.client.create_chat(&self.who, model, chat_type).await
    }
    async fn delete_chat(&self, id: &str) -> Result<(), ProxyError> {
        self.client.delete_chat(&self.who, id).await
    }
    async fn fetch_models(&self) -> Result<serde_json::Value, ProxyError> {
        self.client.fetch_models(&self.who).await
    }
    async fn check_auth(&self) -> Result<serde_json::Value, ProxyError> {
        self.client.check_auth(&self.who).await
    }
}

async fn client_for(sim: &Simulator, extra: &[(&str, &str)]) -> AccountClient {
    let mut vars: HashMap<String, String> = HashMap::new();
    vars.insert("QWEN_BASE_URL".into(), sim.base_url());
    vars.insert("QWEN_COOKIES".into(), "token=acct-1".into());
    for (k, v) in extra {
        vars.insert((*k).into(), (*v).into());
    }
    let config = Config::from_source(&vars, false).unwrap();
    let client = QwenClient::new(&config.upstream, 1, qwen_proxy::metrics::Metrics::new());
    let who = client.caller(
        &Credentials {
            cookies: config.upstream.cookies.clone(),
            token: config.upstream.auth_token.clone(),
            ..Credentials::default()
        },
        Route::Direct,
    );
    AccountClient { client, who }
}

fn turn<'a>(chat_id: &'a str, parent: Option<&'a str>, content: &'a str) -> Turn<'a> {
    Turn {
        chat_id,
        parent_id: parent,
        model: "qwen3.7-plus",
        chat_type: "t2t",
        content,
        files: &[],
        features: FeatureConfig::new(Thinking::Auto, false),
        size: None,
    }
}

/// Send one turn and read it to the end; returns the upstream response id.
async fn complete(client: &AccountClient, t: &Turn<'_>) -> Result<String, ProxyError> {
    let body = client.start_completion(t).await?;
    let mut stream = UpstreamStream::new(
        body,
        Pipeline::new(Limits::default(), 0),
        Duration::from_secs(5),
    );
    let (collected, _, _) = aggregate::collect(&mut stream, || {}).await?;
    assert!(!collected.content.is_empty());
    Ok(stream
        .pipeline()
        .response()
        .response_id
        .clone()
        .expect("response id"))
}

fn class(r: Result<String, ProxyError>) -> Option<UpstreamClass> {
    r.err().and_then(|e| e.upstream_class())
}

async fn sim(config: SimConfig) -> Simulator {
    Simulator::start(SocketAddr::from(([127, 0, 0, 1], 0)), config)
        .await
        .unwrap()
}

#[tokio::test]
async fn chat_state_errors_are_classified() {
    let sim = sim(SimConfig {
        linger: Duration::from_secs(30),
        ..SimConfig::default()
    })
    .await;
    let client = client_for(&sim, &[]).await;
    let chat = client.create_chat("qwen3.7-plus", "t2t").await.unwrap();

    // E4: a chat that does not exist, and a chat of another account.
    assert_eq!(
        class(
            complete(
                &client,
                &turn("00000000-0000-4000-8000-000000000000", None, "hi")
            )
            .await
        ),
        Some(UpstreamClass::ChatNotFound)
    );
    let other = client_for(&sim, &[("QWEN_COOKIES", "token=acct-2")]).await;
    assert_eq!(
        class(complete(&other, &turn(&chat, None, "hi")).await),
        Some(UpstreamClass::ChatNotFound)
    );

    // E3: a parent that is not a node of the chat.
    assert_eq!(
        class(complete(&client, &turn(&chat, Some("not-a-node"), "hi")).await),
        Some(UpstreamClass::ParentNotFound)
    );

    // A real turn, then E2: the chat stays busy for the linger after a generation.
    let response_id = complete(&client, &turn(&chat, None, "first"))
        .await
        .unwrap();
    assert_eq!(
        class(complete(&client, &turn(&chat, Some(&response_id), "second")).await),
        Some(UpstreamClass::ChatInProgress)
    );
}

#[tokio::test]
async fn continuing_a_chat_after_the_linger_records_the_parent() {
    let sim = sim(SimConfig {
        linger: Duration::from_millis(10),
        ..SimConfig::default()
    })
    .await;
    let client = client_for(&sim, &[]).await;
    let chat = client.create_chat("qwen3.7-plus", "t2t").await.unwrap();
    let first = complete(&client, &turn(&chat, None, "first"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second = complete(&client, &turn(&chat, Some(&first), "second"))
        .await
        .unwrap();
    assert_ne!(first, second);
    client.delete_chat(&chat).await.unwrap();
    // Deleting twice is still a success (already gone).
    client.delete_chat(&chat).await.unwrap();
}

#[tokio::test]
async fn header_gate_2026_10_needs_the_bx_headers() {
    let strict = SimConfig {
        gate: Gate::Y2026M10,
        ..SimConfig::default()
    };
    let h = Harness::start_with(&[], strict.clone()).await;
    let r = h.ask("qwen3.7-plus", "hi", false).await;
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.error()["code"], "upstream_challenge");

    let h = Harness::start_with(
        &[("QWEN_BX_UA", "231!captured"), ("QWEN_TOKEN", "T2gA-umid")],
        strict,
    )
    .await;
    assert_eq!(h.ask("qwen3.7-plus", "hi", false).await.status, 200);
}

#[tokio::test]
async fn keep_alive_comments_while_the_upstream_is_silent() {
    let h = Harness::start_with(&[("SSE_KEEPALIVE_INTERVAL", "50")], SimConfig::default()).await;
    let r = h.ask("qwen3.7-plus", "hi @@sim:stall=400", true).await;
    let text = String::from_utf8(r.body.to_vec()).unwrap();
    assert!(text.contains("\n\n: keep-alive\n\n"), "{text}");
    let s = support::summarize(&r.events());
    assert_eq!(s.content, support::expected_answer("hi"));
}

#[tokio::test]
async fn models_and_auth_probes() {
    let sim = sim(SimConfig::default()).await;
    let client = client_for(&sim, &[]).await;
    let models = client.fetch_models().await.unwrap();
    assert!(models["data"].as_array().unwrap().len() >= 3);
    assert_eq!(client.check_auth().await.unwrap()["role"], "user");
}

/// One streamed completion through the stack against a simulator configured by `sim`, with
/// the proxy's environment `env`; returns the simulator's stats.
async fn protocol_run(env: &[(&str, &str)], sim: SimConfig) -> serde_json::Value {
    let h = Harness::start_with(env, sim).await;
    for k in 0..3 {
        let question = format!("protocol question {k}");
        let r = h
            .chat(serde_json::json!({"model": "qwen3.7-plus", "stream": true,
                "messages": [{"role": "user", "content": question}]}))
            .await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(
            support::summarize(&r.events()).content,
            support::expected_answer(&question)
        );
    }
    h.sim_stats().await
}

#[tokio::test]
async fn a_plain_http_upstream_is_spoken_to_in_http2_by_default() {
    let stats = protocol_run(&[], SimConfig::default()).await;
    // The h2c probe, the model list, then chats/new and the completion for each of three
    // turns.
    assert_eq!(stats["http2_requests"], 8, "{stats}");
    // The one HTTP/1.1 request is the test's own stats request.
    assert_eq!(stats["http1_requests"], 1, "{stats}");
}

#[tokio::test]
async fn an_upstream_without_http2_gets_http1_after_one_refused_probe() {
    let sim = SimConfig {
        http1_only: true,
        ..SimConfig::default()
    };
    let stats = protocol_run(&[], sim).await;
    // The h2c probe never reaches a handler (the connection is refused as HTTP/2); the
    // same probe over HTTP/1.1 does, once — the verdict is kept, not probed per request —
    // then the model list, three turns of two requests, and the test's stats request.
    assert_eq!(stats["http2_requests"], 0, "{stats}");
    assert_eq!(stats["http1_requests"], 9, "{stats}");
    assert_eq!(stats["completions"], 3, "{stats}");
    assert_eq!(
        stats["completion_requests"], 3,
        "no completion sent twice: {stats}"
    );
}

#[tokio::test]
async fn upstream_http2_false_speaks_http1_and_true_only_http2() {
    let stats = protocol_run(&[("UPSTREAM_HTTP2", "false")], SimConfig::default()).await;
    assert_eq!(stats["http2_requests"], 0, "{stats}");
    assert!(stats["http1_requests"].as_u64().unwrap() >= 6, "{stats}");
    let stats = protocol_run(&[("UPSTREAM_HTTP2", "true")], SimConfig::default()).await;
    assert_eq!(
        stats["http1_requests"], 1,
        "only the stats request: {stats}"
    );
    // HTTP/2 only against an HTTP/1.1-only upstream: an honest error, not a hang.
    let h = Harness::start_with(
        &[("UPSTREAM_HTTP2", "true")],
        SimConfig {
            http1_only: true,
            ..SimConfig::default()
        },
    )
    .await;
    let r = h
        .chat(serde_json::json!({"model": "qwen3.7-plus", "stream": true,
            "messages": [{"role": "user", "content": "hi"}]}))
        .await;
    assert!(r.status.is_server_error(), "{}", r.status);
}

#[tokio::test]
async fn concurrent_first_requests_share_one_h2c_probe() {
    let h = Harness::start_with(
        &[],
        SimConfig {
            http1_only: true,
            ..SimConfig::default()
        },
    )
    .await;
    let replies = futures::future::join_all((0..8).map(|k| {
        h.chat(serde_json::json!({"model": "qwen3.7-plus",
            "messages": [{"role": "user", "content": format!("at once {k}")}]}))
    }))
    .await;
    for r in &replies {
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    let stats = h.sim_stats().await;
    // Eight completions, each sent once, all over HTTP/1.1.
    assert_eq!(stats["completion_requests"], 8, "{stats}");
    assert_eq!(stats["http2_requests"], 0, "{stats}");
}

/// Issue 23: under load the HTTP/2 upstream connection broke. A stream dropped before its
/// last frame (a client gone mid-answer) is reset by the h2 client, which remembers only a
/// few reset streams for a short while; the upstream's DATA still in flight for a forgotten
/// one is answered with a counted error reset, and after 1,024 of those the client tears the
/// connection down (GOAWAY `too_many_internal_resets`) — every stream on it fails. Here
/// 3,000 streams are dropped after their first chunk, 64 at a time, on several worker
/// threads, with whole answers running beside them on the same upstream connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousands_of_dropped_streams_leave_the_upstream_connection_whole() {
    use futures::StreamExt;
    use http_body_util::BodyExt;
    let h = Harness::start_with(&[("MAX_CONCURRENT_STREAMS", "0")], support::quick_sim()).await;
    let abort = |k: usize| {
        let h = &h;
        async move {
            let body = serde_json::json!({"model": "qwen3.7-plus", "stream": true,
                "messages": [{"role": "user",
                    "content": format!("dropped {k} @@sim:long=20000 @@sim:delay=1")}]});
            let rsp = h.chat_response(&body).await;
            assert_eq!(rsp.status(), 200);
            let mut body = rsp.into_body();
            let first = body.frame().await.unwrap().unwrap();
            assert!(first.data_ref().is_some_and(|d| !d.is_empty()));
            // Dropped here, mid-answer.
        }
    };
    let whole = |k: usize| {
        let h = &h;
        async move {
            let question = format!("whole {k}");
            let r = h
                .chat(serde_json::json!({"model": "qwen3.7-plus", "stream": true,
                    "messages": [{"role": "user", "content": question}]}))
                .await;
            (
                r.status,
                support::summarize(&r.events()).content == support::expected_answer(&question),
            )
        }
    };
    let aborts = futures::stream::iter(0..3_000).for_each_concurrent(64, abort);
    let answers = futures::stream::iter(0..300)
        .map(whole)
        .buffer_unordered(8)
        .collect::<Vec<_>>();
    let ((), answers) = tokio::join!(aborts, answers);
    let failed: Vec<_> = answers.iter().filter(|(s, ok)| *s != 200 || !ok).collect();
    assert!(
        failed.is_empty(),
        "{} of 300 whole answers failed: {failed:?}",
        failed.len()
    );
    let stats = h.sim_stats().await;
    assert!(stats["http2_requests"].as_u64().unwrap() > 3_000, "{stats}");
    let metrics = String::from_utf8(h.get("/metrics").await.body.to_vec()).unwrap();
    let errors: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("upstream_errors_total{"))
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
}
