//! The tool-call scanner (tool-calling.md §5.4): a pipeline stage over the answer text that
//! passes prose through as it arrives and turns call blocks into validated calls.
//!
//! States: `Text` (prose; scanning for an opener outside code) → `Tail` (after an opener:
//! the payload's `{` or `<function=` within a short window) → `Json` / `Xml` (the payload,
//! braces balanced outside strings, raw control characters in strings repaired) → `Close`
//! (stray `}`/`]` and the closer skipped) → `After` (whitespace; another call, or anything
//! else ends the answer for the client: `Drain`). What the model writes after its last call
//! — narration, a fabricated result — never reaches the client, and the upstream is no
//! longer read.
//!
//! Hold-back is bounded: in `Text`, only a tail that may still become an opener (at most
//! [`markers::OPEN_MAX`] bytes) or a candidate bare payload (up to [`NAME_WINDOW`]); a
//! payload at most [`SPAN_MAX`], then it is released as text. With `tool_choice` required or
//! named, prose is held until the first call (it is then released before the call) or the
//! end (a retry with a hint, or the prose after all).
//!
//! The platform's intercepted native calls (`native`) are harvested into the same index
//! space; once each one the platform opened has its result frame, the answer is over.
//!
//! One instance per upstream answer; streaming and non-streaming run the same machine.

use std::sync::Arc;

use serde_json::Value;

use super::markers::{self, Match};
use super::native::Harvester;
use super::prompt::Hint;
use super::validate::{self, Invalid, ValidCall};
use super::ToolSet;
use crate::translate::stage::Stage;
use crate::translate::state::{Emit, FinishReason, PlatformFrame, ToolCall};

/// Bytes from an opener's end to where its payload begins (its `{` or [`XML_OPEN`]).
pub const PAYLOAD_WINDOW: usize = 128;
/// The tag that begins a payload of the Qwen3-Coder XML form.
const XML_OPEN: &str = "<function=";
/// A payload larger than this is given up on and released as text.
pub const SPAN_MAX: usize = 1 << 20;
/// Stray `}` / `]` skipped between a payload and its closer.
const DEBRIS_MAX: u8 = 8;
/// How far a bare `{` is looked into for a `"name"` key before it counts as prose.
pub const NAME_WINDOW: usize = 256;
/// Narration between two calls of a batch ("Next, the other file:", a garbled closer) that
/// is skipped to reach the next call: at most this many lines and bytes. More is not a
/// batch, and the answer is over for the client.
const NARRATION_LINES: u8 = 2;
const NARRATION_MAX: usize = 400;
/// The thinking kept for recovering a call written only there (`ToolScan::flush`).
const THINKING_KEPT: usize = 256 * 1024;

/// What the request allows the scanner to do.
#[derive(Debug, Clone)]
pub struct ScanConfig {
    pub set: Arc<ToolSet>,
    /// This attempt may ask for one retry with a hint (the first attempt only).
    pub retry_allowed: bool,
    /// Reasoning reaches the client as it comes (a stream): once some has, a retry would
    /// show.
    pub streaming: bool,
}

/// Counts for metrics and logs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ScanStats {
    pub emitted: u32,
    pub unknown_name: u32,
    pub invalid: u32,
    /// A bad call that could not be asked for again: the answer ended with an explanation.
    pub abandoned: u32,
}

pub struct ToolScan {
    config: ScanConfig,
    /// Answer text not yet released or consumed.
    pending: String,
    state: State,
    /// Where the released text stands: code context, line start, prose.
    at: Position,
    /// Prose held until the first call (`required`, named).
    held: String,
    /// Something reached the next stage: text, a call, or (streaming) reasoning.
    released: bool,
    stats: ScanStats,
    thinking: ThinkingWatch,
    /// The thinking so far (up to [`THINKING_KEPT`]), kept while the thinking may hold a
    /// call the answer leaves out.
    thinking_text: String,
    /// Narration skipped since the last call: bytes and lines.
    narrated: (usize, u8),
    harvester: Harvester,
    /// The platform intercepted a call that could not be recovered: why.
    lost_native: Option<Invalid>,
    /// Every call the platform intercepted has its result frame: the next text answers the
    /// platform, and ends the client's answer (more intercepted calls may come first).
    platform_answered: bool,
    retry: Option<Hint>,
    finish: Option<FinishReason>,
}

#[derive(Debug, Clone, PartialEq)]
enum State {
    Text,
    /// `pending` starts with an opener of this many bytes.
    Tail {
        opener: usize,
    },
    /// A JSON payload is being read (`pending` holds its opener and tail before it).
    Json {
        scan: JsonScan,
    },
    /// A bare payload in the middle of a sentence was read (`pending[..end]`): a call only if
    /// a closer follows it (its opener left out), else the model's JSON.
    Confirm {
        end: usize,
        payload: String,
    },
    /// `pending[start..]` is a `<function=…>` payload.
    Xml {
        start: usize,
        /// How far into the payload the closer was looked for already.
        searched: usize,
    },
    /// A call went out; stray brackets and the closer are skipped.
    Close {
        debris: u8,
    },
    /// Between calls.
    After,
    /// Skipping a line of narration between calls.
    Narration,
    /// The answer is over for the client.
    Drain,
}

#[derive(Debug, Clone, Default, PartialEq)]
struct JsonScan {
    /// Next byte of `pending` to read.
    pos: usize,
    depth: u32,
    in_string: bool,
    escape: bool,
    /// The payload as read, control characters inside strings escaped.
    repaired: Vec<u8>,
    /// No opener: a bare `{"name": …}` at the answer's start or a line's start.
    synthetic: bool,
    /// No opener, in the middle of a line: a call only if a closer follows.
    mid_line: bool,
}

