//! Recognising the markers in the model's text, leniently (tool-calling.md §3.1, F4): the
//! model gets the JSON right far more often than the brackets around it. Openers: `[TOOL
//! CALL`, `[tool_calls`, `[ Tool-Call` … and the native family `<tool_call`, `<tool_calls`,
//! `<function_calls`. Closers: `[END TOOL CALL]`, `[/TOOL CALL]`, `</tool_call>` (also with
//! a full-width `＞`), with a short tail. Matching is incremental: a prefix that may still
//! become a marker is `Partial`, so the scanner holds it back and nothing longer.

/// How a text start relates to a marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Match {
    /// A marker of this many bytes.
    Full(usize),
    /// The text ends inside what may still become a marker.
    Partial,
    No,
}

/// The longest opener a `Partial` may hold back.
pub const OPEN_MAX: usize = 24;
/// The longest closer (tail included).
pub const CLOSE_MAX: usize = 40;

/// An opener at the start of `s`.
pub fn open(s: &str) -> Match {
    let mut m = Matcher::new(s);
    match m.next_byte() {
        Some(b'[') => {
            m.skip_spaces();
            outcome(
                m.word("tool")
                    .and_then(|_| {
                        m.separators();
                        m.word("call")
                    })
                    .and_then(|_| m.optional(b's'))
                    .and_then(|_| m.full()),
            )
        }
        Some(b'<') => {
            m.skip_spaces();
            let at = m.at;
            let tool = outcome(
                m.word("tool_call")
                    .and_then(|_| m.optional(b's'))
                    .and_then(|_| m.full()),
            );
            if tool != Match::No {
                return tool;
            }
            m.at = at;
            outcome(m.word("function_calls").and_then(|_| m.full()))
        }
        Some(_) => Match::No,
        None => Match::Partial,
    }
}

/// A closer at the start of `s`: `[END TOOL CALL]`, `[/TOOL CALL]`, `</tool_call>`.
pub fn close(s: &str) -> Match {
    let mut m = Matcher::new(s);
    let bracket = match m.next_byte() {
        Some(b'[') => true,
        Some(b'<') => false,
        Some(_) => return Match::No,
        None => return Match::Partial,
    };
    m.skip_spaces();
    let head = if bracket {
        let at = m.at;
        let end = m.word("end").map(|_| m.separators());
        if end == Err(Match::Partial) {
            return Match::Partial;
        }
        if end.is_err() {
            m.at = at;
            if let Err(e) = m.literal(b'/') {
                return e;
            }
        }
        m.word("tool").and_then(|_| {
            m.separators();
            m.word("call")
        })
    } else {
        m.literal(b'/').and_then(|_| m.word("tool_call"))
    };
    if let Err(e) = head.and_then(|_| m.optional(b's')) {
        return e;
    }
    // A tight tail up to the closing bracket: `]`, `>` or a full-width `＞`.
    let rest = &s[m.at..];
    for (i, c) in rest.char_indices() {
        if i > 16 || c == '\n' {
            return Match::No;
        }
        if (bracket && c == ']') || (!bracket && (c == '>' || c == '＞')) {
            return Match::Full(m.at + i + c.len_utf8());
        }
    }
    Match::Partial
}

/// A result marker at the start of `s`, as a model imitating the fold's results writes one
/// after its call: `[TOOL RESULT`, `[/TOOL RESULT`, `[ tool_result`, and `[TOOL CALL` too
/// (the words the fold brackets), spaced, cased and joined as the openers are — a bounded
/// form, so that a prefix of it is `Partial` and the scanner holds only a few bytes.
pub fn result(s: &str) -> Match {
    let mut m = Matcher::new(s);
    match m.next_byte() {
        Some(b'[') => {}
        Some(_) => return Match::No,
        None => return Match::Partial,
    }
    m.skip_spaces();
    if m.s.get(m.at) == Some(&b'/') {
        m.at += 1;
        m.skip_spaces();
    }
    let head = m.word("tool").map(|_| m.separators());
    if let Err(e) = head {
        return e;
    }
    let at = m.at;
    match outcome(m.word("call").and_then(|_| m.full())) {
        Match::No => {}
        call => return call,
    }
    m.at = at;
    outcome(m.word("result").and_then(|_| m.full()))
}

/// A cursor over the candidate; every step reports `Partial` when the text runs out.
struct Matcher<'a> {
    s: &'a [u8],
    at: usize,
}

/// A matching step: `Ok` to go on; `Err` with the verdict (a finished marker is `Full`).
type Step = Result<(), Match>;

fn outcome(step: Step) -> Match {
    step.err().unwrap_or(Match::No)
}

impl<'a> Matcher<'a> {
    fn new(s: &'a str) -> Self {
        Matcher {
            s: s.as_bytes(),
            at: 0,
        }
    }

