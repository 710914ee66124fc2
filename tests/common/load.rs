//! The load of the failover tests, against two brokers of which at most one may be master: two
//! producers sending persistent messages with a receipt each, one consumer acking each message
//! (client-individual, with receipts), and a probe that CONNECTs to both brokers all the time.
//! [`Load::finish`] asserts zero receipted messages lost, zero acked messages redelivered, every
//! redelivery flagged `redelivered:true`, and never both brokers answering CONNECT at once.
//!
//! Brokers are given by address (index 0 and 1), so one may live in a network namespace.

use super::client::Client;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub const QUEUE: &str = "/queue/ha";
/// How long a client waits for a RECEIPT before it gives the connection up.
const RECEIPT_WAIT: Duration = Duration::from_secs(5);

/// What the clients saw, checked at the end.
#[derive(Default)]
pub struct Ledger {
    pub receipted: Mutex<HashSet<String>>,
    /// Delivered at least once (an ACK whose receipt died with a broker may have committed).
    pub received: Mutex<HashSet<String>>,
    /// Acknowledged with a RECEIPT: must never be delivered again.
    pub acked: Mutex<HashSet<String>>,
    pub violations: Mutex<Vec<String>>,
    pub sent: AtomicUsize,
    /// Per broker (address index): when it last gave a RECEIPT for a SEND.
    pub last_receipt: [Mutex<Option<Instant>>; 2],
    /// Per broker (address index): when it last answered CONNECT with CONNECTED.
    pub last_connected: [Mutex<Option<Instant>>; 2],
}

impl Ledger {
    pub fn violation(&self, what: String) {
        eprintln!("VIOLATION: {what}");
        self.violations.lock().unwrap().push(what);
    }

    fn connected(&self, broker: usize) {
        *self.last_connected[broker].lock().unwrap() = Some(Instant::now());
    }
}

/// The running load; dropping it (a failed test) stops its threads and waits for them.
pub struct Load {
    stop: Arc<AtomicBool>,
    /// Set only by `Drop`: leave at once, without draining.
    abort: Arc<AtomicBool>,
    ledger: Arc<Ledger>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    pub fn start(addrs: [SocketAddr; 2]) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let abort = Arc::new(AtomicBool::new(false));
        let ledger = Arc::new(Ledger::default());
        let mut threads = Vec::new();
        for id in 0..2 {
            let (s, a, l) = (stop.clone(), abort.clone(), ledger.clone());
            threads.push(std::thread::spawn(move || produce(id, addrs, &s, &a, &l)));
        }
        let (s, a, l) = (stop.clone(), abort.clone(), ledger.clone());
        threads.push(std::thread::spawn(move || consume(addrs, &s, &a, &l)));
        let (s, l) = (stop.clone(), ledger.clone());
        threads.push(std::thread::spawn(move || probe(addrs, &s, &l)));
        Load {
            stop,
            abort,
            ledger,
            threads,
        }
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Wait until `n` more messages got their receipt.
    pub fn progress(&self, n: usize) {
        let target = self.ledger.receipted.lock().unwrap().len() + n;
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.ledger.receipted.lock().unwrap().len() < target {
            assert!(Instant::now() < deadline, "load made no progress for 60 s");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stop producing, let the consumer drain everything receipted, then check the ledger:
    /// nothing lost, no violation.
    pub fn finish(self) {
        let outcome = self.stop_and_count();
        assert!(
            outcome.lost.is_empty(),
            "{} receipted messages lost: {:?}",
            outcome.lost.len(),
            outcome.lost
        );
        assert!(
            outcome.violations.is_empty(),
            "violations: {:?}",
            outcome.violations
        );
    }

    /// Stop producing, let the consumer drain, and say what was lost and what went wrong
    /// (for a database that may itself lose committed rows, such as asynchronous replication).
    pub fn stop_and_count(mut self) -> Outcome {
        self.stop.store(true, Ordering::SeqCst);
        for t in std::mem::take(&mut self.threads) {
            t.join().expect("a load thread panicked");
        }
        let ledger = &self.ledger;
        let receipted = ledger.receipted.lock().unwrap();
        let received = ledger.received.lock().unwrap();
        let acked = ledger.acked.lock().unwrap();
        let mut lost: Vec<String> = receipted.difference(&received).cloned().collect();
        lost.sort();
        assert!(
            receipted.len() > 100,
            "too little traffic: {}",
            receipted.len()
        );
        eprintln!(
            "load: {} sent, {} receipted, {} received, {} acked, {} lost",
            ledger.sent.load(Ordering::SeqCst),
            receipted.len(),
            received.len(),
            acked.len(),
            lost.len()
        );
        Outcome {
            receipted: receipted.len(),
            lost,
            violations: ledger.violations.lock().unwrap().clone(),
        }
    }
}

/// What a load saw, from [`Load::stop_and_count`].
pub struct Outcome {
    pub receipted: usize,
    /// Receipted and never delivered.
    pub lost: Vec<String>,
    pub violations: Vec<String>,
}

impl Drop for Load {
    fn drop(&mut self) {
        // Only when `finish` did not run (the test failed): no thread may outlive the test,
        // which would keep talking to brokers and addresses that are being torn down.
        self.stop.store(true, Ordering::SeqCst);
        self.abort.store(true, Ordering::SeqCst);
        for t in std::mem::take(&mut self.threads) {
            let _ = t.join();
        }
    }
}

/// A CONNECTed client to whichever broker answers, and its index; `None` after 30 s without
/// an answer (a violation) or when aborted.
fn connect_any(
    addrs: [SocketAddr; 2],
    abort: &AtomicBool,
    ledger: &Ledger,
) -> Option<(Client, usize)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if abort.load(Ordering::SeqCst) {
            return None;
        }
        for (i, addr) in addrs.into_iter().enumerate() {
            if let Some(c) = Client::try_connect_addr(addr, Duration::from_millis(300)) {
                ledger.connected(i);
                return Some((c, i));
            }
        }
        // Both refused at once (e.g. during a takeover): do not spin.
        std::thread::sleep(Duration::from_millis(5));
    }
    ledger.violation("no broker answered CONNECT for 30 s".to_string());
    None
}

