//! One request's turn as it moves between chats and accounts: [`TurnState`] holds where
//! the turn goes now and what it has used so far; its steps are [`TurnState::begin`]
//! (where the turn goes first), [`TurnState::attempt`] (one send), and what follows an
//! attempt — [`TurnState::ask_again`] (the tool-call retry with a hint) or
//! [`TurnState::after_failure`] (the account moves, the conversation fallbacks).

use std::sync::Arc;
use std::time::Duration;

use hyper::Response;
use tokio::time::Instant;

use super::accounts::{account_move, avoid_spent_images, AccountMove, AccountTrail};
use super::fallback::{Fallback, Fallbacks};
use super::fit::{attach_files, check_upstream_size, fit};
use super::respond::{Answered, Attempt};
use super::Bookkeeping;
use crate::app::AppState;
use crate::backoff::Backoff;
use crate::body::ProxyBody;
use crate::common::epoch_millis;
use crate::conversation::budget::RequestChats;
use crate::conversation::busy::Route;
use crate::conversation::{ChatTarget, Prepared};
use crate::error::{ProxyError, UpstreamClass};
use crate::media::left_out_note;
use crate::tools::prompt::Hint;
use crate::turn::plan::Plan;
use crate::turn::{ApiRequest, ClientApi, Output};

/// What a request's turn carries from attempt to attempt.
pub(super) struct TurnState<'a, A: ClientApi> {
    state: &'a Arc<AppState>,
    req: &'a ApiRequest<A::Options>,
    /// The client (conversation keys are per client), narrowed to its session.
    identity: &'a str,
    /// Whose usage the turn is, and the request's record in the request log.
    books: &'a Bookkeeping,
    /// When the request arrived.
    start: Instant,
    /// The upstream chats the request has opened (shared with the retry layer's attempts).
    chats: &'a RequestChats,
    plan: &'a Plan,
    /// Where the turn goes now and what it sends.
    prepared: Prepared,
    fallbacks: Fallbacks,
    backoff: Backoff,
    /// The hint of the one retry a tool-calling answer may get; it stays in the turn
    /// whatever chat the turn ends up in.
    hint: Option<Hint>,
    /// The rest of the chat's busy window, waited (with its lock held) before the next send.
    wait: Duration,
    /// No attempt was sent yet.
    first_attempt: bool,
    trail: AccountTrail,
    /// Whether the turn's new chats come from the chats made ahead.
    pool: PoolUse,
}

/// The turn and the chats made ahead (`chat_pool`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PoolUse {
    /// A new chat is taken from the account's pool when it has one.
    Allowed,
    /// The chat of the attempt in flight was taken from the pool.
    Taken,
    /// A chat taken from the pool was unknown upstream: this turn makes its own.
    Spoiled,
}

impl<'a, A: ClientApi> TurnState<'a, A> {
    /// Where the turn goes first: the conversation's remembered chat, or a fresh chat with
    /// the history folded (stateless mode, an account that cannot take turns now, or a busy
    /// chat a fresh one beats).
    pub(super) async fn begin(
        state: &'a Arc<AppState>,
        req: &'a ApiRequest<A::Options>,
        identity: &'a str,
        books: &'a Bookkeeping,
        start: Instant,
        chats: &'a RequestChats,
        plan: &'a Plan,
    ) -> Self {
        let conv = &state.conversations;
        let turn = &req.turn;
        let prepared = if state.config.conversations.continue_chats {
            conv.prepare(turn, identity, &plan.model).await
        } else {
            conv.fresh(turn, identity, &plan.model, "new")
        };
        let mut this = TurnState {
            state,
            req,
            identity,
            books,
            start,
            chats,
            plan,
            prepared,
            fallbacks: Fallbacks::default(),
            backoff: Backoff::from_config(&state.config.retry),
            hint: None,
            wait: Duration::ZERO,
            first_attempt: true,
            trail: AccountTrail::default(),
            pool: PoolUse::Allowed,
        };
        // The remembered chat's account cannot take turns now (cooling, quarantined, gone):
        // the conversation moves to a fresh chat, with its history folded, elsewhere.
        if let (Some(owner), Some(key)) = (
            this.prepared.account.as_deref(),
            &this.prepared.continued_from,
        ) {
            if state.accounts.caller_of(owner).is_none() {
                conv.forget(key, "account").await;
                state
                    .metrics
                    .chats_left
                    .with_label_values(&["account"])
                    .inc();
                this.prepared = this.fresh("account");
            }
        }
        this.wait = match this
            .prepared
            .since_answer()
            .map(|since| (since, conv.route(since)))
        {
            Some((_, Route::After(left))) => left,
            Some((since, Route::Fresh)) => {
                let left = conv.busy_left(since);
                match this.fresh_for_busy(left) {
                    Some(fresh) => {
                        conv.left_busy_chat();
                        this.prepared = fresh;
                        Duration::ZERO
                    }
                    None => left,
                }
            }
            Some((_, Route::Now)) | None => Duration::ZERO,
        };
        this
    }

