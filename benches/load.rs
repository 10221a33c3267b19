//! The load tool: N concurrent streaming chat requests, three ways, in one run.
//!
//! * `direct` — the client speaks the Qwen web protocol to the simulator itself
//!   (`chats/new`, then the completion): the baseline.
//! * `proxy`  — OpenAI requests through `qwen-proxy` (a child process) to the simulator.
//! * `nginx`  — the Qwen protocol through nginx proxying the simulator with buffering off:
//!   the floor for a proxy that copies bytes without understanding them.
//!
//! The simulator runs as its own process with fixed timing (TTFT 50 ms, 20 answer frames
//! 5 ms apart). Servers are pinned to CPU 1 and the client to CPU 0 when `taskset` exists.
//! Per way and N it reports TTFT p50/p90/p99 and the TTFT added over `direct`, inter-chunk
//! p99, requests/s, chunks/s, CPU seconds per 1,000 chunks of the middle process (proxy or
//! nginx workers; the simulator for `direct`), its peak RSS and RSS per open stream, and
//! errors; writes `docs/bench/load.json` (merged with earlier runs) and SVG charts into `docs/bench/`
//! (`-- --charts-only` redraws the charts from that file).
//!
//! `scripts/bench-load.sh` runs it (release build, raised fd limit, pinning):
//!     cargo bench --bench load -- [--n 1,100,1000,10000] [--ways direct,proxy,nginx]
//!         [--open-rate R --frame-delay-ms D]
//! By default all N streams start at once (a herd). `--open-rate R` starts R streams per
//! second instead, and `--frame-delay-ms D` slows the simulator's frames, so N streams are
//! open together without saturating the machine (open mode).
//! Under `cargo test` (no `--bench`) it runs a quick correctness smoke test: all streams
//! complete, zero errors, every answer equals the simulator's deterministic text.

// Tests and benches: a failed unwrap is a failure with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// getrlimit/setrlimit, declared directly: raising the open-file limit needs no crate.
#![allow(unsafe_code)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

// The same launcher as the tests (a bench target cannot name tests/support otherwise).
#[path = "../tests/support/process.rs"]
#[allow(dead_code)] // the tests use all of it; the load tool, part
mod process;

use process::{Running, BIN};
const FRAMES: usize = 20;
const CHUNK_CHARS: usize = 4;

/// Every stream's answer: the simulator's `long=80` filler, 20 frames of 4 characters.
fn expected_answer() -> String {
    qwen_proxy::sim::answer::long_answer(FRAMES * CHUNK_CHARS)
}

fn pinned(cpu: &str, program: &str) -> Command {
    if Path::new("/usr/bin/taskset").exists()
        && std::thread::available_parallelism().map_or(1, |n| n.get()) > 1
    {
        let mut c = Command::new("/usr/bin/taskset");
        c.args(["-c", cpu, program]);
        c
    } else {
        Command::new(program)
    }
}

/// nginx, stopped with SIGTERM (its master then stops its workers; SIGKILL would orphan
/// them).
struct Proc {
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        process::terminate(&mut self.child);
    }
}

async fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The simulator on a port it binds itself.
fn start_sim(frame_delay_ms: u64) -> Running {
    let mut cmd = pinned("1", BIN);
    cmd.args(["sim", "--port", "0", "--ttft-ms", "50", "--delay-ms"])
        .arg(frame_delay_ms.to_string())
        .args([
            "--chunk-chars",
            &CHUNK_CHARS.to_string(),
            "--linger-ms",
            "0",
            "--gate",
            "none",
        ])
        .stderr(Stdio::null());
    process::start(cmd)
}

/// The proxy in front of the simulator on `sim`, on a port it binds itself.
fn start_proxy(sim: u16) -> Running {
    let mut cmd = pinned("1", BIN);
    cmd.args([
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--env-file",
        "/dev/null",
    ])
    .env("QWEN_BASE_URL", format!("http://127.0.0.1:{sim}"))
    .env("QWEN_COOKIES", "token=load")
    .env("UPSTREAM_HTTP2", "true")
    .env("MAX_CONCURRENT_STREAMS", "0")
    .env("CONVERSATION_MODE", "stateless")
    .env("LOG_LEVEL", "warn")
    .stderr(Stdio::null());
    process::start(cmd)
}

