//! Session storage behind a trait: memory (default) and Redis (`REDIS_URL`, many instances).
//!
//! Both keep the same semantics: sessions expire after `SESSION_TIMEOUT` of disuse; the
//! per-chat lock is an expiring entry with an owner token, released only by its owner; with
//! `CHAT_CLEANUP=delete` (and only then: `tracking_chats`) the last use of every chat is
//! tracked so abandoned chats can be deleted. Untracked, nothing would ever take the entries
//! out again: one per chat ever continued, without bound.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// Where a conversation continues upstream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub chat_id: String,
    /// The `response_id` of our last reply: the next turn's `parent_id`.
    pub parent_id: String,
    /// When that reply ended (Unix ms; 0 when unknown, as in sessions stored before it was
    /// recorded): the chat is busy upstream for a while after it (`busy`).
    #[serde(default)]
    pub answered_at_ms: u64,
    /// The account that owns the chat (empty in sessions stored before accounts: the
    /// single account's).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub account: String,
}

impl Session {
    /// The chat with its owner, as tracked for `CHAT_CLEANUP=delete`:
    /// `<account>/<chat_id>`, or the bare chat id for the single account.
    pub fn owned_chat(&self) -> String {
        if self.account.is_empty() {
            self.chat_id.clone()
        } else {
            format!("{}/{}", self.account, self.chat_id)
        }
    }
}

/// `(account, chat_id)` of a tracked chat (account names never contain `/`).
pub fn split_owned_chat(owned: &str) -> (Option<&str>, &str) {
    match owned.split_once('/') {
        Some((account, chat)) => (Some(account), chat),
        None => (None, owned),
    }
}

/// What `take_idle_chats` hands over: chats to delete, oldest first, and how many more idle
/// chats it forgot (left upstream) because the caller had no room for them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct IdleChats {
    pub chats: Vec<String>,
    pub forgotten: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError(pub String);

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

pub use crate::common::BoxFuture;

pub trait SessionStore: Send + Sync + 'static {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Session>, StoreError>>;
    fn put<'a>(
        &'a self,
        key: &'a str,
        session: &'a Session,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    fn remove<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Take the lock of `chat_id` for `owner` unless someone else holds it; if `owner`
    /// holds it already, extend it (renewal).
    fn try_lock<'a>(
        &'a self,
        chat_id: &'a str,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;
    /// Release the lock, only if `owner` still holds it.
    fn unlock<'a>(
        &'a self,
        chat_id: &'a str,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Chats unused for `idle`, at most `max` of them, each returned once (for upstream
    /// deletion); every other idle chat is forgotten and counted, so the index stays bounded
    /// when deletion falls behind.
    fn take_idle_chats<'a>(
        &'a self,
        idle: Duration,
        max: usize,
    ) -> BoxFuture<'a, Result<IdleChats, StoreError>>;
    /// Drop expired entries; returns the live session count when the store knows it.
    fn sweep(&self) -> BoxFuture<'_, Result<Option<usize>, StoreError>>;
}

/// In-process store: TTL, LRU eviction beyond `max_entries`.
#[derive(Debug)]
pub struct MemoryStore {
    ttl: Duration,
    max_entries: usize,
    track_chats: bool,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    sessions: HashMap<String, Entry>,
    /// Recency queue with lazy deletion: an item is live only if its tick matches.
    order: VecDeque<(u64, String)>,
    tick: u64,
    locks: HashMap<String, (String, Instant)>,
    /// Chat → last use, only when tracking (`take_idle_chats` empties it).
    chats: HashMap<String, Instant>,
}

#[derive(Debug)]
struct Entry {
    session: Session,
    tick: u64,
    last_used: Instant,
}

