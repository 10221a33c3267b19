//! Client-supplied strings on their way into logs and error messages.
//!
//! A `model` of `"x\n2026-11-29T00:00:00Z  INFO forged line"` must not forge a log line, an
//! ESC sequence must not reach the operator's terminal, and a 100 kB model name must not be
//! echoed back or logged in full. [`Untrusted`] displays a string with every control
//! character escaped (`\n`, `\t`, `\u{1b}`, …; also the Unicode line and paragraph
//! separators and bidi overrides) and cut after [`MAX_CHARS`] characters, saying how long
//! it was. Every client value that reaches a log line or an error message goes through it.

use std::fmt::{self, Write};

/// Characters of a client string shown before it is cut.
pub const MAX_CHARS: usize = 128;

/// A client string, displayed escaped and capped.
#[derive(Clone, Copy)]
pub struct Untrusted<'a>(pub &'a str);

impl fmt::Display for Untrusted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, c) in self.0.chars().enumerate() {
            if i == MAX_CHARS {
                return write!(f, "…({} bytes in all)", self.0.len());
            }
            if needs_escape(c) {
                for e in c.escape_default() {
                    f.write_char(e)?;
                }
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Untrusted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// Control characters, and the invisible ones that reorder or break displayed lines.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || c == '\\'
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}')
        || ('\u{202a}'..='\u{202e}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
}

/// The escaped, capped form as an owned string (for error messages).
pub fn clip(s: &str) -> String {
    Untrusted(s).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        let forged = "m\n2026-11-29T00:00:00Z  INFO forged\r\u{1b}[31mred\u{7}\u{2028}";
        let shown = clip(forged);
        assert!(
            !shown.chars().any(|c| c.is_control() || c == '\u{2028}'),
            "{shown}"
        );
        assert!(
            shown.contains(r"\n2026") && shown.contains(r"\u{1b}[31m"),
            "{shown}"
        );
        // Backslashes are escaped too, so an escaped form cannot be faked by the client.
        assert_eq!(clip(r"a\nb"), r"a\\nb");
        assert_eq!(clip("plain é 模型"), "plain é 模型");
    }

    #[test]
    fn long_strings_are_capped_with_their_length() {
        let long = "x".repeat(100_000);
        let shown = clip(&long);
        assert!(shown.len() < 200, "{}", shown.len());
        assert!(shown.ends_with("…(100000 bytes in all)"));
        assert_eq!(clip(&"y".repeat(MAX_CHARS)), "y".repeat(MAX_CHARS));
    }
}
