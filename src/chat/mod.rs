//! The core service of `POST /v1/chat/completions`: validated request → upstream turn →
//! streamed or aggregated OpenAI response.
//!
//! One call: the challenge cooldown (`qwen::cooldown`) → the model plan → where the turn
//! goes (`conversation`: continue a remembered chat, or a fresh one with the history
//! folded) → the size check against `UPSTREAM_BODY_LIMIT` → the chat lock → a new chat if
//! needed → send and answer (`respond`). A continued chat that is probably still busy with
//! its last answer is waited for (after taking its lock, so turns keep their order) or left
//! for a fresh chat, whichever the learned busy window says is faster
//! (`conversation::busy`). When the chosen chat cannot take the turn — busy,
//! or gone upstream — the core falls back itself (`fallback`): that changes *what* is sent,
//! which is not the retry layer's business. The end of the turn, streamed or not, goes
//! through one `turn::TurnEnd`.
//!
//! `Ok` is returned only once the answer has begun, so every `Err` happens before the
//! first byte and the retry layer may retry it.

mod fallback;
mod respond;
mod turn;

/// The stage chain of one answer (for benchmarks of the production chain).
pub use turn::TurnStages;

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::{Request, Response};
use tokio::time::Instant;

use crate::accounts::signin::Renewal;
use crate::accounts::{Blame, Used};
use crate::app::AppState;
use crate::backoff::Backoff;
use crate::body::ProxyBody;
use crate::common::{epoch_millis, epoch_secs, BoxFuture};
use crate::conversation::budget::RequestChats;
use crate::conversation::busy::Route;
use crate::conversation::{ChatTarget, Prepared};
use crate::error::{ProxyError, UpstreamClass};
use crate::identity::ClientIdentity;
use crate::openai::mapping::{self, Plan};
use crate::openai::request::ChatRequest;
use crate::qwen::request::{Turn, CHAT_ID_PLACEHOLDER};
use crate::server::RequestStart;
use crate::tools::prompt::Hint;
use fallback::{Fallback, Fallbacks};
use respond::{Answered, Attempt};

/// The innermost service of the chat route.
#[derive(Clone, Debug)]
pub struct ChatCore {
    state: Arc<AppState>,
}

impl ChatCore {
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }
}

impl tower::Service<Request<Arc<ChatRequest>>> for ChatCore {
    type Response = Response<ProxyBody>;
    type Error = ProxyError;
    // Boxed once: the whole turn (catalogue, store, lock, upstream) is one async function.
    type Future = BoxFuture<'static, Result<Response<ProxyBody>, ProxyError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Arc<ChatRequest>>) -> Self::Future {
        let state = self.state.clone();
        let start = req
            .extensions()
            .get::<RequestStart>()
            .map_or_else(Instant::now, |s| s.0);
        // Whose conversation this is, as the auth layer established it. Its absence is a
        // wiring bug; failing closed keeps one tenant from ever continuing another's chat.
        let Some(identity) = req.extensions().get::<ClientIdentity>().cloned() else {
            return Box::pin(std::future::ready(Err(ProxyError::Internal(
                "the request reached the core without a client identity".to_owned(),
            ))));
        };
        // The chats this request has opened, shared with the retry layer's other attempts
        // (a request that reaches the core without that layer counts for itself).
        let chats = req
            .extensions()
            .get::<Arc<RequestChats>>()
            .cloned()
            .unwrap_or_else(|| {
                Arc::new(RequestChats::new(
                    state.config.conversations.chats_per_request,
                ))
            });
        Box::pin(complete(state, req.into_body(), identity, start, chats))
    }
}

