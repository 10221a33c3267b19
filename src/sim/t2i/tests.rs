//! Image generation end to end: `chats/new` with its chat type, the t2i completion's
//! frames, the picture's URL and `GET`, the E7 refusals and the image directives.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

use super::{size_of, SIZES};
use crate::sim::handlers::account_id;
use crate::sim::png::tests::dimensions;
use crate::sim::{Gate, SimConfig, Simulator};

const TOKEN: &str = "tok-images";
const MODEL: &str = "qwen3.7-plus";

struct Sim {
    sim: Simulator,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// An answer: status, `x-actual-status-code`, content type, body.
struct Answer {
    status: u16,
    actual: Option<String>,
    content_type: String,
    body: Bytes,
}

impl Answer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    /// The SSE events' JSON payloads, in order.
    fn events(&self) -> Vec<Value> {
        self.text()
            .split("\n\n")
            .filter(|e| !e.trim().is_empty())
            .map(|e| serde_json::from_str(e.trim().strip_prefix("data: ").unwrap()).unwrap())
            .collect()
    }
}

impl Sim {
    async fn start(config: SimConfig) -> Self {
        let config = SimConfig {
            gate: Gate::None,
            linger: Duration::from_millis(5),
            ..config
        };
        let sim = Simulator::start(SocketAddr::from(([127, 0, 0, 1], 0)), config)
            .await
            .unwrap();
        let client = Client::builder(TokioExecutor::new()).build_http();
        Sim { sim, client }
    }

    async fn send(&self, method: &str, path_or_url: &str, body: Option<Value>) -> Answer {
        let url = if path_or_url.starts_with("http") {
            path_or_url.to_owned()
        } else {
            format!("{}{path_or_url}", self.sim.base_url())
        };
        let req = Request::builder()
            .method(method)
            .uri(url)
            .header("cookie", format!("token={TOKEN}"))
            .body(Full::new(Bytes::from(
                body.map(|b| b.to_string()).unwrap_or_default(),
            )))
            .unwrap();
        let rsp = tokio::time::timeout(Duration::from_secs(10), self.client.request(req))
            .await
            .unwrap()
            .unwrap();
        let header = |name: &str| {
            rsp.headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_owned())
        };
        let (actual, content_type) = (
            header("x-actual-status-code"),
            header("content-type").unwrap_or_default(),
        );
        let status = rsp.status().as_u16();
        let body = rsp.into_body().collect().await.unwrap().to_bytes();
        Answer {
            status,
            actual,
            content_type,
            body,
        }
    }

    /// A new chat created with `chat_type` (none: the body names none).
    async fn chat(&self, chat_type: Option<&str>) -> String {
        let mut body = json!({"title": "New Chat", "models": [MODEL], "chat_mode": "normal"});
        if let Some(t) = chat_type {
            body["chat_type"] = json!(t);
        }
        let rsp = self.send("POST", "/api/v2/chats/new", Some(body)).await;
        rsp.json()["data"]["id"].as_str().unwrap().to_owned()
    }

    /// A completion as the front end writes a t2i one; `top` is merged into the body and
    /// `in_message` into the message.
    async fn complete(
        &self,
        chat: &str,
        model: &str,
        chat_type: &str,
        prompt: &str,
        top: Value,
        in_message: Value,
    ) -> Answer {
        let mut message = json!({"role": "user", "content": prompt, "chat_type": chat_type,
            "sub_chat_type": chat_type, "files": [],
            "feature_config": {"thinking_enabled": true, "thinking_mode": "Thinking",
                               "output_schema": "phase"}});
        merge(&mut message, in_message);
        let mut body = json!({"stream": true, "incremental_output": true, "chat_id": chat,
            "chat_mode": "normal", "model": model, "parent_id": null,
            "messages": [message]});
        merge(&mut body, top);
        self.send(
            "POST",
            &format!("/api/v2/chat/completions?chat_id={chat}"),
            Some(body),
        )
        .await
    }

    /// A t2i completion in a new t2i chat.
    async fn draw(&self, prompt: &str, top: Value, in_message: Value) -> Answer {
        let chat = self.chat(Some("t2i")).await;
        self.complete(&chat, MODEL, "t2i", prompt, top, in_message)
            .await
    }

    async fn stats(&self) -> Value {
        self.send("GET", "/__sim/stats", None).await.json()
    }
}

