//! The WAF's sign-in wall: beyond `--signin-limit` sign-ins (v1 and v2, any outcome) in a
//! sliding window of six minutes, a sign-in gets the slider page instead of an answer.
//! Refreshes of a session do not count.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// How far back the wall looks.
pub(super) const SIGNIN_WINDOW: Duration = Duration::from_secs(6 * 60);

/// The default `--signin-limit`.
pub(super) const DEFAULT_SIGNIN_LIMIT: usize = 12;

/// The times of recent sign-in attempts (oldest first, none older than the window).
#[derive(Debug, Default)]
pub struct SigninWall {
    recent: VecDeque<Instant>,
}

impl SigninWall {
    /// Record an attempt at `now`; `false` when it is beyond `limit` in the window. Refused
    /// attempts count too: the WAF counts requests, not successes.
    pub fn admit(&mut self, now: Instant, limit: usize) -> bool {
        while self
            .recent
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= SIGNIN_WINDOW)
        {
            self.recent.pop_front();
        }
        self.recent.push_back(now);
        self.recent.len() <= limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_attempt_beyond_the_limit_is_walled_until_the_window_slides() {
        let mut wall = SigninWall::default();
        let t0 = Instant::now();
        let second = Duration::from_secs(1);
        for i in 0..3 {
            assert!(wall.admit(t0 + second * i, 3), "attempt {}", i + 1);
        }
        assert!(!wall.admit(t0 + second * 3, 3), "the 4th within the window");
        // The first attempt leaves the window at t0 + 6 min; the walled one still counts.
        assert!(!wall.admit(t0 + SIGNIN_WINDOW - second, 3));
        assert!(wall.admit(t0 + SIGNIN_WINDOW + second * 2, 3));
        assert_eq!(wall.recent.len(), 3);
    }
}
