//! The error boundary: every `ProxyError` from the layers inside becomes its error response
//! here ([`error_response`], the one place an error becomes an HTTP response), in the shape
//! of the request's client API (its route's `Api`, so a 401 from auth or a 503 while
//! draining speaks the caller's dialect), and is logged and counted once
//! (`ProxyError::report`) and told to the request log's recorder. Outside this layer the
//! stack is infallible.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::{Request, Response, StatusCode};

use crate::body::{json_response, ProxyBody};
use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::request_log::Recorder;
use crate::routes::{Api, Route};

/// How each client API writes an error: its status and body (`api::error_reply`).
pub(crate) type ErrorBodies = fn(Api, &ProxyError) -> (StatusCode, Bytes);

#[derive(Debug, Clone)]
pub(crate) struct ErrorMapLayer {
    metrics: Arc<Metrics>,
    bodies: ErrorBodies,
}

impl ErrorMapLayer {
    pub(crate) fn new(metrics: Arc<Metrics>, bodies: ErrorBodies) -> Self {
        Self { metrics, bodies }
    }
}

impl<S> tower::Layer<S> for ErrorMapLayer {
    type Service = ErrorMap<S>;
    fn layer(&self, inner: S) -> ErrorMap<S> {
        ErrorMap {
            inner,
            metrics: self.metrics.clone(),
            bodies: self.bodies,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct ErrorMap<S> {
    inner: S,
    metrics: Arc<Metrics>,
    bodies: ErrorBodies,
}

impl<S, B> tower::Service<Request<B>> for ErrorMap<S>
where
    S: tower::Service<Request<B>, Response = Response<ProxyBody>, Error = ProxyError>,
    S::Future: Unpin,
{
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Readiness errors are not expected from our services; report them per request.
        match self.inner.poll_ready(cx) {
            Poll::Ready(Err(e)) => {
                tracing::error!(error = %e, "service not ready");
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let api = Route::of(&req).api;
        let recorder = Recorder::of(req.extensions());
        ResponseFuture {
            inner: self.inner.call(req),
            metrics: self.metrics.clone(),
            api,
            bodies: self.bodies,
            recorder,
        }
    }
}

pub(crate) struct ResponseFuture<F> {
    inner: F,
    metrics: Arc<Metrics>,
    api: Api,
    bodies: ErrorBodies,
    /// The request log's record of the request (inert off the completion routes).
    recorder: Recorder,
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ProxyBody>, ProxyError>> + Unpin,
{
    type Output = Result<Response<ProxyBody>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match std::task::ready!(Pin::new(&mut self.inner).poll(cx)) {
            Ok(rsp) => Poll::Ready(Ok(rsp)),
            Err(e) => {
                e.report(&self.metrics);
                self.recorder.failed(&e);
                let (status, body) = (self.bodies)(self.api, &e);
                Poll::Ready(Ok(error_response(&e, status, body)))
            }
        }
    }
}

/// The one place an error becomes an HTTP response: status, the body in the client API's
/// shape and the error's headers.
pub(crate) fn error_response(
    e: &ProxyError,
    status: StatusCode,
    body: Bytes,
) -> Response<ProxyBody> {
    let mut rsp = json_response(body);
    *rsp.status_mut() = status;
    e.write_headers(rsp.headers_mut());
    if e.is_key_refusal() {
        rsp.extensions_mut()
            .insert(crate::layers::trace::LogQuietly);
    }
    rsp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::UpstreamClass;
    use tower::{service_fn, ServiceBuilder, ServiceExt};

    #[tokio::test]
    async fn errors_become_openai_responses_and_are_counted() {
        let metrics = Metrics::new();
        let svc = ServiceBuilder::new()
            .layer(ErrorMapLayer::new(metrics.clone(), crate::api::error_reply))
            .service(service_fn(|_r: Request<()>| {
                Box::pin(async {
                    Err::<Response<ProxyBody>, _>(ProxyError::upstream(
                        UpstreamClass::Challenge,
                        "punish",
                    ))
                })
            }));
        let rsp = svc.oneshot(Request::new(())).await.unwrap();
        assert_eq!(rsp.status(), 503);
        assert_eq!(rsp.headers()["content-type"], "application/json");
        assert!(rsp.headers().contains_key("retry-after"));
        let body = http_body_util::BodyExt::collect(rsp.into_body())
            .await
            .unwrap()
            .to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "upstream_challenge", "the OpenAI shape");
        assert_eq!(
            metrics
                .upstream_errors
                .with_label_values(&["challenge"])
                .get(),
            1
        );
    }

    #[tokio::test]
    async fn the_body_is_written_in_the_routes_dialect() {
        // A writer per API; the layer must ask it with the route's API, whatever the error.
        fn bodies(api: Api, e: &ProxyError) -> (StatusCode, Bytes) {
            let status = match api {
                Api::Anthropic => StatusCode::IM_A_TEAPOT,
                Api::OpenAi | Api::Responses => e.status(),
            };
            (
                status,
                Bytes::from(format!("{api:?}:{}", e.code().unwrap_or_default())),
            )
        }
        // The response an invalid key gets on the route of `path`.
        let reply = |path: &'static str| async move {
            let svc = ServiceBuilder::new()
                .layer(ErrorMapLayer::new(Metrics::new(), bodies))
                .service(service_fn(|_r: Request<()>| {
                    Box::pin(async { Err::<Response<ProxyBody>, _>(ProxyError::InvalidApiKey) })
                }));
            let mut req = Request::new(());
            req.extensions_mut()
                .insert(Route::resolve(&hyper::Method::POST, path));
            let rsp = svc.oneshot(req).await.unwrap();
            let (status, headers) = (rsp.status(), rsp.headers().clone());
            let body = http_body_util::BodyExt::collect(rsp.into_body())
                .await
                .unwrap()
                .to_bytes();
            (status, headers, body)
        };
        let (status, headers, body) = reply("/v1/chat/completions").await;
        assert_eq!(status, 401);
        assert_eq!(headers["www-authenticate"], "Bearer");
        assert_eq!(body, "OpenAi:invalid_api_key");
        // An Anthropic route: its writer's status and body.
        let (status, _, body) = reply("/v1/messages").await;
        assert_eq!(status, StatusCode::IM_A_TEAPOT);
        assert_eq!(body, "Anthropic:invalid_api_key");
    }
}
