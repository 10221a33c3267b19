//! Simulator endpoints (`qwen-protocol.md` §9.2) and the completion algorithm (§9.3);
//! the sign-in endpoints are in `auth.rs`.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Incoming};
use hyper::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE, COOKIE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::time::Instant;

use super::accounts::TokenError;
use super::answer;
use super::body::{ScriptBody, StreamGuard};
use super::catalogue::{guest_catalogue, model_meta};
use super::habits::{self, Habit};
use super::penalties::Refusal;
use super::scenario::{self, Fault, PunishAction};
use super::script::{self, Generation, Step};
use super::state::{lock, Chat, SimState, TurnRecord};
use super::t2i::{self, ImageJob};
use super::tools as sim_tools;
use super::wire;
use super::{BxUaGate, Gate, SimConfig};
use crate::common::{epoch_secs, BoxFuture};

pub use super::catalogue::catalogue;

/// Response body of the simulator: canned bytes or a scripted stream.
pub enum SimBody {
    Full(Full<Bytes>),
    Script(ScriptBody),
}

impl Body for SimBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, std::io::Error>>> {
        match self.get_mut() {
            SimBody::Full(b) => Pin::new(b).poll_frame(cx).map_err(|e| match e {}),
            SimBody::Script(s) => Pin::new(s).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            SimBody::Full(b) => b.is_end_stream(),
            SimBody::Script(s) => s.is_end_stream(),
        }
    }
}

type Rsp = Response<SimBody>;

#[derive(Clone)]
pub struct SimService {
    pub(super) config: Arc<SimConfig>,
    pub(super) state: Arc<SimState>,
}

impl tower::Service<Request<Incoming>> for SimService {
    type Response = Rsp;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Rsp, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.route(req).await) })
    }
}

pub(super) fn respond(
    status: StatusCode,
    actual: Option<u16>,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Rsp {
    let mut rsp = Response::new(SimBody::Full(Full::new(body.into())));
    *rsp.status_mut() = status;
    rsp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Some(code) = actual {
        rsp.headers_mut()
            .insert("x-actual-status-code", HeaderValue::from(code));
    }
    rsp
}

pub(super) fn json_ok(v: Value) -> Rsp {
    respond(StatusCode::OK, None, "application/json", v.to_string())
}

/// An application error the way the upstream sends it: wire 200 + `x-actual-status-code`.
pub(super) fn app_error(actual: u16, code: &str, details: &str) -> Rsp {
    let rid = uuid::Uuid::new_v4().to_string();
    respond(
        StatusCode::OK,
        Some(actual),
        "application/json",
        wire::bad_request_json(&rid, code, details),
    )
}

pub(super) fn punish() -> Rsp {
    punish_with(PunishAction::Captcha)
}

fn punish_with(action: PunishAction) -> Rsp {
    let body = match action {
        PunishAction::Captcha => wire::PUNISH_JSON,
        PunishAction::CaptchaConnect => wire::PUNISH_CAPTCHACONNECT_JSON,
    };
    respond(StatusCode::OK, None, "application/json", body)
}

pub(super) fn waf_page() -> Rsp {
    respond(
        StatusCode::OK,
        None,
        "text/html; charset=utf-8",
        wire::waf_html(),
    )
}

/// The daily-quota document (non-SSE), `num` = hours.
fn rate_limited(hours: f64) -> Rsp {
    let body = wire::rate_limited_json(&uuid::Uuid::new_v4().to_string(), hours);
    respond(StatusCode::OK, None, "application/json", body)
}

fn account_disabled() -> Rsp {
    respond(
        StatusCode::FORBIDDEN,
        None,
        "application/json",
        wire::ACCOUNT_DISABLED_JSON,
    )
}

fn unauthorized(lowercase_code: bool) -> Rsp {
    auth_error(lowercase_code, "Token has expired or is invalid")
}

/// The 401 code: `Unauthorized`; since 2026-09 peers see it in lower case
/// (`--lowercase-codes`).
pub(super) fn unauthorized_code(lowercase_code: bool) -> &'static str {
    if lowercase_code {
        "unauthorized"
    } else {
        "Unauthorized"
    }
}

