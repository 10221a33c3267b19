//! The upload client: the grant's target and fields, OSS error codes, descriptors; then the
//! upload flow against the simulator's file machinery: grants, signed uploads, the
//! parse step, and each fault the simulator can arm (an STS failure, an expired grant, the
//! parse challenge and rate limit) — then a completion that refers to the files, whose
//! answer says what the model saw of them.

use std::collections::HashMap;

use http_body_util::BodyExt;
use serde_json::Value;
use tokio::net::TcpListener;

use super::*;
use crate::config::Config;
use crate::qwen::client::Route;
use crate::qwen::headers::Credentials;
use crate::qwen::request::{FeatureConfig, Thinking, Turn};
use crate::sim::{SimConfig, Simulator};

struct Rig {
    sim: Simulator,
    client: QwenClient,
    who: Caller,
}

async fn rig() -> Rig {
    let sim = Simulator::serve(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        SimConfig::default(),
    );
    let mut vars: HashMap<String, String> = HashMap::new();
    vars.insert("QWEN_BASE_URL".into(), sim.base_url());
    vars.insert("QWEN_COOKIES".into(), "token=acct-files".into());
    let config = Config::from_source(&vars, false).unwrap();
    let client = QwenClient::new(&config.upstream, 1, crate::metrics::Metrics::new());
    let who = client.caller(
        &Credentials {
            cookies: config.upstream.cookies.clone(),
            token: config.upstream.auth_token.clone(),
            ..Credentials::default()
        },
        Route::Direct,
    );
    Rig { sim, client, who }
}

impl Rig {
    async fn upload(
        &self,
        name: &str,
        media_type: &str,
        class: FileClass,
        bytes: &[u8],
    ) -> Result<Uploaded, FileError> {
        let file = Upload {
            name,
            media_type,
            class,
            bytes: Bytes::copy_from_slice(bytes),
        };
        self.client.upload(&self.who, &file).await
    }

    /// A completion in a new chat; its answer.
    async fn ask(&self, content: &str) -> String {
        let chat = self
            .client
            .create_chat(&self.who, "qwen3.7-plus", "t2t")
            .await
            .unwrap();
        let body = self
            .client
            .start_completion(&self.who, &turn(&chat, content))
            .await
            .unwrap();
        answer_of(&body.collect().await.unwrap().to_bytes())
    }

    async fn stats(&self) -> Value {
        let url = format!("{}/__sim/stats", self.sim.base_url());
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Full<Bytes>>();
        let rsp = client.get(url.parse().unwrap()).await.unwrap();
        serde_json::from_slice(&rsp.collect().await.unwrap().to_bytes()).unwrap()
    }
}

#[tokio::test]
async fn a_document_is_uploaded_signed_and_parsed_an_image_only_uploaded() {
    let rig = rig().await;
    let doc = rig
        .upload(
            "context.txt",
            "text/plain",
            FileClass::Document,
            b"the history",
        )
        .await
        .unwrap();
    assert_eq!(doc.size, 11);
    assert!(doc.url.starts_with(&rig.sim.base_url()), "{}", doc.url);
    assert!(!doc.url.contains('?'), "no signature in the file's URL");
    let png = [0x89, b'P', b'N', b'G', 1, 2, 3];
    let image = rig
        .upload("a.png", "image/png", FileClass::Image, &png)
        .await
        .unwrap();
    assert_ne!(image.file_id, doc.file_id);
    let files = &rig.stats().await["files"];
    assert_eq!(files["grants"], 2);
    assert_eq!(files["uploads"], 2);
    assert_eq!(files["upload_bytes"], 11 + 7);
    assert_eq!(
        files["uploads_refused"], 0,
        "the simulator accepted both signatures"
    );
    assert_eq!(files["parses"], 1, "only the document is parsed");
}

