//! `ProxyError`: every failure the proxy reports, with its status, message, code and
//! headers. Each client API writes the body in its own shape (`api::openai::error`); the
//! error layer picks the route's (`layers::error_map`).
//!
//! Nothing else in the crate decides a status code. Upstream failures carry an
//! [`UpstreamClass`] (one per class of `qwen-protocol.md` §6) so the mapping, the retry
//! decision and the metric label all come from the same place.

use std::fmt;
use std::time::Duration;

use hyper::header::{HeaderMap, HeaderValue, ALLOW, RETRY_AFTER, WWW_AUTHENTICATE};
use hyper::StatusCode;

use crate::metrics::Metrics;
use crate::rate::RateDecision;
use crate::untrusted::Untrusted;

/// What went wrong upstream, at the granularity the client and the retry policy care about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamClass {
    /// E1/E14/E20: the account's usage limit (`RateLimited`, quota exceeded).
    RateLimited,
    /// E8: token invalid or expired.
    AuthFailed,
    /// E9: account forbidden or banned.
    Forbidden,
    /// E10/E11: anti-bot punish JSON or WAF challenge page.
    Challenge,
    /// E17: upstream overloaded / temporarily unavailable.
    Overloaded,
    /// E2: another generation is running on this chat.
    ChatInProgress,
    /// E3: the `parent_id` we sent is not a node of the chat.
    ParentNotFound,
    /// E4: the chat does not exist or belongs to another account.
    ChatNotFound,
    /// E16: the upstream rejected the input (invalid attachment, thinking required, …).
    InvalidInput,
    /// E5–E7: a `Bad_Request` the proxy does not recognise — the upstream refuses the request
    /// as malformed ("Internal error", a validation error). Another chat rarely changes that.
    Rejected,
    /// E12/E13: moderation (`data_inspection_failed`).
    ContentFilter,
    /// E15, upstream 5xx, unknown codes: the upstream failed.
    ServerError,
    /// E18: the stream ended without any answer content.
    EmptyStream,
    /// A stream that began with `response.created` closed before its `finished` frame:
    /// the answer was cut off (§5.3).
    Truncated,
    /// No response headers, or no event, within the configured timeout.
    Timeout,
    /// Could not connect, or the connection broke.
    Connect,
    /// The upstream sent something that is not the protocol (bad SSE, oversized event).
    Protocol,
}

impl UpstreamClass {
    /// Low-cardinality label for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::RateLimited => "rate_limited",
            Self::AuthFailed => "auth_failed",
            Self::Forbidden => "forbidden",
            Self::Challenge => "challenge",
            Self::Overloaded => "overloaded",
            Self::ChatInProgress => "chat_in_progress",
            Self::ParentNotFound => "parent_not_found",
            Self::ChatNotFound => "chat_not_found",
            Self::InvalidInput => "invalid_input",
            Self::Rejected => "rejected",
            Self::ContentFilter => "content_filter",
            Self::ServerError => "server_error",
            Self::EmptyStream => "empty_stream",
            Self::Truncated => "truncated",
            Self::Timeout => "timeout",
            Self::Connect => "connect",
            Self::Protocol => "protocol",
        }
    }
}

/// How long a client should wait before sending a request again whose passing failure
/// (an in-stream error, an empty or cut answer) came back the same on its second attempt.
pub const REPEATED_WAIT: Duration = Duration::from_secs(30);

/// A classified upstream failure. `detail` is the upstream's own text (never a secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamError {
    pub class: UpstreamClass,
    pub detail: String,
    /// How long the upstream asked us to wait (`num` hours, `Retry-After`).
    pub retry_after: Option<Duration>,
    /// The same failure came back on a second attempt of the request (or the identical
    /// request failed so moments ago): not tried again now. A refusal of the request itself
    /// is then final (`x-should-retry: false`); a passing failure is worth a retry only
    /// after [`REPEATED_WAIT`].
    pub repeated: bool,
}

impl UpstreamError {
    pub fn new(class: UpstreamClass, detail: impl Into<String>) -> Self {
        Self {
            class,
            detail: detail.into(),
            retry_after: None,
            repeated: false,
        }
    }

