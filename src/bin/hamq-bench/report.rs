//! The result of a run as people read it (a table) and as programs read it (one JSON object
//! on one line), both from the options and the [`Totals`]; and the verdict for the exit code.

use crate::cli::Options;
use crate::histogram::Summary;
use crate::run::Totals;
use serde::Serialize;
use std::fmt::Write;
use std::time::Duration;

pub struct Report<'a> {
    pub opts: &'a Options,
    pub totals: &'a Totals,
}

fn rate(n: u64, window: Duration) -> f64 {
    let secs = window.as_secs_f64();
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

impl Report<'_> {
    /// Distinct deliveries that did not arrive; `None` without consumers.
    pub fn missing(&self) -> Option<u64> {
        let t = self.totals;
        t.expected.map(|e| e.saturating_sub(t.unique))
    }

    pub fn duplicates(&self) -> u64 {
        self.totals.received - self.totals.unique
    }

    /// True when nothing went wrong: no errors, duplicates, missing or corrupt messages.
    pub fn clean(&self) -> bool {
        let t = self.totals;
        t.errors == 0
            && t.corrupt == 0
            && self.duplicates() == 0
            && self.missing().unwrap_or(0) == 0
    }

    pub fn table(&self) -> String {
        let mut s = String::new();
        self.table_head(&mut s);
        self.table_counts(&mut s);
        self.table_throughput(&mut s);
        self.table_latency(&mut s);
        let errors = &self.totals.error_messages;
        if !errors.is_empty() {
            let _ = writeln!(s, "\nerrors (first {}):", errors.len());
            for e in errors {
                let _ = writeln!(s, "  {e}");
            }
        }
        s
    }

    fn table_head(&self, s: &mut String) {
        let o = self.opts;
        let drain = o.drain.as_secs_f64();
        let length = match (o.consume_only(), o.count) {
            (false, 0) => format!("{} s", o.duration.as_secs_f64()),
            (false, n) => format!("{n} messages per producer"),
            (true, 0) => format!("consume-only until idle for {drain} s"),
            (true, n) => format!("consume-only until {n} messages or idle for {drain} s"),
        };
        let _ = writeln!(
            s,
            "hamq-bench   {}:{} {}  {} producer(s) -> {} consumer(s), {}-byte bodies, {length}",
            o.host, o.port, o.destination, o.producers, o.consumers, o.size
        );
        let prefetch = o
            .prefetch
            .map_or("broker default".into(), |n| n.to_string());
        let _ = writeln!(
            s,
            "{:13}persistent {}, receipt per send {}, ack {}, prefetch {prefetch}, \
             warm-up {} s, run {:016x}\n",
            "",
            o.persistent,
            o.receipt,
            o.ack.as_str(),
            o.warmup.as_secs_f64(),
            self.totals.run_id
        );
    }

    fn table_counts(&self, s: &mut String) {
        let t = self.totals;
        let missing = self.missing().map_or("-".into(), |m| m.to_string());
        let names = [
            "sent",
            "receipted",
            "received",
            "duplicates",
            "missing",
            "stale",
            "unstamped",
            "corrupt",
            "errors",
        ];
        let values = [
            t.sent.to_string(),
            t.receipted.to_string(),
            t.received.to_string(),
            self.duplicates().to_string(),
            missing,
            t.stale.to_string(),
            t.unstamped.to_string(),
            t.corrupt.to_string(),
            t.errors.to_string(),
        ];
        let _ = write!(s, "{:<18}", "messages");
        for name in names {
            let _ = write!(s, "{name:>11}");
        }
        let _ = write!(s, "\n{:<18}", "");
        for value in values {
            let _ = write!(s, "{value:>11}");
        }
        s.push_str("\n\n");
    }

    fn table_throughput(&self, s: &mut String) {
        let (t, r) = (self.totals, self.rates());
        let _ = writeln!(
            s,
            "{:<18}send {:.1} msg/s ({:.2} MB/s) over {:.2} s, receive {:.1} msg/s ({:.2} MB/s) \
             over {:.2} s; whole run {:.2} s\n",
            "throughput",
            r.send,
            r.send_mb,
            t.send_window.as_secs_f64(),
            r.receive,
            r.receive_mb,
            t.receive_window.as_secs_f64(),
            t.elapsed.as_secs_f64(),
        );
    }

    fn table_latency(&self, s: &mut String) {
        let _ = write!(s, "{:<18}", "latency (ms)");
        for name in ["count", "mean", "p50", "p90", "p99", "max"] {
            let _ = write!(s, "{name:>10}");
        }
        s.push('\n');
        for (name, _, sum) in self.latencies() {
            let _ = write!(s, "{name:<18}{:>10}", sum.count);
            for ns in [sum.mean_ns, sum.p50_ns, sum.p90_ns, sum.p99_ns, sum.max_ns] {
                let _ = match sum.count {
                    0 => write!(s, "{:>10}", "-"),
                    _ => write!(s, "{:>10.3}", ms(ns)),
                };
            }
            s.push('\n');
        }
    }

    /// Post-warm-up rates over the send and receive windows.
    fn rates(&self) -> Rates {
        let t = self.totals;
        Rates {
            send: rate(t.sent_measured, t.send_window),
            receive: rate(t.received_measured, t.receive_window),
            send_mb: rate(t.sent_bytes, t.send_window) / 1e6,
            receive_mb: rate(t.received_bytes, t.receive_window) / 1e6,
        }
    }

    /// (table name, JSON key, summary) of each latency.
    fn latencies(&self) -> [(&'static str, &'static str, Summary); 2] {
        let t = self.totals;
        let receipt = t.receipt_latency.summary();
        let delivery = t.delivery_latency.summary();
        [
            ("send-to-receipt", "send_to_receipt", receipt),
            ("send-to-delivery", "send_to_delivery", delivery),
        ]
    }

    /// One JSON object on one line.
    pub fn json(&self) -> String {
        let (t, r, o) = (self.totals, self.rates(), self.opts);
        let [(_, _, receipt), (_, _, delivery)] = self.latencies();
        to_line(&Doc {
            tool: "hamq-bench",
            run_id: format!("{:016x}", t.run_id),
            config: ConfigDoc {
                host: &o.host,
                port: o.port,
                login: &o.login,
                destination: &o.destination,
                producers: o.producers,
                consumers: o.consumers,
                size: o.size,
                count: o.count,
                duration_s: secs(o.duration),
                persistent: o.persistent,
                receipt: o.receipt,
                ack: o.ack.as_str(),
                prefetch: o.prefetch,
                warmup_s: secs(o.warmup),
                drain_s: secs(o.drain),
                consume_only: o.consume_only(),
            },
            sent: t.sent,
            receipted: t.receipted,
            received: t.received,
            duplicates: self.duplicates(),
            missing: self.missing(),
            expected: t.expected,
            stale: t.stale,
            unstamped: t.unstamped,
            corrupt: t.corrupt,
            errors: t.errors,
            error_messages: &t.error_messages,
            elapsed_s: secs(t.elapsed),
            send_window_s: secs(t.send_window),
            receive_window_s: secs(t.receive_window),
            send_rate: three(r.send),
            receive_rate: three(r.receive),
            send_mb_per_s: three(r.send_mb),
            receive_mb_per_s: three(r.receive_mb),
            latency_ms: LatencyDoc {
                send_to_receipt: SummaryDoc::of(&receipt),
                send_to_delivery: SummaryDoc::of(&delivery),
            },
        })
    }
}

