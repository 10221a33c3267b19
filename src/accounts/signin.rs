//! Signing in and renewing tokens: paced (the upstream walls about a dozen sign-ins per
//! few minutes per address), in the background ahead of each token's expiry, and at once
//! (one renewal, however many requests saw the expiry) when the upstream says a token has
//! expired.
//!
//! Renewal order: the refresh token when there is one (auth-domain flow; the answer's
//! refresh token replaces it — it is rotated), else a new sign-in for a password account;
//! a browser-session account without a refresh token cannot renew and becomes `invalid`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;

use super::credential::Token;
use super::health::Health;
use super::{Account, Pool};
use crate::accounts_file::Login;
use crate::error::{ProxyError, UpstreamClass};
use crate::qwen::client::Caller;
use crate::qwen::headers::Credentials;

/// How often the background task looks for tokens to renew and accounts to sign in.
const RENEW_TICK: Duration = Duration::from_secs(5);
/// The longest one renewal may take, a paced sign-in included.
const RENEWAL_LIMIT: Duration = Duration::from_secs(180);
/// How often an account taken out for a refused token or a 403 is asked again whether the
/// upstream accepts its token (a pool of one must not stay down for a passing refusal).
const REPROBE_EVERY_MS: u64 = 10 * 60_000;

/// Why a token is being renewed.
#[derive(Debug, Clone)]
pub enum Renewal {
    /// The upstream refused this caller's token (a request met it).
    Expired(Arc<Caller>),
    /// The background work: it is due (ahead of expiry), or has no token yet.
    Due,
    /// An `invalid` or `forbidden` account asked again whether it can renew.
    Reprobe,
    /// An operator asked (the admin API, the console): renew now, whatever is known.
    Operator,
}

/// Why a renewal failed, and what it means for the account.
#[derive(Debug)]
pub enum RenewError {
    /// The credentials were refused, or there is no way to renew: `invalid`.
    Refused(String),
    /// Passing (the sign-in wall, an outage): try again later.
    Transient(String),
}

impl Pool {
    /// Renew `account`'s token now (one renewal at a time per account, and one instance at
    /// a time with Redis: a caller that waited for another's renewal gets its result).
    /// `why` says when it is already done: a refused caller's account has another token, a
    /// due token is no longer due, a re-asked account is back.
    ///
    /// The renewal runs as a task of its own: once a refresh is sent, its answer (the new,
    /// rotated refresh token) must be kept even if the request that asked gives up — its
    /// wait is bounded by `ACCOUNT_QUEUE_TIMEOUT` (a paced sign-in can take minutes), or the
    /// client leaves.
    pub async fn renew(
        self: &Arc<Self>,
        account: &Arc<Account>,
        why: Renewal,
    ) -> Result<(), String> {
        let (pool, account) = (self.clone(), account.clone());
        let background = !matches!(why, Renewal::Expired(_));
        let renewal = tokio::spawn(async move {
            match tokio::time::timeout(RENEWAL_LIMIT, pool.renew_now(&account, &why)).await {
                Ok(r) => r,
                Err(_) => Err("the renewal took too long".to_owned()),
            }
        });
        let waited = if background {
            renewal.await
        } else {
            match tokio::time::timeout(self.settings.queue_timeout, renewal).await {
                Ok(joined) => joined,
                Err(_) => return Err("the renewal did not finish in time".to_owned()),
            }
        };
        waited.unwrap_or_else(|e| Err(format!("the renewal failed: {e}")))
    }

    /// Whether the account has a way to a new token (a password, or a refresh token): an
    /// operator's renewal of one without would only mark it invalid.
    pub fn can_renew(account: &Account) -> bool {
        matches!(account.spec.login, Login::Password { .. })
            || account.token().is_some_and(|t| t.refresh.is_some())
    }

