//! The client's address behind reverse proxies (`TRUST_PROXY`), parsed once at start-up.
//!
//! The values are those of Express's `trust proxy`, so a Node-era `.env` keeps working:
//! `false` (the socket peer), `true`, a hop count, or a comma list of addresses, CIDR
//! ranges and the names `loopback`, `linklocal`, `uniquelocal`. The addresses a request
//! came through are the socket peer followed by `X-Forwarded-For` read right to left (each
//! proxy appends the address it saw); the client is the first address that is not a
//! trusted proxy.
//!
//! One deliberate difference: Express's `true` trusts every hop and takes the *leftmost*
//! `X-Forwarded-For` entry, which the client writes itself — a rate limit keyed on it is
//! bypassed by sending a random header. Here `true` means one trusted proxy in front (the
//! usual nginx): its `X-Real-IP`, else the last `X-Forwarded-For` hop.

use std::fmt;
use std::net::IpAddr;

use hyper::header::HeaderMap;

#[derive(Clone, PartialEq, Eq, Default)]
pub enum TrustProxy {
    /// Use the socket peer; forwarding headers are ignored.
    #[default]
    Off,
    /// `true`: one proxy in front; `X-Real-IP`, else the last `X-Forwarded-For` hop.
    OneProxy,
    /// A hop count: the socket peer and the `n - 1` nearest forwarded hops are proxies.
    Hops(u32),
    /// Proxies are the addresses in these ranges.
    Ranges(Vec<IpRange>),
}

impl fmt::Debug for TrustProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrustProxy::Off => f.write_str("false"),
            TrustProxy::OneProxy => f.write_str("true"),
            TrustProxy::Hops(n) => write!(f, "{n} hops"),
            TrustProxy::Ranges(r) => f.debug_list().entries(r).finish(),
        }
    }
}

/// An address range in CIDR form.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    base: IpAddr,
    prefix: u8,
}

impl fmt::Debug for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

impl IpRange {
    fn parse(s: &str) -> Option<Self> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().ok()?, Some(p.parse::<u8>().ok()?)),
            None => (s.parse::<IpAddr>().ok()?, None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(IpRange { base: addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.base, ip.to_canonical()) {
            (IpAddr::V4(b), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(b) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(b), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(b) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// Express's named ranges.
fn named(name: &str) -> Option<&'static [&'static str]> {
    Some(match name {
        "loopback" => &["127.0.0.1/8", "::1/128"],
        "linklocal" => &["169.254.0.0/16", "fe80::/10"],
        "uniquelocal" => &["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"],
        _ => return None,
    })
}

impl TrustProxy {
    /// Parse a `TRUST_PROXY` value; the error says what is accepted.
    pub fn parse(value: &str) -> Result<Self, String> {
        let v = value.trim();
        match v.to_ascii_lowercase().as_str() {
            "" | "false" | "0" | "no" | "off" => return Ok(TrustProxy::Off),
            "true" | "yes" | "on" => return Ok(TrustProxy::OneProxy),
            _ => {}
        }
        if let Ok(n) = v.parse::<u32>() {
            return Ok(TrustProxy::Hops(n));
        }
        let mut ranges = Vec::new();
        for item in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if let Some(list) = named(&item.to_ascii_lowercase()) {
                ranges.extend(list.iter().filter_map(|r| IpRange::parse(r)));
            } else if let Some(r) = IpRange::parse(item) {
                ranges.push(r);
            } else {
                return Err(format!(
                    "TRUST_PROXY entry {item:?} is not an address, a CIDR range or one of \
                     loopback, linklocal, uniquelocal (accepted: true, false, a hop count, or a comma list)"
                ));
            }
        }
        Ok(TrustProxy::Ranges(ranges))
    }

    /// The client's address for a request that arrived from `peer`.
    pub fn client_ip(&self, headers: &HeaderMap, peer: Option<IpAddr>) -> Option<IpAddr> {
        let peer = peer.map(|p| p.to_canonical());
        match self {
            TrustProxy::Off => peer,
            TrustProxy::OneProxy => header_ip(headers, "x-real-ip")
                .or_else(|| forwarded_hops(headers).next())
                .or(peer),
            TrustProxy::Hops(n) => {
                let mut chain = peer.into_iter().chain(forwarded_hops(headers));
                let mut last = None;
                for _ in 0..=*n {
                    match chain.next() {
                        Some(ip) => last = Some(ip),
                        None => break,
                    }
                }
                last
            }
            TrustProxy::Ranges(ranges) => {
                let mut last = None;
                for ip in peer.into_iter().chain(forwarded_hops(headers)) {
                    last = Some(ip);
                    if !ranges.iter().any(|r| r.contains(ip)) {
                        break;
                    }
                }
                last
            }
        }
    }
}

impl TrustProxy {
    /// Whether the client reached the proxy in front over HTTPS: `X-Forwarded-Proto: https`
    /// from a peer this setting trusts (with `false`, never: the proxy itself speaks plain
    /// HTTP and the header could come from anyone). For the console cookie's `Secure`.
    pub fn forwarded_https(&self, headers: &HeaderMap, peer: Option<IpAddr>) -> bool {
        let trusted = match self {
            TrustProxy::Off | TrustProxy::Hops(0) => false,
            TrustProxy::OneProxy | TrustProxy::Hops(_) => true,
            TrustProxy::Ranges(ranges) => {
                peer.is_some_and(|p| ranges.iter().any(|r| r.contains(p.to_canonical())))
            }
        };
        // The nearest proxy appends last.
        trusted
            && headers
                .get("x-forwarded-proto")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.rsplit(',').next())
                .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"))
    }
}

fn header_ip(headers: &HeaderMap, name: &str) -> Option<IpAddr> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<IpAddr>().ok())
        .map(|ip| ip.to_canonical())
}

