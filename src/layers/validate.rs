//! Request validation before any upstream work: `content-type: application/json`, no
//! `content-encoding` (415: a compressed body is never mistaken for JSON), the body size
//! limit (`MAX_BODY_BYTES`: `content-length` checked first, then a limited read), the body
//! read deadline (`BODY_READ_TIMEOUT`: a client that stalls mid-body gets 408 instead of
//! holding a connection forever), and JSON → the route's client API's parsed request
//! (`ClientApi::parse`: the turn and the API's options) with precise 400s. The parsed
//! request becomes the request body as an `Arc`, so retries re-send it without re-reading
//! anything.

use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http_body_util::{BodyExt, Limited};
use hyper::body::Body;
use hyper::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Request, Response};

use crate::body::ProxyBody;
use crate::common::BoxFuture;
use crate::error::ProxyError;
use crate::turn::{ApiRequest, ClientApi};
use crate::untrusted::Untrusted;

/// The body limits.
#[derive(Debug, Clone, Copy)]
struct Limits {
    max_body: usize,
    read_timeout: Duration,
}

/// Validates requests for the client API `A`.
pub(crate) struct ValidateLayer<A> {
    limits: Limits,
    api: PhantomData<fn() -> A>,
}

impl<A> ValidateLayer<A> {
    pub(crate) fn new(max_body: usize, read_timeout: Duration) -> Self {
        Self {
            limits: Limits {
                max_body,
                read_timeout,
            },
            api: PhantomData,
        }
    }
}

impl<A, S> tower::Layer<S> for ValidateLayer<A> {
    type Service = Validate<A, S>;
    fn layer(&self, inner: S) -> Validate<A, S> {
        Validate {
            inner,
            limits: self.limits,
            api: PhantomData,
        }
    }
}

pub(crate) struct Validate<A, S> {
    inner: S,
    limits: Limits,
    api: PhantomData<fn() -> A>,
}

// By hand: a derive would ask `A: Clone`.
impl<A, S: Clone> Clone for Validate<A, S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            limits: self.limits,
            api: PhantomData,
        }
    }
}

impl<A, S, B> tower::Service<Request<B>> for Validate<A, S>
where
    A: ClientApi,
    S: tower::Service<
            Request<Arc<ApiRequest<A::Options>>>,
            Response = Response<ProxyBody>,
            Error = ProxyError,
        > + Clone
        + Send
        + 'static,
    S::Future: Send,
    B: Body + Send + 'static,
    B::Data: Buf + Send,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    type Response = Response<ProxyBody>;
    type Error = ProxyError;
    // Boxed: reading the body is async and the inner call follows it.
    type Future = BoxFuture<'static, Result<Response<ProxyBody>, ProxyError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // Take the service that was made ready; leave a fresh clone in its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let Limits {
            max_body: max,
            read_timeout,
        } = self.limits;
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            check_headers(&parts.headers, max)?;
            let bytes = tokio::time::timeout(read_timeout, read_limited(body, max))
                .await
                .map_err(|_| ProxyError::RequestTimeout {
                    after: read_timeout,
                })??;
            let parsed = A::parse(&bytes)?;
            let span = tracing::Span::current();
            span.record(
                "model",
                tracing::field::display(Untrusted(&parsed.turn.model)),
            );
            span.record("stream", parsed.turn.stream);
            inner
                .call(Request::from_parts(parts, Arc::new(parsed)))
                .await
        })
    }
}

fn check_headers(h: &hyper::HeaderMap, max: usize) -> Result<(), ProxyError> {
    let content_type = h
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type
        .trim_start()
        .to_ascii_lowercase()
        .starts_with("application/json")
    {
        return Err(ProxyError::UnsupportedMediaType);
    }
    if let Some(encoding) = h.get(CONTENT_ENCODING) {
        let encoding = String::from_utf8_lossy(encoding.as_bytes());
        if !encoding.trim().eq_ignore_ascii_case("identity") {
            return Err(ProxyError::UnsupportedEncoding {
                encoding: encoding.into_owned(),
            });
        }
    }
    let declared = h
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(ProxyError::PayloadTooLarge { limit: max });
    }
    Ok(())
}

