//! What the producer and consumer threads share: the options, the run's clock marks, live
//! counters for the progress line and the consumers' stop rule, the error log, and the
//! [`Ledger`] of which (producer, sequence) pairs each consumer slot has seen (in consume-only
//! mode, the [`Backlog`] of which (run, producer, sequence) triples).

use crate::cli::Options;
use crate::conn::Target;
use crate::payload::{now_ns, Stamp};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard};

/// Error messages kept for the report (all are counted).
const KEPT_ERRORS: usize = 20;

pub struct Shared {
    pub opts: Options,
    pub run_id: u64,
    /// [`now_ns`] when the producers start (`u64::MAX` before).
    start_ns: AtomicU64,
    /// Messages written by producers so far.
    pub sent: AtomicU64,
    /// Deliveries of this run's messages so far, duplicates included.
    pub received: AtomicU64,
    /// Distinct deliveries (per consumer for topics) so far.
    unique: AtomicU64,
    /// Distinct deliveries that end the run (`u64::MAX` until the producers are done).
    expected: AtomicU64,
    /// When consumers give up waiting for the rest (`u64::MAX` until the producers are done).
    drain_deadline_ns: AtomicU64,
    abort: AtomicBool,
    errors: AtomicU64,
    error_log: Mutex<Vec<String>>,
    ledger: Mutex<Ledger>,
    backlog: Mutex<Backlog>,
}

impl Shared {
    pub fn new(opts: Options, run_id: u64) -> Shared {
        let slots = if opts.destination.starts_with("/topic/") {
            opts.consumers
        } else {
            1
        };
        let ledger = Ledger::new(slots as usize, opts.producers as usize);
        Shared {
            opts,
            run_id,
            start_ns: AtomicU64::new(u64::MAX),
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            unique: AtomicU64::new(0),
            expected: AtomicU64::new(u64::MAX),
            drain_deadline_ns: AtomicU64::new(u64::MAX),
            abort: AtomicBool::new(false),
            errors: AtomicU64::new(0),
            error_log: Mutex::new(Vec::new()),
            ledger: Mutex::new(ledger),
            backlog: Mutex::new(Backlog::default()),
        }
    }

    pub fn target(&self) -> Target {
        Target {
            host: self.opts.host.clone(),
            port: self.opts.port,
            login: self.opts.login.clone(),
            passcode: self.opts.passcode.clone(),
        }
    }

    /// Marks the start of sending; returns it.
    pub fn start(&self) -> u64 {
        let now = now_ns();
        self.start_ns.store(now, Relaxed);
        now
    }

    pub fn start_ns(&self) -> u64 {
        self.start_ns.load(Relaxed)
    }

    /// Samples and rates count from here (the start plus the warm-up).
    pub fn measure_from_ns(&self) -> u64 {
        self.start_ns()
            .saturating_add(self.opts.warmup.as_nanos() as u64)
    }

    /// All producers are done and wrote `sent` messages in all: consumers now wait for the
    /// deliveries those imply, for at most the drain time. In consume-only mode (no
    /// producers) they wait for `--count` deliveries, or until none came for the drain time.
    pub fn producers_done(&self, sent: u64) {
        let deadline = now_ns().saturating_add(self.opts.drain.as_nanos() as u64);
        self.drain_deadline_ns.store(deadline, Relaxed);
        let expected = match (self.opts.consume_only(), self.opts.count) {
            (false, _) => sent * self.opts.fanout(),
            (true, 0) => u64::MAX,
            (true, count) => count,
        };
        self.expected.store(expected, Relaxed);
    }

    pub fn abort(&self) {
        self.abort.store(true, Relaxed);
    }

    pub fn aborted(&self) -> bool {
        self.abort.load(Relaxed)
    }

    /// Whether consumers should stop: aborted, everything arrived, or the drain time is over.
    pub fn consumers_done(&self) -> bool {
        self.aborted()
            || self.unique.load(Relaxed) >= self.expected.load(Relaxed)
            || now_ns() >= self.drain_deadline_ns.load(Relaxed)
    }

    /// Counts an error (an ERROR frame, a failed or closed socket, a missing receipt).
    pub fn error(&self, what: String) {
        self.errors.fetch_add(1, Relaxed);
        let mut log = lock(&self.error_log);
        if log.len() < KEPT_ERRORS {
            log.push(what);
        }
    }

    pub fn errors(&self) -> u64 {
        self.errors.load(Relaxed)
    }

    pub fn error_messages(&self) -> Vec<String> {
        lock(&self.error_log).clone()
    }

    /// Records a delivery of (`producer`, `seq`) to ledger slot `slot`: `Some(true)` the first
    /// time, `Some(false)` for a duplicate, `None` for a producer this run does not have.
    pub fn record(&self, slot: usize, producer: u32, seq: u64) -> Option<bool> {
        self.received.fetch_add(1, Relaxed);
        let new = lock(&self.ledger).record(slot, producer as usize, seq)?;
        if new {
            self.unique.fetch_add(1, Relaxed);
        }
        Some(new)
    }