    fn next_byte(&mut self) -> Option<u8> {
        let b = self.s.get(self.at).copied();
        self.at += 1;
        b
    }

    fn skip_spaces(&mut self) {
        let mut n = 0;
        while n < 2 && self.s.get(self.at) == Some(&b' ') {
            self.at += 1;
            n += 1;
        }
    }

    /// Spaces, `_` or `-` between words (none is fine too).
    fn separators(&mut self) {
        let mut n = 0;
        while n < 2 && matches!(self.s.get(self.at), Some(b' ' | b'_' | b'-')) {
            self.at += 1;
            n += 1;
        }
    }

    fn word(&mut self, w: &str) -> Step {
        for expected in w.bytes() {
            match self.s.get(self.at) {
                None => return Err(Match::Partial),
                Some(b) if b.eq_ignore_ascii_case(&expected) => self.at += 1,
                Some(_) => return Err(Match::No),
            }
        }
        Ok(())
    }

    fn literal(&mut self, b: u8) -> Step {
        match self.s.get(self.at) {
            None => Err(Match::Partial),
            Some(x) if *x == b => {
                self.at += 1;
                Ok(())
            }
            Some(_) => Err(Match::No),
        }
    }

    /// A byte the marker may have: taken when it is there. The text ending before it is
    /// `Partial`: the next piece may bring it, and a marker must be as long whether the text
    /// comes whole or in pieces (the payload window counts from its end).
    fn optional(&mut self, b: u8) -> Step {
        match self.s.get(self.at) {
            None => Err(Match::Partial),
            Some(x) if x.eq_ignore_ascii_case(&b) => {
                self.at += 1;
                Ok(())
            }
            Some(_) => Ok(()),
        }
    }

    fn full(&self) -> Step {
        Err(Match::Full(self.at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openers_leniently() {
        for s in [
            "[TOOL CALL]",
            "[tool_call]",
            "[ Tool-Calls]",
            "[TOOLCALL]",
            "<tool_call>",
            "<tool_call name=\"x\">",
            "<tool_calls>",
            "< tool_call\n>",
            "<function_calls>",
        ] {
            assert!(matches!(open(s), Match::Full(_)), "{s}");
        }
        assert_eq!(open("[TOOL CALL]"), Match::Full(10));
        // Also a marker that is whole but may still take its `s`: `[TOOL CALLS` is one
        // byte longer than `[TOOL CALL`, and the text after it is counted from its end.
        for s in [
            "[",
            "[T",
            "[TOOL ",
            "<tool_c",
            "<",
            "[TOOL CALL",
            "<tool_call",
        ] {
            assert_eq!(open(s), Match::Partial, "{s}");
        }
        assert_eq!(open("[TOOL CALLS"), Match::Full(11));
        assert_eq!(open("<tool_calls"), Match::Full(11));
        assert_eq!(open("<function_calls"), Match::Full(15));
        for s in [
            "[tools]",
            "[link](x)",
            "<b>",
            "[TOOL RESULT #1]",
            "<toolbox>",
            "x",
        ] {
            assert_eq!(open(s), Match::No, "{s}");
        }
    }

    #[test]
    fn result_markers_in_a_bounded_form() {
        for (s, n) in [
            ("[TOOL RESULT #1]", 12),
            ("[/TOOL RESULT]", 13),
            ("[ / tool_result]", 15),
            ("[Tool-Result", 12),
            ("[TOOL CALL]", 10),
        ] {
            assert_eq!(result(s), Match::Full(n), "{s}");
        }
        for s in [
            "[",
            "[ ",
            "[/",
            "[TOO",
            "[TOOL ",
            "[TOOL  ",
            "[TOOL RES",
            "[TOOL C",
        ] {
            assert_eq!(result(s), Match::Partial, "{s}");
        }
        // Past the separators the openers allow, it is text: what a prefix may still become
        // is decided within a few bytes, whatever the split.
        for s in [
            "[TOOL   RESULT]",
            "[   TOOL RESULT]",
            "[TOOLS]",
            "[link](x)",
            "<tool_result>",
        ] {
            assert_eq!(result(s), Match::No, "{s}");
        }
    }

    #[test]
    fn closers_with_a_tight_tail() {
        for (s, n) in [
            ("[END TOOL CALL]", 15),
            ("[END_TOOL_CALL]x", 15),
            ("[/TOOL CALL]", 12),
            ("</tool_call>", 12),
            ("</tool_call＞", 14),
            ("[END TOOL CALLS]", 16),
        ] {
            assert_eq!(close(s), Match::Full(n), "{s}");
        }
        for s in ["[EN", "[END", "</tool", "[END TOOL CALL"] {
            assert_eq!(close(s), Match::Partial, "{s}");
        }
        for s in [
            "[TOOL RESULT]",
            "</b>",
            "[END TOOL CALL and then a long story with no bracket]",
        ] {
            assert_eq!(close(s), Match::No, "{s}");
        }
    }
}
