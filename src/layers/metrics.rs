//! HTTP metrics: `http_requests_total{route,method,status}` and
//! `http_request_duration_seconds{route}`, recorded when the response body ends (or is
//! dropped), so a long stream counts its whole duration and a cancelled one still counts.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::{Method, Request, Response};
use tokio::time::Instant;

use crate::body::{BodyObserver, ProxyBody};
use crate::metrics::Metrics;
use crate::routes::Route;

#[derive(Debug, Clone)]
pub(crate) struct MetricsLayer {
    metrics: Arc<Metrics>,
}

impl MetricsLayer {
    pub(crate) fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> tower::Layer<S> for MetricsLayer {
    type Service = RecordMetrics<S>;
    fn layer(&self, inner: S) -> RecordMetrics<S> {
        RecordMetrics {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct RecordMetrics<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B> tower::Service<Request<B>> for RecordMetrics<S>
where
    S: tower::Service<Request<B>, Response = Response<ProxyBody>>,
    S::Future: Unpin,
{
    type Response = Response<ProxyBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let record = Record {
            metrics: self.metrics.clone(),
            route: Route::of(&req).label,
            method: req.method().clone(),
            status: 0,
            start: Instant::now(),
        };
        ResponseFuture {
            inner: self.inner.call(req),
            record: Some(record),
        }
    }
}

pub(crate) struct ResponseFuture<F> {
    inner: F,
    record: Option<Record>,
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ProxyBody>, E>> + Unpin,
{
    type Output = Result<Response<ProxyBody>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let rsp = std::task::ready!(Pin::new(&mut self.inner).poll(cx))?;
        let Some(mut record) = self.record.take() else {
            return Poll::Ready(Ok(rsp));
        };
        record.status = rsp.status().as_u16();
        let (parts, body) = rsp.into_parts();
        Poll::Ready(Ok(Response::from_parts(parts, body.observe(record))))
    }
}

struct Record {
    metrics: Arc<Metrics>,
    route: &'static str,
    method: Method,
    status: u16,
    start: Instant,
}

impl BodyObserver for Record {
    fn on_end(&mut self, _completed: bool) {
        let status = self.status.to_string();
        self.metrics
            .http_requests
            .with_label_values(&[self.route, self.method.as_str(), &status])
            .inc();
        self.metrics
            .http_duration
            .with_label_values(&[self.route])
            .observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tower::{service_fn, ServiceBuilder, ServiceExt};

    #[tokio::test]
    async fn counted_when_the_body_ends_or_is_dropped() {
        let metrics = Metrics::new();
        let svc = ServiceBuilder::new()
            .layer(MetricsLayer::new(metrics.clone()))
            .service(service_fn(|_r: Request<()>| {
                Box::pin(async {
                    Ok::<_, std::convert::Infallible>(Response::new(ProxyBody::full("x")))
                })
            }));
        let count = || {
            metrics
                .http_requests
                .with_label_values(&["/v1/models", "GET", "200"])
                .get()
        };
        let req = || Request::get("/v1/models").body(()).unwrap();
        let rsp = svc.clone().oneshot(req()).await.unwrap();
        assert_eq!(count(), 0, "not before the body ends");
        rsp.into_body().collect().await.unwrap();
        assert_eq!(count(), 1);
        drop(svc.clone().oneshot(req()).await.unwrap());
        assert_eq!(count(), 2, "a dropped body counts too");
    }
}
