use super::*;
use crate::turn::{ImageData, SentImage};

/// A 1×1 PNG (the signature is what counts here).
const PNG: &[u8] =
    b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0\x1f\x15\xc4\x89";

fn b64(bytes: &[u8]) -> String {
    // The standard alphabet, as clients send it (the decoder takes both alphabets).
    crate::common::base64_encode(bytes)
}

#[test]
fn types_are_judged_by_their_bytes() {
    assert_eq!(sniff(PNG), Some("image/png"));
    assert_eq!(sniff(b"\xff\xd8\xff\xe0rest"), Some("image/jpeg"));
    assert_eq!(sniff(b"GIF89a..."), Some("image/gif"));
    assert_eq!(sniff(b"RIFF\x10\0\0\0WEBPVP8 "), Some("image/webp"));
    assert_eq!(sniff(b"RIFF\x10\0\0\0WAVEfmt "), None);
    assert_eq!(sniff(b"<svg xmlns="), None);
    assert_eq!(sniff(b""), None);
}

#[test]
fn a_data_uri_becomes_a_file_of_the_type_its_bytes_say() {
    // Declared JPEG, but the bytes are a PNG: the bytes win.
    let f = data_uri(&format!("data:image/jpeg;base64,{}", b64(PNG))).unwrap();
    assert_eq!(f.media_type, "image/png");
    assert_eq!(&f.bytes[..], PNG);
    assert_eq!(f.digest, crate::common::sha256_hex(PNG));
    // Line breaks inside the base64 (some clients wrap it) and an upper-case scheme.
    let wrapped = format!(
        "DATA:image/png;charset=x;base64,{}\n{}",
        &b64(PNG)[..8],
        &b64(PNG)[8..]
    );
    assert_eq!(data_uri(&wrapped).unwrap().digest, f.digest);
}

#[test]
fn a_bad_data_uri_says_what_is_wrong() {
    let err = |uri: &str| data_uri(uri).unwrap_err();
    assert!(err("data:image/png;base64").contains("`,`"));
    assert!(err(&format!("data:image/png,{}", b64(PNG))).contains("base64"));
    assert!(err(&format!("data:text/plain;base64,{}", b64(PNG))).contains("image type"));
    assert!(err("data:image/png;base64,@@@@").contains("invalid"));
    assert!(err(&format!("data:image/svg+xml;base64,{}", b64(b"<svg/>"))).contains("PNG, JPEG"));
    assert!(err("dat").contains("Not a"));
    assert!(err("é:image/png;base64,AAAA").contains("Not a"));
}

fn resolver(max_bytes: u64, max_count: usize) -> Arc<MediaResolver> {
    let policy = crate::fetch::FetchPolicy {
        allow: Vec::new(),
        allow_http: false,
        max_bytes,
        timeout: Duration::from_secs(1),
        max_redirects: 3,
    };
    MediaResolver::new(
        Fetcher::new(policy),
        ImageLimits {
            max_bytes,
            max_count,
        },
        Metrics::new(),
    )
}

fn png_at(message: usize, part: usize) -> SentImage {
    SentImage {
        message,
        part,
        data: ImageData::File(FileRef::new("image/png", Bytes::from_static(PNG))),
    }
}

fn at(message: usize, part: usize, url: &str) -> SentImage {
    SentImage {
        message,
        part,
        data: ImageData::Address(url.to_owned()),
    }
}

fn refusal(r: Result<usize, ProxyError>) -> (String, String) {
    match r {
        Err(ProxyError::BadRequest {
            message,
            param,
            code,
        }) => {
            assert_eq!(code, Some("invalid_image_url"));
            (message, param.unwrap_or_default())
        }
        other => panic!("expected a 400, got {other:?}"),
    }
}

#[tokio::test]
async fn the_newest_message_may_not_carry_more_than_the_budget() {
    // Three images in the newest message (2), a budget of two: the third is named.
    let mut images = vec![png_at(2, 0), png_at(2, 1), png_at(2, 2)];
    let (message, param) = refusal(resolver(1 << 20, 2).ready(&mut images, 0, 2, true).await);
    assert!(message.contains("at most 2"), "{message}");
    assert_eq!(param, "messages[2].content[2].image_url");
    // The upstream's five files a message, less the turn's documents, bound it too.
    let mut images = vec![png_at(2, 0), png_at(2, 1)];
    let (message, _) = refusal(resolver(1 << 20, 5).ready(&mut images, 4, 2, true).await);
    assert!(message.contains("at most 1"), "{message}");
}