/// One request, start to answer (or error).
pub async fn complete(
    state: Arc<AppState>,
    req: Arc<ChatRequest>,
    identity: ClientIdentity,
    start: Instant,
    chats: Arc<RequestChats>,
) -> Result<Response<ProxyBody>, ProxyError> {
    state.accounts.global.check()?;
    let catalog = state.catalog().await?;
    let plan = mapping::plan(&req, &catalog)?;
    let conv = &state.conversations;
    // The same request failed in a way a retry cannot change a moment ago: that answer
    // again, without an upstream call (and without another chat).
    // (The whole request is hashed for it only while some failure is remembered.)
    let request_key = || {
        let settings = format!(
            "{}|{:?}|{:?}|{:?}",
            plan.chat_type,
            plan.features,
            req.response_format,
            req.tools.as_deref().map(|t| (&t.choice, t.parallel))
        );
        conv.request_key(&req, identity.as_str(), &plan.model, &settings)
    };
    if !conv.recent_failures.is_empty() {
        if let Some(mut e) = conv.recent_failures.get(&request_key()) {
            tracing::info!(
                error = e.class.label(),
                "the same request failed moments ago; answered without an upstream call"
            );
            e.repeated = true;
            return Err(e.into());
        }
    }
    let mut result = converse(&state, &req, &identity, start, &chats, &plan).await;
    if let Err(ProxyError::Upstream(e)) = &mut result {
        // A failure about what was sent (not about the upstream's state) that came back
        // the same on the request's second attempt is not tried again: the retry layer
        // stops, the client is told, and an identical request gets it back for a minute.
        let about_the_request = matches!(
            e.class,
            UpstreamClass::Rejected
                | UpstreamClass::ServerError
                | UpstreamClass::EmptyStream
                | UpstreamClass::Truncated
                | UpstreamClass::Protocol
                | UpstreamClass::InvalidInput
        );
        if about_the_request && chats.failed(e) {
            e.repeated = true;
        }
        // Remembered for the identical request: a refusal of the request itself (once it
        // is final: invalid input is never retried; a `Bad_Request` after it repeated) for a
        // minute, a passing failure that repeated for the wait the client is told.
        if e.repeated || e.class == UpstreamClass::InvalidInput {
            let ttl = if e.refuses_the_request() {
                crate::conversation::budget::WINDOW
            } else {
                crate::error::REPEATED_WAIT
            };
            conv.recent_failures.put(&request_key(), e, ttl);
        }
        if e.class == UpstreamClass::Challenge {
            // Keep `Retry-After` truthful: no upstream call before the pause ends.
            if let Some(pause) = state.accounts.challenge_pause() {
                e.retry_after = Some(Duration::from_secs(pause.as_secs_f64().ceil() as u64));
            }
        }
    }
    result
}

/// The accounts side of one request: which accounts it has left, and the one renewal of
/// an expired token it may do on each.
#[derive(Debug, Default)]
struct AccountTrail {
    /// Accounts this request left (quota, challenge, ban): not tried again.
    left: Vec<String>,
    /// The next chat is for a turn moved off an account taken out of rotation: not counted
    /// against the request's chats (such moves are bounded by the pool).
    moving: bool,
    /// Accounts whose token this request renewed (once each).
    renewed: Vec<String>,
    /// A challenge moved the request once; a second one is not the account's doing.
    moved_on_challenge: bool,
    /// The account and token of the last attempt.
    last: Option<Used>,
}

/// What to do after an attempt failed on an account.
enum AccountMove {
    /// The failure says nothing about the account: the usual fallbacks decide.
    Stay,
    /// Same chat, same account, new token.
    Again,
    /// A fresh chat on another account.
    Elsewhere,
    /// Give up with this error.
    Fail(ProxyError),
}

/// Blame the account of the failed attempt and decide whether the turn moves.
async fn account_move(state: &AppState, trail: &mut AccountTrail, e: &ProxyError) -> AccountMove {
    let Some(used) = trail.last.take() else {
        return AccountMove::Stay;
    };
    let pool = &state.accounts;
    let name = used.account.name().to_owned();
    let blame = pool.blame(&used.account, e);
    let moved = |trail: &mut AccountTrail| {
        trail.left.push(name.clone());
        if pool.can_move(&trail.left) {
            state
                .metrics
                .account_turns
                .with_label_values(&[&name, "true"])
                .inc();
            tracing::info!(
                account = %crate::untrusted::Untrusted(&name),
                error = e.metric_label(),
                "moving the turn to another account"
            );
            AccountMove::Elsewhere
        } else {
            AccountMove::Stay
        }
    };
    match blame {
        Blame::None | Blame::ChatChallenge => AccountMove::Stay,
        Blame::Quota => match moved(trail) {
            // Every account is cooling: the earliest return, not this one's.
            AccountMove::Stay => AccountMove::Fail(pool.unavailable()),
            m => m,
        },
        Blame::Forbidden => moved(trail),
        Blame::Challenged if !trail.moved_on_challenge => {
            trail.moved_on_challenge = true;
            moved(trail)
        }
        Blame::Challenged => AccountMove::Stay,
        Blame::Expired if !trail.renewed.contains(&name) => {
            trail.renewed.push(name.clone());
            match pool
                .renew(&used.account, Renewal::Expired(used.caller.clone()))
                .await
            {
                Ok(()) => AccountMove::Again,
                Err(_) => moved(trail),
            }
        }
        // Refused again right after a renewal: the account itself is refused. The request
        // does not walk on through the pool — if the request is the cause (a refusal that is
        // not the account's), one request must not take every account out.
        Blame::Expired => {
            pool.invalidate(
                &used.account,
                "the upstream refused the token again right after renewing it",
            );
            AccountMove::Stay
        }
    }
}

