//! The request log: the last `REQUEST_LOG_SIZE` requests on the completion endpoints
//! (`/v1/chat/completions`, `/v1/messages`, `/v1/responses`, `/v1/images/generations`), one
//! [`Entry`] each — refusals before any upstream turn included — for the operators' question
//! "why did this fail?"; a live feed of new entries; and per-minute counts of the last hour
//! for the overview ([`minutes`]). Never a prompt, an answer or a secret: an entry holds ids,
//! names, numbers and the error's type and code.
//!
//! How an entry is filled: the request-log layer (`layers::request_log`, outside the error
//! map) puts a [`Recorder`] in the request's extensions; whoever learns something tells it —
//! the auth layer the key's fingerprint, the core the model, account, chat, first token and
//! tokens, the retry layer the retries, the error map the error response, the stream's end
//! an error after the 200 — and the layer completes the entry when the response *body* ends
//! or is dropped ([`RequestLog::record`]).
//!
//! Cost: nothing per streamed chunk. A request takes a handful of short, uncontended locks
//! on its own recorder (one per event above), then one lock of the log to push the entry
//! and count its minute, and one send on the feed's channel. A `Mutex<VecDeque>` rather than
//! a lock-free ring: a push is O(1) under a lock held for nanoseconds, once per request
//! (thousands a second at most), and a reader filters and copies out the `Arc`s it selects
//! under the same lock (a scan of at most `REQUEST_LOG_SIZE` entries) and serialises outside
//! it; a lock-free ring would save nothing measurable and cost `unsafe`.
//!
//! The live feed is a `tokio::sync::broadcast` channel of [`FEED_CAPACITY`] entries: a send
//! never waits, and a subscriber that falls that far behind skips what it missed (told so
//! in a comment, `feed`) rather than holding the request path.

mod feed;
pub(crate) mod minutes;
mod query;
mod record;
#[cfg(test)]
mod tests;

pub(crate) use feed::Feed;
pub(crate) use minutes::LastHour;
pub(crate) use query::{parse_query, Page, Query};
pub(crate) use record::{ErrorKinds, Recorder};

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;
use tokio::sync::broadcast;

use crate::routes::Endpoint;
use minutes::Minutes;

/// Entries a live subscriber may fall behind before it skips.
pub(crate) const FEED_CAPACITY: usize = 256;

/// One request, as the operators see it. Serialised as it is (the admin API's JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Entry {
    /// This instance's number of the entry, from 1 in the order recorded (set by
    /// [`RequestLog::record`]): unique where `id`, a client's `x-request-id`, need not be.
    pub(crate) seq: u64,
    /// The request id (`x-request-id`, as the response carried it).
    pub(crate) id: String,
    /// When the request arrived: RFC 3339, UTC, milliseconds.
    pub(crate) time: String,
    /// The same, in milliseconds since the Unix epoch.
    pub(crate) time_ms: u64,
    /// `chat_completions`, `messages`, `responses` or `images`.
    pub(crate) api: &'static str,
    /// The upstream model as resolved; the asked one if it never resolved; none when the
    /// request was refused before the chat stack parsed it (a 400 from validation included).
    pub(crate) model: Option<String>,
    /// The API key's fingerprint, `anon` without `API_KEYS`; none when no key was accepted.
    pub(crate) key: Option<String>,
    /// The upstream account of the last attempt (of the last turn to start, with `n`
    /// images).
    pub(crate) account: Option<String>,
    /// The upstream chat of that attempt.
    pub(crate) chat: Option<String>,
    /// The request asked for a stream (false when it was refused before the chat stack
    /// parsed it).
    pub(crate) stream: bool,
    /// The HTTP status sent; 499 when the client left before it.
    pub(crate) status: u16,
    /// The `type` of the error the client got (also in-band, after a 200); `client_closed`
    /// when the client left before the end.
    pub(crate) error_type: Option<&'static str>,
    /// The proxy's error code (OpenAI's `error.code`).
    pub(crate) error_code: Option<&'static str>,
    /// From arrival to the answer's first content.
    pub(crate) ttft_ms: Option<u64>,
    /// From arrival to the end of the response body.
    pub(crate) duration_ms: u64,
    /// The tokens of the answer as its `usage` said (summed over `n` images' turns); none
    /// without a completed answer.
    pub(crate) input_tokens: Option<u64>,
    pub(crate) output_tokens: Option<u64>,
    /// None also when the upstream did not report reasoning.
    pub(crate) reasoning_tokens: Option<u64>,
    /// Attempts the retry layer made after the first (summed over `n` images' turns).
    pub(crate) retries: u32,
    /// Turns moved to another account.
    pub(crate) moved: u32,
}

