//! The one response body type of the proxy: a complete buffer (JSON answers, errors), a
//! translated upstream stream, or either of those observed by a layer. An enum, as
//! tower-http's bodies are, so layers can wrap and inspect it without boxing each time. The
//! stream itself is boxed once, by the core that builds it (`translate::body::TranslateBody`
//! with the core's stages and owner): one indirect call per frame, and this module needs
//! to know neither — which keeps it below the core in the module graph.
//!
//! `Observed` is how limits and measurements that must cover the whole stream travel
//! inside the body: the concurrency permit, stream metrics, the end-of-stream log line.
//! Observers hear about the first data frame and about the end — completed, or dropped
//! early (client gone), which is reported from `Drop`.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame, SizeHint};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::Response;

/// A complete JSON response.
pub(crate) fn json_response(body: impl Into<Bytes>) -> Response<ProxyBody> {
    let mut rsp = Response::new(ProxyBody::full(body));
    rsp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    rsp
}

/// A server-sent event stream: its content type, no caching, no buffering in nginx.
pub(crate) fn sse_response(body: ProxyBody) -> Response<ProxyBody> {
    let mut rsp = Response::new(body);
    let h = rsp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(
        hyper::header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache"),
    );
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    rsp
}

/// Hooks on a response body's life. Dropping the observer releases what it holds.
pub trait BodyObserver: Send + 'static {
    /// The first data frame is about to be sent.
    fn on_first_data(&mut self) {}
    /// The body ended: `completed` is false when it was dropped before its end.
    fn on_end(&mut self, _completed: bool) {}
}

/// Holding a value until the body ends is an observer too (e.g. a semaphore permit).
pub(crate) struct Hold<T: Send + 'static>(pub T);

impl<T: Send + 'static> BodyObserver for Hold<T> {}

/// A translated stream, type-erased.
pub(crate) type StreamBody = Pin<Box<dyn Body<Data = Bytes, Error = Infallible> + Send>>;

pub enum ProxyBody {
    Full(Full<Bytes>),
    Stream(StreamBody),
    Observed(Box<Observed>),
}

pub struct Observed {
    inner: ProxyBody,
    observer: Box<dyn BodyObserver>,
    seen_data: bool,
    ended: bool,
}

impl Drop for Observed {
    fn drop(&mut self) {
        if !self.ended {
            self.ended = true;
            self.observer.on_end(false);
        }
    }
}

impl std::fmt::Debug for ProxyBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProxyBody::Full(_) => f.write_str("ProxyBody::Full"),
            ProxyBody::Stream(_) => f.write_str("ProxyBody::Stream"),
            ProxyBody::Observed(o) => write!(f, "ProxyBody::Observed({:?})", o.inner),
        }
    }
}

impl Default for ProxyBody {
    fn default() -> Self {
        ProxyBody::empty()
    }
}

impl ProxyBody {
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        ProxyBody::Full(Full::new(bytes.into()))
    }

    pub fn empty() -> Self {
        ProxyBody::Full(Full::new(Bytes::new()))
    }

    /// Wrap this body so `observer` follows it to its end.
    pub fn observe(self, observer: impl BodyObserver) -> Self {
        ProxyBody::Observed(Box::new(Observed {
            inner: self,
            observer: Box::new(observer),
            seen_data: false,
            ended: false,
        }))
    }

    /// Whether this is (or wraps) a translated stream.
    pub fn is_stream(&self) -> bool {
        match self {
            ProxyBody::Full(_) => false,
            ProxyBody::Stream(_) => true,
            ProxyBody::Observed(o) => o.inner.is_stream(),
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            ProxyBody::Full(b) => Pin::new(b).poll_frame(cx),
            ProxyBody::Stream(s) => s.as_mut().poll_frame(cx),
            ProxyBody::Observed(o) => {
                let polled = Pin::new(&mut o.inner).poll_frame(cx);
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        if !o.seen_data && frame.is_data() {
                            o.seen_data = true;
                            o.observer.on_first_data();
                        }
                        // The last frame (a whole JSON answer's only one): the end is now.
                        // hyper may drop a body whose `Content-Length` is written without
                        // polling it again, which must not read as a client gone early.
                        if !o.ended && o.inner.is_end_stream() {
                            o.ended = true;
                            o.observer.on_end(true);
                        }
                    }
                    Poll::Ready(None) if !o.ended => {
                        o.ended = true;
                        o.observer.on_end(true);
                    }
                    _ => {}
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full(b) => b.is_end_stream(),
            ProxyBody::Stream(s) => s.is_end_stream(),
            // Let the final poll happen so the observer hears the end.
            ProxyBody::Observed(o) => o.ended,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full(b) => b.size_hint(),
            ProxyBody::Stream(s) => s.size_hint(),
            ProxyBody::Observed(o) => o.inner.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::sync::{Arc, Mutex};

    struct Log(Arc<Mutex<Vec<String>>>);
    impl BodyObserver for Log {
        fn on_first_data(&mut self) {
            self.0.lock().unwrap().push("first".into());
        }
        fn on_end(&mut self, completed: bool) {
            self.0.lock().unwrap().push(format!("end {completed}"));
        }
    }

    #[tokio::test]
    async fn observer_hears_first_data_and_completion() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let body = ProxyBody::full("abc").observe(Log(log.clone()));
        assert_eq!(body.collect().await.unwrap().to_bytes(), "abc");
        assert_eq!(*log.lock().unwrap(), ["first", "end true"]);
    }

    #[test]
    fn the_last_frame_is_the_end_without_another_poll() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut body = ProxyBody::full("abc").observe(Log(log.clone()));
        let waker = futures::task::noop_waker();
        let polled = Pin::new(&mut body).poll_frame(&mut Context::from_waker(&waker));
        assert!(matches!(polled, Poll::Ready(Some(Ok(_)))));
        assert!(body.is_end_stream());
        // hyper drops it now (its `Content-Length` is written): a completed body.
        drop(body);
        assert_eq!(*log.lock().unwrap(), ["first", "end true"]);
    }

    #[test]
    fn dropping_early_is_reported_as_not_completed() {
        let log = Arc::new(Mutex::new(Vec::new()));
        drop(ProxyBody::full("abc").observe(Log(log.clone())));
        assert_eq!(*log.lock().unwrap(), ["end false"]);
    }
}
