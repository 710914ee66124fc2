//! Child processes: spawning so that they die with the test process, signals by PID, free
//! ports, unique names, and polling against a deadline.

use std::collections::HashSet;
use std::io;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawns `cmd` so that the child gets SIGKILL when the test process dies, however it dies.
///
/// `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, not the process.
/// Test threads exit after each test, and a shared server started by one test must outlive
/// it, so every child is forked by one dedicated spawner thread that never exits (its request
/// channel's sender lives in a static and is never dropped). The signal then fires only when
/// the whole process is gone. Guards still kill by PID first; this catches SIGKILL of the test
/// process, `timeout`, and aborts, where no destructor or atexit handler runs.
pub fn spawn(mut cmd: Command) -> io::Result<Child> {
    // SAFETY: the closure only makes async-signal-safe calls (prctl, getppid, _exit).
    let parent = std::process::id() as libc::pid_t;
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                libc::_exit(1); // the parent died before prctl took effect
            }
            Ok(())
        });
    }
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner()
        .send((cmd, reply_tx))
        .expect("child spawner thread is gone");
    reply_rx.recv().expect("child spawner thread did not reply")
}

fn spawner() -> &'static mpsc::Sender<SpawnRequest> {
    static TX: OnceLock<mpsc::Sender<SpawnRequest>> = OnceLock::new();
    TX.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        thread::Builder::new()
            .name("child-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("cannot start the child spawner thread");
        tx
    })
}

/// Sends `sig` to `pid`; false when there is no such process.
pub fn signal(pid: u32, sig: libc::c_int) -> bool {
    unsafe { libc::kill(pid as libc::pid_t, sig) == 0 }
}

/// Whether a process with this PID exists (zombies included).
pub fn pid_exists(pid: u32) -> bool {
    signal(pid, 0) || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// SIGKILLs `child` if it has not been reaped yet, then reaps it. Never signals a reaped PID:
/// an unreaped child keeps its PID, so it cannot have been reused by another process.
pub fn kill_and_wait(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        signal(child.id(), libc::SIGKILL);
    }
    let _ = child.wait();
}

/// A 127.0.0.1 port that was free a moment ago and that this process has not handed out before.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("cannot bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local_addr").port();
        if given.insert(port) {
            return port;
        }
    }
}

/// `<pid>_<counter>`: unique among the processes running now and within this process.
pub fn unique_id() -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{}_{}", std::process::id(), n)
}

/// Removes `<dir>/<prefix><pid>_*` entries whose process is gone (left by killed test runs).
pub fn sweep_stale(dir: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(prefix) else {
            continue;
        };
        let pid = rest.split('_').next().and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|pid| pid != std::process::id() && !pid_exists(pid)) {
            let _ = std::fs::remove_dir_all(entry.path());
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Calls `probe` every `every` until it returns `Some` or `timeout` passes (then `None`).
pub fn poll<T>(
    timeout: Duration,
    every: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return Some(v);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        thread::sleep(every.min(deadline - now));
    }
}

/// The last `n` lines, indented, for panic messages.
pub fn tail(lines: &[String], n: usize) -> String {
    let start = lines.len().saturating_sub(n);
    let mut out = String::new();
    for line in &lines[start..] {
        out.push_str("    ");
        out.push_str(line);
        out.push('\n');
    }
    if out.is_empty() {
        out.push_str("    (no output)\n");
    }
    out
}

/// The last `n` lines of a log file, for panic messages.
pub fn tail_file(path: &Path, n: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            tail(&text.lines().map(str::to_string).collect::<Vec<_>>(), n)
        }
        Err(e) => format!("    (cannot read {}: {e})\n", path.display()),
    }
}

/// Wait for `child` to exit, polling until `timeout`; past it, kill it, reap it and panic
/// naming `what`.
pub fn wait_or_kill(
    child: &mut Child,
    timeout: std::time::Duration,
    what: &str,
) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} still runs after {timeout:?}");
        }
        thread::sleep(std::time::Duration::from_millis(20));
    }
}
