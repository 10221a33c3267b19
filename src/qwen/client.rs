//! The pooled upstream client: hyper-util's legacy client over hyper-rustls (HTTP/2 or
//! HTTP/1.1 by ALPN; on a plain-HTTP upstream HTTP/2 by prior knowledge until it turns out
//! not to speak it — `UpstreamProtocol`), with connect and response-header timeouts, the
//! browser-like header set, and classification of every non-stream answer into an
//! [`UpstreamError`].
//!
//! We send no `Accept-Encoding`, so the upstream answers uncompressed and no decoder sits
//! in the streaming path.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Request, Response};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::{Connect, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use super::classify::{body_error, frame_error};
use super::frame::Frame;
use super::headers::{Credentials, HeaderSet, Page};
use super::request::{NewChatBody, Turn};
use crate::common::{epoch_millis, epoch_secs};
use crate::config::{UpstreamConfig, UpstreamProtocol};
use crate::error::{ProxyError, UpstreamClass, UpstreamError};
use crate::metrics::Metrics;
use crate::workers::Lanes;

/// Error documents are small; anything bigger is not one.
const ERROR_BODY_LIMIT: usize = 256 * 1024;

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;
/// Through an outbound proxy: an HTTP CONNECT tunnel, then TLS (or not) inside it.
type TunnelClient = Client<HttpsConnector<Tunnel<HttpConnector>>, Full<Bytes>>;

/// One account's side of every upstream request: its header set (cookie jar, token,
/// browser values) and its way out (direct, or its own outbound proxy). Built by
/// `accounts` and replaced when the token changes.
#[derive(Debug, Clone)]
pub struct Caller {
    headers: HeaderSet,
    route: Route,
}

impl Caller {
    /// Its header set (sign-in and refresh adapt it to the auth domain).
    pub(super) fn headers(&self) -> &HeaderSet {
        &self.headers
    }
}

/// The way out of one account: direct (the shared pools), or through its proxy (a pool of
/// its own: connections through one proxy are never shared with another account).
#[derive(Debug, Clone)]
pub enum Route {
    Direct,
    /// A pool per worker, as for direct connections (`crate::workers`).
    Proxy(Box<Lanes<TunnelClient>>),
}

#[derive(Clone, Debug)]
pub struct QwenClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// HTTP/1.1 or what ALPN agrees (HTTP/2 only with `UPSTREAM_HTTP2=true`); a pool per
    /// worker, so a worker's upstream connections are driven on its own thread
    /// (`crate::workers`).
    http: Lanes<HttpClient>,
    /// `auto` on a plain-HTTP upstream: HTTP/2 by prior knowledge, while it works.
    h2c: Option<H2c>,
    base: String,
    /// Where sign-in and refresh go (`QWEN_AUTH_BASE_URL`, auth.qwen.ai).
    pub(super) auth_base: String,
    cfg: UpstreamConfig,
    header_timeout: Duration,
    metrics: Arc<Metrics>,
    /// Connection pools per route: one per worker runtime.
    lanes: usize,
}

/// HTTP/2 by prior knowledge on a plain-HTTP upstream. Before the first request a probe
/// decides — `GET /`, which is safe to send twice: if it gets any answer over h2c, h2c is
/// used; if it fails there but gets an answer over HTTP/1.1, the upstream does not speak
/// HTTP/2 and HTTP/1.1 is used from then on; if both fail (upstream down), the request goes
/// over HTTP/1.1 and the next one probes again. No real request is ever sent twice.
#[derive(Debug)]
struct H2c {
    client: Lanes<HttpClient>,
    state: AtomicU8,
    /// One probe at a time; the others wait for its verdict.
    probing: tokio::sync::Mutex<()>,
    /// How long a probe may take (the connect timeout: a server that neither answers nor
    /// closes on HTTP/2's preface must not hold the first requests for the header timeout).
    timeout: Duration,
}

const H2C_UNKNOWN: u8 = 0;
const H2C_WORKS: u8 = 1;
const H2C_REFUSED: u8 = 2;

fn tcp_connector(cfg: &UpstreamConfig) -> HttpConnector {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(cfg.connect_timeout));
    http.set_nodelay(true);
    http
}

fn http_client(cfg: &UpstreamConfig, http2_only: bool) -> HttpClient {
    let tls = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(tcp_connector(cfg));
    pooled(http2_only).build(tls)
}

