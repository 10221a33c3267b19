//! The operators' console over HTTP (the browser suite in `tests/console/` drives the page
//! itself): its files and security headers, sign-in with the key into an HttpOnly,
//! SameSite=Strict cookie, the CSRF token every change needs, sign-out, throttled guessing,
//! and sessions shared by instances with the same `ADMIN_KEY` — refused by one with another.

// Tests: a failed unwrap is a failure with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use serde_json::Value;

use support::{quick_sim, Harness, Reply, ADMIN_KEY};

async fn call(
    h: &Harness,
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Reply {
    let mut b = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    Harness::read(h.send(b.body(Full::new(Bytes::new())).unwrap()).await).await
}

fn code(r: &Reply) -> String {
    r.json()["error"]["code"].as_str().unwrap_or("").to_owned()
}

/// Signs in with the key: the cookie (`name=value`) and the CSRF token.
async fn sign_in(h: &Harness, addr: std::net::SocketAddr) -> (String, String, Reply) {
    let bearer = format!("Bearer {ADMIN_KEY}");
    let r = call(
        h,
        addr,
        "POST",
        "/admin/session",
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let set_cookie = r.headers["set-cookie"].to_str().unwrap().to_owned();
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let csrf = r.json()["csrf"].as_str().unwrap().to_owned();
    (cookie, csrf, r)
}

#[tokio::test]
async fn the_page_and_its_assets_come_with_a_strict_policy() {
    let h = Harness::start_with(&[], quick_sim()).await;
    let page = call(&h, h.addr, "GET", "/admin/", &[]).await;
    assert_eq!(page.status, 200);
    assert_eq!(page.headers["content-type"], "text/html; charset=utf-8");
    let html = String::from_utf8(page.body.to_vec()).unwrap();
    assert!(html.contains("/admin/assets/app.js"), "{html}");
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{csp}");
    }
    assert!(!csp.contains("unsafe"), "{csp}");
    assert_eq!(page.headers["x-frame-options"], "DENY");
    assert_eq!(page.headers["x-content-type-options"], "nosniff");
    let js = call(&h, h.addr, "GET", "/admin/assets/app.js", &[]).await;
    assert_eq!(js.status, 200);
    assert_eq!(js.headers["content-type"], "text/javascript; charset=utf-8");
    // Revalidated, not refetched.
    let etag = js.headers["etag"].to_str().unwrap().to_owned();
    let again = call(
        &h,
        h.addr,
        "GET",
        "/admin/assets/app.js",
        &[("if-none-match", &etag)],
    )
    .await;
    assert_eq!(again.status, 304);
    // The admin API's refusals carry the policy too.
    let refused = call(&h, h.addr, "GET", "/admin/accounts", &[]).await;
    assert_eq!(refused.status, 401);
    assert!(refused.headers.contains_key("content-security-policy"));
    assert_eq!(refused.headers["cache-control"], "no-store");
    assert_eq!(
        call(&h, h.addr, "GET", "/admin/assets/nothing.js", &[])
            .await
            .status,
        404
    );
    // Without ADMIN_KEY there is no console.
    let off = h.another_proxy(&[("ADMIN_KEY", "")]).await;
    assert_eq!(call(&h, off.addr, "GET", "/admin/", &[]).await.status, 404);
}

#[tokio::test]
async fn a_session_signs_in_acts_with_its_csrf_token_and_signs_out() {
    let h = Harness::start_with(&[], quick_sim()).await;
    let (cookie, csrf, r) = sign_in(&h, h.addr).await;
    let set_cookie = r.headers["set-cookie"].to_str().unwrap();
    for attribute in [
        "HttpOnly",
        "SameSite=Strict",
        "Path=/admin",
        "Max-Age=43200",
    ] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    assert!(!set_cookie.contains("Secure"), "plain HTTP: {set_cookie}");
    assert!(!set_cookie.contains(ADMIN_KEY) && !cookie.contains(ADMIN_KEY));
    assert_eq!(r.json()["expires_in_seconds"], 43200);

    // The cookie stands for the key on reads.
    let c = [("cookie", cookie.as_str())];
    let accounts = call(&h, h.addr, "GET", "/admin/accounts", &c).await;
    assert_eq!(accounts.status, 200);
    let name = accounts.json()["accounts"][0]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    let session = call(&h, h.addr, "GET", "/admin/session", &c).await;
    assert_eq!(session.json()["signed_in"], true);
    assert_eq!(session.json()["csrf"], csrf.as_str());

    // A change without the token (or with another) is refused and changes nothing.
    let disable = format!("/admin/accounts/{name}/disable");
    for headers in [
        vec![("cookie", cookie.as_str())],
        vec![("cookie", cookie.as_str()), ("x-csrf-token", "forged")],
    ] {
        let r = call(&h, h.addr, "POST", &disable, &headers).await;
        assert_eq!(r.status, 403);
        assert_eq!(code(&r), "csrf_token_invalid");
    }
    let accounts = call(&h, h.addr, "GET", "/admin/accounts", &c).await.json();
    assert_eq!(accounts["accounts"][0]["state"], "ready");
    let with_token = [("cookie", cookie.as_str()), ("x-csrf-token", csrf.as_str())];
    let r = call(&h, h.addr, "POST", &disable, &with_token).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["account"]["state"], "disabled");
    let enable = format!("/admin/accounts/{name}/enable");
    let r = call(&h, h.addr, "POST", &enable, &with_token).await;
    assert_eq!(r.json()["account"]["state"], "ready");

    // Signing out needs the token too; then the cookie is cleared and refused.
    let r = call(&h, h.addr, "DELETE", "/admin/session", &c).await;
    assert_eq!(r.status, 403);
    let r = call(&h, h.addr, "DELETE", "/admin/session", &with_token).await;
    assert_eq!(r.status, 204);
    assert!(r.headers["set-cookie"]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    let probe = call(&h, h.addr, "GET", "/admin/session", &c).await.json();
    assert_eq!(
        (probe["signed_in"].clone(), probe["reason"].clone()),
        (Value::Bool(false), Value::from("signed_out")),
        "{probe}"
    );
    let r = call(&h, h.addr, "GET", "/admin/accounts", &c).await;
    assert_eq!(r.status, 401);
    assert_eq!(code(&r), "not_signed_in");
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("signed out"));
    // A made-up cookie is no session.
    let forged = [(
        "cookie",
        "qp_session=v1.1.00000000000000000000000000000000.AAAA",
    )];
    let r = call(&h, h.addr, "GET", "/admin/accounts", &forged).await;
    assert_eq!(code(&r), "not_signed_in");
}

