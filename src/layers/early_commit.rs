//! Streaming clients see the wait: a streamed request whose answer has not begun after
//! `STREAM_COMMIT_DELAY` gets its `200` and SSE headers then, a comment at once and one every
//! `SSE_KEEPALIVE_INTERVAL` while it waits (`: waiting for the upstream`), then the answer's
//! own stream. A long prefill, a chat being made, a queue for an account: the client and
//! every proxy in between see bytes instead of a silent connection.
//!
//! The trade-off, documented in the README: a failure after the commit cannot be an HTTP
//! status any more — it is the API's in-band error event (written by the API's own encoder,
//! so each client reads the shape it knows), with the wait in its message instead of a
//! `Retry-After` header. Failures that come before the delay (most refusals come within a
//! second) keep their honest status. Non-streamed requests and a delay of 0 pass through.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame};
use hyper::{Request, Response};
use tokio::time::Sleep;

use crate::body::{sse_response, ProxyBody};
use crate::common::BoxFuture;
use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::request_log::Recorder;
use crate::translate::body::Render;
use crate::turn::{AnswerHead, ApiRequest, ClientApi};

/// The comment a committed stream carries while it waits.
const WAITING: &[u8] = b": waiting for the upstream\n\n";

pub(crate) struct EarlyCommitLayer<A> {
    delay: Duration,
    keepalive: Duration,
    metrics: Arc<Metrics>,
    api: PhantomData<fn() -> A>,
}

impl<A> EarlyCommitLayer<A> {
    pub(crate) fn new(delay: Duration, keepalive: Duration, metrics: Arc<Metrics>) -> Self {
        Self {
            delay,
            keepalive,
            metrics,
            api: PhantomData,
        }
    }
}

impl<A> Clone for EarlyCommitLayer<A> {
    fn clone(&self) -> Self {
        Self::new(self.delay, self.keepalive, self.metrics.clone())
    }
}

impl<S, A> tower::Layer<S> for EarlyCommitLayer<A> {
    type Service = EarlyCommit<S, A>;
    fn layer(&self, inner: S) -> EarlyCommit<S, A> {
        EarlyCommit {
            inner,
            layer: self.clone(),
        }
    }
}

pub(crate) struct EarlyCommit<S, A> {
    inner: S,
    layer: EarlyCommitLayer<A>,
}

impl<S: Clone, A> Clone for EarlyCommit<S, A> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

type Req<A> = Request<Arc<ApiRequest<<A as ClientApi>::Options>>>;

impl<S, A> tower::Service<Req<A>> for EarlyCommit<S, A>
where
    A: ClientApi,
    S: tower::Service<Req<A>, Response = Response<ProxyBody>, Error = ProxyError>,
    S::Future: Send + 'static,
{
    type Response = Response<ProxyBody>;
    type Error = ProxyError;
    // Boxed: the race between the answer and the delay is one async step (the turn below
    // is boxed already).
    type Future = BoxFuture<'static, Result<Response<ProxyBody>, ProxyError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req<A>) -> Self::Future {
        let api = req.body().clone();
        let recorder = Recorder::of(req.extensions());
        let fut = self.inner.call(req);
        if !api.turn.stream || self.layer.delay.is_zero() {
            return Box::pin(fut);
        }
        let layer = self.layer.clone();
        Box::pin(async move {
            let mut answer: BoxFuture<'static, _> = Box::pin(fut);
            tokio::select! {
                result = &mut answer => return result,
                () = tokio::time::sleep(layer.delay) => {}
            }
            let body = Waiting::<A> {
                state: State::Waiting(answer),
                sent_comment: false,
                keepalive: Box::pin(tokio::time::sleep(layer.keepalive)),
                every: layer.keepalive,
                api,
                metrics: layer.metrics,
                recorder,
            };
            Ok(sse_response(ProxyBody::Stream(Box::pin(body))))
        })
    }
}

enum State {
    /// The answer has not begun: comments go out.
    Waiting(BoxFuture<'static, Result<Response<ProxyBody>, ProxyError>>),
    /// The answer's own stream.
    Answer(ProxyBody),
    Done,
}

/// A committed stream: comments while the answer is awaited, then the answer's body, or
/// the API's in-band error.
struct Waiting<A: ClientApi> {
    state: State,
    sent_comment: bool,
    keepalive: Pin<Box<Sleep>>,
    every: Duration,
    api: Arc<ApiRequest<A::Options>>,
    metrics: Arc<Metrics>,
    /// The request log's record: a failure after the commit is the request's error.
    recorder: Recorder,
}

impl<A: ClientApi> Waiting<A> {
    /// The API's in-band error for a failure after the commit (counted and logged as the
    /// error map would have).
    fn error_frame(&self, e: &ProxyError) -> Bytes {
        e.report(&self.metrics);
        self.recorder.failed(e);
        let id = format!("{}{}", A::ID_PREFIX, crate::common::random_uuid().simple());
        let head = AnswerHead {
            id: &id,
            created: crate::common::epoch_secs(),
            turn: &self.api.turn,
        };
        let mut encoder = A::encoder(&head, &self.api.options);
        encoder.error(e);
        encoder.take().unwrap_or_default()
    }
}

impl<A: ClientApi> Body for Waiting<A> {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                State::Done => return Poll::Ready(None),
                State::Answer(body) => return Pin::new(body).poll_frame(cx),
                State::Waiting(answer) => match answer.as_mut().poll(cx) {
                    Poll::Ready(Ok(rsp)) => this.state = State::Answer(rsp.into_body()),
                    Poll::Ready(Err(e)) => {
                        let frame = this.error_frame(&e);
                        this.state = State::Done;
                        return Poll::Ready(Some(Ok(Frame::data(frame))));
                    }
                    Poll::Pending => {
                        // A comment at once (the client sees bytes with the headers), then
                        // one per interval.
                        if !this.sent_comment || this.keepalive.as_mut().poll(cx).is_ready() {
                            this.sent_comment = true;
                            let next = tokio::time::Instant::now() + this.every;
                            this.keepalive.as_mut().reset(next);
                            return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(WAITING)))));
                        }
                        return Poll::Pending;
                    }
                },
            }
        }
    }
}
