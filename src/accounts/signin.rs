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
/// How often an account taken out for a refused token or a 403 is asked again whether the
/// upstream accepts its token (a pool of one must not stay down for a passing refusal).
const REPROBE_EVERY_MS: u64 = 10 * 60_000;

/// Why a renewal failed, and what it means for the account.
#[derive(Debug)]
pub enum RenewError {
    /// The credentials were refused, or there is no way to renew: `invalid`.
    Refused(String),
    /// Passing (the sign-in wall, an outage): try again later.
    Transient(String),
}

impl Pool {
    /// Renew `account`'s token now (one renewal at a time per account: a caller that
    /// waited for another's renewal gets its result). `seen` is the caller whose token was
    /// refused: if the account already has another, there is nothing to do.
    ///
    /// On the request path (`seen` given) the wait is bounded by `ACCOUNT_QUEUE_TIMEOUT`:
    /// a paced sign-in can take minutes, and the request should rather move on.
    pub async fn renew(&self, account: &Arc<Account>, seen: Option<&Caller>) -> Result<(), String> {
        if seen.is_none() {
            return self.renew_now(account, None).await;
        }
        match tokio::time::timeout(self.settings.queue_timeout, self.renew_now(account, seen)).await
        {
            Ok(r) => r,
            Err(_) => Err("the renewal did not finish in time".to_owned()),
        }
    }

    async fn renew_now(&self, account: &Arc<Account>, seen: Option<&Caller>) -> Result<(), String> {
        let _one = account.renewing.lock().await;
        let renewed_elsewhere = |seen: Option<&Caller>| match (seen, account.caller()) {
            (Some(seen), Some(now)) => !std::ptr::eq(seen, &*now),
            _ => false,
        };
        // Another instance may have renewed it (and spent the refresh token we hold); one
        // instance renews at a time.
        let _shared_lock = match &self.shared {
            Some(shared) => {
                shared.adopt_token(self, account).await;
                if renewed_elsewhere(seen) {
                    return Ok(());
                }
                match shared.lock_renewal(account.name()).await {
                    Some(lock) => Some(lock),
                    None => {
                        // Another instance is at it: take its result.
                        let seen_now = account.caller();
                        for _ in 0..20 {
                            tokio::time::sleep(Duration::from_millis(250)).await;
                            shared.adopt_token(self, account).await;
                            let changed = match (&seen_now, account.caller()) {
                                (Some(a), Some(b)) => !Arc::ptr_eq(a, &b),
                                (None, Some(_)) => true,
                                _ => false,
                            };
                            if changed {
                                return Ok(());
                            }
                        }
                        return Err("another instance is renewing the token".to_owned());
                    }
                }
            }
            None => None,
        };
        if renewed_elsewhere(seen) {
            return Ok(());
        }
        match self.renew_once(account).await {
            Ok(()) => Ok(()),
            Err(RenewError::Refused(reason)) => {
                self.signin_metric("refused");
                self.transition(account, "invalid", |_| Health::Invalid {
                    reason: reason.clone(),
                });
                Err(reason)
            }
            Err(RenewError::Transient(reason)) => {
                self.signin_metric("failed");
                account.note_error(reason.clone());
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

    async fn renew_once(&self, account: &Arc<Account>) -> Result<(), RenewError> {
        let refresh = account.token().and_then(|t| t.refresh);
        if let Some(refresh) = refresh {
            match self.refresh_with(account, &refresh).await {
                Ok(()) => return Ok(()),
                // A spent or revoked refresh token: another instance may have spent it (its
                // new one is in Redis); a password account can still sign in.
                Err(RenewError::Refused(reason)) => {
                    if let Some(shared) = &self.shared {
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
                self.accept(account, Token::new(&tokens.access, tokens.refresh.as_ref()));
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
        self.accept(account, Token::new(&tokens.access, tokens.refresh.as_ref()));
        Ok(())
    }

    /// A new token: in use from now, stored for other instances and restarts, and the
    /// account ready (unless an operator or the upstream said otherwise).
    fn accept(&self, account: &Account, token: Token) {
        if let Some(shared) = &self.shared {
            shared.publish_token(account, &token);
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
    async fn renew_in_background(&self, account: &Arc<Account>) {
        let was_signing_in = matches!(account.health(), Health::SigningIn { .. });
        if let Err(reason) = self.renew(account, None).await {
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

    /// Whether an `invalid` or `forbidden` account with a token should be asked again.
    fn reprobe_due(&self, account: &Account) -> bool {
        let out = matches!(
            account.health(),
            Health::Invalid { .. } | Health::Forbidden { .. }
        );
        let now = crate::common::epoch_millis();
        let last = account.last_probe_ms.load(Ordering::Relaxed);
        if !out || account.caller().is_none() || now < last.saturating_add(REPROBE_EVERY_MS) {
            return false;
        }
        account.last_probe_ms.store(now, Ordering::Relaxed);
        // The first chance comes a full period after the verdict.
        last != 0
    }

    /// `GET /api/v1/auths/` with the account's token: accepted again → back in rotation.
    async fn reprobe(&self, account: &Account) {
        let Some(who) = account.caller() else {
            return;
        };
        if self.client().check_auth(&who).await.is_ok() {
            tracing::info!(
                account = %crate::untrusted::Untrusted(account.name()),
                "the upstream accepts the account's token again"
            );
            self.transition(account, "reprobed", |h| match h {
                Health::Invalid { .. } | Health::Forbidden { .. } => Health::Ready,
                h => h.clone(),
            });
        }
    }

    /// Sign in the password accounts that have no token yet, one after another (for
    /// `qwen-proxy check`: nothing else is renewed, so no rotating refresh token is spent).
    pub async fn sign_in_missing(&self) {
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
                        pool.renew_in_background(&account).await;
                        account.renewing_bg.store(false, Ordering::Release);
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
