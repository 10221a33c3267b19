//! The hot path's frame reader: a strict, hand-written JSON reader for the frame shapes the
//! upstream sends on every token (`qwen-protocol.md` §5), with `serde_json` as the authority.
//!
//! Contract (tested differentially in `tests/frame_scan.rs`): [`frame`] either returns
//! exactly the [`Frame`] that `serde_json` would build, or gives up with [`Unsupported`] and
//! the caller asks `serde_json`. It gives up on anything it does not fully understand —
//! error-shaped frames, escaped keys, duplicate fields, a value of an unexpected type, numbers
//! that are not plain `u64`, nesting deeper than [`MAX_DEPTH`], invalid JSON — so it never has
//! to reproduce serde's error cases, only its successes.
//!
//! Why it exists: a token frame is ~400 bytes of which the client needs a few; serde's
//! derive machinery spends most of its time moving the large `Frame` through visitors and
//! tokenising fields we skip. This reader walks the bytes once, validates what it skips,
//! borrows every string without escapes, and decodes UTF-8 only for the strings it returns.

use std::borrow::Cow;

use super::frame::{
    Choice, Created, Delta, Extra, Frame, FunctionCall, Image, SearchSource, Text, TextList,
    UsageFrame,
};

impl<'a> Frame<'a> {
    /// Parse one SSE data payload: the hand-written reader here takes the hot shapes,
    /// `serde_json` everything else and is the authority on errors. (Defined here, not in
    /// `frame.rs`, so the frame types do not depend on their reader.)
    pub fn parse(data: &'a [u8]) -> Result<Self, serde_json::Error> {
        match frame(data) {
            Ok(frame) => Ok(frame),
            Err(Unsupported) => serde_json::from_slice(data),
        }
    }
}

/// The fast path declined; `serde_json` decides (it may accept, skip or reject the frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsupported;

type Scan<T> = Result<T, Unsupported>;

/// Deeper documents go to serde (which has its own recursion limit of 128).
pub const MAX_DEPTH: u32 = 32;

/// Read one SSE data payload (already trimmed) as a [`Frame`].
///
/// Every reader below fills its target in place (`&mut T`): returning these structs by value
/// through each level of nesting cost more in copies than the parsing itself.
pub fn frame(data: &[u8]) -> Scan<Frame<'_>> {
    let mut r = Reader::new(data);
    let mut f = Frame::default();
    let mut seen = Seen::default();
    r.object(|r, key| {
        match key {
            b"choices" => {
                seen.once(0)?;
                if !r.null()? {
                    r.first(&mut f.choice, choice)?;
                }
            }
            b"response_id" => {
                seen.once(1)?;
                f.response_id = r.opt_text()?;
            }
            b"usage" => {
                seen.once(2)?;
                r.fill(&mut f.usage, usage)?;
            }
            b"response.created" => {
                seen.once(3)?;
                r.fill(&mut f.created, created)?;
            }
            // Error shapes keep raw slices and are classified on the cold path.
            b"success" | b"data" | b"error" | b"ret" | b"code" | b"details" => {
                return Err(Unsupported)
            }
            _ => r.unknown(key)?,
        }
        Ok(())
    })?;
    r.end()?;
    Ok(f)
}

fn created<'a>(r: &mut Reader<'a>, c: &mut Created<'a>) -> Scan<()> {
    let mut seen = Seen::default();
    r.object(|r, key| {
        let (bit, slot) = match key {
            b"chat_id" => (0, &mut c.chat_id),
            b"parent_id" => (1, &mut c.parent_id),
            b"response_id" => (2, &mut c.response_id),
            b"response_index" => (3, &mut c.response_index),
            _ => return r.unknown(key),
        };
        seen.once(bit)?;
        *slot = r.opt_text()?;
        Ok(())
    })
}

fn choice<'a>(r: &mut Reader<'a>, c: &mut Choice<'a>) -> Scan<()> {
    let mut seen = Seen::default();
    r.object(|r, key| {
        if key == b"delta" {
            seen.once(0)?;
            r.fill(&mut c.delta, delta)
        } else {
            r.unknown(key)
        }
    })
}

