//! Token buckets for the proxy's own rate limit (`RATE_LIMIT_RPM` / `RATE_LIMIT_BURST`): the
//! decision type, the store trait (a shared backend plugs in: `redis::rate_limit`) and the
//! in-process buckets. The layer that applies them is `layers::rate_limit`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use hyper::header::{HeaderMap, HeaderValue};
use tokio::time::Instant;

use crate::common::BoxFuture;

/// The outcome of taking one token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateDecision {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// Denied: time until a token is available. Allowed: time until the bucket is full.
    pub reset_after: Duration,
}

impl RateDecision {
    /// `x-ratelimit-*` headers (and the OpenAI `x-ratelimit-*-requests` names) for this
    /// decision; on every `/v1/*` response, allowed or not.
    pub fn write_headers(&self, h: &mut HeaderMap) {
        let reset = self.reset_after.as_secs_f64().ceil() as u64;
        h.insert("x-ratelimit-limit", HeaderValue::from(self.limit));
        h.insert("x-ratelimit-remaining", HeaderValue::from(self.remaining));
        h.insert("x-ratelimit-reset", HeaderValue::from(reset));
        h.insert("x-ratelimit-limit-requests", HeaderValue::from(self.limit));
        h.insert(
            "x-ratelimit-remaining-requests",
            HeaderValue::from(self.remaining),
        );
        if let Ok(v) = HeaderValue::from_str(&format!("{reset}s")) {
            h.insert("x-ratelimit-reset-requests", v);
        }
    }

    /// Whole seconds to wait before a token is available (at least 1).
    pub fn retry_after_secs(&self) -> u64 {
        self.reset_after.as_secs_f64().ceil().max(1.0) as u64
    }
}

pub(crate) trait RateLimitStore: Send + Sync + 'static {
    /// Take one token for `key`. Never fails: a shared backend that cannot answer falls
    /// back to local buckets (limits then hold per instance).
    fn acquire<'a>(&'a self, key: &'a str) -> BoxFuture<'a, RateDecision>;
}

/// In-process token buckets.
#[derive(Debug)]
pub(crate) struct LocalBuckets {
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
    pub(crate) fn new(per_minute: u32, burst: u32) -> Self {
        Self {
            per_sec: f64::from(per_minute) / 60.0,
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Take a token at `now` (explicit for tests with paused time).
    pub(crate) fn acquire_at(&self, key: &str, now: Instant) -> RateDecision {
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

pub(crate) fn decision(allowed: bool, tokens: f64, per_sec: f64, burst: f64) -> RateDecision {
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

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn headers_name_limit_remaining_and_reset() {
        let d = RateDecision {
            allowed: false,
            limit: 5,
            remaining: 0,
            reset_after: Duration::from_millis(1500),
        };
        let mut h = HeaderMap::new();
        d.write_headers(&mut h);
        assert_eq!(h["x-ratelimit-limit"], "5");
        assert_eq!(h["x-ratelimit-remaining"], "0");
        assert_eq!(h["x-ratelimit-reset"], "2");
        assert_eq!(h["x-ratelimit-reset-requests"], "2s");
        assert_eq!(d.retry_after_secs(), 2);
    }
}
