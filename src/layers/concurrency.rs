//! `MAX_CONCURRENT_STREAMS`: a semaphore permit per chat completion, taken without waiting
//! (past the limit: 503 at once, never a queue) and moved into the response body, so it is
//! released when the stream ends or the client goes — not when the headers are sent, which
//! is where `tower::limit::ConcurrencyLimit` would release it. Shutdown waits on the same
//! permits: the server is idle when every one is back ([`CompletionSlots::idle`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::{Request, Response};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::body::{Hold, ProxyBody};
use crate::error::ProxyError;
use crate::metrics::Metrics;

/// One slot per chat completion in flight, up to `MAX_CONCURRENT_STREAMS`.
#[derive(Debug)]
pub struct CompletionSlots {
    permits: Arc<Semaphore>,
    capacity: u32,
}

/// "Unlimited": more completions than any process can hold open.
const UNLIMITED: u32 = 1 << 28;

impl CompletionSlots {
    /// `max == 0` means unlimited.
    pub fn new(max: usize) -> Self {
        let capacity = match max {
            0 => UNLIMITED,
            n => u32::try_from(n).unwrap_or(UNLIMITED).min(UNLIMITED),
        };
        Self {
            permits: Arc::new(Semaphore::new(capacity as usize)),
            capacity,
        }
    }

    fn try_take(&self) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().try_acquire_owned().ok()
    }

    /// Resolves once no completion is in flight (every permit is back).
    pub async fn idle(&self) {
        let _all = self.permits.acquire_many(self.capacity).await;
    }
}

#[derive(Debug, Clone)]
pub(crate) struct ConcurrencyLayer {
    slots: Arc<CompletionSlots>,
    metrics: Arc<Metrics>,
}

impl ConcurrencyLayer {
    pub(crate) fn new(slots: Arc<CompletionSlots>, metrics: Arc<Metrics>) -> Self {
        Self { slots, metrics }
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
pub(crate) struct Concurrency<S> {
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
        let Some(permit) = self.layer.slots.try_take() else {
            self.layer.metrics.load_shed.inc();
            return ResponseFuture::Shed;
        };
        ResponseFuture::Inner(self.inner.call(req), Some(permit))
    }
}

pub(crate) enum ResponseFuture<F> {
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
            .layer(ConcurrencyLayer::new(
                Arc::new(CompletionSlots::new(1)),
                Metrics::new(),
            ))
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

    #[tokio::test]
    async fn idle_waits_for_every_body() {
        let slots = Arc::new(CompletionSlots::new(0));
        let svc = ServiceBuilder::new()
            .layer(ConcurrencyLayer::new(slots.clone(), Metrics::new()))
            .service(service_fn(|_r: Request<()>| {
                Box::pin(async { Ok::<_, ProxyError>(Response::new(ProxyBody::full("x"))) })
            }));
        let open = svc.clone().oneshot(Request::new(())).await.unwrap();
        let idle = slots.idle();
        tokio::pin!(idle);
        assert!(futures::poll!(idle.as_mut()).is_pending(), "a body is open");
        drop(open);
        idle.await;
    }
}
