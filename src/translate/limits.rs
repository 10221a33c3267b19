//! Client-side output limits the upstream has no notion of: `stop` sequences and
//! `max_tokens`. A pipeline [`Stage`]; it only touches content.
//!
//! * Stop: text that could be the start of a stop sequence is held back until it either
//!   completes a match (the output ends before it; the finish reason names the sequence) or
//!   can no longer match (it is released). Matches split across upstream frames are therefore found.
//! * Max tokens: content is cut at the character where the estimated token count reaches
//!   the limit (finish reason `Length`). The estimate is the usual heuristic — four ASCII
//!   characters or one other character per token — because the upstream's tokenizer is not
//!   available and its usage arrives only after the frame it counts.

use super::stage::Stage;
use super::state::{Emit, FinishReason, ToolCall, Usage};

/// Token estimate in quarter tokens, so ASCII can count 1/4 each without floats.
pub fn estimate_quarter_tokens(text: &str) -> u64 {
    text.chars().map(|c| if c.is_ascii() { 1 } else { 4 }).sum()
}

/// Estimated tokens for `text` (rounded up).
pub fn estimate_tokens(text: &str) -> u64 {
    estimate_quarter_tokens(text).div_ceil(4)
}

#[derive(Debug, Default)]
pub struct Limits {
    /// The stop sequences with their index in the request's list (empty ones never match).
    stops: Vec<(usize, String)>,
    /// Content held back because it may be the start of a stop sequence.
    held: String,
    max_quarters: Option<u64>,
    used_quarters: u64,
    finish: Option<FinishReason>,
    /// The cut dropped something: text past it, a call after it.
    dropped: bool,
    /// A call went out (before any cut).
    passed_call: bool,
}

impl Limits {
    pub fn new(stops: Vec<String>, max_tokens: Option<u64>) -> Self {
        Self {
            stops: stops
                .into_iter()
                .enumerate()
                .filter(|(_, s)| !s.is_empty())
                .collect(),
            held: String::new(),
            max_quarters: max_tokens.map(|t| t.saturating_mul(4)),
            used_quarters: 0,
            finish: None,
            dropped: false,
            passed_call: false,
        }
    }

    /// Estimated tokens of the content that passed.
    pub fn emitted_tokens(&self) -> u64 {
        self.used_quarters.div_ceil(4)
    }

    fn on_content(&mut self, text: &str, inner: &mut impl Emit) {
        if self.finish.is_some() {
            self.dropped |= !text.is_empty();
            return;
        }
        if self.stops.is_empty() {
            self.pass_budget(text, inner);
            return;
        }
        self.held.push_str(text);
        // The earliest match; at the same place, the first in the request's list.
        let earliest = self
            .stops
            .iter()
            .filter_map(|(i, s)| self.held.find(s.as_str()).map(|at| (at, *i)))
            .min_by_key(|(at, _)| *at);
        if let Some((at, index)) = earliest {
            let before = self.held[..at].to_owned();
            self.held.clear();
            self.pass_budget(&before, inner);
            self.finish.get_or_insert(FinishReason::StopSequence(index));
            self.dropped = true;
            return;
        }
        let keep = self.partial_match_len();
        let release_to = self.held.len() - keep;
        if release_to > 0 {
            let released: String = self.held.drain(..release_to).collect();
            self.pass_budget(&released, inner);
        }
    }

    /// Length of the longest suffix of `held` that is a proper prefix of some stop string.
    fn partial_match_len(&self) -> usize {
        let held = self.held.as_str();
        let mut best = 0;
        for (_, stop) in &self.stops {
            let max = stop.len().saturating_sub(1).min(held.len());
            for len in (best + 1..=max).rev() {
                let start = held.len() - len;
                if held.is_char_boundary(start)
                    && stop.as_bytes().starts_with(&held.as_bytes()[start..])
                {
                    best = len;
                    break;
                }
            }
        }
        best
    }