fn pooled(http2_only: bool) -> hyper_util::client::legacy::Builder {
    let mut b = Client::builder(TokioExecutor::new());
    b
        // Shorter than typical upstream keep-alive, so we rarely reuse a dying socket.
        .pool_idle_timeout(Duration::from_secs(50))
        // No cap below the concurrency: over HTTP/1.1 each open stream holds its own
        // connection, and a cap (it was 256) closed the rest after every burst, so each
        // burst of 1,000 streams reopened ~1,400 connections at once (BENCHMARKS §4). Idle
        // connections are bounded by the peak concurrency (itself bounded by
        // MAX_CONCURRENT_STREAMS) and closed after the idle timeout.
        .pool_max_idle_per_host(usize::MAX)
        // A stream dropped before its end (a client gone mid-answer, a timeout) is reset,
        // which stops the generation upstream. The upstream's frames already in flight for
        // it must be recognised as a reset stream's: h2 remembers only 50 for a second by
        // default, and answers a frame of a forgotten one with a reset of its own that it
        // counts as an error; after 1,024 of those in the connection's life it tears the
        // connection down (GOAWAY `too_many_internal_resets`), failing every stream on it.
        // Remember as many as the busiest second aborts, and do not count the rest against
        // a connection to our one upstream (the limit guards servers against abusive
        // clients; here we open the streams).
        .http2_max_concurrent_reset_streams(RESET_STREAMS_REMEMBERED)
        .http2_max_local_error_reset_streams(None)
        .http2_only(http2_only);
    b
}

/// Streams reset by us whose late frames are still recognised (h2's default: 50).
const RESET_STREAMS_REMEMBERED: usize = 4096;

impl QwenClient {
    /// `lanes`: connection pools, one per worker runtime (`Workers::runtimes`).
    pub fn new(cfg: &UpstreamConfig, lanes: usize, metrics: Arc<Metrics>) -> Self {
        let plain = cfg.base_url.scheme_str() == Some("http");
        let h2c = (plain && cfg.protocol == UpstreamProtocol::Auto).then(|| H2c {
            client: Lanes::new(lanes, || http_client(cfg, true)),
            state: AtomicU8::new(H2C_UNKNOWN),
            probing: tokio::sync::Mutex::new(()),
            timeout: cfg.connect_timeout,
        });
        QwenClient {
            inner: Arc::new(Inner {
                http: Lanes::new(lanes, || {
                    http_client(cfg, cfg.protocol == UpstreamProtocol::Http2)
                }),
                h2c,
                base: cfg.base_url.to_string().trim_end_matches('/').to_owned(),
                auth_base: cfg
                    .auth_base_url
                    .to_string()
                    .trim_end_matches('/')
                    .to_owned(),
                cfg: cfg.clone(),
                header_timeout: cfg.header_timeout,
                metrics,
                lanes,
            }),
        }
    }

    /// The way out through an outbound proxy (`http://[user:pass@]host:port`, CONNECT).
    /// HTTP/1.1 or what ALPN agrees inside the tunnel; no h2c through a proxy.
    pub fn proxy_route(&self, proxy: &hyper::Uri) -> Route {
        let target = hyper::Uri::builder()
            .scheme("http")
            .authority(
                proxy
                    .host()
                    .map(|h| match proxy.port_u16() {
                        Some(p) => format!("{h}:{p}"),
                        None => format!("{h}:80"),
                    })
                    .unwrap_or_default(),
            )
            .path_and_query("/")
            .build()
            .unwrap_or_else(|_| proxy.clone());
        let auth = proxy
            .authority()
            .and_then(|a| a.as_str().rsplit_once('@'))
            .map(|(userinfo, _)| {
                // A URL's userinfo is percent-encoded; Basic auth wants the bytes themselves.
                let encoded =
                    crate::common::base64_encode(&crate::common::percent_decode(userinfo));
                hyper::header::HeaderValue::from_str(&format!("Basic {encoded}"))
            })
            .and_then(Result::ok);
        let tunnel_client = || {
            let mut tunnel = Tunnel::new(target.clone(), tcp_connector(&self.inner.cfg));
            if let Some(auth) = &auth {
                tunnel = tunnel.with_auth(auth.clone());
            }
            let tls = hyper_rustls::HttpsConnectorBuilder::new()
                .with_webpki_roots()
                .https_or_http()
                .enable_all_versions()
                .wrap_connector(tunnel);
            pooled(self.inner.cfg.protocol == UpstreamProtocol::Http2).build(tls)
        };
        Route::Proxy(Box::new(Lanes::new(self.inner.lanes, tunnel_client)))
    }

