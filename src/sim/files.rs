//! The upstream's file machinery (`qwen-protocol.md` §3.6, §4.7): STS grants
//! (`POST /api/v2/files/getstsToken`), the object-storage PUT they sign (OSS V4, checked
//! here in code of its own, not the proxy's signer), the parse step of documents
//! (`files/parse`, `files/parse/status`), and the files a completion's message refers to
//! (`messages[0].files[]`): an image is seen (its size and digest), a document's text is
//! read as prompt.
//!
//! Faults, armed per account by completion directives (`scenario::FileDirectives`): STS
//! requests that fail, grants that have expired when used, a parse challenge that lasts until the
//! account's parse requests have been quiet for a while (every refused request restarts
//! it), and parse requests refused for the rate.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use bytes::Bytes;
use hyper::header::HeaderMap;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::scenario::FileDirectives;
use crate::common::{hex, sha256_hex};

/// Percent-decoding of a query component.
fn decode(s: &str) -> String {
    String::from_utf8_lossy(&crate::common::percent_decode(s)).into_owned()
}

/// The bucket and region the grants name (what the upstream hands out).
pub(crate) const BUCKET: &str = "qwen-webui-prod";
pub(crate) const REGION: &str = "oss-ap-southeast-1";
pub(crate) const ENDPOINT: &str = "oss-ap-southeast-1.aliyuncs.com";
/// How long a grant may be used (the upstream's ~300 s).
pub(crate) const GRANT_TTL: Duration = Duration::from_secs(300);
/// The largest file (the front end's 20 MB per document or image).
pub(crate) const MAX_FILE_BYTES: usize = 20 * 1024 * 1024;
/// The clock skew OSS tolerates between `x-oss-date` and its own clock.
const MAX_SKEW_MS: u64 = 15 * 60 * 1000;
/// Parsing a document takes this plus [`PARSE_PER_MIB`] per MiB of it.
const PARSE_BASE: Duration = Duration::from_millis(40);
const PARSE_PER_MIB: Duration = Duration::from_millis(200);

/// What a file was declared as (`filetype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileKind {
    Image,
    Document,
    Audio,
    Video,
}

impl FileKind {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "image" => FileKind::Image,
            "document" | "file" => FileKind::Document,
            "audio" => FileKind::Audio,
            "video" => FileKind::Video,
            _ => return None,
        })
    }
}

/// Temporary credentials for one object, as handed out.
#[derive(Debug, Clone)]
struct Grant {
    owner: String,
    file_id: String,
    name: String,
    size: u64,
    kind: FileKind,
    key_id: String,
    secret: String,
    token: String,
    expires: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Parse {
    NotAsked,
    Parsing { ready: Instant },
    Done,
    Failed,
}

/// An uploaded object.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    pub(crate) owner: String,
    pub(crate) name: String,
    pub(crate) media_type: String,
    pub(crate) kind: FileKind,
    pub(crate) bytes: Bytes,
    /// SHA-256 of the bytes, hex.
    pub(crate) digest: String,
    parse: Parse,
}

impl Stored {
    /// The text a model reads of it (documents only).
    pub(crate) fn text(&self) -> Option<String> {
        (self.kind == FileKind::Document).then(|| String::from_utf8_lossy(&self.bytes).into_owned())
    }
}

/// The faults armed for one account.
#[derive(Debug, Default, Clone)]
struct Faults {
    sts_failures: u32,
    expired_grants: u32,
    /// The quiet period that clears the challenge, and the last parse request it saw.
    parse_challenge: Option<(Duration, Instant)>,
    parse_rate_limited: u32,
}

/// Counters for `/__sim/stats`.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub(crate) struct FileCounters {
    pub(crate) grants: u64,
    pub(crate) grants_refused: u64,
    pub(crate) uploads: u64,
    pub(crate) upload_bytes: u64,
    pub(crate) uploads_refused: u64,
    pub(crate) parses: u64,
    pub(crate) parses_refused: u64,
    /// Files referred to by completions.
    pub(crate) attached: u64,
}

