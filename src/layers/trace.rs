//! One `tracing` span per request: method, route template, client API, request id, and — recorded as
//! they become known — model, stream flag, upstream attempts, status and latency. Every
//! log line of the request carries the span's fields. A streamed response logs its end
//! (completed or cancelled, total duration) inside the same span.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::{Request, Response};
use tokio::time::Instant;
use tracing::field::Empty;
use tracing::{Instrument, Span};

use super::request_id::RequestId;
use crate::body::{BodyObserver, ProxyBody};
use crate::routes::Route;

#[derive(Debug, Clone, Default)]
pub(crate) struct TraceLayer;

impl<S> tower::Layer<S> for TraceLayer {
    type Service = Trace<S>;
    fn layer(&self, inner: S) -> Trace<S> {
        Trace { inner }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Trace<S> {
    inner: S,
}

impl<S, B> tower::Service<Request<B>> for Trace<S>
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
        let id = req
            .extensions()
            .get::<RequestId>()
            .map(|r| r.as_str().to_owned())
            .unwrap_or_default();
        let route = Route::of(&req);
        let span = tracing::info_span!(
            "request",
            method = %req.method(),
            route = route.label,
            api = Empty,
            request_id = %id,
            model = Empty,
            stream = Empty,
            attempts = Empty,
            status = Empty,
            latency_ms = Empty,
        );
        // The client API of the route (`chat`, `messages`, `responses`); none for an
        // operator's route.
        if route.auth {
            span.record("api", route.api.label());
        }
        let inner = span.in_scope(|| self.inner.call(req));
        ResponseFuture {
            inner: inner.instrument(span.clone()),
            span,
            start: Instant::now(),
        }
    }
}

pub(crate) struct ResponseFuture<F> {
    inner: tracing::instrument::Instrumented<F>,
    span: Span,
    start: Instant,
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ProxyBody>, E>> + Unpin,
{
    type Output = Result<Response<ProxyBody>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let rsp = std::task::ready!(Pin::new(&mut self.inner).poll(cx))?;
        let latency = self.start.elapsed();
        let status = rsp.status().as_u16();
        self.span.record("status", status);
        self.span.record("latency_ms", latency.as_millis() as u64);
        let _enter = self.span.enter();
        // Status and latency are span fields now: the events below do not repeat them.
        if rsp.body().is_stream() {
            tracing::info!("stream started");
            let (parts, body) = rsp.into_parts();
            let observer = StreamLog {
                span: self.span.clone(),
                start: self.start,
            };
            return Poll::Ready(Ok(Response::from_parts(parts, body.observe(observer))));
        }
        if rsp.extensions().get::<LogQuietly>().is_some() {
            tracing::debug!("request finished");
        } else {
            tracing::info!("request finished");
        }
        Poll::Ready(Ok(rsp))
    }
}

/// On a response: its request is logged at debug level (a refused key: guessing is
/// logged in aggregate, `layers::auth`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct LogQuietly;

struct StreamLog {
    span: Span,
    start: Instant,
}

impl BodyObserver for StreamLog {
    fn on_end(&mut self, completed: bool) {
        let _enter = self.span.enter();
        let duration_ms = self.start.elapsed().as_millis() as u64;
        if completed {
            tracing::info!(duration_ms, "stream finished");
        } else {
            tracing::info!(duration_ms, "stream cancelled by the client");
        }
    }
}
