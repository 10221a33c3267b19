//! What one round of load costs, read from the kernel around it — CPU time of the client,
//! the middle process and the simulator, the middle's peak memory, streams open at once,
//! the TCP listen-queue counters — and how rounds (or an open-loop run of non-streamed
//! completions) become a row.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::client::{ErrorKind, Scheduled, Stream, StreamError};
use crate::report::{NonStream, Row};
use crate::servers::{self, CpuTime, Servers, Timing, Way};

/// TCP counters from `/proc/net/netstat` (`TcpExt:`). They count for the whole network
/// namespace, not per socket: the deltas are ours only while nothing else on this machine
/// opens connections (all of ours are on loopback).
#[derive(Default, Clone, Copy, Debug)]
pub struct Tcp {
    /// Connections that found a listen queue full (the kernel then drops the handshake's
    /// last ACK, or the SYN, and the client retransmits a second later).
    pub listen_overflows: u64,
    /// SYNs or handshakes dropped at a listener, overflows included.
    pub listen_drops: u64,
    /// SYN retransmissions (`TCPSynRetrans`): each one is a client waiting 1 s or more to
    /// connect — what an overflow costs.
    pub syn_retrans: u64,
    /// Connections accepted (`Tcp: PassiveOpens`, `/proc/net/snmp`): in a warm round the
    /// client reuses its connections, so these are the middle process's new connections to
    /// the simulator — what a connection pool saves.
    pub passive_opens: u64,
}

impl Tcp {
    pub fn read() -> Tcp {
        let text = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
        // Pairs of lines: `TcpExt: Name1 Name2 …`, then `TcpExt: 1 2 …`.
        let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
        let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
            return Tcp::default();
        };
        let get = |name: &str| {
            names
                .split_whitespace()
                .zip(values.split_whitespace())
                .find(|(k, _)| *k == name)
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0)
        };
        let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
        let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
        let passive_opens = match (tcp.next(), tcp.next()) {
            (Some(names), Some(values)) => names
                .split_whitespace()
                .zip(values.split_whitespace())
                .find(|(k, _)| *k == "PassiveOpens")
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0),
            _ => 0,
        };
        Tcp {
            listen_overflows: get("ListenOverflows"),
            listen_drops: get("ListenDrops"),
            syn_retrans: get("TCPSynRetrans"),
            passive_opens,
        }
    }

    fn since(self, before: Tcp) -> Tcp {
        Tcp {
            listen_overflows: self
                .listen_overflows
                .saturating_sub(before.listen_overflows),
            listen_drops: self.listen_drops.saturating_sub(before.listen_drops),
            syn_retrans: self.syn_retrans.saturating_sub(before.syn_retrans),
            passive_opens: self.passive_opens.saturating_sub(before.passive_opens),
        }
    }
}

/// Busy and total ticks of one CPU, or of all together, so far (`/proc/stat`; busy = all but
/// idle and iowait), whoever was busy: our processes, interrupts, or anything else on the
/// machine.
#[derive(Default, Clone, Copy, Debug)]
pub struct CoreTicks {
    pub busy: u64,
    pub total: u64,
}

impl CoreTicks {
    /// `name`: `cpu0`, `cpu1`, …, or `cpu` for all of them.
    fn read(name: &str) -> CoreTicks {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let Some(line) = stat
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
        else {
            return CoreTicks::default();
        };
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .take(8) // user nice system idle iowait irq softirq steal; guest is in user
            .filter_map(|x| x.parse().ok())
            .collect();
        let total: u64 = v.iter().sum();
        let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
        CoreTicks {
            busy: total - idle,
            total,
        }
    }

    fn since(self, before: CoreTicks) -> CoreTicks {
        CoreTicks {
            busy: self.busy.saturating_sub(before.busy),
            total: self.total.saturating_sub(before.total),
        }
    }

    fn add(&mut self, other: CoreTicks) {
        self.busy += other.busy;
        self.total += other.total;
    }