fn merge(into: &mut Value, from: Value) {
    if let (Some(into), Value::Object(from)) = (into.as_object_mut(), from) {
        into.extend(from);
    }
}

/// The delta of an event.
fn delta(event: &Value) -> &Value {
    &event["choices"][0]["delta"]
}

/// E7 as the simulator writes it.
fn assert_e7(a: &Answer, case: &str) {
    assert_eq!(a.actual.as_deref(), Some("400"), "{case}: {}", a.text());
    let v = a.json();
    assert_eq!(v["success"], false, "{case}");
    assert_eq!(v["data"]["code"], "Bad_Request", "{case}");
    assert_eq!(v["data"]["details"], "Internal error", "{case}");
}

#[tokio::test]
async fn a_t2i_stream_hands_out_a_png_of_the_ratio() {
    let s = Sim::start(SimConfig::default()).await;
    let mut pictures = Vec::new();
    // The ratio at the top level, in the message, in the message's meta.
    for (ratio, top, in_message) in [
        ("16:9", json!({"size": "16:9"}), json!({})),
        ("3:4", json!({}), json!({"size": "3:4"})),
        (
            "9:16",
            json!({}),
            json!({"extra": {"meta": {"size": "9:16"}}}),
        ),
    ] {
        // Thinking asked for, in the body and by directive: t2i has none.
        let prompt = format!("a lighthouse at dusk, {ratio} @@sim:think");
        let a = s.draw(&prompt, top, in_message).await;
        assert_eq!(a.status, 200);
        assert_eq!(a.content_type, "text/event-stream; charset=utf-8");
        let events = a.events();
        assert_eq!(events.len(), 4, "{}", a.text());
        let created = &events[0]["response.created"];
        let rid = created["response_id"].as_str().unwrap();
        for e in &events[1..] {
            assert_eq!(e["response_id"], rid);
            assert_eq!(delta(e)["phase"], "image_gen", "{e}");
            assert_eq!(delta(e)["role"], "assistant");
        }
        assert_eq!(delta(&events[1])["status"], "typing");
        assert_eq!(delta(&events[1])["content"], "");
        assert!(delta(&events[1]).get("extra").is_none());
        let with_url = delta(&events[2]);
        assert_eq!(with_url["status"], "typing");
        let size = size_of(ratio).unwrap();
        assert_eq!(
            with_url["extra"]["output_image_hw"],
            json!([[size.height, size.width]])
        );
        assert_eq!(delta(&events[3])["status"], "finished");
        assert_eq!(delta(&events[3])["content"], "");

        // {base}/output/{uid}/t2i/{response_id}/{unix_ts}.png?key={key}
        let url = with_url["content"].as_str().unwrap();
        let prefix = format!(
            "{}/output/{}/t2i/{rid}/",
            s.sim.base_url(),
            account_id(TOKEN)
        );
        let rest = url.strip_prefix(&prefix).unwrap();
        let (ts, key) = rest.split_once(".png?key=").unwrap();
        assert!(ts.parse::<u64>().unwrap() > 1_700_000_000, "{url}");
        assert!(!key.is_empty());

        let png = s.send("GET", url, None).await;
        assert_eq!(png.status, 200);
        assert_eq!(png.content_type, "image/png");
        assert_eq!(dimensions(&png.body), (size.width, size.height), "{ratio}");
        pictures.push(png.body);
    }
    // Another prompt draws another picture.
    assert_ne!(pictures[0], pictures[1]);
    let stats = s.stats().await;
    assert_eq!(stats["images"], json!({"generated": 3, "served": 3}));
    assert_eq!(stats["completions"], 3);
    assert_eq!(stats["in_flight"], 0);
}

