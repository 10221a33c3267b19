//! Usage accounting: the upstream's tokens (input, output, reasoning), turns and failed
//! turns, per UTC day, account, client (the API key's fingerprint, never the key; `anon`
//! without `API_KEYS`) and resolved upstream model — for billing clients and watching
//! accounts, which the Prometheus counters (no account, no key: their label sets must stay
//! small) cannot do.
//!
//! [`Ledger`] keeps the counts in memory, bounded twice: `USAGE_DAYS` days (older ones are
//! dropped by the housekeeping) and `USAGE_MAX_ROWS` rows a day — beyond it a new
//! (account, key, model) counts in one [`OTHER`] row, so a flood of distinct keys or models
//! cannot grow memory. With Redis (`redis`), each instance also keeps the increments not
//! yet sent and adds them to one hash per day every few seconds; reports then sum what
//! every instance sent, plus this one's unsent increments. Accounting never fails a
//! request: if Redis is away the increments wait (bounded as above) for the next flush.

pub mod redis;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use serde_json::{json, Map, Value};

use self::redis::SharedUsage;

/// The row the counts of rows beyond a day's cap go to (in each of its fields).
pub const OTHER: &str = "(other)";

/// Longest account, key or model name kept (longer ones are cut): names are bounded, as the
/// rows are.
const MAX_NAME_CHARS: usize = 200;

/// A name as accounting (and the request log) keeps it: as it is but for control
/// characters, which become spaces (a tab separates names in Redis fields; a newline would
/// break a log or a CSV reader's line), and cut after [`MAX_NAME_CHARS`] characters.
pub fn clean_name(s: &str) -> String {
    s.chars()
        .take(MAX_NAME_CHARS)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// What one row counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Upstream turns that ended (completed, failed after the answer began, or cancelled).
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub reasoning_tokens: u64,
    /// Turns that failed after the upstream answer began.
    pub errors: u64,
}

impl Counters {
    /// The counters' names, as the reports and the Redis fields spell them.
    pub const NAMES: [&'static str; 5] = [
        "requests",
        "input_tokens",
        "output_tokens",
        "reasoning_tokens",
        "errors",
    ];

    pub fn values(&self) -> [u64; 5] {
        [
            self.requests,
            self.input_tokens,
            self.output_tokens,
            self.reasoning_tokens,
            self.errors,
        ]
    }

    fn value_mut(&mut self, name: &str) -> Option<&mut u64> {
        Some(match name {
            "requests" => &mut self.requests,
            "input_tokens" => &mut self.input_tokens,
            "output_tokens" => &mut self.output_tokens,
            "reasoning_tokens" => &mut self.reasoning_tokens,
            "errors" => &mut self.errors,
            _ => return None,
        })
    }

    pub fn add(&mut self, other: &Counters) {
        for (name, v) in Self::NAMES.iter().zip(other.values()) {
            if let Some(mine) = self.value_mut(name) {
                *mine = mine.saturating_add(v);
            }
        }
    }

    fn to_json(self) -> Map<String, Value> {
        Self::NAMES
            .iter()
            .zip(self.values())
            .map(|(n, v)| ((*n).to_owned(), json!(v)))
            .collect()
    }
}

/// Whose usage a row is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RowKey {
    pub account: String,
    /// The client: its key's fingerprint, or `anon`.
    pub key: String,
    pub model: String,
}

impl RowKey {
    /// Names kept as they are but for control characters and their length
    /// ([`clean_name`]).
    pub fn new(account: &str, key: &str, model: &str) -> Self {
        RowKey {
            account: clean_name(account),
            key: clean_name(key),
            model: clean_name(model),
        }
    }

    fn other() -> Self {
        RowKey::new(OTHER, OTHER, OTHER)
    }
}

/// A UTC day, as days since 1970-01-01.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Day(pub i64);

impl Day {
    pub fn today() -> Self {
        Day::of_epoch_secs(crate::common::epoch_secs())
    }

    pub fn of_epoch_secs(secs: u64) -> Self {
        Day((secs / 86_400) as i64)
    }

    /// `YYYY-MM-DD`, a real date from 1970 to 9999.
    pub fn parse(s: &str) -> Option<Self> {
        let b = s.as_bytes();
        if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
            return None;
        }
        let num = |r: std::ops::Range<usize>| -> Option<u32> {
            let part = &s[r];
            part.bytes()
                .all(|c| c.is_ascii_digit())
                .then(|| part.parse().ok())
                .flatten()
        };
        let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
        if y < 1970 || !(1..=12).contains(&m) || d == 0 {
            return None;
        }
        let day = Day(days_from_civil(i64::from(y), m, d));
        // Round trip: February 30 comes back as March 2.
        (day.civil() == (i64::from(y), m, d)).then_some(day)
    }

    pub fn plus(self, days: i64) -> Self {
        Day(self.0 + days)
    }

    fn civil(self) -> (i64, u32, u32) {
        crate::common::civil_from_days(self.0)
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

impl fmt::Display for Day {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (y, m, d) = self.civil();
        write!(f, "{y:04}-{m:02}-{d:02}")
    }
}

