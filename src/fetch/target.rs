//! One URL, checked before anything is sent: the scheme, no credentials, a port, and a host
//! that is either a canonical IP literal (checked against the policy here, because the
//! connector connects to a literal without asking the resolver) or a DNS name (checked by
//! the resolver, after resolution). Also the resolution of a redirect's `Location` against
//! the URL that answered it.
//!
//! Anything odd is refused rather than guessed at: a numeric host that is not a dotted
//! quad (`2130706433`, `0x7f.1`, `0177.0.0.1`, `127.1`) is what a browser or `inet_aton`
//! would read as an IPv4 address, so it is refused outright instead of being sent to a
//! resolver that might agree.

use std::net::IpAddr;

use hyper::Uri;

use super::{FetchError, FetchPolicy};

/// Longer is not an image URL (signed CDN URLs stay well under this).
const MAX_URL_LEN: usize = 8 * 1024;
/// The longest DNS name (RFC 1035).
const MAX_HOST_LEN: usize = 253;

/// Check `url` against `policy` (scheme, userinfo, port, host, a literal address): what to
/// request — scheme, authority without userinfo, path and query, no fragment.
pub(super) fn parse(url: &str, policy: &FetchPolicy) -> Result<Uri, FetchError> {
    // The fragment is never sent.
    let url = url.split_once('#').map_or(url, |(before, _)| before);
    let scheme = scheme_of(url).ok_or(FetchError::BadUrl("not an absolute URL"))?;
    let allowed = scheme.eq_ignore_ascii_case("https")
        || (policy.allow_http && scheme.eq_ignore_ascii_case("http"));
    if !allowed {
        return Err(FetchError::Scheme);
    }
    if url.len() > MAX_URL_LEN {
        return Err(FetchError::BadUrl("the URL is too long"));
    }
    let uri: Uri = url
        .parse()
        .map_err(|_| FetchError::BadUrl("not a valid URL"))?;
    let authority = uri
        .authority()
        .ok_or(FetchError::BadUrl("the URL has no host"))?;
    if authority.as_str().contains('@') {
        return Err(FetchError::BadUrl(
            "credentials in image URLs are not accepted",
        ));
    }
    if authority.port_u16() == Some(0) || authority.as_str().ends_with(':') {
        return Err(FetchError::BadUrl("not a valid port"));
    }
    let host = authority.host();
    // As hyper-util's connector decides what is a literal: brackets stripped, then
    // `Ipv4Addr`, then `Ipv6Addr` (both parsers accept only the canonical forms).
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(addr) = bare.parse::<IpAddr>() {
        policy
            .check(addr)
            .map_err(|rule| FetchError::forbidden(bare, addr, rule))?;
    } else if bare.len() != host.len() {
        return Err(FetchError::BadUrl("not a valid IPv6 address"));
    } else if ends_in_number(host) {
        return Err(FetchError::BadUrl(
            "a numeric host must be a dotted-decimal IPv4 address",
        ));
    } else if !is_dns_name(host) {
        return Err(FetchError::BadUrl("not a valid host name"));
    }
    Ok(uri)
}

/// The scheme of an absolute URL (RFC 3986 §3.1: a letter, then letters, digits, `+`, `-`,
/// `.`, ending at the first `:`), or `None` for a relative reference.
pub(super) fn scheme_of(url: &str) -> Option<&str> {
    let (scheme, _) = url.split_once(':')?;
    let mut chars = scheme.chars();
    let first = chars.next()?;
    (first.is_ascii_alphabetic()
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
    .then_some(scheme)
}

/// Whether a host would be read as an IPv4 address by the WHATWG URL parser (and so by
/// `inet_aton`-style resolvers): its last non-empty label is decimal digits or `0x` hex.
pub(super) fn ends_in_number(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    let last = host.rsplit('.').next().unwrap_or(host);
    if let Some(hex) = last.strip_prefix("0x").or_else(|| last.strip_prefix("0X")) {
        return hex.bytes().all(|b| b.is_ascii_hexdigit());
    }
    !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit())
}

/// Letters, digits, `-` and `_` in labels of 1–63 bytes, at most 253 bytes, an optional
/// trailing dot. No percent-encoding, no other byte a resolver might read differently.
fn is_dns_name(host: &str) -> bool {
    let name = host.strip_suffix('.').unwrap_or(host);
    !name.is_empty()
        && name.len() <= MAX_HOST_LEN
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// A redirect's `Location` resolved against the URL that answered (RFC 3986 §5.2): an
/// absolute URL as it is, `//host/…` with the current scheme, `/path` and `?query` on the
/// current authority, a relative path against the current directory, dot segments
/// removed. The result is checked by [`parse`] like any other URL.
pub(super) fn join(base: &Uri, location: &str) -> Result<String, FetchError> {
    let location = location.split_once('#').map_or(location, |(l, _)| l);
    if scheme_of(location).is_some() {
        return Ok(location.to_owned());
    }
    let (Some(scheme), Some(authority)) = (base.scheme_str(), base.authority()) else {
        return Err(FetchError::BadUrl("not an absolute URL"));
    };
    if location.starts_with("//") {
        return Ok(format!("{scheme}:{location}"));
    }
    let (path, query) = match location.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (location, None),
    };
    let path = if path.is_empty() {
        base.path().to_owned()
    } else if path.starts_with('/') {
        remove_dot_segments(path)
    } else {
        let dir = base.path().rsplit_once('/').map_or("", |(dir, _)| dir);
        remove_dot_segments(&format!("{dir}/{path}"))
    };
    let query = match (query, base.query()) {
        (Some(q), _) => format!("?{q}"),
        // An empty reference keeps the base's query (RFC 3986 §5.2.2).
        (None, Some(q)) if location.is_empty() => format!("?{q}"),
        _ => String::new(),
    };
    Ok(format!("{scheme}://{authority}{path}{query}"))
}

/// RFC 3986 §5.2.4 on an absolute path: `.` segments dropped, `..` pops one (never above
/// the root); a trailing `.` or `..` leaves a trailing slash.
fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    for (i, segment) in segments.into_iter().enumerate() {
        match segment {
            "." | ".." => {
                if segment == ".." {
                    out.pop();
                }
                if i == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}
