//! OpenAI's image generation, `POST /v1/images/generations`, over the engine: one image is
//! one image turn (`turn::Output::Image`: the upstream's `t2i` chat type, a fresh chat, never
//! continued), so accounts, pacing, quotas, challenges and retries are the chat routes'.
//! [`OpenAiImages`] is its [`ClientApi`] for that one turn; `fan_out` runs `n` of them and
//! writes the answer (addresses, or the images themselves as base64).
//!
//! Sizes: the upstream draws in aspect ratios, not pixels. `size` is `WIDTHxHEIGHT` (OpenAI's
//! `1024x1024`, `1792x1024`, `1536x1024`, …; within 3 % of a ratio the upstream draws) or a
//! ratio itself (`16:9`); `auto` is square. The picture comes in the upstream's pixels for
//! that ratio (1328×1328 for square). Anything else is a 400 listing what is accepted —
//! never an image of another shape than asked.

pub mod fan_out;

use bytes::Bytes;
use serde::Serialize;
use serde_json::{Map, Value};

use super::encoder::ChunkEncoder;
use crate::error::ProxyError;
use crate::translate::aggregate::Collected;
use crate::translate::state::{FinishReason, Usage};
use crate::turn::{
    AnswerHead, ApiRequest, ClientApi, Message, Output, ResponseFormat, Role, ThinkingIntent,
    TurnRequest,
};
use crate::untrusted::clip;

/// The aspect ratios the upstream draws (`qwen-protocol.md` §4.4), as `(name, w, h)`.
pub const RATIOS: [(&str, u32, u32); 7] = [
    ("1:1", 1, 1),
    ("16:9", 16, 9),
    ("9:16", 9, 16),
    ("4:3", 4, 3),
    ("3:4", 3, 4),
    ("3:2", 3, 2),
    ("2:3", 2, 3),
];

/// The most images one request asks for (each is a turn of its own upstream).
pub const MAX_IMAGES: u8 = 4;

/// The longest prompt accepted, in characters.
pub const MAX_PROMPT_CHARS: usize = 8000;

/// How the images are given back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    /// The upstream's address (signed; it expires after a while).
    Url,
    /// The image itself, fetched by the proxy, as base64.
    B64Json,
}

/// What only the images API asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageOptions {
    pub n: u8,
    pub format: ImageFormat,
}

/// The images API, one image turn at a time.
#[derive(Debug, Clone, Copy)]
pub struct OpenAiImages;

impl ClientApi for OpenAiImages {
    type Options = ImageOptions;
    // An image is never streamed (`parse` refuses `stream`); the type is the chat's.
    type Encoder = ChunkEncoder;

    const ID_PREFIX: &'static str = "img-";

    const LABEL: &'static str = "images";

    fn parse(body: &[u8]) -> Result<ApiRequest<ImageOptions>, ProxyError> {
        parse(body)
    }

    fn encoder(head: &AnswerHead<'_>, _: &ImageOptions) -> ChunkEncoder {
        ChunkEncoder::new(head.id, head.created, &head.turn.model, false)
    }

    /// One turn's images by address; `fan_out` gathers the `n` turns and the format.
    fn body(
        head: &AnswerHead<'_>,
        _: &ImageOptions,
        answer: &Collected,
        _: FinishReason,
        _: Usage,
    ) -> Bytes {
        let body = Generated {
            created: head.created,
            data: answer
                .images
                .iter()
                .map(|url| GeneratedImage {
                    url: Some(url.clone()),
                    b64_json: None,
                    revised_prompt: None,
                })
                .collect(),
        };
        Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
    }

    fn error_body(e: &ProxyError) -> Bytes {
        super::error::body(e)
    }
}

/// The answer: `{"created":…,"data":[{"url":…}|{"b64_json":…}]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Generated {
    pub created: u64,
    pub data: Vec<GeneratedImage>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct GeneratedImage {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub b64_json: Option<String>,
    /// The upstream does not rewrite prompts.
    pub revised_prompt: Option<String>,
}

fn bad(message: impl Into<String>, param: &str) -> ProxyError {
    ProxyError::bad_request(message, Some(param))
}