#[tokio::test]
async fn a_picture_needs_its_key() {
    let s = Sim::start(SimConfig::default()).await;
    let a = s
        .draw("a red bicycle", json!({"size": "1:1"}), json!({}))
        .await;
    let events = a.events();
    let url = delta(&events[2])["content"].as_str().unwrap().to_owned();
    let (bare, key) = url.split_once("?key=").unwrap();
    // No key, an empty one, a wrong one, another picture's: 403.
    let other = s
        .draw("a blue bicycle", json!({}), json!({}))
        .await
        .events();
    let other_key = delta(&other[2])["content"]
        .as_str()
        .unwrap()
        .split_once("?key=")
        .unwrap()
        .1
        .to_owned();
    assert_ne!(key, other_key);
    for wrong in [
        bare.to_owned(),
        format!("{bare}?key="),
        format!("{bare}?key=x{key}"),
        format!("{bare}?key={other_key}"),
    ] {
        let refused = s.send("GET", &wrong, None).await;
        assert_eq!(refused.status, 403, "{wrong}");
        assert!(refused.text().contains("AccessDenied"));
    }
    // A path no completion generated, or not a picture at all: 404.
    for unknown in [
        format!("/output/{}/t2i/nope/1.png?key={key}", account_id(TOKEN)),
        "/output/".to_owned(),
    ] {
        assert_eq!(s.send("GET", &unknown, None).await.status, 404, "{unknown}");
    }
    assert_eq!(s.send("GET", &url, None).await.status, 200);
    // The key may come with other parameters.
    let (_, path_and_query) = url.split_once("/output/").unwrap();
    let reordered = format!(
        "/output/{}",
        path_and_query.replace("?key=", "?x-oss-process=a&key=")
    );
    assert_eq!(s.send("GET", &reordered, None).await.status, 200);
    assert_eq!(
        s.stats().await["images"],
        json!({"generated": 2, "served": 2})
    );
}

