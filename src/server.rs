//! The accept loop: hyper-util's auto builder (HTTP/1.1, and h2c for clients that ask),
//! a header-read timeout against slowloris, and graceful shutdown with a bounded grace
//! period. Used for both the proxy and the simulator.
//!
//! Shutdown happens in two phases. While work is in flight (and for at most the grace
//! period) the listener keeps accepting, so load balancers' health probes get `503
//! draining` and new completions a `503` with `Retry-After` from the application, instead of
//! a refused connection that looks like a crash. Then the listener closes, connections are
//! told to finish, and whatever still runs after the grace period is ended in-band.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpSocket};

use crate::common::BoxError;

/// Largest accepted (by `layers::header_limits`, which answers in the OpenAI shape) header block (names, values and their separators).
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Most accepted header fields.
pub const MAX_HEADERS: usize = 128;
/// hyper's read buffer (and so its header block cap): room above ours.
pub const HYPER_MAX_BUF: usize = 2 * MAX_HEADER_BYTES;
/// hyper's header count cap: room above ours.
pub const HYPER_MAX_HEADERS: usize = 2 * MAX_HEADERS;

/// Default listen backlog (`LISTEN_BACKLOG`, `qwen-proxy sim --backlog`). The kernel caps
/// it at `net.core.somaxconn` (4096 on current Linux, 128 or 511 on older systems). The
/// old 128 (tokio's default, like std's) overflowed when a thousand clients connected at
/// once: a dropped SYN costs the client a one-second retransmit.
pub const DEFAULT_LISTEN_BACKLOG: u32 = 1024;

/// Bind `addr` with `SO_REUSEADDR` (a restart need not wait for `TIME_WAIT`) and listen
/// with `backlog` pending connections.
pub fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    listen(addr, backlog, false)
}

/// `count` listening sockets on `addr`, one per worker (`crate::workers`), non-blocking, for
/// each worker's runtime to take (`TcpListener::from_std`).
///
/// On Linux each is a socket of its own sharing the port with `SO_REUSEPORT`: the kernel
/// spreads new connections over them by their addresses, so a burst lands on every worker,
/// not on whichever woke first. `SO_REUSEPORT` would also let a second proxy started on the
/// same port by mistake join the group and quietly take part of the connections; a plain bind
/// first (which fails against any socket on the port, in a group or not) keeps "address in
/// use" an error — best effort: two proxies started in the same instant can both pass it. A
/// port of 0 is chosen by that bind and shared by the rest (chosen again if someone else took
/// it in between). Elsewhere `SO_REUSEPORT` does not spread TCP connections (BSDs, macOS) or
/// does not exist (Windows): every worker accepts from one shared socket.
pub fn bind_each(
    addr: SocketAddr,
    backlog: u32,
    count: usize,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    let count = count.max(1);
    if count > 1 && cfg!(any(target_os = "linux", target_os = "android")) {
        let mut attempts = 0;
        loop {
            let port = std::net::TcpListener::bind(addr)?.local_addr()?;
            let bound: std::io::Result<Vec<_>> = (0..count)
                .map(|_| listen(port, backlog, true)?.into_std())
                .collect();
            match bound {
                Err(e)
                    if e.kind() == std::io::ErrorKind::AddrInUse
                        && addr.port() == 0
                        && attempts < 3 =>
                {
                    attempts += 1;
                }
                other => return other,
            }
        }
    }
    let first = bind(addr, backlog)?.into_std()?;
    let mut listeners = Vec::with_capacity(count);
    for _ in 1..count {
        listeners.push(first.try_clone()?);
    }
    listeners.insert(0, first);
    Ok(listeners)
}

fn listen(addr: SocketAddr, backlog: u32, reuse_port: bool) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    #[cfg(any(target_os = "linux", target_os = "android"))]
    socket.set_reuseport(reuse_port)?;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = reuse_port;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// The peer address, put in request extensions for layers that need it.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// When the request arrived (for latency and time-to-first-token).
#[derive(Debug, Clone, Copy)]
pub struct RequestStart(pub tokio::time::Instant);

/// How long connections get to close after streams were told to end.
const FINAL_DRAIN: Duration = Duration::from_secs(5);

