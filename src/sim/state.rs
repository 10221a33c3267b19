//! Simulator state: chats (owner, type, message nodes, lock), sessions, account penalties,
//! the sign-in wall, files and generated pictures, counters, the replay queue.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

use bytes::Bytes;
use serde_json::{json, Map, Value};
use tokio::time::Instant;

#[derive(Debug)]
pub struct Chat {
    pub owner: String,
    /// The `chat_type` it was created with (`t2t` when `chats/new` named none): only a t2i
    /// chat takes t2i completions (`t2i.rs`).
    pub chat_type: String,
    pub nodes: HashSet<String>,
    pub in_flight: bool,
    pub busy_until: Option<Instant>,
    pub completions: u64,
    /// Completion attempts (for `in_progress=K`).
    pub attempts: u32,
    pub last_parent_id: Option<String>,
    /// Every accepted completion, in order.
    pub turns: Vec<TurnRecord>,
    /// The tools the chat's prompt described, as the model remembers them.
    pub tools: Vec<super::tools::SimTool>,
}

/// What one completion sent and got (for tests: parent chains, body sizes).
#[derive(Debug, Clone, serde::Serialize)]
pub struct TurnRecord {
    pub parent_id: Option<String>,
    pub response_id: String,
    /// Characters of the user message content (directives included).
    pub content_chars: usize,
    /// Bytes of the whole request body.
    pub body_bytes: usize,
    /// Files the message referred to.
    pub files: usize,
    /// Characters of the documents among them (read as prompt).
    pub file_chars: usize,
}

/// Counters of one account (stats key: its email in strict mode, its token out of the box).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct AccountCounters {
    /// Completion requests that reached account resolution (answered or refused).
    pub completions: u64,
    /// Those answered with an account-level error document: quota, challenge, ban, expired.
    pub refused: u64,
    pub chats_created: u64,
}

/// Sign-ins and refreshes of the auth endpoints.
#[derive(Debug, Default)]
pub struct AuthCounters {
    /// Sign-ins answered with a token.
    pub signins: u64,
    /// Sign-ins answered otherwise: the wall, missing headers, wrong credentials.
    pub signins_refused: u64,
    /// Unix ms of every sign-in attempt, in order.
    pub signin_times_ms: Vec<u64>,
    pub refreshes: u64,
    pub refreshes_refused: u64,
}

#[derive(Debug, Default)]
pub struct SimState {
    pub chats: Mutex<HashMap<String, Chat>>,
    pub replay: Mutex<VecDeque<(Bytes, usize)>>,
    pub chats_created: AtomicU64,
    /// Chats that received a first completion (a chat made ahead and never used is created,
    /// not used).
    pub chats_used: AtomicU64,
    pub completions: AtomicU64,
    pub completion_requests: AtomicU64,
    pub aborted_streams: AtomicU64,
    /// Completions refused with "The chat is in progress!".
    pub busy_refusals: AtomicU64,
    /// Requests by HTTP version.
    pub http1_requests: AtomicU64,
    pub http2_requests: AtomicU64,
    pub in_flight: AtomicI64,
    /// Chats removed by `DELETE /api/v2/chats/` (all of an account's chats at once).
    pub chats_purged: AtomicU64,
    /// Calls of `GET /api/models` without a token (they pick the guest catalogue's length).
    pub guest_catalogue_calls: AtomicU64,
    pub accounts: Mutex<HashMap<String, AccountCounters>>,
    pub auth: Mutex<AuthCounters>,
    pub sessions: Mutex<super::sessions::Sessions>,
    pub penalties: Mutex<super::penalties::Penalties>,
    pub signin_wall: Mutex<super::signin_wall::SigninWall>,
    /// Completions whose calls were written with each habit (`habits.rs`).
    pub habits: Mutex<std::collections::BTreeMap<&'static str, u64>>,
    /// Completions whose calls got a habit of the `--habits` cycle so far.
    pub habit_turns: AtomicU64,
    /// Grants, uploaded objects, parses (`files.rs`).
    pub(crate) files: Mutex<super::files::Files>,
    /// Generated pictures and their URL key (`images.rs`).
    pub(crate) images: Mutex<super::images::Images>,
}

/// Lock a std mutex; a poisoned lock only means another handler panicked mid-update of
/// plain counters, which is still consistent enough for a simulator.
pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl SimState {
    /// Update the counters of the account with stats key `label`.
    pub fn count_account(&self, label: &str, update: impl FnOnce(&mut AccountCounters)) {
        let mut accounts = lock(&self.accounts);
        // The key is copied once per account, not once per request.
        match accounts.get_mut(label) {
            Some(counters) => update(counters),
            None => update(accounts.entry(label.to_owned()).or_default()),
        }
    }

    pub fn count_habit(&self, habit: super::habits::Habit) {
        *lock(&self.habits).entry(habit.name()).or_default() += 1;
    }

    pub fn stats(&self) -> Value {
        let chats = lock(&self.chats);
        let mut per_chat = Map::new();
        for (id, c) in chats.iter() {
            per_chat.insert(
                id.clone(),
                json!({"completions": c.completions, "attempts": c.attempts,
                       "last_parent_id": c.last_parent_id, "turns": c.turns}),
            );
        }
        drop(chats);
        let accounts = lock(&self.accounts).clone();
        let auth = lock(&self.auth);
        json!({
            "chats_created": self.chats_created.load(Ordering::Relaxed),
            "chats_used": self.chats_used.load(Ordering::Relaxed),
            "completions": self.completions.load(Ordering::Relaxed),
            "completion_requests": self.completion_requests.load(Ordering::Relaxed),
            "aborted_streams": self.aborted_streams.load(Ordering::Relaxed),
            "busy_refusals": self.busy_refusals.load(Ordering::Relaxed),
            "http1_requests": self.http1_requests.load(Ordering::Relaxed),
            "http2_requests": self.http2_requests.load(Ordering::Relaxed),
            "in_flight": self.in_flight.load(Ordering::Relaxed),
            "chats": per_chat,
            "chats_purged": self.chats_purged.load(Ordering::Relaxed),
            "accounts": accounts,
            "signins": auth.signins,
            "signins_refused": auth.signins_refused,
            "refreshes": auth.refreshes,
            "refreshes_refused": auth.refreshes_refused,
            "signin_times_ms": auth.signin_times_ms,
            "habits": lock(&self.habits).clone(),
            "files": lock(&self.files).counters,
            "images": lock(&self.images).counters,
        })
    }
}
