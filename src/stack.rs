//! The tower stacks. Outer → inner, each layer in its own module:
//!
//! | # | layer | contract |
//! |---|---|---|
//! | 1 | catch-panic (tower-http) | a panic anywhere inside becomes a logged 500 OpenAI error, never a dropped connection; boxes the body once for hyper |
//! | 1a | route (`layers::route`) | resolves the route once from the table (`routes.rs`: endpoint, label, auth, rate limit, client API) into extensions |
//! | 1b | operator headers (`layers::operator_headers`) | on `/admin` and below (the console and the admin API), errors included: CSP, `nosniff`, no framing, no referrer, `no-store` |
//! | 2 | request-id (`layers::request_id`) | accepts a sane `x-request-id` or mints one; adds `RequestId` to extensions and the header to the response |
//! | 3 | trace (`layers::trace`) | one span per request (method, route, request id; model, stream, attempts, status, latency recorded later); logs the end of streams |
//! | 4 | metrics (`layers::metrics`) | `http_requests_total` and `http_request_duration_seconds`, recorded when the body ends or is dropped |
//! | 4a | request log (`layers::request_log`) | on the completion routes, a `request_log::Recorder` in extensions (the auth layer, the retry layer, the error map, early commit and the core fill it); the entry goes to the log (`AppState::request_log`) when the body ends or is dropped, or as a 499 when the request is dropped unanswered |
//! | 5 | error-map (`layers::error_map`) | every `ProxyError` from inside becomes its response in the route's API shape (`error_response`, the one mapping; `api::error_reply`: status and body), logged, counted and told to the request's recorder once; outside, the stack is infallible |
//! | 6 | header limits (`layers::header_limits`) | more than 128 header fields or 64 KiB of headers: 431 in the OpenAI shape (hyper accepts up to twice that, then answers with its own bare 431) |
//! | 7 | CORS (tower-http, when `CORS_ENABLED`) | answers preflights; adds CORS headers |
//! | 8 | auth (`layers::auth`) | parses the credential once and adds `ClientIdentity` (a key fingerprint, or anonymous) to extensions; with `API_KEYS`, the client API's routes (`/v1/*`) need a valid key (401 + `WWW-Authenticate`); repeated failures lock the address out (429); on `/admin`, the console's session cookie stands for `ADMIN_KEY`, with its CSRF token on changes (403 without) |
//! | 9 | rate-limit (`layers::rate_limit`, when `RATE_LIMIT_RPM` > 0) | token bucket per `ClientIdentity` key, else per client IP (`TRUST_PROXY`), for `/v1/*`; 429 at once with `Retry-After` and `x-ratelimit-*`; never queues |
//! | 10 | router (`router.rs`) | sends the request to its endpoint; `/v1/chat/completions` goes into the chat stack below |
//!
//! The chat stack, one per client API (`chat_stack::<A>`: `POST /v1/chat/completions` with
//! `api::openai::OpenAi`, `POST /v1/messages` with `api::anthropic::Anthropic`):
//!
//! | # | layer | contract |
//! |---|---|---|
//! | 11 | concurrency (`layers::concurrency`) | `MAX_CONCURRENT_STREAMS` permits, 503 at once past it; the permit travels in the response body |
//! | 12 | validate (`layers::validate`) | content type, no `Content-Encoding` (415), body size (413), body read deadline (408), JSON → `Arc<ApiRequest>` (the turn and the API's options, `ClientApi::parse`) as the request body (400s name the `param`) |
//! | 12a | early commit (`layers::early_commit`) | a streamed answer not begun after `STREAM_COMMIT_DELAY`: 200, SSE headers and comments while it waits; a later failure is the API's in-band error |
//! | 13 | retry (`layers::retry`) | backoff with full jitter and a budget, per error class, within `FIRST_TOKEN_TIMEOUT`; shares the request's chat ledger with the core |
//! | 14 | core (`chat::ChatCore<A>`) | plan → chat → completion → the API's primed stream or body |
//!
//! The images stack (`images_stack`, `POST /v1/images/generations`) is the same with the
//! images API (`api::openai::images::OpenAiImages`: one image turn) and its fan-out between
//! validation and retries (`images::fan_out`: `n` image turns at once, all or nothing, then
//! addresses or base64; it lives with the images API because it writes that API's answer).
//!
//! Timeouts: the upstream response-header timeout is in the client (`qwen::client`); the
//! idle timeout between upstream events and the SSE keep-alives are in the streaming body
//! (`translate::body`), because layer timeouts end when the response headers are sent.

