//! Typed configuration from flags, environment and `.env`. Nothing else reads the
//! environment. Every variable is parsed before any error is returned, so one run reports
//! all bad values (the binary exits with 64, `EX_USAGE`).
//!
//! Names are those of the Node version (`PORT`, `QWEN_COOKIES`, `RETRY_*`, …) so its users
//! can keep their `.env`; durations are milliseconds, as there, or a number with a unit
//! (`30s`, `30m`, `1h`). Node-era values are understood too: `HOST=localhost`, winston log
//! levels, Express-style `TRUST_PROXY`. `.env.example` documents every variable.
//!
//! Here: the typed sections and `Config::from_source`, which composes one reader per
//! section (`sections.rs`) over the shared `Reader` (`source.rs`: where raw values come
//! from, and the parsing that collects every error).

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use hyper::Uri;

use crate::accounts_file::AccountSpec;
pub use crate::common::Secret;
use crate::forwarded::TrustProxy;
use sections::{Auth, Listener, Logging, RateLimit, ServerLimits, Sessions, UpstreamLimits};
use source::Reader;
pub use source::{parse_dotenv, parse_duration, parse_log_level, parse_size, Env, Source};

pub use self::redis::{RedisConfig, RedisMode, RedisUrl};

mod redis;
mod sections;
mod source;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// `LOG_DIR`: log lines go to a file in this directory, rotated by size, instead of stderr
/// (the `logs` module).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFileConfig {
    pub dir: PathBuf,
    /// `LOG_MAX_SIZE`: the file is rotated once it holds this many bytes or more, so a file
    /// holds at most this plus one line.
    pub max_size: u64,
    /// `LOG_MAX_FILES`: rotated files kept besides the current one (`.1` the newest).
    pub max_files: usize,
}

impl LogFileConfig {
    /// The current file's name; rotated ones add `.1`, `.2`, … `.LOG_MAX_FILES`.
    pub const FILE_NAME: &'static str = "qwen-proxy.log";
    /// 10 MiB.
    pub const DEFAULT_MAX_SIZE: u64 = 10 << 20;
    pub const DEFAULT_MAX_FILES: usize = 5;

    /// Where the current file is.
    pub fn path(&self) -> PathBuf {
        self.dir.join(Self::FILE_NAME)
    }
}

/// A variable of the Node.js qwen-proxy that has no meaning here, and what to use instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnusedVariable {
    pub name: &'static str,
    /// Completes "`name` has no effect in qwen-proxy: …".
    pub instead: &'static str,
}

/// Failed-authentication throttling (`AUTH_FAILURE_LIMIT` per `AUTH_FAILURE_WINDOW`).
#[derive(Debug, Clone, Copy)]
pub struct FailurePolicy {
    /// Failures per window that lock an address out; 0 turns throttling off.
    pub limit: u32,
    pub window: Duration,
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
    /// `FIRST_TOKEN_TIMEOUT`: the longest a client waits for its answer to begin, whatever
    /// comes before (retries, accounts, chats, queues); zero: no bound but the per-step ones.
    pub first_token_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct CorsConfig {
    pub enabled: bool,
    pub origin: String,
    pub credentials: bool,
}

/// How requests are spread over the machine's cores (README, "Cores").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Workers {
    /// `WORKERS`: threads serving requests (`auto`: one per CPU this process may use).
    pub threads: usize,
    /// `WORK_STEALING`: one multi-threaded runtime whose threads take each other's work,
    /// instead of one single-threaded runtime per thread, each keeping its connections.
    pub work_stealing: bool,
}

impl Workers {
    /// More threads than this is a typo, not a machine.
    pub const MAX: usize = 1024;

    /// One per CPU this process may use (its affinity mask and cgroup quota included).
    pub fn available() -> usize {
        std::thread::available_parallelism().map_or(1, |n| n.get().min(Self::MAX))
    }

