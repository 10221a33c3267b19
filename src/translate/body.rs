//! The async edge of the streaming core.
//!
//! [`UpstreamStream`] polls the upstream body directly and feeds each chunk through the
//! pure [`Pipeline`]. [`TranslateBody`] is the `hyper::body::Body` the client reads: no
//! spawned task and no channel, so backpressure flows end to end and dropping the body
//! (client gone) drops the upstream response, which closes the upstream connection.
//!
//! An idle timer is re-armed on every upstream chunk; when it fires the stream ends with a
//! timeout error (in-band once streaming). While the upstream is silent but not yet timed
//! out, the body emits `: keep-alive` comments so proxies and clients keep the connection.

use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use super::limits::FinishReason;
use super::pipeline::{Pipeline, Progress};
use super::state::{Emit, ResponseRef, Usage};
use crate::error::{ProxyError, UpstreamClass, UpstreamError};
use crate::openai::encoder::ChunkEncoder;

/// Outcome of one poll of the upstream.
#[derive(Debug)]
pub enum Step {
    /// A chunk was consumed (the sink may or may not have received output).
    Progress,
    Done(FinishReason),
    Failed(UpstreamError),
}

pub struct UpstreamStream<B> {
    body: B,
    pipeline: Pipeline,
    idle: Pin<Box<Sleep>>,
    idle_timeout: Duration,
    finished: bool,
}

impl<B> UpstreamStream<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    pub fn new(body: B, pipeline: Pipeline, idle_timeout: Duration) -> Self {
        Self {
            body,
            pipeline,
            idle: Box::pin(tokio::time::sleep(idle_timeout)),
            idle_timeout,
            finished: false,
        }
    }

    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    pub fn pipeline_mut(&mut self) -> &mut Pipeline {
        &mut self.pipeline
    }

    pub fn usage(&self) -> Usage {
        self.pipeline.usage()
    }

    /// Advance by at most one upstream chunk. After `Done`/`Failed`, stays `Done`.
    pub fn poll_step(&mut self, cx: &mut Context<'_>, out: &mut impl Emit) -> Poll<Step> {
        if self.finished {
            return Poll::Ready(Step::Done(FinishReason::Stop));
        }
        let step = loop {
            match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else {
                        continue; // trailers carry nothing for us
                    };
                    self.idle.as_mut().reset(Instant::now() + self.idle_timeout);
                    break match self.pipeline.feed(data, out) {
                        Ok(Progress::Continue) => Step::Progress,
                        Ok(Progress::Done(r)) => Step::Done(r),
                        Err(e) => Step::Failed(e),
                    };
                }
                Poll::Ready(Some(Err(e))) => {
                    break Step::Failed(UpstreamError::new(
                        UpstreamClass::Connect,
                        format!("upstream connection broke mid-stream: {e}"),
                    ))
                }
                Poll::Ready(None) => {
                    break match self.pipeline.end_of_input(out) {
                        Ok(r) => Step::Done(r),
                        Err(e) => Step::Failed(e),
                    }
                }
                Poll::Pending => {
                    ready!(self.idle.as_mut().poll(cx));
                    break Step::Failed(UpstreamError::new(
                        UpstreamClass::Timeout,
                        format!(
                            "no upstream event for {} s",
                            self.idle_timeout.as_secs_f32()
                        ),
                    ));
                }
            }
        };
        if !matches!(step, Step::Progress) {
            self.finished = true;
        }
        Poll::Ready(step)
    }
}

/// How a stream ended, for the owner's bookkeeping (metrics, logs, conversations).
#[derive(Debug)]
pub enum StreamEnd<'a> {
    Completed {
        reason: FinishReason,
        usage: Usage,
        /// The upstream response that was streamed (for continuing the chat).
        response: ResponseRef,
        /// The conversation key including this reply, if it ended naturally.
        reply_key: Option<String>,
    },
    Failed(&'a ProxyError),
}

