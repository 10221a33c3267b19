//! The model plan: a turn mapped onto the upstream catalogue — which model, which chat type,
//! which feature switches (thinking, search). Where the turn goes (a continued chat or a
//! fresh one) is the conversation store's decision (`conversation::Conversations::prepare`).

use super::{ThinkingIntent, TurnRequest};
use crate::error::ProxyError;
use crate::qwen::models::{Catalog, UpstreamModel, Variant};
use crate::qwen::request::{FeatureConfig, Thinking};

/// The upstream side of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    pub model: String,
    pub chat_type: &'static str,
    pub features: FeatureConfig,
}

/// Map a request onto the catalogue. Unknown models are a 404.
pub(crate) fn plan(req: &TurnRequest, catalog: &Catalog) -> Result<Plan, ProxyError> {
    let (model, variant) =
        catalog
            .resolve(&req.model)
            .ok_or_else(|| ProxyError::ModelNotFound {
                model: req.model.clone(),
            })?;
    let thinking = thinking_mode(req.thinking, model, variant);
    Ok(Plan {
        model: model.id.clone(),
        chat_type: "t2t",
        features: FeatureConfig::new(thinking, variant.search),
    })
}

/// The model's suffix first, then what the client asked, then the front-end default
/// (auto). Models without thinking are always off; models that cannot skip thinking are
/// never off (the upstream would reject the request).
fn thinking_mode(
    asked: Option<ThinkingIntent>,
    model: &UpstreamModel,
    variant: Variant,
) -> Thinking {
    if !model.thinking {
        return Thinking::Off;
    }
    let wanted = variant
        .thinking
        .map(|on| if on { Thinking::On } else { Thinking::Off })
        .or(asked.map(|t| match t {
            ThinkingIntent::Off => Thinking::Off,
            ThinkingIntent::Auto => Thinking::Auto,
            ThinkingIntent::On => Thinking::On,
        }))
        .unwrap_or(Thinking::Auto);
    if wanted == Thinking::Off && model.thinking_required {
        Thinking::Auto
    } else {
        wanted
    }
}
