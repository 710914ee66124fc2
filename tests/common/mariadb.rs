//! A private `mariadbd` per test (or one shared per test binary) on a free port.
//!
//! Servers start with MariaDB's own defaults, as users' servers often run: `latin1`, and the
//! `max_allowed_packet` of MySQL 5.7 (4 MiB). `HAMQ_TEST_MARIADB=utf8mb4` starts them the way
//! this harness used to (utf8mb4 and a 64 MiB packet limit) instead, so a suite can be run
//! against both; [`Flavour`] picks one explicitly.

use super::process::{self, kill_and_wait, tail_file};
use mysql::prelude::Queryable;
use mysql::{Conn, OptsBuilder};
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

const READY_TIMEOUT: Duration = Duration::from_secs(60);
const DIR_PREFIX: &str = "hamq-mariadb-";
const LOG_FILE: &str = "mariadbd.log";

/// How a server is configured beyond the harness's own needs (ports, paths, sizes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavour {
    /// The server's compiled-in defaults: `latin1` / `latin1_swedish_ci`, and
    /// `max_allowed_packet` = 4 MiB (MySQL 5.7's default; MariaDB's own is 16 MiB).
    Defaults,
    /// `--character-set-server=utf8mb4` and a 64 MiB `max_allowed_packet` (MySQL 8's default).
    Utf8mb4,
}

impl Flavour {
    /// From `HAMQ_TEST_MARIADB` (`defaults`, the default, or `utf8mb4`).
    pub fn from_env() -> Flavour {
        match std::env::var("HAMQ_TEST_MARIADB").as_deref() {
            Err(_) | Ok("") | Ok("defaults") => Flavour::Defaults,
            Ok("utf8mb4") => Flavour::Utf8mb4,
            Ok(other) => panic!("HAMQ_TEST_MARIADB={other:?}: expected `defaults` or `utf8mb4`"),
        }
    }

    /// The `mariadbd` arguments of this flavour.
    fn args(self) -> &'static [&'static str] {
        match self {
            Flavour::Defaults => &["--max-allowed-packet=4M"],
            Flavour::Utf8mb4 => &[
                "--character-set-server=utf8mb4",
                "--collation-server=utf8mb4_general_ci",
                "--max-allowed-packet=64M",
            ],
        }
    }
}

/// A running `mariadbd` in a throwaway directory: `data/` (the datadir), `tmp/` (its own
/// tmpdir: a starting mariadbd deletes every `#sql*` file in its tmpdir, which breaks servers
/// that share one), the socket and the logs. Drop SIGKILLs it and removes the directory.
pub struct MariaDb {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    mariadbd: PathBuf,
    /// `--bind-address`: `127.0.0.1` unless started with [`MariaDb::start_bound`].
    bind_address: String,
    /// More `mariadbd` arguments, from [`MariaDb::start_with_args`].
    extra_args: Vec<String>,
    flavour: Flavour,
}

impl MariaDb {
    /// Initialises a fresh datadir, starts the server on a free port, waits until root can log
    /// in over TCP (60 s), and creates the user `hamq`/`hamq` with all privileges.
    pub fn start() -> MariaDb {
        Self::start_bound("127.0.0.1")
    }

    /// Like [`MariaDb::start`], listening on `bind_address`: a comma-separated list of local
    /// addresses (MariaDB 10.11+), e.g. `127.0.0.1,10.231.0.1` to be reachable from a network
    /// namespace too. Each must be configured when the server starts; keep `127.0.0.1` in the
    /// list (the harness connects as root through it). Remote clients also need
    /// [`MariaDb::allow_hamq_from`].
    pub fn start_bound(bind_address: &str) -> MariaDb {
        Self::start_with(bind_address, &[])
    }

    /// Like [`MariaDb::start`], with more `mariadbd` arguments (e.g. `--ssl-cert=PATH`).
    pub fn start_with_args(args: &[String]) -> MariaDb {
        Self::start_with("127.0.0.1", args)
    }

    /// Like [`MariaDb::start`], of the given flavour whatever `HAMQ_TEST_MARIADB` says.
    pub fn start_flavour(flavour: Flavour) -> MariaDb {
        Self::start_full("127.0.0.1", &[], flavour)
    }

    fn start_with(bind_address: &str, extra_args: &[String]) -> MariaDb {
        Self::start_full(bind_address, extra_args, Flavour::from_env())
    }

    fn start_full(bind_address: &str, extra_args: &[String], flavour: Flavour) -> MariaDb {
        static SWEEP: OnceLock<()> = OnceLock::new();
        SWEEP.get_or_init(|| process::sweep_stale(&std::env::temp_dir(), DIR_PREFIX));
        let dir = std::env::temp_dir().join(format!("{DIR_PREFIX}{}", process::unique_id()));
        let _ = fs::remove_dir_all(&dir);
        for sub in ["data", "tmp"] {
            let path = dir.join(sub);
            fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        }
        // The guard exists before anything is spawned, so a panic below still cleans up.
        let mut db = MariaDb {
            child: None,
            port: 0,
            dir,
            mariadbd: find_binary("mariadbd"),
            bind_address: bind_address.to_string(),
            extra_args: extra_args.to_vec(),
            flavour,
        };
        db.install();
        db.launch_on_free_port();
        db.create_hamq_user();
        db
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn flavour(&self) -> Flavour {
        self.flavour
    }

    /// PID of the running server; panics when it was killed and not restarted.
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .map(Child::id)
            .expect("mariadbd is not running")
    }

