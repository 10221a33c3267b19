//! `@@sim:NAME` / `@@sim:NAME=ARG` directives in the last user message select a scenario.
//! They are stripped before the answer is derived, so a prompt gets the same answer with
//! or without them and the directive text is never echoed back.

use std::time::Duration;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scenario {
    pub think: bool,
    pub search: bool,
    pub dual: bool,
    pub long: Option<usize>,
    pub delay: Option<Duration>,
    pub ttft: Option<Duration>,
    pub split: bool,
    pub fault: Option<Fault>,
    pub in_progress: u32,
    pub stall: Option<Duration>,
    pub done: bool,
    /// Directives that were not recognised (reported, never silently ignored).
    pub unknown: Vec<String>,
}

/// What goes wrong, if anything.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    /// E1 as a non-SSE JSON body (`num` = hours).
    RateLimited(f64),
    /// E1 as the first `data:` frame.
    RateLimitedFrame(f64),
    /// E1 after some content (the `quota-after-partial` capture).
    RateLimitedAfter(f64),
    Punish,
    Waf,
    Unauthorized,
    Overload,
    /// E9: wire 403.
    Forbidden,
    /// E7: `Bad_Request` "Internal error" (bad chat type, missing browser cookies).
    BadRequestInternal,
    InternalError,
    QuotaMidstream,
    ModerationInput,
    ModerationOutput,
    InvalidInput,
    Empty,
    Reset,
}

/// Parse and strip the directives of `text`.
pub fn parse(text: &str) -> (Scenario, String) {
    let mut s = Scenario::default();
    let mut kept = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("@@sim:") {
        kept.push_str(&rest[..at]);
        let after = &rest[at + "@@sim:".len()..];
        let end = after
            .find(|c: char| c.is_whitespace())
            .unwrap_or(after.len());
        apply(&mut s, &after[..end]);
        rest = &after[end..];
        // Drop the whitespace the directive was separated by, keep the text tidy.
        if kept.ends_with(' ') && rest.starts_with(' ') {
            rest = &rest[1..];
        }
    }
    kept.push_str(rest);
    (s, kept.trim().to_owned())
}

fn apply(s: &mut Scenario, directive: &str) {
    let (name, arg) = match directive.split_once('=') {
        Some((n, a)) => (n, Some(a)),
        None => (directive, None),
    };
    let num = |default: f64| arg.and_then(|a| a.parse::<f64>().ok()).unwrap_or(default);
    let ms =
        |default: u64| Duration::from_millis(arg.and_then(|a| a.parse().ok()).unwrap_or(default));
    match name {
        "think" => s.think = true,
        "search" => s.search = true,
        "dual" => s.dual = true,
        "long" => s.long = Some(arg.and_then(|a| a.parse().ok()).unwrap_or(2000)),
        "delay" => s.delay = Some(ms(20)),
        "ttft" => s.ttft = Some(ms(500)),
        "split" => s.split = true,
        "done" => s.done = true,
        "stall" => s.stall = Some(ms(5000)),
        "in_progress" => s.in_progress = arg.and_then(|a| a.parse().ok()).unwrap_or(1),
        "rate_limited" => s.fault = Some(Fault::RateLimited(num(4.0))),
        "rate_limited_frame" => s.fault = Some(Fault::RateLimitedFrame(num(4.0))),
        "rate_limited_after" => s.fault = Some(Fault::RateLimitedAfter(num(4.0))),
        "punish" => s.fault = Some(Fault::Punish),
        "waf" => s.fault = Some(Fault::Waf),
        "unauthorized" => s.fault = Some(Fault::Unauthorized),
        "overload" => s.fault = Some(Fault::Overload),
        "forbidden" => s.fault = Some(Fault::Forbidden),
        "bad_request" => s.fault = Some(Fault::BadRequestInternal),
        "internal_error" => s.fault = Some(Fault::InternalError),
        "quota_midstream" => s.fault = Some(Fault::QuotaMidstream),
        "moderation_input" => s.fault = Some(Fault::ModerationInput),
        "moderation_output" => s.fault = Some(Fault::ModerationOutput),
        "invalid_input" => s.fault = Some(Fault::InvalidInput),
        "empty" => s.fault = Some(Fault::Empty),
        "reset" => s.fault = Some(Fault::Reset),
        other => s.unknown.push(other.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives_are_stripped_and_parsed() {
        let (s, text) = parse("Hello @@sim:think @@sim:delay=5 world @@sim:rate_limited=2");
        assert_eq!(text, "Hello world");
        assert!(s.think);
        assert_eq!(s.delay, Some(Duration::from_millis(5)));
        assert_eq!(s.fault, Some(Fault::RateLimited(2.0)));
        assert_eq!(parse("Hello world").1, "Hello world");
    }

    #[test]
    fn unknown_directives_are_kept_for_reporting() {
        let (s, text) = parse("@@sim:bogus hi");
        assert_eq!(text, "hi");
        assert_eq!(s.unknown, vec!["bogus"]);
    }
}
