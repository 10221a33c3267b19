//! The core service of `POST /v1/chat/completions`: validated request → upstream turn →
//! streamed or aggregated OpenAI response. Streaming and non-streaming share the upstream
//! pipeline. `Ok` is returned only once the stream is primed (first meaningful upstream
//! event), so every `Err` happens before the first byte and the retry layer may retry it.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Request, Response};
use tokio::time::Instant;

use crate::app::AppState;
use crate::body::{BodyObserver, ProxyBody};
use crate::error::ProxyError;
use crate::layers::error_map::report;
use crate::layers::retry::Attempt;
use crate::metrics::Metrics;
use crate::openai::encoder::{ChunkEncoder, UsageJson};
use crate::openai::request::ChatRequest;
use crate::openai::response::{AssistantMessage, ChatCompletion, Choice};
use crate::qwen::request::Turn;
use crate::server::RequestStart;
use crate::translate::aggregate;
use crate::translate::body::{StreamEnd, TranslateBody, UpstreamStream};
use crate::translate::limits::Limits;
use crate::translate::mapping::{self, ChatTarget};
use crate::translate::pipeline::Pipeline;
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

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl tower::Service<Request<Arc<ChatRequest>>> for ChatCore {
    type Response = Response<ProxyBody>;
    type Error = ProxyError;
    type Future = BoxFuture<Result<Response<ProxyBody>, ProxyError>>;

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
        Box::pin(complete(state, req.into_body(), attempt, start))
    }
}

pub async fn complete(
    state: Arc<AppState>,
    req: Arc<ChatRequest>,
    attempt: Attempt,
    start: Instant,
) -> Result<Response<ProxyBody>, ProxyError> {
    let catalog = state.models.get().await?;
    let plan = mapping::plan(&req, &catalog)?;
    let target = attempt.lock().force.take().unwrap_or(plan.target.clone());
    let (chat_id, parent_id) = match target {
        ChatTarget::NewChat => (
            state
                .client
                .create_chat(&plan.model, plan.chat_type)
                .await?,
            None,
        ),
        ChatTarget::Existing { chat_id, parent_id } => (chat_id, parent_id),
    };
    attempt.lock().used = Some(ChatTarget::Existing {
        chat_id: chat_id.clone(),
        parent_id: parent_id.clone(),
    });
    let turn = Turn {
        chat_id: &chat_id,
        parent_id: parent_id.as_deref(),
        model: &plan.model,
        chat_type: plan.chat_type,
        content: &plan.content,
        features: plan.features,
    };
    let upstream = state.client.start_completion(&turn).await?;
    let pipeline = Pipeline::new(
        Limits::new(req.stop.clone(), req.max_tokens),
        plan.prompt_tokens_estimate,
    );
    let mut stream = UpstreamStream::new(upstream, pipeline, state.config.upstream.idle_timeout);
    let id = format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let metrics = state.metrics.clone();
    let model = plan.model.clone();

    if req.stream {
        let encoder = ChunkEncoder::new(&id, created, &req.model, req.include_usage);
        let errored = Arc::new(AtomicBool::new(false));
        let (m, flag, model_label) = (metrics.clone(), errored.clone(), model.clone());
        let mut body = TranslateBody::new(stream, encoder, Some(state.config.sse_keepalive))
            .abort_on(state.stream_abort_signal())
            .on_end(move |end| match end {
                StreamEnd::Completed(_, usage) => record_tokens(&m, &model_label, usage),
                StreamEnd::Failed(e) => {
                    flag.store(true, Ordering::Relaxed);
                    report(&m, e);
                }
            });
        body.prime().await?;
        metrics
            .ttft
            .with_label_values(&[&model, "true"])
            .observe(start.elapsed().as_secs_f64());
        let observer = StreamMetrics::new(metrics, start, errored);
        let mut rsp = Response::new(ProxyBody::Stream(Box::new(body)).observe(observer));
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

pub fn json_response(body: Vec<u8>) -> Response<ProxyBody> {
    let mut rsp = Response::new(ProxyBody::full(body));
    rsp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    rsp
}
