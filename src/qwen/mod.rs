//! The upstream side: chat.qwen.ai's private web API (`qwen-protocol.md`).

pub mod auth;
pub mod classify;
pub mod client;
pub mod cooldown;
// The upload flow is used by the long-context offload and image inputs (issue 20), which
// land after it; until then only its tests call it.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) mod files;
pub mod frame;
pub mod headers;
pub mod models;
pub(crate) mod oss;
pub mod request;
pub mod scan;
pub mod sse;
