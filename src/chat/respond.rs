//! Send a prepared turn upstream and answer the client in its API's shapes: a primed stream
//! from the API's encoder, or the API's body of the whole answer. Both run the same pipeline
//! and end through the same [`TurnEnd`].

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::Response;
use tokio::time::Instant;

use super::end::{TurnEnd, TurnStages};
use super::Bookkeeping;
use crate::accounts::Lease;
use crate::app::AppState;
use crate::body::{json_response, ProxyBody};
use crate::common::epoch_secs;
use crate::conversation::budget::RequestChats;
use crate::conversation::transcript::Transcript;
use crate::conversation::{ChatLock, ChatTarget, Prepared};
use crate::error::ProxyError;
use crate::qwen::request::Turn;
use crate::tools::prompt::Hint;
use crate::tools::scan::{ScanConfig, ToolScan};
use crate::translate::aggregate;
use crate::translate::body::{Outcome, StreamEnd, TranslateBody, UpstreamStream};
use crate::translate::cite::Citations;
use crate::translate::fence::JsonFence;
use crate::translate::limits::{estimate_tokens, Limits};
use crate::translate::pipeline::Pipeline;
use crate::turn::plan::Plan;
use crate::turn::{AnswerHead, ApiRequest, ClientApi, Output, ResponseFormat};

/// What one attempt sends and how it answers.
pub(super) struct Attempt<'a, A: ClientApi> {
    pub state: &'a Arc<AppState>,
    pub req: &'a ApiRequest<A::Options>,
    pub plan: &'a Plan,
    pub prepared: &'a Prepared,
    /// When the request arrived (time to first token, stream duration).
    pub start: Instant,
    /// The tool-call scanner may ask for one retry with a hint (first attempt only).
    pub tool_retry: bool,
    /// This attempt opened its chat.
    pub opened_chat: bool,
    /// The request's ledger (shared with the retry layer): told when the answer begins.
    pub chats: &'a RequestChats,
    /// Whose usage the turn is, and the request's record in the request log.
    pub books: &'a Bookkeeping,
}

/// What an attempt came to.
pub(super) enum Answered {
    Response(Response<ProxyBody>),
    /// The model's answer does not satisfy the request's tools, and nothing of it reached
    /// the client: ask once more, with this hint.
    RetryWithHint(Hint),
}

type Upstream = UpstreamStream<Incoming, TurnStages>;

