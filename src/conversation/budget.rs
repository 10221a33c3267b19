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
//!   message, which every step of an agent loop shares — of the chats that came to nothing
//!   (their turn failed), so a client that retries whatever it is told still cannot open
//!   more. Chats whose turns are answered, or still running, do not count: a conversation
//!   that opens a chat per step (`CONVERSATION_MODE=stateless`, a client that rewrites its
//!   history) is progress, and many clients sending the same first message at once (one
//!   conversation key without API keys) are not a storm.
//! * **a failure that repeats** is not tried again: the ledger marks a failure identical to
//!   the request's previous one, and [`RecentFailures`] gives it back at once, without an
//!   upstream call, to an identical request within a minute.
//!
//! The window and the memo are per process (a fleet behind a balancer bounds each instance).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::UpstreamError;

/// The span of the per-conversation window and of the failure memo.
pub(crate) const WINDOW: Duration = Duration::from_secs(60);

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
    /// The answer began: the upstream's first content or reasoning was read (the retry
    /// layer's deadline no longer applies).
    began: AtomicBool,
}

impl RequestChats {
    pub fn new(max: u32) -> Self {
        Self {
            max,
            counted: AtomicU32::new(0),
            opened: AtomicU32::new(0),
            last_failure: Mutex::new(None),
            began: AtomicBool::new(false),
        }
    }

    /// The answer began (the upstream's first output was read).
    pub fn mark_began(&self) {
        self.began.store(true, Ordering::Relaxed);
    }

    pub fn began(&self) -> bool {
        self.began.load(Ordering::Relaxed)
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

    /// The request's last failure.
    pub fn last_failure(&self) -> Option<UpstreamError> {
        self.last_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
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
    /// The map's size past which it is swept next.
    sweep_at: AtomicUsize,
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
            sweep_at: AtomicUsize::new(WINDOW_KEYS_SWEEP),
        }
    }

    /// Whether `conversation` may open a chat now, or how long until its window has room.
    pub fn admit(&self, conversation: &str) -> Result<(), Duration> {
        if self.limit == 0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut opened = self.opened.lock().unwrap_or_else(|p| p.into_inner());
        // A question only: a conversation with nothing counted gets no entry.
        let Some(times) = opened.get_mut(conversation) else {
            return Ok(());
        };
        self.expire(times, now);
        match times.front() {
            Some(oldest) if times.len() >= self.limit => {
                Err((*oldest + self.span).saturating_duration_since(now))
            }
            _ => Ok(()),
        }
    }

    /// Whether the window has room for one more chat.
    pub fn has_room(&self, conversation: &str) -> bool {
        self.admit(conversation).is_ok()
    }

    /// A chat opened for `conversation` came to nothing: its turn failed, or its answer was
    /// asked for again elsewhere. Counted in the window.
    pub fn came_to_nothing(&self, conversation: &str) {
        if self.limit == 0 {
            return;
        }
        let now = Instant::now();
        let mut opened = self.opened.lock().unwrap_or_else(|p| p.into_inner());
        // Conversations with nothing left in their window go, once the map has grown by
        // half since the last time (not a whole scan per call).
        if opened.len() > self.sweep_at.load(Ordering::Relaxed) {
            let span = self.span;
            opened.retain(|_, t| {
                t.back()
                    .is_some_and(|last| now.duration_since(*last) < span)
            });
            let next = (opened.len() + opened.len() / 2).max(WINDOW_KEYS_SWEEP);
            self.sweep_at.store(next, Ordering::Relaxed);
        }
        let times = opened.entry(conversation.to_owned()).or_default();
        self.expire(times, now);
        times.push_back(now);
    }

    /// Drop the times that left the window.
    fn expire(&self, times: &mut VecDeque<Instant>, now: Instant) {
        while times
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.span)
        {
            times.pop_front();
        }
    }
}

