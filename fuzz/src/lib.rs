//! What the fuzz targets share: the input header, chunkings chosen by the fuzzer, a JSON
//! generator for the structured request mode, and the checks every request parser's errors
//! must pass.
//!
//! Input layout of the chunking targets (`sse_decoder`, `pipeline`, `tool_scan`): the first
//! [`HEADER_LEN`] bytes are a header, the rest is the body (upstream bytes or answer text):
//!
//! ```text
//! byte 0, 1   target configuration (each target documents its bits)
//! byte 2..5   chunking A: mode, seed (u16, little endian)
//! byte 5..8   chunking B: mode, seed
//! ```
//!
//! A shorter input is padded with zeros (an empty body). Seeds in `corpus/<target>/` are the
//! captures behind an 8-byte header (see README.md).

use arbitrary::Unstructured;
use serde_json::{Map, Value};

pub const HEADER_LEN: usize = 8;

/// The fuzzer's choice of configuration and of two chunkings.
#[derive(Debug, Clone, Copy)]
pub struct Header {
    pub config: [u8; 2],
    pub a: Recipe,
    pub b: Recipe,
}

/// Split `data` into the header and the body.
pub fn header(data: &[u8]) -> (Header, &[u8]) {
    let mut h = [0u8; HEADER_LEN];
    let n = data.len().min(HEADER_LEN);
    h[..n].copy_from_slice(&data[..n]);
    let recipe = |at: usize| Recipe {
        mode: h[at],
        seed: u16::from_le_bytes([h[at + 1], h[at + 2]]),
    };
    (
        Header {
            config: [h[0], h[1]],
            a: recipe(2),
            b: recipe(5),
        },
        &data[n..],
    )
}

/// How to cut a body into chunks.
#[derive(Debug, Clone, Copy)]
pub struct Recipe {
    /// `mode % 7`: 0 whole, 1 two pieces at `seed`, 2 one byte each, 3 random sizes 1..=8,
    /// 4 random sizes 1..=64, 5 random sizes 0..=24 (empty chunks too), 6 three pieces.
    pub mode: u8,
    pub seed: u16,
}

/// xorshift64*: deterministic per seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u16) -> Self {
        Rng((u64::from(seed) + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

impl Recipe {
    pub const WHOLE: Recipe = Recipe { mode: 0, seed: 0 };

    /// The end offsets of the chunks of a `len`-byte body, in order (the last is `len`;
    /// equal neighbours are empty chunks).
    pub fn ends(self, len: usize) -> Vec<usize> {
        let mut ends = Vec::new();
        let mut rng = Rng::new(self.seed);
        match self.mode % 7 {
            0 => {}
            1 => ends.push(usize::from(self.seed) % (len + 1)),
            2 => ends.extend(1..len),
            6 => {
                let mut a = usize::from(self.seed) % (len + 1);
                let mut b = rng.below(len + 1);
                if a > b {
                    std::mem::swap(&mut a, &mut b);
                }
                ends.extend([a, b]);
            }
            mode => {
                let (min, max) = match mode {
                    3 => (1, 8),
                    4 => (1, 64),
                    _ => (0, 24),
                };
                let mut at = 0;
                loop {
                    at += min + rng.below(max - min + 1);
                    if at >= len {
                        break;
                    }
                    ends.push(at);
                }
            }
        }
        ends.push(len);
        ends
    }

    /// `body` in chunks.
    pub fn chunks(self, body: &[u8]) -> Vec<&[u8]> {
        let mut start = 0;
        self.ends(body.len())
            .into_iter()
            .map(|end| {
                let chunk = &body[start..end];
                start = end;
                chunk
            })
            .collect()
    }

    /// `text` in non-empty pieces, each cut moved forward to a character boundary.
    pub fn pieces(self, text: &str) -> Vec<&str> {
        let mut start = 0;
        let mut out = Vec::new();
        for end in self.ends(text.len()) {
            let mut end = end.max(start);
            while !text.is_char_boundary(end) {
                end += 1;
            }
            if end > start {
                out.push(&text[start..end]);
                start = end;
            }
        }
        out
    }
}

/// A JSON value built from fuzzer bytes: keys mostly from `keys`, strings often from
/// `strings`, nesting at most `depth` deep. Reaches deep into a parser where mutated raw
/// JSON rarely stays valid.
pub fn arbitrary_json(
    u: &mut Unstructured<'_>,
    keys: &[&str],
    strings: &[&str],
    depth: u32,
) -> arbitrary::Result<Value> {
    let kinds = if depth == 0 { 5 } else { 8 };
    Ok(match u.choose_index(kinds)? {
        0 => Value::Null,
        1 => Value::Bool(u.arbitrary()?),
        2 => Value::from(match u.choose_index(4)? {
            0 => i64::from(u.int_in_range(-2i8..=8)?),
            1 => i64::from(u.arbitrary::<u16>()?),
            2 => u.arbitrary::<i64>()?,
            _ => u.choose(&[0, 1, 4096, 32000, i64::MAX, -1])?.to_owned(),
        }),
        3 => serde_json::Number::from_f64(u.arbitrary::<f64>()?).map_or(Value::Null, Value::Number),
        4 => Value::String(string(u, strings)?),
        5 => Value::String(u.arbitrary::<String>()?),
        6 => {
            let n = u.int_in_range(0..=4)?;
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                items.push(arbitrary_json(u, keys, strings, depth - 1)?);
            }
            Value::Array(items)
        }
        _ => Value::Object(object(u, keys, strings, depth - 1)?),
    })
}

/// A JSON object of the vocabulary's keys (sometimes others).
pub fn object(
    u: &mut Unstructured<'_>,
    keys: &[&str],
    strings: &[&str],
    depth: u32,
) -> arbitrary::Result<Map<String, Value>> {
    let n = u.int_in_range(0..=6)?;
    let mut map = Map::new();
    for _ in 0..n {
        let key = if u.ratio(7u8, 8u8)? {
            (*u.choose(keys)?).to_owned()
        } else {
            u.arbitrary::<String>()?
        };
        map.insert(key, arbitrary_json(u, keys, strings, depth)?);
    }
    Ok(map)
}

fn string(u: &mut Unstructured<'_>, strings: &[&str]) -> arbitrary::Result<String> {
    Ok(if strings.is_empty() {
        u.arbitrary::<String>()?
    } else {
        (*u.choose(strings)?).to_owned()
    })
}

/// The request body a target parses: the input as it is, or — when it starts with a 0 byte
/// (never the start of a JSON text) — a JSON object generated from the rest.
pub fn request_body(data: &[u8], keys: &[&str], strings: &[&str]) -> Option<Vec<u8>> {
    match data.split_first() {
        Some((0, rest)) => {
            let mut u = Unstructured::new(rest);
            let obj = object(&mut u, keys, strings, 5).ok()?;
            serde_json::to_vec(&Value::Object(obj)).ok()
        }
        _ => Some(data.to_vec()),
    }
}

/// Which error body the API answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorShape {
    /// `{"error":{"message","type","param","code"}}` (Chat Completions, Responses).
    OpenAi,
    /// `{"type":"error","error":{"type","message"}}`.
    Anthropic,
}

