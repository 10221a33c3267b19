//! The simulator's image CDN (`qwen-protocol.md` §4.4, §5.10): the pictures its t2i
//! completions generate, named by signed URLs on the simulator's own address, and the
//! `GET` that serves them.
//!
//! * URL: `{origin}/output/{uid}/t2i/{response_id}/{unix_ts}.png?key={key}` — `origin` the
//!   address the completion was sent to (its `Host`), `uid` the account's stable id (a hash:
//!   a token is not a path), `response_id` the completion's assistant node.
//! * Key: base64url (no padding) of HMAC-SHA256 over the path (`/output/…png`) with a secret
//!   drawn when the simulator starts, so a URL cannot be guessed, only handed out. (The
//!   upstream's key is a JWT; what matters to a client is that it is mandatory.)
//! * `GET`: a path no completion generated → 404; a generated one with the key missing or
//!   wrong → 403; else 200 `image/png`, a valid PNG of the picture's dimensions whose
//!   pattern follows the prompt (`png.rs`).

use std::collections::HashMap;

use hyper::StatusCode;

use super::files::hmac_sha256;
use super::handlers::{respond, SimBody, SimService};
use super::png;
use super::state::lock;
use crate::common::base64url_encode;

type Rsp = hyper::Response<SimBody>;

/// A generated picture: what its PNG is drawn from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Picture {
    width: u32,
    height: u32,
    /// The prompt's hash: the stripe pattern.
    seed: u64,
}

/// Counters for `/__sim/stats` `images`.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub(crate) struct ImageCounters {
    /// Pictures a t2i completion handed out a URL for.
    pub(crate) generated: u64,
    /// `GET`s answered with the PNG.
    pub(crate) served: u64,
}

/// The pictures generated so far, by path (kept for the simulator's lifetime: a few
/// numbers each, never the PNG), and the URL signing secret.
#[derive(Debug)]
pub(crate) struct Images {
    secret: [u8; 32],
    pictures: HashMap<String, Picture>,
    pub(crate) counters: ImageCounters,
}

impl Default for Images {
    fn default() -> Self {
        let mut secret = [0u8; 32];
        secret[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        secret[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        Self {
            secret,
            pictures: HashMap::new(),
            counters: ImageCounters::default(),
        }
    }
}

/// Why a `GET` is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    NotFound,
    Forbidden,
}

impl Images {
    /// Record a `width`×`height` picture of `prompt` and answer its signed URL.
    pub(crate) fn generate(
        &mut self,
        at: &Place<'_>,
        width: u32,
        height: u32,
        prompt: &str,
    ) -> String {
        let path = format!(
            "/output/{}/t2i/{}/{}.png",
            at.uid, at.response_id, at.unix_ts
        );
        let key = self.key(&path);
        self.pictures.insert(
            path.clone(),
            Picture {
                width,
                height,
                seed: fnv1a(prompt),
            },
        );
        self.counters.generated += 1;
        format!("{}{path}?key={key}", at.origin)
    }

    fn key(&self, path: &str) -> String {
        base64url_encode(&hmac_sha256(&self.secret, path.as_bytes()))
    }

    /// The picture at `path` if `query` carries its key.
    fn fetch(&mut self, path: &str, query: Option<&str>) -> Result<Picture, Refusal> {
        let picture = *self.pictures.get(path).ok_or(Refusal::NotFound)?;
        let key = query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .find_map(|pair| pair.strip_prefix("key="));
        if key != Some(self.key(path).as_str()) {
            return Err(Refusal::Forbidden);
        }
        self.counters.served += 1;
        Ok(picture)
    }
}

/// Where a picture's URL points.
pub(crate) struct Place<'a> {
    /// `http://host:port` of the simulator as the client addressed it.
    pub(crate) origin: &'a str,
    pub(crate) uid: &'a str,
    pub(crate) response_id: &'a str,
    pub(crate) unix_ts: u64,
}

/// A stable 64-bit hash (FNV-1a): the same prompt draws the same picture.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The picture as a PNG: stripes whose period (6–32 px), slant and width follow the seed,
/// so two prompts' pictures differ.
fn draw(p: Picture) -> Vec<u8> {
    let period = 6 + p.seed % 27;
    let slant = (p.seed >> 8) % 4;
    let lit = 1 + (p.seed >> 16) % (period - 1);
    png::encode(p.width, p.height, |x, y| {
        (u64::from(x) + slant * u64::from(y)) % period < lit
    })
}

impl SimService {
    /// `GET /output/…`: a generated picture (see the module documentation).
    pub(super) fn image(&self, path: &str, query: Option<&str>) -> Rsp {
        let fetched = lock(&self.state.images).fetch(path, query);
        match fetched {
            Ok(picture) => respond(StatusCode::OK, None, "image/png", draw(picture)),
            Err(Refusal::Forbidden) => respond(
                StatusCode::FORBIDDEN,
                None,
                "application/xml",
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>AccessDenied</Code><Message>The key is missing or invalid.</Message></Error>",
            ),
            Err(Refusal::NotFound) => respond(
                StatusCode::NOT_FOUND,
                None,
                "application/xml",
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>NoSuchKey</Code><Message>The specified key does not exist.</Message></Error>",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place(response_id: &str) -> Place<'_> {
        Place {
            origin: "http://127.0.0.1:9",
            uid: "0123456789abcdef",
            response_id,
            unix_ts: 1_780_470_000,
        }
    }

    #[test]
    fn a_url_is_served_with_its_key_only() {
        let mut images = Images::default();
        let url = images.generate(&place("r1"), 16, 9, "a cat");
        let (path, query) = url
            .strip_prefix("http://127.0.0.1:9")
            .unwrap()
            .split_once('?')
            .unwrap();
        assert_eq!(path, "/output/0123456789abcdef/t2i/r1/1780470000.png");
        let key = query.strip_prefix("key=").unwrap();
        assert_eq!(key.len(), 43, "base64url of 32 bytes");
        assert!(images.fetch(path, Some(query)).is_ok());
        assert_eq!(images.fetch(path, None), Err(Refusal::Forbidden));
        assert_eq!(
            images.fetch(path, Some("key=AAAA")),
            Err(Refusal::Forbidden)
        );
        // Another path's key does not open this one.
        let other = images.generate(&place("r2"), 16, 9, "a cat");
        let other_query = other.split_once('?').unwrap().1;
        assert_eq!(
            images.fetch(path, Some(other_query)),
            Err(Refusal::Forbidden)
        );
        assert_eq!(
            images.fetch("/output/x/t2i/y/1.png", Some(query)),
            Err(Refusal::NotFound)
        );
        assert_eq!((images.counters.generated, images.counters.served), (2, 1));
        // Another simulator (another secret) signs differently.
        assert_ne!(Images::default().key(path), images.key(path));
    }

    #[test]
    fn pictures_follow_the_prompt() {
        let picture = |prompt| Picture {
            width: 64,
            height: 48,
            seed: fnv1a(prompt),
        };
        let (a, b) = (draw(picture("a cat")), draw(picture("a dog")));
        assert_ne!(a, b);
        assert_eq!(a, draw(picture("a cat")));
        assert_eq!(png::tests::dimensions(&a), (64, 48));
    }
}
