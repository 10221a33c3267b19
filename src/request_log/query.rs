//! The admin API's questions to the request log: which entries ([`Filter`]) and how many
//! ([`Query`]), parsed from a query string by [`parse_query`] — pure, so every refusal is
//! unit-tested. Values are percent-decoded; an unknown parameter or a bad value is a 400
//! naming the parameter.
//!
//! | parameter | selects |
//! |---|---|
//! | `status` | `200` (any exact status), `2xx`…`5xx` (a class), `error` (not 2xx, or an error in the body) |
//! | `errors=only` | errors only (`status=error`); `errors=all` is the default |
//! | `account`, `key`, `model` | exactly that account, key fingerprint (or `anon`), model |
//! | `api` | `chat_completions`, `messages`, `responses` or `images` |
//! | `since` | entries that arrived at or after it: Unix milliseconds, or RFC 3339 (`2026-12-08T10:00:00Z`, `…+01:00`) |
//! | `limit` | at most this many (100 by default; above the capacity, the capacity) |
//!
//! The live feed takes the filters but not `since` and `limit`.

use super::Entry;
use crate::error::ProxyError;
use crate::untrusted::Untrusted;

/// Entries a list gives without a `limit`.
pub(crate) const DEFAULT_LIMIT: usize = 100;

/// Which page asks: the list (`/admin/requests`) or the live feed (`…/stream`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Page {
    List,
    Feed,
}

/// A status condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    Exact(u16),
    /// `4xx`: the hundreds digit.
    Class(u16),
    /// Not 2xx, or an error in the body ([`Entry::is_error`]).
    Error,
}

/// Which entries: every condition given must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Filter {
    pub(crate) status: Option<Status>,
    pub(crate) errors_only: bool,
    pub(crate) account: Option<String>,
    pub(crate) key: Option<String>,
    pub(crate) model: Option<String>,
    pub(crate) api: Option<&'static str>,
    /// Arrived at or after this (Unix milliseconds).
    pub(crate) since_ms: Option<u64>,
}

/// Which entries, and how many at most.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Query {
    pub(crate) filter: Filter,
    pub(crate) limit: usize,
}

impl Filter {
    pub(crate) fn matches(&self, e: &Entry) -> bool {
        let status = match self.status {
            None => true,
            Some(Status::Exact(s)) => e.status == s,
            Some(Status::Class(c)) => e.status / 100 == c,
            Some(Status::Error) => e.is_error(),
        };
        let is = |want: &Option<String>, got: &Option<String>| {
            want.as_ref()
                .map_or(true, |w| got.as_deref() == Some(w.as_str()))
        };
        status
            && (!self.errors_only || e.is_error())
            && is(&self.account, &e.account)
            && is(&self.key, &e.key)
            && is(&self.model, &e.model)
            && self.api.map_or(true, |a| a == e.api)
            && self.since_ms.map_or(true, |s| e.time_ms >= s)
    }
}

const APIS: [&str; 4] = ["chat_completions", "messages", "responses", "images"];