impl JsonScan {
    /// Read on from `pos`; the end of the payload (exclusive) once its braces balance.
    fn read(&mut self, bytes: &[u8]) -> Option<usize> {
        while self.pos < bytes.len() {
            let b = bytes[self.pos];
            self.pos += 1;
            if self.in_string {
                match b {
                    _ if self.escape => {
                        self.escape = false;
                        self.repaired.push(b);
                    }
                    b'\\' => {
                        self.escape = true;
                        self.repaired.push(b);
                    }
                    b'"' => {
                        self.in_string = false;
                        self.repaired.push(b);
                    }
                    0x00..=0x1f => push_escaped(&mut self.repaired, b),
                    _ => self.repaired.push(b),
                }
                continue;
            }
            self.repaired.push(b);
            match b {
                b'"' => self.in_string = true,
                b'{' => self.depth += 1,
                b'}' => {
                    self.depth = self.depth.saturating_sub(1);
                    if self.depth == 0 {
                        return Some(self.pos);
                    }
                }
                _ => {}
            }
        }
        None
    }
}

/// The code context and line position of released text (markers inside code are
/// documentation, not calls): a fence is a line that starts (after indentation) with three
/// or more backticks; inline code is an odd number of backticks so far on a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Position {
    in_fence: bool,
    /// Backticks on the current line so far (outside a fence).
    ticks: u32,
    /// Backticks at the start of the current line (after indentation).
    lead: u32,
    /// Still in the line's indentation and leading backticks.
    leading: bool,
    line_start: bool,
    prose: bool,
}

impl Position {
    fn new() -> Self {
        Position {
            in_fence: false,
            ticks: 0,
            lead: 0,
            leading: true,
            line_start: true,
            prose: false,
        }
    }

    fn in_code(&self) -> bool {
        self.in_fence || self.ticks % 2 == 1 || self.lead >= 3
    }

    fn step(&mut self, c: char) {
        match c {
            '\n' => {
                if self.lead >= 3 {
                    self.in_fence = !self.in_fence;
                }
                self.ticks = 0;
                self.lead = 0;
                self.leading = true;
                self.line_start = true;
                return;
            }
            '`' => {
                if !self.in_fence {
                    self.ticks += 1;
                }
                if self.leading {
                    self.lead += 1;
                }
            }
            ' ' | '\t' | '\r' if self.leading && self.lead == 0 => {}
            _ => self.leading = false,
        }
        if !c.is_whitespace() {
            self.prose = true;
            self.line_start = false;
        }
    }

    fn advance(&mut self, text: &str) {
        for c in text.chars() {
            self.step(c);
        }
    }
}

/// Whether the thinking wrote a whole call block — an opener, a `"name"` key (or the
/// Qwen3-Coder `<function=`), a closer, in that order, in the spellings the answer's scanner
/// accepts — which does not count there. A model that only mentions or starts a call while
/// deciding is not asked again.
#[derive(Debug, Default)]
struct ThinkingWatch {
    /// The last bytes seen, lowercased, `_` and `-` as spaces: a marker or the key may be
    /// split across pieces.
    tail: String,
    /// How far the block got: 0 nothing, 1 opener, 2 name, 3 closer.
    progress: u8,
    call: bool,
    /// Bytes of thinking fed so far (`tail` is the end of them, byte for byte: the mapping
    /// above keeps every character's length).
    fed: usize,
    /// Where in the thinking the first opener begins, once seen.
    opened_at: Option<usize>,
}

impl ThinkingWatch {
    /// Markers and keys in the order a block has them.
    const STEPS: [&'static [&'static str]; 3] = [
        &["[tool call", "[ tool call", "<tool call", "<function calls"],
        &["\"name\"", "<function="],
        &[
            "[end tool call",
            "[ end tool call",
            "[/tool call",
            "</tool call",
            "</function",
        ],
    ];

    /// An opener has been seen.
    fn opened(&self) -> bool {
        self.progress > 0
    }

    fn feed(&mut self, text: &str) {
        self.fed += text.len();
        if self.call {
            return;
        }
        self.tail.extend(text.chars().map(|c| match c {
            '_' | '-' => ' ',
            c => c.to_ascii_lowercase(),
        }));
        let tail_start = self.fed - self.tail.len();
        // `tail` starts after the last step found, so each step is looked for only in the
        // text after the one before it.
        let mut searched = 0;
        while let Some(wanted) = Self::STEPS.get(usize::from(self.progress)) {
            let rest = &self.tail[searched..];
            let Some((at, len)) = wanted
                .iter()
                .filter_map(|w| rest.find(w).map(|at| (at, w.len())))
                .min()
            else {
                break;
            };
            if self.progress == 0 {
                self.opened_at = Some(tail_start + searched + at);
            }
            searched += at + len;
            self.progress += 1;
        }
        self.call = self.progress == 3;
        // Keep what a marker split across pieces needs, never text before the last step.
        let keep_from = (searched.max(self.tail.len().saturating_sub(16))..=self.tail.len())
            .find(|&i| self.tail.is_char_boundary(i))
            .unwrap_or(self.tail.len());
        self.tail.drain(..keep_from);
    }
}

impl ToolScan {
    pub fn new(config: ScanConfig) -> Self {
        ToolScan {
            config,
            pending: String::new(),
            state: State::Text,
            at: Position::new(),
            held: String::new(),
            released: false,
            stats: ScanStats::default(),
            thinking: ThinkingWatch::default(),
            thinking_text: String::new(),
            narrated: (0, 0),
            harvester: Harvester::default(),
            lost_native: None,
            platform_answered: false,
            retry: None,
            finish: None,
        }
    }

    pub fn stats(&self) -> ScanStats {
        self.stats
    }

