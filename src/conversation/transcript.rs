//! The transcript stage: feeds the conversation key with exactly the reply the client
//! receives (after the output limits), so that the next turn — whose history carries this
//! reply as its client saw it — finds the upstream chat again (`key.rs`).

use super::key::{Key, KeyBuilder};
use crate::openai::request::Role;
use crate::translate::stage::Stage;
use crate::translate::state::{Emit, ToolCall};

#[derive(Debug)]
pub struct Transcript {
    key: KeyBuilder,
}

impl Transcript {
    /// `key`: the conversation so far including this request's messages.
    pub fn new(mut key: KeyBuilder) -> Self {
        key.begin(Role::Assistant, None);
        Self { key }
    }

    /// The key of the conversation including the reply.
    pub fn into_key(mut self) -> Key {
        self.key.end();
        self.key.finish()
    }
}

impl Stage for Transcript {
    fn reasoning(&mut self, text: &str, next: &mut impl Emit) {
        // Reasoning is not part of the conversation the client sends back.
        next.reasoning(text);
    }

    fn content(&mut self, text: &str, next: &mut impl Emit) {
        self.key.text(text);
        next.content(text);
    }

    fn tool_call(&mut self, call: &ToolCall<'_>, next: &mut impl Emit) {
        self.key.tool_call(call.name, call.arguments);
        next.tool_call(call);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::translate::testing::Recorder;

    #[test]
    fn the_key_covers_the_reply_as_streamed() {
        let base = || {
            let mut k = KeyBuilder::new("anon", "acct", "m");
            k.message(Role::User, None, "hi");
            k
        };
        let mut t = Transcript::new(base());
        let mut out = Recorder::default();
        for piece in ["Hel", "lo ", "there"] {
            t.content(piece, &mut out);
        }
        t.reasoning("not part of it", &mut out);
        assert_eq!(out.content, "Hello there");
        let mut whole = base();
        whole.message(Role::Assistant, None, "Hello there");
        assert_eq!(t.into_key(), whole.finish());
    }
}
