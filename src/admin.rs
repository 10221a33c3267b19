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
//! | `POST /admin/accounts/{name}/renew`           | renew its token now (sign in, or the refresh token) |
//! | `POST /admin/session`                         | the console's sign-in (with the key): session cookie + CSRF token |
//! | `GET  /admin/session`                         | whether the console is signed in (answered to anyone): its CSRF token and time left |
//! | `DELETE /admin/session`                       | sign out (the cookie is cleared)          |
//! | `GET  /admin/usage`                           | usage accounting as JSON (`crate::usage`), see below |
//! | `GET  /admin/usage.csv`                       | the same rows as CSV (also `/admin/usage?format=csv`) |
//! | `GET  /admin/requests`                        | the request log: the last `REQUEST_LOG_SIZE` requests, newest first, filtered (`crate::request_log`) |
//! | `GET  /admin/requests/stream`                 | the same, live: server-sent events of new requests |
//! | `GET  /admin/overview`                        | the instance at a glance: status, accounts, the last hour per minute |
//!
//! `/admin/usage` takes `from` and `to` (UTC days `YYYY-MM-DD`, inclusive; the last 7 days
//! by default) and `by`, the fields rows are grouped by (`day`, `account`, `key`, `model`,
//! comma-separated; all four by default): `{"from", "to", "by", "source", "rows": [{…the
//! grouped fields, "requests", "input_tokens", "output_tokens", "reasoning_tokens",
//! "errors"}], "totals": {…}}`. `key` is the API key's fingerprint (`anon` without
//! `API_KEYS`), never the key; `source` is `redis` (every instance) or `memory` (this one).
//!
//! The console (`crate::console`) signs in by `POST /admin/session` with the key as a
//! bearer token (so the auth layer's throttling of wrong keys applies); the answer sets
//! the session cookie and carries `{"signed_in": true, "csrf", "expires_in_seconds"}`. Signed in, the console
//! calls every route here with the cookie, and those that change something with the CSRF
//! token in `X-CSRF-Token`; scripts keep using the key.
//!
//! `/admin/requests` takes `status` (`200`, `4xx`, `5xx`, `error`), `errors=only`,
//! `account`, `key`, `model`, `api`, `since` (Unix ms or RFC 3339) and `limit` (100 by
//! default, the capacity at most; the filters: `request_log::query`) and answers
//! `{"requests": [entries], "capacity", "size"}`; an entry is `{"seq", "id", "time", "time_ms",
//! "api", "model", "key", "account", "chat", "stream", "status", "error_type", "error_code",
//! "ttft_ms", "duration_ms", "input_tokens", "output_tokens", "reasoning_tokens", "retries",
//! "moved"}` (`request_log::Entry`) — never prompt or answer text. `/admin/requests/stream`
//! takes the same filters but `since` and `limit`: `event: hello` (`{"capacity"}`), then an
//! `event: request` per new entry, `: keep-alive` every 15 s; it ends when the instance
//! drains. `/admin/overview`: `{"status", "reasons", "version", "uptime_seconds",
//! "accounts", "workers", "last_hour": {"requests", "errors", "ttft_ms": {"p50", "p99",
//! "count"}}, "per_minute": [{"minute", "requests", "errors"} × 60, oldest first]}`
//! (`request_log::minutes`).

use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use serde_json::json;

