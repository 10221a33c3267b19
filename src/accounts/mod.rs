//! The pool of Qwen accounts: the unit the upstream authenticates, rate-limits and
//! challenges.
//!
//! * `credential` — the current token, its claims and the cookie jar around it;
//! * `health` — the state machine of one account (ready, cooling, quarantined, …);
//! * `signin` — signing in and refreshing, paced, in the background;
//! * `shared` — health and tokens in Redis, so instances agree and tokens survive restarts;
//! * here — selection: a [`Lease`] on the least-loaded usable account, respecting each
//!   account's in-flight limit and minimum interval; what a failure says about an account
//!   ([`Pool::blame`]); reload without dropping streams; the operators' view.

pub mod credential;
pub mod health;
pub mod shared;
pub mod signin;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::accounts_file::{AccountSpec, Login};
use crate::common::{epoch_millis, random_u64, Secret};
use crate::config::SigninFlow;
use crate::error::{ProxyError, UpstreamClass, UpstreamError};
use crate::metrics::Metrics;
use crate::qwen::client::{Caller, QwenClient, Route};
use crate::qwen::cooldown::ChallengeCooldown;
use crate::qwen::headers::Credentials;
use credential::{cookie_jar, Token};
use health::Health;

/// How many recent errors an account keeps for the admin API.
const RECENT_ERRORS: usize = 5;

/// Pool-wide settings (from the configuration).
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub flow: SigninFlow,
    /// Least time between two sign-ins from one egress address (the upstream walls about a
    /// dozen per few minutes per address).
    pub signin_interval: Duration,
    /// The first quarantine after a challenge (`CHALLENGE_COOLDOWN`); it doubles per strike.
    pub challenge_base: Duration,
    /// How long a turn may wait for an account with room.
    pub queue_timeout: Duration,
}

/// One account: its spec, its health, its token and its load.
pub struct Account {
    pub spec: AccountSpec,
    /// Identity of the spec: a reload keeps the account (state, token, load) when unchanged.
    fingerprint: String,
    route: Route,
    health: Mutex<Health>,
    /// When the health last changed (Unix ms): the newest change wins across instances.
    health_changed_ms: AtomicU64,
    token: Mutex<Option<Token>>,
    caller: RwLock<Option<Arc<Caller>>>,
    inflight: AtomicU32,
    /// Earliest start of the next turn (minimum interval with jitter).
    next_start: Mutex<Instant>,
    errors: Mutex<VecDeque<RecentError>>,
    /// One renewal at a time; the others wait for its result.
    pub(crate) renewing: tokio::sync::Mutex<()>,
    turns: AtomicU64,
    freed: Arc<Notify>,
}

impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Account")
            .field("name", &self.spec.name)
            .field("health", &self.health())
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RecentError {
    pub at_ms: u64,
    pub error: String,
}

impl Account {
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn health(&self) -> Health {
        self.health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .at(epoch_millis())
    }

    /// Apply `f` to the stored health; returns (before, after).
    fn update_health(&self, f: impl FnOnce(&Health) -> Health) -> (Health, Health) {
        let mut g = self.health.lock().unwrap_or_else(|p| p.into_inner());
        let before = g.clone();
        *g = f(&before);
        if *g != before {
            self.health_changed_ms
                .store(epoch_millis(), Ordering::Relaxed);
        }
        (before, g.clone())
    }

    pub fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::Relaxed)
    }

    pub fn token(&self) -> Option<Token> {
        self.token.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn caller(&self) -> Option<Arc<Caller>> {
        self.caller
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn note_error(&self, error: String) {
        let mut e = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        if e.len() == RECENT_ERRORS {
            e.pop_front();
        }
        e.push_back(RecentError {
            at_ms: epoch_millis(),
            error,
        });
    }

    fn has_room(&self) -> bool {
        self.spec
            .max_inflight
            .map_or(true, |max| self.inflight() < max)
    }

    /// How long until a turn may start here (zero: now).
    fn pace_left(&self, now: Instant) -> Duration {
        self.next_start
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .saturating_duration_since(now)
    }

    /// Take a slot: in flight + 1, next start after the (jittered) minimum interval.
    fn start_turn(self: &Arc<Self>, caller: Arc<Caller>) -> Lease {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        self.turns.fetch_add(1, Ordering::Relaxed);
        let interval = self.spec.min_interval;
        if !interval.is_zero() {
            // Up to +25 %: turns of several instances (and the upstream's view of them)
            // do not fall into lockstep.
            let jitter = interval.mul_f64((random_u64() % 1000) as f64 / 4000.0);
            *self.next_start.lock().unwrap_or_else(|p| p.into_inner()) =
                Instant::now() + interval + jitter;
        }
        Lease {
            account: self.clone(),
            caller,
        }
    }
}

/// The right to send one turn on one account; dropping it frees the slot.
pub struct Lease {
    account: Arc<Account>,
    caller: Arc<Caller>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("account", &self.account.spec.name)
            .finish()
    }
}