    /// Send, and fall back while the chosen chat cannot take the turn.
    pub(super) async fn run(mut self) -> Result<Response<ProxyBody>, ProxyError> {
        loop {
            let e = match self.attempt().await {
                Ok(Answered::Response(rsp)) => return Ok(rsp),
                Ok(Answered::RetryWithHint(hint)) => {
                    self.ask_again(hint);
                    continue;
                }
                Err(e) => e,
            };
            self.after_failure(e).await?;
        }
    }

    /// Where the turn goes now.
    #[cfg(test)]
    pub(super) fn prepared(&self) -> &Prepared {
        &self.prepared
    }

    /// The answer did not satisfy the tools: ask once more, with `hint`. The client never
    /// sees the first answer or the hint. A continued chat gets the same turn again, with
    /// the hint, as a sibling of the first answer: a fresh chat would fold the whole history
    /// again, which costs the upstream a new chat and may not fit its size limit. A new
    /// chat's turn is the whole history anyway, and goes to another fresh chat.
    pub(super) fn ask_again(&mut self, hint: Hint) {
        tracing::info!(
            hint = hint.label(),
            "the answer did not satisfy the tools; asking again"
        );
        let m = &self.state.metrics;
        m.tool_calls.with_label_values(&["retried"]).inc();
        self.hint = Some(hint);
        if self.prepared.continued_from.is_none() {
            // The first answer's chat is left behind with it.
            m.chats_left.with_label_values(&["hint"]).inc();
            self.prepared = self.fresh("fallback");
        } else {
            // The chat has just answered (the first answer): its busy window starts now,
            // and it is waited out rather than met as a busy answer.
            self.prepared.answered_at_ms = Some(epoch_millis());
            self.wait = self.state.conversations.busy_left(Duration::ZERO);
        }
        self.append_hint();
    }