/// The upstream's 401 document.
fn auth_error(lowercase_code: bool, details: &str) -> Rsp {
    app_error(401, unauthorized_code(lowercase_code), details)
}

fn token_expired(lowercase_code: bool) -> Rsp {
    auth_error(lowercase_code, "Token has expired")
}

/// The value of cookie `name` in the request's `Cookie` header(s).
pub(super) fn cookie(h: &HeaderMap, name: &str) -> Option<String> {
    h.get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (n, v) = pair.trim().split_once('=')?;
            (n.trim() == name && !v.trim().is_empty()).then(|| v.trim().to_owned())
        })
}

/// `http://host:port` as the client addressed the simulator (its `Host`, or the URI's
/// authority over HTTP/2): the origin of the URLs it hands out to itself.
pub(super) fn origin(parts: &hyper::http::request::Parts) -> String {
    let host = parts
        .headers
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| parts.uri.authority().map(|a| a.to_string()))
        .unwrap_or_else(|| "localhost".to_owned());
    format!("http://{host}")
}

/// Who sent a request.
#[derive(Debug, Clone)]
pub(super) struct Caller {
    /// The access token it presented.
    pub token: String,
    /// Who owns chats and penalties: the account id in strict mode, the token otherwise.
    pub account: String,
    /// Its key in `/__sim/stats` `accounts`: the email in strict mode, the token otherwise.
    pub label: String,
}

/// The account token: `Cookie: token=…` or `Authorization: Bearer …`.
pub(super) fn auth_token(h: &HeaderMap) -> (Option<String>, bool) {
    let from_cookie = h
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(crate::config::token_from_cookies);
    let bearer = h
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned);
    let cookie_present = from_cookie.is_some();
    (from_cookie.or(bearer), cookie_present)
}

impl SimService {
    /// Who is calling: the token itself out of the box; the account id in strict mode
    /// (`--accounts`), where unknown or expired tokens get the upstream's 401. A token the
    /// server revoked (`@@sim:expire_token`) has expired in either mode.
    pub(super) fn identity(&self, h: &HeaderMap) -> Result<Caller, Box<Rsp>> {
        let lowercase = self.config.lowercase_codes;
        let Some(token) = auth_token(h).0 else {
            return Err(Box::new(unauthorized(lowercase)));
        };
        if lock(&self.state.sessions).is_revoked(&token) {
            return Err(Box::new(token_expired(lowercase)));
        }
        let Some(accounts) = &self.config.accounts else {
            return Ok(Caller {
                account: token.clone(),
                label: token.clone(),
                token,
            });
        };
        match accounts.verify(&token) {
            Ok(id) => Ok(Caller {
                label: accounts.email_of(&id).unwrap_or(&id).to_owned(),
                account: id,
                token,
            }),
            Err(TokenError::Expired) => Err(Box::new(token_expired(lowercase))),
            Err(TokenError::Invalid) => Err(Box::new(auth_error(lowercase, "invalid token"))),
        }
    }

    /// The stats key of the account whose token `identity` refused as expired or revoked
    /// (`None` for no token or one that is nobody's).
    fn refused_label(&self, h: &HeaderMap) -> Option<String> {
        let token = auth_token(h).0?;
        let revoked = lock(&self.state.sessions).is_revoked(&token);
        match &self.config.accounts {
            None => revoked.then_some(token),
            Some(accounts) => {
                let id = accounts.claimed_id(&token)?;
                Some(accounts.email_of(&id).unwrap_or(&id).to_owned())
            }
        }
    }

