//! Whether a turn fits one upstream request, and what is done when it does not: the upstream
//! answers a completion body above ~128 KiB with an anti-bot challenge that blocks the
//! account (qwen-protocol §7.4), so no client may send one. What is too large — a fresh
//! chat's fold, or a continued chat's new messages — moves its least needed part into
//! attached documents (`turn::offload`: older turns, then the system prompt, then a message
//! too large alone), uploaded with the account that sends the turn (cached per account and
//! content); only what cannot fit even so (the proxy's own instructions and the tools
//! alone) is refused with `context_length_exceeded`. A parse step that refuses the account
//! is a 503 with `Retry-After` — never a turn sent on a cut history.

use std::borrow::Cow;

use bytes::Bytes;
use serde_json::Value;

use crate::accounts::Lease;
use crate::app::AppState;
use crate::common::epoch_secs;
use crate::conversation::{ChatTarget, Prepared};
use crate::error::ProxyError;
use crate::qwen::files::{FileClass, FileError, Upload, Uploaded, PARSE_PAUSE};
use crate::qwen::request::{Turn, CHAT_ID_PLACEHOLDER};
use crate::turn::fold::{folded, folded_turns};
use crate::turn::offload;
use crate::turn::plan::Plan;
use crate::turn::{FileRef, TurnRequest};

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
        size: plan.size,
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
    let size = body_len(prepared, plan, &prepared.content, &planned_files(prepared));
    if size > limit {
        return Err(ProxyError::ContextLengthExceeded { size, limit });
    }
    Ok(())
}

/// A descriptor as large as an uploaded file's will be (for planning before upload).
fn placeholder_descriptor(name: &str, class: FileClass) -> Value {
    let uploaded = Uploaded {
        file_id: CHAT_ID_PLACEHOLDER.to_owned(),
        // Longer than the object URLs the upstream hands out.
        url: format!("https://{}/{}", "x".repeat(120), "y".repeat(96)),
        name: name.to_owned(),
        media_type: "text/plain".to_owned(),
        size: u64::from(u32::MAX),
        class,
    };
    serde_json::to_value(uploaded.descriptor()).unwrap_or(Value::Null)
}

/// The name an image is uploaded under (the model sees it).
fn image_name(image: &FileRef) -> String {
    let ext = image.media_type.strip_prefix("image/").unwrap_or("bin");
    format!(
        "image-{}.{ext}",
        &image.digest[..12.min(image.digest.len())]
    )
}

/// The `files[]` the turn sends, for its size: the descriptors once uploaded, before that
/// placeholders at least as large.
fn planned_files(prepared: &Prepared) -> Cow<'_, [Value]> {
    if prepared.files.len() == prepared.documents.len() + prepared.images.len() {
        return Cow::Borrowed(&prepared.files);
    }
    let documents = prepared
        .documents
        .iter()
        .map(|d| placeholder_descriptor(&d.name, FileClass::Document));
    let images = prepared
        .images
        .iter()
        .map(|i| placeholder_descriptor(&image_name(i), FileClass::Image));
    Cow::Owned(documents.chain(images).collect())
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
    if !prepared.documents.is_empty() {
        return Err(too_large);
    }
    let hint = hint.unwrap_or_default();
    let placeholder = placeholder_descriptor("conversation-000000000000.txt", FileClass::Document);
    let images = planned_files(prepared).into_owned();
    let fits = |inline: &str, documents: usize| {
        let mut files = vec![placeholder.clone(); documents];
        files.extend_from_slice(&images);
        body_len(prepared, plan, &format!("{inline}{hint}"), &files) <= limit
    };
    // A fresh chat gets the whole fold; a continued one its new messages (its system text
    // and tools are in the chat already).
    let whole = match prepared.target {
        ChatTarget::NewChat => folded(turn),
        ChatTarget::Existing { .. } => folded_turns(turn, prepared.from),
    };
    let Some(offloaded) = offload::plan(&whole, fits) else {
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

/// Upload the turn's documents and images with the account that sends it (each once per
/// account and content) and attach them.
pub(super) async fn attach_files(
    state: &AppState,
    prepared: &mut Prepared,
    lease: &Lease,
    plan: &Plan,
) -> Result<(), ProxyError> {
    let wanted = prepared.documents.len() + prepared.images.len();
    if wanted == 0 || prepared.files.len() == wanted {
        return Ok(());
    }
    let account = lease.name();
    if let Some(left) = state.uploads.paused(account) {
        if !prepared.documents.is_empty() {
            state
                .metrics
                .uploads
                .with_label_values(&["document", "paused"])
                .inc();
            return Err(paused(left));
        }
    }
    let documents = prepared.documents.iter().map(|doc| Upload {
        name: &doc.name,
        media_type: "text/plain",
        class: FileClass::Document,
        bytes: Bytes::from(doc.text.clone()),
    });
    let names: Vec<String> = prepared.images.iter().map(image_name).collect();
    let images = prepared
        .images
        .iter()
        .zip(&names)
        .map(|(image, name)| Upload {
            name,
            media_type: &image.media_type,
            class: FileClass::Image,
            bytes: image.bytes.clone(),
        });
    let digests = prepared
        .documents
        .iter()
        .map(|d| d.digest.as_str())
        .chain(prepared.images.iter().map(|i| i.digest.as_str()));
    let mut files = Vec::with_capacity(wanted);
    for (upload, digest) in documents.chain(images).zip(digests) {
        let uploaded = upload_once(state, lease, &upload, digest).await?;
        files.push(serde_json::to_value(uploaded.descriptor()).unwrap_or(Value::Null));
    }
    prepared.files = files;
    check_upstream_size(prepared, plan, state.config.upstream_body_limit)
}

fn paused(left: std::time::Duration) -> ProxyError {
    ProxyError::UploadsPaused {
        retry_after_secs: left.as_secs_f64().ceil() as u64,
    }
}

/// One file, from the account's uploads when it sent the same content before.
async fn upload_once(
    state: &AppState,
    lease: &Lease,
    upload: &Upload<'_>,
    digest: &str,
) -> Result<Uploaded, ProxyError> {
    let (uploads, metrics) = (&state.uploads, &state.metrics);
    let account = lease.name();
    let kind = match upload.class {
        FileClass::Document => "document",
        FileClass::Image => "image",
    };
    let count = |outcome: &str| metrics.uploads.with_label_values(&[kind, outcome]).inc();
    if let Some(u) = uploads.get(account, digest) {
        count("cached");
        return Ok(u);
    }
    match state.client.upload(lease.caller(), upload).await {
        Ok(u) => {
            count("uploaded");
            metrics
                .upload_bytes
                .with_label_values(&[kind])
                .inc_by(upload.bytes.len() as u64);
            uploads.put(account, digest, u.clone());
            Ok(u)
        }
        Err(FileError::ParseRefused { challenge }) => {
            tracing::warn!(
                challenge,
                "the upstream's document parsing refused the account; its uploads pause"
            );
            count("paused");
            uploads.pause(account);
            Err(paused(PARSE_PAUSE))
        }
        Err(FileError::Upstream(e)) => {
            count("failed");
            Err(e)
        }
    }
}
