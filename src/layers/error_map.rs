//! The error boundary: every `ProxyError` from the layers inside becomes its OpenAI error
//! response here (via `ProxyError::into_response`, the single mapping), is logged once, and
//! is counted by class. Outside this layer the stack is infallible.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::{Request, Response};

use crate::body::ProxyBody;
use crate::error::ProxyError;
use crate::metrics::Metrics;

#[derive(Debug, Clone)]
pub struct ErrorMapLayer {
    metrics: Arc<Metrics>,
}

impl ErrorMapLayer {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> tower::Layer<S> for ErrorMapLayer {
    type Service = ErrorMap<S>;
    fn layer(&self, inner: S) -> ErrorMap<S> {
        ErrorMap {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ErrorMap<S> {
    inner: S,
    metrics: Arc<Metrics>,
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
        ResponseFuture {
            inner: self.inner.call(req),
            metrics: self.metrics.clone(),
        }
    }
}

pub struct ResponseFuture<F> {
    inner: F,
    metrics: Arc<Metrics>,
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
                report(&self.metrics, &e);
                Poll::Ready(Ok(e.into_response()))
            }
        }
    }
}

/// Log and count an error once (also used for errors that happen mid-stream). Three kinds,
/// so an operator can tell them apart: the upstream failed (WARN, whatever the status —
/// an expired credential or a spent quota is the operator's problem, not the client's), the
/// proxy failed (WARN), or the client's request was refused (INFO).
pub fn report(metrics: &Metrics, e: &ProxyError) {
    let status = e.status().as_u16();
    let error = e.metric_label();
    if let Some(class) = e.upstream_class() {
        metrics
            .upstream_errors
            .with_label_values(&[class.label()])
            .inc();
        tracing::warn!(status, error, detail = %e, "upstream failure");
    } else if status >= 500 || matches!(e, ProxyError::UpstreamCoolingDown { .. }) {
        tracing::warn!(status, error, detail = %e, "request failed");
    } else {
        tracing::info!(status, error, detail = %e, "request rejected");
    }
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
            .layer(ErrorMapLayer::new(metrics.clone()))
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
        assert_eq!(
            metrics
                .upstream_errors
                .with_label_values(&["challenge"])
                .get(),
            1
        );
    }
}
