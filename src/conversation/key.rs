//! Conversation keys: a SHA-256 over who is talking (client identity, upstream account),
//! the upstream model, and the whitespace-normalised messages in order. A stored session is
//! found again when the next request's history — up to its last assistant message — hashes
//! to the same key. The assistant reply we streamed is hashed on the fly, piece by piece, so
//! the key of the next turn is ready when the stream ends without keeping the text.
//!
//! Normalisation: runs of whitespace become one space; leading and trailing whitespace is
//! dropped. Messages are separated by a byte that never occurs in UTF-8 (0xFF), and each
//! starts with its role tag, so no two different histories feed the same byte string.

use sha2::{Digest, Sha256};

use crate::turn::{Message, Part, Role};

/// The headers a client names its session by: Claude Code's, then the Codex CLI's
/// (`session_id`, `session-id`, `conversation_id`).
pub(crate) const SESSION_HEADERS: [&str; 4] = [
    "x-claude-code-session-id",
    "session_id",
    "session-id",
    "conversation_id",
];

/// Whose conversations a turn may continue: the client `identity`, narrowed to the session
/// the client names, when it names one — two sessions never share an upstream chat, even
/// with equal histories. The session is the client's string: only its hash goes into keys.
pub(crate) fn owner(identity: &str, session: Option<&str>) -> String {
    match session.map(str::trim).filter(|s| !s.is_empty()) {
        None => identity.to_owned(),
        Some(session) => {
            let mut h = Sha256::new();
            h.update(b"qwen-proxy/session/v1\xff");
            h.update(session.as_bytes());
            format!("{identity}/{}", crate::common::hex(&h.finalize()[..16]))
        }
    }
}

#[derive(Clone)]
pub struct KeyBuilder {
    hasher: Sha256,
    started: bool,
    pending_space: bool,
}

impl std::fmt::Debug for KeyBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyBuilder")
    }
}

/// A finished key, hex-encoded (what the store indexes).
pub(crate) type Key = String;

impl KeyBuilder {
    /// `identity`: the client (API key hash or "anon"); `account`: the upstream account;
    /// `model`: the resolved upstream model id (suffix variants share a conversation).
    pub fn new(identity: &str, account: &str, model: &str) -> Self {
        let mut hasher = Sha256::new();
        for part in ["qwen-proxy/conversation/v1", identity, account, model] {
            hasher.update(part.as_bytes());
            hasher.update([0xFF]);
        }
        Self {
            hasher,
            started: false,
            pending_space: false,
        }
    }

    /// Start a message of `role` (tool results include their name or call id).
    pub fn begin(&mut self, role: Role, name: Option<&str>) {
        let tag: &[u8] = match role {
            Role::System => b"S",
            Role::User => b"U",
            Role::Assistant => b"A",
            Role::Tool => b"T",
        };
        self.hasher.update(tag);
        if let (Role::Tool, Some(n)) = (role, name) {
            self.hasher.update(n.as_bytes());
        }
        self.hasher.update([0xFE]);
        self.started = false;
        self.pending_space = false;
    }

    /// Feed message text; may be called many times per message (streamed replies).
    pub fn text(&mut self, text: &str) {
        for (i, segment) in text.split(char::is_whitespace).enumerate() {
            if i > 0 && self.started {
                self.pending_space = true;
            }
            if segment.is_empty() {
                continue;
            }
            if self.pending_space {
                self.hasher.update(b" ");
                self.pending_space = false;
            }
            self.hasher.update(segment.as_bytes());
            self.started = true;
        }
    }

    pub fn end(&mut self) {
        self.hasher.update([0xFF]);
        self.pending_space = false;
    }

    /// One whole message.
    pub fn message(&mut self, role: Role, name: Option<&str>, text: &str) {
        self.begin(role, name);
        self.text(text);
        self.end();
    }

