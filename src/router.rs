//! Sends a request to its endpoint's handler (the route table is `routes.rs`; the route
//! layer resolved it). The chat route has its own sub-stack (concurrency → validate →
//! retry → core, see `stack.rs`); the other routes are small handlers here.

use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use serde_json::json;
use tower::util::BoxCloneService;
use tower::ServiceExt;

use crate::api::openai::response::{ModelList, ModelObject};
use crate::app::AppState;
use crate::body::{json_response, ProxyBody};
use crate::common::BoxFuture;
use crate::error::ProxyError;
use crate::identity::{presents, OperatorAccess};
use crate::routes::{Endpoint, Route};

/// The chat route's sub-stack (`stack::chat_stack`), type-erased once.
pub(crate) type ChatStack = BoxCloneService<Request<Incoming>, Response<ProxyBody>, ProxyError>;

/// The sub-stacks the router sends requests into.
#[derive(Clone)]
pub(crate) struct Stacks {
    /// `POST /v1/chat/completions`.
    pub(crate) chat: ChatStack,
    /// `POST /v1/images/generations`.
    pub(crate) images: ChatStack,
    /// `POST /v1/messages`.
    pub(crate) messages: ChatStack,
    /// `POST /v1/responses`.
    pub(crate) responses: ChatStack,
    /// What it keeps (`GET`/`DELETE /v1/responses/{id}`).
    pub(crate) stored_responses: Arc<crate::api::responses::store::ResponseStore>,
}

#[derive(Clone)]
pub(crate) struct Router {
    state: Arc<AppState>,
    stacks: Stacks,
}

impl Router {
    pub(crate) fn new(state: Arc<AppState>, stacks: Stacks) -> Self {
        Self { state, stacks }
    }
}

impl tower::Service<Request<Incoming>> for Router {
    type Response = Response<ProxyBody>;
    type Error = ProxyError;
    // Boxed: each route is an async handler (the model cache, the health probe, the chat
    // stack); one allocation per request, never per frame.
    type Future = BoxFuture<'static, Result<Response<ProxyBody>, ProxyError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let state = self.state.clone();
        let stacks = self.stacks.clone();
        Box::pin(async move {
            let path = req.uri().path().trim_end_matches('/').to_owned();
            match Route::of(&req).endpoint {
                // Draining: other instances take new completions (503 + Retry-After).
                Endpoint::ChatCompletions
                | Endpoint::ImageGenerations
                | Endpoint::Messages
                | Endpoint::Responses
                    if state.is_draining() =>
                {
                    Err(ProxyError::ShuttingDown)
                }
                Endpoint::ChatCompletions => stacks.chat.oneshot(req).await,
                Endpoint::ImageGenerations => stacks.images.oneshot(req).await,
                Endpoint::Messages => stacks.messages.oneshot(req).await,
                Endpoint::Responses => stacks.responses.oneshot(req).await,
                Endpoint::StoredResponse => crate::api::responses::stored::serve(
                    &stacks.stored_responses,
                    req.method(),
                    &path["/v1/responses/".len()..],
                    req.uri().query(),
                ),
                Endpoint::CountTokens => crate::api::anthropic::count_tokens(&state, req).await,
                // An Anthropic client (Claude Code's model discovery) reads its own shape.
                Endpoint::Models if req.headers().contains_key("anthropic-version") => {
                    let catalog = state.catalog().await?;
                    let models: Vec<(&str, &str, u64)> = catalog
                        .listed
                        .iter()
                        .map(|m| (m.id.as_str(), m.id.as_str(), m.created))
                        .collect();
                    Ok(json_response(crate::api::anthropic::response::model_list(
                        &models,
                    )))
                }
                Endpoint::Models => {
                    let catalog = state.catalog().await?;
                    let list = ModelList {
                        object: "list",
                        data: catalog
                            .listed
                            .iter()
                            .map(|m| ModelObject::new(&m.id, m.created))
                            .collect(),
                        models: crate::api::responses::codex_models(&catalog),
                    };
                    Ok(json_response(serde_json::to_vec(&list).unwrap_or_default()))
                }
                Endpoint::Model => {
                    let id = &path["/v1/models/".len()..];
                    let catalog = state.catalog().await?;
                    catalog
                        .listed
                        .iter()
                        .find(|m| m.id.eq_ignore_ascii_case(id))
                        .map(|m| {
                            let object = ModelObject::new(&m.id, m.created);
                            json_response(serde_json::to_vec(&object).unwrap_or_default())
                        })
                        .ok_or_else(|| ProxyError::ModelNotFound {
                            model: id.to_owned(),
                        })
                }
                Endpoint::Admin => crate::admin::handle(&state, &req, &path).await,
                Endpoint::Console => {
                    crate::console::serve(state.config.admin_key.is_some(), &path, req.headers())
                }
                Endpoint::Index => Ok(index()),
                Endpoint::Health => {
                    let operator = req.extensions().get::<OperatorAccess>().is_some();
                    Ok(health(&state, operator).await)
                }
                Endpoint::Metrics => metrics(&state, &req),
                Endpoint::WrongMethod { allow } => Err(ProxyError::MethodNotAllowed { allow }),
                Endpoint::NotFound => Err(ProxyError::RouteNotFound { path }),
            }
        })
    }
}

