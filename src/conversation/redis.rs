//! A small Redis client (RESP2 over TCP, a pool of connections, per-command timeouts) and the
//! Redis [`SessionStore`]. Only what the proxy needs: strings with expiry, an owner-checked
//! lock release, a sorted set of chat last-use times, and scripts.
//!
//! Keys (prefix `qp:`): `qp:s:<conversation key>` → session JSON (PX = `SESSION_TIMEOUT`,
//! refreshed on use); `qp:lock:<chat_id>` → owner token (SET NX PX); `qp:chats` → sorted set
//! chat_id → last use (ms), for `CHAT_CLEANUP=delete`; `qp:rl:<client>` → rate-limit bucket.

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufStream};
use tokio::net::TcpStream;

use super::store::{BoxFuture, Session, SessionStore, StoreError};

/// Parsed `redis://[[user]:password@]host[:port][/db]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisUrl {
    pub host: String,
    pub port: u16,
    pub db: u32,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl RedisUrl {
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url.strip_prefix("redis://").ok_or_else(|| {
            "REDIS_URL must start with redis:// (TLS rediss:// is not supported yet)".to_owned()
        })?;
        let (auth, hostpart) = match rest.rsplit_once('@') {
            Some((a, h)) => (Some(a), h),
            None => (None, rest),
        };
        let (hostport, db) = match hostpart.split_once('/') {
            Some((h, d)) if !d.is_empty() => (
                h,
                d.parse()
                    .map_err(|_| format!("REDIS_URL database `{d}` is not a number"))?,
            ),
            Some((h, _)) => (h, 0),
            None => (hostpart, 0),
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse()
                    .map_err(|_| format!("REDIS_URL port `{p}` is not a number"))?,
            ),
            None => (hostport, 6379),
        };
        if host.is_empty() {
            return Err("REDIS_URL has no host".to_owned());
        }
        let (username, password) = match auth {
            None => (None, None),
            Some(a) => match a.split_once(':') {
                Some((u, p)) => ((!u.is_empty()).then(|| u.to_owned()), Some(p.to_owned())),
                None => (None, Some(a.to_owned())),
            },
        };
        Ok(Self {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port,
            db,
            username,
            password,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

impl Reply {
    fn into_string(self) -> Option<String> {
        match self {
            Reply::Simple(s) => Some(s),
            Reply::Bulk(Some(b)) => String::from_utf8(b).ok(),
            _ => None,
        }
    }
}

type Conn = BufStream<TcpStream>;

pub struct RedisClient {
    url: RedisUrl,
    pool: Mutex<Vec<Conn>>,
    timeout: Duration,
}

impl std::fmt::Debug for RedisClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RedisClient({}:{})", self.url.host, self.url.port)
    }
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(format!("redis: {e}"))
}

impl RedisClient {
    pub fn new(url: RedisUrl) -> Self {
        Self {
            url,
            pool: Mutex::new(Vec::new()),
            timeout: Duration::from_millis(500),
        }
    }

    async fn connect(&self) -> Result<Conn, StoreError> {
        let tcp = TcpStream::connect((self.url.host.as_str(), self.url.port))
            .await
            .map_err(err)?;
        let _ = tcp.set_nodelay(true);
        let mut conn = BufStream::new(tcp);
        if let Some(pw) = &self.url.password {
            let mut args: Vec<&[u8]> = vec![b"AUTH"];
            if let Some(u) = &self.url.username {
                args.push(u.as_bytes());
            }
            args.push(pw.as_bytes());
            expect_ok(roundtrip(&mut conn, &args).await?)?;
        }
        if self.url.db != 0 {
            let db = self.url.db.to_string();
            expect_ok(roundtrip(&mut conn, &[b"SELECT", db.as_bytes()]).await?)?;
        }
        Ok(conn)
    }

