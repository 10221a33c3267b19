//! The core service of every chat route, written once over the client API (`ClientApi`):
//! parsed request → upstream turn → the API's stream or body.
//!
//! One call: the challenge cooldown (`qwen::cooldown`) → the model plan (`turn::plan`) →
//! the turn's state (`converse::TurnState`): where the turn goes (`conversation`: continue
//! a remembered chat, or a fresh one with the history folded) → the size check against
//! `UPSTREAM_BODY_LIMIT` → the chat lock → an account → a new chat if needed → send and
//! answer (`respond`). A continued chat that is probably still busy with
//! its last answer is waited for (after taking its lock, so turns keep their order) or left
//! for a fresh chat, whichever the learned busy window says is faster
//! (`conversation::busy`). When the chosen chat cannot take the turn — busy,
//! or gone upstream — the core falls back itself (`fallback`): that changes *what* is sent,
//! which is not the retry layer's business; so does a turn whose account fails it
//! (`accounts`). The end of the turn, streamed or not, goes through one `end::TurnEnd`.
//!
//! `Ok` is returned only once the answer has begun, so every `Err` happens before the
//! first byte and the retry layer may retry it.

mod accounts;
mod converse;
mod end;
mod fallback;
mod fit;
mod respond;
#[cfg(test)]
mod tests;

/// The stage chain of one answer (for benchmarks of the production chain).
pub use end::TurnStages;

use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::{Request, Response};
use tokio::time::Instant;

use crate::app::AppState;
use crate::body::ProxyBody;
use crate::common::BoxFuture;
use crate::conversation::budget::RequestChats;
use crate::conversation::key::{owner, SESSION_HEADERS};
use crate::error::{ProxyError, UpstreamClass};
use crate::identity::ClientIdentity;
use crate::request_log::Recorder;
use crate::server::RequestStart;
use crate::turn::plan::plan;
use crate::turn::{ApiRequest, ClientApi};
use converse::TurnState;

/// The innermost service of a chat route, for the client API `A`.
pub struct ChatCore<A> {
    state: Arc<AppState>,
    api: PhantomData<fn() -> A>,
}

impl<A> ChatCore<A> {
    pub fn new(state: Arc<AppState>) -> Self {
        Self {
            state,
            api: PhantomData,
        }
    }
}

// By hand: a derive would ask `A: Clone`.
impl<A> Clone for ChatCore<A> {
    fn clone(&self) -> Self {
        Self::new(self.state.clone())
    }
}

impl<A: ClientApi> tower::Service<Request<Arc<ApiRequest<A::Options>>>> for ChatCore<A> {
    type Response = Response<ProxyBody>;
    type Error = ProxyError;
    // Boxed once: the whole turn (catalogue, store, lock, upstream) is one async function.
    type Future = BoxFuture<'static, Result<Response<ProxyBody>, ProxyError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Arc<ApiRequest<A::Options>>>) -> Self::Future {
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
        // The session the client names (a header, else the body) narrows whose
        // conversations this turn may continue.
        let session = SESSION_HEADERS
            .iter()
            .find_map(|name| req.headers().get(*name))
            .and_then(|v| v.to_str().ok())
            .or(req.body().turn.session.as_deref());
        let owner = owner(identity.as_str(), session);
        let books = Bookkeeping {
            client: identity.as_str().to_owned(),
            record: Recorder::of(req.extensions()),
        };
        books
            .record
            .asked(&req.body().turn.model, req.body().turn.stream);
        Box::pin(complete::<A>(
            state,
            req.into_body(),
            owner,
            books,
            start,
            chats,
        ))
    }
}

/// Where a request's turns are written down: whose usage they are (usage accounting) and
/// the request's record in the request log (account, chat, first token, tokens, moves).
#[derive(Debug, Clone, Default)]
pub struct Bookkeeping {
    /// The client: its key's fingerprint, or `anon`.
    pub(crate) client: String,
    /// Inert when the request is not logged.
    pub(crate) record: Recorder,
}

/// One request, start to answer (or error).
pub async fn complete<A: ClientApi>(
    state: Arc<AppState>,
    req: Arc<ApiRequest<A::Options>>,
    owner: String,
    books: Bookkeeping,
    start: Instant,
    chats: Arc<RequestChats>,
) -> Result<Response<ProxyBody>, ProxyError> {
    state.accounts.global.check()?;
    let catalog = state.catalog().await?;
    let plan = plan(&req.turn, &catalog, &state.config.model_aliases)?;
    books.record.resolved(&plan.model);
    let conv = &state.conversations;
    // The same request failed in a way a retry cannot change a moment ago: that answer
    // again, without an upstream call (and without another chat).
    // (The whole request is hashed for it only while some failure is remembered.)
    let request_key = || {
        let settings = format!(
            "{}|{:?}|{:?}|{:?}|{:?}",
            plan.chat_type,
            plan.size,
            plan.features,
            req.turn.response_format,
            req.turn.tools.as_deref().map(|t| (&t.choice, t.parallel))
        );
        conv.request_key(&req.turn, &owner, &plan.model, &settings)
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
    let mut result = TurnState::<A>::begin(&state, &req, &owner, &books, start, &chats, &plan)
        .await
        .run()
        .await;
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
