//! The Redis session store: sessions, per-chat locks and chat last-use times, shared by
//! every instance.
//!
//! Keys (prefix `qp:`): `qp:s:<conversation key>` → session JSON (PX = `SESSION_TIMEOUT`,
//! refreshed on use); `qp:lock:<chat_id>` → owner token (SET NX PX); `qp:chats` → sorted set
//! chat_id → last use (ms), for `CHAT_CLEANUP=delete`.

use std::sync::Arc;
use std::time::Duration;

use super::{expect_ok, RedisClient, RedisError, Reply};
use crate::common::{epoch_millis, BoxFuture};
use crate::conversation::store::{Session, SessionStore, StoreError};

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
}

/// The Redis key of a conversation's session.
fn session_key(key: &str) -> String {
    format!("qp:s:{key}")
}

/// The Redis key of a chat's lock.
fn lock_key(chat_id: &str) -> String {
    format!("qp:lock:{chat_id}")
}

/// Take the lock if free, or extend it if `owner` already holds it (renewal).
const LOCK: &str = "local v = redis.call('get', KEYS[1]) \
    if v == false then return redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2]) \
    elseif v == ARGV[1] then redis.call('pexpire', KEYS[1], ARGV[2]) return redis.status_reply('OK') \
    else return false end";
const UNLOCK: &str = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";
const TAKE_IDLE: &str =
    "local c = redis.call('zrangebyscore', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 100) \
    if #c > 0 then redis.call('zrem', KEYS[1], unpack(c)) end return c";

impl RedisStore {
    pub fn new(client: Arc<RedisClient>, ttl: Duration) -> Self {
        Self { client, ttl }
    }

    async fn touch_chat(&self, chat_id: &str) -> Result<(), StoreError> {
        let now = epoch_millis().to_string();
        self.client
            .cmd(&[b"ZADD", b"qp:chats", now.as_bytes(), chat_id.as_bytes()])
            .await
            .map(|_| ())
            .map_err(Into::into)
    }
}

impl SessionStore for RedisStore {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Session>, StoreError>> {
        Box::pin(async move {
            let k = session_key(key);
            let ttl = self.ttl.as_millis().to_string();
            let reply = self
                .client
                .cmd(&[b"GETEX", k.as_bytes(), b"PX", ttl.as_bytes()])
                .await?;
            let Some(json) = reply.into_string() else {
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
            let k = session_key(key);
            let json = serde_json::to_string(session).map_err(err)?;
            let ttl = self.ttl.as_millis().to_string();
            expect_ok(
                self.client
                    .cmd(&[b"SET", k.as_bytes(), json.as_bytes(), b"PX", ttl.as_bytes()])
                    .await?,
            )?;
            self.touch_chat(&session.owned_chat()).await
        })
    }

    fn remove<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let k = session_key(key);
            self.client
                .cmd(&[b"DEL", k.as_bytes()])
                .await
                .map(|_| ())
                .map_err(Into::into)
        })
    }

    fn try_lock<'a>(
        &'a self,
        chat_id: &'a str,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let k = lock_key(chat_id);
            let ttl = ttl.as_millis().max(1).to_string();
            let r = self
                .client
                .cmd(&[
                    b"EVAL",
                    LOCK.as_bytes(),
                    b"1",
                    k.as_bytes(),
                    owner.as_bytes(),
                    ttl.as_bytes(),
                ])
                .await?;
            Ok(matches!(r, Reply::Simple(_)))
        })
    }

    fn unlock<'a>(
        &'a self,
        chat_id: &'a str,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let k = lock_key(chat_id);
            self.client
                .cmd(&[
                    b"EVAL",
                    UNLOCK.as_bytes(),
                    b"1",
                    k.as_bytes(),
                    owner.as_bytes(),
                ])
                .await
                .map(|_| ())
                .map_err(Into::into)
        })
    }

    fn take_idle_chats<'a>(
        &'a self,
        idle: Duration,
    ) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        Box::pin(async move {
            let cutoff = epoch_millis()
                .saturating_sub(idle.as_millis() as u64)
                .to_string();
            let r = self
                .client
                .cmd(&[
                    b"EVAL",
                    TAKE_IDLE.as_bytes(),
                    b"1",
                    b"qp:chats",
                    cutoff.as_bytes(),
                ])
                .await?;
            Ok(match r {
                Reply::Array(Some(items)) => {
                    items.into_iter().filter_map(Reply::into_string).collect()
                }
                _ => Vec::new(),
            })
        })
    }

    fn sweep(&self) -> BoxFuture<'_, Result<Option<usize>, StoreError>> {
        // Redis expires sessions itself; a PING tells whether it is reachable.
        Box::pin(async move {
            self.client
                .cmd(&[b"PING"])
                .await
                .map(|_| None)
                .map_err(Into::into)
        })
    }
}
