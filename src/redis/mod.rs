//! Redis, for state shared by several instances: a small client (RESP2 over TCP, a pool of
//! connections, per-command timeouts; only what the proxy needs — strings with expiry,
//! scripts, a sorted set), the session store (`sessions`) and the rate-limit buckets
//! (`rate_limit`) that use it.
//!
//! Keys (prefix `qp:`): `qp:s:<conversation key>` → session JSON (PX = `SESSION_TIMEOUT`,
//! refreshed on use); `qp:lock:<chat_id>` → owner token (SET NX PX); `qp:chats` → sorted set
//! chat_id → last use (ms), for `CHAT_CLEANUP=delete`; `qp:rl:<client>` → rate-limit bucket.

pub mod rate_limit;
pub mod sessions;

use std::sync::Mutex;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufStream};
use tokio::net::TcpStream;

use crate::common::BoxFuture;
use crate::config::RedisUrl;

/// A failed Redis operation (connection, timeout, protocol or an error reply).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisError(pub String);

impl std::fmt::Display for RedisError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "redis: {}", self.0)
    }
}

impl std::error::Error for RedisError {}

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

fn err(e: impl std::fmt::Display) -> RedisError {
    RedisError(e.to_string())
}

impl RedisClient {
    pub fn new(url: RedisUrl) -> Self {
        Self {
            url,
            pool: Mutex::new(Vec::new()),
            timeout: Duration::from_millis(500),
        }
    }

    async fn connect(&self) -> Result<Conn, RedisError> {
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
            args.push(pw.expose().as_bytes());
            expect_ok(roundtrip(&mut conn, &args).await?)?;
        }
        if self.url.db != 0 {
            let db = self.url.db.to_string();
            expect_ok(roundtrip(&mut conn, &[b"SELECT", db.as_bytes()]).await?)?;
        }
        Ok(conn)
    }

    /// Run one command on a pooled connection, within the timeout.
    pub async fn cmd(&self, args: &[&[u8]]) -> Result<Reply, RedisError> {
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

pub(crate) fn expect_ok(r: Reply) -> Result<(), RedisError> {
    match r {
        Reply::Simple(_) => Ok(()),
        Reply::Error(e) => Err(err(e)),
        other => Err(err(format!("unexpected reply {other:?}"))),
    }
}

async fn roundtrip(conn: &mut Conn, args: &[&[u8]]) -> Result<Reply, RedisError> {
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

fn read_reply(conn: &mut Conn) -> BoxFuture<'_, Result<Reply, RedisError>> {
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
