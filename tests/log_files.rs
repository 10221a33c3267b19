//! `LOG_DIR`: the real binary logging to a directory, rotated by size (`LOG_MAX_SIZE`,
//! `LOG_MAX_FILES`), flushed at exit, in the configured format, without colours or secrets;
//! a restart continues the files; an unusable directory stops the start with a clear error.
//! And the Node-era `NODE_ENV`, named once at start-up.

// Tests: a failed unwrap is a failure with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use support::process::{self, Running};

const API_KEY: &str = "sk-SECRET-LOG-FILE-KEY-8080";
const BX_UA: &str = "231!SECRET-BX-UA-LOGS-4711";
const METRICS_TOKEN: &str = "SECRET-METRICS-LOGS-2600";
const MAX_SIZE: u64 = 4096;

/// A directory of its own under the system's temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("qwen-proxy-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `--demo` logging to `log_dir`, its stderr into `stderr_file`.
fn start(log_dir: &Path, stderr_file: &Path, env: &[(&str, &str)]) -> Running {
    let log_dir = log_dir.to_str().unwrap();
    let max_size = MAX_SIZE.to_string();
    let mut vars = vec![
        ("LOG_DIR", log_dir),
        ("LOG_MAX_SIZE", max_size.as_str()),
        ("LOG_MAX_FILES", "3"),
        // The proxy's own debug lines (hyper's and h2's would fill 4 KiB files with frames).
        ("LOG_LEVEL", "qwen_proxy=debug,info"),
        ("LOG_FORMAT", "json"),
        ("API_KEYS", API_KEY),
        ("QWEN_BX_UA", BX_UA),
        ("METRICS_TOKEN", METRICS_TOKEN),
    ];
    vars.extend_from_slice(env);
    let mut cmd = process::command(&["--demo", "--port", "0", "--env-file", "/dev/null"], &vars);
    cmd.stderr(std::fs::File::create(stderr_file).unwrap());
    process::start(cmd)
}

/// SIGTERM, and a clean exit.
fn stop(mut running: Running) {
    running.request_stop();
    let status = running
        .wait_exit(Duration::from_secs(15))
        .expect("the proxy exits after SIGTERM");
    assert!(status.success(), "{status}");
}

/// One raw HTTP/1.1 request; the status line.
fn request(addr: &str, method: &str, path: &str, body: &str, auth: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nauthorization: Bearer {auth}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reply = String::new();
    std::io::Read::read_to_string(&mut s, &mut reply).unwrap();
    reply.lines().next().unwrap_or("").to_owned()
}