/// Every parser error is a 400 `invalid_request_error`; it names the parameter unless the
/// body as a whole is wrong (not JSON, not an object); its message is not empty, bounded,
/// and echoes client strings only escaped (no control or line-breaking characters); the
/// API's error body is JSON that says the same.
pub fn check_request_error(body: &[u8], e: &qwen_proxy::error::ProxyError, shape: ErrorShape) {
    use qwen_proxy::error::ProxyError;
    assert_eq!(e.status().as_u16(), 400, "not a 400: {e:?}");
    assert!(
        matches!(e, ProxyError::BadRequest { .. }),
        "not a bad request: {e:?}"
    );
    let is_object = matches!(serde_json::from_slice::<Value>(body), Ok(Value::Object(_)));
    match e.param() {
        Some(param) => {
            assert!(
                !param.is_empty()
                    && param.is_ascii()
                    && param.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                    && !param
                        .chars()
                        .any(|c| c.is_ascii_whitespace() || c.is_ascii_control()),
                "malformed param {param:?} in {e:?}"
            );
        }
        None => assert!(
            !is_object,
            "a JSON object body got an error without a param: {e:?}"
        ),
    }
    let message = e.message();
    assert!(!message.trim().is_empty(), "empty message: {e:?}");
    assert!(
        message.len() <= 4096,
        "message of {} bytes: {e:?}",
        message.len()
    );
    assert!(
        !message.chars().any(|c| c.is_control()
            || matches!(c, '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}')
            || ('\u{202a}'..='\u{202e}').contains(&c)
            || ('\u{2066}'..='\u{2069}').contains(&c)),
        "unescaped client text in the message: {message:?}"
    );
    match shape {
        ErrorShape::OpenAi => {
            let v: Value = serde_json::from_slice(&qwen_proxy::api::openai::error::body(e))
                .expect("the OpenAI error body is JSON");
            assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
            assert_eq!(v["error"]["message"], message.as_str(), "{v}");
            assert_eq!(v["error"]["param"].as_str(), e.param(), "{v}");
        }
        ErrorShape::Anthropic => {
            assert_eq!(qwen_proxy::api::anthropic::error::status(e).as_u16(), 400);
            let v: Value = serde_json::from_slice(&qwen_proxy::api::anthropic::error::body(e))
                .expect("the Anthropic error body is JSON");
            assert_eq!(v["type"], "error", "{v}");
            assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
            assert_eq!(v["error"]["message"], message.as_str(), "{v}");
        }
    }
}