fn delta<'a>(r: &mut Reader<'a>, d: &mut Delta<'a>) -> Scan<()> {
    let mut seen = Seen::default();
    r.object(|r, key| {
        let (bit, slot) = match key {
            b"content" => (0, &mut d.content),
            b"phase" => (1, &mut d.phase),
            b"status" => (2, &mut d.status),
            b"reasoning_content" => (3, &mut d.reasoning_content),
            b"extra" => {
                seen.once(4)?;
                return r.fill(&mut d.extra, extra);
            }
            b"role" => {
                seen.once(5)?;
                d.function_role = r.opt_flag(|raw| raw == b"function")?;
                return Ok(());
            }
            b"function_id" => {
                seen.once(6)?;
                d.platform_function = r.opt_flag(|_| true)?;
                return Ok(());
            }
            b"name" => (7, &mut d.name),
            b"function_call" => {
                seen.once(8)?;
                return r.fill(&mut d.function_call, |r, f: &mut Box<FunctionCall<'_>>| {
                    function_call(r, f)
                });
            }
            _ => return r.unknown(key),
        };
        seen.once(bit)?;
        *slot = r.opt_text()?;
        Ok(())
    })
}

fn extra<'a>(r: &mut Reader<'a>, e: &mut Extra<'a>) -> Scan<()> {
    let mut seen = Seen::default();
    r.object(|r, key| match key {
        b"summary_thought" => {
            seen.once(0)?;
            r.fill(&mut e.summary_thought, text_list)
        }
        b"image_list" => {
            seen.once(1)?;
            r.fill(&mut e.image_list, |r, images| {
                r.array(|r| {
                    let mut i = Image::default();
                    image(r, &mut i)?;
                    images.push(i);
                    Ok(())
                })
            })
        }
        b"reasoning_content" => {
            seen.once(2)?;
            e.reasoning_content = r.opt_text()?;
            Ok(())
        }
        b"web_search_info" => {
            seen.once(3)?;
            r.fill(&mut e.web_search_info, |r, sources| {
                r.array(|r| {
                    let mut s = SearchSource::default();
                    search_source(r, &mut s)?;
                    sources.push(s);
                    Ok(())
                })
            })
        }
        _ => r.unknown(key),
    })
}

fn text_list<'a>(r: &mut Reader<'a>, list: &mut TextList<'a>) -> Scan<()> {
    let mut seen = Seen::default();
    r.object(|r, key| {
        if key == b"content" {
            seen.once(0)?;
            // `Vec` (not `Option`) in the type: serde rejects `null` here, so do we.
            r.array(|r| {
                list.content.push(r.text()?);
                Ok(())
            })
        } else {
            r.unknown(key)
        }
    })
}

fn image<'a>(r: &mut Reader<'a>, i: &mut Image<'a>) -> Scan<()> {
    let mut seen = Seen::default();
    r.object(|r, key| {
        if key == b"image" {
            seen.once(0)?;
            i.image = r.opt_text()?;
            Ok(())
        } else {
            r.unknown(key)
        }
    })
}

fn search_source<'a>(r: &mut Reader<'a>, s: &mut SearchSource<'a>) -> Scan<()> {
    let mut seen = Seen::default();
    r.object(|r, key| {
        let (bit, slot) = match key {
            b"url" => (0, &mut s.url),
            b"title" => (1, &mut s.title),
            _ => return r.unknown(key),
        };
        seen.once(bit)?;
        *slot = r.opt_text()?;
        Ok(())
    })
}

fn function_call<'a>(r: &mut Reader<'a>, f: &mut FunctionCall<'a>) -> Scan<()> {
    let mut seen = Seen::default();
    r.object(|r, key| {
        let (bit, slot) = match key {
            b"name" => (0, &mut f.name),
            b"arguments" => (1, &mut f.arguments),
            _ => return r.unknown(key),
        };
        seen.once(bit)?;
        *slot = r.opt_text()?;
        Ok(())
    })
}

fn usage(r: &mut Reader<'_>, u: &mut UsageFrame) -> Scan<()> {
    let mut seen = Seen::default();
    r.object(|r, key| {
        match key {
            b"input_tokens" => {
                seen.once(0)?;
                u.input_tokens = r.opt_u64()?;
            }
            b"output_tokens" => {
                seen.once(1)?;
                u.output_tokens = r.opt_u64()?;
            }
            b"output_tokens_details" => {
                seen.once(2)?;
                r.fill(&mut u.output_tokens_details, |r, d| {
                    d.reasoning_tokens = r.single_u64(b"reasoning_tokens")?;
                    Ok(())
                })?;
            }
            b"prompt_tokens_details" => {
                seen.once(3)?;
                r.fill(&mut u.prompt_tokens_details, |r, d| {
                    d.cached_tokens = r.single_u64(b"cached_tokens")?;
                    Ok(())
                })?;
            }
            _ => r.unknown(key)?,
        }
        Ok(())
    })
}

