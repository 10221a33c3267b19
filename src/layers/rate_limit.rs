//! Per-client rate limiting: a token bucket per client identity (the API key's fingerprint
//! that the auth layer established), or per client IP when keys are off, `RATE_LIMIT_RPM` tokens a minute up to `RATE_LIMIT_BURST`. Over the limit the
//! request is rejected at once with 429, `Retry-After` and `x-ratelimit-*` headers; it is
//! never queued. Bucket state lives behind `Arc` in a [`RateLimitStore`], because hyper
//! clones the whole stack per request (state kept in the service struct would be per
//! request — the `tower::limit::RateLimit` trap). The store is a trait so a shared backend
//! (Redis) can plug in.
//!
//! Client IP: as `TRUST_PROXY` resolves it ([`TrustProxy`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::header::{HeaderMap, HeaderValue};
use hyper::{Request, Response};
use tokio::time::Instant;

use crate::body::ProxyBody;
use crate::conversation::redis::{RedisClient, Reply, RATE_LIMIT_SCRIPT};
use crate::conversation::store::BoxFuture;
use crate::error::ProxyError;
use crate::forwarded::TrustProxy;
use crate::identity::ClientIdentity;
use crate::metrics::Metrics;
use crate::server::PeerAddr;

/// The outcome of taking one token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateDecision {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// Denied: time until a token is available. Allowed: time until the bucket is full.
    pub reset_after: Duration,
}

pub trait RateLimitStore: Send + Sync + 'static {
    /// Take one token for `key`. Never fails: a shared backend that cannot answer falls
    /// back to local buckets (limits then hold per instance).
    fn acquire<'a>(&'a self, key: &'a str) -> BoxFuture<'a, RateDecision>;
}

/// In-process token buckets.
#[derive(Debug)]
pub struct LocalBuckets {
    per_sec: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Above this many buckets, full (idle) ones are dropped on the next acquire.
const SWEEP_THRESHOLD: usize = 10_000;

impl LocalBuckets {
    pub fn new(per_minute: u32, burst: u32) -> Self {
        Self {
            per_sec: f64::from(per_minute) / 60.0,
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Take a token at `now` (explicit for tests with paused time).
    pub fn acquire_at(&self, key: &str, now: Instant) -> RateDecision {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() > SWEEP_THRESHOLD {
            let (per_sec, burst) = (self.per_sec, self.burst);
            buckets.retain(|_, b| {
                b.tokens + now.duration_since(b.updated).as_secs_f64() * per_sec < burst
            });
        }
        let b = buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: self.burst,
            updated: now,
        });
        let elapsed = now.duration_since(b.updated).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.per_sec).min(self.burst);
        b.updated = now;
        let allowed = b.tokens >= 1.0;
        if allowed {
            b.tokens -= 1.0;
        }
        decision(allowed, b.tokens, self.per_sec, self.burst)
    }
}

fn decision(allowed: bool, tokens: f64, per_sec: f64, burst: f64) -> RateDecision {
    let reset_secs = if allowed {
        (burst - tokens) / per_sec
    } else {
        (1.0 - tokens) / per_sec
    };
    RateDecision {
        allowed,
        limit: burst as u32,
        remaining: tokens.floor().max(0.0) as u32,
        reset_after: Duration::from_secs_f64(reset_secs.max(0.0)),
    }
}

impl RateLimitStore for LocalBuckets {
    fn acquire<'a>(&'a self, key: &'a str) -> BoxFuture<'a, RateDecision> {
        Box::pin(std::future::ready(self.acquire_at(key, Instant::now())))
    }
}

/// Buckets in Redis, shared by every instance (one atomic Lua script per request).
pub struct RedisBuckets {
    client: Arc<RedisClient>,
    per_minute: u32,
    burst: u32,
    local: LocalBuckets,
    degraded: AtomicBool,
}

impl RedisBuckets {
    pub fn new(client: Arc<RedisClient>, per_minute: u32, burst: u32) -> Self {
        Self {
            client,
            per_minute,
            burst,
            local: LocalBuckets::new(per_minute, burst),
            degraded: AtomicBool::new(false),
        }
    }
}

