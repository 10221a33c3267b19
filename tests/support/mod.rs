//! Test harness: the simulator and the real proxy stack, each on an ephemeral loopback
//! port (bound before serving, so there is no port race), and a plain hyper client.

#![allow(dead_code)]

pub mod calls;
pub mod process;
pub mod redis;

#[allow(unused_imports)]
pub use redis::RedisServer;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{HeaderMap, Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use qwen_proxy::sim::{SimConfig, Simulator};
use qwen_proxy::{App, Config};

pub struct Harness {
    pub sim: Simulator,
    pub addr: SocketAddr,
    pub state: std::sync::Arc<qwen_proxy::AppState>,
    stop: Option<oneshot::Sender<()>>,
    served: Option<tokio::task::JoinHandle<()>>,
    pub client: Client<HttpConnector, Full<Bytes>>,
}

/// A proxy (the real `App`) on an ephemeral port.
pub struct Proxy {
    pub addr: SocketAddr,
    pub state: std::sync::Arc<qwen_proxy::AppState>,
    stop: Option<oneshot::Sender<()>>,
    served: Option<tokio::task::JoinHandle<()>>,
}

/// The operators' key every test proxy has unless a test says otherwise (`("ADMIN_KEY", "")`:
/// none): `/health` lists the accounts only for it. Test proxies also make no chats ahead
/// unless a test sets `CHAT_POOL_SIZE`.
pub const ADMIN_KEY: &str = "admin-key-for-tests";

impl Proxy {
    pub async fn start(sim_url: &str, env: &[(&str, &str)]) -> Self {
        let mut vars: HashMap<String, String> = HashMap::new();
        vars.insert("QWEN_BASE_URL".into(), sim_url.to_owned());
        vars.insert("QWEN_AUTH_BASE_URL".into(), sim_url.to_owned());
        // The pool of one, unless the test brings an accounts file.
        if !env.iter().any(|(k, _)| *k == "QWEN_ACCOUNTS_FILE") {
            vars.insert("QWEN_COOKIES".into(), "token=test-token; other=1".into());
        }
        // Real backoff shape, short delays: tests stay fast.
        vars.insert("RETRY_INITIAL_DELAY".into(), "10".into());
        vars.insert("RETRY_MAX_DELAY".into(), "40".into());
        vars.insert("ADMIN_KEY".into(), ADMIN_KEY.into());
        // No chats made ahead unless the test asks (tests count the upstream's chats).
        vars.insert("CHAT_POOL_SIZE".into(), "0".into());
        for (k, v) in env {
            vars.insert((*k).into(), (*v).into());
        }
        vars.retain(|k, v| !(k == "ADMIN_KEY" && v.is_empty()));
        let config = Config::from_source(&vars, false).expect("valid test config");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let app = App::new(config);
        let state = app.state.clone();
        let served = tokio::spawn(app.serve(listener, async {
            let _ = stopped.await;
        }));
        Proxy {
            addr,
            state,
            stop: Some(stop),
            served: Some(served),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// The SSE events: JSON values, and the string "[DONE]" for the terminator.
    pub fn events(&self) -> Vec<Value> {
        parse_sse(&self.body)
    }

    pub fn error(&self) -> Value {
        self.json()["error"].clone()
    }

    /// The answer of a successful non-streaming completion.
    pub fn message_content(&self) -> String {
        assert_eq!(self.status, 200, "{}", String::from_utf8_lossy(&self.body));
        self.json()["choices"][0]["message"]["content"]
            .as_str()
            .expect("a string message content")
            .to_owned()
    }
}

pub fn parse_sse(body: &[u8]) -> Vec<Value> {
    let text = std::str::from_utf8(body).expect("SSE is UTF-8");
    assert!(
        text.is_empty() || text.ends_with("\n\n"),
        "stream must end with a blank line: {text:?}"
    );
    text.split("\n\n")
        .filter(|e| !e.is_empty() && !e.starts_with(':'))
        .map(|e| {
            let data = e
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not a data event: {e:?}"));
            if data == "[DONE]" {
                Value::String("[DONE]".into())
            } else {
                serde_json::from_str(data)
                    .unwrap_or_else(|err| panic!("bad chunk JSON {data}: {err}"))
            }
        })
        .collect()
}

/// Content and reasoning of a stream, plus its finish reason; checks the chunk rules.
pub struct StreamSummary {
    pub content: String,
    pub reasoning: String,
    pub finish_reason: Option<String>,
    pub error: Option<Value>,
    pub usage: Option<Value>,
    pub chunks: usize,
}

pub fn summarize(events: &[Value]) -> StreamSummary {
    assert_eq!(
        events.last(),
        Some(&Value::String("[DONE]".into())),
        "stream must end with [DONE]"
    );
    let mut s = StreamSummary {
        content: String::new(),
        reasoning: String::new(),
        finish_reason: None,
        error: None,
        usage: None,
        chunks: 0,
    };
    let mut id = None;
    for (i, ev) in events[..events.len() - 1].iter().enumerate() {
        if let Some(err) = ev.get("error") {
            s.error = Some(err.clone());
            continue;
        }
        assert_eq!(ev["object"], "chat.completion.chunk");
        let this_id = (ev["id"].clone(), ev["created"].clone(), ev["model"].clone());
        match &id {
            None => id = Some(this_id),
            Some(first) => assert_eq!(first, &this_id, "id/created/model must not change"),
        }
        s.chunks += 1;
        let choices = ev["choices"].as_array().expect("choices is an array");
        if choices.is_empty() {
            s.usage = Some(ev["usage"].clone());
            continue;
        }
        let delta = &choices[0]["delta"];
        if i == 0 {
            assert_eq!(delta["role"], "assistant", "first chunk carries the role");
        } else {
            assert!(delta.get("role").is_none(), "role is sent once");
        }
        if let Some(c) = delta["content"].as_str() {
            s.content.push_str(c);
        }
        if let Some(r) = delta["reasoning_content"].as_str() {
            s.reasoning.push_str(r);
        }
        if let Some(f) = choices[0]["finish_reason"].as_str() {
            s.finish_reason = Some(f.to_owned());
        }
    }
    s
}

/// An accounts file (`QWEN_ACCOUNTS_FILE`, mode 0600, in a folder of its own removed when
/// dropped) of browser-session accounts `names`: account `NAME` has the token `tok-NAME`
/// (the simulator's stats name accounts by token) and no pacing (`min_interval_ms` 0).
pub struct AccountsFile {
    _dir: redis::TempDir,
    pub path: String,
}

impl AccountsFile {
    pub fn new(names: &[&str]) -> Self {
        use std::os::unix::fs::PermissionsExt;
        let dir = redis::TempDir::new("accounts");
        let path = dir.path("accounts.json");
        let accounts: Vec<Value> = names
            .iter()
            .map(|n| json!({"name": n, "cookies": format!("other=1; token=tok-{n}"), "min_interval_ms": 0}))
            .collect();
        std::fs::write(&path, Value::from(accounts).to_string()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        AccountsFile { _dir: dir, path }
    }
}

/// The simulator with a short linger: "chat in progress" waits stay brief in tests.
pub fn quick_sim() -> SimConfig {
    SimConfig {
        linger: Duration::from_millis(20),
        ..SimConfig::default()
    }
}

pub fn user(text: &str) -> Value {
    json!({"role": "user", "content": text})
}

pub fn assistant(text: &str) -> Value {
    json!({"role": "assistant", "content": text})
}

/// The simulator's documented default answer (README "Simulator"), written out here
/// independently of the simulator's code.
pub fn expected_answer(prompt: &str) -> String {
    let last = prompt
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or("");
    format!("Simulated answer — 模拟回答: you said \"{last}\".")
}

impl Harness {
    pub async fn start() -> Self {
        Self::start_with(&[], SimConfig::default()).await
    }

    pub async fn start_with(env: &[(&str, &str)], sim_config: SimConfig) -> Self {
        let sim = Simulator::start(SocketAddr::from(([127, 0, 0, 1], 0)), sim_config)
            .await
            .expect("simulator starts");
        let mut proxy = Proxy::start(&sim.base_url(), env).await;
        Harness {
            sim,
            addr: proxy.addr,
            state: proxy.state.clone(),
            stop: proxy.stop.take(),
            served: proxy.served.take(),
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// Another proxy instance on the same simulator.
    pub async fn another_proxy(&self, env: &[(&str, &str)]) -> Proxy {
        Proxy::start(&self.sim.base_url(), env).await
    }

    /// Send the shutdown signal (as SIGTERM would).
    pub fn begin_shutdown(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }

    /// Wait until the server has fully stopped (bounded).
    pub async fn wait_stopped(&mut self) {
        if let Some(t) = self.served.take() {
            tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .expect("server stops within 30 s")
                .expect("serve task does not panic");
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn send(&self, req: Request<Full<Bytes>>) -> Response<Incoming> {
        tokio::time::timeout(Duration::from_secs(30), self.client.request(req))
            .await
            .expect("response within 30 s")
            .expect("request succeeds")
    }

    /// A chat completion request whose response is handed back unread (to read it frame by
    /// frame, or to drop it mid-answer).
    pub async fn chat_response(&self, body: &Value) -> Response<Incoming> {
        let req = Request::post(self.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        self.send(req).await
    }

    pub async fn read(rsp: Response<Incoming>) -> Reply {
        let status = rsp.status();
        let headers = rsp.headers().clone();
        let body = tokio::time::timeout(Duration::from_secs(30), rsp.into_body().collect())
            .await
            .expect("body within 30 s")
            .expect("body reads")
            .to_bytes();
        Reply {
            status,
            headers,
            body,
        }
    }

    pub async fn post_raw(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<Bytes>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut b = Request::post(self.url(path)).header("content-type", content_type);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        Self::read(self.send(b.body(Full::new(body.into())).unwrap()).await).await
    }

    /// A chat request to another proxy instance.
    pub async fn chat_at(&self, addr: SocketAddr, body: Value) -> Reply {
        let req = Request::post(format!("http://{addr}/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        Self::read(self.send(req).await).await
    }

    pub async fn get_at(&self, addr: SocketAddr, path: &str) -> Reply {
        let req = Request::get(format!("http://{addr}{path}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        Self::read(self.send(req).await).await
    }

    pub async fn chat(&self, body: Value) -> Reply {
        self.post_raw(
            "/v1/chat/completions",
            "application/json",
            body.to_string(),
            &[],
        )
        .await
    }

    /// A one-message request.
    pub async fn ask(&self, model: &str, prompt: &str, stream: bool) -> Reply {
        self.chat(json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": prompt}]}))
            .await
    }

    pub async fn get(&self, path: &str) -> Reply {
        Self::read(
            self.send(
                Request::get(self.url(path))
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
            .await,
        )
        .await
    }

    /// `GET /health` as an operator (with the list of accounts).
    pub async fn health(&self) -> Reply {
        self.health_at(self.addr).await
    }

    /// `GET /health` of another instance, as an operator.
    pub async fn health_at(&self, addr: SocketAddr) -> Reply {
        let req = Request::get(format!("http://{addr}/health"))
            .header("authorization", format!("Bearer {ADMIN_KEY}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        Self::read(self.send(req).await).await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        Self::read(
            self.send(
                Request::delete(self.url(path))
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
            .await,
        )
        .await
    }

    pub async fn sim_stats(&self) -> Value {
        let req = Request::get(format!("{}/__sim/stats", self.sim.base_url()))
            .body(Full::new(Bytes::new()))
            .unwrap();
        Self::read(self.send(req).await).await.json()
    }

    pub async fn sim_replay(&self, bytes: impl Into<Bytes>, chunk: usize) {
        let req = Request::post(format!(
            "{}/__sim/replay?chunk={chunk}",
            self.sim.base_url()
        ))
        .body(Full::new(bytes.into()))
        .unwrap();
        assert_eq!(Self::read(self.send(req).await).await.status, 200);
    }

    /// Poll the simulator's stats until `pred` holds (bounded; for effects that happen
    /// asynchronously, such as an upstream abort after a client disconnect).
    pub async fn wait_for_stats(&self, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let s = self.sim_stats().await;
            if pred(&s) || tokio::time::Instant::now() > deadline {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// Upstream SSE `chunks` through the proxy's decoder: every event's data payload.
pub fn sse_payloads(chunks: &[&[u8]]) -> Vec<Bytes> {
    let mut d = qwen_proxy::qwen::sse::SseDecoder::default();
    let mut out = Vec::new();
    for c in chunks {
        d.push(Bytes::copy_from_slice(c));
        while let Some(ev) = d.next_data().unwrap() {
            out.push(ev);
        }
    }
    out.extend(d.finish().unwrap());
    out
}

/// The upstream captures kept in the repository (`tests/fixtures/qwen`, see its README).
pub fn fixtures_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen")
}

pub fn fixture(name: &str) -> Vec<u8> {
    let path = fixtures_dir().join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {} is required: {e}", path.display()))
}

/// A real nginx running `deploy/nginx.conf` (ports templated), killed on drop.
pub struct Nginx {
    child: Child,
    dir: PathBuf,
    pub port: u16,
}

impl Nginx {
    /// `nginx -s reload`: new workers with the configuration read again; the old ones finish
    /// the connections they hold.
    pub fn reload(&self) {
        let status = Command::new(nginx_binary())
            .args([
                "-p",
                &self.dir.to_string_lossy(),
                "-c",
                &self.dir.join("nginx.conf").to_string_lossy(),
                "-s",
                "reload",
            ])
            .status()
            .unwrap();
        assert!(status.success(), "nginx -s reload");
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM makes the master stop its workers; SIGKILL would orphan them, still
        // listening and holding upstream connections.
        process::terminate(&mut self.child);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn nginx_binary() -> String {
    std::env::var("NGINX").unwrap_or_else(|_| {
        ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
            .iter()
            .find(|p| Path::new(p).exists())
            .map_or_else(|| "nginx".to_owned(), |p| (*p).to_owned())
    })
}

pub use process::free_port;

/// nginx in front of `upstreams` (round-robin, as the upstream block lists them).
pub async fn start_nginx(upstreams: &[SocketAddr]) -> Nginx {
    let site =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/nginx.conf"))
            .unwrap();
    assert!(
        site.contains("server 127.0.0.1:3000;") && site.contains("listen 8080;"),
        "template markers"
    );
    // nginx must bind the port itself; retry on the rare collision.
    for _ in 0..5 {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("qwen-nginx-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let site = site
            .replace(
                "server 127.0.0.1:3000;",
                &upstreams
                    .iter()
                    .map(|a| format!("server {a} max_fails=1 fail_timeout=1s;"))
                    .collect::<Vec<_>>()
                    .join("\n    "),
            )
            .replace("listen 8080;", &format!("listen 127.0.0.1:{port};"));
        std::fs::write(dir.join("qwen-proxy.conf"), site).unwrap();
        let d = dir.display();
        let main = format!(
            "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\nevents {{ worker_connections 256; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  include {d}/qwen-proxy.conf;\n}}\n"
        );
        std::fs::write(dir.join("nginx.conf"), main).unwrap();
        let child = Command::new(nginx_binary())
            .args(["-p", &dir.to_string_lossy(), "-c", &dir.join("nginx.conf").to_string_lossy(), "-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("nginx is required (Debian package nginx-light; scripts/test.sh installs it): {e}"));
        let mut nginx = Nginx { child, dir, port };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::time::Instant::now() < deadline {
            if let Ok(Some(_)) = nginx.child.try_wait() {
                break; // exited: probably the port was taken; try another
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return nginx;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let log = std::fs::read_to_string(nginx.dir.join("error.log")).unwrap_or_default();
        eprintln!("nginx did not come up on {port}: {log}");
        nginx.port = 0;
    }
    panic!("nginx could not be started");
}
