//! The live feed (`GET /admin/requests/stream`): a server-sent event stream of the entries
//! recorded after the subscription, through a filter. A body that polls the log's broadcast
//! receiver itself — no spawned task, so nothing outlives the connection: a client that
//! leaves drops the body, and with it the receiver.
//!
//! ```text
//! event: hello            data: {"capacity":N}           first
//! event: request          data: {entry}                  one per new entry that matches
//! : skipped N entries     (the subscriber fell behind by more than the channel holds)
//! : keep-alive            every `keepalive` without an entry
//! ```
//!
//! It ends — the body's clean end — when the instance begins to drain (`drain`), so a feed
//! never holds a shutdown, or if the log is dropped.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use hyper::body::{Body, Frame};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::broadcast::Receiver;
use tokio::time::Sleep;

use super::query::Filter;
use super::Entry;
use crate::common::BoxFuture;

type Next = BoxFuture<'static, (Result<Arc<Entry>, RecvError>, Receiver<Arc<Entry>>)>;

/// The receiver's next entry, and the receiver back (`recv` borrows it: the future owns it
/// meanwhile). One allocation per entry delivered, never per request served.
fn next(mut rx: Receiver<Arc<Entry>>) -> Next {
    Box::pin(async move {
        let got = rx.recv().await;
        (got, rx)
    })
}

/// One subscriber's stream.
pub(crate) struct Feed {
    /// The `hello` event, until sent.
    hello: Option<Bytes>,
    /// `None` once the feed ended.
    next: Option<Next>,
    filter: Filter,
    keepalive: Pin<Box<Sleep>>,
    every: Duration,
    drain: BoxFuture<'static, ()>,
}

impl Feed {
    /// A feed of what `rx` receives from now on, through `filter`, ended by `drain`.
    pub(crate) fn new(
        rx: Receiver<Arc<Entry>>,
        filter: Filter,
        capacity: usize,
        keepalive: Duration,
        drain: impl Future<Output = ()> + Send + 'static,
    ) -> Self {
        let hello = format!("event: hello\ndata: {{\"capacity\":{capacity}}}\n\n");
        Feed {
            hello: Some(Bytes::from(hello)),
            next: Some(next(rx)),
            filter,
            keepalive: Box::pin(tokio::time::sleep(keepalive)),
            every: keepalive,
            drain: Box::pin(drain),
        }
    }

    fn frame(&mut self, bytes: Bytes) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let next = tokio::time::Instant::now() + self.every;
        self.keepalive.as_mut().reset(next);
        Poll::Ready(Some(Ok(Frame::data(bytes))))
    }
}

/// `event: request` with the entry as its data (one line: JSON escapes newlines).
fn event(entry: &Entry) -> Bytes {
    let mut buf = BytesMut::with_capacity(512);
    buf.put_slice(b"event: request\ndata: ");
    // Strings and numbers only: serialising cannot fail.
    let _ = serde_json::to_writer((&mut buf).writer(), entry);
    buf.put_slice(b"\n\n");
    buf.freeze()
}

impl Body for Feed {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if let Some(hello) = this.hello.take() {
            return this.frame(hello);
        }
        if this.next.is_none() || this.drain.as_mut().poll(cx).is_ready() {
            this.next = None;
            return Poll::Ready(None);
        }
        while let Some(next) = &mut this.next {
            let Poll::Ready((got, rx)) = next.as_mut().poll(cx) else {
                break;
            };
            this.next = Some(self::next(rx));
            match got {
                Ok(entry) if this.filter.matches(&entry) => return this.frame(event(&entry)),
                Ok(_) => {}
                Err(RecvError::Lagged(n)) => {
                    let note = format!(": skipped {n} entries (this feed fell behind)\n\n");
                    return this.frame(Bytes::from(note));
                }
                Err(RecvError::Closed) => {
                    this.next = None;
                    return Poll::Ready(None);
                }
            }
        }
        if this.keepalive.as_mut().poll(cx).is_ready() {
            return this.frame(Bytes::from_static(b": keep-alive\n\n"));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.next.is_none() && self.hello.is_none()
    }
}
