//! Typed configuration from flags, environment and `.env`. Nothing else reads the
//! environment. Every variable is parsed before any error is returned, so one run reports
//! all bad values (the binary exits with 64, `EX_USAGE`).
//!
//! Names are those of the Node version (`PORT`, `QWEN_COOKIES`, `RETRY_*`, …) so its users
//! can keep their `.env`; durations are milliseconds, as there, or a number with a unit
//! (`30s`, `30m`, `1h`). Node-era values are understood too: `HOST=localhost`, winston log
//! levels, Express-style `TRUST_PROXY`. `.env.example` documents every variable.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use hyper::Uri;

use crate::accounts_file::AccountSpec;
pub use crate::common::Secret;
use crate::forwarded::TrustProxy;

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Failed-authentication throttling (`AUTH_FAILURE_LIMIT` per `AUTH_FAILURE_WINDOW`).
#[derive(Debug, Clone, Copy)]
pub struct FailurePolicy {
    /// Failures per window that lock an address out; 0 turns throttling off.
    pub limit: u32,
    pub window: Duration,
}

/// Parsed `redis://[[user]:password@]host[:port][/db]` (the password never prints).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisUrl {
    pub host: String,
    pub port: u16,
    pub db: u32,
    pub username: Option<String>,
    pub password: Option<Secret>,
}

impl RedisUrl {
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url.strip_prefix("redis://").ok_or_else(|| {
            "REDIS_URL must start with redis:// (TLS rediss:// is not supported yet)".to_owned()
        })?;
        let (auth, hostpart) = match rest.rsplit_once('@') {
            Some((a, h)) => (Some(a), h),
            None => (None, rest),
        };
        let (hostport, db) = match hostpart.split_once('/') {
            Some((h, d)) if !d.is_empty() => (
                h,
                d.parse()
                    .map_err(|_| format!("REDIS_URL database `{d}` is not a number"))?,
            ),
            Some((h, _)) => (h, 0),
            None => (hostpart, 0),
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse()
                    .map_err(|_| format!("REDIS_URL port `{p}` is not a number"))?,
            ),
            None => (hostport, 6379),
        };
        if host.is_empty() {
            return Err("REDIS_URL has no host".to_owned());
        }
        let (username, password) = match auth {
            None => (None, None),
            Some(a) => match a.split_once(':') {
                Some((u, p)) => ((!u.is_empty()).then(|| u.to_owned()), Some(Secret::new(p))),
                None => (None, Some(Secret::new(a))),
            },
        };
        Ok(Self {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port,
            db,
            username,
            password,
        })
    }
}

/// Everything the Qwen client needs.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub base_url: Uri,
    /// Where sign-in and refresh go (`QWEN_AUTH_BASE_URL`, https://auth.qwen.ai).
    pub auth_base_url: Uri,
    /// The full Cookie header (contains `token=`).
    pub cookies: Option<Secret>,
    /// The account JWT, taken from the `token=` cookie.
    pub auth_token: Option<Secret>,
    /// `bx-umidtoken` header (`QWEN_TOKEN`).
    pub bx_umidtoken: Option<Secret>,
    pub bx_ua: Option<Secret>,
    /// `bx-v` (`QWEN_BX_V`): sent only when set. The browser front end stopped sending the
    /// `bx-*` headers, and stale copies of them now draw the anti-bot challenge (2026-09).
    pub bx_v: Option<String>,
    pub user_agent: String,
    /// The front-end `version` header; its presence is required upstream.
    pub fe_version: String,
    /// Also send `Authorization: Bearer <token>` (the cookie is always sent).
    pub send_bearer: bool,
    pub connect_timeout: Duration,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    /// Which HTTP version the upstream is spoken to in (`UPSTREAM_HTTP2`).
    pub protocol: UpstreamProtocol,
}

/// Which HTTP version the upstream is spoken to in (`UPSTREAM_HTTP2`). HTTP/2 carries many
/// streams over a few connections, and everything the upstream sent at once is read in one
/// go (HTTP/1.1 responses reach the proxy one chunk at a time; BENCHMARKS §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// `auto` (default): HTTP/2 — by ALPN over TLS, by prior knowledge (h2c) on
    /// `http://` — and HTTP/1.1 for good if a plain-HTTP upstream turns out not to speak it.
    Auto,
    /// `true`: HTTP/2 only.
    Http2,
    /// `false`: HTTP/1.1 on `http://`; over TLS whatever ALPN agrees.
    Http1,
}

#[derive(Debug, Clone)]
pub struct RetryConfig {
    pub max_attempts: u32,
    pub initial_delay: Duration,
    pub max_delay: Duration,
    pub multiplier: f64,
}