/// `GET /`: what this server is and where its endpoints are (for a human with curl).
fn index() -> Response<ProxyBody> {
    let body = json!({
        "name": "qwen-proxy",
        "version": env!("CARGO_PKG_VERSION"),
        "description": "OpenAI-compatible API for the Qwen chat web service",
        "endpoints": {
            "chat_completions": "POST /v1/chat/completions",
            "models": "GET /v1/models",
            "model": "GET /v1/models/{id}",
            "health": "GET /health",
            "metrics": "GET /metrics",
        },
        "base_url_path": "/v1",
    });
    json_response(body.to_string().into_bytes())
}

/// `GET /health`: status and why, version, uptime, upstream, account counts, the session
/// store; the list of accounts only for the operators (`ADMIN_KEY`): with thousands of
/// accounts it is large, and names are the operators' business.
async fn health(state: &AppState, operator: bool) -> Response<ProxyBody> {
    let c = state.condition().await;
    let (upstream, accounts) = (c.upstream, c.accounts);
    let body = json!({
        "status": c.status,
        "reasons": c.reasons,
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": state.started.elapsed().as_secs(),
        "upstream": {
            "reachable": upstream.reachable,
            "latency_ms": upstream.latency_ms,
            "challenge_cooldown_seconds": c.cooldown.unwrap_or(0),
        },
        "accounts": if operator {
            json!({
                "counts": accounts,
                "list": state
                    .accounts
                    .views()
                    .into_iter()
                    .map(|v| json!({"name": v.name, "state": v.state, "reason": v.reason, "until_ms": v.until_ms, "inflight": v.inflight}))
                    .collect::<Vec<_>>(),
            })
        } else {
            json!({"counts": accounts})
        },
        "session_store": {
            "backend": if state.conversations.has_shared_store() { "redis" } else { "memory" },
            "status": if c.store_degraded { "degraded" } else { "ok" },
        },
    });
    let mut rsp = json_response(body.to_string().into_bytes());
    if c.status == "draining" {
        // Load balancers stop sending new requests to a draining instance.
        *rsp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    }
    rsp
}

fn metrics(state: &AppState, req: &Request<Incoming>) -> Result<Response<ProxyBody>, ProxyError> {
    if let Some(token) = &state.config.metrics_token {
        if !presents(req.headers(), token) {
            return Err(ProxyError::InvalidApiKey);
        }
    }
    // A gauge of time left, so it is computed when scraped.
    let cooldown = state
        .accounts
        .challenge_pause()
        .map_or(0, |d| d.as_secs_f64().ceil() as i64);
    state.accounts.publish_gauges();
    state.metrics.upstream_cooldown.set(cooldown);
    let tasks = crate::workers::alive_tasks(state.runtimes.get().map_or(&[], Vec::as_slice));
    state
        .metrics
        .alive_tasks
        .set(i64::try_from(tasks).unwrap_or(i64::MAX));
    let mut rsp = Response::new(ProxyBody::full(state.metrics.render()));
    rsp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(rsp)
}
