//! Master/slave over one database: two real brokers, two producers sending persistent messages
//! with a receipt each, one consumer acking each message (client-individual, with receipts), and
//! a probe that CONNECTs to both brokers all the time. Each test injects a fault and asserts:
//! zero receipted messages lost, zero acked messages redelivered, never two brokers answering
//! CONNECT at once, and a takeover within a (generous) bound. The test plays the supervisor:
//! a broker that exits is started again, as daemontools would.

mod common;

use common::{free_port, shared_mariadb, Broker, Client, MariaDb};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const QUEUE: &str = "/queue/ha";
/// Lease for these tests (seconds): short, so freeze tests stay quick.
const LEASE: &str = "3";
const STEP: Duration = Duration::from_secs(5);

/// Two brokers on one database, each on its own fixed port.
struct Pair {
    url: String,
    names: [String; 2],
    ports: [u16; 2],
    brokers: [Option<Broker>; 2],
}

impl Pair {
    /// Broker 0 becomes master; broker 1 is waiting for the lock when this returns.
    fn start(url: &str) -> Pair {
        let mut pair = Pair {
            url: url.to_string(),
            names: ["alpha".to_string(), "beta".to_string()],
            ports: [free_port(), free_port()],
            brokers: [None, None],
        };
        pair.spawn(0);
        pair.broker(0).stomp_port();
        pair.spawn(1);
        pair.broker(1)
            .wait_for_log("waiting for the lock (held by alpha", STEP);
        pair
    }

    fn spawn(&mut self, i: usize) {
        let listen = format!("127.0.0.1:{}", self.ports[i]);
        let env = [
            ("HAMQ_STOMP_LISTEN", listen.as_str()),
            ("HAMQ_LEASE", LEASE),
        ];
        self.brokers[i] = Some(Broker::spawn_with_name(&self.names[i], &self.url, &env));
    }

    fn broker(&mut self, i: usize) -> &mut Broker {
        self.brokers[i].as_mut().expect("broker running")
    }

    /// Wait until broker `i` logs that it listens; returns how long that took.
    fn await_master(&mut self, i: usize, bound: Duration) -> Duration {
        let start = Instant::now();
        self.broker(i).wait_for_log("listening for STOMP", bound);
        start.elapsed()
    }

    /// Play the supervisor: wait for broker `i` to exit, check its code, start it again.
    fn restart_after_exit(&mut self, i: usize, expect_code: i32) {
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

/// What the clients saw, checked at the end.
#[derive(Default)]
struct Ledger {
    receipted: Mutex<HashSet<String>>,
    /// Delivered at least once (an ACK whose receipt died with a broker may have committed).
    received: Mutex<HashSet<String>>,
    /// Acknowledged with a RECEIPT: must never be delivered again.
    acked: Mutex<HashSet<String>>,
    violations: Mutex<Vec<String>>,
    sent: AtomicUsize,
}

impl Ledger {
    fn violation(&self, what: String) {
        eprintln!("VIOLATION: {what}");
        self.violations.lock().unwrap().push(what);
    }
}

/// A CONNECTed client to whichever broker answers, within 30 s.
fn connect_any(ports: [u16; 2], ledger: &Ledger) -> Option<Client> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        for port in ports {
            if let Some(c) = Client::try_connect(port, Duration::from_millis(300)) {
                return Some(c);
            }
        }
    }
    ledger.violation("no broker answered CONNECT for 30 s".to_string());
    None
}

