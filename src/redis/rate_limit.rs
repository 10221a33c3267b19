//! Rate-limit buckets in Redis, shared by every instance: one atomic Lua script per request,
//! on Redis's clock. Key `qp:rl:<client>`. If Redis does not answer, the instance falls back
//! to its own buckets (limits then hold per instance) and says so once in the log.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::time::Instant;

use super::RedisClient;
use crate::common::BoxFuture;
use crate::rate::{decision, LocalBuckets, RateDecision, RateLimitStore};

/// Token bucket in Redis (one Lua script, atomic across instances; Redis's clock).
pub const RATE_LIMIT_SCRIPT: &str = "\
local rate = tonumber(ARGV[1]) local burst = tonumber(ARGV[2]) \
local t = redis.call('TIME') local now = t[1] * 1000 + math.floor(t[2] / 1000) \
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts') \
local tokens = tonumber(b[1]) or burst local ts = tonumber(b[2]) or now \
tokens = math.min(burst, tokens + (now - ts) / 1000 * rate) \
local allowed = 0 if tokens >= 1 then tokens = tokens - 1 allowed = 1 end \
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', now) \
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000) \
return {allowed, tostring(tokens)}";

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
            let reply: Result<(i64, String), _> = self
                .client
                .eval(RATE_LIMIT_SCRIPT, &[&k], &[&rate, &burst])
                .await;
            let parsed = reply
                .ok()
                .and_then(|(allowed, tokens)| Some((allowed == 1, tokens.parse::<f64>().ok()?)));
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
