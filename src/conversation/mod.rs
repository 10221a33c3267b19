//! Conversations: continue the real upstream chat across OpenAI turns instead of folding
//! the whole history into a fresh chat every time.
//!
//! After a turn completes cleanly we remember `key(history + our reply) → (chat_id,
//! response_id)`. A later request whose history up to its last assistant message hashes to
//! a remembered key (same client, account, model, system text, earlier messages, and the
//! assistant text we produced, compared after normalising whitespace — `key.rs`) continues
//! that chat: only the new messages after the last assistant message are sent, with
//! `parent_id` = the remembered `response_id`. Anything else — edited earlier messages, a
//! modified assistant message, unknown history — gets a fresh chat with the folded
//! history, so a turn never goes into a chat whose context differs from what the client
//! sent. Regenerating (the same history again) matches the earlier turn's key and branches
//! from the right `response_id`.
//!
//! Turns cut short on our side (`stop`, `max_tokens`) are not remembered: the upstream's
//! node holds more than the client saw.
//!
//! Requests on the same chat are serialised by a per-chat lock in the store (queued, at most
//! `CONVERSATION_QUEUE_MAX` waiters, `CONVERSATION_QUEUE_TIMEOUT` → 429). With Redis the
//! lock and the sessions are shared by every instance; if Redis fails, requests go on with
//! a local memory store (fresh chats, local locks), the degradation is logged and shown on
//! `/health` and in metrics, and Redis is tried again after a short pause.

pub(crate) mod budget;
pub(crate) mod busy;
pub(crate) mod key;
pub mod store;
pub(crate) mod transcript;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::common::epoch_millis;
use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::tools::prompt::tools_section;
use crate::turn::fold::{fold, fold_turns};
use crate::turn::{Role, TurnRequest};
use budget::{ChatWindow, RecentFailures};
use busy::{BusyPolicy, BusyWindow, Route};
use key::{Key, KeyBuilder};
use store::{MemoryStore, Session, SessionStore, StoreError};

/// The keys of one request.
struct Keys {
    /// The history up to the last assistant message (what a remembered turn is found by).
    prefix: Key,
    /// Where the messages after that history start.
    split: usize,
    /// After the new messages: where the reply is hashed in, giving the next turn's key.
    reply: KeyBuilder,
    /// The conversation: up to its first message.
    conversation: Key,
}

/// Run `$call` with `$s` bound to the store in use; if the primary (Redis) fails, note it
/// and run the same call on the local fallback.
macro_rules! with_store {
    ($self:ident, |$s:ident| $call:expr) => {{
        let (store, primary) = $self.pick();
        let r = {
            let $s: &dyn SessionStore = &*store;
            $call.await
        };
        match $self.note(primary, r) {
            Err(e) => match &$self.fallback {
                Some(f) if primary => {
                    let $s: &dyn SessionStore = &**f;
                    let _ = &e;
                    $call.await
                }
                _ => Err(e),
            },
            ok => ok,
        }
    }};
}

/// Where the turn goes upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatTarget {
    /// Create a chat first (`chats/new`), then send with `parent_id: null`.
    NewChat,
    /// Continue an existing chat after `parent_id` (the previous `response_id`).
    Existing {
        chat_id: String,
        parent_id: Option<String>,
    },
}

/// What one request sends upstream.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub target: ChatTarget,
    pub content: String,
    /// The conversation so far including this request's messages; the reply is appended
    /// to it as it streams, giving the key of the next turn.
    pub reply_key: KeyBuilder,
    /// The remembered key this request continued from (forgotten if the chat is gone).
    pub continued_from: Option<Key>,
    /// When the continued chat's last answer ended (Unix ms), if known.
    pub answered_at_ms: Option<u64>,
    /// The account that owns the continued chat (only its token may use the chat); `None`
    /// for a new chat (any account) and for sessions from before accounts.
    pub account: Option<String>,
    /// The conversation this turn belongs to, whatever chat it goes to: the client, model,
    /// system text, tools and first message (every step of an agent loop shares it).
    pub conversation: Key,
    /// The first message `content` holds: 0 for a fold, the first new message of a continued
    /// chat.
    pub(crate) from: usize,
    /// Documents the message attaches: the part of a long fold moved out of `content`
    /// (`turn::offload`); uploaded before the turn is sent.
    pub(crate) documents: Vec<crate::turn::offload::Document>,
    /// The images of the messages this turn sends (the new ones of a continued chat, all of
    /// a fold): chosen, checked and fetched before the turn is sent (`media`), uploaded with
    /// the documents.
    pub images: Vec<crate::turn::SentImage>,
    /// The images are chosen and fetched (and a note for the ones left out is in `content`).
    pub images_ready: bool,
    /// The `files[]` descriptors of the uploaded documents and images.
    pub files: Vec<serde_json::Value>,
}