impl<A: ClientApi> Attempt<'_, A> {
    /// Send the prepared turn and build the response. `Ok` only once the answer has begun
    /// (streaming) or is complete (not streaming): every `Err` happens before the first
    /// byte reaches the client.
    pub(super) async fn respond(
        self,
        lock: Option<ChatLock>,
        lease: Lease,
    ) -> Result<Answered, ProxyError> {
        let ChatTarget::Existing { chat_id, parent_id } = &self.prepared.target else {
            return Err(ProxyError::Internal(
                "chat not resolved before sending".to_owned(),
            ));
        };
        let turn = Turn {
            chat_id,
            parent_id: parent_id.as_deref(),
            model: &self.plan.model,
            chat_type: self.plan.chat_type,
            content: &self.prepared.content,
            files: &self.prepared.files,
            features: self.plan.features,
            size: self.plan.size,
        };
        self.books.record.attempt(lease.name(), chat_id);
        let sent = Instant::now();
        let upstream = self
            .state
            .client
            .start_completion(lease.caller(), &turn)
            .await?;
        // An image turn is never continued: nothing of it is remembered.
        let transcript = (self.state.config.conversations.continue_chats
            && self.req.turn.output == Output::Text)
            .then(|| Transcript::new(self.prepared.reply_key.clone()));
        let turn = &self.req.turn;
        let scan = turn.tools.as_ref().map(|set| {
            ToolScan::new(ScanConfig {
                set: set.clone(),
                retry_allowed: self.tool_retry,
                streaming: turn.stream,
            })
        });
        // A JSON answer loses its Markdown fence (not with tools: there the answer is the
        // model's prose around calls).
        let fence = (turn.response_format != ResponseFormat::Text && scan.is_none())
            .then(JsonFence::default);
        let citations = self
            .plan
            .features
            .auto_search
            .then(|| Citations::new(self.state.config.media.search_footnotes));
        let stages = (
            scan,
            (
                fence,
                (
                    Limits::new(turn.stop.clone(), turn.max_tokens),
                    (citations, transcript),
                ),
            ),
        );
        let pipeline = Pipeline::new(stages, estimate_tokens(&self.prepared.content));
        let stream =
            UpstreamStream::new(upstream, pipeline, self.state.config.upstream.idle_timeout);
        let end = TurnEnd::new(
            self.state.clone(),
            A::LABEL,
            self.plan.model.clone(),
            self.books.clone(),
            chat_id.clone(),
            lock,
            lease,
        )
        .opened_chat_for(self.opened_chat.then(|| self.prepared.conversation.clone()));
        let id = format!("{}{}", A::ID_PREFIX, crate::common::random_uuid().simple());
        if turn.stream {
            self.stream(stream, end, &id, sent).await
        } else {
            self.complete(stream, end, &id, sent).await
        }
    }

    /// The upstream read this turn's prompt and answered first after `ttft`: what the
    /// busy-chat choice learns prefill from (the prompt the chat had not read is what this
    /// turn sent: the new messages of a continued chat, the whole fold of a fresh one).
    fn saw_first_output(&self, ttft: std::time::Duration) {
        self.state
            .conversations
            .saw_first_token(self.prepared.content.len(), ttft);
    }

    /// A primed SSE response; the body answers for the rest of the stream.
    async fn stream(
        self,
        stream: Upstream,
        end: TurnEnd,
        id: &str,
        sent: Instant,
    ) -> Result<Answered, ProxyError> {
        let state = self.state;
        let head = AnswerHead {
            id,
            created: epoch_secs(),
            turn: &self.req.turn,
        };
        let encoder = A::encoder(&head, &self.req.options);
        let mut body = TranslateBody::new(stream, encoder, Some(state.config.sse_keepalive))
            .abort_on(state.stream_abort_signal());
        // A failure here drops `end` untold (its lock is released): it is this request's
        // error, for the retry layer and the error map. The wait is bounded: a tool call
        // being read (or prose held under `required`) may keep the first output back for
        // minutes, and the client and nginx want headers and keep-alives long before that.
        // Past the bound the answer stands as it comes: it can no longer be asked again.
        let keepalive = state.config.sse_keepalive;
        match tokio::time::timeout(keepalive, body.prime()).await {
            Ok(primed) => primed?,
            Err(_) => {
                if let Some(scan) = body.pipeline_mut().stages_mut().0.as_mut() {
                    scan.forbid_retry();
                }
            }
        }
        // The answer began (or goes out as it comes): `FIRST_TOKEN_TIMEOUT` is met.
        self.chats.mark_began();
        if let Some(first) = body.first_output() {
            self.saw_first_output(first.saturating_duration_since(sent));
        }
        if let Some(hint) = tool_retry(body.pipeline()) {
            end.superseded(body.pipeline());
            return Ok(Answered::RetryWithHint(hint));
        }
        let ttft = self.start.elapsed();
        state
            .metrics
            .ttft
            .with_label_values(&[&self.plan.model, "true", A::LABEL])
            .observe(ttft.as_secs_f64());
        self.books.record.first_token(ttft);
        let body = body.owned_by(end.streaming(self.start));
        Ok(Answered::Response(crate::body::sse_response(
            ProxyBody::Stream(Box::pin(body)),
        )))
    }

    /// The whole answer as one body. Any upstream error — also one after
    /// partial content — fails the request: never a truncated answer presented as complete.
    async fn complete(
        self,
        mut stream: Upstream,
        end: TurnEnd,
        id: &str,
        sent: Instant,
    ) -> Result<Answered, ProxyError> {
        let ttft =
            self.state
                .metrics
                .ttft
                .with_label_values(&[&self.plan.model, "false", A::LABEL]);
        let collected = aggregate::collect(&mut stream, || {
            let since = self.start.elapsed();
            ttft.observe(since.as_secs_f64());
            self.books.record.first_token(since);
            // The answer began: `FIRST_TOKEN_TIMEOUT` is met, the rest may take its time.
            self.chats.mark_began();
        })
        .await;
        if let Some(first) = stream.first_output() {
            self.saw_first_output(first.saturating_duration_since(sent));
        }
        let (message, reason, usage) = match collected {
            Ok(c) => c,
            Err(e) => {
                let _ = end.ended(Outcome::Failed(&e), stream.pipeline_mut());
                return Err(e);
            }
        };
        if let Some(hint) = tool_retry(stream.pipeline()) {
            end.superseded(stream.pipeline());
            return Ok(Answered::RetryWithHint(hint));
        }
        if let Some(settle) = end.ended(Outcome::Completed { reason, usage }, stream.pipeline_mut())
        {
            settle.await;
        }
        let head = AnswerHead {
            id,
            created: epoch_secs(),
            turn: &self.req.turn,
        };
        let body = A::body(&head, &self.req.options, &message, reason, usage);
        Ok(Answered::Response(json_response(body)))
    }
}

/// The scanner's request for a retry, if any.
fn tool_retry(pipeline: &Pipeline<TurnStages>) -> Option<Hint> {
    pipeline.stages().0.as_ref().and_then(ToolScan::retry)
}
