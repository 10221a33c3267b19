//! Rows: what is printed, what `docs/bench/load.json` holds, and the comparisons with the
//! baseline (`direct` at the same N and mode): added TTFT and the saturation flag.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// A share of one core at which a process counts as pegged (10 ms ticks leave some slack).
pub const PEGGED: f64 = 0.9;

/// One way at one N in one mode. Keyed by (way, n, mode) in `load.json`.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Row {
    pub way: String,
    /// `first-herd`, `warm`, `first-open R/s`, `warm-open R/s` or `throughput c=C`.
    pub mode: String,
    /// Streams per round (herd, open) or concurrent client loops (throughput).
    pub n: usize,
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
    /// processes' own use: something else ran there.
    pub client_core_busy: Option<f64>,
    pub server_core_busy: Option<f64>,
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
}

/// How busy the client's core was (by anyone, when known; else by the client).
fn client_busy(r: &Row) -> f64 {
    r.client_core_busy.unwrap_or(r.client_cpu_util)
}

/// How busy the servers' core was (by anyone, when known; else by the servers).
fn server_busy(r: &Row) -> f64 {
    r.server_core_busy.unwrap_or(r.server_cpu_util)
}

/// Why the rows at `direct`'s N and mode measure a saturated machine, if they do:
/// * herd and open modes (the simulator has a TTFT): direct's TTFT p50 is over twice the
///   simulator's configured TTFT, or during direct's run the client's core or the
///   servers' core was busy ≥ `PEGGED` of the time;
/// * throughput (zero TTFT): the servers' core is meant to be pegged there, so only a
///   pegged client core counts, and it is the row's own: then requests/s measures the
///   client rather than the way.
pub fn saturation(row: &Row, direct: Option<&Row>) -> Option<String> {
    let mut why = Vec::new();
    if row.sim_ttft_ms == 0 {
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
                "server core {:.0} % busy under direct",
                server_busy(d) * 100.0
            ));
        }
    }
    (!why.is_empty()).then(|| why.join("; "))
}

/// Fill in what `row` owes to the baseline among `known` (the newest `direct` row at the
/// same N and mode wins): added TTFT and the saturation flag.
pub fn relate(row: &mut Row, known: &[Row]) {
    let direct = if row.way == "direct" {
        Some(row.clone()) // its own baseline, not an older measurement of itself
    } else {
        known
            .iter()
            .rev()
            .find(|d| d.way == "direct" && d.n == row.n && d.mode == row.mode)
            .cloned()
    };
    row.added_ttft_p50_ms = direct.as_ref().map(|d| row.ttft_p50_ms - d.ttft_p50_ms);
    row.added_ttft_p99_ms = direct.as_ref().map(|d| row.ttft_p99_ms - d.ttft_p99_ms);
    row.saturated_why = saturation(row, direct.as_ref());
    row.saturated = row.saturated_why.is_some();
}

/// The line printed per row.
pub fn line(r: &Row) -> String {
    let added = match r.added_ttft_p99_ms {
        Some(a) if r.way != "direct" => format!(" ({a:+.1})"),
        _ => String::new(),
    };
    let cores = match (r.client_core_busy, r.server_core_busy) {
        (Some(c), Some(s)) => format!(" (cores busy {:.0} % / {:.0} %)", c * 100.0, s * 100.0),
        _ => String::new(),
    };
    let mut s = format!(
        "{:<8} {:<16} n={:<6} ok={:<6} err={} (connect {}, request {}, status {}, body {}) wrong={}  \
         ttft p50/p90/p99 {:.1}/{:.1}/{:.1} ms{added}  gap p99 {:.1} ms  {:.0} req/s {:.0} chunks/s  \
         cpu {:.4} s/1k chunks (sim {:.4})  util client {:.0} % servers {:.0} %{cores}  \
         rss {:.1} MiB, {:.1} KiB/stream  listen overflows {} drops {} syn-retrans {}",
        r.way,
        r.mode,
        r.n,
        r.ok,
        r.errors,
        r.connect_errors,
        r.request_errors,
        r.status_errors,
        r.body_errors,
        r.wrong_answers,
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
    );
    s += &format!("  new connections {}", r.new_connections);
    if let Some(why) = &r.saturated_why {
        s += &format!("  SATURATED: {why}");
    }
    if let Some(e) = &r.first_error {
        s += &format!("  first error: {e}");
    }
    s
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
/// facts.
pub fn write_rows(
    path: &Path,
    old: Vec<Row>,
    new: &[Row],
    machine: serde_json::Value,
) -> std::io::Result<()> {
    let mut rows: Vec<Row> = old
        .into_iter()
        .filter(|old| {
            !new.iter()
                .any(|r| r.way == old.way && r.n == old.n && r.mode == old.mode)
        })
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
    rows.sort_by(|a, b| {
        (&a.mode, a.n, way_order(&a.way), &a.way).cmp(&(&b.mode, b.n, way_order(&b.way), &b.way))
    });
    let file = serde_json::json!({ "machine": machine, "rows": rows });
    let text = serde_json::to_string_pretty(&file).map_err(std::io::Error::other)?;
    std::fs::write(path, text + "\n")
}

/// The machine and set-up the rows were measured on (the latest run's).
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
        // Where the servers and the client may run (`Cpus_allowed_list` notation).
        "server_cpus": if pinned { "1".to_owned() } else { client_cpus().unwrap_or_default() },
        "client_cpus": client_cpus(),
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
