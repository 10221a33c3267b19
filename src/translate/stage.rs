//! Pipeline stages: what sits between the translator and the sink.
//!
//! The translator emits semantic deltas (reasoning, content) through [`Emit`]; each stage
//! receives the deltas of the stage before it and passes on its own — the same text, less
//! of it (a stop sequence, a token limit), held back for a while, or observed (the
//! conversation transcript). Stages compose as a tuple, `(first, second)`, statically: the
//! hot path has no dynamic dispatch. `Option<S>` is a stage that may be off, `()` the empty
//! stage.
//!
//! The order in the chat core (`chat::TurnStages`): translator → tool-call scanner → JSON
//! fence remover → output limits → transcript → encoder, so the transcript hashes exactly
//! what the client receives.

use super::state::{Citation, Emit, FinishReason, PlatformFrame, Source, ToolCall, Usage};

pub trait Stage {
    fn reasoning(&mut self, text: &str, next: &mut impl Emit);
    fn content(&mut self, text: &str, next: &mut impl Emit);
    fn tool_call(&mut self, call: &ToolCall<'_>, next: &mut impl Emit) {
        next.tool_call(call);
    }
    fn platform_call(&mut self, frame: PlatformFrame<'_>, next: &mut impl Emit) {
        next.platform_call(frame);
    }
    fn sources(&mut self, sources: &[Source<'_>], next: &mut impl Emit) {
        next.sources(sources);
    }
    fn citation(&mut self, citation: &Citation<'_>, next: &mut impl Emit) {
        next.citation(citation);
    }
    fn image(&mut self, url: &str, next: &mut impl Emit) {
        next.image(url);
    }
    /// The upstream answer is complete: pass on anything held back.
    fn flush(&mut self, next: &mut impl Emit) {
        let _ = next;
    }
    /// Set once this stage ended the output early (a stop sequence, the token limit);
    /// nothing passes after that.
    fn finish_reason(&self) -> Option<FinishReason> {
        None
    }
    /// This stage ended the output before something the stages ahead of it sent had passed
    /// (text past the cut, a call after it), and before any call of theirs did: how they
    /// say the answer ended (`tool_calls` after their calls) describes an answer the client
    /// did not get, and this stage's reason stands.
    fn cut_short(&self) -> bool {
        false
    }
    /// Correct the usage reported to the client for what this stage let through
    /// (`reported`: the upstream sent usage of its own).
    fn account(&self, usage: &mut Usage, reported: bool) {
        let _ = (usage, reported);
    }
}

/// `stage` in front of `next`, as one [`Emit`].
pub struct Through<'a, S, E> {
    pub stage: &'a mut S,
    pub next: &'a mut E,
}

impl<S: Stage, E: Emit> Emit for Through<'_, S, E> {
    fn reasoning(&mut self, text: &str) {
        self.stage.reasoning(text, self.next);
    }

    fn content(&mut self, text: &str) {
        self.stage.content(text, self.next);
    }

    fn tool_call(&mut self, call: &ToolCall<'_>) {
        self.stage.tool_call(call, self.next);
    }

    fn platform_call(&mut self, frame: PlatformFrame<'_>) {
        self.stage.platform_call(frame, self.next);
    }

    fn sources(&mut self, sources: &[Source<'_>]) {
        self.stage.sources(sources, self.next);
    }

    fn citation(&mut self, citation: &Citation<'_>) {
        self.stage.citation(citation, self.next);
    }

    fn image(&mut self, url: &str) {
        self.stage.image(url, self.next);
    }
}

/// The empty stage: everything passes.
impl Stage for () {
    fn reasoning(&mut self, text: &str, next: &mut impl Emit) {
        next.reasoning(text);
    }

    fn content(&mut self, text: &str, next: &mut impl Emit) {
        next.content(text);
    }
}

/// A stage that may be off.
impl<S: Stage> Stage for Option<S> {
    fn reasoning(&mut self, text: &str, next: &mut impl Emit) {
        match self {
            Some(s) => s.reasoning(text, next),
            None => next.reasoning(text),
        }
    }

    fn content(&mut self, text: &str, next: &mut impl Emit) {
        match self {
            Some(s) => s.content(text, next),
            None => next.content(text),
        }
    }

    fn tool_call(&mut self, call: &ToolCall<'_>, next: &mut impl Emit) {
        match self {
            Some(s) => s.tool_call(call, next),
            None => next.tool_call(call),
        }
    }

    fn platform_call(&mut self, frame: PlatformFrame<'_>, next: &mut impl Emit) {
        match self {
            Some(s) => s.platform_call(frame, next),
            None => next.platform_call(frame),
        }
    }

