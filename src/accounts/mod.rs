//! The pool of Qwen accounts: the unit the upstream authenticates, rate-limits and
//! challenges.
//!
//! * `credential` — the current token, its claims and the cookie jar around it;
//! * `health` — the state machine of one account (ready, cooling, quarantined, …);
//! * `signin` — signing in and refreshing, in the background and on an expiry answer;
//! * `pacer` — sign-ins kept apart per egress address;
//! * `shared` — health and tokens in Redis, so instances agree and tokens survive restarts;
//! * `select` — a [`Lease`] on the least-loaded usable account, respecting each account's
//!   in-flight limit and minimum interval, or on a conversation's own account;
//! * `blame` — what a failure says about an account ([`Pool::blame`]);
//! * `view` — the operators' view (counts by state, accounts without secrets);
//! * here — the pool and its accounts, leases, reload without dropping streams.

mod blame;
mod image_quota;
pub(crate) use blame::quota_wait;
pub(crate) use image_quota::ImageQuota;
pub mod credential;
pub mod health;
mod pacer;
mod select;
pub mod shared;
pub mod signin;
mod view;

pub use view::{AccountView, StateCounts};

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
    /// Identity of its credentials alone (login, captured browser values): what is kept
    /// across an edit of its pacing or proxy, and the key of its records in Redis.
    credentials: String,
    route: Route,
    health: Mutex<Health>,
    /// When the health last changed (Unix ms): the newest change wins across instances.
    health_changed_ms: AtomicU64,
    token: Mutex<Option<Token>>,
    caller: RwLock<Option<Arc<Caller>>>,
    inflight: AtomicU32,
    /// The pool's sequence number of this account's latest turn (ties go to the account
    /// that started one longest ago: round-robin, not "fewest turns ever", which would
    /// send everything to an account just added).
    last_start: AtomicU64,
    /// Earliest start of the next turn (minimum interval with jitter).
    next_start: Mutex<Instant>,
    errors: Mutex<VecDeque<RecentError>>,
    /// One renewal at a time; the others wait for its result.
    pub(crate) renewing: tokio::sync::Mutex<()>,
    /// A background renewal of it is running (the background task starts one at a time).
    pub(crate) renewing_bg: std::sync::atomic::AtomicBool,
    /// When it was last asked again after a refusal (Unix ms; 0: not yet).
    pub(crate) last_probe_ms: AtomicU64,
    /// Failed renewals in a row, and when the next may start (Unix ms): a passing failure
    /// (the sign-in wall, a challenge on the auth domain) is not hammered.
    renew_failures: AtomicU32,
    next_renewal_ms: AtomicU64,
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

    /// Its caller for a call that is no turn (a chat made ahead): once its minimum interval
    /// has passed — without taking it, so no turn waits for such a call — and if it takes
    /// turns then.
    pub async fn ready_caller(&self) -> Option<Arc<Caller>> {
        let pace = self.pace_left(Instant::now());
        if !pace.is_zero() {
            tokio::time::sleep(pace).await;
        }
        if self.takes_turns(epoch_millis()) {
            self.caller()
        } else {
            None
        }
    }

    /// A renewal failed for a passing reason: the next waits 30 s, doubling up to 10 min.
    fn back_off_renewal(&self) {
        let failures = self.renew_failures.fetch_add(1, Ordering::Relaxed).min(5);
        let wait = (30_000u64 << failures).min(600_000);
        self.next_renewal_ms
            .store(epoch_millis().saturating_add(wait), Ordering::Relaxed);
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

    /// Whether turns may be sent on it now: usable, and it has a token.
    fn takes_turns(&self, now_ms: u64) -> bool {
        self.health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .usable(now_ms)
            && self
                .caller
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .is_some()
    }

    /// Take a slot: in flight + 1, next start after the (jittered) minimum interval.
    /// Called under the pool's claim lock (`select::claim`).
    fn start_turn(self: &Arc<Self>, caller: Arc<Caller>, seq: u64) -> Lease {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        self.turns.fetch_add(1, Ordering::Relaxed);
        self.last_start.store(seq, Ordering::Relaxed);
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
    pub(crate) pacer: pacer::Pacer,
    /// Held while a turn picks and claims its account (no await inside).
    claiming: Mutex<()>,
    /// Turns started, for the round-robin tie-break.
    starts: AtomicU64,
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
            pacer: pacer::Pacer::new(settings.signin_interval),
            client,
            settings,
            accounts: RwLock::new(Arc::new(Vec::new())),
            freed: Arc::new(Notify::new()),
            metrics,
            shared,
            challenges: Mutex::new(VecDeque::new()),
            claiming: Mutex::new(()),
            starts: AtomicU64::new(0),
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
            credentials: credentials_fingerprint(&spec),
            route,
            health: Mutex::new(Health::SigningIn { reason: None }),
            health_changed_ms: AtomicU64::new(0),
            token: Mutex::new(None),
            caller: RwLock::new(None),
            inflight: AtomicU32::new(0),
            last_start: AtomicU64::new(0),
            next_start: Mutex::new(Instant::now()),
            errors: Mutex::new(VecDeque::new()),
            renewing: tokio::sync::Mutex::new(()),
            renewing_bg: std::sync::atomic::AtomicBool::new(false),
            last_probe_ms: AtomicU64::new(0),
            renew_failures: AtomicU32::new(0),
            next_renewal_ms: AtomicU64::new(0),
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
            // The starting state, not a change: a shared record (another instance's
            // cooldown, an operator's disable) wins over it.
            *account.health.lock().unwrap_or_else(|p| p.into_inner()) = Health::Ready;
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
                        let same_name = old.iter().find(|a| a.name() == spec.name);
                        if same_name.is_some() {
                            summary.changed += 1;
                        } else {
                            summary.added += 1;
                        }
                        let account = self.build(spec);
                        // The same credentials with other pacing or proxy: the token (a
                        // rotated refresh token, perhaps) and the state go on.
                        if let Some(before) =
                            same_name.filter(|b| b.credentials == account.credentials)
                        {
                            if let Some(token) = before.token() {
                                self.set_token(&account, token);
                            }
                            *account.health.lock().unwrap_or_else(|p| p.into_inner()) =
                                before.health();
                        }
                        account
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

    /// Operator: disable or enable an account. Enabling clears any verdict (forbidden,
    /// invalid, a pause) and signs in again if there is no token. With Redis, every
    /// instance follows (an operator's disable is lifted only by an operator).
    pub async fn set_enabled(&self, name: &str, enabled: bool) -> Option<AccountView> {
        let account = self.get(name)?;
        if let Some(shared) = &self.shared {
            shared.publish_operator(&account, !enabled).await;
        }
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
        Some(self.view(&account))
    }

    /// The caller to delete the named account's idle chats with: while it takes turns or
    /// only cools on its quota (deleting costs no quota); not while it is quarantined,
    /// refused or disabled.
    pub fn cleanup_caller_of(&self, name: &str) -> Option<Arc<Caller>> {
        let account = self.get(name)?;
        matches!(account.health(), Health::Ready | Health::Cooling { .. })
            .then(|| account.caller())
            .flatten()
    }

    /// The named account's caller, if it takes turns.
    pub fn caller_of(&self, name: &str) -> Option<Arc<Caller>> {
        let account = self.get(name)?;
        account
            .takes_turns(epoch_millis())
            .then(|| account.caller())
            .flatten()
    }

    /// A caller for calls that are not a turn (models, health checks): the first usable
    /// account's; `None` when none is usable (an account left alone is not called).
    pub fn any_caller(&self) -> Option<Arc<Caller>> {
        let now = epoch_millis();
        let accounts = self.list();
        accounts
            .iter()
            .find(|a| a.takes_turns(now))
            .and_then(|a| a.caller())
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
    let text = format!(
        "{}\n{:?}\n{:?}\n{:?}\n{:?}",
        credentials_fingerprint(spec),
        spec.user_agent,
        spec.proxy.as_ref().map(ToString::to_string),
        spec.max_inflight,
        spec.min_interval,
    );
    crate::conversation::key::fingerprint(&text)
}

/// The account's credentials, hashed (a domain-separated, truncated SHA-256: it is stored
/// in Redis next to the tokens themselves, and says only whether they changed).
fn credentials_fingerprint(spec: &AccountSpec) -> String {
    let login = match &spec.login {
        Login::Cookies { cookies, token } => format!("c\n{}\n{}", cookies.expose(), token.expose()),
        Login::Password { email, password } => format!("p\n{email}\n{}", password.expose()),
    };
    let text = format!(
        "qwen-proxy/account/v1\n{}\n{login}\n{:?}\n{:?}",
        spec.name,
        spec.bx_ua.as_ref().map(Secret::expose),
        spec.bx_umidtoken.as_ref().map(Secret::expose),
    );
    crate::conversation::key::fingerprint(&text)
}

#[cfg(test)]
mod tests;
