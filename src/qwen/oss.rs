//! Alibaba Cloud OSS request signing, version 4 (`OSS4-HMAC-SHA256`), for the upload of a
//! file with the temporary (STS) credentials the upstream hands out (`qwen-protocol.md`
//! §3.6). Pure: the request's parts and a clock reading in, the headers to send out. The
//! simulator checks uploads with the same rules written independently (`sim::storage`), and
//! the unit tests check this signer against the vectors of Alibaba's own SDK tests.
//!
//! The canonical request: the method; the resource `/<bucket>/<key>` URI-encoded (`/`
//! kept); the query sorted by encoded name (`name=value`, or `name` alone when the value is
//! empty); every `content-type`, `content-md5` and `x-oss-*` header, lower-cased, sorted,
//! `name:value` a line each; the additional signed header names (none here); and the
//! payload hash, always `UNSIGNED-PAYLOAD`. Signed with a key derived from the secret, the
//! date, the region and the service (`aliyun_v4_request`).

use std::fmt::Write as _;

use hmac::{Hmac, Mac};

use crate::common::hex;
use sha2::{Digest, Sha256};

/// The payload hash OSS accepts without hashing the body.
pub(crate) const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";

/// Temporary credentials for one upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StsCredentials {
    pub(crate) access_key_id: String,
    pub(crate) access_key_secret: String,
    pub(crate) security_token: String,
}

/// What is signed of one request.
#[derive(Debug, Clone)]
pub(crate) struct SignedRequest<'a> {
    pub(crate) method: &'a str,
    pub(crate) bucket: &'a str,
    /// The object key (no leading `/`).
    pub(crate) key: &'a str,
    /// The region without the `oss-` prefix (`ap-southeast-1`).
    pub(crate) region: &'a str,
    /// Query parameters (none for a plain `PutObject`).
    pub(crate) query: &'a [(&'a str, &'a str)],
    /// Headers to sign besides the ones the signer adds (`content-type`, `x-oss-*`).
    pub(crate) headers: &'a [(&'a str, &'a str)],
}

/// `20231217T034736Z` from Unix milliseconds.
pub(crate) fn oss_date(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let (y, m, d) = crate::common::civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// URI encoding of RFC 3986's unreserved set; `/` kept when `keep_slash`.
fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(b))
            }
            b'/' if keep_slash => out.push('/'),
            _ => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC takes a key of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// The canonical request (the lines above; headers already lower-cased and complete).
pub(crate) fn canonical_request(req: &SignedRequest<'_>, headers: &[(String, String)]) -> String {
    let mut query: Vec<(String, String)> = req
        .query
        .iter()
        .map(|(k, v)| (uri_encode(k, false), uri_encode(v, false)))
        .collect();
    query.sort();
    let query = query
        .iter()
        .map(|(k, v)| {
            if v.is_empty() {
                k.clone()
            } else {
                format!("{k}={v}")
            }
        })
        .collect::<Vec<_>>()
        .join("&");
    let mut signed: Vec<&(String, String)> = headers
        .iter()
        .filter(|(k, _)| k == "content-type" || k == "content-md5" || k.starts_with("x-oss-"))
        .collect();
    signed.sort();
    let mut out = String::new();
    let _ = write!(
        out,
        "{}\n{}\n{query}\n",
        req.method,
        uri_encode(&format!("/{}/{}", req.bucket, req.key), true)
    );
    for (k, v) in signed {
        let _ = writeln!(out, "{k}:{}", v.trim());
    }
    // No additional headers, then the payload hash.
    out.push('\n');
    out.push('\n');
    out.push_str(UNSIGNED_PAYLOAD);
    out
}

/// `20231217/ap-southeast-1/oss/aliyun_v4_request`.
fn scope(date: &str, region: &str) -> String {
    format!("{date}/{region}/oss/aliyun_v4_request")
}

/// The signature of a canonical request made at `datetime` (`20231217T034736Z`).
fn signature(secret: &str, datetime: &str, region: &str, canonical: &str) -> String {
    let date = &datetime[..8];
    let to_sign = format!(
        "OSS4-HMAC-SHA256\n{datetime}\n{}\n{}",
        scope(date, region),
        hex(&Sha256::digest(canonical.as_bytes()))
    );
    let key = [date, region, "oss", "aliyun_v4_request"]
        .iter()
        .fold(format!("aliyun_v4{secret}").into_bytes(), |key, part| {
            hmac(&key, part.as_bytes())
        });
    hex(&hmac(&key, to_sign.as_bytes()))
}

