//! `n` images: `n` image turns through the stack below (retries, the core), run at once,
//! then one answer in the asked format. All or nothing: one failed turn fails the request
//! with its error (a client never gets fewer images than it asked for, presented as all of
//! them), and a turn the upstream answered without an image — a refusal in words — is a
//! failure too, never an empty `data`.

use std::sync::Arc;
use std::task::{Context, Poll};

use http_body_util::BodyExt;
use hyper::{Request, Response, StatusCode};
use tokio::task::JoinSet;
use tower::ServiceExt;
use tracing::Instrument;

use super::{Generated, GeneratedImage, ImageFormat, ImageOptions};
use crate::app::AppState;
use crate::body::{json_response, ProxyBody};
use crate::common::BoxFuture;
use crate::error::{ProxyError, UpstreamClass};
use crate::layers::retry::copy_request;
use crate::turn::ApiRequest;

/// The largest image read back for `b64_json` (the upstream's 20 MB per file).
const MAX_IMAGE_BYTES: usize = 20 << 20;

#[derive(Clone)]
pub(crate) struct FanOutLayer {
    state: Arc<AppState>,
}

impl FanOutLayer {
    pub(crate) fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }
}

impl<S> tower::Layer<S> for FanOutLayer {
    type Service = FanOut<S>;
    fn layer(&self, inner: S) -> FanOut<S> {
        FanOut {
            inner,
            state: self.state.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct FanOut<S> {
    inner: S,
    state: Arc<AppState>,
}

type Req = Request<Arc<ApiRequest<ImageOptions>>>;

impl<S> tower::Service<Req> for FanOut<S>
where
    S: tower::Service<Req, Response = Response<ProxyBody>, Error = ProxyError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = Response<ProxyBody>;
    type Error = ProxyError;
    // Boxed: `n` calls and the downloads after them are one async function.
    type Future = BoxFuture<'static, Result<Response<ProxyBody>, ProxyError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        // Every turn goes through `oneshot`, which waits for its own service to be ready.
        let svc = self.inner.clone();
        let state = self.state.clone();
        Box::pin(async move {
            let options = req.body().options;
            let (parts, body) = req.into_parts();
            // Each turn is a request of its own to the stack below, with this one's headers
            // and extensions (its route, identity, start time).
            let turns: Vec<_> = (0..options.n)
                .map(|_| {
                    let one = copy_request(&parts, &body);
                    let svc = svc.clone();
                    async move { picture_of(svc.oneshot(one).await?).await }
                })
                .collect();
            let answers = all(turns.into_iter()).await?;
            // One picture per turn: `n` asked, `n` given (a turn that drew two gives its first).
            let mut data: Vec<GeneratedImage> = answers
                .iter()
                .filter_map(|a| a.data.first().cloned())
                .collect();
            if options.format == ImageFormat::B64Json {
                let downloads: Vec<_> = data
                    .iter()
                    .map(|image| {
                        let (state, url) = (state.clone(), image.url.clone().unwrap_or_default());
                        async move { b64(&state, &url).await }
                    })
                    .collect();
                let encoded = all(downloads.into_iter()).await?;
                data = encoded
                    .into_iter()
                    .map(|b64_json| GeneratedImage {
                        url: None,
                        b64_json: Some(b64_json),
                        revised_prompt: None,
                    })
                    .collect();
            }
            state.metrics.images_generated.inc_by(data.len() as u64);
            let created = answers.first().map_or(0, |a| a.created);
            let body = serde_json::to_vec(&Generated { created, data })
                .map_err(|e| ProxyError::Internal(format!("writing the images answer: {e}")))?;
            Ok(json_response(body))
        })
    }
}

/// One turn's answer: its images, at least one.
async fn picture_of(rsp: Response<ProxyBody>) -> Result<Generated, ProxyError> {
    if rsp.status() != StatusCode::OK {
        return Err(ProxyError::Internal(format!(
            "an image turn answered {}",
            rsp.status()
        )));
    }
    let bytes = rsp
        .into_body()
        .collect()
        .await
        .map_err(|e| ProxyError::Internal(format!("reading an image turn: {e}")))?
        .to_bytes();
    let answer: Generated = serde_json::from_slice(&bytes)
        .map_err(|e| ProxyError::Internal(format!("reading an image turn: {e}")))?;
    if answer.data.is_empty() {
        return Err(ProxyError::upstream(
            UpstreamClass::EmptyStream,
            "the upstream answered the prompt without an image",
        ));
    }
    Ok(answer)
}

/// The image at the upstream's address, as base64.
async fn b64(state: &AppState, url: &str) -> Result<String, ProxyError> {
    let timeout = state.config.media.image_fetch_timeout;
    let bytes = state.client.download(url, MAX_IMAGE_BYTES, timeout).await?;
    // The address's answer must be the picture, not an error page served with a 200.
    if crate::media::sniff(&bytes).is_none() {
        return Err(ProxyError::upstream(
            UpstreamClass::ServerError,
            "the upstream's image address did not answer with an image",
        ));
    }
    Ok(crate::common::base64_encode(&bytes))
}

/// Run the futures at once (as tasks, in the request's span); their results in order, or
/// the first error — the others are then cancelled (dropping the set aborts them, as does
/// the client going away).
async fn all<T, F>(futures: impl Iterator<Item = F>) -> Result<Vec<T>, ProxyError>
where
    T: Send + 'static,
    F: std::future::Future<Output = Result<T, ProxyError>> + Send + 'static,
{
    let mut set = JoinSet::new();
    let mut results = Vec::new();
    for (i, f) in futures.enumerate() {
        set.spawn(async move { (i, f.await) }.instrument(tracing::Span::current()));
        results.push(None);
    }
    while let Some(joined) = set.join_next().await {
        let (i, result) =
            joined.map_err(|e| ProxyError::Internal(format!("an image task stopped: {e}")))?;
        results[i] = Some(result?);
    }
    Ok(results.into_iter().flatten().collect())
}
