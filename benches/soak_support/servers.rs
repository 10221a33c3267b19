//! The two processes of the soak — `qwen-proxy sim` and the proxy — started from our binary
//! on free ports, and what is read from them: the proxy's `/metrics`, the simulator's
//! `/proc/PID/{status,fd}`, both `/health` and `/__sim/stats`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::process::{self, Running};
use crate::traffic::HttpClient;

/// Accounts in the pool (the simulator's strict mode knows exactly these).
pub const ACCOUNTS: usize = 4;
/// The operators' key of the proxy (for `POST /admin/accounts/{name}/purge-chats`).
pub const ADMIN_KEY: &str = "soak-admin-key-0123456789";
/// Lifetime of the simulator's tokens: the proxy renews each one by refresh token a fifth
/// of this before it runs out (at least 30 s), so the soak goes through several renewals.
pub const TOKEN_TTL_SECS: u64 = 180;
/// The proxy's idle timeout on the upstream stream: the `stall=3000` fault meets it.
pub const UPSTREAM_IDLE_TIMEOUT_MS: u64 = 2000;
/// Conversation sessions live this long after their last use (default 30 min), checked
/// this often (default 5 min): the store reaches its steady state within the soak.
pub const SESSION_TIMEOUT_MS: u64 = 60_000;
pub const SESSION_CLEANUP_MS: u64 = 10_000;

/// One account of the pool: the proxy's name for it and the simulator's key (its email).
#[derive(Clone, Debug)]
pub struct Account {
    pub name: String,
    pub email: String,
}

pub fn accounts() -> Vec<Account> {
    (0..ACCOUNTS)
        .map(|i| Account {
            name: format!("soak-{i}"),
            email: format!("soak{i}@example.com"),
        })
        .collect()
}

/// The simulator and the proxy. Dropped in field order: the proxy first, then the
/// simulator (each gets SIGTERM, then SIGKILL after 2 s: `process::terminate`), then the
/// scratch directory of their accounts files.
pub struct Stack {
    pub proxy: Running,
    pub sim: Running,
    pub accounts: Vec<Account>,
    _dir: ScratchDir,
}

/// A directory removed when dropped (also when a start fails half-way).
struct ScratchDir(PathBuf);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn log_file(path: &Path) -> Stdio {
    std::fs::File::create(path).map_or_else(|_| Stdio::null(), Stdio::from)
}

