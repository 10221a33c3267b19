//! Image generation, chat_type `t2i` (`qwen-protocol.md` §4.4, §5.10): which completions
//! are one, the sizes they may ask for, and their stream — `response.created`, an empty
//! `image_gen` frame, after the generation time the `image_gen` frame whose content is the
//! picture's URL (served by `images.rs`) with `extra.output_image_hw`, then `image_gen`
//! finished. Thinking is off and there is no answer phase, whatever the directives ask.
//!
//! A completion is t2i when its message's `chat_type` is. It is refused with E7
//! (`Bad_Request` "Internal error") when its chat was not created as t2i (`chats/new`'s
//! `chat_type`), when its model's catalogue entry does not list t2i, or when its `size` is
//! not one of [`SIZES`]. Other completions are not checked against the chat's type: the
//! upstream answers t2t and search completions in a t2i chat (§3.2).
//!
//! Directives: `image_quota[=HOURS]` refuses the completion with E1 about image generation;
//! `moderation_input` refuses it like any completion (E12); `image_fail` (and the mid-stream
//! faults `internal_error`, `quota_midstream`, `moderation_output`, `rate_limited_after`)
//! ends the stream with its error frame after the empty `image_gen` frame, no URL;
//! `empty`, `rate_limited_frame`, `reset`, `stall`, `ttft`, `delay`, `split` and `done`
//! work as in a t2t stream.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use hyper::StatusCode;
use serde_json::Value;

use super::catalogue::lists_chat_type;
use super::handlers::{respond, SimBody, SimService};
use super::images::Place;
use super::scenario::{Fault, Scenario};
use super::script::{self, Step};
use super::state::lock;
use super::wire;
use super::SimTiming;

/// The ratios the generator takes (`size`) and the pixels it draws them in, width ×
/// height — the aspect-ratio table published with Qwen-Image, about 1.7 megapixels each:
///
/// | `size` | pixels |
/// |---|---|
/// | `1:1` | 1328 × 1328 |
/// | `16:9` | 1664 × 928 |
/// | `9:16` | 928 × 1664 |
/// | `4:3` | 1472 × 1140 |
/// | `3:4` | 1140 × 1472 |
/// | `3:2` | 1584 × 1056 |
/// | `2:3` | 1056 × 1584 |
///
/// Any other `size` (`"1024*1024"`, `"21:9"`, a number) is refused: the upstream's
/// "oversized image size" E7.
pub const SIZES: [(&str, Size); 7] = [
    ("1:1", Size::new(1328, 1328)),
    ("16:9", Size::new(1664, 928)),
    ("9:16", Size::new(928, 1664)),
    ("4:3", Size::new(1472, 1140)),
    ("3:4", Size::new(1140, 1472)),
    ("3:2", Size::new(1584, 1056)),
    ("2:3", Size::new(1056, 1584)),
];

/// The ratio of a t2i completion that names none.
const DEFAULT_RATIO: &str = "1:1";

/// A picture's dimensions in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size {
    pub width: u32,
    pub height: u32,
}

impl Size {
    const fn new(width: u32, height: u32) -> Self {
        Self { width, height }
    }
}

/// The dimensions of `ratio` (`None` if it is not one of [`SIZES`]).
pub fn size_of(ratio: &str) -> Option<Size> {
    SIZES.iter().find(|(r, _)| *r == ratio).map(|(_, s)| *s)
}

/// A t2i completion the upstream answers with E7.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Refused;

/// The picture a completion asks for: `None` when it is not t2i. Its `size` is read from
/// the body (`size`), else the message (`size`, then `extra.meta.size`), else 1:1.
pub(super) fn asked(
    body: &Value,
    message: &Value,
    chat_type: &str,
    chat_created_as: &str,
    model: &str,
) -> Result<Option<Size>, Refused> {
    if chat_type != "t2i" {
        return Ok(None);
    }
    if chat_created_as != "t2i" || !lists_chat_type(model, "t2i") {
        return Err(Refused);
    }
    let size = [
        body.get("size"),
        message.get("size"),
        message.pointer("/extra/meta/size"),
    ]
    .into_iter()
    .flatten()
    .find(|s| !s.is_null());
    match size {
        None => Ok(size_of(DEFAULT_RATIO)),
        Some(s) => s.as_str().and_then(size_of).map(Some).ok_or(Refused),
    }
}

