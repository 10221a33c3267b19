//! The request header limits (64 KiB, 128 headers), enforced here so that an oversized
//! header block gets `431` in the OpenAI error shape; and the `Host` header an HTTP/1.1
//! request must carry (RFC 9112 §3.2: a 400 without it, which hyper does not check).
//!
//! hyper rejects what it cannot parse before any service runs, with an empty body and no
//! hook to change it. So the server lets hyper accept up to twice these limits
//! (`server::HYPER_MAX_BUF`, `server::HYPER_MAX_HEADERS`) and this layer answers everything between
//! ours and hyper's with a JSON error; only blocks beyond hyper's own caps (and requests
//! hyper cannot parse at all: conflicting `Content-Length`/`Transfer-Encoding`, bad chunk
//! sizes, control characters) still get hyper's bare status (README "Errors").

use std::task::{Context, Poll};

use hyper::{Request, Response};

use super::reject::ResponseFuture;
use crate::body::ProxyBody;
use crate::error::ProxyError;
use crate::server::{MAX_HEADERS, MAX_HEADER_BYTES};

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct HeaderLimitLayer;

impl<S> tower::Layer<S> for HeaderLimitLayer {
    type Service = HeaderLimit<S>;
    fn layer(&self, inner: S) -> HeaderLimit<S> {
        HeaderLimit { inner }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct HeaderLimit<S> {
    inner: S,
}

impl<S, B> tower::Service<Request<B>> for HeaderLimit<S>
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

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let h = req.headers();
        let bytes: usize = h.iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
        if h.len() > MAX_HEADERS || bytes > MAX_HEADER_BYTES {
            return ResponseFuture::reject(ProxyError::HeadersTooLarge {
                count: h.len(),
                bytes,
            });
        }
        // HTTP/2 names the authority in its pseudo-header; HTTP/1.0 needs none.
        if req.version() == hyper::Version::HTTP_11 && !h.contains_key(hyper::header::HOST) {
            return ResponseFuture::reject(ProxyError::bad_request(
                "An HTTP/1.1 request needs a `Host` header.",
                None,
            ));
        }
        ResponseFuture::Inner(self.inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{service_fn, ServiceBuilder, ServiceExt};

    async fn status(req: Request<()>) -> u16 {
        let svc = ServiceBuilder::new()
            .layer(HeaderLimitLayer)
            .service(service_fn(|_r: Request<()>| {
                Box::pin(async { Ok::<_, ProxyError>(Response::new(ProxyBody::empty())) })
            }));
        match svc.oneshot(req).await {
            Ok(r) => r.status().as_u16(),
            Err(e) => e.status().as_u16(),
        }
    }

    #[tokio::test]
    async fn an_http11_request_without_host_is_400() {
        let without = Request::builder().uri("/health").body(()).unwrap();
        assert_eq!(status(without).await, 400);
        let with = Request::builder()
            .uri("/health")
            .header("host", "x")
            .body(())
            .unwrap();
        assert_eq!(status(with).await, 200);
        let http10 = Request::builder()
            .uri("/health")
            .version(hyper::Version::HTTP_10)
            .body(())
            .unwrap();
        assert_eq!(status(http10).await, 200);
        let http2 = Request::builder()
            .uri("http://x/health")
            .version(hyper::Version::HTTP_2)
            .body(())
            .unwrap();
        assert_eq!(status(http2).await, 200);
    }

    #[tokio::test]
    async fn too_many_or_too_big_headers_are_431() {
        let mut many = Request::builder();
        for i in 0..=MAX_HEADERS {
            many = many.header(format!("x-h{i}"), "v");
        }
        assert_eq!(status(many.body(()).unwrap()).await, 431);
        let big = Request::builder()
            .header("x-big", "v".repeat(MAX_HEADER_BYTES))
            .body(())
            .unwrap();
        assert_eq!(status(big).await, 431);
        let fine = Request::builder()
            .header("host", "x")
            .header("x-ok", "v".repeat(MAX_HEADER_BYTES / 2))
            .body(())
            .unwrap();
        assert_eq!(status(fine).await, 200);
    }
}