    /// Run one command on a pooled connection, within the timeout.
    pub async fn cmd(&self, args: &[&[u8]]) -> Result<Reply, StoreError> {
        let pooled = self.pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let work = async {
            let mut conn = match pooled {
                Some(c) => c,
                None => self.connect().await?,
            };
            let reply = roundtrip(&mut conn, args).await?;
            // Only a connection that completed its exchange goes back to the pool.
            let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
            if pool.len() < 32 {
                pool.push(conn);
            }
            Ok(reply)
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(Ok(Reply::Error(e))) => Err(err(e)),
            Ok(r) => r,
            Err(_) => Err(err("timed out")),
        }
    }
}

fn expect_ok(r: Reply) -> Result<(), StoreError> {
    match r {
        Reply::Simple(_) => Ok(()),
        Reply::Error(e) => Err(err(e)),
        other => Err(err(format!("unexpected reply {other:?}"))),
    }
}

async fn roundtrip(conn: &mut Conn, args: &[&[u8]]) -> Result<Reply, StoreError> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    conn.write_all(&out).await.map_err(err)?;
    conn.flush().await.map_err(err)?;
    read_reply(conn).await
}

fn read_reply(conn: &mut Conn) -> BoxFuture<'_, Result<Reply, StoreError>> {
    Box::pin(async move {
        let mut line = Vec::new();
        let n = conn.read_until(b'\n', &mut line).await.map_err(err)?;
        if n < 3 || !line.ends_with(b"\r\n") {
            return Err(err("connection closed"));
        }
        let body = std::str::from_utf8(&line[1..line.len() - 2]).map_err(err)?;
        let num = || body.parse::<i64>().map_err(err);
        Ok(match line[0] {
            b'+' => Reply::Simple(body.to_owned()),
            b'-' => Reply::Error(body.to_owned()),
            b':' => Reply::Int(num()?),
            b'$' => match num()? {
                -1 => Reply::Bulk(None),
                len if (0..=64 << 20).contains(&len) => {
                    let mut buf = vec![0; len as usize + 2];
                    conn.read_exact(&mut buf).await.map_err(err)?;
                    buf.truncate(len as usize);
                    Reply::Bulk(Some(buf))
                }
                len => return Err(err(format!("bulk length {len}"))),
            },
            b'*' => match num()? {
                -1 => Reply::Array(None),
                len if (0..=1 << 20).contains(&len) => {
                    let mut items = Vec::with_capacity(len as usize);
                    for _ in 0..len {
                        items.push(read_reply(conn).await?);
                    }
                    Reply::Array(Some(items))
                }
                len => return Err(err(format!("array length {len}"))),
            },
            other => return Err(err(format!("unknown reply type {}", other as char))),
        })
    })
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Sessions, locks and chat last-use times in Redis.
#[derive(Debug)]
pub struct RedisStore {
    client: std::sync::Arc<RedisClient>,
    ttl: Duration,
}

/// Take the lock if free, or extend it if `owner` already holds it (renewal).
const LOCK: &str = "local v = redis.call('get', KEYS[1]) \
    if v == false then return redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2]) \
    elseif v == ARGV[1] then redis.call('pexpire', KEYS[1], ARGV[2]) return redis.status_reply('OK') \
    else return false end";
const UNLOCK: &str = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";
const TAKE_IDLE: &str =
    "local c = redis.call('zrangebyscore', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 100) \
    if #c > 0 then redis.call('zrem', KEYS[1], unpack(c)) end return c";

impl RedisStore {
    pub fn new(client: std::sync::Arc<RedisClient>, ttl: Duration) -> Self {
        Self { client, ttl }
    }

    async fn touch_chat(&self, chat_id: &str) -> Result<(), StoreError> {
        let now = now_ms().to_string();
        self.client
            .cmd(&[b"ZADD", b"qp:chats", now.as_bytes(), chat_id.as_bytes()])
            .await
            .map(|_| ())
    }
}