#[derive(Debug, Clone)]
pub struct CorsConfig {
    pub enabled: bool,
    pub origin: String,
    pub credentials: bool,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub host: IpAddr,
    pub port: u16,
    /// Pending connections the kernel queues before `accept` (capped by `somaxconn`).
    pub listen_backlog: u32,
    pub upstream: UpstreamConfig,
    pub log_level: String,
    pub log_format: LogFormat,
    /// Colours in text logs are allowed (`NO_COLOR` unset); they are used only when stderr
    /// is a terminal.
    pub log_color: bool,
    pub session_timeout: Duration,
    pub session_cleanup_interval: Duration,
    pub retry: RetryConfig,
    pub models_cache_duration: Duration,
    pub cors: CorsConfig,
    pub trust_proxy: TrustProxy,
    pub api_keys: Vec<Secret>,
    /// Invalid keys per address and window before the address is locked out.
    pub auth_failures: FailurePolicy,
    /// `REDIS_URL`, parsed (its password never prints).
    pub redis_url: Option<RedisUrl>,
    pub max_body_bytes: usize,
    /// The whole request body must arrive within this (after the headers).
    pub body_read_timeout: Duration,
    /// Largest upstream completion request body we send (the upstream challenges bigger
    /// ones, qwen-protocol §7.4).
    pub upstream_body_limit: usize,
    /// After an anti-bot challenge, no upstream completion for this long.
    pub challenge_cooldown: Duration,
    pub sse_keepalive: Duration,
    pub shutdown_grace: Duration,
    /// The whole request header block must arrive within this (slowloris protection).
    pub header_read_timeout: Duration,
    /// Requests per minute per client; 0 disables the limiter.
    pub rate_limit_rpm: u32,
    pub rate_limit_burst: u32,
    /// Concurrent chat completions; 0 means unlimited.
    pub max_concurrent_streams: usize,
    /// Bearer token required on `/metrics` when set.
    pub metrics_token: Option<Secret>,
    pub conversations: ConversationConfig,
    pub accounts: AccountsConfig,
    /// `ADMIN_KEY`: the admin API (`/admin/accounts…`) answers only with this bearer key;
    /// without it, the admin API is off (404).
    pub admin_key: Option<Secret>,
}

/// Whether a turn whose chat is still busy may go to a fresh chat (`BUSY_CHAT_POLICY`;
/// `conversation::busy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusyPolicy {
    /// The faster of waiting and a fresh chat, from the learned estimates.
    Adaptive,
    /// Always continue the chat, waiting out the window (fewer upstream chats).
    Wait,
}

/// Conversation continuation and the session store.
#[derive(Debug, Clone)]
pub struct ConversationConfig {
    /// `false` (`CONVERSATION_MODE=stateless`): every request folds the history into a
    /// fresh chat.
    pub continue_chats: bool,
    pub max_sessions: usize,
    /// `CHAT_CLEANUP=delete`: delete upstream chats of expired sessions.
    pub delete_chats: bool,
    pub queue_timeout: Duration,
    pub queue_max: usize,
    /// `BUSY_CHAT_POLICY`: may a turn whose chat is still busy go to a fresh chat?
    pub busy_policy: BusyPolicy,
    /// `BUSY_FRESH_MAX_BYTES`: the largest folded history sent to a fresh chat only to save
    /// waiting for a busy one.
    pub busy_fresh_max_bytes: usize,
    /// `CHATS_PER_REQUEST`: upstream chats one client request may open (`conversation::budget`).
    pub chats_per_request: u32,
    /// `CHATS_PER_CONVERSATION_PER_MINUTE`: a conversation opens no more upstream chats once
    /// this many of its chats came to nothing within a minute (0: no bound).
    pub chats_per_minute: usize,
}

/// The account pool's configuration.
#[derive(Debug, Clone)]
pub struct AccountsConfig {
    /// `QWEN_ACCOUNTS_FILE`, kept for reloads (`SIGHUP`, the admin API).
    pub file: Option<std::path::PathBuf>,
    /// The accounts: the file's, or the pool of one from `QWEN_COOKIES`.
    pub specs: Vec<AccountSpec>,
    /// `QWEN_SIGNIN_FLOW`: `auth` (auth.qwen.ai, default) or `legacy`.
    pub signin_flow: SigninFlow,
    /// `QWEN_SIGNIN_INTERVAL` (ms): least time between sign-ins from one address.
    pub signin_interval: Duration,
    /// `ACCOUNT_QUEUE_TIMEOUT` (ms): how long a turn waits for an account with room.
    pub queue_timeout: Duration,
}

/// Which sign-in password accounts use (`QWEN_SIGNIN_FLOW`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigninFlow {
    /// auth.qwen.ai: a short-lived access token and a refresh token rotated on every
    /// refresh (the upstream since 2026-09-30).
    Auth,
    /// `/api/v1/auths/signin` on the chat domain: one long-lived token.
    Legacy,
}

