//! Exponential backoff with jitter (`RETRY_*`): the delays of the retry layer (transient
//! upstream failures) and of the core's waits on a busy chat.

use std::time::Duration;

use crate::config::RetryConfig;

/// Full jitter source: maps the capped backoff to the actual delay.
pub(crate) type Jitter = fn(Duration) -> Duration;

/// Uniform in `[0, d]`, from the OS-seeded randomness uuid already uses.
pub(crate) fn full_jitter(d: Duration) -> Duration {
    let r = (crate::common::random_u64() & 0xFFFF_FFFF) as f64 / f64::from(u32::MAX);
    d.mul_f64(r)
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Backoff {
    pub initial: Duration,
    pub max_delay: Duration,
    pub multiplier: f64,
    pub jitter: Jitter,
}

impl Backoff {
    pub(crate) fn from_config(c: &RetryConfig) -> Self {
        Self {
            initial: c.initial_delay,
            max_delay: c.max_delay,
            multiplier: c.multiplier,
            jitter: full_jitter,
        }
    }

    /// Capped exponential delay before retry number `n` (1-based), before jitter:
    /// `min(max_delay, initial × multiplier^(n-1))`.
    pub(crate) fn base(&self, n: u32) -> Duration {
        let factor = self.multiplier.powi(n.saturating_sub(1).min(64) as i32);
        let secs = (self.initial.as_secs_f64() * factor).min(self.max_delay.as_secs_f64());
        Duration::from_secs_f64(secs)
    }

    /// Full jitter: anywhere in `[0, base(n)]` (spreads retries of many clients).
    pub(crate) fn full(&self, n: u32) -> Duration {
        (self.jitter)(self.base(n))
    }

    /// Equal jitter: at least half of `base(n)` (a wait that must really wait, such as
    /// for a busy chat to free itself).
    pub(crate) fn equal(&self, n: u32) -> Duration {
        let b = self.base(n);
        b / 2 + (self.jitter)(b / 2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_with_a_cap_and_jitter_within_it() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max_delay: Duration::from_millis(250),
            multiplier: 2.0,
            jitter: |d| d,
        };
        let ms = |d: Duration| d.as_millis();
        assert_eq!([b.base(1), b.base(2), b.base(3)].map(ms), [100, 200, 250]);
        assert_eq!(ms(b.equal(2)), 200);
        for _ in 0..1000 {
            assert!(full_jitter(Duration::from_millis(100)) <= Duration::from_millis(100));
        }
    }
}
