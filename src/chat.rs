//! The core service of `POST /v1/chat/completions`: validated request → upstream turn →
//! streamed or aggregated OpenAI response. Streaming and non-streaming share the upstream
//! pipeline. `Ok` is returned only once the stream is primed (first meaningful upstream
//! event), so every `Err` happens before the first byte and the retry layer may retry it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Request, Response};
use tokio::time::Instant;

use crate::app::AppState;
use crate::body::{json_response, BodyObserver, Hold, ProxyBody};
use crate::common::epoch_secs;
use crate::common::BoxFuture;
use crate::conversation::store::Session;
use crate::conversation::{ChatLock, Conversations, Prepared};
use crate::error::ProxyError;
use crate::error::UpstreamClass;
use crate::identity::ClientIdentity;
use crate::layers::retry::Attempt;
use crate::layers::retry::Next;
use crate::metrics::Metrics;
use crate::openai::encoder::{ChunkEncoder, UsageJson};
use crate::openai::request::ChatRequest;
use crate::openai::request::Role;
use crate::openai::response::{AssistantMessage, ChatCompletion, Choice};
use crate::qwen::request::{Turn, CHAT_ID_PLACEHOLDER};
use crate::server::RequestStart;
use crate::translate::aggregate;
use crate::translate::body::{Settle, StreamEnd, TranslateBody, UpstreamStream};
use crate::translate::limits::estimate_tokens;
use crate::translate::limits::Limits;
use crate::translate::mapping::Plan;
use crate::translate::mapping::{self, ChatTarget};
use crate::translate::pipeline::Pipeline;
use crate::translate::state::ResponseRef;
use crate::translate::state::Usage;

/// The innermost service of the chat route.
#[derive(Clone, Debug)]
pub struct ChatCore {
    state: Arc<AppState>,
}

impl ChatCore {
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }
}

impl tower::Service<Request<Arc<ChatRequest>>> for ChatCore {
    type Response = Response<ProxyBody>;
    type Error = ProxyError;
    type Future = BoxFuture<'static, Result<Response<ProxyBody>, ProxyError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Arc<ChatRequest>>) -> Self::Future {
        let state = self.state.clone();
        let attempt = req
            .extensions()
            .get::<Attempt>()
            .cloned()
            .unwrap_or_default();
        let start = req
            .extensions()
            .get::<RequestStart>()
            .map_or_else(Instant::now, |s| s.0);
        // Whose conversation this is, as the auth layer established it. Its absence is a
        // wiring bug; failing closed keeps one tenant from ever continuing another's chat.
        let Some(identity) = req.extensions().get::<ClientIdentity>().cloned() else {
            return Box::pin(std::future::ready(Err(ProxyError::Internal(
                "the request reached the core without a client identity".to_owned(),
            ))));
        };
        Box::pin(complete(state, req.into_body(), identity, attempt, start))
    }
}

pub async fn complete(
    state: Arc<AppState>,
    req: Arc<ChatRequest>,
    identity: ClientIdentity,
    attempt: Attempt,
    start: Instant,
) -> Result<Response<ProxyBody>, ProxyError> {
    state.challenge.check()?;
    let mut result = complete_attempt(&state, req, identity, attempt, start).await;
    if let Err(ProxyError::Upstream(e)) = &mut result {
        if e.class == UpstreamClass::Challenge {
            // Keep `Retry-After` truthful: no upstream call before the pause ends.
            if let Some(pause) = state.challenge.trigger() {
                e.retry_after = Some(pause);
            }
        }
    }
    result
}

