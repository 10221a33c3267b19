//! The soak's traffic: C client loops, each picking an operation of the mix at random
//! (weighted), running it, then thinking for a while; and a scheduler for the faults that
//! change an account's state, which must stay rare. Every operation checks what it got
//! against what its kind should give — an answer naming its own prompt, or the error its
//! fault causes — and anything else is counted as unexpected, with the reason.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::servers::{Account, ADMIN_KEY};

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn new_client(idle: usize) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(idle)
        .build(connector)
}

const MODEL: &str = "qwen3.7-plus";
/// No operation of the mix takes longer than this (the longest, a 3-turn conversation with
/// a busy wait or a chat-in-progress retry, takes a few seconds): past it, unexpected.
const OP_TIMEOUT: Duration = Duration::from_secs(60);

/// What the soak does. The first group is drawn at random by weight; the second is
/// scheduled (account-level faults: each takes an account out for a while).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Kind {
    /// OpenAI chat completion, streamed (a quarter with `@@sim:think`).
    ChatStream,
    /// OpenAI chat completion, not streamed.
    ChatJson,
    /// Three turns of one OpenAI conversation (each continues the upstream chat).
    MultiTurn,
    /// A tool call (`@@sim:call`), then the tool's result sent back: two turns.
    ToolCall,
    /// Anthropic `/v1/messages`, two turns of one session (streamed or not).
    Anthropic,
    /// OpenAI `/v1/responses`: one unstored answer, or a stored one continued by
    /// `previous_response_id`.
    Responses,
    /// A streamed answer dropped by the client after three chunks.
    AbortMidStream,
    /// A request dropped by the client before its first token (`@@sim:ttft=1500`).
    AbortBeforeAnswer,
    /// `@@sim:internal_error`: the upstream's error after part of the answer.
    InternalError,
    /// `@@sim:reset`: the upstream's connection reset mid-answer.
    Reset,
    /// `@@sim:empty`: an answer with no content (retried in a new chat, then 502).
    Empty,
    /// `@@sim:stall=3000`: the upstream falls silent past the proxy's idle timeout (2 s).
    StallTimeout,
    /// `@@sim:stall=500`: a silence within the timeout; the answer completes.
    StallShort,
    /// `@@sim:moderation_output`: the answer is withdrawn by moderation mid-stream.
    ModerationOutput,
    /// `@@sim:in_progress=1`: "The chat is in progress!" once; the proxy retries.
    InProgress,
    // --- scheduled ---
    /// `@@sim:rate_limited_after=0.01` (streamed): the account's quota runs out after part
    /// of the answer; the client gets the in-band error, the account cools 36 s.
    QuotaMidAnswer,
    /// The simulator's control `quota?hours=0.01` on one account: the next turn there is
    /// refused before any content, moves to another account, the account cools 36 s.
    QuotaBeforeAnswer,
    /// The simulator's control `expire_token` on one account: the next turn there meets
    /// the 401, the proxy renews the token once and sends the turn again.
    ExpireToken,
    /// The operators' `POST /admin/accounts/{name}/purge-chats` on one account: its
    /// conversations continue in fresh chats (`chat gone` fallback).
    PurgeChats,
}

