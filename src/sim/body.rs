//! The simulated stream: a poll-driven body that plays a [`Step`] script (no task per
//! stream, so benchmarks can hold thousands open). Dropping it before the end counts an
//! aborted stream and keeps the chat locked longer, as the real upstream does.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame};
use tokio::time::{Instant, Sleep};

use super::script::Step;
use super::state::{lock, SimState};

pub struct ScriptBody {
    steps: VecDeque<Step>,
    sleep: Option<Pin<Box<Sleep>>>,
    guard: Option<StreamGuard>,
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
            match self.steps.pop_front() {
                None => {
                    self.complete();
                    return Poll::Ready(None);
                }
                Some(Step::Write(b)) => return Poll::Ready(Some(Ok(Frame::data(b)))),
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
