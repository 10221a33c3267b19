//! The upstream side: chat.qwen.ai's private web API (`qwen-protocol.md`).

pub mod auth;
pub mod classify;
pub mod client;
pub mod cooldown;
pub(crate) mod files;
pub mod frame;
pub mod headers;
pub mod models;
pub(crate) mod oss;
pub mod request;
pub mod scan;
pub mod sse;
