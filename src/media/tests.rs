use super::*;
use crate::turn::{Message, Role};

/// A 1×1 PNG (the signature is what counts here).
const PNG: &[u8] =
    b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0\x1f\x15\xc4\x89";

fn b64(bytes: &[u8]) -> String {
    // The standard alphabet, as clients send it (the decoder takes both alphabets).
    crate::common::base64url_encode(bytes)
        .replace('-', "+")
        .replace('_', "/")
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
    // Line breaks inside the base64 (some clients wrap it) are tolerated.
    let wrapped = format!(
        "data:image/png;charset=x;base64,{}\n{}",
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
}

fn turn_with(parts: Vec<Part>) -> TurnRequest {
    TurnRequest {
        model: "m".into(),
        messages: vec![Message {
            role: Role::User,
            content: parts,
            name: None,
            tool_calls: Vec::new(),
            tool_call_id: None,
        }],
        stream: false,
        max_tokens: None,
        stop: Vec::new(),
        thinking: None,
        response_format: Default::default(),
        tools: None,
        output: Default::default(),
    }
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
    )
}

#[tokio::test]
async fn count_and_size_limits_name_the_part_that_broke_them() {
    let png = || Part::File(FileRef::new("image/png", Bytes::from_static(PNG)));
    let mut turn = turn_with(vec![Part::Text("look".into()), png(), png()]);
    assert!(MediaResolver::has_images(&turn));
    resolver(1 << 20, 2).resolve(&mut turn).await.unwrap();

    let mut turn = turn_with(vec![png(), png(), png()]);
    match resolver(1 << 20, 2).resolve(&mut turn).await {
        Err(ProxyError::BadRequest {
            message,
            param,
            code,
        }) => {
            assert!(message.contains("at most 2"), "{message}");
            assert_eq!(param.as_deref(), Some("messages[0].content[2].image_url"));
            assert_eq!(code, Some("invalid_image_url"));
        }
        other => panic!("{other:?}"),
    }
    let mut turn = turn_with(vec![png()]);
    match resolver(PNG.len() as u64 - 1, 5).resolve(&mut turn).await {
        Err(ProxyError::BadRequest { message, .. }) => assert!(message.contains("IMAGE_MAX_BYTES")),
        other => panic!("{other:?}"),
    }
    assert!(!MediaResolver::has_images(&turn_with(vec![Part::Text(
        "x".into()
    )])));
}

#[tokio::test]
async fn an_address_the_policy_forbids_is_a_400_and_never_a_file() {
    // The default policy: https only, no private or loopback addresses.
    for url in [
        "http://example.com/a.png",
        "https://127.0.0.1/a.png",
        "file:///etc/passwd",
    ] {
        let mut turn = turn_with(vec![Part::ImageUrl(url.into())]);
        match resolver(1 << 20, 5).resolve(&mut turn).await {
            Err(ProxyError::BadRequest { param, code, .. }) => {
                assert_eq!(param.as_deref(), Some("messages[0].content[0].image_url"));
                assert_eq!(code, Some("invalid_image_url"));
            }
            other => panic!("{url}: {other:?}"),
        }
        assert!(matches!(turn.messages[0].content[0], Part::ImageUrl(_)));
    }
}

#[test]
fn the_cache_keeps_recent_images_within_its_bytes() {
    let mut cache = FetchCache::default();
    let big = FileRef::new("image/png", Bytes::from(vec![0u8; CACHE_BYTES / 4]));
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
}
