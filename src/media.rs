//! Images in messages: a `data:` URI decoded at parse time ([`data_uri`]); the images a turn
//! sends chosen, checked and fetched just before it is sent ([`MediaResolver::ready`]):
//!
//! * only the images of the messages the turn sends (a continued chat's new messages, a
//!   fold's all), at most the per-message budget (`IMAGE_MAX_COUNT`, at most the upstream's
//!   five files a message less the turn's documents), the newest kept;
//! * the request's newest message is what the client asks about: an image of it that cannot
//!   be taken — too many, not an image, too large, an address the fetch policy refuses or
//!   that fails — is a 400 naming its part; an older image that cannot be taken (or any image
//!   for a model without vision) is left out, and the message says how many were;
//! * addresses are fetched at once (at most the budget, each under the fetch policy, `fetch`),
//!   and cached for a while by address (an agent sends its whole history with every step);
//! * every image is judged by its bytes, not its declared type: PNG, JPEG, GIF or WebP.
//!
//! The files are then uploaded once per account and digest (`chat::fit`).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::error::ProxyError;
use crate::fetch::Fetcher;
use crate::metrics::Metrics;
use crate::turn::{FileRef, ImageData, SentImage};

/// The image types the upstream's vision models read.
pub(crate) const IMAGE_TYPES: &str = "PNG, JPEG, GIF or WebP";

/// The most files one message carries (the web front end's limit), documents and images.
pub(crate) const FILES_PER_MESSAGE: usize = 5;

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
    let rest = uri
        .get(..5)
        .filter(|scheme| scheme.eq_ignore_ascii_case("data:"))
        .map(|_| &uri[5..])
        .ok_or_else(|| "Not a `data:` URI.".to_owned())?;
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

/// The limits on images (`IMAGE_MAX_BYTES`, `IMAGE_MAX_COUNT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ImageLimits {
    pub max_bytes: u64,
    /// Images one message attaches (at most [`FILES_PER_MESSAGE`]).
    pub max_count: usize,
}

/// How long a fetched address is served from the cache, and the cache's bounds.
const CACHE_TTL: Duration = Duration::from_secs(600);
const CACHE_BYTES: usize = 64 << 20;
const CACHE_ENTRIES: usize = 4096;
/// What an entry costs beside its image: its key, its place in the order, the map's slot.
const ENTRY_OVERHEAD: usize = 128;

/// Fetched images by the SHA-256 of their address: recent ones, bounded in bytes (images
/// and a fixed cost per entry) and in entries; the oldest leave first, the expired on the
/// way. Hashing the address bounds a key however long the client made it.
#[derive(Debug, Default)]
struct FetchCache {
    entries: HashMap<[u8; 32], (Instant, FileRef)>,
    /// Keys by insertion, oldest first (a key put again is in it twice: the stale place is
    /// skipped when it comes up).
    order: VecDeque<([u8; 32], Instant)>,
    bytes: usize,
}

fn cache_key(url: &str) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(url.as_bytes()).into()
}

impl FetchCache {
    fn get(&mut self, url: &str) -> Option<FileRef> {
        let key = cache_key(url);
        match self.entries.get(&key) {
            Some((at, file)) if at.elapsed() < CACHE_TTL => Some(file.clone()),
            Some(_) => {
                self.remove(&key);
                None
            }
            None => None,
        }
    }

    fn remove(&mut self, key: &[u8; 32]) {
        if let Some((_, f)) = self.entries.remove(key) {
            self.bytes -= f.bytes.len() + ENTRY_OVERHEAD;
        }
    }

    /// Drop the oldest entry (or a stale place in the order); `false` when empty.
    fn pop_oldest(&mut self) -> bool {
        let Some((key, at)) = self.order.pop_front() else {
            return false;
        };
        if self.entries.get(&key).is_some_and(|(put, _)| *put == at) {
            self.remove(&key);
        }
        true
    }

    fn put(&mut self, url: &str, file: FileRef) {
        let cost = file.bytes.len() + ENTRY_OVERHEAD;
        if cost > CACHE_BYTES / 4 {
            return;
        }
        let key = cache_key(url);
        self.remove(&key);
        // The expired at the front go first, then the oldest until the new one fits.
        while self
            .order
            .front()
            .is_some_and(|(_, at)| at.elapsed() >= CACHE_TTL)
        {
            self.pop_oldest();
        }
        while (self.bytes + cost > CACHE_BYTES || self.entries.len() >= CACHE_ENTRIES)
            && self.pop_oldest()
        {}
        let now = Instant::now();
        self.bytes += cost;
        self.entries.insert(key, (now, file));
        self.order.push_back((key, now));
    }
}

/// Resolves the images of turns: shared by every request (`Arc`).
pub(crate) struct MediaResolver {
    fetcher: Fetcher,
    limits: ImageLimits,
    cache: Mutex<FetchCache>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for MediaResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaResolver")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// One image that cannot be taken: why, for the 400 or the log.
struct Refused {
    image: SentImage,
    why: String,
}

impl MediaResolver {
    pub(crate) fn new(fetcher: Fetcher, limits: ImageLimits, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(MediaResolver {
            fetcher,
            limits,
            cache: Mutex::default(),
            metrics,
        })
    }

    fn count(&self, outcome: &str) {
        self.metrics
            .image_fetches
            .with_label_values(&[outcome])
            .inc();
    }

