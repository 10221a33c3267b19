//! The Redis section: `REDIS_URL` and the `REDIS_*` settings that say how to reach it — a
//! single server, a Cluster (`REDIS_CLUSTER`) or a master found through Sentinel
//! (`REDIS_SENTINEL_MASTER`), over TLS (`rediss://`, `REDIS_CA_FILE`) or not. Passwords are
//! `Secret`s: they never print.

use std::time::Duration;

use super::source::Reader;
use super::Secret;
use crate::common::percent_decode;

/// Parsed `redis[s]://[[user]:password@]host[:port][,host[:port]…][/db]` (the password
/// never prints). The user and password are percent-decoded, as in any URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisUrl {
    /// `rediss://`: TLS to every node.
    pub tls: bool,
    /// At least one. Several are the Cluster's seed nodes or the sentinels.
    pub hosts: Vec<(String, u16)>,
    pub db: u8,
    pub username: Option<String>,
    pub password: Option<Secret>,
}

impl RedisUrl {
    pub fn parse(url: &str) -> Result<Self, String> {
        let (tls, rest) = match (url.strip_prefix("redis://"), url.strip_prefix("rediss://")) {
            (Some(rest), _) => (false, rest),
            (_, Some(rest)) => (true, rest),
            _ => return Err("REDIS_URL must start with redis:// (or rediss:// for TLS)".to_owned()),
        };
        let (auth, hostpart) = match rest.rsplit_once('@') {
            Some((a, h)) => (Some(a), h),
            None => (None, rest),
        };
        let (hostlist, db) = match hostpart.split_once('/') {
            Some((h, d)) if !d.is_empty() => (
                h,
                d.parse()
                    .map_err(|_| format!("REDIS_URL database `{d}` is not a number (0-255)"))?,
            ),
            Some((h, _)) => (h, 0),
            None => (hostpart, 0),
        };
        let hosts = hostlist
            .split(',')
            .map(parse_host_port)
            .collect::<Result<Vec<_>, _>>()?;
        let text = |s: &str| String::from_utf8_lossy(&percent_decode(s)).into_owned();
        let (username, password) = match auth {
            None => (None, None),
            Some(a) => match a.split_once(':') {
                Some((u, p)) => ((!u.is_empty()).then(|| text(u)), Some(Secret::new(text(p)))),
                None => (None, Some(Secret::new(text(a)))),
            },
        };
        Ok(Self {
            tls,
            hosts,
            db,
            username,
            password,
        })
    }
}

/// `host[:port]`, `[v6]:port`; the port defaults to 6379.
fn parse_host_port(hostport: &str) -> Result<(String, u16), String> {
    let (host, port) = match hostport.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((h, "")) => (h, 6379),
            Some((h, p)) => (
                h,
                p.strip_prefix(':')
                    .and_then(|p| p.parse().ok())
                    .ok_or_else(|| format!("REDIS_URL port in `{hostport}` is not a number"))?,
            ),
            None => return Err(format!("REDIS_URL host `{hostport}` lacks its `]`")),
        },
        None => match hostport.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse()
                    .map_err(|_| format!("REDIS_URL port `{p}` is not a number"))?,
            ),
            None => (hostport, 6379),
        },
    };
    if host.is_empty() {
        return Err("REDIS_URL has an empty host".to_owned());
    }
    Ok((host.to_owned(), port))
}

/// How the nodes of `REDIS_URL` are used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisMode {
    /// One server (or a proxy in front of several, as a managed service's endpoint).
    Single,
    /// `REDIS_CLUSTER=true`: the hosts are seed nodes; the rest is discovered.
    Cluster,
    /// `REDIS_SENTINEL_MASTER=name`: the hosts are sentinels, asked for the master of that
    /// name at every (re)connection, so a failover is followed.
    Sentinel {
        master: String,
        /// The sentinels' own credentials (`REDIS_SENTINEL_USERNAME`,
        /// `REDIS_SENTINEL_PASSWORD`); those of the URL are the master's.
        username: Option<String>,
        password: Option<Secret>,
    },
}

/// Everything the Redis client needs.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    pub url: RedisUrl,
    pub mode: RedisMode,
    /// `REDIS_CA_FILE`: PEM certificates to trust for `rediss://` instead of the system's
    /// roots (a private CA), read and checked at start.
    pub ca_pem: Option<Vec<u8>>,
    /// `REDIS_TIMEOUT`: the longest one command may take, waiting for a reconnection
    /// included; past it the caller goes on with local state.
    pub timeout: Duration,
}

impl RedisConfig {
    /// The section, or `None` without `REDIS_URL` (the other settings are then ignored,
    /// but still checked).
    pub(super) fn read(r: &mut Reader) -> Option<Self> {
        let url = r.parse_with("REDIS_URL", |v| RedisUrl::parse(v).map(Some), None);
        let cluster = r.bool("REDIS_CLUSTER", false);
        let master = r.raw("REDIS_SENTINEL_MASTER");
        let sentinel_username = r.raw("REDIS_SENTINEL_USERNAME");
        let sentinel_password = r.raw("REDIS_SENTINEL_PASSWORD").map(Secret::new);
        let timeout = r.millis("REDIS_TIMEOUT", 500, false);
        let ca_pem = r.raw("REDIS_CA_FILE").and_then(|path| read_ca(r, &path));
        let url = url?;
        let mode = match (cluster, master) {
            (true, Some(_)) => {
                r.error("REDIS_CLUSTER and REDIS_SENTINEL_MASTER exclude each other");
                RedisMode::Single
            }
            (true, None) => RedisMode::Cluster,
            (false, Some(master)) => RedisMode::Sentinel {
                master,
                username: sentinel_username,
                password: sentinel_password,
            },
            (false, None) => RedisMode::Single,
        };
        if mode == RedisMode::Single && url.hosts.len() > 1 {
            r.error(
                "REDIS_URL names several hosts: set REDIS_CLUSTER=true (Cluster seed nodes) or \
                 REDIS_SENTINEL_MASTER (the hosts are sentinels)",
            );
        }
        if mode == RedisMode::Cluster && url.db != 0 {
            r.error("REDIS_URL selects a database, which a Redis Cluster does not have (only 0)");
        }
        if ca_pem.is_some() && !url.tls {
            r.error("REDIS_CA_FILE is set but REDIS_URL is not rediss:// (TLS)");
        }
        Some(RedisConfig {
            url,
            mode,
            ca_pem,
            timeout,
        })
    }
}

/// The CA file's bytes, if it holds at least one PEM certificate (else the problem is
/// reported).
fn read_ca(r: &mut Reader, path: &str) -> Option<Vec<u8>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let pem = match std::fs::read(path) {
        Ok(pem) => pem,
        Err(e) => {
            r.error(format!("REDIS_CA_FILE={path:?}: {e}"));
            return None;
        }
    };
    let certs = CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>();
    match certs {
        Ok(certs) if !certs.is_empty() => Some(pem),
        Ok(_) => {
            r.error(format!("REDIS_CA_FILE={path:?} holds no PEM certificate"));
            None
        }
        Err(e) => {
            r.error(format!("REDIS_CA_FILE={path:?} is not PEM: {e}"));
            None
        }
    }
}