    async fn route(&self, req: Request<Incoming>) -> Rsp {
        let version = if req.version() == hyper::Version::HTTP_2 {
            &self.state.http2_requests
        } else {
            &self.state.http1_requests
        };
        version.fetch_add(1, Ordering::Relaxed);
        let path = req.uri().path().to_owned();
        match (req.method().clone(), path.as_str()) {
            (Method::POST, "/api/v2/chats/new") => self.new_chat(req).await,
            (Method::POST, "/api/v2/chat/completions") => self.completion(req).await,
            (Method::POST, "/api/v2/files/getstsToken") => self.sts_token(req).await,
            (Method::POST, "/api/v2/files/parse") => self.parse_file(req).await,
            (Method::POST, "/api/v2/files/parse/status") => self.parse_status(req).await,
            (Method::GET, "/api/models") => {
                if auth_token(req.headers()).0.is_some() {
                    json_ok(catalogue())
                } else {
                    let n = self
                        .state
                        .guest_catalogue_calls
                        .fetch_add(1, Ordering::Relaxed);
                    json_ok(guest_catalogue(n))
                }
            }
            (Method::GET, "/api/v2/models" | "/api/v2/models/") => {
                if let Err(rsp) = self.identity(req.headers()) {
                    return *rsp;
                }
                json_ok(
                    json!({"success": true, "request_id": uuid::Uuid::new_v4().to_string(), "data": catalogue()}),
                )
            }
            (Method::POST, "/api/v1/auths/signin") => self.signin_v1(req).await,
            (Method::POST, "/api/v2/auths/signin") => self.signin_v2(req).await,
            (Method::GET, "/api/v2/auths/refresh") => self.refresh(req.headers()),
            (Method::GET, "/api/v1/auths" | "/api/v1/auths/") => {
                match self.identity(req.headers()) {
                    Ok(c) => json_ok(
                        json!({"id": account_id(&c.account), "email": "sim@example.com", "name": "sim", "role": "user"}),
                    ),
                    Err(_) => respond(
                        StatusCode::UNAUTHORIZED,
                        None,
                        "application/json",
                        r#"{"detail":"Unauthorized"}"#,
                    ),
                }
            }
            (Method::DELETE, "/api/v2/chats" | "/api/v2/chats/") => self.purge_chats(req.headers()),
            (Method::DELETE, p) if p.starts_with("/api/v2/chats/") => {
                let id = p.trim_start_matches("/api/v2/chats/").trim_end_matches('/');
                let owner = self
                    .identity(req.headers())
                    .map(|c| c.account)
                    .unwrap_or_default();
                let mut chats = lock(&self.state.chats);
                match chats.get(id) {
                    Some(c) if c.owner == owner => {
                        chats.remove(id);
                        json_ok(json!({"success": true, "data": {"status": true}}))
                    }
                    _ => app_error(404, "Not_Found", "Chat not exist"),
                }
            }
            (Method::GET, "/__sim/stats") => json_ok(self.state.stats()),
            (Method::POST, p) if p.starts_with("/__sim/accounts/") => {
                self.control(p, req.uri().query())
            }
            (Method::POST, "/__sim/replay") => {
                let chunk = req
                    .uri()
                    .query()
                    .and_then(|q| q.strip_prefix("chunk="))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                match req.into_body().collect().await {
                    Ok(b) => {
                        lock(&self.state.replay).push_back((b.to_bytes(), chunk));
                        json_ok(json!({"queued": true}))
                    }
                    Err(_) => respond(
                        StatusCode::BAD_REQUEST,
                        None,
                        "text/plain",
                        "unreadable body",
                    ),
                }
            }
            // The pictures of t2i completions, on the simulator's own address.
            (Method::GET, p) if p.starts_with("/output/") => self.image(p, req.uri().query()),
            // The object storage, on the simulator's own address (the grant's `file_url`).
            (Method::PUT, p) if !p.starts_with("/api/") && !p.starts_with("/__sim/") => {
                self.put_object(req).await
            }
            _ => respond(
                StatusCode::NOT_FOUND,
                None,
                "application/json",
                r#"{"detail":"Not Found"}"#,
            ),
        }
    }

    /// `DELETE /api/v2/chats/`: every chat of the calling account goes.
    fn purge_chats(&self, h: &HeaderMap) -> Rsp {
        let caller = match self.identity(h) {
            Ok(c) => c,
            Err(rsp) => return *rsp,
        };
        let deleted = {
            let mut chats = lock(&self.state.chats);
            let before = chats.len();
            chats.retain(|_, c| c.owner != caller.account);
            before - chats.len()
        };
        self.state
            .chats_purged
            .fetch_add(deleted as u64, Ordering::Relaxed);
        json_ok(json!({"success": true, "data": {"status": true, "deleted": deleted}}))
    }