/// Why an upload was refused: OSS's error code and HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UploadRefusal {
    NoSuchKey,
    InvalidAccessKeyId,
    InvalidSecurityToken,
    SecurityTokenExpired,
    RequestTimeTooSkewed,
    SignatureDoesNotMatch,
    InvalidContentType,
    SizeMismatch,
    TooLarge,
}

impl UploadRefusal {
    pub(crate) fn status(self) -> u16 {
        match self {
            UploadRefusal::NoSuchKey => 404,
            UploadRefusal::InvalidContentType | UploadRefusal::SizeMismatch => 400,
            UploadRefusal::TooLarge => 413,
            _ => 403,
        }
    }

    /// OSS's XML error body.
    pub(crate) fn body(self) -> String {
        let (code, message) = match self {
            UploadRefusal::NoSuchKey => ("NoSuchKey", "The specified key does not exist."),
            UploadRefusal::InvalidAccessKeyId => (
                "InvalidAccessKeyId",
                "The OSS Access Key Id you provided does not exist in our records.",
            ),
            UploadRefusal::InvalidSecurityToken => (
                "InvalidSecurityToken",
                "The security token you provided is invalid.",
            ),
            UploadRefusal::SecurityTokenExpired => (
                "SecurityTokenExpired",
                "The security token you provided has expired.",
            ),
            UploadRefusal::RequestTimeTooSkewed => (
                "RequestTimeTooSkewed",
                "The difference between the request time and the current time is too large.",
            ),
            UploadRefusal::SignatureDoesNotMatch => (
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided.",
            ),
            UploadRefusal::InvalidContentType => (
                "InvalidArgument",
                "The Content-Type does not match the declared file type.",
            ),
            UploadRefusal::SizeMismatch => (
                "InvalidArgument",
                "The object size does not match the declared file size.",
            ),
            UploadRefusal::TooLarge => (
                "EntityTooLarge",
                "Your proposed upload exceeds the maximum allowed size.",
            ),
        };
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error>\n  <Code>{code}</Code>\n  \
             <Message>{message}</Message>\n  <RequestId>{}</RequestId>\n  \
             <HostId>{BUCKET}.{ENDPOINT}</HostId>\n</Error>\n",
            uuid::Uuid::new_v4().simple()
        )
    }
}

/// Why a parse request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ParseRefusal {
    NotFound,
    /// The anti-bot punish document.
    Challenge,
    RateLimited,
}

/// Every file of the simulator.
#[derive(Debug, Default)]
pub(crate) struct Files {
    /// Grants by object key (`file_path`).
    grants: HashMap<String, Grant>,
    /// Objects by file id.
    stored: HashMap<String, Stored>,
    faults: HashMap<String, Faults>,
    pub(crate) counters: FileCounters,
}

/// The `filename`/`file_name`, `filesize`/`file_size` (a number or a string) and
/// `filetype`/`file_type` of an STS request (both spellings are in use).
pub(crate) fn file_info(v: &Value) -> Option<(String, u64, FileKind)> {
    let field = |a: &str, b: &str| v.get(a).or_else(|| v.get(b));
    let name = field("filename", "file_name")?.as_str()?.to_owned();
    let size = match field("filesize", "file_size")? {
        Value::Number(n) => n.as_u64()?,
        Value::String(s) => s.trim().parse().ok()?,
        _ => return None,
    };
    let kind = FileKind::parse(field("filetype", "file_type")?.as_str()?)?;
    (!name.trim().is_empty()).then_some((name, size, kind))
}

fn random_hex(bytes: usize) -> String {
    let mut s = String::new();
    while s.len() < bytes * 2 {
        let _ = write!(s, "{}", uuid::Uuid::new_v4().simple());
    }
    s.truncate(bytes * 2);
    s
}

