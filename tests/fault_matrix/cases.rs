//! The rows of the matrix — the upstream faults the simulator produces, how each is set off,
//! when it strikes — and what the README promises for each of them whatever the document
//! says (`invariants`).

use crate::observe::Observation;
use crate::support::expected_answer;

/// When the fault strikes, relative to the upstream answer's first content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Before any answer text: nothing could have reached the client.
    Before,
    /// Before any answer text, but after `STREAM_COMMIT_DELAY`: a waiting stream has its
    /// 200 and SSE headers already (README "Streams that wait").
    Committed,
    /// After some answer text (`src/sim/script.rs`: after the second 4-character piece, or
    /// the first for a shorter answer).
    After,
}

/// How a fault is set off.
#[derive(Debug, Clone, Copy)]
pub enum Inject {
    /// A `@@sim:` directive in the prompt: it travels with the request, so every attempt —
    /// a retry, a turn moved to the other account — meets it again.
    Directive(&'static str),
    /// `POST /__sim/accounts/{first account}/{action}` before the request: only the account
    /// the turn goes to first has it.
    Account(&'static str),
    /// The first account is banned while its answer streams (after its first content;
    /// `@@sim:stall=1000` holds the stream there), `POST /__sim/accounts/{key}/ban`: the
    /// simulator ends the stream with the in-stream "account is disabled" error.
    BanMidStream,
    /// `POST /__sim/replay` of the plain-answer capture cut 40 bytes into its second answer
    /// frame ("Hi" of "Hi!" has come, no `finished` frame): a v2 stream closed early, once.
    CutOnce,
    /// Nothing listens at `QWEN_BASE_URL` (connection refused).
    Unreachable,
}

/// Which README promises a fault falls under (`invariants`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Quota,
    Challenge,
    Auth,
    /// An expired token the account can renew (a password account).
    Renewable,
    Forbidden,
    Overload,
    Busy,
    /// A `Bad_Request` the proxy does not recognise: tried once more, then final.
    Rejected,
    /// Moderation or invalid input: never retried, final.
    Refusal,
    /// No answer, a broken or cut one: retried before the first byte.
    Broken,
    Timeout,
    Unreachable,
}

/// The accounts of the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Creds {
    /// Browser sessions: `QWEN_COOKIES` for one account (`default`), an accounts file of
    /// `a` and `b` for two. They cannot renew a refused token.
    Cookies,
    /// Password accounts `a` and `b` on a strict simulator (hour-long tokens): they renew.
    Passwords,
}

#[derive(Debug)]
pub struct Fault {
    /// The row's name in the document (the directive or the control call).
    pub name: &'static str,
    /// What the upstream does, in qwen-protocol terms.
    pub upstream: &'static str,
    pub inject: Inject,
    pub phase: Phase,
    pub kind: Kind,
    pub creds: Creds,
    /// Settings of this row's proxy beyond the harness's.
    pub env: &'static [(&'static str, &'static str)],
}

/// The idle timeout of the timing rows: far from the simulator's 5 s pause either way.
const IDLE: &[(&str, &str)] = &[("UPSTREAM_IDLE_TIMEOUT", "400")];