    /// The busy share, when any time was counted.
    pub fn share(self) -> Option<f64> {
        (self.total > 0).then(|| self.busy as f64 / self.total as f64)
    }
}

/// The client's core (0) and the servers' (1), when they are pinned apart: how busy each
/// was, by anyone, which tells a pegged core — and a core shared with something else on the
/// machine — from what our processes used. Unpinned, a core is anyone's: only all of them
/// together (`CoreTicks::read("cpu")`) say something.
fn cores(pinned: bool) -> Option<(CoreTicks, CoreTicks)> {
    pinned.then(|| (CoreTicks::read("cpu0"), CoreTicks::read("cpu1")))
}

/// What one round cost.
pub struct Usage {
    pub wall: Duration,
    pub middle_cpu_s: f64,
    pub sim_cpu_s: f64,
    /// This process: the client.
    pub client_cpu_s: f64,
    /// The middle process's peak resident memory during the round, KiB.
    pub peak_rss_kib: u64,
    /// Most streams whose response had begun at one time (sampled every 5 ms).
    pub max_open: usize,
    pub tcp: Tcp,
    /// The client's core and the servers' core, when pinned apart.
    pub cores: Option<(CoreTicks, CoreTicks)>,
    /// All cores together.
    pub all_cores: CoreTicks,
}

/// One round: its streams and what it cost.
pub struct Round {
    pub usage: Usage,
    pub streams: Vec<Result<Stream, StreamError>>,
}

/// Run `work` (which makes requests, counting those in flight — streams whose response has
/// begun, or non-streamed requests started — in `open`) and measure it.
pub async fn measure<F: Future>(
    servers: &Servers,
    open: &Arc<AtomicUsize>,
    work: F,
) -> (Usage, F::Output) {
    let middle = servers.middle_pids();
    let sim = [servers.sim_pid()];
    let me = [std::process::id()];
    let peak_reset = servers::reset_peak_rss(&middle);
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (open, stop, middle) = (open.clone(), stop.clone(), middle.clone());
        tokio::spawn(async move {
            let (mut most_open, mut most_rss) = (0, 0);
            while !stop.load(Ordering::Relaxed) {
                most_open = most_open.max(open.load(Ordering::Relaxed));
                most_rss = most_rss.max(servers::rss_kib(&middle));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (most_open, most_rss)
        })
    };
    let cpu = || (CpuTime::of(&middle), CpuTime::of(&sim), CpuTime::of(&me));
    let pinned = servers.pinned();
    let (tcp0, cpu0, cores0, all0) = (Tcp::read(), cpu(), cores(pinned), CoreTicks::read("cpu"));
    let start = Instant::now();
    let output = work.await;
    let wall = start.elapsed();
    let (all1, cores1, cpu1, tcp1) = (CoreTicks::read("cpu"), cores(pinned), cpu(), Tcp::read());
    stop.store(true, Ordering::Relaxed);
    let (max_open, sampled_rss) = sampler.await.unwrap_or((0, 0));
    (
        Usage {
            wall,
            middle_cpu_s: cpu1.0.since(cpu0.0),
            // For direct the simulator is the middle: one reading, not two a moment apart.
            sim_cpu_s: if middle[..] == sim[..] {
                cpu1.0.since(cpu0.0)
            } else {
                cpu1.1.since(cpu0.1)
            },
            client_cpu_s: cpu1.2.since(cpu0.2),
            // The kernel's high-water mark sees peaks between samples; without the reset it
            // would be the process's lifetime peak, so fall back to the samples.
            peak_rss_kib: if peak_reset {
                servers::peak_rss_kib(&middle)
            } else {
                sampled_rss
            },
            max_open,
            tcp: tcp1.since(tcp0),
            cores: cores0
                .zip(cores1)
                .map(|((c0, s0), (c1, s1))| (c1.since(c0), s1.since(s0))),
            all_cores: all1.since(all0),
        },
        output,
    )
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1e3
}

