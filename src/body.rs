//! The one response body type of the proxy: a complete buffer (JSON answers, errors) or a
//! translated upstream stream. A concrete enum instead of a boxed body keeps the hot path
//! free of dynamic dispatch; boxing happens once, where the stack meets hyper.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::translate::body::TranslateBody;

pub enum ProxyBody {
    Full(Full<Bytes>),
    Stream(Box<TranslateBody<Incoming>>),
}

impl ProxyBody {
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        ProxyBody::Full(Full::new(bytes.into()))
    }

    pub fn empty() -> Self {
        ProxyBody::Full(Full::new(Bytes::new()))
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            ProxyBody::Full(b) => Pin::new(b).poll_frame(cx),
            ProxyBody::Stream(s) => Pin::new(s.as_mut()).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full(b) => b.is_end_stream(),
            ProxyBody::Stream(s) => s.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full(b) => b.size_hint(),
            ProxyBody::Stream(s) => s.size_hint(),
        }
    }
}
