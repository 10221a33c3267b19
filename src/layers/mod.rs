//! Tower layers, one module per concern; `stack.rs` composes them and documents the order.

pub(crate) mod auth;
pub(crate) mod concurrency;
pub(crate) mod early_commit;
pub(crate) mod error_map;
pub(crate) mod header_limits;
pub(crate) mod metrics;
pub(crate) mod operator_headers;
pub(crate) mod rate_limit;
pub(crate) mod reject;
pub(crate) mod request_id;
pub(crate) mod request_log;
pub(crate) mod retry;
pub(crate) mod route;
pub(crate) mod trace;
pub(crate) mod validate;
