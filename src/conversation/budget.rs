//! How many upstream chats a client's turn may open. Every chat is one more in the user's
//! Qwen account and a step towards its anti-bot challenge, and a failure that comes back on
//! a fresh chat is rarely cured by another: an agent retrying a 502 six times once made 18
//! chats for one step. Three bounds:
//!
//! * **per request** ([`RequestChats`], `CHATS_PER_REQUEST`, 2): across the retry layer's
//!   attempts, the core's fallbacks and a tool-hint retry. The retry layer puts one ledger in
//!   the request's extensions and the core counts into it. A chat for a turn moved off an
//!   account that was taken out of rotation (quota, ban, challenge) is not counted against
//!   it: each such move takes an account out, so they are bounded by the pool.
//! * **per conversation per minute** ([`ChatWindow`], `CHATS_PER_CONVERSATION_PER_MINUTE`):
//!   a sliding window per conversation — the client, model, system text, tools and first
//!   message, which every step of an agent loop shares — of the chats that came to no
//!   answer, so a client that retries whatever it is told still cannot open more. A chat
//!   whose turn is answered leaves the window: a conversation that opens a chat per step
//!   (`CONVERSATION_MODE=stateless`, a client that rewrites its history) is progress, not a
//!   storm.
//! * **a failure that repeats** is not tried again: the ledger marks a failure identical to
//!   the request's previous one, and [`RecentFailures`] gives it back at once, without an
//!   upstream call, to an identical request within a minute.
//!
//! The window and the memo are per process (a fleet behind a balancer bounds each instance).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::UpstreamError;

/// The span of the per-conversation window and of the failure memo.
pub const WINDOW: Duration = Duration::from_secs(60);

/// The chats one client request has opened, and its last failure. Shared (behind an `Arc`
/// in the request's extensions) by the retry layer's attempts and the core.
#[derive(Debug)]
pub struct RequestChats {
    max: u32,
    /// Chats counted against `max`.
    counted: AtomicU32,
    /// Every chat opened, moves off an account included (the metric).
    opened: AtomicU32,
    last_failure: Mutex<Option<UpstreamError>>,
}

impl RequestChats {
    pub fn new(max: u32) -> Self {
        Self {
            max,
            counted: AtomicU32::new(0),
            opened: AtomicU32::new(0),
            last_failure: Mutex::new(None),
        }
    }

    /// Chats this request may still open.
    pub fn left(&self) -> u32 {
        self.max
            .saturating_sub(self.counted.load(Ordering::Relaxed))
    }