async fn complete_attempt(
    state: &Arc<AppState>,
    req: Arc<ChatRequest>,
    identity: ClientIdentity,
    attempt: Attempt,
    start: Instant,
) -> Result<Response<ProxyBody>, ProxyError> {
    let catalog = state.models.get().await?;
    let plan = mapping::plan(&req, &catalog)?;
    let conv = &state.conversations;
    let identity = identity.as_str();
    let (next, last) = {
        let mut a = attempt.lock();
        (a.next.take(), a.last.take())
    };
    let mut prepared = match (next, last) {
        (Some(Next::SameChat), Some(last)) => last,
        (Some(Next::FreshChat), _) => conv.fresh(&req, identity, &plan.model, "fallback"),
        _ if !state.config.conversations.continue_chats => {
            conv.fresh(&req, identity, &plan.model, "new")
        }
        _ => conv.prepare(&req, identity, &plan.model).await,
    };
    check_upstream_size(&prepared, &plan, state.config.upstream_body_limit)?;
    // One generation per chat: wait (bounded) for other requests on this conversation.
    let lock = match &prepared.target {
        ChatTarget::Existing { chat_id, .. } => Some(conv.lock(chat_id).await?),
        ChatTarget::NewChat => None,
    };
    if prepared.target == ChatTarget::NewChat {
        let chat_id = state
            .client
            .create_chat(&plan.model, plan.chat_type)
            .await?;
        prepared.target = ChatTarget::Existing {
            chat_id,
            parent_id: None,
        };
    }
    attempt.lock().last = Some(prepared.clone());
    let result = respond(state, &req, &plan, &prepared, lock, start).await;
    if let (Err(e), Some(key)) = (&result, &prepared.continued_from) {
        // The remembered chat or parent is gone upstream: forget it; the retry layer sends
        // the whole history into a fresh chat.
        if let Some(class @ (UpstreamClass::ParentNotFound | UpstreamClass::ChatNotFound)) =
            e.upstream_class()
        {
            conv.forget(key, class.label()).await;
        }
    }
    result
}

/// Refuse a turn whose upstream request would exceed `limit`: the upstream answers those
/// with an anti-bot challenge that blocks the whole account (qwen-protocol §7.4), so no
/// client may trigger one. Checked before a chat is created, on whatever this attempt
/// sends (a continued chat's new messages, or the whole folded history).
fn check_upstream_size(prepared: &Prepared, plan: &Plan, limit: usize) -> Result<(), ProxyError> {
    let (chat_id, parent_id) = match &prepared.target {
        ChatTarget::Existing { chat_id, parent_id } => (chat_id.as_str(), parent_id.as_deref()),
        ChatTarget::NewChat => (CHAT_ID_PLACEHOLDER, None),
    };
    let turn = Turn {
        chat_id,
        parent_id,
        model: &plan.model,
        chat_type: plan.chat_type,
        content: &prepared.content,
        features: plan.features,
    };
    let size = turn.body_len(epoch_secs());
    if size > limit {
        return Err(ProxyError::ContextLengthExceeded { size, limit });
    }
    Ok(())
}

/// Send the prepared turn and build the response (streamed once primed, or aggregated).
async fn respond(
    state: &Arc<AppState>,
    req: &ChatRequest,
    plan: &Plan,
    prepared: &Prepared,
    lock: Option<ChatLock>,
    start: Instant,
) -> Result<Response<ProxyBody>, ProxyError> {
    let ChatTarget::Existing { chat_id, parent_id } = &prepared.target else {
        return Err(ProxyError::Internal(
            "chat not resolved before sending".to_owned(),
        ));
    };
    let turn = Turn {
        chat_id,
        parent_id: parent_id.as_deref(),
        model: &plan.model,
        chat_type: plan.chat_type,
        content: &prepared.content,
        features: plan.features,
    };
    let upstream = state.client.start_completion(&turn).await?;
    let mut limits = Limits::new(req.stop.clone(), req.max_tokens);
    if state.config.conversations.continue_chats {
        let mut reply_key = prepared.reply_key.clone();
        reply_key.begin(Role::Assistant, None);
        limits = limits.with_transcript(reply_key);
    }
    let pipeline = Pipeline::new(limits, estimate_tokens(&prepared.content));
    let mut stream = UpstreamStream::new(upstream, pipeline, state.config.upstream.idle_timeout);
    let id = format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
    let created = epoch_secs();
    let metrics = state.metrics.clone();
    let model = plan.model.clone();
    // The chat lock is released when the reply is remembered (so the next turn finds it),
    // or when the body is dropped.
    let lock_slot = Arc::new(std::sync::Mutex::new(lock));

    if req.stream {
        let encoder = ChunkEncoder::new(&id, created, &req.model, req.include_usage);
        let errored = Arc::new(AtomicBool::new(false));
        let (m, flag, model_label) = (metrics.clone(), errored.clone(), model.clone());
        let (conv, chat, slot, challenged) = (
            state.conversations.clone(),
            chat_id.clone(),
            lock_slot.clone(),
            state.clone(),
        );
        let mut body = TranslateBody::new(stream, encoder, Some(state.config.sse_keepalive))
            .abort_on(state.stream_abort_signal())
            .on_end(move |end| match end {
                StreamEnd::Completed {
                    usage,
                    response,
                    reply_key,
                    ..
                } => {
                    record_tokens(&m, &model_label, usage);
                    remember(conv, chat, response, reply_key, take_lock(&slot))
                }
                StreamEnd::Failed(e) => {
                    flag.store(true, Ordering::Relaxed);
                    e.report(&m);
                    if e.upstream_class() == Some(UpstreamClass::Challenge) {
                        challenged.challenge.trigger();
                    }
                    None
                }
            });
        body.prime().await?;
        metrics
            .ttft
            .with_label_values(&[&model, "true"])
            .observe(start.elapsed().as_secs_f64());
        let observer = StreamMetrics::new(metrics, start, errored);
        let body = ProxyBody::Stream(Box::new(body))
            .observe(observer)
            .observe(Hold(lock_slot));
        let mut rsp = Response::new(body);
        let h = rsp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        h.insert("x-accel-buffering", HeaderValue::from_static("no"));
        return Ok(rsp);
    }

    let ttft = metrics.ttft.with_label_values(&[&model, "false"]);
    let (collected, finish, usage) =
        aggregate::collect(&mut stream, || ttft.observe(start.elapsed().as_secs_f64())).await?;
    record_tokens(&metrics, &model, usage);
    let response = stream.pipeline().response().clone();
    let reply_key = stream.pipeline_mut().take_reply_key();
    if let Some(settle) = remember(
        state.conversations.clone(),
        chat_id.clone(),
        response,
        reply_key,
        take_lock(&lock_slot),
    ) {
        settle.await;
    }
    let body = ChatCompletion {
        id: &id,
        object: "chat.completion",
        created,
        model: &req.model,
        choices: [Choice {
            index: 0,
            message: AssistantMessage {
                role: "assistant",
                content: &collected.content,
                reasoning_content: (!collected.reasoning.is_empty())
                    .then_some(collected.reasoning.as_str()),
                refusal: None,
            },
            logprobs: None,
            finish_reason: finish.as_str(),
        }],
        usage: UsageJson::from(usage),
        system_fingerprint: None,
    };
    Ok(json_response(serde_json::to_vec(&body).unwrap_or_default()))
}