impl Entry {
    /// An error for the filters and the overview: a status other than 2xx (the completion
    /// endpoints answer 200, a 4xx or a 5xx) or an error in the body, in-band included.
    pub(crate) fn is_error(&self) -> bool {
        !(200..300).contains(&self.status) || self.error_type.is_some()
    }

    /// An error on the overview: [`Entry::is_error`] except a client leaving before the end
    /// (a user stopping an agent is the client's choice, not a failure to serve; the log
    /// and its `status=error` filter still show it).
    pub(crate) fn is_failure(&self) -> bool {
        self.is_error() && self.error_type != Some(record::CLIENT_CLOSED)
    }

    /// When the response ended, in milliseconds since the Unix epoch.
    pub(crate) fn end_ms(&self) -> u64 {
        self.time_ms.saturating_add(self.duration_ms)
    }
}

/// The API of a logged endpoint, as entries name it; `None` for every other route.
pub(crate) fn api_of(endpoint: Endpoint) -> Option<&'static str> {
    match endpoint {
        Endpoint::ChatCompletions => Some("chat_completions"),
        Endpoint::Messages => Some("messages"),
        Endpoint::Responses => Some("responses"),
        Endpoint::ImageGenerations => Some("images"),
        _ => None,
    }
}

/// The log of one instance: the ring of entries, the per-minute counts, the live feed.
#[derive(Debug)]
pub(crate) struct RequestLog {
    capacity: usize,
    inner: Mutex<Inner>,
    feed: broadcast::Sender<Arc<Entry>>,
}

#[derive(Debug)]
struct Inner {
    /// Oldest first; at most `capacity`.
    ring: VecDeque<Arc<Entry>>,
    minutes: Minutes,
    /// The last `seq` given.
    last_seq: u64,
}

impl RequestLog {
    /// A log keeping the last `capacity` entries (0: none, and nothing fed).
    pub(crate) fn new(capacity: usize) -> Self {
        RequestLog {
            capacity,
            inner: Mutex::new(Inner {
                ring: VecDeque::with_capacity(capacity),
                minutes: Minutes::default(),
                last_seq: 0,
            }),
            feed: broadcast::channel(FEED_CAPACITY).0,
        }
    }

    /// Entries kept at most (`REQUEST_LOG_SIZE`).
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Entries kept now.
    pub(crate) fn size(&self) -> usize {
        self.lock().ring.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Nothing panics under this lock; a poisoned one still holds consistent data.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A finished request: counted in its minute (the minute it ended), kept (the oldest
    /// entry goes when the ring is full) and sent to the live subscribers.
    pub(crate) fn record(&self, mut entry: Entry) {
        let entry = {
            let mut inner = self.lock();
            inner
                .minutes
                .record(entry.end_ms(), entry.is_failure(), entry.ttft_ms);
            if self.capacity == 0 {
                return;
            }
            inner.last_seq += 1;
            entry.seq = inner.last_seq;
            let entry = Arc::new(entry);
            if inner.ring.len() == self.capacity {
                inner.ring.pop_front();
            }
            inner.ring.push_back(entry.clone());
            entry
        };
        // No subscriber is not an error; a slow one skips (its receiver lags).
        let _ = self.feed.send(entry);
    }

    /// The entries `query` selects, newest first, at most its limit.
    pub(crate) fn select(&self, query: &Query) -> Vec<Arc<Entry>> {
        let inner = self.lock();
        inner
            .ring
            .iter()
            .rev()
            .filter(|e| query.filter.matches(e))
            .take(query.limit)
            .cloned()
            .collect()
    }

    /// A receiver of every entry recorded from now on.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Arc<Entry>> {
        self.feed.subscribe()
    }

    /// The last hour's per-minute counts and first-token times, as of `now_ms`.
    pub(crate) fn last_hour(&self, now_ms: u64) -> LastHour {
        self.lock().minutes.last_hour(now_ms)
    }
}

/// `{"requests": [entries, newest first], "capacity", "size"}` (`GET /admin/requests`).
pub(crate) fn list_json(entries: &[Arc<Entry>], capacity: usize, size: usize) -> Vec<u8> {
    #[derive(Serialize)]
    struct List<'a> {
        requests: Vec<&'a Entry>,
        capacity: usize,
        size: usize,
    }
    let list = List {
        requests: entries.iter().map(|e| &**e).collect(),
        capacity,
        size,
    };
    // Strings and numbers only: serialising cannot fail.
    serde_json::to_vec(&list).unwrap_or_default()
}