/// `X-Forwarded-For` entries, nearest hop first. Parsing stops at the first entry that is
/// not an address: whatever lies beyond it cannot be trusted to mean anything.
fn forwarded_hops(headers: &HeaderMap) -> impl Iterator<Item = IpAddr> + '_ {
    let entries: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    entries
        .into_iter()
        .rev()
        .map_while(|e| e.trim().parse::<IpAddr>().ok())
        .map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(xff: &str, real: Option<&str>) -> HeaderMap {
        let mut m = HeaderMap::new();
        if !xff.is_empty() {
            m.insert("x-forwarded-for", xff.parse().unwrap());
        }
        if let Some(r) = real {
            m.insert("x-real-ip", r.parse().unwrap());
        }
        m
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn https_is_believed_only_from_a_trusted_proxy() {
        let proto = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert("x-forwarded-proto", v.parse().unwrap());
            m
        };
        let https = |trust: &str, v: &str, peer: &str| {
            TrustProxy::parse(trust)
                .unwrap()
                .forwarded_https(&proto(v), Some(ip(peer)))
        };
        assert!(https("true", "https", "10.0.0.1"));
        assert!(https("true", "HTTPS", "10.0.0.1"));
        assert!(https("loopback", "http, https", "127.0.0.1"));
        assert!(!https("loopback", "https", "10.0.0.1"), "untrusted peer");
        assert!(!https("false", "https", "127.0.0.1"));
        assert!(
            !https("true", "https, http", "10.0.0.1"),
            "the nearest hop says http"
        );
        assert!(!TrustProxy::OneProxy.forwarded_https(&HeaderMap::new(), None));
    }

    fn client(trust: &str, xff: &str, real: Option<&str>, peer: &str) -> IpAddr {
        TrustProxy::parse(trust)
            .unwrap()
            .client_ip(&h(xff, real), Some(ip(peer)))
            .unwrap()
    }

    #[test]
    fn off_ignores_forwarding_headers() {
        assert_eq!(
            client("false", "1.1.1.1", Some("2.2.2.2"), "10.0.0.1"),
            ip("10.0.0.1")
        );
        assert_eq!(TrustProxy::parse("").unwrap(), TrustProxy::Off);
    }

    #[test]
    fn true_is_one_proxy_never_the_leftmost_hop() {
        assert_eq!(
            client("true", "9.9.9.9, 3.3.3.3", None, "127.0.0.1"),
            ip("3.3.3.3")
        );
        assert_eq!(
            client("TRUE", "9.9.9.9", Some("4.4.4.4"), "127.0.0.1"),
            ip("4.4.4.4")
        );
        assert_eq!(client("true", "", None, "127.0.0.1"), ip("127.0.0.1"));
    }

    #[test]
    fn hop_counts_like_express() {
        assert_eq!(client("0", "1.1.1.1", None, "10.0.0.1"), ip("10.0.0.1"));
        assert_eq!(
            client("1", "1.1.1.1, 2.2.2.2", None, "10.0.0.1"),
            ip("2.2.2.2")
        );
        assert_eq!(
            client("2", "1.1.1.1, 2.2.2.2", None, "10.0.0.1"),
            ip("1.1.1.1")
        );
        // More hops than addresses: the leftmost there is.
        assert_eq!(client("5", "1.1.1.1", None, "10.0.0.1"), ip("1.1.1.1"));
    }

    #[test]
    fn ranges_and_names() {
        // loopback peer, then a trusted private hop, then the client.
        let t = "loopback, 10.0.0.0/8";
        assert_eq!(
            client(t, "6.6.6.6, 7.7.7.7, 10.1.2.3", None, "127.0.0.1"),
            ip("7.7.7.7")
        );
        // The peer itself is untrusted: forwarding headers are ignored.
        assert_eq!(client(t, "7.7.7.7", None, "8.8.8.8"), ip("8.8.8.8"));
        assert_eq!(
            client("uniquelocal", "5.5.5.5", None, "192.168.1.9"),
            ip("5.5.5.5")
        );
        assert_eq!(client("::1", "5.5.5.5", None, "::1"), ip("5.5.5.5"));
        // IPv4-mapped peers count as IPv4.
        assert_eq!(
            client("loopback", "5.5.5.5", None, "::ffff:127.0.0.1"),
            ip("5.5.5.5")
        );
        // Garbage in the header stops the walk.
        assert_eq!(
            client("loopback", "5.5.5.5, junk", None, "127.0.0.1"),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn bad_values_are_rejected_with_what_is_accepted() {
        for bad in ["maybe", "10.0.0.0/33", "loopback, nowhere", "-1"] {
            let e = TrustProxy::parse(bad).unwrap_err();
            assert!(e.contains("hop count"), "{bad}: {e}");
        }
    }
}
