//! The upstream's SSE payloads as borrowed serde types (`qwen-protocol.md` §5).
//!
//! Strings borrow from the event bytes (`Cow` falls back to an owned string only when the
//! JSON has escapes); `choices` keeps just the first element without building a `Vec`;
//! error-shaped fields stay `RawValue` slices and are only parsed on the cold path.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

#[derive(Debug, Default, Deserialize)]
pub struct Frame<'a> {
    #[serde(rename = "response.created", borrow, default)]
    pub created: Option<Created<'a>>,
    #[serde(rename = "choices", borrow, default, deserialize_with = "first_choice")]
    pub choice: Option<Choice<'a>>,
    #[serde(borrow, default)]
    pub response_id: Option<Text<'a>>,
    #[serde(default)]
    pub usage: Option<UsageFrame>,
    // Error shapes (§6): `success:false` + `data{code,details,num}`, `{"error":…}`,
    // punish `{"ret":[…],"data":{"url":…}}`, and a top-level `code`.
    #[serde(default)]
    pub success: Option<bool>,
    #[serde(borrow, default)]
    pub data: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub error: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub ret: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub code: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub details: Option<Text<'a>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Created<'a> {
    #[serde(borrow, default)]
    pub chat_id: Option<Text<'a>>,
    #[serde(borrow, default)]
    pub parent_id: Option<Text<'a>>,
    #[serde(borrow, default)]
    pub response_id: Option<Text<'a>>,
    #[serde(borrow, default)]
    pub response_index: Option<Text<'a>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Choice<'a> {
    #[serde(borrow, default)]
    pub delta: Option<Delta<'a>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Delta<'a> {
    #[serde(borrow, default)]
    pub content: Option<Text<'a>>,
    #[serde(borrow, default)]
    pub phase: Option<Text<'a>>,
    #[serde(borrow, default)]
    pub status: Option<Text<'a>>,
    #[serde(borrow, default)]
    pub reasoning_content: Option<Text<'a>>,
    #[serde(borrow, default)]
    pub extra: Option<Extra<'a>>,
    /// `role` is `"function"`: the platform's result frames. Only that is kept — every token
    /// frame carries `"role": "assistant"`, and a flag costs less than a string to read.
    #[serde(rename = "role", default, deserialize_with = "is_function_role")]
    pub function_role: bool,
    /// Boxed: rare (the platform's function frames), and every token frame's `Delta` is
    /// built and moved — its size is paid per event.
    #[serde(borrow, default)]
    pub function_call: Option<Box<FunctionCall<'a>>>,
    /// A `function_id` is present: set on the platform's own tools (web search, …), absent
    /// on intercepted client calls. Only its presence matters.
    #[serde(rename = "function_id", default, deserialize_with = "is_present")]
    pub platform_function: bool,
    #[serde(borrow, default)]
    pub name: Option<Text<'a>>,
}

/// `delta.function_call`: the platform's function machinery (its own tools, or a native
/// call it intercepted); `arguments` is a cumulative snapshot.
#[derive(Debug, Default, Deserialize)]
pub struct FunctionCall<'a> {
    #[serde(borrow, default)]
    pub name: Option<Text<'a>>,
    #[serde(borrow, default)]
    pub arguments: Option<Text<'a>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Extra<'a> {
    #[serde(borrow, default)]
    pub summary_thought: Option<TextList<'a>>,
    #[serde(borrow, default)]
    pub image_list: Option<Vec<Image<'a>>>,
    #[serde(borrow, default)]
    pub reasoning_content: Option<Text<'a>>,
    /// The sources of a `web_search` result frame, which the answer cites as `[[n]]`
    /// (1-based, in this order).
    #[serde(borrow, default)]
    pub web_search_info: Option<Vec<SearchSource<'a>>>,
}

/// One web search result (`hostname`, `snippet`, … are not needed).
#[derive(Debug, Default, Deserialize)]
pub struct SearchSource<'a> {
    #[serde(borrow, default)]
    pub url: Option<Text<'a>>,
    #[serde(borrow, default)]
    pub title: Option<Text<'a>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct TextList<'a> {
    #[serde(borrow, default)]
    pub content: Vec<Text<'a>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Image<'a> {
    #[serde(borrow, default)]
    pub image: Option<Text<'a>>,
}

/// Cumulative usage as the upstream reports it; any field may be missing in a frame.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
pub struct UsageFrame {
    #[serde(default)]
    pub input_tokens: Option<u64>,
    #[serde(default)]
    pub output_tokens: Option<u64>,
    #[serde(default)]
    pub output_tokens_details: Option<OutputDetails>,
    #[serde(default)]
    pub prompt_tokens_details: Option<PromptDetails>,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
pub struct OutputDetails {
    #[serde(default)]
    pub reasoning_tokens: Option<u64>,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
pub struct PromptDetails {
    #[serde(default)]
    pub cached_tokens: Option<u64>,
}

/// A JSON string that borrows from the input when it has no escapes.
///
/// serde's built-in `Cow<str>` support never borrows inside `Option`/`Vec`, so this
/// newtype's visitor takes the borrowed string explicitly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text<'a>(pub Cow<'a, str>);

impl std::ops::Deref for Text<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

/// A string that is there (`null` is not).
fn is_present<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    let id: Option<Text<'de>> = Deserialize::deserialize(d)?;
    Ok(id.is_some())
}

/// `role` as a flag (`Frame::parse`'s fast reader decides the same way, in `scan.rs`).
fn is_function_role<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    let role: Option<Text<'de>> = Deserialize::deserialize(d)?;
    Ok(role.is_some_and(|r| &*r == "function"))
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// Deserialize `choices` into its first element, skipping the rest without allocating.
fn first_choice<'de, D>(d: D) -> Result<Option<Choice<'de>>, D::Error>
where
    D: Deserializer<'de>,
{
    struct First;
    impl<'de> Visitor<'de> for First {
        type Value = Option<Choice<'de>>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an array of choices")
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Self::Value, D2::Error> {
            d.deserialize_seq(First)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let first = seq.next_element::<Choice<'de>>()?;
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(first)
        }
    }
    d.deserialize_option(First)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_captured_spacing_and_borrows() {
        let raw = br#"{"choices": [{"delta": {"role": "assistant", "content": "Hi", "phase": "answer", "status": "typing"}}, {"delta": {}}], "response_id": "r", "usage": {"input_tokens": 1049, "output_tokens": 1}}"#;
        let f: Frame<'_> = serde_json::from_slice(raw).unwrap();
        let delta = f.choice.unwrap().delta.unwrap();
        assert!(matches!(delta.content, Some(Text(Cow::Borrowed("Hi")))));
        assert_eq!(f.usage.unwrap().input_tokens, Some(1049));
        assert_eq!(f.response_id.as_deref(), Some("r"));
    }

    #[test]
    fn error_frames_keep_raw_fields() {
        let raw = br#"{"success":false,"data":{"code":"RateLimited","num":4}}"#;
        let f: Frame<'_> = serde_json::from_slice(raw).unwrap();
        assert_eq!(f.success, Some(false));
        assert!(f.data.unwrap().get().contains("RateLimited"));
        assert!(f.choice.is_none());
    }
}