impl Kind {
    pub const ALL: [Kind; 19] = [
        Kind::ChatStream,
        Kind::ChatJson,
        Kind::MultiTurn,
        Kind::ToolCall,
        Kind::Anthropic,
        Kind::Responses,
        Kind::AbortMidStream,
        Kind::AbortBeforeAnswer,
        Kind::InternalError,
        Kind::Reset,
        Kind::Empty,
        Kind::StallTimeout,
        Kind::StallShort,
        Kind::ModerationOutput,
        Kind::InProgress,
        Kind::QuotaMidAnswer,
        Kind::QuotaBeforeAnswer,
        Kind::ExpireToken,
        Kind::PurgeChats,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::ChatStream => "chat_stream",
            Kind::ChatJson => "chat_json",
            Kind::MultiTurn => "multi_turn",
            Kind::ToolCall => "tool_call",
            Kind::Anthropic => "anthropic",
            Kind::Responses => "responses",
            Kind::AbortMidStream => "abort_mid_stream",
            Kind::AbortBeforeAnswer => "abort_before_answer",
            Kind::InternalError => "internal_error",
            Kind::Reset => "reset",
            Kind::Empty => "empty",
            Kind::StallTimeout => "stall_timeout",
            Kind::StallShort => "stall_short",
            Kind::ModerationOutput => "moderation_output",
            Kind::InProgress => "in_progress",
            Kind::QuotaMidAnswer => "quota_mid_answer",
            Kind::QuotaBeforeAnswer => "quota_before_answer",
            Kind::ExpireToken => "expire_token",
            Kind::PurgeChats => "purge_chats",
        }
    }

    /// Percent of the random draws (they sum to 100); 0: scheduled.
    pub fn weight(self) -> u64 {
        match self {
            Kind::ChatStream => 18,
            Kind::ChatJson => 10,
            Kind::MultiTurn => 10,
            Kind::ToolCall => 8,
            Kind::Anthropic => 8,
            Kind::Responses => 8,
            Kind::AbortMidStream => 5,
            Kind::AbortBeforeAnswer => 3,
            Kind::InternalError => 5,
            Kind::Reset => 5,
            Kind::Empty => 4,
            Kind::StallTimeout => 3,
            Kind::StallShort => 3,
            Kind::ModerationOutput => 5,
            Kind::InProgress => 5,
            _ => 0,
        }
    }

    /// The operation ends in an error by design (the fault's), which counts as expected.
    pub fn fails_by_design(self) -> bool {
        matches!(
            self,
            Kind::InternalError
                | Kind::Reset
                | Kind::Empty
                | Kind::StallTimeout
                | Kind::ModerationOutput
                | Kind::QuotaMidAnswer
        )
    }

    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// Counters of one kind.
#[derive(Default)]
pub struct KindStats {
    /// Operations finished (whatever the outcome).
    pub ops: AtomicU64,
    /// HTTP requests they sent.
    pub requests: AtomicU64,
    /// Operations whose outcome was not the kind's.
    pub unexpected: AtomicU64,
}

#[derive(Default)]
pub struct Stats {
    pub kinds: BTreeMap<Kind, KindStats>,
    /// Unexpected outcomes by kind and reason (the reason's first 160 characters).
    pub reasons: Mutex<BTreeMap<(Kind, String), u64>>,
}

impl Stats {
    pub fn new() -> Stats {
        Stats {
            kinds: Kind::ALL
                .into_iter()
                .map(|k| (k, KindStats::default()))
                .collect(),
            reasons: Mutex::default(),
        }
    }

    pub fn kind(&self, k: Kind) -> &KindStats {
        &self.kinds[&k]
    }

    fn record(&self, k: Kind, requests: u64, outcome: Result<(), String>) {
        let s = self.kind(k);
        s.requests.fetch_add(requests, Ordering::Relaxed);
        if let Err(reason) = outcome {
            s.unexpected.fetch_add(1, Ordering::Relaxed);
            let reason: String = reason.chars().take(160).collect();
            *self.reasons.lock().unwrap().entry((k, reason)).or_default() += 1;
        }
        s.ops.fetch_add(1, Ordering::Relaxed);
    }

    pub fn totals(&self) -> (u64, u64, u64) {
        self.kinds.values().fold((0, 0, 0), |(o, r, u), s| {
            (
                o + s.ops.load(Ordering::Relaxed),
                r + s.requests.load(Ordering::Relaxed),
                u + s.unexpected.load(Ordering::Relaxed),
            )
        })
    }
}

/// xorshift64*: enough randomness for a traffic mix, reproducible from the seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn coin(&mut self) -> bool {
        self.next() & 1 == 1
    }
    /// A kind of `mix` (the drawn kinds), by weight.
    fn kind(&mut self, mix: &[Kind]) -> Kind {
        let total: u64 = mix.iter().map(|k| k.weight()).sum();
        let mut x = self.below(total);
        for &k in mix {
            if x < k.weight() {
                return k;
            }
            x -= k.weight();
        }
        mix[0]
    }
}

/// What the operations need.
#[derive(Clone)]
pub struct Ctx {
    pub client: HttpClient,
    pub proxy: String,
    pub sim: String,
    pub stats: Arc<Stats>,
    pub seq: Arc<AtomicU64>,
}

impl Ctx {
    fn id(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }
}

