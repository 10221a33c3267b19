//! The Redis session store: sessions, per-chat locks and chat last-use times, shared by
//! every instance. Every operation touches one key (the layout: `crate::redis`):
//! `qp:s:<conversation key>` → session JSON (PX = `SESSION_TIMEOUT`, refreshed on use);
//! `qp:lock:<chat_id>` → owner token; `qp:chats` → sorted set chat_id → last use (ms), written
//! only with `CHAT_CLEANUP=delete` (`tracking_chats`), whose deletions take the entries out.

use std::sync::Arc;
use std::time::Duration;

use super::{RedisClient, RedisError};
use crate::common::{epoch_millis, BoxFuture};
use crate::conversation::store::{IdleChats, Session, SessionStore, StoreError};

impl From<RedisError> for StoreError {
    fn from(e: RedisError) -> Self {
        StoreError(e.to_string())
    }
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(format!("redis: {e}"))
}

/// Sessions, locks and chat last-use times in Redis.
#[derive(Debug)]
pub struct RedisStore {
    client: Arc<RedisClient>,
    ttl: Duration,
    track_chats: bool,
}

/// The Redis key of a conversation's session.
fn session_key(key: &str) -> String {
    format!("qp:s:{key}")
}

/// The Redis key of a chat's lock.
fn lock_key(chat_id: &str) -> String {
    format!("qp:lock:{chat_id}")
}

/// Take the lock if free, or extend it if `owner` already holds it (renewal): 1 if held
/// by `owner` now, else 0. (A retry of the same call after a lost answer is a renewal.)
const LOCK: &str = "local v = redis.call('get', KEYS[1]) \
    if v == false then redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 \
    elseif v == ARGV[1] then redis.call('pexpire', KEYS[1], ARGV[2]) return 1 \
    else return 0 end";
const UNLOCK: &str = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";
const CHATS: &str = "qp:chats";
/// The oldest `ARGV[2]` chats idle since `ARGV[1]`, all idle ones removed; the reply is the
/// count of the others (forgotten) followed by the chats.
const TAKE_IDLE: &str =
    "local c = redis.call('zrangebyscore', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2]) \
    local n = redis.call('zremrangebyscore', KEYS[1], '-inf', ARGV[1]) \
    table.insert(c, 1, tostring(n - #c)) return c";

impl RedisStore {
    pub fn new(client: Arc<RedisClient>, ttl: Duration) -> Self {
        Self {
            client,
            ttl,
            track_chats: false,
        }
    }

    /// Record each chat's last use for `take_idle_chats` (`CHAT_CLEANUP=delete`); without
    /// it `qp:chats` would grow by every chat ever continued, and each use would cost a
    /// round trip more.
    pub fn tracking_chats(mut self, on: bool) -> Self {
        self.track_chats = on;
        self
    }

    async fn touch_chat(&self, chat_id: &str) -> Result<(), StoreError> {
        if !self.track_chats {
            return Ok(());
        }
        self.client
            .zadd(CHATS, epoch_millis() as f64, chat_id)
            .await
            .map_err(Into::into)
    }
}

impl SessionStore for RedisStore {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Session>, StoreError>> {
        Box::pin(async move {
            let Some(json) = self.client.get_ex(&session_key(key), self.ttl).await? else {
                return Ok(None);
            };
            let session: Session = serde_json::from_str(&json).map_err(err)?;
            self.touch_chat(&session.owned_chat()).await?;
            Ok(Some(session))
        })
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        session: &'a Session,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let json = serde_json::to_string(session).map_err(err)?;
            self.client
                .set(&session_key(key), &json, Some(self.ttl))
                .await?;
            self.touch_chat(&session.owned_chat()).await
        })
    }

    fn remove<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move { self.client.del(&session_key(key)).await.map_err(Into::into) })
    }

    fn try_lock<'a>(
        &'a self,
        chat_id: &'a str,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let ttl = ttl.as_millis().max(1).to_string();
            let held: i64 = self
                .client
                .eval(LOCK, &[&lock_key(chat_id)], &[owner, &ttl])
                .await?;
            Ok(held == 1)
        })
    }

    fn unlock<'a>(
        &'a self,
        chat_id: &'a str,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let _: i64 = self
                .client
                .eval(UNLOCK, &[&lock_key(chat_id)], &[owner])
                .await?;
            Ok(())
        })
    }

    fn take_idle_chats<'a>(
        &'a self,
        idle: Duration,
        max: usize,
    ) -> BoxFuture<'a, Result<IdleChats, StoreError>> {
        Box::pin(async move {
            let cutoff = epoch_millis()
                .saturating_sub(idle.as_millis() as u64)
                .to_string();
            let mut reply: Vec<String> = self
                .client
                .eval(TAKE_IDLE, &[CHATS], &[&cutoff, &max.to_string()])
                .await?;
            if reply.is_empty() {
                return Err(err("TAKE_IDLE answered nothing"));
            }
            let forgotten = reply.remove(0).parse().map_err(err)?;
            Ok(IdleChats {
                chats: reply,
                forgotten,
            })
        })
    }

    fn sweep(&self) -> BoxFuture<'_, Result<Option<usize>, StoreError>> {
        // Redis expires sessions itself; a PING tells whether it is reachable.
        Box::pin(async move { self.client.ping().await.map(|()| None).map_err(Into::into) })
    }
}
