//! Retries with exponential backoff and full jitter, only before the first byte reached
//! the client (the core returns `Ok` only once the stream is primed, so every `Err` here is
//! still retryable in principle).
//!
//! What is retried, and how (qwen-protocol §6, §10):
//! * connect errors, upstream 5xx / in-stream errors, empty streams, protocol garbage,
//!   overload → a new attempt (new chat) after backoff;
//! * "The chat is in progress!" → the *same* chat after backoff;
//! * stale `parent_id` → once, the same chat without a parent, at once;
//! * chat not found → once, a new chat, at once;
//! * the account's rate limit → only when the upstream's wait (`num` hours, `Retry-After`)
//!   fits in `RETRY_MAX_DELAY`, after that wait;
//! * anti-bot challenges, auth, moderation, invalid input, timeouts → never (retrying
//!   deepens a block or repeats a long wait; the answer would not change).
//!
//! The delay before retry `n` is `min(RETRY_MAX_DELAY, RETRY_INITIAL_DELAY ×
//! RETRY_BACKOFF_MULTIPLIER^(n-1))` with full jitter, at least any wait the upstream asked
//! for. A retry budget (tower's `TpsBudget`: retries ≤ 20 % of requests over 10 s, plus a
//! small floor) keeps retries from multiplying load during an outage.
//!
//! The layer and the core share an [`Attempt`] in request extensions: the core records the
//! chat it used, the layer says which chat the next attempt must use.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::{Request, Response};
use tower::retry::budget::{Budget, TpsBudget};
use tower::ServiceExt;

use crate::body::ProxyBody;
use crate::config::RetryConfig;
use crate::error::{ProxyError, UpstreamClass as C};
use crate::metrics::Metrics;
use crate::openai::request::ChatRequest;
use crate::translate::mapping::ChatTarget;

/// Per-request state shared by the retry layer and the core.
#[derive(Debug, Default)]
pub struct AttemptState {
    /// 1 for the first attempt.
    pub number: u32,
    /// Where the next attempt must go (set by the retry layer).
    pub force: Option<ChatTarget>,
    /// Where the last attempt went (set by the core).
    pub used: Option<ChatTarget>,
}

#[derive(Debug, Clone, Default)]
pub struct Attempt(pub Arc<Mutex<AttemptState>>);

impl Attempt {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, AttemptState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Where the next attempt goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    NewChat,
    SameChat { drop_parent: bool },
}

/// Counts of one-shot retries already used in this request.
#[derive(Debug, Default, Clone, Copy)]
pub struct History {
    parent_dropped: bool,
    chat_recreated: bool,
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

/// Same-chat retries for "in progress" before falling back to a new chat.
const MAX_IN_PROGRESS_RETRIES: u32 = 3;

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

