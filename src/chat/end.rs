//! The end of a turn, streamed or not: one [`Outcome`] in, every consumer served — token
//! and stream metrics, usage accounting, the request log, the conversation store (remember
//! the turn), the chat lock (release it), and the account (a quota or challenge that arrives
//! mid-stream; its slot).

use std::sync::Arc;

use tokio::time::Instant;

use super::Bookkeeping;
use crate::accounts::Lease;
use crate::app::AppState;
use crate::common::epoch_millis;
use crate::conversation::store::Session;
use crate::conversation::transcript::Transcript;
use crate::conversation::ChatLock;
use crate::tools::scan::{ScanStats, ToolScan};
use crate::translate::body::{Outcome, Settle, StreamEnd};
use crate::translate::cite::Citations;
use crate::translate::fence::JsonFence;
use crate::translate::limits::Limits;
use crate::translate::pipeline::Pipeline;
use crate::translate::stage::Stage;
use crate::translate::state::Usage;

/// The core's pipeline stages: the tool-call scanner (function calling), the JSON fence
/// remover (`response_format` JSON), the output limits, the search citations (`-search`
/// models: after every stage that changes content, so its positions are the client's), then
/// the transcript (conversations on), so the transcript hashes exactly what the client
/// receives.
pub type TurnStages = (
    Option<ToolScan>,
    (
        Option<JsonFence>,
        (Limits, (Option<Citations>, Option<Transcript>)),
    ),
);

/// Whoever answers for one upstream turn.
pub(super) struct TurnEnd {
    state: Arc<AppState>,
    /// The client API (metric label).
    api: &'static str,
    /// The resolved upstream model (metric label).
    model: String,
    /// Whose usage the turn is (usage accounting), and the request's record in the
    /// request log (its tokens, an error after the answer began).
    books: Bookkeeping,
    chat_id: String,
    /// Held until the turn is remembered (or dropped, which releases it in the background).
    lock: Option<ChatLock>,
    /// Streams: when the request arrived (the active-stream gauge counts this one).
    stream_started: Option<Instant>,
    /// The account's slot, held until the turn ends; a failure is blamed on it.
    lease: Lease,
    /// The conversation, when this turn opened its chat (a stream that fails after its
    /// answer began counts in the conversation's window of chats that came to nothing).
    opened_for: Option<String>,
}

impl TurnEnd {
    pub(super) fn new(
        state: Arc<AppState>,
        api: &'static str,
        model: String,
        books: Bookkeeping,
        chat_id: String,
        lock: Option<ChatLock>,
        lease: Lease,
    ) -> Self {
        Self {
            state,
            api,
            model,
            books,
            chat_id,
            lock,
            stream_started: None,
            lease,
            opened_for: None,
        }
    }

    /// This turn opened its chat for a conversation.
    pub(super) fn opened_chat_for(mut self, conversation: Option<String>) -> Self {
        self.opened_for = conversation;
        self
    }

    /// This turn is streamed: count it as active from now, and its end as a stream's.
    pub(super) fn streaming(mut self, request_start: Instant) -> Self {
        self.state.metrics.active_streams.inc();
        self.stream_started = Some(request_start);
        self
    }

    fn record_tokens(&self, u: Usage) {
        let m = &self.state.metrics;
        m.tokens
            .with_label_values(&[&self.model, "prompt", self.api])
            .inc_by(u.prompt_tokens);
        m.tokens
            .with_label_values(&[&self.model, "completion", self.api])
            .inc_by(u.completion_tokens);
        if let Some(r) = u.reasoning_tokens {
            m.tokens
                .with_label_values(&[&self.model, "reasoning", self.api])
                .inc_by(r);
        }
    }

    /// One upstream turn in the usage accounts: its account, client and model, the tokens
    /// the upstream reported (none for a turn that did not complete: what it used is not
    /// known), and whether it failed.
    fn record_usage(&self, u: Usage, failed: bool) {
        self.state.usage.record(
            crate::usage::RowKey::new(self.lease.name(), &self.books.client, &self.model),
            &crate::usage::Counters {
                requests: 1,
                input_tokens: u.prompt_tokens,
                output_tokens: u.completion_tokens,
                reasoning_tokens: u.reasoning_tokens.unwrap_or(0),
                errors: u64::from(failed),
            },
        );
    }