async fn read_limited<B>(body: B, max: usize) -> Result<Bytes, ProxyError>
where
    B: Body,
    B::Data: Buf,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    match Limited::new(body, max).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(ProxyError::PayloadTooLarge { limit: max })
        }
        Err(e) => Err(ProxyError::bad_request(
            format!("Could not read the request body: {e}"),
            None,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::openai::request::Options;
    use crate::api::openai::OpenAi;
    use http_body_util::Full;
    use tower::{service_fn, ServiceBuilder, ServiceExt};

    fn svc(
    ) -> impl tower::Service<Request<Full<Bytes>>, Response = Response<ProxyBody>, Error = ProxyError>
           + Clone {
        ServiceBuilder::new()
            .layer(ValidateLayer::<OpenAi>::new(64, Duration::from_secs(5)))
            .service(service_fn(|r: Request<Arc<ApiRequest<Options>>>| {
                let model = r.body().turn.model.clone();
                Box::pin(async move { Ok::<_, ProxyError>(Response::new(ProxyBody::full(model))) })
            }))
    }

    fn req(ct: &str, body: &str) -> Request<Full<Bytes>> {
        Request::post("/v1/chat/completions")
            .header("content-type", ct)
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap()
    }

    #[tokio::test]
    async fn parses_into_an_arc_request() {
        let ok = svc()
            .oneshot(req(
                "application/json",
                r#"{"model":"m","messages":[{"role":"user","content":"x"}]}"#,
            ))
            .await;
        assert!(ok.is_ok());
    }

    #[tokio::test]
    async fn rejects_before_calling_inner() {
        assert_eq!(
            svc().oneshot(req("text/plain", "{}")).await.unwrap_err(),
            ProxyError::UnsupportedMediaType
        );
        let big = format!(
            r#"{{"model":"m","messages":[{{"role":"user","content":"{}"}}]}}"#,
            "x".repeat(100)
        );
        assert_eq!(
            svc()
                .oneshot(req("application/json", &big))
                .await
                .unwrap_err(),
            ProxyError::PayloadTooLarge { limit: 64 }
        );
        let err = svc()
            .oneshot(req("application/json; charset=utf-8", r#"{"model":"m"}"#))
            .await
            .unwrap_err();
        assert_eq!(err.param(), Some("messages"));
        let mut gz = req("application/json", r#"{"model":"m"}"#);
        gz.headers_mut()
            .insert(CONTENT_ENCODING, "gzip".parse().unwrap());
        assert_eq!(
            svc().oneshot(gz).await.unwrap_err().status(),
            hyper::StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
    }

    /// A body that sends part of itself and then nothing.
    struct Stalled(Option<Bytes>);

    impl Body for Stalled {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
            match self.0.take() {
                Some(b) => Poll::Ready(Some(Ok(hyper::body::Frame::data(b)))),
                None => Poll::Pending,
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_times_out() {
        let svc = ServiceBuilder::new()
            .layer(ValidateLayer::<OpenAi>::new(1024, Duration::from_secs(5)))
            .service(service_fn(|_r: Request<Arc<ApiRequest<Options>>>| async {
                Ok::<_, ProxyError>(Response::new(ProxyBody::empty()))
            }));
        let r = Request::post("/v1/chat/completions")
            .header("content-type", "application/json")
            .body(Stalled(Some(Bytes::from_static(b"{\"model\""))))
            .unwrap();
        let start = tokio::time::Instant::now();
        let err = svc.oneshot(r).await.unwrap_err();
        assert_eq!(err.status(), hyper::StatusCode::REQUEST_TIMEOUT);
        assert_eq!(start.elapsed(), Duration::from_secs(5));
    }
}
