//! The accept loop: hyper-util's auto builder (HTTP/1.1, and h2c for clients that ask),
//! a header-read timeout against slowloris, and graceful shutdown with a bounded grace
//! period. Used for both the proxy and the simulator.

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
use tokio::net::TcpListener;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The peer address, put in request extensions for layers that need it.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// When the request arrived (for latency and time-to-first-token).
#[derive(Debug, Clone, Copy)]
pub struct RequestStart(pub tokio::time::Instant);

/// How long connections get to close after streams were told to end.
const FINAL_DRAIN: Duration = Duration::from_secs(5);

/// Serve `service` on `listener` until `shutdown` resolves; then stop accepting, let open
/// connections finish for `grace`, call `grace_over` (which should end open streams), and
/// wait a last few seconds before returning.
pub async fn serve<S, B>(
    listener: TcpListener,
    service: S,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
    grace_over: impl FnOnce(),
    header_read_timeout: Duration,
) where
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
        .header_read_timeout(header_read_timeout)
        .keep_alive(true)
        // Caps the header block (and read buffer); bodies are limited by the validate layer.
        .max_buf_size(64 * 1024)
        .max_headers(128);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(1024);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(c) => c,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let svc = tower::ServiceExt::map_request(service.clone(), move |mut req: Request<Incoming>| {
                    req.extensions_mut().insert(PeerAddr(peer));
                    req.extensions_mut().insert(RequestStart(tokio::time::Instant::now()));
                    req
                });
                let conn = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc));
                let conn = graceful.watch(conn.into_owned());
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, %peer, "connection ended with an error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    let closed = graceful.shutdown();
    tokio::pin!(closed);
    tokio::select! {
        () = &mut closed => {
            tracing::info!("all connections closed");
            return;
        }
        () = tokio::time::sleep(grace) => {
            tracing::warn!("shutdown grace period over; ending open streams");
        }
    }
    grace_over();
    if tokio::time::timeout(FINAL_DRAIN, closed).await.is_err() {
        tracing::warn!("connections still open after the final drain; exiting anyway");
    }
}