/// How the streams of a row were opened, which decides how many were in flight together.
#[derive(Clone, Copy)]
pub enum Opening {
    /// All at once: at the peak all N are in flight.
    Herd,
    /// Spread out (open mode) or back to back (throughput): as many as were seen open.
    Spread,
}

/// CPU seconds the usages of a row add up to.
struct Cpu {
    middle: f64,
    sim: f64,
}

/// Fill in what `usages` (the row's rounds) cost — wall time, CPU use, how busy the cores
/// were, peak memory, requests in flight, TCP counters — and return the row's CPU seconds
/// and peak resident KiB.
fn add_usage(row: &mut Row, way: Way, usages: &[&Usage]) -> (Cpu, u64) {
    let (mut wall, mut middle_cpu, mut sim_cpu, mut client_cpu) = (0.0, 0.0, 0.0, 0.0);
    let mut peak_rss_kib = 0;
    let mut cores: Option<(CoreTicks, CoreTicks)> = None;
    let mut all_cores = CoreTicks::default();
    for u in usages {
        if let Some((c, s)) = u.cores {
            let sum = cores.get_or_insert_with(Default::default);
            sum.0.add(c);
            sum.1.add(s);
        }
        all_cores.add(u.all_cores);
        wall += u.wall.as_secs_f64();
        middle_cpu += u.middle_cpu_s;
        sim_cpu += u.sim_cpu_s;
        client_cpu += u.client_cpu_s;
        peak_rss_kib = peak_rss_kib.max(u.peak_rss_kib);
        row.max_open_streams = row.max_open_streams.max(u.max_open);
        row.listen_overflows += u.tcp.listen_overflows;
        row.listen_drops += u.tcp.listen_drops;
        row.syn_retrans += u.tcp.syn_retrans;
        row.new_connections += u.tcp.passive_opens;
    }
    row.wall_s = wall;
    let per_s = |x: f64| if wall > 0.0 { x / wall } else { 0.0 };
    row.client_cpu_util = per_s(client_cpu);
    // The servers (on CPU 1 when pinned): the middle process plus the simulator (once, for
    // direct).
    row.server_cpu_util = per_s(middle_cpu + if way == Way::Direct { 0.0 } else { sim_cpu });
    row.client_core_busy = cores.and_then(|c| c.0.share());
    row.server_core_busy = cores.and_then(|c| c.1.share());
    row.cores_busy = all_cores.share();
    row.peak_rss_mib = peak_rss_kib as f64 / 1024.0;
    let cpu = Cpu {
        middle: middle_cpu,
        sim: sim_cpu,
    };
    (cpu, peak_rss_kib)
}

/// Count a failed request by kind.
fn count_error(row: &mut Row, e: &StreamError) {
    row.errors += 1;
    *match e.kind {
        ErrorKind::Connect => &mut row.connect_errors,
        ErrorKind::Request => &mut row.request_errors,
        ErrorKind::Status => &mut row.status_errors,
        ErrorKind::Body => &mut row.body_errors,
    } += 1;
    row.first_error.get_or_insert_with(|| e.message.clone());
}

/// Count a request that ran to its end, and whether its answer is the simulator's.
fn count_answer(row: &mut Row, answer: &str, want: &str) {
    row.ok += 1;
    if answer != want {
        row.wrong_answers += 1;
        row.first_error
            .get_or_insert_with(|| format!("wrong answer ({} chars): {answer:.60}", answer.len()));
    }
}

