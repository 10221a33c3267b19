//! Account state in Redis (`REDIS_URL`), so that several instances agree on which account
//! is cooling, quarantined or disabled, and tokens survive a restart (an auth-domain
//! refresh token is rotated on every use: the newest must outlive the process).
//!
//! Keys (one hash tag per account, so an account's keys share a Cluster slot — the renewal
//! lock with the token it guards):
//! * `qp:acct:{<name>}:health` → `{"changed_ms", "health", "spec"}`: the newest change wins
//!   (every instance publishes its own changes and adopts newer ones at each sync, every
//!   few seconds);
//! * `qp:acct:{<name>}:operator` → `{"disabled", "at_ms", "spec"}`: an operator's last
//!   disable or enable (no expiry), the newest wins;
//! * `qp:acct:{<name>}:token` → `{"spec", "token"}`, kept as long as its refresh token lives;
//! * `qp:acct:{<name>}:renewing` → the instance renewing the token (so a rotating refresh
//!   token is never presented twice).
//!
//! Before the hash tag these were `qp:acct:<name>:…` (and a disable was the key
//! `…:disabled`): a token or a disable found only there is still honoured.
//!
//! **An operator's verdict outlives Redis.** Each instance keeps the last disable or enable
//! it made or adopted, and at each sync compares it with Redis: a newer one there is
//! adopted; an older one, or none (Redis restarted empty, or the verdict was given while
//! Redis was away), is replaced by its own. So a disable holds through a Redis restart on
//! every instance that knew it, and a disable given during an outage holds on its instance
//! at once and on the others once Redis is back. Verdicts are ordered by the wall clock of
//! the instance that gave them (instances keep their clocks in sync). What no instance
//! remembers — every instance restarted while Redis was empty — is lost.
//!
//! `spec` is the fingerprint of the entry's credentials: what was recorded about other
//! credentials under the same name (a new cookie, a new password) is ignored; editing its
//! pacing or proxy keeps it. Redis trouble never stops the proxy: each instance then goes
//! on with what it knows.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::credential::Token;
use super::health::Health;
use super::{Account, Pool};
use crate::redis::{RedisClient, RedisError};

/// A refresh token lives 30 days upstream.
const REFRESH_TOKEN_SECS: u64 = 30 * 86_400;
/// Longest a renewal may hold the shared lock (a paced sign-in included).
const RENEWAL_LOCK_MS: u64 = 120_000;

/// 1 when `ARGV[1]` holds the lock now (taken, or already its own: a retried call), else 0.
const LOCK: &str = "local v = redis.call('get', KEYS[1]) \
    if v == false then redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 \
    elseif v == ARGV[1] then return 1 else return 0 end";
const UNLOCK: &str =
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";
/// Store a verdict unless Redis holds one at least as new: 1 if stored.
const PUT_VERDICT: &str = "local cur = redis.call('get', KEYS[1]) \
    if cur then local ok, v = pcall(cjson.decode, cur) \
      if ok and type(v) == 'table' and tonumber(v['at_ms']) \
        and tonumber(v['at_ms']) >= tonumber(ARGV[2]) then return 0 end end \
    redis.call('set', KEYS[1], ARGV[1]) return 1";

#[derive(Debug, Clone)]
pub struct SharedAccounts {
    client: Arc<RedisClient>,
    /// The last operator's verdict this instance gave or adopted, by account name: what it
    /// republishes when Redis lost it or never got it.
    verdicts: Arc<Mutex<HashMap<String, Verdict>>>,
}

#[derive(Serialize, Deserialize)]
struct Stamped {
    changed_ms: u64,
    health: Health,
    /// The account's spec fingerprint: a record about other credentials (the entry was
    /// changed since: a new cookie, a new password) is not adopted.
    #[serde(default)]
    spec: String,
}

#[derive(Serialize, Deserialize)]
struct StoredToken {
    spec: String,
    token: Token,
}

/// An operator's disable or enable of one account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Verdict {
    disabled: bool,
    /// When it was given (Unix ms, the giving instance's clock); the newest wins.
    at_ms: u64,
    /// The credentials it was about.
    spec: String,
}