impl SessionStore for RedisStore {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Session>, StoreError>> {
        Box::pin(async move {
            let k = format!("qp:s:{key}");
            let ttl = self.ttl.as_millis().to_string();
            let reply = self
                .client
                .cmd(&[b"GETEX", k.as_bytes(), b"PX", ttl.as_bytes()])
                .await?;
            let Some(json) = reply.into_string() else {
                return Ok(None);
            };
            let session: Session = serde_json::from_str(&json).map_err(err)?;
            self.touch_chat(&session.chat_id).await?;
            Ok(Some(session))
        })
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        session: &'a Session,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let k = format!("qp:s:{key}");
            let json = serde_json::to_string(session).map_err(err)?;
            let ttl = self.ttl.as_millis().to_string();
            expect_ok(
                self.client
                    .cmd(&[b"SET", k.as_bytes(), json.as_bytes(), b"PX", ttl.as_bytes()])
                    .await?,
            )?;
            self.touch_chat(&session.chat_id).await
        })
    }

    fn remove<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let k = format!("qp:s:{key}");
            self.client.cmd(&[b"DEL", k.as_bytes()]).await.map(|_| ())
        })
    }

    fn try_lock<'a>(
        &'a self,
        chat_id: &'a str,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let k = format!("qp:lock:{chat_id}");
            let ttl = ttl.as_millis().max(1).to_string();
            let r = self
                .client
                .cmd(&[
                    b"EVAL",
                    LOCK.as_bytes(),
                    b"1",
                    k.as_bytes(),
                    owner.as_bytes(),
                    ttl.as_bytes(),
                ])
                .await?;
            Ok(matches!(r, Reply::Simple(_)))
        })
    }

    fn unlock<'a>(
        &'a self,
        chat_id: &'a str,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let k = format!("qp:lock:{chat_id}");
            self.client
                .cmd(&[
                    b"EVAL",
                    UNLOCK.as_bytes(),
                    b"1",
                    k.as_bytes(),
                    owner.as_bytes(),
                ])
                .await
                .map(|_| ())
        })
    }

    fn take_idle_chats<'a>(
        &'a self,
        idle: Duration,
    ) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        Box::pin(async move {
            let cutoff = now_ms().saturating_sub(idle.as_millis() as u64).to_string();
            let r = self
                .client
                .cmd(&[
                    b"EVAL",
                    TAKE_IDLE.as_bytes(),
                    b"1",
                    b"qp:chats",
                    cutoff.as_bytes(),
                ])
                .await?;
            Ok(match r {
                Reply::Array(Some(items)) => {
                    items.into_iter().filter_map(Reply::into_string).collect()
                }
                _ => Vec::new(),
            })
        })
    }

    fn sweep(&self) -> BoxFuture<'_, Result<Option<usize>, StoreError>> {
        // Redis expires sessions itself; a PING tells whether it is reachable.
        Box::pin(async move { self.client.cmd(&[b"PING"]).await.map(|_| None) })
    }
}

/// Token bucket in Redis (one Lua script, atomic across instances; Redis's clock).
pub const RATE_LIMIT_SCRIPT: &str = "\
local rate = tonumber(ARGV[1]) local burst = tonumber(ARGV[2]) \
local t = redis.call('TIME') local now = t[1] * 1000 + math.floor(t[2] / 1000) \
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts') \
local tokens = tonumber(b[1]) or burst local ts = tonumber(b[2]) or now \
tokens = math.min(burst, tokens + (now - ts) / 1000 * rate) \
local allowed = 0 if tokens >= 1 then tokens = tokens - 1 allowed = 1 end \
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', now) \
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000) \
return {allowed, tostring(tokens)}";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_forms() {
        let u = RedisUrl::parse("redis://127.0.0.1:6390/2").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.db, u.password),
            ("127.0.0.1", 6390, 2, None)
        );
        let u = RedisUrl::parse("redis://:pw@cache").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.password.as_deref(), u.username),
            ("cache", 6379, Some("pw"), None)
        );
        let u = RedisUrl::parse("redis://me:pw@[::1]:7000").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.username.as_deref()),
            ("::1", 7000, Some("me"))
        );
        assert!(RedisUrl::parse("rediss://x").is_err());
        assert!(RedisUrl::parse("redis://x:port").is_err());
    }
}
