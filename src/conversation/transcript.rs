//! The transcript stage: feeds the conversation key with exactly the reply the client
//! receives (after the output limits), so that the next turn — whose history carries this
//! reply as its client saw it — finds the upstream chat again (`key.rs`).

use super::key::{Key, KeyBuilder};
use crate::translate::stage::Stage;
use crate::translate::state::{Emit, ToolCall};
use crate::turn::Role;

/// A reply that makes calls is keyed by its calls alone (`KeyBuilder::history_message`);
/// whether it will is known only at its end, so both keys are built as it streams.
#[derive(Debug)]
pub struct Transcript {
    /// The reply's text and calls.
    key: KeyBuilder,
    /// The reply's calls only.
    calls_key: KeyBuilder,
    made_calls: bool,
}

impl Transcript {
    /// `key`: the conversation so far including this request's messages.
    pub fn new(mut key: KeyBuilder) -> Self {
        key.begin(Role::Assistant, None);
        Self {
            calls_key: key.clone(),
            key,
            made_calls: false,
        }
    }

    /// The key of the conversation including the reply.
    pub fn into_key(self) -> Key {
        let mut key = if self.made_calls {
            self.calls_key
        } else {
            self.key
        };
        key.end();
        key.finish()
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
        self.made_calls = true;
        self.calls_key.tool_call(call.name, call.arguments);
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

    #[test]
    fn a_reply_that_calls_tools_is_keyed_by_its_calls_whatever_prose_comes_back() {
        let base = || {
            let mut k = KeyBuilder::new("anon", "acct", "m");
            k.message(Role::User, None, "hi");
            k
        };
        let mut t = Transcript::new(base());
        let mut out = Recorder::default();
        t.content("Let me check.", &mut out);
        let call = ToolCall {
            name: "get_weather",
            arguments: "{\"city\":\"Paris\"}",
        };
        t.tool_call(&call, &mut out);
        let key = t.into_key();
        for prose in ["Let me check.", "", "edited by the agent"] {
            let body = format!(
                r#"{{"model":"m","messages":[{{"role":"user","content":"hi"}},{{"role":"assistant","content":"{prose}","tool_calls":[{{"id":"call_1","type":"function","function":{{"name":"get_weather","arguments":"{{\"city\": \"Paris\"}}"}}}}]}}]}}"#
            );
            let req = crate::api::openai::request::parse(body.as_bytes())
                .unwrap()
                .turn;
            let mut whole = base();
            whole.history_message(&req.messages[1]);
            assert_eq!(key, whole.finish(), "prose {prose:?}");
        }
        // A different call is a different conversation.
        let mut t = Transcript::new(base());
        t.tool_call(
            &ToolCall {
                name: "get_weather",
                arguments: "{\"city\":\"Rome\"}",
            },
            &mut out,
        );
        assert_ne!(t.into_key(), key);
    }
}
