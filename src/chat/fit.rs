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
use crate::media::{FILES_PER_MESSAGE, LEFT_OUT_NOTE_MAX};
use crate::qwen::files::{FileClass, FileError, Upload, Uploaded, PARSE_PAUSE};
use crate::qwen::request::{Turn, CHAT_ID_PLACEHOLDER};
use crate::turn::fold::{folded, folded_turns};
use crate::turn::offload;
use crate::turn::plan::Plan;
use crate::turn::{FileRef, ImageData, TurnRequest};

/// The size of the completion body that would send `content` with `files` to `target`.
fn body_len(target: &ChatTarget, plan: &Plan, content: &str, files: &[Value]) -> usize {
    let (chat_id, parent_id) = match target {
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
    let size = body_len(
        &prepared.target,
        plan,
        &prepared.content,
        &planned_files(prepared),
    );
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

/// The images a message of `documents` documents attaches, at most.
fn image_room(prepared: &Prepared, documents: usize) -> usize {
    prepared
        .images
        .len()
        .min(FILES_PER_MESSAGE.saturating_sub(documents))
}

/// Placeholders as large as the descriptors of `n` uploaded images.
fn image_placeholders(n: usize) -> Vec<Value> {
    let name = format!("image-{}.webp", "0".repeat(12));
    vec![placeholder_descriptor(&name, FileClass::Image); n]
}

/// The `files[]` the turn sends, for its size: the descriptors once uploaded, before that
/// placeholders at least as large.
fn planned_files(prepared: &Prepared) -> Cow<'_, [Value]> {
    if prepared.files.len() == prepared.documents.len() + prepared.images.len() {
        return Cow::Borrowed(&prepared.files);
    }
    let mut files: Vec<Value> = prepared
        .documents
        .iter()
        .map(|d| placeholder_descriptor(&d.name, FileClass::Document))
        .collect();
    files.extend(image_placeholders(image_room(
        prepared,
        prepared.documents.len(),
    )));
    Cow::Owned(files)
}

/// Room kept for the note on images left out, which is written once they are chosen.
fn note_room(prepared: &Prepared) -> usize {
    if prepared.images.is_empty() || prepared.images_ready {
        0
    } else {
        LEFT_OUT_NOTE_MAX
    }
}

/// A fold larger than this is planned off the async workers (a multi-megabyte plan takes a
/// few hundred milliseconds of string building).
const PLAN_ON_BLOCKING_THREAD: usize = 256 << 10;

/// Make the turn fit: nothing to do when it does; else planned into documents (`hint`: the
/// tool retry's hint, which stays at the end of the message); else the size error.
pub(super) async fn fit(
    prepared: &mut Prepared,
    turn: &TurnRequest,
    plan: &Plan,
    limit: usize,
    hint: Option<String>,
    state: &AppState,
) -> Result<(), ProxyError> {
    let limit = limit.saturating_sub(note_room(prepared));
    let Err(too_large) = check_upstream_size(prepared, plan, limit) else {
        return Ok(());
    };
    // Planned again from the turn (a hint appended to a planned message may not fit it).
    let appended = hint.clone().unwrap_or_default();
    let placeholder = placeholder_descriptor("conversation-000000000000.txt", FileClass::Document);
    let (target, sizing, images) = (prepared.target.clone(), plan.clone(), prepared.images.len());
    let fits = move |inline: &str, documents: usize| {
        let mut files = vec![placeholder.clone(); documents];
        let room = images.min(FILES_PER_MESSAGE.saturating_sub(documents));
        files.extend(image_placeholders(room));
        body_len(&target, &sizing, &format!("{inline}{appended}"), &files) <= limit
    };
    // A fresh chat gets the whole fold; a continued one its new messages (its system text
    // and tools are in the chat already).
    let whole = match prepared.target {
        ChatTarget::NewChat => folded(turn),
        ChatTarget::Existing { .. } => folded_turns(turn, prepared.from),
    };
    // (A message planned before, its documents attached, stands for a large fold too.)
    let large = prepared.content.len() > PLAN_ON_BLOCKING_THREAD || !prepared.documents.is_empty();
    let planned = if large {
        tokio::task::spawn_blocking(move || offload::plan(&whole, fits))
            .await
            .map_err(|e| ProxyError::Internal(format!("planning the documents: {e}")))?
    } else {
        offload::plan(&whole, fits)
    };
    let Some(offloaded) = planned else {
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
    prepared.content = offloaded.inline + hint.as_deref().unwrap_or("");
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
    // The message's files stay within the upstream's five: a plan made after the images
    // were chosen may have added documents (the newest images are kept).
    let room = FILES_PER_MESSAGE.saturating_sub(prepared.documents.len());
    if prepared.images.len() > room {
        let over = prepared.images.len() - room;
        tracing::info!(over, "images left out for the turn's documents");
        prepared.images.drain(..over);
    }
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
    // Made ready before the account was chosen (`media`): every image is a file by now.
    let image_files: Vec<&FileRef> = prepared
        .images
        .iter()
        .filter_map(|i| match &i.data {
            ImageData::File(f) => Some(f),
            ImageData::Address(_) => None,
        })
        .collect();
    if image_files.len() != prepared.images.len() {
        return Err(ProxyError::Internal(
            "an image was not fetched before its upload".to_owned(),
        ));
    }
    let names: Vec<String> = image_files.iter().map(|f| image_name(f)).collect();
    let images = image_files.iter().zip(&names).map(|(image, name)| Upload {
        name,
        media_type: &image.media_type,
        class: FileClass::Image,
        bytes: image.bytes.clone(),
    });
    let digests = prepared
        .documents
        .iter()
        .map(|d| d.digest.as_str())
        .chain(image_files.iter().map(|f| f.digest.as_str()));
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