/// An account's key (`what`: health, operator, token, renewing), under its hash tag.
fn key(name: &str, what: &str) -> String {
    format!("qp:acct:{{{name}}}:{what}")
}

/// The key before the hash tag (read when the new one is missing).
fn legacy_key(name: &str, what: &str) -> String {
    format!("qp:acct:{name}:{what}")
}

/// The shared renewal lock of one account; released when dropped.
pub struct RenewalLock {
    client: Arc<RedisClient>,
    key: String,
    owner: String,
}

impl RenewalLock {
    /// Release it (after the new token is stored). A lock never released (the renewal
    /// was aborted) expires by itself.
    pub async fn release(self) {
        let _ = self
            .client
            .eval::<i64>(UNLOCK, &[&self.key], &[&self.owner])
            .await;
    }
}

impl SharedAccounts {
    pub fn new(client: Arc<RedisClient>) -> Self {
        Self {
            client,
            verdicts: Default::default(),
        }
    }

    /// Tell the other instances (in the background: state changes happen on the request
    /// path). Kept a week: long enough for any pause, short enough not to pile up.
    pub fn publish_health(&self, account: &Account) {
        let stamped = Stamped {
            changed_ms: account.health_changed_ms.load(Ordering::Relaxed),
            health: account.health(),
            spec: account.credentials.clone(),
        };
        self.set(key(account.name(), "health"), stamped, 7 * 86_400);
    }

    /// Keep the token for restarts and the other instances: as long as its refresh token
    /// lives when it has one (the access token may lapse; the refresh token renews it),
    /// else as long as the token.
    pub async fn publish_token(&self, account: &Account, token: &Token) {
        let ttl = match (&token.refresh, token.exp()) {
            (Some(_), _) => REFRESH_TOKEN_SECS,
            (None, Some(exp)) => exp.saturating_sub(crate::common::epoch_secs()).max(1),
            (None, None) => REFRESH_TOKEN_SECS,
        };
        let record = StoredToken {
            spec: account.credentials.clone(),
            token: token.clone(),
        };
        // Awaited: it must be stored before the renewal lock is released.
        if let Err(e) = self
            .set_now(&key(account.name(), "token"), &record, ttl)
            .await
        {
            tracing::warn!(error = %e, "could not store an account's token");
        }
    }

    /// An operator's disable or enable: this instance's verdict from now on (whatever Redis
    /// says until something newer), published at once if Redis answers — awaited, so an
    /// enable sent to another instance than the disable finds it — and at the next syncs
    /// otherwise.
    pub async fn publish_operator(&self, account: &Account, disabled: bool) {
        let name = account.name();
        let verdict = {
            let mut verdicts = self.verdicts.lock().unwrap_or_else(|p| p.into_inner());
            let previous = verdicts.get(name).map_or(0, |v| v.at_ms);
            let verdict = Verdict {
                disabled,
                // Later than the one it replaces, whatever the clock did.
                at_ms: crate::common::epoch_millis().max(previous + 1),
                spec: account.credentials.clone(),
            };
            verdicts.insert(name.to_owned(), verdict.clone());
            verdict
        };
        let published = self.put_verdict(name, &verdict).await.map(drop);
        // A disable from before the hash tag must not outlive this enable.
        let legacy = match (&published, disabled) {
            (Ok(()), false) => self.client.del(&legacy_key(name, "disabled")).await,
            _ => Ok(()),
        };
        if let Err(e) = published.and(legacy) {
            tracing::warn!(
                error = %e,
                account = %crate::untrusted::Untrusted(name),
                "Redis did not take an operator's {}; it holds on this instance and is \
                 published when Redis answers",
                if disabled { "disable" } else { "enable" }
            );
        }
    }

    /// Store `verdict` unless Redis holds a newer one: whether it was stored.
    async fn put_verdict(&self, name: &str, verdict: &Verdict) -> Result<bool, RedisError> {
        let json = serde_json::to_string(verdict).map_err(|e| RedisError(e.to_string()))?;
        let at = verdict.at_ms.to_string();
        let stored: i64 = self
            .client
            .eval(PUT_VERDICT, &[&key(name, "operator")], &[&json, &at])
            .await?;
        Ok(stored == 1)
    }

