//! Account state in Redis (`REDIS_URL`), so that several instances agree on which account
//! is cooling, quarantined or disabled, and tokens survive a restart (an auth-domain
//! refresh token is rotated on every use: the newest must outlive the process).
//!
//! Keys:
//! * `qp:acct:<name>:health` → `{"changed_ms", "health", "spec"}`: the newest change wins
//!   (every instance publishes its own changes and adopts newer ones at each sync, every
//!   few seconds);
//! * `qp:acct:<name>:disabled` → present while an operator has the account disabled (no
//!   expiry; only an operator's enable removes it);
//! * `qp:acct:<name>:token` → `{"spec", "token"}`, kept as long as its refresh token lives;
//! * `qp:acct:<name>:renewing` → the instance renewing the token (so a rotating refresh
//!   token is never presented twice).
//!
//! `spec` is the fingerprint of the entry's credentials: what was recorded about other
//! credentials under the same name (a new cookie, a new password) is ignored; editing its
//! pacing or proxy keeps it. Redis trouble never stops the proxy:
//! each instance then goes on with what it knows.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::credential::Token;
use super::health::Health;
use super::{Account, Pool};
use crate::redis::{RedisClient, Reply};

/// A refresh token lives 30 days upstream.
const REFRESH_TOKEN_SECS: u64 = 30 * 86_400;
/// Longest a renewal may hold the shared lock (a paced sign-in included).
const RENEWAL_LOCK_MS: u64 = 120_000;

const LOCK: &str = "return redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])";
const UNLOCK: &str =
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";

#[derive(Debug, Clone)]
pub struct SharedAccounts {
    client: Arc<RedisClient>,
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

fn key(name: &str, what: &str) -> String {
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
        let args: [&[u8]; 5] = [
            b"EVAL",
            UNLOCK.as_bytes(),
            b"1",
            self.key.as_bytes(),
            self.owner.as_bytes(),
        ];
        let _ = self.client.cmd(&args).await;
    }
}

impl SharedAccounts {
    pub fn new(client: Arc<RedisClient>) -> Self {
        Self { client }
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

    /// An operator's disable (kept without expiry) or enable (removed), awaited: an enable
    /// sent to another instance than the disable must find it.
    pub async fn publish_operator(&self, account: &Account, disabled: bool) {
        let k = key(account.name(), "disabled");
        let r = if disabled {
            self.client
                .cmd(&[b"SET", k.as_bytes(), account.credentials.as_bytes()])
                .await
        } else {
            self.client.cmd(&[b"DEL", k.as_bytes()]).await
        };
        if let Err(e) = r {
            tracing::warn!(error = %e, "could not share an operator's disable or enable");
        }
    }

    /// `SET key value EX ttl`, the value as JSON.
    async fn set_now(
        &self,
        key: &str,
        value: &impl Serialize,
        ttl_secs: u64,
    ) -> Result<(), crate::redis::RedisError> {
        let json =
            serde_json::to_string(value).map_err(|e| crate::redis::RedisError(e.to_string()))?;
        let ttl = ttl_secs.to_string();
        let args: [&[u8]; 5] = [
            b"SET",
            key.as_bytes(),
            json.as_bytes(),
            b"EX",
            ttl.as_bytes(),
        ];
        self.client.cmd(&args).await.map(|_| ())
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

    async fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.get_checked(key).await.ok().flatten()
    }

    /// The value, `Ok(None)` when absent, `Err` when Redis did not answer.
    async fn get_checked(&self, key: &str) -> Result<Option<Vec<u8>>, ()> {
        match self.client.cmd(&[b"GET", key.as_bytes()]).await {
            Ok(Reply::Bulk(Some(b))) => Ok(Some(b)),
            Ok(_) => Ok(None),
            Err(e) => {
                tracing::debug!(error = %e, "account state not readable from redis");
                Err(())
            }
        }
    }

    /// Take the account's renewal lock, unless another instance holds it (`None`). With
    /// Redis unreachable, each instance renews on its own (`Some`, holding nothing).
    pub async fn lock_renewal(&self, name: &str) -> Option<Option<RenewalLock>> {
        let key = key(name, "renewing");
        let owner = crate::common::random_uuid().to_string();
        let ttl = RENEWAL_LOCK_MS.to_string();
        let args: [&[u8]; 6] = [
            b"EVAL",
            LOCK.as_bytes(),
            b"1",
            key.as_bytes(),
            owner.as_bytes(),
            ttl.as_bytes(),
        ];
        match self.client.cmd(&args).await {
            Ok(Reply::Simple(_)) => Some(Some(RenewalLock {
                client: self.client.clone(),
                key,
                owner,
            })),
            Ok(_) => None,
            Err(_) => Some(None),
        }
    }

    /// Adopt what other instances know: newer state changes, newer tokens.
    pub async fn sync(&self, pool: &Pool) {
        for account in pool.list().iter() {
            // An operator's disable first: it is not a state the others may change.
            match self.get_checked(&key(account.name(), "disabled")).await {
                Ok(Some(spec)) if spec == account.credentials.as_bytes() => {
                    if account.health() != Health::Disabled {
                        pool.transition(account, "disabled", |_| Health::Disabled);
                    }
                    continue;
                }
                Ok(_) if account.health() == Health::Disabled => {
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
            if let Some(bytes) = self.get(&key(account.name(), "health")).await {
                match serde_json::from_slice::<Stamped>(&bytes) {
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
        let Some(bytes) = self.get(&key(account.name(), "token")).await else {
            return;
        };
        let stored = match serde_json::from_slice::<StoredToken>(&bytes) {
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
