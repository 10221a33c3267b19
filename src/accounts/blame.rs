//! What an upstream failure says about the account that got it, applied to its health:
//! the quota cools it, a challenge quarantines it (or, when several accounts are challenged
//! at once, pauses everyone without blame), 403 takes it out; every change is counted,
//! logged and shared.

use super::health::Health;
use super::{Account, Blame, Pool};
use crate::common::epoch_millis;
use crate::error::{ProxyError, UpstreamClass};

impl Pool {
    /// What `e` says about the account of `lease`, applied to its health.
    pub fn blame(&self, account: &Account, e: &ProxyError) -> Blame {
        let Some(class) = e.upstream_class() else {
            return Blame::None;
        };
        let now = epoch_millis();
        let blame = match class {
            UpstreamClass::RateLimited => {
                // `num` hours when the upstream said; a day otherwise (peers' default).
                let wait = match e {
                    ProxyError::Upstream(u) => u.retry_after,
                    _ => None,
                }
                .map_or(86_400_000, |d| d.as_millis() as u64);
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
    }

    fn share(&self, account: &Account) {
        if let Some(shared) = &self.shared {
            shared.publish_health(account);
        }
    }
}