/// The traffic's shape.
#[derive(Clone, Debug)]
pub struct Shape {
    pub clients: usize,
    /// A client thinks between operations for a uniform time in this range.
    pub think_ms: (u64, u64),
    /// The kinds drawn (all those with a weight, unless `SOAK_MIX` names fewer).
    pub mix: Vec<Kind>,
}

/// Run `shape.clients` loops until `stop`; client `i` starts with kind `i mod the mix`, so a
/// short run still meets every kind. Returns their handles.
pub fn spawn_clients(
    ctx: &Ctx,
    shape: Shape,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mix: Arc<[Kind]> = shape.mix.clone().into();
    (0..shape.clients)
        .map(|i| {
            let (ctx, stop, mix) = (ctx.clone(), stop.clone(), mix.clone());
            let first = mix[i % mix.len()];
            tokio::spawn(async move {
                let mut rng = Rng::new(0x50A6 + i as u64);
                // Spread the start over the first think time.
                let (lo, hi) = shape.think_ms;
                tokio::time::sleep(Duration::from_millis(rng.below(hi.max(1)))).await;
                let mut kind = first;
                while !stop.load(Ordering::Relaxed) {
                    run_op(&ctx, kind, &mut rng, None).await;
                    kind = rng.kind(&mix);
                    let think = lo + rng.below(hi.saturating_sub(lo).max(1));
                    tokio::time::sleep(Duration::from_millis(think)).await;
                }
            })
        })
        .collect()
}

/// When each scheduled fault first runs and then how often (`None`: once).
#[derive(Clone, Copy, Debug)]
pub struct Every {
    pub first: Duration,
    pub then: Option<Duration>,
}

/// The scheduler of the account-level faults, rotating over the accounts. When `stop` is
/// set it stops scheduling and waits for the faults it started.
pub fn spawn_scheduler(
    ctx: &Ctx,
    accounts: Vec<Account>,
    plan: Vec<(Kind, Every)>,
    stop: &Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    let (ctx, stop) = (ctx.clone(), stop.clone());
    tokio::spawn(async move {
        let start = Instant::now();
        let mut next: Vec<(Kind, Every, Option<Instant>, usize)> = plan
            .into_iter()
            .enumerate()
            .map(|(i, (k, e))| (k, e, Some(start + e.first), i))
            .collect();
        let mut rng = Rng::new(0x5C4E);
        let mut running = tokio::task::JoinSet::new();
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            for (kind, every, at, turn) in &mut next {
                if at.is_some_and(|t| t <= now) {
                    let account = accounts[*turn % accounts.len()].clone();
                    *turn += 1;
                    *at = every.then.map(|d| now + d);
                    let ctx = ctx.clone();
                    let kind = *kind;
                    let mut rng = Rng::new(rng.next());
                    running
                        .spawn(async move { run_op(&ctx, kind, &mut rng, Some(&account)).await });
                }
            }
            while running.try_join_next().is_some() {}
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        while running.join_next().await.is_some() {}
    })
}

async fn run_op(ctx: &Ctx, kind: Kind, rng: &mut Rng, account: Option<&Account>) {
    let requests = Arc::new(AtomicU64::new(0));
    let op = Op {
        ctx,
        requests: requests.clone(),
        id: ctx.id(),
    };
    let outcome = match tokio::time::timeout(OP_TIMEOUT, op.run(kind, rng, account)).await {
        Ok(r) => r,
        Err(_) => Err(format!("no outcome within {OP_TIMEOUT:?}")),
    };
    ctx.stats
        .record(kind, requests.load(Ordering::Relaxed), outcome);
}

/// What a chat-completions, messages or responses call gave, summarised.
#[derive(Debug, Default)]
struct Got {
    status: u16,
    /// The answer's text (streamed: the deltas joined).
    text: String,
    /// `finish_reason` / `stop_reason` / the response's `status`.
    finish: Option<String>,
    tool_calls: Vec<Value>,
    /// The error's code (or type): the body's for a status, the event's in a stream.
    error: Option<String>,
    /// The stream's terminal event came (`[DONE]`, `message_stop`, `response.completed`).
    ended: bool,
    /// The stored response's id (Responses API).
    id: Option<String>,
}

impl Got {
    fn says(&self, prompt: &str) -> bool {
        self.text.contains(&format!("you said \"{prompt}\""))
    }
    fn describe(&self) -> String {
        format!(
            "status {} finish {:?} error {:?} ended {} text {:?}",
            self.status,
            self.finish,
            self.error,
            self.ended,
            self.text.chars().take(60).collect::<String>()
        )
    }
}

