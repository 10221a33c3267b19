//! The upstream's file flow from the proxy's side (`qwen-protocol.md` §3.6, §4.7): an STS
//! grant (`POST /api/v2/files/getstsToken`), the PUT of the bytes to object storage signed
//! with it (`oss.rs`), for a document the parse (`files/parse`) and its status polled until
//! it is done, and the descriptor a completion's message carries (`files[]`).
//!
//! Failures keep their kind: a refused grant or upload is an upstream error of its class;
//! a challenge or rate limit of the parse step is [`FileError::ParseRefused`], which is not
//! the account's completion challenge (the parse step has its own, which clears after a few
//! quiet minutes) and must not be retried at once.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request};
use serde::Serialize;
use serde_json::{json, Value};

use super::client::{json_or_error, read_limited, Caller, QwenClient};
use super::headers::Page;
use super::oss::{self, SignedRequest, StsCredentials};
use crate::common::epoch_millis;
use crate::error::{ProxyError, UpstreamClass};
use tokio::time::Instant;

/// How long an uploaded file is used again for the same content (the upstream keeps files
/// longer; an hour keeps a long agent session's documents without trusting that forever).
const CACHE_TTL: Duration = Duration::from_secs(3600);
/// How long an account's uploads wait after its parse step refused it (the parse
/// challenge clears after a few quiet minutes; asking sooner restarts it).
pub(crate) const PARSE_PAUSE: Duration = Duration::from_secs(180);

/// How often a document's parse status is asked, and for how long at most.
const PARSE_POLL: Duration = Duration::from_millis(250);
const PARSE_DEADLINE: Duration = Duration::from_secs(60);

/// What kind of file the upstream is told it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileClass {
    /// Seen by vision models (images in messages).
    Image,
    /// Read as text (parsed first).
    Document,
}

impl FileClass {
    /// `filetype` of the STS request.
    fn sts_type(self) -> &'static str {
        match self {
            FileClass::Image => "image",
            FileClass::Document => "file",
        }
    }
}

/// One file to upload.
#[derive(Debug, Clone)]
pub(crate) struct Upload<'a> {
    pub(crate) name: &'a str,
    pub(crate) media_type: &'a str,
    pub(crate) class: FileClass,
    pub(crate) bytes: Bytes,
}

/// An uploaded (and, for a document, parsed) file: what a completion refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Uploaded {
    pub(crate) file_id: String,
    /// The object's URL without the signature.
    pub(crate) url: String,
    pub(crate) name: String,
    pub(crate) media_type: String,
    pub(crate) size: u64,
    pub(crate) class: FileClass,
}

/// The `files[]` entry of a completion's message, as the front end writes it.
#[derive(Debug, Serialize)]
pub(crate) struct FileDescriptor<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    file: Value,
    id: &'a str,
    url: &'a str,
    name: &'a str,
    collection_name: &'static str,
    progress: u8,
    status: &'static str,
    #[serde(rename = "greenNet")]
    green_net: &'static str,
    size: u64,
    error: &'static str,
    file_type: &'a str,
    #[serde(rename = "showType")]
    show_type: &'static str,
    file_class: &'static str,
}

impl Uploaded {
    pub(crate) fn descriptor(&self) -> FileDescriptor<'_> {
        let (kind, class) = match self.class {
            FileClass::Image => ("image", "vision"),
            FileClass::Document => ("file", "document"),
        };
        FileDescriptor {
            kind,
            file: json!({
                "id": self.file_id,
                "filename": self.name,
                "meta": {"name": self.name, "size": self.size, "content_type": self.media_type},
            }),
            id: &self.file_id,
            url: &self.url,
            name: &self.name,
            collection_name: "",
            progress: 0,
            status: "uploaded",
            green_net: "success",
            size: self.size,
            error: "",
            file_type: &self.media_type,
            show_type: kind,
            file_class: class,
        }
    }
}

/// Why an upload did not come to a usable file.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum FileError {
    /// The upstream refused a step (grant, storage, parse of this file).
    Upstream(ProxyError),
    /// The parse step refused the account for now: its challenge or its rate limit.
    ParseRefused { challenge: bool },
}

impl From<ProxyError> for FileError {
    fn from(e: ProxyError) -> Self {
        FileError::Upstream(e)
    }
}

/// Uploaded files by account and content digest, and the accounts whose parse step is
/// paused. In memory, per instance.
#[derive(Debug, Default)]
pub(crate) struct UploadCache {
    files: std::sync::Mutex<std::collections::HashMap<(String, String), (Uploaded, Instant)>>,
    paused: std::sync::Mutex<std::collections::HashMap<String, Instant>>,
}

