//! A consumer thread: one connection, one SUBSCRIBE with a receipt (reported on the ready
//! channel so producers start only once every consumer listens), then MESSAGE frames until
//! the run's stop rule holds: each is checked against its stamp (run, producer, sequence,
//! body integrity), recorded in the ledger, timed (send-to-delivery) and ACKed unless the
//! ack mode is auto. In consume-only mode every message counts (stamped by any run, or not
//! stamped at all) and is not timed. An ERROR frame or a socket error is counted and ends
//! the consumer.

use crate::cli::AckMode;
use crate::conn::{Connection, Recv, CONNECT_TIMEOUT};
use crate::frame::Frame;
use crate::histogram::Histogram;
use crate::payload::{self, now_ns, Bad};
use crate::shared::Shared;
use crossbeam_channel::Sender;
use std::time::{Duration, Instant};

/// How often a waiting consumer looks at the stop rule.
const TICK: Duration = Duration::from_millis(100);
const SUBSCRIPTION: &str = "bench";

#[derive(Default)]
pub struct ConsumerResult {
    /// Deliveries of this run's messages (duplicates included).
    pub received: u64,
    /// Deliveries received at or after the end of the warm-up, and their body bytes.
    pub measured: u64,
    pub measured_bytes: u64,
    /// Messages from another run (or another program) on the destination.
    pub stale: u64,
    /// Consume-only mode: messages without a hamq-bench stamp line (counted as received).
    pub unstamped: u64,
    /// This run's messages with a damaged body or an unknown producer.
    pub corrupt: u64,
    /// When the first and the last delivery arrived, [`now_ns`] (0 before any).
    pub first_ns: u64,
    pub last_ns: u64,
    pub delivery_latency: Histogram,
}

struct Consumer<'a> {
    index: u32,
    shared: &'a Shared,
    /// The ledger slot: the consumer's own for a topic, 0 (shared) for a queue.
    slot: usize,
    result: ConsumerResult,
}

/// Runs consumer `index`; sends `Ok` on `ready` once subscribed, or `Err` if it cannot be.
pub fn run(index: u32, shared: &Shared, ready: Sender<Result<(), String>>) -> ConsumerResult {
    let topic = shared.opts.destination.starts_with("/topic/");
    let mut c = Consumer {
        index,
        shared,
        slot: if topic { index as usize } else { 0 },
        result: ConsumerResult::default(),
    };
    let mut conn = match Connection::open(&shared.target()).and_then(|mut conn| {
        c.subscribe(&mut conn)?;
        Ok(conn)
    }) {
        Ok(conn) => conn,
        Err(e) => {
            let e = format!("consumer {index}: {e}");
            shared.error(e.clone());
            let _ = ready.send(Err(e));
            return c.result;
        }
    };
    let _ = ready.send(Ok(()));
    match c.receive(&mut conn) {
        Ok(()) => {
            if let Err(e) = conn.disconnect(CONNECT_TIMEOUT) {
                shared.error(format!("consumer {index}: {e}"));
            }
        }
        Err(e) => shared.error(format!("consumer {index}: {e}")),
    }
    c.result
}

