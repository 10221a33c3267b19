//! The error boundary: every `ProxyError` from the layers inside becomes its OpenAI error
//! response here ([`error_response`], the one place an error becomes an HTTP response), is
//! logged and counted once (`ProxyError::report`). Outside this layer the stack is
//! infallible.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::{Request, Response};

use crate::body::{json_response, ProxyBody};
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
                e.report(&self.metrics);
                Poll::Ready(Ok(error_response(&e)))
            }
        }
    }
}

/// The one place an error becomes an HTTP response: status, the OpenAI error body
/// `{"error":{"message","type","param","code"}}` and the error's headers.
pub fn error_response(e: &ProxyError) -> Response<ProxyBody> {
    let mut rsp = json_response(e.to_json());
    *rsp.status_mut() = e.status();
    e.write_headers(rsp.headers_mut());
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