    /// The client is waiting on this answer (its headers went out): it stands as it comes,
    /// prose held for a call included, and is not asked for again.
    pub fn forbid_retry(&mut self) {
        self.config.retry_allowed = false;
    }

    /// The answer did not satisfy the request, and nothing of it reached the client: the
    /// core should ask again once, with this hint.
    pub fn retry(&self) -> Option<Hint> {
        self.retry
    }

    fn holds_prose(&self) -> bool {
        !matches!(self.config.set.choice, super::Choice::Auto) && self.stats.emitted == 0
    }

    /// A retry replaces the whole answer, so it is possible while the client has seen
    /// nothing of it: always for a non-streaming answer (collected, then discarded), and
    /// while nothing was released for a streaming one.
    fn can_retry(&self) -> bool {
        self.config.retry_allowed
            && (!self.config.streaming || !self.released)
            && self.stats.emitted == 0
    }

    /// Release answer text to the client (or to the held prose).
    fn release(&mut self, text: &str, next: &mut impl Emit) {
        if text.is_empty() {
            return;
        }
        self.at.advance(text);
        if self.holds_prose() {
            self.held.push_str(text);
        } else {
            self.released = true;
            next.content(text);
        }
    }

    /// Release the first `n` bytes of `pending`.
    fn release_pending(&mut self, n: usize, next: &mut impl Emit) {
        // Borrowed out and put back: releasing is on the path of every answer byte, and
        // must not allocate (`release` never touches `pending`).
        let pending = std::mem::take(&mut self.pending);
        self.release(&pending[..n], next);
        self.pending = pending;
        self.pending.drain(..n);
    }

    fn emit(&mut self, call: ValidCall, next: &mut impl Emit) {
        if !self.held.is_empty() {
            let held = std::mem::take(&mut self.held);
            self.released = true;
            next.content(&held);
        }
        self.released = true;
        self.stats.emitted += 1;
        self.narrated = (0, 0);
        next.tool_call(&ToolCall {
            name: &call.name,
            arguments: &call.arguments,
        });
    }

    /// A block that is not a valid call — an unknown name, a payload that does not read —
    /// is a bad call, never answer text: the agent would take the raw block for the model's
    /// answer and stop. It is asked for again with a hint while that is possible; after
    /// that the answer ends with an honest explanation. (A bare `{"name": …}` without
    /// arguments is the model's JSON, not a call: shown as text.)
    fn reject(&mut self, why: Invalid, raw: &str, as_text: bool, next: &mut impl Emit) {
        match &why {
            Invalid::UnknownName(name) => {
                self.stats.unknown_name += 1;
                tracing::info!(name = %crate::untrusted::Untrusted(name), "the model called a tool the request does not offer");
            }
            _ => {
                self.stats.invalid += 1;
                tracing::info!(?why, "the model wrote a tool call that is not valid");
            }
        }
        if self.stats.emitted > 0 {
            // The answer's valid calls go out; this one cannot be asked for again.
            self.stats.abandoned += 1;
            tracing::warn!(
                why = %crate::untrusted::Untrusted(&why.to_string()),
                "a bad call after the answer's valid calls; the client gets the valid ones"
            );
        }
        if self.end_after_calls() {
            return;
        }
        if as_text {
            // Shown as text, and not scanned again.
            self.release(raw, next);
            self.state = State::Text;
            return;
        }
        self.bad_call(&why, Hint::BadCall, next);
    }

    /// Ask again with the hint if the client has seen nothing that a retry would replace;
    /// else end the answer with what happened.
    fn bad_call(&mut self, why: &Invalid, hint: Hint, next: &mut impl Emit) {
        self.pending.clear();
        self.state = State::Drain;
        self.finish = Some(FinishReason::Complete);
        if self.can_retry() {
            self.retry = Some(hint);
            return;
        }
        self.abandon(why, next);
    }

    /// No retry left for a bad call: the answer ends with an explanation of it (once).
    fn abandon(&mut self, why: &Invalid, next: &mut impl Emit) {
        self.pending.clear();
        self.state = State::Drain;
        self.finish = Some(FinishReason::Complete);
        if self.stats.abandoned > 0 {
            return;
        }
        self.stats.abandoned += 1;
        tracing::warn!(
            why = %crate::untrusted::Untrusted(&why.to_string()),
            "the model's tool call could not be recovered; the answer ends with an explanation"
        );
        if !self.held.is_empty() {
            let held = std::mem::take(&mut self.held);
            next.content(&held);
        }
        let mut text = why.explain(&self.config.set);
        if self.released {
            text.insert_str(0, "\n\n");
        }
        self.released = true;
        next.content(&text);
    }

    /// Once a call is out, whatever is not another valid call ends the client's answer:
    /// an invalid second payload, an opener without one, text after them.
    fn end_after_calls(&mut self) -> bool {
        if self.stats.emitted == 0 {
            return false;
        }
        self.state = State::Drain;
        self.finish = Some(FinishReason::ToolCalls);
        self.pending.clear();
        true
    }

    /// Run the machine over `pending` as far as it goes. `eof`: no more text will come.
    fn run(&mut self, next: &mut impl Emit, eof: bool) {
        loop {
            let moved = match self.state {
                State::Text => self.text(next, eof),
                State::Tail { .. } => self.tail(next, eof),
                State::Json { .. } => self.json(next, eof),
                State::Confirm { .. } => self.confirm(next, eof),
                State::Xml { .. } => self.xml(next, eof),
                State::Close { .. } => self.close(eof),
                State::After => self.after(eof),
                State::Narration => self.narration(eof),
                State::Drain => {
                    self.pending.clear();
                    false
                }
            };
            if !moved {
                return;
            }
        }
    }