pub static FAULTS: &[Fault] = &[
    // === before the first byte ===
    Fault {
        name: "`rate_limited=2`",
        upstream: "E1 daily quota (`RateLimited`, `num` 2), a JSON body",
        inject: Inject::Directive("rate_limited=2"),
        phase: Phase::Before,
        kind: Kind::Quota,
        creds: Creds::Cookies,
        env: &[],
    },
    Fault {
        name: "`rate_limited_frame=3`",
        upstream: "E1 daily quota as the first SSE frame",
        inject: Inject::Directive("rate_limited_frame=3"),
        phase: Phase::Before,
        kind: Kind::Quota,
        creds: Creds::Cookies,
        env: &[],
    },
    Fault {
        name: "account `quota?hours=2`",
        upstream: "E1 daily quota of the first account only",
        inject: Inject::Account("quota?hours=2"),
        phase: Phase::Before,
        kind: Kind::Quota,
        creds: Creds::Cookies,
        env: &[],
    },
    Fault {
        name: "`punish`",
        upstream: "E10 anti-bot punish JSON (`action=captcha`)",
        inject: Inject::Directive("punish"),
        phase: Phase::Before,
        kind: Kind::Challenge,
        creds: Creds::Cookies,
        env: &[],
    },
    Fault {
        name: "`punish=captchaconnect`",
        upstream: "E10 punish JSON, `action=captchaconnect`",
        inject: Inject::Directive("punish=captchaconnect"),
        phase: Phase::Before,
        kind: Kind::Challenge,
        creds: Creds::Cookies,
        env: &[],
    },
    Fault {
        name: "`waf`",
        upstream: "E11 WAF slider page (HTML)",
        inject: Inject::Directive("waf"),
        phase: Phase::Before,
        kind: Kind::Challenge,
        creds: Creds::Cookies,
        env: &[],
    },
    Fault {
        name: "account `challenge?secs=600`",
        upstream: "E10 punish JSON for the first account only",
        inject: Inject::Account("challenge?secs=600"),
        phase: Phase::Before,
        kind: Kind::Challenge,
        creds: Creds::Cookies,
        env: &[],
    },
    Fault {
        name: "`chat_challenge=600`",
        upstream: "E10 punish JSON for every account (the time-of-day challenge)",
        inject: Inject::Directive("chat_challenge=600"),
        phase: Phase::Before,
        kind: Kind::Challenge,
        creds: Creds::Cookies,
        env: &[],
    },
    Fault {
        name: "`unauthorized`",
        upstream: "E8 401 `Unauthorized` \"Token has expired or is invalid\"",
        inject: Inject::Directive("unauthorized"),
        phase: Phase::Before,
        kind: Kind::Auth,
        creds: Creds::Cookies,
        env: &[],
    },
    Fault {
        name: "account `expire_token`",
        upstream: "E8 401 \"Token has expired\" once, first account (a browser session)",
        inject: Inject::Account("expire_token"),
        phase: Phase::Before,
        kind: Kind::Auth,
        creds: Creds::Cookies,
        env: &[],
    },
    Fault {
        name: "account `expire_token` (password)",
        upstream: "E8 401 \"Token has expired\" once, first account (it can renew)",
        inject: Inject::Account("expire_token"),
        phase: Phase::Before,
        kind: Kind::Renewable,
        creds: Creds::Passwords,
        env: &[],
    },
    Fault {
        name: "`expire_token` (password)",
        upstream: "E8 401 \"Token has expired\" for every token the request is sent with",
        inject: Inject::Directive("expire_token"),
        phase: Phase::Before,
        kind: Kind::Auth,
        creds: Creds::Passwords,
        env: &[],
    },
    Fault {
        name: "`forbidden`",
        upstream: "E9 wire 403 (banned)",
        inject: Inject::Directive("forbidden"),
        phase: Phase::Before,
        kind: Kind::Forbidden,
        creds: Creds::Cookies,
        env: &[],
    },
    Fault {
        name: "account `ban`",
        upstream: "E9 403 \"account is disabled\" (`chats/new` too), first account only",
        inject: Inject::Account("ban"),
        phase: Phase::Before,
        kind: Kind::Forbidden,
        creds: Creds::Cookies,
        env: &[],
    },
    Fault {
        name: "`overload`",
        upstream: "E17 wire 503 \"Service Temporarily Unavailable\"",
        inject: Inject::Directive("overload"),
        phase: Phase::Before,
        kind: Kind::Overload,
        creds: Creds::Cookies,
        env: &[],
    },
    Fault {
        name: "`in_progress=20`",
        upstream: "E2 \"The chat is in progress!\" on a chat's first 20 completions",
        inject: Inject::Directive("in_progress=20"),
        phase: Phase::Before,
        kind: Kind::Busy,
        creds: Creds::Cookies,
        env: &[],
    },
    Fault {
        name: "`bad_request`",
        upstream: "E7 `Bad_Request` \"Internal error\"",
        inject: Inject::Directive("bad_request"),
        phase: Phase::Before,
        kind: Kind::Rejected,
        creds: Creds::Cookies,
        env: &[],
    },
    Fault {
        name: "`moderation_input`",
        upstream: "E12 `data_inspection_failed` (input)",
        inject: Inject::Directive("moderation_input"),
        phase: Phase::Before,
        kind: Kind::Refusal,
        creds: Creds::Cookies,
        env: &[],
    },
    Fault {
        name: "`invalid_input`",
        upstream: "E16 `invalid_input` as the first SSE frame",
        inject: Inject::Directive("invalid_input"),
        phase: Phase::Before,
        kind: Kind::Refusal,
        creds: Creds::Cookies,
        env: &[],
    },
    Fault {
        name: "`empty`",
        upstream: "E18 `response.created`, then the stream closes (no answer)",
        inject: Inject::Directive("empty"),
        phase: Phase::Before,
        kind: Kind::Broken,
        creds: Creds::Cookies,
        env: &[],
    },
    Fault {
        name: "`ttft=5000`, idle timeout 400 ms",
        upstream: "no event for 5 s after `response.created`",
        inject: Inject::Directive("ttft=5000"),
        phase: Phase::Before,
        kind: Kind::Timeout,
        creds: Creds::Cookies,
        env: IDLE,
    },
    Fault {
        name: "`drip=100`, idle timeout 400 ms",
        upstream: "one byte every 100 ms: no event completes in time",
        inject: Inject::Directive("drip=100"),
        phase: Phase::Before,
        kind: Kind::Timeout,
        creds: Creds::Cookies,
        env: IDLE,
    },
    Fault {
        name: "connection refused",
        upstream: "nothing listens at `QWEN_BASE_URL`",
        inject: Inject::Unreachable,
        phase: Phase::Before,
        kind: Kind::Unreachable,
        creds: Creds::Cookies,
        env: &[],
    },
    // === before the first byte, after a waiting stream was committed ===
    Fault {
        name: "`rate_limited_frame=3` after `ttft=600`, commit 200 ms",
        upstream: "E1 daily quota as the first SSE frame, 600 ms after `response.created`",
        inject: Inject::Directive("rate_limited_frame=3 @@sim:ttft=600"),
        phase: Phase::Committed,
        kind: Kind::Quota,
        creds: Creds::Cookies,
        env: &[("STREAM_COMMIT_DELAY", "200")],
    },
    Fault {
        name: "`ttft=5000`, idle timeout 1 s, commit 200 ms",
        upstream: "no event for 5 s after `response.created`",
        inject: Inject::Directive("ttft=5000"),
        phase: Phase::Committed,
        kind: Kind::Timeout,
        creds: Creds::Cookies,
        env: &[
            ("STREAM_COMMIT_DELAY", "200"),
            ("UPSTREAM_IDLE_TIMEOUT", "1000"),
        ],
    },
    // === after the first byte ===
    Fault {
        name: "`rate_limited_after=4`",
        upstream: "E1 daily quota frame after some text",
        inject: Inject::Directive("rate_limited_after=4"),
        phase: Phase::After,
        kind: Kind::Quota,
        creds: Creds::Cookies,
        env: &[],
    },
    Fault {
        name: "`quota_midstream`",
        upstream: "E14 backend \"Allocated quota exceeded\" frame after some text",
        inject: Inject::Directive("quota_midstream"),
        phase: Phase::After,
        kind: Kind::Quota,
        creds: Creds::Cookies,
        env: &[],
    },
    Fault {
        name: "`internal_error`",
        upstream: "E15 `{\"error\":\"Internal error!\"}` frame after some text",
        inject: Inject::Directive("internal_error"),
        phase: Phase::After,
        kind: Kind::Broken,
        creds: Creds::Cookies,
        env: &[],
    },
    Fault {
        name: "`moderation_output`",
        upstream: "E13 `data_inspection_failed` (output) frame after some text",
        inject: Inject::Directive("moderation_output"),
        phase: Phase::After,
        kind: Kind::Refusal,
        creds: Creds::Cookies,
        env: &[],
    },
    Fault {
        name: "`reset`",
        upstream: "the connection is reset in the middle of a frame",
        inject: Inject::Directive("reset"),
        phase: Phase::After,
        kind: Kind::Broken,
        creds: Creds::Cookies,
        env: &[],
    },
    Fault {
        name: "cut once (replay)",
        upstream: "a v2 stream closed before its `finished` frame, once",
        inject: Inject::CutOnce,
        phase: Phase::After,
        kind: Kind::Broken,
        creds: Creds::Cookies,
        env: &[],
    },
    Fault {
        name: "`stall=5000`, idle timeout 400 ms",
        upstream: "no event for 5 s after the first text",
        inject: Inject::Directive("stall=5000"),
        phase: Phase::After,
        kind: Kind::Timeout,
        creds: Creds::Cookies,
        env: IDLE,
    },
    Fault {
        name: "account `ban` mid-stream",
        upstream: "E9 in-stream \"account is disabled\" after the first text",
        inject: Inject::BanMidStream,
        phase: Phase::After,
        kind: Kind::Forbidden,
        creds: Creds::Cookies,
        env: &[],
    },
];