use crate::accounts::signin::Renewal;
use crate::accounts::Pool;
use crate::app::AppState;
use crate::body::{json_response, sse_response, ProxyBody};
use crate::console::session::{self, Session, Sessions};
use crate::error::{ProxyError, SessionRefusal};
use crate::identity::OperatorAccess;
use crate::request_log::{self, parse_query, Feed, Page};
use crate::server::PeerAddr;
use crate::untrusted::Untrusted;
use crate::usage::{Day, Grouping, Query};

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
    // Whether the console is signed in: answered to anyone (the auth layer let it through).
    if session::is_probe(req.method(), path) {
        return Ok(session_probe(state, req));
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
        (_, ["session"]) => console_session(state, req),
        (&Method::GET, [page @ ("usage" | "usage.csv")]) => {
            let (query, csv) = usage_query(req.uri().query().unwrap_or(""))?;
            let report = state.usage.report(query).await;
            Ok(if csv || *page == "usage.csv" {
                let mut rsp = Response::new(ProxyBody::full(report.to_csv()));
                rsp.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static("text/csv; charset=utf-8"),
                );
                rsp
            } else {
                json_ok(report.to_json())
            })
        }
        (_, ["usage" | "usage.csv"]) => Err(ProxyError::MethodNotAllowed { allow: "GET" }),
        (&Method::GET, ["requests"]) => {
            let log = &state.request_log;
            let query = parse_query(req.uri().query().unwrap_or(""), log.capacity(), Page::List)?;
            let entries = log.select(&query);
            let body = request_log::list_json(&entries, log.capacity(), log.size());
            Ok(no_store(json_response(body)))
        }
        (&Method::GET, ["requests", "stream"]) => {
            let log = &state.request_log;
            let query = parse_query(req.uri().query().unwrap_or(""), log.capacity(), Page::Feed)?;
            let feed = Feed::new(
                log.subscribe(),
                query.filter,
                log.capacity(),
                FEED_KEEPALIVE,
                state.draining_signal(),
            );
            Ok(no_store(sse_response(ProxyBody::Stream(Box::pin(feed)))))
        }
        (&Method::GET, ["overview"]) => Ok(no_store(json_ok(overview(state).await))),
        (_, ["requests"] | ["requests", "stream"] | ["overview"]) => {
            Err(ProxyError::MethodNotAllowed { allow: "GET" })
        }
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
        (&Method::POST, ["accounts", name, "renew"]) => {
            let account = pool.get(name).ok_or_else(|| unknown(name))?;
            if !Pool::can_renew(&account) {
                return Err(ProxyError::BadRequest {
                    message: format!(
                        "The account {} has neither a password nor a refresh token: a new \
                         token must come from a browser (update the accounts file).",
                        Untrusted(name)
                    ),
                    param: None,
                    code: Some("account_cannot_renew"),
                });
            }
            tracing::info!(account = %Untrusted(name), "token renewal asked (admin API)");
            pool.renew(&account, Renewal::Operator)
                .await
                .map_err(|reason| ProxyError::BadRequest {
                    message: format!(
                        "The token of {} was not renewed: {}",
                        Untrusted(name),
                        Untrusted(&reason)
                    ),
                    param: None,
                    code: Some("renewal_failed"),
                })?;
            let view = pool.views().into_iter().find(|v| v.name == *name);
            Ok(json_ok(json!({"account": view, "renewed": true})))
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

/// `/admin/session`: the console's sign-in (`POST`, with the key), its CSRF token (`GET`,
/// with the cookie) and sign-out (`DELETE`).
fn console_session(
    state: &AppState,
    req: &Request<Incoming>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let sessions = state.sessions.as_ref().ok_or(ProxyError::InvalidAdminKey)?;
    let signed_in = req.extensions().get::<Session>();
    let peer = req.extensions().get::<PeerAddr>().map(|p| p.0.ip());
    let https = state
        .config
        .trust_proxy
        .forwarded_https(req.headers(), peer);
    let client = state.config.trust_proxy.client_ip(req.headers(), peer);
    match (req.method(), signed_in) {
        // Signed in with the key (the auth layer checked and throttles it).
        (&Method::POST, None) => {
            let (session, cookie) = sessions.issue();
            let mut rsp = signed_in_answer(sessions, &session);
            set_cookie(&mut rsp, &session::set_cookie(&cookie, https));
            tracing::info!(
                client = %client.map_or_else(|| "unknown".to_owned(), |a| a.to_string()),
                "console: signed in"
            );
            Ok(rsp)
        }
        (&Method::DELETE, signed_in) => {
            if let Some(session) = signed_in {
                sessions.revoke(session);
            }
            let mut rsp = Response::new(ProxyBody::empty());
            *rsp.status_mut() = hyper::StatusCode::NO_CONTENT;
            set_cookie(&mut rsp, &session::clear_cookie(https));
            Ok(rsp)
        }
        (&Method::POST, Some(_)) => Err(ProxyError::bad_request(
            "Already signed in; to sign in again, sign out first (DELETE /admin/session).",
            None,
        )),
        _ => Err(ProxyError::MethodNotAllowed {
            allow: "GET, POST, DELETE",
        }),
    }
}

/// `GET /admin/session`: `{"signed_in": true, "csrf", "expires_in_seconds"}` with a valid
/// cookie; otherwise `{"signed_in": false}`, with `reason` (`expired`, `signed_out`,
/// `invalid`) and a sentence for the sign-in form when a cookie came and was refused.
fn session_probe(state: &AppState, req: &Request<Incoming>) -> Response<ProxyBody> {
    match (state.sessions.as_ref(), req.extensions().get::<Session>()) {
        (Some(sessions), Some(session)) => signed_in_answer(sessions, session),
        _ => match req.extensions().get::<SessionRefusal>() {
            Some(&refusal) => json_ok(json!({
                "signed_in": false,
                "reason": match refusal {
                    SessionRefusal::Expired => "expired",
                    SessionRefusal::SignedOut => "signed_out",
                    SessionRefusal::Invalid => "invalid",
                },
                "message": ProxyError::NotSignedIn { refusal }.message(),
            })),
            None => json_ok(json!({"signed_in": false})),
        },
    }
}

fn signed_in_answer(sessions: &Sessions, session: &Session) -> Response<ProxyBody> {
    json_ok(json!({
        "signed_in": true,
        "csrf": sessions.csrf_token(session),
        "expires_in_seconds": sessions.seconds_left(session),
    }))
}

fn set_cookie(rsp: &mut Response<ProxyBody>, cookie: &str) {
    if let Ok(v) = hyper::header::HeaderValue::from_str(cookie) {
        rsp.headers_mut().insert(hyper::header::SET_COOKIE, v);
    }
}

/// Days a usage report covers by default: today and the six before.
const USAGE_DEFAULT_DAYS: i64 = 7;

/// `/admin/usage`'s parameters: the query, and whether CSV was asked for (`format=csv`).
fn usage_query(raw: &str) -> Result<(Query, bool), ProxyError> {
    let mut query = Query {
        from: Day::today().plus(1 - USAGE_DEFAULT_DAYS),
        to: Day::today(),
        by: Grouping::ALL,
    };
    let mut csv = false;
    let mut from_given = false;
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        // The values are days and words: only the comma of `by` may come encoded.
        let value = value.replace("%2C", ",").replace("%2c", ",");
        let bad = |what: &str| {
            ProxyError::bad_request(
                format!("`{name}` must be {what}; got {:?}.", Untrusted(&value)),
                Some(name),
            )
        };
        match name {
            "from" => {
                query.from = Day::parse(&value).ok_or_else(|| bad("a day, YYYY-MM-DD"))?;
                from_given = true;
            }
            "to" => query.to = Day::parse(&value).ok_or_else(|| bad("a day, YYYY-MM-DD"))?,
            "by" => {
                query.by = Grouping::parse(&value)
                    .ok_or_else(|| bad("day, account, key or model, comma-separated"))?
            }
            "format" => match value.as_str() {
                "csv" => csv = true,
                "json" => csv = false,
                _ => return Err(bad("json or csv")),
            },
            _ => {
                return Err(ProxyError::bad_request(
                    format!(
                        "Unknown parameter `{}`: /admin/usage takes from, to, by and format.",
                        Untrusted(name)
                    ),
                    Some(name),
                ))
            }
        }
    }
    // `to` alone: the week before it.
    if !from_given {
        query.from = query.to.plus(1 - USAGE_DEFAULT_DAYS);
    }
    if query.from > query.to {
        return Err(ProxyError::bad_request(
            format!("`from` ({}) is after `to` ({}).", query.from, query.to),
            Some("from"),
        ));
    }
    Ok((query, csv))
}

