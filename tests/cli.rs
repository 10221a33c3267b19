//! The binary as a new user meets it: the banner, flags in both spellings, and what a
//! Node-era `.env` holds — accepted where it makes sense, a clear error (exit 64) where not.

// Tests and benches: a failed unwrap is a failure with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Stdio;

mod support;

use support::process::{self, run, Running};

/// Start `--demo` and read the banner (up to its last line: the tool-call example).
fn banner(args: &[&str], env: &[(&str, &str)]) -> (Running, String) {
    let mut cmd = process::command(args, env);
    cmd.stderr(Stdio::null());
    let mut running = process::start(cmd);
    let mut text = format!("listening on http://{}\n", running.addr);
    loop {
        let line = running.read_line();
        assert!(!line.is_empty(), "the banner ended early: {text}");
        text.push_str(&line);
        if line.contains("@@sim:call\"") {
            return (running, text);
        }
    }
}

#[test]
fn the_banner_shows_how_to_send_a_key_without_showing_one() {
    let (child, text) = banner(
        &["--demo", "--port", "0", "--env-file", "/dev/null"],
        &[("API_KEYS", "sk-very-secret-1,sk-very-secret-2")],
    );
    drop(child);
    assert!(
        text.contains("Authorization: Bearer $QWEN_PROXY_KEY"),
        "{text}"
    );
    assert!(
        text.contains("api_key=os.environ[\"QWEN_PROXY_KEY\"]"),
        "{text}"
    );
    assert!(!text.contains("sk-very-secret"), "{text}");
    // Both curl examples, the tool call's too, send the key.
    assert_eq!(
        text.matches("Authorization: Bearer $QWEN_PROXY_KEY")
            .count(),
        2,
        "{text}"
    );
    let (child, text) = banner(&["--demo", "--port", "0", "--env-file", "/dev/null"], &[]);
    drop(child);
    assert!(!text.contains("Authorization"), "{text}");
    assert!(text.contains("api_key=\"unused\""), "{text}");
}

#[test]
fn the_banner_points_to_the_console_and_how_to_turn_it_on() {
    let args = ["--demo", "--port", "0", "--env-file", "/dev/null"];
    let (child, text) = banner(&args, &[]);
    let base = format!("http://{}", child.addr);
    drop(child);
    assert!(
        text.contains(&format!(
            "console: set ADMIN_KEY (16+ random characters) and open {base}/admin/"
        )),
        "{text}"
    );
    let (child, text) = banner(&args, &[("ADMIN_KEY", "an-admin-key-never-printed")]);
    let base = format!("http://{}", child.addr);
    drop(child);
    assert!(
        text.contains(&format!("console: {base}/admin/ (sign in with ADMIN_KEY)")),
        "{text}"
    );
    assert!(!text.contains("an-admin-key-never-printed"), "{text}");
}

#[test]
fn flags_take_their_value_after_an_equals_sign() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (child, text) = banner(
        &["--demo", &format!("--port={port}"), "--env-file=/dev/null"],
        &[],
    );
    drop(child);
    assert!(
        text.contains(&format!("listening on http://127.0.0.1:{port}")),
        "{text}"
    );
}

#[test]
fn node_era_values_start_the_server() {
    let (child, text) = banner(
        &["--demo", "--port", "0", "--env-file", "/dev/null"],
        &[
            ("HOST", "localhost"),
            ("TRUST_PROXY", "loopback, 10.0.0.0/8"),
            ("SESSION_TIMEOUT", "30m"),
            ("RETRY_MAX_DELAY", "10s"),
            ("LOG_LEVEL", "verbose"),
        ],
    );
    drop(child);
    assert!(text.contains("listening on http://127.0.0.1:"), "{text}");
}

#[test]
fn a_bad_log_level_is_a_configuration_error_not_silence() {
    for args in [
        &["--demo", "--port", "0", "--env-file", "/dev/null"][..],
        &["check", "--env-file", "/dev/null"][..],
    ] {
        let out = run(args, &[("LOG_LEVEL", "loud"), ("QWEN_COOKIES", "token=t")]);
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_ne!(out.status.code(), Some(0), "{args:?}: {all}");
        assert!(all.contains("LOG_LEVEL") && all.contains("loud"), "{all}");
    }
    let out = run(
        &["--demo", "--port", "0", "--env-file", "/dev/null"],
        &[("LOG_LEVEL", "loud")],
    );
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn a_missing_env_file_is_an_error() {
    let out = run(
        &[
            "--demo",
            "--port",
            "0",
            "--env-file",
            "/nonexistent/qwen.env",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/qwen.env"), "{err}");
}

#[test]
fn a_backlog_above_somaxconn_is_named_at_start() {
    // Linux, as CI: the binary reads the same file.
    let somaxconn: u64 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .expect("net.core.somaxconn is readable")
        .trim()
        .parse()
        .expect("a number");
    let too_big = (somaxconn + 1).to_string();
    let mut cmd = process::command(&["--demo", "--port", "0"], &[("LISTEN_BACKLOG", &too_big)]);
    cmd.stderr(Stdio::piped());
    let running = process::start(cmd);
    let err = running.stop_and_read_stderr();
    assert!(
        err.contains("LISTEN_BACKLOG is above net.core.somaxconn"),
        "{err}"
    );
    // At the default (1,024 ≤ somaxconn here) nothing is said.
    if somaxconn >= 1024 {
        let mut cmd = process::command(&["--demo", "--port", "0"], &[]);
        cmd.stderr(Stdio::piped());
        let err = process::start(cmd).stop_and_read_stderr();
        assert!(!err.contains("somaxconn"), "{err}");
    }
}
