//! The core service: routes a request to its handler and turns every error into the
//! OpenAI error response. Cross-cutting concerns live in the layers around it (`stack.rs`).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http_body_util::{BodyExt, Limited};
use hyper::body::Body;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Response};
use serde_json::json;

use crate::app::AppState;
use crate::body::ProxyBody;
use crate::chat::{self, json_response};
use crate::error::ProxyError;
use crate::openai::request::ChatRequest;
use crate::openai::response::ModelList;

#[derive(Clone, Debug)]
pub struct Router {
    state: Arc<AppState>,
}

impl Router {
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }
}

impl<B> tower::Service<Request<B>> for Router
where
    B: Body + Send + 'static,
    B::Data: Buf + Send,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let state = self.state.clone();
        Box::pin(async move {
            Ok(route(state, req)
                .await
                .unwrap_or_else(ProxyError::into_response))
        })
    }
}

async fn route<B>(state: Arc<AppState>, req: Request<B>) -> Result<Response<ProxyBody>, ProxyError>
where
    B: Body,
    B::Data: Buf,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let path = req.uri().path().trim_end_matches('/').to_owned();
    let method = req.method().clone();
    match (method, path.as_str()) {
        (Method::POST, "/v1/chat/completions") => {
            let body = read_json_body(req, state.config.max_body_bytes).await?;
            let chat_req = Arc::new(ChatRequest::from_slice(&body)?);
            chat::complete(state, chat_req).await
        }
        (Method::GET, "/v1/models") => {
            let catalog = state.models.get().await?;
            let list = ModelList {
                object: "list",
                data: &catalog.openai,
            };
            Ok(json_response(serde_json::to_vec(&list).unwrap_or_default()))
        }
        (Method::GET, p) if p.starts_with("/v1/models/") => {
            let id = &p["/v1/models/".len()..];
            let catalog = state.models.get().await?;
            catalog
                .openai
                .iter()
                .find(|m| m.id.eq_ignore_ascii_case(id))
                .map(|m| json_response(serde_json::to_vec(m).unwrap_or_default()))
                .ok_or_else(|| ProxyError::ModelNotFound {
                    model: id.to_owned(),
                })
        }
        (Method::GET, "/health") => Ok(health(&state).await),
        (_, "/v1/chat/completions" | "/v1/models" | "/health") => Err(ProxyError::MethodNotAllowed),
        (_, p) => Err(ProxyError::RouteNotFound { path: p.to_owned() }),
    }
}

async fn health(state: &AppState) -> Response<ProxyBody> {
    let upstream = state.upstream_health().await;
    let body = json!({
        "status": if upstream.reachable { "ok" } else { "degraded" },
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": state.started.elapsed().as_secs(),
        "upstream": {
            "reachable": upstream.reachable,
            "latency_ms": upstream.latency_ms,
        },
    });
    json_response(body.to_string().into_bytes())
}

/// Check `content-type`, reject an oversized `content-length` before reading, then read
/// at most `limit` bytes.
async fn read_json_body<B>(req: Request<B>, limit: usize) -> Result<Bytes, ProxyError>
where
    B: Body,
    B::Data: Buf,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type
        .trim_start()
        .to_ascii_lowercase()
        .starts_with("application/json")
    {
        return Err(ProxyError::UnsupportedMediaType);
    }
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ProxyError::PayloadTooLarge { limit });
    }
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(ProxyError::PayloadTooLarge { limit })
        }
        Err(e) => Err(ProxyError::bad_request(
            format!("Could not read the request body: {e}"),
            None,
        )),
    }
}
