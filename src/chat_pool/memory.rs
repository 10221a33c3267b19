//! The chat pools of one instance, in memory: per pool, its chats oldest first.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use super::{PoolKey, PoolStore, ReadyChat, Taken};
use crate::common::BoxFuture;
use crate::conversation::store::StoreError;

#[derive(Debug, Default)]
pub struct MemoryPool {
    pools: Mutex<HashMap<PoolKey, VecDeque<ReadyChat>>>,
}

fn ready<'a, T: Send + 'a>(v: T) -> BoxFuture<'a, Result<T, StoreError>> {
    Box::pin(std::future::ready(Ok(v)))
}

impl MemoryPool {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PoolKey, VecDeque<ReadyChat>>> {
        self.pools.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl PoolStore for MemoryPool {
    fn take<'a>(
        &'a self,
        key: &'a PoolKey,
        fresh_since_ms: u64,
    ) -> BoxFuture<'a, Result<Taken, StoreError>> {
        let mut pools = self.lock();
        let mut taken = Taken::default();
        if let Some(chats) = pools.get_mut(key) {
            while let Some(chat) = chats.pop_front() {
                if chat.made_ms >= fresh_since_ms {
                    taken.chat = Some(chat);
                    break;
                }
                taken.expired.push(chat);
            }
            if chats.is_empty() {
                pools.remove(key);
            }
        }
        ready(taken)
    }

    fn len<'a>(&'a self, key: &'a PoolKey) -> BoxFuture<'a, Result<usize, StoreError>> {
        ready(self.lock().get(key).map_or(0, VecDeque::len))
    }

    fn put<'a>(
        &'a self,
        key: &'a PoolKey,
        chat: ReadyChat,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.lock().entry(key.clone()).or_default().push_back(chat);
        ready(())
    }

    fn clear<'a>(&'a self, key: &'a PoolKey) -> BoxFuture<'a, Result<Vec<ReadyChat>, StoreError>> {
        ready(self.lock().remove(key).map(Vec::from).unwrap_or_default())
    }

    fn take_expired(
        &self,
        fresh_since_ms: u64,
    ) -> BoxFuture<'_, Result<Vec<(PoolKey, ReadyChat)>, StoreError>> {
        let mut pools = self.lock();
        let mut expired = Vec::new();
        pools.retain(|key, chats| {
            // Oldest first: the expired ones are a prefix.
            while chats.front().is_some_and(|c| c.made_ms < fresh_since_ms) {
                if let Some(chat) = chats.pop_front() {
                    expired.push((key.clone(), chat));
                }
            }
            !chats.is_empty()
        });
        ready(expired)
    }
}
