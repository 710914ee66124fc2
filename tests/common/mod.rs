//! The integration-test harness of hamq, shared by every file under `tests/` via `mod common;`.
//!
//! What it owns, and the rules it keeps for every test:
//! - [`MariaDb`]: a private `mariadbd` on a free port with a throwaway datadir (with the
//!   server's own defaults, or utf8mb4: [`Flavour`]), and
//!   [`shared_mariadb`], one such server per test binary for tests that never kill it.
//! - [`Broker`]: the real `hamq` binary with env configuration and a captured log;
//!   [`hash_password`] makes a `users` value with `hamq hash`.
//! - [`Client`] and [`Frame`]: a minimal STOMP client with its own parser, independent of the
//!   crate's codec, so a codec bug cannot hide itself in the tests.
//! - [`Certs`]: a throwaway CA and server certificate (PEM files) for TLS tests.
//! - [`Load`]: the failover tests' producers, consumer and CONNECT probe, and their checks;
//!   [`Pair`]: the two brokers they run against.
//! - [`NetNs`]: a network namespace joined to the host by veth pairs, for network cuts.
//! - [`Galera`]: a real 3-node MariaDB Galera cluster (nodes optionally in a namespace).
//! - [`Proxy`]: a TCP proxy in front of a database that a test switches to another server.
//!
//! Every process started here is stopped by PID by a guard whose `Drop` kills and waits, also
//! when the test fails, and gets SIGKILL if the test process dies abruptly (see `process`).
//! Ports are picked free by the kernel. Nothing waits by sleeping: readiness is polled against a
//! deadline, and a timeout panics saying what was awaited, with the process's recent log lines.

// Every test binary compiles this whole module but uses only part of it: the items it does
// not use would warn as dead code, and their re-exports below as unused imports.
#![allow(dead_code, unused_imports)]

mod broker;
mod certs;
mod client;
mod galera;
mod load;
mod mariadb;
mod netns;
mod output;
mod pair;
pub mod probe;
mod process;
mod proxy;
pub mod supervise;

pub use broker::{hamq_command, hash_password, Broker, Run};
pub use certs::Certs;
pub use client::{Client, Frame, TIMEOUT};
pub use galera::{Galera, NodeSpec};
pub use load::{Ledger, Load, Outcome, QUEUE};
pub use mariadb::{shared_mariadb, shared_mariadb_of, Flavour, MariaDb};
pub use netns::{Cut, NetNs, Veth};
pub use pair::{Pair, Side, PAIR_LEASE, STEP};
pub use process::{free_port, poll, wait_or_kill};
pub use proxy::Proxy;

use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The python interpreter that can `import stomp` (stomp.py), or `None` when there is none.
pub fn python3_with_stomp() -> Option<String> {
    static FOUND: OnceLock<Option<String>> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            let ok = Command::new("python3")
                .args(["-c", "import stomp"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            ok.then(|| "python3".to_string())
        })
        .clone()
}