    /// Prose: release it up to an opener (or a bare payload) outside code.
    fn text(&mut self, next: &mut impl Emit, eof: bool) -> bool {
        let mut at = self.at;
        let mut i = 0;
        while i < self.pending.len() {
            let rest = &self.pending[i..];
            let Some(c) = rest.chars().next() else {
                break;
            };
            if !at.in_code() {
                match c {
                    '[' | '<' => match markers::open(rest) {
                        Match::Full(n) => {
                            self.release_pending(i, next);
                            self.state = State::Tail { opener: n };
                            return true;
                        }
                        Match::Partial if !eof && rest.len() <= markers::OPEN_MAX => {
                            self.release_pending(i, next);
                            return false;
                        }
                        _ => {}
                    },
                    '{' => match bare_payload(rest, eof) {
                        Some(true) => {
                            self.release_pending(i, next);
                            self.state = State::Json {
                                scan: JsonScan {
                                    synthetic: true,
                                    mid_line: at.prose && !at.line_start,
                                    ..JsonScan::default()
                                },
                            };
                            return true;
                        }
                        None => {
                            self.release_pending(i, next);
                            return false;
                        }
                        Some(false) => {}
                    },
                    _ => {}
                }
            }
            at.step(c);
            i += c.len_utf8();
        }
        let all = self.pending.len();
        self.release_pending(all, next);
        false
    }

    /// After an opener: find the payload within the window.
    fn tail(&mut self, next: &mut impl Emit, eof: bool) -> bool {
        let State::Tail { opener } = self.state else {
            return false;
        };
        let mut prev = '\0';
        for (j, c) in self.pending[opener..].char_indices() {
            let at = opener + j;
            if j > PAYLOAD_WINDOW {
                break;
            }
            if c == '{' {
                self.state = State::Json {
                    scan: JsonScan {
                        pos: at,
                        ..JsonScan::default()
                    },
                };
                return true;
            }
            let rest = &self.pending[at..];
            if rest.starts_with(XML_OPEN) {
                self.state = State::Xml {
                    start: at,
                    searched: 0,
                };
                return true;
            }
            if !eof && rest.len() < XML_OPEN.len() && XML_OPEN.starts_with(rest) {
                // A `<function=` may begin inside the window and end past what has come:
                // wait for it, or the window would close on it in one split and not in
                // another (the window counts where a payload begins, not where it ends).
                return false;
            }
            if prev == ']' && c == '(' {
                // `[tool calls](https://…)`: a markdown link.
                if self.end_after_calls() {
                    return false;
                }
                self.release_pending(at + 1, next);
                self.state = State::Text;
                return true;
            }
            prev = c;
        }
        let window_over = self.pending.len() > opener + PAYLOAD_WINDOW;
        if window_over || eof {
            if self.end_after_calls() {
                return false;
            }
            let window_end = (opener + PAYLOAD_WINDOW..=self.pending.len())
                .find(|&k| self.pending.is_char_boundary(k))
                .unwrap_or(self.pending.len())
                .min(self.pending.len());
            if self.at.line_start && has_closer(&self.pending[opener..window_end]) {
                // A block on its own line, opened and closed, with no payload that reads: a
                // bad call. (An opener in a sentence, or one that opens no block, is the model
                // talking about the format.)
                self.stats.invalid += 1;
                tracing::info!("a tool-call opener without a payload");
                self.bad_call(&Invalid::NoPayload, Hint::BadCall, next);
                return false;
            }
            tracing::debug!("a tool-call opener without a payload; shown as text");
            let end = if window_over {
                (opener + PAYLOAD_WINDOW..=self.pending.len())
                    .find(|&k| self.pending.is_char_boundary(k))
                    .unwrap_or(self.pending.len())
            } else {
                self.pending.len()
            };
            self.release_pending(end, next);
            self.state = State::Text;
            // At the end too: the rest of the text is released by `text`.
            return true;
        }
        false
    }

    /// A JSON payload: balanced braces outside strings.
    fn json(&mut self, next: &mut impl Emit, eof: bool) -> bool {
        let State::Json { mut scan, .. } = std::mem::replace(&mut self.state, State::Text) else {
            return false;
        };
        let done = scan.read(self.pending.as_bytes());
        match done {
            Some(end) if scan.mid_line => {
                let payload = String::from_utf8(scan.repaired).unwrap_or_default();
                self.state = State::Confirm { end, payload };
                true
            }
            Some(end) => {
                let payload = String::from_utf8(scan.repaired).unwrap_or_default();
                let raw: String = self.pending.drain(..end).collect();
                match validate::json_payload(&payload, &self.config.set) {
                    Ok(call) => {
                        self.emit(call, next);
                        self.state = State::Close { debris: 0 };
                    }
                    Err(why) => {
                        let as_text = scan.synthetic && !validate::call_shaped(&payload);
                        self.reject(why, &raw, as_text, next)
                    }
                }
                true
            }
            None if scan.repaired.len() > SPAN_MAX => {
                tracing::warn!("a tool-call payload over 1 MiB; shown as text");
                if self.end_after_calls() {
                    return false;
                }
                // Released as it is, without scanning it again.
                let text = std::mem::take(&mut self.pending);
                self.release(&text, next);
                false
            }
            None if eof => {
                // A bare `{` that never closed: the model's text, unless it began as a call
                // does, first thing on its line.
                let as_text = scan.mid_line || scan.synthetic && !starts_like_a_call(&self.pending);
                self.unfinished(as_text, next)
            }
            None => {
                self.state = State::Json { scan };
                false
            }
        }
    }

