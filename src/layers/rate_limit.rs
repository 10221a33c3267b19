//! Per-client rate limiting: a token bucket per client identity (the API key's fingerprint
//! that the auth layer established), or per client IP when keys are off, `RATE_LIMIT_RPM`
//! tokens a minute up to `RATE_LIMIT_BURST`. Over the limit the request is rejected at once
//! with `ProxyError::RateLimited` carrying the decision (429, `Retry-After` and
//! `x-ratelimit-*`, mapped by the error-map layer like every other error); it is never
//! queued. Allowed responses get the `x-ratelimit-*` headers too. Bucket state lives behind
//! `Arc` in a [`RateLimitStore`] (`crate::rate`; Redis in `crate::redis::rate_limit`),
//! because hyper clones the whole stack per request (state kept in the service struct would
//! be per request — the `tower::limit::RateLimit` trap).
//!
//! Client IP: as `TRUST_PROXY` resolves it ([`TrustProxy`]).

use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::{Request, Response};

use crate::body::ProxyBody;
use crate::common::BoxFuture;
use crate::error::ProxyError;
use crate::forwarded::TrustProxy;
use crate::identity::ClientIdentity;
use crate::metrics::Metrics;
use crate::rate::RateLimitStore;
use crate::routes::Route;
use crate::server::PeerAddr;

#[derive(Clone)]
pub(crate) struct RateLimitLayer {
    store: Arc<dyn RateLimitStore>,
    trust_proxy: Arc<TrustProxy>,
    metrics: Arc<Metrics>,
}

impl RateLimitLayer {
    pub(crate) fn new(
        store: Arc<dyn RateLimitStore>,
        trust_proxy: TrustProxy,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            store,
            trust_proxy: Arc::new(trust_proxy),
            metrics,
        }
    }
}

impl<S> tower::Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;
    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct RateLimit<S> {
    inner: S,
    layer: RateLimitLayer,
}

impl<S> RateLimit<S> {
    /// The bucket: the identity established by the auth layer, else the client address.
    fn key<B>(&self, req: &Request<B>) -> String {
        if let Some(ClientIdentity::Key(fp)) = req.extensions().get::<ClientIdentity>() {
            // A fingerprint: the store (possibly shared) never holds raw keys.
            return format!("key:{}", fp.as_str());
        }
        let peer = req.extensions().get::<PeerAddr>().map(|p| p.0.ip());
        match self.layer.trust_proxy.client_ip(req.headers(), peer) {
            Some(ip) => format!("ip:{ip}"),
            None => "ip:unknown".to_owned(),
        }
    }
}

impl<S, B> tower::Service<Request<B>> for RateLimit<S>
where
    S: tower::Service<Request<B>, Response = Response<ProxyBody>, Error = ProxyError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<ProxyBody>;
    type Error = ProxyError;
    type Future = BoxFuture<'static, Result<Response<ProxyBody>, ProxyError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    // Boxed: the store's answer (Redis) is awaited before the inner call.
    fn call(&mut self, req: Request<B>) -> Self::Future {
        if !Route::of(&req).rate_limited {
            return Box::pin(self.inner.call(req));
        }
        let key = self.key(&req);
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        Box::pin(async move {
            let d = layer.store.acquire(&key).await;
            if !d.allowed {
                layer.metrics.rate_limited.inc();
                return Err(ProxyError::RateLimited { decision: d });
            }
            let mut rsp = inner.call(req).await?;
            d.write_headers(rsp.headers_mut());
            Ok(rsp)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::error_map::ErrorMapLayer;
    use crate::rate::LocalBuckets;
    use std::convert::Infallible;
    use std::net::SocketAddr;
    use tower::{service_fn, ServiceBuilder, ServiceExt};

    /// The layer behind the error map, as in the stack: its errors become responses.
    fn svc(
        trust_proxy: bool,
    ) -> impl tower::Service<Request<()>, Response = Response<ProxyBody>, Error = Infallible> + Clone
    {
        let trust = if trust_proxy {
            TrustProxy::OneProxy
        } else {
            TrustProxy::Off
        };
        let layer = RateLimitLayer::new(Arc::new(LocalBuckets::new(60, 1)), trust, Metrics::new());
        let metrics = Metrics::new();
        ServiceBuilder::new()
            .layer(ErrorMapLayer::new(metrics, crate::api::error_reply))
            .layer(layer)
            .service(service_fn(|_r: Request<()>| {
                Box::pin(async { Ok::<_, ProxyError>(Response::new(ProxyBody::empty())) })
            }))
    }

    fn req(peer: &str, xff: Option<&str>) -> Request<()> {
        let mut b = Request::builder().uri("/v1/models");
        if let Some(x) = xff {
            b = b.header("x-forwarded-for", x);
        }
        let mut r = b.body(()).unwrap();
        r.extensions_mut()
            .insert(PeerAddr(peer.parse::<SocketAddr>().unwrap()));
        r
    }

    #[tokio::test(start_paused = true)]
    async fn over_the_limit_is_429_with_headers() {
        let s = svc(false);
        let ok = s.clone().oneshot(req("10.0.0.1:1", None)).await.unwrap();
        assert_eq!(ok.headers()["x-ratelimit-remaining"], "0");
        let denied = s.clone().oneshot(req("10.0.0.1:2", None)).await.unwrap();
        assert_eq!(denied.status(), 429);
        assert_eq!(denied.headers()["retry-after"], "1");
        assert_eq!(denied.headers()["x-ratelimit-limit"], "1");
    }

    async fn status<S>(s: &S, peer: &str, xff: &str) -> u16
    where
        S: tower::Service<Request<()>, Response = Response<ProxyBody>, Error = Infallible> + Clone,
    {
        s.clone()
            .oneshot(req(peer, Some(xff)))
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    #[tokio::test(start_paused = true)]
    async fn spoofed_forwarded_for_does_not_bypass() {
        // Without TRUST_PROXY the header is ignored: same socket, same bucket.
        let s = svc(false);
        assert_eq!(status(&s, "10.0.0.1:1", "1.1.1.1").await, 200);
        assert_eq!(status(&s, "10.0.0.1:1", "2.2.2.2").await, 429);
        // With TRUST_PROXY the last hop counts; a forged first hop changes nothing.
        let s = svc(true);
        assert_eq!(status(&s, "127.0.0.1:1", "9.9.9.9, 3.3.3.3").await, 200);
        assert_eq!(status(&s, "127.0.0.1:1", "8.8.8.8, 3.3.3.3").await, 429);
        assert_eq!(status(&s, "127.0.0.1:1", "4.4.4.4").await, 200);
    }
}