impl UploadCache {
    /// The file uploaded for `account` with this content, if it is still fresh.
    pub(crate) fn get(&self, account: &str, digest: &str) -> Option<Uploaded> {
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        files.retain(|_, (_, at)| now.duration_since(*at) < CACHE_TTL);
        files
            .get(&(account.to_owned(), digest.to_owned()))
            .map(|(u, _)| u.clone())
    }

    pub(crate) fn put(&self, account: &str, digest: &str, uploaded: Uploaded) {
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        files.insert(
            (account.to_owned(), digest.to_owned()),
            (uploaded, Instant::now()),
        );
    }

    /// What is left of the account's parse pause.
    pub(crate) fn paused(&self, account: &str) -> Option<Duration> {
        let paused = self.paused.lock().unwrap_or_else(|p| p.into_inner());
        let until = *paused.get(account)?;
        until.checked_duration_since(Instant::now())
    }

    pub(crate) fn pause(&self, account: &str) {
        let mut paused = self.paused.lock().unwrap_or_else(|p| p.into_inner());
        paused.insert(account.to_owned(), Instant::now() + PARSE_PAUSE);
    }
}

/// An upload object storage refused: the error, and OSS's code for it.
struct PutRefused {
    error: ProxyError,
    code: String,
}

/// A grant of the STS endpoint.
#[derive(Debug, Clone)]
struct Grant {
    creds: StsCredentials,
    bucket: String,
    /// The region without `oss-`.
    region: String,
    endpoint: String,
    file_path: String,
    file_url: String,
    file_id: String,
}

impl Grant {
    fn from_json(v: &Value) -> Result<Self, ProxyError> {
        let data = v.get("data").unwrap_or(v);
        let field = |k: &str| {
            data.get(k)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| {
                    ProxyError::upstream(
                        UpstreamClass::Protocol,
                        format!("the upload grant has no `{k}`"),
                    )
                })
        };
        let region = field("region")?;
        Ok(Grant {
            creds: StsCredentials {
                access_key_id: field("access_key_id")?,
                access_key_secret: field("access_key_secret")?,
                security_token: field("security_token")?,
            },
            bucket: field("bucketname")?,
            endpoint: field("endpoint").unwrap_or_else(|_| format!("{region}.aliyuncs.com")),
            region: region.trim_start_matches("oss-").to_owned(),
            file_path: field("file_path")?,
            file_url: field("file_url")?,
            file_id: field("file_id")?,
        })
    }

    /// Where the bytes go: the grant's `file_url` without its signature when it names the
    /// object, else `https://<bucket>.<endpoint>/<file_path>` as peers build it.
    fn target(&self) -> String {
        let unsigned = self.file_url.split('?').next().unwrap_or_default();
        if unsigned.ends_with(&format!("/{}", self.file_path)) {
            unsigned.to_owned()
        } else {
            format!(
                "https://{}.{}/{}",
                self.bucket, self.endpoint, self.file_path
            )
        }
    }
}

impl QwenClient {
    /// Upload one file; a document is parsed before it is returned.
    pub(crate) async fn upload(
        &self,
        who: &Caller,
        file: &Upload<'_>,
    ) -> Result<Uploaded, FileError> {
        let mut grant = self.grant(who, file).await?;
        if let Err(refused) = self.put(who, &grant, file).await {
            // A grant that expired before it was used (a slow queue): one more, once.
            if refused.code != "SecurityTokenExpired" {
                return Err(refused.error.into());
            }
            grant = self.grant(who, file).await?;
            self.put(who, &grant, file)
                .await
                .map_err(|refused| refused.error)?;
        }
        self.finish(who, grant, file).await
    }

    async fn finish(
        &self,
        who: &Caller,
        grant: Grant,
        file: &Upload<'_>,
    ) -> Result<Uploaded, FileError> {
        if file.class == FileClass::Document {
            self.parse(who, &grant.file_id).await?;
        }
        Ok(Uploaded {
            url: grant.target(),
            file_id: grant.file_id,
            name: file.name.to_owned(),
            media_type: file.media_type.to_owned(),
            size: file.bytes.len() as u64,
            class: file.class,
        })
    }

    async fn grant(&self, who: &Caller, file: &Upload<'_>) -> Result<Grant, ProxyError> {
        let body = json!({
            "filename": file.name,
            "filesize": file.bytes.len(),
            "filetype": file.class.sts_type(),
        });
        let r = async {
            let v = self
                .post_json(who, "/api/v2/files/getstsToken", &body)
                .await?;
            Grant::from_json(&v)
        }
        .await;
        self.record("files_sts", r)
    }