impl Prepared {
    /// How long ago the continued chat's last answer ended, if known.
    pub fn since_answer(&self) -> Option<Duration> {
        let at = self.answered_at_ms.filter(|at| *at > 0)?;
        Some(Duration::from_millis(epoch_millis().saturating_sub(at)))
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub lock_ttl: Duration,
    pub queue_timeout: Duration,
    pub queue_max: usize,
    pub busy_policy: BusyPolicy,
    /// Upstream chats one conversation may open within a minute (0: no bound).
    pub chats_per_minute: usize,
    /// The largest fold sent to a fresh chat only to save waiting for a busy one.
    pub busy_fresh_max_bytes: usize,
}

/// How long to use the local store before trying a failed Redis again.
const RETRY_PRIMARY_AFTER: Duration = Duration::from_secs(2);

pub struct Conversations {
    primary: Arc<dyn SessionStore>,
    /// Used while the primary (Redis) is failing; `None` when the primary is memory.
    fallback: Option<Arc<MemoryStore>>,
    degraded_since: Mutex<Option<Instant>>,
    degraded: AtomicBool,
    account: String,
    settings: Settings,
    waiters: Mutex<HashMap<String, usize>>,
    /// How long chats stay busy after an answer, as this process has seen it.
    busy: Mutex<BusyWindow>,
    /// Chats opened per conversation in the last minute.
    pub chat_window: ChatWindow,
    /// Failures a retry cannot change, by request, for a minute.
    pub recent_failures: RecentFailures,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Conversations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conversations")
            .field("degraded", &self.degraded.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Conversations {
    pub fn new(
        primary: Arc<dyn SessionStore>,
        fallback: Option<Arc<MemoryStore>>,
        account: String,
        settings: Settings,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(Self {
            primary,
            fallback,
            degraded_since: Mutex::new(None),
            degraded: AtomicBool::new(false),
            account,
            chat_window: ChatWindow::new(settings.chats_per_minute, budget::WINDOW),
            recent_failures: RecentFailures::default(),
            settings,
            waiters: Mutex::new(HashMap::new()),
            busy: Mutex::new(BusyWindow::default()),
            metrics,
        })
    }

    /// Whether the shared store is failing and the local fallback is in use.
    pub fn is_degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }

    pub fn has_shared_store(&self) -> bool {
        self.fallback.is_some()
    }

    /// The store to use now: the primary, unless it failed within the last moments.
    fn pick(&self) -> (Arc<dyn SessionStore>, bool) {
        match &self.fallback {
            None => (self.primary.clone(), true),
            Some(fallback) => {
                let since = self
                    .degraded_since
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                if since.is_some_and(|t| t.elapsed() < RETRY_PRIMARY_AFTER) {
                    (fallback.clone(), false)
                } else {
                    (self.primary.clone(), true)
                }
            }
        }
    }

    /// Track the primary's health from an operation's result (only with a fallback).
    fn note<T>(&self, primary: bool, r: Result<T, StoreError>) -> Result<T, StoreError> {
        if self.fallback.is_none() || !primary {
            return r;
        }
        let mut since = self
            .degraded_since
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match &r {
            Ok(_) => {
                if self.degraded.swap(false, Ordering::Relaxed) {
                    tracing::info!("session store (Redis) is back; shared conversations resume");
                    self.metrics.session_store_up.set(1);
                }
                *since = None;
            }
            Err(e) => {
                if !self.degraded.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "session store (Redis) failed; using local state until it recovers");
                    self.metrics.session_store_up.set(0);
                }
                *since = Some(Instant::now());
            }
        }
        r
    }