    /// Runtimes that each own their connections: one per thread, or the one shared.
    pub fn runtimes(&self) -> usize {
        if self.work_stealing {
            1
        } else {
            self.threads
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub host: IpAddr,
    pub port: u16,
    /// Pending connections the kernel queues before `accept` (capped by `somaxconn`).
    pub listen_backlog: u32,
    /// The threads that serve requests (`WORKERS`, `WORK_STEALING`).
    pub workers: Workers,
    pub upstream: UpstreamConfig,
    pub log_level: String,
    pub log_format: LogFormat,
    /// Colours in text logs are allowed (`NO_COLOR` unset); they are used only when stderr
    /// is a terminal.
    pub log_color: bool,
    /// `LOG_DIR` and its rotation; `None`: logs go to stderr.
    pub log_file: Option<LogFileConfig>,
    /// The Node-era variables that are set but mean nothing here, to be named at start-up
    /// once logging is set up (so the warning lands where the logs go).
    pub unused_variables: Vec<UnusedVariable>,
    pub session_timeout: Duration,
    pub session_cleanup_interval: Duration,
    pub retry: RetryConfig,
    pub models_cache_duration: Duration,
    pub cors: CorsConfig,
    pub trust_proxy: TrustProxy,
    pub api_keys: Vec<Secret>,
    /// Invalid keys per address and window before the address is locked out.
    pub auth_failures: FailurePolicy,
    /// `REDIS_URL` and the other `REDIS_*` settings (passwords never print).
    pub redis: Option<RedisConfig>,
    pub max_body_bytes: usize,
    /// The whole request body must arrive within this (after the headers).
    pub body_read_timeout: Duration,
    /// Largest upstream completion request body we send (the upstream challenges bigger
    /// ones, qwen-protocol §7.4).
    pub upstream_body_limit: usize,
    /// After an anti-bot challenge, no upstream completion for this long.
    pub challenge_cooldown: Duration,
    pub sse_keepalive: Duration,
    /// `STREAM_COMMIT_DELAY`: a streamed answer not begun by then gets its 200 and SSE
    /// comments while it waits (0: only once the upstream answers).
    pub stream_commit_delay: Duration,
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
    pub media: MediaConfig,
    /// `MODEL_ALIASES`: names a client may use that are not the catalogue's (Claude Code's
    /// `claude-*`), as `part=model` pairs: a requested name containing `part` (any case)
    /// means `model`; the first pair that matches wins; catalogue names always win.
    pub model_aliases: Vec<(String, String)>,
    pub usage: UsageConfig,
    pub request_log: RequestLogConfig,
}

/// The default `MODEL_ALIASES`: Claude Code's model families onto the catalogue (`haiku`,
/// its side requests — titles, summaries — to the fast variant, thinking off).
pub const DEFAULT_MODEL_ALIASES: &str =
    "haiku=qwen3.7-plus-fast,sonnet=qwen3.7-plus,opus=qwen3.8-max,claude=qwen3.7-plus";

/// `part=model,part=model`.
pub fn parse_model_aliases(v: &str) -> Result<Vec<(String, String)>, String> {
    v.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((part, model)) if !part.trim().is_empty() && !model.trim().is_empty() => {
                Ok((part.trim().to_ascii_lowercase(), model.trim().to_owned()))
            }
            _ => Err(format!(
                "MODEL_ALIASES: `{pair}` is not `part=model` (e.g. {DEFAULT_MODEL_ALIASES})"
            )),
        })
        .collect()
}

/// Files and media: images in messages (their limits and the fetch policy) and the sources
/// of search answers.
#[derive(Debug, Clone)]
pub struct MediaConfig {
    /// `SEARCH_FOOTNOTES`: end a `-search` answer with a numbered list of its sources, for
    /// clients that show content and ignore `annotations`.
    pub search_footnotes: bool,
    /// `IMAGE_MAX_BYTES`: the largest image accepted (a `data:` URI decoded, or fetched).
    pub image_max_bytes: u64,
    /// `IMAGE_MAX_COUNT`: the most images one message attaches upstream (1–5).
    pub image_max_count: usize,
    /// `IMAGE_FETCH_TIMEOUT` (ms): the whole fetch of one image address, redirects included.
    pub image_fetch_timeout: Duration,
    /// `IMAGE_FETCH_ALLOW_HTTP`: plain `http://` image addresses too (`https` only by default).
    pub image_fetch_allow_http: bool,
    /// `IMAGE_FETCH_ALLOW`: networks (CIDR) image addresses may reach although private,
    /// loopback, link-local or otherwise forbidden (`fetch::policy`).
    pub(crate) image_fetch_allow: Vec<crate::fetch::IpNet>,
}

