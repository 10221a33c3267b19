//! Sticky server-side state set by `@@sim:` account directives (or the control endpoints
//! of `control.rs`): a used-up daily quota, a challenge or a ban of one account, and the
//! chat challenge that hits every account. Each lasts until its time is over (a ban, for
//! good; it also ends the account's running streams). Accounts are keyed by who owns their
//! chats: the account id in strict mode, the raw token out of the box.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::time::Instant;

use super::scenario::AccountDirectives;

#[derive(Debug, Default)]
pub struct Penalties {
    accounts: HashMap<String, AccountPenalty>,
    /// Until when every completion of every account draws the challenge.
    chat_challenge_until: Option<Instant>,
}

#[derive(Debug, Default)]
struct AccountPenalty {
    /// The quota is used up until then; `num` of the RateLimited document is the hours
    /// the directive gave.
    quota: Option<(Instant, f64)>,
    challenge_until: Option<Instant>,
    /// Banned for good. Shared with the account's running streams, which end with an
    /// in-stream error at their next frame boundary once it is set (`body.rs`).
    banned: Arc<AtomicBool>,
    /// The next completion finds its token expired (once; `control.rs`).
    expire_next: bool,
}

/// Why an account's completion is refused, most severe first.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Refusal {
    Banned,
    /// The daily quota document, with its `num` (hours).
    Quota(f64),
    /// The punish document (the account's own challenge or the chat challenge).
    Challenge,
}

impl Penalties {
    /// Apply a completion's directives for `account` from `now` on.
    pub fn impose(&mut self, account: &str, d: &AccountDirectives, now: Instant) {
        if let Some(lasts) = d.chat_challenge {
            self.chat_challenge_until = Some(now + lasts);
        }
        if d.quota.is_none() && d.challenge.is_none() && !d.ban {
            return;
        }
        let p = self.account(account);
        if let Some(q) = d.quota {
            p.quota = Some((now + q.lasts, q.hours));
        }
        if let Some(lasts) = d.challenge {
            p.challenge_until = Some(now + lasts);
        }
        if d.ban {
            p.banned.store(true, Ordering::Relaxed);
        }
    }

    fn account(&mut self, account: &str) -> &mut AccountPenalty {
        self.accounts.entry(account.to_owned()).or_default()
    }

    /// The signal a stream of `account` watches: set when the account is banned.
    pub fn ban_signal(&mut self, account: &str) -> Arc<AtomicBool> {
        self.account(account).banned.clone()
    }

    /// Arm the one-shot expiry: the next completion of `account` finds its token expired.
    pub fn expire_next(&mut self, account: &str) {
        self.account(account).expire_next = true;
    }

    /// Whether the one-shot expiry is armed for `account` (it is used up by asking).
    pub fn take_expiry(&mut self, account: &str) -> bool {
        self.accounts
            .get_mut(account)
            .is_some_and(|p| std::mem::take(&mut p.expire_next))
    }

    /// What a completion of `account` draws at `now`, if anything.
    pub fn completion_refusal(&self, account: &str, now: Instant) -> Option<Refusal> {
        let p = self.accounts.get(account);
        if p.is_some_and(|p| p.banned.load(Ordering::Relaxed)) {
            return Some(Refusal::Banned);
        }
        if let Some((_, hours)) = p.and_then(|p| p.quota).filter(|(until, _)| now < *until) {
            return Some(Refusal::Quota(hours));
        }
        let challenged = p.and_then(|p| p.challenge_until).is_some_and(|t| now < t)
            || self.chat_challenge_until.is_some_and(|t| now < t);
        challenged.then_some(Refusal::Challenge)
    }

    pub fn is_banned(&self, account: &str) -> bool {
        self.accounts
            .get(account)
            .is_some_and(|p| p.banned.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::sim::scenario::QuotaHold;

    #[test]
    fn each_penalty_lasts_its_time_and_hits_whom_it_should() {
        let mut p = Penalties::default();
        let t0 = Instant::now();
        let secs = Duration::from_secs;
        let quota = AccountDirectives {
            quota: Some(QuotaHold {
                hours: 0.01,
                lasts: secs(36),
            }),
            ..Default::default()
        };
        p.impose("a", &quota, t0);
        assert_eq!(p.completion_refusal("a", t0), Some(Refusal::Quota(0.01)));
        assert_eq!(
            p.completion_refusal("a", t0 + secs(35)),
            Some(Refusal::Quota(0.01))
        );
        assert_eq!(p.completion_refusal("a", t0 + secs(36)), None);
        assert_eq!(p.completion_refusal("b", t0), None, "one account only");

        let challenge = AccountDirectives {
            challenge: Some(secs(5)),
            ..Default::default()
        };
        p.impose("c", &challenge, t0);
        assert_eq!(
            p.completion_refusal("c", t0 + secs(4)),
            Some(Refusal::Challenge)
        );
        assert_eq!(p.completion_refusal("c", t0 + secs(5)), None);
        assert_eq!(p.completion_refusal("a", t0 + secs(40)), None);

        let chat = AccountDirectives {
            chat_challenge: Some(secs(30)),
            ..Default::default()
        };
        let t1 = t0 + secs(100);
        p.impose("a", &chat, t1);
        for who in ["a", "b", "never-seen"] {
            assert_eq!(
                p.completion_refusal(who, t1 + secs(29)),
                Some(Refusal::Challenge)
            );
            assert_eq!(p.completion_refusal(who, t1 + secs(30)), None);
        }

        let ban = AccountDirectives {
            ban: true,
            ..Default::default()
        };
        let running = p.ban_signal("b");
        assert!(!running.load(Ordering::Relaxed));
        p.impose("b", &ban, t0);
        assert!(p.is_banned("b") && !p.is_banned("a"));
        assert!(
            running.load(Ordering::Relaxed),
            "its running streams are told"
        );
        assert!(!p.ban_signal("a").load(Ordering::Relaxed));
        assert_eq!(
            p.completion_refusal("b", t0 + secs(86_400 * 365)),
            Some(Refusal::Banned)
        );
    }

    #[test]
    fn an_armed_expiry_is_used_once() {
        let mut p = Penalties::default();
        assert!(!p.take_expiry("a"));
        p.expire_next("a");
        assert!(!p.take_expiry("b"), "one account only");
        assert!(p.take_expiry("a"));
        assert!(!p.take_expiry("a"), "once");
    }
}