/// The JSON report, its keys in this order.
#[derive(Serialize)]
struct Doc<'a> {
    tool: &'static str,
    run_id: String,
    config: ConfigDoc<'a>,
    sent: u64,
    receipted: u64,
    received: u64,
    duplicates: u64,
    missing: Option<u64>,
    expected: Option<u64>,
    stale: u64,
    unstamped: u64,
    corrupt: u64,
    errors: u64,
    error_messages: &'a [String],
    elapsed_s: f64,
    send_window_s: f64,
    receive_window_s: f64,
    send_rate: f64,
    receive_rate: f64,
    send_mb_per_s: f64,
    receive_mb_per_s: f64,
    latency_ms: LatencyDoc,
}

/// The options the run was made with.
#[derive(Serialize)]
struct ConfigDoc<'a> {
    host: &'a str,
    port: u16,
    login: &'a str,
    destination: &'a str,
    producers: u32,
    consumers: u32,
    size: usize,
    count: u64,
    duration_s: f64,
    persistent: bool,
    receipt: bool,
    ack: &'static str,
    prefetch: Option<u32>,
    warmup_s: f64,
    drain_s: f64,
    consume_only: bool,
}

#[derive(Serialize)]
struct LatencyDoc {
    send_to_receipt: SummaryDoc,
    send_to_delivery: SummaryDoc,
}

