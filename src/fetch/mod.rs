//! Fetching an image a client named by URL (an OpenAI `image_url` part with an `https://`
//! URL), without becoming a server-side request forgery tool.
//!
//! Threat model: the client chooses the URL, and the proxy's network can reach what the
//! client's cannot — the proxy's own host, the private network, the cloud metadata service
//! that hands out credentials. The client also controls DNS for its own names and the
//! answers of its own servers (redirects, sizes, slowness). So:
//!
//! - **Scheme**: `https` only (`http` too when the policy says so); anything else is
//!   [`FetchError::Scheme`]. URLs with credentials (`user:pass@`), numeric hosts that are
//!   not dotted quads (`2130706433`, `0x7f.1`) and other oddities are refused
//!   ([`FetchError::BadUrl`]) rather than interpreted (`target`).
//! - **Destination**: loopback, private, link-local, metadata, CGNAT, multicast,
//!   documentation, reserved and unspecified addresses are forbidden unless inside the
//!   policy's allow-list, and so are IPv6 forms embedding a forbidden IPv4 address
//!   (`policy`). An IP literal is checked before the request; a name is checked by the
//!   connector's resolver after resolution, on exactly the addresses it then connects to,
//!   refusing the name if any address is forbidden (`resolve`). Every response is also
//!   checked against the peer address the connection reports, as a backstop.
//! - **Redirects** are followed by hand, at most `max_redirects`, each new URL passing every
//!   check above.
//! - **Resources**: one timeout over the whole fetch; a body cap checked against
//!   `Content-Length` first and then while streaming; non-2xx is an error.
//! - **Nothing of the proxy's leaks**: a fixed `User-Agent` and `Accept: image/*`, no
//!   cookies, no auth headers. Error messages name at most a bounded host, never the URL's
//!   path or query, and not the forbidden address (that would make the proxy a DNS oracle
//!   for the internal network); the address is in the error for the log.
//!
//! Connection pooling is safe: hyper-util pools connections by scheme and authority, and
//! every pooled connection was made to an address that passed the check when it was made.
//! A later lookup of the same name that would be refused does not matter to it — it still
//! goes to the address that was checked — and a new connection resolves and checks again.
//! One `Fetcher` has one policy, so no connection is shared across policies.

mod policy;
mod resolve;
mod target;

use std::error::Error as _;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Empty};
use hyper::body::{Body as _, Incoming};
use hyper::header::{ACCEPT, CONTENT_TYPE, LOCATION, USER_AGENT};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::{HttpConnector, HttpInfo};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

pub(crate) use policy::{parse_allow_list, FetchPolicy, IpNet};
pub(crate) use resolve::{Resolve, SystemResolver};

use resolve::Guarded;

const FETCH_USER_AGENT: &str = "qwen-proxy-image-fetch";
/// The longest host an error message repeats.
const MAX_HOST_SHOWN: usize = 64;
/// A longer `Content-Type` is not one worth passing on.
const MAX_CONTENT_TYPE: usize = 256;

type HttpClient = Client<HttpsConnector<HttpConnector<Guarded>>, Empty<Bytes>>;

/// Fetches images under one [`FetchPolicy`]. Cheap to clone: clones share the policy and
/// the connection pool.
#[derive(Clone)]
pub(crate) struct Fetcher {
    inner: Arc<Inner>,
}

struct Inner {
    policy: Arc<FetchPolicy>,
    client: HttpClient,
}

/// A fetched body, at most `max_bytes` long.
#[derive(Debug, Clone)]
pub(crate) struct Fetched {
    pub(crate) bytes: Bytes,
    /// The final response's `Content-Type`, if it was a short, printable value.
    pub(crate) content_type: Option<String>,
    /// The URL that answered, after redirects (no fragment, no credentials).
    pub(crate) final_url: String,
}

impl Fetcher {
    /// A fetcher resolving names with the system's resolver.
    pub(crate) fn new(policy: FetchPolicy) -> Self {
        Self::with_resolver(policy, Arc::new(SystemResolver))
    }

