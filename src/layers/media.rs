//! Images in the request, made files before anything upstream happens
//! (`media::MediaResolver`): addresses fetched under the fetch policy, every image checked
//! for type, size and count, a clear 400 naming the part otherwise. Between validation and
//! retries, so an image is fetched once per request, not once per attempt.
//!
//! A request without images (nearly all of them) passes straight through: the future is
//! the inner service's own ([`ResponseFuture::Inner`]); only one with images is resolved
//! first ([`ResponseFuture::Resolving`], boxed: it awaits the fetches, then the call).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::{Request, Response};

use crate::body::ProxyBody;
use crate::common::BoxFuture;
use crate::error::ProxyError;
use crate::media::MediaResolver;
use crate::turn::ApiRequest;

#[derive(Clone)]
pub(crate) struct MediaLayer {
    resolver: Arc<MediaResolver>,
}

impl MediaLayer {
    pub(crate) fn new(resolver: Arc<MediaResolver>) -> Self {
        Self { resolver }
    }
}

impl<S> tower::Layer<S> for MediaLayer {
    type Service = Media<S>;
    fn layer(&self, inner: S) -> Media<S> {
        Media {
            inner,
            resolver: self.resolver.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct Media<S> {
    inner: S,
    resolver: Arc<MediaResolver>,
}

impl<S, O> tower::Service<Request<Arc<ApiRequest<O>>>> for Media<S>
where
    O: Clone + Send + Sync + 'static,
    S: tower::Service<
            Request<Arc<ApiRequest<O>>>,
            Response = Response<ProxyBody>,
            Error = ProxyError,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + Unpin,
{
    type Response = Response<ProxyBody>;
    type Error = ProxyError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Arc<ApiRequest<O>>>) -> Self::Future {
        if !MediaResolver::has_images(&req.body().turn) {
            return ResponseFuture::Inner(self.inner.call(req));
        }
        // Take the service that was made ready; leave a fresh clone in its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let resolver = self.resolver.clone();
        ResponseFuture::Resolving(Box::pin(async move {
            let (parts, body) = req.into_parts();
            let mut parsed = Arc::unwrap_or_clone(body);
            resolver.resolve(&mut parsed.turn).await?;
            inner
                .call(Request::from_parts(parts, Arc::new(parsed)))
                .await
        }))
    }
}

pub(crate) enum ResponseFuture<F> {
    Inner(F),
    Resolving(BoxFuture<'static, Result<Response<ProxyBody>, ProxyError>>),
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ProxyBody>, ProxyError>> + Unpin,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            ResponseFuture::Inner(f) => Pin::new(f).poll(cx),
            ResponseFuture::Resolving(f) => f.as_mut().poll(cx),
        }
    }
}
