//! Retries of transient upstream failures, with exponential backoff and full jitter, only
//! before the first byte reached the client (the core returns `Ok` only once the stream is
//! primed, so every `Err` here is still retryable in principle). The request is re-sent as
//! it came: the core resolves it again (a continued conversation continues again).
//!
//! What is retried (qwen-protocol §6, §10):
//! * connect errors, upstream 5xx / in-stream errors, empty or truncated streams, protocol
//!   garbage, overload → after backoff, up to `RETRY_MAX_ATTEMPTS` attempts in all;
//! * the account's rate limit → only when the upstream's wait (`num` hours, `Retry-After`)
//!   fits in `RETRY_MAX_DELAY`, after that wait;
//! * a `Bad_Request` the upstream gives for the request itself → once (another chat, maybe
//!   another account), and not again if it comes back the same;
//! * anti-bot challenges, auth, moderation, invalid input, timeouts → never (retrying
//!   deepens a block or repeats a long wait; the answer would not change);
//! * nothing once the request has opened its `CHATS_PER_REQUEST` upstream chats, or when
//!   the core marked the failure as repeating the previous one (`conversation::budget`:
//!   the layer puts the request's chat ledger in its extensions, the core counts into it).
//!
//! Conversation fallbacks — waiting out "The chat is in progress!" on the same chat, a
//! fresh chat when the remembered one is gone — are the core's (`chat::fallback`): they
//! change what is sent, not just when.
//!
//! The delay before retry `n` is `min(RETRY_MAX_DELAY, RETRY_INITIAL_DELAY ×
//! RETRY_BACKOFF_MULTIPLIER^(n-1))` with full jitter, at least any wait the upstream asked
//! for. A retry budget (tower's `TpsBudget`: retries ≤ 20 % of requests over 10 s, plus a
//! small floor) keeps retries from multiplying load during an outage.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::{Request, Response};
use tokio::time::Instant;
use tower::retry::budget::{Budget, TpsBudget};
use tower::ServiceExt;

use crate::backoff::Backoff;
use crate::body::ProxyBody;
use crate::common::BoxFuture;
use crate::config::RetryConfig;
use crate::conversation::budget::RequestChats;
use crate::error::{ProxyError, UpstreamClass as C, UpstreamError};
use crate::metrics::Metrics;
use crate::request_log::Recorder;
use crate::server::RequestStart;

#[derive(Debug, Clone)]
pub(crate) struct RetryPolicy {
    pub max_attempts: u32,
    pub backoff: Backoff,
    /// Upstream chats one request may open (`CHATS_PER_REQUEST`).
    pub chats_per_request: u32,
    /// `FIRST_TOKEN_TIMEOUT` (`None`: off).
    pub first_token_timeout: Option<Duration>,
}

impl RetryPolicy {
    pub(crate) fn from_config(c: &RetryConfig, chats_per_request: u32) -> Self {
        Self {
            max_attempts: c.max_attempts,
            backoff: Backoff::from_config(c),
            chats_per_request,
            first_token_timeout: (!c.first_token_timeout.is_zero())
                .then_some(c.first_token_timeout),
        }
    }

    /// Whether to retry after failed attempt number `attempt` (1-based) ended with `e`,
    /// and after how long.
    pub(crate) fn decide(&self, e: &ProxyError, attempt: u32) -> Option<Duration> {
        let ProxyError::Upstream(upstream) = e else {
            return None;
        };
        if attempt >= self.max_attempts || upstream.repeated {
            return None;
        }
        let jittered = self.backoff.full(attempt);
        match upstream.class {
            C::Connect
            | C::ServerError
            | C::EmptyStream
            | C::Truncated
            | C::Protocol
            | C::Overloaded
            | C::Rejected => Some(jittered),
            C::RateLimited => match upstream.retry_after {
                Some(wait) if wait <= self.backoff.max_delay => Some(wait.max(jittered)),
                _ => None,
            },
            _ => None,
        }
    }
}

#[derive(Clone)]
pub(crate) struct RetryLayer {
    policy: Arc<RetryPolicy>,
    budget: Arc<TpsBudget>,
    metrics: Arc<Metrics>,
}

impl RetryLayer {
    pub(crate) fn new(policy: RetryPolicy, metrics: Arc<Metrics>) -> Self {
        Self {
            policy: Arc::new(policy),
            budget: Arc::new(TpsBudget::new(Duration::from_secs(10), 2, 0.2)),
            metrics,
        }
    }
}