impl MediaConfig {
    /// The policy image addresses are fetched under.
    pub(crate) fn fetch_policy(&self) -> crate::fetch::FetchPolicy {
        crate::fetch::FetchPolicy {
            allow: self.image_fetch_allow.clone(),
            allow_http: self.image_fetch_allow_http,
            max_bytes: self.image_max_bytes,
            timeout: self.image_fetch_timeout,
            max_redirects: 3,
        }
    }
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

/// Usage accounting (the `usage` module): how much of it is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageConfig {
    /// `USAGE_DAYS`: days kept, today included.
    pub days: u32,
    /// `USAGE_MAX_ROWS`: distinct (account, key, model) counted a day; the rest count as one
    /// `(other)` row.
    pub max_rows: usize,
}

/// The request log (the `request_log` module): how many requests it keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLogConfig {
    /// `REQUEST_LOG_SIZE`: the last requests kept (0: none, and no live feed; the overview's
    /// per-minute counts go on).
    pub size: usize,
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
    /// `CHAT_POOL_SIZE`: chats each account keeps made ahead per chat type and model in use
    /// (`chat_pool`; 0: off).
    pub pool_size: usize,
    /// `CHAT_POOL_TTL` (ms): a chat made ahead and not used within this is not handed out.
    pub pool_ttl: Duration,
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
        let unused_variables = sections::unused_node_variables(r);
        let retry = RetryConfig::read(r);
        let cors = CorsConfig::read(r);
        let auth = Auth::read(r);
        let redis = RedisConfig::read(r);
        let conversations = ConversationConfig::read(r);
        let sessions = Sessions::read(r);
        let rate_limit = RateLimit::read(r);
        let trust_proxy = r.parse_with("TRUST_PROXY", TrustProxy::parse, TrustProxy::Off);
        let server = ServerLimits::read(r);
        let upstream_limits = UpstreamLimits::read(r);
        let media = MediaConfig::read(r);
        let usage = UsageConfig::read(r);
        let request_log = RequestLogConfig::read(r);
        let model_aliases = r.parse_with("MODEL_ALIASES", parse_model_aliases, {
            parse_model_aliases(DEFAULT_MODEL_ALIASES).unwrap_or_default()
        });
        Config {
            host: listener.host,
            port: listener.port,
            listen_backlog: listener.listen_backlog,
            workers: listener.workers,
            upstream,
            log_level: logging.log_level,
            log_format: logging.log_format,
            log_color: logging.log_color,
            log_file: logging.log_file,
            unused_variables,
            session_timeout: sessions.session_timeout,
            session_cleanup_interval: sessions.session_cleanup_interval,
            retry,
            models_cache_duration: upstream_limits.models_cache_duration,
            cors,
            trust_proxy,
            api_keys: auth.api_keys,
            auth_failures: auth.auth_failures,
            redis,
            max_body_bytes: server.max_body_bytes,
            body_read_timeout: server.body_read_timeout,
            upstream_body_limit: upstream_limits.upstream_body_limit,
            challenge_cooldown: upstream_limits.challenge_cooldown,
            sse_keepalive: server.sse_keepalive,
            stream_commit_delay: server.stream_commit_delay,
            shutdown_grace: server.shutdown_grace,
            header_read_timeout: server.header_read_timeout,
            rate_limit_rpm: rate_limit.rate_limit_rpm,
            rate_limit_burst: rate_limit.rate_limit_burst,
            max_concurrent_streams: server.max_concurrent_streams,
            metrics_token: auth.metrics_token,
            conversations,
            accounts,
            admin_key: auth.admin_key,
            media,
            model_aliases,
            usage,
            request_log,
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

/// The value of the `token` cookie in a Cookie header.
pub fn token_from_cookies(cookies: &str) -> Option<String> {
    crate::common::cookie_from(cookies, "token")
}

#[cfg(test)]
mod tests;
