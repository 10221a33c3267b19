//! The operators' admin API, behind `ADMIN_KEY` (`Authorization: Bearer <key>`); without
//! the variable it does not exist (404). Answers never carry a secret.
//!
//! | call                                          | does                                      |
//! |-----------------------------------------------|-------------------------------------------|
//! | `GET  /admin/accounts`                        | every account: state, reason, in flight, recent errors |
//! | `POST /admin/accounts/{name}/disable`         | take it out of rotation (streams on it finish) |
//! | `POST /admin/accounts/{name}/enable`          | back in rotation; clears any verdict      |
//! | `POST /admin/accounts/reload`                 | re-read `QWEN_ACCOUNTS_FILE` (as `SIGHUP`)|
//! | `POST /admin/accounts/{name}/purge-chats`     | delete *every* upstream chat of the account |

use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use serde_json::json;

use crate::app::AppState;
use crate::body::{json_response, ProxyBody};
use crate::error::ProxyError;
use crate::identity::OperatorAccess;
use crate::untrusted::Untrusted;

/// Handle one admin request (`path` without a trailing slash).
pub(crate) async fn handle(
    state: &AppState,
    req: &Request<Incoming>,
    path: &str,
) -> Result<Response<ProxyBody>, ProxyError> {
    if state.config.admin_key.is_none() {
        return Err(ProxyError::RouteNotFound {
            path: format!("{path} (the admin API is off: set ADMIN_KEY)"),
        });
    }
    // The auth layer checked the key (and throttles guessing).
    if req.extensions().get::<OperatorAccess>().is_none() {
        return Err(ProxyError::InvalidAdminKey);
    }
    let pool = &state.accounts;
    let rest: Vec<&str> = path
        .trim_start_matches("/admin")
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let method = req.method();
    match (method, rest.as_slice()) {
        (&Method::GET, ["accounts"]) => Ok(json_ok(json!({
            "accounts": pool.views(),
            "counts": pool.counts(),
        }))),
        (&Method::POST, ["accounts", "reload"]) => match state.reload_accounts().await {
            Ok(summary) => Ok(json_ok(
                json!({"reloaded": summary, "counts": pool.counts()}),
            )),
            Err(errors) => Err(ProxyError::BadRequest {
                message: format!(
                    "The accounts file was not reloaded; the accounts in use stay as they are: {}",
                    errors.join("; ")
                ),
                param: None,
                code: Some("invalid_accounts_file"),
            }),
        },
        (&Method::POST, ["accounts", name, action @ ("enable" | "disable")]) => pool
            .set_enabled(name, *action == "enable")
            .await
            .map(|view| json_ok(json!({ "account": view })))
            .ok_or_else(|| unknown(name)),
        (&Method::POST, ["accounts", name, "purge-chats"]) => {
            let account = pool.get(name).ok_or_else(|| unknown(name))?;
            let who = account.caller().ok_or_else(|| ProxyError::BadRequest {
                message: format!(
                    "The account {} has no token yet; nothing was deleted.",
                    Untrusted(name)
                ),
                param: None,
                code: Some("account_not_signed_in"),
            })?;
            let deleted = state.client.purge_chats(&who).await?;
            tracing::warn!(
                account = %Untrusted(name),
                deleted,
                "deleted every upstream chat of the account (admin API)"
            );
            Ok(json_ok(
                json!({"account": name, "purged": true, "deleted": deleted}),
            ))
        }
        (_, ["accounts"]) => Err(ProxyError::MethodNotAllowed { allow: "GET" }),
        (_, ["accounts", ..]) if method != Method::POST => {
            Err(ProxyError::MethodNotAllowed { allow: "POST" })
        }
        _ => Err(ProxyError::RouteNotFound {
            path: path.to_owned(),
        }),
    }
}

fn unknown(name: &str) -> ProxyError {
    ProxyError::RouteNotFound {
        path: format!("/admin/accounts/{name} (no such account)"),
    }
}

fn json_ok(v: serde_json::Value) -> Response<ProxyBody> {
    json_response(v.to_string().into_bytes())
}