    /// Whether and how to retry after attempt `failed` (1-based) ended with `e`.
    pub fn decide(&self, e: &ProxyError, failed: u32, h: &mut History) -> Option<(Duration, Next)> {
        if failed >= self.max_attempts {
            return None;
        }
        let upstream = match e {
            ProxyError::Upstream(u) => u,
            _ => return None,
        };
        let jittered = (self.jitter)(self.backoff(failed));
        match upstream.class {
            C::Connect | C::ServerError | C::EmptyStream | C::Protocol | C::Overloaded => {
                Some((jittered, Next::NewChat))
            }
            C::ChatInProgress if h.in_progress < MAX_IN_PROGRESS_RETRIES => {
                h.in_progress += 1;
                Some((jittered, Next::SameChat { drop_parent: false }))
            }
            C::ChatInProgress => Some((jittered, Next::NewChat)),
            C::ParentNotFound if !h.parent_dropped => {
                h.parent_dropped = true;
                Some((Duration::ZERO, Next::SameChat { drop_parent: true }))
            }
            C::ChatNotFound if !h.chat_recreated => {
                h.chat_recreated = true;
                Some((Duration::ZERO, Next::NewChat))
            }
            C::RateLimited => match upstream.retry_after {
                Some(wait) if wait <= self.max_delay => Some((wait.max(jittered), Next::NewChat)),
                _ => None,
            },
            _ => None,
        }
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

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

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
    type Future = BoxFuture<Result<Response<ProxyBody>, ProxyError>>;

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
                tracing::Span::current().record("attempts", n);
                let err = match result {
                    Ok(rsp) => return Ok(rsp),
                    Err(e) => e,
                };
                let Some((delay, next)) = layer.policy.decide(&err, n, &mut history) else {
                    return Err(err);
                };
                if !layer.budget.withdraw() {
                    tracing::warn!(
                        error = err.metric_label(),
                        "retry budget exhausted; not retrying"
                    );
                    return Err(err);
                }
                layer.metrics.upstream_retries.inc();
                tracing::info!(
                    attempt = n,
                    error = err.metric_label(),
                    delay_ms = delay.as_millis() as u64,
                    "retrying upstream"
                );
                {
                    let mut st = attempt.lock();
                    st.force = match (next, st.used.take()) {
                        (
                            Next::SameChat { drop_parent },
                            Some(ChatTarget::Existing { chat_id, parent_id }),
                        ) => Some(ChatTarget::Existing {
                            chat_id,
                            parent_id: if drop_parent { None } else { parent_id },
                        }),
                        _ => Some(ChatTarget::NewChat),
                    };
                }
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

    /// A core that fails with `errors` in turn, then succeeds; records the targets it saw.
    async fn run(
        errors: Vec<UpstreamError>,
    ) -> (
        Result<Response<ProxyBody>, ProxyError>,
        Duration,
        Vec<Option<ChatTarget>>,
    ) {
        let calls = Arc::new(AtomicU32::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (c, s) = (calls.clone(), seen.clone());
        let core = service_fn(move |r: Request<Arc<ChatRequest>>| {
            let i = c.fetch_add(1, Ordering::SeqCst) as usize;
            let attempt = r.extensions().get::<Attempt>().unwrap().clone();
            let mut st = attempt.lock();
            s.lock().unwrap().push(st.force.take());
            st.used = Some(ChatTarget::Existing {
                chat_id: "c1".into(),
                parent_id: Some("p1".into()),
            });
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
                Some(ChatTarget::NewChat),
                Some(ChatTarget::NewChat),
                Some(ChatTarget::NewChat)
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
    async fn in_progress_retries_the_same_chat() {
        let (r, elapsed, seen) = run(vec![e(C::ChatInProgress), e(C::ChatInProgress)]).await;
        assert!(r.is_ok());
        assert_eq!(elapsed, Duration::from_millis(300));
        let same = Some(ChatTarget::Existing {
            chat_id: "c1".into(),
            parent_id: Some("p1".into()),
        });
        assert_eq!(seen, vec![None, same.clone(), same]);
    }

    #[tokio::test(start_paused = true)]
    async fn stale_parent_retries_once_without_it_at_once() {
        let (r, elapsed, seen) = run(vec![e(C::ParentNotFound), e(C::ParentNotFound)]).await;
        assert_eq!(r.unwrap_err().upstream_class(), Some(C::ParentNotFound));
        assert_eq!(elapsed, Duration::ZERO);
        assert_eq!(
            seen[1],
            Some(ChatTarget::Existing {
                chat_id: "c1".into(),
                parent_id: None
            })
        );
        assert_eq!(seen.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn chat_not_found_gets_one_new_chat() {
        let (r, _, seen) = run(vec![e(C::ChatNotFound)]).await;
        assert!(r.is_ok());
        assert_eq!(seen, vec![None, Some(ChatTarget::NewChat)]);
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

    #[test]
    fn jitter_stays_within_the_backoff() {
        for _ in 0..1000 {
            let d = full_jitter(Duration::from_millis(100));
            assert!(d <= Duration::from_millis(100));
        }
    }
}
