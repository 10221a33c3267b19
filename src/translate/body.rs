//! The async edge of the streaming core, and the one place where a stream's end is decided.
//!
//! [`UpstreamStream`] polls the upstream body directly and feeds each chunk through the
//! pure [`Pipeline`]; an idle timer, re-armed on every chunk, turns silence into a timeout.
//! [`TranslateBody`] is the `hyper::body::Body` the client reads. No spawned task and no
//! channel: backpressure flows end to end, and dropping the body (client gone) drops the
//! upstream response, which closes the upstream connection.
//!
//! The body's life is a state machine (`Phase`):
//!
//! ```text
//!   Streaming ──upstream answer complete──▶ Ended(reason) ──owner told──▶ Settling ──▶ Done
//!       │                                                                    (then the finish
//!       └──upstream failure / shutdown──▶ owner told, error event written ──▶ Done   chunks, [DONE])
//! ```
//!
//! How it ended is reported exactly once, as an [`Outcome`], to the body's owner
//! ([`StreamEnd`]): `Completed`, `Failed` (also written in-band: an error event, then
//! `[DONE]`), or `Cancelled` when the client drops the body first. A completed stream's
//! owner may return work ([`Settle`]) that finishes before the final chunks and `[DONE]` go
//! out — remembering the conversation, so a client that sends the next turn at once finds
//! it. While the upstream is silent, `: keep-alive` comments keep proxies and clients from
//! timing out.
//!
//! The body writes through a [`Render`]: the client API's encoder (OpenAI chunks today).

use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use super::pipeline::{Pipeline, Progress};
use super::stage::Stage;
use super::state::{Emit, FinishReason, Usage};
use crate::common::BoxFuture;
use crate::error::{ProxyError, UpstreamClass, UpstreamError};

/// Outcome of one poll of the upstream.
#[derive(Debug)]
pub enum Step {
    /// A chunk was consumed (the sink may or may not have received output).
    Progress,
    Done(FinishReason),
    Failed(UpstreamError),
}

pub struct UpstreamStream<B, S> {
    /// Dropped as soon as the answer is decided: once a stage ends it early (after a tool
    /// call, at a stop sequence), the upstream connection closes at once rather than when
    /// the client has read the end.
    body: Option<B>,
    pipeline: Pipeline<S>,
    idle: Pin<Box<Sleep>>,
    idle_timeout: Duration,
    finished: bool,
    /// When the upstream's first meaningful event (content or reasoning) was read, whatever
    /// the stages did with it: the upstream's own time to first token.
    first_output: Option<Instant>,
}