    /// The throwaway directory holding the datadir, tmpdir, socket and logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn datadir(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn socket_path(&self) -> PathBuf {
        self.dir.join("mysqld.sock")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join(LOG_FILE)
    }

    /// `mysql://hamq:hamq@127.0.0.1:PORT/db`.
    pub fn url(&self, db: &str) -> String {
        format!("mysql://hamq:hamq@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates a fresh, uniquely named database and returns its URL (isolates tests that share
    /// one server).
    pub fn create_database(&self) -> String {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "t_{}_{}",
            COUNTER.fetch_add(1, Ordering::Relaxed),
            std::process::id()
        );
        self.root_conn()
            .query_drop(format!("CREATE DATABASE `{name}`"))
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name} on port {}: {e}", self.port));
        self.url(&name)
    }

    /// A connection as root over TCP (never the socket).
    pub fn root_conn(&self) -> Conn {
        self.try_root_conn().unwrap_or_else(|e| {
            panic!(
                "cannot connect as root to mariadbd on 127.0.0.1:{}: {e}\nlast log lines:\n{}",
                self.port,
                tail_file(&self.log_path(), 30)
            )
        })
    }

    /// SIGKILL by PID and reap; the datadir stays for [`MariaDb::restart`].
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_and_wait(&mut child);
        }
    }

    /// Starts the server again on the same datadir and port (SIGKILLing it first if it still
    /// runs) and waits until it accepts connections, crash recovery included.
    pub fn restart(&mut self) {
        self.kill9();
        self.launch(self.port, true)
            .unwrap_or_else(|e| panic!("mariadbd did not restart on port {}: {e}", self.port));
    }

    fn try_root_conn(&self) -> mysql::Result<Conn> {
        try_root_conn(self.port)
    }

    fn install(&self) {
        let log = self.dir.join("install.log");
        let out = File::create(&log).expect("create install.log");
        let mut cmd = Command::new(find_binary("mariadb-install-db"));
        cmd.arg("--no-defaults")
            .arg("--auth-root-authentication-method=normal")
            .arg(format!("--datadir={}", self.datadir().display()))
            .arg(format!("--tmpdir={}", self.dir.join("tmp").display()))
            .args(["--skip-test-db", "--skip-name-resolve"])
            .args([
                "--innodb-buffer-pool-size=64M",
                "--innodb-log-file-size=48M",
            ])
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup install.log"))
            .stderr(out);
        if is_root() {
            cmd.arg("--user=root");
        }
        let status = process::spawn(cmd)
            .and_then(|mut c| c.wait())
            .expect("cannot run mariadb-install-db");
        assert!(
            status.success(),
            "mariadb-install-db failed ({status}) in {}:\n{}",
            self.dir.display(),
            tail_file(&log, 40)
        );
    }

    /// Starts on a fresh free port, retrying when another process took the port meanwhile.
    fn launch_on_free_port(&mut self) {
        let mut last_error = String::new();
        for _ in 0..5 {
            let port = process::free_port();
            match self.launch(port, false) {
                Ok(()) => return,
                Err(e) if e.contains("in use") => last_error = e,
                Err(e) => panic!("mariadbd failed to start: {e}"),
            }
        }
        panic!("mariadbd found no free port in 5 tries: {last_error}");
    }

    /// Spawns mariadbd on `port` and waits for a root connection. `Err` when it exited early,
    /// with its log; a timeout panics. `wait_for_port`: retry binding for 10 s (for a restart
    /// on the same port); otherwise give up at once so that another free port can be tried.
    fn launch(&mut self, port: u16, wait_for_port: bool) -> Result<(), String> {
        self.port = port;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open mariadbd.log");
        let log_start = log.metadata().map_or(0, |m| m.len());
        let port_open_timeout = if wait_for_port { 10 } else { 0 };
        let mut cmd = Command::new(&self.mariadbd);
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", self.datadir().display()))
            .arg(format!("--tmpdir={}", self.dir.join("tmp").display()))
            .arg(format!("--port={port}"))
            .arg(format!("--bind-address={}", self.bind_address))
            .arg(format!("--socket={}", self.socket_path().display()))
            .arg(format!(
                "--pid-file={}",
                self.dir.join("mysqld.pid").display()
            ))
            .args(["--skip-log-bin", "--skip-name-resolve"])
            .arg(format!("--port-open-timeout={port_open_timeout}"))
            .args([
                "--innodb-buffer-pool-size=64M",
                "--innodb-log-file-size=48M",
            ])
            .arg("--max-connections=500")
            .args(self.flavour.args())
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup mariadbd.log"))
            .stderr(log);
        if is_root() {
            cmd.arg("--user=root");
        }
        let child = process::spawn(cmd)
            .unwrap_or_else(|e| panic!("cannot spawn {}: {e}", self.mariadbd.display()));
        self.child = Some(child);
        self.wait_ready(log_start)
    }

    /// Polls for a root connection; `log_start` is where this launch's log output begins.
    fn wait_ready(&mut self, log_start: u64) -> Result<(), String> {
        let (port, child) = (self.port, self.child.as_mut().expect("spawned"));
        let ready = process::poll(READY_TIMEOUT, Duration::from_millis(100), || {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(Err(status));
            }
            try_root_conn(port).is_ok().then_some(Ok(()))
        });
        let log = tail_file(&self.log_path(), 30);
        match ready {
            Some(Ok(())) => Ok(()),
            Some(Err(status)) => {
                self.child = None;
                let this_launch = fs::read(self.log_path()).unwrap_or_default();
                let this_launch = String::from_utf8_lossy(
                    this_launch.get(log_start as usize..).unwrap_or_default(),
                );
                let in_use = this_launch.contains("Address already in use");
                let what = if in_use { "port in use" } else { "exited" };
                Err(format!(
                    "mariadbd on port {} {what} ({status}); last log lines:\n{log}",
                    self.port
                ))
            }
            None => panic!(
                "timed out after {READY_TIMEOUT:?} waiting for mariadbd (pid {}) to accept a root \
                 connection on 127.0.0.1:{}; last log lines:\n{log}",
                child_pid(&self.child),
                self.port
            ),
        }
    }

    /// Lets `hamq`/`hamq` log in from the client address `host` too (name resolution is off,
    /// so this is an IP address or a pattern such as `10.231.%`).
    pub fn allow_hamq_from(&self, host: &str) {
        let mut conn = self.root_conn();
        conn.query_drop(format!(
            "CREATE USER IF NOT EXISTS 'hamq'@'{host}' IDENTIFIED BY 'hamq'"
        ))
        .and_then(|_| conn.query_drop(format!("GRANT ALL ON *.* TO 'hamq'@'{host}'")))
        .unwrap_or_else(|e| panic!("creating user hamq@{host}: {e}"));
    }

    fn create_hamq_user(&self) {
        let mut conn = self.root_conn();
        for host in ["127.0.0.1", "localhost"] {
            conn.query_drop(format!(
                "CREATE USER IF NOT EXISTS 'hamq'@'{host}' IDENTIFIED BY 'hamq'"
            ))
            .and_then(|_| conn.query_drop(format!("GRANT ALL ON *.* TO 'hamq'@'{host}'")))
            .unwrap_or_else(|e| panic!("creating user hamq@{host}: {e}"));
        }
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "mariadbd on port {} (in {}), last log lines:\n{}",
                self.port,
                self.dir.display(),
                tail_file(&self.log_path(), 30)
            );
        }
        self.kill9();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn try_root_conn(port: u16) -> mysql::Result<Conn> {
    let opts = OptsBuilder::new()
        .ip_or_hostname(Some("127.0.0.1"))
        .tcp_port(port)
        .user(Some("root"))
        .prefer_socket(false)
        .tcp_connect_timeout(Some(Duration::from_secs(5)));
    Conn::new(opts)
}

