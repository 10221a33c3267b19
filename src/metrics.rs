//! Prometheus metrics in the project's own `Registry` (never the global default, so tests can
//! build many apps in one process). Every family is registered once, here; layers and the
//! core get an `Arc<Metrics>` and record through it. Label values are low-cardinality by
//! construction: route templates, status codes, resolved model ids, error classes.

use std::sync::Arc;

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    /// Client connections accepted, per worker thread (`WORKERS`): how evenly they spread.
    pub connections: IntCounterVec,
    pub http_duration: HistogramVec,
    pub ttft: HistogramVec,
    pub stream_duration: HistogramVec,
    pub streams: IntCounterVec,
    pub tokens: IntCounterVec,
    pub upstream_requests: IntCounterVec,
    pub upstream_errors: IntCounterVec,
    pub upstream_retries: IntCounter,
    pub chats_per_request: Histogram,
    pub active_streams: IntGauge,
    /// Tasks alive on the runtime (set when scraped): flat under steady traffic, or a leak.
    pub alive_tasks: IntGauge,
    pub rate_limited: IntCounter,
    pub auth_failures: IntCounterVec,
    pub tool_calls: IntCounterVec,
    pub upstream_cooldown: IntGauge,
    pub load_shed: IntCounter,
    pub conversation_turns: IntCounterVec,
    pub conversation_fallbacks: IntCounterVec,
    pub sessions_live: IntGauge,
    pub session_store_up: IntGauge,
    pub chat_busy_window: Gauge,
    pub prefill_per_kib: Gauge,
    pub chats_left: IntCounterVec,
    /// Files sent upstream (documents for long contexts, images), by kind and outcome:
    /// uploaded, cached, failed, paused.
    pub uploads: IntCounterVec,
    /// Bytes uploaded, by kind.
    pub upload_bytes: IntCounterVec,
    /// Turns sent with part of their fold in attached documents.
    pub offloaded_turns: IntCounter,
    /// Image addresses of requests, by outcome: fetched, cached, refused (the fetch policy),
    /// failed (no answer, an error status, not an image, too large).
    pub image_fetches: IntCounterVec,
    /// Pictures `/v1/images/generations` answered with.
    pub images_generated: IntCounter,
    pub chats_deleted: IntCounterVec,
    pub chat_pool: IntCounterVec,
    pub accounts: IntGaugeVec,
    pub account_cooldowns: IntCounterVec,
    pub account_signins: IntCounterVec,
    pub account_turns: IntCounterVec,
}

/// Buckets from 5 ms to ~2 min: first tokens of thinking models take seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0,
];

