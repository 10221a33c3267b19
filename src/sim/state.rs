//! Simulator state: chats (owner, message nodes, lock), counters, the replay queue.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

use bytes::Bytes;
use serde_json::{json, Map, Value};
use tokio::time::Instant;

#[derive(Debug)]
pub struct Chat {
    pub owner: String,
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
}

#[derive(Debug, Default)]
pub struct SimState {
    pub chats: Mutex<HashMap<String, Chat>>,
    pub replay: Mutex<VecDeque<(Bytes, usize)>>,
    pub chats_created: AtomicU64,
    pub completions: AtomicU64,
    pub completion_requests: AtomicU64,
    pub aborted_streams: AtomicU64,
    /// Completions refused with "The chat is in progress!".
    pub busy_refusals: AtomicU64,
    /// Requests by HTTP version.
    pub http1_requests: AtomicU64,
    pub http2_requests: AtomicU64,
    pub in_flight: AtomicI64,
}

/// Lock a std mutex; a poisoned lock only means another handler panicked mid-update of
/// plain counters, which is still consistent enough for a simulator.
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl SimState {
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
        json!({
            "chats_created": self.chats_created.load(Ordering::Relaxed),
            "completions": self.completions.load(Ordering::Relaxed),
            "completion_requests": self.completion_requests.load(Ordering::Relaxed),
            "aborted_streams": self.aborted_streams.load(Ordering::Relaxed),
            "busy_refusals": self.busy_refusals.load(Ordering::Relaxed),
            "http1_requests": self.http1_requests.load(Ordering::Relaxed),
            "http2_requests": self.http2_requests.load(Ordering::Relaxed),
            "in_flight": self.in_flight.load(Ordering::Relaxed),
            "chats": per_chat,
        })
    }
}
