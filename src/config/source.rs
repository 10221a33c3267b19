//! Where raw values come from (the environment over `.env`, or a map in tests) and the
//! [`Reader`] that parses them, collecting every error instead of stopping at the first.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use hyper::Uri;

use super::ConfigErrors;

/// Where raw values come from. `Env` in production, a map in tests.
pub trait Source {
    fn get(&self, key: &str) -> Option<String>;
}

impl Source for HashMap<String, String> {
    fn get(&self, key: &str) -> Option<String> {
        HashMap::get(self, key).cloned()
    }
}

/// Process environment layered over a `.env` file (the real environment wins), with CLI
/// overrides on top.
#[derive(Debug, Default)]
pub struct Env {
    dotenv: HashMap<String, String>,
    overrides: HashMap<String, String>,
}

impl Env {
    /// Read an env file. `required`: the user named it (`--env-file`), so a missing file is
    /// an error; the default `./.env` may be absent. A malformed line is reported, not
    /// ignored.
    pub fn load(path: &Path, required: bool) -> Result<Self, String> {
        let dotenv = match std::fs::read_to_string(path) {
            Ok(text) => parse_dotenv(&text).map_err(|e| format!("{}: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => HashMap::new(),
            Err(e) => return Err(format!("env file {}: {e}", path.display())),
        };
        Ok(Self {
            dotenv,
            overrides: HashMap::new(),
        })
    }

    /// A flag value that takes precedence over everything else.
    pub fn set_override(&mut self, key: &str, value: impl Into<String>) {
        self.overrides.insert(key.to_owned(), value.into());
    }
}

impl Source for Env {
    fn get(&self, key: &str) -> Option<String> {
        self.overrides
            .get(key)
            .cloned()
            .or_else(|| std::env::var(key).ok())
            .or_else(|| self.dotenv.get(key).cloned())
    }
}

/// `KEY=VALUE` lines; `#` comments; optional `export `; single or double quotes.
pub fn parse_dotenv(text: &str) -> Result<HashMap<String, String>, String> {
    let mut map = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!("line {}: expected KEY=VALUE", n + 1));
        };
        let key = key.trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("line {}: invalid variable name `{key}`", n + 1));
        }
        let value = value.trim();
        let value = if value.len() >= 2
            && (value.starts_with('"') && value.ends_with('"')
                || value.starts_with('\'') && value.ends_with('\''))
        {
            value[1..value.len() - 1].to_owned()
        } else {
            // Unquoted: a ` #` starts a trailing comment.
            value.split(" #").next().unwrap_or("").trim_end().to_owned()
        };
        map.insert(key.to_owned(), value);
    }
    Ok(map)
}

/// Collects parse errors while reading every field.
pub(super) struct Reader<'a> {
    src: &'a dyn Source,
    pub(super) errors: Vec<String>,
}

impl<'a> Reader<'a> {
    pub(super) fn new(src: &'a dyn Source) -> Self {
        Self {
            src,
            errors: Vec::new(),
        }
    }

    /// Every problem found, or the configuration read.
    pub(super) fn finish<T>(self, value: T) -> Result<T, ConfigErrors> {
        if self.errors.is_empty() {
            Ok(value)
        } else {
            Err(ConfigErrors(self.errors))
        }
    }

    pub(super) fn error(&mut self, message: impl Into<String>) {
        self.errors.push(message.into());
    }

    pub(super) fn raw(&self, key: &str) -> Option<String> {
        self.src
            .get(key)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    pub(super) fn parse<T: std::str::FromStr>(&mut self, key: &str, default: T, what: &str) -> T {
        match self.raw(key) {
            None => default,
            Some(v) => v.parse().unwrap_or_else(|_| {
                self.errors.push(format!("{key}={v:?} is not {what}"));
                default
            }),
        }
    }

    /// A value with a parser of its own, whose message is reported as it is.
    pub(super) fn parse_with<T>(
        &mut self,
        key: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
        default: T,
    ) -> T {
        match self.raw(key).map(|v| parse(&v)) {
            None => default,
            Some(Ok(value)) => value,
            Some(Err(e)) => {
                self.errors.push(e);
                default
            }
        }
    }

    /// An http(s) base URL (a trailing `/` dropped).
    pub(super) fn url(&mut self, key: &str, default: &'static str) -> Uri {
        let Some(v) = self.raw(key) else {
            return Uri::from_static(default);
        };
        match v.trim_end_matches('/').parse::<Uri>() {
            Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => u,
            _ => {
                self.errors
                    .push(format!("{key}={v:?} is not an http(s) URL"));
                Uri::from_static(default)
            }
        }
    }

    pub(super) fn bool(&mut self, key: &str, default: bool) -> bool {
        match self.raw(key).map(|v| v.to_ascii_lowercase()) {
            None => default,
            Some(v) if matches!(v.as_str(), "true" | "1" | "yes" | "on") => true,
            Some(v) if matches!(v.as_str(), "false" | "0" | "no" | "off") => false,
            Some(v) => {
                self.errors
                    .push(format!("{key}={v:?} is not a boolean (true/false)"));
                default
            }
        }
    }

    /// One of a few named values (case-insensitive); anything else is reported with the
    /// names it may be.
    pub(super) fn choice<T: Copy>(&mut self, key: &str, options: &[(&str, T)], default: T) -> T {
        let Some(v) = self.raw(key) else {
            return default;
        };
        if let Some((_, value)) = options
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(&v))
        {
            return *value;
        }
        let names: Vec<&str> = options.iter().map(|(name, _)| *name).collect();
        let (last, rest) = names.split_last().unwrap_or((&"", &[]));
        let names = if rest.is_empty() {
            (*last).to_owned()
        } else {
            format!("{} or {last}", rest.join(", "))
        };
        self.errors.push(format!("{key}={v:?} must be {names}"));
        default
    }

