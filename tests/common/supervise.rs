//! Helpers for the tests that run hamq the way operators do, through the repository's `run`
//! script rather than as the harness's bare [`Broker`](super::Broker):
//! - [`Output`]: a process's output lines as they are written, with the time each was read
//!   (re-exported from `output`).
//! - [`Captured`]: a spawned process with its output captured; Drop SIGKILLs it by PID.
//! - [`TempDir`]: a throwaway directory, removed on Drop (and by later runs if ours was killed).
//! - [`daemontools`]: finds `supervise`, `svc`, `svstat` and `svok`, installing Debian's
//!   `daemontools` package when they are missing and we are root.
//! - [`Supervise`]: `supervise DIR` with its output captured; Drop brings the service down and
//!   stops supervise (`svc -dx`, then `svc -k`, then SIGKILL of supervise by PID).

pub use super::output::Output;
use super::process::{self, kill_and_wait};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

/// A process spawned with stdout and stderr captured into an [`Output`]. Drop SIGKILLs it by
/// PID (if not reaped yet) and reaps it.
pub struct Captured {
    child: Child,
    output: Arc<Output>,
}

impl Captured {
    /// Spawns `cmd` (stdin null, stdout and stderr piped) so that it dies with the test process.
    pub fn spawn(name: &str, mut cmd: Command) -> Captured {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let what = format!("{cmd:?}");
        let mut child =
            process::spawn(cmd).unwrap_or_else(|e| panic!("cannot spawn {name} ({what}): {e}"));
        let output = Output::new(name);
        output.capture(child.stdout.take().expect("piped stdout"));
        output.capture(child.stderr.take().expect("piped stderr"));
        Captured { child, output }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn output(&self) -> &Output {
        &self.output
    }

    /// Sends `sig` unless the process has already been reaped (so the PID is still ours).
    pub fn signal(&mut self, sig: libc::c_int) {
        if let Ok(None) = self.child.try_wait() {
            process::signal(self.child.id(), sig);
        }
    }

    /// The exit status once the process has exited, or `None` if it still runs after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = &mut self.child;
        process::poll(timeout, Duration::from_millis(10), || {
            child.try_wait().ok().flatten()
        })
    }
}

impl Drop for Captured {
    fn drop(&mut self) {
        kill_and_wait(&mut self.child);
    }
}