#[tokio::test]
async fn an_image_declared_as_text_is_refused_by_the_storage() {
    let rig = rig().await;
    let e = rig
        .upload("a.png", "text/plain", FileClass::Image, b"png")
        .await
        .unwrap_err();
    match e {
        FileError::Upstream(e) => {
            assert_eq!(e.upstream_class(), Some(UpstreamClass::Rejected));
            assert!(e.to_string().contains("InvalidArgument"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(rig.stats().await["files"]["uploads_refused"], 1);
}

#[tokio::test]
async fn an_expired_grant_is_replaced_once() {
    let rig = rig().await;
    rig.ask("arm @@sim:upload_expired").await;
    rig.upload("c.txt", "text/plain", FileClass::Document, b"x")
        .await
        .unwrap();
    let files = &rig.stats().await["files"];
    assert_eq!(files["grants"], 2, "a second grant after the expired one");
    assert_eq!(files["uploads_refused"], 1);
    assert_eq!(files["uploads"], 1);
    // Two in a row: the second refusal is the answer.
    rig.ask("arm @@sim:upload_expired=2").await;
    let e = rig
        .upload("c.txt", "text/plain", FileClass::Document, b"x")
        .await
        .unwrap_err();
    assert!(matches!(e, FileError::Upstream(_)), "{e:?}");
}

#[tokio::test]
async fn an_sts_failure_is_an_upstream_error() {
    let rig = rig().await;
    rig.ask("arm @@sim:sts_failure").await;
    let e = rig
        .upload("c.txt", "text/plain", FileClass::Document, b"x")
        .await
        .unwrap_err();
    match e {
        FileError::Upstream(e) => assert_eq!(e.upstream_class(), Some(UpstreamClass::ServerError)),
        other => panic!("{other:?}"),
    }
    assert_eq!(rig.stats().await["files"]["grants_refused"], 1);
    // Armed once: the next upload goes through.
    rig.upload("c.txt", "text/plain", FileClass::Document, b"x")
        .await
        .unwrap();
}

#[tokio::test]
async fn the_parse_challenge_and_rate_limit_refuse_the_account_for_now() {
    let rig = rig().await;
    rig.ask("arm @@sim:parse_challenge=60").await;
    for _ in 0..2 {
        let e = rig
            .upload("c.txt", "text/plain", FileClass::Document, b"x")
            .await
            .unwrap_err();
        assert_eq!(e, FileError::ParseRefused { challenge: true });
    }
    let rig = self::rig().await;
    rig.ask("arm @@sim:parse_rate_limit").await;
    let e = rig
        .upload("c.txt", "text/plain", FileClass::Document, b"x")
        .await
        .unwrap_err();
    assert_eq!(e, FileError::ParseRefused { challenge: false });
    rig.upload("c.txt", "text/plain", FileClass::Document, b"x")
        .await
        .unwrap();
}

#[tokio::test]
async fn a_completion_sees_its_files() {
    let rig = rig().await;
    let png = b"\x89PNG not really";
    let image = rig
        .upload("a.png", "image/png", FileClass::Image, png)
        .await
        .unwrap();
    let chat = rig
        .client
        .create_chat(&rig.who, "qwen3.7-plus", "t2t")
        .await
        .unwrap();
    let descriptor = serde_json::to_value(image.descriptor()).unwrap();
    let with_file = Turn {
        files: std::slice::from_ref(&descriptor),
        ..turn(&chat, "what is this? @@sim:files")
    };
    let body = rig
        .client
        .start_completion(&rig.who, &with_file)
        .await
        .unwrap();
    let text = answer_of(&body.collect().await.unwrap().to_bytes());
    let digest = crate::common::sha256_hex(png);
    assert!(
        text.contains(&format!(
            "a.png: image/png, {} bytes, sha256 {digest}",
            png.len()
        )),
        "{text}"
    );
    assert_eq!(rig.stats().await["files"]["attached"], 1);
}

/// A first turn in `chat`.
fn turn<'a>(chat: &'a str, content: &'a str) -> Turn<'a> {
    Turn {
        chat_id: chat,
        parent_id: None,
        model: "qwen3.7-plus",
        chat_type: "t2t",
        content,
        files: &[],
        features: FeatureConfig::new(Thinking::Off, false),
        size: None,
    }
}

/// The answer phase's text of an upstream SSE stream.
fn answer_of(sse: &[u8]) -> String {
    String::from_utf8_lossy(sse)
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter(|v| v.pointer("/choices/0/delta/phase").and_then(Value::as_str) == Some("answer"))
        .filter_map(|v| {
            v.pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .collect()
}

fn grant(file_url: &str) -> Grant {
    Grant::from_json(&json!({"data": {
        "access_key_id": "STS.a", "access_key_secret": "s", "security_token": "t",
        "bucketname": "qwen-webui-prod", "endpoint": "oss-ap-southeast-1.aliyuncs.com",
        "region": "oss-ap-southeast-1", "file_path": "u/f_a.txt",
        "file_url": file_url, "file_id": "f"}}))
    .unwrap()
}

#[test]
fn the_upload_goes_where_the_grant_says() {
    let g = grant(
        "https://qwen-webui-prod.oss-ap-southeast-1.aliyuncs.com/u/f_a.txt?Expires=1&Signature=x",
    );
    assert_eq!(
        g.target(),
        "https://qwen-webui-prod.oss-ap-southeast-1.aliyuncs.com/u/f_a.txt"
    );
    assert_eq!(g.region, "ap-southeast-1");
    // A URL that does not name the object: the bucket's own host.
    let g = grant("https://cdn.example/other?x=1");
    assert_eq!(
        g.target(),
        "https://qwen-webui-prod.oss-ap-southeast-1.aliyuncs.com/u/f_a.txt"
    );
}

#[test]
fn a_grant_without_its_credentials_is_a_protocol_error() {
    let e = Grant::from_json(&json!({"data": {"file_id": "f"}})).unwrap_err();
    assert_eq!(e.upstream_class(), Some(UpstreamClass::Protocol));
}

#[test]
fn oss_error_codes_are_read() {
    let body = b"<?xml version=\"1.0\"?><Error><Code>SecurityTokenExpired</Code></Error>";
    assert_eq!(xml_field(body, "Code"), Some("SecurityTokenExpired"));
    assert_eq!(xml_field(b"nope", "Code"), None);
}

#[test]
fn descriptors_name_the_class() {
    let u = Uploaded {
        file_id: "f".into(),
        url: "https://b/u/f_a.png".into(),
        name: "a.png".into(),
        media_type: "image/png".into(),
        size: 3,
        class: FileClass::Image,
    };
    let v = serde_json::to_value(u.descriptor()).unwrap();
    assert_eq!(v["type"], "image");
    assert_eq!(v["file_class"], "vision");
    assert_eq!(v["id"], "f");
    assert_eq!(v["file_type"], "image/png");
    assert_eq!(v["status"], "uploaded");
}
