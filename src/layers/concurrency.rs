//! `MAX_CONCURRENT_STREAMS`: a semaphore permit per chat completion, taken without waiting
//! (past the limit: 503 at once, never a queue) and moved into the response body, so it is
//! released when the stream ends or the client goes — not when the headers are sent, which
//! is where `tower::limit::ConcurrencyLimit` would release it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::{Request, Response};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::body::{Hold, ProxyBody};
use crate::error::ProxyError;
use crate::metrics::Metrics;

#[derive(Debug, Clone)]
pub struct ConcurrencyLayer {
    permits: Option<Arc<Semaphore>>,
    metrics: Arc<Metrics>,
}

impl ConcurrencyLayer {
    /// `max == 0` means unlimited.
    pub fn new(max: usize, metrics: Arc<Metrics>) -> Self {
        Self {
            permits: (max > 0).then(|| Arc::new(Semaphore::new(max))),
            metrics,
        }
    }
}

impl<S> tower::Layer<S> for ConcurrencyLayer {
    type Service = Concurrency<S>;
    fn layer(&self, inner: S) -> Concurrency<S> {
        Concurrency {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Concurrency<S> {
    inner: S,
    layer: ConcurrencyLayer,
}

impl<S, B> tower::Service<Request<B>> for Concurrency<S>
where
    S: tower::Service<Request<B>, Response = Response<ProxyBody>, Error = ProxyError>,
    S::Future: Unpin,
{
    type Response = Response<ProxyBody>;
    type Error = ProxyError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let permit = match &self.layer.permits {
            None => None,
            Some(sem) => match sem.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    self.layer.metrics.load_shed.inc();
                    return ResponseFuture::Shed;
                }
            },
        };
        ResponseFuture::Inner(self.inner.call(req), permit)
    }
}

pub enum ResponseFuture<F> {
    Inner(F, Option<OwnedSemaphorePermit>),
    Shed,
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ProxyBody>, ProxyError>> + Unpin,
{
    type Output = Result<Response<ProxyBody>, ProxyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            ResponseFuture::Shed => Poll::Ready(Err(ProxyError::Overloaded)),
            ResponseFuture::Inner(f, permit) => {
                let rsp = std::task::ready!(Pin::new(f).poll(cx))?;
                Poll::Ready(Ok(match permit.take() {
                    Some(p) => rsp.map(|b| b.observe(Hold(p))),
                    None => rsp,
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tower::{service_fn, ServiceBuilder, ServiceExt};

    #[tokio::test]
    async fn permit_lives_as_long_as_the_body() {
        let svc = ServiceBuilder::new()
            .layer(ConcurrencyLayer::new(1, Metrics::new()))
            .service(service_fn(|_r: Request<()>| {
                Box::pin(async { Ok::<_, ProxyError>(Response::new(ProxyBody::full("x"))) })
            }));
        let first = svc.clone().oneshot(Request::new(())).await.unwrap();
        // Headers are out, but the body is not finished: the slot is still taken.
        let second = svc.clone().oneshot(Request::new(())).await;
        assert_eq!(second.unwrap_err(), ProxyError::Overloaded);
        first.into_body().collect().await.unwrap();
        assert!(svc.clone().oneshot(Request::new(())).await.is_ok());
    }
}
