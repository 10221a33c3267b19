//! The Qwen simulator: a faithful stand-in for chat.qwen.ai (`qwen-protocol.md` §9), used
//! in-process by tests and benchmarks, standalone as `qwen-proxy sim`, and as the `--demo`
//! upstream. Scenarios are chosen per completion by `@@sim:` directives (`scenario.rs`);
//! frames are written as captured (`wire.rs`); streams are poll-driven scripts
//! (`script.rs`, `body.rs`); `handlers.rs` holds the endpoints and validation, `auth.rs`
//! the sign-in and refresh endpoints (chat.qwen.ai's v1 and auth.qwen.ai's v2), `control.rs`
//! the per-account penalty endpoints for tests (`/__sim/accounts/{key}/…`), `uploads.rs`
//! the file endpoints and the object storage (their state and rules in `files.rs`),
//! `t2i.rs` image generation and `images.rs` the pictures' CDN (drawn by `png.rs`).

pub mod accounts;
pub mod answer;
mod auth;
mod body;
pub mod catalogue;
mod control;
mod files;
pub mod habits;
pub mod handlers;
mod images;
mod penalties;
mod png;
pub mod scenario;
pub mod script;
mod sessions;
mod signin_wall;
mod state;
pub mod t2i;
pub mod tools;
mod uploads;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use handlers::SimService;
use state::SimState;

/// How strictly request headers are checked (the upstream's WAF eras of §9.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Gate {
    None,
    /// `x-request-id` required.
    Y2026M06,
    /// + `version`, the cookie token, `sec-fetch-*` and `timezone`.
    Y2026M09,
    /// + `bx-ua` and `bx-umidtoken`.
    Y2026M10,
}

impl std::str::FromStr for Gate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Gate::None),
            "2026-06" => Ok(Gate::Y2026M06),
            "2026-09" => Ok(Gate::Y2026M09),
            "2026-10" => Ok(Gate::Y2026M10),
            _ => Err(format!(
                "unknown header gate `{s}` (none, 2026-06, 2026-09, 2026-10)"
            )),
        }
    }
}

/// Whether a stale `bx-ua` header draws the challenge (`--bx-ua-gate`). The browser front
/// end no longer sends the bx-* headers; a client replaying an old copy stands out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BxUaGate {
    /// bx-* headers are not looked at (beyond what `Gate::Y2026M10` requires).
    #[default]
    Ignored,
    /// A `bx-ua` whose value is not one of `SimConfig::fresh_bx_ua` gets the punish JSON
    /// (completions and `chats/new`); no `bx-ua` at all passes.
    Stale,
}

impl std::str::FromStr for BxUaGate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(BxUaGate::Ignored),
            "stale" => Ok(BxUaGate::Stale),
            _ => Err(format!("unknown bx-ua gate `{s}` (none, stale)")),
        }
    }
}

/// Timing knobs (defaults are fast, for tests; benchmarks and the demo set their own).
#[derive(Debug, Clone)]
pub struct SimTiming {
    /// Latency of `chats/new`.
    pub chat_latency: Duration,
    /// Time to the first content frame.
    pub ttft: Duration,
    /// Delay between frames.
    pub frame_delay: Duration,
    /// Characters of answer per frame.
    pub chunk_chars: usize,
    /// Prefill: added to the time to first token per 1,000 prompt tokens the chat has not
    /// read yet — a fresh chat's whole folded history, a continued turn's new messages only
    /// (the upstream keeps the chat's context; [`PREFILL_PER_1K_TOKENS`] is the cited rate).
    pub prefill_per_1k_tokens: Duration,
}

/// The prefill rate of `qwen-proxy sim` and `--demo`: 30 ms per 1,000 uncached prompt
/// tokens. No source measures chat.qwen.ai itself; this is the middle of what is published
/// for hosted and self-hosted Qwen models of its class — qwen-max through a relay, ≈27 ms
/// per 1k (380 ms at 20 prompt tokens, 1,240 ms at 32K; HolySheep, 2026-04), and
/// Qwen3-235B-A22B on a whole 8×H100 node under vLLM, 28–50 ms per 1k (GPUStack performance
/// lab). Qwen Cloud's latency guide agrees that input tokens weigh far less than output
/// tokens ("roughly 1-5% improvement per 50% reduction"). BENCHMARKS.md §6 has the sources.
pub const PREFILL_PER_1K_TOKENS: Duration = Duration::from_millis(30);

