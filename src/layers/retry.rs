//! Retries with exponential backoff and full jitter, only before the first byte reached
//! the client (the core returns `Ok` only once the stream is primed, so every `Err` here is
//! still retryable in principle).
//!
//! What is retried, and how (qwen-protocol §6, §10):
//! * connect errors, upstream 5xx / in-stream errors, empty or truncated streams, protocol
//!   garbage, overload → the same request again after backoff;
//! * "The chat is in progress!" → the *same* chat and text after backoff (up to
//!   [`MAX_IN_PROGRESS_RETRIES`] times, then a fresh chat);
//! * stale `parent_id`, chat not found (or of another account) → once, at once, a fresh chat
//!   with the whole history folded: sending only the new turn without its parent would give
//!   the upstream a context that differs from what the client sent;
//! * the account's rate limit → only when the upstream's wait (`num` hours, `Retry-After`)
//!   fits in `RETRY_MAX_DELAY`, after that wait;
//! * anti-bot challenges, auth, moderation, invalid input, timeouts → never (retrying
//!   deepens a block or repeats a long wait; the answer would not change).
//!
//! The delay before retry `n` is `min(RETRY_MAX_DELAY, RETRY_INITIAL_DELAY ×
//! RETRY_BACKOFF_MULTIPLIER^(n-1))` with full jitter, at least any wait the upstream asked
//! for. A retry budget (tower's `TpsBudget`: retries ≤ 20 % of requests over 10 s, plus a
//! small floor) keeps retries from multiplying load during an outage. "Chat in progress"
//! waits do not draw from it: they are budgeted per request instead (a bounded number of
//! waits on one chat, which the upstream frees by itself), so a spent budget — during a
//! fault-heavy period — never turns a busy conversation into `503 upstream_busy`.
//!
//! The layer and the core share an [`Attempt`] in request extensions: the core records what
//! it sent, the layer says how the next attempt must differ ([`Next`]).

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::{Request, Response};
use tower::retry::budget::{Budget, TpsBudget};
use tower::ServiceExt;

use crate::body::ProxyBody;
use crate::common::BoxFuture;
use crate::config::RetryConfig;
use crate::conversation::Prepared;
use crate::error::{ProxyError, UpstreamClass as C};
use crate::metrics::Metrics;
use crate::openai::request::ChatRequest;

/// Per-request state shared by the retry layer and the core.
#[derive(Debug, Default)]
pub struct AttemptState {
    /// 1 for the first attempt.
    pub number: u32,
    /// How the next attempt must go (set by the retry layer).
    pub next: Option<Next>,
    /// What the last attempt sent, with its chat resolved (set by the core).
    pub last: Option<Prepared>,
}

#[derive(Debug, Clone, Default)]
pub struct Attempt(pub Arc<Mutex<AttemptState>>);

impl Attempt {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, AttemptState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// How the next attempt goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Resolve the request as usual again.
    Again,
    /// Exactly what the last attempt sent, into the same chat.
    SameChat,
    /// A fresh chat with the whole history folded.
    FreshChat,
}

/// Counts of one-shot retries already used in this request.
#[derive(Debug, Default, Clone, Copy)]
pub struct History {
    /// Failed attempts that count against `RETRY_MAX_ATTEMPTS`.
    counted: u32,
    fresh_after_lost_chat: bool,
    in_progress: u32,
}

/// Full jitter source: maps the capped backoff to the actual delay.
pub type Jitter = fn(Duration) -> Duration;

/// Uniform in `[0, d]`, from the OS-seeded randomness uuid already uses.
pub fn full_jitter(d: Duration) -> Duration {
    let r = (uuid::Uuid::new_v4().as_u128() & 0xFFFF_FFFF) as f64 / f64::from(u32::MAX);
    d.mul_f64(r)
}

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial: Duration,
    pub max_delay: Duration,
    pub multiplier: f64,
    pub jitter: Jitter,
}

/// Whether a retry draws from the shared retry budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budgeted {
    Yes,
    No,
}

/// Same-chat waits for "in progress" before falling back to a fresh chat.
pub const MAX_IN_PROGRESS_RETRIES: u32 = 5;

impl RetryPolicy {
    pub fn from_config(c: &RetryConfig) -> Self {
        Self {
            max_attempts: c.max_attempts,
            initial: c.initial_delay,
            max_delay: c.max_delay,
            multiplier: c.multiplier,
            jitter: full_jitter,
        }
    }

    /// Capped exponential delay before retry number `n` (1-based), before jitter.
    pub fn backoff(&self, n: u32) -> Duration {
        let factor = self.multiplier.powi(n.saturating_sub(1).min(64) as i32);
        let secs = (self.initial.as_secs_f64() * factor).min(self.max_delay.as_secs_f64());
        Duration::from_secs_f64(secs)
    }