    /// Make the turn's images ready to upload: choose them (the newest that the budget —
    /// `IMAGE_MAX_COUNT`, and the upstream's files per message less `documents` — allows;
    /// none for a model without `vision`), fetch those given by address, check each. An
    /// image of the request's newest message (`newest`) that cannot be taken is a 400
    /// naming it; an older one is left out. Afterwards every image is a file; the count left
    /// out is returned.
    pub(crate) async fn ready(
        &self,
        images: &mut Vec<SentImage>,
        documents: usize,
        newest: usize,
        vision: bool,
    ) -> Result<usize, ProxyError> {
        let budget = if vision {
            self.limits
                .max_count
                .min(FILES_PER_MESSAGE.saturating_sub(documents))
        } else {
            0
        };
        let asked = images.iter().filter(|i| i.message == newest).count();
        if asked > budget {
            // `plan` refuses a model without vision first; here the message has too many.
            let over = images
                .iter()
                .filter(|i| i.message == newest)
                .nth(budget)
                .map_or_else(|| "messages".to_owned(), SentImage::param);
            return Err(bad(
                format!(
                    "Too many images in one message: at most {budget} go with it \
                     (IMAGE_MAX_COUNT, and the upstream's {FILES_PER_MESSAGE} files a message)."
                ),
                over,
            ));
        }
        let mut left_out = images.len().saturating_sub(budget);
        let chosen = images.split_off(left_out);
        images.clear();
        for result in self.fetch_all(chosen).await? {
            match result {
                Ok(image) => images.push(image),
                Err(refused) if refused.image.message == newest => {
                    return Err(bad(refused.why, refused.image.param()));
                }
                Err(refused) => {
                    tracing::info!(
                        param = %refused.image.param(),
                        why = %crate::untrusted::Untrusted(&refused.why),
                        "an earlier image of the conversation is left out"
                    );
                    left_out += 1;
                }
            }
        }
        Ok(left_out)
    }

    /// Every image as a file, in order: those given by address fetched at once.
    async fn fetch_all(
        &self,
        chosen: Vec<SentImage>,
    ) -> Result<Vec<Result<SentImage, Refused>>, ProxyError> {
        let mut fetches = JoinSet::new();
        let mut results: Vec<Option<Result<SentImage, Refused>>> = Vec::new();
        for (i, image) in chosen.into_iter().enumerate() {
            match &image.data {
                ImageData::File(file) => results.push(Some(self.check(image.clone(), file))),
                ImageData::Address(url) => {
                    if let Some(hit) = self.cached(url) {
                        self.count("cached");
                        results.push(Some(self.check(image.clone(), &hit)));
                        continue;
                    }
                    let (fetcher, url) = (self.fetcher.clone(), url.clone());
                    fetches.spawn(async move { (i, image, fetcher.get(&url).await, url) });
                    results.push(None);
                }
            }
        }
        while let Some(joined) = fetches.join_next().await {
            let (i, sent, fetched, url) =
                joined.map_err(|e| ProxyError::Internal(format!("an image fetch stopped: {e}")))?;
            let result = match fetched {
                Ok(fetched) => {
                    tracing::debug!(
                        host = %crate::untrusted::Untrusted(host(&fetched.final_url)),
                        declared = ?fetched.content_type,
                        bytes = fetched.bytes.len(),
                        "fetched an image"
                    );
                    match image(fetched.bytes) {
                        Ok(file) => {
                            self.count("fetched");
                            self.cache
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .put(&url, file.clone());
                            self.check(sent, &file)
                        }
                        Err(why) => {
                            self.count("failed");
                            Err(Refused { image: sent, why })
                        }
                    }
                }
                Err(e) => {
                    self.count(if e.is_refusal() { "refused" } else { "failed" });
                    tracing::info!(error = ?e, "an image address was not fetched");
                    Err(Refused {
                        image: sent,
                        why: format!("The image could not be fetched: {e}."),
                    })
                }
            };
            if let Some(slot) = results.get_mut(i) {
                *slot = Some(result);
            }
        }
        // Every slot is filled: a file or a cache hit at once, a fetch when it joined.
        Ok(results.into_iter().flatten().collect())
    }

    fn cached(&self, url: &str) -> Option<FileRef> {
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(url)
    }

    /// The image as a file, if its size is allowed.
    fn check(&self, mut image: SentImage, file: &FileRef) -> Result<SentImage, Refused> {
        if file.bytes.len() as u64 > self.limits.max_bytes {
            let why = format!(
                "The image is {} bytes; at most {} are accepted (IMAGE_MAX_BYTES).",
                file.bytes.len(),
                self.limits.max_bytes
            );
            return Err(Refused { image, why });
        }
        image.data = ImageData::File(file.clone());
        Ok(image)
    }
}

/// The host of a URL, for a log line (never its path or query: they may hold a signature).
fn host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split(['/', '?', '#']).next().unwrap_or("")
}

/// The note that says how many earlier images are not shown to the model.
pub(crate) fn left_out_note(n: usize) -> String {
    format!(
        "(Note: {n} earlier image{} of this conversation {} not attached: only the newest \
         images go with a message.)\n\n",
        if n == 1 { "" } else { "s" },
        if n == 1 { "is" } else { "are" }
    )
}

/// The longest [`left_out_note`] (room kept for it when a turn is sized).
pub(crate) const LEFT_OUT_NOTE_MAX: usize = 160;

fn bad(message: String, param: String) -> ProxyError {
    ProxyError::BadRequest {
        message,
        param: Some(param),
        code: Some("invalid_image_url"),
    }
}

#[cfg(test)]
mod tests;
