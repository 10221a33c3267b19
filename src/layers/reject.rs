//! The response future of a layer that either calls the inner service or rejects the
//! request at once with a [`ProxyError`] (mapped to a response by the error-map layer).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::Response;

use crate::body::ProxyBody;
use crate::error::ProxyError;

pub(crate) enum ResponseFuture<F> {
    Inner(F),
    Rejected(Option<ProxyError>),
}

impl<F> ResponseFuture<F> {
    pub(crate) fn reject(e: ProxyError) -> Self {
        ResponseFuture::Rejected(Some(e))
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ProxyBody>, ProxyError>> + Unpin,
{
    type Output = Result<Response<ProxyBody>, ProxyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            ResponseFuture::Inner(f) => Pin::new(f).poll(cx),
            // Polled again after it completed: a bug in the caller, never ready again.
            ResponseFuture::Rejected(e) => match e.take() {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
        }
    }
}
