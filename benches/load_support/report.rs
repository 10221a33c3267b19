//! Rows: what is printed, what `docs/bench/load.json` holds, and the comparisons with the
//! baseline (`direct` at the same N and mode): added TTFT (or latency, non-stream) and the
//! saturation flag.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// A share of one core at which a process counts as pegged (10 ms ticks leave some slack).
pub const PEGGED: f64 = 0.9;

/// In non-stream mode, a request started this much after its scheduled time (max over the
/// run) says the client could not keep to the schedule: the row is flagged. The timer's
/// 1 ms resolution and a task's wait for the client's one runtime thread stay well below.
pub const LATE_MS: f64 = 10.0;

/// One way at one N in one mode, in one set-up. Keyed in `load.json` by (way, n, mode,
/// pinned, proxy_env, binary): rows of different set-ups coexist.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Row {
    pub way: String,
    /// `first-herd`, `warm`, `first-open R/s`, `warm-open R/s`, `throughput c=C` or
    /// `non-stream R/s`; ` unpinned` appended when the row is not `pinned`.
    pub mode: String,
    /// Streams per round (herd, open), concurrent client loops (throughput), or requests
    /// scheduled per second (non-stream).
    pub n: usize,
    /// The servers on CPU 1, the client on CPU 0 (the script's `taskset`), nginx with one
    /// worker; false (`--unpinned`): nothing pinned, nginx with a worker per core. Rows from
    /// before the flag were pinned.
    #[serde(default = "pinned_before")]
    pub pinned: bool,
    /// `--proxy-env KEY=VALUE`s the proxy ran with (proxy ways only).
    pub proxy_env: Vec<String>,
    /// `LOAD_PROXY_BIN`, when the servers ran another build than the bench's own.
    pub binary: Option<String>,
    /// Rounds pooled into this row.
    pub rounds: usize,
    pub requests: usize,
    /// Streams that ran to their end (right answer or not).
    pub ok: usize,
    /// Requests that failed: the sum of the four kinds below.
    pub errors: usize,
    pub connect_errors: usize,
    pub request_errors: usize,
    pub status_errors: usize,
    pub body_errors: usize,
    /// Streams that ended but whose text is not the simulator's answer, byte for byte.
    pub wrong_answers: usize,
    pub ttft_p50_ms: f64,
    pub ttft_p90_ms: f64,
    pub ttft_p99_ms: f64,
    /// Over the baseline; `None` without one.
    pub added_ttft_p50_ms: Option<f64>,
    pub added_ttft_p99_ms: Option<f64>,
    pub inter_chunk_p99_ms: f64,
    /// Wall time of the pooled rounds (the pauses between rounds not counted).
    pub wall_s: f64,
    pub requests_per_s: f64,
    pub chunks_per_s: f64,
    /// CPU seconds of the middle process (proxy; nginx master and worker; the simulator
    /// for `direct`) per 1,000 answer chunks.
    pub cpu_s_per_1000_chunks: f64,
    /// The simulator's own, per 1,000 answer chunks.
    pub sim_cpu_s_per_1000_chunks: f64,
    /// CPU time over wall time: the client (pinned to CPU 0) and the servers (middle plus
    /// simulator, pinned together to CPU 1). 1.0 = one core busy throughout.
    pub client_cpu_util: f64,
    pub server_cpu_util: f64,
    /// How busy the client's core (CPU 0) and the servers' (CPU 1) were, by anyone —
    /// interrupts and other programs too — when pinned apart (10 ms ticks). Well above the
    /// processes' own use: something else ran there. `None` unpinned: no core is anyone's.
    pub client_core_busy: Option<f64>,
    pub server_core_busy: Option<f64>,
    /// How busy all the machine's cores were together, by anyone (`None` in rows from
    /// before it was recorded): unpinned, what says the machine was saturated.
    pub cores_busy: Option<f64>,
    pub peak_rss_mib: f64,
    pub rss_per_open_stream_kib: f64,
    pub max_open_streams: usize,
    /// `TcpExt` deltas over the rounds (system-wide; only our loopback traffic here).
    pub listen_overflows: u64,
    pub listen_drops: u64,
    pub syn_retrans: u64,
    /// Connections accepted by all servers over the rows' rounds (`PassiveOpens`).
    #[serde(default)]
    pub new_connections: u64,
    /// The baseline is saturated (see `saturation`), so TTFT here is mostly queueing.
    pub saturated: bool,
    pub saturated_why: Option<String>,
    pub sim_ttft_ms: u64,
    pub sim_frame_delay_ms: u64,
    /// When the row was measured, and the source it ran (`git describe --always --dirty`).
    pub run_unix: u64,
    pub commit: Option<String>,
    pub first_error: Option<String>,
    /// The non-stream mode's figures; `None` in the streaming modes, whose TTFT and chunk
    /// figures are 0 here instead.
    pub non_stream: Option<NonStream>,
}