impl MemoryStore {
    pub fn new(ttl: Duration, max_entries: usize) -> Self {
        Self {
            ttl,
            max_entries: max_entries.max(1),
            track_chats: false,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Record each chat's last use for `take_idle_chats` (`CHAT_CLEANUP=delete`).
    pub fn tracking_chats(mut self, on: bool) -> Self {
        self.track_chats = on;
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn now_get(&self, key: &str) -> Option<Session> {
        let now = Instant::now();
        let mut g = self.lock();
        let inner = &mut *g;
        let expired = match inner.sessions.get(key) {
            None => return None,
            Some(e) => now.duration_since(e.last_used) > self.ttl,
        };
        if expired {
            inner.sessions.remove(key);
            return None;
        }
        inner.tick += 1;
        let tick = inner.tick;
        let e = inner.sessions.get_mut(key)?;
        e.tick = tick;
        e.last_used = now;
        let session = e.session.clone();
        inner.order.push_back((tick, key.to_owned()));
        if self.track_chats {
            inner.chats.insert(session.owned_chat(), now);
        }
        Some(session)
    }

    fn now_put(&self, key: &str, session: &Session) {
        let now = Instant::now();
        let mut g = self.lock();
        let inner = &mut *g;
        inner.tick += 1;
        let tick = inner.tick;
        inner.sessions.insert(
            key.to_owned(),
            Entry {
                session: session.clone(),
                tick,
                last_used: now,
            },
        );
        inner.order.push_back((tick, key.to_owned()));
        if self.track_chats {
            inner.chats.insert(session.owned_chat(), now);
        }
        while inner.sessions.len() > self.max_entries {
            let Some((t, k)) = inner.order.pop_front() else {
                break;
            };
            if inner.sessions.get(&k).is_some_and(|e| e.tick == t) {
                inner.sessions.remove(&k);
            }
        }
        if inner.order.len() > 2 * inner.sessions.len() + 64 {
            let sessions = &inner.sessions;
            inner
                .order
                .retain(|(t, k)| sessions.get(k).is_some_and(|e| e.tick == *t));
        }
    }
}

fn ready<'a, T: Send + 'a>(v: T) -> BoxFuture<'a, T> {
    Box::pin(std::future::ready(v))
}

impl SessionStore for MemoryStore {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Session>, StoreError>> {
        ready(Ok(self.now_get(key)))
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        session: &'a Session,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.now_put(key, session);
        ready(Ok(()))
    }

    fn remove<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        self.lock().sessions.remove(key);
        ready(Ok(()))
    }

    fn try_lock<'a>(
        &'a self,
        chat_id: &'a str,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let now = Instant::now();
        let mut g = self.lock();
        let free = match g.locks.get(chat_id) {
            None => true,
            Some((o, until)) => o == owner || *until <= now,
        };
        if free {
            g.locks
                .insert(chat_id.to_owned(), (owner.to_owned(), now + ttl));
        }
        ready(Ok(free))
    }