impl RateLimitStore for RedisBuckets {
    fn acquire<'a>(&'a self, key: &'a str) -> BoxFuture<'a, RateDecision> {
        Box::pin(async move {
            let k = format!("qp:rl:{key}");
            let rate = (f64::from(self.per_minute) / 60.0).to_string();
            let burst = self.burst.max(1).to_string();
            let reply = self
                .client
                .cmd(&[
                    b"EVAL",
                    RATE_LIMIT_SCRIPT.as_bytes(),
                    b"1",
                    k.as_bytes(),
                    rate.as_bytes(),
                    burst.as_bytes(),
                ])
                .await;
            let parsed = match reply {
                Ok(Reply::Array(Some(items))) => match items.as_slice() {
                    [Reply::Int(allowed), Reply::Bulk(Some(tokens))] => std::str::from_utf8(tokens)
                        .ok()
                        .and_then(|t| t.parse::<f64>().ok())
                        .map(|t| (*allowed == 1, t)),
                    _ => None,
                },
                _ => None,
            };
            match parsed {
                Some((allowed, tokens)) => {
                    if self.degraded.swap(false, Ordering::Relaxed) {
                        tracing::info!("rate limiting is shared through Redis again");
                    }
                    decision(
                        allowed,
                        tokens,
                        f64::from(self.per_minute) / 60.0,
                        f64::from(self.burst.max(1)),
                    )
                }
                None => {
                    if !self.degraded.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            "Redis unavailable for rate limiting; limits now hold per instance"
                        );
                    }
                    self.local.acquire_at(key, Instant::now())
                }
            }
        })
    }
}

#[derive(Clone)]
pub struct RateLimitLayer {
    store: Arc<dyn RateLimitStore>,
    trust_proxy: Arc<TrustProxy>,
    metrics: Arc<Metrics>,
}

impl RateLimitLayer {
    pub fn new(
        store: Arc<dyn RateLimitStore>,
        trust_proxy: TrustProxy,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            store,
            trust_proxy: Arc::new(trust_proxy),
            metrics,
        }
    }
}

impl<S> tower::Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;
    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RateLimit<S> {
    inner: S,
    layer: RateLimitLayer,
}

impl<S> RateLimit<S> {
    /// The bucket: the identity established by the auth layer, else the client address.
    fn key<B>(&self, req: &Request<B>) -> String {
        if let Some(ClientIdentity::Key(fp)) = req.extensions().get::<ClientIdentity>() {
            // A fingerprint: the store (possibly shared) never holds raw keys.
            return format!("key:{}", fp.as_str());
        }
        let peer = req.extensions().get::<PeerAddr>().map(|p| p.0.ip());
        match self.layer.trust_proxy.client_ip(req.headers(), peer) {
            Some(ip) => format!("ip:{ip}"),
            None => "ip:unknown".to_owned(),
        }
    }
}

fn headers_for(d: &RateDecision, h: &mut HeaderMap) {
    let reset = d.reset_after.as_secs_f64().ceil() as u64;
    h.insert("x-ratelimit-limit", HeaderValue::from(d.limit));
    h.insert("x-ratelimit-remaining", HeaderValue::from(d.remaining));
    h.insert("x-ratelimit-reset", HeaderValue::from(reset));
    h.insert("x-ratelimit-limit-requests", HeaderValue::from(d.limit));
    h.insert(
        "x-ratelimit-remaining-requests",
        HeaderValue::from(d.remaining),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("{reset}s")) {
        h.insert("x-ratelimit-reset-requests", v);
    }
}

