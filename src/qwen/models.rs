//! The upstream model catalogue (`qwen-protocol.md` §3.1), the OpenAI model list derived
//! from it (with `-thinking`, `-fast` and `-search` variants from each model's
//! capabilities), resolution of a requested model name, and a TTL cache.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{Mutex, RwLock};
use tokio::time::Instant;

use super::client::{Caller, QwenClient};
use super::headers::Credentials;
use crate::error::ProxyError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamModel {
    pub id: String,
    pub name: String,
    pub created: u64,
    pub thinking: bool,
    /// `think_skip.enable:false`: thinking cannot be turned off.
    pub thinking_required: bool,
    pub search: bool,
    /// Reads images (`capabilities.vision`): only these take image parts.
    pub vision: bool,
    /// Draws images (the `t2i` chat type): the models of `/v1/images/generations`.
    pub image_generation: bool,
    /// `meta.max_context_length`, when the catalogue says.
    pub context_length: Option<u64>,
}

/// A requested name resolved against the catalogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Variant {
    /// `Some(true)` for `-thinking`, `Some(false)` for `-fast`, `None` when unspecified.
    pub thinking: Option<bool>,
    pub search: bool,
}

const SUFFIXES: [(&str, Variant); 6] = [
    (
        "-thinking-search",
        Variant {
            thinking: Some(true),
            search: true,
        },
    ),
    (
        "-fast-search",
        Variant {
            thinking: Some(false),
            search: true,
        },
    ),
    (
        "-no-thinking",
        Variant {
            thinking: Some(false),
            search: false,
        },
    ),
    (
        "-thinking",
        Variant {
            thinking: Some(true),
            search: false,
        },
    ),
    (
        "-search",
        Variant {
            thinking: None,
            search: true,
        },
    ),
    (
        "-fast",
        Variant {
            thinking: Some(false),
            search: false,
        },
    ),
];

#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub models: Vec<UpstreamModel>,
    /// Every name we offer (`GET /v1/models`): the ids and their variants.
    pub listed: Vec<ListedModel>,
}

/// A model name clients may ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedModel {
    pub id: String,
    /// Unix seconds, from the upstream's catalogue.
    pub created: u64,
}

impl Catalog {
    /// Parse `/api/models` (`{"data":[…]}`) or `/api/v2/models/` (`{"data":{"data":[…]}}`).
    pub fn from_json(v: &Value) -> Self {
        let list = find_model_array(v).unwrap_or(&[]);
        let models: Vec<UpstreamModel> = list.iter().filter_map(parse_model).collect();
        let mut listed = Vec::new();
        for m in &models {
            let mut push = |id: String| {
                listed.push(ListedModel {
                    id,
                    created: m.created,
                })
            };
            push(m.id.clone());
            if m.thinking {
                push(format!("{}-thinking", m.id));
                if !m.thinking_required {
                    push(format!("{}-fast", m.id));
                }
            }
            if m.search {
                push(format!("{}-search", m.id));
            }
        }
        Catalog { models, listed }
    }

    /// Resolve a requested name: exact id first, then a known suffix on an id or display
    /// name (case-insensitive). Only variants that `/v1/models` lists resolve.
    pub fn resolve(&self, requested: &str) -> Option<(&UpstreamModel, Variant)> {
        let plain = Variant {
            thinking: None,
            search: false,
        };
        if let Some(m) = self.find(requested) {
            return Some((m, plain));
        }
        let lower = requested.to_ascii_lowercase();
        for (suffix, variant) in SUFFIXES {
            let Some(base) = lower.strip_suffix(suffix) else {
                continue;
            };
            let Some(m) = self.find(base) else {
                continue;
            };
            let ok = match variant.thinking {
                Some(true) => m.thinking,
                Some(false) => m.thinking && !m.thinking_required,
                None => true,
            } && (!variant.search || m.search);
            return ok.then_some((m, variant));
        }
        None
    }

    fn find(&self, name: &str) -> Option<&UpstreamModel> {
        self.models
            .iter()
            .find(|m| m.id.eq_ignore_ascii_case(name) || m.name.eq_ignore_ascii_case(name))
    }
}

fn find_model_array(v: &Value) -> Option<&[Value]> {
    match v.get("data")? {
        Value::Array(a) => Some(a),
        inner @ Value::Object(_) => find_model_array(inner),
        _ => None,
    }
}

fn parse_model(v: &Value) -> Option<UpstreamModel> {
    let id = v.get("id")?.as_str()?.to_owned();
    let info = v.get("info");
    if info
        .and_then(|i| i.get("is_active"))
        .and_then(Value::as_bool)
        == Some(false)
    {
        return None;
    }
    let meta = info.and_then(|i| i.get("meta"));
    let flag = |key: &str| {
        let cap = meta
            .and_then(|m| m.get("capabilities"))
            .and_then(|c| c.get(key));
        let ab = meta
            .and_then(|m| m.get("abilities"))
            .and_then(|c| c.get(key));
        cap.and_then(Value::as_bool).unwrap_or(false) || ab.and_then(Value::as_u64).unwrap_or(0) > 0
    };
    let chat_types = meta
        .and_then(|m| m.get("chat_type"))
        .and_then(Value::as_array);
    let has_chat_type =
        |t: &str| chat_types.is_some_and(|a| a.iter().any(|x| x.as_str() == Some(t)));
    Some(UpstreamModel {
        name: v
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or(&id)
            .to_owned(),
        created: info
            .and_then(|i| i.get("created_at"))
            .and_then(Value::as_u64)
            .unwrap_or(0),
        thinking: flag("thinking"),
        thinking_required: meta
            .and_then(|m| m.get("think_skip"))
            .and_then(|t| t.get("enable"))
            .and_then(Value::as_bool)
            == Some(false),
        search: flag("search") || has_chat_type("search"),
        vision: flag("vision"),
        image_generation: has_chat_type("t2i"),
        context_length: meta
            .and_then(|m| m.get("max_context_length"))
            .and_then(Value::as_u64),
        id,
    })
}

