//! API-key authentication and the caller's identity.
//!
//! With `API_KEYS` (or `API_KEYS_FILE`) set, every `/v1/*` request needs a key
//! ([`presented_credential`]: `Authorization: Bearer <key>` in any case of the scheme, or
//! `x-api-key`), compared in constant time against every configured key. The layer parses
//! the credential once and puts a [`ClientIdentity`] in the request extensions; the layers
//! and the core after it read only that (and the request log records its fingerprint).
//! Without keys every request is [`ClientIdentity::Anonymous`] (SDKs always send some key;
//! an open server ignores it).
//! `/health` and `/metrics` are not `/v1/*` and stay open here.
//!
//! The operators' key (`ADMIN_KEY`) is checked here too, for the operators' routes: a
//! request to `/admin/*` or `/health` that presents it gets [`OperatorAccess`] (the admin
//! API answers; `/health` lists every account, which it does not for anyone else). A wrong
//! key on `/admin/*` is a 401; on `/health` it only means no list (the probe stays open).
//! On `/admin/*` the console's session cookie (`console::session`) stands for the key: a
//! valid one gets [`OperatorAccess`] and the [`Session`] in the extensions, and a request
//! that changes something (any method but `GET`/`HEAD`) must also carry the session's CSRF
//! token (403 without). A request with neither key nor cookie is refused without counting
//! as a guess (a console loading before sign-in is not an attack); `GET /admin/session`
//! is let through to say "not signed in" (with the `SessionRefusal` of a refused cookie).
//!
//! Key guessing is throttled, API keys and the operators' key each with their own counter:
//! failed attempts are counted per client address (as `TRUST_PROXY` resolves it) in a fixed
//! window; from the `AUTH_FAILURE_LIMIT`th failure on, the address gets 429 with
//! `Retry-After` until its window ends — without the key being checked, so a right guess
//! inside the lockout teaches nothing (on `/health`: no list, whatever it presents). Failures
//! are logged in aggregate — one warning when an address is locked out, the refusals
//! themselves at debug level — and counted in `auth_failures_total`. The counters are per
//! instance.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::{Method, Request, Response};
use tokio::time::Instant;

use super::reject::ResponseFuture;
use crate::body::ProxyBody;
use crate::config::{FailurePolicy, Secret};
use crate::console::session::{self, Session, Sessions};
use crate::error::ProxyError;
use crate::forwarded::TrustProxy;
use crate::identity::{
    constant_time_eq, presented_credential, ClientIdentity, KeyFingerprint, OperatorAccess,
};
use crate::metrics::Metrics;
use crate::request_log::Recorder;
use crate::routes::{Endpoint, Route};
use crate::server::PeerAddr;

#[derive(Clone)]
pub(crate) struct AuthLayer {
    shared: Arc<Shared>,
}

struct Shared {
    /// Configured keys with their fingerprints (computed once).
    keys: Box<[(Box<[u8]>, KeyFingerprint)]>,
    /// `ADMIN_KEY`.
    admin_key: Option<Secret>,
    /// The console's sessions (with `ADMIN_KEY`).
    sessions: Option<Arc<Sessions>>,
    trust_proxy: TrustProxy,
    failures: FailureCounter,
    admin_failures: FailureCounter,
    metrics: Arc<Metrics>,
}

