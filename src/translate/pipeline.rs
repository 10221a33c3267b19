//! Upstream bytes → semantic deltas: the SSE decoder, the translator and the stages chained
//! (`stage.rs`). Pure and synchronous; the async adapters in `body.rs` and `aggregate.rs`
//! drive it.

use bytes::Bytes;

use super::stage::{Stage, Through};
use super::state::{Emit, FinishReason, Flow, ResponseRef, Translator, Usage};
use crate::error::{UpstreamClass, UpstreamError};
use crate::qwen::sse::SseDecoder;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    Continue,
    Done(FinishReason),
}

#[derive(Debug)]
pub struct Pipeline<S> {
    decoder: SseDecoder,
    translator: Translator,
    stages: S,
    /// Used when the upstream reports no usage at all.
    prompt_tokens_estimate: u64,
    /// Complete upstream events read so far (the idle timeout counts these, not bytes).
    events: u64,
}

impl<S: Stage> Pipeline<S> {
    pub fn new(stages: S, prompt_tokens_estimate: u64) -> Self {
        Self {
            decoder: SseDecoder::default(),
            translator: Translator::new(),
            stages,
            prompt_tokens_estimate,
            events: 0,
        }
    }

    /// Complete upstream events read so far.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// Feed one upstream chunk; deltas go through the stages to `out`.
    pub fn feed(&mut self, chunk: Bytes, out: &mut impl Emit) -> Result<Progress, UpstreamError> {
        self.decoder.push(chunk);
        loop {
            // Borrowed from the decoder: the translator is synchronous, so no event needs
            // to own its bytes.
            let Some(data) = self.decoder.next_data_ref().map_err(protocol)? else {
                return Ok(Progress::Continue);
            };
            self.events += 1;
            let mut through = Through {
                stage: &mut self.stages,
                next: out,
            };
            let flow = match self.translator.on_data(data, &mut through) {
                Ok(flow) => flow,
                Err(e) => return self.unless_stages_answer(e, out).map(Progress::Done),
            };
            if let Progress::Done(r) = self.after_event(flow, out) {
                return Ok(Progress::Done(r));
            }
        }
    }

    /// The upstream closed the stream.
    pub fn end_of_input(&mut self, out: &mut impl Emit) -> Result<FinishReason, UpstreamError> {
        if let Some(data) = self.decoder.finish_ref().map_err(protocol)? {
            let mut through = Through {
                stage: &mut self.stages,
                next: out,
            };
            let flow = self
                .translator
                .on_data(data, &mut through)
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
        if let Err(e) = self.translator.on_eof() {
            return self.unless_stages_answer(e, out);
        }
        self.stages.flush(out);
        Ok(self
            .stages
            .finish_reason()
            .unwrap_or(FinishReason::Complete))
    }

    /// The upstream's answer ended empty (`e`): the stages may still answer from what they
    /// kept — the tool-call scanner, a call the model wrote only while thinking — or decide
    /// the answer (to be asked again with a hint). If they do, that is the answer; else the
    /// empty answer stands as `e`.
    fn unless_stages_answer(
        &mut self,
        e: UpstreamError,
        out: &mut impl Emit,
    ) -> Result<FinishReason, UpstreamError> {
        if e.class != UpstreamClass::EmptyStream {
            return Err(e);
        }
        let mut watched = Watched { out, any: false };
        self.stages.flush(&mut watched);
        if !watched.any && self.stages.finish_reason().is_none() {
            return Err(e);
        }
        Ok(self
            .stages
            .finish_reason()
            .unwrap_or(FinishReason::Complete))
    }

    /// After one event: has a stage or the upstream ended the answer?
    fn after_event(&mut self, flow: Flow, out: &mut impl Emit) -> Progress {
        if let Some(r) = self.stages.finish_reason() {
            // A stage ended the answer early: the stages pass on what they still hold (a
            // call harvested but not yet out, prose a later stage held back). The stage that
            // ended it has nothing more to give.
            self.stages.flush(out);
            return Progress::Done(self.stages.finish_reason().unwrap_or(r));
        }
        if flow == Flow::Finished {
            self.stages.flush(out);
            return Progress::Done(
                self.stages
                    .finish_reason()
                    .unwrap_or(FinishReason::Complete),
            );
        }
        Progress::Continue
    }

    /// Whether the client has been sent (or will be sent) anything meaningful.
    pub fn emitted_anything(&self) -> bool {
        self.translator.emitted_anything()
    }

    /// The upstream response that was streamed (for continuing the chat).
    pub fn response(&self) -> &ResponseRef {
        self.translator.response()
    }

    pub fn stages(&self) -> &S {
        &self.stages
    }

    pub fn stages_mut(&mut self) -> &mut S {
        &mut self.stages
    }

    /// Final usage: the upstream's last cumulative numbers (or estimates when it sent
    /// none), corrected by the stages for what they let through.
    pub fn usage(&self) -> Usage {
        let reported = self.translator.usage();
        let mut usage = reported.unwrap_or(Usage {
            prompt_tokens: self.prompt_tokens_estimate,
            ..Usage::default()
        });
        self.stages.account(&mut usage, reported.is_some());
        usage
    }
}

/// An `Emit` that notes whether anything went through it.
struct Watched<'a, E> {
    out: &'a mut E,
    any: bool,
}

impl<E: Emit> Emit for Watched<'_, E> {
    fn reasoning(&mut self, text: &str) {
        self.any |= !text.is_empty();
        self.out.reasoning(text);
    }

    fn content(&mut self, text: &str) {
        self.any |= !text.is_empty();
        self.out.content(text);
    }

    fn tool_call(&mut self, call: &super::state::ToolCall<'_>) {
        self.any = true;
        self.out.tool_call(call);
    }

    fn platform_call(&mut self, frame: super::state::PlatformFrame<'_>) {
        self.out.platform_call(frame);
    }

    fn sources(&mut self, sources: &[super::state::Source<'_>]) {
        self.out.sources(sources);
    }

    fn citation(&mut self, citation: &super::state::Citation<'_>) {
        self.out.citation(citation);
    }

    fn image(&mut self, url: &str) {
        self.out.image(url);
    }
}

fn protocol(e: crate::qwen::sse::SseError) -> UpstreamError {
    UpstreamError::new(UpstreamClass::Protocol, e.to_string())
}