impl Fault {
    /// The hours of a daily quota (`num`), as the directive or control call gives them;
    /// `None` for a rate limit without a number.
    fn quota_hours(&self) -> Option<u64> {
        let spec = match self.inject {
            Inject::Directive(d) | Inject::Account(d) => d,
            _ => return None,
        };
        let first = spec.split_whitespace().next()?;
        first.split_once('=')?.1.parse().ok()
    }
}

/// One row: a fault, streamed or not, on one account or a pool of two.
#[derive(Debug, Clone, Copy)]
pub struct Case {
    pub fault: &'static Fault,
    pub stream: bool,
    pub accounts: usize,
}

impl Case {
    pub fn label(&self) -> String {
        format!(
            "{} / {} / {} account(s)",
            self.fault.name,
            if self.stream {
                "streamed"
            } else {
                "not streamed"
            },
            self.accounts
        )
    }

    /// The prompt without its directive: what the simulator answers to.
    pub fn question(&self) -> String {
        let i = FAULTS
            .iter()
            .position(|f| std::ptr::eq(f, self.fault))
            .unwrap_or(0);
        format!("fault {i}")
    }

    pub fn prompt(&self) -> String {
        match self.fault.inject {
            Inject::Directive(d) => format!("{} @@sim:{d}", self.question()),
            Inject::BanMidStream => format!("{} @@sim:stall=1000", self.question()),
            _ => self.question(),
        }
    }