async fn start_nginx(port: u16, sim: u16, dir: &Path) -> Option<Proc> {
    let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| Path::new(p).exists())?;
    std::fs::create_dir_all(dir).ok()?;
    let d = dir.display();
    let conf = format!(
        "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log error;\nworker_rlimit_nofile 20000;\n\
         events {{ worker_connections 20000; }}\nhttp {{\n access_log off;\n client_body_temp_path {d}/body;\n proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/f;\n uwsgi_temp_path {d}/u;\n scgi_temp_path {d}/s;\n\
         upstream sim {{ server 127.0.0.1:{sim}; keepalive 256; }}\n\
         server {{ listen 127.0.0.1:{port} backlog=16384; location / {{ proxy_pass http://sim; proxy_http_version 1.1;\n\
         proxy_set_header Connection \"\"; proxy_buffering off; proxy_request_buffering off; proxy_read_timeout 600s; }} }}\n}}\n"
    );
    std::fs::write(dir.join("nginx.conf"), conf).ok()?;
    let child = pinned("1", nginx)
        .args([
            "-p",
            &dir.to_string_lossy(),
            "-c",
            &dir.join("nginx.conf").to_string_lossy(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    wait_port(port).await;
    Some(Proc { child })
}

/// utime + stime of `pid` and its child processes that are nginx workers, in seconds.
fn cpu_seconds(pids: &[u32]) -> f64 {
    let tck = 100.0; // `getconf CLK_TCK` on Linux
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .map(|stat| {
            let after = stat.rsplit(')').next().unwrap_or("");
            let f: Vec<&str> = after.split_whitespace().collect();
            let ut: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
            let st: f64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
            (ut + st) / tck
        })
        .sum()
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// The process that does the work: the proxy, nginx's workers, or the simulator. `taskset`
/// execs into the program, so the child's pid is the program's pid.
fn work_pids(root: u32, nginx: bool) -> Vec<u32> {
    if !nginx {
        return vec![root];
    }
    let mut pids = vec![root];
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                let after = stat.rsplit(')').next().unwrap_or("");
                if after
                    .split_whitespace()
                    .nth(1)
                    .and_then(|p| p.parse::<u32>().ok())
                    == Some(root)
                {
                    pids.push(pid);
                }
            }
        }
    }
    pids
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Way {
    Direct,
    Proxy,
    Nginx,
}

impl Way {
    fn name(self) -> &'static str {
        match self {
            Way::Direct => "direct",
            Way::Proxy => "proxy",
            Way::Nginx => "nginx",
        }
    }
}

struct StreamResult {
    ttft: Duration,
    gaps: Vec<Duration>,
    chunks: usize,
    answer: String,
}