    /// The Qwen3-Coder form: `<function=NAME>`, `<parameter=KEY>` … `</parameter>`,
    /// `</function>`, structural tags at line starts.
    fn xml(&mut self, next: &mut impl Emit, eof: bool) -> bool {
        let State::Xml { start, searched } = self.state else {
            return false;
        };
        const CLOSE: &str = "</function>";
        let body = &self.pending[start..];
        let end = body[searched..]
            .match_indices(CLOSE)
            .map(|(i, m)| (searched + i, m))
            .find(|(i, _)| *i == 0 || body[..*i].ends_with('\n'))
            .map(|(i, m)| start + i + m.len());
        let Some(end) = end else {
            // Never scan the same bytes twice: the next search starts where a closer
            // could still begin (a line break before it included).
            let resume = body.len().saturating_sub(CLOSE.len() + 1);
            let resume = (resume..=body.len())
                .find(|&k| body.is_char_boundary(k))
                .unwrap_or(body.len());
            self.state = State::Xml {
                start,
                searched: resume,
            };
            if self.pending.len() - start > SPAN_MAX {
                if self.end_after_calls() {
                    return false;
                }
                let all = self.pending.len();
                let text: String = self.pending.drain(..all).collect();
                self.state = State::Text;
                self.release(&text, next);
                return false;
            }
            return if eof {
                self.unfinished(false, next)
            } else {
                false
            };
        };
        let parsed = xml_call(&self.pending[start..end], &self.config.set);
        let raw: String = self.pending.drain(..end).collect();
        match parsed {
            Ok(call) => {
                self.emit(call, next);
                self.state = State::Close { debris: 0 };
            }
            Err(why) => self.reject(why, &raw, false, next),
        }
        true
    }

    /// The text ended inside a payload: never a truncated call. After a marker, or a bare
    /// payload that began as a call does, it is a bad call; other text (`as_text`) is the
    /// model's. After a call, dropped.
    fn unfinished(&mut self, as_text: bool, next: &mut impl Emit) -> bool {
        if self.stats.emitted > 0 {
            tracing::info!("the answer ended inside a second tool call; dropped");
            self.pending.clear();
            self.state = State::Text;
            return false;
        }
        if as_text {
            let all = self.pending.len();
            let text: String = self.pending.drain(..all).collect();
            self.release(&text, next);
            self.state = State::Text;
            return false;
        }
        self.stats.invalid += 1;
        tracing::info!("the answer ended inside a tool call");
        self.bad_call(&Invalid::Unfinished, Hint::BadCall, next);
        false
    }

    /// A bare payload in a sentence: a closer after it makes it a call whose opener was left
    /// out ("I'll read it: {"name": …}" then `[END TOOL CALL]`); without one it is the
    /// model's JSON, shown as it is (tool-calling.md §6 test 14).
    fn confirm(&mut self, next: &mut impl Emit, eof: bool) -> bool {
        let State::Confirm { end, payload } = std::mem::replace(&mut self.state, State::Text)
        else {
            return false;
        };
        let rest = &self.pending[end..];
        let ws = rest.len() - rest.trim_start().len();
        let after = &rest[ws..];
        let verdict = if after.is_empty() && !eof {
            Match::Partial
        } else {
            markers::close(after)
        };
        match verdict {
            Match::Full(n) => {
                self.pending.drain(..end + ws + n);
                match validate::json_payload(&payload, &self.config.set) {
                    Ok(call) => {
                        self.emit(call, next);
                        self.state = State::After;
                    }
                    Err(why) => self.reject(why, "", false, next),
                }
                true
            }
            Match::Partial if !eof && after.len() <= markers::CLOSE_MAX => {
                self.state = State::Confirm { end, payload };
                false
            }
            _ => {
                // After a call, no text reaches the client.
                if self.end_after_calls() {
                    return false;
                }
                self.release_pending(end, next);
                true
            }
        }
    }

    /// After a call: whitespace, up to [`DEBRIS_MAX`] stray `}`/`]`, then a closer if there
    /// is one.
    fn close(&mut self, eof: bool) -> bool {
        let State::Close { mut debris } = self.state else {
            return false;
        };
        loop {
            let Some(c) = self.pending.chars().next() else {
                self.state = State::Close { debris };
                if eof {
                    self.state = State::After;
                }
                return false;
            };
            if c.is_whitespace() {
                self.pending.drain(..c.len_utf8());
                continue;
            }
            if matches!(c, '}' | ']') && debris < DEBRIS_MAX {
                debris += 1;
                self.pending.drain(..1);
                continue;
            }
            match markers::close(&self.pending) {
                Match::Full(n) => {
                    self.pending.drain(..n);
                }
                Match::Partial if !eof && self.pending.len() <= markers::CLOSE_MAX => {
                    self.state = State::Close { debris };
                    return false;
                }
                _ => {}
            }
            self.state = State::After;
            return true;
        }
    }

