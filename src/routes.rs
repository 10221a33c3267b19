//! The route table, in one place: method and path → the endpoint that serves the request,
//! its low-cardinality label for logs and metrics (unknown paths share one, so a client
//! cannot blow up label sets), whether API-key auth and the rate limit apply, and the
//! client API whose error shape it speaks. Resolved once per request by the outermost
//! layer (`layers::route`) and read from the request's extensions by every layer after it
//! and by the router.

use hyper::Method;

/// The client API a route speaks: its errors come out in that API's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    OpenAi,
    /// Anthropic's Messages API (`/v1/messages`).
    Anthropic,
    /// OpenAI's Responses API (`/v1/responses`): OpenAI's error shape, in a stream
    /// `response.failed`.
    Responses,
}

impl Api {
    /// For logs and metrics: `chat`, `messages`, `responses`.
    pub fn label(self) -> &'static str {
        match self {
            Api::OpenAi => "chat",
            Api::Anthropic => "messages",
            Api::Responses => "responses",
        }
    }
}

/// What serves a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    ChatCompletions,
    /// `POST /v1/images/generations`.
    ImageGenerations,
    /// `POST /v1/messages` (Anthropic).
    Messages,
    /// `POST /v1/messages/count_tokens` (Anthropic).
    CountTokens,
    /// `POST /v1/responses`.
    Responses,
    /// `GET`/`DELETE /v1/responses/{id}`.
    StoredResponse,
    Models,
    /// `GET /v1/models/{id}`.
    Model,
    Index,
    Health,
    Metrics,
    /// `/admin` and below (the admin API checks its own key and methods).
    Admin,
    /// The operators' console: its page (`GET /admin/`) and assets (`/admin/assets/*`),
    /// served without a key (the page signs in through the admin API).
    Console,
    /// A known path asked with another method: 405 with `Allow`.
    WrongMethod {
        allow: &'static str,
    },
    NotFound,
}

/// One request's route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Route {
    pub endpoint: Endpoint,
    /// For logs and metrics.
    pub label: &'static str,
    /// An API key is needed when `API_KEYS` is set (the client API's paths, `/v1/*`).
    pub auth: bool,
    /// The rate limit applies (`RATE_LIMIT_RPM`).
    pub rate_limited: bool,
    /// Whose error shape the route's errors take.
    pub api: Api,
}

