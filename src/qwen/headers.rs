//! The browser-like header set of `qwen-protocol.md` §2.2. The upstream's WAF scores the
//! *complete* set, so every request carries all of it, with a fresh `x-request-id`, the
//! current `timezone` and a per-endpoint `Referer`.

use hyper::header::{
    HeaderMap, HeaderName, HeaderValue, ACCEPT, ACCEPT_LANGUAGE, AUTHORIZATION, CONNECTION,
    CONTENT_TYPE, COOKIE, ORIGIN, REFERER, USER_AGENT,
};

use crate::common::{epoch_secs, Secret};
use crate::config::UpstreamConfig;

/// Which page the browser would be on when making the call (drives `Referer`/`Accept`).
#[derive(Debug, Clone, Copy)]
pub enum Page<'a> {
    NewChat,
    Chat(&'a str),
    Home,
}

/// Whose browser session a request comes from: one account's cookie jar, token and
/// captured browser values (`accounts` builds it; it changes when the token does).
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// The Cookie header (with `token=`).
    pub cookies: Option<Secret>,
    /// The account token, also sent as `Authorization: Bearer` unless turned off.
    pub token: Option<Secret>,
    pub bx_ua: Option<Secret>,
    pub bx_umidtoken: Option<Secret>,
    /// The account's own User-Agent; the configured default otherwise.
    pub user_agent: Option<String>,
}

#[derive(Debug, Clone)]
pub struct HeaderSet {
    base: HeaderMap,
    origin: String,
}

fn value(s: &str) -> HeaderValue {
    // Config validation rejects values that are not valid header values.
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn secret(s: &str) -> HeaderValue {
    let mut v = value(s);
    v.set_sensitive(true);
    v
}

impl HeaderSet {
    pub fn new(cfg: &UpstreamConfig, who: &Credentials) -> Self {
        let origin = cfg.base_url.to_string().trim_end_matches('/').to_owned();
        let mut h = HeaderMap::new();
        h.insert(
            USER_AGENT,
            value(who.user_agent.as_deref().unwrap_or(&cfg.user_agent)),
        );
        h.insert(
            ACCEPT_LANGUAGE,
            HeaderValue::from_static("zh-CN,zh;q=0.9,en;q=0.8"),
        );
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(ORIGIN, value(&origin));
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive"));
        h.insert("source", HeaderValue::from_static("web"));
        h.insert("version", value(&cfg.fe_version));
        // The `bx-*` headers only with values the operator captured: the browser no longer
        // sends them, and stale ones draw the challenge.
        if let Some(v) = &cfg.bx_v {
            h.insert("bx-v", value(v));
        }
        if let Some(ua) = &who.bx_ua {
            h.insert("bx-ua", secret(ua.expose()));
        }
        if let Some(t) = &who.bx_umidtoken {
            h.insert("bx-umidtoken", secret(t.expose()));
        }
        h.insert(
            "sec-ch-ua",
            HeaderValue::from_static(
                r#""Chromium";v="141", "Google Chrome";v="141", "Not?A_Brand";v="8""#,
            ),
        );
        h.insert("sec-ch-ua-mobile", HeaderValue::from_static("?0"));
        h.insert(
            "sec-ch-ua-platform",
            HeaderValue::from_static(r#""Windows""#),
        );
        h.insert("sec-fetch-dest", HeaderValue::from_static("empty"));
        h.insert("sec-fetch-mode", HeaderValue::from_static("cors"));
        h.insert("sec-fetch-site", HeaderValue::from_static("same-origin"));
        if let Some(c) = &who.cookies {
            h.insert(COOKIE, secret(c.expose()));
        }
        if let (true, Some(t)) = (cfg.send_bearer, &who.token) {
            h.insert(AUTHORIZATION, secret(&format!("Bearer {}", t.expose())));
        }
        Self { base: h, origin }
    }

    /// Headers for one request; `stream` selects the SSE-specific ones.
    pub fn build(&self, page: Page<'_>, stream: bool) -> HeaderMap {
        let mut h = self.base.clone();
        let referer = match page {
            Page::NewChat => format!("{}/c/new-chat", self.origin),
            Page::Chat(id) => format!("{}/c/{id}", self.origin),
            Page::Home => format!("{}/", self.origin),
        };
        h.insert(REFERER, value(&referer));
        h.insert(
            HeaderName::from_static("x-request-id"),
            value(&crate::common::random_uuid().to_string()),
        );
        h.insert("timezone", value(&browser_date(epoch_secs())));
        if stream {
            h.insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
            h.insert("x-accel-buffering", HeaderValue::from_static("no"));
        } else {
            h.insert(
                ACCEPT,
                HeaderValue::from_static("application/json, text/plain, */*"),
            );
        }
        h
    }
}

/// JavaScript `Date.toString()` without the localized zone name (ASCII only), in UTC:
/// `Tue Sep 22 2026 04:13:35 GMT+0000`, for `secs` since the Unix epoch.
pub fn browser_date(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = crate::common::civil_from_days(days);
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{} {} {:02} {} {:02}:{:02}:{:02} GMT+0000",
        WEEKDAYS[days.rem_euclid(7) as usize],
        MONTHS[(m - 1) as usize],
        d,
        y,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn headers(vars: &[(&str, &str)]) -> HeaderMap {
        let mut all: HashMap<String, String> =
            HashMap::from([("QWEN_COOKIES".to_owned(), "token=t".to_owned())]);
        for (k, v) in vars {
            all.insert((*k).to_owned(), (*v).to_owned());
        }
        let cfg = crate::config::Config::from_source(&all, false).unwrap();
        let who = Credentials {
            bx_ua: cfg.upstream.bx_ua.clone(),
            bx_umidtoken: cfg.upstream.bx_umidtoken.clone(),
            ..Credentials::default()
        };
        HeaderSet::new(&cfg.upstream, &who).build(Page::Home, false)
    }

    #[test]
    fn bx_headers_only_when_the_operator_supplies_them() {
        let h = headers(&[]);
        for name in ["bx-v", "bx-ua", "bx-umidtoken"] {
            assert!(!h.contains_key(name), "{name} sent without a value to send");
        }
        assert_eq!(h["version"], "0.3.12");
        let h = headers(&[
            ("QWEN_BX_V", "2.5.99"),
            ("QWEN_BX_UA", "ua-token"),
            ("QWEN_TOKEN", "umid"),
            ("QWEN_VERSION", "0.3.20"),
        ]);
        assert_eq!(h["bx-v"], "2.5.99");
        assert_eq!(h["bx-ua"], "ua-token");
        assert_eq!(h["bx-umidtoken"], "umid");
        assert_eq!(h["version"], "0.3.20");
    }

    #[test]
    fn browser_date_format() {
        // 2026-09-22T04:13:35Z was a Tuesday.
        assert_eq!(
            browser_date(1_790_050_415),
            "Tue Sep 22 2026 04:13:35 GMT+0000"
        );
        assert_eq!(browser_date(0), "Thu Jan 01 1970 00:00:00 GMT+0000");
    }
}
