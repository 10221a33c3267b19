//! JSON answers without their Markdown fence (tool-calling.md §6 test 45).
//!
//! A request for JSON (`response_format` `json_object` / `json_schema`) is an instruction to
//! the model, which often still wraps the object in a ```` ```json ```` fence. Clients parse
//! the content as JSON — openai-python's `.stream(response_format=…)` partially parses every
//! prefix — so the fence is removed: an opening fence line at the very start of the answer,
//! and the closing fence at its end. The stage holds back only what could be part of a
//! fence: up to one line at the start, and a trailing line break followed by at most three
//! backticks. An answer that does not open with a fence passes through untouched.

use super::stage::Stage;
use super::state::Emit;

/// The longest opening line waited for (```` ``` ```` plus a language tag).
const OPENING_MAX: usize = 24;

#[derive(Debug, Default)]
pub struct JsonFence {
    state: State,
    /// The start of the answer (opening), or the held tail (inside a fence).
    held: String,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing decided yet: is the answer fenced?
    #[default]
    Opening,
    /// Inside a fence whose opening line was removed.
    Inside,
    /// Not fenced: everything passes.
    Plain,
}

/// What the start of an answer says about an opening fence.
enum Opening {
    /// It may still become one.
    Undecided,
    /// A fence line of this many bytes (line break included).
    Fence(usize),
    /// It is not one.
    Not,
}

fn opening(text: &str) -> Opening {
    let body = text.trim_start();
    let lead = text.len() - body.len();
    if body.len() < 3 {
        return if "```".starts_with(body) {
            Opening::Undecided
        } else {
            Opening::Not
        };
    }
    let Some(tag) = body.strip_prefix("```") else {
        return Opening::Not;
    };
    match tag.find('\n') {
        Some(end) if tag[..end].trim().chars().all(|c| c.is_ascii_alphanumeric()) => {
            Opening::Fence(lead + 3 + end + 1)
        }
        Some(_) => Opening::Not,
        None if text.len() > OPENING_MAX => Opening::Not,
        None if tag.chars().all(|c| c.is_ascii_alphanumeric() || c == '\r') => Opening::Undecided,
        None => Opening::Not,
    }
}

/// Where a possible closing fence starts in `text`: the earliest line break followed by
/// nothing but the start of ```` ``` ```` and whitespace.
fn closing_start(text: &str) -> Option<usize> {
    let mut start = None;
    for (at, _) in text.rmatch_indices('\n') {
        if !"```".starts_with(text[at + 1..].trim()) {
            break;
        }
        start = Some(at);
    }
    start
}

impl JsonFence {
    fn inside(&mut self, text: &str, next: &mut impl Emit) {
        self.held.push_str(text);
        let keep_from = closing_start(&self.held).unwrap_or(self.held.len());
        if keep_from > 0 {
            next.content(&self.held[..keep_from]);
            self.held.drain(..keep_from);
        }
    }
}

impl Stage for JsonFence {
    fn reasoning(&mut self, text: &str, next: &mut impl Emit) {
        next.reasoning(text);
    }

    fn content(&mut self, text: &str, next: &mut impl Emit) {
        match self.state {
            State::Plain => next.content(text),
            State::Inside => self.inside(text, next),
            State::Opening => {
                self.held.push_str(text);
                match opening(&self.held) {
                    Opening::Undecided => {}
                    Opening::Fence(len) => {
                        self.state = State::Inside;
                        let rest = self.held.split_off(len);
                        self.held.clear();
                        self.inside(&rest, next);
                    }
                    Opening::Not => {
                        self.state = State::Plain;
                        next.content(&std::mem::take(&mut self.held));
                    }
                }
            }
        }
    }

    fn flush(&mut self, next: &mut impl Emit) {
        let held = std::mem::take(&mut self.held);
        let closing = self.state == State::Inside && held.trim() == "```";
        if !held.is_empty() && !closing {
            next.content(&held);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::testing::Recorder;

    /// The content a client receives for `upstream`, fed whole, one character at a time and
    /// in pieces of three; all must agree.
    fn strip(upstream: &str) -> String {
        let run = |pieces: Vec<String>| {
            let mut f = JsonFence::default();
            let mut out = Recorder::default();
            for p in &pieces {
                f.content(p, &mut out);
            }
            f.flush(&mut out);
            out.content
        };
        let chars: Vec<char> = upstream.chars().collect();
        let whole = run(vec![upstream.to_owned()]);
        assert_eq!(run(chars.iter().map(|c| c.to_string()).collect()), whole);
        assert_eq!(
            run(chars.chunks(3).map(|c| c.iter().collect()).collect()),
            whole
        );
        whole
    }

    #[test]
    fn c45_a_fenced_object_is_unwrapped() {
        assert_eq!(strip("```json\n{\"a\":1}\n```"), "{\"a\":1}");
        assert_eq!(strip("  ```\n{\"a\": [1]}\n```\n"), "{\"a\": [1]}");
        assert_eq!(strip("```JSON\n{\"a\":1}\n``` "), "{\"a\":1}");
        // Without the closing fence (a cut answer), the object is all there is.
        assert_eq!(strip("```json\n{\"a\":1}"), "{\"a\":1}");
    }

    #[test]
    fn unfenced_answers_pass_untouched() {
        assert_eq!(strip("{\"a\":\"```\"}"), "{\"a\":\"```\"}");
        assert_eq!(strip("{\"a\":1}\n```"), "{\"a\":1}\n```");
        assert_eq!(strip("``"), "``");
        assert_eq!(
            strip("```python is not json```"),
            "```python is not json```"
        );
        assert_eq!(strip("Here: ```json\n{}\n```"), "Here: ```json\n{}\n```");
        assert_eq!(strip(""), "");
    }

    #[test]
    fn backticks_inside_the_fenced_object_are_kept() {
        assert_eq!(
            strip("```json\n{\"md\":\"a\\n```\\nb\"}\n```"),
            "{\"md\":\"a\\n```\\nb\"}"
        );
        // A line of backticks that is not the end is content.
        assert_eq!(strip("```\n[1,\n```\n2]\n```"), "[1,\n```\n2]");
    }
}