fn pinned_before() -> bool {
    true
}

/// What an open-loop run of non-streamed completions measures. Latency runs from a
/// request's *scheduled* start to its body's last byte, so a late start is charged to it.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct NonStream {
    /// Requests scheduled per second.
    pub rate: f64,
    pub latency_p50_ms: f64,
    pub latency_p90_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_p999_ms: f64,
    /// Over the baseline (`direct` at the same rate); `None` without one.
    pub added_latency_p50_ms: Option<f64>,
    pub added_latency_p99_ms: Option<f64>,
    /// How late the client started requests against the schedule.
    pub start_late_p99_ms: f64,
    pub start_late_max_ms: f64,
    /// CPU seconds per 1,000 completed requests: the middle process (the simulator for
    /// `direct`) and the simulator.
    pub cpu_s_per_1000_requests: f64,
    pub sim_cpu_s_per_1000_requests: f64,
}

impl Row {
    /// The key rows are merged by in `load.json`.
    fn same_key(&self, other: &Row) -> bool {
        self.way == other.way
            && self.n == other.n
            && self.mode == other.mode
            && self.pinned == other.pinned
            && self.proxy_env == other.proxy_env
            && self.binary == other.binary
    }
}

/// How busy the client's core was (by anyone, when known; else by the client).
fn client_busy(r: &Row) -> f64 {
    r.client_core_busy.unwrap_or(r.client_cpu_util)
}

/// How busy the servers' core was (by anyone, when known; else by the servers); unpinned,
/// the servers may use every core, so how busy all of them were.
fn server_busy(r: &Row) -> f64 {
    let core = if r.pinned {
        r.server_core_busy
    } else {
        r.cores_busy
    };
    core.unwrap_or(r.server_cpu_util)
}

/// What `server_busy` measured, for the reader.
fn server_cores(r: &Row) -> &'static str {
    match (r.pinned, crate::servers::cpus()) {
        (true, _) => "server core",
        (false, 2) => "both cores",
        (false, _) => "all cores",
    }
}

/// Why the rows at `direct`'s N and mode measure a saturated machine, if they do:
/// * herd and open modes (the simulator has a TTFT): direct's TTFT p50 is over twice the
///   simulator's configured TTFT, or during direct's run the client's core or the
///   servers' core (unpinned: all cores) was busy ≥ `PEGGED` of the time;
/// * throughput (zero TTFT): the servers' core is meant to be pegged there, so only a
///   pegged client core counts, and it is the row's own: then requests/s measures the
///   client rather than the way;
/// * non-stream: the row's own client — its core pegged, or a request started over
///   `LATE_MS` late: the schedule was the client's, not the way's — or, under direct, the
///   servers' core (unpinned: all cores) pegged.
pub fn saturation(row: &Row, direct: Option<&Row>) -> Option<String> {
    let mut why = Vec::new();
    if let Some(ns) = &row.non_stream {
        if client_busy(row) >= PEGGED {
            why.push(format!(
                "client core {:.0} % busy",
                client_busy(row) * 100.0
            ));
        }
        if ns.start_late_max_ms > LATE_MS {
            why.push(format!(
                "client started requests up to {:.1} ms late",
                ns.start_late_max_ms
            ));
        }
        if let Some(d) = direct.filter(|d| server_busy(d) >= PEGGED) {
            why.push(format!(
                "{} {:.0} % busy under direct",
                server_cores(d),
                server_busy(d) * 100.0
            ));
        }
    } else if row.sim_ttft_ms == 0 {
        if client_busy(row) >= PEGGED {
            why.push(format!(
                "client core {:.0} % busy",
                client_busy(row) * 100.0
            ));
        }
    } else if let Some(d) = direct {
        if d.ttft_p50_ms > 2.0 * d.sim_ttft_ms as f64 {
            why.push(format!(
                "direct TTFT p50 {:.0} ms > 2 × {} ms",
                d.ttft_p50_ms, d.sim_ttft_ms
            ));
        }
        if client_busy(d) >= PEGGED {
            why.push(format!(
                "client core {:.0} % busy under direct",
                client_busy(d) * 100.0
            ));
        }
        if server_busy(d) >= PEGGED {
            why.push(format!(
                "{} {:.0} % busy under direct",
                server_cores(d),
                server_busy(d) * 100.0
            ));
        }
    }
    (!why.is_empty()).then(|| why.join("; "))
}

