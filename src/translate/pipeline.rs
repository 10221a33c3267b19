//! Upstream bytes → semantic deltas: SSE decoder, translator and output limits chained.
//! Pure and synchronous; the async adapters in `body.rs` and `aggregate.rs` drive it.

use bytes::Bytes;

use super::limits::{FinishReason, Limits};
use super::state::{Emit, Flow, ResponseRef, Translator, Usage};
use crate::error::{UpstreamClass, UpstreamError};
use crate::qwen::sse::SseDecoder;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    Continue,
    Done(FinishReason),
}

#[derive(Debug)]
pub struct Pipeline {
    decoder: SseDecoder,
    translator: Translator,
    limits: Limits,
    /// Used when the upstream reports no usage at all.
    prompt_tokens_estimate: u64,
}

impl Pipeline {
    pub fn new(limits: Limits, prompt_tokens_estimate: u64) -> Self {
        Self {
            decoder: SseDecoder::default(),
            translator: Translator::new(),
            limits,
            prompt_tokens_estimate,
        }
    }

    /// Feed one upstream chunk; deltas go to `out`.
    pub fn feed(&mut self, chunk: Bytes, out: &mut impl Emit) -> Result<Progress, UpstreamError> {
        self.decoder.push(chunk);
        loop {
            // Borrowed from the decoder: the translator is synchronous, so no event needs
            // to own its bytes.
            let Some(data) = self.decoder.next_data_ref().map_err(protocol)? else {
                return Ok(Progress::Continue);
            };
            let flow = self.translator.on_data(data, &mut self.limits.wrap(out))?;
            if let Progress::Done(r) = self.after_event(flow, out) {
                return Ok(Progress::Done(r));
            }
        }
    }

    /// The upstream closed the stream.
    pub fn end_of_input(&mut self, out: &mut impl Emit) -> Result<FinishReason, UpstreamError> {
        if let Some(data) = self.decoder.finish_ref().map_err(protocol)? {
            let flow = self
                .translator
                .on_data(data, &mut self.limits.wrap(out))
                .map_err(|e| match e.class {
                    // An unterminated last event that is not JSON was cut mid-event.
                    UpstreamClass::Protocol => UpstreamError::new(
                        UpstreamClass::Truncated,
                        "the upstream closed the stream in the middle of an event",
                    ),
                    _ => e,
                })?;
            if let Progress::Done(r) = self.after_event(flow, out) {
                return Ok(r);
            }
        }
        self.translator.on_eof()?;
        self.limits.flush(out);
        Ok(self.limits.finish_reason().unwrap_or(FinishReason::Stop))
    }

    /// After one event: has a limit or the upstream ended the answer?
    fn after_event(&mut self, flow: Flow, out: &mut impl Emit) -> Progress {
        if let Some(r) = self.limits.finish_reason() {
            return Progress::Done(r);
        }
        if flow == Flow::Finished {
            self.limits.flush(out);
            return Progress::Done(self.limits.finish_reason().unwrap_or(FinishReason::Stop));
        }
        Progress::Continue
    }

    /// Whether the client has been sent (or will be sent) anything meaningful.
    pub fn emitted_anything(&self) -> bool {
        self.translator.emitted_anything()
    }

    pub fn response(&self) -> &ResponseRef {
        self.translator.response()
    }

    /// The conversation key after this reply (see `Limits::take_reply_key`).
    pub fn take_reply_key(&mut self) -> Option<String> {
        self.limits.take_reply_key()
    }

    /// Final usage: the upstream's last cumulative numbers, or estimates when it sent none.
    /// When `max_tokens` cut the answer, completion tokens count what was actually sent.
    pub fn usage(&self) -> Usage {
        let emitted = self.limits.emitted_tokens();
        let mut usage = self.translator.usage().unwrap_or(Usage {
            prompt_tokens: self.prompt_tokens_estimate,
            completion_tokens: emitted,
            ..Usage::default()
        });
        if self.limits.finish_reason() == Some(FinishReason::Length) {
            usage.completion_tokens = usage.reasoning_tokens.unwrap_or(0) + emitted;
        }
        usage
    }
}

fn protocol(e: crate::qwen::sse::SseError) -> UpstreamError {
    UpstreamError::new(UpstreamClass::Protocol, e.to_string())
}