    /// Records a delivery in consume-only mode to ledger slot `slot`: a stamped body
    /// (`Some`) is checked against the earlier ones, true the first time; an unstamped one
    /// counts as new. Every delivery moves the idle deadline to now + the drain time.
    pub fn record_backlog(&self, slot: usize, stamp: Option<&Stamp>) -> bool {
        self.received.fetch_add(1, Relaxed);
        let new = stamp.is_none_or(|s| lock(&self.backlog).record(slot, s));
        if new {
            self.unique.fetch_add(1, Relaxed);
        }
        let deadline = now_ns().saturating_add(self.opts.drain.as_nanos() as u64);
        self.drain_deadline_ns.store(deadline, Relaxed);
        new
    }

    pub fn unique(&self) -> u64 {
        self.unique.load(Relaxed)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One bit per (slot, producer, sequence): slot 0 for a queue, one slot per consumer for a
/// topic (each consumer must see every message once).
pub struct Ledger {
    bits: Vec<Vec<Vec<u64>>>,
}

impl Ledger {
    pub fn new(slots: usize, producers: usize) -> Ledger {
        Ledger {
            bits: vec![vec![Vec::new(); producers]; slots.max(1)],
        }
    }

    pub fn record(&mut self, slot: usize, producer: usize, seq: u64) -> Option<bool> {
        let words = self.bits.get_mut(slot)?.get_mut(producer)?;
        Some(set_bit(words, seq))
    }
}

/// Consume-only mode: which (run, producer, sequence) each consumer slot has seen, for
/// messages stamped by any number of earlier runs.
#[derive(Default)]
pub struct Backlog {
    bits: HashMap<(usize, u64, u32), Vec<u64>>,
}

impl Backlog {
    /// True the first time `stamp` comes to `slot`.
    pub fn record(&mut self, slot: usize, stamp: &Stamp) -> bool {
        let words = self
            .bits
            .entry((slot, stamp.run, stamp.producer))
            .or_default();
        set_bit(words, stamp.seq)
    }
}

/// Sets bit `seq` of a growable bit set; true if it was clear.
fn set_bit(words: &mut Vec<u64>, seq: u64) -> bool {
    let (word, bit) = ((seq / 64) as usize, seq % 64);
    if word >= words.len() {
        words.resize((word + 1).next_power_of_two(), 0);
    }
    let new = words[word] & (1 << bit) == 0;
    words[word] |= 1 << bit;
    new
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ledger_tells_duplicates_per_slot() {
        let mut l = Ledger::new(2, 2);
        assert_eq!(l.record(0, 1, 1000), Some(true));
        assert_eq!(l.record(0, 1, 1000), Some(false));
        assert_eq!(l.record(1, 1, 1000), Some(true));
        assert_eq!(l.record(0, 0, 1000), Some(true));
        assert_eq!(l.record(0, 2, 0), None);
        assert_eq!(l.record(2, 0, 0), None);
    }

    #[test]
    fn backlog_tells_duplicates_per_run_and_producer() {
        let stamp = |run, producer, seq| Stamp {
            run,
            producer,
            seq,
            sent_ns: 0,
        };
        let mut b = Backlog::default();
        assert!(b.record(0, &stamp(1, 0, 7)));
        assert!(!b.record(0, &stamp(1, 0, 7)));
        assert!(b.record(0, &stamp(2, 0, 7)));
        assert!(b.record(0, &stamp(1, 1, 7)));
        assert!(b.record(1, &stamp(1, 0, 7)));
    }

    #[test]
    fn consume_only_stops_at_the_count_or_when_idle() {
        let opts = Options {
            producers: 0,
            count: 2,
            ..Options::default()
        };
        let s = Shared::new(opts, 1);
        let stamp = Stamp {
            run: 9,
            producer: 0,
            seq: 0,
            sent_ns: 0,
        };
        s.producers_done(0);
        assert!(!s.consumers_done());
        assert!(s.record_backlog(0, Some(&stamp)));
        assert!(!s.record_backlog(0, Some(&stamp)), "a duplicate");
        assert!(!s.consumers_done());
        assert!(s.record_backlog(0, None));
        assert!(s.consumers_done());
        assert_eq!((s.unique(), s.received.load(Relaxed)), (2, 3));
        let idle = Shared::new(
            Options {
                producers: 0,
                drain: std::time::Duration::ZERO,
                count: 5,
                ..Options::default()
            },
            1,
        );
        idle.producers_done(0);
        assert!(idle.consumers_done(), "no drain time left: idle at once");
    }

    #[test]
    fn consumers_stop_when_all_expected_arrived() {
        let opts = Options {
            destination: "/topic/t".into(),
            consumers: 2,
            ..Options::default()
        };
        let s = Shared::new(opts, 1);
        assert!(!s.consumers_done());
        assert_eq!(s.record(0, 0, 0), Some(true));
        s.producers_done(1);
        assert!(
            !s.consumers_done(),
            "the second consumer has not had it yet"
        );
        assert_eq!(s.record(1, 0, 0), Some(true));
        assert_eq!(s.record(1, 0, 0), Some(false));
        assert!(s.consumers_done());
        assert_eq!((s.unique(), s.received.load(Relaxed)), (2, 3));
    }
}
