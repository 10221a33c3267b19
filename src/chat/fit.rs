//! Whether a turn fits one upstream request, and what is done when it does not: the upstream
//! answers a completion body above ~128 KiB with an anti-bot challenge that blocks the
//! account (qwen-protocol §7.4), so no client may send one. A fresh chat's fold that is too
//! large moves its older part into attached documents (`turn::offload`), uploaded with the
//! account that sends the turn (cached per account and content); a continued chat's new
//! messages, or a fold whose newest part alone is too large, are refused with
//! `context_length_exceeded`. A parse step that refuses the account is a 503 with
//! `Retry-After` — never a turn sent on a cut history.

use bytes::Bytes;
use serde_json::Value;

use crate::accounts::Lease;
use crate::app::AppState;
use crate::common::epoch_secs;
use crate::conversation::{ChatTarget, Prepared};
use crate::error::ProxyError;
use crate::qwen::files::{FileClass, FileError, Upload, Uploaded, PARSE_PAUSE};
use crate::qwen::request::{Turn, CHAT_ID_PLACEHOLDER};
use crate::turn::fold::folded;
use crate::turn::offload;
use crate::turn::plan::Plan;
use crate::turn::TurnRequest;

/// The size of the completion body that would send `content` with `files` where `prepared`
/// goes.
fn body_len(prepared: &Prepared, plan: &Plan, content: &str, files: &[Value]) -> usize {
    let (chat_id, parent_id) = match &prepared.target {
        ChatTarget::Existing { chat_id, parent_id } => (chat_id.as_str(), parent_id.as_deref()),
        ChatTarget::NewChat => (CHAT_ID_PLACEHOLDER, None),
    };
    Turn {
        chat_id,
        parent_id,
        model: &plan.model,
        chat_type: plan.chat_type,
        content,
        files,
        features: plan.features,
    }
    .body_len(epoch_secs())
}

/// Refuse a turn whose upstream request would exceed `limit` (checked before a chat is
/// created, on whatever this attempt sends, its files included).
pub(super) fn check_upstream_size(
    prepared: &Prepared,
    plan: &Plan,
    limit: usize,
) -> Result<(), ProxyError> {
    let size = body_len(prepared, plan, &prepared.content, &prepared.files);
    if size > limit {
        return Err(ProxyError::ContextLengthExceeded { size, limit });
    }
    Ok(())
}

/// A descriptor as large as an uploaded document's will be (for planning before upload).
fn placeholder_descriptor(name: &str) -> Value {
    let uploaded = Uploaded {
        file_id: CHAT_ID_PLACEHOLDER.to_owned(),
        // Longer than the object URLs the upstream hands out.
        url: format!("https://{}/{}", "x".repeat(120), "y".repeat(96)),
        name: name.to_owned(),
        media_type: "text/plain".to_owned(),
        size: u64::from(u32::MAX),
        class: FileClass::Document,
    };
    serde_json::to_value(uploaded.descriptor()).unwrap_or(Value::Null)
}

/// Make the turn fit: nothing to do when it does; a fresh chat's fold is planned into
/// documents (`hint`: the tool retry's hint, which stays at the end of the message); else
/// the size error.
pub(super) fn fit(
    prepared: &mut Prepared,
    turn: &TurnRequest,
    plan: &Plan,
    limit: usize,
    hint: Option<String>,
    state: &AppState,
) -> Result<(), ProxyError> {
    let Err(too_large) = check_upstream_size(prepared, plan, limit) else {
        return Ok(());
    };
    if prepared.target != ChatTarget::NewChat || !prepared.documents.is_empty() {
        return Err(too_large);
    }
    let hint = hint.unwrap_or_default();
    let placeholder = placeholder_descriptor("conversation-000000000000.txt");
    let fits = |inline: &str, documents: usize| {
        let files = vec![placeholder.clone(); documents];
        body_len(prepared, plan, &format!("{inline}{hint}"), &files) <= limit
    };
    let Some(offloaded) = offload::plan(&folded(turn), fits) else {
        return Err(too_large);
    };
    tracing::info!(
        moved_turns = offloaded.moved_turns,
        documents = offloaded.documents.len(),
        document_bytes = offloaded
            .documents
            .iter()
            .map(|d| d.text.len())
            .sum::<usize>(),
        "the fold is too large for one upstream request; its older part goes into documents"
    );
    state.metrics.offloaded_turns.inc();
    prepared.content = offloaded.inline + &hint;
    prepared.documents = offloaded.documents;
    prepared.files.clear();
    Ok(())
}

/// Upload the turn's documents with the account that sends it (each once per account and
/// content) and attach them.
pub(super) async fn attach_documents(
    state: &AppState,
    prepared: &mut Prepared,
    lease: &Lease,
    plan: &Plan,
) -> Result<(), ProxyError> {
    if prepared.documents.is_empty() || prepared.files.len() == prepared.documents.len() {
        return Ok(());
    }
    let (uploads, metrics) = (&state.uploads, &state.metrics);
    let account = lease.name();
    let paused = |left: std::time::Duration| ProxyError::UploadsPaused {
        retry_after_secs: left.as_secs_f64().ceil() as u64,
    };
    if let Some(left) = uploads.paused(account) {
        metrics.uploads.with_label_values(&["paused"]).inc();
        return Err(paused(left));
    }
    let mut files = Vec::with_capacity(prepared.documents.len());
    for doc in &prepared.documents {
        let uploaded = match uploads.get(account, &doc.digest) {
            Some(u) => {
                metrics.uploads.with_label_values(&["cached"]).inc();
                u
            }
            None => {
                let upload = Upload {
                    name: &doc.name,
                    media_type: "text/plain",
                    class: FileClass::Document,
                    bytes: Bytes::from(doc.text.clone()),
                };
                match state.client.upload(lease.caller(), &upload).await {
                    Ok(u) => {
                        metrics.uploads.with_label_values(&["uploaded"]).inc();
                        metrics.upload_bytes.inc_by(doc.text.len() as u64);
                        uploads.put(account, &doc.digest, u.clone());
                        u
                    }
                    Err(FileError::ParseRefused { challenge }) => {
                        tracing::warn!(
                            challenge,
                            "the upstream's document parsing refused the account; its uploads pause"
                        );
                        metrics.uploads.with_label_values(&["paused"]).inc();
                        uploads.pause(account);
                        return Err(paused(PARSE_PAUSE));
                    }
                    Err(FileError::Upstream(e)) => {
                        metrics.uploads.with_label_values(&["failed"]).inc();
                        return Err(e);
                    }
                }
            }
        };
        files.push(serde_json::to_value(uploaded.descriptor()).unwrap_or(Value::Null));
    }
    prepared.files = files;
    check_upstream_size(prepared, plan, state.config.upstream_body_limit)
}
