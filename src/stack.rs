//! The tower stack around the core router, outer → inner:
//!
//! 1. **catch-panic** (tower-http): a panic in any layer or handler becomes a 500 OpenAI
//!    error JSON instead of a dropped connection, and is logged.
//! 2. **CORS** (tower-http, only when `CORS_ENABLED`): preflights answered here.
//! 3. **auth** (`layers::auth`): with `API_KEYS`, `/v1/*` needs a valid key (401 otherwise).
//! 4. **router** (`router.rs`): routes, body validation, handlers; every `ProxyError` is
//!    turned into its response in exactly one place (`ProxyError::into_response`).
//!
//! Streaming responses carry their own idle timeout and keep-alives in the body
//! (`translate::body`), because layer timeouts end at the response headers.

use std::any::Any;
use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Request, Response};
use tower::util::BoxCloneService;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::app::AppState;
use crate::error::ProxyError;
use crate::layers::auth::AuthLayer;
use crate::router::Router;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The response body at the top of the stack (boxed once, by catch-panic).
pub type HttpBody = tower_http::body::UnsyncBoxBody<Bytes, BoxError>;
pub type HttpService = BoxCloneService<Request<Incoming>, Response<HttpBody>, Infallible>;

fn panic_response(err: Box<dyn Any + Send + 'static>) -> Response<http_body_util::Full<Bytes>> {
    let detail = err
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| err.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    tracing::error!(panic = detail, "request handler panicked");
    let e = ProxyError::Internal("the request handler failed unexpectedly".to_owned());
    let mut rsp = Response::new(http_body_util::Full::new(e.to_json()));
    *rsp.status_mut() = e.status();
    rsp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    rsp
}

fn cors_layer(state: &AppState) -> Option<CorsLayer> {
    let cfg = &state.config.cors;
    if !cfg.enabled {
        return None;
    }
    let origin = if cfg.origin == "*" {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            cfg.origin
                .split(',')
                .filter_map(|o| HeaderValue::from_str(o.trim()).ok()),
        )
    };
    let layer = CorsLayer::new()
        .allow_origin(origin)
        .allow_methods([
            hyper::Method::GET,
            hyper::Method::POST,
            hyper::Method::OPTIONS,
        ])
        .allow_headers(tower_http::cors::Any)
        .allow_credentials(cfg.credentials);
    // `Any` headers cannot be combined with credentials; mirror the request instead.
    Some(if cfg.credentials {
        layer.allow_headers(tower_http::cors::AllowHeaders::mirror_request())
    } else {
        layer
    })
}

/// Build the whole stack for the proxy.
pub fn build(state: Arc<AppState>) -> HttpService {
    let svc = ServiceBuilder::new()
        .layer(CatchPanicLayer::custom(panic_response))
        .option_layer(cors_layer(&state))
        .map_response(|rsp: Response<_>| {
            rsp.map(|b| {
                UnsyncBoxBody::new(http_body_util::BodyExt::map_err(b, Into::<BoxError>::into))
            })
        })
        .layer(AuthLayer::new(&state.config.api_keys))
        .service(Router::new(state));
    BoxCloneService::new(svc)
}
