//! One reader per section of the configuration, each over the shared [`Reader`] (errors
//! are collected, not returned); `Config::read` composes them.

use std::time::Duration;

use super::source::{parse_host, Reader};
use super::*;

/// `HOST`, `PORT`, `LISTEN_BACKLOG`: the listening socket; `WORKERS`, `WORK_STEALING`: the
/// threads that serve it.
pub(super) struct Listener {
    pub(super) host: IpAddr,
    pub(super) port: u16,
    pub(super) listen_backlog: u32,
    pub(super) workers: Workers,
}

impl Listener {
    pub(super) fn read(r: &mut Reader) -> Self {
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
        let threads = r.parse_with(
            "WORKERS",
            |v| {
                if v.eq_ignore_ascii_case("auto") {
                    return Ok(Workers::available());
                }
                match v.parse::<usize>() {
                    Ok(n) if (1..=Workers::MAX).contains(&n) => Ok(n),
                    _ => Err(format!(
                        "WORKERS={v:?} must be auto or a number of threads from 1 to {}",
                        Workers::MAX
                    )),
                }
            },
            Workers::available(),
        );
        let work_stealing = r.bool("WORK_STEALING", false);
        Listener {
            host,
            port,
            listen_backlog,
            workers: Workers {
                threads,
                work_stealing,
            },
        }
    }
}

