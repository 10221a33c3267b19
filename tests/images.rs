//! Images in messages, end to end against the simulator: a `data:` URI and a fetched
//! address reach a vision model as uploaded files the simulated model "sees" (it states
//! their size and digest), uploaded once per account and content; a model without vision
//! is a 400; the fetch policy refuses what it must (a loopback, private, link-local or
//! metadata address, also behind a redirect or a name) without the forbidden host ever
//! being asked.

// Tests: a failed unwrap is a failure with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use support::{quick_sim, Harness};

/// A valid 2×1 PNG, written out by hand (not by the code under test).
const PNG: &[u8] = &[
    0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 0x00, 0x00, 0x00, 0x0D, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x01, 0x08, 0x00, 0x00, 0x00, 0x00, 0x39, 0x0C, 0x3C,
    0x45, 0x00, 0x00, 0x00, 0x0B, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9C, 0x63, 0x60, 0x00, 0x01, 0x00,
    0x00, 0x05, 0x00, 0x01, 0x0D, 0x0A, 0x2D, 0xB4, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4E, 0x44,
    0xAE, 0x42, 0x60, 0x82,
];

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn b64(bytes: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(char::from(A[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn look(model: &str, url: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is in this image? @@sim:files"},
        {"type": "image_url", "image_url": {"url": url, "detail": "auto"}},
    ]}]})
}

/// A tiny image server on 127.0.0.1: `/img.png` the PNG, `/to?<url>` a redirect there,
/// `/text` a page that is not an image; it counts the requests it got.
struct ImageServer {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
}

impl ImageServer {
    async fn start() -> Self {
        // Every local address (127.0.0.2 too), so an address the policy wrongly let through
        // would be counted here rather than fail to connect.
        let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], listener.local_addr().unwrap().port()));
        let hits = Arc::new(AtomicUsize::new(0));
        let counted = hits.clone();
        tokio::spawn(async move {
            loop {
                let Ok((io, _)) = listener.accept().await else {
                    return;
                };
                let counted = counted.clone();
                tokio::spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            counted.fetch_add(1, Ordering::SeqCst);
                            let rsp = match req.uri().path() {
                                "/img.png" => Response::builder()
                                    .header("content-type", "image/png")
                                    .body(Full::new(Bytes::from_static(PNG))),
                                "/to" => Response::builder()
                                    .status(StatusCode::FOUND)
                                    .header("location", req.uri().query().unwrap_or(""))
                                    .body(Full::new(Bytes::new())),
                                _ => Response::builder()
                                    .header("content-type", "text/html")
                                    .body(Full::new(Bytes::from_static(
                                        b"<html>not an image</html>",
                                    ))),
                            };
                            async move { Ok::<_, std::convert::Infallible>(rsp.unwrap()) }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(io), svc)
                        .await;
                });
            }
        });
        ImageServer { addr, hits }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

