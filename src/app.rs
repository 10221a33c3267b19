//! Shared application state: built once, behind `Arc`, cloned into every request.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Mutex};
use tokio::time::Instant;

use crate::accounts::{Pool, PoolSettings, ReloadSummary};
use crate::chat_pool::redis::RedisPool;
use crate::chat_pool::{ChatPool, MemoryPool, PoolStore};
use crate::config::Config;
use crate::conversation::key::fingerprint;
use crate::conversation::store::{MemoryStore, SessionStore};
use crate::conversation::{Conversations, Settings};
use crate::layers::concurrency::CompletionSlots;
use crate::metrics::Metrics;
use crate::qwen::client::QwenClient;
use crate::qwen::models::{Catalog, ModelCache};
use crate::redis::sessions::RedisStore;
use crate::redis::RedisClient;

#[derive(Debug)]
pub struct AppState {
    pub config: Arc<Config>,
    pub client: QwenClient,
    pub models: ModelCache,
    pub metrics: Arc<Metrics>,
    pub conversations: Arc<Conversations>,
    /// One slot per completion in flight (`MAX_CONCURRENT_STREAMS`); shutdown waits for
    /// all of them.
    pub slots: Arc<CompletionSlots>,
    /// The Qwen accounts: selection, health, sign-in.
    pub accounts: Arc<Pool>,
    /// Chats made ahead per account (`CHAT_POOL_SIZE`).
    pub chat_pool: Arc<ChatPool>,
    /// The shared Redis client, when `REDIS_URL` is set.
    pub redis: Option<Arc<RedisClient>>,
    /// Usage accounting: tokens and turns per day, account, client key and model.
    pub usage: Arc<crate::usage::Ledger>,
    /// The console's sign-in (with `ADMIN_KEY`).
    pub(crate) sessions: Option<Arc<crate::console::session::Sessions>>,
    /// The last requests on the completion endpoints, the live feed of new ones, and the
    /// last hour per minute (`REQUEST_LOG_SIZE`).
    pub(crate) request_log: Arc<crate::request_log::RequestLog>,
    /// Files uploaded per account (documents of long contexts, images), and parse pauses.
    pub(crate) uploads: crate::qwen::files::UploadCache,
    /// Images of requests: checked, and fetched under the fetch policy.
    pub(crate) media: Arc<crate::media::MediaResolver>,
    /// Accounts whose daily image generations are used up (image turns avoid them).
    pub(crate) image_quota: crate::accounts::ImageQuota,
    pub started: Instant,
    /// Every worker's runtime (`crate::workers`), once serving: the runtime metrics sum them.
    pub(crate) runtimes: std::sync::OnceLock<Vec<tokio::runtime::Handle>>,
    /// Set when shutdown begins: `/health` reports `draining`.
    draining: AtomicBool,
    /// Flipped to `true` with `draining`, for what waits on it (the request log's live
    /// feeds end, so they hold no connection open through the shutdown).
    drain_signal: watch::Sender<bool>,
    /// Flipped to `true` when the grace period is over: open streams end in-band.
    abort_streams: watch::Sender<bool>,
    upstream_probe: Mutex<Option<(Instant, UpstreamHealth)>>,
    /// Held while the accounts file is reloaded.
    reloading: tokio::sync::Mutex<()>,
}

/// Result of the last upstream reachability probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamHealth {
    pub reachable: bool,
    pub latency_ms: u64,
}

/// How the instance is doing ([`AppState::condition`]).
#[derive(Debug, Clone)]
pub(crate) struct Condition {
    /// `ok`, `degraded` or `draining`.
    pub(crate) status: &'static str,
    /// Why it is degraded, in words an operator can act on (never a secret).
    pub(crate) reasons: Vec<String>,
    pub(crate) upstream: UpstreamHealth,
    /// The session store (Redis) does not answer: local state is used.
    pub(crate) store_degraded: bool,
    /// Seconds left of an anti-bot challenge's pause of completions.
    pub(crate) cooldown: Option<u64>,
    pub(crate) accounts: crate::accounts::StateCounts,
}

/// The longest a reload waits for the accounts file to be read.
pub(crate) const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Usage increments go to Redis (and old days are dropped) this often: a few seconds
/// behind at most, one script per day in use rather than one per request.
const USAGE_FLUSH_INTERVAL: Duration = Duration::from_secs(5);

