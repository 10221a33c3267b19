//! The resolver hook: the only way a DNS name becomes an address the connector may use.
//!
//! hyper-util's `HttpConnector` asks its resolver (a `tower::Service<Name>`) for the
//! addresses of a name and connects only to what it returns. [`Guarded`] is that resolver:
//! it resolves (system DNS or an injected [`Resolve`]), then refuses the whole name if
//! **any** address is forbidden. The addresses checked are the addresses connected to, so
//! a name that resolves differently between a check and the connection (DNS rebinding)
//! has nothing to exploit: there is no second lookup.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::dns::Name;

use super::{FetchError, FetchPolicy};
use crate::common::BoxFuture;

/// Turns a DNS name (never an IP literal) into addresses. The fetcher's own is
/// [`SystemResolver`]; tests inject names of their own.
pub(crate) trait Resolve: Send + Sync {
    fn resolve(&self, host: &str) -> BoxFuture<'static, io::Result<Vec<IpAddr>>>;
}

/// The system's resolver (`getaddrinfo`, through `tokio::net::lookup_host`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(&self, host: &str) -> BoxFuture<'static, io::Result<Vec<IpAddr>>> {
        let host = host.to_owned();
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((host.as_str(), 0)).await?;
            Ok(addrs.map(|addr| addr.ip()).collect())
        })
    }
}

/// The connector's resolver: resolution, then the policy on every address.
#[derive(Clone)]
pub(super) struct Guarded {
    policy: Arc<FetchPolicy>,
    dns: Arc<dyn Resolve>,
}

impl Guarded {
    pub(super) fn new(policy: Arc<FetchPolicy>, dns: Arc<dyn Resolve>) -> Self {
        Guarded { policy, dns }
    }
}

impl tower::Service<Name> for Guarded {
    /// Port 0: the connector puts the URL's port in.
    type Response = std::vec::IntoIter<SocketAddr>;
    /// Travels through the connector's and the client's errors; `Fetcher` finds it in the
    /// source chain and reports it as it is.
    type Error = FetchError;
    type Future = BoxFuture<'static, Result<Self::Response, FetchError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), FetchError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let host = name.as_str().to_owned();
        let policy = self.policy.clone();
        let lookup = self.dns.resolve(&host);
        Box::pin(async move {
            let addrs = match lookup.await {
                Ok(addrs) if !addrs.is_empty() => addrs,
                _ => return Err(FetchError::resolve(&host)),
            };
            for &addr in &addrs {
                policy
                    .check(addr)
                    .map_err(|rule| FetchError::forbidden(&host, addr, rule))?;
            }
            let addrs: Vec<SocketAddr> = addrs.into_iter().map(|ip| (ip, 0).into()).collect();
            Ok(addrs.into_iter())
        })
    }
}
