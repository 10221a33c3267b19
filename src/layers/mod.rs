//! Tower layers, one module per concern.

pub mod auth;