    /// After a failed attempt: the turn moves off the account, waits for its busy chat, goes
    /// to a fresh chat — or the request fails with `e` (or what the account move says).
    pub(super) async fn after_failure(&mut self, e: ProxyError) -> Result<(), ProxyError> {
        let conv = &self.state.conversations;
        if self.stale_chat(&Err::<(), _>(&e)) {
            // A chat made ahead that the upstream no longer knows: the turn goes to a chat
            // made now, as if the stale one had never been taken (it is not counted against
            // the request's chats: `moving`), and the pool's other chats of its kind go.
            if let Some(account) = self.prepared.account.take() {
                self.state
                    .chat_pool
                    .discard(&account, self.plan.chat_type, &self.plan.model)
                    .await;
            }
            tracing::info!("a chat made ahead was unknown upstream; making one for the turn");
            self.pool = PoolUse::Spoiled;
            self.prepared.target = ChatTarget::NewChat;
            self.trail.moving = true;
            return Ok(());
        }
        if self.pool == PoolUse::Taken {
            self.pool = PoolUse::Allowed;
        }
        let image = self.req.turn.output != Output::Text;
        match account_move(self.state, &mut self.trail, &e, image).await {
            AccountMove::Stay => {}
            AccountMove::Again => return Ok(()),
            AccountMove::Fail(e) => return Err(e),
            AccountMove::Elsewhere => {
                // The chat belongs to the account left behind: a fresh one elsewhere,
                // with the history folded.
                if self.prepared.continued_from.is_some() {
                    self.state
                        .metrics
                        .chats_left
                        .with_label_values(&["account"])
                        .inc();
                }
                self.prepared = self.fresh("account");
                self.trail.moving = true;
                self.books.record.moved();
                self.append_hint();
                return Ok(());
            }
        }
        let class = e.upstream_class();
        if let (Some(class), Some(key)) = (class, &self.prepared.continued_from) {
            if matches!(
                class,
                UpstreamClass::ParentNotFound | UpstreamClass::ChatNotFound
            ) {
                // The remembered chat or parent is gone upstream: forget it.
                conv.forget(key, class.label()).await;
            }
        }
        // For a continued chat, the window just learned says how long it stays busy, or
        // that a fresh chat is faster (if the folded history fits).
        let busy = class == Some(UpstreamClass::ChatInProgress);
        let mut leave_for = None;
        let learned = match busy.then(|| self.prepared.since_answer()).flatten() {
            Some(since) => match conv.route(since) {
                Route::Fresh => {
                    let left = conv.busy_left(since);
                    leave_for = self.fresh_for_busy(left);
                    Some(match leave_for {
                        Some(_) => Route::Fresh,
                        None => Route::After(left),
                    })
                }
                route => Some(route),
            },
            None => None,
        };
        let Some(fallback) = self.fallbacks.decide(&e, &self.backoff, learned) else {
            return Err(e);
        };
        if matches!(fallback, Fallback::FreshChat(_)) && !self.may_open_chat(&self.prepared) {
            tracing::info!(
                error = e.metric_label(),
                "no upstream chat left for this request or conversation; not falling back"
            );
            return Err(e);
        }
        tracing::info!(
            error = e.metric_label(),
            fallback = ?fallback,
            "the chat cannot take the turn; falling back"
        );
        match fallback {
            // Waited in `attempt`, with the chat's lock held.
            Fallback::SameChat(delay) => self.wait = delay,
            Fallback::FreshChat(delay) => {
                tokio::time::sleep(delay).await;
                self.prepared = match leave_for {
                    Some(fresh) => {
                        conv.left_busy_chat();
                        fresh
                    }
                    None => self.fresh("fallback"),
                };
                self.append_hint();
            }
        }
        Ok(())
    }