impl Files {
    /// Arm the faults a completion asked for on its account.
    pub(crate) fn arm(&mut self, account: &str, d: &FileDirectives) {
        if *d == FileDirectives::default() {
            return;
        }
        let f = self.faults.entry(account.to_owned()).or_default();
        f.sts_failures += d.sts_failures;
        f.parse_rate_limited += d.parse_rate_limited;
        f.expired_grants += d.expired_grants;
        if let Some(quiet) = d.parse_challenge {
            f.parse_challenge = Some((quiet, Instant::now()));
        }
    }

    /// A grant for one object (the STS endpoint's `data`); `None` when an armed STS failure
    /// refuses it.
    pub(crate) fn grant(
        &mut self,
        owner: &str,
        name: &str,
        size: u64,
        kind: FileKind,
        origin: &str,
    ) -> Option<Value> {
        let faults = self.faults.entry(owner.to_owned()).or_default();
        if faults.sts_failures > 0 {
            faults.sts_failures -= 1;
            self.counters.grants_refused += 1;
            return None;
        }
        let ttl = if faults.expired_grants > 0 {
            faults.expired_grants -= 1;
            Duration::ZERO
        } else {
            GRANT_TTL
        };
        self.counters.grants += 1;
        let file_id = uuid::Uuid::new_v4().to_string();
        // The object key: the owner (hashed: a token is not a path) and the file.
        let owner_dir = &sha256_hex(owner.as_bytes())[..16];
        let safe: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || ".-_".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let path = format!("{owner_dir}/{file_id}_{safe}");
        let grant = Grant {
            owner: owner.to_owned(),
            file_id: file_id.clone(),
            name: name.to_owned(),
            size,
            kind,
            key_id: format!("STS.{}", random_hex(12)),
            secret: random_hex(20),
            token: random_hex(64),
            expires: Instant::now() + ttl,
        };
        let data = json!({
            "access_key_id": grant.key_id,
            "access_key_secret": grant.secret,
            "security_token": grant.token,
            "bucketname": BUCKET,
            "endpoint": ENDPOINT,
            "region": REGION,
            "file_path": path,
            "file_url": format!(
                "{origin}/{path}?Expires={}&OSSAccessKeyId={}&Signature=sim",
                crate::common::epoch_secs() + ttl.as_secs(),
                grant.key_id
            ),
            "file_id": file_id,
        });
        self.grants.insert(path, grant);
        Some(data)
    }

    /// A PUT of `key` (the path without its leading `/`): checked against its grant and the
    /// V4 signature, then stored.
    pub(crate) fn put(
        &mut self,
        key: &str,
        query: Option<&str>,
        headers: &HeaderMap,
        body: Bytes,
        now_ms: u64,
    ) -> Result<(), UploadRefusal> {
        let refused = |files: &mut Files, why| {
            files.counters.uploads_refused += 1;
            Err(why)
        };
        let Some(grant) = self.grants.get(key).cloned() else {
            return refused(self, UploadRefusal::NoSuchKey);
        };
        if let Err(why) = check_upload(&grant, key, query, headers, &body, now_ms) {
            return refused(self, why);
        }
        let media_type = header(headers, "content-type")
            .unwrap_or_default()
            .to_owned();
        self.counters.uploads += 1;
        self.counters.upload_bytes += body.len() as u64;
        let digest = sha256_hex(&body);
        self.stored.insert(
            grant.file_id.clone(),
            Stored {
                owner: grant.owner,
                name: grant.name,
                media_type,
                kind: grant.kind,
                bytes: body,
                digest,
                parse: Parse::NotAsked,
            },
        );
        Ok(())
    }