    /// The operator's verdict on `account` that holds now: Redis's when newer than this
    /// instance's (then adopted), else this instance's (then published again: Redis lost
    /// it, or never had it). `Err` when Redis did not answer.
    async fn operator_verdict(&self, account: &Account) -> Result<Option<Verdict>, ()> {
        let name = account.name();
        let stored = match self.get_checked(&key(name, "operator")).await? {
            Some(json) => serde_json::from_str::<Verdict>(&json).ok(),
            // Before the hash tag: a disable was a key holding the spec, as old as can be.
            None => self
                .get_checked(&legacy_key(name, "disabled"))
                .await?
                .map(|spec| Verdict {
                    disabled: true,
                    at_ms: 0,
                    spec,
                }),
        }
        .filter(|v| v.spec == account.credentials);
        let (holds, republish) = {
            let mut verdicts = self.verdicts.lock().unwrap_or_else(|p| p.into_inner());
            let mine = verdicts
                .get(name)
                .filter(|v| v.spec == account.credentials)
                .cloned();
            match (mine, stored) {
                (Some(mine), Some(theirs)) if theirs.at_ms > mine.at_ms => {
                    verdicts.insert(name.to_owned(), theirs.clone());
                    (Some(theirs), false)
                }
                (Some(mine), theirs) => {
                    let lost = theirs.as_ref() != Some(&mine);
                    (Some(mine), lost)
                }
                (None, Some(theirs)) => {
                    verdicts.insert(name.to_owned(), theirs.clone());
                    (Some(theirs), false)
                }
                (None, None) => (None, false),
            }
        };
        if let Some(verdict) = holds.as_ref().filter(|_| republish) {
            match self.put_verdict(name, verdict).await {
                // Redis holds one as new (about other credentials, or just written by
                // another instance: adopted at the next sync if about these).
                Ok(false) => {}
                Ok(true) => tracing::info!(
                    account = %crate::untrusted::Untrusted(name),
                    disabled = verdict.disabled,
                    "an operator's verdict Redis did not hold is published again"
                ),
                Err(e) => tracing::debug!(error = %e, "an operator's verdict not published yet"),
            }
        }
        Ok(holds)
    }

    /// `SET key value EX ttl`, the value as JSON.
    async fn set_now(
        &self,
        key: &str,
        value: &impl Serialize,
        ttl_secs: u64,
    ) -> Result<(), RedisError> {
        let json = serde_json::to_string(value).map_err(|e| RedisError(e.to_string()))?;
        self.client
            .set(key, &json, Some(Duration::from_secs(ttl_secs)))
            .await
    }

    /// The same in the background (a state change on the request path).
    fn set(&self, key: String, value: impl Serialize + Send + Sync + 'static, ttl_secs: u64) {
        let shared = self.clone();
        tokio::spawn(async move {
            if let Err(e) = shared.set_now(&key, &value, ttl_secs).await {
                tracing::warn!(error = %e, "could not share an account's state");
            }
        });
    }

    async fn get(&self, key: &str) -> Option<String> {
        self.get_checked(key).await.ok().flatten()
    }

    /// The value, `Ok(None)` when absent, `Err` when Redis did not answer.
    async fn get_checked(&self, key: &str) -> Result<Option<String>, ()> {
        self.client.get(key).await.map_err(|e| {
            tracing::debug!(error = %e, "account state not readable from redis");
        })
    }

    /// Take the account's renewal lock, unless another instance holds it (`None`). With
    /// Redis unreachable, each instance renews on its own (`Some`, holding nothing).
    pub async fn lock_renewal(&self, name: &str) -> Option<Option<RenewalLock>> {
        let key = key(name, "renewing");
        let owner = crate::common::random_uuid().to_string();
        let ttl = RENEWAL_LOCK_MS.to_string();
        match self
            .client
            .eval::<i64>(LOCK, &[&key], &[&owner, &ttl])
            .await
        {
            Ok(1) => Some(Some(RenewalLock {
                client: self.client.clone(),
                key,
                owner,
            })),
            Ok(_) => None,
            Err(_) => Some(None),
        }
    }

