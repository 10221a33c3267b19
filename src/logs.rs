//! Where log lines go. By default to stderr, as the service manager (systemd's journal,
//! `docker logs`) expects. With `LOG_DIR` — what operators of the Node.js qwen-proxy set —
//! to `LOG_DIR/qwen-proxy.log` only, rotated by size: once the file holds `LOG_MAX_SIZE`
//! bytes it becomes `qwen-proxy.log.1` (`.1` becomes `.2`, and so on), and the oldest beyond
//! `LOG_MAX_FILES` is deleted. stderr then gets one line at start saying where the logs are.
//!
//! The file gets exactly what stderr would (the same `LOG_FORMAT`, filter and redaction: they
//! happen before a line is written), never colour codes. Lines reach the file through a
//! writer thread and a bounded queue (`tracing_appender::non_blocking`), so no request waits
//! on the disk; if the disk falls 128,000 lines behind, further lines are dropped rather than
//! slowing the proxy. The queue is written out when the [`Guard`] is dropped: the binary keeps
//! it until its runtime has finished.

use std::io;
use std::path::Path;

use rolling_file::{BasicRollingFileAppender, RollingConditionBasic};
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

use crate::config::{Config, LogFileConfig, LogFormat};

/// Keeps the log file's writer thread; dropping it writes out what is queued and flushes.
#[must_use = "dropping the guard stops the log file's writer"]
pub struct Guard {
    _writer: Option<WorkerGuard>,
}

/// Install the process's subscriber as configured. An error (a `LOG_DIR` that cannot be
/// created or written) is for the operator: the proxy does not start without its logs.
pub fn init(config: &Config) -> Result<Guard, String> {
    let filter = EnvFilter::try_new(&config.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    let Some(file) = &config.log_file else {
        // Colour codes only for a person at a terminal: never into files, pipes or journald.
        let ansi = config.log_color && io::IsTerminal::is_terminal(&io::stderr());
        install(filter, config.log_format, ansi, io::stderr);
        return Ok(Guard { _writer: None });
    };
    let appender = open(file)?;
    let (writer, guard) = NonBlockingBuilder::default()
        .thread_name("qwen-proxy-logs")
        .finish(appender);
    install(filter, config.log_format, false, writer);
    // Written directly: it is for whoever watches stderr, which gets no log line after it.
    eprintln!(
        "qwen-proxy: logs go to {:?} (LOG_DIR), rotated at {} bytes, {} older files kept",
        file.path(),
        file.max_size,
        file.max_files
    );
    Ok(Guard {
        _writer: Some(guard),
    })
}

/// One warning per Node-era variable that is set but means nothing here (never its value).
/// After [`init`], so the warnings land where the logs go.
pub fn name_unused_variables(config: &Config) {
    for v in &config.unused_variables {
        tracing::warn!(
            variable = v.name,
            "{} has no effect in qwen-proxy: {}",
            v.name,
            v.instead
        );
    }
}

fn install<W>(filter: EnvFilter, format: LogFormat, ansi: bool, writer: W)
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Whether the service could have its log file (`qwen-proxy check`), touching nothing — a
/// check run as another user (`sudo`) must not make the directory or the file the service
/// then cannot write: the directory exists and is writable, or the nearest existing
/// ancestor is a directory it can be made in.
pub fn probe(file: &LogFileConfig) -> Result<(), String> {
    let fail = |why: &str| Err(format!("LOG_DIR={:?}: {why}", file.dir));
    let mut at = file.dir.as_path();
    loop {
        match std::fs::metadata(at) {
            Ok(m) if !m.is_dir() => {
                return fail(&format!("{at:?} is not a directory"));
            }
            Ok(m) if m.permissions().readonly() => {
                return fail(&format!("{at:?} is read-only"));
            }
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => match at.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => at = parent,
                // A relative path: made in the working directory.
                _ => return Ok(()),
            },
            Err(e) => return fail(&format!("{at:?}: {e}")),
        }
    }
}

/// The directory (created if missing) and the current file, opened for appending: a
/// restart continues the file and its rotation.
fn open(file: &LogFileConfig) -> Result<BasicRollingFileAppender, String> {
    create_dir(&file.dir)
        .map_err(|e| format!("LOG_DIR={:?}: cannot create the directory: {e}", file.dir))?;
    BasicRollingFileAppender::new(
        file.path(),
        RollingConditionBasic::new().max_size(file.max_size),
        file.max_files,
    )
    .map_err(|e| {
        format!(
            "LOG_DIR={:?}: cannot write {:?}: {e}",
            file.dir,
            file.path()
        )
    })
}

/// Directories we create are the proxy user's alone (0700 on unix): logs name accounts,
/// clients and their addresses. An existing directory is left as it is.
fn create_dir(dir: &Path) -> io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}
