//! hamq under daemontools, as the README deploys it: `supervise` runs a service directory whose
//! `run` execs the repository's own `run` script (through `envdir`, the daemontools way of
//! setting `HAMQ_*`), which execs hamq. Checked: `svc -u` starts it, `svc -d` delivers SIGTERM
//! to hamq itself (it releases the lock, logs `stopped` and so exits 0, and the slave takes over
//! at once), it comes back as a slave, and after `svc -k` supervise restarts it.
//!
//! Installs Debian's `daemontools` when it is missing (as root); skips with a message when it
//! cannot.

mod common;

use common::supervise::{daemontools, Supervise, TempDir};
use common::{free_port, shared_mariadb, Broker, Client};
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

const STEP: Duration = Duration::from_secs(15);
/// The README promises an immediate takeover after a graceful stop; this bound is generous.
const TAKEOVER_BOUND: Duration = Duration::from_secs(5);

/// What hamq logs on the successful path of `main`, right before it returns exit code 0
/// (a failure logs `stopped: WHY` and exits 1).
fn is_clean_stop(line: &str) -> bool {
    line.trim_end().ends_with("] stopped")
}

/// Lays out `root/home` like a binary-only installation that `run` accepts as HAMQ_HOME
/// (`target/release/hamq`, here the test build of hamq, and the shipped `etc/hamq.conf`), and
/// `root/service`, a daemontools service directory (held down by a `down` file) whose `run`
/// execs the repository's `run` through `envdir ./env`.
fn service_dir(root: &Path, env: &[(&str, &str)]) -> std::path::PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let home = root.join("home");
    fs::create_dir_all(home.join("target/release")).expect("create home/target/release");
    fs::create_dir_all(home.join("etc")).expect("create home/etc");
    // `run` takes target/release/hamq of HAMQ_HOME (it has no other way to be pointed at a
    // binary); this one is the binary cargo built for the tests.
    symlink(env!("CARGO_BIN_EXE_hamq"), home.join("target/release/hamq"))
        .expect("symlink home/target/release/hamq");
    fs::copy(repo.join("etc/hamq.conf"), home.join("etc/hamq.conf")).expect("copy etc/hamq.conf");

    let service = root.join("service");
    fs::create_dir_all(service.join("env")).expect("create service/env");
    let home_str = home.to_str().expect("utf-8 temp path");
    for (key, value) in [("HAMQ_HOME", home_str), ("RUST_LOG", "info")]
        .iter()
        .chain(env)
    {
        fs::write(service.join("env").join(key), format!("{value}\n")).expect("write env file");
    }
    fs::write(service.join("down"), "").expect("write down");
    let run = service.join("run");
    let real_run = repo.join("run");
    fs::write(
        &run,
        format!(
            "#!/bin/sh\n\
             # Written by tests/daemontools.rs: envdir sets HAMQ_* from ./env, then the\n\
             # repository's run script execs hamq, so supervise's child is hamq itself.\n\
             # setpriv only makes hamq die with supervise if the test process is killed.\n\
             if command -v setpriv >/dev/null 2>&1; then\n\
             \x20   exec setpriv --pdeathsig KILL envdir ./env '{real}'\n\
             fi\n\
             exec envdir ./env '{real}'\n",
            real = real_run.display()
        ),
    )
    .expect("write run");
    fs::set_permissions(&run, fs::Permissions::from_mode(0o755)).expect("chmod run");
    service
}

/// The executable of process `pid`.
fn exe(pid: u32) -> String {
    fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.display().to_string())
        .unwrap_or_else(|e| format!("(unreadable: {e})"))
}