    /// Adopt what other instances know: newer state changes, newer tokens; and keep the
    /// operators' verdicts in Redis.
    pub async fn sync(&self, pool: &Pool) {
        for account in pool.list().iter() {
            // An operator's verdict first: it is not a state the others may change.
            match self.operator_verdict(account).await {
                Ok(Some(v)) if v.disabled => {
                    if account.health() != Health::Disabled {
                        pool.transition(account, "disabled", |_| Health::Disabled);
                    }
                    continue;
                }
                Ok(Some(_)) if account.health() == Health::Disabled => {
                    // Enabled by an operator on another instance.
                    let has_token = account.caller().is_some();
                    pool.transition(account, "enabled", |_| {
                        if has_token {
                            Health::Ready
                        } else {
                            Health::SigningIn { reason: None }
                        }
                    });
                }
                Ok(_) => {}
                Err(()) => continue,
            }
            if let Some(json) = self.get(&key(account.name(), "health")).await {
                match serde_json::from_str::<Stamped>(&json) {
                    Ok(s) if s.spec == account.credentials => {
                        account.adopt_health(s.health, s.changed_ms);
                    }
                    _ => {}
                }
            }
            self.adopt_token(pool, account).await;
        }
        pool.publish_gauges();
        pool.freed.notify_waiters();
    }

    /// A stored token newer than the account's own (another instance renewed it, or this
    /// one before a restart) replaces it: newer by its `exp`, else by when it was obtained.
    /// An expired one is adopted for its refresh token (the renewal then uses it).
    pub async fn adopt_token(&self, pool: &Pool, account: &Account) {
        let name = account.name();
        let json = match self.get(&key(name, "token")).await {
            Some(json) => json,
            // Stored before the hash tag (the upgrade must not lose a rotated refresh token).
            None => match self.get(&legacy_key(name, "token")).await {
                Some(json) => json,
                None => return,
            },
        };
        let stored = match serde_json::from_str::<StoredToken>(&json) {
            // Another entry's token (the email or cookies changed since) is not this one's.
            Ok(record) if record.spec == account.credentials => record.token,
            _ => return,
        };
        let now = crate::common::epoch_secs();
        if stored.expired(now) && stored.refresh.is_none() {
            return;
        }
        let newer = match account.token() {
            None => true,
            Some(mine) if mine.access == stored.access => false,
            Some(mine) => match (stored.exp(), mine.exp()) {
                (Some(theirs), Some(ours)) => theirs > ours,
                _ => stored.obtained > mine.obtained,
            },
        };
        if !newer {
            return;
        }
        let usable = !stored.expired(now);
        pool.set_token(account, stored);
        if usable {
            pool.transition(account, "signed_in", |h| match h {
                Health::SigningIn { .. } => Health::Ready,
                h => h.clone(),
            });
        }
    }
}

impl Account {
    /// Another instance's state change, if newer than ours. A disable is not adopted from
    /// here (only from the operator's own key), nor overridden.
    pub(super) fn adopt_health(&self, health: Health, changed_ms: u64) {
        let mut g = self.health.lock().unwrap_or_else(|p| p.into_inner());
        let mine = self.health_changed_ms.load(Ordering::Relaxed);
        if changed_ms <= mine
            || *g == health
            || *g == Health::Disabled
            || health == Health::Disabled
        {
            return;
        }
        tracing::info!(
            account = %crate::untrusted::Untrusted(self.name()),
            to = health.label(),
            "account state adopted from another instance"
        );
        *g = health;
        self.health_changed_ms.store(changed_ms, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One account's keys share a Cluster slot (its hash tag): the renewal lock with the
    /// token it guards, the operator's verdict with the state.
    #[test]
    fn an_accounts_keys_share_one_slot() {
        for name in ["a", "work", "alt-1.x_y"] {
            let slot = |what| fred::util::redis_keyslot(key(name, what).as_bytes());
            for what in ["health", "operator", "renewing"] {
                assert_eq!(slot(what), slot("token"), "{name} {what}");
            }
            assert_eq!(slot("token"), fred::util::redis_keyslot(name.as_bytes()));
        }
    }
}