    /// The whole answer the simulator gives without the fault.
    pub fn full_answer(&self) -> String {
        expected_answer(&self.question())
    }

    /// The answer the faulty attempt was writing.
    pub fn faulty_answer(&self) -> String {
        match self.fault.inject {
            // The capture's answer.
            Inject::CutOnce => "Hi!".to_owned(),
            _ => self.full_answer(),
        }
    }

    /// The simulator's key of the account the turn goes to first.
    pub fn first_key(&self) -> &'static str {
        match (self.fault.creds, self.accounts) {
            (Creds::Passwords, _) => "a@example.com",
            (Creds::Cookies, 1) => "test-token",
            (Creds::Cookies, _) => "tok-a",
        }
    }

    /// The accounts' names, in the order of the pool.
    pub fn names(&self) -> &'static [&'static str] {
        match (self.fault.creds, self.accounts) {
            (Creds::Cookies, 1) => &["default"],
            (_, 1) => &["a"],
            _ => &["a", "b"],
        }
    }

    /// The accounts' simulator keys, in the order of `names`.
    pub fn keys(&self) -> &'static [&'static str] {
        match (self.fault.creds, self.accounts) {
            (Creds::Cookies, 1) => &["test-token"],
            (Creds::Cookies, _) => &["tok-a", "tok-b"],
            (Creds::Passwords, 1) => &["a@example.com"],
            (Creds::Passwords, _) => &["a@example.com", "b@example.com"],
        }
    }
}

pub fn cases() -> Vec<Case> {
    let mut out = Vec::new();
    for fault in FAULTS {
        for accounts in [1, 2] {
            for stream in [true, false] {
                out.push(Case {
                    fault,
                    stream,
                    accounts,
                });
            }
        }
    }
    out
}

macro_rules! ensure {
    ($cond:expr, $($why:tt)+) => {
        if !$cond {
            return Err(format!($($why)+));
        }
    };
}