    /// Decide where this request goes and what it sends.
    pub async fn prepare(&self, req: &TurnRequest, identity: &str, model: &str) -> Prepared {
        let Keys {
            prefix: prefix_key,
            split,
            reply: reply_key,
            conversation,
        } = self.keys(req, identity, model);
        let session = if split > 0 {
            with_store!(self, |s| s.get(&prefix_key)).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "session lookup failed");
                None
            })
        } else {
            None
        };
        let Some(s) = session else {
            return self.new_chat(req, reply_key, conversation, "new");
        };
        self.metrics
            .conversation_turns
            .with_label_values(&["continued"])
            .inc();
        Prepared {
            target: ChatTarget::Existing {
                chat_id: s.chat_id,
                parent_id: Some(s.parent_id),
            },
            content: fold_turns(req, split),
            from: split,
            reply_key,
            continued_from: Some(prefix_key),
            answered_at_ms: Some(s.answered_at_ms),
            account: (!s.account.is_empty()).then_some(s.account),
            conversation,
            documents: Vec::new(),
            images: req.images_from(split),
            images_ready: false,
            files: Vec::new(),
        }
    }

    /// A fresh chat with the whole history folded (`mode`: "new" in stateless mode,
    /// "fallback" after a lost chat or parent).
    pub fn fresh(
        &self,
        req: &TurnRequest,
        identity: &str,
        model: &str,
        mode: &'static str,
    ) -> Prepared {
        let keys = self.keys(req, identity, model);
        self.new_chat(req, keys.reply, keys.conversation, mode)
    }

    /// The key of the whole request — its messages and tools as the conversation keys hash
    /// them, and `settings`: whatever else changes what is sent (the chat type, thinking,
    /// the response format, `tool_choice`) — for remembering a failure of exactly this
    /// request.
    pub fn request_key(
        &self,
        req: &TurnRequest,
        identity: &str,
        model: &str,
        settings: &str,
    ) -> Key {
        let mut kb = self.keys(req, identity, model).reply;
        kb.message(Role::System, None, settings);
        kb.finish()
    }

    /// A fresh chat for a turn leaving a busy chat, if `fits` accepts it (a long
    /// conversation may fit the upstream's size limit only as a continuation). Not counted
    /// until used ([`Conversations::left_busy_chat`]).
    pub fn fresh_for_busy(
        &self,
        req: &TurnRequest,
        identity: &str,
        model: &str,
        fits: impl FnOnce(&Prepared) -> bool,
    ) -> Option<Prepared> {
        let keys = self.keys(req, identity, model);
        Some(Self::folded(req, keys.reply, keys.conversation)).filter(|p| fits(p))
    }

    fn new_chat(
        &self,
        req: &TurnRequest,
        reply_key: KeyBuilder,
        conversation: Key,
        mode: &'static str,
    ) -> Prepared {
        self.count_turn(mode);
        Self::folded(req, reply_key, conversation)
    }

    /// Count a turn by how it reaches the upstream (`conversation_turns_total{mode}`).
    fn count_turn(&self, mode: &'static str) {
        self.metrics
            .conversation_turns
            .with_label_values(&[mode])
            .inc();
    }

    /// A fresh chat with the whole history folded.
    fn folded(req: &TurnRequest, reply_key: KeyBuilder, conversation: Key) -> Prepared {
        Prepared {
            target: ChatTarget::NewChat,
            content: fold(req),
            from: 0,
            reply_key,
            continued_from: None,
            answered_at_ms: None,
            account: None,
            conversation,
            documents: Vec::new(),
            images: req.images_from(0),
            images_ready: false,
            files: Vec::new(),
        }
    }

    /// The keys of a request: see [`Keys`].
    fn keys(&self, req: &TurnRequest, identity: &str, model: &str) -> Keys {
        let (mut kb, split, conversation) = self.history_key(req, identity, model);
        let prefix = kb.finish();
        for m in req.messages[split..]
            .iter()
            .filter(|m| m.role != Role::System)
        {
            kb.history_message(m);
        }
        Keys {
            prefix,
            split,
            reply: kb,
            conversation,
        }
    }

    /// Key of everything up to the last assistant message (system text first); returns the
    /// builder at that point, the index where the new messages start, and the conversation's
    /// key (up to its first message).
    fn history_key(
        &self,
        req: &TurnRequest,
        identity: &str,
        model: &str,
    ) -> (KeyBuilder, usize, Key) {
        let mut kb = KeyBuilder::new(identity, &self.account, model);
        for m in req.messages.iter().filter(|m| m.role == Role::System) {
            kb.message(Role::System, None, &m.text());
        }
        // The tools are part of what the upstream chat was told: other tools, another chat.
        if let Some(tools) = req.tools.as_deref() {
            kb.message(Role::System, None, &tools_section(tools));
        }
        let conversation = {
            let mut root = kb.clone();
            if let Some(first) = req.messages.iter().find(|m| m.role != Role::System) {
                root.history_message(first);
            }
            root.finish()
        };
        let split = req
            .messages
            .iter()
            .rposition(|m| m.role == Role::Assistant)
            .map_or(0, |i| i + 1);
        for m in req.messages[..split]
            .iter()
            .filter(|m| m.role != Role::System)
        {
            kb.history_message(m);
        }
        (kb, split, conversation)
    }

    /// Where a continued turn goes, given how long ago its chat last answered.
    pub fn route(&self, since_answer: Duration) -> Route {
        self.busy_window()
            .route(since_answer, self.settings.busy_policy)
    }

    /// Whether a turn that would wait `left` for its busy chat, sending `continued` bytes,
    /// should go to a fresh chat with a `fold`-byte history instead ([`BusyWindow::fresh_pays`]).
    pub fn fresh_pays(&self, left: Duration, continued: usize, fold: usize) -> bool {
        self.busy_window()
            .fresh_pays(left, continued, fold, self.settings.busy_fresh_max_bytes)
    }

    /// A turn that sent `bytes` the chat had not read got its first upstream event after
    /// `ttft`.
    pub fn saw_first_token(&self, bytes: usize, ttft: Duration) {
        let mut w = self.busy_window();
        w.saw_first_token(bytes, ttft);
        self.metrics
            .prefill_per_kib
            .set(w.prefill_per_kib().as_secs_f64());
    }

    /// A continued turn goes to a fresh chat instead ([`Route::Fresh`] taken): counted as
    /// `conversation_turns_total{mode="busy"}` and as a chat left behind, and the window
    /// estimate probes lower.
    pub fn left_busy_chat(&self) {
        self.count_turn("busy");
        self.metrics.chats_left.with_label_values(&["busy"]).inc();
        let mut w = self.busy_window();
        w.chose_fresh();
        self.metrics.chat_busy_window.set(w.window().as_secs_f64());
    }

    /// A continued turn sent `since_answer` after its chat's last answer found it busy
    /// (`true`) or went through.
    pub fn saw_chat(&self, since_answer: Duration, busy: bool) {
        let mut w = self.busy_window();
        if busy {
            w.saw_busy(since_answer);
        } else {
            w.saw_free(since_answer);
        }
        self.metrics.chat_busy_window.set(w.window().as_secs_f64());
    }

    /// How long a chat whose last answer ended `since_answer` ago is estimated to stay busy.
    pub fn busy_left(&self, since_answer: Duration) -> Duration {
        self.busy_window().left(since_answer)
    }

    /// `chats/new` answered after `took`.
    pub fn chat_created_in(&self, took: Duration) {
        self.busy_window().chat_created_in(took);
    }

    fn busy_window(&self) -> std::sync::MutexGuard<'_, BusyWindow> {
        self.busy.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remember a completed turn under the key of the conversation including our reply.
    pub async fn remember(&self, key: &str, session: Session) {
        if let Err(e) = with_store!(self, |s| s.put(key, &session)) {
            tracing::warn!(error = %e, "could not remember the conversation");
        }
    }

    /// The remembered chat is gone upstream: forget it so the next turn starts fresh.
    pub async fn forget(&self, key: &str, reason: &'static str) {
        self.metrics
            .conversation_fallbacks
            .with_label_values(&[reason])
            .inc();
        if let Err(e) = with_store!(self, |s| s.remove(key)) {
            tracing::warn!(error = %e, "could not forget the conversation");
        }
    }

    /// Wait (bounded) for exclusive use of `chat_id`.
    pub async fn lock(self: &Arc<Self>, chat_id: &str) -> Result<ChatLock, ProxyError> {
        {
            let mut w = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
            let n = w.entry(chat_id.to_owned()).or_insert(0);
            if *n >= self.settings.queue_max {
                return Err(ProxyError::ConversationBusy);
            }
            *n += 1;
        }
        let _waiting = WaiterGuard {
            conv: self.clone(),
            chat_id: chat_id.to_owned(),
        };
        let owner = uuid::Uuid::new_v4().to_string();
        let deadline = Instant::now() + self.settings.queue_timeout;
        let mut delay = Duration::from_millis(5);
        let mut waited = false;
        loop {
            let got = with_store!(self, |s| s.try_lock(
                chat_id,
                &owner,
                self.settings.lock_ttl
            ))
            .unwrap_or(true); // no store at all: do not block the request
            if got {
                // Keep the lock alive while the turn runs: a short TTL, renewed, means a
                // crashed holder blocks the conversation only briefly.
                let renew = {
                    let (conv, chat_id, owner) = (self.clone(), chat_id.to_owned(), owner.clone());
                    tokio::spawn(async move {
                        let ttl = conv.settings.lock_ttl;
                        loop {
                            tokio::time::sleep(ttl / 3).await;
                            let _ = with_store!(conv, |s| s.try_lock(&chat_id, &owner, ttl));
                        }
                    })
                };
                return Ok(ChatLock {
                    conv: self.clone(),
                    chat_id: chat_id.to_owned(),
                    owner,
                    renew,
                    waited,
                });
            }
            if Instant::now() + delay > deadline {
                tracing::info!(chat_id, "gave up waiting for the conversation's chat lock");
                return Err(ProxyError::ConversationBusy);
            }
            tracing::debug!(chat_id, "waiting for the conversation's chat lock");
            waited = true;
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(100));
        }
    }

    /// Ask the store whether it answers (updates the degraded state; for `/health`).
    pub async fn probe(&self) -> bool {
        self.has_shared_store() && with_store!(self, |s| s.sweep()).is_ok() && !self.is_degraded()
            || !self.has_shared_store()
    }

    /// Expire sessions; returns the live count when known (for the gauge).
    pub async fn sweep(&self) -> Option<usize> {
        if let Some(f) = &self.fallback {
            let _ = f.sweep().await;
        }
        let live = with_store!(self, |s| s.sweep()).ok().flatten();
        if let Some(n) = live {
            self.metrics.sessions_live.set(n as i64);
        }
        live
    }

    /// Chats unused for `idle`, at most `max`, for upstream deletion (each returned once;
    /// the idle ones beyond `max` forgotten and counted).
    pub async fn take_idle_chats(&self, idle: Duration, max: usize) -> store::IdleChats {
        with_store!(self, |s| s.take_idle_chats(idle, max)).unwrap_or_default()
    }
}