#[tokio::test]
async fn wrong_keys_are_throttled_and_a_page_without_a_session_is_not_a_guess() {
    let h = Harness::start_with(&[("AUTH_FAILURE_LIMIT", "3")], quick_sim()).await;
    // The console asking whether it is signed in, many times: not guesses.
    for _ in 0..5 {
        let r = call(&h, h.addr, "GET", "/admin/session", &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json(), serde_json::json!({"signed_in": false}));
    }
    // Another keyless call is refused, still without counting.
    for _ in 0..5 {
        let r = call(&h, h.addr, "GET", "/admin/accounts", &[]).await;
        assert_eq!(r.status, 401);
    }
    sign_in(&h, h.addr).await;
    let wrong = [("authorization", "Bearer not-the-admin-key")];
    for _ in 0..3 {
        let r = call(&h, h.addr, "POST", "/admin/session", &wrong).await;
        assert_eq!(r.status, 401);
        assert_eq!(code(&r), "invalid_admin_key");
        assert!(!r.headers.contains_key("set-cookie"));
    }
    let bearer = format!("Bearer {ADMIN_KEY}");
    let locked = call(
        &h,
        h.addr,
        "POST",
        "/admin/session",
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!(locked.status, 429);
    assert!(
        locked.headers["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 0
    );
    assert!(!locked.headers.contains_key("set-cookie"));
}

#[tokio::test]
async fn instances_with_the_key_share_sessions_and_https_makes_the_cookie_secure() {
    let h = Harness::start_with(&[], quick_sim()).await;
    let (cookie, csrf, _) = sign_in(&h, h.addr).await;
    let same = h.another_proxy(&[]).await;
    let c = [("cookie", cookie.as_str()), ("x-csrf-token", csrf.as_str())];
    let r = call(&h, same.addr, "GET", "/admin/session", &c).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["csrf"], csrf.as_str());
    let rotated = h
        .another_proxy(&[("ADMIN_KEY", "a-new-admin-key-after-rotation")])
        .await;
    let r = call(&h, rotated.addr, "GET", "/admin/accounts", &c).await;
    assert_eq!(r.status, 401);
    assert_eq!(code(&r), "not_signed_in");

    // Behind a trusted proxy that says HTTPS: `Secure`. From anyone else: the header is
    // not believed.
    let behind = h.another_proxy(&[("TRUST_PROXY", "loopback")]).await;
    let bearer = format!("Bearer {ADMIN_KEY}");
    let over_https = [
        ("authorization", bearer.as_str()),
        ("x-forwarded-proto", "https"),
    ];
    let r = call(&h, behind.addr, "POST", "/admin/session", &over_https).await;
    let set_cookie: &str = r.headers["set-cookie"].to_str().unwrap();
    assert!(set_cookie.ends_with("; Secure"), "{set_cookie}");
    let r = call(&h, h.addr, "POST", "/admin/session", &over_https).await;
    assert!(!r.headers["set-cookie"].to_str().unwrap().contains("Secure"));
    let _: Value = r.json();
}

/// The probe is the only keyless way in: near paths and other methods are refused, and a
/// cookie does not rescue a wrong key (which counts as a guess).
#[tokio::test]
async fn only_the_probe_answers_without_a_key_and_a_cookie_does_not_rescue_a_wrong_one() {
    let h = Harness::start_with(&[], quick_sim()).await;
    for (method, path) in [
        ("HEAD", "/admin/session"),
        ("GET", "/admin//session"),
        ("GET", "/admin/session/x"),
        ("GET", "/admin/overview"),
        ("GET", "/admin/requests"),
    ] {
        let r = call(&h, h.addr, method, path, &[]).await;
        assert_eq!(r.status, 401, "{method} {path}");
    }
    let (cookie, csrf, _) = sign_in(&h, h.addr).await;
    let with_wrong_key = [
        ("cookie", cookie.as_str()),
        ("x-csrf-token", csrf.as_str()),
        ("authorization", "Bearer not-the-admin-key"),
    ];
    let r = call(&h, h.addr, "GET", "/admin/accounts", &with_wrong_key).await;
    assert_eq!(r.status, 401);
    assert_eq!(code(&r), "invalid_admin_key");
    let metrics = String::from_utf8(h.get("/metrics").await.body.to_vec()).unwrap();
    assert!(
        metrics.contains("auth_failures_total{outcome=\"invalid_admin_key\"} 1"),
        "{metrics}"
    );
}

/// With CORS on and credentials allowed for a same-site origin, that origin's pages still
/// cannot read the console's answers (its CSRF token above all): no CORS headers on `/admin`,
/// preflights included; the client API keeps them.
#[tokio::test]
async fn cors_never_opens_the_console_to_another_origin() {
    let origin = "http://localhost:3000";
    let env = [
        ("CORS_ENABLED", "true"),
        ("CORS_ORIGIN", origin),
        ("CORS_CREDENTIALS", "true"),
    ];
    let h = Harness::start_with(&env, quick_sim()).await;
    let (cookie, _, _) = sign_in(&h, h.addr).await;
    let from_origin = [("cookie", cookie.as_str()), ("origin", origin)];
    let r = call(&h, h.addr, "GET", "/admin/session", &from_origin).await;
    assert_eq!(r.json()["signed_in"], true, "the cookie itself works");
    assert!(!r.headers.contains_key("access-control-allow-origin"));
    assert!(!r.headers.contains_key("access-control-allow-credentials"));
    let preflight = [
        ("origin", origin),
        ("access-control-request-method", "POST"),
        ("access-control-request-headers", "x-csrf-token"),
    ];
    let r = call(
        &h,
        h.addr,
        "OPTIONS",
        "/admin/accounts/default/disable",
        &preflight,
    )
    .await;
    assert!(
        !r.headers.contains_key("access-control-allow-origin"),
        "{:?}",
        r.headers
    );
    let r = call(&h, h.addr, "GET", "/v1/models", &[("origin", origin)]).await;
    assert_eq!(r.headers["access-control-allow-origin"], origin);
}
