//! Selection: a lease on the least-loaded usable account (or on a conversation's own),
//! waiting while every usable account is full or pacing; and, when none can take the turn,
//! the error that says why and for how long.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::health::Health;
use super::{Account, Lease, Pool};
use crate::common::epoch_millis;
use crate::error::{ProxyError, UpstreamClass, UpstreamError};

impl Pool {
    /// A lease on the best usable account: the least loaded with room, whose minimum
    /// interval has passed, skipping `avoid`. Waits (up to the queue timeout) while every
    /// usable account is full or pacing; fails at once when none is usable.
    pub async fn acquire(&self, avoid: &[String]) -> Result<Lease, ProxyError> {
        let deadline = Instant::now() + self.settings.queue_timeout;
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let now = Instant::now();
            let now_ms = epoch_millis();
            self.global.check()?;
            let accounts = self.list();
            let usable: Vec<&Arc<Account>> = accounts
                .iter()
                .filter(|a| !avoid.iter().any(|n| n == a.name()))
                .filter(|a| {
                    a.health
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .usable(now_ms)
                })
                .collect();
            if usable.is_empty() {
                // Accounts still signing in (at start, or renewing) are worth waiting for.
                let signing_in = accounts
                    .iter()
                    .any(|a| matches!(a.health(), Health::SigningIn { .. }));
                if signing_in && now < deadline {
                    tokio::select! {
                        _ = &mut freed => {}
                        _ = tokio::time::sleep_until(deadline) => {}
                    }
                    continue;
                }
                return Err(self.none_usable(&accounts, avoid, now_ms));
            }
            let best = usable
                .iter()
                .filter(|a| a.has_room() && a.pace_left(now).is_zero())
                .min_by_key(|a| (a.inflight(), a.turns.load(Ordering::Relaxed)));
            if let Some(a) = best {
                if let Some(caller) = a.caller() {
                    return Ok(a.start_turn(caller));
                }
            }
            // Everyone usable is full or pacing: wait for a slot or the earliest pace.
            let pace = usable
                .iter()
                .filter(|a| a.has_room())
                .map(|a| a.pace_left(now))
                .min();
            if now >= deadline {
                return Err(ProxyError::AccountsBusy {
                    retry_after_secs: pace.map_or(1, |p| p.as_secs().max(1)),
                });
            }
            let wake = pace.map_or(deadline, |p| (now + p).min(deadline));
            tokio::select! {
                _ = &mut freed => {}
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    /// A lease on the named account (a conversation's chat belongs to it). `None` when the
    /// account is gone or not usable: the conversation moves to a fresh chat elsewhere.
    pub async fn acquire_on(&self, name: &str) -> Option<Result<Lease, ProxyError>> {
        let deadline = Instant::now() + self.settings.queue_timeout;
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Err(e) = self.global.check() {
                return Some(Err(e));
            }
            let account = self.get(name)?;
            if !account.health().usable(epoch_millis()) {
                return None;
            }
            let now = Instant::now();
            let pace = account.pace_left(now);
            if account.has_room() && pace.is_zero() {
                let caller = account.caller()?;
                return Some(Ok(account.start_turn(caller)));
            }
            if now >= deadline {
                return Some(Err(ProxyError::AccountsBusy {
                    retry_after_secs: pace.as_secs().max(1),
                }));
            }
            let wake = (now + pace).min(deadline);
            tokio::select! {
                _ = &mut freed => {}
                _ = tokio::time::sleep_until(if pace.is_zero() { deadline } else { wake }) => {}
            }
        }
    }

    /// Whether a turn could move to another usable account than those in `avoid`.
    pub fn can_move(&self, avoid: &[String]) -> bool {
        let now = epoch_millis();
        self.list()
            .iter()
            .any(|a| !avoid.iter().any(|n| n == a.name()) && a.health().usable(now))
    }

    /// The error for "no account can take the turn" as things stand.
    pub fn unavailable(&self) -> ProxyError {
        self.none_usable(&self.list(), &[], epoch_millis())
    }

    /// The pause a client should wait because of challenges: the pause of everyone after
    /// a chat challenge, or — when no account is usable — the earliest quarantine's end.
    pub fn challenge_pause(&self) -> Option<Duration> {
        if let Some(left) = self.global.remaining() {
            return Some(left);
        }
        let now = epoch_millis();
        let accounts = self.list();
        if accounts.iter().any(|a| a.health().usable(now)) {
            return None;
        }
        accounts
            .iter()
            .filter_map(|a| match a.health() {
                Health::Quarantined { until_ms, .. } => Some(until_ms),
                _ => None,
            })
            .min()
            .map(|until| Duration::from_millis(until.saturating_sub(now)))
    }

    /// Why nothing is usable, as the client's error: 429 with the earliest `Retry-After`
    /// when every account that comes back is cooling on its quota; 503 with the earliest
    /// return when quarantines are involved; 503 `no_usable_account` when none comes back
    /// by itself.
    fn none_usable(&self, accounts: &[Arc<Account>], avoid: &[String], now_ms: u64) -> ProxyError {
        let mut quota: Option<u64> = None;
        let mut quarantine: Option<u64> = None;
        let mut signing_in = false;
        for a in accounts {
            let h = a
                .health
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .at(now_ms);
            match h {
                Health::Cooling { until_ms, .. } => {
                    quota = Some(quota.map_or(until_ms, |q| q.min(until_ms)));
                }
                Health::Quarantined { until_ms, .. } => {
                    quarantine = Some(quarantine.map_or(until_ms, |q| q.min(until_ms)));
                }
                Health::SigningIn { .. } => signing_in = true,
                // Usable but excluded by `avoid`: this request already failed there.
                Health::Ready if avoid.iter().any(|n| n == a.name()) => {}
                _ => {}
            }
        }
        let secs = |until: u64| until.saturating_sub(now_ms).div_ceil(1000).max(1);
        match (quota, quarantine) {
            (Some(q), None) => {
                let mut e = UpstreamError::new(
                    UpstreamClass::RateLimited,
                    "every account has reached its daily quota",
                );
                e.retry_after = Some(Duration::from_secs(secs(q)));
                e.into()
            }
            (q, Some(c)) => ProxyError::UpstreamCoolingDown {
                retry_after_secs: secs(q.map_or(c, |q| q.min(c))),
            },
            (None, None) => ProxyError::NoUsableAccount {
                summary: self.unusable_detail(accounts, now_ms),
                retry_after_secs: signing_in
                    .then(|| self.settings.signin_interval.as_secs().max(5)),
            },
        }
    }

    /// `1 invalid: default (the token was refused …)`: the counts, then the first few
    /// accounts out of rotation with their reasons (names and reasons are never secrets).
    fn unusable_detail(&self, accounts: &[Arc<Account>], now_ms: u64) -> String {
        let mut out = self.counts().describe();
        let reasons: Vec<String> = accounts
            .iter()
            .map(|a| (a, a.health()))
            .filter(|(_, h)| !h.usable(now_ms))
            .take(3)
            .map(|(a, h)| match h.reason() {
                Some(r) => format!("{} is {}: {r}", a.name(), h.label()),
                None => format!("{} is {}", a.name(), h.label()),
            })
            .collect();
        if !reasons.is_empty() {
            out.push_str("; ");
            out.push_str(&reasons.join("; "));
        }
        out
    }
}