impl Metrics {
    // Start-up only: the metric definitions are constants, so a failure here is a bug that
    // every test run would hit, never something input can reach.
    #[allow(clippy::expect_used)]
    pub fn new() -> Arc<Self> {
        let registry = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("registered once");
            c
        };
        let histogram = |name: &str, help: &str, labels: &[&str]| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
                labels,
            )
            .expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("registered once");
            h
        };
        let gauge = |name: &str, help: &str| {
            let g = Gauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("registered once");
            g
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("registered once");
            c
        };
        let metrics = Metrics {
            http_requests: counter_vec(
                "http_requests_total",
                "HTTP requests by route template, method and status.",
                &["route", "method", "status"],
            ),
            connections: counter_vec(
                "http_connections_accepted_total",
                "Client connections accepted, by worker thread (WORKERS).",
                &["worker"],
            ),
            http_duration: histogram(
                "http_request_duration_seconds",
                "Time from request to the end of the response body.",
                &["route"],
            ),
            ttft: histogram(
                "chat_time_to_first_token_seconds",
                "Time from request to the first content or reasoning byte sent to the client, by upstream model, streaming and client API (chat, messages, responses, images).",
                &["model", "stream", "api"],
            ),
            stream_duration: histogram(
                "chat_stream_duration_seconds",
                "Duration of streamed chat responses, by how they ended.",
                &["outcome"],
            ),
            streams: counter_vec(
                "chat_streams_total",
                "Streamed responses by outcome (completed, error, cancelled) and client API.",
                &["outcome", "api"],
            ),
            tokens: counter_vec(
                "chat_tokens_total",
                "Tokens reported by the upstream, by model, kind (prompt, completion, reasoning) and client API.",
                &["model", "kind", "api"],
            ),
            upstream_requests: counter_vec(
                "upstream_requests_total",
                "Requests to the Qwen upstream by endpoint and outcome.",
                &["endpoint", "outcome"],
            ),
            upstream_errors: counter_vec(
                "upstream_errors_total",
                "Upstream failures by error class (qwen-protocol §6).",
                &["class"],
            ),
            upstream_retries: counter("upstream_retries_total", "Retried upstream attempts."),
            chats_per_request: {
                let h = Histogram::with_opts(
                    HistogramOpts::new(
                        "upstream_chats_per_request",
                        "Upstream chats one chat-completions request opened (0: it continued a chat), retries and fallbacks included.",
                    )
                    .buckets(vec![0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0]),
                )
                .expect("valid metric");
                registry
                    .register(Box::new(h.clone()))
                    .expect("registered once");
                h
            },
            active_streams: {
                let g = IntGauge::new("chat_active_streams", "Streamed chat responses in flight.")
                    .expect("valid metric");
                registry.register(Box::new(g.clone())).expect("registered once");
                g
            },
            alive_tasks: {
                let g = IntGauge::new(
                    "tokio_alive_tasks",
                    "Tasks alive on the server's runtime when scraped (a leak shows as growth).",
                )
                .expect("valid metric");
                registry.register(Box::new(g.clone())).expect("registered once");
                g
            },
            rate_limited: counter(
                "rate_limited_requests_total",
                "Requests rejected by the proxy's own rate limiter.",
            ),
            auth_failures: counter_vec(
                "auth_failures_total",
                "Requests refused for their key: invalid_key (401), throttled (429 while the address is locked out after repeated failures); for the operators' key (ADMIN_KEY, on /admin and /health): invalid_admin_key, admin_throttled; the console's changes without their session's CSRF token: csrf_token_invalid.",
                &["outcome"],
            ),
            tool_calls: counter_vec(
                "tool_calls_total",
                "Function-calling emulation: calls emitted to clients, blocks with a name the request does not offer (unknown_name) or that did not read (invalid), answers asked again with a hint (retried), and bad calls that could not be asked again, where the answer ended with an explanation (abandoned).",
                &["outcome"],
            ),
            upstream_cooldown: {
                let g = IntGauge::new(
                    "upstream_challenge_cooldown_seconds",
                    "Seconds left in the pause of upstream calls after an anti-bot challenge (0 when none).",
                )
                .expect("valid metric");
                registry.register(Box::new(g.clone())).expect("registered once");
                g
            },
            load_shed: counter(
                "load_shed_requests_total",
                "Requests rejected because MAX_CONCURRENT_STREAMS was reached.",
            ),
            conversation_turns: counter_vec(
                "conversation_turns_total",
                "Chat turns by how they reached the upstream: continued (same chat), new (fresh chat), fallback (fresh chat after a lost one), account (fresh chat on another account: the chat's account is out of rotation, or the turn moved off its account), busy (of the continued turns, those sent to a fresh chat instead because the chat would stay busy longer than a new chat takes).",
                &["mode"],
            ),
            conversation_fallbacks: counter_vec(
                "conversation_fallbacks_total",
                "Remembered chats that were gone upstream or whose account is out of rotation (then continued in a fresh chat), by reason.",
                &["reason"],
            ),
            sessions_live: {
                let g = IntGauge::new("conversation_sessions", "Live conversation sessions in the memory store.")
                    .expect("valid metric");
                registry.register(Box::new(g.clone())).expect("registered once");
                g
            },
            session_store_up: {
                let g = IntGauge::new(
                    "session_store_up",
                    "1 when the session store (Redis) answers, 0 while the local fallback is in use.",
                )
                .expect("valid metric");
                registry.register(Box::new(g.clone())).expect("registered once");
                g.set(1);
                g
            },
            chat_busy_window: gauge(
                "chat_busy_window_seconds",
                "How long the upstream is estimated to keep a chat busy after an answer (learned from busy answers).",
            ),
            prefill_per_kib: gauge(
                "chat_prefill_seconds_per_kib",
                "What the upstream's first token is estimated to cost per KiB of prompt the chat has not read (learned from the time to first token of turns of different sizes).",
            ),
            uploads: counter_vec(
                "upstream_uploads_total",
                "Files a turn attached, by kind (document: the older part of a long context; image: an image of the messages) and outcome: uploaded (granted, stored and, for a document, parsed), cached (the account had uploaded the same content), failed (a step refused it), paused (the account's parse step refused it for now).",
                &["kind", "outcome"],
            ),
            upload_bytes: counter_vec(
                "upstream_upload_bytes_total",
                "Bytes of files uploaded, by kind (document, image).",
                &["kind"],
            ),
            offloaded_turns: counter(
                "conversation_offloaded_turns_total",
                "Turns too large for one upstream request that were sent with their older part in attached documents.",
            ),
            image_fetches: counter_vec(
                "image_fetches_total",
                "Image addresses in requests the proxy fetched, by outcome: fetched, cached (fetched within the last 10 minutes), refused (the fetch policy: scheme, a forbidden destination, a bad URL), failed (no answer in time, an error status, too large, not an image).",
                &["outcome"],
            ),
            images_generated: counter(
                "images_generated_total",
                "Pictures drawn upstream and returned by /v1/images/generations.",
            ),
            chats_left: counter_vec(
                "conversation_chats_left_total",
                "Upstream chats a conversation left behind in the account for a fresh one: busy (waiting for it would have taken longer), account (its account was taken out of rotation) or hint (a tool-call retry of a new chat's answer).",
                &["reason"],
            ),
            accounts: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "upstream_accounts",
                        "Upstream accounts by state (ready, signing_in, cooling, quarantined, invalid, forbidden, disabled).",
                    ),
                    &["state"],
                )
                .expect("valid metric");
                registry.register(Box::new(g.clone())).expect("registered once");
                g
            },
            account_cooldowns: counter_vec(
                "upstream_account_cooldowns_total",
                "Accounts paused or taken out, by reason: rate_limited (daily quota), challenge (quarantine), chat_challenge (every account paused, nobody blamed), forbidden (403), invalid (credentials refused), disabled (operator).",
                &["reason"],
            ),
            account_signins: counter_vec(
                "upstream_account_signins_total",
                "Token renewals by kind: signin and refresh (succeeded), refused (credentials refused: the account becomes invalid), failed (passing: tried again later).",
                &["kind"],
            ),
            account_turns: counter_vec(
                "upstream_account_turns_total",
                "Upstream turns started, by account name, and turns moved off an account (moved=\"true\"): a quota, challenge or ban before the answer began.",
                &["account", "moved"],
            ),
            chats_deleted: counter_vec(
                "upstream_chats_deleted_total",
                "Upstream chats of expired sessions deleted (CHAT_CLEANUP=delete), by outcome: deleted, failed, skipped (the owning account is gone, quarantined, refused or disabled), dropped (left upstream: more chats expired than 2 a second can delete, beyond a backlog of 10,000).",
                &["outcome"],
            ),
            chat_pool: counter_vec(
                "upstream_chat_pool_total",
                "Chats made ahead (CHAT_POOL_SIZE), by event: hit (a new chat's turn took a ready chat), miss (none was ready: made while the turn waited), made (made ahead), expired (unused for CHAT_POOL_TTL: taken out), deleted (an expired one deleted upstream, CHAT_CLEANUP=delete), stale (unknown upstream when taken, or dropped with it).",
                &["event"],
            ),
            registry,
        };
        #[cfg(target_os = "linux")]
        {
            let pc = prometheus::process_collector::ProcessCollector::for_self();
            let _ = metrics.registry.register(Box::new(pc));
        }
        Arc::new(metrics)
    }

    /// The Prometheus text exposition of every family.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 * 1024);
        // Encoding our own registry into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }

    /// Record one upstream call.
    pub fn upstream(&self, endpoint: &str, outcome: &str) {
        self.upstream_requests
            .with_label_values(&[endpoint, outcome])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_render_and_instances_are_independent() {
        let a = Metrics::new();
        let b = Metrics::new();
        a.upstream_retries.inc();
        a.tokens
            .with_label_values(&["qwen3.7-plus", "prompt", "chat"])
            .inc_by(7);
        let text = String::from_utf8(a.render()).unwrap();
        assert!(text.contains("upstream_retries_total 1"));
        assert!(text
            .contains("chat_tokens_total{api=\"chat\",kind=\"prompt\",model=\"qwen3.7-plus\"} 7"));
        assert!(String::from_utf8(b.render())
            .unwrap()
            .contains("upstream_retries_total 0"));
    }
}