/// The parameters of `page`, for a log of `capacity` entries.
pub(crate) fn parse_query(raw: &str, capacity: usize, page: Page) -> Result<Query, ProxyError> {
    let mut query = Query {
        filter: Filter::default(),
        limit: DEFAULT_LIMIT.min(capacity),
    };
    let takes = match page {
        Page::List => "status, errors, account, key, model, api, since and limit",
        Page::Feed => "status, errors, account, key, model and api",
    };
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = String::from_utf8_lossy(&crate::common::percent_decode(value)).into_owned();
        let bad = |what: &str| {
            ProxyError::bad_request(
                format!("`{name}` must be {what}; got {:?}.", Untrusted(&value)),
                Some(name),
            )
        };
        let f = &mut query.filter;
        match (name, page) {
            ("status", _) => {
                f.status = Some(parse_status(&value).ok_or_else(|| {
                    bad("a status (200), a class (2xx, 3xx, 4xx, 5xx) or `error`")
                })?)
            }
            ("errors", _) => {
                f.errors_only = match value.as_str() {
                    "only" => true,
                    "all" => false,
                    _ => return Err(bad("`only` or `all`")),
                }
            }
            ("account", _) => {
                f.account = Some(non_empty(value.clone()).ok_or_else(|| bad("an account name"))?)
            }
            ("key", _) => {
                f.key = Some(
                    non_empty(value.clone()).ok_or_else(|| bad("a key fingerprint or `anon`"))?,
                )
            }
            ("model", _) => {
                f.model = Some(non_empty(value.clone()).ok_or_else(|| bad("a model name"))?)
            }
            ("api", _) => {
                f.api = Some(
                    APIS.into_iter()
                        .find(|a| *a == value)
                        .ok_or_else(|| bad("chat_completions, messages, responses or images"))?,
                )
            }
            ("since", Page::List) => {
                f.since_ms = Some(parse_since(&value).ok_or_else(|| {
                    bad("Unix milliseconds or an RFC 3339 time (2026-12-08T10:00:00Z)")
                })?)
            }
            ("limit", Page::List) => {
                let n: usize = value
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| bad("a whole number from 1"))?;
                query.limit = n.min(capacity);
            }
            _ => {
                return Err(ProxyError::bad_request(
                    format!(
                        "Unknown parameter `{}`: this page takes {takes}.",
                        Untrusted(name)
                    ),
                    Some(name),
                ))
            }
        }
    }
    Ok(query)
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn parse_status(s: &str) -> Option<Status> {
    let b = s.as_bytes();
    match b {
        b"error" => Some(Status::Error),
        [c @ b'1'..=b'5', b'x' | b'X', b'x' | b'X'] => Some(Status::Class(u16::from(c - b'0'))),
        [b'1'..=b'5', b'0'..=b'9', b'0'..=b'9'] => s.parse().ok().map(Status::Exact),
        _ => None,
    }
}

/// Unix milliseconds (digits only), or RFC 3339: `YYYY-MM-DDTHH:MM:SS`, optional fraction,
/// then `Z` or `±HH:MM` (`T` and `Z` in either case, or a space for the `T`).
pub(crate) fn parse_since(s: &str) -> Option<u64> {
    if !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()) {
        return s.parse().ok();
    }
    let day = crate::usage::Day::parse(s.get(..10)?)?;
    let rest = s.get(10..)?;
    let rest = rest.strip_prefix(['T', 't', ' '])?;
    let num = |part: &str, max: u64| -> Option<u64> {
        (part.len() == 2 && part.bytes().all(|c| c.is_ascii_digit()))
            .then(|| part.parse().ok())
            .flatten()
            .filter(|n| *n <= max)
    };
    let (h, m, sec) = (
        num(rest.get(0..2)?, 23)?,
        num(rest.get(3..5)?, 59)?,
        // A leap second is read as the second before.
        num(rest.get(6..8)?, 60)?.min(59),
    );
    if rest.get(2..3)? != ":" || rest.get(5..6)? != ":" {
        return None;
    }
    let mut rest = rest.get(8..)?;
    let mut millis = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        // Milliseconds: the first three digits, padded.
        let ms: String = frac[..digits].chars().chain("00".chars()).take(3).collect();
        millis = ms.parse::<u64>().ok()?;
        rest = &frac[digits..];
    }
    let offset_secs: i64 = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.get(..1)? {
                "+" => 1,
                "-" => -1,
                _ => return None,
            };
            if rest.len() != 6 || rest.get(3..4)? != ":" {
                return None;
            }
            let (oh, om) = (num(rest.get(1..3)?, 23)?, num(rest.get(4..6)?, 59)?);
            sign * (oh * 3600 + om * 60) as i64
        }
    };
    let secs = day.0 * 86_400 + (h * 3600 + m * 60 + sec) as i64 - offset_secs;
    u64::try_from(secs)
        .ok()?
        .checked_mul(1000)?
        .checked_add(millis)
}
