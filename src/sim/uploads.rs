//! The file endpoints (`files.rs` holds their state and rules): `POST
//! /api/v2/files/getstsToken`, the object-storage `PUT /<file_path>` (served by the
//! simulator on its own address, which the grant's `file_url` names), `POST
//! /api/v2/files/parse` and `POST /api/v2/files/parse/status`. Only completions pass the
//! anti-bot body gate; an upload is bounded by the file size limit instead.

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde_json::{json, Value};

use super::files::{self, ParseRefusal, MAX_FILE_BYTES};
use super::handlers::{app_error, json_ok, punish, respond, SimBody, SimService};
use super::state::lock;
use crate::common::epoch_millis;

type Rsp = hyper::Response<SimBody>;

impl SimService {
    /// The caller and the JSON body of a file endpoint (the same gates as a completion's).
    async fn file_request(&self, req: Request<Incoming>) -> Result<(String, Value, String), Rsp> {
        let (parts, body) = req.into_parts();
        let Some(body) = self.read_body(body).await else {
            return Err(punish());
        };
        let cookie_present = super::handlers::auth_token(&parts.headers).1;
        if let Some(rsp) = self.gate(&parts.headers, cookie_present) {
            return Err(rsp);
        }
        let caller = self.identity(&parts.headers).map_err(|rsp| *rsp)?;
        let Ok(v) = serde_json::from_slice::<Value>(&body) else {
            return Err(app_error(
                400,
                "Bad_Request",
                "RequestValidationError: body is not JSON",
            ));
        };
        Ok((caller.account, v, super::handlers::origin(&parts)))
    }

    /// `POST /api/v2/files/getstsToken`.
    pub(super) async fn sts_token(&self, req: Request<Incoming>) -> Rsp {
        let (account, v, origin) = match self.file_request(req).await {
            Ok(r) => r,
            Err(rsp) => return rsp,
        };
        let Some((name, size, kind)) = files::file_info(&v) else {
            return app_error(400, "Bad_Request", "Invalid file information!");
        };
        if size > MAX_FILE_BYTES as u64 {
            return app_error(400, "Bad_Request", "File size exceeds the limit of 20 MB");
        }
        let grant = lock(&self.state.files).grant(&account, &name, size, kind, &origin);
        match grant {
            Some(data) => json_ok(json!({
                "success": true,
                "request_id": uuid::Uuid::new_v4().to_string(),
                "data": data,
            })),
            None => app_error(
                500,
                "InternalError",
                "Get sts token failed, please try again",
            ),
        }
    }

    /// `PUT /<file_path>`: the object-storage upload.
    pub(super) async fn put_object(&self, req: Request<Incoming>) -> Rsp {
        let (parts, body) = req.into_parts();
        let key = parts.uri.path().trim_start_matches('/').to_owned();
        // One byte more than the limit tells a too-large body from one at the limit.
        let body = match Limited::new(body, MAX_FILE_BYTES + 1).collect().await {
            Ok(c) => c.to_bytes(),
            Err(_) => {
                let why = files::UploadRefusal::TooLarge;
                return oss_error(why);
            }
        };
        let stored = lock(&self.state.files).put(
            &percent_decode_path(&key),
            parts.uri.query(),
            &parts.headers,
            body,
            epoch_millis(),
        );
        match stored {
            Ok(()) => {
                let mut rsp = respond(StatusCode::OK, None, "application/xml", "");
                rsp.headers_mut()
                    .insert("etag", hyper::header::HeaderValue::from_static("\"sim\""));
                rsp
            }
            Err(why) => oss_error(why),
        }
    }

    /// `POST /api/v2/files/parse` `{"file_id"}`.
    pub(super) async fn parse_file(&self, req: Request<Incoming>) -> Rsp {
        let (account, v, _) = match self.file_request(req).await {
            Ok(r) => r,
            Err(rsp) => return rsp,
        };
        let Some(file_id) = v.get("file_id").and_then(Value::as_str) else {
            return app_error(400, "Bad_Request", "Invalid file information!");
        };
        let parsed = lock(&self.state.files).parse(&account, file_id);
        match parsed {
            Ok(()) => json_ok(json!({
                "success": true,
                "request_id": uuid::Uuid::new_v4().to_string(),
                "data": {"file_id": file_id, "status": "parsing"},
            })),
            Err(ParseRefusal::Challenge) => punish(),
            Err(ParseRefusal::RateLimited) => app_error(
                429,
                "RateLimited",
                "Too many requests for document parsing, please try again later",
            ),
            Err(ParseRefusal::NotFound) => app_error(404, "Not_Found", "File not exist"),
        }
    }

    /// `POST /api/v2/files/parse/status` `{"file_id_list":[…]}`.
    pub(super) async fn parse_status(&self, req: Request<Incoming>) -> Rsp {
        let (account, v, _) = match self.file_request(req).await {
            Ok(r) => r,
            Err(rsp) => return rsp,
        };
        let Some(ids) = v.get("file_id_list").and_then(Value::as_array) else {
            return app_error(400, "Bad_Request", "Invalid file information!");
        };
        let mut files = lock(&self.state.files);
        let data: Vec<Value> = ids
            .iter()
            .filter_map(Value::as_str)
            .map(|id| json!({"file_id": id, "status": files.parse_status(&account, id)}))
            .collect();
        json_ok(json!({
            "success": true,
            "request_id": uuid::Uuid::new_v4().to_string(),
            "data": data,
        }))
    }
}

fn oss_error(why: files::UploadRefusal) -> Rsp {
    respond(
        StatusCode::from_u16(why.status()).unwrap_or(StatusCode::FORBIDDEN),
        None,
        "application/xml",
        why.body(),
    )
}

/// The object key as signed: the path's percent-escapes decoded.
fn percent_decode_path(path: &str) -> String {
    String::from_utf8_lossy(&crate::common::percent_decode(path)).into_owned()
}
