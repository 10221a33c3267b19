//! The console's security headers (`console::SECURITY_HEADERS`: CSP, `nosniff`, no
//! framing, no referrer) on every response under `/admin` — errors and 405s included, so
//! this layer sits outside the error mapping and goes by the path, not the endpoint. Other
//! routes are left alone: a streamed completion does not carry a page's policy.
//!
//! The console is never cross-origin: the CORS headers `CORS_ENABLED` adds are taken off
//! its responses (preflights included). With credentials allowed, a page on a listed origin
//! of the same site (another port on `localhost`, a sibling subdomain — `SameSite=Strict`
//! lets those send the cookie) could otherwise read the CSRF token and act as the operator.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::header::{HeaderName, HeaderValue, CACHE_CONTROL};
use hyper::{Request, Response};

use crate::console::SECURITY_HEADERS;

#[derive(Debug, Clone, Default)]
pub(crate) struct OperatorHeadersLayer;

impl<S> tower::Layer<S> for OperatorHeadersLayer {
    type Service = OperatorHeaders<S>;
    fn layer(&self, inner: S) -> OperatorHeaders<S> {
        OperatorHeaders { inner }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct OperatorHeaders<S> {
    inner: S,
}

impl<S, B, RB> tower::Service<Request<B>> for OperatorHeaders<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>>,
    S::Future: Unpin,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let operator = crate::console::is_operator_path(req.uri().path());
        ResponseFuture {
            inner: self.inner.call(req),
            operator,
        }
    }
}

pub(crate) struct ResponseFuture<F> {
    inner: F,
    operator: bool,
}

impl<F, RB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>> + Unpin,
{
    type Output = Result<Response<RB>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut rsp = std::task::ready!(Pin::new(&mut self.inner).poll(cx))?;
        if self.operator {
            let headers = rsp.headers_mut();
            let cors: Vec<HeaderName> = headers
                .keys()
                .filter(|name| name.as_str().starts_with("access-control-"))
                .cloned()
                .collect();
            for name in cors {
                headers.remove(name);
            }
            for (name, value) in SECURITY_HEADERS {
                headers.insert(
                    HeaderName::from_static(name),
                    HeaderValue::from_static(value),
                );
            }
            // Operators' data is never cached on the way (the assets say `no-cache`).
            if !headers.contains_key(CACHE_CONTROL) {
                headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            }
        }
        Poll::Ready(Ok(rsp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tower::{service_fn, ServiceBuilder, ServiceExt};

    async fn headers_of(path: &str) -> hyper::HeaderMap {
        let svc = ServiceBuilder::new()
            .layer(OperatorHeadersLayer)
            .service(service_fn(|_req: Request<()>| {
                // What the CORS layer inside adds with CORS_CREDENTIALS.
                let rsp = Response::builder()
                    .header("access-control-allow-origin", "http://localhost:3000")
                    .header("access-control-allow-credentials", "true")
                    .body(())
                    .unwrap();
                Box::pin(async { Ok::<_, Infallible>(rsp) })
            }));
        let req = Request::builder().uri(path).body(()).unwrap();
        svc.oneshot(req).await.unwrap().headers().clone()
    }

    #[tokio::test]
    async fn operators_routes_get_the_policy_and_others_do_not() {
        for path in [
            "/admin",
            "/admin/",
            "/admin/accounts",
            "/admin/assets/app.js",
        ] {
            let h = headers_of(path).await;
            let csp = h["content-security-policy"].to_str().unwrap();
            assert!(csp.contains("frame-ancestors 'none'"), "{path}");
            assert!(csp.contains("script-src 'self';"), "{path}");
            assert!(!csp.contains("unsafe-inline"), "{path}");
            assert_eq!(h["x-content-type-options"], "nosniff");
            assert_eq!(h["cache-control"], "no-store");
            assert!(!h.contains_key("access-control-allow-origin"), "{path}");
            assert!(
                !h.contains_key("access-control-allow-credentials"),
                "{path}"
            );
        }
        for path in ["/v1/chat/completions", "/administrator", "/"] {
            let h = headers_of(path).await;
            assert!(!h.contains_key("content-security-policy"), "{path}");
            assert!(!h.contains_key("cache-control"), "{path}");
            assert!(h.contains_key("access-control-allow-origin"), "{path}");
        }
    }
}