    fn sources(&mut self, sources: &[Source<'_>], next: &mut impl Emit) {
        match self {
            Some(s) => s.sources(sources, next),
            None => next.sources(sources),
        }
    }

    fn citation(&mut self, citation: &Citation<'_>, next: &mut impl Emit) {
        match self {
            Some(s) => s.citation(citation, next),
            None => next.citation(citation),
        }
    }

    fn image(&mut self, url: &str, next: &mut impl Emit) {
        match self {
            Some(s) => s.image(url, next),
            None => next.image(url),
        }
    }

    fn flush(&mut self, next: &mut impl Emit) {
        if let Some(s) = self {
            s.flush(next);
        }
    }

    fn finish_reason(&self) -> Option<FinishReason> {
        self.as_ref().and_then(Stage::finish_reason)
    }

    fn cut_short(&self) -> bool {
        self.as_ref().is_some_and(Stage::cut_short)
    }

    fn account(&self, usage: &mut Usage, reported: bool) {
        if let Some(s) = self {
            s.account(usage, reported);
        }
    }
}

/// `A` then `B`.
impl<A: Stage, B: Stage> Stage for (A, B) {
    fn reasoning(&mut self, text: &str, next: &mut impl Emit) {
        let (a, b) = self;
        a.reasoning(text, &mut Through { stage: b, next });
    }

    fn content(&mut self, text: &str, next: &mut impl Emit) {
        let (a, b) = self;
        a.content(text, &mut Through { stage: b, next });
    }

    fn tool_call(&mut self, call: &ToolCall<'_>, next: &mut impl Emit) {
        let (a, b) = self;
        a.tool_call(call, &mut Through { stage: b, next });
    }

    fn platform_call(&mut self, frame: PlatformFrame<'_>, next: &mut impl Emit) {
        let (a, b) = self;
        a.platform_call(frame, &mut Through { stage: b, next });
    }

    fn sources(&mut self, sources: &[Source<'_>], next: &mut impl Emit) {
        let (a, b) = self;
        a.sources(sources, &mut Through { stage: b, next });
    }

    fn citation(&mut self, citation: &Citation<'_>, next: &mut impl Emit) {
        let (a, b) = self;
        a.citation(citation, &mut Through { stage: b, next });
    }

    fn image(&mut self, url: &str, next: &mut impl Emit) {
        let (a, b) = self;
        a.image(url, &mut Through { stage: b, next });
    }

    fn flush(&mut self, next: &mut impl Emit) {
        let (a, b) = self;
        a.flush(&mut Through { stage: b, next });
        b.flush(next);
    }

    /// The first stage's reason, unless the second one cut its answer short: then the
    /// answer the client got ended at the second one's cut.
    fn finish_reason(&self) -> Option<FinishReason> {
        match self.1.finish_reason() {
            Some(cut) if self.1.cut_short() => Some(cut),
            second => self.0.finish_reason().or(second),
        }
    }

    fn cut_short(&self) -> bool {
        self.0.cut_short() || self.1.cut_short()
    }

    fn account(&self, usage: &mut Usage, reported: bool) {
        self.0.account(usage, reported);
        self.1.account(usage, reported);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::translate::testing::Recorder;

    /// Upper-cases content; holds the last piece back until flushed.
    #[derive(Default)]
    struct Shout(Option<String>);
    impl Stage for Shout {
        fn reasoning(&mut self, text: &str, next: &mut impl Emit) {
            next.reasoning(text);
        }
        fn content(&mut self, text: &str, next: &mut impl Emit) {
            if let Some(held) = self.0.replace(text.to_uppercase()) {
                next.content(&held);
            }
        }
        fn flush(&mut self, next: &mut impl Emit) {
            if let Some(held) = self.0.take() {
                next.content(&held);
            }
        }
    }

    #[test]
    fn stages_compose_in_order_and_flush_through_the_rest() {
        // The second stage sees the first one's output, also what the first flushes.
        let mut stages = (Shout::default(), (Shout::default(), ()));
        let mut out = Recorder::default();
        stages.reasoning("think", &mut out);
        for piece in ["a", "b", "c"] {
            stages.content(piece, &mut out);
        }
        stages.flush(&mut out);
        assert_eq!(out.pieces, ["r:think", "c:A", "c:B", "c:C"]);
        let mut off: Option<Shout> = None;
        off.content("x", &mut out);
        assert_eq!(out.pieces.last().map(String::as_str), Some("c:x"));
    }
}
