//! Account state in Redis (`REDIS_URL`), so that several instances agree on which account
//! is cooling, quarantined or disabled, and tokens survive a restart (an auth-domain
//! refresh token is rotated on every use: the newest must outlive the process).
//!
//! Keys: `qp:acct:<name>:health` → `{"changed_ms", "health", "spec"}` (the newest change
//! wins; every instance publishes its own changes and adopts newer ones each sync, every
//! few seconds); `qp:acct:<name>:token` → `{"spec", "token"}` (expires with the token).
//! `spec` is the entry's fingerprint: what was recorded about other credentials under the
//! same name (the entry was edited since) is ignored. Redis
//! trouble never stops the proxy: each instance then goes on with what it knows.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::credential::Token;
use super::health::Health;
use super::Pool;
use crate::common::epoch_millis;
use crate::redis::{RedisClient, Reply};

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

fn health_key(name: &str) -> String {
    format!("qp:acct:{name}:health")
}

fn token_key(name: &str) -> String {
    format!("qp:acct:{name}:token")
}

impl SharedAccounts {
    pub fn new(client: Arc<RedisClient>) -> Self {
        Self { client }
    }

    /// Tell the other instances (in the background: state changes happen on the request
    /// path). Kept a week: long enough for any pause, short enough not to pile up.
    pub fn publish_health(&self, account: &super::Account) {
        let name = account.name();
        let stamped = Stamped {
            changed_ms: epoch_millis(),
            health: account.health(),
            spec: account.fingerprint.clone(),
        };
        let Ok(json) = serde_json::to_string(&stamped) else {
            return;
        };
        let (client, key) = (self.client.clone(), health_key(name));
        tokio::spawn(async move {
            let args: [&[u8]; 5] = [b"SET", key.as_bytes(), json.as_bytes(), b"EX", b"604800"];
            if let Err(e) = client.cmd(&args).await {
                tracing::warn!(error = %e, "could not share an account's state");
            }
        });
    }

    pub fn publish_token(&self, account: &super::Account, token: &Token) {
        let name = account.name();
        let record = StoredToken {
            spec: account.fingerprint.clone(),
            token: token.clone(),
        };
        let Ok(json) = serde_json::to_string(&record) else {
            return;
        };
        let ttl_secs = token
            .exp()
            .map_or(30 * 86_400, |exp| exp.saturating_sub(token.obtained).max(1));
        let (client, key) = (self.client.clone(), token_key(name));
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
                tracing::warn!(error = %e, "could not store an account's token");
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

    /// Adopt what other instances know: newer state changes, newer tokens.
    pub async fn sync(&self, pool: &Pool) {
        for account in pool.list().iter() {
            if let Some(bytes) = self.get(&health_key(account.name())).await {
                match serde_json::from_slice::<Stamped>(&bytes) {
                    Ok(s) if s.spec == account.fingerprint => {
                        account.adopt_health(s.health, s.changed_ms);
                    }
                    _ => {}
                }
            }
            self.adopt_token(pool, account).await;
        }
        pool.publish_gauges();
    }

    /// A stored token newer than the account's own (another instance renewed it, or this
    /// one before a restart) replaces it, if it has not expired.
    pub async fn adopt_token(&self, pool: &Pool, account: &super::Account) {
        let Some(bytes) = self.get(&token_key(account.name())).await else {
            return;
        };
        let stored = match serde_json::from_slice::<StoredToken>(&bytes) {
            // Another entry's token (the email or cookies changed since) is not this one's.
            Ok(record) if record.spec == account.fingerprint => record.token,
            _ => return,
        };
        let mine = account.token();
        let newer = mine.as_ref().map_or(true, |t| {
            stored.obtained > t.obtained && stored.access != t.access
        });
        if newer && !stored.expired(crate::common::epoch_secs()) {
            pool.set_token(account, stored);
            pool.transition(account, "signed_in", |h| match h {
                Health::SigningIn { .. } => Health::Ready,
                h => h.clone(),
            });
        }
    }
}

impl super::Account {
    /// Another instance's state change, if newer than ours.
    fn adopt_health(&self, health: Health, changed_ms: u64) {
        let mut g = self.health.lock().unwrap_or_else(|p| p.into_inner());
        let mine = self
            .health_changed_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        if changed_ms > mine && *g != health {
            tracing::info!(
                account = %crate::untrusted::Untrusted(self.name()),
                to = health.label(),
                "account state adopted from another instance"
            );
            *g = health;
            self.health_changed_ms
                .store(changed_ms, std::sync::atomic::Ordering::Relaxed);
        }
    }
}
