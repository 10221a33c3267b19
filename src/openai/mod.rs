//! The OpenAI side: request parsing, SSE chunk encoding, response bodies.

pub mod encoder;
pub mod request;
pub mod response;