    /// Between calls: another call, or the end of the answer for the client.
    fn after(&mut self, eof: bool) -> bool {
        let ws = self.pending.len() - self.pending.trim_start().len();
        self.pending.drain(..ws);
        if self.pending.is_empty() {
            return false;
        }
        let parallel = self.config.set.parallel;
        match markers::open(&self.pending) {
            Match::Full(n) if parallel => {
                self.state = State::Tail { opener: n };
                return true;
            }
            Match::Partial if !eof && self.pending.len() <= markers::OPEN_MAX => return false,
            _ => {}
        }
        // A result the model writes itself ends the answer (F11): in the result markers, or
        // Qwen's native `<tool_response>`. A `[` or `<` is held until that can be told (the
        // start of the text is ASCII up to where it is sliced, or it is not the tag).
        if self.pending.starts_with('<') {
            const NATIVE_RESULT: &str = "<tool_response";
            let n = self.pending.len().min(NATIVE_RESULT.len());
            let may_be = self
                .pending
                .get(..n)
                .is_some_and(|start| NATIVE_RESULT.starts_with(start));
            if !eof && n < NATIVE_RESULT.len() && may_be {
                return false;
            }
            if self.pending.starts_with(NATIVE_RESULT) {
                return self.end_answer();
            }
        }
        match markers::result(&self.pending) {
            Match::Full(_) => return self.end_answer(),
            Match::Partial if !eof => return false,
            _ => {}
        }
        if parallel && self.pending.starts_with('{') {
            match bare_payload(&self.pending, eof) {
                Some(true) => {
                    self.state = State::Json {
                        scan: JsonScan {
                            synthetic: true,
                            ..JsonScan::default()
                        },
                    };
                    return true;
                }
                None => return false,
                Some(false) => {}
            }
        }
        // A short narration — "Next, the other file:", a garbled closer — may sit between
        // the calls of a batch: skipped, to see whether another call follows. Anything else
        // (a call beyond `parallel_tool_calls: false`, longer text) ends the answer: the
        // client's answer is the calls.
        if parallel {
            self.state = State::Narration;
            return true;
        }
        self.end_answer()
    }

    /// Skip one line of narration after a call, within the bounds; then look for the next
    /// call (`after`).
    fn narration(&mut self, eof: bool) -> bool {
        // A call written on the narration's line ("Next: [TOOL CALL] {…}", or its bare
        // payload with a closer after it) is the next call — within the bound: the bytes
        // before it count as narration, as they do when they came in earlier pieces (and
        // were skipped then), so the same answer gives the same calls in any split.
        let line_end = self.pending.find('\n').unwrap_or(self.pending.len());
        for (i, c) in self.pending[..line_end].char_indices() {
            if c == '{' {
                match bare_payload(&self.pending[i..], eof) {
                    Some(true) => {
                        if self.narrated.0 + i > NARRATION_MAX {
                            return self.end_answer();
                        }
                        self.narrated.0 += i;
                        self.pending.drain(..i);
                        self.state = State::Json {
                            scan: JsonScan {
                                synthetic: true,
                                mid_line: true,
                                ..JsonScan::default()
                            },
                        };
                        return true;
                    }
                    None => return false,
                    Some(false) => continue,
                }
            }
            if !matches!(c, '[' | '<') {
                continue;
            }
            match markers::open(&self.pending[i..]) {
                Match::Full(n) => {
                    if self.narrated.0 + i > NARRATION_MAX {
                        return self.end_answer();
                    }
                    self.narrated.0 += i;
                    self.pending.drain(..i);
                    self.state = State::Tail { opener: n };
                    return true;
                }
                Match::Partial if !eof && i + markers::OPEN_MAX >= self.pending.len() => {
                    return false;
                }
                _ => {}
            }
        }
        let (skipped, lines) = self.narrated;
        let (skipped, line_ended) = match self.pending.find('\n') {
            Some(i) => {
                self.pending.drain(..=i);
                (skipped + i + 1, true)
            }
            None => {
                let n = self.pending.len();
                self.pending.clear();
                (skipped + n, false)
            }
        };
        let lines = lines.saturating_add(u8::from(line_ended));
        self.narrated = (skipped, lines);
        if skipped > NARRATION_MAX || lines > NARRATION_LINES {
            return self.end_answer();
        }
        if line_ended {
            self.state = State::After;
            return true;
        }
        if eof {
            return self.end_answer();
        }
        false
    }

    /// The answer is over for the client: its calls.
    fn end_answer(&mut self) -> bool {
        self.state = State::Drain;
        self.finish = Some(FinishReason::ToolCalls);
        self.pending.clear();
        false
    }

    /// Watch the thinking for a call, and keep it from the first opener on, up to
    /// [`THINKING_KEPT`]: a call the answer leaves out is taken from there. What is kept is
    /// the same however the thinking came in pieces: it starts exactly at the opener (a
    /// payload written before it is not the block's), wherever the piece that completed
    /// the opener began.
    fn keep_thinking(&mut self, text: &str) {
        let was_open = self.thinking.opened();
        self.thinking.feed(text);
        if self.thinking_text.len() > THINKING_KEPT {
            return; // given up on for good: what is kept stays one stretch of the thinking
        }
        self.thinking_text.push_str(text);
        if was_open {
            return;
        }
        let keep_from = match self.thinking.opened_at {
            // Opened in this piece: `thinking_text` is the end of the thinking, and holds
            // the opener whole (the watch keeps fewer bytes back than `OPEN_MAX`).
            Some(at) => {
                let kept_from = self.thinking.fed - self.thinking_text.len();
                at.saturating_sub(kept_from)
            }
            // Nothing to keep yet but a tail that may hold the start of an opener.
            None => {
                let from = self.thinking_text.len().saturating_sub(markers::OPEN_MAX);
                (from..=self.thinking_text.len())
                    .find(|&i| self.thinking_text.is_char_boundary(i))
                    .unwrap_or(self.thinking_text.len())
            }
        };
        self.thinking_text.drain(..keep_from);
    }

    /// Emit the valid calls the thinking wrote (a call repeated word for word once: a
    /// thinking model restates its draft); whether there were any.
    fn take_thinking_calls(&mut self, next: &mut impl Emit) -> bool {
        if self.thinking_text.len() > THINKING_KEPT {
            return false;
        }
        let mut calls = calls_in(&self.thinking_text, &self.config.set);
        let mut seen = std::collections::HashSet::new();
        calls.retain(|c| seen.insert((c.name.clone(), c.arguments.clone())));
        for call in calls {
            self.emit(call, next);
        }
        if self.stats.emitted == 0 {
            return false;
        }
        tracing::info!("the model wrote its call only while thinking; taken from there");
        self.finish = Some(FinishReason::ToolCalls);
        true
    }