/// One day's rows.
pub type DayRows = HashMap<RowKey, Counters>;

/// Rows by day, each day capped.
#[derive(Debug, Default)]
struct Table(BTreeMap<Day, DayRows>);

impl Table {
    /// The row `key` counts in on `day`: its own, or [`OTHER`] once the day has `max_rows`.
    fn admit(&self, day: Day, key: RowKey, max_rows: usize) -> RowKey {
        match self.0.get(&day) {
            Some(rows) if rows.len() >= max_rows && !rows.contains_key(&key) => RowKey::other(),
            _ => key,
        }
    }

    fn add(&mut self, day: Day, key: RowKey, c: &Counters) {
        self.0
            .entry(day)
            .or_default()
            .entry(key)
            .or_default()
            .add(c);
    }

    /// Add every row of `other` (capped as a record would be).
    fn merge(&mut self, other: Table, max_rows: usize) {
        for (day, rows) in other.0 {
            for (key, c) in rows {
                let key = self.admit(day, key, max_rows);
                self.add(day, key, &c);
            }
        }
    }

    fn prune(&mut self, oldest: Day) {
        self.0 = self.0.split_off(&oldest);
    }

    fn rows(&self, from: Day, to: Day) -> impl Iterator<Item = (Day, &RowKey, &Counters)> {
        self.0
            .range(from..=to)
            .flat_map(|(day, rows)| rows.iter().map(move |(k, c)| (*day, k, c)))
    }
}

/// The counts of this instance (and, with Redis, its increments not yet sent).
#[derive(Debug, Default)]
struct Tables {
    totals: Table,
    /// Redis only: what the next flush adds.
    pending: Table,
}

/// How long usage is kept, and how many rows a day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `USAGE_DAYS`: today and the days before it.
    pub days: u32,
    /// `USAGE_MAX_ROWS`: distinct (account, key, model) a day, beyond which rows count as
    /// [`OTHER`].
    pub max_rows: usize,
}

/// The usage counts, shared by every request of the instance.
#[derive(Debug)]
pub struct Ledger {
    limits: Limits,
    shared: Option<SharedUsage>,
    tables: Mutex<Tables>,
}

/// Which fields a report groups by (the others are summed over).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grouping {
    pub day: bool,
    pub account: bool,
    pub key: bool,
    pub model: bool,
}

impl Grouping {
    pub const ALL: Grouping = Grouping {
        day: true,
        account: true,
        key: true,
        model: true,
    };

    /// `day,account,key,model` or any of them, comma-separated.
    pub fn parse(s: &str) -> Option<Self> {
        let mut g = Grouping {
            day: false,
            account: false,
            key: false,
            model: false,
        };
        for part in s.split(',').map(str::trim) {
            let field = match part {
                "day" => &mut g.day,
                "account" => &mut g.account,
                "key" => &mut g.key,
                "model" => &mut g.model,
                _ => return None,
            };
            *field = true;
        }
        Some(g)
    }

    /// The grouped fields, in report order.
    pub fn fields(&self) -> Vec<&'static str> {
        [
            (self.day, "day"),
            (self.account, "account"),
            (self.key, "key"),
            (self.model, "model"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect()
    }

    /// The row an entry counts in: the grouped fields' values.
    fn group_of(&self, day: Day, key: &RowKey) -> [Option<String>; 4] {
        [
            self.day.then(|| day.to_string()),
            self.account.then(|| key.account.clone()),
            self.key.then(|| key.key.clone()),
            self.model.then(|| key.model.clone()),
        ]
    }
}

/// Which usage a report covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Query {
    pub from: Day,
    pub to: Day,
    pub by: Grouping,
}

/// A report: rows grouped and sorted, and their sum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub query: Query,
    /// Where the counts come from: `redis` (every instance) or `memory` (this one).
    pub source: &'static str,
    /// Each row: the grouped fields' values (`None` for the others), its counts.
    pub rows: Vec<([Option<String>; 4], Counters)>,
    pub totals: Counters,
}

impl Report {
    fn of<'a>(
        query: Query,
        source: &'static str,
        entries: impl Iterator<Item = (Day, &'a RowKey, &'a Counters)>,
    ) -> Self {
        let mut grouped: BTreeMap<[Option<String>; 4], Counters> = BTreeMap::new();
        let mut totals = Counters::default();
        for (day, key, c) in entries {
            if day < query.from || day > query.to {
                continue;
            }
            grouped
                .entry(query.by.group_of(day, key))
                .or_default()
                .add(c);
            totals.add(c);
        }
        Report {
            query,
            source,
            rows: grouped.into_iter().collect(),
            totals,
        }
    }

    pub fn to_json(&self) -> Value {
        let names = ["day", "account", "key", "model"];
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|(group, c)| {
                let mut row = Map::new();
                for (name, v) in names.iter().zip(group) {
                    if let Some(v) = v {
                        row.insert((*name).to_owned(), json!(v));
                    }
                }
                row.extend(c.to_json());
                Value::Object(row)
            })
            .collect();
        json!({
            "from": self.query.from.to_string(),
            "to": self.query.to.to_string(),
            "by": self.query.by.fields(),
            "source": self.source,
            "rows": rows,
            "totals": self.totals.to_json(),
        })
    }

    /// RFC 4180 CSV: a header line, then one line per row (CRLF line ends).
    pub fn to_csv(&self) -> String {
        let mut out = String::new();
        let header: Vec<&str> = self
            .query
            .by
            .fields()
            .into_iter()
            .chain(Counters::NAMES)
            .collect();
        out.push_str(&header.join(","));
        out.push_str("\r\n");
        for (group, c) in &self.rows {
            let fields: Vec<String> = group
                .iter()
                .flatten()
                .map(|v| csv_field(v))
                .chain(c.values().iter().map(u64::to_string))
                .collect();
            out.push_str(&fields.join(","));
            out.push_str("\r\n");
        }
        out
    }
}