/// `<temp>/<prefix><pid>_<n>`, created empty; Drop removes it. Leftovers of test processes
/// that died without cleaning up are removed the first time a prefix is used.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        process::sweep_stale(&std::env::temp_dir(), prefix);
        let path = std::env::temp_dir().join(format!("{prefix}{}", process::unique_id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `<temp>/<prefix><pid>_*` directories whose test process is gone (for cleanups that
    /// need more than removing them, before [`TempDir::new`] sweeps them).
    pub fn stale(prefix: &str) -> Vec<PathBuf> {
        let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter(|entry| {
                let name = entry.file_name().to_string_lossy().into_owned();
                let pid = name
                    .strip_prefix(prefix)
                    .and_then(|rest| rest.split('_').next())
                    .and_then(|pid| pid.parse::<u32>().ok());
                pid.is_some_and(|pid| pid != std::process::id() && !process::pid_exists(pid))
            })
            .map(|entry| entry.path())
            .collect()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// The daemontools programs the tests use.
pub struct Daemontools {
    pub supervise: PathBuf,
    pub svc: PathBuf,
    pub svstat: PathBuf,
    pub svok: PathBuf,
}

/// Finds daemontools, installing Debian's `daemontools` package with apt-get when it is
/// missing and we are root. `Err` says why it is not available (the test then skips).
pub fn daemontools() -> Result<&'static Daemontools, String> {
    static FOUND: OnceLock<Result<Daemontools, String>> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            if let Some(tools) = find_daemontools() {
                return Ok(tools);
            }
            if unsafe { libc::geteuid() } != 0 {
                return Err("daemontools is not installed and we are not root".to_string());
            }
            let apt_get = find_program("apt-get").ok_or("daemontools is missing, no apt-get")?;
            let install = [
                "install",
                "-y",
                "-q",
                "--no-install-recommends",
                "daemontools",
            ];
            // The package lists may be missing or stale: update once if the install fails.
            apt(&apt_get, &install)
                .or_else(|_| apt(&apt_get, &["update", "-q"]).and_then(|_| apt(&apt_get, &install)))
                .map_err(|e| format!("installing daemontools failed: {e}"))?;
            find_daemontools().ok_or_else(|| "daemontools installed but not found".to_string())
        })
        .as_ref()
        .map_err(Clone::clone)
}

fn find_daemontools() -> Option<Daemontools> {
    Some(Daemontools {
        supervise: find_program("supervise")?,
        svc: find_program("svc")?,
        svstat: find_program("svstat")?,
        svok: find_program("svok")?,
    })
}

/// `name` in PATH, then /usr/bin, /usr/sbin, /bin, /sbin.
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin", "/usr/sbin", "/bin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Runs apt-get with `args` (5 minutes at most); `Err` has its output's tail.
fn apt(apt_get: &Path, args: &[&str]) -> Result<(), String> {
    eprintln!("running apt-get {}", args.join(" "));
    let mut cmd = Command::new(apt_get);
    cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
    let mut apt = Captured::spawn("apt-get", cmd);
    match apt.wait_exit(Duration::from_secs(300)) {
        Some(status) if status.success() => Ok(()),
        Some(status) => Err(format!(
            "apt-get {args:?}: {status}\n{}",
            apt.output.tail(20)
        )),
        None => Err(format!("apt-get {args:?}: still running after 5 minutes")),
    }
}

/// `supervise DIR` with its output (and so the service's) captured. Drop brings the service
/// down and stops supervise: `svc -dx`, after 10 s `svc -k`, after 5 s more SIGKILL by PID.
pub struct Supervise {
    tools: &'static Daemontools,
    dir: PathBuf,
    supervise: Captured,
}

impl Supervise {
    /// Starts `supervise dir` (inherited `HAMQ_*` variables removed from its environment) and
    /// waits (10 s) until `svok` says it runs. A `down` file in `dir` keeps the service down
    /// until `svc -u`.
    pub fn start(tools: &'static Daemontools, dir: &Path, name: &str) -> Supervise {
        let mut cmd = Command::new(&tools.supervise);
        cmd.arg(dir);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("HAMQ_") {
                cmd.env_remove(key);
            }
        }
        let mut supervise = Supervise {
            tools,
            dir: dir.to_path_buf(),
            supervise: Captured::spawn(name, cmd),
        };
        let ok = process::poll(Duration::from_secs(10), Duration::from_millis(20), || {
            if let Some(status) = supervise.supervise.child.try_wait().ok().flatten() {
                panic!(
                    "supervise {} exited at once ({status}):\n{}",
                    dir.display(),
                    supervise.output().tail(20)
                );
            }
            supervise.svok().then_some(())
        });
        assert!(
            ok.is_some(),
            "svok {}: supervise not running after 10 s",
            dir.display()
        );
        supervise
    }

    /// The PID of supervise itself.
    pub fn pid(&self) -> u32 {
        self.supervise.pid()
    }

    /// supervise's output: what the service writes to stdout and stderr, across restarts.
    pub fn output(&self) -> &Output {
        self.supervise.output()
    }

    /// `svc FLAGS DIR`; panics unless it succeeds.
    pub fn svc(&self, flags: &str) {
        let out = Command::new(&self.tools.svc)
            .arg(flags)
            .arg(&self.dir)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run svc: {e}"));
        assert!(
            out.status.success(),
            "svc {flags} {}: {}: {}",
            self.dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Whether `svok DIR` says supervise is running.
    pub fn svok(&self) -> bool {
        Command::new(&self.tools.svok)
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// `svstat DIR` output, e.g. `DIR: up (pid 123) 4 seconds` or `DIR: down 2 seconds`.
    pub fn svstat(&self) -> String {
        let out = Command::new(&self.tools.svstat)
            .arg(&self.dir)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run svstat: {e}"));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The service's PID when `svstat` says it is up.
    pub fn service_pid(&self) -> Option<u32> {
        let status = self.svstat();
        let rest = &status[status.find(": up (pid ")? + ": up (pid ".len()..];
        rest[..rest.find(')')?].parse().ok()
    }

    /// Waits until the service has been up for a second (and a little), and returns its PID.
    /// supervise sleeps for a second after each start of the service (its guard against a
    /// restart loop) and reads no `svc` command meanwhile: a `svc -d` sent sooner takes effect
    /// only when that second is over. The start time is the one supervise wrote to
    /// `supervise/status` (svstat shows it only in whole seconds).
    pub fn wait_settled(&self, timeout: Duration) -> u32 {
        process::poll(timeout, Duration::from_millis(20), || {
            let pid = self.service_pid()?;
            let settled = self.status_changed_at()? + Duration::from_millis(1100);
            (SystemTime::now() >= settled).then_some(pid)
        })
        .unwrap_or_else(|| {
            panic!(
                "the service was not up for a second within {timeout:?}: {}",
                self.svstat()
            )
        })
    }

    /// When supervise last started or stopped the service: the TAI64N label that begins
    /// `supervise/status` (daemontools' libtai: TAI = 2^62 + 10 + Unix seconds).
    pub fn status_changed_at(&self) -> Option<SystemTime> {
        let status = fs::read(self.dir.join("supervise/status")).ok()?;
        let secs = u64::from_be_bytes(status.get(0..8)?.try_into().ok()?);
        let nanos = u32::from_be_bytes(status.get(8..12)?.try_into().ok()?);
        let unix = secs.checked_sub((1 << 62) + 10)?;
        Some(SystemTime::UNIX_EPOCH + Duration::new(unix, nanos))
    }

    /// Polls `svstat` until `ok` accepts its output; returns it. Panics after `timeout`.
    pub fn wait_svstat(&self, what: &str, timeout: Duration, ok: impl Fn(&str) -> bool) -> String {
        process::poll(timeout, Duration::from_millis(20), || {
            let status = self.svstat();
            ok(&status).then_some(status)
        })
        .unwrap_or_else(|| {
            panic!(
                "svstat did not say {what} within {timeout:?}: {:?}; last output lines:\n{}",
                self.svstat(),
                self.output().tail(30)
            )
        })
    }

    /// Waits until supervise has exited (after `svc -x`); its status, or `None` on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.supervise.wait_exit(timeout)
    }
}

impl Drop for Supervise {
    fn drop(&mut self) {
        // supervise kills its own child, which it alone can do without racing a reap.
        if let Ok(None) = self.supervise.child.try_wait() {
            let _ = Command::new(&self.tools.svc)
                .arg("-dx")
                .arg(&self.dir)
                .stdin(Stdio::null())
                .output();
            if self.wait_exit(Duration::from_secs(10)).is_none() {
                let _ = Command::new(&self.tools.svc)
                    .arg("-k")
                    .arg(&self.dir)
                    .stdin(Stdio::null())
                    .output();
                let _ = self.wait_exit(Duration::from_secs(5));
            }
        }
        // Captured's Drop: SIGKILL by PID if still running, and reap.
    }
}
