//! Real Redis for the tests, on free loopback ports, each killed when dropped: a plain
//! server, one over TLS with an ACL user (a CA and a server certificate made by the `openssl`
//! CLI), a three-node Cluster (`redis-cli --cluster create`), and a master with a replica
//! watched by three sentinels. Nothing is skipped: a missing binary, or one built without
//! TLS, fails the test with what to install.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use tokio::time::Instant;

fn server_bin() -> String {
    std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A directory of its own under the system's temporary directory, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(what: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("qp-{what}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self, name: &str) -> String {
        self.0.join(name).to_string_lossy().into_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A CA and a server certificate it signed (for `localhost` and `127.0.0.1`), made with
/// the `openssl` CLI; and a second CA that signed nothing (a client trusting only it must
/// refuse the server).
pub struct TlsFiles {
    pub dir: TempDir,
}

impl TlsFiles {
    pub fn generate() -> Self {
        let dir = TempDir::new("tls");
        let p = |n: &str| dir.path(n);
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        for ca in ["ca", "other-ca"] {
            let (key, crt) = (p(&format!("{ca}.key")), p(&format!("{ca}.crt")));
            let mut args = vec!["req", "-x509"];
            args.extend(ec);
            let subject = format!("/CN=qwen-proxy test {ca}");
            args.extend([
                "-keyout", &key, "-out", &crt, "-days", "2", "-subj", &subject,
            ]);
            openssl(&args);
        }
        let mut args = vec!["req"];
        args.extend(ec);
        let (key, csr) = (p("server.key"), p("server.csr"));
        args.extend(["-keyout", &key, "-out", &csr, "-subj", "/CN=localhost"]);
        openssl(&args);
        let ext = p("san.ext");
        std::fs::write(&ext, "subjectAltName=DNS:localhost,IP:127.0.0.1\n").unwrap();
        let (ca, ca_key, crt) = (p("ca.crt"), p("ca.key"), p("server.crt"));
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            &crt,
            "-days",
            "2",
            "-extfile",
            &ext,
        ]);
        TlsFiles { dir }
    }

    pub fn ca(&self) -> String {
        self.dir.path("ca.crt")
    }

    pub fn other_ca(&self) -> String {
        self.dir.path("other-ca.crt")
    }
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("`openssl` is required to make test certificates (Debian package openssl): {e}")
        });
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What DEPLOYMENT.md tells operators to allow the proxy's ACL user (`ACL SETUSER … on
/// >password` and these).
pub const PROXY_ACL: &str =
    "~qp:* resetchannels +@read +@write +@scripting +@connection +info +time";

/// What a Cluster adds to it: its slot table (`CLUSTER SLOTS`) and health (`CLUSTER INFO`).
pub const PROXY_ACL_CLUSTER: &str = "+cluster|slots +cluster|info";

/// What Sentinel adds to it: the client checks that the node it was sent to is the master.
pub const PROXY_ACL_SENTINEL: &str = "+role";

/// The proxy's ACL user in the Cluster and Sentinel tests (the default user stays on for
/// the tools that set them up: cluster creation, replication, the sentinels).
pub const APP_USER: &str = "proxy-app";
pub const APP_PASSWORD: &str = "app-pass:1";
/// The same, percent-encoded for a URL.
pub const APP_PASSWORD_ENCODED: &str = "app-pass%3A1";

/// `--user APP_USER on >APP_PASSWORD` with `PROXY_ACL` and `more` rights.
fn app_user(more: &str) -> Vec<String> {
    let mut args: Vec<String> = ["--user", APP_USER, "on"].map(String::from).to_vec();
    args.push(format!(">{APP_PASSWORD}"));
    args.extend(PROXY_ACL.split(' ').map(String::from));
    args.extend(more.split(' ').map(String::from));
    args
}

/// How a server is reached: plainly, or over TLS with a user and password.
#[derive(Clone, Default)]
pub struct Access {
    /// The CA to verify the server with: TLS.
    pub tls_ca: Option<String>,
    pub user: Option<(String, String)>,
}

impl Access {
    /// `redis-cli` on `port`, as this access says.
    fn cli(&self, port: u16) -> Command {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-h", "127.0.0.1", "-p", &port.to_string()]);
        if let Some(ca) = &self.tls_ca {
            cmd.args(["--tls", "--cacert", ca]);
        }
        if let Some((user, pass)) = &self.user {
            // The password through the environment, not the command line.
            cmd.args(["--user", user]).env("REDISCLI_AUTH", pass);
        }
        cmd
    }
}

/// `redis-cli` with `args` against `port`: what it printed (panics if it cannot run).
fn cli_output(access: &Access, port: u16, args: &[&str]) -> Output {
    access
        .cli(port)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("`redis-cli` is required (Debian package redis-tools): {e}"))
}

