//! The OpenAI API: request parsing (`request`), the request mapped onto the upstream — the
//! model plan and the fold format (`mapping`), the SSE chunk encoder (`encoder`, a
//! `translate::body::Render`) and response bodies (`response`). Another client API (the
//! Anthropic Messages API) would be a sibling of this module over the same engine.

pub mod encoder;
pub mod mapping;
pub mod request;
pub mod response;
pub mod tools;