/// How a table entry matches a path (without its trailing slash).
#[derive(Debug, Clone, Copy)]
enum PathMatch {
    Exact(&'static str),
    /// The prefix and at least one more character.
    Below(&'static str),
}

impl PathMatch {
    fn matches(self, path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => path == p,
            PathMatch::Below(prefix) => path.len() > prefix.len() && path.starts_with(prefix),
        }
    }
}

/// One row: a path, the one method it serves (`None`: any, the handler decides; a `GET` row
/// answers `HEAD` too) and what the route is.
struct Entry {
    path: PathMatch,
    method: Option<Method>,
    endpoint: Endpoint,
    label: &'static str,
    /// A client API's route (auth and the rate limit apply), and which.
    api: Option<Api>,
}

/// The table. Paths are matched without their trailing slash (`/v1/models/` is
/// `/v1/models`; `/` is the empty path).
fn table() -> [Entry; 15] {
    use Endpoint as E;
    use PathMatch::{Below, Exact};
    let entry = |path, method, endpoint, label, api| Entry {
        path,
        method,
        endpoint,
        label,
        api,
    };
    [
        entry(
            Exact("/v1/chat/completions"),
            Some(Method::POST),
            E::ChatCompletions,
            "/v1/chat/completions",
            Some(Api::OpenAi),
        ),
        entry(
            Exact("/v1/images/generations"),
            Some(Method::POST),
            E::ImageGenerations,
            "/v1/images/generations",
            Some(Api::OpenAi),
        ),
        entry(
            Exact("/v1/messages"),
            Some(Method::POST),
            E::Messages,
            "/v1/messages",
            Some(Api::Anthropic),
        ),
        entry(
            Exact("/v1/messages/count_tokens"),
            Some(Method::POST),
            E::CountTokens,
            "/v1/messages/count_tokens",
            Some(Api::Anthropic),
        ),
        entry(
            Exact("/v1/responses"),
            Some(Method::POST),
            E::Responses,
            "/v1/responses",
            Some(Api::Responses),
        ),
        // GET and DELETE (the handler answers other methods with 405).
        entry(
            Below("/v1/responses/"),
            None,
            E::StoredResponse,
            "/v1/responses/{id}",
            Some(Api::Responses),
        ),
        entry(
            Exact("/v1/models"),
            Some(Method::GET),
            E::Models,
            "/v1/models",
            Some(Api::OpenAi),
        ),
        entry(
            Below("/v1/models/"),
            Some(Method::GET),
            E::Model,
            "/v1/models/{id}",
            Some(Api::OpenAi),
        ),
        entry(
            Exact("/health"),
            Some(Method::GET),
            E::Health,
            "/health",
            None,
        ),
        entry(
            Exact("/metrics"),
            Some(Method::GET),
            E::Metrics,
            "/metrics",
            None,
        ),
        entry(Exact(""), Some(Method::GET), E::Index, "/", None),
        // Claude Code's preconnect probe (`HEAD /api/hello`).
        entry(
            Exact("/api/hello"),
            Some(Method::GET),
            E::Index,
            "/api/hello",
            None,
        ),
        // The console's page and assets come before the admin API they share a prefix with.
        entry(
            Exact("/admin"),
            Some(Method::GET),
            E::Console,
            "/admin/",
            None,
        ),
        entry(
            Below("/admin/assets/"),
            Some(Method::GET),
            E::Console,
            "/admin/assets",
            None,
        ),
        entry(Below("/admin/"), None, E::Admin, "other", None),
    ]
}

impl Route {
    /// The route of a request.
    pub(crate) fn resolve(method: &Method, path: &str) -> Route {
        let path = path.trim_end_matches('/');
        let route = |endpoint, label, api: Option<Api>| Route {
            endpoint,
            label,
            auth: api.is_some(),
            rate_limited: api.is_some(),
            api: api.unwrap_or(Api::OpenAi),
        };
        match table().into_iter().find(|e| e.path.matches(path)) {
            Some(e) => match &e.method {
                Some(m) if m != method && !(m == Method::GET && method == Method::HEAD) => route(
                    Endpoint::WrongMethod {
                        allow: allow_header(m),
                    },
                    e.label,
                    e.api,
                ),
                _ => route(e.endpoint, e.label, e.api),
            },
            // Unknown paths under the client API's prefix are still the API's: a client
            // without a key learns nothing about which paths exist.
            None => route(
                Endpoint::NotFound,
                "other",
                path.starts_with("/v1/").then_some(Api::OpenAi),
            ),
        }
    }
}

impl Route {
    /// The request's route, as the route layer put it in its extensions (resolved here for
    /// a request that did not pass that layer: a layer's own tests).
    pub(crate) fn of<B>(req: &hyper::Request<B>) -> Route {
        req.extensions()
            .get::<Route>()
            .copied()
            .unwrap_or_else(|| Route::resolve(req.method(), req.uri().path()))
    }
}

/// The `Allow` header of a route that serves one method.
fn allow_header(method: &Method) -> &'static str {
    if method == Method::POST {
        "POST"
    } else {
        "GET"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(method: Method, path: &str) -> Route {
        Route::resolve(&method, path)
    }

    #[test]
    fn every_route_has_its_endpoint_label_and_checks() {
        let chat = at(Method::POST, "/v1/chat/completions/");
        assert_eq!(chat.endpoint, Endpoint::ChatCompletions);
        assert_eq!(chat.label, "/v1/chat/completions");
        assert!(chat.auth && chat.rate_limited);
        assert_eq!(chat.api, Api::OpenAi);
        let model = at(Method::GET, "/v1/models/qwen3-max");
        assert_eq!(
            (model.endpoint, model.label),
            (Endpoint::Model, "/v1/models/{id}")
        );
        assert_eq!(at(Method::GET, "/").endpoint, Endpoint::Index);
        assert_eq!(at(Method::GET, "/").label, "/");
        let health = at(Method::GET, "/health");
        assert_eq!(health.endpoint, Endpoint::Health);
        assert!(!health.auth && !health.rate_limited);
        assert_eq!(
            at(Method::DELETE, "/admin/accounts/a").endpoint,
            Endpoint::Admin
        );
        assert!(!at(Method::GET, "/admin").auth);
        assert_eq!(at(Method::GET, "/admin/").endpoint, Endpoint::Console);
        assert_eq!(
            at(Method::GET, "/admin/assets/app.js").endpoint,
            Endpoint::Console
        );
        assert_eq!(
            at(Method::POST, "/admin").endpoint,
            Endpoint::WrongMethod { allow: "GET" }
        );
        assert_eq!(at(Method::GET, "/admin/session").endpoint, Endpoint::Admin);
    }

    #[test]
    fn a_known_path_with_another_method_is_405_with_allow() {
        assert_eq!(
            at(Method::GET, "/v1/chat/completions").endpoint,
            Endpoint::WrongMethod { allow: "POST" }
        );
        assert_eq!(
            at(Method::POST, "/v1/models/x").endpoint,
            Endpoint::WrongMethod { allow: "GET" }
        );
        assert_eq!(
            at(Method::POST, "/metrics").endpoint,
            Endpoint::WrongMethod { allow: "GET" }
        );
    }

    #[test]
    fn unknown_paths_share_one_label_and_v1_ones_need_a_key() {
        let unknown = at(Method::GET, "/v1/whatever");
        assert_eq!(
            (unknown.endpoint, unknown.label),
            (Endpoint::NotFound, "other")
        );
        assert!(unknown.auth && unknown.rate_limited);
        let outside = at(Method::GET, "/wp-login.php");
        assert_eq!(outside.label, "other");
        assert!(!outside.auth);
        // `/v1/models/` is the list, not a model named "".
        assert_eq!(at(Method::GET, "/v1/models/").endpoint, Endpoint::Models);
        assert_eq!(
            at(Method::GET, "/administrator").endpoint,
            Endpoint::NotFound
        );
    }
}
