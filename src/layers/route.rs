//! The route of a request, resolved once from the route table (`routes::Route::resolve`)
//! and put in its extensions: the layers after this one (trace and metrics labels, the
//! error shape, auth, the rate limit) and the router read it from there.

use std::task::{Context, Poll};

use hyper::Request;

use crate::routes::Route;

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RouteLayer;

impl<S> tower::Layer<S> for RouteLayer {
    type Service = SetRoute<S>;
    fn layer(&self, inner: S) -> SetRoute<S> {
        SetRoute { inner }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct SetRoute<S> {
    inner: S,
}

impl<S, B> tower::Service<Request<B>> for SetRoute<S>
where
    S: tower::Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> S::Future {
        let route = Route::resolve(req.method(), req.uri().path());
        req.extensions_mut().insert(route);
        self.inner.call(req)
    }
}