    /// A message of the request's history: its text, or the calls it made (an assistant),
    /// exactly as the transcript hashed them when we sent them; a tool result under the call
    /// it answers. The prose of a turn that made calls does not count: agents send it back
    /// trimmed, rewritten or empty (Roo Code sends `""`), and the calls identify the turn.
    pub fn history_message(&mut self, m: &Message) {
        self.begin(m.role, m.result_label());
        if m.tool_calls.is_empty() {
            self.text(&m.text());
        }
        // A file counts by what it is, wherever it sits among the text; an image not yet
        // fetched by its address.
        for part in &m.content {
            match part {
                Part::File(file) => {
                    self.hasher.update([0xFB]);
                    self.hasher.update(file.media_type.as_bytes());
                    self.hasher.update([0xFC]);
                    self.hasher.update(file.digest.as_bytes());
                }
                Part::ImageUrl(url) => {
                    self.hasher.update([0xFA]);
                    self.hasher.update(url.as_bytes());
                }
                Part::Text(_) => {}
            }
        }
        for call in &m.tool_calls {
            self.tool_call(&call.name, &call.arguments);
        }
        self.end();
    }

    /// A tool call of the message being hashed. Arguments count as the JSON they are, not
    /// as text: a client that re-serialises them (`{"a": 1}` for `{"a":1}`) keeps its chat.
    pub fn tool_call(&mut self, name: &str, arguments: &str) {
        self.hasher.update([0xFD]);
        self.hasher.update(name.as_bytes());
        self.hasher.update([0xFC]);
        match serde_json::from_str::<serde_json::Value>(arguments) {
            Ok(v) => self.hasher.update(v.to_string().as_bytes()),
            Err(_) => self.hasher.update(arguments.as_bytes()),
        }
        self.pending_space = false;
    }

    pub fn finish(&self) -> Key {
        crate::common::hex(&self.hasher.clone().finalize())
    }
}

/// SHA-256 hex of a secret, for identities that must not be stored in clear.
pub(crate) fn fingerprint(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    crate::common::hex(&digest[..12])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(msgs: &[(Role, &str)]) -> Key {
        let mut k = KeyBuilder::new("anon", "acct", "m");
        for (r, t) in msgs {
            k.message(*r, None, t);
        }
        k.finish()
    }

    #[test]
    fn whitespace_is_normalised() {
        let a = key(&[(Role::User, "hello   world\n"), (Role::Assistant, " fine ")]);
        let b = key(&[(Role::User, "  hello world"), (Role::Assistant, "fine")]);
        assert_eq!(a, b);
        assert_ne!(
            a,
            key(&[(Role::User, "helloworld"), (Role::Assistant, "fine")])
        );
    }

    #[test]
    fn streamed_pieces_equal_the_whole_text() {
        let mut streamed = KeyBuilder::new("anon", "acct", "m");
        streamed.begin(Role::Assistant, None);
        for piece in ["Hel", "lo ", " ", "wor", "ld", "\n"] {
            streamed.text(piece);
        }
        streamed.end();
        assert_eq!(streamed.finish(), key(&[(Role::Assistant, "Hello world")]));
    }

    #[test]
    fn a_named_session_narrows_the_owner() {
        assert_eq!(owner("anon", None), "anon");
        assert_eq!(owner("anon", Some("  ")), "anon");
        let a = owner("anon", Some("session-a"));
        assert!(
            a.starts_with("anon/") && a.len() == "anon/".len() + 32,
            "{a}"
        );
        assert!(!a.contains("session-a"), "the client's string is hashed");
        assert_eq!(a, owner("anon", Some("session-a")));
        assert_ne!(a, owner("anon", Some("session-b")));
        assert_ne!(a, owner("k1", Some("session-a")));
    }

    #[test]
    fn roles_order_and_identity_matter() {
        assert_ne!(
            key(&[(Role::User, "a"), (Role::Assistant, "b")]),
            key(&[(Role::Assistant, "a"), (Role::User, "b")])
        );
        assert_ne!(
            key(&[(Role::User, "a b")]),
            key(&[(Role::User, "a"), (Role::User, "b")])
        );
        let other = {
            let mut k = KeyBuilder::new("someone-else", "acct", "m");
            k.message(Role::User, None, "a");
            k.finish()
        };
        assert_ne!(other, key(&[(Role::User, "a")]));
    }
}