impl Stack {
    /// Start both: the simulator in strict mode with the accounts, the proxy with an
    /// accounts file of password accounts at the simulator. Their stderr goes to
    /// `logs/{tag}-sim.log` and `logs/{tag}-proxy.log`.
    /// `extra`: more variables for the proxy (`SOAK_PROXY_ENV`, for diagnosis).
    pub fn start(logs: &Path, tag: &str, extra: &[(String, String)]) -> Stack {
        let scratch =
            ScratchDir(std::env::temp_dir().join(format!("qwen-soak-{}", std::process::id())));
        let dir = scratch.0.clone();
        std::fs::create_dir_all(&dir).unwrap();
        let accounts = accounts();

        let sim_accounts = dir.join("sim-accounts.txt");
        let lines: String = accounts
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{} soak-password-{i}\n", a.email))
            .collect();
        std::fs::write(&sim_accounts, lines).unwrap();
        let ttl = TOKEN_TTL_SECS.to_string();
        let mut sim = process::command(
            &[
                "sim",
                "--port",
                "0",
                // Upstream-like shape, fast enough for a steady rate on two cores: a new chat
                // in 20 ms, the first token after 50 ms, 4 characters every 10 ms, a chat
                // busy for 300 ms after its answer (the default linger), no prefill.
                "--chat-latency-ms",
                "20",
                "--ttft-ms",
                "50",
                "--delay-ms",
                "10",
                "--chunk-chars",
                "4",
                "--prefill-ms",
                "0",
                "--accounts",
                &sim_accounts.to_string_lossy(),
                "--token-ttl-secs",
                &ttl,
            ],
            &[],
        );
        sim.stderr(log_file(&logs.join(format!("{tag}-sim.log"))));
        let sim = process::start(sim);
        let sim_url = format!("http://{}", sim.addr);

        let proxy_accounts = dir.join("accounts.json");
        let entries: Vec<Value> = accounts
            .iter()
            .enumerate()
            .map(|(i, a)| {
                json!({"name": a.name, "email": a.email, "password": format!("soak-password-{i}"),
                       "min_interval_ms": 0, "max_inflight": 16})
            })
            .collect();
        std::fs::write(&proxy_accounts, serde_json::to_vec(&entries).unwrap()).unwrap();
        std::fs::set_permissions(&proxy_accounts, std::fs::Permissions::from_mode(0o600)).unwrap();
        let (idle, sessions, cleanup) = (
            UPSTREAM_IDLE_TIMEOUT_MS.to_string(),
            SESSION_TIMEOUT_MS.to_string(),
            SESSION_CLEANUP_MS.to_string(),
        );
        let accounts_path = proxy_accounts.to_string_lossy().into_owned();
        let mut proxy = process::command(
            &process::serve_args("0"),
            &[
                ("QWEN_BASE_URL", &sim_url),
                ("QWEN_AUTH_BASE_URL", &sim_url),
                ("QWEN_ACCOUNTS_FILE", &accounts_path),
                // The four sign-ins at start need not be 30 s apart.
                ("QWEN_SIGNIN_INTERVAL", "50"),
                ("ADMIN_KEY", ADMIN_KEY),
                ("UPSTREAM_IDLE_TIMEOUT", &idle),
                ("SESSION_TIMEOUT", &sessions),
                ("SESSION_CLEANUP_INTERVAL", &cleanup),
                ("LOG_LEVEL", "warn"),
            ],
        );
        proxy.envs(extra.iter().map(|(k, v)| (k, v)));
        proxy.stderr(log_file(&logs.join(format!("{tag}-proxy.log"))));
        let proxy = process::start(proxy);
        Stack {
            proxy,
            sim,
            accounts,
            _dir: scratch,
        }
    }

    pub fn proxy_url(&self) -> String {
        format!("http://{}", self.proxy.addr)
    }

    pub fn sim_url(&self) -> String {
        format!("http://{}", self.sim.addr)
    }

    /// Wait until every account has signed in (`/health` counts them `ready`).
    pub async fn wait_ready(&self, client: &HttpClient) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let health = get_json(client, &format!("{}/health", self.proxy_url()), None).await;
            if health
                .as_ref()
                .map(|h| h["accounts"]["counts"]["ready"].clone())
                == Some(json!(ACCOUNTS))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the accounts did not all sign in within 60 s: {health:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

pub async fn get_text(client: &HttpClient, url: &str, bearer: Option<&str>) -> Option<String> {
    let mut req = Request::get(url);
    if let Some(key) = bearer {
        req = req.header("authorization", format!("Bearer {key}"));
    }
    let req = req.body(Full::new(Bytes::new())).ok()?;
    let rsp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .ok()?
        .ok()?;
    let body = tokio::time::timeout(Duration::from_secs(10), rsp.into_body().collect())
        .await
        .ok()?
        .ok()?
        .to_bytes();
    String::from_utf8(body.to_vec()).ok()
}

pub async fn get_json(client: &HttpClient, url: &str, bearer: Option<&str>) -> Option<Value> {
    serde_json::from_str(&get_text(client, url, bearer).await?).ok()
}

/// The value of an unlabelled sample `name` in a Prometheus text exposition.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let mut parts = l.split_whitespace();
        (parts.next()? == name).then(|| parts.next()?.parse().ok())?
    })
}

/// `VmRSS` (KiB) and `Threads` of a process, from `/proc/PID/status`.
pub fn proc_status(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("Threads:"))
}

/// Open file descriptors of a process: the entries of `/proc/PID/fd`.
pub fn open_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64)
}