/// Completions (answered, and refused for an unknown model) and a metrics scrape, from
/// `clients` at once: plenty of debug lines, quickly.
fn traffic(addr: &str, clients: usize, rounds: usize) {
    let threads: Vec<_> = (0..clients)
        .map(|t| {
            let addr = addr.to_owned();
            std::thread::spawn(move || {
                for i in 0..rounds {
                    let model = if i % 2 == 0 { "qwen3.7-plus" } else { "no-such-model" };
                    let body = json!({"model": model, "messages": [{"role": "user", "content": format!("hi {t} {i}")}]});
                    let status = request(&addr, "POST", "/v1/chat/completions", &body.to_string(), API_KEY);
                    let expected = if i % 2 == 0 { "HTTP/1.1 200" } else { "HTTP/1.1 404" };
                    assert!(status.starts_with(expected), "{status}");
                }
                let status = request(&addr, "GET", "/metrics", "", METRICS_TOKEN);
                assert!(status.starts_with("HTTP/1.1 200"), "{status}");
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

/// The files in `dir`, by name, with their contents.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().into_string().unwrap(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

/// What every log directory must hold after a run: the current file and at most three
/// rotated ones, each cut at the limit (plus the line that crossed it), JSON lines only,
/// no colour codes, no secret. Every line, in order from the oldest file.
fn check_files(dir: &Path) -> Vec<serde_json::Value> {
    let files = files(dir);
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert!(names.contains(&"qwen-proxy.log"), "{names:?}");
    for name in &names {
        assert!(
            [
                "qwen-proxy.log",
                "qwen-proxy.log.1",
                "qwen-proxy.log.2",
                "qwen-proxy.log.3"
            ]
            .contains(name),
            "LOG_MAX_FILES=3 keeps three rotated files: {names:?}"
        );
    }
    let mut lines = Vec::new();
    // Oldest first: .3, .2, .1, then the current file.
    for (name, bytes) in files.iter().rev() {
        assert!(!bytes.contains(&0x1b), "an escape byte in {name}");
        let text = String::from_utf8(bytes.clone()).unwrap();
        for secret in [API_KEY, BX_UA, METRICS_TOKEN, "demo-token"] {
            assert!(!text.contains(secret), "{secret} in {name}");
        }
        assert!(text.ends_with('\n'), "{name} ends with a whole line");
        let last = text.trim_end_matches('\n').rsplit('\n').next().unwrap();
        // The file is rotated before a write once it holds LOG_MAX_SIZE: all but its last
        // line fit under the limit.
        let before_last = bytes.len() - last.len() - 1;
        assert!(
            (before_last as u64) < MAX_SIZE,
            "{name}: {} bytes, {before_last} before its last line",
            bytes.len()
        );
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{name}: not JSON ({e}): {line}"));
            assert!(
                v.get("level").is_some() && v.get("fields").is_some(),
                "{line}"
            );
            lines.push(v);
        }
    }
    lines
}

fn message(v: &serde_json::Value) -> &str {
    v["fields"]["message"].as_str().unwrap_or("")
}

#[test]
fn log_dir_rotates_by_size_and_keeps_max_files() {
    let tmp = TempDir::new("log-dir");
    // Missing: the proxy creates it.
    let dir = tmp.0.join("logs").join("proxy");
    let stderr = tmp.0.join("stderr.txt");

    let running = start(&dir, &stderr, &[]);
    let addr = running.addr.to_string();
    traffic(&addr, 8, 10);
    stop(running);

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o777,
            0o700,
            "a directory the proxy created is its own"
        );
    }
    let names: Vec<String> = files(&dir).into_iter().map(|(n, _)| n).collect();
    assert!(
        names.iter().any(|n| n == "qwen-proxy.log.3"),
        "the burst rotated the file more than three times: {names:?}"
    );
    let lines = check_files(&dir);
    assert!(
        lines.iter().any(|l| message(l) == "request finished"),
        "request lines are in the files"
    );
    assert!(
        lines.iter().any(|l| message(l) == "request rejected"),
        "the refused requests too"
    );
    // LOG_LEVEL filters the file as it filters stderr.
    for l in lines.iter().filter(|l| l["level"] == "DEBUG") {
        let target = l["target"].as_str().unwrap();
        assert!(target.starts_with("qwen_proxy"), "{l}");
    }
    // The last lines of the run were written out at exit.
    assert!(
        lines
            .iter()
            .any(|l| message(l).starts_with("shutdown requested")),
        "the shutdown line is in the file"
    );
    assert_eq!(
        lines.last().map(message),
        Some("all connections closed"),
        "the last line of the run is flushed at exit"
    );
    // stderr only says where the logs are.
    let err = std::fs::read_to_string(&stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("logs go to") && err.contains(&format!("{:?}", dir.join("qwen-proxy.log"))),
        "{err}"
    );

    // A restart appends to the current file, within the same limits; what it logged at
    // start (the listening line, the Node-era warning) is there too (a request or two: more
    // would rotate the start out of three 4 KiB files).
    let running = start(&dir, &stderr, &[("NODE_ENV", "production")]);
    let addr = running.addr.to_string();
    traffic(&addr, 1, 1);
    stop(running);
    let lines = check_files(&dir);
    assert!(lines.iter().any(|l| message(l) == "qwen-proxy listening"));
    let warning = lines
        .iter()
        .find(|l| message(l).starts_with("NODE_ENV has no effect"))
        .expect("the NODE_ENV warning is in the file");
    assert_eq!(warning["level"], "WARN");
    assert_eq!(lines.last().map(message), Some("all connections closed"));
}

#[test]
fn node_env_is_named_once_at_start_without_its_value() {
    let mut cmd = process::command(
        &["--demo", "--port", "0", "--env-file", "/dev/null"],
        &[("NODE_ENV", "production\u{1b}[31m")],
    );
    cmd.stderr(Stdio::piped());
    let running = process::start(cmd);
    let logs = running.stop_and_read_stderr();
    let named: Vec<&str> = logs.lines().filter(|l| l.contains("NODE_ENV")).collect();
    assert_eq!(named.len(), 1, "{logs}");
    assert!(
        named[0].contains("WARN")
            && named[0].contains("NODE_ENV has no effect in qwen-proxy")
            && named[0].contains("LOG_LEVEL"),
        "{}",
        named[0]
    );
    assert!(
        !logs.contains("production"),
        "the value is not shown: {logs}"
    );
    // Unset, nothing is said.
    let mut cmd = process::command(&["--demo", "--port", "0", "--env-file", "/dev/null"], &[]);
    cmd.stderr(Stdio::piped()).env_remove("NODE_ENV");
    let logs = process::start(cmd).stop_and_read_stderr();
    assert!(!logs.contains("NODE_ENV"), "{logs}");
}

#[test]
fn an_unusable_log_dir_stops_the_start_with_a_clear_error() {
    let tmp = TempDir::new("log-dir-unusable");
    let file = tmp.0.join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    for dir in [file.join("logs"), file.clone()] {
        let out = process::run(
            &["--demo", "--port", "0", "--env-file", "/dev/null"],
            &[("LOG_DIR", dir.to_str().unwrap())],
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{err}");
        assert!(
            err.starts_with("error: LOG_DIR=") && err.contains(&format!("{dir:?}")),
            "{err}"
        );
        assert!(!err.contains("panicked"), "{err}");
        assert!(out.stdout.is_empty(), "it did not start listening");
    }
}

/// `qwen-proxy check` says whether the service could have its log file (it would not start
/// without it), and fails the check when not — without making the directory (a check run
/// with `sudo` would leave it to root).
#[test]
fn check_reports_whether_the_log_dir_is_usable() {
    let tmp = TempDir::new("log-dir-check");
    let file = tmp.0.join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let check = |dir: &Path| {
        process::run(
            &["check", "--env-file", "/dev/null"],
            &[
                ("LOG_DIR", dir.to_str().unwrap()),
                ("QWEN_COOKIES", "token=check-token"),
                // Nothing listens there: the upstream part fails fast either way.
                ("QWEN_BASE_URL", "http://127.0.0.1:9"),
            ],
        )
    };
    let out = check(&file.join("logs"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("log files      FAIL: LOG_DIR="), "{text}");
    let good = tmp.0.join("logs");
    let out = check(&good);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!(
            "log files      ok: {:?}",
            good.join("qwen-proxy.log")
        )),
        "{text}"
    );
    assert!(!good.exists(), "the check made nothing");
}
