//! Incremental, zero-copy Server-Sent-Events decoder over `Bytes`.
//!
//! Invariants that make it linear-time and (almost) copy-free:
//! * Every byte is scanned for line ends exactly once. The scanner state (`at_line_start`,
//!   `cr_pending`, `event_has_lines`) describes the position right after the last scanned
//!   byte, so scanning resumes there when the next chunk arrives.
//! * While no partial event is carried over, complete events are cut straight out of the
//!   incoming `Bytes` with `split_to` (a reference-count bump, no copy).
//! * Only the unfinished tail of a chunk is copied, into `carry`; when the event completes,
//!   just the missing head of the next chunk is appended and the rest is sliced again.
//! * A single `data:` line (the Qwen case) is returned as a slice of the event; only
//!   multi-line data is joined into a new buffer.
//!
//! Accepted framing: LF, CRLF and lone CR line ends (also split across chunks), comments,
//! `event:`/`id:`/`retry:` fields (ignored), multi-line `data:`, a leading BOM, a missing
//! final blank line at EOF, and a bare JSON body without any `data:` prefix (the upstream
//! answers errors that way).

use bytes::{BufMut, Bytes, BytesMut};

/// Default cap for one event (and so for the carried-over tail).
pub const DEFAULT_MAX_EVENT_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseError {
    /// An event grew past the cap without a terminating blank line.
    EventTooLarge { limit: usize },
}

impl std::fmt::Display for SseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SseError::EventTooLarge { limit } => {
                write!(f, "an upstream SSE event exceeded {limit} bytes")
            }
        }
    }
}

impl std::error::Error for SseError {}

#[derive(Debug)]
pub struct SseDecoder {
    /// The latest chunk; `input[pos..]` is not scanned yet.
    input: Bytes,
    pos: usize,
    /// Start of an event whose end has not been seen yet; always fully scanned.
    carry: BytesMut,
    /// `carry` holds a complete event handed out by the last call: clear it on the next.
    carry_done: bool,
    /// Multi-line data joined (reused).
    joined: Vec<u8>,
    at_line_start: bool,
    /// The last scanned byte was `\r`: a following `\n` belongs to the same line end.
    cr_pending: bool,
    /// The current event has at least one non-empty line.
    event_has_lines: bool,
    max_event: usize,
}

/// Where a complete event lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Loc {
    /// `input[start..end]`.
    Input(usize, usize),
    Carry,
}

/// Where an event's data lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Span {
    /// A range of the event.
    Range(usize, usize),
    /// Several `data:` lines, joined into `joined`.
    Joined,
}

impl Default for SseDecoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_EVENT_BYTES)
    }
}

impl SseDecoder {
    pub fn new(max_event: usize) -> Self {
        Self {
            input: Bytes::new(),
            pos: 0,
            carry: BytesMut::new(),
            carry_done: false,
            joined: Vec::new(),
            at_line_start: true,
            cr_pending: false,
            event_has_lines: false,
            max_event,
        }
    }

    /// Feed the next chunk. Take events until `None` before pushing again.
    pub fn push(&mut self, chunk: Bytes) {
        if self.pos >= self.input.len() {
            self.input = chunk;
        } else {
            // Misuse (not drained): stay correct at the cost of a copy.
            let rest = &self.input[self.pos..];
            let mut joined = BytesMut::with_capacity(rest.len() + chunk.len());
            joined.put_slice(rest);
            joined.put_slice(&chunk);
            self.input = joined.freeze();
        }
        self.pos = 0;
    }

    /// The payload of the next complete event that carries data, borrowed from the decoder
    /// (the hot path: no reference counting, no copy).
    pub fn next_data_ref(&mut self) -> Result<Option<&[u8]>, SseError> {
        let found = self.locate_next()?;
        Ok(found.map(|(loc, span)| self.resolve(loc, span)))
    }

    /// The same as an owned `Bytes` (a slice of the pushed chunk when possible).
    pub fn next_data(&mut self) -> Result<Option<Bytes>, SseError> {
        let found = self.locate_next()?;
        Ok(found.map(|(loc, span)| self.owned(loc, span)))
    }