/// E1 for the account's image generations: the body is the daily-quota document
/// (non-SSE), `num` = hours.
pub(super) fn quota_refusal(hours: f64) -> hyper::Response<SimBody> {
    let body = wire::image_rate_limited_json(&uuid::Uuid::new_v4().to_string(), hours);
    respond(StatusCode::OK, None, "application/json", body)
}

/// One t2i completion.
pub(super) struct ImageJob<'a> {
    pub chat_id: &'a str,
    pub user_node_id: &'a str,
    pub response_id: &'a str,
    /// The prompt, directives stripped: the picture's pattern and the `split` offsets.
    pub prompt: &'a str,
    pub size: Size,
    pub scenario: &'a Scenario,
    /// `http://host:port` the completion was sent to: where the picture's URL points.
    pub origin: &'a str,
    /// The account's path-safe id (the URL's `uid`).
    pub uid: &'a str,
    pub now_secs: u64,
}

impl SimService {
    /// The script of a t2i completion; the picture is recorded (and counted) only when its
    /// URL is in the script.
    pub(super) fn image_stream(&self, job: &ImageJob<'_>) -> VecDeque<Step> {
        build(job, &self.config.timing, self.config.image_delay, || {
            let place = Place {
                origin: job.origin,
                uid: job.uid,
                response_id: job.response_id,
                unix_ts: job.now_secs,
            };
            lock(&self.state.images).generate(&place, job.size.width, job.size.height, job.prompt)
        })
    }
}

/// The frames of a t2i completion (see the module documentation); `draw` records the
/// picture and answers its URL.
fn build(
    job: &ImageJob<'_>,
    timing: &SimTiming,
    generation: Duration,
    draw: impl FnOnce() -> String,
) -> VecDeque<Step> {
    let sc = job.scenario;
    let rid = job.response_id;
    let delay = sc.delay.unwrap_or(timing.frame_delay);
    let ttft = sc.ttft.unwrap_or(timing.ttft);
    let mut frames = vec![(
        wire::response_created(job.chat_id, job.user_node_id, rid, 0),
        Duration::ZERO,
    )];
    let refusal = match sc.fault {
        Some(Fault::Empty) => return script::into_steps(frames, sc, job.prompt),
        Some(Fault::RateLimitedFrame(h)) => Some(wire::rate_limited_json(rid, h)),
        Some(Fault::InvalidInput) => Some(wire::INVALID_INPUT_FRAME.to_owned()),
        _ => None,
    };
    if let Some(refusal) = refusal {
        frames.push((wire::event(&refusal), ttft));
        return script::into_steps(frames, sc, job.prompt);
    }
    frames.push((wire::image_gen(rid, None), ttft));
    if let Some(stall) = sc.stall {
        frames.push((String::new(), stall));
    }
    let failure = match sc.fault {
        Some(Fault::ImageFail) => Some(wire::event(wire::INTERNAL_ERROR_FRAME)),
        fault => script::midstream_fault_frame(fault, rid),
    };
    if let Some(frame) = failure {
        frames.push((frame, generation));
        return script::into_steps(frames, sc, job.prompt);
    }
    if sc.fault == Some(Fault::Reset) {
        let mut steps = script::into_steps(frames, sc, job.prompt);
        let half = wire::image_gen(rid, None);
        steps.push_back(Step::Pause(generation));
        let cut = &half.as_bytes()[..half.len() / 2];
        steps.push_back(Step::Write(Bytes::copy_from_slice(cut)));
        steps.push_back(Step::Pause(Duration::from_millis(1)));
        steps.push_back(Step::Reset);
        return steps;
    }
    let url = draw();
    frames.push((
        wire::image_gen(rid, Some((&url, job.size.width, job.size.height))),
        generation,
    ));
    frames.push((wire::image_gen_finished(rid), delay));
    if sc.done {
        frames.push(("data: [DONE]\n\n".to_owned(), Duration::ZERO));
    }
    script::into_steps(frames, sc, job.prompt)
}

#[cfg(test)]
mod tests;