impl Lease {
    pub fn caller(&self) -> &Caller {
        &self.caller
    }

    pub fn name(&self) -> &str {
        self.account.name()
    }

    pub fn account(&self) -> &Arc<Account> {
        &self.account
    }

    /// Which account and token a failed attempt used, for [`Pool::blame`] and
    /// [`Pool::renew`] after the lease is gone.
    pub fn used(&self) -> Used {
        Used {
            account: self.account.clone(),
            caller: self.caller.clone(),
        }
    }
}

/// The account and token of an attempt.
#[derive(Debug, Clone)]
pub struct Used {
    pub account: Arc<Account>,
    pub caller: Arc<Caller>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.account.inflight.fetch_sub(1, Ordering::Relaxed);
        self.account.freed.notify_waiters();
    }
}

/// What an upstream failure says about the account that got it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    /// Not the account's doing (a busy chat, bad input, an outage).
    None,
    /// Daily quota: the account cools down; another may take the turn.
    Quota,
    /// A challenge on this account: quarantined; another may take the turn.
    Challenged,
    /// A challenge that hit several accounts at once: the time of day, not the account.
    /// Everyone backs off; nobody is blamed.
    ChatChallenge,
    /// The token was refused: renew it, then try again.
    Expired,
    /// 403: banned or disabled upstream.
    Forbidden,
}

/// Counts by state, for `/health` and the gauge.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StateCounts {
    pub total: usize,
    pub usable: usize,
    #[serde(flatten)]
    pub by_state: std::collections::BTreeMap<&'static str, usize>,
}

/// One account as operators see it: never a secret.
#[derive(Debug, Clone, Serialize)]
pub struct AccountView {
    pub name: String,
    pub kind: &'static str,
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until_ms: Option<u64>,
    pub inflight: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_inflight: Option<u32>,
    pub min_interval_ms: u64,
    pub turns: u64,
    pub proxy: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_expires: Option<u64>,
    pub recent_errors: Vec<RecentError>,
}

pub struct Pool {
    client: QwenClient,
    pub settings: PoolSettings,
    accounts: RwLock<Arc<Vec<Arc<Account>>>>,
    freed: Arc<Notify>,
    metrics: Arc<Metrics>,
    pub(crate) shared: Option<shared::SharedAccounts>,
    /// Recent challenges (account, Unix ms): several accounts challenged within one
    /// pause are a chat challenge, not theirs.
    challenges: Mutex<VecDeque<(String, u64)>>,
    /// The pause of every account after a chat challenge.
    pub global: ChallengeCooldown,
    pub(crate) pacer: signin::Pacer,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("accounts", &self.list().len())
            .finish_non_exhaustive()
    }
}

impl Pool {
    pub fn new(
        client: QwenClient,
        settings: PoolSettings,
        specs: Vec<AccountSpec>,
        metrics: Arc<Metrics>,
        shared: Option<shared::SharedAccounts>,
    ) -> Arc<Self> {
        let pool = Arc::new(Pool {
            global: ChallengeCooldown::new(settings.challenge_base),
            pacer: signin::Pacer::new(settings.signin_interval),
            client,
            settings,
            accounts: RwLock::new(Arc::new(Vec::new())),
            freed: Arc::new(Notify::new()),
            metrics,
            shared,
            challenges: Mutex::new(VecDeque::new()),
        });
        pool.install(specs);
        pool
    }

    pub fn client(&self) -> &QwenClient {
        &self.client
    }

