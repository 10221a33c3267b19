//! API-key authentication. With `API_KEYS` (or `API_KEYS_FILE`) set, every `/v1/*` request
//! needs `Authorization: Bearer <key>` or `x-api-key: <key>`; keys are compared in
//! constant time. `/health` and `/metrics` stay open. Without keys the layer is a no-op
//! (SDKs always send some key; an open server must ignore it).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::header::AUTHORIZATION;
use hyper::{Request, Response};

use crate::body::ProxyBody;
use crate::config::Secret;
use crate::error::ProxyError;

#[derive(Clone, Debug)]
pub struct AuthLayer {
    keys: Arc<[Box<[u8]>]>,
}

impl AuthLayer {
    pub fn new(keys: &[Secret]) -> Self {
        Self {
            keys: keys.iter().map(|k| k.expose().as_bytes().into()).collect(),
        }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Auth<S>;
    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            keys: self.keys.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Auth<S> {
    inner: S,
    keys: Arc<[Box<[u8]>]>,
}

/// Equal-length comparison whose time does not depend on where the bytes differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl<S> Auth<S> {
    fn authorized<B>(&self, req: &Request<B>) -> bool {
        if self.keys.is_empty() || !req.uri().path().starts_with("/v1/") {
            return true;
        }
        let h = req.headers();
        let presented = h
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .or_else(|| h.get("x-api-key").and_then(|v| v.to_str().ok()))
            .map(str::trim)
            .unwrap_or("");
        // Check every key so the time does not reveal which one matched.
        self.keys.iter().fold(false, |ok, k| {
            constant_time_eq(k, presented.as_bytes()) | ok
        })
    }
}

impl<S, B> tower::Service<Request<B>> for Auth<S>
where
    S: tower::Service<Request<B>, Response = Response<ProxyBody>>,
    S::Future: Unpin,
{
    type Response = Response<ProxyBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if self.authorized(&req) {
            ResponseFuture::Inner(self.inner.call(req))
        } else {
            ResponseFuture::Rejected(Some(ProxyError::InvalidApiKey.into_response()))
        }
    }
}

pub enum ResponseFuture<F> {
    Inner(F),
    Rejected(Option<Response<ProxyBody>>),
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ProxyBody>, E>> + Unpin,
{
    type Output = Result<Response<ProxyBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            ResponseFuture::Inner(f) => Pin::new(f).poll(cx),
            ResponseFuture::Rejected(rsp) => match rsp.take() {
                Some(r) => Poll::Ready(Ok(r)),
                None => Poll::Pending,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tower::{service_fn, ServiceBuilder, ServiceExt};

    fn svc(
        keys: &[&str],
    ) -> impl tower::Service<Request<()>, Response = Response<ProxyBody>, Error = Infallible> + Clone
    {
        let keys: Vec<Secret> = keys.iter().map(|k| Secret::new(*k)).collect();
        ServiceBuilder::new()
            .layer(AuthLayer::new(&keys))
            .service(service_fn(|_req: Request<()>| {
                Box::pin(async { Ok::<_, Infallible>(Response::new(ProxyBody::empty())) })
            }))
    }

    fn req(path: &str, header: Option<(&str, &str)>) -> Request<()> {
        let mut b = Request::builder().uri(path);
        if let Some((k, v)) = header {
            b = b.header(k, v);
        }
        b.body(()).unwrap()
    }

    #[tokio::test]
    async fn keys_required_on_v1_only() {
        let s = svc(&["k1", "k2"]);
        let r = s.clone().oneshot(req("/v1/models", None)).await.unwrap();
        assert_eq!(r.status(), 401);
        let r = s
            .clone()
            .oneshot(req("/v1/models", Some(("authorization", "Bearer k2"))))
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let r = s
            .clone()
            .oneshot(req("/v1/models", Some(("x-api-key", "k1"))))
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let r = s
            .clone()
            .oneshot(req("/v1/models", Some(("authorization", "Bearer k3"))))
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let r = s.clone().oneshot(req("/health", None)).await.unwrap();
        assert_eq!(r.status(), 200);
    }

    #[tokio::test]
    async fn open_without_keys() {
        let r = svc(&[])
            .oneshot(req(
                "/v1/models",
                Some(("authorization", "Bearer anything")),
            ))
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
}