/// One row from `rounds` (pooled: percentiles over all their samples, rates over their
/// summed wall time). `rss_base_kib`: the middle process's resident size when fresh.
pub fn summarize(
    way: Way,
    mode: String,
    n: usize,
    rounds: &[Round],
    opening: Opening,
    rss_base_kib: u64,
    timing: Timing,
) -> Row {
    let want = crate::client::expected_answer();
    let mut row = Row {
        way: way.name().into(),
        mode,
        n,
        rounds: rounds.len(),
        sim_ttft_ms: timing.ttft_ms,
        sim_frame_delay_ms: timing.frame_delay_ms,
        ..Row::default()
    };
    let usages: Vec<&Usage> = rounds.iter().map(|r| &r.usage).collect();
    let (cpu, peak_rss_kib) = add_usage(&mut row, way, &usages);
    let (mut ttfts, mut gaps, mut chunks) = (Vec::new(), Vec::new(), 0);
    for stream in rounds.iter().flat_map(|r| &r.streams) {
        row.requests += 1;
        match stream {
            Ok(s) => {
                count_answer(&mut row, &s.answer, &want);
                ttfts.extend(s.ttft);
                gaps.extend_from_slice(&s.gaps);
                chunks += s.chunks;
            }
            Err(e) => count_error(&mut row, e),
        }
    }
    ttfts.sort();
    gaps.sort();
    row.ttft_p50_ms = pct(&ttfts, 0.5);
    row.ttft_p90_ms = pct(&ttfts, 0.9);
    row.ttft_p99_ms = pct(&ttfts, 0.99);
    row.inter_chunk_p99_ms = pct(&gaps, 0.99);
    let per_s = |x: f64| {
        if row.wall_s > 0.0 {
            x / row.wall_s
        } else {
            0.0
        }
    };
    row.requests_per_s = per_s(row.ok as f64);
    row.chunks_per_s = per_s(chunks as f64);
    let per_1000_chunks = |cpu: f64| {
        if chunks > 0 {
            cpu / chunks as f64 * 1000.0
        } else {
            0.0
        }
    };
    row.cpu_s_per_1000_chunks = per_1000_chunks(cpu.middle);
    row.sim_cpu_s_per_1000_chunks = per_1000_chunks(cpu.sim);
    let in_flight = match opening {
        Opening::Herd => n,
        Opening::Spread => row.max_open_streams,
    };
    row.rss_per_open_stream_kib =
        peak_rss_kib.saturating_sub(rss_base_kib) as f64 / in_flight.max(1) as f64;
    row
}

/// The row of an open-loop run of non-streamed completions at `rate` per second: latency
/// from each request's scheduled start, how late the client started them, CPU per 1,000
/// requests. `n` is the rate.
pub fn summarize_completions(
    way: Way,
    mode: String,
    rate: f64,
    usage: &Usage,
    done: &[Scheduled],
    timing: Timing,
) -> Row {
    let want = crate::client::expected_answer();
    let mut row = Row {
        way: way.name().into(),
        mode,
        n: rate.round() as usize,
        rounds: 1,
        sim_ttft_ms: timing.ttft_ms,
        sim_frame_delay_ms: timing.frame_delay_ms,
        ..Row::default()
    };
    let (cpu, _) = add_usage(&mut row, way, &[usage]);
    let (mut latencies, mut lates) = (Vec::new(), Vec::new());
    for d in done {
        row.requests += 1;
        lates.push(d.late);
        match &d.outcome {
            Ok((latency, answer)) => {
                count_answer(&mut row, answer, &want);
                latencies.push(*latency);
            }
            Err(e) => count_error(&mut row, e),
        }
    }
    latencies.sort();
    lates.sort();
    // Over the measured run: its wall time ends with the last response.
    row.requests_per_s = if row.wall_s > 0.0 {
        row.ok as f64 / row.wall_s
    } else {
        0.0
    };
    let per_1000_requests = |cpu: f64| {
        if row.ok > 0 {
            cpu / row.ok as f64 * 1000.0
        } else {
            0.0
        }
    };
    row.non_stream = Some(NonStream {
        rate,
        latency_p50_ms: pct(&latencies, 0.5),
        latency_p90_ms: pct(&latencies, 0.9),
        latency_p99_ms: pct(&latencies, 0.99),
        latency_p999_ms: pct(&latencies, 0.999),
        start_late_p99_ms: pct(&lates, 0.99),
        start_late_max_ms: pct(&lates, 1.0),
        cpu_s_per_1000_requests: per_1000_requests(cpu.middle),
        sim_cpu_s_per_1000_requests: per_1000_requests(cpu.sim),
        ..NonStream::default()
    });
    row
}