/// How long the simulated generator takes to draw a picture (t2i) in `qwen-proxy sim` and
/// `--demo`: 8 s, an assumption (no source times chat.qwen.ai's image generation). Tests
/// use [`SimConfig::image_delay`]'s default.
pub const IMAGE_GENERATION_DELAY: Duration = Duration::from_secs(8);

impl Default for SimTiming {
    fn default() -> Self {
        Self {
            chat_latency: Duration::ZERO,
            ttft: Duration::ZERO,
            frame_delay: Duration::ZERO,
            chunk_chars: 4,
            prefill_per_1k_tokens: Duration::ZERO,
        }
    }
}

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub timing: SimTiming,
    /// How long a chat stays locked after a generation ("The chat is in progress!").
    pub linger: Duration,
    /// The anti-bot body-size gate (128 KiB upstream).
    pub body_limit: usize,
    pub gate: Gate,
    /// Strict mode: known accounts only, expiring tokens, per-account quota.
    pub accounts: Option<Arc<accounts::Accounts>>,
    /// Listen backlog: the simulator must never be what a benchmark's herd overflows.
    pub backlog: u32,
    /// Speak HTTP/1.1 only (the real upstream speaks HTTP/2 too; this is for testing the
    /// proxy's fallback when a plain-HTTP upstream does not).
    pub http1_only: bool,
    /// Write the 401 code in lower case (`unauthorized`), as peers report the upstream
    /// doing since 2026-09; `Unauthorized` before.
    pub lowercase_codes: bool,
    /// Sign-ins allowed in the sliding six-minute window before the WAF page.
    pub signin_limit: usize,
    pub bx_ua_gate: BxUaGate,
    /// `bx-ua` values that still pass `BxUaGate::Stale` (`--fresh-bx-ua`, repeatable).
    pub fresh_bx_ua: Vec<String>,
    /// `--habits SEED`: the simulated model writes every completion's calls with a real
    /// model's habits (`habits.rs`), picked from this seed and the prompt.
    pub habits: Option<u64>,
    /// Time a t2i completion takes to draw its picture: between its empty `image_gen` frame
    /// and the one with the URL (10 ms; [`IMAGE_GENERATION_DELAY`] is the realistic one).
    pub image_delay: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            timing: SimTiming::default(),
            linger: Duration::from_millis(300),
            body_limit: 128 * 1024,
            gate: Gate::Y2026M09,
            accounts: None,
            backlog: crate::server::DEFAULT_LISTEN_BACKLOG,
            http1_only: false,
            lowercase_codes: false,
            signin_limit: signin_wall::DEFAULT_SIGNIN_LIMIT,
            bx_ua_gate: BxUaGate::Ignored,
            fresh_bx_ua: Vec::new(),
            habits: None,
            image_delay: Duration::from_millis(10),
        }
    }
}

/// A running simulator. Dropping the handle stops it.
pub struct Simulator {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Simulator {
    /// Bind `addr` (use port 0 for an ephemeral port) and serve in the background.
    pub async fn start(addr: SocketAddr, config: SimConfig) -> std::io::Result<Self> {
        let listener = crate::server::bind(addr, config.backlog)?;
        Ok(Self::serve(listener, config))
    }

    pub fn serve(listener: TcpListener, config: SimConfig) -> Self {
        let addr = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
        let http1_only = config.http1_only;
        let service = SimService {
            config: Arc::new(config),
            state: Arc::new(SimState::default()),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(crate::server::serve(
            listener,
            service,
            crate::server::Shutdown {
                signal: async {
                    let _ = stopped.await;
                },
                // Nothing to wait for: connections get the grace period in phase 2.
                idle: || std::future::ready(()),
                grace: Duration::from_secs(1),
                grace_over: || {},
            },
            crate::server::ConnOptions {
                accepted: None,
                header_read_timeout: Duration::from_secs(30),
                http1_only,
            },
        ));
        Simulator {
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stop accepting and wait for the server task.
    pub async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}