    async fn renew_now(&self, account: &Arc<Account>, why: &Renewal) -> Result<(), String> {
        let _one = account.renewing.lock().await;
        // Whether someone else (a renewal before this one, another instance) already did it.
        let done_elsewhere = || match why {
            Renewal::Expired(seen) => account.caller().is_some_and(|now| !Arc::ptr_eq(seen, &now)),
            Renewal::Due => !self.due(account, crate::common::epoch_secs()),
            Renewal::Reprobe => !matches!(
                account.health(),
                Health::Invalid { .. } | Health::Forbidden { .. }
            ),
            Renewal::Operator => false,
        };
        if done_elsewhere() {
            return Ok(());
        }
        // One instance at a time; then what the last one stored, read under the lock: a
        // refresh token it spent is never presented again.
        let shared_lock = match &self.shared {
            Some(shared) => match shared.lock_renewal(account.name()).await {
                Some(lock) => {
                    shared.adopt_token(self, account).await;
                    if done_elsewhere() {
                        if let Some(lock) = lock {
                            lock.release().await;
                        }
                        return Ok(());
                    }
                    lock
                }
                None => return self.await_other_instance(account).await,
            },
            None => None,
        };
        let result = self.renew_once(account).await;
        if let Some(lock) = shared_lock {
            lock.release().await;
        }
        match result {
            Ok(()) => {
                account.renew_failures.store(0, Ordering::Relaxed);
                Ok(())
            }
            Err(RenewError::Refused(reason)) => {
                self.signin_metric("refused");
                self.invalidate(account, &reason);
                Err(reason)
            }
            Err(RenewError::Transient(reason)) => {
                self.signin_metric("failed");
                account.note_error(reason.clone());
                account.back_off_renewal();
                // An expired token takes no turns while the renewal is retried.
                if account
                    .token()
                    .is_some_and(|t| t.expired(crate::common::epoch_secs()))
                {
                    self.transition(account, "signin_failed", |h| match h {
                        Health::Ready => Health::SigningIn {
                            reason: Some(reason.clone()),
                        },
                        h => h.clone(),
                    });
                }
                Err(reason)
            }
        }
    }