    /// End of input: dispatch what is left (an event without its final blank line).
    pub fn finish_ref(&mut self) -> Result<Option<&[u8]>, SseError> {
        let found = self.locate_last()?;
        Ok(found.map(|(loc, span)| self.resolve(loc, span)))
    }

    /// [`finish_ref`](Self::finish_ref), owned.
    pub fn finish(&mut self) -> Result<Option<Bytes>, SseError> {
        let found = self.locate_last()?;
        Ok(found.map(|(loc, span)| self.owned(loc, span)))
    }

    fn resolve(&self, loc: Loc, span: Span) -> &[u8] {
        let event = match loc {
            Loc::Input(a, b) => &self.input[a..b],
            Loc::Carry => &self.carry[..],
        };
        match span {
            Span::Range(a, b) => &event[a..b],
            Span::Joined => &self.joined,
        }
    }

    fn owned(&self, loc: Loc, span: Span) -> Bytes {
        match (loc, span) {
            (Loc::Input(a, _), Span::Range(x, y)) => self.input.slice(a + x..a + y),
            _ => Bytes::copy_from_slice(self.resolve(loc, span)),
        }
    }

    /// Find the next event with data; indices only, so no borrow outlives the search.
    fn locate_next(&mut self) -> Result<Option<(Loc, Span)>, SseError> {
        if self.carry_done {
            self.carry.clear();
            self.carry_done = false;
        }
        while let Some(loc) = self.next_event()? {
            let event = match loc {
                Loc::Input(a, b) => &self.input[a..b],
                Loc::Carry => &self.carry[..],
            };
            if let Some(span) = data_span(event, &mut self.joined) {
                return Ok(Some((loc, span)));
            }
            if loc == Loc::Carry {
                self.carry.clear();
                self.carry_done = false;
            }
        }
        Ok(None)
    }

    fn locate_last(&mut self) -> Result<Option<(Loc, Span)>, SseError> {
        if let Some(found) = self.locate_next()? {
            return Ok(Some(found));
        }
        self.at_line_start = true;
        self.cr_pending = false;
        self.event_has_lines = false;
        if self.carry.is_empty() {
            return Ok(None);
        }
        self.carry_done = true;
        Ok(data_span(&self.carry, &mut self.joined).map(|span| (Loc::Carry, span)))
    }

    fn next_event(&mut self) -> Result<Option<Loc>, SseError> {
        if self.pos >= self.input.len() {
            return Ok(None);
        }
        let start = self.pos;
        match self.scan_input() {
            Some(end) if self.carry.is_empty() => {
                self.pos = end;
                Ok(Some(Loc::Input(start, end)))
            }
            Some(end) => {
                self.carry.put_slice(&self.input[start..end]);
                self.pos = end;
                self.carry_done = true;
                Ok(Some(Loc::Carry))
            }
            None => {
                if self.carry.len() + self.input.len() - start > self.max_event {
                    return Err(SseError::EventTooLarge {
                        limit: self.max_event,
                    });
                }
                self.carry.put_slice(&self.input[start..]);
                self.pos = self.input.len();
                Ok(None)
            }
        }
    }

    /// Scan `input` from `pos`; return the offset just past the blank line that ends the
    /// current event, or `None` when the rest of the input was scanned without one.
    fn scan_input(&mut self) -> Option<usize> {
        let s = &self.input[..];
        let mut i = self.pos;
        loop {
            if self.cr_pending {
                if i == s.len() {
                    return None;
                }
                self.cr_pending = false;
                if s[i] == b'\n' {
                    i += 1;
                    continue;
                }
            }
            let Some(off) = memchr::memchr2(b'\n', b'\r', &s[i..]) else {
                if i < s.len() {
                    self.at_line_start = false;
                }
                return None;
            };
            let line_is_empty = off == 0 && self.at_line_start;
            let pos = i + off;
            self.cr_pending = s[pos] == b'\r';
            i = pos + 1;
            self.at_line_start = true;
            if !line_is_empty {
                self.event_has_lines = true;
            } else if self.event_has_lines {
                self.event_has_lines = false;
                return Some(i);
            }
        }
    }
}