    /// `files/parse` of one file.
    pub(crate) fn parse(&mut self, owner: &str, file_id: &str) -> Result<(), ParseRefusal> {
        let now = Instant::now();
        let faults = self.faults.entry(owner.to_owned()).or_default();
        if let Some((quiet, last)) = faults.parse_challenge {
            if now.duration_since(last) < quiet {
                // Every refused request restarts the quiet period.
                faults.parse_challenge = Some((quiet, now));
                self.counters.parses_refused += 1;
                return Err(ParseRefusal::Challenge);
            }
            faults.parse_challenge = None;
        }
        if faults.parse_rate_limited > 0 {
            faults.parse_rate_limited -= 1;
            self.counters.parses_refused += 1;
            return Err(ParseRefusal::RateLimited);
        }
        let Some(file) = self.stored.get_mut(file_id).filter(|f| f.owner == owner) else {
            return Err(ParseRefusal::NotFound);
        };
        self.counters.parses += 1;
        let text = String::from_utf8_lossy(&file.bytes);
        file.parse = if file.kind != FileKind::Document || text.contains("@@sim:parse_fail") {
            Parse::Failed
        } else {
            let mib = file.bytes.len() as f64 / (1024.0 * 1024.0);
            Parse::Parsing {
                ready: now + PARSE_BASE + PARSE_PER_MIB.mul_f64(mib),
            }
        };
        Ok(())
    }

    /// `files/parse/status` of one file: `parsing`, `success` or `failed`.
    pub(crate) fn parse_status(&mut self, owner: &str, file_id: &str) -> &'static str {
        let Some(file) = self.stored.get_mut(file_id).filter(|f| f.owner == owner) else {
            return "failed";
        };
        if let Parse::Parsing { ready } = file.parse {
            if Instant::now() >= ready {
                file.parse = Parse::Done;
            }
        }
        match file.parse {
            Parse::NotAsked | Parse::Parsing { .. } => "parsing",
            Parse::Done => "success",
            Parse::Failed => "failed",
        }
    }

    /// A file a completion of `owner` refers to: uploaded by that account, and parsed if it
    /// is a document. The error is the upstream's message.
    pub(crate) fn attached(&mut self, owner: &str, file_id: &str) -> Result<Stored, String> {
        let status = self.parse_status(owner, file_id);
        let Some(file) = self.stored.get(file_id).filter(|f| f.owner == owner) else {
            return Err("Invalid file information!".to_owned());
        };
        if file.kind == FileKind::Document && status != "success" {
            return Err(format!("File {file_id} is not parsed"));
        }
        self.counters.attached += 1;
        Ok(file.clone())
    }
}