    /// A fetcher resolving names with `dns` (tests map names of their own).
    pub(crate) fn with_resolver(policy: FetchPolicy, dns: Arc<dyn Resolve>) -> Self {
        let policy = Arc::new(policy);
        let mut tcp = HttpConnector::new_with_resolver(Guarded::new(policy.clone(), dns));
        // The TLS layer needs `https` URLs through; `target::parse` decides the schemes.
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        // As the upstream client (`qwen::client`): webpki roots, ALPN h2 or HTTP/1.1, the
        // SNI the URL's host.
        let tls = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(tcp);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(tls);
        Fetcher {
            inner: Arc::new(Inner { policy, client }),
        }
    }

    /// GET `url` under the policy, following redirects, within the policy's timeout.
    pub(crate) async fn get(&self, url: &str) -> Result<Fetched, FetchError> {
        tokio::time::timeout(self.inner.policy.timeout, self.fetch(url))
            .await
            .unwrap_or(Err(FetchError::Timeout))
    }

    async fn fetch(&self, url: &str) -> Result<Fetched, FetchError> {
        let policy = &*self.inner.policy;
        let mut uri = target::parse(url, policy)?;
        let mut redirects = 0u8;
        loop {
            let res = self.send(&uri).await?;
            let status = res.status();
            let location = res.headers().get(LOCATION);
            let Some(location) = location.filter(|_| is_redirect(status)) else {
                if !status.is_success() {
                    return Err(FetchError::Status(status.as_u16()));
                }
                return read(res, &uri, policy.max_bytes).await;
            };
            if redirects >= policy.max_redirects {
                return Err(FetchError::TooManyRedirects);
            }
            redirects += 1;
            let location = location
                .to_str()
                .map_err(|_| FetchError::BadUrl("the redirect's Location is not a valid URL"))?;
            uri = target::parse(&target::join(&uri, location)?, policy)?;
        }
    }

    /// One request, no redirect handling; the response's peer checked again.
    async fn send(&self, uri: &Uri) -> Result<Response<Incoming>, FetchError> {
        let req = Request::get(uri.clone())
            .header(USER_AGENT, FETCH_USER_AGENT)
            .header(ACCEPT, "image/*")
            .body(Empty::new())
            .map_err(|_| FetchError::BadUrl("not a valid URL"))?;
        let res = self
            .inner
            .client
            .request(req)
            .await
            .map_err(|e| from_client_error(&e))?;
        // Backstop: the resolver and the literal check already vetted this address.
        let peer = res
            .extensions()
            .get::<HttpInfo>()
            .map(|info| info.remote_addr().ip())
            .ok_or_else(|| FetchError::Connect("the connection reported no peer".into()))?;
        let host = uri.host().unwrap_or_default();
        self.inner
            .policy
            .check(peer)
            .map_err(|rule| FetchError::forbidden(host, peer, rule))?;
        Ok(res)
    }
}

fn is_redirect(status: StatusCode) -> bool {
    matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308)
}

/// The body, refused as soon as it is known to exceed `max` bytes: by its declared length
/// before reading, else when the frames read pass it.
async fn read(res: Response<Incoming>, uri: &Uri, max: u64) -> Result<Fetched, FetchError> {
    let declared = res.body().size_hint().lower();
    if declared > max {
        return Err(FetchError::TooLarge { limit: max });
    }
    let content_type = res
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= MAX_CONTENT_TYPE)
        .map(str::to_owned);
    let mut body = res.into_body();
    let mut bytes = BytesMut::with_capacity(usize::try_from(declared).unwrap_or(0));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| FetchError::Connect(chain(&e)))?;
        if let Ok(data) = frame.into_data() {
            if (bytes.len() + data.len()) as u64 > max {
                return Err(FetchError::TooLarge { limit: max });
            }
            bytes.extend_from_slice(&data);
        }
    }
    Ok(Fetched {
        bytes: bytes.freeze(),
        content_type,
        final_url: uri.to_string(),
    })
}