    fn unlock<'a>(
        &'a self,
        chat_id: &'a str,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let mut g = self.lock();
        if g.locks.get(chat_id).is_some_and(|(o, _)| o == owner) {
            g.locks.remove(chat_id);
        }
        ready(Ok(()))
    }

    fn take_idle_chats<'a>(
        &'a self,
        idle: Duration,
        max: usize,
    ) -> BoxFuture<'a, Result<IdleChats, StoreError>> {
        let now = Instant::now();
        let mut g = self.lock();
        let mut idle_chats: Vec<(Instant, String)> = g
            .chats
            .iter()
            .filter(|(_, last)| now.duration_since(**last) > idle)
            .map(|(chat, last)| (*last, chat.clone()))
            .collect();
        for (_, chat) in &idle_chats {
            g.chats.remove(chat);
        }
        idle_chats.sort_unstable();
        let forgotten = idle_chats.len().saturating_sub(max) as u64;
        idle_chats.truncate(max);
        ready(Ok(IdleChats {
            chats: idle_chats.into_iter().map(|(_, c)| c).collect(),
            forgotten,
        }))
    }

    fn sweep(&self) -> BoxFuture<'_, Result<Option<usize>, StoreError>> {
        let now = Instant::now();
        let mut g = self.lock();
        let ttl = self.ttl;
        g.sessions
            .retain(|_, e| now.duration_since(e.last_used) <= ttl);
        g.locks.retain(|_, (_, until)| *until > now);
        let inner = &mut *g;
        let sessions = &inner.sessions;
        inner
            .order
            .retain(|(t, k)| sessions.get(k).is_some_and(|e| e.tick == *t));
        ready(Ok(Some(inner.sessions.len())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(chat: &str) -> Session {
        Session {
            chat_id: chat.into(),
            parent_id: "p".into(),
            answered_at_ms: 1,
            account: String::new(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn ttl_expiry_and_sweep() {
        let m = MemoryStore::new(Duration::from_secs(10), 100);
        m.put("a", &s("c1")).await.unwrap();
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(
            m.get("a").await.unwrap(),
            Some(s("c1")),
            "use refreshes the TTL"
        );
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(m.get("a").await.unwrap().is_some());
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(m.sweep().await.unwrap(), Some(0));
        assert_eq!(m.get("a").await.unwrap(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn lru_eviction_keeps_recently_used() {
        let m = MemoryStore::new(Duration::from_secs(100), 2);
        m.put("a", &s("c1")).await.unwrap();
        m.put("b", &s("c2")).await.unwrap();
        m.get("a").await.unwrap();
        m.put("c", &s("c3")).await.unwrap();
        assert!(
            m.get("b").await.unwrap().is_none(),
            "least recently used evicted"
        );
        assert!(m.get("a").await.unwrap().is_some());
        assert!(m.get("c").await.unwrap().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn locks_have_owners_and_expire() {
        let m = MemoryStore::new(Duration::from_secs(100), 10);
        assert!(m.try_lock("c", "me", Duration::from_secs(5)).await.unwrap());
        assert!(!m
            .try_lock("c", "you", Duration::from_secs(5))
            .await
            .unwrap());
        m.unlock("c", "you").await.unwrap();
        assert!(
            !m.try_lock("c", "you", Duration::from_secs(5))
                .await
                .unwrap(),
            "only the owner releases"
        );
        m.unlock("c", "me").await.unwrap();
        assert!(m
            .try_lock("c", "you", Duration::from_secs(5))
            .await
            .unwrap());
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(
            m.try_lock("c", "me", Duration::from_secs(5)).await.unwrap(),
            "a crashed holder's lock expires"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn idle_chats_are_reported_once() {
        let m = MemoryStore::new(Duration::from_secs(100), 10).tracking_chats(true);
        m.put("a", &s("c1")).await.unwrap();
        tokio::time::advance(Duration::from_secs(5)).await;
        m.put("b", &s("c2")).await.unwrap();
        let taken = m.take_idle_chats(Duration::from_secs(3), 10).await.unwrap();
        assert_eq!(taken.chats, vec!["c1".to_owned()]);
        assert_eq!(taken.forgotten, 0);
        let again = m.take_idle_chats(Duration::from_secs(3), 10).await.unwrap();
        assert_eq!(again, IdleChats::default());
    }

    #[tokio::test(start_paused = true)]
    async fn idle_chats_beyond_the_callers_room_are_forgotten_oldest_kept() {
        let m = MemoryStore::new(Duration::from_secs(100), 10).tracking_chats(true);
        for c in ["c1", "c2", "c3", "c4"] {
            m.put(c, &s(c)).await.unwrap();
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        m.put("c5", &s("c5")).await.unwrap();
        let taken = m
            .take_idle_chats(Duration::from_millis(500), 2)
            .await
            .unwrap();
        assert_eq!(taken.chats, vec!["c1".to_owned(), "c2".to_owned()]);
        assert_eq!(taken.forgotten, 2, "c3 and c4");
        tokio::time::advance(Duration::from_secs(1)).await;
        let rest = m
            .take_idle_chats(Duration::from_millis(500), 2)
            .await
            .unwrap();
        assert_eq!(rest.chats, vec!["c5".to_owned()]);
    }

    /// The soak's leak: every chat ever continued stayed in the chat index when nothing
    /// (no `CHAT_CLEANUP=delete`) would take it out again.
    #[tokio::test(start_paused = true)]
    async fn without_chat_cleanup_nothing_is_kept_per_chat() {
        let m = MemoryStore::new(Duration::from_secs(10), 100);
        for i in 0..1000 {
            let key = format!("k{}", i % 50);
            m.put(&key, &s(&format!("c{i}"))).await.unwrap();
            m.get(&key).await.unwrap();
        }
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(m.sweep().await.unwrap(), Some(0));
        let g = m.lock();
        assert!(g.chats.is_empty(), "{} chats kept", g.chats.len());
        assert!(g.order.is_empty() && g.sessions.is_empty() && g.locks.is_empty());
    }
}