/// A real `redis-server` on a free loopback port, killed on drop.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    args: Vec<String>,
    pub access: Access,
    /// Its working directory (`--dir`): a replica's full sync writes an RDB file there.
    _dir: TempDir,
}

impl RedisServer {
    /// A plain server, no persistence.
    pub async fn start() -> Self {
        Self::start_with(&[], Access::default()).await
    }

    /// A server with these extra arguments (`--name value…`), reached as `access` says.
    pub async fn start_with(extra: &[String], access: Access) -> Self {
        let port = free_port();
        let dir = TempDir::new("redis");
        let mut args: Vec<String> = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
            .map(String::from)
            .to_vec();
        args.extend(["--dir".into(), dir.path("")]);
        if access.tls_ca.is_some() {
            args.extend([
                "--port".into(),
                "0".into(),
                "--tls-port".into(),
                port.to_string(),
            ]);
        } else {
            args.extend(["--port".into(), port.to_string()]);
        }
        args.extend_from_slice(extra);
        let mut r = RedisServer {
            child: None,
            port,
            args,
            access,
            _dir: dir,
        };
        r.spawn().await;
        r
    }

    /// Over TLS only (no plain port), with the certificate of `tls`, the default user off
    /// and the ACL user `user` with `password` and the rights DEPLOYMENT.md gives it.
    pub async fn start_tls(tls: &TlsFiles, user: &str, password: &str) -> Self {
        let extra: Vec<String> = [
            "--tls-cert-file",
            &tls.dir.path("server.crt"),
            "--tls-key-file",
            &tls.dir.path("server.key"),
            "--tls-ca-cert-file",
            &tls.ca(),
            "--tls-auth-clients",
            "no",
            "--user",
            "default",
            "off",
        ]
        .map(String::from)
        .to_vec();
        let mut extra = extra;
        extra.extend([
            "--user".into(),
            user.into(),
            "on".into(),
            format!(">{password}"),
        ]);
        extra.extend(PROXY_ACL.split(' ').map(String::from));
        let access = Access {
            tls_ca: Some(tls.ca()),
            user: Some((user.to_owned(), password.to_owned())),
        };
        Self::start_with(&extra, access).await
    }

