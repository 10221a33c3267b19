//! Tower layers, one module per concern; `stack.rs` composes them and documents the order.

pub mod auth;
pub mod concurrency;
pub mod error_map;
pub mod header_limits;
pub mod metrics;
pub mod rate_limit;
pub mod reject;
pub mod request_id;
pub mod retry;
pub mod route;
pub mod trace;
pub mod validate;