    /// Read the body; `None` when it exceeds the anti-bot size gate.
    pub(super) async fn read_body(&self, body: Incoming) -> Option<Bytes> {
        Limited::new(body, self.config.body_limit)
            .collect()
            .await
            .ok()
            .map(|c| c.to_bytes())
    }

    async fn new_chat(&self, req: Request<Incoming>) -> Rsp {
        let (parts, body) = req.into_parts();
        let Some(body) = self.read_body(body).await else {
            return punish();
        };
        if let Some(rsp) = self.bx_ua_gate(&parts.headers) {
            return rsp;
        }
        let caller = match self.identity(&parts.headers) {
            Ok(c) => c,
            Err(rsp) => return *rsp,
        };
        if lock(&self.state.penalties).is_banned(&caller.account) {
            return account_disabled();
        }
        if !self.config.timing.chat_latency.is_zero() {
            tokio::time::sleep(self.config.timing.chat_latency).await;
        }
        // Any body is taken (the upstream is lenient); only the chat type is remembered.
        let chat_type = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v.get("chat_type")?.as_str().map(str::to_owned))
            .unwrap_or_else(|| "t2t".to_owned());
        let id = uuid::Uuid::new_v4().to_string();
        lock(&self.state.chats).insert(
            id.clone(),
            Chat {
                owner: caller.account,
                chat_type,
                nodes: Default::default(),
                in_flight: false,
                busy_until: None,
                completions: 0,
                attempts: 0,
                last_parent_id: None,
                turns: Vec::new(),
                tools: Vec::new(),
            },
        );
        self.state.chats_created.fetch_add(1, Ordering::Relaxed);
        self.state
            .count_account(&caller.label, |a| a.chats_created += 1);
        json_ok(
            json!({"success": true, "request_id": uuid::Uuid::new_v4().to_string(), "data": {"id": id}}),
        )
    }

    /// §9.3 header gate; `None` when the request passes.
    pub(super) fn gate(&self, h: &HeaderMap, cookie_present: bool) -> Option<Rsp> {
        let level = self.config.gate;
        if level >= Gate::Y2026M06 && !h.contains_key("x-request-id") {
            return Some(punish());
        }
        if level >= Gate::Y2026M09 {
            if !h.contains_key("version") {
                return Some(respond(
                    StatusCode::OK,
                    None,
                    "application/json",
                    r#"{"success":false,"code":"Bad_Request","details":"Bad_Request: missing version header"}"#,
                ));
            }
            let browser = [
                "sec-fetch-dest",
                "sec-fetch-mode",
                "sec-fetch-site",
                "timezone",
            ];
            if !cookie_present || browser.iter().any(|k| !h.contains_key(*k)) {
                return Some(punish());
            }
        }
        if level >= Gate::Y2026M10 && !(h.contains_key("bx-ua") && h.contains_key("bx-umidtoken")) {
            return Some(waf_page());
        }
        self.bx_ua_gate(h)
    }

    /// `--bx-ua-gate stale`: a `bx-ua` that is not one of the fresh values draws the
    /// challenge; no `bx-ua` at all is what the browser sends now and passes.
    fn bx_ua_gate(&self, h: &HeaderMap) -> Option<Rsp> {
        if self.config.bx_ua_gate != BxUaGate::Stale {
            return None;
        }
        let sent = h.get("bx-ua")?;
        let fresh = self
            .config
            .fresh_bx_ua
            .iter()
            .any(|v| v.as_bytes() == sent.as_bytes());
        (!fresh).then(punish)
    }

    /// The account-level answer to a completion of `caller`, if it is refused: directives
    /// of this completion first take effect (an expiry armed by `control.rs` before them),
    /// then the sticky penalties, then the quota of the accounts file. Accepted: the signal
    /// that ends the stream if the account is banned meanwhile.
    fn account_refusal(
        &self,
        caller: &Caller,
        directives: &scenario::AccountDirectives,
    ) -> Result<Arc<AtomicBool>, Box<Rsp>> {
        let expired = || {
            lock(&self.state.sessions).revoke(&caller.token);
            token_expired(self.config.lowercase_codes)
        };
        if directives.expire_token {
            return Err(Box::new(expired()));
        }
        let (refusal, banned) = {
            let mut penalties = lock(&self.state.penalties);
            if penalties.take_expiry(&caller.account) {
                drop(penalties);
                return Err(Box::new(expired()));
            }
            let now = Instant::now();
            penalties.impose(&caller.account, directives, now);
            (
                penalties.completion_refusal(&caller.account, now),
                penalties.ban_signal(&caller.account),
            )
        };
        match refusal {
            Some(Refusal::Banned) => return Err(Box::new(account_disabled())),
            Some(Refusal::Quota(hours)) => return Err(Box::new(rate_limited(hours))),
            Some(Refusal::Challenge) => return Err(Box::new(punish())),
            None => {}
        }
        match &self.config.accounts {
            // The accounts file's quota: exhausted, the upstream says "wait 4 hours".
            Some(accounts) if !accounts.take_quota(&caller.account) => {
                Err(Box::new(rate_limited(4.0)))
            }
            _ => Ok(banned),
        }
    }

    async fn completion(&self, req: Request<Incoming>) -> Rsp {
        self.state
            .completion_requests
            .fetch_add(1, Ordering::Relaxed);
        let (parts, body) = req.into_parts();
        let Some(body) = self.read_body(body).await else {
            return punish();
        };
        let cookie_present = auth_token(&parts.headers).1;
        if let Some(rsp) = self.gate(&parts.headers, cookie_present) {
            return rsp;
        }
        let caller = match self.identity(&parts.headers) {
            Ok(c) => c,
            Err(rsp) => {
                // An expired or revoked token still names its account: a refused completion.
                if let Some(label) = self.refused_label(&parts.headers) {
                    self.state.count_account(&label, |a| {
                        a.completions += 1;
                        a.refused += 1;
                    });
                }
                return *rsp;
            }
        };
        self.state
            .count_account(&caller.label, |a| a.completions += 1);
        let Ok(v) = serde_json::from_slice::<Value>(&body) else {
            return app_error(
                400,
                "Bad_Request",
                "RequestValidationError: body is not JSON",
            );
        };
        let Some(chat_id) = v.get("chat_id").and_then(Value::as_str) else {
            return app_error(
                400,
                "Bad_Request",
                "RequestValidationError: Field 'chat_id': Field required",
            );
        };
        let message = v
            .get("messages")
            .and_then(|m| m.get(0))
            .cloned()
            .unwrap_or(Value::Null);
        let content = match message.get("content") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(parts)) => parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join("\n"),
            _ => String::new(),
        };
        let (scenario, prompt) = scenario::parse(&content);
        let (tools, image);
        if !scenario.unknown.is_empty() {
            let details = format!(
                "unknown simulator directive(s): {}",
                scenario.unknown.join(", ")
            );
            return app_error(400, "Bad_Request", &details);
        }
        let banned = match self.account_refusal(&caller, &scenario.account) {
            Ok(banned) => banned,
            Err(rsp) => {
                self.state.count_account(&caller.label, |a| a.refused += 1);
                return *rsp;
            }
        };
        lock(&self.state.files).arm(&caller.account, &scenario.account.files);
        // The files the message refers to: seen (images) or read (documents' text).
        let attached = match self.attached_files(&caller.account, &message) {
            Ok(files) => files,
            Err(details) => return app_error(400, "Bad_Request", &details),
        };
        let documents: String = attached
            .iter()
            .filter_map(super::files::Stored::text)
            .collect::<Vec<_>>()
            .join("\n\n");
        let parent = v
            .get("parent_id")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let model = v
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let features = message
            .get("feature_config")
            .cloned()
            .unwrap_or(Value::Null);
        let flag = |k: &str| features.get(k).and_then(Value::as_bool).unwrap_or(false);
        let thinking_mode = features
            .get("thinking_mode")
            .and_then(Value::as_str)
            .unwrap_or("");
        let chat_type = message
            .get("chat_type")
            .and_then(Value::as_str)
            .unwrap_or("t2t");

        let (user_node, response_id, alt_id) = (
            uuid::Uuid::new_v4().to_string(),
            uuid::Uuid::new_v4().to_string(),
            uuid::Uuid::new_v4().to_string(),
        );
        {
            let mut chats = lock(&self.state.chats);
            let chat = match chats.get_mut(chat_id) {
                Some(c) if c.owner == caller.account => c,
                _ => return app_error(404, "Not_Found", &format!("Chat {chat_id} not exist")),
            };
            if let Some(p) = &parent {
                if !chat.nodes.contains(p) {
                    return app_error(
                        400,
                        "Bad_Request",
                        &format!("Invalid input chat parent_id {p} is not exist."),
                    );
                }
            }
            image = match t2i::asked(&v, &message, chat_type, &chat.chat_type, &model) {
                Ok(image) => image,
                Err(t2i::Refused) => return app_error(400, "Bad_Request", "Internal error"),
            };
            chat.attempts += 1;
            let busy = chat.in_flight || chat.busy_until.is_some_and(|t| Instant::now() < t);
            if chat.attempts <= scenario.in_progress || busy {
                self.state.busy_refusals.fetch_add(1, Ordering::Relaxed);
                return app_error(400, "Bad_Request", "The chat is in progress!");
            }
            match scenario.fault {
                Some(Fault::RateLimited(h)) => return rate_limited(h),
                Some(Fault::ImageQuota(h)) if image.is_some() => return t2i::quota_refusal(h),
                Some(Fault::Punish(action)) => return punish_with(action),
                Some(Fault::Waf) => return waf_page(),
                Some(Fault::Unauthorized) => return unauthorized(self.config.lowercase_codes),
                Some(Fault::Overload) => {
                    return respond(
                        StatusCode::SERVICE_UNAVAILABLE,
                        None,
                        "text/plain",
                        "Service Temporarily Unavailable",
                    )
                }
                Some(Fault::Forbidden) => {
                    return respond(
                        StatusCode::FORBIDDEN,
                        None,
                        "text/plain",
                        "forbidden: this account is banned",
                    )
                }
                Some(Fault::BadRequestInternal) => {
                    return app_error(400, "Bad_Request", "Internal error")
                }
                Some(Fault::ModerationInput) => {
                    return app_error(
                        400,
                        "data_inspection_failed",
                        wire::MODERATION_INPUT_DETAILS,
                    )
                }
                _ => {}
            }
            // The tools are described inline, or in a document the message attaches.
            if let Some(described) =
                sim_tools::catalogue(&content).or_else(|| sim_tools::catalogue(&documents))
            {
                chat.tools = described;
            }
            tools = chat.tools.clone();
            chat.nodes.insert(user_node.clone());
            chat.nodes.insert(response_id.clone());
            chat.in_flight = true;
            chat.completions += 1;
            chat.last_parent_id = parent.clone();
            if chat.turns.is_empty() {
                self.state.chats_used.fetch_add(1, Ordering::Relaxed);
            }
            chat.turns.push(TurnRecord {
                parent_id: parent.clone(),
                response_id: response_id.clone(),
                content_chars: content.chars().count(),
                body_bytes: body.len(),
                files: attached.len(),
                file_chars: documents.chars().count(),
            });
        }
        self.state.completions.fetch_add(1, Ordering::Relaxed);
        self.state.in_flight.fetch_add(1, Ordering::Relaxed);
        let guard = StreamGuard {
            state: self.state.clone(),
            chat_id: chat_id.to_owned(),
            linger: self.config.linger,
            completed: false,
        };

        // The model writes its calls: as the proxy's retry hint asks, or with a habit.
        let mut scenario = scenario;
        if sim_tools::hinted(&prompt) {
            scenario.obey_hint(&tools);
        } else if !scenario.calls.is_empty() {
            // A named habit (in the form asked for), or the next of the cycle.
            let habit = scenario
                .habit
                .map(|(h, form)| (h, form.unwrap_or(0)))
                .or_else(|| {
                    let seed = scenario.habits.or(self.config.habits)?;
                    let k = self.state.habit_turns.fetch_add(1, Ordering::Relaxed);
                    Some(Habit::pick(seed, k))
                });
            if let Some((habit, variant)) = habit {
                habits::apply(&mut scenario, habit, variant, &tools);
                self.state.count_habit(habit);
            }
        }
        if scenario.describe_files {
            scenario.reply = Some(describe(&attached));
        }
        let replay = lock(&self.state.replay).pop_front();
        let (steps, content_type) = match (replay, image) {
            (Some((bytes, chunk)), _) => replay_steps(bytes, chunk),
            (None, Some(size)) => {
                let steps = self.image_stream(&ImageJob {
                    chat_id,
                    user_node_id: &user_node,
                    response_id: &response_id,
                    prompt: &prompt,
                    size,
                    scenario: &scenario,
                    origin: &origin(&parts),
                    uid: &account_id(&caller.account),
                    now_secs: epoch_secs(),
                });
                (steps, "text/event-stream; charset=utf-8")
            }
            (None, None) => {
                let meta = model_meta(&model);
                let mut scenario = scenario;
                let thinking_required = meta.is_some_and(|m| m.thinking_required);
                if thinking_required && !flag("thinking_enabled") {
                    scenario.fault = Some(Fault::InvalidInput);
                }
                let thinking = scenario.think
                    || meta.is_some_and(|m| m.thinking)
                        && flag("thinking_enabled")
                        && thinking_mode == "Thinking";
                let search = scenario.search || flag("auto_search") || chat_type == "search";
                let steps = script::build(&Generation {
                    chat_id,
                    user_node_id: &user_node,
                    response_id: &response_id,
                    alt_response_id: &alt_id,
                    prompt: &prompt,
                    read_tokens: answer::tokens(&documents),
                    thinking,
                    search,
                    scenario: &scenario,
                    tools: &tools,
                    timing: &self.config.timing,
                    now_secs: epoch_secs(),
                });
                (steps, "text/event-stream; charset=utf-8")
            }
        };
        let mut rsp = Response::new(SimBody::Script(
            ScriptBody::new(steps, Some(guard)).ended_by(banned),
        ));
        rsp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        rsp.headers_mut()
            .insert("x-actual-status-code", HeaderValue::from_static("200"));
        rsp
    }
}

