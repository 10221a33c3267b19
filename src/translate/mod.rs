//! Qwen → client translation, independent of the client API: the pure stream state machine
//! (`state`), pipeline stages (`stage`,
//! with the output limits in `limits`), decoder + translator + stages (`pipeline`), and the
//! async adapters — the streaming body with its lifecycle (`body`), non-stream aggregation
//! (`aggregate`). The client API's encoder plugs in as a `body::Render`.

pub mod aggregate;
pub mod body;
pub mod limits;
pub mod pipeline;
pub mod stage;
pub mod state;