/// The headers that sign `req` at `unix_ms`: `x-oss-date`, `x-oss-content-sha256`,
/// `x-oss-security-token` and `authorization` (lower-case names, to add to the request
/// beside `req.headers`).
pub(crate) fn sign(
    req: &SignedRequest<'_>,
    creds: &StsCredentials,
    unix_ms: u64,
) -> Vec<(String, String)> {
    let datetime = oss_date(unix_ms);
    let date = &datetime[..8];
    let mut headers: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), (*v).to_owned()))
        .collect();
    let added = [
        ("x-oss-content-sha256", UNSIGNED_PAYLOAD.to_owned()),
        ("x-oss-date", datetime.clone()),
        ("x-oss-security-token", creds.security_token.clone()),
    ];
    for (k, v) in &added {
        headers.retain(|(name, _)| name != k);
        headers.push(((*k).to_owned(), v.clone()));
    }
    let scope = scope(date, req.region);
    let canonical = canonical_request(req, &headers);
    let signature = signature(&creds.access_key_secret, &datetime, req.region, &canonical);
    let mut out: Vec<(String, String)> =
        added.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    out.push((
        "authorization".to_owned(),
        format!(
            "OSS4-HMAC-SHA256 Credential={}/{scope},Signature={signature}",
            creds.access_key_id
        ),
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The request of Alibaba's OSS SDK signer tests (aliyun-oss-android-sdk
    /// `SingerTest.testSingerWithSignerV4Token`, the same in the iOS SDK).
    fn sdk_request<'a>() -> SignedRequest<'a> {
        SignedRequest {
            method: "PUT",
            bucket: "bucket",
            key: "1234+-/123/1.txt",
            region: "cn-hangzhou",
            query: &[
                ("param1", "value1"),
                ("|param1", "value4"),
                ("+param1", "value3"),
                ("+param2", ""),
                ("|param2", ""),
                ("param2", ""),
            ],
            headers: &[
                ("x-oss-head1", "value"),
                ("abc", "value"),
                ("ZAbc", "value"),
                ("XYZ", "value"),
                ("content-type", "text/plain"),
            ],
        }
    }

    fn creds() -> StsCredentials {
        StsCredentials {
            access_key_id: "ak".to_owned(),
            access_key_secret: "sk".to_owned(),
            security_token: "token".to_owned(),
        }
    }

    #[test]
    fn dates_are_written_as_oss_wants_them() {
        assert_eq!(oss_date(1_702_784_856_007), "20231217T034736Z");
        assert_eq!(oss_date(0), "19700101T000000Z");
        assert_eq!(oss_date(951_782_400_000), "20000229T000000Z");
    }

    /// The SDK's request headers as signed: it sends its date in `Date` (not signed), the
    /// token and the payload hash in `x-oss-*` (signed); `abc`, `ZAbc` and `XYZ` are not.
    fn sdk_headers(token: bool) -> Vec<(String, String)> {
        let mut h: Vec<(String, String)> = sdk_request()
            .headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), (*v).to_owned()))
            .collect();
        h.push(("x-oss-content-sha256".into(), UNSIGNED_PAYLOAD.into()));
        if token {
            h.push(("x-oss-security-token".into(), "token".into()));
        }
        h
    }

    #[test]
    fn the_canonical_request_hashes_as_in_alibabas_sdk() {
        // `testV4SingerWithOSSCustomSignerCredentialProvider`: its string to sign.
        let canonical = canonical_request(&sdk_request(), &sdk_headers(false));
        assert_eq!(
            hex(&Sha256::digest(canonical.as_bytes())),
            "068f4aca83d49df1bdedaf73bb024dade6e8aebc7f880481f840553ccd752590"
        );
    }

    #[test]
    fn the_signature_matches_alibabas_sdk() {
        // `testSingerWithSignerV4Token`: STS credentials ak/sk/token at 1702784856007 ms.
        let canonical = canonical_request(&sdk_request(), &sdk_headers(true));
        assert_eq!(
            signature("sk", "20231217T034736Z", "cn-hangzhou", &canonical),
            "0436fec1623c737d5827c11d200afd3df51d067b80196080438f57c94d99b9b0"
        );
    }

    #[test]
    fn signing_adds_the_date_the_token_and_the_authorization() {
        let headers = sign(&sdk_request(), &creds(), 1_702_784_856_007);
        let get = |k: &str| {
            headers
                .iter()
                .find(|(name, _)| name == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("x-oss-security-token"), Some("token"));
        assert_eq!(get("x-oss-date"), Some("20231217T034736Z"));
        assert_eq!(get("x-oss-content-sha256"), Some(UNSIGNED_PAYLOAD));
        // The date is signed too (an `x-oss-*` header): the signature is that of the SDK's
        // canonical request with it.
        let mut signed = sdk_headers(true);
        signed.push(("x-oss-date".into(), "20231217T034736Z".into()));
        let want = signature(
            "sk",
            "20231217T034736Z",
            "cn-hangzhou",
            &canonical_request(&sdk_request(), &signed),
        );
        assert_eq!(
            get("authorization").map(str::to_owned),
            Some(format!(
                "OSS4-HMAC-SHA256 Credential=ak/20231217/cn-hangzhou/oss/aliyun_v4_request,Signature={want}"
            ))
        );
    }
}