    fn harvest(&mut self, frame: PlatformFrame<'_>, next: &mut impl Emit) {
        let Some(closed) = self.harvester.feed(frame) else {
            return;
        };
        self.take_harvested(&closed.name, &closed.arguments, next);
        if !self.harvester.all_answered() {
            return;
        }
        // Every call the platform intercepted is answered: what the model writes next
        // answers the platform's "does not exist", not the client — whether or not the
        // calls could be recovered. Until it writes, more intercepted calls may follow (the
        // platform answers each call of a batch in turn).
        if self.stats.emitted > 0 {
            self.platform_answered = true;
            self.pending.clear();
        } else if let Some(why) = self.lost_native.clone() {
            self.bad_call(&why, Hint::Intercepted, next);
        }
    }

    fn take_harvested(&mut self, name: &str, arguments: &str, next: &mut impl Emit) {
        if !self.config.set.parallel && self.stats.emitted > 0 {
            tracing::info!("a second intercepted call with parallel_tool_calls off; dropped");
            return;
        }
        // A tool without arguments is called with an empty snapshot.
        let arguments = if arguments.trim().is_empty() {
            "{}"
        } else {
            arguments
        };
        match validate::call(name, Value::String(arguments.to_owned()), &self.config.set) {
            Ok(call) => self.emit(call, next),
            Err(why) => {
                match why {
                    Invalid::UnknownName(_) => self.stats.unknown_name += 1,
                    _ => self.stats.invalid += 1,
                }
                self.lost_native = Some(why);
            }
        }
    }
}

impl Stage for ToolScan {
    fn reasoning(&mut self, text: &str, next: &mut impl Emit) {
        self.keep_thinking(text);
        if self.config.streaming {
            self.released = true;
        }
        next.reasoning(text);
    }

    fn content(&mut self, text: &str, next: &mut impl Emit) {
        if self.state == State::Drain {
            return;
        }
        if self.platform_answered {
            self.end_answer();
            return;
        }
        self.pending.push_str(text);
        self.run(next, false);
    }

    fn tool_call(&mut self, call: &ToolCall<'_>, next: &mut impl Emit) {
        next.tool_call(call);
    }

    fn platform_call(&mut self, frame: PlatformFrame<'_>, next: &mut impl Emit) {
        if self.state != State::Drain {
            self.harvest(frame, next);
        }
    }

    fn flush(&mut self, next: &mut impl Emit) {
        self.run(next, true);
        if self.state == State::Drain && self.retry.is_some() {
            return;
        }
        // Calls the platform opened but never answered: the stream ended first.
        for open in self.harvester.take_open() {
            self.take_harvested(&open.name, &open.arguments, next);
        }
        if self.stats.emitted > 0 {
            self.finish = Some(FinishReason::ToolCalls);
            return;
        }
        // The answer said nothing at all, and the thinking wrote whole call blocks: the
        // model meant them (a thinking model often writes its call there and stops). With a
        // word of answer, the thinking may have decided against them: a retry asks.
        if self.thinking.opened()
            && !self.at.prose
            && self.lost_native.is_none()
            && self.take_thinking_calls(next)
        {
            return;
        }
        let hint = if self.thinking.call {
            Some(Hint::CallInThinking)
        } else if self.lost_native.is_some() {
            Some(Hint::Intercepted)
        } else if self.holds_prose() {
            Some(Hint::NoCall)
        } else {
            None
        };
        if let (Some(hint), true) = (hint, self.can_retry()) {
            self.retry = Some(hint);
            // The answer is decided (to be asked again), even one that said nothing.
            self.finish = Some(FinishReason::Complete);
            return;
        }
        // No retry left: an intercepted call that was lost is explained; the prose, after all.
        if let Some(why) = self.lost_native.take() {
            self.abandon(&why, next);
            return;
        }
        // A call is demanded (`required`, named) and the model wrote one only while
        // thinking: that is the call, after the prose it held.
        if self.holds_prose() && self.thinking.call && self.take_thinking_calls(next) {
            return;
        }
        // Under `auto` the model's words stand — the thinking may have decided against the
        // call — but the client is told the call was not made: an agent would otherwise take
        // "I'll do that now" for work under way.
        if self.thinking.call && self.at.prose && self.stats.abandoned == 0 {
            self.released = !self.held.is_empty() || self.released;
            self.abandon(&Invalid::OnlyInThinking, next);
            return;
        }
        if !self.held.is_empty() {
            let held = std::mem::take(&mut self.held);
            self.released = true;
            next.content(&held);
        }
    }

    fn finish_reason(&self) -> Option<FinishReason> {
        self.finish
    }
}

/// Whether `text` holds a closer (`[END TOOL CALL]`, `</tool_call>`, …).
fn has_closer(text: &str) -> bool {
    text.char_indices()
        .filter(|(_, c)| matches!(c, '[' | '<'))
        .any(|(i, _)| matches!(markers::close(&text[i..]), Match::Full(_)))
}

/// The valid calls of a text (the thinking), read by a scanner of their own.
pub(crate) fn calls_in(text: &str, set: &Arc<ToolSet>) -> Vec<ValidCall> {
    #[derive(Default)]
    struct Calls(Vec<ValidCall>);
    impl Emit for Calls {
        fn reasoning(&mut self, _: &str) {}
        fn content(&mut self, _: &str) {}
        fn tool_call(&mut self, call: &ToolCall<'_>) {
            self.0.push(ValidCall {
                name: call.name.to_owned(),
                arguments: call.arguments.to_owned(),
            });
        }
    }
    let mut scan = ToolScan::new(ScanConfig {
        set: set.clone(),
        retry_allowed: false,
        streaming: false,
    });
    let mut calls = Calls::default();
    scan.content(text, &mut calls);
    scan.flush(&mut calls);
    calls.0
}