    async fn put(&self, who: &Caller, grant: &Grant, file: &Upload<'_>) -> Result<(), PutRefused> {
        let mut code = String::new();
        let r = async {
            let length = file.bytes.len().to_string();
            let signed = oss::sign(
                &SignedRequest {
                    method: "PUT",
                    bucket: &grant.bucket,
                    key: &grant.file_path,
                    region: &grant.region,
                    query: &[],
                    headers: &[("content-type", file.media_type)],
                },
                &grant.creds,
                epoch_millis(),
            );
            let mut req = Request::builder()
                .method(Method::PUT)
                .uri(grant.target())
                .header(CONTENT_TYPE, file.media_type)
                .header(CONTENT_LENGTH, length);
            for (name, value) in &signed {
                let name = HeaderName::from_bytes(name.as_bytes());
                let value = HeaderValue::from_str(value);
                if let (Ok(name), Ok(value)) = (name, value) {
                    req = req.header(name, value);
                }
            }
            let req = req
                .body(Full::new(file.bytes.clone()))
                .map_err(|e| ProxyError::Internal(format!("building the upload: {e}")))?;
            let rsp = self.dispatch(who, req).await?;
            let status = rsp.status().as_u16();
            if (200..300).contains(&status) {
                return Ok(());
            }
            let body = read_limited(rsp.into_body()).await.unwrap_or_default();
            // The storage's own word: shown escaped and clipped (`untrusted`).
            code = crate::untrusted::clip(xml_field(&body, "Code").unwrap_or("unknown"));
            let class = match status {
                400 | 403 | 404 | 413 => UpstreamClass::Rejected,
                _ => UpstreamClass::ServerError,
            };
            Err(ProxyError::upstream(
                class,
                format!("object storage refused the upload: {status} {code}"),
            ))
        }
        .await;
        self.record("files_put", r)
            .map_err(|error| PutRefused { error, code })
    }

    /// Parse a document and wait until the upstream has read it.
    async fn parse(&self, who: &Caller, file_id: &str) -> Result<(), FileError> {
        let r = self
            .post_json(who, "/api/v2/files/parse", &json!({"file_id": file_id}))
            .await;
        self.record("files_parse", r).map_err(parse_refusal)?;
        let deadline = tokio::time::Instant::now() + PARSE_DEADLINE;
        loop {
            let v = self
                .post_json(
                    who,
                    "/api/v2/files/parse/status",
                    &json!({"file_id_list": [file_id]}),
                )
                .await
                .map_err(parse_refusal)?;
            let status = v
                .pointer("/data/0/status")
                .and_then(Value::as_str)
                .unwrap_or("");
            match status {
                "success" => return Ok(()),
                "failed" | "error" => {
                    return Err(ProxyError::upstream(
                        UpstreamClass::Rejected,
                        "the upstream could not parse the document",
                    )
                    .into())
                }
                _ if tokio::time::Instant::now() >= deadline => {
                    return Err(ProxyError::upstream(
                        UpstreamClass::Timeout,
                        format!(
                            "the document was not parsed within {} s",
                            PARSE_DEADLINE.as_secs()
                        ),
                    )
                    .into())
                }
                _ => tokio::time::sleep(PARSE_POLL).await,
            }
        }
    }

    async fn post_json(&self, who: &Caller, path: &str, body: &Value) -> Result<Value, ProxyError> {
        let body = Bytes::from(body.to_string());
        let rsp = self
            .send(who, Method::POST, path, Page::Home, false, body)
            .await?;
        json_or_error(rsp).await
    }
}

/// A refusal of the parse step (the request or its status polls): its challenge or rate
/// limit is the parse step's own, not the account's completion challenge or quota.
fn parse_refusal(e: ProxyError) -> FileError {
    match e.upstream_class() {
        Some(UpstreamClass::Challenge) => FileError::ParseRefused { challenge: true },
        Some(UpstreamClass::RateLimited) => FileError::ParseRefused { challenge: false },
        _ => e.into(),
    }
}

/// The text of `<name>…</name>` in an XML error document.
fn xml_field<'a>(body: &'a [u8], name: &str) -> Option<&'a str> {
    let text = std::str::from_utf8(body).ok()?;
    let open = format!("<{name}>");
    let start = text.find(&open)? + open.len();
    let end = text[start..].find('<')? + start;
    Some(text[start..end].trim())
}

#[cfg(test)]
mod tests;