/// Keys every client API's requests use (the structured mode's vocabulary).
pub const COMMON_KEYS: &[&str] = &[
    "model",
    "messages",
    "role",
    "content",
    "type",
    "text",
    "name",
    "stream",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "max_tokens",
    "stop",
    "temperature",
    "top_p",
    "function",
    "parameters",
    "description",
    "arguments",
    "id",
    "image_url",
    "url",
    "detail",
    "tool_calls",
    "tool_call_id",
    "response_format",
    "json_schema",
    "schema",
    "strict",
    "properties",
    "required",
    "items",
    "enum",
    "metadata",
    "user",
    "input",
    "source",
    "media_type",
    "data",
    "cache_control",
];

/// Strings that steer a parser's branches.
pub const COMMON_STRINGS: &[&str] = &[
    "",
    " ",
    "qwen3.7-plus",
    "qwen3-max-thinking",
    "qwen3.7-plus-search",
    "gpt-4o",
    "claude-opus-5-5",
    "system",
    "developer",
    "user",
    "assistant",
    "tool",
    "function",
    "text",
    "image_url",
    "input_text",
    "input_image",
    "output_text",
    "image",
    "auto",
    "none",
    "required",
    "any",
    "object",
    "string",
    "integer",
    "array",
    "json_object",
    "json_schema",
    "high",
    "low",
    "medium",
    "minimal",
    "get_weather",
    "Read",
    "Write",
    "web_search",
    "data:image/png;base64,iVBORw0KGgo=",
    "https://example.com/a.png",
    "base64",
    "url",
    "image/png",
    "enabled",
    "disabled",
    "adaptive",
    "tool_use",
    "tool_result",
    "thinking",
    "redacted_thinking",
    "message",
    "function_call",
    "function_call_output",
    "custom_tool_call",
    "item_reference",
    "reasoning",
    "call_1",
    "toolu_01",
    "\u{0}",
    "\n",
    "\u{202e}",
    "x-anthropic-billing-header: cc_version=1;",
];

/// The checks of a parsed request's turn (a macro: the turn's type lives in a private
/// module of the proxy, so only its fields can be reached, not its name).
///
/// * the model is not empty;
/// * tools: a set is never empty; a named `tool_choice` keeps only that tool; every tool has
///   a name, and the name the model sees is never one of the platform's reserved names,
///   maps back to the client's name, and is no other tool's client name.
#[macro_export]
macro_rules! check_turn {
    ($turn:expr) => {{
        let turn = &$turn;
        assert!(!turn.model.is_empty(), "an empty model");
        if let Some(set) = &turn.tools {
            assert!(!set.tools.is_empty(), "an empty tool set");
            if let qwen_proxy::tools::Choice::Named(n) = &set.choice {
                assert!(
                    set.tools.iter().all(|t| t.name == *n),
                    "a named tool_choice {n:?} with other tools"
                );
            }
            for t in &set.tools {
                assert!(!t.name.is_empty(), "a tool without a name");
                let model = set.aliases.to_model(&t.name);
                assert!(
                    !qwen_proxy::tools::DEFAULT_RESERVED.contains(&model),
                    "the model sees the reserved name {model:?}"
                );
                assert_eq!(
                    set.aliases.to_client(model).unwrap_or(model),
                    t.name,
                    "the alias {model:?} does not map back"
                );
                if model != t.name {
                    assert!(
                        !set.tools.iter().any(|o| o.name == model),
                        "the alias {model:?} is another tool's name"
                    );
                }
            }
        }
    }};
}

/// A request parser's target: the body from `data` (`request_body` with the common keys and
/// `keys`); a parsed request passes `check_turn!`, then `checks` (with the request and the
/// body bound to the given names), and parses the same again; an error is a well-formed 400 in `shape`
/// (`check_request_error`) and the same error again.
#[macro_export]
macro_rules! check_request_parser {
    ($data:expr, $keys:expr, $parse:path, $shape:expr, |$req:ident, $body:ident| $checks:block) => {{
        let keys: Vec<&str> = $crate::COMMON_KEYS.iter().chain($keys).copied().collect();
        let Some($body) = $crate::request_body($data, &keys, $crate::COMMON_STRINGS) else {
            return;
        };
        match $parse(&$body) {
            Ok($req) => {
                $crate::check_turn!($req.turn);
                $checks
                let again = $parse(&$body).expect("the same body parses again");
                assert!(again.turn == $req.turn, "parsing is not deterministic");
            }
            Err(e) => {
                $crate::check_request_error(&$body, &e, $shape);
                assert_eq!($parse(&$body).err(), Some(e), "parsing is not deterministic");
            }
        }
    }};
}
