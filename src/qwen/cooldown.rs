//! The pause after an anti-bot challenge (`CHALLENGE_COOLDOWN`).
//!
//! A challenged account that keeps sending gets a deeper block (qwen-protocol §7.3: the
//! risk score decays over minutes; peers stop and wait). After a challenge, completions
//! fail at once with `503 upstream_challenge_cooldown` and the time left, without any
//! upstream call, until the period is over; `/health` says `degraded` with the reason and
//! the metric `upstream_challenge_cooldown_seconds` shows the time left.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::ProxyError;

#[derive(Debug)]
pub struct ChallengeCooldown {
    period: Duration,
    until: Mutex<Option<Instant>>,
}

impl ChallengeCooldown {
    /// `period` zero turns the pause off.
    pub fn new(period: Duration) -> Self {
        Self {
            period,
            until: Mutex::new(None),
        }
    }

    /// Time left in the pause, if one is running.
    pub fn remaining(&self) -> Option<Duration> {
        let until = *self.until.lock().unwrap_or_else(|p| p.into_inner());
        until
            .map(|u| u.saturating_duration_since(Instant::now()))
            .filter(|d| !d.is_zero())
    }

    /// Fail fast while paused.
    pub fn check(&self) -> Result<(), ProxyError> {
        match self.remaining() {
            Some(left) => Err(ProxyError::UpstreamCoolingDown {
                retry_after_secs: left.as_secs_f64().ceil() as u64,
            }),
            None => Ok(()),
        }
    }

    /// The upstream challenged a request: pause from now. Returns the pause, or `None`
    /// when pausing is off.
    pub fn trigger(&self) -> Option<Duration> {
        if self.period.is_zero() {
            return None;
        }
        *self.until.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + self.period);
        tracing::warn!(
            cooldown_secs = self.period.as_secs(),
            "upstream challenged the account (anti-bot); pausing upstream completions"
        );
        Some(self.period)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn pauses_for_the_period_then_lets_requests_through() {
        let c = ChallengeCooldown::new(Duration::from_secs(300));
        assert!(c.check().is_ok());
        assert_eq!(c.trigger(), Some(Duration::from_secs(300)));
        tokio::time::advance(Duration::from_secs(100)).await;
        assert_eq!(
            c.check(),
            Err(ProxyError::UpstreamCoolingDown {
                retry_after_secs: 200
            })
        );
        tokio::time::advance(Duration::from_secs(200)).await;
        assert!(c.check().is_ok());
        assert_eq!(c.remaining(), None);
    }

    #[test]
    fn zero_turns_it_off() {
        let c = ChallengeCooldown::new(Duration::ZERO);
        assert_eq!(c.trigger(), None);
        assert!(c.check().is_ok());
    }
}
