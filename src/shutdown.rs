//! The stop signal handed to every loop: set once (SIGTERM/SIGINT, or a fatal store failure),
//! seen by the accept loop (woken by a connection to itself) and by every thread's bounded waits.

use std::error::Error;
use std::fmt;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Why the broker stops on its own; the process then exits non-zero. The cause is typed (a
/// supervisor's log reader, a test, `main` can tell a lost lock from a port that is taken);
/// the source is the layer's own error (`StoreError`, the election's `LockLost`, an I/O error),
/// boxed because those live above this module.
#[derive(Debug)]
pub enum Failure {
    /// The master lock may be someone else's now: a keep-alive failed or stalled, the store
    /// connection broke, or another master's epoch was found.
    LostLock(Box<dyn Error + Send + Sync>),
    /// The store failed in a way that is not the lock's (a statement the database refused).
    Store(Box<dyn Error + Send + Sync>),
    /// Something the broker needs could not be started: `what` names it (a listener and its
    /// address, a thread).
    Start {
        what: String,
        source: std::io::Error,
    },
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::LostLock(e) => write!(f, "lost the lock: {e}"),
            Failure::Store(e) => write!(f, "store failure: {e}"),
            Failure::Start { what, source } => write!(f, "{what}: {source}"),
        }
    }
}

impl Error for Failure {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            Failure::LostLock(e) | Failure::Store(e) => Some(e.as_ref()),
            Failure::Start { source, .. } => Some(source),
        }
    }
}

impl Failure {
    /// `what` could not be started (a thread, a listener): `source` says why.
    pub fn start(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Failure {
        let what = what.into();
        move |source| Failure::Start { what, source }
    }
}

#[derive(Default)]
pub struct Shutdown {
    stopping: AtomicBool,
    /// Why the broker stops on its own; the process then exits non-zero.
    failure: Mutex<Option<Failure>>,
    /// The listeners to connect to so that a blocked `accept` returns.
    wake: Mutex<Vec<SocketAddr>>,
}

impl Shutdown {
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Idempotent: the first call wakes the accept loop, later ones do nothing more.
    pub fn begin(&self) {
        if self.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        let wake = self.wake.lock().map(|w| w.clone()).unwrap_or_default();
        for addr in wake {
            let _ = TcpStream::connect_timeout(&addr, Duration::from_secs(1));
        }
    }

    /// Stop because something broke; the first reason is logged and the exit code is 1.
    pub fn fail(&self, why: Failure) {
        if let Ok(mut failure) = self.failure.lock() {
            if failure.is_none() {
                log::error!("{why}");
                *failure = Some(why);
            }
        }
        self.begin();
    }

    /// Sleep up to `total`, waking early when the stop begins.
    pub fn sleep(&self, total: Duration) {
        let step = Duration::from_millis(20);
        let deadline = std::time::Instant::now() + total;
        while !self.is_stopping() && std::time::Instant::now() < deadline {
            std::thread::sleep(step);
        }
    }

    /// The first failure's text, for the log.
    pub fn reason(&self) -> Option<String> {
        let failure = self.failure.lock().ok()?;
        failure.as_ref().map(Failure::to_string)
    }

    /// The first failure, once the broker has stopped.
    pub fn take_failure(&self) -> Option<Failure> {
        self.failure.lock().ok().and_then(|mut f| f.take())
    }

    /// Called once a listener is bound; a stop that came earlier is passed on at once.
    pub fn add_wake(&self, addr: SocketAddr) {
        if let Ok(mut wake) = self.wake.lock() {
            wake.push(addr);
        }
        if self.is_stopping() {
            let _ = TcpStream::connect_timeout(&addr, Duration::from_secs(1));
        }
    }
}

/// `0.0.0.0:port` cannot be connected to: wake the loop (or reach it) through loopback instead.
pub fn wake_address(addr: SocketAddr) -> SocketAddr {
    let mut wake = addr;
    if addr.ip().is_unspecified() {
        wake.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    wake
}
