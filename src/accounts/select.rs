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
    /// A lease on the best usable account: the least loaded with room whose minimum
    /// interval has passed (ties: the one that started a turn longest ago), skipping
    /// `avoid`. Waits (up to the queue timeout) while every usable account is full or
    /// pacing, or while none is usable but some are still signing in; fails at once when
    /// none is usable otherwise.
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
                .filter(|a| !avoid.iter().any(|n| n == a.name()) && a.takes_turns(now_ms))
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
            if let Some(lease) = self.claim(&usable) {
                return Ok(lease);
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
    /// account is gone or cannot take turns: the conversation moves to a fresh chat
    /// elsewhere.
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
            if !account.takes_turns(epoch_millis()) {
                return None;
            }
            if let Some(lease) = self.claim(&[&account]) {
                return Some(Ok(lease));
            }
            let now = Instant::now();
            let pace = account.pace_left(now);
            if now >= deadline {
                return Some(Err(ProxyError::AccountsBusy {
                    retry_after_secs: pace.as_secs().max(1),
                }));
            }
            // Full: a freed slot wakes us; pacing: its end does.
            let wake = if pace.is_zero() {
                deadline
            } else {
                (now + pace).min(deadline)
            };
            tokio::select! {
                _ = &mut freed => {}
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    /// Pick among `candidates` and take the slot, as one step: concurrent requests on the
    /// multi-threaded runtime must not both see the last slot free, or both pass the same
    /// interval.
    fn claim(&self, candidates: &[&Arc<Account>]) -> Option<Lease> {
        let _one_at_a_time = self.claiming.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let best = candidates
            .iter()
            .filter(|a| a.has_room() && a.pace_left(now).is_zero())
            .min_by_key(|a| (a.inflight(), a.last_start.load(Ordering::Relaxed)))?;
        let caller = best.caller()?;
        let seq = self.starts.fetch_add(1, Ordering::Relaxed) + 1;
        Some(best.start_turn(caller, seq))
    }

    /// Whether a turn could move to another usable account than those in `avoid`.
    pub fn can_move(&self, avoid: &[String]) -> bool {
        let now = epoch_millis();
        self.list()
            .iter()
            .any(|a| !avoid.iter().any(|n| n == a.name()) && a.takes_turns(now))
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
        if accounts.iter().any(|a| a.takes_turns(now)) {
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

    /// `1 invalid (the token was refused …)`: the counts, then the distinct reasons of the
    /// accounts out of rotation. API clients see this: no account names (operators find
    /// them on `/health` and the admin API), and reasons never hold a secret.
    fn unusable_detail(&self, accounts: &[Arc<Account>], now_ms: u64) -> String {
        let mut out = self.counts().describe();
        let mut reasons: Vec<String> = Vec::new();
        for a in accounts {
            let h = a.health();
            if h.usable(now_ms) {
                continue;
            }
            let reason = match h.reason() {
                Some(r) => format!("{}: {r}", h.label()),
                None => h.label().to_owned(),
            };
            if !reasons.contains(&reason) && reasons.len() < 3 {
                reasons.push(reason);
            }
        }
        if !reasons.is_empty() {
            out.push_str(" — ");
            out.push_str(&reasons.join("; "));
        }
        out
    }
}
