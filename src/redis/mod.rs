//! Redis, for state shared by several instances: the client (`RedisClient`, over the `fred`
//! crate), the session store (`sessions`) and the rate-limit buckets (`rate_limit`); the
//! chats made ahead (`chat_pool::redis`), account
//! state and tokens (`accounts::shared`) and usage accounting (`usage::redis`) use the same
//! client.
//!
//! **Why `fred`.** It keeps one multiplexed connection per node that reconnects by itself
//! as soon as the socket closes (its reader sees the end, not the next command) and replays
//! the commands that were waiting on it, each within its own timeout: after a Redis restart
//! the first command is not lost on a dead connection. Its Sentinel mode asks the sentinels
//! for the master at every reconnection, so a failover is followed without code of ours;
//! Cluster routing (slots, `MOVED`/`ASK`) and TLS through rustls with ring — the crypto
//! provider the proxy already uses — come with it. The `redis` crate's `ConnectionManager`
//! hands the first command after a drop its error and reconnects only then, and does not
//! work over Sentinel (its `SentinelClient` gives one connection and no failover); it also
//! needs Rust 1.88, above this crate's 1.80. Scripts are pipelined with the rest: 5,000
//! rate-limit scripts at once through a relay adding 0.5 ms of round trip took 0.38 s
//! (one connection; one at a time would be 2.5 s at least).
//!
//! **Deployments** (`config::RedisConfig`): one server (`redis://`, `rediss://` for TLS with
//! the system's roots or `REDIS_CA_FILE`; an ACL user and password in the URL), a Cluster
//! (`REDIS_CLUSTER=true`, the URL's hosts are seed nodes) or Sentinel
//! (`REDIS_SENTINEL_MASTER`, the URL's hosts are sentinels). Every command has
//! `REDIS_TIMEOUT` (a wait for a reconnection included); once one failed while the client
//! was not connected, the others fail at once until it has reconnected (`away`). A caller
//! whose command fails goes on with local state (see `sessions`, `rate_limit`,
//! `accounts::shared`).
//!
//! **Key layout** (prefix `qp:`). Every script names its keys in `KEYS`, and keys one
//! operation uses together share a hash tag (`{…}`), so each lands in one Cluster slot
//! (`eval` refuses keys of several slots before sending):
//!
//! | key | holds | expiry |
//! |---|---|---|
//! | `qp:s:<conversation key>` | a session (JSON) | `SESSION_TIMEOUT`, renewed on use |
//! | `qp:lock:<chat_id>` | the chat's lock: its owner's token | the lock's TTL, renewed while held |
//! | `qp:chats` | sorted set chat id → last use (ms), for `CHAT_CLEANUP=delete` | none |
//! | `qp:rl:<client>` | a rate-limit bucket (hash: tokens, ts) | until full again |
//! | `qp:acct:{<name>}:health` | an account's state, newest wins | a week |
//! | `qp:acct:{<name>}:operator` | an operator's disable or enable, newest wins | none |
//! | `qp:acct:{<name>}:token` | an account's token | as long as its refresh token lives |
//! | `qp:acct:{<name>}:renewing` | the renewal lock (with the token it guards, one slot) | 120 s |
//! | `qp:acct:{<name>}:pool:<chat type>:<model>` | chats made ahead (list of `<made ms> <id>`, oldest first; `chat_pool::redis`) | taken out when expired |
//! | `qp:pools` | set of every pool filled (`<name>\t<chat type>\t<model>`), for the expiry sweep | none |
//! | `qp:usage:{<YYYY-MM-DD>}` | a day's usage, summed over instances (hash `<account>\t<key>\t<model>\t<counter>` → count; `usage::redis`) | `USAGE_DAYS` + 1 days after its last write |
//!
//! The account keys were `qp:acct:<name>:…` before the tag; the token and an operator's
//! disable are still read from there when the new key is missing, so an upgrade spends no
//! refresh token and keeps what operators disabled.

