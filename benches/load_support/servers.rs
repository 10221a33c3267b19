//! The servers of one measurement — the simulator and the process in the middle (qwen-proxy
//! or nginx) — started fresh for every (N, way), pinned to CPU 1 unless `--unpinned`, and
//! what the kernel says about them (CPU time, resident memory).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::Instant;

use crate::process::{self, Running, BIN};

/// Answer frames per stream and characters per frame: every stream's answer is the
/// simulator's `long=80` filler.
pub const FRAMES: usize = 20;
pub const CHUNK_CHARS: usize = 4;

/// The listen backlog of all three servers: the proxy's and the simulator's default
/// (`LISTEN_BACKLOG`, `--backlog`), and nginx's, set in its configuration below.
pub const LISTEN_BACKLOG: u32 = 1024;

/// The simulator's timing.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub ttft_ms: u64,
    pub frame_delay_ms: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Way {
    /// The Qwen protocol straight to the simulator: the baseline.
    Direct,
    /// OpenAI through qwen-proxy in its default configuration: no `UPSTREAM_HTTP2`, so
    /// `auto` (h2c to the simulator, HTTP/1.1 if it refused; before 40ed2f2, HTTP/1.1).
    Proxy,
    /// OpenAI through qwen-proxy with `UPSTREAM_HTTP2=true` (upstream streams multiplexed
    /// over a few connections).
    ProxyH2,
    /// OpenAI through qwen-proxy with `UPSTREAM_HTTP2=false` (HTTP/1.1 upstream: one
    /// connection per stream in flight). Not in the default set.
    ProxyH1,
    /// The Qwen protocol through nginx, buffering off: the floor for a byte copier.
    Nginx,
}

impl Way {
    pub const ALL: [Way; 5] = [
        Way::Direct,
        Way::Proxy,
        Way::ProxyH2,
        Way::ProxyH1,
        Way::Nginx,
    ];
    /// What `cargo bench` measures without `--ways`.
    pub const DEFAULT: [Way; 4] = [Way::Direct, Way::Proxy, Way::ProxyH2, Way::Nginx];

    pub fn name(self) -> &'static str {
        match self {
            Way::Direct => "direct",
            Way::Proxy => "proxy",
            Way::ProxyH2 => "proxy-h2",
            Way::ProxyH1 => "proxy-h1",
            Way::Nginx => "nginx",
        }
    }

    pub fn parse(s: &str) -> Option<Way> {
        Way::ALL.into_iter().find(|w| w.name() == s)
    }

    /// The client speaks the Qwen web protocol (to the simulator or through nginx), not
    /// OpenAI's.
    pub fn qwen(self) -> bool {
        matches!(self, Way::Direct | Way::Nginx)
    }
}

/// How the servers run, beyond the way and the simulator's timing: the same for every row
/// of a run.
#[derive(Clone, Debug)]
pub struct Setup {
    /// The servers pinned to CPU 1 and nginx with one worker (see `pinning`); else nothing
    /// pinned and nginx with a worker per core (`worker_processes auto`), as deployed.
    pub pinned: bool,
    /// `--proxy-env KEY=VALUE`s, set on the proxy after the tool's own settings, so they
    /// override them.
    pub proxy_env: Vec<(String, String)>,
}

/// Whether the servers can be pinned (to CPU 1): with `taskset` and a second CPU.
pub fn pinning() -> bool {
    Path::new("/usr/bin/taskset").exists() && cpus() > 1
}

static FROZEN: OnceLock<PathBuf> = OnceLock::new();

