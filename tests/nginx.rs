//! A real nginx with `deploy/nginx.conf` (ports templated) in front of the proxy and the
//! simulator: chunks arrive incrementally through nginx — the first content chunk reaches
//! the client while the upstream generation is still running — and the stream is complete.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use serde_json::json;
use support::{expected_answer, parse_sse, summarize, Harness};

struct Nginx {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start_nginx(proxy: std::net::SocketAddr) -> Nginx {
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
            .replace("server 127.0.0.1:3000;", &format!("server {proxy};"))
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

#[tokio::test]
async fn chunks_stream_incrementally_through_nginx() {
    let h = Harness::start().await;
    let nginx = start_nginx(h.addr).await;
    let body = json!({"model": "qwen3.7-plus", "stream": true,
                      "messages": [{"role": "user", "content": "through nginx @@sim:stall=1500"}]});
    let req = Request::post(format!(
        "http://127.0.0.1:{}/v1/chat/completions",
        nginx.port
    ))
    .header("content-type", "application/json")
    .body(Full::new(Bytes::from(body.to_string())))
    .unwrap();
    let rsp = h.send(req).await;
    assert_eq!(rsp.status(), 200);
    assert_eq!(rsp.headers()["content-type"], "text/event-stream");
    assert!(
        rsp.headers().contains_key("x-request-id"),
        "nginx's $request_id is passed through"
    );
    let mut body = rsp.into_body();
    let mut received = Vec::new();
    // Read until the first content chunk has arrived…
    while !String::from_utf8_lossy(&received).contains("\"content\":\"Simu") {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("a chunk arrives")
            .expect("stream open")
            .unwrap();
        if let Some(d) = frame.data_ref() {
            received.extend_from_slice(d);
        }
    }
    // …while the upstream is still generating (stalled after its first frame): nginx did
    // not buffer the response.
    let stats = h.sim_stats().await;
    assert_eq!(
        stats["in_flight"], 1,
        "first chunk reached the client before the upstream finished: {stats}"
    );
    received.extend_from_slice(&body.collect().await.unwrap().to_bytes());
    let s = summarize(&parse_sse(&received));
    assert_eq!(s.content, expected_answer("through nginx"));
    assert_eq!(s.finish_reason.as_deref(), Some("stop"));
}

#[tokio::test]
async fn trust_proxy_uses_the_address_nginx_saw() {
    let h = Harness::start_with(
        &[
            ("TRUST_PROXY", "true"),
            ("RATE_LIMIT_RPM", "60"),
            ("RATE_LIMIT_BURST", "1"),
        ],
        Default::default(),
    )
    .await;
    let nginx = start_nginx(h.addr).await;
    let send = |xff: &'static str| {
        let body = json!({"model": "qwen3.7-plus", "messages": [{"role": "user", "content": "x"}]});
        Request::post(format!(
            "http://127.0.0.1:{}/v1/chat/completions",
            nginx.port
        ))
        .header("content-type", "application/json")
        .header("x-forwarded-for", xff)
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
    };
    // A client forging X-Forwarded-For still lands in the bucket of its real address.
    assert_eq!(h.send(send("1.1.1.1")).await.status(), 200);
    assert_eq!(h.send(send("2.2.2.2")).await.status(), 429);
}
