//! One benchmark run: start the consumers and wait until each is subscribed, start the
//! producers, print progress, tell the consumers when the producers are done (so they drain
//! what was sent, or give up after the drain time), and gather every thread's result into a
//! [`Totals`] for the report.

use crate::cli::Options;
use crate::conn::CONNECT_TIMEOUT;
use crate::consumer::{self, ConsumerResult};
use crate::histogram::Histogram;
use crate::payload::{new_run_id, now_ns};
use crate::producer::{self, ProducerResult};
use crate::shared::Shared;
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError};
use std::sync::atomic::Ordering::Relaxed;
use std::thread;
use std::time::{Duration, Instant};

const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// Runs longer than this get progress lines.
const LONG_RUN: Duration = Duration::from_secs(10);

/// Everything the threads counted and measured, merged.
#[derive(Default)]
pub struct Totals {
    pub run_id: u64,
    pub sent: u64,
    pub receipted: u64,
    pub received: u64,
    pub unique: u64,
    /// Distinct deliveries the sends imply (sent x consumers for a topic), or `--count` in
    /// consume-only mode; `None` without consumers or without a count to reach.
    pub expected: Option<u64>,
    pub stale: u64,
    pub unstamped: u64,
    pub corrupt: u64,
    pub errors: u64,
    pub error_messages: Vec<String>,
    /// From the start of sending to the end of the run.
    pub elapsed: Duration,
    /// Measured (post-warm-up) sends and deliveries, their bytes and time windows (in
    /// consume-only mode, the receive window is from the first delivery to the last).
    pub sent_measured: u64,
    pub sent_bytes: u64,
    pub send_window: Duration,
    pub received_measured: u64,
    pub received_bytes: u64,
    pub receive_window: Duration,
    pub receipt_latency: Histogram,
    pub delivery_latency: Histogram,
}

pub fn run(opts: Options) -> Totals {
    let shared = Shared::new(opts, new_run_id());
    let shared = &shared;
    thread::scope(|scope| {
        let (ready_tx, ready_rx) = bounded(shared.opts.consumers as usize);
        let consumers: Vec<_> = (0..shared.opts.consumers)
            .map(|i| {
                let ready = ready_tx.clone();
                scope.spawn(move || consumer::run(i, shared, ready))
            })
            .collect();
        let producer_count = if all_subscribed(&ready_rx, shared.opts.consumers) {
            shared.opts.producers
        } else {
            shared.abort();
            0
        };
        let start = shared.start();
        let producers: Vec<_> = (0..producer_count)
            .map(|i| scope.spawn(move || producer::run(i, shared)))
            .collect();
        let (stop_tx, stop_rx) = bounded::<()>(0);
        scope.spawn(move || progress(shared, &stop_rx));
        let producers: Vec<ProducerResult> = producers.into_iter().map(join).collect();
        shared.producers_done(producers.iter().map(|p| p.sent).sum());
        let consumers: Vec<ConsumerResult> = consumers.into_iter().map(join).collect();
        drop(stop_tx);
        totals(shared, start, &producers, &consumers)
    })
}

fn join<T>(handle: thread::ScopedJoinHandle<'_, T>) -> T {
    handle
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// Waits for every consumer's SUBSCRIBE receipt; false if one failed or took too long.
fn all_subscribed(ready: &Receiver<Result<(), String>>, consumers: u32) -> bool {
    let deadline = Instant::now() + 2 * CONNECT_TIMEOUT + Duration::from_secs(1);
    for _ in 0..consumers {
        match ready.recv_deadline(deadline) {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return false,
            Err(_) => {
                eprintln!("hamq-bench: consumers not subscribed in time");
                return false;
            }
        }
    }
    true
}

/// A line on stderr every 5 s while the run lasts, on long runs only.
fn progress(shared: &Shared, stop: &Receiver<()>) {
    let started = Instant::now();
    let (mut sent0, mut received0) = (0, 0);
    while let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(PROGRESS_EVERY) {
        let (sent, received) = (shared.sent.load(Relaxed), shared.received.load(Relaxed));
        let elapsed = started.elapsed();
        if progress_due(&shared.opts, elapsed) {
            let secs = PROGRESS_EVERY.as_secs_f64();
            eprintln!(
                "[{:6.1}s] sent {sent} ({:.0}/s)  received {received} ({:.0}/s)  errors {}",
                elapsed.as_secs_f64(),
                (sent - sent0) as f64 / secs,
                (received - received0) as f64 / secs,
                shared.errors(),
            );
        }
        (sent0, received0) = (sent, received);
    }
}

/// Progress lines are for runs longer than 10 s: a planned duration above that, or a
/// fixed-count run that has lasted that long.
fn progress_due(opts: &Options, elapsed: Duration) -> bool {
    let planned_long = opts.count == 0 && opts.warmup + opts.duration > LONG_RUN;
    planned_long || elapsed > LONG_RUN
}

fn totals(
    shared: &Shared,
    start: u64,
    producers: &[ProducerResult],
    consumers: &[ConsumerResult],
) -> Totals {
    let from = shared.measure_from_ns();
    let window = |last: u64| Duration::from_nanos(last.saturating_sub(from));
    let mut t = Totals {
        run_id: shared.run_id,
        unique: shared.unique(),
        errors: shared.errors(),
        error_messages: shared.error_messages(),
        elapsed: Duration::from_nanos(now_ns() - start),
        send_window: window(producers.iter().map(|p| p.last_ns).max().unwrap_or(0)),
        receive_window: window(consumers.iter().map(|c| c.last_ns).max().unwrap_or(0)),
        ..Totals::default()
    };
    for p in producers {
        t.sent += p.sent;
        t.receipted += p.receipted;
        t.sent_measured += p.measured;
        t.sent_bytes += p.measured_bytes;
        t.receipt_latency.merge(&p.receipt_latency);
    }
    for c in consumers {
        t.received += c.received;
        t.received_measured += c.measured;
        t.received_bytes += c.measured_bytes;
        t.stale += c.stale;
        t.unstamped += c.unstamped;
        t.corrupt += c.corrupt;
        t.delivery_latency.merge(&c.delivery_latency);
    }
    let opts = &shared.opts;
    if opts.consume_only() {
        let first = consumers
            .iter()
            .map(|c| c.first_ns)
            .filter(|&f| f > 0)
            .min();
        let last = consumers.iter().map(|c| c.last_ns).max().unwrap_or(0);
        t.receive_window = Duration::from_nanos(last.saturating_sub(first.unwrap_or(last)));
        t.expected = (opts.count > 0).then_some(opts.count);
    } else {
        t.expected = (opts.consumers > 0).then(|| t.sent * opts.fanout());
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_only_on_runs_longer_than_ten_seconds() {
        let secs = Duration::from_secs;
        let timed = |d| Options {
            duration: secs(d),
            ..Options::default()
        };
        assert!(!progress_due(&timed(10), secs(5)));
        assert!(progress_due(&timed(11), secs(5)));
        let counted = Options {
            count: 1000,
            duration: secs(60),
            ..Options::default()
        };
        assert!(!progress_due(&counted, secs(10)));
        assert!(progress_due(&counted, secs(15)));
    }
}