/// Locate the data payload of one raw event (including its line ends): a range of the
/// event for a single `data:` line (or a bare JSON body), or `joined` for several.
fn data_span(event: &[u8], joined: &mut Vec<u8>) -> Option<Span> {
    const BOM: &[u8] = b"\xEF\xBB\xBF";
    let skip = if event.starts_with(BOM) { BOM.len() } else { 0 };
    let mut first: Option<(usize, usize)> = None;
    let mut several = false;
    let mut rest = &event[skip..];
    let mut base = skip;
    while !rest.is_empty() {
        let (line_len, term_len) = match memchr::memchr2(b'\n', b'\r', rest) {
            Some(p) if rest[p] == b'\r' && rest.get(p + 1) == Some(&b'\n') => (p, 2),
            Some(p) => (p, 1),
            None => (rest.len(), 0),
        };
        let line = &rest[..line_len];
        if let Some(value_start) = data_value_offset(line) {
            let range = (base + value_start, base + line_len);
            match first {
                None => first = Some(range),
                Some((a, b)) => {
                    if !several {
                        several = true;
                        joined.clear();
                        joined.extend_from_slice(&event[a..b]);
                    }
                    joined.push(b'\n');
                    joined.extend_from_slice(&event[range.0..range.1]);
                }
            }
        }
        base += line_len + term_len;
        rest = &rest[line_len + term_len..];
    }
    if several {
        return Some(Span::Joined);
    }
    if let Some((a, b)) = first {
        return Some(Span::Range(a, b));
    }
    // No `data:` field: a bare JSON body (non-SSE error response) is its own payload.
    let start = skip
        + event[skip..]
            .iter()
            .position(|b| !b.is_ascii_whitespace())?;
    let end = event.iter().rposition(|b| !b.is_ascii_whitespace())? + 1;
    matches!(event[start], b'{' | b'[').then_some(Span::Range(start, end))
}

