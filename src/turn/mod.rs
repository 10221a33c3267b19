//! The turn model: the request the engine works on, whatever client API it came in by.
//!
//! A client API (`api::openai`, and next Anthropic's Messages and OpenAI's Responses) parses
//! its bytes into a [`TurnRequest`] plus options only it knows (OpenAI's `include_usage`);
//! everything below — the model plan (`plan`), the fold of a history into one upstream
//! message (`fold`), conversations, the core — works on the turn alone. What a client API
//! gives the engine in return (its stream encoder, its bodies) is [`ClientApi`].
//!
//! Message content is a list of [`Part`]s: text, files (their digest, media type and bytes;
//! uploaded only when the upstream needs them, once per account and digest), and image
//! addresses, fetched (`media`) only when a turn sends them.

mod client_api;
pub(crate) mod fold;
pub(crate) mod offload;
pub(crate) mod plan;

use std::borrow::Cow;
use std::sync::Arc;

pub(crate) use client_api::{AnswerHead, ApiRequest, ClientApi};

use crate::tools::ToolSet;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
    Tool,
}

impl Role {
    /// The role's label in a folded history (`[User]`).
    pub fn label(self) -> &'static str {
        match self {
            Role::System => "System",
            Role::User => "User",
            Role::Assistant => "Assistant",
            Role::Tool => "Tool",
        }
    }
}

/// A file in a message: what it is, and its bytes (shared, cheap to clone).
#[derive(Clone, PartialEq, Eq)]
pub struct FileRef {
    /// SHA-256 of the bytes, hex: the identity of the file (uploads are cached by it).
    pub digest: String,
    /// `image/png`, `text/plain`, … (for images: as the bytes say, not as declared).
    pub media_type: String,
    pub bytes: bytes::Bytes,
}

impl FileRef {
    pub fn new(media_type: impl Into<String>, bytes: bytes::Bytes) -> Self {
        FileRef {
            digest: crate::common::sha256_hex(&bytes),
            media_type: media_type.into(),
            bytes,
        }
    }

    pub fn is_image(&self) -> bool {
        self.media_type.starts_with("image/")
    }
}

/// Never the bytes (a request's debug output stays readable and small).
impl std::fmt::Debug for FileRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileRef")
            .field("digest", &self.digest)
            .field("media_type", &self.media_type)
            .field("len", &self.bytes.len())
            .finish()
    }
}

/// One piece of a message's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Text(String),
    File(FileRef),
    /// An image by address, as the client sent it: fetched (`media`) when a turn sends it.
    ImageUrl(String),
}

/// An image of a message: its bytes, or the address they are fetched from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageData {
    File(FileRef),
    Address(String),
}

/// An image a turn sends: where it stands in the request (an error names it) and its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentImage {
    /// Index of its message in the request, and of its part in the message.
    pub message: usize,
    pub part: usize,
    pub data: ImageData,
}

impl SentImage {
    /// The request parameter that holds it (for a 400).
    pub fn param(&self) -> String {
        format!(
            "messages[{}].content[{}].image_url",
            self.message, self.part
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub role: Role,
    pub content: Vec<Part>,
    /// `name` of a tool result (or of a legacy `function` message).
    pub name: Option<String>,
    /// The calls an assistant message made.
    pub tool_calls: Vec<CalledTool>,
    /// The call a tool result answers.
    pub tool_call_id: Option<String>,
}

impl Message {
    /// A message of one text part (empty text: no part).
    pub fn text_message(role: Role, text: impl Into<String>) -> Self {
        let text = text.into();
        Message {
            role,
            content: if text.is_empty() {
                Vec::new()
            } else {
                vec![Part::Text(text)]
            },
            name: None,
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }

    /// The text parts, joined by newlines (borrowed when there is one).
    pub fn text(&self) -> Cow<'_, str> {
        let mut texts = self.content.iter().filter_map(|p| match p {
            Part::Text(t) => Some(t.as_str()),
            Part::File(_) | Part::ImageUrl(_) => None,
        });
        let Some(first) = texts.next() else {
            return Cow::Borrowed("");
        };
        match texts.next() {
            None => Cow::Borrowed(first),
            Some(second) => {
                let mut joined = format!("{first}\n{second}");
                for t in texts {
                    joined.push('\n');
                    joined.push_str(t);
                }
                Cow::Owned(joined)
            }
        }
    }

    /// The files of the message, in order.
    pub fn files(&self) -> impl Iterator<Item = &FileRef> {
        self.content.iter().filter_map(|p| match p {
            Part::File(f) => Some(f),
            Part::Text(_) | Part::ImageUrl(_) => None,
        })
    }

    /// The message's images, with the index of their part.
    pub fn images(&self) -> impl Iterator<Item = (usize, ImageData)> + '_ {
        self.content
            .iter()
            .enumerate()
            .filter_map(|(i, p)| match p {
                Part::File(f) if f.is_image() => Some((i, ImageData::File(f.clone()))),
                Part::ImageUrl(url) => Some((i, ImageData::Address(url.clone()))),
                Part::File(_) | Part::Text(_) => None,
            })
    }

    /// What names a tool result in the conversation key and the fold: the call it answers,
    /// else the tool's name.
    pub fn result_label(&self) -> Option<&str> {
        self.tool_call_id.as_deref().or(self.name.as_deref())
    }
}

/// A call in an assistant message of the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalledTool {
    pub id: String,
    pub name: String,
    /// The arguments as the client sent them back (a string of JSON, usually).
    pub arguments: String,
}

/// What the client asked of the model's thinking (the model's suffix, when it has one, wins).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThinkingIntent {
    Off,
    /// The model decides (the upstream front end's default).
    Auto,
    On,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ResponseFormat {
    #[default]
    Text,
    JsonObject,
    /// The JSON schema, serialised, to put in the instruction.
    JsonSchema(String),
}

/// What the turn asks the model to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Output {
    /// An answer in text (and what the text carries: calls, images a chat drew).
    #[default]
    Text,
    /// One image, drawn by the upstream's image chat type (`t2i`), of this aspect ratio
    /// (`"16:9"`): the answer is its address. Such a turn is never continued.
    Image { ratio: &'static str },
}

impl TurnRequest {
    /// The images of the messages from `from` on, in order.
    pub fn images_from(&self, from: usize) -> Vec<SentImage> {
        self.messages
            .iter()
            .enumerate()
            .skip(from)
            .flat_map(|(message, m)| {
                m.images().map(move |(part, data)| SentImage {
                    message,
                    part,
                    data,
                })
            })
            .collect()
    }
}

/// One request as the engine sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnRequest {
    /// The model as the client named it (echoed in answers; `plan` resolves it).
    pub model: String,
    pub messages: Vec<Message>,
    pub stream: bool,
    /// The most output tokens the client takes (the output limits cut there).
    pub max_tokens: Option<u64>,
    /// Stop sequences, in the client's order (a finish reason names one by its index).
    pub stop: Vec<String>,
    pub thinking: Option<ThinkingIntent>,
    pub response_format: ResponseFormat,
    /// Function calling (emulated upstream); `None` for plain text.
    pub tools: Option<Arc<ToolSet>>,
    pub output: Output,
    /// The conversation the body names (Anthropic's `metadata.user_id`, the Responses API's
    /// `prompt_cache_key`): it narrows whose conversations the turn may continue (a session
    /// header, read by the core, wins). As the client sent it; hashed before any use.
    pub session: Option<String>,
    /// The client offered a hosted web search tool (the Responses API's `web_search`): the
    /// turn runs with the upstream's own search, as a `-search` model variant does.
    pub web_search: bool,
}