    /// One attempt: size check, chat lock, an account, a new chat if needed, then send and
    /// answer. Leaves `prepared` pointing at the chat actually used (a busy chat is retried
    /// as it is) and `trail.last` at the account used.
    pub(super) async fn attempt(&mut self) -> Result<Answered, ProxyError> {
        let state = self.state;
        let wait = std::mem::take(&mut self.wait);
        let first_attempt = std::mem::replace(&mut self.first_attempt, false);
        if first_attempt && self.req.turn.output != Output::Text {
            avoid_spent_images(state, &mut self.trail)?;
        }
        // Only this attempt's account may be blamed for its failure (after an answer asked
        // again, the account that gave it is not this attempt's until leased again).
        self.trail.last = None;
        // Too large for one request: the least needed part moves into documents.
        let hint = self.hint_text();
        fit(
            &mut self.prepared,
            &self.req.turn,
            self.plan,
            state.config.upstream_body_limit,
            hint,
            state,
        )
        .await?;
        self.ready_images().await?;
        let conv = &state.conversations;
        // One generation per chat: wait (bounded) for other requests on this conversation.
        let lock = match &self.prepared.target {
            ChatTarget::Existing { chat_id, .. } => Some(conv.lock(chat_id).await?),
            ChatTarget::NewChat => None,
        };
        // Queued behind another turn of this chat, which has just ended: the chat's busy
        // window starts now, not at the answer this request continues. (A retry may find
        // its own previous attempt's lock not yet released, which says nothing about the
        // chat.)
        let busy_wait = match &lock {
            Some(lock)
                if first_attempt && lock.waited() && self.prepared.answered_at_ms.is_some() =>
            {
                self.prepared.answered_at_ms = Some(epoch_millis());
                conv.busy_left(Duration::ZERO)
            }
            _ => wait,
        };
        // The rest of the chat's busy window, waited with its lock held: no later turn of
        // this conversation overtakes.
        if !busy_wait.is_zero() {
            tokio::time::sleep(busy_wait).await;
        }
        // The account: the chat's owner for a continued chat (if it cannot take turns now,
        // the chat is as good as gone: the fallback moves the conversation to a fresh chat),
        // the best account otherwise.
        let pool = &state.accounts;
        let lease = match (&self.prepared.target, self.prepared.account.as_deref()) {
            (ChatTarget::Existing { .. }, Some(owner)) => match pool.acquire_on(owner).await {
                Some(lease) => lease?,
                None => {
                    return Err(ProxyError::upstream(
                        UpstreamClass::ChatNotFound,
                        "the account that owns the chat cannot take turns now",
                    ))
                }
            },
            _ => pool.acquire(&self.trail.left).await?,
        };
        self.trail.last = Some(lease.used());
        self.books.record.account(lease.name());
        state
            .metrics
            .account_turns
            .with_label_values(&[lease.name(), "false"])
            .inc();
        // The documents go up with the account that sends the turn.
        attach_files(state, &mut self.prepared, &lease, self.plan).await?;
        // When this attempt reaches a continued chat, relative to its last answer.
        let sent_since = self.prepared.since_answer();
        let mut opened = false;
        if self.prepared.target == ChatTarget::NewChat {
            let moving = std::mem::take(&mut self.trail.moving);
            self.may_create_chat(moving)?;
            let asked = Instant::now();
            let ready = match self.pool {
                PoolUse::Spoiled => None,
                _ => {
                    state
                        .chat_pool
                        .take(lease.account(), self.plan.chat_type, &self.plan.model)
                        .await
                }
            };
            let chat_id = match ready {
                Some(chat_id) => {
                    self.pool = PoolUse::Taken;
                    chat_id
                }
                None => {
                    state
                        .client
                        .create_chat(lease.caller(), &self.plan.model, self.plan.chat_type)
                        .await?
                }
            };
            // What a new chat costs the turn now (the pool's hits included): the busy
            // window weighs it against waiting for a busy chat.
            conv.chat_created_in(asked.elapsed());
            // Counted once it exists: a `chats/new` that failed opened nothing.
            self.chats.opened(!moving);
            opened = true;
            self.prepared.target = ChatTarget::Existing {
                chat_id,
                parent_id: None,
            };
            self.prepared.account = Some(lease.name().to_owned());
        }
        // The one retry a tool-calling answer may get goes to the same chat when the request
        // continued a conversation's chat, else to a fresh chat (`ask_again`): that only if
        // the request and the conversation may open one.
        let tool_retry = self.hint.is_none()
            && (self.prepared.continued_from.is_some() || self.may_open_chat(&self.prepared));
        let result = Attempt::<A> {
            state,
            req: self.req,
            plan: self.plan,
            prepared: &self.prepared,
            start: self.start,
            tool_retry,
            opened_chat: opened,
            chats: self.chats,
            books: self.books,
        }
        .respond(lock, lease)
        .await;
        // The chat this attempt opened came to nothing: its turn failed before the answer
        // began, or the answer is asked for again (a stream that fails later is counted
        // where its turn ends).
        if opened && !matches!(result, Ok(Answered::Response(_))) && !self.stale_chat(&result) {
            conv.chat_window
                .came_to_nothing(&self.prepared.conversation);
        }
        if let Some(since) = sent_since {
            match &result {
                Ok(_) => conv.saw_chat(since, false),
                Err(e) if e.upstream_class() == Some(UpstreamClass::ChatInProgress) => {
                    conv.saw_chat(since, true);
                }
                Err(_) => {}
            }
        }
        result
    }

