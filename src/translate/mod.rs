//! OpenAI ⇄ Qwen translation: request mapping, the pure stream state machine, output
//! limits, and the async adapters (streaming body, non-stream aggregation).

pub mod aggregate;
pub mod body;
pub mod limits;
pub mod mapping;
pub mod pipeline;
pub mod state;