struct Load {
    stop: Arc<AtomicBool>,
    ledger: Arc<Ledger>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(ports: [u16; 2]) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ledger = Arc::new(Ledger::default());
        let mut threads = Vec::new();
        for id in 0..2 {
            let (stop, ledger) = (stop.clone(), ledger.clone());
            threads.push(std::thread::spawn(move || {
                produce(id, ports, &stop, &ledger)
            }));
        }
        let (s, l) = (stop.clone(), ledger.clone());
        threads.push(std::thread::spawn(move || consume(ports, &s, &l)));
        let (s, l) = (stop.clone(), ledger.clone());
        threads.push(std::thread::spawn(move || probe(ports, &s, &l)));
        Load {
            stop,
            ledger,
            threads,
        }
    }

    /// Wait until `n` more messages got their receipt.
    fn progress(&self, n: usize) {
        let target = self.ledger.receipted.lock().unwrap().len() + n;
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.ledger.receipted.lock().unwrap().len() < target {
            assert!(Instant::now() < deadline, "load made no progress for 60 s");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stop producing, let the consumer drain everything receipted, then check the ledger.
    fn finish(self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            t.join().expect("a load thread panicked");
        }
        let ledger = &self.ledger;
        let receipted = ledger.receipted.lock().unwrap();
        let received = ledger.received.lock().unwrap();
        let acked = ledger.acked.lock().unwrap();
        let lost: Vec<&String> = receipted.difference(&received).collect();
        let violations = ledger.violations.lock().unwrap();
        assert!(
            lost.is_empty(),
            "{} receipted messages lost: {lost:?}",
            lost.len()
        );
        assert!(violations.is_empty(), "violations: {violations:?}");
        assert!(
            receipted.len() > 100,
            "too little traffic: {}",
            receipted.len()
        );
        eprintln!(
            "load: {} sent, {} receipted, {} received, {} acked, 0 lost",
            ledger.sent.load(Ordering::SeqCst),
            receipted.len(),
            received.len(),
            acked.len()
        );
    }
}

fn produce(id: usize, ports: [u16; 2], stop: &AtomicBool, ledger: &Ledger) {
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        let Some(mut c) = connect_any(ports, ledger) else {
            return;
        };
        while !stop.load(Ordering::SeqCst) {
            let body = format!("p{id}-{n}");
            n += 1;
            ledger.sent.fetch_add(1, Ordering::SeqCst);
            let headers = [("destination", QUEUE), ("persistent", "true")];
            match c.try_with_receipt("SEND", &headers, body.as_bytes(), STEP) {
                Ok(_) => {
                    ledger.receipted.lock().unwrap().insert(body);
                }
                Err(_) => break,
            }
        }
    }
}

/// Consume and ack each message with a receipt until stopped and every receipted one arrived.
fn consume(ports: [u16; 2], stop: &AtomicBool, ledger: &Ledger) {
    let drained = || {
        let receipted = ledger.receipted.lock().unwrap();
        let received = ledger.received.lock().unwrap();
        receipted.is_subset(&received)
    };
    let mut done_after: Option<Instant> = None;
    loop {
        let Some(mut c) = connect_any(ports, ledger) else {
            return;
        };
        let sub = [
            ("destination", QUEUE),
            ("id", "s"),
            ("ack", "client-individual"),
        ];
        if c.try_with_receipt("SUBSCRIBE", &sub, b"", STEP).is_err() {
            continue;
        }
        loop {
            if stop.load(Ordering::SeqCst) && drained() {
                return;
            }
            if stop.load(Ordering::SeqCst) {
                let since = *done_after.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_secs(30) {
                    return; // finish() reports what is missing
                }
            }
            match c.try_next(Duration::from_millis(200)) {
                Ok(None) => {}
                Ok(Some(m)) if m.command == "MESSAGE" => {
                    let body = m.text();
                    if ledger.acked.lock().unwrap().contains(&body) {
                        ledger.violation(format!("acked message {body} delivered again"));
                    }
                    ledger.received.lock().unwrap().insert(body.clone());
                    let ack = m.header("ack").unwrap_or_default().to_string();
                    if c.try_with_receipt("ACK", &[("id", &ack)], b"", STEP)
                        .is_err()
                    {
                        break;
                    }
                    ledger.acked.lock().unwrap().insert(body);
                }
                Ok(Some(_)) | Err(_) => break,
            }
        }
    }
}