fn child_pid(child: &Option<Child>) -> String {
    child.as_ref().map_or("gone".into(), |c| c.id().to_string())
}

/// The shared servers of this test binary, one per flavour.
static SHARED: [OnceLock<MariaDb>; 2] = [OnceLock::new(), OnceLock::new()];

/// One server per test binary, started on first use, for tests that never kill the database
/// (give each test its own [`MariaDb::create_database`]); its flavour is `HAMQ_TEST_MARIADB`'s.
pub fn shared_mariadb() -> &'static MariaDb {
    shared_mariadb_of(Flavour::from_env())
}

/// The shared server of one flavour. Statics are never dropped, so an `atexit` handler
/// SIGKILLs the shared servers and removes their datadirs when the test binary exits (libtest
/// ends with `exit`, which runs atexit handlers).
pub fn shared_mariadb_of(flavour: Flavour) -> &'static MariaDb {
    let slot = match flavour {
        Flavour::Defaults => &SHARED[0],
        Flavour::Utf8mb4 => &SHARED[1],
    };
    slot.get_or_init(|| {
        let db = MariaDb::start_flavour(flavour);
        static REGISTERED: OnceLock<()> = OnceLock::new();
        // SAFETY: registers a plain extern "C" fn with no arguments.
        REGISTERED.get_or_init(|| unsafe {
            libc::atexit(stop_shared);
        });
        db
    })
}

extern "C" fn stop_shared() {
    for db in SHARED.iter().filter_map(OnceLock::get) {
        if let Some(child) = &db.child {
            // Never reaped before exit, so the PID is still ours.
            let pid = child.id() as libc::pid_t;
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
        }
        let _ = fs::remove_dir_all(&db.dir);
    }
}

/// Finds `name` in PATH, then /usr/sbin and /usr/bin; panics saying how to install it.
pub(super) fn find_binary(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` not found in PATH, /usr/sbin or /usr/bin: apt-get install mariadb-server"
            )
        })
}

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}