impl Consumer<'_> {
    /// SUBSCRIBE and wait for its receipt (messages arriving meanwhile are handled).
    fn subscribe(&mut self, conn: &mut Connection) -> Result<(), String> {
        let opts = &self.shared.opts;
        let mut frame = Frame::new("SUBSCRIBE")
            .header("id", SUBSCRIPTION)
            .header("destination", &opts.destination)
            .header("ack", opts.ack.as_str())
            .header("receipt", "subscribed");
        if let Some(n) = opts.prefetch {
            frame = frame.header("activemq.prefetchSize", &n.to_string());
        }
        conn.send(&frame)
            .map_err(|e| format!("write SUBSCRIBE: {e}"))?;
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        loop {
            let frame = conn
                .recv_until(deadline)
                .map_err(|e| format!("waiting for the SUBSCRIBE receipt: {e}"))?;
            if frame.command == "RECEIPT" && frame.get("receipt-id") == Some("subscribed") {
                return Ok(());
            }
            self.handle(conn, frame)?;
        }
    }

    /// Frames until the stop rule holds (`Ok`) or the connection fails (`Err`).
    fn receive(&mut self, conn: &mut Connection) -> Result<(), String> {
        conn.set_read_timeout(TICK).map_err(|e| e.to_string())?;
        while !self.shared.consumers_done() {
            match conn.recv() {
                Ok(Recv::Frame(frame)) => self.handle(conn, frame)?,
                Ok(Recv::Idle) => {}
                Err(e) => return Err(format!("connection: {e}")),
            }
        }
        Ok(())
    }

    fn handle(&mut self, conn: &mut Connection, frame: Frame) -> Result<(), String> {
        match frame.command.as_str() {
            "MESSAGE" => {
                self.on_message(&frame);
                self.ack(conn, &frame)
            }
            "ERROR" => Err(format!("ERROR frame: {}", frame.error_text())),
            _ => Ok(()),
        }
    }

    fn on_message(&mut self, frame: &Frame) {
        let now = now_ns();
        let shared = self.shared;
        if shared.opts.consume_only() {
            self.on_backlog_message(frame, now);
            return;
        }
        let stamp = match payload::decode(&frame.body, shared.opts.size) {
            Ok(stamp) if stamp.run == shared.run_id => stamp,
            Ok(_) | Err(Bad::Foreign) => {
                self.result.stale += 1;
                return;
            }
            Err(Bad::Corrupt(why)) => {
                self.corrupt(frame, &why);
                return;
            }
        };
        if shared
            .record(self.slot, stamp.producer, stamp.seq)
            .is_none()
        {
            self.corrupt(frame, &format!("unknown producer {}", stamp.producer));
            return;
        }
        let r = &mut self.result;
        r.received += 1;
        r.first_ns = if r.first_ns == 0 { now } else { r.first_ns };
        r.last_ns = now;
        if now >= shared.measure_from_ns() {
            r.measured += 1;
            r.measured_bytes += frame.body.len() as u64;
        }
        if stamp.sent_ns >= shared.measure_from_ns() {
            r.delivery_latency.record(now.saturating_sub(stamp.sent_ns));
        }
    }

    /// Consume-only mode: any message counts and is measured; a stamped one is checked for
    /// damage and duplicates. Its send time is on another process's clock: not timed.
    fn on_backlog_message(&mut self, frame: &Frame, now: u64) {
        let stamp = match payload::decode(&frame.body, self.shared.opts.size) {
            Ok(stamp) => Some(stamp),
            Err(Bad::Foreign) => None,
            Err(Bad::Corrupt(why)) => {
                self.corrupt(frame, &why);
                return;
            }
        };
        self.shared.record_backlog(self.slot, stamp.as_ref());
        let r = &mut self.result;
        r.received += 1;
        r.unstamped += u64::from(stamp.is_none());
        r.measured += 1;
        r.measured_bytes += frame.body.len() as u64;
        r.first_ns = if r.first_ns == 0 { now } else { r.first_ns };
        r.last_ns = now;
    }

    fn corrupt(&mut self, frame: &Frame, why: &str) {
        self.result.corrupt += 1;
        if self.result.corrupt == 1 {
            let id = frame.get("message-id").unwrap_or("?");
            eprintln!("consumer {}: corrupt message {id}: {why}", self.index);
        }
    }

    /// ACK with the 1.2 `id` (the MESSAGE's `ack` header), or 1.0/1.1 style without one.
    fn ack(&self, conn: &mut Connection, message: &Frame) -> Result<(), String> {
        if self.shared.opts.ack == AckMode::Auto {
            return Ok(());
        }
        let ack = match message.get("ack") {
            Some(id) => Frame::new("ACK").header("id", id),
            None => Frame::new("ACK")
                .header("message-id", message.get("message-id").unwrap_or(""))
                .header("subscription", SUBSCRIPTION),
        };
        conn.send(&ack).map_err(|e| format!("write ACK: {e}"))
    }
}