/// Fill in what `row` owes to the baseline among `known` (the newest `direct` row at the
/// same N, mode and pinning wins, one run by the same binary first): added TTFT or latency,
/// and the saturation flag.
pub fn relate(row: &mut Row, known: &[Row]) {
    let direct = if row.way == "direct" {
        Some(row.clone()) // its own baseline, not an older measurement of itself
    } else {
        let baselines = || {
            known.iter().rev().filter(|d| {
                d.way == "direct" && d.n == row.n && d.mode == row.mode && d.pinned == row.pinned
            })
        };
        baselines()
            .find(|d| d.binary == row.binary)
            .or_else(|| baselines().next())
            .cloned()
    };
    if let Some(ns) = &mut row.non_stream {
        let base = direct.as_ref().and_then(|d| d.non_stream.as_ref());
        ns.added_latency_p50_ms = base.map(|b| ns.latency_p50_ms - b.latency_p50_ms);
        ns.added_latency_p99_ms = base.map(|b| ns.latency_p99_ms - b.latency_p99_ms);
    } else {
        row.added_ttft_p50_ms = direct.as_ref().map(|d| row.ttft_p50_ms - d.ttft_p50_ms);
        row.added_ttft_p99_ms = direct.as_ref().map(|d| row.ttft_p99_ms - d.ttft_p99_ms);
    }
    row.saturated_why = saturation(row, direct.as_ref());
    row.saturated = row.saturated_why.is_some();
}

/// The line printed per row.
pub fn line(r: &Row) -> String {
    let cores = match (r.client_core_busy, r.server_core_busy, r.cores_busy) {
        (Some(c), Some(s), _) => format!(" (cores busy {:.0} % / {:.0} %)", c * 100.0, s * 100.0),
        (_, _, Some(all)) if !r.pinned => {
            format!(" ({} busy {:.0} %)", server_cores(r), all * 100.0)
        }
        _ => String::new(),
    };
    let errors = format!(
        "ok={:<6} err={} (connect {}, request {}, status {}, body {}) wrong={}",
        r.ok,
        r.errors,
        r.connect_errors,
        r.request_errors,
        r.status_errors,
        r.body_errors,
        r.wrong_answers,
    );
    let mut s = match &r.non_stream {
        Some(ns) => non_stream_line(r, ns, &errors, &cores),
        None => stream_line(r, &errors, &cores),
    };
    s += &format!("  new connections {}", r.new_connections);
    if !r.proxy_env.is_empty() {
        s += &format!("  proxy env {}", r.proxy_env.join(" "));
    }
    if let Some(b) = &r.binary {
        s += &format!("  binary {b}");
    }
    if let Some(why) = &r.saturated_why {
        s += &format!("  SATURATED: {why}");
    }
    if let Some(e) = &r.first_error {
        s += &format!("  first error: {e}");
    }
    s
}

fn stream_line(r: &Row, errors: &str, cores: &str) -> String {
    let added = match r.added_ttft_p99_ms {
        Some(a) if r.way != "direct" => format!(" ({a:+.1})"),
        _ => String::new(),
    };
    format!(
        "{:<8} {:<16} n={:<6} {errors}  \
         ttft p50/p90/p99 {:.1}/{:.1}/{:.1} ms{added}  gap p99 {:.1} ms  {:.0} req/s {:.0} chunks/s  \
         cpu {:.4} s/1k chunks (sim {:.4})  util client {:.0} % servers {:.0} %{cores}  \
         rss {:.1} MiB, {:.1} KiB/stream  listen overflows {} drops {} syn-retrans {}",
        r.way,
        r.mode,
        r.n,
        r.ttft_p50_ms,
        r.ttft_p90_ms,
        r.ttft_p99_ms,
        r.inter_chunk_p99_ms,
        r.requests_per_s,
        r.chunks_per_s,
        r.cpu_s_per_1000_chunks,
        r.sim_cpu_s_per_1000_chunks,
        r.client_cpu_util * 100.0,
        r.server_cpu_util * 100.0,
        r.peak_rss_mib,
        r.rss_per_open_stream_kib,
        r.listen_overflows,
        r.listen_drops,
        r.syn_retrans,
    )
}

fn non_stream_line(r: &Row, ns: &NonStream, errors: &str, cores: &str) -> String {
    let added = match (ns.added_latency_p50_ms, ns.added_latency_p99_ms) {
        (Some(a), Some(b)) if r.way != "direct" => format!(" (added {a:+.1}/{b:+.1})"),
        _ => String::new(),
    };
    format!(
        "{:<8} {:<16} {errors}  \
         latency p50/p90/p99/p99.9 {:.1}/{:.1}/{:.1}/{:.1} ms{added}  {:.0} req/s achieved  \
         start late p99/max {:.1}/{:.1} ms  in flight ≤ {}  \
         cpu {:.4} s/1k requests (sim {:.4})  util client {:.0} % servers {:.0} %{cores}  \
         rss {:.1} MiB  listen overflows {} syn-retrans {}",
        r.way,
        r.mode,
        ns.latency_p50_ms,
        ns.latency_p90_ms,
        ns.latency_p99_ms,
        ns.latency_p999_ms,
        r.requests_per_s,
        ns.start_late_p99_ms,
        ns.start_late_max_ms,
        r.max_open_streams,
        ns.cpu_s_per_1000_requests,
        ns.sim_cpu_s_per_1000_requests,
        r.client_cpu_util * 100.0,
        r.server_cpu_util * 100.0,
        r.peak_rss_mib,
        r.listen_overflows,
        r.syn_retrans,
    )
}