pub mod rate_limit;
pub mod sessions;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fred::clients::Client;
use fred::interfaces::{ClientLike, KeysInterface, SortedSetsInterface};
use fred::prelude::{ReconnectPolicy, ServerConfig};
use fred::types::config::{
    ConnectionConfig, PerformanceConfig, ReconnectError, Server, TcpConfig, TlsConfig,
    TlsHostMapping, UnresponsiveConfig,
};
use fred::types::{ClusterHash, CustomCommand, Expiration, FromValue, Value};

use crate::config::{RedisConfig, RedisMode};

/// A failed Redis operation (unreachable, timed out, or an error reply). Never carries a
/// password: fred's errors name the kind and the server's message only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisError(pub String);

impl std::fmt::Display for RedisError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "redis: {}", self.0)
    }
}

impl std::error::Error for RedisError {}

impl From<fred::error::Error> for RedisError {
    fn from(e: fred::error::Error) -> Self {
        RedisError(e.to_string())
    }
}

/// The one Redis client of an instance: every caller shares it (commands are pipelined on
/// one connection per node).
pub struct RedisClient {
    client: Client,
    /// What it connects to, for logs: the mode and hosts, never a credential.
    target: String,
    /// Connecting spawns fred's tasks, which needs a runtime: started at construction when
    /// there is one, else by the first command.
    started: AtomicBool,
    /// A command failed while the client was not connected: Redis is away. Until fred has
    /// reconnected, commands fail at once instead of each waiting `REDIS_TIMEOUT` in fred's
    /// queue (a request would pay that wait for every command, and the queue would grow
    /// with the traffic). A command issued while the client reconnects *before* any failed
    /// — right after a restart — still waits for the new connection.
    away: AtomicBool,
}

impl std::fmt::Debug for RedisClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RedisClient({})", self.target)
    }
}

impl RedisClient {
    pub fn new(config: &RedisConfig) -> Self {
        let url = &config.url;
        let hosts: Vec<Server> = url
            .hosts
            .iter()
            .map(|(host, port)| Server::new(host.as_str(), *port))
            .collect();
        let (server, mode) = match &config.mode {
            RedisMode::Single => (
                ServerConfig::Centralized {
                    server: hosts
                        .first()
                        .cloned()
                        .unwrap_or_else(|| Server::new("localhost", 6379)),
                },
                "single".to_owned(),
            ),
            RedisMode::Cluster => (
                ServerConfig::Clustered {
                    hosts,
                    policy: Default::default(),
                },
                "cluster".to_owned(),
            ),
            RedisMode::Sentinel {
                master,
                username,
                password,
            } => (
                ServerConfig::Sentinel {
                    hosts,
                    service_name: master.clone(),
                    username: username.clone(),
                    password: password.as_ref().map(|p| p.expose().to_owned()),
                },
                format!("sentinel master {master:?} via"),
            ),
        };
        let target = format!(
            "{}{mode} {}{}",
            if url.tls { "tls " } else { "" },
            url.hosts
                .iter()
                .map(|(h, p)| format!("{h}:{p}"))
                .collect::<Vec<_>>()
                .join(","),
            if url.db != 0 {
                format!(" db {}", url.db)
            } else {
                String::new()
            },
        );
        let tls = url.tls.then(|| TlsConfig {
            connector: tls_client_config(config.ca_pem.as_deref()).into(),
            // A Cluster over TLS announces its nodes by address; certificates name hosts.
            hostnames: if config.mode == RedisMode::Cluster {
                TlsHostMapping::DefaultHost
            } else {
                TlsHostMapping::None
            },
        });
        let fred_config = fred::types::config::Config {
            // An instance that starts while Redis is away keeps trying, like after a drop.
            fail_fast: false,
            username: url.username.clone(),
            password: url.password.as_ref().map(|p| p.expose().to_owned()),
            server,
            database: (url.db != 0).then_some(url.db),
            tls,
            ..Default::default()
        };
        let timeout = config.timeout;
        let performance = PerformanceConfig {
            default_command_timeout: timeout,
            ..Default::default()
        };
        let connection = ConnectionConfig {
            connection_timeout: Duration::from_secs(5).max(timeout),
            internal_command_timeout: Duration::from_secs(5).max(timeout),
            // A connection that stops answering without closing (a half-open socket after
            // a network fault or a managed failover) is replaced, not waited on forever.
            unresponsive: UnresponsiveConfig {
                max_timeout: Some(Duration::from_secs(2).max(timeout * 4)),
                interval: Duration::from_millis(500),
            },
            tcp: TcpConfig {
                nodelay: Some(true),
                ..Default::default()
            },
            // A node that turned replica (a failover), is loading or lost its master:
            // reconnect, which asks the sentinels or the cluster again.
            reconnect_errors: vec![
                ReconnectError::ClusterDown,
                ReconnectError::Loading,
                ReconnectError::ReadOnly,
                ReconnectError::MasterDown,
            ],
            ..Default::default()
        };
        // Forever (0 attempts = no limit), from 50 ms up to 1 s apart: Redis is used again
        // within a second of its return.
        let policy = ReconnectPolicy::new_exponential(0, 50, 1_000, 2);
        let client = Client::new(
            fred_config,
            Some(performance),
            Some(connection),
            Some(policy),
        );
        let redis = RedisClient {
            client,
            target,
            started: AtomicBool::new(false),
            away: AtomicBool::new(false),
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            redis.start();
        }
        redis
    }

