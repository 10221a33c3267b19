//! The operators' console: a web page at `/admin/` over the admin API (`admin.rs`).
//!
//! Its files (`console/` in the repository: HTML, CSS, JavaScript, no build step) are
//! compiled into the binary, so it works offline and the version served is the binary's.
//! The page and its assets are served to anyone when `ADMIN_KEY` is set (they hold no
//! data); everything they show comes from the admin API, which answers only a signed-in
//! session ([`session`]) or the bearer key. Every response under `/admin` carries the
//! headers of [`SECURITY_HEADERS`] (the layer `layers::operator_headers` adds them, errors
//! included): no inline script or style can run, no other site can frame the console.

pub(crate) mod session;

use std::sync::OnceLock;

use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use hyper::{HeaderMap, Response, StatusCode};

use crate::body::ProxyBody;
use crate::error::ProxyError;

/// Headers on every response under `/admin`.
pub(crate) const SECURITY_HEADERS: [(&str, &str); 5] = [
    (
        "content-security-policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    ),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    ("cross-origin-opener-policy", "same-origin"),
];

/// `/admin` or a path below it (not `/administrator`): the operators' routes.
pub(crate) fn is_operator_path(path: &str) -> bool {
    path.strip_prefix("/admin")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// One embedded file.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const ASSETS: [Asset; 4] = [
    Asset {
        path: "/admin",
        content_type: "text/html; charset=utf-8",
        body: include_str!("../../console/index.html"),
    },
    Asset {
        path: "/admin/assets/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../console/app.js"),
    },
    Asset {
        path: "/admin/assets/app.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../../console/app.css"),
    },
    Asset {
        path: "/admin/assets/icon.svg",
        content_type: "image/svg+xml",
        body: include_str!("../../console/icon.svg"),
    },
];

/// The console's page or one of its assets (`path` without a trailing slash). Revalidated
/// on every load (`no-cache` with an `ETag`), so an upgrade never mixes old and new files.
pub(crate) fn serve(
    admin_enabled: bool,
    path: &str,
    headers: &HeaderMap,
) -> Result<Response<ProxyBody>, ProxyError> {
    if !admin_enabled {
        return Err(ProxyError::RouteNotFound {
            path: format!("{path} (the console is off: set ADMIN_KEY)"),
        });
    }
    let (index, asset) = ASSETS
        .iter()
        .enumerate()
        .find(|(_, a)| a.path == path)
        .ok_or_else(|| ProxyError::RouteNotFound {
            path: path.to_owned(),
        })?;
    let etag = &etags()[index];
    let mut rsp = if headers.get(IF_NONE_MATCH) == Some(etag) {
        let mut rsp = Response::new(ProxyBody::empty());
        *rsp.status_mut() = StatusCode::NOT_MODIFIED;
        rsp
    } else {
        let mut rsp = Response::new(ProxyBody::full(asset.body.as_bytes()));
        rsp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
        rsp
    };
    rsp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    rsp.headers_mut().insert(ETAG, etag.clone());
    Ok(rsp)
}

/// Each asset's `ETag`: a hash of its content, computed once.
fn etags() -> &'static [HeaderValue] {
    static ETAGS: OnceLock<Vec<HeaderValue>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                let hash = crate::common::sha256_hex(a.body.as_bytes());
                HeaderValue::from_str(&format!("\"{}\"", &hash[..16]))
                    .unwrap_or_else(|_| HeaderValue::from_static("\"0\""))
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_and_assets_are_served_with_their_types_and_revalidated() {
        let none = HeaderMap::new();
        let page = serve(true, "/admin", &none).unwrap();
        assert_eq!(page.status(), 200);
        assert_eq!(page.headers()[CONTENT_TYPE], "text/html; charset=utf-8");
        assert_eq!(page.headers()[CACHE_CONTROL], "no-cache");
        let js = serve(true, "/admin/assets/app.js", &none).unwrap();
        assert_eq!(js.headers()[CONTENT_TYPE], "text/javascript; charset=utf-8");
        let mut again = HeaderMap::new();
        again.insert(IF_NONE_MATCH, js.headers()[ETAG].clone());
        let cached = serve(true, "/admin/assets/app.js", &again).unwrap();
        assert_eq!(cached.status(), 304);
        assert_ne!(page.headers()[ETAG], js.headers()[ETAG]);
    }

    #[test]
    fn unknown_assets_and_a_console_without_admin_key_are_404() {
        let none = HeaderMap::new();
        let missing = serve(true, "/admin/assets/../../etc/passwd", &none).unwrap_err();
        assert_eq!(missing.status(), 404);
        assert_eq!(serve(false, "/admin", &none).unwrap_err().status(), 404);
    }

    #[test]
    fn the_page_loads_nothing_inline_or_from_elsewhere() {
        let page = ASSETS[0].body;
        // The CSP would block them; the page must not need them.
        assert!(!page.contains("<script>") && !page.contains("style="));
        for attr in ["src=\"http", "href=\"http", "src=\"//", "href=\"//"] {
            assert!(!page.contains(attr), "{attr}");
        }
        for asset in &ASSETS[1..] {
            assert!(
                page.contains(asset.path) || asset.path.ends_with(".svg"),
                "{}",
                asset.path
            );
        }
    }
}
