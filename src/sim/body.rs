//! The simulated stream: a poll-driven body that plays a [`Step`] script (no task per
//! stream, so benchmarks can hold thousands open). Dropping it before the end counts an
//! aborted stream and keeps the chat locked longer, as the real upstream does. A stream of
//! an account that gets banned meanwhile ends at its next frame boundary with the in-stream
//! "account is disabled" error.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame};
use tokio::time::{Instant, Sleep};

use super::script::Step;
use super::state::{lock, SimState};
use super::wire;

pub struct ScriptBody {
    steps: VecDeque<Step>,
    sleep: Option<Pin<Box<Sleep>>>,
    guard: Option<StreamGuard>,
    /// Set when the account of this stream is banned (`penalties.rs`).
    banned: Option<Arc<AtomicBool>>,
    /// Whatever was written so far ends with a whole frame (an error frame may follow).
    at_boundary: bool,
}

/// Releases the chat lock when the stream ends or is dropped.
pub struct StreamGuard {
    pub state: Arc<SimState>,
    pub chat_id: String,
    pub linger: Duration,
    pub completed: bool,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.state.in_flight.fetch_sub(1, Ordering::Relaxed);
        let linger = if self.completed {
            self.linger
        } else {
            self.state.aborted_streams.fetch_add(1, Ordering::Relaxed);
            self.linger * 4
        };
        if let Some(chat) = lock(&self.state.chats).get_mut(&self.chat_id) {
            chat.in_flight = false;
            chat.busy_until = Some(Instant::now() + linger);
        }
    }
}

impl ScriptBody {
    pub fn new(steps: VecDeque<Step>, guard: Option<StreamGuard>) -> Self {
        Self {
            steps,
            sleep: None,
            guard,
            banned: None,
            at_boundary: true,
        }
    }

    /// End the stream with the in-stream "account is disabled" error, at the next frame
    /// boundary, once `banned` is set.
    pub fn ended_by(mut self, banned: Arc<AtomicBool>) -> Self {
        self.banned = Some(banned);
        self
    }

    /// The account was banned: the rest of the script is replaced by the error frame.
    fn check_ban(&mut self) {
        if self.at_boundary
            && self
                .banned
                .as_ref()
                .is_some_and(|b| b.load(Ordering::Relaxed))
        {
            self.banned = None;
            self.steps.clear();
            self.steps.push_back(Step::Write(Bytes::from(wire::event(
                wire::ACCOUNT_DISABLED_FRAME,
            ))));
        }
    }

    fn complete(&mut self) {
        if let Some(g) = &mut self.guard {
            g.completed = true;
        }
        self.guard = None;
    }
}

impl Body for ScriptBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        loop {
            if let Some(s) = &mut self.sleep {
                if s.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.sleep = None;
            }
            self.check_ban();
            match self.steps.pop_front() {
                None => {
                    self.complete();
                    return Poll::Ready(None);
                }
                Some(Step::Write(b)) => {
                    self.at_boundary = b.ends_with(b"\n\n");
                    return Poll::Ready(Some(Ok(Frame::data(b))));
                }
                Some(Step::Pause(d)) => self.sleep = Some(Box::pin(tokio::time::sleep(d))),
                Some(Step::Reset) => {
                    self.complete();
                    return Poll::Ready(Some(Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        "simulated reset",
                    ))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        // Only once the guard knows the script completed; otherwise hyper could skip the
        // final poll and the stream would count as aborted.
        self.guard.is_none() && self.steps.is_empty() && self.sleep.is_none()
    }
}