    /// One account's side of its requests.
    pub fn caller(&self, who: &Credentials, route: Route) -> Caller {
        Caller {
            headers: HeaderSet::new(&self.inner.cfg, who),
            route,
        }
    }

    pub(super) fn auth_base(&self) -> &str {
        &self.inner.auth_base
    }

    pub(super) fn chat_base(&self) -> &str {
        &self.inner.base
    }

    /// Count one upstream call by endpoint and outcome (`ok` or the error class).
    pub(super) fn record<T>(
        &self,
        endpoint: &str,
        r: Result<T, ProxyError>,
    ) -> Result<T, ProxyError> {
        let outcome = match &r {
            Ok(_) => "ok",
            Err(e) => e.metric_label(),
        };
        self.inner.metrics.upstream(endpoint, outcome);
        r
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) async fn send(
        &self,
        who: &Caller,
        method: Method,
        path: &str,
        page: Page<'_>,
        stream: bool,
        body: Bytes,
    ) -> Result<Response<Incoming>, ProxyError> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.inner.base))
            .body(Full::new(body))
            .map_err(|e| ProxyError::Internal(format!("building upstream request: {e}")))?;
        *req.headers_mut() = who.headers.build(page, stream);
        self.dispatch(who, req).await
    }

    /// Send a built request the caller's way.
    pub(super) async fn dispatch(
        &self,
        who: &Caller,
        req: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, ProxyError> {
        if let Route::Proxy(clients) = &who.route {
            return self.exchange(clients.get(), req).await;
        }
        let client = match &self.inner.h2c {
            Some(h2c) if self.h2c_usable(h2c).await => h2c.client.get(),
            _ => self.inner.http.get(),
        };
        self.exchange(client, req).await
    }

    /// Whether a plain-HTTP upstream speaks h2c, probing it the first time (see [`H2c`]).
    async fn h2c_usable(&self, h2c: &H2c) -> bool {
        let known = |h2c: &H2c| match h2c.state.load(Ordering::Acquire) {
            H2C_WORKS => Some(true),
            H2C_REFUSED => Some(false),
            _ => None,
        };
        if let Some(usable) = known(h2c) {
            return usable;
        }
        let _probing = h2c.probing.lock().await;
        if let Some(usable) = known(h2c) {
            return usable;
        }
        let probe = || {
            Request::get(format!("{}/", self.inner.base))
                .body(Full::new(Bytes::new()))
                .map_err(|e| ProxyError::Internal(format!("building the h2c probe: {e}")))
        };
        let Ok(req) = probe() else {
            return false;
        };
        let h2c_error =
            match tokio::time::timeout(h2c.timeout, self.exchange(h2c.client.get(), req)).await {
                Ok(Ok(_)) => {
                    h2c.state.store(H2C_WORKS, Ordering::Release);
                    return true;
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => "no answer to the HTTP/2 preface".to_owned(),
            };
        let Ok(req) = probe() else {
            return false;
        };
        if let Ok(Ok(_)) =
            tokio::time::timeout(h2c.timeout, self.exchange(self.inner.http.get(), req)).await
        {
            h2c.state.store(H2C_REFUSED, Ordering::Release);
            tracing::warn!(
                %h2c_error,
                "the upstream does not speak HTTP/2 without TLS; using HTTP/1.1 (UPSTREAM_HTTP2=false says so up front)"
            );
        }
        false
    }

    /// One request on `client`, within the response-header timeout.
    async fn exchange<C>(
        &self,
        client: &Client<C, Full<Bytes>>,
        req: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, ProxyError>
    where
        C: Connect + Clone + Send + Sync + 'static,
    {
        match tokio::time::timeout(self.inner.header_timeout, client.request(req)).await {
            Err(_) => Err(ProxyError::upstream(
                UpstreamClass::Timeout,
                format!(
                    "no response headers within {} s",
                    self.inner.header_timeout.as_secs_f32()
                ),
            )),
            Ok(Err(e)) => Err(ProxyError::upstream(UpstreamClass::Connect, describe(&e))),
            Ok(Ok(rsp)) => Ok(rsp),
        }
    }

    /// A file the upstream made (an image's CDN address, which carries its own key), read
    /// whole: at most `max` bytes, within the response-header timeout and then `max_time`.
    /// Only an address the upstream handed out comes here, never a client's (those go
    /// through `fetch` and its policy).
    pub(crate) async fn download(
        &self,
        url: &str,
        max: usize,
        max_time: Duration,
    ) -> Result<Bytes, ProxyError> {
        let failed = |detail: String| ProxyError::upstream(UpstreamClass::ServerError, detail);
        let uri: hyper::Uri = url
            .parse()
            .map_err(|_| failed("the upstream's image address is not a URL".to_owned()))?;
        if !matches!(uri.scheme_str(), Some("https" | "http")) {
            return Err(failed(
                "the upstream's image address is not http(s)".to_owned(),
            ));
        }
        let req = Request::get(uri)
            .body(Full::new(Bytes::new()))
            .map_err(|e| ProxyError::Internal(format!("building a download: {e}")))?;
        let rsp = self.exchange(self.inner.http.get(), req).await?;
        if !rsp.status().is_success() {
            return Err(failed(format!(
                "the upstream's image address answered {}",
                rsp.status().as_u16()
            )));
        }
        match tokio::time::timeout(max_time, Limited::new(rsp.into_body(), max).collect()).await {
            Ok(Ok(body)) => Ok(body.to_bytes()),
            Ok(Err(e)) => Err(failed(format!("reading the upstream's image: {e}"))),
            Err(_) => Err(ProxyError::upstream(
                UpstreamClass::Timeout,
                "the upstream's image was not read in time",
            )),
        }
    }

    /// `POST /api/v2/chats/new` → the new chat id.
    pub async fn create_chat(
        &self,
        who: &Caller,
        model: &str,
        chat_type: &str,
    ) -> Result<String, ProxyError> {
        let r = self.create_chat_inner(who, model, chat_type).await;
        self.record("chats_new", r)
    }

    async fn create_chat_inner(
        &self,
        who: &Caller,
        model: &str,
        chat_type: &str,
    ) -> Result<String, ProxyError> {
        let body = NewChatBody {
            title: "New Chat",
            models: [model],
            chat_mode: "normal",
            chat_type,
            timestamp: epoch_millis(),
            project_id: "",
        };
        let body = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
        let rsp = self
            .send(
                who,
                Method::POST,
                "/api/v2/chats/new",
                Page::NewChat,
                false,
                body,
            )
            .await?;
        let json = json_or_error(rsp).await?;
        json.get("data")
            .and_then(|d| d.get("id").or_else(|| d.get("chat_id")))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| {
                ProxyError::upstream(UpstreamClass::Protocol, "chats/new returned no chat id")
            })
    }

    /// `POST /api/v2/chat/completions?chat_id=…` → the response body to stream.
    ///
    /// Errors that the headers (or a short non-stream body) already reveal are returned
    /// here; errors inside a 200 body (JSON error documents, error frames) are found by the
    /// stream pipeline, which treats a bare JSON body as one event.
    pub async fn start_completion(
        &self,
        who: &Caller,
        turn: &Turn<'_>,
    ) -> Result<Incoming, ProxyError> {
        let r = self.start_completion_inner(who, turn).await;
        self.record("completions", r)
    }

    async fn start_completion_inner(
        &self,
        who: &Caller,
        turn: &Turn<'_>,
    ) -> Result<Incoming, ProxyError> {
        let body = Bytes::from(turn.body(epoch_secs()));
        let path = format!("/api/v2/chat/completions?chat_id={}", turn.chat_id);
        let rsp = self
            .send(
                who,
                Method::POST,
                &path,
                Page::Chat(turn.chat_id),
                true,
                body,
            )
            .await?;
        let status = effective_status(&rsp);
        let content_type = header_str(&rsp, CONTENT_TYPE).to_ascii_lowercase();
        if status == 200 && !content_type.contains("html") {
            return Ok(rsp.into_body());
        }
        let retry_after = retry_after(&rsp);
        let bytes = read_limited(rsp.into_body()).await?;
        let mut err = body_error(status, &content_type, &bytes);
        if err.retry_after.is_none() {
            err.retry_after = retry_after;
        }
        Err(err.into())
    }

    /// `GET /api/models`. It answers without credentials too, but then with the guest
    /// catalogue, which varies in length: fetch it as an account.
    pub async fn fetch_models(&self, who: &Caller) -> Result<Value, ProxyError> {
        let r = async {
            let rsp = self
                .send(
                    who,
                    Method::GET,
                    "/api/models",
                    Page::Home,
                    false,
                    Bytes::new(),
                )
                .await?;
            json_or_error(rsp).await
        }
        .await;
        self.record("models", r)
    }

    /// `GET /api/v1/auths/`: are the credentials accepted?
    pub async fn check_auth(&self, who: &Caller) -> Result<Value, ProxyError> {
        let rsp = self
            .send(
                who,
                Method::GET,
                "/api/v1/auths/",
                Page::Home,
                false,
                Bytes::new(),
            )
            .await?;
        json_or_error(rsp).await
    }

    /// `DELETE /api/v2/chats/{id}`; a chat that is already gone counts as deleted.
    ///
    /// Without an id the same path deletes *every* chat of the account (2026-09), so only
    /// ids of letters, digits and `-` (a UUID) are sent: nothing a server could normalise
    /// into the bare path (`.`, `..`, `%2e`, `/`).
    pub async fn delete_chat(&self, who: &Caller, chat_id: &str) -> Result<(), ProxyError> {
        let proper = !chat_id.is_empty()
            && chat_id.len() <= 64
            && chat_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !proper {
            return Err(ProxyError::Internal(
                "refusing to delete a chat without a proper id (that would delete them all)"
                    .to_owned(),
            ));
        }
        let path = format!("/api/v2/chats/{chat_id}");
        let rsp = self
            .send(
                who,
                Method::DELETE,
                &path,
                Page::Chat(chat_id),
                false,
                Bytes::new(),
            )
            .await?;
        match json_or_error(rsp).await {
            Ok(_) => Ok(()),
            Err(e) if e.upstream_class() == Some(UpstreamClass::ChatNotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `DELETE /api/v2/chats/`: every chat of the account, at once. Only the operator's
    /// explicit cleanup (admin API) calls this. Returns how many the upstream says it
    /// deleted, when it says.
    pub async fn purge_chats(&self, who: &Caller) -> Result<Option<u64>, ProxyError> {
        let rsp = self
            .send(
                who,
                Method::DELETE,
                "/api/v2/chats/",
                Page::Home,
                false,
                Bytes::new(),
            )
            .await?;
        let v = json_or_error(rsp).await?;
        Ok(v.pointer("/data/deleted").and_then(Value::as_u64))
    }
}

/// The logical status: `x-actual-status-code` overrides a wire 200.
pub(super) fn effective_status(rsp: &Response<Incoming>) -> u16 {
    let wire = rsp.status().as_u16();
    if wire != 200 {
        return wire;
    }
    header_str(rsp, "x-actual-status-code")
        .trim()
        .parse()
        .unwrap_or(wire)
}

pub(super) fn header_str<K: hyper::header::AsHeaderName>(rsp: &Response<Incoming>, key: K) -> &str {
    rsp.headers()
        .get(key)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

fn retry_after(rsp: &Response<Incoming>) -> Option<Duration> {
    header_str(rsp, RETRY_AFTER)
        .trim()
        .parse()
        .ok()
        .map(Duration::from_secs)
}

pub(super) async fn read_limited(body: Incoming) -> Result<Bytes, ProxyError> {
    match Limited::new(body, ERROR_BODY_LIMIT).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) => Err(ProxyError::upstream(
            UpstreamClass::Connect,
            format!("reading upstream response: {e}"),
        )),
    }
}

/// A JSON API answer (`chats/new`, models, auth): the document, or its classified error.
pub(super) async fn json_or_error(rsp: Response<Incoming>) -> Result<Value, ProxyError> {
    let status = effective_status(&rsp);
    let content_type = header_str(&rsp, CONTENT_TYPE).to_ascii_lowercase();
    let retry = retry_after(&rsp);
    let bytes = read_limited(rsp.into_body()).await?;
    if status == 200 && !content_type.contains("html") {
        if let Ok(frame) = Frame::parse(&bytes) {
            if let Some(e) = frame_error(&frame) {
                return Err(e.into());
            }
        }
        if let Ok(v) = serde_json::from_slice::<Value>(&bytes) {
            return Ok(v);
        }
    }
    let mut err: UpstreamError = body_error(status, &content_type, &bytes);
    if err.retry_after.is_none() {
        err.retry_after = retry;
    }
    Err(err.into())
}

/// Connection errors without secrets (hyper errors never include headers).
fn describe(e: &hyper_util::client::legacy::Error) -> String {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    #[test]
    fn proxy_credentials_are_decoded_then_base64_encoded() {
        let percent_decode = crate::common::percent_decode;
        assert_eq!(percent_decode("user:p%40ss%3a1"), b"user:p@ss:1");
        assert_eq!(percent_decode("a%zz%4"), b"a%zz%4", "not an escape: kept");
        assert_eq!(crate::common::base64_encode(b"user:pw"), "dXNlcjpwdw==");
    }
}
