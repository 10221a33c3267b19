//! Signing in and renewing tokens: paced (the upstream walls about a dozen sign-ins per
//! few minutes per address), in the background ahead of each token's expiry, and at once
//! (one renewal, however many requests saw the expiry) when the upstream says a token has
//! expired.
//!
//! Renewal order: the refresh token when there is one (auth-domain flow; the answer's
//! refresh token replaces it — it is rotated), else a new sign-in for a password account;
//! a browser-session account without a refresh token cannot renew and becomes `invalid`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::credential::Token;
use super::health::Health;
use super::{Account, Pool};
use crate::accounts_file::Login;
use crate::common::epoch_secs;
use crate::error::{ProxyError, UpstreamClass};
use crate::qwen::client::Caller;
use crate::qwen::headers::Credentials;

/// How often the background task looks for tokens to renew and accounts to sign in.
const RENEW_TICK: Duration = Duration::from_secs(5);

/// Sign-ins keep at least `interval` apart per egress address (direct, or each proxy).
#[derive(Debug)]
pub struct Pacer {
    interval: Duration,
    last: tokio::sync::Mutex<HashMap<String, Instant>>,
}

impl Pacer {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Wait for the egress's turn and hold it: sign-ins through one address go one after
    /// another, and the next starts `interval` after this one *ended* (when the returned
    /// turn is dropped) — connection set-up (a tunnel, a protocol probe) cannot bring two
    /// closer together as the upstream sees them.
    async fn turn(&self, egress: &str) -> PacerTurn<'_> {
        let last = self.last.lock().await;
        if let Some(at) = last.get(egress) {
            let ready = *at + self.interval;
            if ready > Instant::now() {
                tokio::time::sleep_until(ready).await;
            }
        }
        PacerTurn {
            last,
            egress: egress.to_owned(),
        }
    }
}

/// A sign-in's turn on its egress address; its end is stamped when dropped.
struct PacerTurn<'a> {
    last: tokio::sync::MutexGuard<'a, HashMap<String, Instant>>,
    egress: String,
}

impl Drop for PacerTurn<'_> {
    fn drop(&mut self) {
        self.last
            .insert(std::mem::take(&mut self.egress), Instant::now());
    }
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
    /// Renew `account`'s token now (one renewal at a time per account: a caller that
    /// waited for another's renewal gets its result). `seen` is the caller whose token was
    /// refused: if the account already has another, there is nothing to do.
    pub async fn renew(&self, account: &Arc<Account>, seen: Option<&Caller>) -> Result<(), String> {
        let _one = account.renewing.lock().await;
        // Another instance may have renewed it (and spent the refresh token we hold).
        if let Some(shared) = &self.shared {
            shared.adopt_token(self, account).await;
        }
        if let (Some(seen), Some(now)) = (seen, account.caller()) {
            if !std::ptr::eq(seen, &*now) {
                return Ok(());
            }
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
                Err(reason)
            }
        }
    }

    async fn renew_once(&self, account: &Arc<Account>) -> Result<(), RenewError> {
        let refresh = account.token().and_then(|t| t.refresh);
        if let Some(refresh) = refresh {
            match self.refresh_with(account, &refresh).await {
                Ok(()) => return Ok(()),
                // A spent or revoked refresh token: a password account can still sign in.
                Err(RenewError::Refused(reason)) => {
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

    /// One pass of the background work: sign in accounts that have no token yet, renew
    /// tokens that are due. Renewals run one after another (paced sign-ins queue anyway).
    pub async fn renew_due(self: &Arc<Self>) {
        let now = epoch_secs();
        for account in self.list().iter() {
            let health = account.health();
            let due = match (&health, account.token()) {
                (Health::Disabled | Health::Invalid { .. } | Health::Forbidden { .. }, _) => false,
                (Health::SigningIn { .. }, _) => true,
                (_, Some(t)) => t.renew_at().is_some_and(|at| at <= now),
                (_, None) => false,
            };
            // A browser session without a refresh token cannot renew ahead: it runs until
            // the upstream refuses it.
            let can_renew = matches!(account.spec.login, Login::Password { .. })
                || account.token().is_some_and(|t| t.refresh.is_some());
            if !due || !can_renew {
                continue;
            }
            if let Err(reason) = self.renew(account, None).await {
                if matches!(health, Health::SigningIn { .. }) {
                    self.transition(account, "signin_failed", |h| match h {
                        Health::SigningIn { .. } => Health::SigningIn {
                            reason: Some(reason.clone()),
                        },
                        h => h.clone(),
                    });
                }
            }
        }
    }

    /// Sign in and renew in the background until the task is aborted.
    pub fn spawn_renewals(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let pool = self.clone();
        tokio::spawn(async move {
            loop {
                // What the other instances (or this one before a restart) know first: a
                // stored token spares a sign-in.
                if let Some(shared) = &pool.shared {
                    shared.sync(&pool).await;
                }
                pool.renew_due().await;
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

fn classify(e: ProxyError) -> RenewError {
    match e.upstream_class() {
        Some(UpstreamClass::AuthFailed | UpstreamClass::Forbidden) => {
            RenewError::Refused(e.to_string())
        }
        _ => RenewError::Transient(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn sign_ins_through_one_address_keep_their_distance() {
        let pacer = Arc::new(Pacer::new(Duration::from_secs(30)));
        let start = Instant::now();
        let mut at = Vec::new();
        for _ in 0..3 {
            let turn = pacer.turn("direct").await;
            at.push(start.elapsed());
            // The sign-in itself takes a second: the next waits from its end.
            tokio::time::sleep(Duration::from_secs(1)).await;
            drop(turn);
        }
        assert_eq!(
            at,
            [
                Duration::ZERO,
                Duration::from_secs(31),
                Duration::from_secs(62)
            ]
        );
        // Another address is not held back.
        let before = Instant::now();
        drop(pacer.turn("proxy-1").await);
        assert_eq!(before.elapsed(), Duration::ZERO);
    }
}
