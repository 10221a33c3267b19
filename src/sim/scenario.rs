//! `@@sim:NAME` / `@@sim:NAME=ARG` directives in the last user message select a scenario.
//! They are stripped before the answer is derived, so a prompt gets the same answer with
//! or without them and the directive text is never echoed back.

use std::time::Duration;

use super::habits::Habit;
use super::tools::{self, SimTool};

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
    /// `drip=MS`: every byte of the stream is its own write, MS apart (a trickling upstream:
    /// bytes keep coming, events hardly ever complete).
    pub drip: Option<Duration>,
    pub done: bool,
    /// `reply=B64`: the answer phase is exactly these bytes.
    pub reply: Option<String>,
    /// `think_reply=B64`: the thinking phase is exactly these bytes.
    pub think_reply: Option<String>,
    /// `call[=NAME[,ARGS_B64]]`: the model calls tools in the proxy's marker format.
    pub calls: Vec<SimCall>,
    /// `native_call[=NAME[,ARGS_B64]]`: the model calls natively and the platform
    /// intercepts it (function frames, a "does not exists" result, more text).
    pub native_calls: Vec<SimCall>,
    /// `stubborn`: the model ignores the proxy's retry hint (by default it obeys it).
    pub stubborn: bool,
    /// `echo`: the model answers the prompt's last line exactly as it read it — a model
    /// repeating a tool result's text, markup included.
    pub echo: bool,
    /// `habit=NAME[,FORM]`: the model writes this completion's calls with that habit (in
    /// that form of it; by default its first).
    pub habit: Option<(Habit, Option<u64>)>,
    /// `habits[=SEED]`: the model writes this completion's calls with a habit picked from
    /// the seed and the simulator's count of such completions (as `qwen-proxy sim --habits SEED`
    /// does for every one).
    pub habits: Option<u64>,
    /// `files`: the answer describes the files the message refers to (name, media type,
    /// size, digest): what the model saw of them.
    pub describe_files: bool,
    /// Directives that change the server's state for the calling account (or for every
    /// account), not just this completion's answer.
    pub account: AccountDirectives,
    /// Directives that were not recognised (reported, never silently ignored).
    pub unknown: Vec<String>,
}

impl Scenario {
    /// The proxy's retry hint asked for a proper call in the answer, naming the tools: an
    /// obedient model writes the calls it meant properly (natively meant ones too), and one
    /// to a tool the prompt does not have becomes a call of its first tool, with arguments
    /// its schema accepts. No habit: real models mostly do as the hint says.
    pub fn obey_hint(&mut self, catalogue: &[SimTool]) {
        if self.stubborn {
            return;
        }
        let mut meant: Vec<SimCall> = self
            .calls
            .drain(..)
            .chain(self.native_calls.drain(..))
            .filter(|c| {
                c.name
                    .as_deref()
                    .map_or(true, |n| tools::find(n, catalogue).is_some())
            })
            .collect();
        if meant.is_empty() {
            meant.push(SimCall {
                name: None,
                arguments: None,
            });
        }
        self.calls = meant;
        self.think_reply = None;
        self.reply = None;
        self.habit = None;
        self.habits = None;
    }
}

/// A tool call the simulated model makes: a tool of the request's catalogue (the first one
/// when `name` is `None`) with these arguments (built from its schema when `None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimCall {
    pub name: Option<String>,
    pub arguments: Option<String>,
}

/// Sticky server-side state a completion asks for (applied by `penalties.rs`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AccountDirectives {
    /// `expire_token`: the server revokes the token this request used.
    pub expire_token: bool,
    /// `account_quota=HOURS`: the account's daily quota is used up for HOURS.
    pub quota: Option<QuotaHold>,
    /// `account_challenge=SECS`: the account draws the challenge for SECS.
    pub challenge: Option<Duration>,
    /// `account_ban`: the account is disabled for good.
    pub ban: bool,
    /// `chat_challenge=SECS`: every account draws the challenge for SECS (it follows the
    /// time of day, not the account).
    pub chat_challenge: Option<Duration>,
    /// Faults of the account's file uploads (`files.rs`).
    pub files: FileDirectives,
}

