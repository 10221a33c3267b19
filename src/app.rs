//! Shared application state: built once, behind `Arc`, cloned into every request.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Mutex};
use tokio::time::Instant;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::qwen::client::QwenClient;
use crate::qwen::models::ModelCache;

#[derive(Debug)]
pub struct AppState {
    pub config: Arc<Config>,
    pub client: QwenClient,
    pub models: ModelCache,
    pub metrics: Arc<Metrics>,
    pub started: Instant,
    /// Set when shutdown begins: `/health` reports `draining`.
    draining: AtomicBool,
    /// Flipped to `true` when the grace period is over: open streams end in-band.
    abort_streams: watch::Sender<bool>,
    upstream_probe: Mutex<Option<(Instant, UpstreamHealth)>>,
}

/// Result of the last upstream reachability probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamHealth {
    pub reachable: bool,
    pub latency_ms: u64,
}

/// Probes are cached so that frequent health checks never hammer the upstream.
const PROBE_TTL: Duration = Duration::from_secs(10);

impl AppState {
    pub fn new(config: Config) -> Arc<Self> {
        let metrics = Metrics::new();
        let client = QwenClient::new(&config.upstream, metrics.clone());
        let models = ModelCache::new(client.clone(), config.models_cache_duration);
        Arc::new(AppState {
            config: Arc::new(config),
            client,
            models,
            metrics,
            started: Instant::now(),
            draining: AtomicBool::new(false),
            abort_streams: watch::channel(false).0,
            upstream_probe: Mutex::new(None),
        })
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// End every open stream with an in-band error (the grace period is over).
    pub fn abort_streams(&self) {
        self.abort_streams.send_replace(true);
    }

    /// Resolves when streams must end; given to each streaming body.
    pub fn stream_abort_signal(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.abort_streams.subscribe();
        async move {
            let _ = rx.wait_for(|abort| *abort).await;
        }
    }

    /// Is the upstream reachable? (`GET /api/models`, which needs no credentials.)
    pub async fn upstream_health(&self) -> UpstreamHealth {
        let mut probe = self.upstream_probe.lock().await;
        if let Some((at, h)) = *probe {
            if at.elapsed() < PROBE_TTL {
                return h;
            }
        }
        let start = Instant::now();
        let reachable = tokio::time::timeout(Duration::from_secs(5), self.client.fetch_models())
            .await
            .is_ok_and(|r| r.is_ok());
        let h = UpstreamHealth {
            reachable,
            latency_ms: start.elapsed().as_millis() as u64,
        };
        *probe = Some((Instant::now(), h));
        h
    }
}