impl<B, S> UpstreamStream<B, S>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
    S: Stage,
{
    pub fn new(body: B, pipeline: Pipeline<S>, idle_timeout: Duration) -> Self {
        Self {
            body: Some(body),
            pipeline,
            idle: Box::pin(tokio::time::sleep(idle_timeout)),
            idle_timeout,
            finished: false,
            first_output: None,
        }
    }

    /// When the upstream's first content or reasoning was read, if it was.
    pub fn first_output(&self) -> Option<Instant> {
        self.first_output
    }

    pub fn pipeline(&self) -> &Pipeline<S> {
        &self.pipeline
    }

    pub fn pipeline_mut(&mut self) -> &mut Pipeline<S> {
        &mut self.pipeline
    }

    pub fn usage(&self) -> Usage {
        self.pipeline.usage()
    }

    /// Advance by at most one upstream chunk. After `Done`/`Failed`, stays `Done`.
    pub fn poll_step(&mut self, cx: &mut Context<'_>, out: &mut impl Emit) -> Poll<Step> {
        let (false, Some(body)) = (self.finished, self.body.as_mut()) else {
            return Poll::Ready(Step::Done(FinishReason::Complete));
        };
        let step = loop {
            match Pin::new(&mut *body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else {
                        continue; // trailers carry nothing for us
                    };
                    let now = Instant::now();
                    let events = self.pipeline.events();
                    let fed = self.pipeline.feed(data, out);
                    // The idle timeout is per event: bytes that complete none (a trickle)
                    // do not restart it, so the first event, and each after it, comes
                    // within the timeout or the stream fails.
                    if self.pipeline.events() > events {
                        self.idle.as_mut().reset(now + self.idle_timeout);
                    }
                    if self.first_output.is_none() && self.pipeline.emitted_anything() {
                        self.first_output = Some(now);
                    }
                    break match fed {
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
            self.body = None;
        }
        Poll::Ready(step)
    }
}

/// How a stream ended: the one value the core, the conversation store, the chat lock and
/// the metrics learn it from.
#[derive(Debug)]
pub enum Outcome<'a> {
    /// The upstream answer ended (naturally, or cut short by a stage).
    Completed { reason: FinishReason, usage: Usage },
    /// An upstream failure, a timeout or the shutdown ended it; the client gets it in-band.
    Failed(&'a ProxyError),
    /// The client went away first.
    Cancelled,
}

/// Work that must finish before the client sees the end of a completed stream.
pub type Settle = BoxFuture<'static, ()>;

/// Whoever answers for a stream; told once how it ended.
pub trait StreamEnd<S>: Send + 'static {
    /// `pipeline` shows what the stream produced (the upstream response, the stages'
    /// state). For `Completed`, the returned work runs before the final chunks.
    fn ended(self, outcome: Outcome<'_>, pipeline: &mut Pipeline<S>) -> Option<Settle>;
}

/// How a client API writes a stream: the translated deltas (`Emit`), then its end.
pub trait Render: Emit {
    /// The final chunks of a completed answer, then the stream terminator.
    fn finish(&mut self, reason: FinishReason, usage: Usage);
    /// An in-band error event, then the terminator.
    fn error(&mut self, e: &ProxyError);
    /// A comment that keeps an idle connection open.
    fn keep_alive(&mut self);
    /// Bytes written since the last call, as one body frame.
    fn take(&mut self) -> Option<Bytes>;
    /// How many bytes `take` would return.
    fn buffered(&self) -> usize;
}

type AbortSignal = BoxFuture<'static, ()>;

/// Coalesced output is sent once it reaches this size, even if more input is at hand: a
/// frame's size stays bounded whatever the upstream delivers at once.
const MAX_FRAME_BYTES: usize = 64 * 1024;

/// Where the body is in its life.
enum Phase {
    /// Translating upstream events.
    Streaming,
    /// The upstream answer is complete; the owner is told on the next poll.
    Ended(FinishReason),
    /// The owner's work runs; then the final chunks are written.
    Settling {
        work: Option<Settle>,
        reason: FinishReason,
        usage: Usage,
    },
    /// The end is written; the body ends once the renderer is drained.
    Done,
}

/// The streaming response body: client chunks translated on the fly.
pub struct TranslateBody<B, S, R, O>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
    S: Stage,
    R: Render,
    O: StreamEnd<S>,
{
    stream: UpstreamStream<B, S>,
    render: R,
    /// What the encoder wrote before any upstream event (Anthropic's `message_start`,
    /// the Responses API's `response.created`): the head of the stream, not a sign that
    /// the answer began.
    head: usize,
    phase: Phase,
    /// Told once; `None` before [`TranslateBody::owned_by`] and after it was told.
    owner: Option<O>,
    keep_alive: Option<(Pin<Box<Sleep>>, Duration)>,
    /// Resolves when the server gives up on open streams (end of the shutdown grace).
    abort: Option<AbortSignal>,
}

impl<B, S, R, O> TranslateBody<B, S, R, O>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
    S: Stage,
    R: Render,
    O: StreamEnd<S>,
{
    pub fn new(stream: UpstreamStream<B, S>, render: R, keep_alive: Option<Duration>) -> Self {
        Self {
            stream,
            head: render.buffered(),
            render,
            phase: Phase::Streaming,
            owner: None,
            keep_alive: keep_alive.map(|d| (Box::pin(tokio::time::sleep(d)), d)),
            abort: None,
        }
    }

    /// End the stream with an in-band error when `signal` resolves.
    pub fn abort_on(mut self, signal: impl Future<Output = ()> + Send + 'static) -> Self {
        self.abort = Some(Box::pin(signal));
        self
    }

    /// What the stream has produced so far.
    pub fn pipeline(&self) -> &Pipeline<S> {
        self.stream.pipeline()
    }

    /// When the upstream's first content or reasoning was read, if it was.
    pub fn first_output(&self) -> Option<Instant> {
        self.stream.first_output()
    }

    pub fn pipeline_mut(&mut self) -> &mut Pipeline<S> {
        self.stream.pipeline_mut()
    }

    /// Who is told how the stream ends. Attached once primed: a failure before the first
    /// byte is not a stream's end but the caller's error (an HTTP status, maybe a retry).
    pub fn owned_by(mut self, owner: O) -> Self {
        self.owner = Some(owner);
        self
    }

    /// Wait for the first meaningful upstream event, so that an upstream error that arrives
    /// before any content becomes a proper HTTP status (and can still be retried).
    pub async fn prime(&mut self) -> Result<(), ProxyError> {
        poll_fn(|cx| loop {
            // Primed once something is written for the client beyond the stream's head: a
            // stage may hold the translator's first output back (a tool call being read).
            if self.render.buffered() > self.head {
                return Poll::Ready(Ok(()));
            }
            match ready!(self.stream.poll_step(cx, &mut self.render)) {
                Step::Progress => continue,
                Step::Done(r) => {
                    self.phase = Phase::Ended(r);
                    return Poll::Ready(Ok(()));
                }
                Step::Failed(e) => {
                    self.phase = Phase::Done;
                    return Poll::Ready(Err(e.into()));
                }
            }
        })
        .await
    }

    /// The upstream answer is complete: tell the owner, start its work.
    fn complete(&mut self, reason: FinishReason) {
        let usage = self.stream.usage();
        let work = self.owner.take().and_then(|o| {
            o.ended(
                Outcome::Completed { reason, usage },
                self.stream.pipeline_mut(),
            )
        });
        self.phase = Phase::Settling {
            work,
            reason,
            usage,
        };
    }

    /// The stream failed: tell the owner, write the error in-band.
    fn fail(&mut self, e: ProxyError) {
        if let Some(o) = self.owner.take() {
            // Only completed streams settle.
            let _ = o.ended(Outcome::Failed(&e), self.stream.pipeline_mut());
        }
        self.render.error(&e);
        self.phase = Phase::Done;
    }

    /// While the upstream is silent: a keep-alive comment when one is due.
    fn poll_keep_alive(&mut self, cx: &mut Context<'_>) -> bool {
        let Some((sleep, every)) = &mut self.keep_alive else {
            return false;
        };
        if sleep.as_mut().poll(cx).is_ready() {
            let next = Instant::now() + *every;
            sleep.as_mut().reset(next);
            self.render.keep_alive();
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

    /// What was written since the last frame, as one frame; `Pending` when nothing was
    /// (only called where the step that waits has registered the waker, or with output).
    fn flush(&mut self) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.render.take() {
            Some(bytes) => {
                self.rearm_keep_alive();
                Poll::Ready(Some(Ok(Frame::data(bytes))))
            }
            None => Poll::Pending,
        }
    }
}

impl<B, S, R, O> Body for TranslateBody<B, S, R, O>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
    S: Stage + Unpin,
    R: Render + Unpin,
    O: StreamEnd<S> + Unpin,
{
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        // Output is coalesced: everything translated from the upstream bytes already at hand
        // leaves as one frame, so one write. A frame goes out whenever the next step would
        // wait (the upstream is pending, the owner's work is not done) or the batch is big,
        // so no byte ever waits for more input.
        let this = self.get_mut();
        loop {
            if this.render.buffered() >= MAX_FRAME_BYTES {
                return this.flush();
            }
            match &mut this.phase {
                Phase::Done if this.render.buffered() > 0 => return this.flush(),
                Phase::Done => return Poll::Ready(None),
                Phase::Ended(reason) => {
                    let reason = *reason;
                    this.complete(reason);
                    continue;
                }
                Phase::Settling {
                    work,
                    reason,
                    usage,
                } => {
                    if let Some(w) = work {
                        if w.as_mut().poll(cx).is_pending() {
                            return this.flush();
                        }
                    }
                    let (reason, usage) = (*reason, *usage);
                    this.render.finish(reason, usage);
                    this.phase = Phase::Done;
                    continue;
                }
                Phase::Streaming => {}
            }
            if let Some(abort) = &mut this.abort {
                if abort.as_mut().poll(cx).is_ready() {
                    this.abort = None;
                    this.fail(ProxyError::ShuttingDown);
                    continue;
                }
            }
            match this.stream.poll_step(cx, &mut this.render) {
                // The upstream talks but nothing is for the client yet (a stage holds it
                // back, a tool call being read): keep the connection alive all the same.
                Poll::Ready(Step::Progress) => {
                    if this.render.buffered() == 0 {
                        this.poll_keep_alive(cx);
                    }
                }
                Poll::Ready(Step::Done(r)) => this.phase = Phase::Ended(r),
                Poll::Ready(Step::Failed(e)) => this.fail(e.into()),
                Poll::Pending => {
                    // A keep-alive only when nothing else is about to go out.
                    if this.render.buffered() == 0 && this.poll_keep_alive(cx) {
                        continue;
                    }
                    return this.flush();
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.phase, Phase::Done) && self.render.buffered() == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

impl<B, S, R, O> Drop for TranslateBody<B, S, R, O>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
    S: Stage,
    R: Render,
    O: StreamEnd<S>,
{
    /// Dropped with the owner still untold: the client went away first.
    fn drop(&mut self) {
        if let Some(o) = self.owner.take() {
            let _ = o.ended(Outcome::Cancelled, self.stream.pipeline_mut());
        }
    }
}

#[cfg(test)]
mod tests;