/// If `line` is a `data` field, the offset of its value (one leading space removed).
fn data_value_offset(line: &[u8]) -> Option<usize> {
    let rest = line.strip_prefix(b"data")?;
    match rest.first() {
        None => Some(4),
        Some(b':') if rest.get(1) == Some(&b' ') => Some(6),
        Some(b':') => Some(5),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_chunks(chunks: &[&[u8]]) -> Vec<Bytes> {
        let mut d = SseDecoder::default();
        let mut out = Vec::new();
        for c in chunks {
            d.push(Bytes::copy_from_slice(c));
            while let Some(ev) = d.next_data().unwrap() {
                out.push(ev);
            }
        }
        if let Some(ev) = d.finish().unwrap() {
            out.push(ev);
        }
        out
    }

    fn decode_all(input: &[u8]) -> Vec<Bytes> {
        decode_chunks(&[input])
    }

    #[test]
    fn lf_crlf_and_lone_cr() {
        let want = vec![Bytes::from("a"), Bytes::from("b"), Bytes::from("c")];
        assert_eq!(decode_all(b"data: a\n\ndata: b\n\ndata: c\n\n"), want);
        assert_eq!(
            decode_all(b"data: a\r\n\r\ndata: b\r\n\r\ndata: c\r\n\r\n"),
            want
        );
        assert_eq!(decode_all(b"data: a\r\rdata: b\r\rdata: c\r\r"), want);
    }

    #[test]
    fn crlf_split_between_chunks() {
        let got = decode_chunks(&[b"data: a\r", b"\n\r", b"\ndata: b\r\n", b"\r\n"]);
        assert_eq!(got, vec![Bytes::from("a"), Bytes::from("b")]);
    }

    #[test]
    fn comments_and_other_fields_are_ignored() {
        let got = decode_all(b": keep-alive\n\nevent: x\nid: 7\nretry: 10\ndata: {\"a\":1}\n\n");
        assert_eq!(got, vec![Bytes::from("{\"a\":1}")]);
    }

    #[test]
    fn multi_line_data_is_joined_with_newlines() {
        let got = decode_all(b"data: {\"a\":\ndata:1}\ndata\n\n");
        assert_eq!(got, vec![Bytes::from("{\"a\":\n1}\n")]);
    }

    #[test]
    fn only_one_leading_space_is_removed() {
        assert_eq!(decode_all(b"data:  x\n\n"), vec![Bytes::from(" x")]);
        assert_eq!(decode_all(b"data:x\n\n"), vec![Bytes::from("x")]);
    }

    #[test]
    fn missing_final_blank_line_is_dispatched_at_eof() {
        assert_eq!(
            decode_all(b"data: a\n\ndata: b"),
            vec![Bytes::from("a"), Bytes::from("b")]
        );
        assert_eq!(
            decode_all(b"data: a\n\ndata: b\n"),
            vec![Bytes::from("a"), Bytes::from("b")]
        );
    }

    #[test]
    fn bare_json_body_is_one_payload() {
        let body = br#"{"ret":["FAIL_SYS_USER_VALIDATE"],"data":{"url":"x"}}"#;
        assert_eq!(decode_all(body), vec![Bytes::from_static(body)]);
        let pretty = b"{\n  \"success\": false\n}\n";
        assert_eq!(
            decode_all(pretty),
            vec![Bytes::from("{\n  \"success\": false\n}")]
        );
    }

    #[test]
    fn html_is_not_data() {
        assert!(decode_all(b"<!doctypehtml><title></title>").is_empty());
    }

    #[test]
    fn bom_is_stripped_even_when_split() {
        let got = decode_chunks(&[b"\xEF", b"\xBB\xBFdata: a\n\n"]);
        assert_eq!(got, vec![Bytes::from("a")]);
    }

    #[test]
    fn leading_blank_lines_do_not_make_empty_events() {
        assert_eq!(
            decode_all(b"\n\n\r\ndata: a\n\n\n\n"),
            vec![Bytes::from("a")]
        );
    }

    #[test]
    fn size_cap_is_enforced() {
        let mut d = SseDecoder::new(16);
        d.push(Bytes::from_static(b"data: 0123456789"));
        assert_eq!(d.next_data(), Ok(None));
        d.push(Bytes::from_static(b"abcdef"));
        assert_eq!(d.next_data(), Err(SseError::EventTooLarge { limit: 16 }));
    }

    #[test]
    fn single_line_data_is_a_slice_of_the_input() {
        let input = Bytes::from_static(b"data: hello\n\n");
        let mut d = SseDecoder::default();
        d.push(input.clone());
        let data = d.next_data().unwrap().unwrap();
        assert_eq!(data, "hello");
        // Same backing memory: the payload points into the pushed chunk.
        assert_eq!(data.as_ptr(), input[6..].as_ptr());
    }

    #[test]
    fn borrowed_events_point_into_the_chunk_and_carry_is_reused() {
        let input = Bytes::from_static(b"data: one\n\ndata: tw");
        let mut d = SseDecoder::default();
        d.push(input.clone());
        let first = d.next_data_ref().unwrap().unwrap();
        assert_eq!(first, b"one");
        assert_eq!(first.as_ptr(), input[6..].as_ptr());
        assert_eq!(d.next_data_ref().unwrap(), None);
        d.push(Bytes::from_static(b"o\n\ndata: a\ndata: b\n\n"));
        assert_eq!(d.next_data_ref().unwrap(), Some(&b"two"[..]));
        assert_eq!(d.next_data_ref().unwrap(), Some(&b"a\nb"[..]));
        assert_eq!(d.next_data_ref().unwrap(), None);
        assert_eq!(d.finish_ref().unwrap(), None);
    }

    #[test]
    fn every_split_point_gives_the_same_events() {
        let input: &[u8] =
            "data: {\"x\":\"中文\"}\r\n\r\n: c\n\ndata: a\ndata: b\n\ndata: [DONE]\n\n".as_bytes();
        let whole = decode_all(input);
        assert_eq!(whole.len(), 3);
        for cut in 0..=input.len() {
            assert_eq!(
                decode_chunks(&[&input[..cut], &input[cut..]]),
                whole,
                "cut {cut}"
            );
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(decode_chunks(&bytes), whole);
    }
}
