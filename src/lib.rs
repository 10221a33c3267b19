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
pub mod conversation;
pub mod error;
pub(crate) mod fetch;
pub(crate) mod forwarded;
pub(crate) mod identity;
pub(crate) mod layers;
pub(crate) mod media;
pub mod metrics;
pub mod qwen;
pub(crate) mod rate;
pub mod redis;
pub(crate) mod router;
pub(crate) mod routes;
pub mod server;
pub mod sim;
pub(crate) mod stack;
pub mod tools;
pub mod translate;
pub(crate) mod turn;
pub mod untrusted;

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
    /// rest with an in-band error event.
    pub async fn serve(self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let header_read_timeout = self.state.config.header_read_timeout;
        let (draining, idle, aborting) =
            (self.state.clone(), self.state.clone(), self.state.clone());
        let housekeeping = self.state.spawn_housekeeping();
        let renewals = self.state.accounts.spawn_renewals();
        let shutdown = server::Shutdown {
            signal: async move {
                shutdown.await;
                draining.start_draining();
            },
            idle: move || async move { idle.slots.idle().await },
            grace: self.state.config.shutdown_grace,
            grace_over: move || aborting.abort_streams(),
        };
        let options = server::ConnOptions {
            header_read_timeout,
            http1_only: false,
        };
        server::serve(listener, self.service, shutdown, options).await;
        housekeeping.abort();
        renewals.abort();
    }
}