    /// Where it connects (mode and hosts; no credential).
    pub fn target(&self) -> &str {
        &self.target
    }

    fn start(&self) {
        if !self.started.swap(true, Ordering::AcqRel) {
            tracing::info!(redis = %self.target, "connecting to Redis");
            // Detached: the task ends only on `quit` (the policy retries forever).
            drop(self.client.connect());
        }
    }

    /// The client to send a command with, unless Redis is known to be away.
    fn ready(&self) -> Result<&Client, RedisError> {
        self.start();
        if self.away.load(Ordering::Relaxed) && !self.client.is_connected() {
            return Err(RedisError("unreachable (reconnecting)".to_owned()));
        }
        Ok(&self.client)
    }

    /// A command's result: a failure while not connected marks Redis away, a success
    /// clears it.
    fn outcome<T>(&self, r: Result<T, fred::error::Error>) -> Result<T, RedisError> {
        match &r {
            Ok(_) => self.away.store(false, Ordering::Relaxed),
            Err(_) if !self.client.is_connected() => self.away.store(true, Ordering::Relaxed),
            Err(_) => {}
        }
        Ok(r?)
    }

    /// `GET key`.
    pub async fn get(&self, key: &str) -> Result<Option<String>, RedisError> {
        let r = self.ready()?.get(key).await;
        self.outcome(r)
    }

    /// `GETEX key PX ttl`: the value, its expiry renewed (fred has no `getex` of its own).
    pub async fn get_ex(&self, key: &str, ttl: Duration) -> Result<Option<String>, RedisError> {
        let cmd = CustomCommand::new_static("GETEX", ClusterHash::FirstKey, false);
        let args: Vec<Value> = vec![key.into(), "PX".into(), Value::Integer(millis(ttl))];
        let r = self.ready()?.custom(cmd, args).await;
        self.outcome(r)
    }

    /// `SET key value [PX ttl]`.
    pub async fn set(
        &self,
        key: &str,
        value: &str,
        ttl: Option<Duration>,
    ) -> Result<(), RedisError> {
        let expire = ttl.map(|t| Expiration::PX(millis(t)));
        let r: Result<Value, _> = self.ready()?.set(key, value, expire, None, false).await;
        self.outcome(r).map(drop)
    }

    /// `DEL key`.
    pub async fn del(&self, key: &str) -> Result<(), RedisError> {
        let r: Result<i64, _> = self.ready()?.del(key).await;
        self.outcome(r).map(drop)
    }

    /// `ZADD key score member`.
    pub async fn zadd(&self, key: &str, score: f64, member: &str) -> Result<(), RedisError> {
        let r: Result<i64, _> = self
            .ready()?
            .zadd(key, None, None, false, false, (score, member))
            .await;
        self.outcome(r).map(drop)
    }

