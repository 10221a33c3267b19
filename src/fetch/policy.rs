//! What may be fetched: the policy, its allow-list of CIDR networks, and the table of
//! forbidden destinations every address is checked against.
//!
//! The table is the point of this file: an address the proxy's network can reach but a
//! client must not (the proxy's own host, the private network, a cloud metadata service) is
//! forbidden however it is spelled — including IPv6 forms that embed an IPv4 address
//! (mapped, compatible, NAT64, 6to4, Teredo), which are checked by the address they embed.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::time::Duration;

/// How the fetcher may fetch. Immutable once a [`super::Fetcher`] holds it.
#[derive(Debug, Clone)]
pub(crate) struct FetchPolicy {
    /// Networks allowed even when a rule below forbids them (a local image server in
    /// development, an internal CDN). Empty by default.
    pub(crate) allow: Vec<IpNet>,
    /// Plain `http` URLs too (development and tests); `https` only by default.
    pub(crate) allow_http: bool,
    /// The most body bytes accepted.
    pub(crate) max_bytes: u64,
    /// The whole fetch: every redirect, resolution, connection and the body.
    pub(crate) timeout: Duration,
    /// Redirects followed before giving up.
    pub(crate) max_redirects: u8,
}

impl Default for FetchPolicy {
    /// https only, nothing allowed beyond the public internet, 10 MiB, 10 s, 3 redirects.
    fn default() -> Self {
        FetchPolicy {
            allow: Vec::new(),
            allow_http: false,
            max_bytes: 10 * 1024 * 1024,
            timeout: Duration::from_secs(10),
            max_redirects: 3,
        }
    }
}

impl FetchPolicy {
    /// `Err(rule)` when `addr` may not be connected to: forbidden by `rule` and not inside
    /// the allow-list. An IPv4-mapped IPv6 address is the IPv4 address it maps (the socket
    /// reaches exactly that host), so the allow-list sees it as such.
    pub(crate) fn check(&self, addr: IpAddr) -> Result<(), &'static str> {
        let addr = addr.to_canonical();
        if self.allow.iter().any(|net| net.contains(addr)) {
            return Ok(());
        }
        forbidden_rule(addr).map_or(Ok(()), Err)
    }
}

/// An IP network in CIDR form (`10.0.0.0/8`, `::1/128`); a bare address is the network of
/// that one address. Host bits must be zero, so `10.0.0.1/8` is refused rather than read
/// as either of the two things it might mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    const fn v4(o: [u8; 4], prefix: u8) -> Self {
        IpNet {
            addr: IpAddr::V4(Ipv4Addr::new(o[0], o[1], o[2], o[3])),
            prefix,
        }
    }

    const fn v6(s: [u16; 8], prefix: u8) -> Self {
        IpNet {
            addr: IpAddr::V6(Ipv6Addr::new(
                s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7],
            )),
            prefix,
        }
    }

    /// Whether `ip` is inside (an IPv4 network never contains an IPv6 address, nor the
    /// other way round).
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                u32::from(ip) & mask32(self.prefix) == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                u128::from(ip) & mask128(self.prefix) == u128::from(net)
            }
            _ => false,
        }
    }

    /// Whether the host bits are zero (the parser's invariant; the tables' too).
    pub(super) fn is_canonical(&self) -> bool {
        match self.addr {
            IpAddr::V4(a) => self.prefix <= 32 && u32::from(a) & !mask32(self.prefix) == 0,
            IpAddr::V6(a) => self.prefix <= 128 && u128::from(a) & !mask128(self.prefix) == 0,
        }
    }
}

fn mask32(prefix: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(prefix.min(32)))
        .unwrap_or(0)
}

fn mask128(prefix: u8) -> u128 {
    u128::MAX
        .checked_shl(128 - u32::from(prefix.min(128)))
        .unwrap_or(0)
}

