//! The model catalogue (`qwen-protocol.md` §3.1) and what the completion algorithm reads
//! from it. Signed-in callers get the whole list; guests (no token) get a list whose
//! length varies between calls, as the upstream's guest catalogue does.

use std::sync::OnceLock;

use serde_json::{json, Value};

/// What a completion needs to know about its model, read from the catalogue entry so the
/// two never disagree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelMeta {
    pub thinking: bool,
    /// Thinking cannot be skipped (`think_skip.enable: false`): a completion with
    /// `thinking_enabled: false` is answered `invalid_input`.
    pub thinking_required: bool,
}

/// A thinking+search model, models whose thinking cannot be skipped, and models without
/// thinking — as of the latest drift (the 3.8 omni and max-preview entries).
fn entries() -> &'static Value {
    static CATALOGUE: OnceLock<Value> = OnceLock::new();
    CATALOGUE.get_or_init(|| {
        json!([
            {"id": "qwen3.7-plus", "name": "Qwen3.7-Plus", "object": "model", "owned_by": "qwen",
             "info": {"id": "qwen3.7-plus", "name": "Qwen3.7-Plus", "is_active": true, "created_at": 1_780_000_000,
                      "meta": {"capabilities": {"vision": true, "document": true, "thinking": true, "search": true, "thinking_budget": true, "citations": true},
                               "abilities": {"vision": 1, "thinking": 1, "citations": 1},
                               "max_context_length": 1_000_000, "max_generation_length": 65_536,
                               "max_thinking_generation_length": 81_920, "max_summary_generation_length": 32_768,
                               "chat_type": ["t2t", "t2v", "t2i", "image_edit", "search", "deep_research"],
                               "modality": ["text", "image"], "think_skip": {"enable": true}}}},
            {"id": "qwen3.8-max", "name": "Qwen3.8-Max", "object": "model", "owned_by": "qwen",
             "info": {"id": "qwen3.8-max", "name": "Qwen3.8-Max", "is_active": true, "created_at": 1_785_000_000,
                      "meta": {"capabilities": {"thinking": true, "search": false},
                               "abilities": {"thinking": 1},
                               "max_context_length": 1_000_000, "max_generation_length": 131_072,
                               "chat_type": ["t2t"], "modality": ["text"], "think_skip": {"enable": false}}}},
            {"id": "qwen3.5-omni-plus", "name": "Qwen3.5-Omni-Plus", "object": "model", "owned_by": "qwen",
             "info": {"id": "qwen3.5-omni-plus", "name": "Qwen3.5-Omni-Plus", "is_active": true, "created_at": 1_775_000_000,
                      "meta": {"capabilities": {"thinking": false, "vision": true},
                               "max_context_length": 262_144, "max_generation_length": 65_536,
                               "chat_type": ["t2t"], "modality": ["text", "image", "audio"]}}},
            {"id": "qwen3.8-omni-flash", "name": "Qwen3.8-Omni-Flash", "object": "model", "owned_by": "qwen",
             "info": {"id": "qwen3.8-omni-flash", "name": "Qwen3.8-Omni-Flash", "is_active": true, "created_at": 1_787_000_000,
                      "meta": {"capabilities": {"thinking": false, "vision": true},
                               "abilities": {"vision": 1},
                               "max_context_length": 262_144, "max_generation_length": 65_536,
                               "chat_type": ["t2t"], "modality": ["text", "image", "audio"], "think_skip": {"enable": true}}}},
            {"id": "qwen3.8-max-preview", "name": "Qwen3.8-Max-Preview", "object": "model", "owned_by": "qwen",
             "info": {"id": "qwen3.8-max-preview", "name": "Qwen3.8-Max-Preview", "is_active": true, "created_at": 1_788_000_000,
                      "meta": {"capabilities": {"thinking": true, "search": false},
                               "abilities": {"thinking": 1},
                               "max_context_length": 1_000_000, "max_generation_length": 131_072,
                               "chat_type": ["t2t"], "modality": ["text"], "think_skip": {"enable": false}}}}
        ])
    })
}

fn list(data: &[Value]) -> Value {
    json!({"object": "list", "data": data})
}

/// The whole catalogue.
pub fn catalogue() -> Value {
    list(entries().as_array().map_or(&[], Vec::as_slice))
}

/// The catalogue a guest's `n`-th call gets: the first K models, K cycling over 2..=len.
pub fn guest_catalogue(n: u64) -> Value {
    let all = entries().as_array().map_or(&[][..], Vec::as_slice);
    let shortest = 2.min(all.len());
    let lengths = (all.len() - shortest + 1) as u64;
    let k = shortest + (n % lengths) as usize;
    list(&all[..k])
}

/// The completion-relevant facts of a model of the catalogue.
pub fn model_meta(id: &str) -> Option<ModelMeta> {
    let entry = entries()
        .as_array()?
        .iter()
        .find(|m| m["id"].as_str() == Some(id))?;
    let meta = &entry["info"]["meta"];
    let thinking = meta["capabilities"]["thinking"].as_bool().unwrap_or(false);
    let skippable = meta["think_skip"]["enable"].as_bool().unwrap_or(true);
    Some(ModelMeta {
        thinking,
        thinking_required: thinking && !skippable,
    })
}

/// Whether model `id` of the catalogue lists `chat_type` (`info.meta.chat_type`); an
/// unknown model lists none.
pub fn lists_chat_type(id: &str, chat_type: &str) -> bool {
    entries().as_array().is_some_and(|all| {
        all.iter()
            .filter(|m| m["id"].as_str() == Some(id))
            .filter_map(|m| m["info"]["meta"]["chat_type"].as_array())
            .flatten()
            .any(|t| t.as_str() == Some(chat_type))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_follows_the_catalogue() {
        let meta = |id| model_meta(id).map(|m| (m.thinking, m.thinking_required));
        assert_eq!(meta("qwen3.7-plus"), Some((true, false)));
        assert_eq!(meta("qwen3.8-max"), Some((true, true)));
        assert_eq!(meta("qwen3.8-max-preview"), Some((true, true)));
        assert_eq!(meta("qwen3.5-omni-plus"), Some((false, false)));
        assert_eq!(meta("qwen3.8-omni-flash"), Some((false, false)));
        assert_eq!(meta("gpt-4"), None);
        assert!(lists_chat_type("qwen3.7-plus", "t2i"));
        assert!(!lists_chat_type("qwen3.8-max", "t2i"));
        assert!(lists_chat_type("qwen3.8-max", "t2t"));
        assert!(!lists_chat_type("gpt-4", "t2t"));
        let all = catalogue();
        let flash = &all["data"][3]["info"]["meta"];
        assert_eq!(flash["max_context_length"], 262_144);
        assert_eq!(flash["max_generation_length"], 65_536);
        assert_eq!(flash["capabilities"]["vision"], true);
        let preview = &all["data"][4]["info"]["meta"];
        assert_eq!(preview["max_context_length"], 1_000_000);
        assert_eq!(preview["max_generation_length"], 131_072);
    }

    #[test]
    fn guest_catalogue_lengths_cycle_from_two_to_all() {
        let len = |n| guest_catalogue(n)["data"].as_array().unwrap().len();
        assert_eq!(
            (0..9).map(len).collect::<Vec<_>>(),
            [2, 3, 4, 5, 2, 3, 4, 5, 2]
        );
        assert_eq!(catalogue()["data"].as_array().unwrap().len(), 5);
        assert_eq!(guest_catalogue(0)["object"], "list");
    }
}