/// What the README promises for this row, whatever the document says.
pub fn invariants(case: &Case, o: &Observation) -> Result<(), String> {
    let f = case.fault;
    let full = case.full_answer();
    // --- never a cut or empty answer presented as complete ---
    if o.status == 200 {
        match (&o.error, case.stream) {
            (None, _) => {
                ensure!(
                    o.finish.as_deref() == Some("stop") && o.content == full,
                    "a 200 without an error must be the whole answer, finished: {:?} ({:?})",
                    o.content,
                    o.finish
                );
            }
            (Some(_), true) => {
                ensure!(o.in_band, "a streamed 200's error is an in-band event");
                ensure!(
                    o.finish.is_none(),
                    "a streamed answer is never finished (`{:?}`) after a fault",
                    o.finish
                );
                ensure!(
                    f.phase != Phase::Before,
                    "a fault before the first byte is an HTTP status, not a 200 with an in-band error"
                );
                if f.phase == Phase::Committed {
                    ensure!(
                        o.content.is_empty(),
                        "a fault before the first byte brings no answer text: {:?}",
                        o.content
                    );
                } else {
                    let faulty = case.faulty_answer();
                    ensure!(
                        !o.content.is_empty()
                            && faulty.starts_with(&o.content)
                            && o.content != faulty,
                        "what came before the in-band error is a strict start of the answer: {:?}",
                        o.content
                    );
                }
            }
            (Some(_), false) => return Err("a non-streamed 200 carrying an error".into()),
        }
    } else {
        ensure!(
            !o.in_band && o.error.is_some(),
            "an error status carries an error body in the OpenAI shape"
        );
        ensure!(
            o.should_retry.is_some(),
            "every error response says `x-should-retry`"
        );
        ensure!(
            o.status != 429 || o.retry_after.is_some(),
            "a 429 carries Retry-After"
        );
        ensure!(o.content.is_empty(), "no answer text with an error status");
    }
    if case.stream && f.phase == Phase::After {
        ensure!(
            o.status == 200 && o.in_band,
            "a fault after the first byte of a stream ends it with an in-band error (got {})",
            o.status
        );
    }
    if case.stream && f.phase == Phase::Committed {
        ensure!(
            o.status == 200,
            "a stream waiting past STREAM_COMMIT_DELAY is committed (got {})",
            o.status
        );
    }
    if !case.stream && f.phase != Phase::Before {
        ensure!(
            !o.in_band,
            "a non-streamed request never gets a truncated answer"
        );
    }
    // --- bounded upstream chats: CHATS_PER_REQUEST, plus one per account taken out ---
    ensure!(
        o.chats <= 2 + (case.accounts as u64 - 1),
        "{} upstream chats for one request",
        o.chats
    );
    let code = o.code();
    let first = o.attempts.first().copied().unwrap_or(0);
    let failed = o.status != 200 || o.in_band;
    match f.kind {
        Kind::Quota => {
            if failed {
                ensure!(
                    o.kind() == "rate_limit_error",
                    "a quota is a rate_limit_error: {:?}",
                    o.error
                );
                ensure!(
                    o.in_band || o.status == 429,
                    "a quota before the first byte is a 429"
                );
                // The upstream's `num` hours are in the message too (in-band, there is no
                // header to carry them).
                ensure!(
                    f.quota_hours().is_none() || o.message.contains("try again in"),
                    "a quota's message says when to try again: {:?}",
                    o.message
                );
                // `num` hours, or a minute for a rate limit without a number.
                let wait = f.quota_hours().map_or(60, |h| h * 3600);
                // (A pool answers with the earliest return: a second or two may have passed.)
                ensure!(
                    o.in_band || o.retry_after.is_some_and(|r| r <= wait && r + 5 >= wait),
                    "Retry-After {:?}, the quota says {wait} s",
                    o.retry_after
                );
            }
            ensure!(
                o.states.first().map(|s| s.1.as_str()) == Some("cooling"),
                "the account that met a quota cools: {:?}",
                o.states
            );
        }
        Kind::Challenge => {
            if failed {
                ensure!(
                    o.status == 503
                        && matches!(code, "upstream_challenge" | "upstream_challenge_cooldown"),
                    "a challenge is a 503 upstream_challenge: {} {code}",
                    o.status
                );
                ensure!(o.retry_after.is_some(), "a challenge carries Retry-After");
                ensure!(
                    o.should_retry.as_deref() == Some("false"),
                    "a challenge: x-should-retry false"
                );
            }
            ensure!(
                first == 1,
                "a challenge is never retried on the challenged account ({first} calls)"
            );
        }
        Kind::Auth => {
            if failed {
                ensure!(
                    o.status == 401 && code == "upstream_auth_failed",
                    "refused credentials: 401 upstream_auth_failed, got {} {code}",
                    o.status
                );
            }
            ensure!(
                o.states.first().map(|s| s.1.as_str()) == Some("invalid"),
                "a session that cannot renew becomes invalid: {:?}",
                o.states
            );
        }
        Kind::Renewable => {
            ensure!(
                o.status == 200 && !failed,
                "an expired token that renews: the turn is answered"
            );
            ensure!(
                first == 2,
                "renewed and sent again once, on the same account ({first} calls)"
            );
        }
        Kind::Forbidden => {
            if failed {
                ensure!(
                    o.in_band || o.status == 403,
                    "a ban before the first byte is a 403"
                );
                ensure!(
                    o.kind() == "permission_error",
                    "a ban is a permission_error: {:?}",
                    o.error
                );
            }
            ensure!(
                o.states.first().map(|s| s.1.as_str()) == Some("forbidden"),
                "a banned account is out of rotation: {:?}",
                o.states
            );
        }
        Kind::Overload | Kind::Busy => {
            ensure!(
                o.status == 503 && o.should_retry.as_deref() == Some("true"),
                "a passing upstream failure is a 503 worth retrying"
            );
        }
        Kind::Rejected => {
            ensure!(
                o.status == 400 && o.should_retry.as_deref() == Some("false"),
                "a refused request is a final 400"
            );
            ensure!(
                o.attempts.iter().sum::<u64>() == 2,
                "tried once more, then final"
            );
        }
        Kind::Refusal => {
            ensure!(
                o.attempts.iter().sum::<u64>() == 1,
                "moderation and invalid input are never retried"
            );
            ensure!(
                o.in_band || (o.status == 400 && o.should_retry.as_deref() == Some("false")),
                "a refusal before the first byte is a final 400"
            );
        }
        Kind::Broken => {
            if failed && !o.in_band {
                ensure!(o.status == 502, "a broken upstream answer is a 502");
            }
        }
        Kind::Timeout => {
            if failed && !o.in_band {
                ensure!(o.status == 504, "a timeout is a 504");
            }
            ensure!(code == "upstream_timeout", "{code}");
        }
        Kind::Unreachable => {
            ensure!(
                o.status == 502 && code == "upstream_unreachable",
                "{} {code}",
                o.status
            );
        }
    }
    if matches!(
        f.kind,
        Kind::Broken | Kind::Timeout | Kind::Unreachable | Kind::Overload | Kind::Busy
    ) && o.status != 200
    {
        ensure!(
            o.should_retry.as_deref() == Some("true"),
            "a passing failure is worth a retry: x-should-retry true"
        );
    }
    then(case, o)
}