/// One stream. `qwen`: speak the Qwen protocol (direct, nginx); else OpenAI (proxy).
async fn one_stream(
    client: &HttpClient,
    port: u16,
    qwen: bool,
    open: &AtomicUsize,
) -> Result<StreamResult, String> {
    let start = Instant::now();
    let base = format!("http://127.0.0.1:{port}");
    let req = if qwen {
        let new = Request::post(format!("{base}/api/v2/chats/new"))
            .header("cookie", "token=load")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(
                b"{\"models\":[\"qwen3.7-plus\"],\"chat_type\":\"t2t\"}",
            )))
            .map_err(|e| e.to_string())?;
        let rsp = client
            .request(new)
            .await
            .map_err(|e| format!("chats/new: {e}"))?;
        let body = rsp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        let chat = v["data"]["id"].as_str().ok_or("no chat id")?.to_owned();
        let payload = serde_json::json!({"stream": true, "incremental_output": true, "chat_id": chat, "model": "qwen3.7-plus",
            "parent_id": null, "messages": [{"role": "user", "content": "load @@sim:long=80", "feature_config": {"output_schema": "phase"}}]});
        Request::post(format!("{base}/api/v2/chat/completions?chat_id={chat}"))
            .header("cookie", "token=load")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(payload.to_string())))
            .map_err(|e| e.to_string())?
    } else {
        let payload = serde_json::json!({"model": "qwen3.7-plus", "stream": true,
            "messages": [{"role": "user", "content": "load @@sim:long=80"}]});
        Request::post(format!("{base}/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(payload.to_string())))
            .map_err(|e| e.to_string())?
    };
    let rsp = client
        .request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    if rsp.status() != 200 {
        return Err(format!("status {}", rsp.status()));
    }
    open.fetch_add(1, Ordering::Relaxed);
    let mut body = rsp.into_body();
    let (mut ttft, mut last, mut gaps, mut chunks, mut answer) =
        (None, None::<Instant>, Vec::new(), 0, String::new());
    let mut pending = String::new();
    let result = loop {
        let Some(frame) = body.frame().await else {
            break Ok(());
        };
        let frame = match frame {
            Ok(f) => f,
            Err(e) => break Err(format!("body: {e}")),
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        pending.push_str(&String::from_utf8_lossy(&data));
        while let Some(end) = pending.find("\n\n") {
            let event: String = pending.drain(..end + 2).collect();
            let Some(json) = event.trim().strip_prefix("data:") else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(json.trim()) else {
                continue;
            };
            let text = if qwen {
                let d = &v["choices"][0]["delta"];
                (d["phase"] == "answer").then(|| d["content"].as_str().unwrap_or("").to_owned())
            } else {
                v["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_owned)
            };
            if let Some(t) = text.filter(|t| !t.is_empty()) {
                let now = Instant::now();
                ttft.get_or_insert(now - start);
                if let Some(prev) = last {
                    gaps.push(now - prev);
                }
                last = Some(now);
                chunks += 1;
                answer.push_str(&t);
            }
        }
    };
    open.fetch_sub(1, Ordering::Relaxed);
    result?;
    Ok(StreamResult {
        ttft: ttft.ok_or("no content")?,
        gaps,
        chunks,
        answer,
    })
}

fn herd() -> String {
    "herd".into()
}

#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
struct Row {
    way: String,
    #[serde(default = "herd")]
    mode: String,
    n: usize,
    ok: usize,
    errors: usize,
    wrong_answers: usize,
    ttft_p50_ms: f64,
    ttft_p90_ms: f64,
    ttft_p99_ms: f64,
    added_ttft_p99_ms: f64,
    inter_chunk_p99_ms: f64,
    requests_per_s: f64,
    chunks_per_s: f64,
    cpu_s_per_1000_chunks: f64,
    peak_rss_mib: f64,
    rss_per_open_stream_kib: f64,
    max_open_streams: usize,
    first_error: Option<String>,
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1e3
}

/// How streams are started: all at once (`herd`), or `open_rate` per second (`open`).
#[derive(Clone, Copy, Debug)]
struct Load {
    open_rate: f64,
}

async fn run_way(way: Way, n: usize, port: u16, work: &[u32], load: Load) -> Row {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(n.max(1))
        .build(connector);
    let open = Arc::new(AtomicUsize::new(0));
    let rss_base = work.iter().map(|p| status_kib(*p, "VmRSS:")).sum::<u64>();
    let cpu_before = cpu_seconds(work);
    let sampler = {
        let (open, work) = (open.clone(), work.to_vec());
        tokio::spawn(async move {
            let mut best = (0u64, 0usize);
            loop {
                let o = open.load(Ordering::Relaxed);
                let rss = work.iter().map(|p| status_kib(*p, "VmRSS:")).sum::<u64>();
                if o > best.1 || (o == best.1 && rss > best.0) {
                    best = (rss, o);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
                if Arc::strong_count(&open) == 1 {
                    return best;
                }
            }
        })
    };
    let start = Instant::now();
    let qwen = way != Way::Proxy;
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (client, open) = (client.clone(), open.clone());
            let at = if load.open_rate > 0.0 {
                start + Duration::from_secs_f64(i as f64 / load.open_rate)
            } else {
                start
            };
            tokio::spawn(async move {
                tokio::time::sleep_until(at).await;
                one_stream(&client, port, qwen, &open).await
            })
        })
        .collect();
    let mut results = Vec::with_capacity(n);
    for t in tasks {
        results.push(t.await.unwrap_or_else(|e| Err(e.to_string())));
    }
    let wall = start.elapsed();
    drop(open);
    let (_, streams_at_peak) = sampler.await.unwrap_or((0, 0));
    let cpu = cpu_seconds(work) - cpu_before;
    let want = expected_answer();
    let mut row = Row {
        way: way.name().into(),
        mode: if load.open_rate > 0.0 {
            format!("open {}/s", load.open_rate)
        } else {
            "herd".into()
        },
        n,
        ..Row::default()
    };
    let (mut ttfts, mut gaps, mut chunks) = (Vec::new(), Vec::new(), 0);
    for r in results {
        match r {
            Ok(s) => {
                row.ok += 1;
                if s.answer != want {
                    row.wrong_answers += 1;
                }
                ttfts.push(s.ttft);
                gaps.extend(s.gaps);
                chunks += s.chunks;
            }
            Err(e) => {
                row.errors += 1;
                row.first_error.get_or_insert(e);
            }
        }
    }
    ttfts.sort();
    gaps.sort();
    row.ttft_p50_ms = pct(&ttfts, 0.5);
    row.ttft_p90_ms = pct(&ttfts, 0.9);
    row.ttft_p99_ms = pct(&ttfts, 0.99);
    row.inter_chunk_p99_ms = pct(&gaps, 0.99);
    row.requests_per_s = row.ok as f64 / wall.as_secs_f64();
    row.chunks_per_s = chunks as f64 / wall.as_secs_f64();
    row.cpu_s_per_1000_chunks = if chunks > 0 {
        cpu / chunks as f64 * 1000.0
    } else {
        0.0
    };
    row.peak_rss_mib = work.iter().map(|p| status_kib(*p, "VmHWM:")).sum::<u64>() as f64 / 1024.0;
    // All N streams are in flight at the peak of a herd, so the memory they cost is the
    // high-water mark over the resident size before the run, divided by N.
    let hwm = work.iter().map(|p| status_kib(*p, "VmHWM:")).sum::<u64>();
    // In open mode not all N are in flight at once: divide by the most that were.
    let in_flight = if load.open_rate > 0.0 {
        streams_at_peak
    } else {
        n
    };
    row.rss_per_open_stream_kib = hwm.saturating_sub(rss_base) as f64 / in_flight.max(1) as f64;
    row.max_open_streams = streams_at_peak;
    row
}

fn svg_chart(title: &str, y_label: &str, series: &[(&str, Vec<(f64, f64)>)], path: &Path) {
    let (w, h, m) = (640.0, 400.0, 60.0);
    let xs: Vec<f64> = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(x, _)| x.max(1.0).log10()))
        .collect();
    let ys: Vec<f64> = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(_, y)| *y))
        .collect();
    if xs.is_empty() {
        return;
    }
    let (x0, x1) = (
        xs.iter().cloned().fold(f64::MAX, f64::min),
        xs.iter().cloned().fold(f64::MIN, f64::max).max(0.1),
    );
    let y1 = ys.iter().cloned().fold(0.0, f64::max).max(1e-9) * 1.1;
    let y0 = ys.iter().cloned().fold(0.0, f64::min) * 1.1;
    let sx = |x: f64| m + (x.max(1.0).log10() - x0) / (x1 - x0).max(1e-9) * (w - 2.0 * m);
    let sy = |y: f64| h - m - (y - y0) / (y1 - y0) * (h - 2.0 * m);
    let colors = ["#1f77b4", "#d62728", "#2ca02c"];
    let mut s = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{}\" y=\"24\" text-anchor=\"middle\" font-size=\"15\">{title}</text>\n", w / 2.0);
    let _ = writeln!(s, "<line x1=\"{m}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/><line x1=\"{m}\" y1=\"{m}\" x2=\"{m}\" y2=\"{}\" stroke=\"black\"/>", h - m, w - m, h - m, h - m);
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">concurrent streams (log scale)</text>",
        w / 2.0,
        h - 15.0
    );
    let _ = writeln!(s, "<text x=\"15\" y=\"{}\" transform=\"rotate(-90 15 {})\" text-anchor=\"middle\">{y_label}</text>", h / 2.0, h / 2.0);
    let _ = writeln!(s, "<line x1=\"{m}\" y1=\"{:.1}\" x2=\"{}\" y2=\"{:.1}\" stroke=\"#bbb\" stroke-dasharray=\"4\"/>", sy(0.0), w - m, sy(0.0));
    for i in 0..=4 {
        let y = y0 + (y1 - y0) * f64::from(i) / 4.0;
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{:.2}</text>",
            m - 5.0,
            sy(y) + 4.0,
            y
        );
    }
    for (i, (name, points)) in series.iter().enumerate() {
        let c = colors[i % colors.len()];
        let pts: Vec<String> = points
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
            .collect();
        let _ = writeln!(
            s,
            "<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"2\" points=\"{}\"/>",
            pts.join(" ")
        );
        for (x, y) in points {
            let _ = writeln!(s, "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{c}\"/><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\">{}</text>", sx(*x), sy(*y), sx(*x) + 4.0, h - m + 14.0, x);
        }
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" fill=\"{c}\">{name}</text>",
            w - m - 100.0,
            m + 16.0 * i as f64
        );
    }
    s.push_str("</svg>\n");
    let _ = std::fs::write(path, s);
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// Raise the soft open-file limit to the hard limit, for this process and the servers it
/// starts (they inherit it), so `cargo bench` works without `ulimit -n` first. Returns the
/// limit in force, when it could be read. A direct `getrlimit`/`setrlimit` call: std links the C library anyway, and
/// two declarations beat a crate for one call.
#[cfg(target_os = "linux")]
fn raise_fd_limit() -> Option<u64> {
    #[repr(C)]
    struct RLimit {
        cur: u64,
        max: u64,
    }
    const RLIMIT_NOFILE: i32 = 7;
    extern "C" {
        fn getrlimit(resource: i32, rlim: *mut RLimit) -> i32;
        fn setrlimit(resource: i32, rlim: *const RLimit) -> i32;
    }
    let mut lim = RLimit { cur: 0, max: 0 };
    // SAFETY: `lim` is a valid, writable `struct rlimit` (two 64-bit fields on Linux).
    if unsafe { getrlimit(RLIMIT_NOFILE, &mut lim) } != 0 {
        return None;
    }
    if lim.cur < lim.max {
        let raised = RLimit {
            cur: lim.max,
            max: lim.max,
        };
        // SAFETY: as above; raising the soft limit up to the hard one needs no privilege.
        if unsafe { setrlimit(RLIMIT_NOFILE, &raised) } == 0 {
            return Some(lim.max);
        }
    }
    Some(lim.cur)
}