/// CONNECT to both brokers over and over: never may both answer.
fn probe(ports: [u16; 2], stop: &AtomicBool, ledger: &Ledger) {
    while !stop.load(Ordering::SeqCst) {
        let a = Client::try_connect(ports[0], Duration::from_millis(300)).is_some();
        let b = Client::try_connect(ports[1], Duration::from_millis(300)).is_some();
        if a && b {
            ledger.violation("both brokers answered CONNECT".to_string());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn slave_opens_no_port_and_names_the_holder() {
    let url = shared_mariadb().create_database();
    let mut pair = Pair::start(&url);
    let slave_port = pair.ports[1];
    assert!(Client::try_connect(slave_port, Duration::from_millis(300)).is_none());
    assert!(std::net::TcpStream::connect(("127.0.0.1", slave_port)).is_err());
    let log = pair
        .broker(0)
        .wait_for_log("acquired the lock (epoch 1)", STEP);
    assert!(log.contains("INFO"));
    assert_eq!(pair.broker(1).count_log("CREATE"), 0);
}

#[test]
fn kill_9_of_the_master() {
    let url = shared_mariadb().create_database();
    let mut pair = Pair::start(&url);
    let load = Load::start(pair.ports);
    load.progress(200);
    pair.broker(0).kill9();
    let took = pair.await_master(1, STEP);
    eprintln!("takeover after kill -9: {took:?}");
    pair.broker(1)
        .wait_for_log("acquired the lock (epoch 2)", STEP);
    pair.spawn(0);
    pair.broker(0)
        .wait_for_log("waiting for the lock (held by beta", STEP);
    load.progress(200);
    load.finish();
}

#[test]
fn sigterm_of_the_master_hands_over_at_once() {
    let url = shared_mariadb().create_database();
    let mut pair = Pair::start(&url);
    let load = Load::start(pair.ports);
    load.progress(200);
    pair.broker(0).sigterm();
    let took = pair.await_master(1, STEP);
    eprintln!("takeover after SIGTERM: {took:?}");
    pair.broker(0).wait_for_log("released the lock", STEP);
    pair.restart_after_exit(0, 0);
    load.progress(200);
    load.finish();
}

#[test]
fn frozen_master_loses_the_lock_and_steps_down_when_resumed() {
    let url = shared_mariadb().create_database();
    let mut pair = Pair::start(&url);
    let load = Load::start(pair.ports);
    load.progress(200);
    pair.broker(0).sigstop();
    let took = pair.await_master(1, Duration::from_secs(3 + 5));
    eprintln!("takeover after SIGSTOP (lease {LEASE} s): {took:?}");
    load.progress(200);
    pair.broker(0).sigcont();
    pair.broker(0).wait_for_log("lost the lock", STEP);
    pair.restart_after_exit(0, 1);
    pair.broker(0)
        .wait_for_log("waiting for the lock (held by beta", STEP);
    load.progress(200);
    load.finish();
}

#[test]
fn ping_pong_of_ten_failovers() {
    let url = shared_mariadb().create_database();
    let mut pair = Pair::start(&url);
    let load = Load::start(pair.ports);
    for round in 0..10 {
        let (master, slave) = (round % 2, 1 - round % 2);
        load.progress(50);
        pair.broker(master).kill9();
        let took = pair.await_master(slave, STEP);
        eprintln!("round {round}: takeover {took:?}");
        pair.spawn(master);
        let holder = format!("waiting for the lock (held by {}", pair.names[slave]);
        pair.broker(master).wait_for_log(&holder, STEP);
    }
    load.progress(50);
    load.finish();
}

#[test]
fn database_restart_gives_exactly_one_master() {
    let mut db = MariaDb::start();
    let url = db.create_database();
    let mut pair = Pair::start(&url);
    let load = Load::start(pair.ports);
    load.progress(200);
    db.kill9();
    pair.broker(0).wait_for_log("lost the lock", STEP);
    db.restart();
    pair.restart_after_exit(0, 1);
    // Exactly one of them becomes master; the other waits for it.
    let deadline = Instant::now() + STEP * 3;
    let master = loop {
        let listening: Vec<usize> = (0..2)
            .filter(|&i| pair.broker(i).count_log("listening for STOMP") > 0)
            .collect();
        if let Some(&i) = listening.last() {
            if i == 0 || pair.broker(1).count_log("listening for STOMP") > 0 {
                break i;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no master after the database restart"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let other = 1 - master;
    let holder = format!("waiting for the lock (held by {}", pair.names[master]);
    pair.broker(other).wait_for_log(&holder, STEP * 2);
    load.progress(200);
    load.finish();
}