/// The rows of `load.json`. A file from before the per-(N, way) restarts and the
/// HTTP/1.1-upstream `proxy` way (a bare array of rows) is not merged: its `proxy` rows
/// measured what is now `proxy-h2`, on servers that earlier herds had warmed.
pub fn read_rows(path: &Path) -> Vec<Row> {
    let Some(v) = std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
    else {
        return Vec::new();
    };
    match v.get("rows").and_then(|r| r.as_array()) {
        Some(rows) => rows
            .iter()
            .filter_map(|r| serde_json::from_value(r.clone()).ok())
            .collect(),
        None => {
            eprintln!(
                "{}: rows of the old format, measured differently: not merged",
                path.display()
            );
            Vec::new()
        }
    }
}

/// Merge `new` into `old` (the rows the file held: newer rows replace those with their
/// key), refresh the comparisons with the baseline, and write `path` with this machine's
/// facts — those this run could not give (null) kept from the file: an unpinned run says
/// nothing of where the pinned rows ran.
pub fn write_rows(
    path: &Path,
    old: Vec<Row>,
    new: &[Row],
    mut machine: serde_json::Value,
) -> std::io::Result<()> {
    let old_machine = std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.get("machine").cloned());
    if let (Some(facts), Some(old_facts)) = (machine.as_object_mut(), old_machine) {
        for (k, v) in facts.iter_mut().filter(|(_, v)| v.is_null()) {
            if let Some(o) = old_facts.get(k) {
                v.clone_from(o);
            }
        }
    }
    let mut rows: Vec<Row> = old
        .into_iter()
        .filter(|old| !new.iter().any(|r| r.same_key(old)))
        .collect();
    rows.extend(new.iter().cloned());
    let known = rows.clone();
    for r in &mut rows {
        relate(r, &known);
    }
    let way_order = |w: &str| {
        ["direct", "proxy", "proxy-h2", "proxy-h1", "nginx"]
            .iter()
            .position(|x| *x == w)
    };
    let order = |r: &Row| {
        let way = (way_order(&r.way), r.way.clone());
        let setup = (!r.pinned, r.proxy_env.clone(), r.binary.clone());
        (r.mode.clone(), r.n, way, setup)
    };
    rows.sort_by_key(order);
    let file = serde_json::json!({ "machine": machine, "rows": rows });
    let text = serde_json::to_string_pretty(&file).map_err(std::io::Error::other)?;
    std::fs::write(path, text + "\n")
}

/// The machine and set-up the rows were measured on (the latest run's). `pinned`: this
/// run's rows were.
pub fn machine_facts(open_file_limit: Option<u64>, pinned: bool) -> serde_json::Value {
    let read = |p: &str| std::fs::read_to_string(p).ok().map(|s| s.trim().to_owned());
    let cpu_model = read("/proc/cpuinfo").and_then(|c| {
        c.lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
    });
    let nginx = crate::servers::nginx_binary().and_then(|n| {
        let out = std::process::Command::new(n).arg("-v").output().ok()?;
        // `nginx -v` prints to stderr: "nginx version: nginx/1.22.1".
        let text = String::from_utf8_lossy(&out.stderr);
        text.split_once("version: ")
            .map(|(_, v)| v.trim().to_owned())
    });
    serde_json::json!({
        "cpus": crate::servers::cpus(),
        "cpu_model": cpu_model,
        "kernel": read("/proc/sys/kernel/osrelease"),
        "somaxconn": read("/proc/sys/net/core/somaxconn").and_then(|v| v.parse::<u64>().ok()),
        "listen_backlog": crate::servers::LISTEN_BACKLOG,
        "open_file_limit": open_file_limit,
        "nginx": nginx,
        // Where the servers and the client of the pinned rows run (`Cpus_allowed_list`
        // notation); unpinned rows (`"pinned": false`) run anywhere.
        "server_cpus": pinned.then_some("1"),
        "client_cpus": if pinned { client_cpus() } else { None },
    })
}

/// The CPUs this process may run on (`Cpus_allowed_list`): "0" when the script pinned it.
pub fn client_cpus() -> Option<String> {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Cpus_allowed_list:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .map(str::to_owned)
        })
}

/// `git describe --always --dirty` of the source tree, if git answers.
pub fn commit() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}