    /// A chat was opened for this request; `counted`: against the bound (not for a turn
    /// moved off an account taken out of rotation).
    pub fn opened(&self, counted: bool) {
        self.opened.fetch_add(1, Ordering::Relaxed);
        if counted {
            self.counted.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Every chat the request opened.
    pub fn total(&self) -> u32 {
        self.opened.load(Ordering::Relaxed)
    }

    /// An attempt failed with `e`; whether that repeats the request's previous failure.
    pub fn failed(&self, e: &UpstreamError) -> bool {
        let mut last = self.last_failure.lock().unwrap_or_else(|p| p.into_inner());
        let repeated = last.as_ref().is_some_and(|l| l.same_as(e));
        *last = Some(e.clone());
        repeated
    }
}

/// Upstream chats opened per conversation within a sliding window.
#[derive(Debug)]
pub struct ChatWindow {
    limit: usize,
    span: Duration,
    opened: Mutex<HashMap<String, VecDeque<Instant>>>,
}

/// Past this many conversations, those with nothing in the window are dropped.
const WINDOW_KEYS_SWEEP: usize = 4_096;

impl ChatWindow {
    /// At most `limit` chats per conversation within `span` (`limit` 0: no bound).
    pub fn new(limit: usize, span: Duration) -> Self {
        Self {
            limit,
            span,
            opened: Mutex::new(HashMap::new()),
        }
    }

    /// Open a chat for `conversation` now: counted, or how long until the window has room.
    pub fn open(&self, conversation: &str) -> Result<(), Duration> {
        self.admit(conversation, true)
    }

    /// A chat opened for `conversation` answered its turn: it leaves the window.
    pub fn answered(&self, conversation: &str) {
        let now = Instant::now();
        self.with(conversation, now, |times| {
            times.pop_back();
        });
    }

    /// Count a chat that is opened whatever the window says (a turn moved off an account).
    pub fn force(&self, conversation: &str) {
        let now = Instant::now();
        self.with(conversation, now, |times| times.push_back(now));
    }

    /// Whether the window has room for one more chat (nothing counted).
    pub fn has_room(&self, conversation: &str) -> bool {
        self.admit(conversation, false).is_ok()
    }

    fn admit(&self, conversation: &str, count: bool) -> Result<(), Duration> {
        if self.limit == 0 {
            return Ok(());
        }
        let now = Instant::now();
        self.with(conversation, now, |times| {
            if times.len() >= self.limit {
                let oldest = times.front().copied().unwrap_or(now);
                return Err((oldest + self.span).saturating_duration_since(now));
            }
            if count {
                times.push_back(now);
            }
            Ok(())
        })
    }

    /// Run `f` on the conversation's times still in the window.
    fn with<T>(
        &self,
        conversation: &str,
        now: Instant,
        f: impl FnOnce(&mut VecDeque<Instant>) -> T,
    ) -> T {
        let mut opened = self.opened.lock().unwrap_or_else(|p| p.into_inner());
        if opened.len() > WINDOW_KEYS_SWEEP {
            let span = self.span;
            opened.retain(|_, t| {
                t.back()
                    .is_some_and(|last| now.duration_since(*last) < span)
            });
        }
        let times = opened.entry(conversation.to_owned()).or_default();
        while times
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.span)
        {
            times.pop_front();
        }
        f(times)
    }
}

/// Failures that a retry cannot change, by request (the whole request's key), for a while:
/// the same request again gets the same answer without an upstream call.
#[derive(Debug)]
pub struct RecentFailures {
    ttl: Duration,
    failures: Mutex<HashMap<String, (Instant, UpstreamError)>>,
}

/// Most failures remembered; past it, the expired ones go, then the oldest.
const MEMO_MAX: usize = 4_096;

impl RecentFailures {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Whether nothing is remembered (then no request needs its key computed).
    pub fn is_empty(&self) -> bool {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    /// The failure remembered for `request`, if still fresh.
    pub fn get(&self, request: &str) -> Option<UpstreamError> {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        // The expired go as they are met, so an idle memo is empty again.
        let ttl = self.ttl;
        failures.retain(|_, (at, _)| at.elapsed() < ttl);
        failures.get(request).map(|(_, e)| e.clone())
    }

    pub fn put(&self, request: &str, e: &UpstreamError) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if failures.len() >= MEMO_MAX {
            let ttl = self.ttl;
            failures.retain(|_, (at, _)| at.elapsed() < ttl);
            if failures.len() >= MEMO_MAX {
                if let Some(oldest) = failures
                    .iter()
                    .min_by_key(|(_, (at, _))| *at)
                    .map(|(k, _)| k.clone())
                {
                    failures.remove(&oldest);
                }
            }
        }
        failures.insert(request.to_owned(), (Instant::now(), e.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::UpstreamClass;

    #[test]
    fn a_request_counts_its_chats_and_tells_a_repeated_failure() {
        let r = RequestChats::new(2);
        assert_eq!(r.left(), 2);
        r.opened(true);
        r.opened(false); // a move off an account
        assert_eq!((r.left(), r.total()), (1, 2));
        r.opened(true);
        assert_eq!(r.left(), 0);
        let e = UpstreamError::new(UpstreamClass::Rejected, "Bad_Request: Internal error");
        assert!(!r.failed(&e), "the first failure repeats nothing");
        assert!(r.failed(&e.clone()), "the same class and words");
        assert!(!r.failed(&UpstreamError::new(UpstreamClass::Rejected, "other words")));
    }

    #[tokio::test(start_paused = true)]
    async fn a_conversation_opens_at_most_its_limit_within_the_window() {
        let w = ChatWindow::new(2, Duration::from_secs(60));
        assert_eq!(w.open("a"), Ok(()));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(w.open("a"), Ok(()));
        assert!(!w.has_room("a"));
        assert_eq!(
            w.open("a"),
            Err(Duration::from_secs(50)),
            "until the oldest leaves"
        );
        assert_eq!(w.open("b"), Ok(()), "per conversation");
        tokio::time::advance(Duration::from_secs(50)).await;
        assert_eq!(w.open("a"), Ok(()));
        // A move is counted even when the window is full.
        w.force("a");
        assert_eq!(w.open("a"), Err(Duration::from_secs(10)));
        // Chats whose turns were answered leave the window.
        w.answered("a");
        assert!(!w.has_room("a"));
        w.answered("a");
        assert_eq!(w.open("a"), Ok(()));
        assert_eq!(
            ChatWindow::new(0, Duration::from_secs(60)).open("x"),
            Ok(())
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_is_remembered_for_its_ttl() {
        let m = RecentFailures::new(Duration::from_secs(60));
        let e = UpstreamError::new(UpstreamClass::Rejected, "x");
        m.put("req", &e);
        assert_eq!(m.get("req"), Some(e));
        assert_eq!(m.get("other"), None);
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(m.get("req"), None);
    }
}
