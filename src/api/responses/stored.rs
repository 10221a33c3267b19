//! The Responses route's own stage, between validation and retries: it resolves what the
//! request names from stored responses — `previous_response_id` (the chain's history, put
//! before the new input, after the new `instructions`) and `item_reference`s (spliced in
//! where they stood) — so the turn below is a whole history like any other, and the
//! conversation store continues the upstream chat it hashes to. It hands the encoder the
//! store when the response is to be kept, and names the tool types left out in
//! `x-qwen-proxy-ignored-tools`. `GET`/`DELETE /v1/responses/{id}` are served here too.

use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::header::HeaderValue;
use hyper::{Method, Request, Response};

use super::request::merge_calls;
use super::store::ResponseStore;
use super::{Options, Sink};
use crate::body::{json_response, ProxyBody};
use crate::common::BoxFuture;
use crate::error::ProxyError;
use crate::translate::limits::estimate_tokens;
use crate::turn::ApiRequest;

/// The header that names the declared tool types this proxy left out.
pub const IGNORED_TOOLS_HEADER: &str = "x-qwen-proxy-ignored-tools";

#[derive(Clone)]
pub(crate) struct StoredLayer {
    store: Arc<ResponseStore>,
}

impl StoredLayer {
    pub(crate) fn new(store: Arc<ResponseStore>) -> Self {
        Self { store }
    }
}

impl<S> tower::Layer<S> for StoredLayer {
    type Service = Stored<S>;
    fn layer(&self, inner: S) -> Stored<S> {
        Stored {
            inner,
            store: self.store.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct Stored<S> {
    inner: S,
    store: Arc<ResponseStore>,
}

type Req = Request<Arc<ApiRequest<Options>>>;

impl<S> tower::Service<Req> for Stored<S>
where
    S: tower::Service<Req, Response = Response<ProxyBody>, Error = ProxyError>,
    S::Future: Send + 'static,
{
    type Response = Response<ProxyBody>;
    type Error = ProxyError;
    type Future = BoxFuture<'static, Result<Response<ProxyBody>, ProxyError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let (parts, api) = req.into_parts();
        // Validation made the request a moment ago: the `Arc` is ours alone.
        let mut api = Arc::try_unwrap(api).unwrap_or_else(|shared| (*shared).clone());
        if let Err(e) = resolve(&self.store, &mut api) {
            return Box::pin(std::future::ready(Err(e)));
        }
        let ignored = (!api.options.echo.ignored_tools.is_empty())
            .then(|| HeaderValue::from_str(&api.options.echo.ignored_tools.join(", ")).ok())
            .flatten();
        let fut = self.inner.call(Request::from_parts(parts, Arc::new(api)));
        Box::pin(async move {
            let mut rsp = fut.await?;
            if let Some(v) = ignored {
                rsp.headers_mut().insert(IGNORED_TOOLS_HEADER, v);
            }
            Ok(rsp)
        })
    }
}

/// Splice the stored history and items into the turn; give the encoder the store.
fn resolve(store: &Arc<ResponseStore>, api: &mut ApiRequest<Options>) -> Result<(), ProxyError> {
    let options = &mut api.options;
    let messages = &mut api.turn.messages;
    let references = std::mem::take(&mut options.references);
    // From the last, so the earlier positions stay where they were.
    for (at, id) in references.iter().rev() {
        let item = store.item(id).ok_or_else(|| ProxyError::BadRequest {
            message: format!(
                "Item with id '{}' not found (items are kept with `store: true`, on the instance that answered; otherwise send the item itself).",
                crate::untrusted::clip(id)
            ),
            param: Some("input".to_owned()),
            code: Some("item_not_found"),
        })?;
        messages.insert(*at, item);
    }
    if !references.is_empty() {
        merge_calls(messages);
    }
    // The history goes in whole (it was merged when it was stored), so `inherited` counts
    // exactly the messages the encoder does not store again.
    let mut inherited = 0;
    if let Some(previous) = &options.previous_response_id {
        let history = store.history(previous)?;
        inherited = history.len();
        options.input_tokens += history
            .iter()
            .map(|m| estimate_tokens(&m.text()))
            .sum::<u64>();
        let at = usize::from(options.instructions);
        messages.splice(at..at, history);
    }
    if options.store {
        options.sink = Some(Sink {
            store: store.clone(),
            inherited,
        });
    }
    Ok(())
}

/// `GET` (the stored object) and `DELETE` of `/v1/responses/{id}`.
pub(crate) fn serve(
    store: &ResponseStore,
    method: &Method,
    id: &str,
    query: Option<&str>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let not_found = || ProxyError::ResponseNotFound { id: id.to_owned() };
    // `/input_items`, `/cancel`: not served (responses are never in the background).
    if id.contains('/') {
        return Err(ProxyError::RouteNotFound {
            path: format!("/v1/responses/{id}"),
        });
    }
    // The SDKs' `retrieve(id, stream=True)` replays a stream: a stored one cannot be.
    if query.is_some_and(|q| q.split('&').any(|p| p == "stream=true")) {
        return Err(ProxyError::bad_request(
            "A stored response cannot be streamed again; retrieve it without `stream`.",
            Some("stream"),
        ));
    }
    match *method {
        Method::GET | Method::HEAD => store.get(id).map(json_response).ok_or_else(not_found),
        Method::DELETE if store.delete(id) => Ok(json_response(
            serde_json::json!({"id": id, "object": "response", "deleted": true}).to_string(),
        )),
        Method::DELETE => Err(not_found()),
        _ => Err(ProxyError::MethodNotAllowed {
            allow: "GET, DELETE",
        }),
    }
}
