//! Account state in Redis (`REDIS_URL`), so that several instances agree on which account
//! is cooling, quarantined or disabled, and tokens survive a restart (an auth-domain
//! refresh token is rotated on every use: the newest must outlive the process).
//!
//! Keys:
//! * `qp:acct:<name>:health` → `{"changed_ms", "health", "spec", "operator"}`: the newest
//!   change wins (every instance publishes its own changes and adopts newer ones at each
//!   sync, every few seconds), except that an operator's disable is only lifted by an
//!   operator's change;
//! * `qp:acct:<name>:token` → `{"spec", "token"}`, kept as long as its refresh token lives;
//! * `qp:acct:<name>:renewing` → the instance renewing the token (so a rotating refresh
//!   token is never presented twice).
//!
//! `spec` is the entry's fingerprint: what was recorded about other credentials under the
//! same name (the entry was edited since) is ignored. Redis trouble never stops the proxy:
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
    /// An operator's disable or enable.
    #[serde(default)]
    operator: bool,
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

impl Drop for RenewalLock {
    fn drop(&mut self) {
        let (client, key, owner) = (
            self.client.clone(),
            std::mem::take(&mut self.key),
            std::mem::take(&mut self.owner),
        );
        tokio::spawn(async move {
            let args: [&[u8]; 5] = [
                b"EVAL",
                UNLOCK.as_bytes(),
                b"1",
                key.as_bytes(),
                owner.as_bytes(),
            ];
            let _ = client.cmd(&args).await;
        });
    }
}

impl SharedAccounts {
    pub fn new(client: Arc<RedisClient>) -> Self {
        Self { client }
    }

    /// Tell the other instances (in the background: state changes happen on the request
    /// path). Kept a week: long enough for any pause, short enough not to pile up.
    pub fn publish_health(&self, account: &Account, operator: bool) {
        let stamped = Stamped {
            changed_ms: account.health_changed_ms.load(Ordering::Relaxed),
            health: account.health(),
            spec: account.fingerprint.clone(),
            operator,
        };
        self.set(key(account.name(), "health"), &stamped, 7 * 86_400);
    }

    /// Keep the token for restarts and the other instances: as long as its refresh token
    /// lives when it has one (the access token may lapse; the refresh token renews it),
    /// else as long as the token.
    pub fn publish_token(&self, account: &Account, token: &Token) {
        let ttl = match (&token.refresh, token.exp()) {
            (Some(_), _) => REFRESH_TOKEN_SECS,
            (None, Some(exp)) => exp.saturating_sub(crate::common::epoch_secs()).max(1),
            (None, None) => REFRESH_TOKEN_SECS,
        };
        let record = StoredToken {
            spec: account.fingerprint.clone(),
            token: token.clone(),
        };
        self.set(key(account.name(), "token"), &record, ttl);
    }

    fn set(&self, key: String, value: &impl Serialize, ttl_secs: u64) {
        let Ok(json) = serde_json::to_string(value) else {
            return;
        };
        let client = self.client.clone();
        tokio::spawn(async move {
            let ttl = ttl_secs.to_string();
            let args: [&[u8]; 5] = [
                b"SET",
                key.as_bytes(),
                json.as_bytes(),
                b"EX",
                ttl.as_bytes(),
            ];
            if let Err(e) = client.cmd(&args).await {
                tracing::warn!(error = %e, "could not share an account's state");
            }
        });
    }

    async fn get(&self, key: &str) -> Option<Vec<u8>> {
        match self.client.cmd(&[b"GET", key.as_bytes()]).await {
            Ok(Reply::Bulk(Some(b))) => Some(b),
            Ok(_) => None,
            Err(e) => {
                tracing::debug!(error = %e, "account state not readable from redis");
                None
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
            if let Some(bytes) = self.get(&key(account.name(), "health")).await {
                match serde_json::from_slice::<Stamped>(&bytes) {
                    Ok(s) if s.spec == account.fingerprint => {
                        account.adopt_health(s.health, s.changed_ms, s.operator);
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
            Ok(record) if record.spec == account.fingerprint => record.token,
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
    /// Another instance's state change, if newer than ours. An operator's disable stays
    /// until an operator changes it again.
    pub(super) fn adopt_health(&self, health: Health, changed_ms: u64, by_operator: bool) {
        let mut g = self.health.lock().unwrap_or_else(|p| p.into_inner());
        let mine = self.health_changed_ms.load(Ordering::Relaxed);
        if changed_ms <= mine || *g == health {
            return;
        }
        if *g == Health::Disabled && !by_operator {
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