use std::any::Any;
use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Request, Response};
use tower::util::BoxCloneService;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::api::anthropic::Anthropic;
use crate::api::openai::images::fan_out::FanOutLayer;
use crate::api::openai::images::OpenAiImages;
use crate::api::openai::OpenAi;
use crate::api::responses::store::ResponseStore;
use crate::api::responses::stored::StoredLayer;
use crate::api::responses::Responses;
use crate::app::AppState;
use crate::chat::ChatCore;
use crate::common::BoxError;
use crate::error::ProxyError;
use crate::layers::auth::AuthLayer;
use crate::layers::concurrency::ConcurrencyLayer;
use crate::layers::early_commit::EarlyCommitLayer;
use crate::layers::error_map::ErrorMapLayer;
use crate::layers::header_limits::HeaderLimitLayer;
use crate::layers::metrics::MetricsLayer;
use crate::layers::operator_headers::OperatorHeadersLayer;
use crate::layers::rate_limit::RateLimitLayer;
use crate::layers::request_id::RequestIdLayer;
use crate::layers::request_log::RequestLogLayer;
use crate::layers::retry::{RetryLayer, RetryPolicy};
use crate::layers::route::RouteLayer;
use crate::layers::trace::TraceLayer;
use crate::layers::validate::ValidateLayer;
use crate::rate::{LocalBuckets, RateLimitStore};
use crate::redis::rate_limit::RedisBuckets;
use crate::router::{ChatStack, Router, Stacks};
use crate::turn::ClientApi;

/// The response body at the top of the stack (boxed once, by catch-panic).
pub(crate) type HttpBody = tower_http::body::UnsyncBoxBody<Bytes, BoxError>;
pub(crate) type HttpService = BoxCloneService<Request<Incoming>, Response<HttpBody>, Infallible>;

fn panic_response(err: Box<dyn Any + Send + 'static>) -> Response<http_body_util::Full<Bytes>> {
    let detail = err
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| err.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    tracing::error!(panic = detail, "request handler panicked");
    // (The handler does not see the request, so not its route: the OpenAI shape.)
    let e = ProxyError::Internal("the request handler failed unexpectedly".to_owned());
    let mut rsp = Response::new(http_body_util::Full::new(OpenAi::error_body(&e)));
    *rsp.status_mut() = e.status();
    rsp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    e.write_headers(rsp.headers_mut());
    rsp
}

fn cors_layer(state: &AppState) -> Option<CorsLayer> {
    let cfg = &state.config.cors;
    if !cfg.enabled {
        return None;
    }
    let origin = if cfg.origin == "*" {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            cfg.origin
                .split(',')
                .filter_map(|o| HeaderValue::from_str(o.trim()).ok()),
        )
    };
    let layer = CorsLayer::new().allow_origin(origin).allow_methods([
        hyper::Method::GET,
        hyper::Method::POST,
        hyper::Method::OPTIONS,
    ]);
    // `Any` headers cannot be combined with credentials; mirror the request instead.
    Some(if cfg.credentials {
        layer
            .allow_credentials(true)
            .allow_headers(tower_http::cors::AllowHeaders::mirror_request())
    } else {
        layer.allow_headers(tower_http::cors::Any)
    })
}

/// A chat route's stack (layers 11–14) for the client API `A`.
pub(crate) fn chat_stack<A: ClientApi>(state: &Arc<AppState>) -> ChatStack {
    let cfg = &state.config;
    let svc = ServiceBuilder::new()
        .layer(ConcurrencyLayer::new(
            state.slots.clone(),
            state.metrics.clone(),
        ))
        .layer(ValidateLayer::<A>::new(
            cfg.max_body_bytes,
            cfg.body_read_timeout,
        ))
        .layer(EarlyCommitLayer::<A>::new(
            cfg.stream_commit_delay,
            cfg.sse_keepalive,
            state.metrics.clone(),
        ))
        .layer(RetryLayer::new(
            RetryPolicy::from_config(&cfg.retry, cfg.conversations.chats_per_request),
            state.metrics.clone(),
        ))
        .service(ChatCore::<A>::new(state.clone()));
    BoxCloneService::new(svc)
}