/// Probes are cached so that frequent health checks never hammer the upstream.
const PROBE_TTL: Duration = Duration::from_secs(10);
/// `CHAT_CLEANUP=delete` deletes one chat per this (the upstream's anti-bot scoring dislikes
/// bursts): 2 a second.
const CHAT_DELETE_SPACING: Duration = Duration::from_millis(500);
/// Chats waiting for deletion at most (~80 minutes at that rate); idle chats beyond it are
/// left upstream.
const CHAT_DELETE_BACKLOG: usize = 10_000;

impl AppState {
    pub fn new(config: Config) -> Arc<Self> {
        let metrics = Metrics::new();
        let media = crate::media::MediaResolver::new(
            crate::fetch::Fetcher::new(config.media.fetch_policy()),
            crate::media::ImageLimits {
                max_bytes: config.media.image_max_bytes,
                max_count: config.media.image_max_count,
            },
            metrics.clone(),
        );
        let client = QwenClient::new(&config.upstream, config.workers.runtimes(), metrics.clone());
        let models = ModelCache::new(client.clone(), config.models_cache_duration);
        let redis = config
            .redis
            .as_ref()
            .map(|redis| Arc::new(RedisClient::new(redis)));
        let conversations = build_conversations(&config, redis.clone(), metrics.clone());
        let accounts = Pool::new(
            client.clone(),
            PoolSettings {
                flow: config.accounts.signin_flow,
                signin_interval: config.accounts.signin_interval,
                challenge_base: config.challenge_cooldown,
                queue_timeout: config.accounts.queue_timeout,
            },
            config.accounts.specs.clone(),
            metrics.clone(),
            redis
                .clone()
                .map(crate::accounts::shared::SharedAccounts::new),
        );
        let chat_pool = Arc::new(ChatPool::new(
            match &redis {
                Some(client) => Arc::new(RedisPool::new(client.clone())) as Arc<dyn PoolStore>,
                None => Arc::new(MemoryPool::default()),
            },
            config.conversations.pool_size,
            config.conversations.pool_ttl,
            client.clone(),
            metrics.clone(),
        ));
        let usage = Arc::new(crate::usage::Ledger::new(
            crate::usage::Limits {
                days: config.usage.days,
                max_rows: config.usage.max_rows,
            },
            redis.clone(),
        ));
        let sessions = config
            .admin_key
            .as_ref()
            .map(|key| Arc::new(crate::console::session::Sessions::new(key)));
        let request_log = Arc::new(crate::request_log::RequestLog::new(config.request_log.size));
        Arc::new(AppState {
            accounts,
            usage,
            sessions,
            request_log,
            chat_pool,
            slots: Arc::new(CompletionSlots::new(config.max_concurrent_streams)),
            config: Arc::new(config),
            client,
            models,
            metrics,
            conversations,
            uploads: Default::default(),
            media,
            image_quota: Default::default(),
            redis,
            started: Instant::now(),
            runtimes: std::sync::OnceLock::new(),
            draining: AtomicBool::new(false),
            drain_signal: watch::channel(false).0,
            abort_streams: watch::channel(false).0,
            upstream_probe: Mutex::new(None),
            reloading: tokio::sync::Mutex::new(()),
        })
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
        self.drain_signal.send_replace(true);
    }

    /// Resolves when shutdown begins (at once if it has).
    pub(crate) fn draining_signal(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.drain_signal.subscribe();
        async move {
            let _ = rx.wait_for(|draining| *draining).await;
        }
    }

