//! `POST /v1/chat/completions`: validated request → upstream turn → streamed or aggregated
//! OpenAI response. Streaming and non-streaming share the upstream pipeline.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::Response;

use crate::app::AppState;
use crate::body::ProxyBody;
use crate::error::ProxyError;
use crate::openai::encoder::{ChunkEncoder, UsageJson};
use crate::openai::request::ChatRequest;
use crate::openai::response::{AssistantMessage, ChatCompletion, Choice};
use crate::qwen::request::Turn;
use crate::translate::aggregate;
use crate::translate::body::{TranslateBody, UpstreamStream};
use crate::translate::limits::Limits;
use crate::translate::mapping::{self, ChatTarget};
use crate::translate::pipeline::Pipeline;

pub async fn complete(
    state: Arc<AppState>,
    req: Arc<ChatRequest>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let catalog = state.models.get().await?;
    let plan = mapping::plan(&req, &catalog)?;
    let (chat_id, parent_id) = match &plan.target {
        ChatTarget::NewChat => (
            state
                .client
                .create_chat(&plan.model, plan.chat_type)
                .await?,
            None,
        ),
        ChatTarget::Existing { chat_id, parent_id } => (chat_id.clone(), parent_id.clone()),
    };
    let turn = Turn {
        chat_id: &chat_id,
        parent_id: parent_id.as_deref(),
        model: &plan.model,
        chat_type: plan.chat_type,
        content: &plan.content,
        features: plan.features,
    };
    let upstream = state.client.start_completion(&turn).await?;
    let pipeline = Pipeline::new(
        Limits::new(req.stop.clone(), req.max_tokens),
        plan.prompt_tokens_estimate,
    );
    let mut stream = UpstreamStream::new(upstream, pipeline, state.config.upstream.idle_timeout);
    let id = format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());

    if req.stream {
        let encoder = ChunkEncoder::new(&id, created, &req.model, req.include_usage);
        let mut body = TranslateBody::new(stream, encoder, Some(state.config.sse_keepalive));
        body.prime().await?;
        let mut rsp = Response::new(ProxyBody::Stream(Box::new(body)));
        let h = rsp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        h.insert("x-accel-buffering", HeaderValue::from_static("no"));
        return Ok(rsp);
    }

    let (collected, finish, usage) = aggregate::collect(&mut stream).await?;
    let body = ChatCompletion {
        id: &id,
        object: "chat.completion",
        created,
        model: &req.model,
        choices: [Choice {
            index: 0,
            message: AssistantMessage {
                role: "assistant",
                content: &collected.content,
                reasoning_content: (!collected.reasoning.is_empty())
                    .then_some(collected.reasoning.as_str()),
                refusal: None,
            },
            logprobs: None,
            finish_reason: finish.as_str(),
        }],
        usage: UsageJson::from(usage),
        system_fingerprint: None,
    };
    Ok(json_response(serde_json::to_vec(&body).unwrap_or_default()))
}

pub fn json_response(body: Vec<u8>) -> Response<ProxyBody> {
    let mut rsp = Response::new(ProxyBody::full(body));
    rsp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    rsp
}