#[tokio::test]
async fn older_images_beyond_the_budget_are_left_out_newest_kept() {
    let mut images = vec![png_at(0, 0), png_at(1, 0), png_at(1, 1), png_at(3, 0)];
    let left_out = resolver(1 << 20, 2)
        .ready(&mut images, 0, 3, true)
        .await
        .unwrap();
    assert_eq!(left_out, 2);
    let kept: Vec<(usize, usize)> = images.iter().map(|i| (i.message, i.part)).collect();
    assert_eq!(kept, [(1, 1), (3, 0)]);
    // A model without vision is shown none of the older ones.
    let mut images = vec![png_at(0, 0)];
    assert_eq!(
        resolver(1 << 20, 5)
            .ready(&mut images, 0, 3, false)
            .await
            .unwrap(),
        1
    );
    assert!(images.is_empty());
}

#[tokio::test]
async fn a_refused_image_is_a_400_when_newest_and_left_out_when_older() {
    // The default policy: https only, no private or loopback addresses.
    for url in [
        "http://example.com/a.png",
        "https://127.0.0.1/a.png",
        "https://10.1.2.3/x",
    ] {
        let mut images = vec![png_at(0, 0), at(1, 1, url)];
        let (_, param) = refusal(resolver(1 << 20, 5).ready(&mut images, 0, 1, true).await);
        assert_eq!(param, "messages[1].content[1].image_url", "{url}");
        let mut images = vec![at(0, 0, url), png_at(1, 0)];
        let left_out = resolver(1 << 20, 5)
            .ready(&mut images, 0, 1, true)
            .await
            .unwrap();
        assert_eq!(left_out, 1, "{url}");
        assert_eq!(images.len(), 1);
        assert!(matches!(images[0].data, ImageData::File(_)));
    }
    // Too large: the same rule.
    let mut images = vec![png_at(1, 0)];
    let (message, _) = refusal(
        resolver(PNG.len() as u64 - 1, 5)
            .ready(&mut images, 0, 1, true)
            .await,
    );
    assert!(message.contains("IMAGE_MAX_BYTES"), "{message}");
}

#[tokio::test]
async fn the_cache_is_bounded_in_bytes_and_entries_whatever_the_keys() {
    let mut cache = FetchCache::default();
    let big = FileRef::new(
        "image/png",
        Bytes::from(vec![0u8; CACHE_BYTES / 4 - ENTRY_OVERHEAD]),
    );
    for i in 0..5 {
        cache.put(&format!("u{i}"), big.clone());
    }
    // Four fit; the oldest left for the fifth.
    assert_eq!(cache.entries.len(), 4);
    assert!(cache.get("u0").is_none());
    assert!(cache.get("u4").is_some());
    assert_eq!(cache.bytes, CACHE_BYTES);
    // Too large to cache at all.
    cache.put(
        "huge",
        FileRef::new("image/png", Bytes::from(vec![0u8; CACHE_BYTES / 4 + 1])),
    );
    assert!(cache.get("huge").is_none());
    // Tiny images under long addresses: the entry count bounds them, and a key is a digest
    // (32 bytes) whatever the address's length.
    let tiny = FileRef::new("image/gif", Bytes::from_static(b"GIF89a"));
    let long = "x".repeat(8_000);
    for i in 0..(CACHE_ENTRIES + 500) {
        cache.put(&format!("https://h/{i}/{long}"), tiny.clone());
    }
    assert_eq!(cache.entries.len(), CACHE_ENTRIES);
    assert!(cache.order.len() <= 2 * CACHE_ENTRIES);
    assert!(cache
        .get(&format!("https://h/{}/{long}", CACHE_ENTRIES + 499))
        .is_some());
    assert!(cache.get(&format!("https://h/0/{long}")).is_none());
}

#[tokio::test(start_paused = true)]
async fn expired_entries_leave_the_cache() {
    let mut cache = FetchCache::default();
    let tiny = FileRef::new("image/gif", Bytes::from_static(b"GIF89a"));
    cache.put("a", tiny.clone());
    tokio::time::advance(CACHE_TTL + Duration::from_secs(1)).await;
    cache.put("b", tiny);
    assert_eq!(
        cache.entries.len(),
        1,
        "the expired one went on the next put"
    );
    assert!(cache.get("a").is_none());
}