    /// How the instance is doing (`/health`, the operators' overview): `draining` once
    /// shutdown began; else `degraded` with the reasons, or `ok`.
    pub(crate) async fn condition(&self) -> Condition {
        let upstream = self.upstream_health().await;
        let store_degraded = !self.conversations.probe().await;
        let cooldown = self
            .accounts
            .challenge_pause()
            .map(|d| d.as_secs_f64().ceil() as u64);
        let accounts = self.accounts.counts();
        let mut reasons = Vec::new();
        if !upstream.reachable {
            reasons.push("the upstream is unreachable".to_owned());
        }
        if store_degraded {
            reasons.push("the session store (Redis) is unreachable; using local state".to_owned());
        }
        if let Some(left) = cooldown {
            reasons.push(format!(
                "the upstream challenged the account(s) (anti-bot); completions are paused for {left} s \
                 (CHALLENGE_COOLDOWN)"
            ));
        }
        // (A challenge pause says more than "nothing is usable".)
        if accounts.usable == 0 && cooldown.is_none() {
            reasons.push(format!(
                "no upstream account can take requests ({})",
                accounts.describe()
            ));
        }
        let status = if self.is_draining() {
            "draining"
        } else if reasons.is_empty() {
            "ok"
        } else {
            "degraded"
        };
        Condition {
            status,
            reasons,
            upstream,
            store_degraded,
            cooldown,
            accounts,
        }
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

    /// The model catalogue, fetched as an account (the guest catalogue varies).
    pub async fn catalog(&self) -> Result<Arc<Catalog>, crate::error::ProxyError> {
        self.models.get(self.accounts.any_caller()).await
    }

    /// Re-read `QWEN_ACCOUNTS_FILE` and swap the pool's accounts; open streams keep theirs.
    /// The file is read on a blocking thread, within [`RELOAD_TIMEOUT`], one reload at a
    /// time: a slow or stuck file system never holds the runtime, and reloads do not queue.
    pub async fn reload_accounts(&self) -> Result<ReloadSummary, Vec<String>> {
        let Some(path) = self.config.accounts.file.clone() else {
            return Err(vec![
                "no QWEN_ACCOUNTS_FILE is configured: there is nothing to reload".to_owned(),
            ]);
        };
        let Ok(_one_at_a_time) = self.reloading.try_lock() else {
            return Err(vec![
                "another reload of the accounts file is running".to_owned()
            ]);
        };
        let read = tokio::task::spawn_blocking(move || crate::accounts_file::load_file(&path));
        let specs = match tokio::time::timeout(RELOAD_TIMEOUT, read).await {
            Ok(Ok(loaded)) => loaded?,
            Ok(Err(e)) => return Err(vec![format!("reading the accounts file failed: {e}")]),
            Err(_) => {
                return Err(vec![format!(
                    "reading the accounts file took longer than {} s",
                    RELOAD_TIMEOUT.as_secs()
                )])
            }
        };
        let summary = self.accounts.install(specs);
        tracing::info!(
            kept = summary.kept,
            added = summary.added,
            changed = summary.changed,
            removed = summary.removed,
            "accounts reloaded"
        );
        Ok(summary)
    }

    /// Periodic housekeeping until the returned task is aborted: sweep expired sessions,
    /// flush usage (and drop its old days) and, with `CHAT_CLEANUP=delete`, delete the
    /// upstream chats nobody uses any more, at a bounded rate. They run side by side in the
    /// one task: deletions are slow by design and must never hold up the sweep, nor a Redis
    /// that is away the sweep.
    pub fn spawn_housekeeping(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let state = self.clone();
        tokio::spawn(async move {
            let sweep = async {
                let mut tick = tokio::time::interval(state.config.session_cleanup_interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    state.conversations.sweep().await;
                    if !state.config.conversations.delete_chats {
                        // Chats made ahead that expired unused are left upstream, like
                        // any other chat without CHAT_CLEANUP=delete.
                        state.chat_pool.take_expired().await;
                    }
                }
            };
            let usage = async {
                let mut tick = tokio::time::interval(USAGE_FLUSH_INTERVAL);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    state.usage.housekeeping().await;
                }
            };
            if state.config.conversations.delete_chats {
                tokio::join!(sweep, usage, state.delete_idle_chats());
            } else {
                tokio::join!(sweep, usage);
            }
        })
    }

