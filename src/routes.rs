//! The route table as logs and metrics see it: a low-cardinality label per route
//! (unknown paths share one), so a client cannot blow up label sets.

/// Low-cardinality route label for logs and metrics.
pub fn route_template(path: &str) -> &'static str {
    match path.trim_end_matches('/') {
        "/v1/chat/completions" => "/v1/chat/completions",
        "/v1/models" => "/v1/models",
        p if p.starts_with("/v1/models/") => "/v1/models/{id}",
        "/health" => "/health",
        "/metrics" => "/metrics",
        "" => "/",
        _ => "other",
    }
}