/// One text field of CSV: quoted when it holds a separator, a quote or a line break (quotes
/// doubled), and a leading `=`, `+`, `-`, `@` (or tab, carriage return) made inert with a
/// `'` — a spreadsheet would run it as a formula (OWASP "CSV injection"): account and
/// model names are not ours.
pub fn csv_field(v: &str) -> String {
    let v = if v.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{v}")
    } else {
        v.to_owned()
    };
    if v.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", v.replace('"', "\"\""))
    } else {
        v
    }
}

impl Ledger {
    pub fn new(limits: Limits, redis: Option<Arc<crate::redis::RedisClient>>) -> Self {
        let limits = Limits {
            days: limits.days.max(1),
            max_rows: limits.max_rows.max(1),
        };
        Ledger {
            limits,
            shared: redis.map(|client| SharedUsage::new(client, limits.days)),
            tables: Mutex::new(Tables::default()),
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Count one upstream turn, today.
    pub fn record(&self, key: RowKey, c: &Counters) {
        self.record_on(Day::today(), key, c);
    }

    pub fn record_on(&self, day: Day, key: RowKey, c: &Counters) {
        let mut t = self.tables.lock().unwrap_or_else(PoisonError::into_inner);
        let key = t.totals.admit(day, key, self.limits.max_rows);
        if self.shared.is_some() {
            t.pending.add(day, key.clone(), c);
        }
        t.totals.add(day, key, c);
    }

    /// The first day kept on `today`.
    pub fn oldest_kept(&self, today: Day) -> Day {
        today.plus(1 - i64::from(self.limits.days))
    }

    /// Drop the days no longer kept (increments not yet sent for them included).
    pub fn prune(&self, today: Day) {
        let oldest = self.oldest_kept(today);
        let mut t = self.tables.lock().unwrap_or_else(PoisonError::into_inner);
        t.totals.prune(oldest);
        t.pending.prune(oldest);
    }

    /// Send the increments not yet sent to Redis (nothing without it). What could not be
    /// sent waits for the next flush: a flush whose reply was lost (a timeout after Redis
    /// applied it) counts twice — usage errs on the side of being counted.
    pub async fn flush(&self) {
        let Some(shared) = &self.shared else {
            return;
        };
        let pending = std::mem::take(
            &mut self
                .tables
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pending,
        );
        if pending.0.is_empty() {
            return;
        }
        let mut unsent = Table::default();
        for (day, rows) in pending.0 {
            if let Err(rows) = shared.add(day, rows).await {
                unsent.0.insert(day, rows);
            }
        }
        if !unsent.0.is_empty() {
            let mut t = self.tables.lock().unwrap_or_else(PoisonError::into_inner);
            t.pending.merge(unsent, self.limits.max_rows);
        }
    }

    /// The periodic work: prune, then flush.
    pub async fn housekeeping(&self) {
        self.prune(Day::today());
        self.flush().await;
    }

    /// A report: from Redis (every instance's, plus this one's unsent increments) when it is
    /// configured and answers, else from this instance's memory.
    pub async fn report(&self, query: Query) -> Report {
        if let Some(shared) = &self.shared {
            // Only the days kept can hold anything: one read a day kept at most, whatever
            // range was asked for.
            let today = Day::today();
            let (from, to) = (query.from.max(self.oldest_kept(today)), query.to.min(today));
            match shared.read(from, to).await {
                Ok(mut table) => {
                    let t = self.tables.lock().unwrap_or_else(PoisonError::into_inner);
                    for (day, key, c) in t.pending.rows(query.from, query.to) {
                        table
                            .entry(day)
                            .or_default()
                            .entry(key.clone())
                            .or_default()
                            .add(c);
                    }
                    drop(t);
                    let entries = table
                        .iter()
                        .flat_map(|(day, rows)| rows.iter().map(move |(k, c)| (*day, k, c)));
                    return Report::of(query, "redis", entries);
                }
                Err(e) => {
                    tracing::warn!(error = %e.0, "usage: Redis unreadable; reporting this instance's counts");
                }
            }
        }
        let t = self.tables.lock().unwrap_or_else(PoisonError::into_inner);
        Report::of(query, "memory", t.totals.rows(query.from, query.to))
    }
}

#[cfg(test)]
mod tests;