struct WaiterGuard {
    conv: Arc<Conversations>,
    chat_id: String,
}

impl Drop for WaiterGuard {
    fn drop(&mut self) {
        let mut w = self.conv.waiters.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = w.get_mut(&self.chat_id) {
            *n -= 1;
            if *n == 0 {
                w.remove(&self.chat_id);
            }
        }
    }
}

/// Exclusive use of an upstream chat; released (by its owner token) by [`release`]
/// (awaited) or, failing that, when dropped (in the background).
///
/// [`release`]: ChatLock::release
pub struct ChatLock {
    conv: Arc<Conversations>,
    chat_id: String,
    owner: String,
    renew: tokio::task::JoinHandle<()>,
    waited: bool,
}

impl ChatLock {
    /// Whether another request held the lock when this one asked: that turn of the chat
    /// has just ended.
    pub fn waited(&self) -> bool {
        self.waited
    }

    /// Release now and wait until the store has it: a reply is complete only once the next
    /// turn can take the lock, even if this process dies right after answering.
    pub async fn release(mut self) {
        self.renew.abort();
        let chat_id = std::mem::take(&mut self.chat_id);
        let owner = std::mem::take(&mut self.owner);
        let conv = self.conv.clone();
        let _ = with_store!(conv, |s| s.unlock(&chat_id, &owner));
    }
}

impl Drop for ChatLock {
    fn drop(&mut self) {
        self.renew.abort();
        if self.owner.is_empty() {
            return; // released already
        }
        let conv = self.conv.clone();
        let chat_id = std::mem::take(&mut self.chat_id);
        let owner = std::mem::take(&mut self.owner);
        // Release asynchronously; if the runtime is gone the lock simply expires.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let _ = with_store!(conv, |s| s.unlock(&chat_id, &owner));
            });
        }
    }
}
