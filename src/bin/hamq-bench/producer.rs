//! A producer thread: one connection that SENDs stamped bodies until its count or the
//! duration is reached, awaiting a RECEIPT per SEND when asked (send-to-receipt latency), and
//! otherwise peeking now and then for an ERROR frame. Ends with DISCONNECT and its receipt.

use crate::conn::Connection;
use crate::frame::Frame;
use crate::histogram::Histogram;
use crate::payload::{self, now_ns, Stamp};
use crate::shared::Shared;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

/// The longest wait for one RECEIPT before the producer gives up with an error.
const RECEIPT_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest wait for the DISCONNECT receipt. Without receipts per SEND, what the socket
/// buffers hold (thousands of messages per connection) is still being stored when the
/// DISCONNECT arrives: at a few thousand msg/s in all, that can take a minute.
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(300);
/// Without receipts, look for an ERROR frame after this many SENDs.
const POLL_EVERY: u64 = 64;

#[derive(Default)]
pub struct ProducerResult {
    pub sent: u64,
    pub receipted: u64,
    /// SENDs stamped at or after the end of the warm-up.
    pub measured: u64,
    pub measured_bytes: u64,
    /// When the last SEND was written (or its receipt came), [`now_ns`].
    pub last_ns: u64,
    pub receipt_latency: Histogram,
}

pub fn run(id: u32, shared: &Shared) -> ProducerResult {
    let mut result = ProducerResult::default();
    let mut conn = match Connection::open(&shared.target()) {
        Ok(conn) => conn,
        Err(e) => {
            shared.error(format!("producer {id}: {e}"));
            return result;
        }
    };
    if let Err(e) = send_all(id, shared, &mut conn, &mut result) {
        shared.error(format!("producer {id}: {e}"));
        return result;
    }
    // hamq answers a DISCONNECT receipt once all earlier SENDs are stored: allow for that.
    if let Err(e) = conn.disconnect(DISCONNECT_TIMEOUT) {
        shared.error(format!("producer {id}: {e}"));
    }
    result
}

fn send_all(
    id: u32,
    shared: &Shared,
    conn: &mut Connection,
    result: &mut ProducerResult,
) -> Result<(), String> {
    let opts = &shared.opts;
    let measure_from = shared.measure_from_ns();
    let end_ns = match opts.count {
        0 => measure_from.saturating_add(opts.duration.as_nanos() as u64),
        _ => u64::MAX,
    };
    let mut seq = 0;
    while !shared.aborted() && (opts.count == 0 || seq < opts.count) && now_ns() < end_ns {
        let stamp = Stamp {
            run: shared.run_id,
            producer: id,
            seq,
            sent_ns: now_ns(),
        };
        let receipt = format!("s{seq}");
        let frame = send_frame(shared, &stamp, opts.receipt.then_some(receipt.as_str()));
        let bytes = frame.body.len() as u64;
        if let Err(e) = conn.send(&frame) {
            return Err(write_failed(conn, seq, e));
        }
        result.sent += 1;
        shared.sent.fetch_add(1, Relaxed);
        if opts.receipt {
            await_receipt(conn, &receipt)?;
            result.receipted += 1;
        } else if seq % POLL_EVERY == POLL_EVERY - 1 {
            check_for_error(conn)?;
        }
        result.last_ns = now_ns();
        if stamp.sent_ns >= measure_from {
            result.measured += 1;
            result.measured_bytes += bytes;
            if opts.receipt {
                result
                    .receipt_latency
                    .record(result.last_ns - stamp.sent_ns);
            }
        }
        seq += 1;
    }
    Ok(())
}

/// The SEND for `stamp`, with a `receipt` header when given one.
fn send_frame(shared: &Shared, stamp: &Stamp, receipt: Option<&str>) -> Frame {
    let opts = &shared.opts;
    let persistent = if opts.persistent { "true" } else { "false" };
    let mut frame = Frame::new("SEND")
        .header("destination", &opts.destination)
        .header("persistent", persistent);
    if let Some(id) = receipt {
        frame = frame.header("receipt", id);
    }
    frame.body(payload::encode(stamp, opts.size))
}

fn await_receipt(conn: &mut Connection, receipt: &str) -> Result<(), String> {
    let deadline = Instant::now() + RECEIPT_TIMEOUT;
    loop {
        let frame = conn
            .recv_until(deadline)
            .map_err(|e| format!("waiting for RECEIPT {receipt}: {e}"))?;
        match frame.command.as_str() {
            "RECEIPT" if frame.get("receipt-id") == Some(receipt) => return Ok(()),
            "ERROR" => return Err(format!("ERROR frame: {}", frame.error_text())),
            _ => {}
        }
    }
}

fn check_for_error(conn: &mut Connection) -> Result<(), String> {
    match conn.poll() {
        Ok(Some(f)) if f.command == "ERROR" => Err(format!("ERROR frame: {}", f.error_text())),
        Ok(_) => Ok(()),
        Err(e) => Err(format!("connection: {e}")),
    }
}

/// A failed write often follows an ERROR frame the broker sent before closing: say so.
fn write_failed(conn: &mut Connection, seq: u64, e: std::io::Error) -> String {
    match conn.recv_until(Instant::now() + Duration::from_secs(1)) {
        Ok(f) if f.command == "ERROR" => format!("ERROR frame: {}", f.error_text()),
        _ => format!("write SEND {seq}: {e}"),
    }
}