fn produce(
    id: usize,
    addrs: [SocketAddr; 2],
    stop: &AtomicBool,
    abort: &AtomicBool,
    ledger: &Ledger,
) {
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        let Some((mut c, broker)) = connect_any(addrs, abort, ledger) else {
            return;
        };
        while !stop.load(Ordering::SeqCst) {
            let body = format!("p{id}-{n}");
            n += 1;
            ledger.sent.fetch_add(1, Ordering::SeqCst);
            let headers = [("destination", QUEUE), ("persistent", "true")];
            match c.try_with_receipt("SEND", &headers, body.as_bytes(), RECEIPT_WAIT) {
                Ok(_) => {
                    *ledger.last_receipt[broker].lock().unwrap() = Some(Instant::now());
                    ledger.receipted.lock().unwrap().insert(body);
                }
                Err(_) => break,
            }
        }
    }
}

/// Consume and ack each message with a receipt until stopped and every receipted one arrived.
fn consume(addrs: [SocketAddr; 2], stop: &AtomicBool, abort: &AtomicBool, ledger: &Ledger) {
    let drained = || {
        let receipted = ledger.receipted.lock().unwrap();
        let received = ledger.received.lock().unwrap();
        receipted.is_subset(&received)
    };
    let mut done_after: Option<Instant> = None;
    loop {
        let Some((mut c, _)) = connect_any(addrs, abort, ledger) else {
            return;
        };
        let sub = [
            ("destination", QUEUE),
            ("id", "s"),
            ("ack", "client-individual"),
        ];
        if c.try_with_receipt("SUBSCRIBE", &sub, b"", RECEIPT_WAIT)
            .is_err()
        {
            continue;
        }
        loop {
            if abort.load(Ordering::SeqCst) || (stop.load(Ordering::SeqCst) && drained()) {
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
                    let again = ledger.received.lock().unwrap().contains(&body);
                    if again && m.header("redelivered") != Some("true") {
                        ledger
                            .violation(format!("{body} delivered again without redelivered:true"));
                    }
                    ledger.received.lock().unwrap().insert(body.clone());
                    let ack = m.header("ack").unwrap_or_default().to_string();
                    if c.try_with_receipt("ACK", &[("id", &ack)], b"", RECEIPT_WAIT)
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
fn probe(addrs: [SocketAddr; 2], stop: &AtomicBool, ledger: &Ledger) {
    let timeout = Duration::from_millis(300);
    while !stop.load(Ordering::SeqCst) {
        let a = Client::try_connect_addr(addrs[0], timeout).is_some();
        if a {
            ledger.connected(0);
        }
        let b = Client::try_connect_addr(addrs[1], timeout).is_some();
        if b {
            ledger.connected(1);
        }
        if a && b {
            ledger.violation("both brokers answered CONNECT".to_string());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