    /// The accounts as they are now (a reload swaps the list; leases keep theirs).
    pub fn list(&self) -> Arc<Vec<Arc<Account>>> {
        self.accounts
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn get(&self, name: &str) -> Option<Arc<Account>> {
        self.list().iter().find(|a| a.name() == name).cloned()
    }

    fn build(&self, spec: AccountSpec) -> Arc<Account> {
        let route = match &spec.proxy {
            Some(p) => self.client.proxy_route(p),
            None => Route::Direct,
        };
        let account = Arc::new(Account {
            fingerprint: fingerprint(&spec),
            route,
            health: Mutex::new(Health::SigningIn { reason: None }),
            health_changed_ms: AtomicU64::new(0),
            token: Mutex::new(None),
            caller: RwLock::new(None),
            inflight: AtomicU32::new(0),
            next_start: Mutex::new(Instant::now()),
            errors: Mutex::new(VecDeque::new()),
            renewing: tokio::sync::Mutex::new(()),
            turns: AtomicU64::new(0),
            freed: self.freed.clone(),
            spec,
        });
        // A browser session comes with its token; a password account signs in first.
        if let Login::Cookies { cookies, token } = &account.spec.login {
            let refresh = crate::common::cookie_from(cookies.expose(), "refresh_token");
            self.set_token(
                &account,
                Token::new(token, refresh.map(Secret::new).as_ref()),
            );
            account.update_health(|_| Health::Ready);
        }
        account
    }

    /// Swap in a new list of specs: unchanged accounts are kept as they are (state, token,
    /// load); changed or new ones start afresh; removed ones leave the list, and the turns
    /// still running on them finish on their leases.
    pub fn install(&self, specs: Vec<AccountSpec>) -> ReloadSummary {
        let old = self.list();
        let mut summary = ReloadSummary::default();
        let accounts: Vec<Arc<Account>> = specs
            .into_iter()
            .map(|spec| {
                match old
                    .iter()
                    .find(|a| a.name() == spec.name && a.fingerprint == fingerprint(&spec))
                {
                    Some(kept) => {
                        summary.kept += 1;
                        kept.clone()
                    }
                    None => {
                        if old.iter().any(|a| a.name() == spec.name) {
                            summary.changed += 1;
                        } else {
                            summary.added += 1;
                        }
                        self.build(spec)
                    }
                }
            })
            .collect();
        summary.removed = old
            .iter()
            .filter(|a| !accounts.iter().any(|n| n.name() == a.name()))
            .count();
        *self.accounts.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(accounts);
        self.freed.notify_waiters();
        self.publish_gauges();
        summary
    }

    /// A new token for `account`: its caller is rebuilt around it (and it is stored in
    /// Redis when configured).
    pub(crate) fn set_token(&self, account: &Account, token: Token) {
        let spec = &account.spec;
        let captured = match &spec.login {
            Login::Cookies { cookies, .. } => Some(cookies.expose()),
            Login::Password { .. } => None,
        };
        let who = Credentials {
            cookies: Some(Secret::new(cookie_jar(captured, &token.access))),
            token: Some(Secret::new(token.access.clone())),
            bx_ua: spec.bx_ua.clone(),
            bx_umidtoken: spec.bx_umidtoken.clone(),
            user_agent: spec.user_agent.clone(),
        };
        let caller = Arc::new(self.client.caller(&who, account.route.clone()));
        *account.caller.write().unwrap_or_else(|p| p.into_inner()) = Some(caller);
        *account.token.lock().unwrap_or_else(|p| p.into_inner()) = Some(token);
    }

    /// A lease on the best usable account: the least loaded with room, whose minimum
    /// interval has passed, skipping `avoid`. Waits (up to the queue timeout) while every
    /// usable account is full or pacing; fails at once when none is usable.
    pub async fn acquire(&self, avoid: &[String]) -> Result<Lease, ProxyError> {
        let deadline = Instant::now() + self.settings.queue_timeout;
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let now = Instant::now();
            let now_ms = epoch_millis();
            self.global.check()?;
            let accounts = self.list();
            let usable: Vec<&Arc<Account>> = accounts
                .iter()
                .filter(|a| !avoid.iter().any(|n| n == a.name()))
                .filter(|a| {
                    a.health
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .usable(now_ms)
                })
                .collect();
            if usable.is_empty() {
                return Err(self.none_usable(&accounts, avoid, now_ms));
            }
            let best = usable
                .iter()
                .filter(|a| a.has_room() && a.pace_left(now).is_zero())
                .min_by_key(|a| (a.inflight(), a.turns.load(Ordering::Relaxed)));
            if let Some(a) = best {
                if let Some(caller) = a.caller() {
                    return Ok(a.start_turn(caller));
                }
            }
            // Everyone usable is full or pacing: wait for a slot or the earliest pace.
            let pace = usable
                .iter()
                .filter(|a| a.has_room())
                .map(|a| a.pace_left(now))
                .min();
            if now >= deadline {
                return Err(ProxyError::AccountsBusy {
                    retry_after_secs: pace.map_or(1, |p| p.as_secs().max(1)),
                });
            }
            let wake = pace.map_or(deadline, |p| (now + p).min(deadline));
            tokio::select! {
                _ = &mut freed => {}
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    /// A lease on the named account (a conversation's chat belongs to it). `None` when the
    /// account is gone or not usable: the conversation moves to a fresh chat elsewhere.
    pub async fn acquire_on(&self, name: &str) -> Option<Result<Lease, ProxyError>> {
        let deadline = Instant::now() + self.settings.queue_timeout;
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Err(e) = self.global.check() {
                return Some(Err(e));
            }
            let account = self.get(name)?;
            if !account.health().usable(epoch_millis()) {
                return None;
            }
            let now = Instant::now();
            let pace = account.pace_left(now);
            if account.has_room() && pace.is_zero() {
                let caller = account.caller()?;
                return Some(Ok(account.start_turn(caller)));
            }
            if now >= deadline {
                return Some(Err(ProxyError::AccountsBusy {
                    retry_after_secs: pace.as_secs().max(1),
                }));
            }
            let wake = (now + pace).min(deadline);
            tokio::select! {
                _ = &mut freed => {}
                _ = tokio::time::sleep_until(if pace.is_zero() { deadline } else { wake }) => {}
            }
        }
    }

    /// Whether a turn could move to another usable account than those in `avoid`.
    pub fn can_move(&self, avoid: &[String]) -> bool {
        let now = epoch_millis();
        self.list()
            .iter()
            .any(|a| !avoid.iter().any(|n| n == a.name()) && a.health().usable(now))
    }

    /// The error for "no account can take the turn" as things stand.
    pub fn unavailable(&self) -> ProxyError {
        self.none_usable(&self.list(), &[], epoch_millis())
    }

    /// The pause a client should wait because of challenges: the pause of everyone after
    /// a chat challenge, or — when no account is usable — the earliest quarantine's end.
    pub fn challenge_pause(&self) -> Option<Duration> {
        if let Some(left) = self.global.remaining() {
            return Some(left);
        }
        let now = epoch_millis();
        let accounts = self.list();
        if accounts.iter().any(|a| a.health().usable(now)) {
            return None;
        }
        accounts
            .iter()
            .filter_map(|a| match a.health() {
                Health::Quarantined { until_ms, .. } => Some(until_ms),
                _ => None,
            })
            .min()
            .map(|until| Duration::from_millis(until.saturating_sub(now)))
    }

    /// Why nothing is usable, as the client's error: 429 with the earliest `Retry-After`
    /// when every account that comes back is cooling on its quota; 503 with the earliest
    /// return when quarantines are involved; 503 `no_usable_account` when none comes back
    /// by itself.
    fn none_usable(&self, accounts: &[Arc<Account>], avoid: &[String], now_ms: u64) -> ProxyError {
        let mut quota: Option<u64> = None;
        let mut quarantine: Option<u64> = None;
        let mut signing_in = false;
        for a in accounts {
            let h = a
                .health
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .at(now_ms);
            match h {
                Health::Cooling { until_ms, .. } => {
                    quota = Some(quota.map_or(until_ms, |q| q.min(until_ms)));
                }
                Health::Quarantined { until_ms, .. } => {
                    quarantine = Some(quarantine.map_or(until_ms, |q| q.min(until_ms)));
                }
                Health::SigningIn { .. } => signing_in = true,
                // Usable but excluded by `avoid`: this request already failed there.
                Health::Ready if avoid.iter().any(|n| n == a.name()) => {}
                _ => {}
            }
        }
        let secs = |until: u64| until.saturating_sub(now_ms).div_ceil(1000).max(1);
        match (quota, quarantine) {
            (Some(q), None) => {
                let mut e = UpstreamError::new(
                    UpstreamClass::RateLimited,
                    "every account has reached its daily quota",
                );
                e.retry_after = Some(Duration::from_secs(secs(q)));
                e.into()
            }
            (q, Some(c)) => ProxyError::UpstreamCoolingDown {
                retry_after_secs: secs(q.map_or(c, |q| q.min(c))),
            },
            (None, None) => ProxyError::NoUsableAccount {
                summary: self.unusable_detail(accounts, now_ms),
                retry_after_secs: signing_in
                    .then(|| self.settings.signin_interval.as_secs().max(5)),
            },
        }
    }

    /// `1 invalid: default (the token was refused …)`: the counts, then the first few
    /// accounts out of rotation with their reasons (names and reasons are never secrets).
    fn unusable_detail(&self, accounts: &[Arc<Account>], now_ms: u64) -> String {
        let mut out = self.counts().describe();
        let reasons: Vec<String> = accounts
            .iter()
            .map(|a| (a, a.health()))
            .filter(|(_, h)| !h.usable(now_ms))
            .take(3)
            .map(|(a, h)| match h.reason() {
                Some(r) => format!("{} is {}: {r}", a.name(), h.label()),
                None => format!("{} is {}", a.name(), h.label()),
            })
            .collect();
        if !reasons.is_empty() {
            out.push_str("; ");
            out.push_str(&reasons.join("; "));
        }
        out
    }

    /// What `e` says about the account of `lease`, applied to its health.
    pub fn blame(&self, account: &Account, e: &ProxyError) -> Blame {
        let Some(class) = e.upstream_class() else {
            return Blame::None;
        };
        let now = epoch_millis();
        let blame = match class {
            UpstreamClass::RateLimited => {
                // `num` hours when the upstream said; a day otherwise (peers' default).
                let wait = match e {
                    ProxyError::Upstream(u) => u.retry_after,
                    _ => None,
                }
                .map_or(86_400_000, |d| d.as_millis() as u64);
                self.transition(account, "rate_limited", |h| h.quota_reached(now, wait));
                Blame::Quota
            }
            UpstreamClass::Challenge => self.challenged(account, now),
            UpstreamClass::AuthFailed => Blame::Expired,
            UpstreamClass::Forbidden => {
                self.transition(account, "forbidden", |_| Health::Forbidden {
                    reason: "the upstream refused the account (403: banned or disabled)".to_owned(),
                });
                Blame::Forbidden
            }
            _ => Blame::None,
        };
        if blame != Blame::None {
            account.note_error(e.to_string());
        }
        blame
    }

    /// A challenge: quarantine the account — unless another account was challenged within
    /// the pause, which makes it the chat challenge that follows the time of day: lift
    /// those quarantines, pause everyone once.
    fn challenged(&self, account: &Account, now: u64) -> Blame {
        let base = self.settings.challenge_base.as_millis() as u64;
        let others: Vec<String> = {
            let mut recent = self.challenges.lock().unwrap_or_else(|p| p.into_inner());
            while recent.front().is_some_and(|(_, at)| at + base < now) {
                recent.pop_front();
            }
            let others = recent
                .iter()
                .filter(|(n, _)| n != account.name())
                .map(|(n, _)| n.clone())
                .collect::<Vec<_>>();
            recent.push_back((account.name().to_owned(), now));
            others
        };
        if others.is_empty() || self.list().len() < 2 {
            self.transition(account, "challenge", |h| {
                h.challenged(now, base, "anti-bot challenge")
            });
            return Blame::Challenged;
        }
        for name in others.iter().map(String::as_str).chain([account.name()]) {
            if let Some(a) = self.get(name) {
                // Forgive: it was not the account.
                let (before, _) = a.update_health(|h| match h {
                    Health::Quarantined { .. } => Health::Ready,
                    h => h.clone(),
                });
                if matches!(before, Health::Quarantined { .. }) {
                    self.share(&a);
                }
            }
        }
        self.global.trigger();
        self.metrics
            .account_cooldowns
            .with_label_values(&["chat_challenge"])
            .inc();
        self.publish_gauges();
        Blame::ChatChallenge
    }

    /// A good answer on the account: strikes forgiven.
    pub fn answered(&self, account: &Account) {
        let (before, after) = account.update_health(|h| h.answered(epoch_millis()));
        if before != after {
            self.share(account);
            self.publish_gauges();
        }
    }

    /// Change an account's health; count the cooldown, tell the other instances, log it.
    pub(crate) fn transition(
        &self,
        account: &Account,
        reason: &'static str,
        f: impl FnOnce(&Health) -> Health,
    ) {
        let (before, after) = account.update_health(f);
        if before == after {
            return;
        }
        if !matches!(after, Health::Ready | Health::SigningIn { .. }) {
            self.metrics
                .account_cooldowns
                .with_label_values(&[reason])
                .inc();
        }
        tracing::warn!(
            account = %crate::untrusted::Untrusted(account.name()),
            from = before.label(),
            to = after.label(),
            reason = after.reason().unwrap_or(""),
            "account state changed"
        );
        self.share(account);
        self.publish_gauges();
    }

    fn share(&self, account: &Account) {
        if let Some(shared) = &self.shared {
            shared.publish_health(account.name(), &account.health());
        }
    }

    /// Operator: disable or enable an account. Enabling clears any verdict (forbidden,
    /// invalid, a pause) and signs in again if there is no token.
    pub fn set_enabled(&self, name: &str, enabled: bool) -> Option<AccountView> {
        let account = self.get(name)?;
        if enabled {
            let has_token = account.caller().is_some();
            self.transition(&account, "enabled", |_| {
                if has_token {
                    Health::Ready
                } else {
                    Health::SigningIn { reason: None }
                }
            });
        } else {
            self.transition(&account, "disabled", |_| Health::Disabled);
        }
        self.freed.notify_waiters();
        Some(self.view(&account))
    }

    pub fn counts(&self) -> StateCounts {
        let now = epoch_millis();
        let mut c = StateCounts::default();
        for label in Health::LABELS {
            c.by_state.insert(label, 0);
        }
        for a in self.list().iter() {
            let h = a.health();
            c.total += 1;
            if h.usable(now) {
                c.usable += 1;
            }
            *c.by_state.entry(h.label()).or_insert(0) += 1;
        }
        c
    }

    pub fn view(&self, a: &Account) -> AccountView {
        let h = a.health();
        AccountView {
            name: a.name().to_owned(),
            kind: a.spec.login.kind(),
            state: h.label(),
            reason: h.reason().map(str::to_owned),
            until_ms: h.back_at(epoch_millis()),
            inflight: a.inflight(),
            max_inflight: a.spec.max_inflight,
            min_interval_ms: a.spec.min_interval.as_millis() as u64,
            turns: a.turns.load(Ordering::Relaxed),
            proxy: a.spec.proxy.is_some(),
            token_expires: a.token().and_then(|t| t.exp()),
            recent_errors: a
                .errors
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .cloned()
                .collect(),
        }
    }

    pub fn views(&self) -> Vec<AccountView> {
        self.list().iter().map(|a| self.view(a)).collect()
    }

    pub(crate) fn publish_gauges(&self) {
        let c = self.counts();
        for (state, n) in &c.by_state {
            self.metrics
                .accounts
                .with_label_values(&[state])
                .set(*n as i64);
        }
    }

    /// A caller for calls that are not a turn (models, health checks, cleanup): the first
    /// usable account's.
    pub fn any_caller(&self) -> Option<Arc<Caller>> {
        let now = epoch_millis();
        let accounts = self.list();
        accounts
            .iter()
            .find(|a| a.health().usable(now))
            .or_else(|| accounts.first())
            .and_then(|a| a.caller())
    }
}

impl StateCounts {
    /// `2 cooling, 1 invalid` — for error messages.
    pub fn describe(&self) -> String {
        let parts: Vec<String> = self
            .by_state
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(s, n)| format!("{n} {s}"))
            .collect();
        if parts.is_empty() {
            "no accounts".to_owned()
        } else {
            parts.join(", ")
        }
    }
}

/// What a reload did.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct ReloadSummary {
    pub kept: usize,
    pub added: usize,
    pub changed: usize,
    pub removed: usize,
}

/// Everything that makes an account what it is, hashed (secrets included, never shown).
fn fingerprint(spec: &AccountSpec) -> String {
    let login = match &spec.login {
        Login::Cookies { cookies, token } => format!("c\n{}\n{}", cookies.expose(), token.expose()),
        Login::Password { email, password } => format!("p\n{email}\n{}", password.expose()),
    };
    let text = format!(
        "{}\n{login}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}",
        spec.name,
        spec.bx_ua.as_ref().map(Secret::expose),
        spec.bx_umidtoken.as_ref().map(Secret::expose),
        spec.user_agent,
        spec.proxy.as_ref().map(ToString::to_string),
        spec.max_inflight,
        spec.min_interval,
    );
    crate::conversation::key::fingerprint(&text)
}
