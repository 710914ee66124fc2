//! The real `hamq` binary, configured by env, with its output captured line by line.

use super::process::{self, kill_and_wait, tail};
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// The line the broker logs once it accepts STOMP connections; the address follows it.
pub const LISTENING: &str = "listening for STOMP on ";
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// The empty config files given with `--config`: `<temp>/hamq-harness-conf-<pid>_<n>.conf`.
const CONFIG_PREFIX: &str = "hamq-harness-conf-";

/// A running broker. Drop SIGKILLs it by PID and reaps it.
pub struct Broker {
    name: String,
    child: Child,
    log: Arc<Log>,
    stomp_port: OnceLock<u16>,
    config: PathBuf,
}

/// The broker's stdout and stderr lines, and how many of the two streams are still open.
#[derive(Default)]
struct Log {
    state: Mutex<LogState>,
    changed: Condvar,
}

#[derive(Default)]
struct LogState {
    lines: Vec<String>,
    /// When each line of `lines` was read from the broker's output (same index).
    times: Vec<Instant>,
    open_streams: usize,
}

impl Broker {
    /// Starts a broker named `brokerN` on `datastore_url` and waits (30 s) until it listens.
    pub fn start(datastore_url: &str, extra_env: &[(&str, &str)]) -> Broker {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let name = format!("broker{}", COUNTER.fetch_add(1, Ordering::Relaxed));
        Self::start_with_name(&name, datastore_url, extra_env)
    }

    /// Starts a broker with `HAMQ_NAME=name` and waits (30 s) until it listens.
    pub fn start_with_name(name: &str, datastore_url: &str, extra_env: &[(&str, &str)]) -> Broker {
        let broker = Self::spawn_with_name(name, datastore_url, extra_env);
        broker.stomp_port();
        broker
    }

    /// Spawns a broker without waiting for it to listen (for tests of failing start-ups).
    /// Env: `HAMQ_DATASTORE`, `HAMQ_STOMP_LISTEN=127.0.0.1:0`, `HAMQ_NAME`, `RUST_LOG=info`,
    /// then `extra_env`, which overrides them; inherited `HAMQ_*` variables are removed.
    /// Args: `--config <empty file>`, so no repository config leaks in.
    pub fn spawn_with_name(name: &str, datastore_url: &str, extra_env: &[(&str, &str)]) -> Broker {
        Self::spawn_wrapped(&[], name, datastore_url, extra_env)
    }