/// Replayed bytes, optionally cut into `chunk`-byte writes.
fn replay_steps(bytes: Bytes, chunk: usize) -> (std::collections::VecDeque<Step>, &'static str) {
    let trimmed = bytes.trim_ascii_start();
    let content_type = if trimmed.starts_with(b"<") {
        "text/html; charset=utf-8"
    } else if trimmed.starts_with(b"{") {
        "application/json"
    } else {
        "text/event-stream; charset=utf-8"
    };
    let mut steps = std::collections::VecDeque::new();
    if chunk == 0 {
        steps.push_back(Step::Write(bytes));
    } else {
        let mut at = 0;
        while at < bytes.len() {
            let end = (at + chunk).min(bytes.len());
            steps.push_back(Step::Write(bytes.slice(at..end)));
            steps.push_back(Step::Pause(std::time::Duration::from_millis(1)));
            at = end;
        }
    }
    (steps, content_type)
}

/// A stable account id for out-of-the-box tokens and emails.
pub(super) fn account_id(seed: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in seed.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

impl SimService {
    /// The files of `messages[0].files[]` (each by its `id`, or its `file.id`).
    fn attached_files(
        &self,
        account: &str,
        message: &Value,
    ) -> Result<Vec<super::files::Stored>, String> {
        let Some(list) = message.get("files").and_then(Value::as_array) else {
            return Ok(Vec::new());
        };
        let mut files = lock(&self.state.files);
        list.iter()
            .map(|f| {
                let id = f
                    .get("id")
                    .or_else(|| f.get("file").and_then(|inner| inner.get("id")))
                    .and_then(Value::as_str)
                    .ok_or_else(|| "Invalid file information!".to_owned())?;
                files.attached(account, id)
            })
            .collect()
    }
}

/// What the model saw of the files: a line each.
fn describe(files: &[super::files::Stored]) -> String {
    if files.is_empty() {
        return "I see no files.".to_owned();
    }
    files
        .iter()
        .map(|f| {
            format!(
                "{}: {}, {} bytes, sha256 {}",
                f.name,
                f.media_type,
                f.bytes.len(),
                f.digest
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}