/// How a server stops.
pub struct Shutdown<Signal, Idle, Over> {
    /// Resolves when shutdown begins (SIGTERM, SIGINT, a test's trigger).
    pub signal: Signal,
    /// Called when shutdown begins; its future resolves once no work is in flight. Until
    /// then, for at most `grace`, the server keeps accepting connections.
    pub idle: Idle,
    /// How long in-flight work may take to finish.
    pub grace: Duration,
    /// Called when the grace period is over and work is still in flight (it should end
    /// open streams in-band).
    pub grace_over: Over,
}

/// How connections are served.
#[derive(Debug, Clone)]
pub struct ConnOptions {
    /// Counted once per accepted connection (the proxy's per-worker counter).
    pub accepted: Option<prometheus::IntCounter>,
    /// The whole request header block must arrive within this (slowloris protection).
    pub header_read_timeout: Duration,
    /// Refuse HTTP/2 (h2c): what an HTTP/1.1-only server does (the simulator's
    /// `--http1-only`, for testing clients that try HTTP/2 first).
    pub http1_only: bool,
}

/// Serve `service` on `listener` until `shutdown.signal` resolves, then shut down in the
/// two phases described above.
pub async fn serve<S, B, Signal, Idle, IdleFut, Over>(
    listener: TcpListener,
    service: S,
    shutdown: Shutdown<Signal, Idle, Over>,
    options: ConnOptions,
) where
    Signal: Future<Output = ()>,
    Idle: FnOnce() -> IdleFut,
    IdleFut: Future<Output = ()>,
    Over: FnOnce(),
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // Slowloris: the whole header block must arrive within this time.
        .header_read_timeout(options.header_read_timeout)
        .keep_alive(true)
        // hyper's caps on the header block sit above ours, which the header-limit layer
        // enforces with a proper error body (hyper's own rejection has none).
        .max_buf_size(HYPER_MAX_BUF)
        .max_headers(HYPER_MAX_HEADERS);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(1024);
    if options.http1_only {
        builder = builder.http1_only();
    }
    let graceful = GracefulShutdown::new();
    // The service is passed in, not captured: a captured borrow lives across the awaits
    // below, which would require the service to be `Sync`.
    let accept = |accepted, service: &S, graceful: &GracefulShutdown| {
        let (stream, peer): (tokio::net::TcpStream, SocketAddr) = match accepted {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: the caller backs off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                return false;
            }
        };
        let _ = stream.set_nodelay(true);
        if let Some(accepted) = &options.accepted {
            accepted.inc();
        }
        let svc =
            tower::ServiceExt::map_request(service.clone(), move |mut req: Request<Incoming>| {
                req.extensions_mut().insert(PeerAddr(peer));
                req.extensions_mut()
                    .insert(RequestStart(tokio::time::Instant::now()));
                req
            });
        let conn = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc));
        let conn = graceful.watch(conn.into_owned());
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
        });
        true
    };
    let backoff = || tokio::time::sleep(Duration::from_millis(50));

    let Shutdown {
        signal,
        idle,
        grace,
        grace_over,
    } = shutdown;
    tokio::pin!(signal);
    loop {
        tokio::select! {
            accepted = listener.accept() => if !accept(accepted, &service, &graceful) { backoff().await },
            () = &mut signal => break,
        }
    }

    // Phase 1: keep answering (health probes, refusals) while work is in flight.
    let grace_end = tokio::time::sleep(grace);
    tokio::pin!(grace_end);
    let idle = idle();
    tokio::pin!(idle);
    let mut grace_left = true;
    loop {
        tokio::select! {
            accepted = listener.accept() => if !accept(accepted, &service, &graceful) { backoff().await },
            () = &mut idle => break,
            () = &mut grace_end => {
                grace_left = false;
                break;
            }
        }
    }

    // Phase 2: stop accepting; connections finish their current request and close.
    drop(listener);
    let closed = graceful.shutdown();
    tokio::pin!(closed);
    if grace_left {
        tokio::select! {
            () = &mut closed => {
                tracing::info!("all connections closed");
                return;
            }
            () = &mut grace_end => {}
        }
    }
    tracing::warn!("shutdown grace period over; ending open streams");
    grace_over();
    if tokio::time::timeout(FINAL_DRAIN, closed).await.is_err() {
        tracing::warn!("connections still open after the final drain; exiting anyway");
    }
}