    fn pass_budget(&mut self, text: &str, inner: &mut impl Emit) {
        if text.is_empty() {
            return;
        }
        let Some(max) = self.max_quarters else {
            inner.content(text);
            return;
        };
        let mut cut = text.len();
        for (i, c) in text.char_indices() {
            let cost = if c.is_ascii() { 1 } else { 4 };
            if self.used_quarters + cost > max {
                cut = i;
                self.finish = Some(FinishReason::Length);
                self.dropped = true;
                break;
            }
            self.used_quarters += cost;
        }
        if cut > 0 {
            inner.content(&text[..cut]);
        }
        if self.used_quarters >= max {
            self.finish.get_or_insert(FinishReason::Length);
        }
    }
}

impl Stage for Limits {
    fn reasoning(&mut self, text: &str, next: &mut impl Emit) {
        if self.finish.is_none() {
            next.reasoning(text);
        }
    }

    fn content(&mut self, text: &str, next: &mut impl Emit) {
        self.on_content(text, next);
    }

    /// End of the upstream answer: release held-back text (it did not complete a match).
    /// A call ends the prose before it: what was held back for a possible stop sequence
    /// goes out first, so the client sees the answer in its order. Nothing passes once the
    /// answer was cut.
    fn tool_call(&mut self, call: &ToolCall<'_>, next: &mut impl Emit) {
        if self.finish.is_none() && !self.held.is_empty() {
            let held = std::mem::take(&mut self.held);
            self.pass_budget(&held, next);
        }
        if self.finish.is_none() {
            self.passed_call = true;
            next.tool_call(call);
        } else {
            self.dropped = true;
        }
    }

    fn flush(&mut self, next: &mut impl Emit) {
        if self.finish.is_none() && !self.held.is_empty() {
            let held = std::mem::take(&mut self.held);
            self.pass_budget(&held, next);
        }
    }

    fn finish_reason(&self) -> Option<FinishReason> {
        self.finish
    }

    /// The cut dropped text or a call of the stages ahead before any call went out: a call
    /// the tool-call scanner emitted after the prose `max_tokens` cut never reached the
    /// client, and the answer ends with `length`, not `tool_calls`. A call that went out
    /// whole keeps `tool_calls`.
    fn cut_short(&self) -> bool {
        self.finish.is_some() && self.dropped && !self.passed_call
    }