    /// Whether `other` is this failure again: the same class and the upstream's same words.
    pub fn same_as(&self, other: &UpstreamError) -> bool {
        self.class == other.class && self.detail == other.detail
    }

    /// A refusal of the request itself — the same request will always get it — rather than
    /// a failure of the upstream's.
    pub fn refuses_the_request(&self) -> bool {
        matches!(
            self.class,
            UpstreamClass::Rejected | UpstreamClass::InvalidInput | UpstreamClass::ContentFilter
        )
    }

    pub fn with_retry_after(mut self, after: Option<Duration>) -> Self {
        self.retry_after = after;
        self
    }
}

/// Why the console's session cookie was not accepted (`console::session`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionRefusal {
    /// Malformed, or signed with another key (`ADMIN_KEY` changed).
    Invalid,
    Expired,
    SignedOut,
}

/// Every error the proxy can answer with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyError {
    /// The request is malformed; `param` names the offending field.
    BadRequest {
        message: String,
        param: Option<String>,
        code: Option<&'static str>,
    },
    /// The requested model (or model variant) does not exist.
    ModelNotFound { model: String },
    /// No such route.
    RouteNotFound { path: String },
    /// No stored response by that id (`GET`/`DELETE /v1/responses/{id}`).
    ResponseNotFound { id: String },
    /// The route exists but not with this method; `allow` lists the methods it takes.
    MethodNotAllowed { allow: &'static str },
    /// The request body exceeds the configured limit.
    PayloadTooLarge { limit: usize },
    /// The request header block exceeds 64 KiB or 128 fields.
    HeadersTooLarge { count: usize, bytes: usize },
    /// `content-type` is not JSON.
    UnsupportedMediaType,
    /// The body is compressed (`Content-Encoding`); only identity bodies are accepted.
    UnsupportedEncoding { encoding: String },
    /// The request body did not arrive within `BODY_READ_TIMEOUT`.
    RequestTimeout { after: Duration },
    /// The upstream request would exceed `UPSTREAM_BODY_LIMIT`, past which the upstream's
    /// anti-bot protection challenges the account (qwen-protocol §7.4).
    ContextLengthExceeded { size: usize, limit: usize },
    /// `API_KEYS` is set and the request has no valid key.
    InvalidApiKey,
    /// The admin API's key (`ADMIN_KEY`) is missing or wrong.
    InvalidAdminKey,
    /// Too many invalid keys from this address: locked out for a while.
    AuthThrottled { retry_after_secs: u64 },
    /// The console's session cookie is not (or no longer) accepted: sign in again.
    NotSignedIn { refusal: SessionRefusal },
    /// A console request that changes something came without its session's CSRF token.
    CsrfTokenInvalid,
    /// The proxy's own rate limiter (`RATE_LIMIT_RPM`) rejected the request; the decision
    /// gives the `x-ratelimit-*` headers.
    RateLimited { decision: RateDecision },
    /// `MAX_CONCURRENT_STREAMS` is reached: shed load at once.
    Overloaded,
    /// The server is shutting down.
    ShuttingDown,
    /// Too many requests are queued on one conversation, or the wait timed out.
    ConversationBusy,
    /// `CHATS_PER_CONVERSATION_PER_MINUTE` of the conversation's upstream chats came to
    /// nothing within the last minute: no more until the oldest leaves the window.
    ChatLimit { retry_after_secs: u64 },
    /// The conversation is too long to send without documents, and the upstream's document
    /// parsing refuses the account for now (its own anti-bot check or rate limit): never a
    /// turn sent on a cut history instead.
    UploadsPaused { retry_after_secs: u64 },
    /// The upstream failed in a classified way.
    Upstream(Box<UpstreamError>),
    /// The upstream challenged the account recently: no upstream call until the
    /// `CHALLENGE_COOLDOWN` is over (hammering a challenged account deepens the block).
    UpstreamCoolingDown { retry_after_secs: u64 },
    /// Every usable account is at its in-flight limit or minimum interval, past
    /// `ACCOUNT_QUEUE_TIMEOUT`.
    AccountsBusy { retry_after_secs: u64 },
    /// No account can take turns, and none comes back by itself (invalid, forbidden,
    /// disabled, or still signing in): `summary` counts them by state.
    NoUsableAccount {
        summary: String,
        retry_after_secs: Option<u64>,
    },
    /// Our own bug (including a caught panic).
    Internal(String),
}

