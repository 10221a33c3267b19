//! Non-streaming responses: the same upstream pipeline, collected into one message.

use std::future::poll_fn;

use bytes::Bytes;
use hyper::body::Body;

use super::body::{Step, UpstreamStream};
use super::stage::Stage;
use super::state::{Citation, Emit, FinishReason, ToolCall, Usage};
use crate::error::ProxyError;

/// The collected assistant message.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Collected {
    pub content: String,
    pub reasoning: String,
    /// Tool calls in order: (name, arguments as JSON).
    pub tool_calls: Vec<(String, String)>,
    /// Citations of search sources in the content, in order.
    pub citations: Vec<CitationOwned>,
    /// Addresses of the images the upstream made (also in `content`, as Markdown).
    pub images: Vec<String>,
}

/// A [`Citation`] kept past its event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CitationOwned {
    pub url: String,
    pub title: String,
    pub start: usize,
    pub end: usize,
}

impl Emit for Collected {
    fn reasoning(&mut self, text: &str) {
        self.reasoning.push_str(text);
    }

    fn content(&mut self, text: &str) {
        self.content.push_str(text);
    }

    fn tool_call(&mut self, call: &ToolCall<'_>) {
        self.tool_calls
            .push((call.name.to_owned(), call.arguments.to_owned()));
    }

    fn image(&mut self, url: &str) {
        self.images.push(url.to_owned());
    }

    fn citation(&mut self, c: &Citation<'_>) {
        self.citations.push(CitationOwned {
            url: c.url.to_owned(),
            title: c.title.to_owned(),
            start: c.start,
            end: c.end,
        });
    }
}

/// Read the upstream to the end. Any upstream error — also one after partial content —
/// fails the whole request: a non-streaming client must never get a truncated answer
/// presented as complete.
pub async fn collect<B, S>(
    stream: &mut UpstreamStream<B, S>,
    on_first_output: impl FnOnce(),
) -> Result<(Collected, FinishReason, Usage), ProxyError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
    S: Stage,
{
    let mut out = Collected::default();
    let mut on_first_output = Some(on_first_output);
    loop {
        match poll_fn(|cx| stream.poll_step(cx, &mut out)).await {
            Step::Progress => {
                if stream.pipeline().emitted_anything() {
                    if let Some(f) = on_first_output.take() {
                        f();
                    }
                }
            }
            Step::Done(reason) => return Ok((out, reason, stream.usage())),
            Step::Failed(e) => return Err(e.into()),
        }
    }
}