fn take_lock(slot: &std::sync::Mutex<Option<ChatLock>>) -> Option<ChatLock> {
    slot.lock().unwrap_or_else(|p| p.into_inner()).take()
}

/// Remember a completed turn, then release the chat lock. Streams await this before
/// sending `[DONE]` and non-streaming responses before answering, so a client (or another
/// instance) that sends the next turn at once finds it — even if this instance dies next.
fn remember(
    conv: Arc<Conversations>,
    chat_id: String,
    response: ResponseRef,
    reply_key: Option<String>,
    lock: Option<ChatLock>,
) -> Option<Settle> {
    let (Some(key), Some(parent_id)) = (reply_key, response.response_id) else {
        return lock.map(|l| Box::pin(l.release()) as Settle);
    };
    Some(Box::pin(async move {
        conv.remember(&key, Session { chat_id, parent_id }).await;
        if let Some(lock) = lock {
            lock.release().await;
        }
    }))
}

fn record_tokens(m: &Metrics, model: &str, u: Usage) {
    m.tokens
        .with_label_values(&[model, "prompt"])
        .inc_by(u.prompt_tokens);
    m.tokens
        .with_label_values(&[model, "completion"])
        .inc_by(u.completion_tokens);
    if let Some(r) = u.reasoning_tokens {
        m.tokens.with_label_values(&[model, "reasoning"]).inc_by(r);
    }
}

/// Active-stream gauge, stream duration and outcome (completed, error, cancelled).
struct StreamMetrics {
    metrics: Arc<Metrics>,
    start: Instant,
    errored: Arc<AtomicBool>,
}

impl StreamMetrics {
    fn new(metrics: Arc<Metrics>, start: Instant, errored: Arc<AtomicBool>) -> Self {
        metrics.active_streams.inc();
        Self {
            metrics,
            start,
            errored,
        }
    }
}

impl BodyObserver for StreamMetrics {
    fn on_end(&mut self, completed: bool) {
        let outcome = match (completed, self.errored.load(Ordering::Relaxed)) {
            (false, _) => "cancelled",
            (true, true) => "error",
            (true, false) => "completed",
        };
        self.metrics.active_streams.dec();
        self.metrics.streams.with_label_values(&[outcome]).inc();
        self.metrics
            .stream_duration
            .with_label_values(&[outcome])
            .observe(self.start.elapsed().as_secs_f64());
    }
}