/// Work that must finish before the client sees the end of the stream (e.g. remembering
/// the conversation, so a client that immediately sends the next turn finds it).
pub type Settle = Pin<Box<dyn Future<Output = ()> + Send>>;
type EndHook = Box<dyn FnOnce(StreamEnd<'_>) -> Option<Settle> + Send>;
type AbortSignal = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The streaming response body: OpenAI SSE chunks translated on the fly.
pub struct TranslateBody<B> {
    stream: UpstreamStream<B>,
    encoder: ChunkEncoder,
    keep_alive: Option<(Pin<Box<Sleep>>, Duration)>,
    /// Resolves when the server gives up on open streams (end of the shutdown grace).
    abort: Option<AbortSignal>,
    on_end: Option<EndHook>,
    /// Completed, waiting for `settling` before writing the final chunks and `[DONE]`.
    pending_finish: Option<(FinishReason, Usage)>,
    settling: Option<Settle>,
    done: bool,
}

impl<B> TranslateBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    pub fn new(
        stream: UpstreamStream<B>,
        encoder: ChunkEncoder,
        keep_alive: Option<Duration>,
    ) -> Self {
        Self {
            stream,
            encoder,
            keep_alive: keep_alive.map(|d| (Box::pin(tokio::time::sleep(d)), d)),
            abort: None,
            on_end: None,
            pending_finish: None,
            settling: None,
            done: false,
        }
    }

    /// End the stream with an in-band error when `signal` resolves.
    pub fn abort_on(mut self, signal: impl Future<Output = ()> + Send + 'static) -> Self {
        self.abort = Some(Box::pin(signal));
        self
    }

    /// Called once when the stream completes or fails (not when the client drops it). A
    /// returned future is awaited before the final chunks and `[DONE]` are sent.
    pub fn on_end(
        mut self,
        hook: impl FnOnce(StreamEnd<'_>) -> Option<Settle> + Send + 'static,
    ) -> Self {
        self.on_end = Some(Box::new(hook));
        self
    }

    /// Wait for the first meaningful upstream event, so that an upstream error that arrives
    /// before any content becomes a proper HTTP status (and can still be retried).
    pub async fn prime(&mut self) -> Result<(), ProxyError> {
        poll_fn(|cx| loop {
            if self.stream.pipeline().emitted_anything() {
                return Poll::Ready(Ok(()));
            }
            match ready!(self.stream.poll_step(cx, &mut self.encoder)) {
                Step::Progress => continue,
                Step::Done(r) => {
                    self.finish(r);
                    return Poll::Ready(Ok(()));
                }
                Step::Failed(e) => return Poll::Ready(Err(e.into())),
            }
        })
        .await
    }

    fn finish(&mut self, reason: FinishReason) {
        let usage = self.stream.usage();
        self.pending_finish = Some((reason, usage));
        if let Some(hook) = self.on_end.take() {
            let response = self.stream.pipeline().response().clone();
            let reply_key = self.stream.pipeline_mut().take_reply_key();
            self.settling = hook(StreamEnd::Completed {
                reason,
                usage,
                response,
                reply_key,
            });
        }
        if self.settling.is_none() {
            self.write_finish();
        }
    }

    fn write_finish(&mut self) {
        if let Some((reason, usage)) = self.pending_finish.take() {
            self.encoder.finish(reason, usage);
        }
        self.done = true;
    }

    fn fail(&mut self, e: ProxyError) {
        self.encoder.error(&e);
        self.done = true;
        if let Some(hook) = self.on_end.take() {
            let _ = hook(StreamEnd::Failed(&e));
        }
    }

    fn poll_keep_alive(&mut self, cx: &mut Context<'_>) -> bool {
        let Some((sleep, every)) = &mut self.keep_alive else {
            return false;
        };
        if sleep.as_mut().poll(cx).is_ready() {
            let next = Instant::now() + *every;
            sleep.as_mut().reset(next);
            self.encoder.keep_alive();
            return true;
        }
        false
    }

    fn rearm_keep_alive(&mut self) {
        if let Some((sleep, every)) = &mut self.keep_alive {
            let next = Instant::now() + *every;
            sleep.as_mut().reset(next);
        }
    }
}

impl<B> Body for TranslateBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        loop {
            if let Some(bytes) = this.encoder.take() {
                this.rearm_keep_alive();
                return Poll::Ready(Some(Ok(Frame::data(bytes))));
            }
            if let Some(settling) = &mut this.settling {
                ready!(settling.as_mut().poll(cx));
                this.settling = None;
                this.write_finish();
                continue;
            }
            if this.done {
                return Poll::Ready(None);
            }
            if let Some(abort) = &mut this.abort {
                if abort.as_mut().poll(cx).is_ready() {
                    this.abort = None;
                    this.fail(ProxyError::ShuttingDown);
                    continue;
                }
            }
            let step = match this.stream.poll_step(cx, &mut this.encoder) {
                Poll::Ready(step) => step,
                Poll::Pending => {
                    if this.poll_keep_alive(cx) {
                        continue;
                    }
                    return Poll::Pending;
                }
            };
            match step {
                Step::Progress => {}
                Step::Done(r) => this.finish(r),
                Step::Failed(e) => this.fail(e.into()),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && !self.encoder.has_output()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