/// The error code of an error body in OpenAI's, Anthropic's or our shape.
fn error_code(v: &Value) -> Option<String> {
    let e = &v["error"];
    e["code"]
        .as_str()
        .or_else(|| e["type"].as_str())
        .or_else(|| v["code"].as_str())
        .map(str::to_owned)
}

/// Server-sent events of a body: `(event name, data)`.
fn sse(text: &str) -> Vec<(String, String)> {
    text.split("\n\n")
        .filter_map(|block| {
            let (mut event, mut data) = (String::new(), String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    event = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            (!data.is_empty()).then_some((event, data))
        })
        .collect()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Api {
    Chat,
    Messages,
    Responses,
}

struct Op<'a> {
    ctx: &'a Ctx,
    requests: Arc<AtomicU64>,
    id: u64,
}

impl Op<'_> {
    async fn send(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<hyper::Response<Incoming>, String> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let mut req = Request::post(url).header("content-type", "application/json");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let body = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
        let req = req.body(Full::new(body)).map_err(|e| e.to_string())?;
        self.ctx.client.request(req).await.map_err(|e| {
            let cause = std::error::Error::source(&e).map_or(String::new(), |s| format!(": {s}"));
            format!("request failed: {e}{cause}")
        })
    }

    async fn call(&self, api: Api, body: Value, headers: &[(&str, &str)]) -> Result<Got, String> {
        let path = match api {
            Api::Chat => "/v1/chat/completions",
            Api::Messages => "/v1/messages",
            Api::Responses => "/v1/responses",
        };
        let stream = body["stream"] == true;
        let rsp = self
            .send(&format!("{}{path}", self.ctx.proxy), headers, Some(&body))
            .await?;
        let status = rsp.status().as_u16();
        let bytes = rsp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("status {status}, body failed: {e}"))?
            .to_bytes();
        let text = String::from_utf8_lossy(&bytes);
        let mut got = Got {
            status,
            ..Got::default()
        };
        if status != 200 {
            let v: Value = serde_json::from_str(&text).map_err(|_| {
                format!("status {status} with a body that is not JSON: {text:.120}")
            })?;
            got.error = error_code(&v);
            return Ok(got);
        }
        if !stream {
            let v: Value = serde_json::from_str(&text).map_err(|e| format!("JSON body: {e}"))?;
            got.ended = true;
            match api {
                Api::Chat => {
                    let choice = &v["choices"][0];
                    got.text = choice["message"]["content"]
                        .as_str()
                        .unwrap_or("")
                        .to_owned();
                    got.finish = choice["finish_reason"].as_str().map(str::to_owned);
                    got.tool_calls = choice["message"]["tool_calls"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default();
                }
                Api::Messages => {
                    for block in v["content"].as_array().into_iter().flatten() {
                        if block["type"] == "text" {
                            got.text.push_str(block["text"].as_str().unwrap_or(""));
                        }
                    }
                    got.finish = v["stop_reason"].as_str().map(str::to_owned);
                }
                Api::Responses => {
                    responses_output(&v, &mut got);
                }
            }
            return Ok(got);
        }
        let mut calls: BTreeMap<u64, Value> = BTreeMap::new();
        for (event, data) in sse(&text) {
            if data == "[DONE]" {
                got.ended = true;
                continue;
            }
            let Ok(v) = serde_json::from_str::<Value>(&data) else {
                return Err(format!("an event that is not JSON: {data:.120}"));
            };
            match api {
                Api::Chat => {
                    if v.get("error").is_some() {
                        got.error = error_code(&v);
                        continue;
                    }
                    let choice = &v["choices"][0];
                    let delta = &choice["delta"];
                    if let Some(t) = delta["content"].as_str() {
                        got.text.push_str(t);
                    }
                    for call in delta["tool_calls"].as_array().into_iter().flatten() {
                        let entry = calls
                            .entry(call["index"].as_u64().unwrap_or(0))
                            .or_insert_with(|| json!({"function": {"name": "", "arguments": ""}}));
                        if let Some(id) = call["id"].as_str() {
                            entry["id"] = json!(id);
                        }
                        if let Some(n) = call["function"]["name"].as_str() {
                            let name =
                                format!("{}{n}", entry["function"]["name"].as_str().unwrap_or(""));
                            entry["function"]["name"] = json!(name);
                        }
                        if let Some(a) = call["function"]["arguments"].as_str() {
                            let args = format!(
                                "{}{a}",
                                entry["function"]["arguments"].as_str().unwrap_or("")
                            );
                            entry["function"]["arguments"] = json!(args);
                        }
                        entry["type"] = json!("function");
                    }
                    if let Some(f) = choice["finish_reason"].as_str() {
                        got.finish = Some(f.to_owned());
                    }
                }
                Api::Messages => match (event.as_str(), v["type"].as_str()) {
                    (_, Some("content_block_delta")) => {
                        if let Some(t) = v["delta"]["text"].as_str() {
                            got.text.push_str(t);
                        }
                    }
                    (_, Some("message_delta")) => {
                        got.finish = v["delta"]["stop_reason"].as_str().map(str::to_owned);
                    }
                    (_, Some("message_stop")) => got.ended = true,
                    (_, Some("error")) => got.error = error_code(&v),
                    _ => {}
                },
                Api::Responses => match v["type"].as_str() {
                    Some("response.output_text.delta") => {
                        got.text.push_str(v["delta"].as_str().unwrap_or(""));
                    }
                    Some("response.completed") => {
                        got.ended = true;
                        got.finish = v["response"]["status"].as_str().map(str::to_owned);
                        got.id = v["response"]["id"].as_str().map(str::to_owned);
                    }
                    Some("response.failed") => {
                        got.ended = true;
                        got.error = v["response"]["error"]["code"].as_str().map(str::to_owned);
                    }
                    Some("error") => got.error = error_code(&v),
                    _ => {}
                },
            }
        }
        got.tool_calls = calls.into_values().collect();
        Ok(got)
    }

    /// An answer that names its own prompt and ended cleanly.
    async fn answer(
        &self,
        api: Api,
        body: Value,
        headers: &[(&str, &str)],
        prompt: &str,
    ) -> Result<Got, String> {
        let got = self.call(api, body, headers).await?;
        let finished = matches!(
            got.finish.as_deref(),
            Some("stop" | "end_turn" | "completed")
        );
        if got.status == 200 && got.error.is_none() && got.ended && finished && got.says(prompt) {
            Ok(got)
        } else {
            Err(format!(
                "wanted the answer to {prompt:?}: {}",
                got.describe()
            ))
        }
    }

    /// An OpenAI chat request of one user message that must fail with one of `codes`
    /// (streamed: an in-band error after part of the answer is fine too).
    async fn fault(&self, prompt: &str, stream: bool, codes: &[&str]) -> Result<(), String> {
        let body = json!({"model": MODEL, "stream": stream,
                          "messages": [{"role": "user", "content": prompt}]});
        let got = self.call(Api::Chat, body, &[]).await?;
        match &got.error {
            Some(code) if codes.contains(&code.as_str()) => Ok(()),
            _ => Err(format!("wanted an error {codes:?}: {}", got.describe())),
        }
    }

    async fn run(
        &self,
        kind: Kind,
        rng: &mut Rng,
        account: Option<&Account>,
    ) -> Result<(), String> {
        let id = self.id;
        let stream = rng.coin();
        match kind {
            Kind::ChatStream | Kind::ChatJson | Kind::StallShort | Kind::InProgress => {
                let q = format!("question {id}");
                let directive = match kind {
                    Kind::ChatStream if rng.below(4) == 0 => " @@sim:think",
                    Kind::StallShort => " @@sim:stall=500",
                    Kind::InProgress => " @@sim:in_progress=1",
                    _ => "",
                };
                let stream = match kind {
                    Kind::ChatStream => true,
                    Kind::ChatJson => false,
                    _ => stream,
                };
                let body = json!({"model": MODEL, "stream": stream,
                                  "messages": [{"role": "user", "content": format!("{q}{directive}")}]});
                self.answer(Api::Chat, body, &[], &q).await.map(drop)
            }
            Kind::MultiTurn => {
                let mut messages: Vec<Value> = Vec::new();
                for turn in 1..=3 {
                    let q = format!("conversation {id} turn {turn}");
                    messages.push(json!({"role": "user", "content": q}));
                    let body = json!({"model": MODEL, "stream": rng.coin(), "messages": messages});
                    let got = self.answer(Api::Chat, body, &[], &q).await?;
                    messages.push(json!({"role": "assistant", "content": got.text}));
                    tokio::time::sleep(Duration::from_millis(rng.below(300))).await;
                }
                Ok(())
            }
            Kind::ToolCall => {
                let tools = json!([{"type": "function", "function": {"name": "get_weather",
                    "description": "The weather in a city.",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                   "required": ["city"]}}}]);
                let q = format!("weather {id}");
                let mut messages =
                    vec![json!({"role": "user", "content": format!("{q} @@sim:call=get_weather")})];
                let body =
                    json!({"model": MODEL, "stream": stream, "tools": tools, "messages": messages});
                let got = self.call(Api::Chat, body, &[]).await?;
                let call = got.tool_calls.first().cloned().unwrap_or(Value::Null);
                let args_ok = call["function"]["arguments"]
                    .as_str()
                    .and_then(|a| serde_json::from_str::<Value>(a).ok())
                    .is_some_and(|a| a.is_object());
                if got.status != 200
                    || got.finish.as_deref() != Some("tool_calls")
                    || call["function"]["name"] != "get_weather"
                    || !args_ok
                {
                    return Err(format!(
                        "wanted a call of get_weather: {} calls {:?}",
                        got.describe(),
                        got.tool_calls
                    ));
                }
                let call_id = call["id"].as_str().unwrap_or("call_0").to_owned();
                let content = if got.text.is_empty() {
                    Value::Null
                } else {
                    json!(got.text)
                };
                messages
                    .push(json!({"role": "assistant", "content": content, "tool_calls": [call]}));
                messages.push(json!({"role": "tool", "tool_call_id": call_id,
                                     "content": format!("sunny {id}")}));
                let body = json!({"model": MODEL, "stream": rng.coin(), "tools": tools, "messages": messages});
                let got = self.call(Api::Chat, body, &[]).await?;
                if got.status == 200
                    && got.error.is_none()
                    && got.finish.as_deref() == Some("stop")
                    && !got.text.is_empty()
                {
                    Ok(())
                } else {
                    Err(format!(
                        "wanted an answer after the tool's result: {}",
                        got.describe()
                    ))
                }
            }
            Kind::Anthropic => {
                let session = format!("soak-session-{id}");
                let headers = [
                    ("anthropic-version", "2023-06-01"),
                    ("x-claude-code-session-id", session.as_str()),
                ];
                let mut messages: Vec<Value> = Vec::new();
                for turn in 1..=2 {
                    let q = format!("anthropic {id} turn {turn}");
                    messages.push(json!({"role": "user", "content": q}));
                    let body = json!({"model": "claude-sonnet-4-5", "max_tokens": 512,
                                      "stream": rng.coin(), "messages": messages});
                    let got = self.answer(Api::Messages, body, &headers, &q).await?;
                    messages.push(json!({"role": "assistant", "content": [{"type": "text", "text": got.text}]}));
                    tokio::time::sleep(Duration::from_millis(rng.below(300))).await;
                }
                Ok(())
            }
            Kind::Responses => {
                let q = format!("responses {id} turn 1");
                if rng.coin() {
                    let body =
                        json!({"model": MODEL, "stream": stream, "store": false, "input": q});
                    return self.answer(Api::Responses, body, &[], &q).await.map(drop);
                }
                let body = json!({"model": MODEL, "stream": stream, "input": q});
                let first = self.answer(Api::Responses, body, &[], &q).await?;
                let Some(prev) = first.id else {
                    return Err("a stored response without an id".to_owned());
                };
                tokio::time::sleep(Duration::from_millis(rng.below(300))).await;
                let q = format!("responses {id} turn 2");
                let body = json!({"model": MODEL, "stream": rng.coin(), "input": q,
                                  "previous_response_id": prev});
                self.answer(Api::Responses, body, &[], &q).await.map(drop)
            }
            Kind::AbortMidStream => {
                let body = json!({"model": MODEL, "stream": true,
                    "messages": [{"role": "user", "content": format!("abort {id} @@sim:long=400")}]});
                let rsp = self
                    .send(
                        &format!("{}/v1/chat/completions", self.ctx.proxy),
                        &[],
                        Some(&body),
                    )
                    .await?;
                if rsp.status() != 200 {
                    return Err(format!("status {}", rsp.status()));
                }
                let mut body = rsp.into_body();
                let mut chunks = 0;
                while chunks < 3 {
                    match body.frame().await {
                        Some(Ok(f))
                            if f.data_ref()
                                .is_some_and(|d| d.windows(8).any(|w| w == b"content\"")) =>
                        {
                            chunks += 1;
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return Err(format!("body failed before the abort: {e}")),
                        None => return Err("the stream ended before the abort".to_owned()),
                    }
                }
                drop(body); // the client goes away mid-answer
                Ok(())
            }
            Kind::AbortBeforeAnswer => {
                let body = json!({"model": MODEL, "stream": stream,
                    "messages": [{"role": "user", "content": format!("abort {id} @@sim:ttft=1500")}]});
                let call = self.call(Api::Chat, body, &[]);
                match tokio::time::timeout(Duration::from_millis(300), call).await {
                    Err(_) => Ok(()), // dropped while the proxy waits for the first token
                    Ok(r) => Err(format!(
                        "finished before the abort: {:?}",
                        r.map(|g| g.describe())
                    )),
                }
            }
            Kind::InternalError => {
                self.fault(
                    &format!("fault {id} @@sim:internal_error"),
                    stream,
                    &["upstream_error"],
                )
                .await
            }
            Kind::Reset => {
                self.fault(
                    &format!("fault {id} @@sim:reset"),
                    stream,
                    &["upstream_unreachable", "upstream_error"],
                )
                .await
            }
            Kind::Empty => {
                self.fault(
                    &format!("fault {id} @@sim:empty"),
                    stream,
                    &["upstream_empty_response"],
                )
                .await
            }
            Kind::StallTimeout => {
                self.fault(
                    &format!("fault {id} @@sim:stall=3000"),
                    stream,
                    &["upstream_timeout"],
                )
                .await
            }
            Kind::ModerationOutput => {
                self.fault(
                    &format!("fault {id} @@sim:moderation_output"),
                    stream,
                    &["content_filter"],
                )
                .await
            }
            Kind::QuotaMidAnswer => {
                // Streamed only: part of the answer has reached the client, so the turn cannot
                // move, and only the account that answered cools. (Not streamed, or the plain
                // `rate_limited`, the refused turn would move to every account in turn — the
                // directive travels with the prompt — and cool the whole pool.)
                self.fault(
                    &format!("fault {id} @@sim:rate_limited_after=0.01"),
                    true,
                    &["upstream_rate_limited", "rate_limit_exceeded"],
                )
                .await
            }
            Kind::QuotaBeforeAnswer | Kind::ExpireToken => {
                let account = account.ok_or("a scheduled fault without an account")?;
                let action = if kind == Kind::ExpireToken {
                    "expire_token"
                } else {
                    "quota?hours=0.01"
                };
                let url = format!("{}/__sim/accounts/{}/{action}", self.ctx.sim, account.email);
                let rsp = self.send(&url, &[], None).await?;
                (rsp.status() == 200)
                    .then_some(())
                    .ok_or_else(|| format!("{action}: status {}", rsp.status()))
            }
            Kind::PurgeChats => {
                let account = account.ok_or("a scheduled fault without an account")?;
                let url = format!(
                    "{}/admin/accounts/{}/purge-chats",
                    self.ctx.proxy, account.name
                );
                let auth = format!("Bearer {ADMIN_KEY}");
                let rsp = self.send(&url, &[("authorization", &auth)], None).await?;
                let status = rsp.status();
                let _ = rsp.into_body().collect().await;
                (status == 200)
                    .then_some(())
                    .ok_or_else(|| format!("purge-chats: status {status}"))
            }
        }
    }
}

/// The text, status and id of a non-streamed Responses API answer.
fn responses_output(v: &Value, got: &mut Got) {
    got.finish = v["status"].as_str().map(str::to_owned);
    got.id = v["id"].as_str().map(str::to_owned);
    for item in v["output"].as_array().into_iter().flatten() {
        if item["type"] == "message" {
            for part in item["content"].as_array().into_iter().flatten() {
                if part["type"] == "output_text" {
                    got.text.push_str(part["text"].as_str().unwrap_or(""));
                }
            }
        }
    }
}
