//! Two brokers of one master/slave group, `alpha` and `beta`, each with its own datastore URL
//! (the same database, or two nodes of one cluster), fixed STOMP listener (so a client keeps its
//! address across restarts), optionally inside a network namespace, and a short lease. The test
//! plays the supervisor: [`Pair::restart_after_exit`] starts a broker that exited again, as
//! daemontools would.

use super::broker::Broker;
use super::process::free_port;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The pair's default lease (seconds): short, so freeze tests stay quick.
pub const PAIR_LEASE: &str = "3";
/// The bound of most waits for a broker's log line.
pub const STEP: Duration = Duration::from_secs(5);

/// How one broker of the pair is started and reached.
#[derive(Clone, Debug)]
pub struct Side {
    pub url: String,
    /// A command that runs the broker in place (e.g. `ip netns exec NS`); empty = directly.
    pub wrapper: Vec<String>,
    /// Its `stomp_listen`.
    pub listen: String,
    /// Where the test's clients reach it.
    pub addr: SocketAddr,
}

impl Side {
    /// Run directly, listening on a free port of 127.0.0.1.
    pub fn local(url: &str) -> Side {
        let port = free_port();
        Side {
            url: url.to_string(),
            wrapper: Vec::new(),
            listen: format!("127.0.0.1:{port}"),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }
}

pub struct Pair {
    sides: [Side; 2],
    lease: String,
    pub names: [String; 2],
    brokers: [Option<Broker>; 2],
}

impl Pair {
    /// Both on `url`; alpha becomes master, beta is waiting for the lock when this returns.
    pub fn start(url: &str) -> Pair {
        Self::start_on([url.to_string(), url.to_string()])
    }

    /// alpha on `urls[0]`, beta on `urls[1]` (see [`Pair::start`]).
    pub fn start_on(urls: [String; 2]) -> Pair {
        Self::start_leased(urls, PAIR_LEASE)
    }

    /// [`Pair::start_on`] with another lease (seconds).
    pub fn start_leased(urls: [String; 2], lease: &str) -> Pair {
        Self::start_sides(urls.map(|url| Side::local(&url)), lease)
    }

    /// alpha as `sides[0]`, beta as `sides[1]`; alpha becomes master, beta is waiting for the
    /// lock when this returns.
    pub fn start_sides(sides: [Side; 2], lease: &str) -> Pair {
        let mut pair = Self::unstarted(sides, lease);
        pair.spawn(0);
        pair.broker(0).stomp_port();
        pair.spawn(1);
        pair.broker(1)
            .wait_for_log("waiting for the lock (held by alpha", STEP);
        pair
    }

    /// Nothing started yet (see [`Pair::spawn`]).
    pub fn unstarted(sides: [Side; 2], lease: &str) -> Pair {
        Pair {
            sides,
            lease: lease.to_string(),
            names: ["alpha".to_string(), "beta".to_string()],
            brokers: [None, None],
        }
    }

    pub fn spawn(&mut self, i: usize) {
        let side = &self.sides[i];
        let env = [
            ("HAMQ_STOMP_LISTEN", side.listen.as_str()),
            ("HAMQ_LEASE", self.lease.as_str()),
        ];
        let broker = Broker::spawn_wrapped(&side.wrapper, &self.names[i], &side.url, &env);
        self.brokers[i] = Some(broker);
    }

    /// Where the load's clients reach the two brokers.
    pub fn addrs(&self) -> [SocketAddr; 2] {
        [self.sides[0].addr, self.sides[1].addr]
    }

    /// Broker `i`'s STOMP port, as its clients reach it.
    pub fn port(&self, i: usize) -> u16 {
        self.sides[i].addr.port()
    }

    pub fn broker(&mut self, i: usize) -> &mut Broker {
        self.brokers[i].as_mut().expect("broker running")
    }

    /// Wait until broker `i` logs that it listens; returns how long that took.
    pub fn await_master(&mut self, i: usize, bound: Duration) -> Duration {
        let start = Instant::now();
        self.broker(i).wait_for_log("listening for STOMP", bound);
        start.elapsed()
    }

    /// Play the supervisor: wait for broker `i` to exit, check its code, start it again.
    pub fn restart_after_exit(&mut self, i: usize, expect_code: i32) {
        let status = self
            .broker(i)
            .wait_exit(STEP * 3)
            .expect("broker did not exit");
        assert_eq!(
            status.code(),
            Some(expect_code),
            "exit code of {}",
            self.names[i]
        );
        self.spawn(i);
    }
}
