//! The README's quick start on what a user gets: `git clone` of this repository (committed
//! files only) into a temporary folder, then `./run` there as the README says. It builds the
//! release binary, starts the clone's private MariaDB under var/ (`datastore = local` in the
//! shipped etc/hamq.conf) and serves STOMP; a STOMP client then sends a message with a receipt
//! and receives it. Only the ports are changed (HAMQ_STOMP_LISTEN, HAMQ_LOCAL_DB_PORT and
//! HAMQ_STATUS_LISTEN), so that
//! nothing else on the machine is disturbed, and CARGO_TARGET_DIR points the build at a cache
//! kept between runs.

mod common;

use common::supervise::{Captured, TempDir};
use common::{free_port, Client, TIMEOUT};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const CLONE_PREFIX: &str = "hamq-quickstart-";
/// `./run` builds first: about 1 minute on 2 cores into an empty target dir, 10-15 s with the
/// dependencies already built. Generous, as CI's machine may be busier.
const BUILD_TIMEOUT: Duration = Duration::from_secs(15 * 60);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// The cargo target dir for the clone's release build: `quickstart/` inside this build's own
/// target dir, kept between runs so that only the first run compiles the dependencies. Not the
/// target dir itself: the clone's build would replace its `release/hamq` (which `./run` and the
/// benchmarks of this checkout use) with one built from the committed sources.
fn target_dir() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_hamq")); // <target>/debug/hamq
    bin.parent()
        .and_then(Path::parent)
        .expect("CARGO_BIN_EXE_hamq has a target dir")
        .join("quickstart")
}

/// The clone's private MariaDB, stopped on Drop with `scripts/local-mariadb stop` (it runs
/// detached from `./run`, so it would outlive the test), then SIGKILLed by the PID in its pid
/// file if it still runs.
struct LocalMariaDb {
    checkout: PathBuf,
}

impl Drop for LocalMariaDb {
    fn drop(&mut self) {
        stop_local_mariadb(&self.checkout);
    }
}

fn stop_local_mariadb(checkout: &Path) {
    let script = checkout.join("scripts/local-mariadb");
    if !script.exists() {
        return;
    }
    let mut cmd = Command::new(&script);
    cmd.arg("stop");
    let mut stop = Captured::spawn("local-mariadb stop", cmd);
    match stop.wait_exit(Duration::from_secs(60)) {
        Some(status) if status.success() => {}
        status => eprintln!(
            "scripts/local-mariadb stop in {}: {status:?}\n{}",
            checkout.display(),
            stop.output().tail(10)
        ),
    }
    drop(stop);
    let pid_file = checkout.join("var/mariadb/mariadbd.pid");
    let Some(pid) = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|s| s.trim().parse::<libc::pid_t>().ok())
    else {
        return;
    };
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if matches!(comm.trim(), "mariadbd" | "mysqld") {
        eprintln!(
            "mariadbd (pid {pid}) of {} still runs: SIGKILL",
            checkout.display()
        );
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

#[test]
fn fresh_clone_run_serves_stomp() {
    // Clones left by killed runs: stop their MariaDB before TempDir::new removes them.
    for stale in TempDir::stale(CLONE_PREFIX) {
        stop_local_mariadb(&stale.join("hamq"));
    }
    let tmp = TempDir::new(CLONE_PREFIX);
    let checkout = tmp.path().join("hamq");
    let repo = env!("CARGO_MANIFEST_DIR");
    let status = Command::new("git")
        .args(["clone", "--quiet", repo])
        .arg(&checkout)
        .status()
        .expect("cannot run git");
    assert!(status.success(), "git clone {repo}: {status}");
    let _db = LocalMariaDb {
        checkout: checkout.clone(),
    };

    let stomp_port = free_port();
    let db_port = free_port();
    let status_port = free_port();
    let mut cmd = Command::new("./run");
    cmd.current_dir(&checkout);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("HAMQ_") {
            cmd.env_remove(key);
        }
    }
    cmd.env_remove("RUST_LOG")
        .env("HAMQ_STOMP_LISTEN", format!("127.0.0.1:{stomp_port}"))
        .env("HAMQ_LOCAL_DB_PORT", db_port.to_string())
        .env("HAMQ_STATUS_LISTEN", format!("127.0.0.1:{status_port}"))
        .env("CARGO_TARGET_DIR", target_dir());
    // `./run` builds only when the binary is missing: remove the one an earlier run left in
    // the shared target dir (its dependencies stay built), so this clone's sources are built.
    let binary = target_dir().join("release/hamq");
    if let Err(e) = std::fs::remove_file(&binary) {
        assert!(
            e.kind() == std::io::ErrorKind::NotFound,
            "remove {}: {e}",
            binary.display()
        );
    }
    let started = Instant::now();
    // Dropped before _db: hamq is SIGKILLed (if still running) before its database stops.
    let mut run = Captured::spawn("run", cmd);
    let out = run.output();

    let (listening, listening_at) = out.wait_for_nth("listening for STOMP", 1, BUILD_TIMEOUT);
    assert_eq!(
        out.count("run: building hamq"),
        1,
        "./run should have built hamq; its output:\n{}",
        out.tail(40)
    );
    // cargo's last line, e.g. "Finished `release` profile [optimized] target(s) in 11.23s".
    let build = out.lines().into_iter().find(|l| l.contains("Finished"));
    eprintln!(
        "./run listened after {:?} ({})",
        listening_at.duration_since(started),
        build.as_deref().unwrap_or("no cargo summary").trim()
    );
    assert!(
        listening.contains(&format!("127.0.0.1:{stomp_port}")),
        "{listening}"
    );
    let datastore = out.wait_for("run: datastore = local -> ", TIMEOUT);
    assert!(
        datastore.contains(&format!("@127.0.0.1:{db_port}/")),
        "the local MariaDB should be on HAMQ_LOCAL_DB_PORT={db_port}: {datastore}"
    );

    let mut client = Client::connect(stomp_port);
    client.send_with_receipt("/queue/quickstart", "hello from a fresh clone", &[]);
    client.subscribe_with_receipt("/queue/quickstart", "s1", "client-individual", &[]);
    let message = client.recv(TIMEOUT);
    assert_eq!(message.command, "MESSAGE", "{message:?}");
    assert_eq!(message.header("destination"), Some("/queue/quickstart"));
    assert_eq!(message.text(), "hello from a fresh clone");
    let ack = message.header("ack").expect("MESSAGE has an ack header");
    client.send_frame_with_receipt("ACK", &[("id", ack)], b"");
    client.disconnect();

    // ./run execs hamq: the PID we started is the broker's, and SIGTERM stops it cleanly.
    run.signal(libc::SIGTERM);
    let status = run
        .wait_exit(STOP_TIMEOUT)
        .expect("hamq still runs 30 s after SIGTERM");
    assert_eq!(status.code(), Some(0), "hamq exit status after SIGTERM");
    let out = run.output();
    out.wait_for("released the lock", TIMEOUT);
    out.wait_for("] stopped", TIMEOUT);
}