impl<S, B> tower::Service<Request<B>> for RateLimit<S>
where
    S: tower::Service<Request<B>, Response = Response<ProxyBody>, Error = ProxyError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<ProxyBody>;
    type Error = ProxyError;
    type Future = BoxFuture<'static, Result<Response<ProxyBody>, ProxyError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if !req.uri().path().starts_with("/v1/") {
            return Box::pin(self.inner.call(req));
        }
        let key = self.key(&req);
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        Box::pin(async move {
            let d = layer.store.acquire(&key).await;
            if !d.allowed {
                layer.metrics.rate_limited.inc();
                let mut rsp = ProxyError::RateLimited {
                    retry_after_secs: d.reset_after.as_secs_f64().ceil().max(1.0) as u64,
                }
                .into_response();
                headers_for(&d, rsp.headers_mut());
                return Ok(rsp);
            }
            let mut rsp = inner.call(req).await?;
            headers_for(&d, rsp.headers_mut());
            Ok(rsp)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use tower::{service_fn, ServiceBuilder, ServiceExt};

    #[tokio::test(start_paused = true)]
    async fn bucket_refills_over_time() {
        let s = LocalBuckets::new(60, 2); // 1 token/s, burst 2
        let t = Instant::now();
        assert!(s.acquire_at("a", t).allowed);
        assert!(s.acquire_at("a", t).allowed);
        let denied = s.acquire_at("a", t);
        assert!(!denied.allowed);
        assert_eq!(denied.reset_after, Duration::from_secs(1));
        assert!(s.acquire_at("b", t).allowed, "buckets are per key");
        assert!(s.acquire_at("a", t + Duration::from_millis(1000)).allowed);
        assert!(!s.acquire_at("a", t + Duration::from_millis(1500)).allowed);
    }

    fn svc(
        trust_proxy: bool,
    ) -> impl tower::Service<Request<()>, Response = Response<ProxyBody>, Error = ProxyError> + Clone
    {
        let trust = if trust_proxy {
            TrustProxy::OneProxy
        } else {
            TrustProxy::Off
        };
        let layer = RateLimitLayer::new(Arc::new(LocalBuckets::new(60, 1)), trust, Metrics::new());
        ServiceBuilder::new()
            .layer(layer)
            .service(service_fn(|_r: Request<()>| {
                Box::pin(async { Ok::<_, ProxyError>(Response::new(ProxyBody::empty())) })
            }))
    }

    fn req(peer: &str, xff: Option<&str>) -> Request<()> {
        let mut b = Request::builder().uri("/v1/models");
        if let Some(x) = xff {
            b = b.header("x-forwarded-for", x);
        }
        let mut r = b.body(()).unwrap();
        r.extensions_mut()
            .insert(PeerAddr(peer.parse::<SocketAddr>().unwrap()));
        r
    }

    #[tokio::test(start_paused = true)]
    async fn over_the_limit_is_429_with_headers() {
        let s = svc(false);
        let ok = s.clone().oneshot(req("10.0.0.1:1", None)).await.unwrap();
        assert_eq!(ok.headers()["x-ratelimit-remaining"], "0");
        let denied = s.clone().oneshot(req("10.0.0.1:2", None)).await.unwrap();
        assert_eq!(denied.status(), 429);
        assert_eq!(denied.headers()["retry-after"], "1");
        assert_eq!(denied.headers()["x-ratelimit-limit"], "1");
    }

    async fn status<S>(s: &S, peer: &str, xff: &str) -> u16
    where
        S: tower::Service<Request<()>, Response = Response<ProxyBody>, Error = ProxyError> + Clone,
    {
        s.clone()
            .oneshot(req(peer, Some(xff)))
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    #[tokio::test(start_paused = true)]
    async fn spoofed_forwarded_for_does_not_bypass() {
        // Without TRUST_PROXY the header is ignored: same socket, same bucket.
        let s = svc(false);
        assert_eq!(status(&s, "10.0.0.1:1", "1.1.1.1").await, 200);
        assert_eq!(status(&s, "10.0.0.1:1", "2.2.2.2").await, 429);
        // With TRUST_PROXY the last hop counts; a forged first hop changes nothing.
        let s = svc(true);
        assert_eq!(status(&s, "127.0.0.1:1", "9.9.9.9, 3.3.3.3").await, 200);
        assert_eq!(status(&s, "127.0.0.1:1", "8.8.8.8, 3.3.3.3").await, 429);
        assert_eq!(status(&s, "127.0.0.1:1", "4.4.4.4").await, 200);
    }
}