fn header<'h>(h: &'h HeaderMap, name: &str) -> Option<&'h str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// The checks OSS makes of a PUT signed with STS credentials (V4).
fn check_upload(
    grant: &Grant,
    key: &str,
    query: Option<&str>,
    h: &HeaderMap,
    body: &[u8],
    now_ms: u64,
) -> Result<(), UploadRefusal> {
    use UploadRefusal as R;
    let auth = header(h, "authorization").ok_or(R::InvalidAccessKeyId)?;
    let fields = auth
        .strip_prefix("OSS4-HMAC-SHA256 ")
        .ok_or(R::SignatureDoesNotMatch)?;
    let field = |name: &str| {
        fields
            .split(',')
            .map(str::trim)
            .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
    };
    let credential = field("Credential").ok_or(R::SignatureDoesNotMatch)?;
    let signature = field("Signature").ok_or(R::SignatureDoesNotMatch)?;
    let additional: Vec<String> = field("AdditionalHeaders")
        .map(|a| a.split(';').map(str::to_ascii_lowercase).collect())
        .unwrap_or_default();
    let mut scope = credential.splitn(2, '/');
    if scope.next() != Some(grant.key_id.as_str()) {
        return Err(R::InvalidAccessKeyId);
    }
    if header(h, "x-oss-security-token") != Some(grant.token.as_str()) {
        return Err(R::InvalidSecurityToken);
    }
    if Instant::now() >= grant.expires {
        return Err(R::SecurityTokenExpired);
    }
    let scope = scope.next().ok_or(R::SignatureDoesNotMatch)?;
    let datetime = header(h, "x-oss-date").ok_or(R::SignatureDoesNotMatch)?;
    let at = parse_oss_date(datetime).ok_or(R::SignatureDoesNotMatch)?;
    if at.abs_diff(now_ms) > MAX_SKEW_MS {
        return Err(R::RequestTimeTooSkewed);
    }
    let region = REGION.trim_start_matches("oss-");
    if scope != format!("{}/{region}/oss/aliyun_v4_request", &datetime[..8]) {
        return Err(R::SignatureDoesNotMatch);
    }
    // The string to sign, rebuilt from what arrived.
    let mut canonical = format!("PUT\n/{BUCKET}/{}\n", encode(key, true));
    let mut params: Vec<(String, String)> = query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (encode(&decode(k), false), encode(&decode(v), false))
        })
        .collect();
    params.sort();
    let params: Vec<String> = params
        .into_iter()
        .map(|(k, v)| if v.is_empty() { k } else { format!("{k}={v}") })
        .collect();
    canonical.push_str(&params.join("&"));
    canonical.push('\n');
    let mut signed: Vec<(String, String)> = h
        .iter()
        .filter_map(|(name, value)| {
            let name = name.as_str().to_ascii_lowercase();
            let include = name == "content-type"
                || name == "content-md5"
                || name.starts_with("x-oss-")
                || additional.contains(&name);
            include.then(|| (name, value.to_str().unwrap_or("").trim().to_owned()))
        })
        .collect();
    signed.sort();
    for (name, value) in &signed {
        canonical.push_str(name);
        canonical.push(':');
        canonical.push_str(value);
        canonical.push('\n');
    }
    canonical.push('\n');
    canonical.push_str(&additional.join(";"));
    canonical.push('\n');
    canonical.push_str(header(h, "x-oss-content-sha256").unwrap_or("UNSIGNED-PAYLOAD"));
    let to_sign = format!(
        "OSS4-HMAC-SHA256\n{datetime}\n{scope}\n{}",
        hex(&Sha256::digest(canonical.as_bytes()))
    );
    let mut signing_key = format!("aliyun_v4{}", grant.secret).into_bytes();
    for part in [&datetime[..8], region, "oss", "aliyun_v4_request"] {
        signing_key = hmac_sha256(&signing_key, part.as_bytes());
    }
    if hex(&hmac_sha256(&signing_key, to_sign.as_bytes())) != signature {
        return Err(R::SignatureDoesNotMatch);
    }
    let media_type = header(h, "content-type").unwrap_or("");
    if grant.kind == FileKind::Image && !media_type.starts_with("image/") {
        return Err(R::InvalidContentType);
    }
    if body.len() > MAX_FILE_BYTES {
        return Err(R::TooLarge);
    }
    if body.len() as u64 != grant.size {
        return Err(R::SizeMismatch);
    }
    Ok(())
}

/// HMAC-SHA256 (RFC 2104), written out here so the simulator shares no code with the
/// proxy's signer (also the key of the image URLs, `images.rs`).
pub(super) fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| k.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(data)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .to_vec()
}

