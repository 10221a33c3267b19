//! What an upstream failure says about the account that got it, applied to its health:
//! the quota cools it, a challenge quarantines it (or, when several accounts are challenged
//! at once, pauses everyone without blame), 403 takes it out; every change is counted,
//! logged and shared.

use super::health::Health;
use super::{Account, Blame, Pool};
use crate::common::epoch_millis;
use crate::error::{ProxyError, UpstreamClass};

/// The longest cooldown an upstream answer can ask for (a `num` of hours is untrusted input),
/// and the shortest (a `Retry-After: 0` on a quota answer is not "no pause").
const MAX_QUOTA_WAIT_MS: u64 = 7 * 86_400_000;
const MIN_QUOTA_WAIT_MS: u64 = 30_000;
/// A rate limit that says neither how long nor that it is the daily quota (a bare 429,
/// `ParallelLimited`): a short pause, not a day.
const SHORT_RATE_LIMIT_MS: u64 = 60_000;

/// How long an account cools after a rate limit. The upstream's wait when it gives one
/// (`num` hours, `Retry-After`: at least 30 s, at most a week); else by its code: the daily
/// quota (`RateLimited`, `quotaLimited`, `ExceedLimit`, `quota_exhausted`, or its English
/// text) a day, as peers do; anything else — a bare 429, `ParallelLimited`, the model
/// backend's "Allocated quota exceeded" (E14, not the account's day) — a minute.
pub(crate) fn quota_wait(e: &ProxyError) -> u64 {
    let ProxyError::Upstream(u) = e else {
        return SHORT_RATE_LIMIT_MS;
    };
    if let Some(d) = u.retry_after {
        return u64::try_from(d.as_millis())
            .unwrap_or(u64::MAX)
            .clamp(MIN_QUOTA_WAIT_MS, MAX_QUOTA_WAIT_MS);
    }
    // `detail` is "code: details" (qwen::classify).
    let detail = u.detail.to_ascii_lowercase();
    let code = detail.split(':').next().unwrap_or("").trim();
    let daily_code = matches!(
        code,
        "ratelimited" | "quotalimited" | "exceedlimit" | "quota_exhausted"
    );
    let backend = detail.contains("allocated quota exceeded");
    let daily_text = ["today", "daily", "upper limit"]
        .iter()
        .any(|w| detail.contains(w));
    if daily_code || (daily_text && !backend) {
        86_400_000
    } else {
        SHORT_RATE_LIMIT_MS
    }
}

impl Pool {
    /// What `e` says about the account of `lease`, applied to its health.
    pub fn blame(&self, account: &Account, e: &ProxyError) -> Blame {
        let Some(class) = e.upstream_class() else {
            return Blame::None;
        };
        let now = epoch_millis();
        let blame = match class {
            UpstreamClass::RateLimited => {
                let wait = quota_wait(e);
                self.transition(account, "rate_limited", |h| h.quota_reached(now, wait));
                Blame::Quota
            }
            UpstreamClass::Challenge => self.challenged(account, now),
            UpstreamClass::AuthFailed => Blame::Expired,
            UpstreamClass::Forbidden => {
                self.transition(account, "forbidden", |_| Health::Forbidden {
                    reason: "the upstream refused the account (403: banned or disabled)".to_owned(),
                });
                Blame::Forbidden
            }
            _ => Blame::None,
        };
        if blame != Blame::None {
            account.note_error(e.to_string());
        }
        blame
    }

    /// A challenge: quarantine the account — unless another account was challenged within
    /// the pause, which makes it the chat challenge that follows the time of day: lift
    /// those quarantines, pause everyone once.
    fn challenged(&self, account: &Account, now: u64) -> Blame {
        let base = self.settings.challenge_base.as_millis() as u64;
        let others: Vec<String> = {
            let mut recent = self.challenges.lock().unwrap_or_else(|p| p.into_inner());
            while recent.front().is_some_and(|(_, at)| at + base < now) {
                recent.pop_front();
            }
            let others = recent
                .iter()
                .filter(|(n, _)| n != account.name())
                .map(|(n, _)| n.clone())
                .collect::<Vec<_>>();
            recent.push_back((account.name().to_owned(), now));
            others
        };
        if others.is_empty() || self.list().len() < 2 {
            self.transition(account, "challenge", |h| {
                h.challenged(now, base, "anti-bot challenge")
            });
            return Blame::Challenged;
        }
        for name in others.iter().map(String::as_str).chain([account.name()]) {
            if let Some(a) = self.get(name) {
                // Forgive: it was not the account.
                let (before, _) = a.update_health(|h| match h {
                    Health::Quarantined { .. } => Health::Ready,
                    h => h.clone(),
                });
                if matches!(before, Health::Quarantined { .. }) {
                    self.share(&a);
                }
            }
        }
        self.global.trigger();
        self.metrics
            .account_cooldowns
            .with_label_values(&["chat_challenge"])
            .inc();
        self.publish_gauges();
        Blame::ChatChallenge
    }

    /// The account's credentials are refused for good (until reload or enable).
    pub fn invalidate(&self, account: &Account, reason: &str) {
        account.note_error(reason.to_owned());
        self.transition(account, "invalid", |_| Health::Invalid {
            reason: reason.to_owned(),
        });
    }

    /// A good answer on the account: strikes forgiven.
    pub fn answered(&self, account: &Account) {
        let (before, after) = account.update_health(|h| h.answered(epoch_millis()));
        if before != after {
            self.share(account);
            self.publish_gauges();
        }
    }

    /// Change an account's health; count the cooldown, tell the other instances, log it.
    pub(crate) fn transition(
        &self,
        account: &Account,
        reason: &'static str,
        f: impl FnOnce(&Health) -> Health,
    ) {
        let (before, after) = account.update_health(f);
        if before == after {
            return;
        }
        if !matches!(after, Health::Ready | Health::SigningIn { .. }) {
            self.metrics
                .account_cooldowns
                .with_label_values(&[reason])
                .inc();
        }
        tracing::warn!(
            account = %crate::untrusted::Untrusted(account.name()),
            from = before.label(),
            to = after.label(),
            reason = after.reason().unwrap_or(""),
            "account state changed"
        );
        self.share(account);
        self.publish_gauges();
        // A state change can make an account usable (or not) for waiting requests.
        self.freed.notify_waiters();
    }

    /// Tell the other instances.
    fn share(&self, account: &Account) {
        if let Some(shared) = &self.shared {
            shared.publish_health(account);
        }
    }
}
