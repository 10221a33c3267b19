//! Request validation before any upstream work: `content-type: application/json`, the body
//! size limit (`MAX_BODY_BYTES`: `content-length` checked first, then a limited read), and
//! JSON → typed [`ChatRequest`] with precise 400s. The parsed request becomes the request
//! body as an `Arc`, so retries re-send it without re-reading anything.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http_body_util::{BodyExt, Limited};
use hyper::body::Body;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Request, Response};

use crate::body::ProxyBody;
use crate::error::ProxyError;
use crate::openai::request::ChatRequest;

#[derive(Debug, Clone)]
pub struct ValidateLayer {
    max_body: usize,
}

impl ValidateLayer {
    pub fn new(max_body: usize) -> Self {
        Self { max_body }
    }
}

impl<S> tower::Layer<S> for ValidateLayer {
    type Service = Validate<S>;
    fn layer(&self, inner: S) -> Validate<S> {
        Validate {
            inner,
            max_body: self.max_body,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Validate<S> {
    inner: S,
    max_body: usize,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower::Service<Request<B>> for Validate<S>
where
    S: tower::Service<
            Request<Arc<ChatRequest>>,
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
    type Future = BoxFuture<Result<Response<ProxyBody>, ProxyError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // Take the service that was made ready; leave a fresh clone in its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let max = self.max_body;
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            check_headers(&parts.headers, max)?;
            let bytes = read_limited(body, max).await?;
            let chat = ChatRequest::from_slice(&bytes)?;
            tracing::Span::current().record("model", chat.model.as_str());
            tracing::Span::current().record("stream", chat.stream);
            inner.call(Request::from_parts(parts, Arc::new(chat))).await
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
    use http_body_util::Full;
    use tower::{service_fn, ServiceBuilder, ServiceExt};

    fn svc(
    ) -> impl tower::Service<Request<Full<Bytes>>, Response = Response<ProxyBody>, Error = ProxyError>
           + Clone {
        ServiceBuilder::new()
            .layer(ValidateLayer::new(64))
            .service(service_fn(|r: Request<Arc<ChatRequest>>| {
                let model = r.body().model.clone();
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
    }
}