    /// Like [`Broker::spawn_with_name`], but runs the binary through the command `wrapper`
    /// (e.g. `["ip", "netns", "exec", NS]`), which must exec it in place so that the PID is the
    /// broker's own. An empty `wrapper` runs the binary directly.
    pub fn spawn_wrapped(
        wrapper: &[String],
        name: &str,
        datastore_url: &str,
        extra_env: &[(&str, &str)],
    ) -> Broker {
        static SWEEP: OnceLock<()> = OnceLock::new();
        SWEEP.get_or_init(|| process::sweep_stale(&std::env::temp_dir(), CONFIG_PREFIX));
        let config =
            std::env::temp_dir().join(format!("{CONFIG_PREFIX}{}.conf", process::unique_id()));
        fs::write(&config, "").unwrap_or_else(|e| panic!("create {}: {e}", config.display()));
        let binary = env!("CARGO_BIN_EXE_hamq");
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(binary);
                cmd
            }
            None => Command::new(binary),
        };
        cmd.arg("--config").arg(&config);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("HAMQ_") {
                cmd.env_remove(key);
            }
        }
        cmd.env("HAMQ_DATASTORE", datastore_url)
            .env("HAMQ_STOMP_LISTEN", "127.0.0.1:0")
            .env("HAMQ_NAME", name)
            .env("RUST_LOG", "info")
            .envs(extra_env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child =
            process::spawn(cmd).unwrap_or_else(|e| panic!("cannot spawn the hamq binary: {e}"));
        let log = Arc::new(Log::default());
        capture(name, child.stdout.take().expect("piped stdout"), &log);
        capture(name, child.stderr.take().expect("piped stderr"), &log);
        Broker {
            name: name.to_string(),
            child,
            log,
            stomp_port: OnceLock::new(),
            config,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The STOMP port from the broker's `listening for STOMP on ADDR` line (waits up to 30 s).
    pub fn stomp_port(&self) -> u16 {
        *self.stomp_port.get_or_init(|| {
            let line = self.wait_for_log(LISTENING, START_TIMEOUT);
            parse_port(&line).unwrap_or_else(|| {
                panic!("broker {}: cannot parse the port in {line:?}", self.name)
            })
        })
    }

    /// Every line the broker wrote so far (stdout and stderr interleaved as read).
    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().lines.clone()
    }

    /// The first line (from the start of the log) containing `needle`. Panics with the log's
    /// tail on timeout, or as soon as the broker's output has closed without such a line.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let mut state = self.log.lock();
        loop {
            if let Some(line) = state.lines.iter().find(|l| l.contains(needle)) {
                return line.clone();
            }
            let now = Instant::now();
            if state.open_streams == 0 || now >= deadline {
                let why = if now >= deadline {
                    format!("timed out after {timeout:?}")
                } else {
                    "its output closed (it exited)".to_string()
                };
                let log = tail(&state.lines, 40);
                drop(state);
                panic!(
                    "broker {} (pid {}): {why} waiting for a log line containing {needle:?}; \
                     last log lines:\n{log}",
                    self.name,
                    self.pid()
                );
            }
            state = self
                .log
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Like [`Broker::wait_for_log`], but returns when the test read that line from the
    /// broker's output (for measuring intervals between events of different processes).
    pub fn wait_for_log_time(&self, needle: &str, timeout: Duration) -> Instant {
        self.wait_for_log(needle, timeout);
        let state = self.log.lock();
        let i = state
            .lines
            .iter()
            .position(|l| l.contains(needle))
            .expect("a line seen stays in the log");
        state.times[i]
    }

    /// How many log lines so far contain `needle`.
    pub fn count_log(&self, needle: &str) -> usize {
        self.log
            .lock()
            .lines
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// SIGKILL by PID and reap.
    pub fn kill9(&mut self) {
        kill_and_wait(&mut self.child);
    }

    /// Sends SIGTERM (graceful shutdown); see [`Broker::wait_exit`].
    pub fn sigterm(&mut self) {
        self.signal(libc::SIGTERM);
    }

    pub fn sigstop(&mut self) {
        self.signal(libc::SIGSTOP);
    }

    pub fn sigcont(&mut self) {
        self.signal(libc::SIGCONT);
    }

    /// The exit status once the broker has exited, or `None` if it still runs after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = &mut self.child;
        process::poll(timeout, Duration::from_millis(10), || {
            child.try_wait().ok().flatten()
        })
    }

    /// Signals only a not yet reaped child, so the PID cannot belong to another process.
    fn signal(&mut self, sig: libc::c_int) {
        if let Ok(None) = self.child.try_wait() {
            process::signal(self.child.id(), sig);
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        kill_and_wait(&mut self.child);
        let _ = fs::remove_file(&self.config);
    }
}

impl Log {
    fn lock(&self) -> MutexGuard<'_, LogState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Reads `stream` line by line into `log`, echoing each line to the test's stderr (captured
/// by the test harness and shown when the test fails).
fn capture(name: &str, stream: impl Read + Send + 'static, log: &Arc<Log>) {
    log.lock().open_streams += 1;
    let (name, log) = (name.to_string(), Arc::clone(log));
    thread::Builder::new()
        .name(format!("{name}-log"))
        .spawn(move || {
            let mut reader = BufReader::new(stream);
            let mut buf = Vec::new();
            while matches!(reader.read_until(b'\n', &mut buf), Ok(n) if n > 0) {
                let line = String::from_utf8_lossy(&buf)
                    .trim_end_matches(['\r', '\n'])
                    .to_string();
                eprintln!("[{name}] {line}");
                let mut state = log.lock();
                state.lines.push(line);
                state.times.push(Instant::now());
                drop(state);
                log.changed.notify_all();
                buf.clear();
            }
            log.lock().open_streams -= 1;
            log.changed.notify_all();
        })
        .expect("cannot start a log reader thread");
}

/// The port in `... listening for STOMP on 127.0.0.1:PORT ...`.
fn parse_port(line: &str) -> Option<u16> {
    let rest = &line[line.find(LISTENING)? + LISTENING.len()..];
    let addr = rest.split_whitespace().next()?;
    let addr = addr.trim_end_matches(|c: char| !c.is_ascii_digit());
    if let Ok(sa) = addr.parse::<SocketAddr>() {
        return Some(sa.port());
    }
    addr.rsplit(':').next()?.parse().ok()
}