    /// Whether `result` is the failure of a chat taken from the pool that the upstream did
    /// not know (before anything was answered: `chat_not_found` comes first).
    fn stale_chat<T, E: std::borrow::Borrow<ProxyError>>(&self, result: &Result<T, E>) -> bool {
        self.pool == PoolUse::Taken
            && matches!(result, Err(e) if e.borrow().upstream_class() == Some(UpstreamClass::ChatNotFound))
    }

    /// A fresh chat with the whole history folded (`mode`: the turn metric's label).
    fn fresh(&self, mode: &'static str) -> Prepared {
        self.state
            .conversations
            .fresh(&self.req.turn, self.identity, &self.plan.model, mode)
    }

    /// The continued chat would stay busy `left` longer: the turn in a fresh chat with the
    /// history folded, if that pays (`BusyWindow::fresh_pays`: the fold is small enough,
    /// and waiting costs more than `chats/new`, reading the fold and the chat left behind),
    /// fits the upstream's size limit, and the request and the conversation may still open
    /// a chat. Otherwise the turn waits for its chat.
    fn fresh_for_busy(&self, left: Duration) -> Option<Prepared> {
        let limit = self.state.config.upstream_body_limit;
        let conv = &self.state.conversations;
        let continued = self.prepared.content.len();
        conv.fresh_for_busy(&self.req.turn, self.identity, &self.plan.model, |p| {
            conv.fresh_pays(left, continued, p.content.len())
                && self.may_open_chat(p)
                && check_upstream_size(p, self.plan, limit).is_ok()
        })
    }

    /// Whether this request and its conversation may open one more upstream chat
    /// (`conversation::budget`).
    fn may_open_chat(&self, prepared: &Prepared) -> bool {
        self.chats.left() > 0
            && self
                .state
                .conversations
                .chat_window
                .has_room(&prepared.conversation)
    }

    /// Whether a chat may be opened for this request, within the request's and the
    /// conversation's bounds — always for a turn moved off an account taken out of
    /// rotation (`moving`). The decisions before this one (the retry layer, the fallbacks,
    /// the tool-hint retry, the busy choice) check first, so a refusal here is the
    /// conversation's window filled by its other requests — or, should a decision have
    /// missed it, the request's own chats spent, answered with its last failure.
    fn may_create_chat(&self, moving: bool) -> Result<(), ProxyError> {
        if moving {
            return Ok(());
        }
        if self.chats.left() == 0 {
            return Err(self.chats.last_failure().map_or_else(
                || ProxyError::Internal("no upstream chat left for this request".to_owned()),
                ProxyError::from,
            ));
        }
        if let Err(wait) = self
            .state
            .conversations
            .chat_window
            .admit(&self.prepared.conversation)
        {
            tracing::info!(
                wait_s = wait.as_secs(),
                "the conversation opened its limit of upstream chats within the minute"
            );
            return Err(ProxyError::ChatLimit {
                retry_after_secs: wait.as_secs_f64().ceil() as u64,
            });
        }
        Ok(())
    }

    /// The retry hint as it ends what is sent, if the turn has one.
    fn hint_text(&self) -> Option<String> {
        let (hint, tools) = self.hint.zip(self.req.turn.tools.as_deref())?;
        Some(format!("\n\n{}", hint.text(tools)))
    }

    /// Choose, fetch and check the images the turn sends (once per prepared turn), before an
    /// account is taken; a note for the ones left out opens the message (its end is the
    /// user's request and the retry hint).
    async fn ready_images(&mut self) -> Result<(), ProxyError> {
        if self.prepared.images_ready || self.prepared.images.is_empty() {
            return Ok(());
        }
        let newest = self.req.turn.messages.len().saturating_sub(1);
        let left_out = self
            .state
            .media
            .ready(
                &mut self.prepared.images,
                self.prepared.documents.len(),
                newest,
                self.plan.vision,
            )
            .await?;
        self.prepared.images_ready = true;
        if left_out > 0 {
            self.prepared
                .content
                .insert_str(0, &left_out_note(left_out));
        }
        Ok(())
    }

    /// The retry hint, appended to the last user-side turn of what is sent.
    fn append_hint(&mut self) {
        if let Some(text) = self.hint_text() {
            self.prepared.content.push_str(&text);
        }
    }
}
