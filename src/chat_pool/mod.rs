//! Chats made ahead (`CHAT_POOL_SIZE`, `CHAT_POOL_TTL`): each account keeps a few upstream
//! chats created in advance per model and chat type, so a new conversation's first turn —
//! or a turn moved to a fresh chat — takes a ready chat instead of waiting for `chats/new`
//! (0.3–0.6 s against the real service).
//!
//! - **Demand-driven.** A pool is filled for an (account, chat type, model) once a turn
//!   asked it for a chat, and topped up after every take, so it costs the upstream what the
//!   turns would have cost anyway — one `chats/new` per conversation, only earlier — plus
//!   `size` per pool in use, and the chats that expire unused. A model nobody uses keeps no
//!   chats.
//! - **Paced.** A top-up runs only while the account takes turns, waits out its minimum
//!   interval without taking it (a turn never waits for a chat made ahead), and stops at
//!   the first failure: the turns meet the upstream's verdict, not the pool.
//! - **Used once.** Taking a chat removes it, atomically in Redis, so no chat serves two
//!   conversations, also across instances sharing Redis. A chat belongs to the account that
//!   made it and is taken only on that account's lease.
//! - **Bounded in time.** A chat older than `CHAT_POOL_TTL` is not handed out; the
//!   housekeeping takes expired chats out (deleting them upstream under
//!   `CHAT_CLEANUP=delete`). A ready chat the upstream no longer knows (deleted in the web
//!   UI, purged) is met as `chat_not_found`: the turn goes to a chat made then and there,
//!   unseen by the client, and the account's other ready chats of that kind are dropped.

mod memory;
pub mod redis;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::accounts::Account;
use crate::common::{epoch_millis, BoxFuture};
use crate::conversation::store::StoreError;
use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::qwen::client::QwenClient;

pub use memory::MemoryPool;

/// Which pool: chats are made for one account, chat type and model.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub account: String,
    pub chat_type: String,
    pub model: String,
}

/// A chat made ahead: its id and when it was made (Unix ms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyChat {
    pub id: String,
    pub made_ms: u64,
}

/// What a take found: the oldest chat still fresh, and the expired ones it passed (taken
/// out too, for deletion).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Taken {
    pub chat: Option<ReadyChat>,
    pub expired: Vec<ReadyChat>,
}

/// Where ready chats are kept: in memory, or in Redis shared by every instance.
pub trait PoolStore: Send + Sync + 'static {
    /// Take out the oldest chat of `key` made at or after `fresh_since_ms`, and every older
    /// one met on the way.
    fn take<'a>(
        &'a self,
        key: &'a PoolKey,
        fresh_since_ms: u64,
    ) -> BoxFuture<'a, Result<Taken, StoreError>>;
    /// How many chats `key` holds.
    fn len<'a>(&'a self, key: &'a PoolKey) -> BoxFuture<'a, Result<usize, StoreError>>;
    /// Keep a chat made for `key`.
    fn put<'a>(
        &'a self,
        key: &'a PoolKey,
        chat: ReadyChat,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Take out every chat of `key`; they are returned.
    fn clear<'a>(&'a self, key: &'a PoolKey) -> BoxFuture<'a, Result<Vec<ReadyChat>, StoreError>>;
    /// Take out every chat of every pool made before `fresh_since_ms`.
    fn take_expired(
        &self,
        fresh_since_ms: u64,
    ) -> BoxFuture<'_, Result<Vec<(PoolKey, ReadyChat)>, StoreError>>;
}

/// The pools of this instance's accounts, over a [`PoolStore`].
pub struct ChatPool {
    store: Arc<dyn PoolStore>,
    /// Chats kept ready per pool (0: off).
    size: usize,
    ttl: Duration,
    client: QwenClient,
    /// Pools with a top-up running on this instance (one at a time per pool), each with
    /// the bell a take rings to wake it.
    filling: Mutex<HashMap<PoolKey, Arc<Notify>>>,
    /// Expired chats a take passed, `(account, chat)`, until the housekeeping collects them.
    passed: Mutex<Vec<(String, String)>>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for ChatPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatPool")
            .field("size", &self.size)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// Where a new chat came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Made ahead and taken from the pool.
    Pool,
    /// Made for this turn (`chats/new` while it waited).
    Made,
}

