//! The model plan: a turn mapped onto the upstream catalogue — which model, which chat type,
//! which feature switches (thinking, search). Where the turn goes (a continued chat or a
//! fresh one) is the conversation store's decision (`conversation::Conversations::prepare`).

use super::{Output, ThinkingIntent, TurnRequest};
use crate::error::ProxyError;
use crate::qwen::models::{Catalog, UpstreamModel, Variant};
use crate::qwen::request::{FeatureConfig, Thinking};

/// The upstream side of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    pub model: String,
    pub chat_type: &'static str,
    pub features: FeatureConfig,
    /// The aspect ratio of an image turn.
    pub size: Option<&'static str>,
    /// The model reads images.
    pub vision: bool,
}

/// Map a request onto the catalogue (a name that is not the catalogue's through `aliases`,
/// `MODEL_ALIASES`). Unknown models are a 404.
pub(crate) fn plan(
    req: &TurnRequest,
    catalog: &Catalog,
    aliases: &[(String, String)],
) -> Result<Plan, ProxyError> {
    if let Output::Image { ratio } = req.output {
        return image_plan(req, catalog, ratio);
    }
    let (model, variant) = catalog
        .resolve(&req.model)
        .or_else(|| {
            let asked = req.model.to_ascii_lowercase();
            let (_, model) = aliases
                .iter()
                .find(|(part, _)| asked.contains(part.as_str()))?;
            catalog.resolve(model)
        })
        .ok_or_else(|| ProxyError::ModelNotFound {
            model: req.model.clone(),
        })?;
    // Images of the request's newest message go to a model that reads them, or nowhere (a
    // 400); older ones a model without vision is simply not shown (`media`).
    if !model.vision
        && req
            .messages
            .last()
            .is_some_and(|m| m.images().next().is_some())
    {
        return Err(lacks(
            req,
            catalog,
            |m| m.vision,
            "does not read images",
            "messages",
            "model_not_vision_capable",
        ));
    }
    let thinking = thinking_mode(req.thinking, model, variant);
    Ok(Plan {
        model: model.id.clone(),
        chat_type: "t2t",
        features: FeatureConfig::new(thinking, variant.search || req.web_search),
        size: None,
        vision: model.vision,
    })
}

/// An image turn: a model that draws (the one named, or without a name the first of the
/// catalogue that draws), the `t2i` chat type, no thinking.
fn image_plan(
    req: &TurnRequest,
    catalog: &Catalog,
    ratio: &'static str,
) -> Result<Plan, ProxyError> {
    let model = if req.model.is_empty() {
        catalog.models.iter().find(|m| m.image_generation)
    } else {
        let (model, _) = catalog
            .resolve(&req.model)
            .ok_or_else(|| ProxyError::ModelNotFound {
                model: req.model.clone(),
            })?;
        Some(model).filter(|m| m.image_generation)
    };
    let Some(model) = model else {
        return Err(lacks(
            req,
            catalog,
            |m| m.image_generation,
            "does not generate images",
            "model",
            "model_not_image_capable",
        ));
    };
    Ok(Plan {
        model: model.id.clone(),
        chat_type: "t2i",
        features: FeatureConfig::new(Thinking::Off, false),
        size: Some(ratio),
        vision: false,
    })
}

/// The 400 for a model without a capability the request needs, naming the models with it.
fn lacks(
    req: &TurnRequest,
    catalog: &Catalog,
    has: impl Fn(&UpstreamModel) -> bool,
    what: &str,
    param: &str,
    code: &'static str,
) -> ProxyError {
    let able: Vec<&str> = catalog
        .models
        .iter()
        .filter(|m| has(m))
        .map(|m| m.id.as_str())
        .collect();
    ProxyError::BadRequest {
        message: format!(
            "The model `{}` {what}. Models that do: {}.",
            crate::untrusted::clip(&req.model),
            if able.is_empty() {
                "none at the moment".to_owned()
            } else {
                able.join(", ")
            }
        ),
        param: Some(param.to_owned()),
        code: Some(code),
    }
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
