//! The request log's layer: for a request on a completion endpoint, a [`Recorder`] in its
//! extensions for the layers and the core inside to fill, and the finished
//! [`Entry`] in the log (`request_log`) when the response body ends — a stream's end, not its
//! headers — or is dropped. It sits outside the error map, so it sees every status sent,
//! refusals included.
//!
//! A request that never gets a response (the client left while it waited: hyper drops the
//! future) is recorded as 499 `client_closed`, nginx's status for it; one whose body is
//! dropped before its end keeps the status it was sent with and gets `client_closed` unless
//! an error reached it first. A panic inside (answered by the catch-panic layer outside with
//! a 500 `internal_error`) is recorded as that 500.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::{Request, Response};
use tokio::time::Instant;

use super::request_id::RequestId;
use crate::body::{BodyObserver, ProxyBody};
use crate::common::{epoch_millis, rfc3339_millis};
use crate::request_log::{api_of, Entry, ErrorKinds, Recorder, RequestLog};
use crate::routes::Route;
use crate::server::RequestStart;

/// The status recorded for a request whose client left before its response.
const CLIENT_CLOSED_REQUEST: u16 = 499;

#[derive(Clone)]
pub(crate) struct RequestLogLayer {
    log: Arc<RequestLog>,
    kinds: ErrorKinds,
}

impl RequestLogLayer {
    /// `kinds` names an error's type in a client API's body (`api::error_type`).
    pub(crate) fn new(log: Arc<RequestLog>, kinds: ErrorKinds) -> Self {
        Self { log, kinds }
    }
}

