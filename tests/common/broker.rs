//! The real `hamq` binary, configured by env, with its output captured line by line.

use super::output::Output;
use super::process::{self, kill_and_wait};
use std::fs;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The line the broker logs once it accepts STOMP connections; the address follows it.
pub const LISTENING: &str = "listening for STOMP on ";
/// The same for the TLS listener.
pub const LISTENING_TLS: &str = "listening for STOMP over TLS on ";
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// The empty config files given with `--config`: `<temp>/hamq-harness-conf-<pid>_<n>.conf`.
const CONFIG_PREFIX: &str = "hamq-harness-conf-";

/// A running broker. Drop SIGKILLs it by PID and reaps it.
pub struct Broker {
    name: String,
    child: Child,
    /// stdout and stderr, read line by line.
    log: Arc<Output>,
    stomp_port: OnceLock<u16>,
    stomp_tls_port: OnceLock<u16>,
    config: PathBuf,
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
        let log = Output::new(name);
        log.capture(child.stdout.take().expect("piped stdout"));
        log.capture(child.stderr.take().expect("piped stderr"));
        Broker {
            name: name.to_string(),
            child,
            log,
            stomp_port: OnceLock::new(),
            stomp_tls_port: OnceLock::new(),
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
        *self
            .stomp_port
            .get_or_init(|| self.listening_port(LISTENING))
    }

    /// The TLS port from the broker's `listening for STOMP over TLS on ADDR` line (waits up to
    /// 30 s); for brokers spawned with `HAMQ_STOMP_TLS_LISTEN`.
    pub fn stomp_tls_port(&self) -> u16 {
        *self
            .stomp_tls_port
            .get_or_init(|| self.listening_port(LISTENING_TLS))
    }

    fn listening_port(&self, needle: &str) -> u16 {
        let line = self.wait_for_log(needle, START_TIMEOUT);
        parse_port(&line, needle)
            .unwrap_or_else(|| panic!("broker {}: cannot parse the port in {line:?}", self.name))
    }

    /// Every line the broker wrote so far (stdout and stderr interleaved as read).
    pub fn log_lines(&self) -> Vec<String> {
        self.log.lines()
    }

    /// The first line (from the start of the log) containing `needle`. Panics with the log's
    /// tail on timeout, or as soon as the broker's output has closed without such a line.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> String {
        self.wait_for_first(needle, timeout).0
    }

    /// Like [`Broker::wait_for_log`], but returns when the test read that line from the
    /// broker's output (for measuring intervals between events of different processes).
    pub fn wait_for_log_time(&self, needle: &str, timeout: Duration) -> Instant {
        self.wait_for_first(needle, timeout).1
    }

    /// The `n`-th line (from 1) containing `needle`; panics like [`Broker::wait_for_log`].
    pub fn wait_for_log_nth(&self, needle: &str, n: usize, timeout: Duration) -> String {
        self.log
            .try_wait_for_nth(needle, n, timeout)
            .unwrap_or_else(|missed| {
                panic!(
                    "broker {}: {} waiting for line {n} containing {needle:?}; last lines:\n{}",
                    self.name,
                    missed.why("its output closed (it exited)"),
                    missed.tail
                )
            })
            .0
    }

    /// How many log lines so far contain `needle`.
    pub fn count_log(&self, needle: &str) -> usize {
        self.log.count(needle)
    }

    /// SIGKILL by PID and reap.
    pub fn kill9(&mut self) {
        kill_and_wait(&mut self.child);
    }

    /// Sends SIGTERM (graceful shutdown); see [`Broker::wait_exit`].
    pub fn sigterm(&mut self) {
        self.signal(libc::SIGTERM);
    }

    /// SIGHUP: reload (see the broker's `reload`).
    pub fn sighup(&mut self) {
        self.signal(libc::SIGHUP);
    }

    /// The config file given with `--config` (empty unless a test writes to it).
    pub fn config_path(&self) -> &std::path::Path {
        &self.config
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

    /// The first line containing `needle` and when it was read; panics naming the broker.
    fn wait_for_first(&self, needle: &str, timeout: Duration) -> (String, Instant) {
        self.log
            .try_wait_for_nth(needle, 1, timeout)
            .unwrap_or_else(|missed| {
                panic!(
                    "broker {} (pid {}): {} waiting for a log line containing {needle:?}; \
                     last log lines:\n{}",
                    self.name,
                    self.pid(),
                    missed.why("its output closed (it exited)"),
                    missed.tail
                )
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

/// The hash of `password` for the `users` key, made by `hamq hash --iterations 10000` (the
/// fewest iterations hamq accepts, so that test brokers check passwords quickly).
pub fn hash_password(password: &str) -> String {
    let run = hamq_command(
        &["hash", "--iterations", "10000"],
        &[],
        &format!("{password}\n"),
    );
    assert!(
        run.status.success(),
        "`hamq hash` failed ({}): {}",
        run.status,
        run.stderr
    );
    run.stdout.trim_end().to_string()
}

/// What one run of the `hamq` binary as a command (admin, `hash`, `--help`) printed.
pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// stdout, then stderr.
    pub fn text(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Runs `hamq ARGS` as a command with `stdin` on its standard input, the test run's own `HAMQ_`
/// variables removed and `env` set (so that only what the test gives reaches it). Its output
/// is read while it runs (a long listing cannot block it on a full pipe); killed by PID and
/// reaped, failing the test, if it runs longer than 30 s.
pub fn hamq_command(args: &[&str], env: &[(&str, &str)], stdin: &str) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hamq"));
    for (key, _) in std::env::vars() {
        if key.starts_with("HAMQ_") {
            cmd.env_remove(key);
        }
    }
    cmd.args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let what = format!("`hamq {}`", args.join(" "));
    let mut child = process::spawn(cmd).unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let stdout = read_pipe(child.stdout.take(), what.clone());
    let stderr = read_pipe(child.stderr.take(), what.clone());
    let mut input = child.stdin.take().expect("piped stdin");
    // A command that reads no input may have exited already: its closed pipe is no failure.
    let _ = input.write_all(stdin.as_bytes());
    drop(input);
    let status = process::wait_or_kill(&mut child, START_TIMEOUT, &what);
    Run {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

/// A thread that reads `pipe` to its end.
fn read_pipe(pipe: Option<impl Read + Send + 'static>, what: String) -> JoinHandle<String> {
    let mut pipe = pipe.expect("a piped output");
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        pipe.read_to_end(&mut bytes)
            .unwrap_or_else(|e| panic!("reading the output of {what}: {e}"));
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// The port in `... NEEDLE 127.0.0.1:PORT ...`, NEEDLE being one of the `LISTENING` lines.
fn parse_port(line: &str, needle: &str) -> Option<u16> {
    let rest = &line[line.find(needle)? + needle.len()..];
    let addr = rest.split_whitespace().next()?;
    let addr = addr.trim_end_matches(|c: char| !c.is_ascii_digit());
    if let Ok(sa) = addr.parse::<SocketAddr>() {
        return Some(sa.port());
    }
    addr.rsplit(':').next()?.parse().ok()
}