/// Faults armed on the account's file flow, for the uploads that follow.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FileDirectives {
    /// `sts_failure[=N]`: the next N STS requests fail.
    pub sts_failures: u32,
    /// `upload_expired[=N]`: the next N grants have expired by the time they are used.
    pub expired_grants: u32,
    /// `parse_challenge[=SECS]`: parse requests draw the anti-bot challenge until they have
    /// been quiet for SECS (each refused one restarts the wait).
    pub parse_challenge: Option<Duration>,
    /// `parse_rate_limit[=N]`: the next N parse requests are refused for the rate.
    pub parse_rate_limited: u32,
}

/// A used-up daily quota: `hours` as the upstream writes it (`num`), `lasts` as a duration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuotaHold {
    pub hours: f64,
    pub lasts: Duration,
}

/// Which slider the punish document sends the browser to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PunishAction {
    /// `action=captcha` (the long-standing variant).
    Captcha,
    /// `action=captchaconnect` (seen since the bx-ua headers were dropped).
    CaptchaConnect,
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
    Punish(PunishAction),
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
    /// `image_quota[=HOURS]`: a t2i completion gets E1 about the account's daily image
    /// generations (`num` = HOURS, default 4). Other completions are not affected.
    ImageQuota(f64),
    /// `image_fail`: a t2i stream ends with E15 (`{"error":"Internal error!"}`) after its
    /// empty `image_gen` frame, no URL. Other completions are not affected.
    ImageFail,
}

/// Arguments written as a JSON object, as they are.
fn plain_json(args: &str) -> Option<String> {
    if !args.starts_with('{') {
        return None;
    }
    serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(args)
        .ok()
        .map(|_| args.to_owned())
}

/// base64url → UTF-8 text.
fn decode(b64: &str) -> Option<String> {
    String::from_utf8(crate::common::base64url_decode(b64)?).ok()
}

/// Punctuation a client or agent may put right after a directive — the closing quote of a
/// prompt it wrapped in quotes, a full stop — which is not part of it. (Not `=`, `+`, `/`,
/// `-`, `_`: base64 uses them.)
const TRAILING: &[char] = &[
    '"', '\'', '`', ')', ']', '>', '.', ',', ';', ':', '!', '?', '\u{201d}', '\u{2019}', '\u{bb}',
    '\u{300d}', '\u{ff09}', '\u{3002}', '\u{ff0c}',
];

/// Where a directive ends: at whitespace — except inside a call's plain JSON arguments
/// (`call=NAME,{"path": "a b.txt"}`), which are read brace-balanced, strings respected.
fn directive_end(s: &str) -> usize {
    let (mut depth, mut in_string, mut escape) = (0u32, false, false);
    let mut prev = '\0';
    for (i, c) in s.char_indices() {
        if in_string {
            match (escape, c) {
                (true, _) => escape = false,
                (false, '\\') => escape = true,
                (false, '"') => in_string = false,
                _ => {}
            }
        } else {
            match c {
                '{' if depth > 0 || prev == ',' => depth += 1,
                '}' if depth > 0 => depth -= 1,
                '"' if depth > 0 => in_string = true,
                c if depth == 0 && c.is_whitespace() => return i,
                _ => {}
            }
        }
        prev = c;
    }
    s.len()
}

/// Parse and strip the directives of `text`.
pub fn parse(text: &str) -> (Scenario, String) {
    let mut s = Scenario::default();
    let mut kept = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("@@sim:") {
        kept.push_str(&rest[..at]);
        let after = &rest[at + "@@sim:".len()..];
        let end = directive_end(after);
        // A call that was answered already (its result is in the prompt after the
        // directive, as in a folded history) is not made again: agent loops end.
        let answered = after[end..].contains("[TOOL RESULT");
        apply(&mut s, after[..end].trim_end_matches(TRAILING), answered);
        rest = &after[end..];
        // Drop the whitespace the directive was separated by, keep the text tidy.
        if kept.ends_with(' ') && rest.starts_with(' ') {
            rest = &rest[1..];
        }
    }
    kept.push_str(rest);
    (s, kept.trim().to_owned())
}