impl<S> tower::Layer<S> for RetryLayer {
    type Service = Retry<S>;
    fn layer(&self, inner: S) -> Retry<S> {
        Retry {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct Retry<S> {
    inner: S,
    layer: RetryLayer,
}

/// A request is `Parts` + its parsed body (an `Arc`, cheap to clone); `Parts` is not
/// `Clone`, so copy it by hand (also the images fan-out's copies).
pub(crate) fn copy_request<T: Clone>(parts: &hyper::http::request::Parts, body: &T) -> Request<T> {
    let mut r = Request::new(body.clone());
    *r.method_mut() = parts.method.clone();
    *r.uri_mut() = parts.uri.clone();
    *r.version_mut() = parts.version;
    *r.headers_mut() = parts.headers.clone();
    *r.extensions_mut() = parts.extensions.clone();
    r
}

impl<S, T> tower::Service<Request<T>> for Retry<S>
where
    T: Clone + Send + 'static,
    S: tower::Service<Request<T>, Response = Response<ProxyBody>, Error = ProxyError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = Response<ProxyBody>;
    type Error = ProxyError;
    // Boxed: the attempts and the sleeps between them are one async loop.
    type Future = BoxFuture<'static, Result<Response<ProxyBody>, ProxyError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<T>) -> Self::Future {
        let clone = self.inner.clone();
        let mut svc = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        Box::pin(async move {
            layer.budget.deposit();
            let (mut parts, body) = req.into_parts();
            let chats = Arc::new(RequestChats::new(layer.policy.chats_per_request));
            parts.extensions.insert(chats.clone());
            // The whole wait for the answer to begin is bounded, from the request's arrival.
            let deadline = layer.policy.first_token_timeout.map(|total| {
                let start = parts
                    .extensions
                    .get::<RequestStart>()
                    .map_or_else(Instant::now, |s| s.0);
                (start + total, total)
            });
            let mut attempt = 0;
            loop {
                attempt += 1;
                let call = svc.ready().await?.call(copy_request(&parts, &body));
                let result = match deadline {
                    None => call.await,
                    Some((at, total)) => within_deadline(call, at, total, &chats).await,
                };
                // Recorded once, when the attempts are over: a span field recorded again is
                // printed again on every later line.
                let finished = |result| {
                    tracing::Span::current().record("attempts", attempt);
                    Recorder::of(&parts.extensions).retries(attempt - 1);
                    layer
                        .metrics
                        .chats_per_request
                        .observe(f64::from(chats.total()));
                    result
                };
                let err = match result {
                    Ok(rsp) => return finished(Ok(rsp)),
                    Err(e) => e,
                };
                let Some(delay) = layer.policy.decide(&err, attempt) else {
                    return finished(Err(err));
                };
                if chats.left() == 0 {
                    tracing::info!(
                        error = err.metric_label(),
                        "the request opened its upstream chats (CHATS_PER_REQUEST); not retrying"
                    );
                    return finished(Err(err));
                }
                if !layer.budget.withdraw() {
                    tracing::warn!(
                        error = err.metric_label(),
                        "retry budget exhausted; not retrying"
                    );
                    return finished(Err(err));
                }
                layer.metrics.upstream_retries.inc();
                // No retry that would start past the deadline.
                if let Some((at, total)) = deadline {
                    if Instant::now() + delay >= at {
                        return finished(Err(first_token_timeout(total)));
                    }
                }
                tracing::info!(
                    attempt,
                    error = err.metric_label(),
                    delay_ms = delay.as_millis() as u64,
                    "retrying upstream"
                );
                tokio::time::sleep(delay).await;
            }
        })
    }
}

/// One attempt, given up at `at` unless its answer began by then (then it takes its time).
async fn within_deadline<F>(
    call: F,
    at: Instant,
    total: Duration,
    chats: &RequestChats,
) -> Result<Response<ProxyBody>, ProxyError>
where
    F: std::future::Future<Output = Result<Response<ProxyBody>, ProxyError>>,
{
    tokio::pin!(call);
    tokio::select! {
        result = &mut call => result,
        () = tokio::time::sleep_until(at) => match chats.began() {
            true => call.await,
            false => Err(first_token_timeout(total)),
        },
    }
}

/// The answer did not begin within `FIRST_TOKEN_TIMEOUT`.
fn first_token_timeout(total: Duration) -> ProxyError {
    UpstreamError::new(
        C::Timeout,
        format!(
            "no answer began within {} s (FIRST_TOKEN_TIMEOUT)",
            total.as_secs_f32()
        ),
    )
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::UpstreamError;
    use std::sync::atomic::{AtomicU32, Ordering};
    use tokio::time::Instant;
    use tower::{service_fn, ServiceBuilder};

    fn policy() -> RetryPolicy {
        RetryPolicy {
            first_token_timeout: None,
            chats_per_request: 8,
            max_attempts: 4,
            backoff: Backoff {
                initial: Duration::from_millis(100),
                max_delay: Duration::from_millis(250),
                multiplier: 2.0,
                jitter: |d| d, // deterministic: the full delay
            },
        }
    }

    /// The layer needs nothing of the request but that it can be sent again.
    type Parsed = Arc<&'static str>;

    fn chat_req() -> Request<Parsed> {
        Request::new(Arc::new("x"))
    }

    /// A core that fails with `errors` in turn, then succeeds; the calls it got.
    async fn run(
        errors: Vec<UpstreamError>,
    ) -> (Result<Response<ProxyBody>, ProxyError>, Duration, u32) {
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let core = service_fn(move |_r: Request<Parsed>| {
            let i = c.fetch_add(1, Ordering::SeqCst) as usize;
            let out = match errors.get(i) {
                Some(e) => Err(ProxyError::from(e.clone())),
                None => Ok(Response::new(ProxyBody::empty())),
            };
            async move { out }
        });
        let svc = ServiceBuilder::new()
            .layer(RetryLayer::new(policy(), Metrics::new()))
            .service(core);
        let start = Instant::now();
        let result = svc.oneshot(chat_req()).await;
        (result, start.elapsed(), calls.load(Ordering::SeqCst))
    }

    fn e(class: C) -> UpstreamError {
        UpstreamError::new(class, "x")
    }

    #[tokio::test(start_paused = true)]
    async fn exponential_backoff_with_cap() {
        let (r, elapsed, calls) =
            run(vec![e(C::ServerError), e(C::EmptyStream), e(C::Connect)]).await;
        assert!(r.is_ok());
        // 100 ms, 200 ms, then capped at 250 ms.
        assert_eq!(elapsed, Duration::from_millis(550));
        assert_eq!(calls, 4);
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_max_attempts() {
        let (r, elapsed, calls) = run(vec![e(C::ServerError); 10]).await;
        assert_eq!(r.unwrap_err().upstream_class(), Some(C::ServerError));
        assert_eq!(calls, 4);
        assert_eq!(elapsed, Duration::from_millis(550));
    }

    #[tokio::test(start_paused = true)]
    async fn never_hammer_challenges_auth_or_moderation() {
        for class in [
            C::Challenge,
            C::AuthFailed,
            C::Forbidden,
            C::ContentFilter,
            C::InvalidInput,
            C::Timeout,
        ] {
            let (r, elapsed, calls) = run(vec![e(class)]).await;
            assert_eq!(r.unwrap_err().upstream_class(), Some(class));
            assert_eq!((elapsed, calls), (Duration::ZERO, 1), "{class:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn conversation_fallbacks_are_left_to_the_core() {
        // A busy or lost chat reaching this layer was already handled by the core: sending
        // the same request again would only repeat what the core decided against.
        for class in [C::ChatInProgress, C::ParentNotFound, C::ChatNotFound] {
            let (r, _, calls) = run(vec![e(class)]).await;
            assert_eq!(r.unwrap_err().upstream_class(), Some(class));
            assert_eq!(calls, 1, "{class:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_the_core_marked_as_repeated_is_not_retried() {
        let mut repeated = e(C::Rejected);
        repeated.repeated = true;
        let (r, elapsed, calls) = run(vec![repeated]).await;
        assert!(r
            .unwrap_err()
            .to_string()
            .contains("sending it again will not help"));
        assert_eq!((elapsed, calls), (Duration::ZERO, 1));
        // Once, when it is not (yet) known to repeat.
        let (r, _, calls) = run(vec![e(C::Rejected)]).await;
        assert!(r.is_ok());
        assert_eq!(calls, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn no_retry_once_the_request_opened_its_upstream_chats() {
        // A core that opens a fresh chat on every attempt (a new conversation) and fails.
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let core = service_fn(move |r: Request<Parsed>| {
            c.fetch_add(1, Ordering::SeqCst);
            let chats = r.extensions().get::<Arc<RequestChats>>().cloned();
            async move {
                let chats = chats.expect("the layer gives the core the request's chat ledger");
                chats.opened(true);
                Err::<Response<ProxyBody>, _>(ProxyError::from(e(C::ServerError)))
            }
        });
        let metrics = Metrics::new();
        let svc = ServiceBuilder::new()
            .layer(RetryLayer::new(
                RetryPolicy {
                    chats_per_request: 2,
                    ..policy()
                },
                metrics.clone(),
            ))
            .service(core);
        let r = svc.oneshot(chat_req()).await;
        assert_eq!(r.unwrap_err().upstream_class(), Some(C::ServerError));
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "max_attempts is 4, chats 2"
        );
        assert_eq!(metrics.chats_per_request.get_sample_sum(), 2.0);
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limit_honours_the_upstream_wait_only_when_short() {
        let short = e(C::RateLimited).with_retry_after(Some(Duration::from_millis(200)));
        let (r, elapsed, _) = run(vec![short]).await;
        assert!(r.is_ok());
        assert_eq!(elapsed, Duration::from_millis(200));
        let long = e(C::RateLimited).with_retry_after(Some(Duration::from_secs(4 * 3600)));
        let (r, elapsed, _) = run(vec![long]).await;
        assert!(r.is_err());
        assert_eq!(elapsed, Duration::ZERO);
    }
}