impl FromStr for IpNet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{addr}` is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => parse_prefix(p, max)?,
        };
        let net = IpNet { addr, prefix };
        if !net.is_canonical() {
            return Err(format!("{s} has host bits set"));
        }
        Ok(net)
    }
}

/// A prefix length: decimal digits only (no sign, no blanks), at most `max`.
fn parse_prefix(p: &str, max: u8) -> Result<u8, String> {
    if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("`{p}` is not a prefix length"));
    }
    p.parse::<u8>()
        .ok()
        .filter(|&n| n <= max)
        .ok_or_else(|| format!("prefix length /{p} is out of range (at most /{max})"))
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A comma-separated list of CIDR networks (`127.0.0.1/32, 10.0.0.0/8, ::1/128`); blanks
/// around entries and empty entries are ignored, so `""` is the empty list.
pub(crate) fn parse_allow_list(s: &str) -> Result<Vec<IpNet>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            entry
                .parse()
                .map_err(|why| format!("allow-list entry `{entry}`: {why}"))
        })
        .collect()
}

const METADATA: &str = "cloud metadata service";
const LOOPBACK: &str = "loopback";
const PRIVATE: &str = "private network";
const LINK_LOCAL: &str = "link-local";
const UNSPECIFIED: &str = "unspecified address";
const MULTICAST: &str = "multicast";
const DOCUMENTATION: &str = "documentation range";
const BENCHMARKING: &str = "benchmarking range";
const RESERVED: &str = "reserved range";

/// Forbidden IPv4 networks. The first match names the rule, so the single addresses of
/// metadata services come before the ranges that contain them.
const V4_RULES: &[(IpNet, &str)] = &[
    // AWS, GCP, Azure (IMDS), OpenStack, DigitalOcean, …
    (IpNet::v4([169, 254, 169, 254], 32), METADATA),
    // Alibaba Cloud.
    (IpNet::v4([100, 100, 100, 200], 32), METADATA),
    // Azure's WireServer: a public address that only Azure hosts reach.
    (IpNet::v4([168, 63, 129, 16], 32), METADATA),
    // Oracle Cloud (inside 192.0.0.0/24 anyway).
    (IpNet::v4([192, 0, 0, 192], 32), METADATA),
    (IpNet::v4([255, 255, 255, 255], 32), "broadcast"),
    (IpNet::v4([0, 0, 0, 0], 8), UNSPECIFIED),
    (IpNet::v4([127, 0, 0, 0], 8), LOOPBACK),
    (IpNet::v4([10, 0, 0, 0], 8), PRIVATE),
    (IpNet::v4([172, 16, 0, 0], 12), PRIVATE),
    (IpNet::v4([192, 168, 0, 0], 16), PRIVATE),
    (IpNet::v4([169, 254, 0, 0], 16), LINK_LOCAL),
    (
        IpNet::v4([100, 64, 0, 0], 10),
        "shared address space (CGNAT)",
    ),
    (IpNet::v4([192, 0, 0, 0], 24), "IETF protocol assignments"),
    (IpNet::v4([192, 0, 2, 0], 24), DOCUMENTATION),
    (IpNet::v4([198, 51, 100, 0], 24), DOCUMENTATION),
    (IpNet::v4([203, 0, 113, 0], 24), DOCUMENTATION),
    (IpNet::v4([198, 18, 0, 0], 15), BENCHMARKING),
    (IpNet::v4([192, 88, 99, 0], 24), "6to4 relay anycast"),
    (IpNet::v4([224, 0, 0, 0], 4), MULTICAST),
    (IpNet::v4([240, 0, 0, 0], 4), RESERVED),
];

/// Forbidden IPv6 networks, checked before the embedded IPv4 address (if any).
const V6_RULES: &[(IpNet, &str)] = &[
    // AWS IMDS over IPv6 (inside fc00::/7).
    (
        IpNet::v6([0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254], 128),
        METADATA,
    ),
    (IpNet::v6([0, 0, 0, 0, 0, 0, 0, 0], 128), UNSPECIFIED),
    (IpNet::v6([0, 0, 0, 0, 0, 0, 0, 1], 128), LOOPBACK),
    (
        IpNet::v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7),
        "unique-local (private)",
    ),
    (IpNet::v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10), LINK_LOCAL),
    (IpNet::v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10), "site-local"),
    (IpNet::v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8), MULTICAST),
    (
        IpNet::v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32),
        DOCUMENTATION,
    ),
    (IpNet::v6([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20), DOCUMENTATION),
    (IpNet::v6([0x2001, 0x2, 0, 0, 0, 0, 0, 0], 48), BENCHMARKING),
    (IpNet::v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64), "discard-only"),
    // Local-use NAT64 (RFC 8215): where the IPv4 address sits depends on the site.
    (
        IpNet::v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48),
        "local-use NAT64",
    ),
];

/// IPv6 forms whose last 32 bits are an IPv4 address the packet ends up at (or, for the
/// deprecated IPv4-compatible form, that a host may still route to).
const EMBEDS_V4_LOW: &[IpNet] = &[
    IpNet::v6([0, 0, 0, 0, 0, 0xffff, 0, 0], 96), // IPv4-mapped
    IpNet::v6([0, 0, 0, 0, 0xffff, 0, 0, 0], 96), // IPv4-translated (SIIT)
    IpNet::v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96), // NAT64 well-known prefix
    IpNet::v6([0, 0, 0, 0, 0, 0, 0, 0], 96),      // IPv4-compatible (deprecated)
];
const SIX_TO_FOUR: IpNet = IpNet::v6([0x2002, 0, 0, 0, 0, 0, 0, 0], 16);
const TEREDO: IpNet = IpNet::v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 32);

/// The rule forbidding `addr`, whatever the allow-list says; `None` for a public address.
pub(super) fn forbidden_rule(addr: IpAddr) -> Option<&'static str> {
    match addr.to_canonical() {
        IpAddr::V4(v4) => first_match(V4_RULES, IpAddr::V4(v4)),
        IpAddr::V6(v6) => first_match(V6_RULES, IpAddr::V6(v6))
            .or_else(|| embedded_v4(v6).into_iter().flatten().find_map(v4_rule)),
    }
}

fn v4_rule(v4: Ipv4Addr) -> Option<&'static str> {
    first_match(V4_RULES, IpAddr::V4(v4))
}

fn first_match(rules: &[(IpNet, &'static str)], ip: IpAddr) -> Option<&'static str> {
    rules
        .iter()
        .find(|(net, _)| net.contains(ip))
        .map(|&(_, rule)| rule)
}

/// The IPv4 addresses an IPv6 address carries: the last 32 bits of the mapped, translated,
/// NAT64 and compatible forms; bits 16–48 of 6to4 (`2002:AABB:CCDD::`); the server (bits
/// 32–64) and the obfuscated client (last 32 bits, inverted) of Teredo.
fn embedded_v4(v6: Ipv6Addr) -> [Option<Ipv4Addr>; 2] {
    let bits = u128::from(v6);
    let ip = IpAddr::V6(v6);
    if EMBEDS_V4_LOW.iter().any(|net| net.contains(ip)) {
        [Some(Ipv4Addr::from(bits as u32)), None]
    } else if SIX_TO_FOUR.contains(ip) {
        [Some(Ipv4Addr::from((bits >> 80) as u32)), None]
    } else if TEREDO.contains(ip) {
        [
            Some(Ipv4Addr::from((bits >> 64) as u32)),
            Some(Ipv4Addr::from(!(bits as u32))),
        ]
    } else {
        [None, None]
    }
}

/// Every table entry, for the test that they are all canonical networks.
#[cfg(test)]
pub(super) fn all_rules() -> impl Iterator<Item = IpNet> {
    V4_RULES
        .iter()
        .chain(V6_RULES)
        .map(|&(net, _)| net)
        .chain(EMBEDS_V4_LOW.iter().copied())
        .chain([SIX_TO_FOUR, TEREDO])
}