#[cfg(not(target_os = "linux"))]
fn raise_fd_limit() -> Option<u64> {
    None
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    if full {
        if let Some(limit) = raise_fd_limit() {
            eprintln!("open-file limit: {limit}");
        }
    }
    let charts_only = std::env::args().any(|a| a == "--charts-only");
    let load = Load {
        open_rate: arg("--open-rate")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0),
    };
    let frame_delay_ms: u64 = arg("--frame-delay-ms")
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let ns: Vec<usize> = arg("--n")
        .unwrap_or_else(|| {
            if full {
                "1,100,1000,10000".into()
            } else {
                "1,20".into()
            }
        })
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    let ways: Vec<Way> = arg("--ways")
        .unwrap_or_else(|| {
            if full {
                "direct,proxy,nginx".into()
            } else {
                "direct,proxy".into()
            }
        })
        .split(',')
        .filter_map(|w| match w.trim() {
            "direct" => Some(Way::Direct),
            "proxy" => Some(Way::Proxy),
            "nginx" => Some(Way::Nginx),
            _ => None,
        })
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let rows = if charts_only {
        Vec::new()
    } else {
        rt.block_on(async {
        let sim = start_sim(frame_delay_ms);
        let sim_port = sim.addr.port();
        let proxy = ways.contains(&Way::Proxy).then(|| start_proxy(sim_port));
        // nginx binds the port it is given: the only one picked in advance.
        let nginx_port = process::free_port();
        let nginx_dir = std::env::temp_dir().join(format!("qwen-load-nginx-{}", std::process::id()));
        let nginx = if ways.contains(&Way::Nginx) { start_nginx(nginx_port, sim_port, &nginx_dir).await } else { None };
        let mut rows = Vec::new();
        for &n in &ns {
            let mut direct_p99 = None;
            for &way in &ways {
                let (port, work) = match way {
                    Way::Direct => (sim_port, vec![sim.pid()]),
                    Way::Proxy => match &proxy {
                        Some(p) => (p.addr.port(), vec![p.pid()]),
                        None => continue,
                    },
                    Way::Nginx => match &nginx {
                        Some(p) => (nginx_port, work_pids(p.child.id(), true)),
                        None => {
                            eprintln!("nginx not found: skipping the nginx way");
                            continue;
                        }
                    },
                };
                let mut row = run_way(way, n, port, &work, load).await;
                if way == Way::Direct {
                    direct_p99 = Some(row.ttft_p99_ms);
                }
                row.added_ttft_p99_ms = direct_p99.map_or(0.0, |d| row.ttft_p99_ms - d);
                println!(
                    "{:<6} n={:<6} ok={:<6} err={:<4} ttft p50/p90/p99 {:>7.2}/{:>7.2}/{:>7.2} ms (+{:>6.2}) gap p99 {:>6.2} ms  {:>8.1} req/s {:>9.1} chunks/s  cpu {:>6.3} s/1k chunks  rss peak {:>6.1} MiB, {:>6.1} KiB/stream{}",
                    row.way, n, row.ok, row.errors, row.ttft_p50_ms, row.ttft_p90_ms, row.ttft_p99_ms, row.added_ttft_p99_ms,
                    row.inter_chunk_p99_ms, row.requests_per_s, row.chunks_per_s, row.cpu_s_per_1000_chunks, row.peak_rss_mib,
                    row.rss_per_open_stream_kib,
                    row.first_error.as_deref().map(|e| format!("  first error: {e}")).unwrap_or_default()
                );
                rows.push(row);
            }
        }
        drop(nginx);
        let _ = std::fs::remove_dir_all(&nginx_dir);
        rows
    })
    };
    if full {
        let out = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let _ = std::fs::create_dir_all(out.join("docs/bench"));
        // Merge with earlier runs (a run may cover only some N or ways): newer rows win.
        let path = out.join("docs/bench/load.json");
        let mut merged: Vec<Row> = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Vec<serde_json::Value>>(&b).ok())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|v| serde_json::from_value::<Row>(v).ok())
            .filter(|old| {
                !rows
                    .iter()
                    .any(|r| r.way == old.way && r.n == old.n && r.mode == old.mode)
            })
            .collect();
        merged.extend(rows.iter().cloned());
        merged.sort_by(|a, b| (&a.mode, a.n, &a.way).cmp(&(&b.mode, b.n, &b.way)));
        let rows = merged;
        let _ = std::fs::write(
            &path,
            serde_json::to_string_pretty(&rows).unwrap_or_default(),
        );
        let _ = std::fs::create_dir_all(out.join("docs/bench"));
        let series =
            |f: fn(&Row) -> f64, ways: &[&'static str]| -> Vec<(&'static str, Vec<(f64, f64)>)> {
                ways.iter()
                    .map(|w| {
                        (
                            *w,
                            rows.iter()
                                .filter(|r| r.way == *w && r.ok > 0 && r.mode == "herd")
                                .map(|r| (r.n as f64, f(r)))
                                .collect(),
                        )
                    })
                    .collect()
            };
        svg_chart(
            "Added TTFT p99 over direct (ms)",
            "ms",
            &series(|r| r.added_ttft_p99_ms, &["proxy", "nginx"]),
            &out.join("docs/bench/added-ttft.svg"),
        );
        svg_chart(
            "TTFT p99 (ms)",
            "ms",
            &series(|r| r.ttft_p99_ms, &["direct", "proxy", "nginx"]),
            &out.join("docs/bench/ttft-p99.svg"),
        );
        svg_chart(
            "RSS per open stream (KiB)",
            "KiB",
            &series(|r| r.rss_per_open_stream_kib, &["direct", "proxy", "nginx"]),
            &out.join("docs/bench/rss-per-stream.svg"),
        );
        svg_chart(
            "CPU seconds per 1,000 chunks",
            "s",
            &series(|r| r.cpu_s_per_1000_chunks, &["direct", "proxy", "nginx"]),
            &out.join("docs/bench/cpu-per-1000-chunks.svg"),
        );
    } else {
        // Quick mode is a correctness smoke test: never a timing assertion.
        for r in &rows {
            assert_eq!(r.errors, 0, "{r:?}");
            assert_eq!(r.ok, r.n, "{r:?}");
            assert_eq!(r.wrong_answers, 0, "{r:?}");
        }
        println!(
            "load smoke test: {} runs, all streams complete and correct",
            rows.len()
        );
    }
}