    /// `CHAT_CLEANUP=delete`: every cleanup interval, take the chats unused for the session
    /// timeout and the chats made ahead that expired unused, and delete them upstream one
    /// per `CHAT_DELETE_SPACING`. What cannot be deleted
    /// at that rate waits in a bounded backlog; beyond it a chat is left upstream and
    /// counted (`dropped`), so falling behind costs chats left behind, never memory.
    async fn delete_idle_chats(&self) {
        let cfg = &self.config;
        let mut backlog = std::collections::VecDeque::new();
        let mut tick = tokio::time::interval(cfg.session_cleanup_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let per_round = (cfg.session_cleanup_interval.as_millis() / CHAT_DELETE_SPACING.as_millis())
            .max(1) as usize;
        let deleted = &self.metrics.chats_deleted;
        loop {
            tick.tick().await;
            // Unused chats made ahead first: they are few (the pools' size at most).
            for (account, chat) in self.chat_pool.take_expired().await {
                if backlog.len() < CHAT_DELETE_BACKLOG {
                    backlog.push_back((format!("{account}/{chat}"), true));
                } else {
                    deleted.with_label_values(&["dropped"]).inc();
                }
            }
            let room = CHAT_DELETE_BACKLOG.saturating_sub(backlog.len());
            let idle = self
                .conversations
                .take_idle_chats(cfg.session_timeout, room)
                .await;
            backlog.extend(idle.chats.into_iter().map(|chat| (chat, false)));
            deleted
                .with_label_values(&["dropped"])
                .inc_by(idle.forgotten);
            for (owned, made_ahead) in backlog.drain(..per_round.min(backlog.len())) {
                let outcome = self.delete_chat(&owned).await;
                deleted.with_label_values(&[outcome]).inc();
                if made_ahead && outcome == "deleted" {
                    self.metrics.chat_pool.with_label_values(&["deleted"]).inc();
                }
                tokio::time::sleep(CHAT_DELETE_SPACING).await;
            }
        }
    }

    /// Delete one tracked chat (`<account>/<chat_id>`) upstream; the outcome's label.
    async fn delete_chat(&self, owned: &str) -> &'static str {
        // A chat belongs to the account that created it: only its token may delete it. An
        // account that is gone leaves its chats behind.
        let (account, chat_id) = crate::conversation::store::split_owned_chat(owned);
        let caller = match account {
            Some(name) => self.accounts.cleanup_caller_of(name),
            None => self.accounts.any_caller(),
        };
        // Gone, or left alone (quarantined, refused, disabled): its chats stay.
        let Some(who) = caller else {
            return "skipped";
        };
        match self.client.delete_chat(&who, chat_id).await {
            Ok(()) => "deleted",
            Err(e) => {
                tracing::debug!(error = %e, "deleting an expired chat failed");
                "failed"
            }
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
        let who = self.accounts.any_caller().unwrap_or_else(|| {
            Arc::new(self.client.caller(
                &crate::qwen::headers::Credentials::default(),
                crate::qwen::client::Route::Direct,
            ))
        });
        let reachable =
            tokio::time::timeout(Duration::from_secs(5), self.client.fetch_models(&who))
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

/// Memory store, or Redis with a memory fallback when `REDIS_URL` is set.
fn build_conversations(
    config: &Config,
    redis: Option<Arc<RedisClient>>,
    metrics: Arc<Metrics>,
) -> Arc<Conversations> {
    let ttl = config.session_timeout;
    let track_chats = config.conversations.delete_chats;
    let memory = Arc::new(
        MemoryStore::new(ttl, config.conversations.max_sessions).tracking_chats(track_chats),
    );
    let redis =
        redis.map(|client| Arc::new(RedisStore::new(client, ttl).tracking_chats(track_chats)));
    let (primary, fallback): (Arc<dyn SessionStore>, _) = match redis {
        Some(r) => (r, Some(memory)),
        None => (memory, None),
    };
    // The conversation keys' namespace: the single account's token as before (switching
    // QWEN_COOKIES to another account starts conversations afresh); with an accounts file,
    // the pool — each session records the account that owns its chat.
    let account = match (&config.accounts.file, &config.upstream.auth_token) {
        (Some(_), _) => "accounts-file".to_owned(),
        (None, Some(t)) => fingerprint(t.expose()),
        (None, None) => "none".to_owned(),
    };
    Conversations::new(
        primary,
        fallback,
        account,
        Settings {
            // Renewed every third of this while the turn runs; a crashed holder's lock
            // expires within it.
            lock_ttl: Duration::from_secs(30),
            queue_timeout: config.conversations.queue_timeout,
            queue_max: config.conversations.queue_max,
            busy_policy: config.conversations.busy_policy,
            chats_per_minute: config.conversations.chats_per_minute,
            busy_fresh_max_bytes: config.conversations.busy_fresh_max_bytes,
        },
        metrics,
    )
}