/// Failures that a retry cannot change now, by request (the whole request's key), each for
/// its while: the same request again gets the same answer without an upstream call.
#[derive(Debug, Default)]
pub struct RecentFailures {
    /// Each failure with when it stops being given back.
    failures: Mutex<HashMap<String, (Instant, UpstreamError)>>,
    /// When the expired were last swept out (at most every [`MEMO_SWEEP`]).
    swept: Mutex<Option<Instant>>,
}

/// How often a lookup sweeps the expired failures out, so an idle memo empties and requests
/// stop being keyed for it.
const MEMO_SWEEP: Duration = Duration::from_secs(5);

/// Most failures remembered; past it, the expired ones go, then the oldest.
const MEMO_MAX: usize = 4_096;

impl RecentFailures {
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
        let now = Instant::now();
        {
            let mut swept = self.swept.lock().unwrap_or_else(|p| p.into_inner());
            if swept.map_or(true, |at| now.duration_since(at) >= MEMO_SWEEP) {
                failures.retain(|_, (until, _)| now < *until);
                *swept = Some(now);
            }
        }
        match failures.get(request) {
            Some((until, e)) if now < *until => Some(e.clone()),
            Some(_) => {
                // Expired: gone, and with it, when it was the last, the need to key requests.
                failures.remove(request);
                None
            }
            None => None,
        }
    }

    /// Remember `e` for `request` for `ttl`.
    pub fn put(&self, request: &str, e: &UpstreamError, ttl: Duration) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if failures.len() >= MEMO_MAX {
            failures.retain(|_, (until, _)| now < *until);
            if failures.len() >= MEMO_MAX {
                if let Some(soonest) = failures
                    .iter()
                    .min_by_key(|(_, (until, _))| *until)
                    .map(|(k, _)| k.clone())
                {
                    failures.remove(&soonest);
                }
            }
        }
        failures.insert(request.to_owned(), (now + ttl, e.clone()));
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
    async fn a_conversation_opens_no_more_once_its_limit_of_chats_came_to_nothing() {
        let w = ChatWindow::new(2, Duration::from_secs(60));
        assert_eq!(w.admit("a"), Ok(()));
        w.came_to_nothing("a");
        tokio::time::advance(Duration::from_secs(10)).await;
        w.came_to_nothing("a");
        assert!(!w.has_room("a"));
        assert_eq!(
            w.admit("a"),
            Err(Duration::from_secs(50)),
            "until the oldest leaves"
        );
        assert_eq!(w.admit("b"), Ok(()), "per conversation");
        tokio::time::advance(Duration::from_secs(50)).await;
        assert_eq!(w.admit("a"), Ok(()));
        w.came_to_nothing("a");
        assert_eq!(w.admit("a"), Err(Duration::from_secs(10)));
        let unbounded = ChatWindow::new(0, Duration::from_secs(60));
        unbounded.came_to_nothing("x");
        assert_eq!(unbounded.admit("x"), Ok(()));
    }

    /// Every new conversation asks before its first chat; asking must not leave an entry
    /// behind (the soak's memory ramp: thousands of empty entries between sweeps).
    #[test]
    fn asking_leaves_nothing_behind() {
        let w = ChatWindow::new(10, Duration::from_secs(60));
        for i in 0..10_000 {
            assert!(w.has_room(&format!("conversation {i}")));
        }
        assert_eq!(w.opened.lock().unwrap().len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_is_remembered_for_its_while() {
        let m = RecentFailures::default();
        let e = UpstreamError::new(UpstreamClass::Rejected, "x");
        m.put("req", &e, Duration::from_secs(60));
        m.put("short", &e, Duration::from_secs(30));
        assert_eq!(m.get("req"), Some(e.clone()));
        assert_eq!(m.get("other"), None);
        tokio::time::advance(Duration::from_secs(31)).await;
        assert_eq!(m.get("short"), None);
        assert_eq!(m.get("req"), Some(e));
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(m.get("req"), None);
        assert!(m.is_empty(), "the expired are gone as they are met");
    }
}