#[tokio::test]
async fn a_data_uri_image_is_seen_by_a_vision_model_and_uploaded_once() {
    let h = Harness::start_with(&[], quick_sim()).await;
    let uri = format!("data:image/png;base64,{}", b64(PNG));
    let expected = format!(
        "image-{}.png: image/png, {} bytes, sha256 {}",
        &sha256(PNG)[..12],
        PNG.len(),
        sha256(PNG)
    );
    for _ in 0..2 {
        let r = h.chat(look("qwen3.7-plus", &uri)).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert!(
            r.message_content().contains(&expected),
            "{}",
            r.message_content()
        );
    }
    let stats = h.sim_stats().await;
    // Two turns attached it; the account uploaded it once.
    assert_eq!(stats["files"]["uploads"], 1, "{}", stats["files"]);
    assert_eq!(stats["files"]["attached"], 2, "{}", stats["files"]);
    // An image is never sent to the parse step (only documents are).
    assert_eq!(stats["files"]["parses"], 0, "{}", stats["files"]);
    let metrics = String::from_utf8(h.state.metrics.render()).unwrap();
    assert!(
        metrics.contains("upstream_uploads_total{kind=\"image\",outcome=\"uploaded\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("upstream_uploads_total{kind=\"image\",outcome=\"cached\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_model_without_vision_is_a_400_that_names_the_models_with_it() {
    let h = Harness::start_with(&[], quick_sim()).await;
    let uri = format!("data:image/png;base64,{}", b64(PNG));
    let r = h.chat(look("qwen3.8-max", &uri)).await;
    assert_eq!(r.status, 400);
    let e = r.error();
    assert_eq!(e["code"], "model_not_vision_capable", "{e}");
    assert!(
        e["message"].as_str().unwrap().contains("qwen3.7-plus"),
        "{e}"
    );
    assert_eq!(h.sim_stats().await["files"]["uploads"], 0);
}

#[tokio::test]
async fn bad_images_are_400s_naming_the_part() {
    let h = Harness::start_with(&[("IMAGE_MAX_COUNT", "2")], quick_sim()).await;
    let part = |url: &str| json!({"type": "image_url", "image_url": {"url": url}});
    let png = format!("data:image/png;base64,{}", b64(PNG));
    let cases = [
        (
            part("data:image/png;base64,PGh0bWw+"),
            "messages[0].content[0].image_url",
        ),
        (
            part("ftp://example.com/a.png"),
            "messages[0].content[0].image_url",
        ),
        (
            json!({"type": "image_url"}),
            "messages[0].content[0].image_url",
        ),
    ];
    for (p, param) in cases {
        let r = h
            .chat(json!({"model": "qwen3.7-plus", "messages": [{"role": "user", "content": [p]}]}))
            .await;
        assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.error()["param"], param, "{}", r.error());
    }
    let three = json!({"model": "qwen3.7-plus", "messages": [{"role": "user", "content": [part(&png), part(&png), part(&png)]}]});
    let r = h.chat(three).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error()["param"], "messages[0].content[2].image_url");
    assert!(r.error()["message"]
        .as_str()
        .unwrap()
        .contains("IMAGE_MAX_COUNT"));
}

#[tokio::test]
async fn an_allowed_address_is_fetched_once_and_seen() {
    let img = ImageServer::start().await;
    let h = Harness::start_with(
        &[
            ("IMAGE_FETCH_ALLOW", "127.0.0.1/32"),
            ("IMAGE_FETCH_ALLOW_HTTP", "true"),
        ],
        quick_sim(),
    )
    .await;
    for url in [
        img.url("/img.png"),
        img.url("/img.png"),
        img.url(&format!("/to?{}", img.url("/img.png"))),
    ] {
        let r = h.chat(look("qwen3.7-plus", &url)).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert!(
            r.message_content().contains(&sha256(PNG)),
            "{}",
            r.message_content()
        );
    }
    // The first address once (then from the cache); the redirect and its target once each.
    assert_eq!(img.hits(), 3);
    // Not an image: a 400, whatever the server calls it.
    let r = h.chat(look("qwen3.7-plus", &img.url("/text"))).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error()["code"], "invalid_image_url");
    let metrics = String::from_utf8(h.state.metrics.render()).unwrap();
    for sample in [
        "image_fetches_total{outcome=\"fetched\"} 2",
        "image_fetches_total{outcome=\"cached\"} 1",
        "image_fetches_total{outcome=\"failed\"} 1",
    ] {
        assert!(metrics.contains(sample), "{sample} in {metrics}");
    }
}