impl AuthLayer {
    pub(crate) fn new(
        keys: &[Secret],
        admin_key: Option<Secret>,
        sessions: Option<Arc<Sessions>>,
        trust_proxy: TrustProxy,
        policy: FailurePolicy,
        metrics: Arc<Metrics>,
    ) -> Self {
        let keys = keys
            .iter()
            .map(|k| {
                let k = k.expose();
                (k.as_bytes().into(), KeyFingerprint::of(k))
            })
            .collect();
        Self {
            shared: Arc::new(Shared {
                keys,
                admin_key,
                sessions,
                trust_proxy,
                failures: FailureCounter::new(policy, "API keys"),
                admin_failures: FailureCounter::new(policy, "operator keys (ADMIN_KEY)"),
                metrics,
            }),
        }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Auth<S>;
    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            shared: self.shared.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct Auth<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl Shared {
    /// The fingerprint of the configured key that `presented` equals. Every key is compared,
    /// so the time does not reveal which one matched.
    fn matching_key(&self, presented: &str) -> Option<KeyFingerprint> {
        self.keys.iter().fold(None, |found, (key, fp)| {
            if constant_time_eq(key, presented.as_bytes()) {
                Some(fp.clone())
            } else {
                found
            }
        })
    }

    fn client_addr<B>(&self, req: &Request<B>) -> Option<IpAddr> {
        let peer = req.extensions().get::<PeerAddr>().map(|p| p.0.ip());
        self.trust_proxy.client_ip(req.headers(), peer)
    }

    /// The operators' key on an operators' route: `Ok(true)` when presented, `Ok(false)`
    /// when not (then `/admin` refuses, `/health` answers without the list), an error for a
    /// refused `/admin` request (a wrong key, or its address locked out).
    fn operator<B>(&self, req: &Request<B>, admin: bool) -> Result<bool, ProxyError> {
        let Some(key) = &self.admin_key else {
            // The admin API is off (it says so); `/health` answers without the list.
            return Ok(false);
        };
        let presented = presented_credential(req.headers());
        // The open probe without a key is not an attempt.
        if !admin && presented.is_none() {
            return Ok(false);
        }
        // No key on `/admin`: the console's session, or a refusal that is not a guess.
        if presented.is_none() {
            return Err(ProxyError::InvalidAdminKey);
        }
        let addr = self.client_addr(req);
        let now = Instant::now();
        if let Some(wait) = self.admin_failures.locked_out(addr, now) {
            self.metrics
                .auth_failures
                .with_label_values(&["admin_throttled"])
                .inc();
            return match admin {
                true => Err(ProxyError::AuthThrottled {
                    retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
                }),
                false => Ok(false),
            };
        }
        let presented = presented.unwrap_or("");
        if constant_time_eq(presented.as_bytes(), key.expose().as_bytes()) {
            return Ok(true);
        }
        self.admin_failures.record(addr, now);
        self.metrics
            .auth_failures
            .with_label_values(&["invalid_admin_key"])
            .inc();
        match admin {
            true => Err(ProxyError::InvalidAdminKey),
            false => Ok(false),
        }
    }

    /// The console's session an `/admin` request without a key comes with, and its CSRF
    /// token when it changes something.
    fn session<B>(&self, req: &Request<B>) -> Result<Session, ProxyError> {
        let sessions = self.sessions.as_ref().ok_or(ProxyError::InvalidAdminKey)?;
        let cookie = req
            .headers()
            .get_all(hyper::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|v| crate::common::cookie_from(v, session::COOKIE));
        let Some(cookie) = cookie else {
            return Err(ProxyError::InvalidAdminKey);
        };
        let session = sessions
            .verify(&cookie)
            .map_err(|refusal| ProxyError::NotSignedIn { refusal })?;
        let changes = !matches!(*req.method(), Method::GET | Method::HEAD);
        if changes {
            let token = req
                .headers()
                .get(session::CSRF_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !sessions.csrf_matches(&session, token) {
                self.metrics
                    .auth_failures
                    .with_label_values(&["csrf_token_invalid"])
                    .inc();
                return Err(ProxyError::CsrfTokenInvalid);
            }
        }
        Ok(session)
    }

    fn authenticate<B>(&self, req: &Request<B>) -> Result<ClientIdentity, ProxyError> {
        let addr = self.client_addr(req);
        let now = Instant::now();
        if let Some(wait) = self.failures.locked_out(addr, now) {
            self.metrics
                .auth_failures
                .with_label_values(&["throttled"])
                .inc();
            return Err(ProxyError::AuthThrottled {
                retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
            });
        }
        match presented_credential(req.headers()).and_then(|k| self.matching_key(k)) {
            Some(fp) => Ok(ClientIdentity::Key(fp)),
            None => {
                self.failures.record(addr, now);
                self.metrics
                    .auth_failures
                    .with_label_values(&["invalid_key"])
                    .inc();
                Err(ProxyError::InvalidApiKey)
            }
        }
    }
}

impl<S, B> tower::Service<Request<B>> for Auth<S>
where
    S: tower::Service<Request<B>, Response = Response<ProxyBody>, Error = ProxyError>,
    S::Future: Unpin,
{
    type Response = Response<ProxyBody>;
    type Error = ProxyError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let route = Route::of(&req);
        let by_session = route.endpoint == Endpoint::Admin
            && presented_credential(req.headers()).is_none()
            && self.shared.sessions.is_some();
        if by_session {
            match self.shared.session(&req) {
                Ok(session) => {
                    req.extensions_mut().insert(OperatorAccess);
                    req.extensions_mut().insert(session);
                }
                // The console asking whether it is signed in: the answer says no (and why),
                // not an error — a page loading before sign-in is not a refused request.
                Err(e) if session::is_probe(req.method(), req.uri().path()) => {
                    if let ProxyError::NotSignedIn { refusal } = e {
                        req.extensions_mut().insert(refusal);
                    }
                }
                Err(e) => return ResponseFuture::reject(e),
            }
        } else if let Endpoint::Admin | Endpoint::Health = route.endpoint {
            match self
                .shared
                .operator(&req, route.endpoint == Endpoint::Admin)
            {
                Ok(true) => {
                    req.extensions_mut().insert(OperatorAccess);
                }
                Ok(false) => {}
                Err(e) => return ResponseFuture::reject(e),
            }
        }
        let identity = if self.shared.keys.is_empty() || !route.auth {
            Ok(ClientIdentity::Anonymous)
        } else {
            self.shared.authenticate(&req)
        };
        match identity {
            Ok(id) => {
                Recorder::of(req.extensions()).key(id.as_str());
                req.extensions_mut().insert(id);
                ResponseFuture::Inner(self.inner.call(req))
            }
            Err(e) => ResponseFuture::reject(e),
        }
    }
}

// === failure counting ===

/// Failed attempts per client address in fixed windows. Requests whose address is unknown
/// share one counter.
struct FailureCounter {
    policy: FailurePolicy,
    /// What is guessed (for the lockout warning).
    what: &'static str,
    windows: Mutex<HashMap<Option<IpAddr>, Window>>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    failures: u32,
}

/// Above this many tracked addresses, expired windows are dropped on the next failure.
const SWEEP_THRESHOLD: usize = 10_000;

impl FailureCounter {
    fn new(policy: FailurePolicy, what: &'static str) -> Self {
        Self {
            policy,
            what,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// How long `addr` stays locked out, if it is.
    fn locked_out(&self, addr: Option<IpAddr>, now: Instant) -> Option<Duration> {
        if self.policy.limit == 0 {
            return None;
        }
        let windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let w = windows.get(&addr)?;
        let end = w.started + self.policy.window;
        (w.failures >= self.policy.limit && now < end).then(|| end - now)
    }

    fn record(&self, addr: Option<IpAddr>, now: Instant) {
        if self.policy.limit == 0 {
            return;
        }
        let window = self.policy.window;
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if windows.len() > SWEEP_THRESHOLD {
            windows.retain(|_, w| now < w.started + window);
        }
        let w = windows.entry(addr).or_insert(Window {
            started: now,
            failures: 0,
        });
        if now >= w.started + window {
            *w = Window {
                started: now,
                failures: 0,
            };
        }
        w.failures += 1;
        if w.failures == self.policy.limit {
            tracing::warn!(
                client = %addr.map_or_else(|| "unknown".to_owned(), |a| a.to_string()),
                failures = w.failures,
                lockout_secs = window.as_secs(),
                keys = self.what,
                "repeated invalid keys from one address; locking it out (further refusals are logged at debug level and counted in auth_failures_total)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use tower::{service_fn, ServiceBuilder, ServiceExt};

    type Seen = Arc<Mutex<Vec<Option<ClientIdentity>>>>;

    fn svc(
        keys: &[&str],
        limit: u32,
        seen: Seen,
    ) -> impl tower::Service<Request<()>, Response = Response<ProxyBody>, Error = ProxyError> + Clone
    {
        let keys: Vec<Secret> = keys.iter().map(|k| Secret::new(*k)).collect();
        let policy = FailurePolicy {
            limit,
            window: Duration::from_secs(60),
        };
        ServiceBuilder::new()
            .layer(AuthLayer::new(
                &keys,
                None,
                None,
                TrustProxy::Off,
                policy,
                Metrics::new(),
            ))
            .service(service_fn(move |req: Request<()>| {
                seen.lock()
                    .unwrap()
                    .push(req.extensions().get::<ClientIdentity>().cloned());
                Box::pin(async { Ok::<_, ProxyError>(Response::new(ProxyBody::empty())) })
            }))
    }

    fn req(path: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().uri(path);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let mut r = b.body(()).unwrap();
        r.extensions_mut()
            .insert(PeerAddr("10.0.0.7:1234".parse::<SocketAddr>().unwrap()));
        r
    }

    async fn status<S>(s: &S, path: &str, headers: &[(&str, &str)]) -> u16
    where
        S: tower::Service<Request<()>, Response = Response<ProxyBody>, Error = ProxyError> + Clone,
    {
        match s.clone().oneshot(req(path, headers)).await {
            Ok(r) => r.status().as_u16(),
            Err(e) => e.status().as_u16(),
        }
    }

    #[tokio::test]
    async fn keys_required_on_v1_only_and_identity_is_the_fingerprint() {
        let seen = Seen::default();
        let s = svc(&["k1", "k2"], 0, seen.clone());
        assert_eq!(status(&s, "/v1/models", &[]).await, 401);
        assert_eq!(
            status(&s, "/v1/models", &[("authorization", "bearer k2")]).await,
            200
        );
        assert_eq!(status(&s, "/v1/models", &[("x-api-key", "k1")]).await, 200);
        assert_eq!(
            status(&s, "/v1/models", &[("authorization", "Bearer k3")]).await,
            401
        );
        assert_eq!(status(&s, "/health", &[]).await, 200);
        let seen = seen.lock().unwrap();
        assert_eq!(
            seen[..2],
            [
                Some(ClientIdentity::Key(KeyFingerprint::of("k2"))),
                Some(ClientIdentity::Key(KeyFingerprint::of("k1"))),
            ]
        );
    }

    #[tokio::test]
    async fn open_without_keys_is_anonymous() {
        let seen = Seen::default();
        let s = svc(&[], 0, seen.clone());
        assert_eq!(
            status(&s, "/v1/models", &[("authorization", "Bearer x")]).await,
            200
        );
        assert_eq!(*seen.lock().unwrap(), [Some(ClientIdentity::Anonymous)]);
    }

    #[tokio::test(start_paused = true)]
    async fn repeated_failures_lock_the_address_out_until_the_window_ends() {
        let s = svc(&["good"], 3, Seen::default());
        for _ in 0..3 {
            assert_eq!(
                status(&s, "/v1/models", &[("x-api-key", "guess")]).await,
                401
            );
        }
        // Locked out: even the right key gets 429 now, with the time left.
        let refused = || async {
            s.clone()
                .oneshot(req("/v1/models", &[("x-api-key", "good")]))
                .await
                .unwrap_err()
        };
        let throttled = |retry_after_secs| ProxyError::AuthThrottled { retry_after_secs };
        assert_eq!(refused().await, throttled(60));
        tokio::time::advance(Duration::from_secs(45)).await;
        assert_eq!(refused().await, throttled(15));
        tokio::time::advance(Duration::from_secs(15)).await;
        assert_eq!(
            status(&s, "/v1/models", &[("x-api-key", "good")]).await,
            200
        );
    }
}