/// Which known fields of one object were seen: serde rejects duplicates, so we decline them.
#[derive(Default)]
struct Seen(u32);

impl Seen {
    fn once(&mut self, bit: u32) -> Scan<()> {
        let mask = 1 << bit;
        if self.0 & mask != 0 {
            return Err(Unsupported);
        }
        self.0 |= mask;
        Ok(())
    }
}

/// A cursor over one JSON document. Every method either consumes a complete, valid piece of
/// JSON (plus surrounding whitespace) or fails.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    depth: u32,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self {
            buf,
            pos: 0,
            depth: 0,
        }
    }

    /// The next non-whitespace byte, not consumed.
    #[inline]
    fn peek(&mut self) -> Scan<u8> {
        while let Some(&b) = self.buf.get(self.pos) {
            if !matches!(b, b' ' | b'\n' | b'\r' | b'\t') {
                return Ok(b);
            }
            self.pos += 1;
        }
        Err(Unsupported)
    }

    #[inline]
    fn eat(&mut self, byte: u8) -> Scan<()> {
        if self.peek()? == byte {
            self.pos += 1;
            Ok(())
        } else {
            Err(Unsupported)
        }
    }

    /// Only whitespace may follow the document.
    fn end(&mut self) -> Scan<()> {
        match self.peek() {
            Err(Unsupported) => Ok(()),
            Ok(_) => Err(Unsupported),
        }
    }

    fn enter(&mut self) -> Scan<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(Unsupported);
        }
        Ok(())
    }

    /// `{ "key": value, … }`: `field` is called with each raw key and must consume its value.
    /// Keys with escapes are declined (serde compares keys after unescaping).
    fn object(&mut self, mut field: impl FnMut(&mut Self, &'a [u8]) -> Scan<()>) -> Scan<()> {
        self.eat(b'{')?;
        self.enter()?;
        if self.peek()? == b'}' {
            self.pos += 1;
            self.depth -= 1;
            return Ok(());
        }
        loop {
            self.eat(b'"')?;
            let (key, escaped) = self.string_body()?;
            if escaped {
                return Err(Unsupported);
            }
            self.eat(b':')?;
            field(self, key)?;
            match self.peek()? {
                b',' => self.pos += 1,
                b'}' => {
                    self.pos += 1;
                    self.depth -= 1;
                    return Ok(());
                }
                _ => return Err(Unsupported),
            }
        }
    }

    /// `[ value, … ]`: `element` must consume each value.
    fn array(&mut self, mut element: impl FnMut(&mut Self) -> Scan<()>) -> Scan<()> {
        self.eat(b'[')?;
        self.enter()?;
        if self.peek()? == b']' {
            self.pos += 1;
            self.depth -= 1;
            return Ok(());
        }
        loop {
            element(self)?;
            match self.peek()? {
                b',' => self.pos += 1,
                b']' => {
                    self.pos += 1;
                    self.depth -= 1;
                    return Ok(());
                }
                _ => return Err(Unsupported),
            }
        }
    }

    /// The first element of an array read into `target`, the rest validated and skipped;
    /// an empty array leaves `target` as `None`.
    fn first<T: Default>(
        &mut self,
        target: &mut Option<T>,
        read: impl Fn(&mut Self, &mut T) -> Scan<()>,
    ) -> Scan<()> {
        let mut is_first = true;
        self.array(|r| {
            if std::mem::take(&mut is_first) {
                read(r, target.insert(T::default()))
            } else {
                r.skip()
            }
        })
    }

    /// Consume `null` if it is next.
    #[inline]
    fn null(&mut self) -> Scan<bool> {
        if self.peek()? == b'n' {
            self.literal(b"null")?;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    /// `null` leaves `slot` as `None`; anything else is read into a fresh `T` in the slot.
    fn fill<T: Default>(
        &mut self,
        slot: &mut Option<T>,
        read: impl FnOnce(&mut Self, &mut T) -> Scan<()>,
    ) -> Scan<()> {
        if self.null()? {
            return Ok(());
        }
        read(self, slot.insert(T::default()))
    }

    fn opt_text(&mut self) -> Scan<Option<Text<'a>>> {
        if self.null()? {
            return Ok(None);
        }
        self.text().map(Some)
    }

    /// A string read as a flag (`role` is `"function"`, a `function_id` is there), decided
    /// on its raw bytes: no decoding for the `"assistant"` of every token frame. `null` is
    /// `false`; escaped spellings and invalid UTF-8 go to serde.
    fn opt_flag(&mut self, test: impl FnOnce(&[u8]) -> bool) -> Scan<bool> {
        if self.null()? {
            return Ok(false);
        }
        self.eat(b'"')?;
        match self.string_body()? {
            (_, true) => Err(Unsupported),
            (raw, false) if !raw.is_ascii() && std::str::from_utf8(raw).is_err() => {
                Err(Unsupported)
            }
            (raw, false) => Ok(test(raw)),
        }
    }

    fn opt_u64(&mut self) -> Scan<Option<u64>> {
        if self.null()? {
            return Ok(None);
        }
        self.u64().map(Some)
    }

    /// An object whose only field of interest is the `u64` under `name`.
    fn single_u64(&mut self, name: &[u8]) -> Scan<Option<u64>> {
        let mut value = None;
        let mut seen = Seen::default();
        self.object(|r, key| {
            if key == name {
                seen.once(0)?;
                value = r.opt_u64()?;
                Ok(())
            } else {
                r.unknown(key)
            }
        })?;
        Ok(value)
    }

    /// A string, borrowed when it has no escapes. UTF-8 is checked here, once per string
    /// returned; skipped strings are not decoded at all (as in serde_json).
    fn text(&mut self) -> Scan<Text<'a>> {
        self.eat(b'"')?;
        let (raw, escaped) = self.string_body()?;
        let s = std::str::from_utf8(raw).map_err(|_| Unsupported)?;
        if escaped {
            unescape(s).map(|s| Text(Cow::Owned(s)))
        } else {
            Ok(Text(Cow::Borrowed(s)))
        }
    }

    /// After the opening quote: the raw bytes up to the closing quote (consumed), and
    /// whether they contain escapes. Escapes are validated; control characters rejected.
    #[inline(always)]
    fn string_body(&mut self) -> Scan<(&'a [u8], bool)> {
        let start = self.pos;
        let mut escaped = false;
        loop {
            let rest = &self.buf[self.pos..];
            let at = find_special(rest).ok_or(Unsupported)?;
            self.pos += at + 1;
            match rest[at] {
                b'"' => return Ok((&self.buf[start..self.pos - 1], escaped)),
                b'\\' => {}
                _ => return Err(Unsupported), // a raw control character
            }
            escaped = true;
            match self.buf.get(self.pos) {
                Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.pos += 1,
                Some(b'u') => {
                    let hex = self
                        .buf
                        .get(self.pos + 1..self.pos + 5)
                        .ok_or(Unsupported)?;
                    if !hex.iter().all(u8::is_ascii_hexdigit) {
                        return Err(Unsupported);
                    }
                    self.pos += 5;
                }
                _ => return Err(Unsupported),
            }
        }
    }

    /// A non-negative integer that fits `u64`, as serde reads one into a `u64` field.
    fn u64(&mut self) -> Scan<u64> {
        let start = self.pos_after_ws()?;
        let digits = self.buf[start..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        let end = start + digits;
        let is_plain = digits > 0
            && (digits == 1 || self.buf[start] != b'0')
            && !matches!(self.buf.get(end), Some(b'.' | b'e' | b'E'));
        if !is_plain {
            return Err(Unsupported);
        }
        let mut value: u64 = 0;
        for &b in &self.buf[start..end] {
            value = value
                .checked_mul(10)
                .and_then(|v| v.checked_add(u64::from(b - b'0')))
                .ok_or(Unsupported)?;
        }
        self.pos = end;
        Ok(value)
    }

    fn pos_after_ws(&mut self) -> Scan<usize> {
        self.peek()?;
        Ok(self.pos)
    }

    fn literal(&mut self, word: &[u8]) -> Scan<()> {
        let start = self.pos_after_ws()?;
        if self.buf[start..].starts_with(word) {
            self.pos = start + word.len();
            Ok(())
        } else {
            Err(Unsupported)
        }
    }

    /// The value of a field we do not use. serde decodes every key as UTF-8 (to match it
    /// against the field names), so an unknown key must be valid UTF-8 too.
    fn unknown(&mut self, key: &[u8]) -> Scan<()> {
        if !key.is_ascii() && std::str::from_utf8(key).is_err() {
            return Err(Unsupported);
        }
        self.skip()
    }

    /// Validate and skip any value.
    fn skip(&mut self) -> Scan<()> {
        match self.peek()? {
            b'"' => {
                self.pos += 1;
                self.string_body().map(drop)
            }
            b'{' => self.object(Self::unknown),
            b'[' => self.array(Self::skip),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => Err(Unsupported),
        }
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
    fn number(&mut self) -> Scan<()> {
        let b = self.buf;
        let mut i = self.pos;
        let digits = |i: &mut usize| {
            let from = *i;
            while b.get(*i).is_some_and(u8::is_ascii_digit) {
                *i += 1;
            }
            *i - from
        };
        if b.get(i) == Some(&b'-') {
            i += 1;
        }
        let int_start = i;
        let n = digits(&mut i);
        if n == 0 || (n > 1 && b[int_start] == b'0') {
            return Err(Unsupported);
        }
        if b.get(i) == Some(&b'.') {
            i += 1;
            if digits(&mut i) == 0 {
                return Err(Unsupported);
            }
        }
        if matches!(b.get(i), Some(b'e' | b'E')) {
            i += 1;
            if matches!(b.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            if digits(&mut i) == 0 {
                return Err(Unsupported);
            }
        }
        self.pos = i;
        Ok(())
    }
}

/// The index of the first byte that ends a run of plain string content: `"`, `\\` or a
/// control character. Eight bytes at a time (SWAR): most strings here are short keys and
/// ids, for which a SIMD search's setup costs more than it saves.
#[inline(always)]
fn find_special(s: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // A byte of `x` is zero ⇔ its bit 7 is set in `zero_bytes(x)` (exact for the lowest
    // such byte, which is the one we locate).
    let zero_bytes = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    let mut i = 0;
    while let Some(chunk) = s.get(i..i + 8) {
        let x = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
        // `x < 0x20` per byte: the byte minus 0x20 borrows into bit 7 with bit 7 clear before.
        let control = x.wrapping_sub(ONES * 0x20) & !x & HIGHS;
        let hits = zero_bytes(x ^ (ONES * u64::from(b'"')))
            | zero_bytes(x ^ (ONES * u64::from(b'\\')))
            | control;
        if hits != 0 {
            return Some(i + (hits.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    s[i..]
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
        .map(|p| i + p)
}

/// Decode the escapes of a string's raw body (already validated by `string_body`).
/// Lone surrogates are declined (serde rejects them).
fn unescape(raw: &str) -> Scan<String> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(at) = rest.find('\\') {
        out.push_str(&rest[..at]);
        let esc = &rest[at + 1..];
        let (ch, used) = match esc.as_bytes().first().ok_or(Unsupported)? {
            b'"' => ('"', 1),
            b'\\' => ('\\', 1),
            b'/' => ('/', 1),
            b'b' => ('\u{8}', 1),
            b'f' => ('\u{c}', 1),
            b'n' => ('\n', 1),
            b'r' => ('\r', 1),
            b't' => ('\t', 1),
            b'u' => {
                let hi = hex4(esc.get(1..5))?;
                match hi {
                    0xD800..=0xDBFF => {
                        let lo = esc
                            .get(5..7)
                            .filter(|p| *p == "\\u")
                            .ok_or(Unsupported)
                            .and_then(|_| hex4(esc.get(7..11)))?;
                        if !(0xDC00..=0xDFFF).contains(&lo) {
                            return Err(Unsupported);
                        }
                        let c = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                        (char::from_u32(c).ok_or(Unsupported)?, 11)
                    }
                    0xDC00..=0xDFFF => return Err(Unsupported),
                    _ => (char::from_u32(hi).ok_or(Unsupported)?, 5),
                }
            }
            _ => return Err(Unsupported),
        };
        out.push(ch);
        rest = &esc[used..];
    }
    out.push_str(rest);
    Ok(out)
}

fn hex4(digits: Option<&str>) -> Scan<u32> {
    let digits = digits.ok_or(Unsupported)?;
    u32::from_str_radix(digits, 16).map_err(|_| Unsupported)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scanned(json: &str) -> Scan<String> {
        frame(json.as_bytes()).map(|f| format!("{f:?}"))
    }

    #[test]
    fn reads_the_token_frame_and_borrows() {
        let raw = br#"{"choices": [{"delta": {"role": "assistant", "content": "Hi", "phase": "answer", "status": "typing"}}], "response_id": "r", "usage": {"input_tokens": 1049, "output_tokens": 1, "output_tokens_details": {"text_tokens": 1, "reasoning_tokens": 7}, "prompt_tokens_details": {"cached_tokens": 0}}, "timestamp": 1780468951}"#;
        let f = frame(raw).unwrap();
        let d = f.choice.unwrap().delta.unwrap();
        assert!(matches!(d.content, Some(Text(Cow::Borrowed("Hi")))));
        assert_eq!(d.phase.as_deref(), Some("answer"));
        assert_eq!(f.response_id.as_deref(), Some("r"));
        let u = f.usage.unwrap();
        assert_eq!((u.input_tokens, u.output_tokens), (Some(1049), Some(1)));
        assert_eq!(u.output_tokens_details.unwrap().reasoning_tokens, Some(7));
        assert_eq!(u.prompt_tokens_details.unwrap().cached_tokens, Some(0));
    }

    #[test]
    fn decodes_escapes_including_surrogate_pairs() {
        let f =
            frame(br#"{"choices":[{"delta":{"content":"a\n\"b\u00e9\ud83d\ude00\/"}}]}"#).unwrap();
        let content = f.choice.unwrap().delta.unwrap().content.unwrap();
        assert_eq!(&*content, "a\n\"b\u{e9}\u{1F600}/");
        assert!(matches!(content.0, Cow::Owned(_)));
    }

    #[test]
    fn declines_what_serde_must_decide() {
        for json in [
            r#"{"success":false,"data":{"code":"RateLimited"}}"#,
            r#"{"response_id":"a","response_id":"b"}"#,
            r#"{"resp\u006fnse_id":"a"}"#,
            r#"{"usage":{"input_tokens":1.0}}"#,
            r#"{"usage":{"input_tokens":-1}}"#,
            r#"{"usage":{"input_tokens":18446744073709551616}}"#,
            r#"{"choices":[{"delta":{"content":7}}]}"#,
            r#"{"choices":[{"delta":{"content":"\ud800"}}]}"#,
            r#"{"choices":[{"delta":{"content":"tab\there"}}],}"#,
            r#"{"x":01}"#,
            r#"{"x":[1,]}"#,
            r#"{"x":"\q"}"#,
            "{\"x\":\"raw\ttab\"}",
            r#"{"x":nul}"#,
            r#"{} {}"#,
            r#"[]"#,
            r#"{"choices":[{"delta":{"extra":{"summary_thought":{"content":null}}}}]}"#,
            "",
        ] {
            assert_eq!(scanned(json), Err(Unsupported), "{json}");
        }
        let deep = format!("{{\"x\":{}{}}}", "[".repeat(40), "]".repeat(40));
        assert_eq!(scanned(&deep), Err(Unsupported));
    }

    #[test]
    fn find_special_matches_a_byte_loop() {
        let naive = |s: &[u8]| s.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20);
        let alphabet = b"a\"\\\x00\x1f\x20\x7f\x80\xff\xe9!#[";
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        for len in 0..40 {
            for _ in 0..500 {
                let s: Vec<u8> = (0..len)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        // Mostly plain bytes, so hits land at every offset.
                        if x % 8 == 0 {
                            alphabet[(x >> 8) as usize % alphabet.len()]
                        } else {
                            b'a' + (x >> 16) as u8 % 26
                        }
                    })
                    .collect();
                assert_eq!(find_special(&s), naive(&s), "{s:?}");
            }
        }
    }

    #[test]
    fn skips_unknown_values_of_every_kind() {
        let json = r#" { "a" : [ true , false , null , -0.5e+3 , { "b" : [ ] } , "s\u0041" ] , "response_id" : null } "#;
        let f = frame(json.as_bytes()).unwrap();
        assert!(f.response_id.is_none() && f.choice.is_none());
    }
}