impl<S> tower::Layer<S> for RequestLogLayer {
    type Service = RecordRequest<S>;
    fn layer(&self, inner: S) -> RecordRequest<S> {
        RecordRequest {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct RecordRequest<S> {
    inner: S,
    layer: RequestLogLayer,
}

impl<S, B> tower::Service<Request<B>> for RecordRequest<S>
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

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let route = Route::of(&req);
        let Some(api) = api_of(route.endpoint) else {
            return ResponseFuture {
                inner: self.inner.call(req),
                pending: None,
                polling: false,
            };
        };
        let recorder = Recorder::new(route.api, self.layer.kinds);
        req.extensions_mut().insert(recorder.clone());
        // Made before the call: a panic inside it is recorded too (`Pending::drop`).
        let pending = Pending {
            log: self.layer.log.clone(),
            recorder,
            id: req
                .extensions()
                .get::<RequestId>()
                .map(|r| r.as_str().to_owned())
                .unwrap_or_default(),
            api,
            time_ms: epoch_millis(),
            start: req
                .extensions()
                .get::<RequestStart>()
                .map_or_else(Instant::now, |s| s.0),
            status: 0,
            finished: false,
        };
        ResponseFuture {
            inner: self.inner.call(req),
            pending: Some(pending),
            polling: false,
        }
    }
}

pub(crate) struct ResponseFuture<F> {
    inner: F,
    /// The request's entry in the making, until the response is out (then its body
    /// carries it).
    pending: Option<Pending>,
    /// Inside the inner future's `poll`: a drop that finds it set is a panic's (a poll
    /// that returns clears it; the catch-panic layer drops the future after catching).
    polling: bool,
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ProxyBody>, E>> + Unpin,
{
    type Output = Result<Response<ProxyBody>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.polling = true;
        let polled = Pin::new(&mut self.inner).poll(cx);
        self.polling = false;
        let rsp = std::task::ready!(polled)?;
        let Some(mut pending) = self.pending.take() else {
            return Poll::Ready(Ok(rsp));
        };
        pending.status = rsp.status().as_u16();
        let (parts, body) = rsp.into_parts();
        Poll::Ready(Ok(Response::from_parts(parts, body.observe(pending))))
    }
}

impl<F> Drop for ResponseFuture<F> {
    fn drop(&mut self) {
        if let (Some(pending), true) = (&mut self.pending, self.polling) {
            pending.panicked();
        }
        // Otherwise an unanswered request's `Pending` records itself as it drops.
    }
}

/// What the layer knows of the request itself (the rest is in the recorder), until its
/// entry is recorded: by the body's end, or when it is dropped unrecorded — the request
/// dropped before its response, or a panic unwinding through it.
struct Pending {
    log: Arc<RequestLog>,
    recorder: Recorder,
    id: String,
    api: &'static str,
    /// When the request arrived (wall clock, for the entry).
    time_ms: u64,
    /// When it arrived (for durations).
    start: Instant,
    /// The status sent.
    status: u16,
    /// The entry is recorded.
    finished: bool,
}

impl Pending {
    fn finish(&mut self, status: u16) {
        self.finished = true;
        let fill = self.recorder.take();
        let tokens = fill.tokens;
        let (error_type, error_code) = fill.error.unzip();
        self.log.record(Entry {
            seq: 0, // numbered by the log
            id: self.id.clone(),
            time: rfc3339_millis(self.time_ms),
            time_ms: self.time_ms,
            api: self.api,
            model: fill.model,
            key: fill.key,
            account: fill.account,
            chat: fill.chat,
            stream: fill.stream,
            status,
            error_type,
            error_code: error_code.flatten(),
            ttft_ms: fill.ttft_ms,
            duration_ms: self.start.elapsed().as_millis() as u64,
            input_tokens: tokens.map(|t| t.input),
            output_tokens: tokens.map(|t| t.output),
            reasoning_tokens: tokens.and_then(|t| t.reasoning),
            retries: fill.retries,
            moved: fill.moved,
        });
    }
}

impl Pending {
    /// A panic inside: recorded as what the catch-panic layer outside answers
    /// (`stack::panic_response`).
    fn panicked(&mut self) {
        self.recorder
            .failed_as("server_error", Some("internal_error"));
        self.finish(500);
    }
}

impl BodyObserver for Pending {
    fn on_end(&mut self, completed: bool) {
        if !completed {
            self.recorder.closed_early();
        }
        self.finish(self.status);
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        if std::thread::panicking() {
            self.panicked();
        } else {
            self.recorder.closed_early();
            self.finish(CLIENT_CLOSED_REQUEST);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ProxyError;
    use crate::layers::error_map::ErrorMapLayer;
    use crate::metrics::Metrics;
    use crate::request_log::{Page, Query};
    use http_body_util::BodyExt;
    use hyper::header::HeaderValue;
    use tower::{service_fn, ServiceBuilder, ServiceExt};

    fn post(path: &str) -> Request<()> {
        let mut req = Request::post(path).body(()).unwrap();
        req.extensions_mut()
            .insert(RequestId(HeaderValue::from_static("req-1")));
        req
    }

    /// API, status, error type and code of each entry, newest first.
    type Outcome = (
        &'static str,
        u16,
        Option<&'static str>,
        Option<&'static str>,
    );
    fn outcomes(log: &RequestLog) -> Vec<Outcome> {
        entries(log)
            .iter()
            .map(|e| (e.api, e.status, e.error_type, e.error_code))
            .collect()
    }

    fn entries(log: &RequestLog) -> Vec<Entry> {
        let all = crate::request_log::parse_query("", 100, Page::List).unwrap();
        log.select(&Query { limit: 100, ..all })
            .into_iter()
            .map(|e| (*e).clone())
            .collect()
    }

    /// The layer over `inner`, with the real error map between (as in the stack).
    fn stack<F>(
        log: &Arc<RequestLog>,
        inner: F,
    ) -> impl tower::Service<
        Request<()>,
        Response = Response<ProxyBody>,
        Error = std::convert::Infallible,
        Future = impl Future + Send,
    > + Clone
    where
        F: Fn(Request<()>) -> Result<Response<ProxyBody>, ProxyError> + Clone + Send + 'static,
    {
        ServiceBuilder::new()
            .layer(RequestLogLayer::new(log.clone(), crate::api::error_type))
            .layer(ErrorMapLayer::new(Metrics::new(), crate::api::error_reply))
            .service(service_fn(move |req| {
                let result = inner(req);
                Box::pin(async move { result })
            }))
    }

    #[tokio::test]
    async fn recorded_when_the_body_ends_with_what_the_inside_told() {
        let log = Arc::new(RequestLog::new(10));
        let svc = stack(&log, |req| {
            let record = Recorder::of(req.extensions());
            record.key("anon");
            record.asked("qwen3.7-plus", true);
            record.attempt("a", "c1");
            record.first_token(std::time::Duration::from_millis(5));
            record.tokens(3, 4, Some(1));
            Ok(Response::new(ProxyBody::full("answer")))
        });
        let rsp = svc.oneshot(post("/v1/chat/completions")).await.unwrap();
        assert!(entries(&log).is_empty(), "not at the headers");
        rsp.into_body().collect().await.unwrap();
        let e = &entries(&log)[0];
        assert_eq!(
            (e.id.as_str(), e.api, e.status),
            ("req-1", "chat_completions", 200)
        );
        assert_eq!(
            (
                e.key.as_deref(),
                e.model.as_deref(),
                e.account.as_deref(),
                e.chat.as_deref()
            ),
            (Some("anon"), Some("qwen3.7-plus"), Some("a"), Some("c1"))
        );
        assert!(e.stream);
        assert_eq!(e.ttft_ms, Some(5));
        assert_eq!(
            (e.input_tokens, e.output_tokens, e.reasoning_tokens),
            (Some(3), Some(4), Some(1))
        );
        assert_eq!((e.error_type, e.error_code), (None, None));
        // The arrival in both forms agrees (the formatter has its own tests with literals).
        let b = e.time.as_bytes();
        assert!(
            e.time.len() == 24 && b[10] == b'T' && e.time.ends_with('Z'),
            "{}",
            e.time
        );
        assert_eq!(e.time[20..23], format!("{:03}", e.time_ms % 1000));
        assert_eq!(e.time[17..19], format!("{:02}", e.time_ms / 1000 % 60));
    }

    #[tokio::test]
    async fn an_error_response_is_recorded_in_the_routes_dialect() {
        let log = Arc::new(RequestLog::new(10));
        let svc = stack(&log, |_| Err(ProxyError::Overloaded));
        for path in ["/v1/chat/completions", "/v1/messages"] {
            let rsp = svc.clone().oneshot(post(path)).await.unwrap();
            assert_eq!(rsp.status(), 503);
            rsp.into_body().collect().await.unwrap();
        }
        assert_eq!(
            outcomes(&log),
            [
                (
                    "messages",
                    503,
                    Some("overloaded_error"),
                    Some("server_overloaded")
                ),
                (
                    "chat_completions",
                    503,
                    Some("server_error"),
                    Some("server_overloaded")
                ),
            ]
        );
        assert!(entries(&log)
            .iter()
            .all(|e| e.key.is_none() && e.model.is_none()));
    }

    #[tokio::test]
    async fn a_client_that_leaves_is_recorded_as_such() {
        let log = Arc::new(RequestLog::new(10));
        let svc = stack(&log, |_| Ok(Response::new(ProxyBody::full("answer"))));
        // The body dropped before its end: the status sent, and `client_closed`.
        drop(svc.clone().oneshot(post("/v1/responses")).await.unwrap());
        // The request dropped before its response: 499.
        let pending = tower::Service::call(&mut svc.clone(), post("/v1/images/generations"));
        drop(pending);
        assert_eq!(
            outcomes(&log),
            [
                ("images", 499, Some("client_closed"), None),
                ("responses", 200, Some("client_closed"), None),
            ]
        );
    }

    #[tokio::test]
    async fn a_panic_inside_is_recorded_as_the_500_it_becomes() {
        let log = Arc::new(RequestLog::new(10));
        let svc = ServiceBuilder::new()
            .layer(tower_http::catch_panic::CatchPanicLayer::new())
            .layer(RequestLogLayer::new(log.clone(), crate::api::error_type))
            .service(service_fn(|_: Request<()>| {
                Box::pin(async {
                    if true {
                        panic!("boom");
                    }
                    Ok::<_, std::convert::Infallible>(Response::new(ProxyBody::empty()))
                })
            }));
        let rsp = svc.oneshot(post("/v1/chat/completions")).await.unwrap();
        assert_eq!(rsp.status(), 500);
        // A panic in a `call` (before there is a future) too.
        let svc =
            ServiceBuilder::new()
                .layer(tower_http::catch_panic::CatchPanicLayer::new())
                .layer(RequestLogLayer::new(log.clone(), crate::api::error_type))
                .service(service_fn(
                    |_: Request<()>| -> std::future::Ready<
                        Result<Response<ProxyBody>, std::convert::Infallible>,
                    > { panic!("boom in call") },
                ));
        let rsp = svc.oneshot(post("/v1/messages")).await.unwrap();
        assert_eq!(rsp.status(), 500);
        assert_eq!(
            outcomes(&log),
            [
                (
                    "messages",
                    500,
                    Some("server_error"),
                    Some("internal_error")
                ),
                (
                    "chat_completions",
                    500,
                    Some("server_error"),
                    Some("internal_error")
                ),
            ]
        );
    }

    #[tokio::test]
    async fn other_routes_are_not_logged_and_get_no_recorder() {
        let log = Arc::new(RequestLog::new(10));
        let svc = stack(&log, |req| {
            assert!(req.extensions().get::<Recorder>().is_none());
            Ok(Response::new(ProxyBody::full("x")))
        });
        for path in ["/v1/models", "/v1/messages/count_tokens", "/admin/requests"] {
            let rsp = svc.clone().oneshot(post(path)).await.unwrap();
            rsp.into_body().collect().await.unwrap();
        }
        assert!(entries(&log).is_empty());
    }
}