#[test]
fn supervise_svc_up_down_kill() {
    let tools = match daemontools() {
        Ok(tools) => tools,
        Err(why) => {
            eprintln!("SKIPPED: daemontools is not available: {why}");
            return;
        }
    };
    let url = shared_mariadb().create_database();
    let alpha_listen = format!("127.0.0.1:{}", free_port());
    // The shipped config has the status listener on 127.0.0.1:8161: use a free port instead.
    let status_listen = format!("127.0.0.1:{}", free_port());
    let beta_port = free_port();
    let beta_listen = format!("127.0.0.1:{beta_port}");

    // Dropped last: by then supervise and the brokers are gone.
    let root = TempDir::new("hamq-daemontools-");
    let dir = service_dir(
        root.path(),
        &[
            ("HAMQ_DATASTORE", &url),
            ("HAMQ_NAME", "alpha"),
            ("HAMQ_STOMP_LISTEN", &alpha_listen),
            ("HAMQ_STATUS_LISTEN", &status_listen),
        ],
    );
    let mut alpha = Supervise::start(tools, &dir, "alpha");
    let out = alpha.output();
    let svstat = alpha.svstat();
    assert!(svstat.contains(": down "), "before svc -u: {svstat}");

    // svc -u: run execs hamq, which becomes master.
    alpha.svc("-u");
    out.wait_for("acquired the lock", STEP);
    let line = out.wait_for("listening for STOMP", STEP);
    assert!(line.contains(&alpha_listen), "{line}");
    let pid = alpha.service_pid().expect("svstat says up");
    assert!(
        exe(pid).ends_with("/hamq"),
        "supervise's child (pid {pid}) should be hamq itself (run must exec it), is {}",
        exe(pid)
    );
    let alpha_port: u16 = alpha_listen.rsplit(':').next().unwrap().parse().unwrap();
    Client::connect(alpha_port).disconnect();

    let mut beta = Broker::spawn_with_name("beta", &url, &[("HAMQ_STOMP_LISTEN", &beta_listen)]);
    beta.wait_for_log("waiting for the lock (held by alpha", STEP);

    // svc -d: SIGTERM (and SIGCONT) to hamq; it stops cleanly and beta takes over at once.
    // (Once supervise reads commands again: it sleeps for a second after starting a service.)
    alpha.wait_settled(STEP);
    let down_at = Instant::now();
    alpha.svc("-d");
    let released = out.wait_for_nth("released the lock", 1, STEP).1;
    let line = out.wait_for("] stopped", STEP);
    assert!(is_clean_stop(&line), "not a clean stop (exit 0): {line}");
    let status = alpha.wait_svstat("down", STEP, |s| s.contains(": down "));
    let acquired = beta.wait_for_log_time("acquired the lock", STEP);
    let taken_over = beta.wait_for_log_time("listening for STOMP", STEP);
    let takeover = taken_over.duration_since(down_at);
    eprintln!(
        "svc -d -> alpha released the lock {:?}, beta acquired it {:?}, beta listening {:?} \
         ({status})",
        released.duration_since(down_at),
        acquired.duration_since(down_at),
        takeover
    );
    assert!(
        takeover < TAKEOVER_BOUND,
        "beta took {takeover:?} to take over after svc -d"
    );
    Client::connect(beta_port).disconnect();

    // svc -u again: alpha comes back as a slave of beta.
    alpha.svc("-u");
    out.wait_for("waiting for the lock (held by beta", STEP);
    let pid = alpha.service_pid().expect("svstat says up");
    assert!(exe(pid).ends_with("/hamq"), "pid {pid} is {}", exe(pid));

    // beta dies: alpha is master again.
    beta.kill9();
    out.wait_for_nth("acquired the lock", 2, STEP);
    out.wait_for_nth("listening for STOMP", 2, STEP);
    Client::connect(alpha_port).disconnect();

    // svc -k: SIGKILL, so no graceful lines; supervise restarts it (it is wanted up) and,
    // beta being dead, it is master once more.
    let (released, stopped) = (out.count("released the lock"), out.count("] stopped"));
    let starts = out.count("starting as `alpha`");
    alpha.wait_settled(STEP);
    alpha.svc("-k");
    out.wait_for_nth("starting as `alpha`", starts + 1, STEP);
    let acquired = out.wait_for_nth("acquired the lock", 3, STEP).0;
    out.wait_for_nth("listening for STOMP", 3, STEP);
    alpha.wait_svstat("up with a new pid after svc -k", STEP, |_| {
        alpha.service_pid().is_some_and(|p| p != pid)
    });
    let new_pid = alpha.service_pid().expect("svstat says up after svc -k");
    assert!(
        exe(new_pid).ends_with("/hamq"),
        "pid {new_pid} is {}",
        exe(new_pid)
    );
    assert_eq!(
        out.count("released the lock"),
        released,
        "SIGKILL ran a graceful stop?"
    );
    assert_eq!(
        out.count("] stopped"),
        stopped,
        "SIGKILL ran a graceful stop?"
    );
    eprintln!("after svc -k: {acquired}");
    Client::connect(alpha_port).disconnect();

    // svc -dx: a last clean stop, then supervise exits.
    alpha.svc("-dx");
    let (line, _) = out.wait_for_nth("] stopped", stopped + 1, STEP);
    assert!(is_clean_stop(&line), "not a clean stop (exit 0): {line}");
    assert_eq!(out.count("released the lock"), released + 1);
    let status = alpha
        .wait_exit(STEP)
        .expect("supervise did not exit after svc -dx");
    assert!(status.success(), "supervise exited with {status}");
}
