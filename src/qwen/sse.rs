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

use bytes::{Buf, BufMut, Bytes, BytesMut};

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
    /// Unscanned remainder of the latest chunk.
    input: Bytes,
    /// Start of an event whose end has not been seen yet; always fully scanned.
    carry: BytesMut,
    at_line_start: bool,
    /// The last scanned byte was `\r`: a following `\n` belongs to the same line end.
    cr_pending: bool,
    /// The current event has at least one non-empty line.
    event_has_lines: bool,
    max_event: usize,
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
            carry: BytesMut::new(),
            at_line_start: true,
            cr_pending: false,
            event_has_lines: false,
            max_event,
        }
    }

    /// Feed the next chunk. Call [`next_data`](Self::next_data) until it returns `None`
    /// before pushing again.
    pub fn push(&mut self, chunk: Bytes) {
        if self.input.is_empty() {
            self.input = chunk;
        } else {
            // Misuse (not drained): stay correct at the cost of a copy.
            let mut joined = BytesMut::with_capacity(self.input.len() + chunk.len());
            joined.put_slice(&self.input);
            joined.put_slice(&chunk);
            self.input = joined.freeze();
        }
    }

    /// The payload of the next complete event that carries data, if any.
    pub fn next_data(&mut self) -> Result<Option<Bytes>, SseError> {
        while let Some(event) = self.next_event()? {
            if let Some(data) = event_data(event) {
                return Ok(Some(data));
            }
        }
        Ok(None)
    }

    /// End of input: dispatch what is left (an event without its final blank line).
    pub fn finish(&mut self) -> Result<Option<Bytes>, SseError> {
        if let Some(data) = self.next_data()? {
            return Ok(Some(data));
        }
        self.at_line_start = true;
        self.cr_pending = false;
        self.event_has_lines = false;
        if self.carry.is_empty() {
            return Ok(None);
        }
        Ok(event_data(self.carry.split().freeze()))
    }

    fn next_event(&mut self) -> Result<Option<Bytes>, SseError> {
        if self.input.is_empty() {
            return Ok(None);
        }
        match self.scan_input() {
            Some(end) if self.carry.is_empty() => Ok(Some(self.input.split_to(end))),
            Some(end) => {
                self.carry.put_slice(&self.input[..end]);
                self.input.advance(end);
                Ok(Some(self.carry.split().freeze()))
            }
            None => {
                if self.carry.len() + self.input.len() > self.max_event {
                    return Err(SseError::EventTooLarge {
                        limit: self.max_event,
                    });
                }
                self.carry.put_slice(&self.input);
                self.input.clear();
                Ok(None)
            }
        }
    }

    /// Scan `input` from its start; return the offset just past the blank line that ends
    /// the current event, or `None` when the whole input was scanned without one.
    fn scan_input(&mut self) -> Option<usize> {
        let s = &self.input[..];
        let mut i = 0;
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

/// Extract the data payload of one raw event (including its line ends).
fn event_data(event: Bytes) -> Option<Bytes> {
    const BOM: &[u8] = b"\xEF\xBB\xBF";
    let event = if event.starts_with(BOM) {
        event.slice(BOM.len()..)
    } else {
        event
    };
    let mut first: Option<(usize, usize)> = None;
    let mut joined: Option<BytesMut> = None;
    let mut rest = &event[..];
    let mut base = 0;
    while !rest.is_empty() {
        let (line_len, term_len) = match memchr::memchr2(b'\n', b'\r', rest) {
            Some(p) if rest[p] == b'\r' && rest.get(p + 1) == Some(&b'\n') => (p, 2),
            Some(p) => (p, 1),
            None => (rest.len(), 0),
        };
        let line = &rest[..line_len];
        if let Some(value_start) = data_value_offset(line) {
            let range = (base + value_start, base + line_len);
            match (&mut joined, first) {
                (None, None) => first = Some(range),
                (None, Some((a, b))) => {
                    let mut buf = BytesMut::with_capacity(event.len());
                    buf.put_slice(&event[a..b]);
                    buf.put_u8(b'\n');
                    buf.put_slice(&event[range.0..range.1]);
                    joined = Some(buf);
                }
                (Some(buf), _) => {
                    buf.put_u8(b'\n');
                    buf.put_slice(&event[range.0..range.1]);
                }
            }
        }
        base += line_len + term_len;
        rest = &rest[line_len + term_len..];
    }
    if let Some(buf) = joined {
        return Some(buf.freeze());
    }
    if let Some((a, b)) = first {
        return Some(event.slice(a..b));
    }
    // No `data:` field: a bare JSON body (non-SSE error response) is its own payload.
    let start = event.iter().position(|b| !b.is_ascii_whitespace())?;
    let end = event.iter().rposition(|b| !b.is_ascii_whitespace())? + 1;
    matches!(event[start], b'{' | b'[').then(|| event.slice(start..end))
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
