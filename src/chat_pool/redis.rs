//! The chat pools in Redis, shared by every instance: per pool a list
//! `qp:acct:{<account>}:pool:<chat type>:<model>` of `"<made ms> <chat id>"`, oldest
//! first, and the set `qp:pools` naming every pool ever filled (`<account>\t<chat
//! type>\t<model>`, for the expiry sweep; bounded by accounts × chat types × models). A
//! take is one script on one key: no chat is handed to two instances.

use std::sync::Arc;

use super::{PoolKey, PoolStore, ReadyChat, Taken};
use crate::common::BoxFuture;
use crate::conversation::store::StoreError;
use crate::redis::RedisClient;

const POOLS: &str = "qp:pools";

/// Pop the oldest chat made at or after `ARGV[1]`, and every older one on the way: the
/// reply is the chat (or "") followed by the expired ones.
const TAKE: &str = "local r = {''} \
    while true do \
      local v = redis.call('lpop', KEYS[1]) \
      if not v then return r end \
      local made = tonumber(string.match(v, '^(%d+) ')) \
      if made and made >= tonumber(ARGV[1]) then r[1] = v return r end \
      table.insert(r, v) \
    end";
/// Pop every chat made before `ARGV[1]` (a prefix: oldest first).
const EXPIRE: &str = "local r = {} \
    while true do \
      local v = redis.call('lindex', KEYS[1], 0) \
      if not v then return r end \
      local made = tonumber(string.match(v, '^(%d+) ')) \
      if made and made >= tonumber(ARGV[1]) then return r end \
      redis.call('lpop', KEYS[1]) table.insert(r, v) \
    end";
const LEN: &str = "return redis.call('llen', KEYS[1])";
const PUSH: &str = "return redis.call('rpush', KEYS[1], ARGV[1])";
const CLEAR: &str =
    "local v = redis.call('lrange', KEYS[1], 0, -1) redis.call('del', KEYS[1]) return v";
const REGISTER: &str = "return redis.call('sadd', KEYS[1], ARGV[1])";
const MEMBERS: &str = "return redis.call('smembers', KEYS[1])";

/// Ready chats in Redis.
#[derive(Debug)]
pub struct RedisPool {
    client: Arc<RedisClient>,
}

impl RedisPool {
    pub fn new(client: Arc<RedisClient>) -> Self {
        Self { client }
    }
}

fn list_key(key: &PoolKey) -> String {
    format!(
        "qp:acct:{{{}}}:pool:{}:{}",
        key.account, key.chat_type, key.model
    )
}

fn member(key: &PoolKey) -> String {
    format!("{}\t{}\t{}", key.account, key.chat_type, key.model)
}

fn from_member(member: &str) -> Option<PoolKey> {
    let mut parts = member.splitn(3, '\t');
    Some(PoolKey {
        account: parts.next()?.to_owned(),
        chat_type: parts.next()?.to_owned(),
        model: parts.next()?.to_owned(),
    })
}

fn entry(chat: &ReadyChat) -> String {
    format!("{} {}", chat.made_ms, chat.id)
}

fn from_entry(entry: &str) -> Option<ReadyChat> {
    let (made, id) = entry.split_once(' ')?;
    Some(ReadyChat {
        id: id.to_owned(),
        made_ms: made.parse().ok()?,
    })
}

impl PoolStore for RedisPool {
    fn take<'a>(
        &'a self,
        key: &'a PoolKey,
        fresh_since_ms: u64,
    ) -> BoxFuture<'a, Result<Taken, StoreError>> {
        Box::pin(async move {
            let reply: Vec<String> = self
                .client
                .eval(TAKE, &[&list_key(key)], &[&fresh_since_ms.to_string()])
                .await?;
            let mut reply = reply.into_iter();
            let chat = reply.next().as_deref().and_then(from_entry);
            Ok(Taken {
                chat,
                expired: reply.filter_map(|e| from_entry(&e)).collect(),
            })
        })
    }

    fn len<'a>(&'a self, key: &'a PoolKey) -> BoxFuture<'a, Result<usize, StoreError>> {
        Box::pin(async move {
            let n: i64 = self.client.eval(LEN, &[&list_key(key)], &[]).await?;
            Ok(n.max(0) as usize)
        })
    }

    fn put<'a>(
        &'a self,
        key: &'a PoolKey,
        chat: ReadyChat,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let _: i64 = self
                .client
                .eval(PUSH, &[&list_key(key)], &[&entry(&chat)])
                .await?;
            let _: i64 = self
                .client
                .eval(REGISTER, &[POOLS], &[&member(key)])
                .await?;
            Ok(())
        })
    }

    fn clear<'a>(&'a self, key: &'a PoolKey) -> BoxFuture<'a, Result<Vec<ReadyChat>, StoreError>> {
        Box::pin(async move {
            let reply: Vec<String> = self.client.eval(CLEAR, &[&list_key(key)], &[]).await?;
            Ok(reply.iter().filter_map(|e| from_entry(e)).collect())
        })
    }

    fn take_expired(
        &self,
        fresh_since_ms: u64,
    ) -> BoxFuture<'_, Result<Vec<(PoolKey, ReadyChat)>, StoreError>> {
        Box::pin(async move {
            let members: Vec<String> = self.client.eval(MEMBERS, &[POOLS], &[]).await?;
            let since = fresh_since_ms.to_string();
            let mut expired = Vec::new();
            for key in members.iter().filter_map(|m| from_member(m)) {
                let reply: Vec<String> = self
                    .client
                    .eval(EXPIRE, &[&list_key(&key)], &[&since])
                    .await?;
                expired.extend(
                    reply
                        .iter()
                        .filter_map(|e| from_entry(e))
                        .map(|chat| (key.clone(), chat)),
                );
            }
            Ok(expired)
        })
    }
}