/// Parse a `POST /v1/images/generations` body.
pub fn parse(body: &[u8]) -> Result<ApiRequest<ImageOptions>, ProxyError> {
    let obj = super::request::json_object(body)?;
    let prompt = match obj.get("prompt") {
        Some(Value::String(p)) if !p.trim().is_empty() => p.clone(),
        _ => return Err(bad("`prompt` is required: a non-empty string.", "prompt")),
    };
    if prompt.chars().count() > MAX_PROMPT_CHARS {
        return Err(bad(
            format!("`prompt` is longer than {MAX_PROMPT_CHARS} characters."),
            "prompt",
        ));
    }
    let model = match obj.get("model") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(m)) if is_openai_image_model(m) => String::new(),
        Some(Value::String(m)) => m.clone(),
        Some(_) => return Err(bad("`model` must be a string.", "model")),
    };
    let n = match obj.get("n") {
        None | Some(Value::Null) => 1,
        Some(v) => match v.as_u64().and_then(|n| u8::try_from(n).ok()) {
            Some(n @ 1..=MAX_IMAGES) => n,
            _ => {
                return Err(bad(
                    format!("`n` must be a whole number from 1 to {MAX_IMAGES}."),
                    "n",
                ))
            }
        },
    };
    let ratio = match obj.get("size") {
        None | Some(Value::Null) => "1:1",
        Some(Value::String(s)) => ratio(s).ok_or_else(|| {
            let accepted: Vec<&str> = RATIOS.iter().map(|r| r.0).collect();
            bad(
                format!(
                    "Size `{}` cannot be drawn: the upstream draws the aspect ratios {} (as a ratio, or `WIDTHxHEIGHT` within 3 % of one, e.g. 1024x1024, 1792x1024, 1024x1792, 1536x1024, 1024x1536), or `auto`.",
                    clip(s),
                    accepted.join(", ")
                ),
                "size",
            )
        })?,
        Some(_) => return Err(bad("`size` must be a string.", "size")),
    };
    let format = match obj.get("response_format") {
        None | Some(Value::Null) => ImageFormat::Url,
        Some(Value::String(f)) if f == "url" => ImageFormat::Url,
        Some(Value::String(f)) if f == "b64_json" => ImageFormat::B64Json,
        Some(other) => {
            let other = other
                .as_str()
                .map_or_else(|| other.to_string(), str::to_owned);
            return Err(bad(
                format!(
                    "`response_format` must be `url` or `b64_json`, not `{}`.",
                    clip(&other)
                ),
                "response_format",
            ));
        }
    };
    refuse_unsupported(&obj)?;
    Ok(ApiRequest {
        turn: TurnRequest {
            model,
            messages: vec![Message::text_message(Role::User, prompt)],
            stream: false,
            max_tokens: None,
            stop: Vec::new(),
            thinking: Some(ThinkingIntent::Off),
            response_format: ResponseFormat::Text,
            tools: None,
            output: Output::Image { ratio },
            session: None,
            web_search: false,
        },
        options: ImageOptions { n, format },
    })
}

/// OpenAI's own image model names: the client means "the default", not a Qwen model.
fn is_openai_image_model(model: &str) -> bool {
    model.starts_with("dall-e") || model.starts_with("gpt-image")
}

/// Options that would change the answer and cannot be honoured: a clear 400, not a quiet
/// difference. (`quality`, `style`, `user`, `moderation`, `background: "auto"` change
/// nothing the client relies on and are accepted.)
fn refuse_unsupported(obj: &Map<String, Value>) -> Result<(), ProxyError> {
    match obj.get("stream") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => {}
        Some(_) => {
            return Err(bad(
                "Streamed image generation is not supported; send `stream: false`.",
                "stream",
            ))
        }
    }
    match obj.get("output_format").and_then(Value::as_str) {
        None | Some("png") => {}
        Some(_) => {
            return Err(bad(
                "The upstream draws PNG images only: `output_format` must be `png`.",
                "output_format",
            ))
        }
    }
    match obj.get("background").and_then(Value::as_str) {
        None | Some("auto" | "opaque") => {}
        Some(_) => {
            return Err(bad(
                "The upstream draws opaque images only: `background` must be `auto` or `opaque`.",
                "background",
            ))
        }
    }
    Ok(())
}

/// The ratio a `size` asks for: a ratio by name, `auto` (square), or pixels within 3 % of
/// a ratio.
pub fn ratio(size: &str) -> Option<&'static str> {
    let size = size.trim();
    if size.eq_ignore_ascii_case("auto") {
        return Some("1:1");
    }
    if let Some(r) = RATIOS.iter().find(|r| r.0 == size) {
        return Some(r.0);
    }
    let (w, h) = size.split_once(['x', 'X', '×'])?;
    let (w, h): (u32, u32) = (w.trim().parse().ok()?, h.trim().parse().ok()?);
    if w == 0 || h == 0 || w > 8192 || h > 8192 {
        return None;
    }
    let asked = f64::from(w) / f64::from(h);
    RATIOS
        .iter()
        .map(|&(name, a, b)| (name, (asked / (f64::from(a) / f64::from(b)) - 1.0).abs()))
        .filter(|&(_, off)| off <= 0.03)
        .min_by(|x, y| x.1.total_cmp(&y.1))
        .map(|(name, _)| name)
}

#[cfg(test)]
mod tests;