/// The image generation stack: layers 11, 12, the fan-out, 13, 14 for the images API.
pub(crate) fn images_stack(state: &Arc<AppState>) -> ChatStack {
    let cfg = &state.config;
    let svc = ServiceBuilder::new()
        .layer(ConcurrencyLayer::new(
            state.slots.clone(),
            state.metrics.clone(),
        ))
        .layer(ValidateLayer::<OpenAiImages>::new(
            cfg.max_body_bytes,
            cfg.body_read_timeout,
        ))
        .layer(FanOutLayer::new(state.clone()))
        .layer(RetryLayer::new(
            RetryPolicy::from_config(&cfg.retry, cfg.conversations.chats_per_request),
            state.metrics.clone(),
        ))
        .service(ChatCore::<OpenAiImages>::new(state.clone()));
    BoxCloneService::new(svc)
}

/// The Responses stack: layers 11, 12, the stored responses (`api::responses::stored`:
/// `previous_response_id` and `item_reference` resolved, the store handed to the encoder),
/// 13, 14 for the Responses API.
pub(crate) fn responses_stack(state: &Arc<AppState>, store: Arc<ResponseStore>) -> ChatStack {
    let cfg = &state.config;
    let svc = ServiceBuilder::new()
        .layer(ConcurrencyLayer::new(
            state.slots.clone(),
            state.metrics.clone(),
        ))
        .layer(ValidateLayer::<Responses>::new(
            cfg.max_body_bytes,
            cfg.body_read_timeout,
        ))
        .layer(EarlyCommitLayer::<Responses>::new(
            cfg.stream_commit_delay,
            cfg.sse_keepalive,
            state.metrics.clone(),
        ))
        .layer(StoredLayer::new(store))
        .layer(RetryLayer::new(
            RetryPolicy::from_config(&cfg.retry, cfg.conversations.chats_per_request),
            state.metrics.clone(),
        ))
        .service(ChatCore::<Responses>::new(state.clone()));
    BoxCloneService::new(svc)
}

/// The whole stack (layers 1–10).
pub(crate) fn build(state: Arc<AppState>) -> HttpService {
    let cfg = &state.config;
    let rate_limit = (cfg.rate_limit_rpm > 0).then(|| {
        let store: Arc<dyn RateLimitStore> = match &state.redis {
            Some(client) => Arc::new(RedisBuckets::new(
                client.clone(),
                cfg.rate_limit_rpm,
                cfg.rate_limit_burst,
            )),
            None => Arc::new(LocalBuckets::new(cfg.rate_limit_rpm, cfg.rate_limit_burst)),
        };
        RateLimitLayer::new(store, cfg.trust_proxy.clone(), state.metrics.clone())
    });
    // Responses kept for `GET /v1/responses/{id}`, `previous_response_id` and
    // `item_reference`: written by the Responses stack, read by the router too.
    let stored_responses = Arc::new(ResponseStore::default());
    let svc = ServiceBuilder::new()
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(RouteLayer)
        .layer(OperatorHeadersLayer)
        .layer(RequestIdLayer)
        .layer(TraceLayer)
        .layer(MetricsLayer::new(state.metrics.clone()))
        .layer(RequestLogLayer::new(
            state.request_log.clone(),
            crate::api::error_type,
        ))
        .layer(ErrorMapLayer::new(
            state.metrics.clone(),
            crate::api::error_reply,
        ))
        .layer(HeaderLimitLayer)
        .option_layer(cors_layer(&state))
        .layer(AuthLayer::new(
            &cfg.api_keys,
            cfg.admin_key.clone(),
            state.sessions.clone(),
            cfg.trust_proxy.clone(),
            cfg.auth_failures,
            state.metrics.clone(),
        ))
        .option_layer(rate_limit)
        .service(Router::new(
            state.clone(),
            Stacks {
                chat: chat_stack::<OpenAi>(&state),
                images: images_stack(&state),
                messages: chat_stack::<Anthropic>(&state),
                responses: responses_stack(&state, stored_responses.clone()),
                stored_responses,
            },
        ));
    BoxCloneService::new(svc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tower::{service_fn, ServiceExt};

    #[tokio::test]
    async fn a_panic_becomes_a_500_openai_error() {
        let svc = ServiceBuilder::new()
            .layer(CatchPanicLayer::custom(panic_response))
            .service(service_fn(|_r: Request<()>| async {
                if true {
                    panic!("boom");
                }
                Ok::<_, Infallible>(Response::new(crate::body::ProxyBody::empty()))
            }));
        let rsp = svc.oneshot(Request::new(())).await.unwrap();
        assert_eq!(rsp.status(), 500);
        let body = rsp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["type"], "server_error");
        assert_eq!(v["error"]["code"], "internal_error");
    }
}
