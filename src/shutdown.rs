//! The stop signal handed to every loop: set once (SIGTERM/SIGINT, or a fatal store failure),
//! seen by the accept loop (woken by a connection to itself) and by every thread's bounded waits.

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

#[derive(Default)]
pub struct Shutdown {
    stopping: AtomicBool,
    /// Why the broker stops on its own; the process then exits non-zero.
    failure: Mutex<Option<String>>,
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
    pub fn fail(&self, why: String) {
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

    pub fn failure(&self) -> Option<String> {
        self.failure.lock().ok().and_then(|f| f.clone())
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