    /// Whether and how to retry after an attempt ended with `e`; the last value says whether
    /// the retry draws from the shared retry budget.
    ///
    /// "Chat in progress" waits on the same chat are budgeted separately (up to
    /// [`MAX_IN_PROGRESS_RETRIES`], with equal jitter so each wait is at least half the
    /// backoff): the upstream keeps a chat busy for seconds after a generation, and giving up
    /// early would abandon a continued conversation. Every other retry counts against
    /// `RETRY_MAX_ATTEMPTS`.
    pub fn decide(&self, e: &ProxyError, h: &mut History) -> Option<(Duration, Next, Budgeted)> {
        let ProxyError::Upstream(upstream) = e else {
            return None;
        };
        if upstream.class == C::ChatInProgress && h.in_progress < MAX_IN_PROGRESS_RETRIES {
            h.in_progress += 1;
            let b = self.backoff(h.in_progress);
            return Some((b / 2 + (self.jitter)(b / 2), Next::SameChat, Budgeted::No));
        }
        h.counted += 1;
        if h.counted >= self.max_attempts {
            return None;
        }
        let jittered = (self.jitter)(self.backoff(h.counted));
        let next = match upstream.class {
            C::Connect
            | C::ServerError
            | C::EmptyStream
            | C::Truncated
            | C::Protocol
            | C::Overloaded => Some((jittered, Next::Again)),
            C::ChatInProgress => Some((jittered, Next::FreshChat)),
            C::ParentNotFound | C::ChatNotFound if !h.fresh_after_lost_chat => {
                h.fresh_after_lost_chat = true;
                Some((Duration::ZERO, Next::FreshChat))
            }
            C::RateLimited => match upstream.retry_after {
                Some(wait) if wait <= self.max_delay => Some((wait.max(jittered), Next::Again)),
                _ => None,
            },
            _ => None,
        };
        next.map(|(delay, next)| (delay, next, Budgeted::Yes))
    }
}

#[derive(Clone)]
pub struct RetryLayer {
    policy: Arc<RetryPolicy>,
    budget: Arc<TpsBudget>,
    metrics: Arc<Metrics>,
}

