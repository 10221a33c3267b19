//! qwen-proxy: an OpenAI-compatible API in front of the Qwen chat web service.
//!
//! The request path (README "Architecture" maps it to files): `server` (accept loop) →
//! `stack` (tower layers: `layers::*`; `layers::route` resolves the route from the table in
//! `routes`) → `router` → a chat stack per client API (concurrency → validate → retry) →
//! `chat` (the core, written once over `turn::ClientApi`: `turn::plan` plans the upstream
//! turn, `conversation` decides continue-or-fold, `qwen::client` sends it) → the stream:
//! `qwen::sse` decoder → `qwen::scan` frames → `translate::state` translator →
//! `translate::stage` stages (function calling, output limits, the conversation transcript)
//! → the client API's encoder (`api::openai::encoder`), all inside one poll-driven
//! `translate::body::TranslateBody`, whose lifecycle reports one `Outcome` to
//! `chat::end::TurnEnd`.
//!
//! The layering (no module uses one to its right; `tests/architecture.rs` checks it):
//! `qwen` → `translate`/`tools` → `turn` → `conversation` → `chat` → `api` → `router`.
//! `turn` is the request the engine works on, whatever API it came in by; `api` holds the
//! client APIs (their parsers, encoders, bodies and error shapes).

#![forbid(unsafe_code)]
#![warn(unreachable_pub)]

pub mod accounts;
pub(crate) mod accounts_file;
pub(crate) mod admin;
pub mod api;
pub(crate) mod app;
pub(crate) mod backoff;
pub(crate) mod body;
pub mod chat;
pub mod chat_pool;
pub mod cli;
pub mod common;
pub mod config;
pub(crate) mod console;
pub mod conversation;
pub mod error;
pub(crate) mod fetch;
pub(crate) mod forwarded;
pub(crate) mod identity;
pub(crate) mod layers;
pub mod logs;
pub(crate) mod media;
pub mod metrics;
pub mod qwen;
pub(crate) mod rate;
pub mod redis;
pub(crate) mod request_log;
pub(crate) mod router;
pub(crate) mod routes;
pub mod server;
pub mod sim;
pub(crate) mod stack;
pub mod tools;
pub mod translate;
pub(crate) mod turn;
pub mod untrusted;
pub mod usage;
pub mod workers;

/// Entry points for the fuzz targets (`fuzz/`) into crate-private parsers. Not an API: no
/// stability, not for other callers.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::accounts_file::{AccountSpec, Login};

    /// The accounts file's parser (`QWEN_ACCOUNTS_FILE`): the specs, or every problem.
    pub fn parse_accounts_file(text: &str) -> Result<Vec<AccountSpec>, Vec<String>> {
        crate::accounts_file::parse(text)
    }
}

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::Instrument;

pub use app::AppState;
pub use config::Config;

/// The proxy: shared state plus the service stack built from it.
pub struct App {
    pub state: Arc<AppState>,
    service: stack::HttpService,
}

impl App {
    pub fn new(config: Config) -> Self {
        let state = AppState::new(config);
        let service = stack::build(state.clone());
        App { state, service }
    }

    pub fn service(&self) -> stack::HttpService {
        self.service.clone()
    }

    /// Serve until `shutdown` resolves; then report `draining` on `/health` and refuse new
    /// completions (503) while open ones finish, for at most `SHUTDOWN_GRACE`; end the
    /// rest with an in-band error event. All on the caller's runtime.
    pub async fn serve(self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        self.serve_on_workers(listener, Vec::new(), shutdown).await;
    }

    /// [`App::serve`] on one single-threaded runtime per listener (`crate::workers`,
    /// `server::bind_each`): `first` on the caller's runtime (which also runs the background
    /// work), each of `others` on a thread of its own. Returns when every worker has
    /// finished. The upstream pools are made per worker runtime of the configuration
    /// (`Workers::runtimes`): give as many listeners.
    pub async fn serve_on_workers(
        self,
        first: TcpListener,
        others: Vec<std::net::TcpListener>,
        shutdown: impl Future<Output = ()>,
    ) {
        let housekeeping = self.state.spawn_housekeeping();
        let renewals = self.state.accounts.spawn_renewals();
        // Shutdown begins here and reaches the other workers through `stop`.
        let (stop, stopped) = watch::channel(false);
        let others = {
            let (state, service) = (self.state.clone(), self.service.clone());
            workers::spawn(others, move |listener| {
                let mut stopped = stopped.clone();
                let signal = async move {
                    let _ = stopped.wait_for(|stop| *stop).await;
                };
                serve_worker(state.clone(), service.clone(), listener, signal)
            })
        };
        let _ = self.state.runtimes.set(others.handles.clone());
        let signal = async move {
            shutdown.await;
            stop.send_replace(true);
        };
        serve_worker(self.state.clone(), self.service, first, signal).await;
        others.join().await;
        housekeeping.abort();
        renewals.abort();
        // The last usage increments (Redis only; bounded by REDIS_TIMEOUT a day in use).
        self.state.usage.flush().await;
    }
}

/// One worker's accept loop until `signal`, then the two-phase shutdown (`server::serve`).
async fn serve_worker(
    state: Arc<AppState>,
    service: stack::HttpService,
    listener: TcpListener,
    signal: impl Future<Output = ()>,
) {
    let (draining, idle, aborting) = (state.clone(), state.clone(), state.clone());
    let shutdown = server::Shutdown {
        signal: async move {
            signal.await;
            draining.start_draining();
        },
        idle: move || async move { idle.slots.idle().await },
        grace: state.config.shutdown_grace,
        grace_over: move || aborting.abort_streams(),
    };
    let worker = workers::current().unwrap_or(0);
    let options = server::ConnOptions {
        accepted: Some(
            state
                .metrics
                .connections
                .with_label_values(&[&worker.to_string()]),
        ),
        header_read_timeout: state.config.header_read_timeout,
        http1_only: false,
    };
    // The server's own lines (connections closed, grace over) say which worker.
    server::serve(listener, service, shutdown, options)
        .instrument(tracing::info_span!("worker", index = worker))
        .await;
}