/// What the next plain request meets, from the accounts' states (README "Accounts": no
/// usable account → 429 `upstream_rate_limited` when all cool on their quota, 503
/// `upstream_challenge_cooldown` when quarantines are involved, 503 `no_usable_account`
/// otherwise, all without an upstream call; the chat challenge pauses everyone).
fn then(case: &Case, o: &Observation) -> Result<(), String> {
    let states: Vec<&str> = o.states.iter().map(|s| s.1.as_str()).collect();
    let called: u64 = o.next_attempts.iter().sum();
    let next = (o.next_status, o.next_code.as_str());
    if case.fault.kind == Kind::Unreachable {
        ensure!(
            next == (502, "upstream_unreachable"),
            "still unreachable: {next:?}"
        );
        return Ok(());
    }
    let paused = o.rose(r#"upstream_account_cooldowns_total{reason="chat_challenge"}"#) > 0;
    if paused {
        ensure!(
            next == (503, "upstream_challenge_cooldown") && called == 0,
            "after the chat challenge everyone pauses: {next:?}, {called} call(s)"
        );
    } else if states.contains(&"ready") {
        ensure!(
            next.0 == 200,
            "a ready account answers the next request: {next:?}"
        );
        let ready_called = o
            .next_attempts
            .iter()
            .zip(&states)
            .all(|(n, s)| *n == 0 || *s == "ready");
        ensure!(
            ready_called,
            "only a ready account is called: {:?}",
            o.next_attempts
        );
    } else {
        let want = if states.iter().all(|s| *s == "cooling") {
            (429, "upstream_rate_limited")
        } else if states.contains(&"quarantined") {
            (503, "upstream_challenge_cooldown")
        } else {
            (503, "no_usable_account")
        };
        ensure!(
            next == want && called == 0,
            "no usable account ({states:?}): want {want:?} without an upstream call, got {next:?} with {called}"
        );
    }
    Ok(())
}