#[tokio::test]
async fn bad_sizes_models_and_chats_get_e7() {
    let s = Sim::start(SimConfig::default()).await;
    for size in [json!("21:9"), json!("1024*1024"), json!(""), json!(4)] {
        let a = s.draw("a cat", json!({"size": size}), json!({})).await;
        assert_e7(&a, &format!("size {size}"));
    }
    // The top-level size decides; a bad one in the message is not read then.
    let a = s
        .draw("a cat", json!({"size": "2:3"}), json!({"size": "7:1"}))
        .await;
    assert_eq!(
        delta(&a.events()[2])["extra"]["output_image_hw"],
        json!([[1584, 1056]])
    );
    // No size anywhere: 1:1.
    let a = s.draw("a cat", json!({}), json!({})).await;
    assert_eq!(
        delta(&a.events()[2])["extra"]["output_image_hw"],
        json!([[1328, 1328]])
    );

    // A chat created as t2t (or as nothing) takes no t2i completion.
    for created in [Some("t2t"), None, Some("search")] {
        let chat = s.chat(created).await;
        let a = s
            .complete(
                &chat,
                MODEL,
                "t2i",
                "a cat",
                json!({"size": "1:1"}),
                json!({}),
            )
            .await;
        assert_e7(&a, &format!("chat created as {created:?}"));
    }
    // A model whose catalogue entry does not list t2i, or no model of the catalogue.
    for model in ["qwen3.8-max", "qwen3.5-omni-plus", "gpt-image-1"] {
        let chat = s.chat(Some("t2i")).await;
        let a = s
            .complete(
                &chat,
                model,
                "t2i",
                "a cat",
                json!({"size": "1:1"}),
                json!({}),
            )
            .await;
        assert_e7(&a, model);
    }
    // Not stricter than before: t2t and search completions in a t2i chat are answered.
    let chat = s.chat(Some("t2i")).await;
    for chat_type in ["t2t", "search"] {
        let a = s
            .complete(&chat, MODEL, chat_type, "hi", json!({}), json!({}))
            .await;
        assert!(
            a.text()
                .contains("\"status\": \"finished\", \"phase\": \"answer\""),
            "{chat_type}: {}",
            a.text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(s.stats().await["images"]["generated"], 2);
}

#[tokio::test]
async fn image_directives() {
    let s = Sim::start(SimConfig::default()).await;
    // The account's image quota: E1 about image generation, as a JSON document.
    let a = s
        .draw("a cat @@sim:image_quota=2", json!({}), json!({}))
        .await;
    assert_eq!(a.content_type, "application/json");
    let v = a.json();
    assert_eq!(v["data"]["code"], "RateLimited");
    assert_eq!(v["data"]["num"], 2.0);
    assert!(v["data"]["details"]
        .as_str()
        .unwrap()
        .contains("image generation"));
    assert!(v["data"]["template"].as_str().unwrap().contains("{{num}}"));
    let v = s
        .draw("a cat @@sim:image_quota", json!({}), json!({}))
        .await
        .json();
    assert_eq!(v["data"]["num"], 4.0);
    // Chat is not image generation: a t2t completion is answered.
    let chat = s.chat(None).await;
    let a = s
        .complete(
            &chat,
            MODEL,
            "t2t",
            "hi @@sim:image_quota",
            json!({}),
            json!({}),
        )
        .await;
    assert!(a.text().contains("\"phase\": \"answer\""), "{}", a.text());

    // Input moderation refuses an image prompt too (E12).
    let a = s
        .draw("@@sim:moderation_input a cat", json!({}), json!({}))
        .await;
    assert_eq!(a.json()["data"]["code"], "data_inspection_failed");

    // A failed generation: the empty image_gen frame, then E15; no URL, no end frame.
    let a = s.draw("a cat @@sim:image_fail", json!({}), json!({})).await;
    let events = a.events();
    assert_eq!(events.len(), 3, "{}", a.text());
    assert_eq!(delta(&events[1])["phase"], "image_gen");
    assert_eq!(delta(&events[1])["content"], "");
    assert_eq!(events[2], json!({"error": "Internal error!"}));
    assert!(!a.text().contains("/output/"));

    // The other mid-stream faults strike at the same point.
    let a = s
        .draw("a cat @@sim:moderation_output", json!({}), json!({}))
        .await;
    let events = a.events();
    assert_eq!(events.len(), 3);
    assert_eq!(events[2]["error"]["code"], "data_inspection_failed");
    // An empty stream ends after response.created.
    let a = s.draw("a cat @@sim:empty", json!({}), json!({})).await;
    assert_eq!(a.events().len(), 1);

    let stats = s.stats().await;
    assert_eq!(stats["images"], json!({"generated": 0, "served": 0}));
    assert_eq!(stats["in_flight"], 0);
}

#[tokio::test]
async fn the_url_comes_after_the_generation_time() {
    let s = Sim::start(SimConfig {
        image_delay: Duration::from_millis(300),
        ..SimConfig::default()
    })
    .await;
    let chat = s.chat(Some("t2i")).await;
    let started = std::time::Instant::now();
    let a = s
        .complete(&chat, MODEL, "t2i", "a cat", json!({}), json!({}))
        .await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(a.events().len(), 4);
}

#[test]
fn every_ratio_has_its_dimensions() {
    for (ratio, size) in SIZES {
        let (w, h) = ratio.split_once(':').unwrap();
        let (w, h): (f64, f64) = (w.parse().unwrap(), h.parse().unwrap());
        let drawn = f64::from(size.width) / f64::from(size.height);
        assert!((drawn - w / h).abs() < 0.05, "{ratio}: {size:?}");
        assert_eq!(size_of(ratio), Some(size));
    }
    assert_eq!(size_of("1:2"), None);
}