impl UpstreamConfig {
    pub(super) fn read(r: &mut Reader) -> Self {
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
    pub(super) fn read(r: &mut Reader) -> Self {
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
    pub(super) fn read(r: &mut Reader, upstream: &UpstreamConfig) -> Self {
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

/// `LOG_FORMAT`, `LOG_LEVEL`, `NO_COLOR`; `LOG_DIR`, `LOG_MAX_SIZE`, `LOG_MAX_FILES`.
pub(super) struct Logging {
    pub(super) log_level: String,
    pub(super) log_format: LogFormat,
    pub(super) log_color: bool,
    pub(super) log_file: Option<LogFileConfig>,
}

impl Logging {
    pub(super) fn read(r: &mut Reader) -> Self {
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
            log_file: Self::read_file(r),
        }
    }

    /// The rotation settings are checked even without `LOG_DIR`: a typo there is found
    /// before the day it is needed.
    fn read_file(r: &mut Reader) -> Option<LogFileConfig> {
        let dir = r.raw("LOG_DIR").map(std::path::PathBuf::from);
        let max_size = r.parse_with(
            "LOG_MAX_SIZE",
            |v| match parse_size(v) {
                Some(n) if (1024..=1 << 40).contains(&n) => Ok(n),
                _ => Err(format!(
                    "LOG_MAX_SIZE={v:?} must be a size from 1KiB to 1TiB: bytes, or a number with \
                     a unit (K, KiB, M, MiB, G, GiB: powers of 1024; KB, MB, GB: powers of 1000)"
                )),
            },
            LogFileConfig::DEFAULT_MAX_SIZE,
        );
        let max_files = r.parse_with(
            "LOG_MAX_FILES",
            |v| match v.parse::<usize>() {
                Ok(n) if (1..=1000).contains(&n) => Ok(n),
                _ => Err(format!(
                    "LOG_MAX_FILES={v:?} must be a number of rotated files to keep, from 1 to 1000"
                )),
            },
            LogFileConfig::DEFAULT_MAX_FILES,
        );
        dir.map(|dir| LogFileConfig {
            dir,
            max_size,
            max_files,
        })
    }
}

/// Variables of the Node.js qwen-proxy that mean nothing here, each with what to use instead:
/// an operator who upgrades learns at start-up that a setting was dropped, not weeks later.
/// One entry per variable; its value is never shown.
const NODE_ERA_UNUSED: &[UnusedVariable] = &[UnusedVariable {
    name: "NODE_ENV",
    instead: "the binary is always a release build; use LOG_LEVEL and LOG_FORMAT for logging",
}];

/// The Node-era variables that are set (and mean nothing here).
pub(super) fn unused_node_variables(r: &Reader) -> Vec<UnusedVariable> {
    NODE_ERA_UNUSED
        .iter()
        .filter(|v| r.raw(v.name).is_some())
        .copied()
        .collect()
}

impl RetryConfig {
    pub(super) fn read(r: &mut Reader) -> Self {
        let retry = RetryConfig {
            max_attempts: r.parse("RETRY_MAX_ATTEMPTS", 3, "a whole number"),
            initial_delay: r.millis("RETRY_INITIAL_DELAY", 1_000, true),
            max_delay: r.millis("RETRY_MAX_DELAY", 10_000, true),
            multiplier: r.parse("RETRY_BACKOFF_MULTIPLIER", 2.0, "a number"),
            first_token_timeout: r.millis("FIRST_TOKEN_TIMEOUT", 120_000, true),
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
    pub(super) fn read(r: &mut Reader) -> Self {
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
pub(super) struct Auth {
    pub(super) api_keys: Vec<Secret>,
    pub(super) auth_failures: FailurePolicy,
    pub(super) admin_key: Option<Secret>,
    pub(super) metrics_token: Option<Secret>,
}

impl Auth {
    pub(super) fn read(r: &mut Reader) -> Self {
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
    pub(super) fn read(r: &mut Reader) -> Self {
        FailurePolicy {
            limit: r.parse("AUTH_FAILURE_LIMIT", 10, "a whole number (0 turns it off)"),
            window: r.millis("AUTH_FAILURE_WINDOW", 300_000, false),
        }
    }
}

impl ConversationConfig {
    pub(super) fn read(r: &mut Reader) -> Self {
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
            pool_size: r.parse("CHAT_POOL_SIZE", 2, "a whole number"),
            pool_ttl: r.millis("CHAT_POOL_TTL", 900_000, false),
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
pub(super) struct Sessions {
    pub(super) session_timeout: Duration,
    pub(super) session_cleanup_interval: Duration,
}

impl Sessions {
    pub(super) fn read(r: &mut Reader) -> Self {
        Sessions {
            session_timeout: r.millis("SESSION_TIMEOUT", 30 * 60_000, false),
            session_cleanup_interval: r.millis("SESSION_CLEANUP_INTERVAL", 5 * 60_000, false),
        }
    }
}

/// `RATE_LIMIT_RPM`, `RATE_LIMIT_BURST`: requests per client.
pub(super) struct RateLimit {
    pub(super) rate_limit_rpm: u32,
    pub(super) rate_limit_burst: u32,
}

impl RateLimit {
    pub(super) fn read(r: &mut Reader) -> Self {
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

impl UsageConfig {
    /// `USAGE_DAYS`, `USAGE_MAX_ROWS`: how much usage accounting keeps (the `usage` module).
    pub(super) fn read(r: &mut Reader) -> Self {
        let days: u32 = r.parse("USAGE_DAYS", 30, "a whole number of days");
        if !(1..=3660).contains(&days) {
            r.error("USAGE_DAYS must be from 1 to 3660 days");
        }
        let max_rows: usize = r.parse("USAGE_MAX_ROWS", 10_000, "a whole number of rows");
        if max_rows == 0 {
            r.error("USAGE_MAX_ROWS must be at least 1");
        }
        UsageConfig { days, max_rows }
    }
}

impl RequestLogConfig {
    /// The largest `REQUEST_LOG_SIZE`: an entry is a few hundred bytes, so some 40 MB.
    const MAX_SIZE: usize = 100_000;

    /// `REQUEST_LOG_SIZE`: the requests the request log keeps (the `request_log` module).
    pub(super) fn read(r: &mut Reader) -> Self {
        let size: usize = r.parse("REQUEST_LOG_SIZE", 1000, "a whole number of requests");
        if size > Self::MAX_SIZE {
            r.error(format!(
                "REQUEST_LOG_SIZE must be from 0 (off) to {} requests",
                Self::MAX_SIZE
            ));
        }
        RequestLogConfig { size }
    }
}

/// What the server accepts and how long it waits: concurrent streams, request bodies,
/// keep-alives, the shutdown grace, request headers.
pub(super) struct ServerLimits {
    pub(super) max_concurrent_streams: usize,
    pub(super) max_body_bytes: usize,
    pub(super) body_read_timeout: Duration,
    pub(super) sse_keepalive: Duration,
    pub(super) stream_commit_delay: Duration,
    pub(super) shutdown_grace: Duration,
    pub(super) header_read_timeout: Duration,
}

impl ServerLimits {
    pub(super) fn read(r: &mut Reader) -> Self {
        let limits = ServerLimits {
            max_concurrent_streams: r.parse("MAX_CONCURRENT_STREAMS", 1024, "a whole number"),
            max_body_bytes: r.parse("MAX_BODY_BYTES", 4 << 20, "a number of bytes"),
            body_read_timeout: r.millis("BODY_READ_TIMEOUT", 30_000, false),
            sse_keepalive: r.millis("SSE_KEEPALIVE_INTERVAL", 15_000, false),
            stream_commit_delay: r.millis("STREAM_COMMIT_DELAY", 5_000, true),
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
pub(super) struct UpstreamLimits {
    pub(super) models_cache_duration: Duration,
    pub(super) upstream_body_limit: usize,
    pub(super) challenge_cooldown: Duration,
}

impl UpstreamLimits {
    pub(super) fn read(r: &mut Reader) -> Self {
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

impl MediaConfig {
    pub(super) fn read(r: &mut Reader) -> Self {
        let media = MediaConfig {
            search_footnotes: r.bool("SEARCH_FOOTNOTES", false),
            image_max_bytes: r.parse("IMAGE_MAX_BYTES", 10 << 20, "a number of bytes"),
            image_max_count: r.parse("IMAGE_MAX_COUNT", 5, "a whole number"),
            image_fetch_timeout: r.millis("IMAGE_FETCH_TIMEOUT", 10_000, false),
            image_fetch_allow_http: r.bool("IMAGE_FETCH_ALLOW_HTTP", false),
            image_fetch_allow: r.parse_with(
                "IMAGE_FETCH_ALLOW",
                |v| {
                    crate::fetch::parse_allow_list(v).map_err(|e| format!("IMAGE_FETCH_ALLOW: {e}"))
                },
                Vec::new(),
            ),
        };
        if !(1..=5).contains(&media.image_max_count) {
            r.error("IMAGE_MAX_COUNT must be between 1 and 5 (the upstream attaches at most five files to a message)");
        }
        if media.image_max_bytes == 0 || media.image_max_bytes > 20 << 20 {
            r.error(
                "IMAGE_MAX_BYTES must be between 1 and 20971520 (the upstream's 20 MB per file)",
            );
        }
        media
    }
}

fn split_keys(v: &str) -> Vec<Secret> {
    v.split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(Secret::new)
        .collect()
}