#[tokio::test]
async fn forbidden_addresses_are_refused_without_being_asked() {
    let img = ImageServer::start().await;
    let port = img.addr.port();
    // Plain http allowed, but no network: loopback is forbidden like every private range.
    let h = Harness::start_with(&[("IMAGE_FETCH_ALLOW_HTTP", "true")], quick_sim()).await;
    let forbidden = [
        format!("http://127.0.0.1:{port}/img.png"),
        format!("http://localhost:{port}/img.png"),
        format!("http://[::1]:{port}/img.png"),
        format!("http://[::ffff:127.0.0.1]:{port}/img.png"),
        format!("http://2130706433:{port}/img.png"),
        "http://10.0.0.1/img.png".to_owned(),
        "http://192.168.1.1/img.png".to_owned(),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://100.100.100.200/latest/meta-data/".to_owned(),
        "http://[fe80::1]/img.png".to_owned(),
        "http://0.0.0.0/img.png".to_owned(),
    ];
    for url in &forbidden {
        let r = h.chat(look("qwen3.7-plus", url)).await;
        assert_eq!(r.status, 400, "{url}: {}", String::from_utf8_lossy(&r.body));
        let e = r.error();
        assert_eq!(e["code"], "invalid_image_url", "{url}");
        let message = e["message"].as_str().unwrap();
        assert!(
            message.contains("not an allowed destination")
                || message.contains("does not resolve to an allowed destination")
                || message.contains("not accepted"),
            "{url}: {message}"
        );
    }
    assert_eq!(img.hits(), 0, "a forbidden host was asked");
    let metrics = String::from_utf8(h.state.metrics.render()).unwrap();
    let refused = format!(
        "image_fetches_total{{outcome=\"refused\"}} {}",
        forbidden.len()
    );
    assert!(metrics.contains(&refused), "{refused} in {metrics}");

    // Behind a redirect: the allowed server is asked, the forbidden target never.
    let h = Harness::start_with(
        &[
            ("IMAGE_FETCH_ALLOW", "127.0.0.1/32"),
            ("IMAGE_FETCH_ALLOW_HTTP", "true"),
        ],
        quick_sim(),
    )
    .await;
    for target in [
        format!("http://127.0.0.2:{port}/img.png"),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "file:///etc/passwd".to_owned(),
    ] {
        let before = img.hits();
        let r = h
            .chat(look("qwen3.7-plus", &img.url(&format!("/to?{target}"))))
            .await;
        assert_eq!(
            r.status,
            400,
            "{target}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.error()["code"], "invalid_image_url", "{target}");
        let message = r.error()["message"].as_str().unwrap().to_owned();
        assert!(
            message.contains("not an allowed destination") || message.contains("https"),
            "{target}: {message}"
        );
        assert_eq!(
            img.hits(),
            before + 1,
            "{target}: only the redirect was fetched"
        );
    }
    // https only unless allowed: the same allowed address over plain http is refused.
    let h = Harness::start_with(&[("IMAGE_FETCH_ALLOW", "127.0.0.1/32")], quick_sim()).await;
    let before = img.hits();
    let r = h.chat(look("qwen3.7-plus", &img.url("/img.png"))).await;
    assert_eq!(r.status, 400);
    assert_eq!(img.hits(), before);
}

#[tokio::test]
async fn an_earlier_image_that_is_gone_does_not_break_the_conversation() {
    let img = ImageServer::start().await;
    // Stateless: every request folds the whole history, its images included.
    let h = Harness::start_with(
        &[
            ("IMAGE_FETCH_ALLOW", "127.0.0.1/32"),
            ("IMAGE_FETCH_ALLOW_HTTP", "true"),
            ("CONVERSATION_MODE", "stateless"),
        ],
        quick_sim(),
    )
    .await;
    let history = |newest: Value| {
        json!({"model": "qwen3.7-plus", "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": img.url("/gone.png")}}]},
            {"role": "assistant", "content": "A picture."},
            {"role": "user", "content": newest}]})
    };
    // The earlier image no longer answers with an image: the turn goes without it.
    let r = h
        .chat(history(json!("And the second one? @@sim:files")))
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        r.message_content().contains("I see no files."),
        "{}",
        r.message_content()
    );
    // The newest message's own image must be taken, or the request is refused.
    let r = h
        .chat(history(
            json!([{"type": "image_url", "image_url": {"url": img.url("/gone.png")}}]),
        ))
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error()["param"], "messages[2].content[0].image_url");
    // An earlier image that is there goes with the turn.
    let r = h
        .chat(json!({"model": "qwen3.7-plus", "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": img.url("/img.png")}}]},
            {"role": "assistant", "content": "A picture."},
            {"role": "user", "content": "Describe it again. @@sim:files"}]}))
        .await;
    assert_eq!(r.status, 200);
    assert!(
        r.message_content().contains(&sha256(PNG)),
        "{}",
        r.message_content()
    );
}