    fn record_tool_calls(&self, s: ScanStats) {
        let m = &self.state.metrics.tool_calls;
        m.with_label_values(&["emitted"])
            .inc_by(u64::from(s.emitted));
        m.with_label_values(&["unknown_name"])
            .inc_by(u64::from(s.unknown_name));
        m.with_label_values(&["invalid"])
            .inc_by(u64::from(s.invalid));
        m.with_label_values(&["abandoned"])
            .inc_by(u64::from(s.abandoned));
    }

    /// The answer is replaced by a retry with a hint (nothing of it reached the client):
    /// what the scanner saw in it still counts.
    pub(super) fn superseded(self, pipeline: &Pipeline<TurnStages>) {
        if let Some(scan) = &pipeline.stages().0 {
            self.record_tool_calls(scan.stats());
        }
    }

    fn stream_ended(&mut self, outcome: &'static str) {
        let Some(start) = self.stream_started.take() else {
            return;
        };
        let m = &self.state.metrics;
        m.active_streams.dec();
        m.streams.with_label_values(&[outcome, self.api]).inc();
        m.stream_duration
            .with_label_values(&[outcome])
            .observe(start.elapsed().as_secs_f64());
    }

    /// Remember the completed turn, then release the chat lock: a reply is complete only
    /// once the next turn can find its chat and take the lock — even if this instance dies
    /// right after answering.
    fn remember(mut self, response_id: Option<String>, reply_key: Option<String>) -> Settle {
        let conversations = self.state.conversations.clone();
        let chat_id = std::mem::take(&mut self.chat_id);
        let lock = self.lock.take();
        let account = self.lease.name().to_owned();
        Box::pin(async move {
            if let (Some(key), Some(parent_id)) = (reply_key, response_id) {
                conversations
                    .remember(
                        &key,
                        Session {
                            chat_id,
                            parent_id,
                            answered_at_ms: epoch_millis(),
                            account,
                        },
                    )
                    .await;
            }
            if let Some(lock) = lock {
                lock.release().await;
            }
        })
    }
}

impl StreamEnd<TurnStages> for TurnEnd {
    fn ended(
        mut self,
        outcome: Outcome<'_>,
        pipeline: &mut Pipeline<TurnStages>,
    ) -> Option<Settle> {
        match outcome {
            Outcome::Completed { usage, .. } => {
                // A whole answer: the account's strikes are forgiven (not at its start: a
                // challenge may still come mid-stream).
                self.state.accounts.answered(self.lease.account());
                self.record_tokens(usage);
                self.record_usage(usage, false);
                // The tokens the client's `usage` says.
                self.books.record.tokens(
                    usage.prompt_tokens,
                    usage.completion_tokens,
                    usage.reasoning_tokens,
                );
                self.stream_ended("completed");
                let (scan, (_, (limits, (_, transcript)))) = pipeline.stages_mut();
                if let Some(scan) = scan {
                    self.record_tool_calls(scan.stats());
                }
                // A reply cut on our side (stop, max_tokens) differs from what the upstream
                // chat holds: it is not remembered. A reply the tool-call scanner ended after
                // its calls is, although the upstream may hold text after them the client
                // never saw (narration, an invented result): agent loops live on continuing
                // their chat, and the next turn's real results supersede that text.
                let reply_key = match limits.finish_reason() {
                    None => transcript.take().map(Transcript::into_key),
                    Some(_) => None,
                };
                let response_id = pipeline.response().response_id.clone();
                Some(self.remember(response_id, reply_key))
            }
            Outcome::Failed(e) => {
                // A failure before the first byte is the request's error (reported by the
                // error map, handled by `chat::complete`); mid-stream it is reported here.
                if self.stream_started.is_some() {
                    if let Some(conversation) = self.opened_for.take() {
                        self.state
                            .conversations
                            .chat_window
                            .came_to_nothing(&conversation);
                    }
                    e.report(&self.state.metrics);
                    // The client got a 200, then this error in-band.
                    self.books.record.failed(e);
                    // The quota or a challenge after the answer began: the account is
                    // paused all the same (the client got an in-band error).
                    self.state.accounts.blame(self.lease.account(), e);
                }
                self.record_usage(Usage::default(), true);
                self.stream_ended("error");
                None
            }
            Outcome::Cancelled => {
                self.record_usage(Usage::default(), false);
                self.stream_ended("cancelled");
                None
            }
        }
    }
}

impl Drop for TurnEnd {
    /// Never told (a bug upstream of here, or a panic): keep the gauge true.
    fn drop(&mut self) {
        self.stream_ended("cancelled");
    }
}