/// Resolve where the turn goes, send it, and fall back while the chosen chat cannot take it.
async fn converse(
    state: &Arc<AppState>,
    req: &ChatRequest,
    identity: &ClientIdentity,
    start: Instant,
    chats: &RequestChats,
    plan: &Plan,
) -> Result<Response<ProxyBody>, ProxyError> {
    let conv = &state.conversations;
    let identity = identity.as_str();
    let mut prepared = if state.config.conversations.continue_chats {
        conv.prepare(req, identity, &plan.model).await
    } else {
        conv.fresh(req, identity, &plan.model, "new")
    };
    // The remembered chat's account cannot take turns now (cooling, quarantined, gone):
    // the conversation moves to a fresh chat, with its history folded, elsewhere.
    if let (Some(owner), Some(key)) = (prepared.account.as_deref(), &prepared.continued_from) {
        if state.accounts.caller_of(owner).is_none() {
            conv.forget(key, "account").await;
            state
                .metrics
                .chats_left
                .with_label_values(&["account"])
                .inc();
            prepared = conv.fresh(req, identity, &plan.model, "account");
        }
    }
    let backoff = Backoff::from_config(&state.config.retry);
    let mut fallbacks = Fallbacks::default();
    // The hint of the one retry a tool-calling answer may get; it stays in the turn
    // whatever chat the turn ends up in.
    let mut hint: Option<Hint> = None;
    let mut wait = match prepared
        .since_answer()
        .map(|since| (since, conv.route(since)))
    {
        Some((_, Route::After(left))) => left,
        Some((since, Route::Fresh)) => {
            let left = conv.busy_left(since);
            match fresh_for_busy(state, req, identity, plan, chats, &prepared, left) {
                Some(fresh) => {
                    conv.left_busy_chat();
                    prepared = fresh;
                    Duration::ZERO
                }
                None => left,
            }
        }
        Some((_, Route::Now)) | None => Duration::ZERO,
    };
    let mut first_attempt = true;
    let mut trail = AccountTrail::default();
    loop {
        let pace = Pace {
            wait,
            first_attempt,
        };
        let result = send(
            state,
            req,
            plan,
            &mut prepared,
            start,
            hint.is_none(),
            pace,
            &mut trail,
            chats,
        )
        .await;
        wait = Duration::ZERO;
        first_attempt = false;
        let busy =
            matches!(&result, Err(e) if e.upstream_class() == Some(UpstreamClass::ChatInProgress));
        let e = match result {
            Ok(Answered::Response(rsp)) => return Ok(rsp),
            Ok(Answered::RetryWithHint(h)) => {
                // Once, and the client never sees the first answer or the hint. A continued
                // chat gets the same turn again, with the hint, as a sibling of the first
                // answer: a fresh chat would fold the whole history again, which costs the
                // upstream a new chat and may not fit its size limit. A new chat's turn is
                // the whole history anyway, and goes to another fresh chat.
                tracing::info!(
                    hint = h.label(),
                    "the answer did not satisfy the tools; asking again"
                );
                state
                    .metrics
                    .tool_calls
                    .with_label_values(&["retried"])
                    .inc();
                hint = Some(h);
                if prepared.continued_from.is_none() {
                    // The first answer's chat is left behind with it.
                    state.metrics.chats_left.with_label_values(&["hint"]).inc();
                    prepared = conv.fresh(req, identity, &plan.model, "fallback");
                } else {
                    // The chat has just answered (the first answer): its busy window starts
                    // now, and it is waited out rather than met as a busy answer.
                    prepared.answered_at_ms = Some(epoch_millis());
                    wait = conv.busy_left(Duration::ZERO);
                }
                append_hint(&mut prepared, req, hint);
                continue;
            }
            Err(e) => e,
        };
        match account_move(state, &mut trail, &e).await {
            AccountMove::Stay => {}
            AccountMove::Again => continue,
            AccountMove::Fail(e) => return Err(e),
            AccountMove::Elsewhere => {
                // The chat belongs to the account left behind: a fresh one elsewhere,
                // with the history folded.
                if prepared.continued_from.is_some() {
                    state
                        .metrics
                        .chats_left
                        .with_label_values(&["account"])
                        .inc();
                }
                prepared = conv.fresh(req, identity, &plan.model, "account");
                trail.moving = true;
                append_hint(&mut prepared, req, hint);
                continue;
            }
        }
        if let (Some(class), Some(key)) = (e.upstream_class(), &prepared.continued_from) {
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
        let mut leave_for = None;
        let learned = match busy.then(|| prepared.since_answer()).flatten() {
            Some(since) => match conv.route(since) {
                Route::Fresh => {
                    let left = conv.busy_left(since);
                    leave_for = fresh_for_busy(state, req, identity, plan, chats, &prepared, left);
                    Some(match leave_for {
                        Some(_) => Route::Fresh,
                        None => Route::After(left),
                    })
                }
                route => Some(route),
            },
            None => None,
        };
        let Some(fallback) = fallbacks.decide(&e, &backoff, learned) else {
            return Err(e);
        };
        if matches!(fallback, Fallback::FreshChat(_)) && !may_open_chat(state, chats, &prepared) {
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
            // Waited in `send`, with the chat's lock held.
            Fallback::SameChat(delay) => wait = delay,
            Fallback::FreshChat(delay) => {
                tokio::time::sleep(delay).await;
                prepared = match leave_for {
                    Some(fresh) => {
                        conv.left_busy_chat();
                        fresh
                    }
                    None => conv.fresh(req, identity, &plan.model, "fallback"),
                };
                append_hint(&mut prepared, req, hint);
            }
        }
    }
}

/// When an attempt may be sent.
#[derive(Debug, Clone, Copy)]
struct Pace {
    /// The rest of the chat's busy window, to wait with its lock held.
    wait: Duration,
    /// The request's first attempt: if it had to queue for the chat's lock, another turn
    /// of the chat has just ended. (A retry may find its own previous attempt's lock not
    /// yet released, which says nothing about the chat.)
    first_attempt: bool,
}

/// The continued chat (`continued`) would stay busy `left` longer: the turn in a fresh chat
/// with the history folded, if that pays (`BusyWindow::fresh_pays`: the fold is small
/// enough, and waiting costs more than `chats/new`, reading the fold and the chat left
/// behind), fits the upstream's size limit, and the request and the conversation may still
/// open a chat. Otherwise the turn waits for its chat.
fn fresh_for_busy(
    state: &AppState,
    req: &ChatRequest,
    identity: &str,
    plan: &Plan,
    chats: &RequestChats,
    continued: &Prepared,
    left: Duration,
) -> Option<Prepared> {
    let limit = state.config.upstream_body_limit;
    let conv = &state.conversations;
    conv.fresh_for_busy(req, identity, &plan.model, |p| {
        conv.fresh_pays(left, continued.content.len(), p.content.len())
            && may_open_chat(state, chats, p)
            && check_upstream_size(p, plan, limit).is_ok()
    })
}

/// Whether this request and its conversation may open one more upstream chat
/// (`conversation::budget`).
fn may_open_chat(state: &AppState, chats: &RequestChats, prepared: &Prepared) -> bool {
    chats.left() > 0
        && state
            .conversations
            .chat_window
            .has_room(&prepared.conversation)
}

/// The retry hint, appended to the last user-side turn of what is sent.
fn append_hint(prepared: &mut Prepared, req: &ChatRequest, hint: Option<Hint>) {
    if let (Some(hint), Some(tools)) = (hint, req.tools.as_deref()) {
        prepared.content.push_str("\n\n");
        prepared.content.push_str(&hint.text(tools));
    }
}

/// One attempt: size check, chat lock, an account, a new chat if needed, then send and
/// answer. Leaves `prepared` pointing at the chat actually used (a busy chat is retried
/// as it is) and `trail.last` at the account used.
#[allow(clippy::too_many_arguments)]
async fn send(
    state: &Arc<AppState>,
    req: &ChatRequest,
    plan: &Plan,
    prepared: &mut Prepared,
    start: Instant,
    tool_retry: bool,
    pace: Pace,
    trail: &mut AccountTrail,
    chats: &RequestChats,
) -> Result<Answered, ProxyError> {
    check_upstream_size(prepared, plan, state.config.upstream_body_limit)?;
    // One generation per chat: wait (bounded) for other requests on this conversation.
    let lock = match &prepared.target {
        ChatTarget::Existing { chat_id, .. } => Some(state.conversations.lock(chat_id).await?),
        ChatTarget::NewChat => None,
    };
    let conv = &state.conversations;
    // Queued behind another turn of this chat, which has just ended: the chat's busy window
    // starts now, not at the answer this request continues.
    let busy_wait = match &lock {
        Some(lock) if pace.first_attempt && lock.waited() && prepared.answered_at_ms.is_some() => {
            prepared.answered_at_ms = Some(epoch_millis());
            conv.busy_left(Duration::ZERO)
        }
        _ => pace.wait,
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
    let lease = match (&prepared.target, prepared.account.as_deref()) {
        (ChatTarget::Existing { .. }, Some(owner)) => match pool.acquire_on(owner).await {
            Some(lease) => lease?,
            None => {
                return Err(ProxyError::upstream(
                    UpstreamClass::ChatNotFound,
                    "the account that owns the chat cannot take turns now",
                ))
            }
        },
        _ => pool.acquire(&trail.left).await?,
    };
    trail.last = Some(lease.used());
    state
        .metrics
        .account_turns
        .with_label_values(&[lease.name(), "false"])
        .inc();
    // When this attempt reaches a continued chat, relative to its last answer.
    let sent_since = prepared.since_answer();
    let mut opened = false;
    if prepared.target == ChatTarget::NewChat {
        let moving = std::mem::take(&mut trail.moving);
        may_create_chat(state, chats, prepared, moving)?;
        let asked = Instant::now();
        let chat_id = state
            .client
            .create_chat(lease.caller(), &plan.model, plan.chat_type)
            .await?;
        state.conversations.chat_created_in(asked.elapsed());
        // Counted once it exists: a `chats/new` that failed opened nothing.
        chats.opened(!moving);
        opened = true;
        prepared.target = ChatTarget::Existing {
            chat_id,
            parent_id: None,
        };
        prepared.account = Some(lease.name().to_owned());
    }
    // The one retry a tool-calling answer may get goes to the same chat when the request
    // continued a conversation's chat, else to a fresh chat (`converse`): that only if the
    // request and the conversation may open one.
    let tool_retry =
        tool_retry && (prepared.continued_from.is_some() || may_open_chat(state, chats, prepared));
    let result = Attempt {
        state,
        req,
        plan,
        prepared,
        start,
        tool_retry,
        opened_chat: opened,
    }
    .respond(lock, lease)
    .await;
    // The chat this attempt opened came to nothing: its turn failed before the answer
    // began, or the answer is asked for again (a stream that fails later is counted where
    // its turn ends).
    if opened && !matches!(result, Ok(Answered::Response(_))) {
        conv.chat_window.came_to_nothing(&prepared.conversation);
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

/// Whether a chat may be opened for this request, within the request's and the
/// conversation's bounds — always for a turn moved off an account taken out of rotation
/// (`moving`). The decisions before this one (the retry layer, the fallbacks, the tool-hint
/// retry, the busy choice) check first, so a refusal here is the conversation's window
/// filled by its other requests — or, should a decision have missed it, the request's own
/// chats spent, answered with its last failure.
fn may_create_chat(
    state: &AppState,
    chats: &RequestChats,
    prepared: &Prepared,
    moving: bool,
) -> Result<(), ProxyError> {
    if moving {
        return Ok(());
    }
    if chats.left() == 0 {
        return Err(chats.last_failure().map_or_else(
            || ProxyError::Internal("no upstream chat left for this request".to_owned()),
            ProxyError::from,
        ));
    }
    if let Err(wait) = state
        .conversations
        .chat_window
        .admit(&prepared.conversation)
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

/// Refuse a turn whose upstream request would exceed `limit`: the upstream answers those
/// with an anti-bot challenge that blocks the whole account (qwen-protocol §7.4), so no
/// client may trigger one. Checked before a chat is created, on whatever this attempt
/// sends (a continued chat's new messages, or the whole folded history).
fn check_upstream_size(prepared: &Prepared, plan: &Plan, limit: usize) -> Result<(), ProxyError> {
    let (chat_id, parent_id) = match &prepared.target {
        ChatTarget::Existing { chat_id, parent_id } => (chat_id.as_str(), parent_id.as_deref()),
        ChatTarget::NewChat => (CHAT_ID_PLACEHOLDER, None),
    };
    let turn = Turn {
        chat_id,
        parent_id,
        model: &plan.model,
        chat_type: plan.chat_type,
        content: &prepared.content,
        features: plan.features,
    };
    let size = turn.body_len(epoch_secs());
    if size > limit {
        return Err(ProxyError::ContextLengthExceeded { size, limit });
    }
    Ok(())
}