/// A live feed of the request log says it is alive this often when no request comes.
const FEED_KEEPALIVE: Duration = Duration::from_secs(15);

/// `/admin/overview`: `/health`'s status and reasons, the accounts' counts, and the last
/// hour per minute from the request log (whatever its size).
async fn overview(state: &AppState) -> serde_json::Value {
    let condition = state.condition().await;
    let hour = state.request_log.last_hour(crate::common::epoch_millis());
    json!({
        "status": condition.status,
        "reasons": condition.reasons,
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": state.started.elapsed().as_secs(),
        "accounts": condition.accounts,
        "workers": state.config.workers.threads,
        "last_hour": {
            "requests": hour.requests,
            "errors": hour.errors,
            "ttft_ms": hour.ttft,
        },
        "per_minute": hour.per_minute,
    })
}

/// Operators' answers are current, never cached (by nginx, a browser).
fn no_store(mut rsp: Response<ProxyBody>) -> Response<ProxyBody> {
    rsp.headers_mut().insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-store"),
    );
    rsp
}

fn unknown(name: &str) -> ProxyError {
    ProxyError::RouteNotFound {
        path: format!("/admin/accounts/{name} (no such account)"),
    }
}

fn json_ok(v: serde_json::Value) -> Response<ProxyBody> {
    json_response(v.to_string().into_bytes())
}