    /// A duration: plain milliseconds, or a number with a unit (`ms`, `s`, `m`, `h`, `d`);
    /// `> 0` unless `allow_zero`.
    pub(super) fn millis(&mut self, key: &str, default_ms: u64, allow_zero: bool) -> Duration {
        let default = Duration::from_millis(default_ms);
        let Some(v) = self.raw(key) else {
            return default;
        };
        match parse_duration(&v) {
            Some(d) if d.is_zero() && !allow_zero => {
                self.errors.push(format!("{key} must be greater than 0"));
                default
            }
            Some(d) => d,
            None => {
                self.errors.push(format!(
                    "{key}={v:?} is not a duration (milliseconds, or a number with a unit: 500ms, 30s, 30m, 1h)"
                ));
                default
            }
        }
    }
}

/// `1500` (milliseconds), `1.5s`, `30 s`, `30m`, `1h`, `2d` (the units of the `ms` package
/// that Node-era configurations use).
pub fn parse_duration(v: &str) -> Option<Duration> {
    let v = v.trim();
    let split = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (number, unit) = v.split_at(split);
    let n: f64 = number.parse().ok()?;
    let unit_ms = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "ms" | "msec" | "msecs" | "millisecond" | "milliseconds" => 1.0,
        "s" | "sec" | "secs" | "second" | "seconds" => 1e3,
        "m" | "min" | "mins" | "minute" | "minutes" => 60e3,
        "h" | "hr" | "hrs" | "hour" | "hours" => 3_600e3,
        "d" | "day" | "days" => 86_400e3,
        _ => return None,
    };
    let ms = n * unit_ms;
    // Plain numbers are whole milliseconds; a year is more than any timeout needs.
    (ms.is_finite() && ms <= 365.0 * 86_400e3 && (!unit.is_empty() || n.fract() == 0.0))
        .then(|| Duration::from_secs_f64(ms / 1e3))
}

/// A size in bytes: a whole number of bytes, or a number with a unit, in any case: `b`;
/// `k`, `kib` (1024), `m`, `mib` (1024²), `g`, `gib` (1024³) — a bare letter is binary, as in
/// logrotate's `size 10M`; `kb` (1000), `mb` (1000²), `gb` (1000³) are decimal, as in SI.
/// `10MiB`, `10 M`, `512k`, `1.5GB`; a fraction only with a unit, rounded down to whole bytes.
pub fn parse_size(v: &str) -> Option<u64> {
    let v = v.trim();
    let split = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (number, unit) = v.split_at(split);
    let unit_bytes: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => return None,
    };
    if unit.is_empty() {
        return number.parse().ok();
    }
    let n: f64 = number.parse().ok()?;
    let bytes = (n * unit_bytes as f64).floor();
    // Below 2^53 a float holds every whole number: far above any sensible size.
    (bytes.is_finite() && bytes < (1u64 << 53) as f64).then_some(bytes as u64)
}

/// `LOG_LEVEL`: a level, a winston (Node-era) level, or a `tracing` filter with directives
/// (`qwen_proxy=debug,info`). A bare word that is not a level is an error: the filter
/// syntax would read it as a target name and silence every log line.
pub fn parse_log_level(v: &str) -> Result<String, String> {
    let mut out = Vec::new();
    for directive in v.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        if directive.contains('=') || directive.contains('[') {
            out.push(directive.to_owned());
            continue;
        }
        let level = match directive.to_ascii_lowercase().as_str() {
            l @ ("error" | "warn" | "info" | "debug" | "trace" | "off") => l.to_owned(),
            "warning" => "warn".to_owned(),
            "http" | "verbose" => "debug".to_owned(),
            "silly" => "trace".to_owned(),
            _ => {
                return Err(format!(
                    "LOG_LEVEL={v:?}: {directive:?} is not a level (error, warn, info, debug, trace, off; \
                     the Node-era names warning, http, verbose and silly also work) or a filter such as qwen_proxy=debug"
                ))
            }
        };
        out.push(level);
    }
    let filter = out.join(",");
    if filter.is_empty() {
        return Ok("info".to_owned());
    }
    tracing_subscriber::EnvFilter::try_new(&filter)
        .map(|_| filter)
        .map_err(|e| format!("LOG_LEVEL={v:?} is not a valid filter: {e}"))
}

/// `HOST`: an IP address, or `localhost` (what Node-era configurations often hold).
pub(super) fn parse_host(v: &str) -> Option<IpAddr> {
    if v.eq_ignore_ascii_case("localhost") {
        return Some(IpAddr::from([127, 0, 0, 1]));
    }
    v.trim_start_matches('[').trim_end_matches(']').parse().ok()
}