/// Percent-encoding of everything but RFC 3986's unreserved characters (and `/`).
fn encode(s: &str, keep_slash: bool) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            b'/' if keep_slash => "/".to_owned(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `20231217T034736Z` → Unix milliseconds.
fn parse_oss_date(s: &str) -> Option<u64> {
    let digits = |r: std::ops::Range<usize>| s.get(r)?.parse::<u64>().ok();
    if s.len() != 16 || s.as_bytes()[8] != b'T' || !s.ends_with('Z') {
        return None;
    }
    let (y, m, d) = (digits(0..4)?, digits(4..6)?, digits(6..8)?);
    let (hh, mm, ss) = (digits(9..11)?, digits(11..13)?, digits(13..15)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y, m) = (y as i64 - i64::from(m <= 2), m as i64);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days)
        .ok()
        .map(|days| (days * 86_400 + hh * 3600 + mm * 60 + ss) * 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oss_dates_read_back() {
        assert_eq!(parse_oss_date("20231217T034736Z"), Some(1_702_784_856_000));
        assert_eq!(parse_oss_date("19700101T000000Z"), Some(0));
        assert_eq!(parse_oss_date("20000229T000000Z"), Some(951_782_400_000));
        assert_eq!(parse_oss_date("2023-12-17T03:47:36Z"), None);
    }

    #[test]
    fn hmac_matches_rfc_4231() {
        // RFC 4231 test case 2.
        assert_eq!(
            hex(&hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn both_spellings_of_the_file_info_are_read() {
        assert_eq!(
            file_info(&json!({"filename": "a.png", "filesize": 12, "filetype": "image"})),
            Some(("a.png".to_owned(), 12, FileKind::Image))
        );
        assert_eq!(
            file_info(&json!({"file_name": "a.txt", "file_size": "34", "file_type": "file"})),
            Some(("a.txt".to_owned(), 34, FileKind::Document))
        );
        assert_eq!(
            file_info(&json!({"file_name": "a.txt", "file_size": 3})),
            None
        );
    }

    /// A grant, and the headers of a PUT of `body` signed for it with the proxy's signer.
    fn signed_put(files: &mut Files, body: &[u8], now_ms: u64) -> (String, HeaderMap) {
        let data = files
            .grant(
                "acct",
                "a.txt",
                body.len() as u64,
                FileKind::Document,
                "http://sim",
            )
            .unwrap();
        let field = |k: &str| data[k].as_str().unwrap().to_owned();
        let key = field("file_path");
        let creds = crate::qwen::oss::StsCredentials {
            access_key_id: field("access_key_id"),
            access_key_secret: field("access_key_secret"),
            security_token: field("security_token"),
        };
        let signed = crate::qwen::oss::sign(
            &crate::qwen::oss::SignedRequest {
                method: "PUT",
                bucket: BUCKET,
                key: &key,
                region: "ap-southeast-1",
                query: &[],
                headers: &[("content-type", "text/plain")],
            },
            &creds,
            now_ms,
        );
        let mut h = HeaderMap::new();
        h.insert("content-type", "text/plain".parse().unwrap());
        for (k, v) in signed {
            h.insert(
                hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        (key, h)
    }

    #[test]
    fn uploads_are_checked_like_oss_checks_them() {
        let now = crate::common::epoch_millis();
        let mut files = Files::default();
        let (key, h) = signed_put(&mut files, b"abc", now);
        let put = |files: &mut Files, h: &HeaderMap, body: &'static [u8], at: u64| {
            files.put(&key, None, h, Bytes::from_static(body), at)
        };
        // Tampered: another body length, a changed signed header, a foreign token, a skewed
        // clock; then the genuine request.
        assert_eq!(
            put(&mut files, &h, b"abcd", now),
            Err(UploadRefusal::SizeMismatch)
        );
        let mut other_type = h.clone();
        other_type.insert("content-type", "text/html".parse().unwrap());
        assert_eq!(
            put(&mut files, &other_type, b"abc", now),
            Err(UploadRefusal::SignatureDoesNotMatch)
        );
        let mut foreign = h.clone();
        foreign.insert("x-oss-security-token", "someone-elses".parse().unwrap());
        assert_eq!(
            put(&mut files, &foreign, b"abc", now),
            Err(UploadRefusal::InvalidSecurityToken)
        );
        assert_eq!(
            put(&mut files, &h, b"abc", now + 16 * 60 * 1000),
            Err(UploadRefusal::RequestTimeTooSkewed)
        );
        assert_eq!(put(&mut files, &h, b"abc", now), Ok(()));
        assert_eq!(files.counters.uploads, 1);
        assert_eq!(files.counters.uploads_refused, 4);
        assert_eq!(
            files.put("nobody/x.txt", None, &h, Bytes::from_static(b"abc"), now),
            Err(UploadRefusal::NoSuchKey)
        );
    }
}
