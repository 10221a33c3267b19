//! Shared application state: built once, behind `Arc`, cloned into every request.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::config::Config;
use crate::qwen::client::QwenClient;
use crate::qwen::models::ModelCache;

#[derive(Debug)]
pub struct AppState {
    pub config: Arc<Config>,
    pub client: QwenClient,
    pub models: ModelCache,
    pub started: Instant,
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
        let client = QwenClient::new(&config.upstream);
        let models = ModelCache::new(client.clone(), config.models_cache_duration);
        Arc::new(AppState {
            config: Arc::new(config),
            client,
            models,
            started: Instant::now(),
            upstream_probe: Mutex::new(None),
        })
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
