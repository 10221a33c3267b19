//! `POST /v1/images/generations` against the simulator's image chat type (t2i): `n` images
//! by address or as base64, sizes mapped to the upstream's ratios (the pictures come back in
//! the upstream's pixels for the ratio), and every failure honest — no image, no 200.

// Tests: a failed unwrap is a failure with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use serde_json::{json, Value};
use support::{quick_sim, Harness, Reply};

/// The pixels the upstream draws for a ratio (`qwen-protocol.md` §4.4; the simulator's
/// table, README "Simulator").
const SQUARE: (u32, u32) = (1328, 1328);
const WIDE: (u32, u32) = (1664, 928);

async fn generate(h: &Harness, body: Value) -> Reply {
    let req = Request::post(h.url("/v1/images/generations"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    Harness::read(h.send(req).await).await
}

/// Width and height from a PNG's IHDR chunk.
fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    assert_eq!(&bytes[12..16], b"IHDR");
    let be = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
    (be(16), be(20))
}

fn b64_decode(s: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not standard base64: {c}"),
    };
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.trim_end_matches('=').bytes() {
        acc = (acc << 6) | u32::from(value(c));
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

async fn download(url: &str) -> Vec<u8> {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let rsp = client
        .request(Request::get(url).body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200, "{url}");
    rsp.into_body().collect().await.unwrap().to_bytes().to_vec()
}

#[tokio::test]
async fn n_images_by_address_each_a_picture_of_the_asked_ratio() {
    let h = Harness::start_with(&[], quick_sim()).await;
    let r = generate(
        &h,
        json!({"prompt": "a lighthouse at dusk", "n": 2, "size": "1792x1024", "model": "dall-e-3"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert!(v["created"].as_u64().unwrap() > 1_700_000_000);
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 2, "{v}");
    let urls: Vec<&str> = data.iter().map(|d| d["url"].as_str().unwrap()).collect();
    assert_ne!(urls[0], urls[1], "two turns, two pictures");
    for url in urls {
        assert!(data[0].get("b64_json").is_none());
        assert_eq!(png_size(&download(url).await), WIDE);
    }
    let stats = h.sim_stats().await;
    assert_eq!(stats["images"]["generated"], 2, "{}", stats["images"]);
    let metrics = String::from_utf8(h.state.metrics.render()).unwrap();
    assert!(metrics.contains("images_generated_total 2"), "{metrics}");
    // Each image is a fresh upstream chat of the image type; none is remembered.
    assert_eq!(stats["chats_created"], 2, "{stats}");
}

#[tokio::test]
async fn b64_json_carries_the_picture_itself() {
    let h = Harness::start_with(&[], quick_sim()).await;
    let r = generate(
        &h,
        json!({"prompt": "a cat", "response_format": "b64_json"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 1);
    assert!(data[0].get("url").is_none(), "{v}");
    let png = b64_decode(data[0]["b64_json"].as_str().unwrap());
    assert_eq!(png_size(&png), SQUARE);
    assert_eq!(h.sim_stats().await["images"]["served"], 1);
}

#[tokio::test]
async fn what_cannot_be_drawn_is_refused_before_the_upstream() {
    let h = Harness::start_with(&[], quick_sim()).await;
    let r = generate(&h, json!({"prompt": "x", "size": "1000x300"})).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error()["param"], "size");
    let r = generate(&h, json!({"prompt": "x", "model": "qwen3.8-max"})).await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.error()["code"],
        "model_not_image_capable",
        "{}",
        r.error()
    );
    assert!(r.error()["message"]
        .as_str()
        .unwrap()
        .contains("qwen3.7-plus"));
    let r = generate(&h, json!({"prompt": "x", "model": "no-such-model"})).await;
    assert_eq!(r.status, 404);
    assert_eq!(h.sim_stats().await["chats_created"], 0);
}

#[tokio::test]
async fn upstream_refusals_are_errors_never_an_empty_success() {
    // The account's daily image quota: a 429 that says how long. The account rests from
    // drawing only: it still chats, and the next picture fails at once without asking.
    let h = Harness::start_with(&[], quick_sim()).await;
    let r = generate(&h, json!({"prompt": "a dog @@sim:image_quota=3"})).await;
    assert_eq!(r.status, 429, "{}", String::from_utf8_lossy(&r.body));
    let retry_after: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry_after > 2 * 3600, "{retry_after}");
    let asked = h.sim_stats().await["completion_requests"].as_u64().unwrap();
    let r = h.ask("qwen3.7-plus", "still chatting?", false).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let r = generate(&h, json!({"prompt": "a cat"})).await;
    assert_eq!(r.status, 429, "{}", String::from_utf8_lossy(&r.body));
    let again: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(again > 2 * 3600 && again <= retry_after, "{again}");
    assert_eq!(
        h.sim_stats().await["completion_requests"].as_u64().unwrap(),
        asked + 1,
        "only the chat reached the upstream"
    );

    // Moderation of the prompt.
    let h = Harness::start_with(&[], quick_sim()).await;
    let r = generate(&h, json!({"prompt": "a dog @@sim:moderation_input"})).await;
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.error()["code"], "content_filter", "{}", r.error());

    // The picture failed upstream: an upstream error, not a 200 without images. One of
    // two failing fails the request.
    let h = Harness::start_with(&[("RETRY_MAX_ATTEMPTS", "1")], quick_sim()).await;
    let r = generate(&h, json!({"prompt": "a dog @@sim:image_fail", "n": 2})).await;
    assert!(
        r.status.is_server_error(),
        "{} {}",
        r.status,
        String::from_utf8_lossy(&r.body)
    );
    assert!(r.json().get("data").is_none());
}