    /// Another instance holds the renewal lock: take its result when it is stored.
    async fn await_other_instance(&self, account: &Arc<Account>) -> Result<(), String> {
        let Some(shared) = &self.shared else {
            return Err("no shared store".to_owned());
        };
        let before = account.caller();
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(250)).await;
            shared.adopt_token(self, account).await;
            let changed = match (&before, account.caller()) {
                (Some(a), Some(b)) => !Arc::ptr_eq(a, &b),
                (None, Some(_)) => true,
                _ => false,
            };
            if changed {
                return Ok(());
            }
        }
        Err("another instance is renewing the token".to_owned())
    }

    async fn renew_once(&self, account: &Arc<Account>) -> Result<(), RenewError> {
        let refresh = account.token().and_then(|t| t.refresh);
        if let Some(refresh) = refresh {
            match self.refresh_with(account, &refresh).await {
                Ok(()) => return Ok(()),
                // A spent or revoked refresh token: another instance may have spent it (its
                // new one is in Redis); a password account can still sign in.
                Err(RenewError::Refused(reason)) => {
                    if let Some(shared) = &self.shared {
                        // (Under the renewal lock: only a stale read could get here.)
                        shared.adopt_token(self, account).await;
                        if account.token().and_then(|t| t.refresh).as_deref()
                            != Some(refresh.as_str())
                        {
                            return Ok(());
                        }
                    }
                    if !matches!(account.spec.login, Login::Password { .. }) {
                        return Err(RenewError::Refused(reason));
                    }
                }
                Err(e) => return Err(e),
            }
        }
        match &account.spec.login {
            Login::Password { email, password } => {
                let turn = self.pacer.turn(&egress(account)).await;
                let who = self.bare_caller(account);
                let signed_in = self
                    .client()
                    .sign_in(&who, self.settings.flow, email, password)
                    .await;
                drop(turn);
                let tokens = signed_in.map_err(classify)?;
                self.signin_metric("signin");
                self.accept(account, Token::new(&tokens.access, tokens.refresh.as_ref()))
                    .await;
                Ok(())
            }
            Login::Cookies { .. } => Err(RenewError::Refused(
                "the token was refused and a browser session cannot sign in again: \
                 capture fresh cookies (or give email and password) and reload"
                    .to_owned(),
            )),
        }
    }

    async fn refresh_with(&self, account: &Arc<Account>, refresh: &str) -> Result<(), RenewError> {
        let who = self.bare_caller(account);
        let tokens = self
            .client()
            .refresh(&who, &crate::common::Secret::new(refresh))
            .await
            .map_err(classify)?;
        self.signin_metric("refresh");
        self.accept(account, Token::new(&tokens.access, tokens.refresh.as_ref()))
            .await;
        Ok(())
    }

    /// A new token: in use from now, stored for other instances and restarts, and the
    /// account ready (unless an operator or the upstream said otherwise).
    async fn accept(&self, account: &Account, token: Token) {
        // Stored before the renewal lock is released: the next instance reads it.
        if let Some(shared) = &self.shared {
            shared.publish_token(account, &token).await;
        }
        self.set_token(account, token);
        self.transition(account, "signed_in", |h| match h {
            Health::SigningIn { .. } | Health::Invalid { .. } => Health::Ready,
            h => h.clone(),
        });
        self.freed.notify_waiters();
    }

    /// The account's browser identity without a token (for sign-in and refresh).
    fn bare_caller(&self, account: &Account) -> Caller {
        let spec = &account.spec;
        let who = Credentials {
            cookies: None,
            token: None,
            bx_ua: spec.bx_ua.clone(),
            bx_umidtoken: spec.bx_umidtoken.clone(),
            user_agent: spec.user_agent.clone(),
        };
        self.client().caller(&who, account.route.clone())
    }

    fn signin_metric(&self, kind: &'static str) {
        self.metrics
            .account_signins
            .with_label_values(&[kind])
            .inc();
    }

    /// Whether the background work should renew (or first sign in) `account` now.
    fn due(&self, account: &Account, now: u64) -> bool {
        // After a failed renewal, the next waits (growing, up to 10 min).
        if now.saturating_mul(1000) < account.next_renewal_ms.load(Ordering::Relaxed) {
            return false;
        }
        let token = account.token();
        let due = match (&account.health(), &token) {
            (Health::Disabled | Health::Invalid { .. } | Health::Forbidden { .. }, _) => false,
            (Health::SigningIn { .. }, _) | (_, None) => true,
            (_, Some(t)) => t.renew_at().is_some_and(|at| at <= now),
        };
        // A browser session without a refresh token cannot renew ahead: it runs until
        // the upstream refuses it.
        let can_renew = matches!(account.spec.login, Login::Password { .. })
            || token.is_some_and(|t| t.refresh.is_some());
        due && can_renew
    }

    /// Renew one account in the background; a first sign-in that fails keeps the account
    /// `signing_in`, with the reason.
    async fn renew_in_background(self: &Arc<Self>, account: &Arc<Account>) {
        let was_signing_in = matches!(account.health(), Health::SigningIn { .. });
        if let Err(reason) = self.renew(account, Renewal::Due).await {
            if was_signing_in {
                self.transition(account, "signin_failed", |h| match h {
                    Health::SigningIn { .. } => Health::SigningIn {
                        reason: Some(reason.clone()),
                    },
                    h => h.clone(),
                });
            }
        }
    }

    /// Whether an `invalid` or `forbidden` account should be asked again (every 10 min; the
    /// clock starts when the verdict is first seen, and again after each return).
    fn reprobe_due(&self, account: &Account) -> bool {
        let out = matches!(
            account.health(),
            Health::Invalid { .. } | Health::Forbidden { .. }
        );
        if !out {
            account.last_probe_ms.store(0, Ordering::Relaxed);
            return false;
        }
        let now = crate::common::epoch_millis();
        let last = account.last_probe_ms.load(Ordering::Relaxed);
        if last == 0 {
            account.last_probe_ms.store(now, Ordering::Relaxed);
            return false;
        }
        if now < last.saturating_add(REPROBE_EVERY_MS) {
            return false;
        }
        account.last_probe_ms.store(now, Ordering::Relaxed);
        true
    }

    /// Ask again: renew it when it can (a refresh token, a password: a 15-minute access
    /// token will have lapsed by now), else `GET /api/v1/auths/` with its token. Accepted
    /// → back in rotation.
    async fn reprobe(self: &Arc<Self>, account: &Arc<Account>) {
        let can_renew = matches!(account.spec.login, Login::Password { .. })
            || account.token().is_some_and(|t| t.refresh.is_some());
        let accepted = if can_renew {
            self.renew(account, Renewal::Reprobe).await.is_ok()
        } else {
            match account.caller() {
                Some(who) => self.client().check_auth(&who).await.is_ok(),
                None => false,
            }
        };
        if accepted {
            tracing::info!(
                account = %crate::untrusted::Untrusted(account.name()),
                "the upstream accepts the account again"
            );
            self.transition(account, "reprobed", |h| match h {
                Health::Invalid { .. } | Health::Forbidden { .. } => Health::Ready,
                h => h.clone(),
            });
        }
    }

    /// Sign in the password accounts that have no token yet, one after another (for
    /// `qwen-proxy check`: nothing else is renewed, so no rotating refresh token is spent).
    pub async fn sign_in_missing(self: &Arc<Self>) {
        for account in self.list().iter() {
            if account.token().is_none() && matches!(account.spec.login, Login::Password { .. }) {
                self.renew_in_background(account).await;
            }
        }
    }

    /// Sign in and renew in the background until the task is aborted: every few seconds,
    /// adopt what Redis knows, then start a renewal for each account that is due and not
    /// renewing already. Renewals run side by side (sign-ins wait for their address's turn),
    /// so neither a slow account nor the sign-in pacing holds up the others or the sync;
    /// aborting the task aborts them.
    pub fn spawn_renewals(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let pool = self.clone();
        tokio::spawn(async move {
            let mut running = JoinSet::new();
            loop {
                // What the other instances (or this one before a restart) know first: a
                // stored token spares a sign-in.
                if let Some(shared) = &pool.shared {
                    shared.sync(&pool).await;
                }
                let now = crate::common::epoch_secs();
                for account in pool.list().iter() {
                    if !pool.due(account, now) || account.renewing_bg.swap(true, Ordering::AcqRel) {
                        continue;
                    }
                    let (pool, account) = (pool.clone(), account.clone());
                    running.spawn(async move {
                        // Cleared however the renewal ends (aborted, panicked).
                        let _flag = ClearOnDrop(&account.renewing_bg);
                        pool.renew_in_background(&account).await;
                    });
                }
                for account in pool.list().iter() {
                    if !pool.reprobe_due(account) {
                        continue;
                    }
                    let (pool, account) = (pool.clone(), account.clone());
                    running.spawn(async move { pool.reprobe(&account).await });
                }
                while running.try_join_next().is_some() {}
                tokio::time::sleep(RENEW_TICK).await;
            }
        })
    }
}

/// Clears a flag when dropped.
struct ClearOnDrop<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for ClearOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// The egress address a sign-in leaves from: its proxy, or direct.
fn egress(account: &Account) -> String {
    account
        .spec
        .proxy
        .as_ref()
        .and_then(|p| p.authority().map(|a| a.host().to_owned()))
        .unwrap_or_else(|| "direct".to_owned())
}

/// A refused refresh or sign-in (401/403, or a sign-in's 400 "incorrect") is final for the
/// credentials; anything else (the sign-in wall, an outage) passes.
fn classify(e: ProxyError) -> RenewError {
    match e.upstream_class() {
        Some(UpstreamClass::AuthFailed | UpstreamClass::Forbidden) => {
            RenewError::Refused(e.to_string())
        }
        _ => RenewError::Transient(e.to_string()),
    }
}