/// The resolver's refusal if it is in the error's source chain, else a connection failure.
fn from_client_error(err: &hyper_util::client::legacy::Error) -> FetchError {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = err.source();
    while let Some(e) = cause {
        if let Some(refused) = e.downcast_ref::<FetchError>() {
            return refused.clone();
        }
        cause = e.source();
    }
    FetchError::Connect(chain(err))
}

/// An error and its causes, `: `-separated, for the log.
fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut cause = err.source();
    while let Some(e) = cause {
        out.push_str(": ");
        out.push_str(&e.to_string());
        cause = e.source();
    }
    out
}

/// Why a fetch failed. `Display` is the client-facing message: it names at most a bounded
/// host, never the path, query, credentials or a resolved address; `Debug` has the detail
/// for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FetchError {
    /// Not `https` (or `http` when allowed).
    Scheme,
    /// Not a URL this fetcher accepts (the reason says why).
    BadUrl(&'static str),
    /// The host is, or resolves to, an address the policy forbids.
    Forbidden {
        host: String,
        addr: IpAddr,
        rule: &'static str,
    },
    /// The host's name did not resolve.
    Resolve { host: String },
    /// The body is over the policy's `max_bytes`.
    TooLarge { limit: u64 },
    /// The whole fetch took longer than the policy's `timeout`.
    Timeout,
    /// More redirects than the policy's `max_redirects`.
    TooManyRedirects,
    /// The final answer was not a 2xx.
    Status(u16),
    /// Connecting, TLS, or the HTTP exchange failed (the detail, for the log).
    Connect(String),
}

impl FetchError {
    /// The policy refused the URL (rather than the fetch failing): a scheme, a forbidden
    /// destination, a URL not accepted.
    pub(crate) fn is_refusal(&self) -> bool {
        matches!(
            self,
            FetchError::Scheme | FetchError::BadUrl(_) | FetchError::Forbidden { .. }
        )
    }

    fn forbidden(host: &str, addr: IpAddr, rule: &'static str) -> Self {
        FetchError::Forbidden {
            host: shown_host(host),
            addr,
            rule,
        }
    }

    fn resolve(host: &str) -> Self {
        FetchError::Resolve {
            host: shown_host(host),
        }
    }
}

/// A host as an error message may repeat it: host-name characters only, at most
/// `MAX_HOST_SHOWN` of them.
fn shown_host(host: &str) -> String {
    let mut shown: String = host
        .chars()
        .take(MAX_HOST_SHOWN)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':') {
                c
            } else {
                '?'
            }
        })
        .collect();
    if host.chars().count() > MAX_HOST_SHOWN {
        shown.push('…');
    }
    shown
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Scheme => f.write_str("image URLs must be https URLs"),
            Self::BadUrl(why) => write!(f, "image URL not accepted: {why}"),
            // For a name, one message whether it did not resolve or resolved to a forbidden
            // address: the client learns nothing about the proxy's network from it.
            Self::Forbidden { host, rule, .. } if is_literal(host) => write!(
                f,
                "image URL host `{host}` is not an allowed destination ({rule})"
            ),
            Self::Forbidden { host, .. } | Self::Resolve { host } => write!(
                f,
                "image URL host `{host}` does not resolve to an allowed destination"
            ),
            Self::TooLarge { limit } => write!(f, "image is larger than {limit} bytes"),
            Self::Timeout => f.write_str("image URL did not answer in time"),
            Self::TooManyRedirects => f.write_str("image URL redirected too many times"),
            Self::Status(status) => write!(f, "image URL answered with HTTP status {status}"),
            Self::Connect(_) => f.write_str("image URL host could not be reached"),
        }
    }
}

impl std::error::Error for FetchError {}

/// An IP address written as the host (`[::1]` or `10.0.0.1`), not a name.
fn is_literal(host: &str) -> bool {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .is_ok()
}

#[cfg(test)]
mod tests;