/// Milliseconds; `null` without samples.
#[derive(Serialize)]
struct SummaryDoc {
    count: u64,
    mean: Option<f64>,
    p50: Option<f64>,
    p90: Option<f64>,
    p99: Option<f64>,
    max: Option<f64>,
}

impl SummaryDoc {
    fn of(s: &Summary) -> SummaryDoc {
        let v = |ns| (s.count > 0).then(|| three(ms(ns)));
        SummaryDoc {
            count: s.count,
            mean: v(s.mean_ns),
            p50: v(s.p50_ns),
            p90: v(s.p90_ns),
            p99: v(s.p99_ns),
            max: v(s.max_ns),
        }
    }
}

/// Rounded to three decimals, as the figures are read (a NaN is written as `null`).
fn three(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Seconds, to the millisecond.
pub fn secs(d: Duration) -> f64 {
    three(d.as_secs_f64())
}

/// One JSON object on one line. Serializing plain fields cannot fail; if it did, the line says
/// so as JSON.
pub fn to_line(doc: &impl Serialize) -> String {
    serde_json::to_string(doc)
        .unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }).to_string())
}

/// Messages and megabytes (10^6 bytes) per second.
struct Rates {
    send: f64,
    receive: f64,
    send_mb: f64,
    receive_mb: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_escapes_rounds_and_writes_no_number_for_nan() {
        let opts = Options {
            destination: "/queue/a\"b\\c\nd\u{1}".to_string(),
            ..Options::default()
        };
        let totals = Totals {
            elapsed: Duration::from_micros(1_234_567),
            error_messages: vec!["ERROR frame: \"no\"".to_string()],
            ..Totals::default()
        };
        let json = Report {
            opts: &opts,
            totals: &totals,
        }
        .json();
        assert!(
            json.contains(r#""destination":"/queue/a\"b\\c\nd\u0001""#),
            "{json}"
        );
        assert!(
            json.contains(r#""error_messages":["ERROR frame: \"no\""]"#),
            "{json}"
        );
        assert!(json.contains(r#""elapsed_s":1.235,"#), "{json}");
        assert!(json.contains(r#""send_rate":0.0,"#), "{json}");
        assert!(json.contains(r#""mean":null"#), "{json}");
        assert!(!json.contains('\n'));
        assert_eq!(to_line(&[f64::NAN]), "[null]");
    }

    #[test]
    fn missing_duplicates_and_verdict() {
        let opts = Options::default();
        let mut totals = Totals {
            sent: 10,
            received: 11,
            unique: 9,
            expected: Some(10),
            ..Totals::default()
        };
        let r = Report {
            opts: &opts,
            totals: &totals,
        };
        assert_eq!(
            (r.missing(), r.duplicates(), r.clean()),
            (Some(1), 2, false)
        );
        assert!(r
            .json()
            .contains(r#""sent":10,"receipted":0,"received":11,"duplicates":2,"missing":1,"#));
        assert!(r.table().contains("duplicates"));
        totals.received = 10;
        totals.unique = 10;
        let r = Report {
            opts: &opts,
            totals: &totals,
        };
        assert!(r.clean());
        totals.expected = None;
        let r = Report {
            opts: &opts,
            totals: &totals,
        };
        assert!(r.json().contains(r#""missing":null"#));
    }
}
