//! Images in messages, before the engine sees them: a `data:` URI decoded (at parse time,
//! [`data_uri`]), an address fetched under the fetch policy (`fetch`), each checked for what
//! it is — its bytes, not its declared type: PNG, JPEG, GIF or WebP — and for size, and the
//! request for its count ([`MediaResolver::resolve`], run by `layers::media`). The engine
//! then has only files, with their digest; they are uploaded once per account and digest
//! when a turn sends them (`chat::fit`).
//!
//! Fetched addresses are cached for a while (by address, bounded in bytes): an agent sends
//! its whole history with every step, and an image it showed ten steps ago is not fetched
//! ten more times.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::error::ProxyError;
use crate::fetch::Fetcher;
use crate::turn::{FileRef, Part, TurnRequest};

/// The image types the upstream's vision models read.
pub(crate) const IMAGE_TYPES: &str = "PNG, JPEG, GIF or WebP";

/// What the bytes are, by their signature.
pub(crate) fn sniff(bytes: &[u8]) -> Option<&'static str> {
    match bytes {
        [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A, ..] => Some("image/png"),
        [0xFF, 0xD8, 0xFF, ..] => Some("image/jpeg"),
        [b'G', b'I', b'F', b'8', b'7' | b'9', b'a', ..] => Some("image/gif"),
        [b'R', b'I', b'F', b'F', _, _, _, _, b'W', b'E', b'B', b'P', ..] => Some("image/webp"),
        _ => None,
    }
}

/// A `data:image/…;base64,…` URI as an image file. The error is the 400's message.
pub(crate) fn data_uri(uri: &str) -> Result<FileRef, String> {
    let rest = &uri["data:".len()..];
    let Some((header, payload)) = rest.split_once(',') else {
        return Err("A `data:` image URL needs a `,` before its data.".to_owned());
    };
    let mut params = header.split(';');
    let declared = params.next().unwrap_or("").trim().to_ascii_lowercase();
    if !params.any(|p| p.trim().eq_ignore_ascii_case("base64")) {
        return Err("A `data:` image URL must be base64 (`data:image/png;base64,…`).".to_owned());
    }
    if !declared.starts_with("image/") {
        return Err(format!(
            "A `data:` image URL must declare an image type ({IMAGE_TYPES})."
        ));
    }
    let compact: String = payload.split_ascii_whitespace().collect();
    let bytes = crate::common::base64url_decode(&compact)
        .ok_or_else(|| "The `data:` image URL's base64 is invalid.".to_owned())?;
    image(Bytes::from(bytes))
}

/// Bytes that must be an image of a type the upstream reads.
fn image(bytes: Bytes) -> Result<FileRef, String> {
    match sniff(&bytes) {
        Some(media_type) => Ok(FileRef::new(media_type, bytes)),
        None => Err(format!(
            "The image is not a {IMAGE_TYPES} image (judged by its bytes)."
        )),
    }
}

/// The limits on images in one request (`IMAGE_MAX_BYTES`, `IMAGE_MAX_COUNT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ImageLimits {
    pub max_bytes: u64,
    pub max_count: usize,
}

/// How long a fetched address is served from the cache, and the cache's size.
const CACHE_TTL: Duration = Duration::from_secs(600);
const CACHE_BYTES: usize = 64 << 20;

/// Fetched images by address: recent ones, up to [`CACHE_BYTES`].
#[derive(Debug, Default)]
struct FetchCache {
    entries: HashMap<String, (Instant, FileRef)>,
    bytes: usize,
}

impl FetchCache {
    fn get(&mut self, url: &str) -> Option<FileRef> {
        match self.entries.get(url) {
            Some((at, file)) if at.elapsed() < CACHE_TTL => Some(file.clone()),
            Some(_) => {
                self.remove(url);
                None
            }
            None => None,
        }
    }

    fn remove(&mut self, url: &str) {
        if let Some((_, f)) = self.entries.remove(url) {
            self.bytes -= f.bytes.len();
        }
    }

    fn put(&mut self, url: &str, file: FileRef) {
        if file.bytes.len() > CACHE_BYTES / 4 {
            return;
        }
        self.remove(url);
        // Oldest first, until the new one fits (the map is small: a few hundred images).
        while self.bytes + file.bytes.len() > CACHE_BYTES {
            let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, (at, _))| *at)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            self.remove(&oldest);
        }
        self.bytes += file.bytes.len();
        self.entries.insert(url.to_owned(), (Instant::now(), file));
    }
}

/// Resolves the images of a request: shared by every request (`Arc`).
pub(crate) struct MediaResolver {
    fetcher: Fetcher,
    limits: ImageLimits,
    cache: Mutex<FetchCache>,
}

impl std::fmt::Debug for MediaResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaResolver")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl MediaResolver {
    pub(crate) fn new(fetcher: Fetcher, limits: ImageLimits) -> Arc<Self> {
        Arc::new(MediaResolver {
            fetcher,
            limits,
            cache: Mutex::default(),
        })
    }

    /// Whether the turn has images to check or fetch (most requests have none: they skip
    /// the resolver without cloning anything).
    pub(crate) fn has_images(turn: &TurnRequest) -> bool {
        turn.messages.iter().any(|m| {
            m.content.iter().any(|p| {
                matches!(p, Part::ImageUrl(_)) || matches!(p, Part::File(f) if f.is_image())
            })
        })
    }

    /// Check every image of the turn and fetch those given by address: afterwards the turn
    /// has files only. Errors are 400s naming the part (`messages[i].content[j]`).
    pub(crate) async fn resolve(&self, turn: &mut TurnRequest) -> Result<(), ProxyError> {
        let mut count = 0;
        for (i, m) in turn.messages.iter_mut().enumerate() {
            for (j, part) in m.content.iter_mut().enumerate() {
                let param = || format!("messages[{i}].content[{j}].image_url");
                let file = match part {
                    Part::ImageUrl(url) => {
                        self.fetch(url).await.map_err(|msg| bad(msg, param()))?
                    }
                    Part::File(f) if f.is_image() => f.clone(),
                    _ => continue,
                };
                count += 1;
                if count > self.limits.max_count {
                    return Err(bad(
                        format!(
                            "Too many images: at most {} per request (IMAGE_MAX_COUNT).",
                            self.limits.max_count
                        ),
                        param(),
                    ));
                }
                if file.bytes.len() as u64 > self.limits.max_bytes {
                    return Err(bad(
                        format!(
                            "The image is {} bytes; at most {} are accepted (IMAGE_MAX_BYTES).",
                            file.bytes.len(),
                            self.limits.max_bytes
                        ),
                        param(),
                    ));
                }
                *part = Part::File(file);
            }
        }
        Ok(())
    }

    async fn fetch(&self, url: &str) -> Result<FileRef, String> {
        if let Some(hit) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(url)
        {
            return Ok(hit);
        }
        let fetched = self.fetcher.get(url).await.map_err(|e| {
            tracing::info!(error = ?e, "an image address was not fetched");
            format!("The image could not be fetched: {e}.")
        })?;
        tracing::debug!(
            url = %crate::untrusted::Untrusted(&fetched.final_url),
            declared = ?fetched.content_type,
            bytes = fetched.bytes.len(),
            "fetched an image"
        );
        let file = image(fetched.bytes)?;
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .put(url, file.clone());
        Ok(file)
    }
}

fn bad(message: String, param: String) -> ProxyError {
    ProxyError::BadRequest {
        message,
        param: Some(param),
        code: Some("invalid_image_url"),
    }
}

#[cfg(test)]
mod tests;