/// All problems found, one line each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<String>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration:")?;
        for e in &self.0 {
            writeln!(f, "  - {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// The upstream challenges completion requests above about 128 KB (qwen-protocol §7.4:
/// 117 KB passed, 129 KB failed). The default keeps a margin below the lowest failure seen.
pub const DEFAULT_UPSTREAM_BODY_LIMIT: usize = 112 * 1024;
/// `UPSTREAM_BODY_LIMIT` may be raised to this, never above (the challenge is certain there).
pub const UPSTREAM_BODY_HARD_LIMIT: usize = 128 * 1024;

/// The chat front end's version, sent as the `version` header (0.3.12 since 2026-09).
pub const DEFAULT_FE_VERSION: &str = "0.3.12";

pub const DEFAULT_USER_AGENT: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/141.0.0.0 Safari/537.36";

/// Collects parse errors while reading every field.
struct Reader<'a> {
    src: &'a dyn Source,
    errors: Vec<String>,
}

impl<'a> Reader<'a> {
    fn new(src: &'a dyn Source) -> Self {
        Self {
            src,
            errors: Vec::new(),
        }
    }

    /// Every problem found, or the configuration read.
    fn finish<T>(self, value: T) -> Result<T, ConfigErrors> {
        if self.errors.is_empty() {
            Ok(value)
        } else {
            Err(ConfigErrors(self.errors))
        }
    }

    fn error(&mut self, message: impl Into<String>) {
        self.errors.push(message.into());
    }

    fn raw(&self, key: &str) -> Option<String> {
        self.src
            .get(key)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    fn parse<T: std::str::FromStr>(&mut self, key: &str, default: T, what: &str) -> T {
        match self.raw(key) {
            None => default,
            Some(v) => v.parse().unwrap_or_else(|_| {
                self.errors.push(format!("{key}={v:?} is not {what}"));
                default
            }),
        }
    }

    /// A value with a parser of its own, whose message is reported as it is.
    fn parse_with<T>(
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
    fn url(&mut self, key: &str, default: &'static str) -> Uri {
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

    fn bool(&mut self, key: &str, default: bool) -> bool {
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
    fn choice<T: Copy>(&mut self, key: &str, options: &[(&str, T)], default: T) -> T {
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
    fn millis(&mut self, key: &str, default_ms: u64, allow_zero: bool) -> Duration {
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
fn parse_host(v: &str) -> Option<IpAddr> {
    if v.eq_ignore_ascii_case("localhost") {
        return Some(IpAddr::from([127, 0, 0, 1]));
    }
    v.trim_start_matches('[').trim_end_matches(']').parse().ok()
}

impl Config {
    /// Read and validate everything. `demo` relaxes the credential requirement.
    pub fn from_source(src: &dyn Source, demo: bool) -> Result<Config, ConfigErrors> {
        let mut r = Reader::new(src);
        let config = Config::read(&mut r);
        config.check_credentials(&mut r, demo);
        r.finish(config)
    }

    /// Every section in turn, each reporting its own problems to `r`.
    fn read(r: &mut Reader) -> Config {
        let listener = Listener::read(r);
        let upstream = UpstreamConfig::read(r);
        let accounts = AccountsConfig::read(r, &upstream);
        let logging = Logging::read(r);
        let retry = RetryConfig::read(r);
        let cors = CorsConfig::read(r);
        let auth = Auth::read(r);
        let redis_url = r.parse_with("REDIS_URL", |v| RedisUrl::parse(v).map(Some), None);
        let conversations = ConversationConfig::read(r);
        let sessions = Sessions::read(r);
        let rate_limit = RateLimit::read(r);
        let trust_proxy = r.parse_with("TRUST_PROXY", TrustProxy::parse, TrustProxy::Off);
        let server = ServerLimits::read(r);
        let upstream_limits = UpstreamLimits::read(r);
        Config {
            host: listener.host,
            port: listener.port,
            listen_backlog: listener.listen_backlog,
            upstream,
            log_level: logging.log_level,
            log_format: logging.log_format,
            log_color: logging.log_color,
            session_timeout: sessions.session_timeout,
            session_cleanup_interval: sessions.session_cleanup_interval,
            retry,
            models_cache_duration: upstream_limits.models_cache_duration,
            cors,
            trust_proxy,
            api_keys: auth.api_keys,
            auth_failures: auth.auth_failures,
            redis_url,
            max_body_bytes: server.max_body_bytes,
            body_read_timeout: server.body_read_timeout,
            upstream_body_limit: upstream_limits.upstream_body_limit,
            challenge_cooldown: upstream_limits.challenge_cooldown,
            sse_keepalive: server.sse_keepalive,
            shutdown_grace: server.shutdown_grace,
            header_read_timeout: server.header_read_timeout,
            rate_limit_rpm: rate_limit.rate_limit_rpm,
            rate_limit_burst: rate_limit.rate_limit_burst,
            max_concurrent_streams: server.max_concurrent_streams,
            metrics_token: auth.metrics_token,
            conversations,
            accounts,
            admin_key: auth.admin_key,
        }
    }

    /// Across sections: the accounts come from `QWEN_ACCOUNTS_FILE` or from `QWEN_COOKIES`,
    /// one of them (`--demo` brings its own).
    fn check_credentials(&self, r: &mut Reader, demo: bool) {
        match (&self.accounts.file, &self.upstream.cookies) {
            (Some(_), Some(_)) => r.error(
                "set QWEN_ACCOUNTS_FILE or QWEN_COOKIES, not both: add the browser \
                 session to the file as an entry with `cookies`",
            ),
            (None, None) if !demo => r.error(
                "no Qwen credentials: set QWEN_ACCOUNTS_FILE (README \"Accounts\") or QWEN_COOKIES to the Cookie header (with token=…) of a logged-in \
                 chat.qwen.ai browser session, or run `qwen-proxy --demo` to try the proxy against the built-in simulator",
            ),
            _ => {}
        }
    }

    /// Point the upstream at a local simulator with a demo credential (`--demo`).
    pub fn use_simulator(&mut self, base_url: Uri) {
        self.upstream.base_url = base_url;
        self.upstream.auth_base_url = self.upstream.base_url.clone();
        self.upstream.cookies = Some(Secret::new("token=demo-token"));
        self.upstream.auth_token = Some(Secret::new("demo-token"));
        if self.accounts.file.is_none() {
            self.accounts.specs = vec![crate::accounts_file::from_env(
                &Secret::new("token=demo-token"),
                &Secret::new("demo-token"),
                None,
                None,
                None,
            )];
        }
    }
}

// Reading each section. Problems are reported in the order of the reads in `Config::read`,
// the checks across sections (`Config::check_credentials`) after them.

/// `HOST`, `PORT`, `LISTEN_BACKLOG`: the listening socket.
struct Listener {
    host: IpAddr,
    port: u16,
    listen_backlog: u32,
}

impl Listener {
    fn read(r: &mut Reader) -> Self {
        let host = r.parse_with(
            "HOST",
            |v| {
                parse_host(v).ok_or_else(|| {
                    format!(
                        "HOST={v:?} is not an IP address or localhost (0.0.0.0 listens everywhere)"
                    )
                })
            },
            IpAddr::from([0, 0, 0, 0]),
        );
        let port = r.parse("PORT", 3000, "a port number (0-65535)");
        let listen_backlog = r.parse(
            "LISTEN_BACKLOG",
            crate::server::DEFAULT_LISTEN_BACKLOG,
            "a whole number of connections",
        );
        if listen_backlog == 0 {
            r.error("LISTEN_BACKLOG must be at least 1");
        }
        Listener {
            host,
            port,
            listen_backlog,
        }
    }
}

impl UpstreamConfig {
    fn read(r: &mut Reader) -> Self {
        let base_url = r.url("QWEN_BASE_URL", "https://chat.qwen.ai");
        let auth_base_url = r.url("QWEN_AUTH_BASE_URL", "https://auth.qwen.ai");
        let (cookies, auth_token) = Self::read_cookies(r);
        Self::check_header_values(r);
        UpstreamConfig {
            base_url,
            auth_base_url,
            cookies,
            auth_token,
            bx_umidtoken: r.raw("QWEN_TOKEN").map(Secret::new),
            bx_ua: r.raw("QWEN_BX_UA").map(Secret::new),
            bx_v: r.raw("QWEN_BX_V"),
            user_agent: r
                .raw("QWEN_USER_AGENT")
                .unwrap_or_else(|| DEFAULT_USER_AGENT.to_owned()),
            fe_version: r
                .raw("QWEN_VERSION")
                .unwrap_or_else(|| DEFAULT_FE_VERSION.to_owned()),
            send_bearer: r.bool("QWEN_SEND_BEARER", true),
            connect_timeout: r.millis("UPSTREAM_CONNECT_TIMEOUT", 10_000, false),
            header_timeout: r.millis("UPSTREAM_HEADER_TIMEOUT", 120_000, false),
            idle_timeout: r.millis("UPSTREAM_IDLE_TIMEOUT", 180_000, false),
            protocol: UpstreamProtocol::read(r),
        }
    }

    /// `QWEN_COOKIES`, and the account JWT in its `token=` cookie.
    fn read_cookies(r: &mut Reader) -> (Option<Secret>, Option<Secret>) {
        let Some(cookies) = r.raw("QWEN_COOKIES") else {
            return (None, None);
        };
        let auth_token = token_from_cookies(&cookies);
        if auth_token.is_none() {
            r.error(
                "QWEN_COOKIES has no `token=` cookie: copy the whole Cookie header of a logged-in chat.qwen.ai tab",
            );
        }
        if cookies.chars().any(|ch| ch.is_control()) {
            r.error("QWEN_COOKIES contains control characters");
        }
        (Some(Secret::new(cookies)), auth_token.map(Secret::new))
    }

    /// Values sent upstream verbatim as headers must be valid header values.
    fn check_header_values(r: &mut Reader) {
        let header_values = [
            "QWEN_TOKEN",
            "QWEN_BX_UA",
            "QWEN_USER_AGENT",
            "QWEN_VERSION",
            "QWEN_BX_V",
        ];
        for key in header_values {
            if let Some(v) = r.raw(key) {
                if hyper::header::HeaderValue::from_str(&v).is_err() {
                    r.error(format!("{key} is not a valid HTTP header value"));
                }
            }
        }
    }
}

impl UpstreamProtocol {
    /// `UPSTREAM_HTTP2`: `auto`, or a boolean.
    fn read(r: &mut Reader) -> Self {
        match r
            .raw("UPSTREAM_HTTP2")
            .map(|v| v.to_ascii_lowercase())
            .as_deref()
        {
            None | Some("auto") => UpstreamProtocol::Auto,
            Some("true" | "1" | "yes" | "on") => UpstreamProtocol::Http2,
            Some("false" | "0" | "no" | "off") => UpstreamProtocol::Http1,
            Some(v) => {
                r.error(format!("UPSTREAM_HTTP2={v:?} must be auto, true or false"));
                UpstreamProtocol::Auto
            }
        }
    }
}

impl AccountsConfig {
    /// The file's accounts, or the pool of one from `QWEN_COOKIES` (that there is exactly
    /// one source is `Config::check_credentials`).
    fn read(r: &mut Reader, upstream: &UpstreamConfig) -> Self {
        let file = r.raw("QWEN_ACCOUNTS_FILE").map(std::path::PathBuf::from);
        let specs = match &file {
            Some(path) => crate::accounts_file::load_file(path).unwrap_or_else(|errors| {
                r.errors.extend(errors);
                Vec::new()
            }),
            None => Self::from_cookies(r, upstream),
        };
        AccountsConfig {
            file,
            specs,
            signin_flow: r.choice(
                "QWEN_SIGNIN_FLOW",
                &[("auth", SigninFlow::Auth), ("legacy", SigninFlow::Legacy)],
                SigninFlow::Auth,
            ),
            signin_interval: r.millis("QWEN_SIGNIN_INTERVAL", 30_000, true),
            queue_timeout: r.millis("ACCOUNT_QUEUE_TIMEOUT", 30_000, true),
        }
    }

    /// The pool of one from `QWEN_COOKIES` (none without its `token=` cookie).
    fn from_cookies(r: &Reader, upstream: &UpstreamConfig) -> Vec<AccountSpec> {
        match (&upstream.cookies, &upstream.auth_token) {
            (Some(cookies), Some(token)) => vec![crate::accounts_file::from_env(
                cookies,
                token,
                upstream.bx_ua.as_ref(),
                upstream.bx_umidtoken.as_ref(),
                r.raw("QWEN_USER_AGENT").as_deref(),
            )],
            _ => Vec::new(),
        }
    }
}

/// `LOG_FORMAT`, `LOG_LEVEL`, `NO_COLOR`.
struct Logging {
    log_level: String,
    log_format: LogFormat,
    log_color: bool,
}

impl Logging {
    fn read(r: &mut Reader) -> Self {
        let log_format = r.choice(
            "LOG_FORMAT",
            &[("text", LogFormat::Text), ("json", LogFormat::Json)],
            LogFormat::Text,
        );
        let log_level = r.parse_with("LOG_LEVEL", parse_log_level, "info".to_owned());
        Logging {
            log_level,
            log_format,
            // https://no-color.org: present and not empty means no colour.
            log_color: r.raw("NO_COLOR").is_none(),
        }
    }
}

impl RetryConfig {
    fn read(r: &mut Reader) -> Self {
        let retry = RetryConfig {
            max_attempts: r.parse("RETRY_MAX_ATTEMPTS", 3, "a whole number"),
            initial_delay: r.millis("RETRY_INITIAL_DELAY", 1_000, true),
            max_delay: r.millis("RETRY_MAX_DELAY", 10_000, true),
            multiplier: r.parse("RETRY_BACKOFF_MULTIPLIER", 2.0, "a number"),
        };
        if retry.max_attempts == 0 {
            r.error("RETRY_MAX_ATTEMPTS must be at least 1");
        }
        if !(retry.multiplier.is_finite() && retry.multiplier >= 1.0) {
            r.error("RETRY_BACKOFF_MULTIPLIER must be a number >= 1");
        }
        if retry.max_delay < retry.initial_delay {
            r.error("RETRY_MAX_DELAY must not be smaller than RETRY_INITIAL_DELAY");
        }
        retry
    }
}

impl CorsConfig {
    fn read(r: &mut Reader) -> Self {
        let cors = CorsConfig {
            enabled: r.bool("CORS_ENABLED", false),
            origin: r.raw("CORS_ORIGIN").unwrap_or_else(|| "*".to_owned()),
            credentials: r.bool("CORS_CREDENTIALS", false),
        };
        if cors.enabled && cors.credentials && cors.origin == "*" {
            r.error("CORS_CREDENTIALS=true needs an explicit CORS_ORIGIN (browsers reject `*` with credentials)");
        }
        cors
    }
}

/// Who may call the proxy: the client keys and the throttling of wrong ones, the admin key,
/// the metrics token.
struct Auth {
    api_keys: Vec<Secret>,
    auth_failures: FailurePolicy,
    admin_key: Option<Secret>,
    metrics_token: Option<Secret>,
}

impl Auth {
    fn read(r: &mut Reader) -> Self {
        let api_keys = Self::read_api_keys(r);
        let auth_failures = FailurePolicy::read(r);
        let admin_key = r.raw("ADMIN_KEY");
        if admin_key.as_ref().is_some_and(|k| k.len() < 16) {
            // The admin API has no lockout of its own: the key's length is its defence.
            r.error("ADMIN_KEY must be at least 16 characters (e.g. `openssl rand -hex 24`)");
        }
        Auth {
            api_keys,
            auth_failures,
            admin_key: admin_key.map(Secret::new),
            metrics_token: r.raw("METRICS_TOKEN").map(Secret::new),
        }
    }

    /// `API_KEYS` (comma-separated) and the lines of `API_KEYS_FILE` (`#` comments).
    fn read_api_keys(r: &mut Reader) -> Vec<Secret> {
        let mut api_keys: Vec<Secret> = r
            .raw("API_KEYS")
            .map(|v| split_keys(&v))
            .unwrap_or_default();
        if let Some(path) = r.raw("API_KEYS_FILE") {
            match std::fs::read_to_string(&path) {
                Ok(text) => api_keys.extend(
                    text.lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty() && !l.starts_with('#'))
                        .map(Secret::new),
                ),
                Err(e) => r.error(format!("API_KEYS_FILE={path:?}: {e}")),
            }
        }
        api_keys
    }
}

impl FailurePolicy {
    fn read(r: &mut Reader) -> Self {
        FailurePolicy {
            limit: r.parse("AUTH_FAILURE_LIMIT", 10, "a whole number (0 turns it off)"),
            window: r.millis("AUTH_FAILURE_WINDOW", 300_000, false),
        }
    }
}

impl ConversationConfig {
    fn read(r: &mut Reader) -> Self {
        let continue_chats = r.choice(
            "CONVERSATION_MODE",
            &[("continue", true), ("stateless", false)],
            true,
        );
        let delete_chats = r.choice("CHAT_CLEANUP", &[("keep", false), ("delete", true)], false);
        let busy_policy = r.choice(
            "BUSY_CHAT_POLICY",
            &[
                ("adaptive", BusyPolicy::Adaptive),
                ("wait", BusyPolicy::Wait),
            ],
            BusyPolicy::Adaptive,
        );
        let conversations = ConversationConfig {
            busy_policy,
            continue_chats,
            max_sessions: r.parse("SESSION_MAX_ENTRIES", 10_000, "a whole number"),
            delete_chats,
            queue_timeout: r.millis("CONVERSATION_QUEUE_TIMEOUT", 60_000, false),
            queue_max: r.parse("CONVERSATION_QUEUE_MAX", 8, "a whole number"),
            busy_fresh_max_bytes: r.parse(
                "BUSY_FRESH_MAX_BYTES",
                32 * 1024,
                "a whole number of bytes",
            ),
            chats_per_request: r.parse("CHATS_PER_REQUEST", 2, "a whole number"),
            chats_per_minute: r.parse("CHATS_PER_CONVERSATION_PER_MINUTE", 10, "a whole number"),
        };
        if conversations.max_sessions == 0
            || conversations.queue_max == 0
            || conversations.chats_per_request == 0
        {
            r.error(
                "SESSION_MAX_ENTRIES, CONVERSATION_QUEUE_MAX and CHATS_PER_REQUEST must be at least 1",
            );
        }
        conversations
    }
}

/// `SESSION_TIMEOUT`, `SESSION_CLEANUP_INTERVAL`: the session store's expiry.
struct Sessions {
    session_timeout: Duration,
    session_cleanup_interval: Duration,
}

impl Sessions {
    fn read(r: &mut Reader) -> Self {
        Sessions {
            session_timeout: r.millis("SESSION_TIMEOUT", 30 * 60_000, false),
            session_cleanup_interval: r.millis("SESSION_CLEANUP_INTERVAL", 5 * 60_000, false),
        }
    }
}

/// `RATE_LIMIT_RPM`, `RATE_LIMIT_BURST`: requests per client.
struct RateLimit {
    rate_limit_rpm: u32,
    rate_limit_burst: u32,
}

impl RateLimit {
    fn read(r: &mut Reader) -> Self {
        let rate_limit_rpm: u32 =
            r.parse("RATE_LIMIT_RPM", 0, "a whole number of requests per minute");
        let rate_limit_burst: u32 =
            r.parse("RATE_LIMIT_BURST", rate_limit_rpm.max(1), "a whole number");
        if rate_limit_rpm > 0 && rate_limit_burst == 0 {
            r.error("RATE_LIMIT_BURST must be at least 1");
        }
        RateLimit {
            rate_limit_rpm,
            rate_limit_burst,
        }
    }
}

/// What the server accepts and how long it waits: concurrent streams, request bodies,
/// keep-alives, the shutdown grace, request headers.
struct ServerLimits {
    max_concurrent_streams: usize,
    max_body_bytes: usize,
    body_read_timeout: Duration,
    sse_keepalive: Duration,
    shutdown_grace: Duration,
    header_read_timeout: Duration,
}

impl ServerLimits {
    fn read(r: &mut Reader) -> Self {
        let limits = ServerLimits {
            max_concurrent_streams: r.parse("MAX_CONCURRENT_STREAMS", 1024, "a whole number"),
            max_body_bytes: r.parse("MAX_BODY_BYTES", 4 << 20, "a number of bytes"),
            body_read_timeout: r.millis("BODY_READ_TIMEOUT", 30_000, false),
            sse_keepalive: r.millis("SSE_KEEPALIVE_INTERVAL", 15_000, false),
            shutdown_grace: r.millis("SHUTDOWN_GRACE", 30_000, true),
            header_read_timeout: r.millis("HEADER_READ_TIMEOUT", 30_000, false),
        };
        if limits.max_body_bytes < 1024 {
            r.error("MAX_BODY_BYTES must be at least 1024");
        }
        limits
    }
}

/// How often and how much the upstream is asked: the model list's cache, the largest
/// completion body, the pause after a challenge.
struct UpstreamLimits {
    models_cache_duration: Duration,
    upstream_body_limit: usize,
    challenge_cooldown: Duration,
}

impl UpstreamLimits {
    fn read(r: &mut Reader) -> Self {
        let limits = UpstreamLimits {
            models_cache_duration: r.millis("MODELS_CACHE_DURATION", 3_600_000, true),
            upstream_body_limit: r.parse(
                "UPSTREAM_BODY_LIMIT",
                DEFAULT_UPSTREAM_BODY_LIMIT,
                "a number of bytes",
            ),
            challenge_cooldown: r.millis("CHALLENGE_COOLDOWN", 300_000, true),
        };
        if !(4096..=UPSTREAM_BODY_HARD_LIMIT).contains(&limits.upstream_body_limit) {
            r.error(format!(
                "UPSTREAM_BODY_LIMIT must be between 4096 and {UPSTREAM_BODY_HARD_LIMIT} bytes \
                 (the upstream challenges requests above about 128 KiB)"
            ));
        }
        limits
    }
}

fn split_keys(v: &str) -> Vec<Secret> {
    v.split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(Secret::new)
        .collect()
}

/// The value of the `token` cookie in a Cookie header.
pub fn token_from_cookies(cookies: &str) -> Option<String> {
    crate::common::cookie_from(cookies, "token")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_with_credentials() {
        let c =
            Config::from_source(&src(&[("QWEN_COOKIES", "a=1; token=abc; b=2")]), false).unwrap();
        assert_eq!(c.port, 3000);
        assert_eq!(c.upstream.auth_token.as_ref().unwrap().expose(), "abc");
        assert_eq!(c.retry.max_attempts, 3);
        assert_eq!(c.models_cache_duration, Duration::from_secs(3600));
    }

    #[test]
    fn missing_credentials_say_what_to_set() {
        let e = Config::from_source(&src(&[]), false).unwrap_err();
        assert_eq!(e.0.len(), 1);
        assert!(e.0[0].contains("QWEN_COOKIES") && e.0[0].contains("--demo"));
        assert!(Config::from_source(&src(&[]), true).is_ok());
    }

    #[test]
    fn every_bad_value_is_reported_at_once() {
        let e = Config::from_source(
            &src(&[
                ("PORT", "70000"),
                ("HOST", "nowhere"),
                ("LOG_FORMAT", "xml"),
                ("RETRY_MAX_ATTEMPTS", "-1"),
                ("CORS_ENABLED", "maybe"),
                ("QWEN_BASE_URL", "ftp://x"),
                ("QWEN_COOKIES", "a=1"),
                ("SESSION_TIMEOUT", "0"),
                ("LISTEN_BACKLOG", "0"),
                ("BUSY_CHAT_POLICY", "Sometimes"),
                ("UPSTREAM_HTTP2", "h3"),
            ]),
            false,
        )
        .unwrap_err();
        assert_eq!(e.0.len(), 11, "{e}");
        let text = e.to_string();
        for line in [
            "LISTEN_BACKLOG must be at least 1",
            "BUSY_CHAT_POLICY=\"Sometimes\" must be adaptive or wait",
            "UPSTREAM_HTTP2=\"h3\" must be auto, true or false",
            "LOG_FORMAT=\"xml\" must be text or json",
        ] {
            assert!(text.contains(line), "{line:?} missing from {text}");
        }
    }

    #[test]
    fn new_settings_have_their_documented_defaults() {
        let c = Config::from_source(&src(&[("QWEN_COOKIES", "token=abc")]), false).unwrap();
        assert_eq!(c.listen_backlog, crate::server::DEFAULT_LISTEN_BACKLOG);
        assert_eq!(c.listen_backlog, 1024);
        assert_eq!(c.conversations.busy_policy, BusyPolicy::Adaptive);
        assert_eq!(c.upstream.protocol, UpstreamProtocol::Auto);
        let c = Config::from_source(
            &src(&[
                ("QWEN_COOKIES", "token=abc"),
                ("UPSTREAM_HTTP2", "TRUE"),
                ("BUSY_CHAT_POLICY", "Wait"),
            ]),
            false,
        )
        .unwrap();
        assert_eq!(c.upstream.protocol, UpstreamProtocol::Http2);
        assert_eq!(c.conversations.busy_policy, BusyPolicy::Wait);
    }

    #[test]
    fn node_era_values_are_understood() {
        let c = Config::from_source(
            &src(&[
                ("QWEN_COOKIES", "token=abc"),
                ("HOST", "localhost"),
                ("TRUST_PROXY", "loopback, 10.0.0.0/8"),
                ("SESSION_TIMEOUT", "30m"),
                ("RETRY_MAX_DELAY", "1h"),
                ("RETRY_INITIAL_DELAY", "1.5s"),
                ("UPSTREAM_IDLE_TIMEOUT", "250"),
                ("LOG_LEVEL", "verbose"),
            ]),
            false,
        )
        .unwrap();
        assert_eq!(c.host, IpAddr::from([127, 0, 0, 1]));
        assert!(matches!(c.trust_proxy, TrustProxy::Ranges(ref r) if r.len() == 3));
        assert_eq!(c.session_timeout, Duration::from_secs(1800));
        assert_eq!(c.retry.max_delay, Duration::from_secs(3600));
        assert_eq!(c.retry.initial_delay, Duration::from_millis(1500));
        assert_eq!(c.upstream.idle_timeout, Duration::from_millis(250));
        assert_eq!(c.log_level, "debug");
        for (value, trust) in [("true", TrustProxy::OneProxy), ("2", TrustProxy::Hops(2))] {
            let c = Config::from_source(&src(&[("TRUST_PROXY", value)]), true).unwrap();
            assert_eq!(c.trust_proxy, trust);
        }
    }

    #[test]
    fn log_levels_and_aliases() {
        for (given, filter) in [
            ("warning", "warn"),
            ("WARN", "warn"),
            ("silly", "trace"),
            ("http", "debug"),
            ("qwen_proxy=debug,info", "qwen_proxy=debug,info"),
            ("off", "off"),
        ] {
            assert_eq!(parse_log_level(given).as_deref(), Ok(filter), "{given}");
        }
        for bad in ["loud", "verbose-ish", "info,loud"] {
            let e = parse_log_level(bad).unwrap_err();
            assert!(e.contains("not a level"), "{bad}: {e}");
        }
        // A bad level is a configuration error (exit 64), not a silent logger.
        let e = Config::from_source(&src(&[("LOG_LEVEL", "loud")]), true).unwrap_err();
        assert!(e.0[0].contains("LOG_LEVEL"), "{e}");
    }

    #[test]
    fn durations() {
        for (v, ms) in [
            ("0", 0),
            ("250", 250),
            ("2s", 2_000),
            ("1.5 s", 1_500),
            ("30m", 1_800_000),
            ("1h", 3_600_000),
            ("1d", 86_400_000),
            ("100ms", 100),
        ] {
            assert_eq!(parse_duration(v), Some(Duration::from_millis(ms)), "{v}");
        }
        for bad in ["", "x", "5 parsecs", "-1", "1.5", "s", "9999999d"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_named_env_file_must_exist() {
        let missing = Path::new("/nonexistent/qwen-proxy.env");
        assert!(Env::load(missing, true)
            .unwrap_err()
            .contains("qwen-proxy.env"));
        assert!(Env::load(missing, false).is_ok());
    }

    #[test]
    fn url_forms() {
        let u = RedisUrl::parse("redis://127.0.0.1:6390/2").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.db, u.password.is_none()),
            ("127.0.0.1", 6390, 2, true)
        );
        let u = RedisUrl::parse("redis://:pw@cache").unwrap();
        assert_eq!(
            (
                u.host.as_str(),
                u.port,
                u.password.as_ref().map(Secret::expose),
                u.username
            ),
            ("cache", 6379, Some("pw"), None)
        );
        let u = RedisUrl::parse("redis://me:pw@[::1]:7000").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.username.as_deref()),
            ("::1", 7000, Some("me"))
        );
        assert!(RedisUrl::parse("rediss://x").is_err());
        assert!(RedisUrl::parse("redis://x:port").is_err());
    }

    #[test]
    fn dotenv_syntax() {
        let m =
            parse_dotenv("# c\nexport A=1\nB=\"two words\"\nC='x#y'\nD=v # trailing\n\n").unwrap();
        assert_eq!(m["A"], "1");
        assert_eq!(m["B"], "two words");
        assert_eq!(m["C"], "x#y");
        assert_eq!(m["D"], "v");
        assert!(parse_dotenv("novalue").is_err());
    }

    /// Records every key the configuration reads.
    struct Recording(std::cell::RefCell<Vec<String>>);

    impl Source for Recording {
        fn get(&self, key: &str) -> Option<String> {
            self.0.borrow_mut().push(key.to_owned());
            None
        }
    }

    #[test]
    fn env_example_documents_exactly_the_variables_read() {
        let rec = Recording(Default::default());
        let _ = Config::from_source(&rec, true);
        let read: std::collections::BTreeSet<String> = rec.0.into_inner().into_iter().collect();
        let documented: std::collections::BTreeSet<String> = include_str!("../.env.example")
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim().to_owned()))
            .collect();
        assert_eq!(read, documented, "config reads vs .env.example documents");
    }

    #[test]
    fn secrets_do_not_debug_print() {
        let c = Config::from_source(&src(&[("QWEN_COOKIES", "token=supersecret")]), false).unwrap();
        assert!(!format!("{c:?}").contains("supersecret"));
    }
}