impl From<UpstreamError> for ProxyError {
    fn from(e: UpstreamError) -> Self {
        ProxyError::Upstream(Box::new(e))
    }
}

impl ProxyError {
    pub fn bad_request(message: impl Into<String>, param: Option<&str>) -> Self {
        ProxyError::BadRequest {
            message: message.into(),
            param: param.map(str::to_owned),
            code: None,
        }
    }

    pub fn upstream(class: UpstreamClass, detail: impl Into<String>) -> Self {
        UpstreamError::new(class, detail).into()
    }

    pub fn upstream_class(&self) -> Option<UpstreamClass> {
        match self {
            ProxyError::Upstream(e) => Some(e.class),
            _ => None,
        }
    }

    pub fn status(&self) -> StatusCode {
        use UpstreamClass as C;
        match self {
            ProxyError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ProxyError::ModelNotFound { .. }
            | ProxyError::RouteNotFound { .. }
            | ProxyError::ResponseNotFound { .. } => StatusCode::NOT_FOUND,
            ProxyError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::UnsupportedMediaType | ProxyError::UnsupportedEncoding { .. } => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            ProxyError::RequestTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ProxyError::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::ContextLengthExceeded { .. } => StatusCode::BAD_REQUEST,
            ProxyError::InvalidApiKey
            | ProxyError::InvalidAdminKey
            | ProxyError::NotSignedIn { .. } => StatusCode::UNAUTHORIZED,
            ProxyError::CsrfTokenInvalid => StatusCode::FORBIDDEN,
            ProxyError::RateLimited { .. }
            | ProxyError::AuthThrottled { .. }
            | ProxyError::ConversationBusy
            | ProxyError::ChatLimit { .. } => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::UploadsPaused { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Overloaded
            | ProxyError::ShuttingDown
            | ProxyError::UpstreamCoolingDown { .. }
            | ProxyError::NoUsableAccount { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::AccountsBusy { .. } => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ProxyError::Upstream(e) => match e.class {
                C::RateLimited => StatusCode::TOO_MANY_REQUESTS,
                C::AuthFailed => StatusCode::UNAUTHORIZED,
                C::Forbidden => StatusCode::FORBIDDEN,
                C::InvalidInput | C::ContentFilter | C::Rejected => StatusCode::BAD_REQUEST,
                C::Challenge | C::Overloaded | C::ChatInProgress => StatusCode::SERVICE_UNAVAILABLE,
                C::Timeout => StatusCode::GATEWAY_TIMEOUT,
                C::ParentNotFound
                | C::ChatNotFound
                | C::ServerError
                | C::EmptyStream
                | C::Truncated
                | C::Connect
                | C::Protocol => StatusCode::BAD_GATEWAY,
            },
        }
    }

    /// The proxy's machine-readable code of the error (every API's body carries it).
    pub fn code(&self) -> Option<&'static str> {
        use UpstreamClass as C;
        match self {
            ProxyError::BadRequest { code, .. } => *code,
            ProxyError::ModelNotFound { .. } => Some("model_not_found"),
            ProxyError::RouteNotFound { .. } => Some("not_found"),
            ProxyError::ResponseNotFound { .. } => Some("response_not_found"),
            ProxyError::MethodNotAllowed { .. } => Some("method_not_allowed"),
            ProxyError::PayloadTooLarge { .. } => Some("payload_too_large"),
            ProxyError::UnsupportedMediaType => Some("unsupported_media_type"),
            ProxyError::UnsupportedEncoding { .. } => Some("unsupported_content_encoding"),
            ProxyError::RequestTimeout { .. } => Some("request_timeout"),
            ProxyError::HeadersTooLarge { .. } => Some("request_headers_too_large"),
            ProxyError::ContextLengthExceeded { .. } => Some("context_length_exceeded"),
            ProxyError::InvalidApiKey => Some("invalid_api_key"),
            ProxyError::InvalidAdminKey => Some("invalid_admin_key"),
            ProxyError::NotSignedIn { .. } => Some("not_signed_in"),
            ProxyError::CsrfTokenInvalid => Some("csrf_token_invalid"),
            ProxyError::AuthThrottled { .. } => Some("too_many_authentication_failures"),
            ProxyError::UpstreamCoolingDown { .. } => Some("upstream_challenge_cooldown"),
            ProxyError::RateLimited { .. } => Some("rate_limit_exceeded"),
            ProxyError::Overloaded => Some("server_overloaded"),
            ProxyError::ShuttingDown => Some("server_shutting_down"),
            ProxyError::ConversationBusy => Some("conversation_busy"),
            ProxyError::ChatLimit { .. } => Some("conversation_chat_limit"),
            ProxyError::UploadsPaused { .. } => Some("upstream_uploads_paused"),
            ProxyError::AccountsBusy { .. } => Some("accounts_busy"),
            ProxyError::NoUsableAccount { .. } => Some("no_usable_account"),
            ProxyError::Internal(_) => Some("internal_error"),
            ProxyError::Upstream(e) => Some(match e.class {
                C::RateLimited => "upstream_rate_limited",
                C::AuthFailed => "upstream_auth_failed",
                C::Forbidden => "upstream_forbidden",
                C::Challenge => "upstream_challenge",
                C::Overloaded => "upstream_overloaded",
                C::ChatInProgress => "upstream_busy",
                C::InvalidInput => "invalid_input",
                C::Rejected => "upstream_rejected_request",
                C::ContentFilter => "content_filter",
                C::Timeout => "upstream_timeout",
                C::EmptyStream => "upstream_empty_response",
                C::Truncated => "upstream_incomplete_response",
                C::ParentNotFound | C::ChatNotFound | C::ServerError => "upstream_error",
                C::Connect => "upstream_unreachable",
                C::Protocol => "upstream_protocol_error",
            }),
        }
    }

    pub fn param(&self) -> Option<&str> {
        match self {
            ProxyError::BadRequest { param, .. } => param.as_deref(),
            ProxyError::ModelNotFound { .. } => Some("model"),
            ProxyError::ContextLengthExceeded { .. } => Some("messages"),
            _ => None,
        }
    }

    /// Seconds for `Retry-After`; always present on 429 and on transient 503s so SDK
    /// retries wait instead of hammering.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            ProxyError::RateLimited { decision } => Some(decision.retry_after_secs()),
            ProxyError::AuthThrottled { retry_after_secs }
            | ProxyError::UpstreamCoolingDown { retry_after_secs }
            | ProxyError::AccountsBusy { retry_after_secs }
            | ProxyError::ChatLimit { retry_after_secs }
            | ProxyError::UploadsPaused { retry_after_secs } => Some((*retry_after_secs).max(1)),
            ProxyError::NoUsableAccount {
                retry_after_secs, ..
            } => retry_after_secs.map(|s| s.max(1)),
            ProxyError::Overloaded | ProxyError::ShuttingDown | ProxyError::ConversationBusy => {
                Some(1)
            }
            ProxyError::Upstream(e) => match e.class {
                UpstreamClass::RateLimited => {
                    Some(e.retry_after.map_or(60, |d| d.as_secs().max(1)))
                }
                UpstreamClass::Challenge => Some(e.retry_after.map_or(300, |d| d.as_secs())),
                UpstreamClass::Overloaded | UpstreamClass::ChatInProgress => {
                    Some(e.retry_after.map_or(5, |d| d.as_secs().max(1)))
                }
                _ if e.repeated && !e.refuses_the_request() => Some(REPEATED_WAIT.as_secs()),
                _ => None,
            },
            _ => None,
        }
    }

    /// Whether a client's retry can help, sent as `x-should-retry` on every error (both
    /// OpenAI SDKs honour it; without it they retry 429s and 5xx, and openai-node waits out
    /// a `Retry-After` of hours). `false` where repeating cannot change the answer or makes
    /// it worse: the request itself is refused (malformed, too large, moderated, refused by
    /// the upstream as malformed), the credentials or the account are refused or
    /// challenged, the account's quota is spent for longer than a client waits, or the
    /// same failure already came back on a second attempt. `true` where waiting helps —
    /// `Retry-After` says how long when it is known.
    pub fn client_should_retry(&self) -> bool {
        /// A client waits out a rate limit this short; a longer one (the daily quota,
        /// hours) is not worth a retry.
        const SHORT_WAIT: Duration = Duration::from_secs(120);
        match self {
            ProxyError::BadRequest { .. }
            | ProxyError::ModelNotFound { .. }
            | ProxyError::RouteNotFound { .. }
            | ProxyError::ResponseNotFound { .. }
            | ProxyError::MethodNotAllowed { .. }
            | ProxyError::PayloadTooLarge { .. }
            | ProxyError::HeadersTooLarge { .. }
            | ProxyError::UnsupportedMediaType
            | ProxyError::UnsupportedEncoding { .. }
            | ProxyError::ContextLengthExceeded { .. }
            | ProxyError::InvalidApiKey
            | ProxyError::InvalidAdminKey
            | ProxyError::NotSignedIn { .. }
            | ProxyError::CsrfTokenInvalid
            | ProxyError::AuthThrottled { .. }
            | ProxyError::UpstreamCoolingDown { .. }
            | ProxyError::NoUsableAccount { .. }
            | ProxyError::Internal(_) => false,
            ProxyError::RequestTimeout { .. }
            | ProxyError::RateLimited { .. }
            | ProxyError::Overloaded
            | ProxyError::ShuttingDown
            | ProxyError::ConversationBusy
            | ProxyError::ChatLimit { .. }
            | ProxyError::UploadsPaused { .. }
            | ProxyError::AccountsBusy { .. } => true,
            ProxyError::Upstream(e) => match e.class {
                UpstreamClass::AuthFailed
                | UpstreamClass::Forbidden
                | UpstreamClass::Challenge
                | UpstreamClass::InvalidInput
                | UpstreamClass::ContentFilter
                | UpstreamClass::Rejected => false,
                UpstreamClass::RateLimited => e.retry_after.is_some_and(|t| t <= SHORT_WAIT),
                UpstreamClass::Overloaded
                | UpstreamClass::ChatInProgress
                | UpstreamClass::ParentNotFound
                | UpstreamClass::ChatNotFound
                | UpstreamClass::ServerError
                | UpstreamClass::EmptyStream
                | UpstreamClass::Truncated
                | UpstreamClass::Timeout
                | UpstreamClass::Connect
                | UpstreamClass::Protocol => true,
            },
        }
    }

    /// Low-cardinality label for logs and metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            ProxyError::BadRequest { .. } => "bad_request",
            ProxyError::ModelNotFound { .. } => "model_not_found",
            ProxyError::RouteNotFound { .. } | ProxyError::ResponseNotFound { .. } => "not_found",
            ProxyError::MethodNotAllowed { .. } => "method_not_allowed",
            ProxyError::PayloadTooLarge { .. } => "payload_too_large",
            ProxyError::UnsupportedMediaType => "unsupported_media_type",
            ProxyError::UnsupportedEncoding { .. } => "unsupported_encoding",
            ProxyError::RequestTimeout { .. } => "request_timeout",
            ProxyError::HeadersTooLarge { .. } => "headers_too_large",
            ProxyError::ContextLengthExceeded { .. } => "context_length_exceeded",
            ProxyError::InvalidApiKey => "invalid_api_key",
            ProxyError::InvalidAdminKey => "invalid_admin_key",
            ProxyError::NotSignedIn { .. } => "not_signed_in",
            ProxyError::CsrfTokenInvalid => "csrf_token_invalid",
            ProxyError::AuthThrottled { .. } => "auth_throttled",
            ProxyError::UpstreamCoolingDown { .. } => "upstream_cooldown",
            ProxyError::RateLimited { .. } => "rate_limited",
            ProxyError::Overloaded => "overloaded",
            ProxyError::ShuttingDown => "shutting_down",
            ProxyError::ConversationBusy => "conversation_busy",
            ProxyError::ChatLimit { .. } => "conversation_chat_limit",
            ProxyError::UploadsPaused { .. } => "uploads_paused",
            ProxyError::AccountsBusy { .. } => "accounts_busy",
            ProxyError::NoUsableAccount { .. } => "no_usable_account",
            ProxyError::Internal(_) => "internal",
            ProxyError::Upstream(e) => e.class.label(),
        }
    }

    /// The human-readable message: says what happened and, where the operator can act,
    /// what to do.
    pub fn message(&self) -> String {
        match self {
            ProxyError::BadRequest { message, .. } => message.clone(),
            ProxyError::ModelNotFound { model } => format!(
                "The model `{}` does not exist. GET /v1/models lists the available models.",
                Untrusted(model)
            ),
            ProxyError::ResponseNotFound { id } => format!(
                "Response with id '{}' not found (kept only with `store: true`, for a day, on the instance that answered).",
                Untrusted(id)
            ),
            ProxyError::RouteNotFound { path } => format!(
                "No route for {}. The API serves POST /v1/chat/completions, POST /v1/messages, \
                 POST /v1/responses, POST /v1/images/generations, GET /v1/models and \
                 GET /v1/models/{{id}}; GET /health and GET /metrics are for operators.",
                Untrusted(path)
            ),
            ProxyError::MethodNotAllowed { allow } => {
                format!("Method not allowed for this route; it accepts {allow}.")
            }
            ProxyError::PayloadTooLarge { limit } => {
                format!("Request body is larger than the limit of {limit} bytes.")
            }
            ProxyError::UnsupportedMediaType => {
                "Request body must be JSON (content-type: application/json).".to_owned()
            }
            ProxyError::UnsupportedEncoding { encoding } => format!(
                "Compressed request bodies are not accepted (Content-Encoding: {}); send the JSON uncompressed.",
                Untrusted(encoding)
            ),
            ProxyError::HeadersTooLarge { count, bytes } => format!(
                "The request headers are too large ({count} fields, {bytes} bytes; the limits \
                 are 128 fields and 65536 bytes)."
            ),
            ProxyError::RequestTimeout { after } => format!(
                "The request body did not arrive within {} s (BODY_READ_TIMEOUT).",
                after.as_secs_f64()
            ),
            ProxyError::ContextLengthExceeded { size, limit } => format!(
                "The conversation is too long for the upstream: its request would be {size} bytes, \
                 over the limit of {limit} bytes (UPSTREAM_BODY_LIMIT; Qwen's anti-bot protection \
                 challenges larger requests). Shorten or summarise the history."
            ),
            ProxyError::InvalidApiKey => {
                "Missing or invalid API key: send `Authorization: Bearer <key>` \
                 with one of the keys configured in API_KEYS."
                    .to_owned()
            }
            ProxyError::InvalidAdminKey => {
                "Missing or invalid admin key: send `Authorization: Bearer <ADMIN_KEY>`, \
                 or sign in to the console at /admin/."
                    .to_owned()
            }
            ProxyError::NotSignedIn { refusal } => {
                let why = match refusal {
                    SessionRefusal::Expired => "Your console session has expired",
                    SessionRefusal::SignedOut => "You have signed out",
                    // Malformed, or signed with an earlier ADMIN_KEY.
                    SessionRefusal::Invalid => "Your console session is not valid (ADMIN_KEY may have changed)",
                };
                format!("{why}: sign in again at /admin/.")
            }
            ProxyError::CsrfTokenInvalid => {
                "This console action came without its session's CSRF token \
                 (the X-CSRF-Token header); reload the console and try again."
                    .to_owned()
            }
            ProxyError::AuthThrottled { retry_after_secs } => format!(
                "Too many invalid keys from this address; try again in {retry_after_secs} s."
            ),
            ProxyError::UpstreamCoolingDown { retry_after_secs } => format!(
                "Qwen's anti-bot protection challenged the account(s) recently; the proxy pauses \
                 their upstream calls for another {retry_after_secs} s (CHALLENGE_COOLDOWN) instead \
                 of deepening the block. If it persists, refresh the accounts' cookies from a browser."
            ),
            ProxyError::RateLimited { decision } => format!(
                "Rate limit reached for this client; retry in {} s.",
                decision.retry_after_secs()
            ),
            ProxyError::Overloaded => {
                "The proxy is at its concurrent stream limit (MAX_CONCURRENT_STREAMS); retry shortly."
                    .to_owned()
            }
            ProxyError::ShuttingDown => "The proxy is shutting down; retry on another instance.".to_owned(),
            ProxyError::ConversationBusy => {
                "Other requests of this conversation are still running; retry when they finish."
                    .to_owned()
            }
            ProxyError::UploadsPaused { retry_after_secs } => format!(
                "The conversation is too long for one Qwen request and has to be sent with its \
                 earlier part as an attached document, but Qwen's document parsing refuses the \
                 account for now (its own anti-bot check or rate limit); retry in \
                 {retry_after_secs} s."
            ),
            ProxyError::ChatLimit { retry_after_secs } => format!(
                "This conversation's upstream chats failed as often within the last minute as \
                 CHATS_PER_CONVERSATION_PER_MINUTE allows (each is one more chat in the Qwen \
                 account and a step towards its anti-bot challenge); retry in {retry_after_secs} s."
            ),
            ProxyError::AccountsBusy { retry_after_secs } => format!(
                "Every Qwen account is at its limit of turns in flight or its pacing interval; \
                 retry in {retry_after_secs} s (or add accounts to QWEN_ACCOUNTS_FILE)."
            ),
            ProxyError::NoUsableAccount { summary, .. } => format!(
                "No Qwen account can take requests ({summary}). GET /health or the admin API \
                 shows each account's state and reason."
            ),
            ProxyError::Internal(m) => format!("Internal proxy error: {m}"),
            ProxyError::Upstream(e) => {
                let mut m = Self::upstream_message(e);
                if e.repeated && e.refuses_the_request() {
                    m.push_str(" The same request failed the same way; sending it again will not help.");
                } else if e.repeated {
                    m.push_str(&format!(
                        " It failed the same way again when the proxy tried a fresh chat; try again in {} s.",
                        REPEATED_WAIT.as_secs()
                    ));
                }
                m
            }
        }
    }

    /// What an upstream failure says to the client.
    fn upstream_message(e: &UpstreamError) -> String {
        use UpstreamClass as C;
        let d = &e.detail;
        match e.class {
                    C::RateLimited => match e.retry_after {
                        Some(t) => format!(
                            "The Qwen account hit its usage limit ({d}); try again in about {} minutes.",
                            t.as_secs().div_ceil(60)
                        ),
                        None => format!("The Qwen account hit a usage limit ({d})."),
                    },
                    C::AuthFailed => format!(
                        "Qwen rejected the proxy's credentials ({d}). Refresh QWEN_COOKIES with the \
                         Cookie header (including token=…) of a logged-in chat.qwen.ai browser session."
                    ),
                    C::Forbidden => format!(
                        "Qwen refused the account ({d}). Check the account in a browser and refresh QWEN_COOKIES."
                    ),
                    C::Challenge => format!(
                        "Qwen's anti-bot protection challenged the request ({d}). Wait a few minutes; \
                         if it persists, refresh QWEN_COOKIES, QWEN_BX_UA and QWEN_TOKEN from a browser."
                    ),
                    C::Overloaded => format!("Qwen is overloaded or unavailable ({d}). Try again shortly."),
                    C::ChatInProgress => format!("The Qwen chat is busy with another generation ({d})."),
                    C::ParentNotFound | C::ChatNotFound => {
                        format!("Qwen lost the conversation state ({d}).")
                    }
                    C::InvalidInput => format!("Qwen rejected the input ({d})."),
                    C::Rejected => format!(
                        "Qwen refused the request as malformed ({d}); sending it again will not \
                         change that. If every request fails this way, check the account with \
                         `qwen-proxy check`."
                    ),
                    C::ContentFilter => format!("Qwen's content moderation blocked the request ({d})."),
                    C::ServerError => format!("Qwen returned an error ({d})."),
                    C::EmptyStream => format!("Qwen returned no answer ({d})."),
                    C::Truncated => format!("Qwen's answer was cut off ({d})."),
                    C::Timeout => format!("Qwen did not respond in time ({d})."),
                    C::Connect => format!("Could not reach Qwen ({d})."),
                    C::Protocol => format!("Qwen sent an unexpected response ({d})."),
        }
    }

    /// The headers that go with this error's response: `Retry-After`, `x-should-retry`,
    /// `WWW-Authenticate`, `Allow`, `x-ratelimit-*`.
    pub fn write_headers(&self, h: &mut HeaderMap) {
        if let Some(secs) = self.retry_after() {
            h.insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        h.insert(
            "x-should-retry",
            HeaderValue::from_static(if self.client_should_retry() {
                "true"
            } else {
                "false"
            }),
        );
        match self {
            ProxyError::InvalidApiKey => {
                h.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ProxyError::MethodNotAllowed { allow } => {
                h.insert(ALLOW, HeaderValue::from_static(allow));
            }
            ProxyError::RateLimited { decision } => decision.write_headers(h),
            _ => {}
        }
    }

    /// A refused or throttled key: logged at debug level (request and refusal alike).
    pub fn is_key_refusal(&self) -> bool {
        matches!(
            self,
            ProxyError::InvalidApiKey
                | ProxyError::InvalidAdminKey
                | ProxyError::NotSignedIn { .. }
                | ProxyError::CsrfTokenInvalid
                | ProxyError::AuthThrottled { .. }
        )
    }

    /// Log and count an error once (also errors that happen mid-stream). Three kinds, so
    /// an operator can tell them apart: the upstream failed (WARN, whatever the status —
    /// an expired credential or a spent quota is the operator's problem, not the
    /// client's), the proxy failed (WARN), or the client's request was refused (INFO).
    pub fn report(&self, metrics: &Metrics) {
        let status = self.status().as_u16();
        let error = self.metric_label();
        if self.is_key_refusal() {
            // Guessing is counted (`auth_failures_total`) and logged in aggregate by the auth
            // layer: one line per refusal would let a guesser fill the disk.
            tracing::debug!(status, error, "request rejected");
        } else if let Some(class) = self.upstream_class() {
            metrics
                .upstream_errors
                .with_label_values(&[class.label()])
                .inc();
            tracing::warn!(status, error, detail = %self, "upstream failure");
        } else if status >= 500 || matches!(self, ProxyError::UpstreamCoolingDown { .. }) {
            tracing::warn!(status, error, detail = %self, "request failed");
        } else {
            tracing::info!(status, error, detail = %self, "request rejected");
        }
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message())
    }
}

