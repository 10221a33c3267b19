//! Our own binary as a child process, for tests and the load tool: started with the port
//! the caller chose — `0` to let it bind a free one itself, once, with no pick-then-bind
//! race — and its address read from the line it prints when it listens (`… listening on
//! http://ADDR`). Stopped (SIGTERM, then SIGKILL) and reaped when dropped.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::time::Duration;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_qwen-proxy");

pub struct Running {
    child: Option<Child>,
    /// Where it listens.
    pub addr: SocketAddr,
    /// The rest of what it prints (the banner after the first line).
    pub stdout: BufReader<ChildStdout>,
}

/// Start `cmd` (the binary with its arguments; its stdout is taken here) and wait until it
/// says where it listens. Panics with what it printed if it exits first.
pub fn start(mut cmd: Command) -> Running {
    let mut child = cmd.stdout(Stdio::piped()).spawn().expect("binary starts");
    let stdout = BufReader::new(child.stdout.take().expect("stdout is piped"));
    // Owned by the guard from here: reaped whatever happens below.
    let mut running = Running {
        child: Some(child),
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        stdout,
    };
    let mut seen = String::new();
    loop {
        let line = running.read_line();
        assert!(
            !line.is_empty(),
            "the binary exited before listening; it printed: {seen}"
        );
        seen.push_str(&line);
        let addr = line
            .split("listening on http://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|a| a.parse::<SocketAddr>().ok());
        if let Some(addr) = addr {
            running.addr = addr;
            return running;
        }
    }
}

/// `serve` on loopback at `port` (`"0"`: a free one, read back by [`start`]) reading no
/// `.env`: how the tests, the load tool and the soak start a proxy.
pub fn serve_args(port: &str) -> [&str; 7] {
    [
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        port,
        "--env-file",
        "/dev/null",
    ]
}

/// The binary with `args`, nothing from the caller's environment that configures it
/// (`QWEN_*`, `API_KEYS*`, `LOG_*`), and `env` on top.
pub fn command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("QWEN_") || k.starts_with("API_KEYS") || k.starts_with("LOG_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    cmd
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The next line it prints (empty at the end).
    pub fn read_line(&mut self) -> String {
        let mut line = String::new();
        let _ = self.stdout.read_line(&mut line);
        line
    }

    /// Stop it; everything it wrote to stderr (which the caller piped).
    pub fn stop_and_read_stderr(mut self) -> String {
        let Some(mut child) = self.child.take() else {
            return String::new();
        };
        terminate(&mut child);
        let mut err = String::new();
        if let Some(mut pipe) = child.stderr.take() {
            let _ = pipe.read_to_string(&mut err);
        }
        err
    }

    /// Ask it to stop (SIGTERM) without waiting.
    pub fn request_stop(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
    }

    /// Its exit status, once it has exited within `within` (then reaped).
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Stop it now (as a crash would: SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child);
        }
    }
}

/// A loopback port free right now, for programs that must be told a port (nginx); our own
/// binary binds `0` instead.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// SIGTERM, a bounded wait, then SIGKILL; always reaped.
pub fn terminate(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    for _ in 0..100 {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Run the binary with `args` and `env` to completion (within 20 s), output captured.
pub fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let child = command(args, env)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary starts");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let id = child.id();
    let waiter = std::thread::spawn(move || child.wait_with_output().unwrap());
    while !waiter.is_finished() {
        assert!(
            std::time::Instant::now() < deadline,
            "pid {id} did not exit"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    waiter.join().unwrap()
}