impl RetryLayer {
    pub fn new(policy: RetryPolicy, metrics: Arc<Metrics>) -> Self {
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
pub struct Retry<S> {
    inner: S,
    layer: RetryLayer,
}

/// A request is `Parts` + `Arc<ChatRequest>`; `Parts` is not `Clone`, so copy it by hand.
fn copy_request(
    parts: &hyper::http::request::Parts,
    body: &Arc<ChatRequest>,
) -> Request<Arc<ChatRequest>> {
    let mut r = Request::new(body.clone());
    *r.method_mut() = parts.method.clone();
    *r.uri_mut() = parts.uri.clone();
    *r.version_mut() = parts.version;
    *r.headers_mut() = parts.headers.clone();
    *r.extensions_mut() = parts.extensions.clone();
    r
}

impl<S> tower::Service<Request<Arc<ChatRequest>>> for Retry<S>
where
    S: tower::Service<
            Request<Arc<ChatRequest>>,
            Response = Response<ProxyBody>,
            Error = ProxyError,
        > + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = Response<ProxyBody>;
    type Error = ProxyError;
    type Future = BoxFuture<'static, Result<Response<ProxyBody>, ProxyError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Arc<ChatRequest>>) -> Self::Future {
        let clone = self.inner.clone();
        let mut svc = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        Box::pin(async move {
            layer.budget.deposit();
            let (parts, body) = req.into_parts();
            let attempt = Attempt::default();
            let mut history = History::default();
            let mut n = 0;
            loop {
                n += 1;
                attempt.lock().number = n;
                let mut r = copy_request(&parts, &body);
                r.extensions_mut().insert(attempt.clone());
                let result = svc.ready().await?.call(r).await;
                // Recorded once, when the attempts are over: a span field recorded again is
                // printed again on every later line.
                let finished = |result| {
                    tracing::Span::current().record("attempts", n);
                    result
                };
                let err = match result {
                    Ok(rsp) => return finished(Ok(rsp)),
                    Err(e) => e,
                };
                let Some((delay, next, budgeted)) = layer.policy.decide(&err, &mut history) else {
                    return finished(Err(err));
                };
                if budgeted == Budgeted::Yes && !layer.budget.withdraw() {
                    tracing::warn!(
                        error = err.metric_label(),
                        "retry budget exhausted; not retrying"
                    );
                    return finished(Err(err));
                }
                layer.metrics.upstream_retries.inc();
                tracing::info!(
                    attempt = n,
                    error = err.metric_label(),
                    delay_ms = delay.as_millis() as u64,
                    "retrying upstream"
                );
                attempt.lock().next = Some(next);
                tokio::time::sleep(delay).await;
            }
        })
    }
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
            max_attempts: 4,
            initial: Duration::from_millis(100),
            max_delay: Duration::from_millis(250),
            multiplier: 2.0,
            jitter: |d| d, // deterministic: the full delay
        }
    }

    fn chat_req() -> Request<Arc<ChatRequest>> {
        let chat =
            ChatRequest::from_slice(br#"{"model":"m","messages":[{"role":"user","content":"x"}]}"#)
                .unwrap();
        Request::new(Arc::new(chat))
    }

    type Outcome = (
        Result<Response<ProxyBody>, ProxyError>,
        Duration,
        Vec<Option<Next>>,
    );

    /// A core that fails with `errors` in turn, then succeeds; records the `Next` it saw.
    async fn run(errors: Vec<UpstreamError>) -> Outcome {
        let calls = Arc::new(AtomicU32::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (c, s) = (calls.clone(), seen.clone());
        let core = service_fn(move |r: Request<Arc<ChatRequest>>| {
            let i = c.fetch_add(1, Ordering::SeqCst) as usize;
            let attempt = r.extensions().get::<Attempt>().unwrap().clone();
            s.lock().unwrap().push(attempt.lock().next.take());
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
        let seen = seen.lock().unwrap().clone();
        (result, start.elapsed(), seen)
    }

    fn e(class: C) -> UpstreamError {
        UpstreamError::new(class, "x")
    }

    #[tokio::test(start_paused = true)]
    async fn exponential_backoff_with_cap() {
        let (r, elapsed, seen) =
            run(vec![e(C::ServerError), e(C::EmptyStream), e(C::Connect)]).await;
        assert!(r.is_ok());
        // 100 ms, 200 ms, then capped at 250 ms.
        assert_eq!(elapsed, Duration::from_millis(550));
        assert_eq!(
            seen,
            vec![
                None,
                Some(Next::Again),
                Some(Next::Again),
                Some(Next::Again)
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_max_attempts() {
        let (r, elapsed, seen) = run(vec![e(C::ServerError); 10]).await;
        assert_eq!(r.unwrap_err().upstream_class(), Some(C::ServerError));
        assert_eq!(seen.len(), 4);
        assert_eq!(elapsed, Duration::from_millis(550));
    }

    #[tokio::test(start_paused = true)]
    async fn in_progress_retries_the_same_chat_then_a_fresh_one() {
        let (r, elapsed, seen) = run(vec![e(C::ChatInProgress), e(C::ChatInProgress)]).await;
        assert!(r.is_ok());
        assert_eq!(elapsed, Duration::from_millis(300));
        assert_eq!(seen, vec![None, Some(Next::SameChat), Some(Next::SameChat)]);
        let policy = RetryPolicy {
            max_attempts: 10,
            ..policy()
        };
        let mut h = History::default();
        let busy = ProxyError::from(e(C::ChatInProgress));
        let nexts: Vec<Next> = (1..=6)
            .map(|_| policy.decide(&busy, &mut h).unwrap().1)
            .collect();
        assert_eq!(nexts[..5], [Next::SameChat; 5]);
        assert_eq!(nexts[5], Next::FreshChat);
    }

    #[tokio::test(start_paused = true)]
    async fn lost_chat_or_parent_gets_one_fresh_chat_at_once() {
        for class in [C::ParentNotFound, C::ChatNotFound] {
            let (r, elapsed, seen) = run(vec![e(class), e(class)]).await;
            assert_eq!(r.unwrap_err().upstream_class(), Some(class));
            assert_eq!(elapsed, Duration::ZERO);
            assert_eq!(seen, vec![None, Some(Next::FreshChat)]);
        }
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
            let (r, elapsed, seen) = run(vec![e(class)]).await;
            assert_eq!(r.unwrap_err().upstream_class(), Some(class));
            assert_eq!((elapsed, seen.len()), (Duration::ZERO, 1), "{class:?}");
        }
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

    #[tokio::test(start_paused = true)]
    async fn in_progress_waits_do_not_need_the_shared_budget() {
        let layer = RetryLayer::new(policy(), Metrics::new());
        // Spend the budget (its floor and what one deposit bought).
        while layer.budget.withdraw() {}
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let core = service_fn(move |_r: Request<Arc<ChatRequest>>| {
            let i = c.fetch_add(1, Ordering::SeqCst);
            async move {
                match i {
                    0 | 1 => Err(ProxyError::from(e(C::ChatInProgress))),
                    2 => Err(ProxyError::from(e(C::ServerError))),
                    _ => Ok(Response::new(ProxyBody::empty())),
                }
            }
        });
        let svc = ServiceBuilder::new().layer(layer).service(core);
        let r = svc.oneshot(chat_req()).await;
        // Both busy waits happened; the server error found the budget spent.
        assert_eq!(r.unwrap_err().upstream_class(), Some(C::ServerError));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn jitter_stays_within_the_backoff() {
        for _ in 0..1000 {
            let d = full_jitter(Duration::from_millis(100));
            assert!(d <= Duration::from_millis(100));
        }
    }
}
