//! Qwen → client translation, independent of the client API: the pure stream state machine
//! (`state`), pipeline stages (`stage`,
//! with the output limits in `limits`, search citations in `cite`), decoder + translator + stages (`pipeline`), and the
//! async adapters — the streaming body with its lifecycle (`body`), non-stream aggregation
//! (`aggregate`). The client API's encoder plugs in as a `body::Render`.

pub mod aggregate;
pub mod body;
pub mod cite;
pub mod fence;
pub mod limits;
pub mod pipeline;
pub mod stage;
pub mod state;

/// What the engine emits, recorded for unit tests of the translator and the stages.
#[cfg(test)]
pub(crate) mod testing {
    use super::state::Emit;

    #[derive(Debug, Default)]
    pub(crate) struct Recorder {
        pub(crate) content: String,
        pub(crate) reasoning: String,
        /// Tool calls: (name, arguments).
        pub(crate) calls: Vec<(String, String)>,
        /// Every delta in order: `r:<reasoning>`, `c:<content>` or `t:<name> <arguments>`.
        pub(crate) pieces: Vec<String>,
        /// The platform's function frames: `call:<name> <arguments>` or `result:<name>`.
        pub(crate) platform: Vec<String>,
    }

    impl Emit for Recorder {
        fn reasoning(&mut self, text: &str) {
            self.reasoning.push_str(text);
            self.pieces.push(format!("r:{text}"));
        }

        fn content(&mut self, text: &str) {
            self.content.push_str(text);
            self.pieces.push(format!("c:{text}"));
        }

        fn tool_call(&mut self, call: &super::state::ToolCall<'_>) {
            self.calls
                .push((call.name.to_owned(), call.arguments.to_owned()));
            self.pieces
                .push(format!("t:{} {}", call.name, call.arguments));
        }

        fn platform_call(&mut self, frame: super::state::PlatformFrame<'_>) {
            self.platform.push(match frame {
                super::state::PlatformFrame::Call { name, arguments } => {
                    format!("call:{name} {arguments}")
                }
                super::state::PlatformFrame::Result { name } => format!("result:{name}"),
            });
        }
    }
}