impl ChatPool {
    pub fn new(
        store: Arc<dyn PoolStore>,
        size: usize,
        ttl: Duration,
        client: QwenClient,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            store,
            size,
            ttl,
            client,
            filling: Mutex::new(HashMap::new()),
            passed: Mutex::new(Vec::new()),
            metrics,
        }
    }

    fn count(&self, event: &str) {
        self.metrics.chat_pool.with_label_values(&[event]).inc();
    }

    fn fresh_since_ms(&self) -> u64 {
        epoch_millis().saturating_sub(self.ttl.as_millis() as u64)
    }

    /// A ready chat of `account` for this model and chat type (a hit), or `None` (a miss:
    /// the caller makes one); either way the pool is topped up in the background. Expired
    /// chats met on the way wait for the housekeeping (`take_expired`).
    pub async fn take(
        self: &Arc<Self>,
        account: &Arc<Account>,
        chat_type: &str,
        model: &str,
    ) -> Option<String> {
        if self.size == 0 {
            return None;
        }
        let key = PoolKey {
            account: account.name().to_owned(),
            chat_type: chat_type.to_owned(),
            model: model.to_owned(),
        };
        let taken = match self.store.take(&key, self.fresh_since_ms()).await {
            Ok(t) => t,
            Err(e) => {
                tracing::debug!(error = %e, "the chat pool could not be read");
                Taken::default()
            }
        };
        if !taken.expired.is_empty() {
            let mut passed = self.passed.lock().unwrap_or_else(|p| p.into_inner());
            for chat in taken.expired {
                self.count("expired");
                passed.push((key.account.clone(), chat.id));
            }
        }
        self.count(if taken.chat.is_some() { "hit" } else { "miss" });
        self.top_up(account.clone(), key);
        taken.chat.map(|c| c.id)
    }

    /// A chat taken from `account`'s pool was unknown upstream: the others of its pool
    /// were made the same way and are dropped too (the next take makes new ones).
    pub async fn discard(&self, account: &str, chat_type: &str, model: &str) {
        self.count("stale");
        let key = PoolKey {
            account: account.to_owned(),
            chat_type: chat_type.to_owned(),
            model: model.to_owned(),
        };
        if let Ok(dropped) = self.store.clear(&key).await {
            for _ in dropped {
                self.count("stale");
            }
        }
    }

    /// Every chat that expired unused, taken out (for the housekeeping, which deletes them
    /// under `CHAT_CLEANUP=delete`): `(account, chat)`.
    pub async fn take_expired(&self) -> Vec<(String, String)> {
        if self.size == 0 {
            return Vec::new();
        }
        let mut expired =
            std::mem::take(&mut *self.passed.lock().unwrap_or_else(|p| p.into_inner()));
        match self.store.take_expired(self.fresh_since_ms()).await {
            Ok(found) => expired.extend(found.into_iter().map(|(key, chat)| {
                self.count("expired");
                (key.account, chat.id)
            })),
            Err(e) => tracing::debug!(error = %e, "the chat pool could not be swept"),
        }
        expired
    }

    /// Fill `key`'s pool up to `size` in the background, or wake the top-up of it that runs
    /// here (it counts again what the pool lacks).
    fn top_up(self: &Arc<Self>, account: Arc<Account>, key: PoolKey) {
        let bell = {
            let mut filling = self.filling.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(bell) = filling.get(&key) {
                bell.notify_one();
                return;
            }
            let bell = Arc::new(Notify::new());
            filling.insert(key.clone(), bell.clone());
            bell
        };
        let pool = self.clone();
        tokio::spawn(async move {
            let _done = Filling {
                pool: &pool,
                key: &key,
            };
            pool.fill(&account, &key, &bell).await;
        });
    }

    /// Make chats until the pool holds `size`: as many in flight as it lacks, counted again
    /// whenever one lands or a take rings `bell` (not in rounds: a round would wait for its
    /// slowest call while takes empty the pool), while the account takes turns, paced by
    /// its minimum interval; stop at the first failure (the calls in flight are dropped with
    /// the set).
    async fn fill(&self, account: &Arc<Account>, key: &PoolKey, bell: &Notify) {
        let mut making = tokio::task::JoinSet::new();
        loop {
            let Ok(held) = self.store.len(key).await else {
                return;
            };
            let lacking = self.size.saturating_sub(held + making.len());
            if lacking > 0 {
                let Some(caller) = account.ready_caller().await else {
                    return;
                };
                for _ in 0..lacking {
                    let (client, caller, key) = (self.client.clone(), caller.clone(), key.clone());
                    making.spawn(async move {
                        client
                            .create_chat(&caller, &key.model, &key.chat_type)
                            .await
                    });
                }
            }
            if making.is_empty() {
                return;
            }
            let made = tokio::select! {
                made = making.join_next() => match made {
                    Some(made) => made,
                    None => return,
                },
                () = bell.notified() => continue,
            };
            match made.unwrap_or_else(|e| Err(ProxyError::Internal(e.to_string()))) {
                Ok(id) => {
                    let chat = ReadyChat {
                        id,
                        made_ms: epoch_millis(),
                    };
                    if let Err(e) = self.store.put(key, chat).await {
                        tracing::debug!(error = %e, "a chat made ahead could not be kept");
                        return;
                    }
                    self.count("made");
                }
                Err(e) => {
                    tracing::debug!(error = %e, "making a chat ahead failed");
                    return;
                }
            }
        }
    }
}

/// Marks the end of a pool's top-up, however it ends.
struct Filling<'a> {
    pool: &'a ChatPool,
    key: &'a PoolKey,
}

impl Drop for Filling<'_> {
    fn drop(&mut self) {
        self.pool
            .filling
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(self.key);
    }
}

#[cfg(test)]
mod tests;