    /// `PING` (whether Redis answers).
    pub async fn ping(&self) -> Result<(), RedisError> {
        let r: Result<Value, _> = self.ready()?.ping(None).await;
        self.outcome(r).map(drop)
    }

    /// `EVAL script keys args`. The keys must share a Cluster slot (one hash tag): keys of
    /// several slots are refused here, whatever the deployment, before anything is sent (a
    /// layout that works on one server and fails on a Cluster is caught by every test).
    ///
    /// Sent as a plain command routed by the slot computed here, not through fred's `eval`:
    /// on a Cluster that one looks the slot's node up in its routing table when called, and
    /// fails ("Missing cluster routing state") before the first connection has loaded it,
    /// where any other command waits for the connection.
    pub async fn eval<R: FromValue>(
        &self,
        script: &str,
        keys: &[&str],
        args: &[&str],
    ) -> Result<R, RedisError> {
        let hash = match keys.split_first() {
            None => ClusterHash::Random,
            Some((first, rest)) => {
                let slot = fred::util::redis_keyslot(first.as_bytes());
                if rest
                    .iter()
                    .any(|k| fred::util::redis_keyslot(k.as_bytes()) != slot)
                {
                    return Err(RedisError(format!(
                        "a script's keys must share a hash tag (one slot): {keys:?}"
                    )));
                }
                ClusterHash::Custom(slot)
            }
        };
        let mut argv: Vec<Value> = Vec::with_capacity(2 + keys.len() + args.len());
        argv.push(script.into());
        argv.push(Value::Integer(keys.len() as i64));
        argv.extend(keys.iter().map(|&k| Value::from(k)));
        argv.extend(args.iter().map(|&a| Value::from(a)));
        let cmd = CustomCommand::new_static("EVAL", hash, false);
        let r = self.ready()?.custom(cmd, argv).await;
        self.outcome(r)
    }
}

impl Drop for RedisClient {
    /// Close the connections and stop reconnecting (an app built and dropped, as tests do,
    /// must not leave a task retrying a Redis that went away).
    fn drop(&mut self) {
        if !self.started.load(Ordering::Acquire) {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let client = self.client.clone();
            runtime.spawn(async move {
                let _ = client.quit().await;
            });
        }
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX).max(1)
}

/// rustls with ring (the provider the proxy uses for the upstream), trusting the PEM
/// certificates of `REDIS_CA_FILE` when given, else the system's roots — or the bundled
/// Mozilla roots on a system without any (a slim container).
fn tls_client_config(ca_pem: Option<&[u8]>) -> rustls::ClientConfig {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    match ca_pem {
        Some(pem) => {
            // Checked when the configuration was read.
            let certs = CertificateDer::pem_slice_iter(pem).filter_map(Result::ok);
            let (added, ignored) = roots.add_parsable_certificates(certs);
            if ignored > 0 || added == 0 {
                tracing::warn!(
                    added,
                    ignored,
                    "REDIS_CA_FILE: some certificates are unusable"
                );
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
            if roots.is_empty() {
                roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            }
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    // ring has every safe version; the process's provider (ring too) otherwise.
    .unwrap_or_else(|_| rustls::ClientConfig::builder());
    builder.with_root_certificates(roots).with_no_client_auth()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RedisUrl;

    /// Keys of several slots would fail on a Cluster (`CROSSSLOT`), and only there: they
    /// are refused everywhere, before anything is sent.
    #[test]
    fn a_script_over_several_slots_is_refused() {
        let client = RedisClient::new(&RedisConfig {
            url: RedisUrl::parse("redis://127.0.0.1:1").unwrap_or_else(|e| panic!("{e}")),
            mode: RedisMode::Single,
            ca_pem: None,
            timeout: Duration::from_millis(100),
        });
        let refused =
            futures::executor::block_on(client.eval::<i64>("return 1", &["qp:a", "qp:b"], &[]));
        assert!(
            refused.is_err_and(|e| e.0.contains("hash tag")),
            "keys of two slots"
        );
    }
}
