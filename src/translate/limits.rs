//! Client-side output limits the upstream has no notion of: `stop` sequences and
//! `max_tokens`. Both sit between the translator and the sink and only touch content.
//!
//! * Stop: text that could be the start of a stop sequence is held back until it either
//!   completes a match (the output ends before it, `finish_reason:"stop"`) or can no longer
//!   match (it is released). Matches split across upstream frames are therefore found.
//! * Max tokens: content is cut at the character where the estimated token count reaches
//!   the limit (`finish_reason:"length"`). The estimate is the usual heuristic — four ASCII
//!   characters or one other character per token — because the upstream's tokenizer is not
//!   available and its usage arrives only after the frame it counts.

use super::state::Emit;
use crate::conversation::key::KeyBuilder;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    Stop,
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

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
    stops: Vec<String>,
    /// Content held back because it may be the start of a stop sequence.
    held: String,
    max_quarters: Option<u64>,
    used_quarters: u64,
    finish: Option<FinishReason>,
    /// The conversation key, fed with exactly the content the client receives.
    transcript: Option<KeyBuilder>,
}

impl Limits {
    pub fn new(stops: Vec<String>, max_tokens: Option<u64>) -> Self {
        Self {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            held: String::new(),
            max_quarters: max_tokens.map(|t| t.saturating_mul(4)),
            used_quarters: 0,
            finish: None,
            transcript: None,
        }
    }

    /// Hash the content that passes into `key` (already at the start of the reply).
    pub fn with_transcript(mut self, key: KeyBuilder) -> Self {
        self.transcript = Some(key);
        self
    }

    /// The key of the conversation including the reply — only when the reply ended
    /// naturally upstream (a cut reply differs from what the upstream chat holds).
    pub fn take_reply_key(&mut self) -> Option<String> {
        if self.finish.is_some() {
            return None;
        }
        let mut t = self.transcript.take()?;
        t.end();
        Some(t.finish())
    }

    /// Set once a limit ended the output; nothing more is emitted after that.
    pub fn finish_reason(&self) -> Option<FinishReason> {
        self.finish
    }

    /// Estimated tokens of the content that passed.
    pub fn emitted_tokens(&self) -> u64 {
        self.used_quarters.div_ceil(4)
    }

    /// A view that applies the limits in front of `inner`.
    pub fn wrap<'a, E: Emit>(&'a mut self, inner: &'a mut E) -> Limited<'a, E> {
        Limited {
            limits: self,
            inner,
        }
    }

    /// End of the upstream answer: release held-back text (it did not complete a match).
    pub fn flush(&mut self, inner: &mut impl Emit) {
        if self.finish.is_none() && !self.held.is_empty() {
            let held = std::mem::take(&mut self.held);
            self.pass_budget(&held, inner);
        }
    }

    fn on_content(&mut self, text: &str, inner: &mut impl Emit) {
        if self.finish.is_some() {
            return;
        }
        if self.stops.is_empty() {
            self.pass_budget(text, inner);
            return;
        }
        self.held.push_str(text);
        let earliest = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min();
        if let Some(at) = earliest {
            let before = self.held[..at].to_owned();
            self.held.clear();
            self.pass_budget(&before, inner);
            self.finish.get_or_insert(FinishReason::Stop);
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
        for stop in &self.stops {
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
            if let Some(t) = &mut self.transcript {
                t.text(text);
            }
            inner.content(text);
            return;
        };
        let mut cut = text.len();
        for (i, c) in text.char_indices() {
            let cost = if c.is_ascii() { 1 } else { 4 };
            if self.used_quarters + cost > max {
                cut = i;
                self.finish = Some(FinishReason::Length);
                break;
            }
            self.used_quarters += cost;
        }
        if cut > 0 {
            if let Some(t) = &mut self.transcript {
                t.text(&text[..cut]);
            }
            inner.content(&text[..cut]);
        }
        if self.used_quarters >= max {
            self.finish.get_or_insert(FinishReason::Length);
        }
    }
}

/// `Emit` adapter that applies [`Limits`] to content and passes reasoning through.
pub struct Limited<'a, E> {
    limits: &'a mut Limits,
    inner: &'a mut E,
}

impl<E: Emit> Emit for Limited<'_, E> {
    fn reasoning(&mut self, text: &str) {
        if self.limits.finish.is_none() {
            self.inner.reasoning(text);
        }
    }

    fn content(&mut self, text: &str) {
        self.limits.on_content(text, self.inner);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Out(String);
    impl Emit for Out {
        fn reasoning(&mut self, _: &str) {}
        fn content(&mut self, t: &str) {
            self.0.push_str(t);
        }
    }

    fn run(limits: &mut Limits, pieces: &[&str]) -> String {
        let mut out = Out::default();
        for p in pieces {
            limits.wrap(&mut out).content(p);
        }
        limits.flush(&mut out);
        out.0
    }

    #[test]
    fn stop_split_across_pieces() {
        let mut l = Limits::new(vec!["END".into()], None);
        assert_eq!(run(&mut l, &["hello E", "N", "D tail"]), "hello ");
        assert_eq!(l.finish_reason(), Some(FinishReason::Stop));
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

    #[test]
    fn estimate() {
        assert_eq!(estimate_tokens("abcd"), 1);
        assert_eq!(estimate_tokens("abcde"), 2);
        assert_eq!(estimate_tokens("你好"), 2);
    }
}