    /// Without upstream usage, completion tokens are the estimate of what passed; when
    /// `max_tokens` cut the answer, they count what was actually sent (the upstream counts
    /// what it generated).
    fn account(&self, usage: &mut Usage, reported: bool) {
        let emitted = self.emitted_tokens();
        if !reported {
            usage.completion_tokens = emitted;
        }
        if self.finish == Some(FinishReason::Length) {
            usage.completion_tokens = usage.reasoning_tokens.unwrap_or(0) + emitted;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::translate::testing::Recorder;

    fn run(limits: &mut Limits, pieces: &[&str]) -> String {
        let mut out = Recorder::default();
        for p in pieces {
            limits.content(p, &mut out);
        }
        limits.flush(&mut out);
        out.content
    }

    #[test]
    fn stop_split_across_pieces() {
        let mut l = Limits::new(vec!["END".into()], None);
        assert_eq!(run(&mut l, &["hello E", "N", "D tail"]), "hello ");
        assert_eq!(l.finish_reason(), Some(FinishReason::StopSequence(0)));
    }

    #[test]
    fn held_text_goes_out_before_a_call() {
        let mut l = Limits::new(vec!["Observation:".into()], None);
        let mut out = Recorder::default();
        l.content("Let me check. Obs", &mut out);
        l.tool_call(
            &ToolCall {
                name: "f",
                arguments: "{}",
            },
            &mut out,
        );
        assert_eq!(out.pieces, ["c:Let me check. ", "c:Obs", "t:f {}"]);
    }

    #[test]
    fn near_miss_is_released() {
        let mut l = Limits::new(vec!["END".into()], None);
        assert_eq!(run(&mut l, &["hello EN", "X and E"]), "hello ENX and E");
        assert_eq!(l.finish_reason(), None);
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        let mut l = Limits::new(vec!["b".into(), "a".into()], None);
        assert_eq!(run(&mut l, &["xxab"]), "xx");
    }

    #[test]
    fn multibyte_stop() {
        let mut l = Limits::new(vec!["。".into()], None);
        assert_eq!(run(&mut l, &["你好", "。再见"]), "你好");
    }

    #[test]
    fn max_tokens_cuts_at_the_estimate() {
        let mut l = Limits::new(vec![], Some(2));
        // 8 ASCII characters = 2 tokens.
        assert_eq!(run(&mut l, &["abcdef", "ghijkl"]), "abcdefgh");
        assert_eq!(l.finish_reason(), Some(FinishReason::Length));
        let mut l = Limits::new(vec![], Some(2));
        assert_eq!(run(&mut l, &["你好吗"]), "你好");
    }

    /// Releases its prose and, the first time, a call after it, and then says the answer
    /// ended with the call: the tool-call scanner under `required`, which holds the prose
    /// and lets it go with the call, in one upstream event.
    #[derive(Default)]
    struct ProseThenCall {
        called: bool,
    }

    impl Stage for ProseThenCall {
        fn reasoning(&mut self, text: &str, next: &mut impl Emit) {
            next.reasoning(text);
        }
        fn content(&mut self, text: &str, next: &mut impl Emit) {
            next.content(text);
            if !self.called {
                self.called = true;
                next.tool_call(&ToolCall {
                    name: "f",
                    arguments: "{}",
                });
            }
        }
        fn finish_reason(&self) -> Option<FinishReason> {
            self.called.then_some(FinishReason::ToolCalls)
        }
    }

    #[test]
    fn a_call_behind_the_cut_is_dropped_and_the_answer_ends_with_the_cut() {
        // Fuzz finding pipeline/limits-drops-call: the call was dropped, and the pair still
        // said `tool_calls` (the scanner's reason came first).
        let prose = "Let me check."; // 13 ASCII characters: 3.25 tokens
        for (limits, finish, calls) in [
            (Limits::new(vec![], Some(1)), FinishReason::Length, 0),
            (Limits::new(vec![], Some(3)), FinishReason::Length, 0),
            (
                Limits::new(vec!["check".into()], None),
                FinishReason::StopSequence(0),
                0,
            ),
            // Room for the prose: the call goes out and ends the answer.
            (Limits::new(vec![], Some(4)), FinishReason::ToolCalls, 1),
            (Limits::new(vec![], None), FinishReason::ToolCalls, 1),
        ] {
            let mut stages = (ProseThenCall::default(), limits);
            let mut out = Recorder::default();
            stages.content(prose, &mut out);
            stages.flush(&mut out);
            assert_eq!(stages.finish_reason(), Some(finish), "{:?}", out.pieces);
            assert_eq!(out.calls.len(), calls, "{:?}", out.pieces);
        }
        // The budget spent exactly by the prose: nothing is left for the call either.
        let mut stages = (ProseThenCall::default(), Limits::new(vec![], Some(1)));
        let mut out = Recorder::default();
        stages.content("Chpg", &mut out);
        assert_eq!(out.pieces, ["c:Chpg"]);
        assert_eq!(stages.finish_reason(), Some(FinishReason::Length));
        // A call that went out whole keeps `tool_calls`, even when text after it is cut.
        let mut stages = (ProseThenCall::default(), Limits::new(vec![], Some(4)));
        let mut out = Recorder::default();
        stages.content(prose, &mut out);
        stages.content(" And a long story after the call.", &mut out);
        assert_eq!(out.calls.len(), 1);
        assert_eq!(stages.1.finish_reason(), Some(FinishReason::Length));
        assert_eq!(stages.finish_reason(), Some(FinishReason::ToolCalls));
    }

    #[test]
    fn estimate() {
        assert_eq!(estimate_tokens("abcd"), 1);
        assert_eq!(estimate_tokens("abcde"), 2);
        assert_eq!(estimate_tokens("你好"), 2);
    }
}