    async fn spawn(&mut self) {
        let bin = server_bin();
        let child = Command::new(&bin)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("`{bin}` is required (Debian package redis-server; scripts/test.sh installs it): {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.answers().await {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                let mut stderr = String::new();
                if let Some(mut e) = self.child.as_mut().and_then(|c| c.stderr.take()) {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut stderr);
                }
                panic!(
                    "`{bin}` exited ({status}) on port {}{}: {stderr}",
                    self.port,
                    if self.access.tls_ca.is_some() {
                        " (TLS: is this redis-server built with TLS? Debian's is)"
                    } else {
                        ""
                    }
                );
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on {}",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether it answers PING (over a plain socket, or redis-cli for TLS).
    async fn answers(&self) -> bool {
        if self.access.tls_ca.is_some() || self.access.user.is_some() {
            let out = cli_output(&self.access, self.port, &["PING"]);
            return String::from_utf8_lossy(&out.stdout).trim() == "PONG";
        }
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await else {
            return false;
        };
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").await.is_ok()
            && s.read_exact(&mut buf).await.is_ok()
            && &buf == b"+PONG\r\n"
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `redis-cli` with `args`: its output, trimmed (panics when it failed).
    pub fn cli(&self, args: &[&str]) -> String {
        let out = cli_output(&self.access, self.port, args);
        assert!(
            out.status.success(),
            "redis-cli {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// The keys it holds (`KEYS *`).
    pub fn keys(&self) -> Vec<String> {
        self.cli(&["KEYS", "*"])
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// A client of the proxy's own for this server (plain, one node).
    pub fn client(&self) -> qwen_proxy::redis::RedisClient {
        use qwen_proxy::config::{RedisConfig, RedisMode, RedisUrl};
        qwen_proxy::redis::RedisClient::new(&RedisConfig {
            url: RedisUrl::parse(&self.url()).unwrap(),
            mode: RedisMode::Single,
            ca_pem: None,
            timeout: Duration::from_millis(500),
        })
    }

    /// Send the process a signal (`STOP` freezes it, `CONT` thaws it).
    pub fn signal(&self, name: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let ok = Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{name} {pid}");
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Killed and started again on the same port, empty (no persistence).
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A three-master Redis Cluster on loopback (no replicas), its state files in a directory of
/// its own.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
    _dir: TempDir,
}

impl RedisCluster {
    pub async fn start() -> Self {
        let dir = TempDir::new("cluster");
        let mut nodes = Vec::new();
        for i in 0..3 {
            let extra: Vec<String> = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                &dir.path(&format!("nodes-{i}.conf")),
                "--cluster-node-timeout",
                "2000",
            ]
            .map(String::from)
            .to_vec();
            let extra = [extra, app_user(PROXY_ACL_CLUSTER)].concat();
            nodes.push(RedisServer::start_with(&extra, Access::default()).await);
        }
        let addrs: Vec<String> = nodes.iter().map(RedisServer::addr).collect();
        let mut args = vec!["--cluster", "create"];
        args.extend(addrs.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        let out = cli_output(&Access::default(), nodes[0].port, &args);
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while !nodes
            .iter()
            .all(|n| n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
        {
            assert!(Instant::now() < deadline, "the cluster did not become ok");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        RedisCluster { nodes, _dir: dir }
    }

    /// Every node as a seed (`redis://app@a,b,c`, with `REDIS_CLUSTER=true`), as the
    /// proxy's ACL user.
    pub fn url(&self) -> String {
        let addrs: Vec<String> = self.nodes.iter().map(RedisServer::addr).collect();
        format!(
            "redis://{APP_USER}:{APP_PASSWORD_ENCODED}@{}",
            addrs.join(",")
        )
    }

    /// The keys each node holds.
    pub fn keys_per_node(&self) -> Vec<Vec<String>> {
        self.nodes.iter().map(RedisServer::keys).collect()
    }
}

/// A master, its replica and three sentinels watching them as `mymaster` (quorum 2, a
/// master down after 1 s).
pub struct SentinelSetup {
    pub master: RedisServer,
    pub replica: RedisServer,
    pub sentinels: Vec<RedisServer>,
    _dir: TempDir,
}

pub const SENTINEL_MASTER: &str = "mymaster";

impl SentinelSetup {
    pub async fn start() -> Self {
        let dir = TempDir::new("sentinel");
        let master =
            RedisServer::start_with(&app_user(PROXY_ACL_SENTINEL), Access::default()).await;
        let replica_args = [
            vec![
                "--replicaof".into(),
                "127.0.0.1".into(),
                master.port.to_string(),
            ],
            app_user(PROXY_ACL_SENTINEL),
        ]
        .concat();
        let replica = RedisServer::start_with(&replica_args, Access::default()).await;
        let mut sentinels = Vec::new();
        for i in 0..3 {
            let conf = dir.path(&format!("sentinel-{i}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {} 2\n\
                     sentinel down-after-milliseconds {SENTINEL_MASTER} 1000\n\
                     sentinel failover-timeout {SENTINEL_MASTER} 10000\n\
                     sentinel parallel-syncs {SENTINEL_MASTER} 1\n",
                    master.port
                ),
            )
            .unwrap();
            // The configuration file first, then the mode (sentinel rewrites the file).
            let port = free_port();
            let mut s = RedisServer {
                child: None,
                port,
                args: [
                    conf.as_str(),
                    "--sentinel",
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                ]
                .map(String::from)
                .to_vec(),
                access: Access::default(),
                _dir: TempDir::new("sentinel-node"),
            };
            s.spawn().await;
            sentinels.push(s);
        }
        let setup = SentinelSetup {
            master,
            replica,
            sentinels,
            _dir: dir,
        };
        // Ready when the replica is in sync and every sentinel knows the replica and the
        // two other sentinels (they find each other through the master, every 2 s).
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let synced = setup
                .replica
                .cli(&["INFO", "replication"])
                .contains("master_link_status:up");
            let known = setup.sentinels.iter().all(|s| {
                let info = s.cli(&["SENTINEL", "MASTER", SENTINEL_MASTER]);
                let field = |name: &str| {
                    let lines: Vec<&str> = info.lines().collect();
                    lines
                        .iter()
                        .position(|l| *l == name)
                        .and_then(|i| lines.get(i + 1))
                        .map(|v| v.to_string())
                };
                field("num-slaves").as_deref() == Some("1")
                    && field("num-other-sentinels").as_deref() == Some("2")
            });
            if synced && known {
                return setup;
            }
            assert!(
                Instant::now() < deadline,
                "the sentinels did not find each other and the replica within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The sentinels, for `REDIS_URL` (with `REDIS_SENTINEL_MASTER`), with the master's
    /// ACL user (the sentinels have none: the URL's credentials are not theirs).
    pub fn url(&self) -> String {
        let addrs: Vec<String> = self.sentinels.iter().map(RedisServer::addr).collect();
        format!(
            "redis://{APP_USER}:{APP_PASSWORD_ENCODED}@{}",
            addrs.join(",")
        )
    }

    /// The master's port as the first sentinel sees it.
    pub fn master_port(&self) -> u16 {
        let out = self.sentinels[0].cli(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", SENTINEL_MASTER]);
        out.lines()
            .nth(1)
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or(0)
    }
}