/// Run the servers from a copy of our binary taken now, so that a `cargo build` of the same
/// target during a long run cannot swap the program between one way and the next. Returns
/// the copy's directory, for the caller to remove at the end.
pub fn freeze_binary() -> Option<PathBuf> {
    let dir = std::env::temp_dir().join(format!("qwen-load-bin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    let copy = dir.join("qwen-proxy");
    let source = other_binary().unwrap_or_else(|| PathBuf::from(BIN));
    std::fs::copy(&source, &copy).ok()?; // keeps the execute bit
    FROZEN.set(copy).ok()?;
    Some(dir)
}

/// `LOAD_PROXY_BIN`: another build of qwen-proxy (for the simulator too), to compare two
/// builds in one session. Bench mode only: the copy `freeze_binary` takes is what runs.
pub fn other_binary() -> Option<PathBuf> {
    std::env::var_os("LOAD_PROXY_BIN").map(PathBuf::from)
}

/// Our binary: the frozen copy, if any.
fn our_program() -> &'static Path {
    FROZEN.get().map_or(Path::new(BIN), PathBuf::as_path)
}

/// `program`, on CPU 1 when `pin`.
fn on_servers_core(pin: bool, program: &Path) -> Command {
    if pin {
        let mut c = Command::new("/usr/bin/taskset");
        c.args(["-c", "1"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// The machine's online CPUs. Not `available_parallelism`: that counts the CPUs this
/// process may use, and the script pins the client to CPU 0, so it would say 1 and the
/// servers would stay on the client's core.
pub fn cpus() -> usize {
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online").ok();
    // A list of ranges: "0-1", "0,2-3".
    let count = online.map(|s| {
        s.trim()
            .split(',')
            .filter_map(|r| match r.split_once('-') {
                Some((a, b)) => Some(b.parse::<usize>().ok()? + 1 - a.parse::<usize>().ok()?),
                None => r.parse::<usize>().ok().map(|_| 1),
            })
            .sum::<usize>()
    });
    count
        .filter(|n| *n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Our binary, pinned if `pin`, without the caller's configuration variables (as the tests'
/// launcher does): a `QWEN_*` or `LOG_*` in the shell must not change what is measured.
fn our_binary(pin: bool, args: &[&str]) -> Command {
    let mut cmd = on_servers_core(pin, our_program());
    cmd.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("QWEN_") || k.starts_with("API_KEYS") || k.starts_with("LOG_") {
            cmd.env_remove(k);
        }
    }
    cmd.stderr(Stdio::null());
    cmd
}

fn start_sim(timing: Timing, pin: bool) -> Running {
    let (ttft, delay, chunk) = (
        timing.ttft_ms.to_string(),
        timing.frame_delay_ms.to_string(),
        CHUNK_CHARS.to_string(),
    );
    process::start(our_binary(
        pin,
        &[
            "sim",
            "--port",
            "0",
            "--ttft-ms",
            &ttft,
            "--delay-ms",
            &delay,
            "--chunk-chars",
            &chunk,
            // A chat is free again as soon as its answer ends (each stream uses a new chat
            // anyway), and no anti-bot header checks: the load is what is measured.
            "--linger-ms",
            "0",
            "--gate",
            "none",
        ],
    ))
}

/// `UPSTREAM_HTTP2`: unset (the default), or the value.
fn start_proxy(sim: u16, upstream_http2: Option<&str>, setup: &Setup) -> Running {
    let mut cmd = our_binary(setup.pinned, &process::serve_args("0"));
    cmd.env("QWEN_BASE_URL", format!("http://127.0.0.1:{sim}"))
        .env("QWEN_COOKIES", "token=load")
        // No shedding: every stream of the herd is served.
        .env("MAX_CONCURRENT_STREAMS", "0")
        .env("CONVERSATION_MODE", "stateless")
        .env("LOG_LEVEL", "warn");
    if let Some(v) = upstream_http2 {
        cmd.env("UPSTREAM_HTTP2", v);
    }
    cmd.envs(setup.proxy_env.iter().map(|(k, v)| (k, v)));
    process::start(cmd)
}

/// nginx and its scratch directory; stopped with SIGTERM (its master then stops its
/// workers at once; SIGKILL would orphan them).
struct Nginx {
    child: Child,
    dir: PathBuf,
    port: u16,
    /// The master and its workers.
    pids: Vec<u32>,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        process::terminate(&mut self.child);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn nginx_binary() -> Option<&'static Path> {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
}

async fn start_nginx(sim: u16, pin: bool) -> Option<Nginx> {
    let nginx = nginx_binary()?;
    // nginx binds the port it is given: the only one picked in advance.
    let port = process::free_port();
    let dir = std::env::temp_dir().join(format!("qwen-load-nginx-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    let d = dir.display();
    // Pinned, one worker shares CPU 1 with the simulator; unpinned, one per core (nginx counts
    // the online CPUs), as nginx is deployed.
    let (workers, worker_count) = if pin { ("1", 1) } else { ("auto", cpus()) };
    let conf = format!(
        "worker_processes {workers};\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log error;\nworker_rlimit_nofile 20000;\n\
         events {{ worker_connections 20000; }}\nhttp {{\n access_log off;\n client_body_temp_path {d}/body;\n proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/f;\n uwsgi_temp_path {d}/u;\n scgi_temp_path {d}/s;\n\
         upstream sim {{ server 127.0.0.1:{sim}; keepalive 256; }}\n\
         server {{ listen 127.0.0.1:{port} backlog={LISTEN_BACKLOG}; location / {{ proxy_pass http://sim; proxy_http_version 1.1;\n\
         proxy_set_header Connection \"\"; proxy_buffering off; proxy_request_buffering off; proxy_read_timeout 600s; }} }}\n}}\n"
    );
    std::fs::write(dir.join("nginx.conf"), conf).ok()?;
    let child = on_servers_core(pin, nginx)
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
    let mut nginx = Nginx {
        pids: vec![child.id()],
        child,
        dir,
        port,
    };
    // The port answers as soon as the master listens; the workers may not be forked yet.
    wait_port(port).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while nginx.pids.len() < 1 + worker_count && Instant::now() < deadline {
        nginx.pids = std::iter::once(nginx.child.id())
            .chain(children(nginx.child.id()))
            .collect();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Some(nginx)
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

/// The pids whose parent is `parent`.
fn children(parent: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                stat_fields(&stat).get(1).and_then(|p| p.parse().ok()) == Some(parent)
            })
        })
        .collect()
}

/// The fields of `/proc/PID/stat` after the command name (which may hold spaces):
/// index 0 is the state, 1 the parent, 11 utime, 12 stime.
fn stat_fields(stat: &str) -> Vec<&str> {
    stat.rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect()
}

enum Middle {
    /// `direct`: the simulator is the middle.
    Sim,
    Proxy(Running),
    Nginx(Nginx),
}

/// Fresh processes for one way. Dropped in field order: the middle first, then the
/// simulator.
pub struct Servers {
    middle: Middle,
    sim: Running,
    pinned: bool,
}

impl Servers {
    /// The simulator and the way's middle process, new. `None` when nginx is not installed.
    pub async fn start(way: Way, timing: Timing, setup: &Setup) -> Option<Servers> {
        let sim = start_sim(timing, setup.pinned);
        let port = sim.addr.port();
        let middle = match way {
            Way::Direct => Middle::Sim,
            Way::Proxy => Middle::Proxy(start_proxy(port, None, setup)),
            Way::ProxyH2 => Middle::Proxy(start_proxy(port, Some("true"), setup)),
            Way::ProxyH1 => Middle::Proxy(start_proxy(port, Some("false"), setup)),
            Way::Nginx => Middle::Nginx(start_nginx(port, setup.pinned).await?),
        };
        Some(Servers {
            middle,
            sim,
            pinned: setup.pinned,
        })
    }

    /// Whether they run on CPU 1 (and the client, by the script, on CPU 0).
    pub fn pinned(&self) -> bool {
        self.pinned
    }

    /// Where the client connects.
    pub fn port(&self) -> u16 {
        match &self.middle {
            Middle::Sim => self.sim.addr.port(),
            Middle::Proxy(p) => p.addr.port(),
            Middle::Nginx(n) => n.port,
        }
    }

    /// The processes whose CPU time and memory are the way's cost: the proxy; nginx's
    /// master and workers; the simulator for `direct`. `taskset` execs into the program, so
    /// a child's pid is the program's.
    pub fn middle_pids(&self) -> Vec<u32> {
        match &self.middle {
            Middle::Sim => vec![self.sim.pid()],
            Middle::Proxy(p) => vec![p.pid()],
            Middle::Nginx(n) => n.pids.clone(),
        }
    }

    pub fn sim_pid(&self) -> u32 {
        self.sim.pid()
    }

    /// Stop everything now. Our binary gets SIGKILL: a graceful drain of idle keep-alive
    /// connections would only slow the next start down, and nothing is measured after.
    pub fn stop(mut self) {
        if let Middle::Proxy(p) = &mut self.middle {
            p.kill();
        }
        self.middle = Middle::Sim; // nginx: its own SIGTERM, in Drop
        self.sim.kill();
    }
}

/// CPU time used so far by `pids`, two ways: the scheduler's run time of each thread in
/// nanoseconds (`/proc/PID/task/*/schedstat`), precise but blind to threads that have
/// exited, and utime + stime (`/proc/PID/stat`), which counts them but in 10 ms ticks — a
/// herd of 100 streams costs only a few ticks.
#[derive(Clone, Copy, Default)]
pub struct CpuTime {
    run_ns: u64,
    ticks: u64,
}

impl CpuTime {
    pub fn of(pids: &[u32]) -> CpuTime {
        let mut t = CpuTime::default();
        for pid in pids {
            if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                let f = stat_fields(&stat);
                let field = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
                t.ticks += field(11) + field(12);
            }
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
                continue;
            };
            for task in tasks.flatten() {
                let run = std::fs::read_to_string(task.path().join("schedstat")).ok();
                t.run_ns += run
                    .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
                    .unwrap_or(0);
            }
        }
        t
    }

    /// Seconds used since `before`: the precise figure, unless the ticks say more time went
    /// by than it saw (by over two ticks: a thread exited in between, taking its run time).
    pub fn since(self, before: CpuTime) -> f64 {
        let tck = 100.0; // `getconf CLK_TCK` on Linux
        let ticks = self.ticks.saturating_sub(before.ticks) as f64 / tck;
        let precise = self.run_ns as f64 / 1e9 - before.run_ns as f64 / 1e9;
        if ticks > precise + 2.0 / tck {
            ticks
        } else {
            precise.max(0.0)
        }
    }
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

/// Resident memory of `pids` now, KiB.
pub fn rss_kib(pids: &[u32]) -> u64 {
    pids.iter().map(|p| status_kib(*p, "VmRSS:")).sum()
}

/// Peak resident memory of `pids` (since start or the last `reset_peak_rss`), KiB.
pub fn peak_rss_kib(pids: &[u32]) -> u64 {
    pids.iter().map(|p| status_kib(*p, "VmHWM:")).sum()
}

/// Reset the peak resident size of `pids` to their current size (`5` to
/// `/proc/PID/clear_refs`, Linux ≥ 4.0), so each round's peak is its own. False if the
/// kernel refused.
pub fn reset_peak_rss(pids: &[u32]) -> bool {
    pids.iter()
        .all(|p| std::fs::write(format!("/proc/{p}/clear_refs"), "5").is_ok())
}

/// Raise the soft open-file limit to the hard limit, for this process and the servers it
/// starts (they inherit it), so `cargo bench` works without `ulimit -n` first. Returns the
/// limit in force, when it could be read. A direct `getrlimit`/`setrlimit` call: std links
/// the C library anyway, and two declarations beat a crate for one call.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub fn raise_fd_limit() -> Option<u64> {
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
pub fn raise_fd_limit() -> Option<u64> {
    None
}
