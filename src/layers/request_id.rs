//! `x-request-id`: accept the client's (or nginx's) id when it is sane, otherwise mint a
//! UUID; put it in request extensions (for logs and the trace span) and on the response.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::header::{HeaderName, HeaderValue};
use hyper::{Request, Response};

pub(crate) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The id of the request being served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RequestId(pub HeaderValue);

impl RequestId {
    pub(crate) fn as_str(&self) -> &str {
        self.0.to_str().unwrap_or("")
    }
}

/// Accept ids of at most 128 visible ASCII characters; anything else is replaced, so logs
/// cannot be flooded or forged through this header.
fn acceptable(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic())
}

#[derive(Debug, Clone, Default)]
pub(crate) struct RequestIdLayer;

impl<S> tower::Layer<S> for RequestIdLayer {
    type Service = SetRequestId<S>;
    fn layer(&self, inner: S) -> SetRequestId<S> {
        SetRequestId { inner }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct SetRequestId<S> {
    inner: S,
}

impl<S, B, RB> tower::Service<Request<B>> for SetRequestId<S>
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

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let id = match req.headers().get(&X_REQUEST_ID) {
            Some(v) if acceptable(v) => v.clone(),
            _ => {
                let minted = HeaderValue::from_str(&crate::common::random_uuid().to_string())
                    .unwrap_or_else(|_| HeaderValue::from_static("invalid"));
                req.headers_mut().insert(X_REQUEST_ID, minted.clone());
                minted
            }
        };
        req.extensions_mut().insert(RequestId(id.clone()));
        ResponseFuture {
            inner: self.inner.call(req),
            id: Some(id),
        }
    }
}

pub(crate) struct ResponseFuture<F> {
    inner: F,
    id: Option<HeaderValue>,
}

impl<F, RB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>> + Unpin,
{
    type Output = Result<Response<RB>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut rsp = std::task::ready!(Pin::new(&mut self.inner).poll(cx))?;
        if let Some(id) = self.id.take() {
            rsp.headers_mut().insert(X_REQUEST_ID, id);
        }
        Poll::Ready(Ok(rsp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tower::{service_fn, ServiceBuilder, ServiceExt};

    async fn run(header: Option<&str>) -> (String, String) {
        let svc = ServiceBuilder::new()
            .layer(RequestIdLayer)
            .service(service_fn(|req: Request<()>| {
                let seen = req
                    .extensions()
                    .get::<RequestId>()
                    .unwrap()
                    .as_str()
                    .to_owned();
                Box::pin(async move { Ok::<_, Infallible>(Response::new(seen)) })
            }));
        let mut b = Request::builder();
        if let Some(h) = header {
            b = b.header("x-request-id", h);
        }
        let rsp = svc.oneshot(b.body(()).unwrap()).await.unwrap();
        (
            rsp.headers()["x-request-id"].to_str().unwrap().to_owned(),
            rsp.into_body(),
        )
    }

    #[tokio::test]
    async fn accepts_or_mints() {
        assert_eq!(
            run(Some("abc-123")).await,
            ("abc-123".into(), "abc-123".into())
        );
        let (minted, seen) = run(None).await;
        assert_eq!(minted, seen);
        assert_eq!(minted.len(), 36);
        let (replaced, _) = run(Some(&"x".repeat(200))).await;
        assert_eq!(replaced.len(), 36);
    }
}
