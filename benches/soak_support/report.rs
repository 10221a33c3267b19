//! The soak's samples: what is read every interval, the CSV, the printed table and the
//! flatness of each series.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::Ordering;

use crate::servers::{self, Stack};
use crate::traffic::{HttpClient, Kind, Stats};

/// One reading of both processes and of the traffic so far.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    /// Seconds since the traffic started (negative: before it).
    pub t: f64,
    /// `idle` (before traffic), `load`, `quiet` (after it stopped).
    pub phase: &'static str,
    /// The proxy's `/metrics`: `process_resident_memory_bytes` (KiB here),
    /// `process_open_fds`, `tokio_alive_tasks`, `chat_active_streams`,
    /// `conversation_sessions`.
    pub proxy_rss_kib: u64,
    pub proxy_fds: u64,
    pub proxy_tasks: u64,
    pub proxy_streams: u64,
    pub proxy_sessions: u64,
    /// `/proc/PID/status` `Threads`.
    pub proxy_threads: u64,
    /// The simulator's `/proc/PID/status` `VmRSS`, `/proc/PID/fd` entries, `Threads`.
    pub sim_rss_kib: u64,
    pub sim_fds: u64,
    pub sim_threads: u64,
    /// Operations finished, HTTP requests sent, unexpected outcomes: so far, all kinds.
    pub ops: u64,
    pub requests: u64,
    pub unexpected: u64,
    /// Per kind (in `Kind::ALL` order): operations finished and unexpected outcomes so far.
    pub per_kind: Vec<(u64, u64)>,
    /// The machine's 1-minute load average (`/proc/loadavg`): other work shows here.
    pub loadavg: f64,
}

pub async fn sample(
    client: &HttpClient,
    stack: &Stack,
    stats: &Stats,
    t: f64,
    phase: &'static str,
) -> Sample {
    let metrics = servers::get_text(client, &format!("{}/metrics", stack.proxy_url()), None)
        .await
        .unwrap_or_default();
    let m = |name: &str| servers::metric(&metrics, name).map_or(0, |v| v as u64);
    let (_, proxy_threads) = servers::proc_status(stack.proxy.pid());
    let (sim_rss_kib, sim_threads) = servers::proc_status(stack.sim.pid());
    let (ops, requests, unexpected) = stats.totals();
    Sample {
        t,
        phase,
        proxy_rss_kib: m("process_resident_memory_bytes") / 1024,
        proxy_fds: m("process_open_fds"),
        proxy_tasks: m("tokio_alive_tasks"),
        proxy_streams: m("chat_active_streams"),
        proxy_sessions: m("conversation_sessions"),
        proxy_threads,
        sim_rss_kib,
        sim_fds: servers::open_fds(stack.sim.pid()),
        sim_threads,
        ops,
        requests,
        unexpected,
        per_kind: Kind::ALL
            .iter()
            .map(|k| {
                let s = stats.kind(*k);
                (
                    s.ops.load(Ordering::Relaxed),
                    s.unexpected.load(Ordering::Relaxed),
                )
            })
            .collect(),
        loadavg: std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0),
    }
}

pub fn write_csv(path: &Path, samples: &[Sample]) -> std::io::Result<()> {
    let mut out = String::from(
        "t_s,phase,proxy_rss_kib,proxy_open_fds,proxy_tokio_alive_tasks,proxy_chat_active_streams,\
         proxy_conversation_sessions,proxy_threads,sim_rss_kib,sim_open_fds,sim_threads,ops,requests,unexpected,loadavg_1m",
    );
    for k in Kind::ALL {
        let _ = write!(out, ",{0}_ops,{0}_unexpected", k.name());
    }
    out.push('\n');
    for s in samples {
        let _ = write!(
            out,
            "{:.1},{},{},{},{},{},{},{},{},{},{},{},{},{},{:.2}",
            s.t,
            s.phase,
            s.proxy_rss_kib,
            s.proxy_fds,
            s.proxy_tasks,
            s.proxy_streams,
            s.proxy_sessions,
            s.proxy_threads,
            s.sim_rss_kib,
            s.sim_fds,
            s.sim_threads,
            s.ops,
            s.requests,
            s.unexpected,
            s.loadavg
        );
        for (ops, bad) in &s.per_kind {
            let _ = write!(out, ",{ops},{bad}");
        }
        out.push('\n');
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, out)
}

pub const HEADER: &str = "     t  phase  | proxy RSS MiB   fds  tasks  streams  sessions | sim RSS MiB   fds | ops/s   req/s  unexpected  load";

/// One printed line; `prev` gives the rates over the interval.
pub fn line(s: &Sample, prev: Option<&Sample>) -> String {
    let (ops_rate, req_rate) = match prev {
        Some(p) if s.t > p.t => (
            (s.ops - p.ops) as f64 / (s.t - p.t),
            (s.requests - p.requests) as f64 / (s.t - p.t),
        ),
        _ => (0.0, 0.0),
    };
    format!(
        "{:>6.0}  {:<5}  | {:>13.1} {:>5} {:>6} {:>8} {:>9} | {:>11.1} {:>5} | {:>5.1} {:>7.1} {:>11} {:>5.1}",
        s.t,
        s.phase,
        s.proxy_rss_kib as f64 / 1024.0,
        s.proxy_fds,
        s.proxy_tasks,
        s.proxy_streams,
        s.proxy_sessions,
        s.sim_rss_kib as f64 / 1024.0,
        s.sim_fds,
        ops_rate,
        req_rate,
        s.unexpected,
        s.loadavg
    )
}

pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// A series' medians over the second and the last third of the load samples (the first
/// third is warm-up).
#[derive(Clone, Copy, Debug)]
pub struct Thirds {
    pub second: f64,
    pub last: f64,
}

impl Thirds {
    pub fn of(load: &[Sample], f: impl Fn(&Sample) -> u64) -> Thirds {
        let n = load.len();
        let part = |a: usize, b: usize| median(load[a..b].iter().map(|s| f(s) as f64).collect());
        Thirds {
            second: part(n / 3, 2 * n / 3),
            last: part(2 * n / 3, n),
        }
    }
    /// The least-squares slope per minute over the second and last thirds: a ramp shows
    /// here even when the growth between thirds stays under the limit.
    pub fn slope_per_min(load: &[Sample], f: impl Fn(&Sample) -> u64) -> f64 {
        let after = &load[load.len() / 3..];
        let n = after.len() as f64;
        if after.len() < 2 {
            return 0.0;
        }
        let mx = after.iter().map(|s| s.t).sum::<f64>() / n;
        let my = after.iter().map(|s| f(s) as f64).sum::<f64>() / n;
        let sxx: f64 = after.iter().map(|s| (s.t - mx).powi(2)).sum();
        let sxy: f64 = after.iter().map(|s| (s.t - mx) * (f(s) as f64 - my)).sum();
        if sxx > 0.0 {
            60.0 * sxy / sxx
        } else {
            0.0
        }
    }

    pub fn growth(self) -> f64 {
        self.last - self.second
    }
    pub fn growth_pct(self) -> f64 {
        if self.second > 0.0 {
            100.0 * (self.last - self.second) / self.second
        } else {
            0.0
        }
    }
}