/// A non-negative, finite number of seconds as a duration (`None` for anything else:
/// negative, NaN, infinite or too large).
fn duration_of(secs: f64) -> Option<Duration> {
    Duration::try_from_secs_f64(secs).ok()
}

/// The number argument of a directive, `default` without one; `None` when malformed.
fn number_or(arg: Option<&str>, default: f64) -> Option<f64> {
    arg.map_or(Some(default), |a| a.parse::<f64>().ok())
}

fn apply(s: &mut Scenario, directive: &str, answered: bool) {
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
        "stubborn" => s.stubborn = true,
        "echo" => s.echo = true,
        "habit" => {
            let (name, form) = arg.map_or(("", None), |a| match a.split_once(',') {
                Some((n, f)) => (n, Some(f)),
                None => (a, None),
            });
            let form = form.map(|f| f.parse::<u64>().ok());
            match (Habit::parse(name), form) {
                (Some(h), None) => s.habit = Some((h, None)),
                (Some(h), Some(Some(f))) => s.habit = Some((h, Some(f))),
                _ => s.unknown.push(directive.to_owned()),
            }
        }
        "habits" => match arg.map_or(Some(0), |a| a.parse::<u64>().ok()) {
            Some(seed) => s.habits = Some(seed),
            None => s.unknown.push(directive.to_owned()),
        },
        "stall" => s.stall = Some(ms(5000)),
        "drip" => s.drip = Some(ms(1000)),
        "in_progress" => s.in_progress = arg.and_then(|a| a.parse().ok()).unwrap_or(1),
        "rate_limited" => s.fault = Some(Fault::RateLimited(num(4.0))),
        "rate_limited_frame" => s.fault = Some(Fault::RateLimitedFrame(num(4.0))),
        "rate_limited_after" => s.fault = Some(Fault::RateLimitedAfter(num(4.0))),
        "punish" => match arg {
            None => s.fault = Some(Fault::Punish(PunishAction::Captcha)),
            Some("captchaconnect") => s.fault = Some(Fault::Punish(PunishAction::CaptchaConnect)),
            Some(_) => s.unknown.push(directive.to_owned()),
        },
        "expire_token" => s.account.expire_token = true,
        "account_ban" => s.account.ban = true,
        "account_quota" => {
            let hold = number_or(arg, 4.0).and_then(|hours| {
                let lasts = duration_of(hours * 3600.0)?;
                Some(QuotaHold { hours, lasts })
            });
            match hold {
                Some(h) => s.account.quota = Some(h),
                None => s.unknown.push(directive.to_owned()),
            }
        }
        "account_challenge" => match number_or(arg, 60.0).and_then(duration_of) {
            Some(d) => s.account.challenge = Some(d),
            None => s.unknown.push(directive.to_owned()),
        },
        "chat_challenge" => match number_or(arg, 30.0).and_then(duration_of) {
            Some(d) => s.account.chat_challenge = Some(d),
            None => s.unknown.push(directive.to_owned()),
        },
        "sts_failure" => match arg.map_or(Some(1), |a| a.parse().ok()) {
            Some(n) => s.account.files.sts_failures = n,
            None => s.unknown.push(directive.to_owned()),
        },
        "upload_expired" => match arg.map_or(Some(1), |a| a.parse().ok()) {
            Some(n) => s.account.files.expired_grants = n,
            None => s.unknown.push(directive.to_owned()),
        },
        "parse_challenge" => match number_or(arg, 180.0).and_then(duration_of) {
            Some(d) => s.account.files.parse_challenge = Some(d),
            None => s.unknown.push(directive.to_owned()),
        },
        "parse_rate_limit" => match arg.map_or(Some(1), |a| a.parse().ok()) {
            Some(n) => s.account.files.parse_rate_limited = n,
            None => s.unknown.push(directive.to_owned()),
        },
        "files" => s.describe_files = true,
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
        "image_quota" => match number_or(arg, 4.0).filter(|h| h.is_finite() && *h >= 0.0) {
            Some(h) => s.fault = Some(Fault::ImageQuota(h)),
            None => s.unknown.push(directive.to_owned()),
        },
        "image_fail" => s.fault = Some(Fault::ImageFail),
        "reply" => match arg.and_then(decode) {
            Some(text) => s.reply = Some(text),
            None => s.unknown.push(directive.to_owned()),
        },
        "think_reply" => match arg.and_then(decode) {
            Some(text) => s.think_reply = Some(text),
            None => s.unknown.push(directive.to_owned()),
        },
        "call" | "native_call" => {
            let call = match arg.map(|a| a.split_once(',').unwrap_or((a, ""))) {
                None => Some(SimCall {
                    name: None,
                    arguments: None,
                }),
                Some((name, "")) => Some(SimCall {
                    name: (!name.is_empty()).then(|| name.to_owned()),
                    arguments: None,
                }),
                // Plain JSON arguments, or base64url of them.
                Some((name, args)) => plain_json(args).or_else(|| decode(args)).map(|a| SimCall {
                    name: (!name.is_empty()).then(|| name.to_owned()),
                    arguments: Some(a),
                }),
            };
            match (call, answered) {
                (None, _) => s.unknown.push(directive.to_owned()),
                (Some(_), true) => {}
                (Some(c), false) if name == "call" => s.calls.push(c),
                (Some(c), false) => s.native_calls.push(c),
            }
        }
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
    fn replies_and_calls() {
        // "Hi!\n" and {"city":"Oslo"} in base64url.
        let (s, text) = parse("q @@sim:reply=SGkhCg @@sim:call=get_weather,eyJjaXR5IjoiT3NsbyJ9 @@sim:call @@sim:native_call=read_file");
        assert_eq!(text, "q");
        assert_eq!(s.reply.as_deref(), Some("Hi!\n"));
        assert_eq!(
            s.calls,
            [
                SimCall {
                    name: Some("get_weather".into()),
                    arguments: Some("{\"city\":\"Oslo\"}".into())
                },
                SimCall {
                    name: None,
                    arguments: None
                }
            ]
        );
        assert_eq!(s.native_calls.len(), 1);
        // Answered already: the call is not made again.
        let (s, _) = parse(
            "q @@sim:call=get_weather\n[TOOL RESULT #1: get_weather]\nsunny\n[END TOOL RESULT]",
        );
        assert!(s.calls.is_empty());
        assert!(s.unknown.is_empty());
        assert_eq!(parse("@@sim:reply=~~").0.unknown, ["reply=~~"]);
    }

    #[test]
    fn account_directives_and_their_arguments() {
        let (s, text) = parse(
            "hi @@sim:expire_token @@sim:account_quota=0.001 @@sim:account_challenge=2.5 @@sim:account_ban @@sim:chat_challenge=7",
        );
        assert_eq!(text, "hi");
        assert!(s.unknown.is_empty(), "{:?}", s.unknown);
        assert_eq!(
            s.account,
            AccountDirectives {
                expire_token: true,
                quota: Some(QuotaHold {
                    hours: 0.001,
                    lasts: Duration::from_millis(3600)
                }),
                challenge: Some(Duration::from_millis(2500)),
                ban: true,
                chat_challenge: Some(Duration::from_secs(7)),
                files: FileDirectives::default(),
            }
        );
        assert_eq!(s.fault, None, "account directives are not one-off faults");
        // Defaults without an argument.
        let (s, _) = parse("@@sim:account_quota @@sim:account_challenge @@sim:chat_challenge");
        assert_eq!(s.account.quota.map(|q| q.hours), Some(4.0));
        assert_eq!(s.account.challenge, Some(Duration::from_secs(60)));
        assert_eq!(s.account.chat_challenge, Some(Duration::from_secs(30)));
        // Malformed arguments are reported, never guessed.
        let (s, _) = parse(
            "@@sim:account_quota=soon @@sim:account_challenge=-1 @@sim:chat_challenge=inf @@sim:account_quota=NaN",
        );
        assert_eq!(
            s.unknown,
            [
                "account_quota=soon",
                "account_challenge=-1",
                "chat_challenge=inf",
                "account_quota=NaN"
            ]
        );
        assert_eq!(s.account, AccountDirectives::default());
    }

    #[test]
    fn punish_variants() {
        assert_eq!(
            parse("@@sim:punish").0.fault,
            Some(Fault::Punish(PunishAction::Captcha))
        );
        assert_eq!(
            parse("@@sim:punish=captchaconnect").0.fault,
            Some(Fault::Punish(PunishAction::CaptchaConnect))
        );
        let (s, _) = parse("@@sim:punish=slider");
        assert_eq!(
            (s.fault, s.unknown),
            (None, vec!["punish=slider".to_owned()])
        );
    }

    #[test]
    fn punctuation_around_a_prompt_is_not_part_of_its_directives() {
        // opencode and Kilo wrap the prompt in quotes; people end sentences.
        let (s, text) = parse("\"Read notes.txt @@sim:think\"");
        assert!(s.think && s.unknown.is_empty(), "{:?}", s.unknown);
        assert_eq!(text, "\"Read notes.txt");
        let (s, _) = parse("'go @@sim:call=get_weather,eyJjaXR5IjoiT3NsbyJ9.' and @@sim:delay=5,");
        assert!(s.unknown.is_empty(), "{:?}", s.unknown);
        assert_eq!(s.calls[0].arguments.as_deref(), Some("{\"city\":\"Oslo\"}"));
        assert_eq!(s.delay, Some(Duration::from_millis(5)));
        assert!(parse("@@sim:think\u{201d}").0.unknown.is_empty());
    }

    #[test]
    fn call_arguments_may_be_plain_json_with_spaces() {
        let (s, text) = parse(
            "Read it @@sim:call=read,{\"filePath\": \"/tmp/a b.txt\", \"n\": {\"x\": \"}\"}}\" please",
        );
        assert!(s.unknown.is_empty(), "{:?}", s.unknown);
        assert_eq!(
            s.calls,
            [SimCall {
                name: Some("read".into()),
                arguments: Some("{\"filePath\": \"/tmp/a b.txt\", \"n\": {\"x\": \"}\"}}".into())
            }]
        );
        assert_eq!(text, "Read it please");
        // Not JSON, not base64: reported.
        assert_eq!(
            parse("@@sim:call=read,{oops}").0.unknown,
            ["call=read,{oops}"]
        );
    }

    #[test]
    fn image_directives() {
        let (s, text) = parse("a cat @@sim:image_quota=0.5");
        assert_eq!(
            (s.fault, text.as_str()),
            (Some(Fault::ImageQuota(0.5)), "a cat")
        );
        assert_eq!(
            parse("@@sim:image_quota").0.fault,
            Some(Fault::ImageQuota(4.0))
        );
        assert_eq!(parse("@@sim:image_fail").0.fault, Some(Fault::ImageFail));
        let (s, _) = parse("@@sim:image_quota=soon @@sim:image_quota=-1 @@sim:image_quota=inf");
        assert_eq!(
            s.unknown,
            ["image_quota=soon", "image_quota=-1", "image_quota=inf"]
        );
        assert_eq!(s.fault, None);
    }

    #[test]
    fn unknown_directives_are_kept_for_reporting() {
        let (s, text) = parse("@@sim:bogus hi");
        assert_eq!(text, "hi");
        assert_eq!(s.unknown, vec!["bogus"]);
    }

    #[test]
    fn file_directives_arm_the_accounts_uploads() {
        let (s, rest) = parse(
            "doc @@sim:sts_failure=2 @@sim:upload_expired @@sim:parse_challenge=5 @@sim:parse_rate_limit @@sim:files",
        );
        assert_eq!(rest, "doc");
        assert_eq!(
            s.account.files,
            FileDirectives {
                sts_failures: 2,
                expired_grants: 1,
                parse_challenge: Some(Duration::from_secs(5)),
                parse_rate_limited: 1,
            }
        );
        assert!(s.describe_files);
        let (s, _) = parse("@@sim:sts_failure=x @@sim:parse_challenge=-1");
        assert_eq!(s.unknown, ["sts_failure=x", "parse_challenge=-1"]);
    }
}