/// The catalogue, fetched from the upstream and cached for `MODELS_CACHE_DURATION`.
/// Concurrent misses share one fetch — its catalogue, or its failure: requests that waited
/// for a fetch that failed fail with it together, rather than each fetching again in turn
/// (a hung upstream would otherwise turn a burst into a queue). A failed refresh keeps
/// serving the stale copy.
#[derive(Debug)]
pub struct ModelCache {
    client: QwenClient,
    ttl: Duration,
    current: RwLock<Option<(Instant, Arc<Catalog>)>>,
    /// Held by the one fetch in flight; it holds when the last fetch ended, and its error
    /// if it failed.
    refresh: Mutex<Option<(Instant, ProxyError)>>,
}

impl ModelCache {
    pub fn new(client: QwenClient, ttl: Duration) -> Self {
        Self {
            client,
            ttl,
            current: RwLock::new(None),
            refresh: Mutex::new(None),
        }
    }

    /// The catalogue, fetched as `who` when it is stale (`None`: as a guest, whose
    /// catalogue may be shorter).
    pub async fn get(&self, who: Option<Arc<Caller>>) -> Result<Arc<Catalog>, ProxyError> {
        if let Some(c) = self.fresh().await {
            return Ok(c);
        }
        let asked = Instant::now();
        let mut last_failure = self.refresh.lock().await;
        if let Some(c) = self.fresh().await {
            return Ok(c);
        }
        // A fetch failed while this request waited for it: its answer is this one's too.
        if let Some((at, e)) = last_failure.as_ref() {
            if *at >= asked {
                return Err(e.clone());
            }
        }
        let guest = who.is_none();
        let who = who.unwrap_or_else(|| {
            Arc::new(
                self.client
                    .caller(&Credentials::default(), super::client::Route::Direct),
            )
        });
        let fetched = self.client.fetch_models(&who).await;
        *last_failure = fetched.as_ref().err().map(|e| (Instant::now(), e.clone()));
        match fetched {
            Ok(json) => {
                let catalog = Arc::new(Catalog::from_json(&json));
                // A guest's catalogue is partial (its length varies): serve it, but fetch
                // again as an account as soon as one can.
                let at = match guest {
                    true => Instant::now()
                        .checked_sub(self.ttl)
                        .unwrap_or_else(Instant::now),
                    false => Instant::now(),
                };
                *self.current.write().await = Some((at, catalog.clone()));
                Ok(catalog)
            }
            Err(e) => match self.current.read().await.as_ref() {
                Some((_, stale)) => {
                    tracing::warn!(error = %e, "model list refresh failed; serving the cached list");
                    Ok(stale.clone())
                }
                None => Err(e),
            },
        }
    }

    async fn fresh(&self) -> Option<Arc<Catalog>> {
        let cur = self.current.read().await;
        let (at, c) = cur.as_ref()?;
        (at.elapsed() < self.ttl).then(|| c.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        Catalog::from_json(&serde_json::json!({"success": true, "data": {"data": [
            {"id": "qwen3.7-plus", "name": "Qwen3.7-Plus", "info": {"created_at": 5, "meta": {
                "capabilities": {"thinking": true, "search": true}, "think_skip": {"enable": true},
                "chat_type": ["t2t", "search"]}}},
            {"id": "qwen3.8-max", "info": {"meta": {"abilities": {"thinking": 1}, "think_skip": {"enable": false}}}},
            {"id": "qwen3.5-omni-plus", "info": {"meta": {"capabilities": {"thinking": false}}}},
            {"id": "old", "info": {"is_active": false}}
        ]}}))
    }

    #[test]
    fn variants_follow_capabilities() {
        let ids: Vec<_> = catalog().listed.into_iter().map(|m| m.id).collect();
        assert_eq!(
            ids,
            [
                "qwen3.7-plus",
                "qwen3.7-plus-thinking",
                "qwen3.7-plus-fast",
                "qwen3.7-plus-search",
                "qwen3.8-max",
                "qwen3.8-max-thinking",
                "qwen3.5-omni-plus"
            ]
        );
    }

    #[test]
    fn resolution() {
        let c = catalog();
        let (m, v) = c.resolve("Qwen3.7-Plus-Thinking").unwrap();
        assert_eq!(m.id, "qwen3.7-plus");
        assert_eq!(v.thinking, Some(true));
        assert_eq!(
            c.resolve("qwen3.7-plus-fast-search").unwrap().1,
            Variant {
                thinking: Some(false),
                search: true
            }
        );
        assert!(
            c.resolve("qwen3.8-max-fast").is_none(),
            "thinking cannot be disabled"
        );
        assert!(c.resolve("qwen3.5-omni-plus-thinking").is_none());
        assert!(c.resolve("gpt-4").is_none());
        assert_eq!(c.resolve("qwen3.7-plus").unwrap().1.thinking, None);
    }
}