impl std::error::Error for ProxyError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_carries_retry_after_from_num_hours() {
        let e: ProxyError = UpstreamError::new(UpstreamClass::RateLimited, "limit")
            .with_retry_after(Some(Duration::from_secs(4 * 3600)))
            .into();
        assert_eq!(e.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(e.retry_after(), Some(14_400));
        let mut h = HeaderMap::new();
        e.write_headers(&mut h);
        assert_eq!(h[RETRY_AFTER], "14400");
        assert_eq!(h["x-should-retry"], "false");
    }

    #[test]
    fn every_class_has_a_distinct_code_or_status() {
        use UpstreamClass as C;
        let classes = [
            C::RateLimited,
            C::AuthFailed,
            C::Forbidden,
            C::Challenge,
            C::Overloaded,
            C::InvalidInput,
            C::ContentFilter,
            C::Rejected,
            C::ServerError,
            C::EmptyStream,
            C::Truncated,
            C::Timeout,
            C::Connect,
            C::Protocol,
        ];
        let mut seen = std::collections::HashSet::new();
        for c in classes {
            let e = ProxyError::upstream(c, "x");
            assert!(seen.insert((e.status(), e.code())), "{c:?} collides");
            assert_ne!(e.status(), StatusCode::OK);
        }
    }
}