/// Whether untrusted text at a `{` is a bare payload the scanner would take for a call of
/// `set` (what `neutralize` defuses): the same window test, the same reading of the object,
/// the same validation.
pub(crate) fn is_bare_call(rest: &str, set: &ToolSet) -> bool {
    if bare_payload(rest, true) != Some(true) {
        return false;
    }
    let mut scan = JsonScan::default();
    scan.read(rest.as_bytes()).is_some()
        && validate::json_payload(&String::from_utf8_lossy(&scan.repaired), set).is_ok()
}

/// A bare `{` that may be a payload: `Some(true)` when a `"name"` key shows within
/// [`NAME_WINDOW`] or the first key is one a call begins with (`arguments` first, with a
/// long file body before the name), `None` when the text ends before that can be told,
/// `Some(false)` prose.
fn bare_payload(rest: &str, eof: bool) -> Option<bool> {
    let window = match rest.char_indices().nth(NAME_WINDOW) {
        Some((i, _)) => &rest[..i],
        None => rest,
    };
    if window.contains("\"name\"") || starts_like_a_call(window) {
        return Some(true);
    }
    if window.len() < rest.len() || eof {
        return Some(false);
    }
    None
}

/// Whether a `{` opens with a key a call begins with: `name`, `arguments`, `tool`,
/// `function`, `parameters`.
fn starts_like_a_call(text: &str) -> bool {
    let Some(inner) = text.strip_prefix('{') else {
        return false;
    };
    let Some(key) = inner.trim_start().strip_prefix('"') else {
        return false;
    };
    [
        "name\"",
        "arguments\"",
        "tool\"",
        "function\"",
        "parameters\"",
    ]
    .iter()
    .any(|k| key.starts_with(k))
}

/// A control character inside a JSON string, written as its escape.
fn push_escaped(out: &mut Vec<u8>, b: u8) {
    match b {
        b'\n' => out.extend_from_slice(b"\\n"),
        b'\r' => out.extend_from_slice(b"\\r"),
        b'\t' => out.extend_from_slice(b"\\t"),
        0x08 => out.extend_from_slice(b"\\b"),
        0x0c => out.extend_from_slice(b"\\f"),
        _ => out.extend_from_slice(format!("\\u{b:04x}").as_bytes()),
    }
}

/// Parse the XML form into a call. The structural tags are read with `xmlparser`, after
/// `<function=NAME>` and `<parameter=KEY>` are written as the attributes they mean; the
/// values in between are raw text (code, with `<` and `&` in it), converted by the schema.
fn xml_call(block: &str, set: &ToolSet) -> Result<ValidCall, Invalid> {
    let mut lines = block.split_inclusive('\n');
    let first = lines.next().ok_or(Invalid::NotJson)?;
    let name = tag_name(first, "function").ok_or(Invalid::NoName)?;
    let schema = validate::resolve(&name, set).map(|s| s.parameters.clone());
    let mut args = serde_json::Map::new();
    let mut current: Option<(String, String)> = None;
    let finish = |current: &mut Option<(String, String)>,
                  args: &mut serde_json::Map<String, Value>| {
        if let Some((key, value)) = current.take() {
            let prop = schema
                .as_ref()
                .and_then(|s| s.get("properties"))
                .and_then(|p| p.get(&key));
            args.insert(key, validate::xml_value(&value, prop));
        }
    };
    for line in lines {
        let trimmed = line.trim();
        // `<parameter=KEY>` on its own line, or with the value after it on the same line
        // (`<parameter=city>Paris</parameter>`).
        if let Some((key, value)) = parameter_open(line) {
            finish(&mut current, &mut args);
            match value.trim_end().strip_suffix("</parameter>") {
                Some(whole) => {
                    current = Some((key, whole.to_owned()));
                    finish(&mut current, &mut args);
                }
                None => current = Some((key, value.trim_start_matches('\n').to_owned())),
            }
            continue;
        }
        if trimmed == "</parameter>" || trimmed == "</function>" {
            finish(&mut current, &mut args);
            continue;
        }
        if let Some((_, value)) = &mut current {
            value.push_str(line);
        }
    }
    finish(&mut current, &mut args);
    validate::call(&name, Value::Object(args), set)
}

/// A line that opens a parameter: its key, and the rest of the line after the tag.
fn parameter_open(line: &str) -> Option<(String, &str)> {
    let start = line.len() - line.trim_start().len();
    let tag_end = start + line[start..].find('>')? + 1;
    let key = tag_name(&line[start..tag_end], "parameter")?;
    Some((key, &line[tag_end..]))
}

/// `NAME` of a structural `<TAG=NAME>` line, read with `xmlparser` as `<TAG name="NAME">`.
fn tag_name(line: &str, tag: &str) -> Option<String> {
    let inner = line
        .trim()
        .strip_prefix('<')?
        .strip_prefix(tag)?
        .strip_prefix('=')?
        .strip_suffix('>')?;
    let escaped = inner
        .replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;");
    let doc = format!("<{tag} name=\"{escaped}\"/>");
    xmlparser::Tokenizer::from(doc.as_str()).find_map(|t| match t {
        Ok(xmlparser::Token::Attribute { local, value, .. }) if local.as_str() == "name" => {
            Some(unescape(value.as_str()))
        }
        _ => None,
    })
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&quot;", "\"")
        .replace("&amp;", "&")
        .trim()
        .to_owned()
}

#[cfg(test)]
mod tests;
