//! Search sources as citations: the stage that turns the upstream's `[[n]]` markers into
//! citations of the sources its web search found (`qwen-protocol.md` §5.9).
//!
//! The upstream sends the sources in one `web_search` frame before the answer, and the
//! answer cites them inline as `[[1]]`, `[[2]]`, … (1-based, in the frame's order). This
//! stage sits after every stage that changes content (scanner, fence, limits), so the
//! positions it reports are positions in what the client receives:
//!
//! * each marker that names a known source is reported, once its closing `]]` has passed,
//!   as a [`Citation`] covering the marker (character offsets, `start..end`);
//! * a marker split across upstream chunks is held back until it is complete or cannot be
//!   one (at most [`MAX_MARKER`] bytes), so its offsets are still exact;
//! * at the end, sources never cited are reported too — over their line in the footnotes
//!   when footnotes are on, else as an empty range at the end of the content — so a client
//!   reading the citations sees every source;
//! * with footnotes on (`SEARCH_FOOTNOTES`), the content ends with a numbered Markdown list
//!   of the sources, for clients that show content and ignore citations.
//!
//! Markers are only read once sources exist: `a[[1]]` in an answer without a search is text.

use super::stage::Stage;
use super::state::{Citation, Emit, Source};

/// `[[` + up to 3 digits + `]]`.
const MAX_MARKER: usize = 7;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Found {
    url: String,
    title: String,
    cited: bool,
}

#[derive(Debug, Default)]
pub struct Citations {
    sources: Vec<Found>,
    /// Content not yet passed on: the tail that may be the start of a marker.
    held: String,
    /// Characters of content passed on so far.
    sent: usize,
    footnotes: bool,
}

/// What the text at a `[[` is.
enum Marker {
    /// A whole marker of `len` bytes naming source `n` (1-based).
    Whole { n: usize, len: usize },
    /// It may still become one: more text is needed.
    Partial,
    /// Not a marker.
    No,
}

fn marker(s: &str) -> Marker {
    let b = s.as_bytes();
    debug_assert!(b.starts_with(b"[["));
    let digits = b[2..].iter().take_while(|c| c.is_ascii_digit()).count();
    let after = 2 + digits;
    if digits > 3 {
        return Marker::No;
    }
    match &b[after..] {
        [] => Marker::Partial,
        [b']'] if digits > 0 => Marker::Partial,
        [b']', b']', ..] if digits > 0 => {
            // At most 3 ASCII digits: cannot overflow.
            let n = s[2..after].parse().unwrap_or(0);
            Marker::Whole { n, len: after + 2 }
        }
        _ => Marker::No,
    }
}

impl Citations {
    pub fn new(footnotes: bool) -> Self {
        Self {
            footnotes,
            ..Self::default()
        }
    }

    fn pass(&mut self, text: &str, next: &mut impl Emit) {
        if !text.is_empty() {
            self.sent += text.chars().count();
            next.content(text);
        }
    }

    fn cite(&mut self, n: usize, start: usize, next: &mut impl Emit) {
        let Some(source) = n.checked_sub(1).and_then(|i| self.sources.get_mut(i)) else {
            return;
        };
        if source.url.is_empty() {
            return;
        }
        source.cited = true;
        next.citation(&Citation {
            url: &source.url,
            title: &source.title,
            start,
            end: self.sent,
        });
    }

    /// Pass on `held` up to the last place a marker may still be completing, reporting the
    /// markers that completed.
    fn drain(&mut self, next: &mut impl Emit) {
        let held = std::mem::take(&mut self.held);
        let mut passed = 0;
        let mut from = 0;
        let mut keep = held.len();
        while let Some(at) = held[from..].find("[[").map(|i| from + i) {
            match marker(&held[at..]) {
                Marker::Whole { n, len } => {
                    self.pass(&held[passed..at], next);
                    let start = self.sent;
                    self.pass(&held[at..at + len], next);
                    self.cite(n, start, next);
                    passed = at + len;
                    from = passed;
                }
                Marker::Partial => {
                    keep = at;
                    break;
                }
                Marker::No => from = at + 1,
            }
        }
        if keep == held.len() && held.ends_with('[') {
            keep -= 1;
        }
        self.pass(&held[passed..keep], next);
        self.held = held[keep..].to_owned();
    }

    fn footnotes(&mut self, next: &mut impl Emit) {
        let mut list = String::from("\n\n**Sources**\n");
        let mut lines = Vec::new();
        for (i, s) in self.sources.iter().enumerate() {
            if s.url.is_empty() {
                continue;
            }
            let prefix = format!("{}. ", i + 1);
            let link = format!("[{}]({})", link_text(&s.title, &s.url), link_url(&s.url));
            let start = self.sent + list.chars().count() + prefix.chars().count();
            lines.push((i, start, start + link.chars().count()));
            list.push_str(&prefix);
            list.push_str(&link);
            list.push('\n');
        }
        if lines.is_empty() {
            return;
        }
        self.pass(&list, next);
        for (i, start, end) in lines {
            let s = &self.sources[i];
            if !s.cited {
                next.citation(&Citation {
                    url: &s.url,
                    title: &s.title,
                    start,
                    end,
                });
            }
        }
    }
}

/// A Markdown link's text: the title (or the address) with brackets and line breaks that
/// would end it early replaced.
fn link_text(title: &str, url: &str) -> String {
    let text = if title.trim().is_empty() { url } else { title };
    text.chars()
        .map(|c| match c {
            '[' => '(',
            ']' => ')',
            '\r' | '\n' => ' ',
            c => c,
        })
        .collect()
}

/// A Markdown link's address: spaces and parentheses escaped so the link cannot end early.
fn link_url(url: &str) -> String {
    url.replace(' ', "%20")
        .replace('(', "%28")
        .replace(')', "%29")
}

impl Stage for Citations {
    fn reasoning(&mut self, text: &str, next: &mut impl Emit) {
        next.reasoning(text);
    }

    fn content(&mut self, text: &str, next: &mut impl Emit) {
        if self.sources.is_empty() {
            self.pass(text, next);
            return;
        }
        self.held.push_str(text);
        // Only a possible marker's start is ever kept back, so the hold stays small.
        self.drain(next);
        debug_assert!(self.held.len() <= MAX_MARKER);
    }

    fn sources(&mut self, sources: &[Source<'_>], next: &mut impl Emit) {
        // A second search in one answer continues the numbering the upstream uses: its
        // list is the whole list so far (or a longer one).
        if sources.len() >= self.sources.len() {
            let cited: Vec<bool> = self.sources.iter().map(|s| s.cited).collect();
            self.sources = sources
                .iter()
                .enumerate()
                .map(|(i, s)| Found {
                    url: s.url.to_owned(),
                    title: s.title.to_owned(),
                    cited: cited.get(i).copied().unwrap_or(false),
                })
                .collect();
        }
        next.sources(sources);
    }

    fn flush(&mut self, next: &mut impl Emit) {
        let rest = std::mem::take(&mut self.held);
        self.pass(&rest, next);
        if self.footnotes {
            self.footnotes(next);
            return;
        }
        let end = self.sent;
        for s in self
            .sources
            .iter()
            .filter(|s| !s.cited && !s.url.is_empty())
        {
            next.citation(&Citation {
                url: &s.url,
                title: &s.title,
                start: end,
                end,
            });
        }
    }
}

#[cfg(test)]
mod tests;
