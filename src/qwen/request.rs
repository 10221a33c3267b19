//! Upstream request bodies (`qwen-protocol.md` §3.2, §4.1), serialised as the front-end
//! sends them, dual-written camelCase fields included.

use serde::Serialize;

/// `feature_config` of the user message: thinking and search switches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FeatureConfig {
    pub thinking_enabled: bool,
    pub output_schema: &'static str,
    pub research_mode: &'static str,
    pub auto_thinking: bool,
    pub thinking_mode: &'static str,
    pub thinking_format: &'static str,
    pub auto_search: bool,
}

/// How the model should think.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Thinking {
    Off,
    Auto,
    On,
}

impl FeatureConfig {
    /// The mapping of §4.3.
    pub fn new(thinking: Thinking, search: bool) -> Self {
        let (thinking_enabled, auto_thinking, thinking_mode) = match thinking {
            Thinking::Off => (false, false, "Fast"),
            Thinking::Auto => (true, true, "Auto"),
            Thinking::On => (true, false, "Thinking"),
        };
        FeatureConfig {
            thinking_enabled,
            output_schema: "phase",
            research_mode: "normal",
            auto_thinking,
            thinking_mode,
            thinking_format: "summary",
            auto_search: search,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct NewChatBody<'a> {
    pub title: &'a str,
    pub models: [&'a str; 1],
    pub chat_mode: &'static str,
    pub chat_type: &'a str,
    /// Milliseconds, as the front-end sends it.
    pub timestamp: u64,
    pub project_id: &'static str,
}

#[allow(non_snake_case)]
#[derive(Debug, Serialize)]
pub struct CompletionBody<'a> {
    pub stream: bool,
    pub version: &'static str,
    pub incremental_output: bool,
    pub chat_id: &'a str,
    pub chatId: &'a str,
    pub chat_mode: &'static str,
    pub model: &'a str,
    pub parent_id: Option<&'a str>,
    pub parentId: Option<&'a str>,
    pub messages: [UserMessage<'a>; 1],
    pub timestamp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<&'a str>,
}

#[allow(non_snake_case)]
#[derive(Debug, Serialize)]
pub struct UserMessage<'a> {
    pub id: Option<&'a str>,
    pub fid: String,
    pub parentId: Option<&'a str>,
    pub parent_id: Option<&'a str>,
    pub childrenIds: [String; 1],
    pub role: &'static str,
    pub content: &'a str,
    pub user_action: &'static str,
    /// The files the message refers to (`qwen::files` descriptors).
    pub files: &'a [serde_json::Value],
    pub timestamp: u64,
    pub models: [&'a str; 1],
    pub model: &'static str,
    pub chat_type: &'a str,
    pub sub_chat_type: &'a str,
    pub feature_config: FeatureConfig,
    pub extra: MessageExtra<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<&'a str>,
}

#[allow(non_snake_case)]
#[derive(Debug, Serialize)]
pub struct MessageExtra<'a> {
    pub meta: Meta<'a>,
}

#[allow(non_snake_case)]
#[derive(Debug, Serialize)]
pub struct Meta<'a> {
    pub subChatType: &'a str,
}

/// Everything needed to send one user turn into a chat.
#[derive(Debug, Clone)]
pub struct Turn<'a> {
    pub chat_id: &'a str,
    pub parent_id: Option<&'a str>,
    pub model: &'a str,
    pub chat_type: &'a str,
    pub content: &'a str,
    /// The files attached to the message (uploaded; their `files[]` descriptors).
    pub files: &'a [serde_json::Value],
    pub features: FeatureConfig,
    /// The aspect ratio of an image turn (`t2i`), sent at the top and in the message.
    pub size: Option<&'a str>,
}

/// A chat id of the length the upstream's ids have (UUIDs), for sizing a request before the
/// chat exists.
pub const CHAT_ID_PLACEHOLDER: &str = "00000000-0000-0000-0000-000000000000";

impl Turn<'_> {
    pub fn body(&self, now_secs: u64) -> Vec<u8> {
        // Plain data with string keys: serialisation cannot fail.
        serde_json::to_vec(&self.completion_body(now_secs)).unwrap_or_default()
    }

    /// The size of [`Turn::body`] in bytes, without building it.
    pub fn body_len(&self, now_secs: u64) -> usize {
        struct Count(usize);
        impl std::io::Write for Count {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0 += buf.len();
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut count = Count(0);
        let _ = serde_json::to_writer(&mut count, &self.completion_body(now_secs));
        count.0
    }

    fn completion_body(&self, now_secs: u64) -> CompletionBody<'_> {
        CompletionBody {
            stream: true,
            version: "2.1",
            incremental_output: true,
            chat_id: self.chat_id,
            chatId: self.chat_id,
            chat_mode: "normal",
            model: self.model,
            parent_id: self.parent_id,
            parentId: self.parent_id,
            messages: [UserMessage {
                id: None,
                fid: crate::common::random_uuid().to_string(),
                parentId: self.parent_id,
                parent_id: self.parent_id,
                childrenIds: [crate::common::random_uuid().to_string()],
                role: "user",
                content: self.content,
                user_action: "chat",
                files: self.files,
                timestamp: now_secs,
                models: [self.model],
                model: "",
                chat_type: self.chat_type,
                sub_chat_type: self.chat_type,
                feature_config: self.features,
                extra: MessageExtra {
                    meta: Meta {
                        subChatType: self.chat_type,
                    },
                },
                size: self.size,
            }],
            timestamp: now_secs,
            size: self.size,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_body_has_the_mandatory_fields() {
        let turn = Turn {
            chat_id: "c",
            parent_id: None,
            model: "qwen3.7-plus",
            chat_type: "t2t",
            content: "hi",
            files: &[],
            features: FeatureConfig::new(Thinking::Auto, false),
            size: None,
        };
        let v: serde_json::Value = serde_json::from_slice(&turn.body(5)).unwrap();
        assert_eq!(v["chat_id"], "c");
        assert_eq!(v["chatId"], "c");
        assert_eq!(v["incremental_output"], true);
        assert!(v["parent_id"].is_null());
        let m = &v["messages"][0];
        assert_eq!(m["content"], "hi");
        assert_eq!(m["feature_config"]["output_schema"], "phase");
        assert_eq!(m["feature_config"]["thinking_mode"], "Auto");
        assert_eq!(m["extra"]["meta"]["subChatType"], "t2t");
        assert_eq!(m["files"], serde_json::json!([]));
        let long = "é\"\n".repeat(1000);
        let turn = Turn {
            content: &long,
            ..turn
        };
        assert_eq!(turn.body_len(5), turn.body(5).len());
    }
}
