//! The result of a run as people read it (a table) and as programs read it (one JSON object
//! on one line), both from the options and the [`Totals`]; and the verdict for the exit code.

use crate::cli::Options;
use crate::histogram::Summary;
use crate::run::Totals;
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
        let (t, r) = (self.totals, self.rates());
        let latency = self.latencies().map(|(_, key, s)| (key, summary_json(&s)));
        let errors = t.error_messages.iter().cloned().map(Json::Str).collect();
        let secs = |d: Duration| Json::Num(d.as_secs_f64());
        Json::Obj(vec![
            ("tool", Json::Str("hamq-bench".into())),
            ("run_id", Json::Str(format!("{:016x}", t.run_id))),
            ("config", config_json(self.opts)),
            ("sent", Json::Int(t.sent)),
            ("receipted", Json::Int(t.receipted)),
            ("received", Json::Int(t.received)),
            ("duplicates", Json::Int(self.duplicates())),
            ("missing", self.missing().map_or(Json::Null, Json::Int)),
            ("expected", t.expected.map_or(Json::Null, Json::Int)),
            ("stale", Json::Int(t.stale)),
            ("unstamped", Json::Int(t.unstamped)),
            ("corrupt", Json::Int(t.corrupt)),
            ("errors", Json::Int(t.errors)),
            ("error_messages", Json::Arr(errors)),
            ("elapsed_s", secs(t.elapsed)),
            ("send_window_s", secs(t.send_window)),
            ("receive_window_s", secs(t.receive_window)),
            ("send_rate", Json::Num(r.send)),
            ("receive_rate", Json::Num(r.receive)),
            ("send_mb_per_s", Json::Num(r.send_mb)),
            ("receive_mb_per_s", Json::Num(r.receive_mb)),
            ("latency_ms", Json::Obj(latency.into())),
        ])
        .to_string()
    }
}

/// Messages and megabytes (10^6 bytes) per second.
struct Rates {
    send: f64,
    receive: f64,
    send_mb: f64,
    receive_mb: f64,
}

fn config_json(o: &Options) -> Json {
    let secs = |d: Duration| Json::Num(d.as_secs_f64());
    Json::Obj(vec![
        ("host", Json::Str(o.host.clone())),
        ("port", Json::Int(o.port.into())),
        ("login", Json::Str(o.login.clone())),
        ("destination", Json::Str(o.destination.clone())),
        ("producers", Json::Int(o.producers.into())),
        ("consumers", Json::Int(o.consumers.into())),
        ("size", Json::Int(o.size as u64)),
        ("count", Json::Int(o.count)),
        ("duration_s", secs(o.duration)),
        ("persistent", Json::Bool(o.persistent)),
        ("receipt", Json::Bool(o.receipt)),
        ("ack", Json::Str(o.ack.as_str().into())),
        (
            "prefetch",
            o.prefetch.map_or(Json::Null, |n| Json::Int(n.into())),
        ),
        ("warmup_s", secs(o.warmup)),
        ("drain_s", secs(o.drain)),
        ("consume_only", Json::Bool(o.consume_only())),
    ])
}

/// Milliseconds; `null` without samples.
fn summary_json(s: &Summary) -> Json {
    let v = |ns| match s.count {
        0 => Json::Null,
        _ => Json::Num(ms(ns)),
    };
    Json::Obj(vec![
        ("count", Json::Int(s.count)),
        ("mean", v(s.mean_ns)),
        ("p50", v(s.p50_ns)),
        ("p90", v(s.p90_ns)),
        ("p99", v(s.p99_ns)),
        ("max", v(s.max_ns)),
    ])
}

/// Just enough JSON to write a report.
pub enum Json {
    Null,
    Bool(bool),
    Int(u64),
    /// Written with three decimals.
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(&'static str, Json)>),
}

impl std::fmt::Display for Json {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Json::Null => f.write_str("null"),
            Json::Bool(b) => write!(f, "{b}"),
            Json::Int(n) => write!(f, "{n}"),
            Json::Num(x) if x.is_finite() => write!(f, "{x:.3}"),
            Json::Num(_) => f.write_str("null"),
            Json::Str(s) => write_str(f, s),
            Json::Arr(items) => {
                f.write_str("[")?;
                for (i, item) in items.iter().enumerate() {
                    write!(f, "{}{item}", if i > 0 { "," } else { "" })?;
                }
                f.write_str("]")
            }
            Json::Obj(fields) => {
                f.write_str("{")?;
                for (i, (k, v)) in fields.iter().enumerate() {
                    f.write_str(if i > 0 { "," } else { "" })?;
                    write_str(f, k)?;
                    write!(f, ":{v}")?;
                }
                f.write_str("}")
            }
        }
    }
}

fn write_str(f: &mut std::fmt::Formatter<'_>, s: &str) -> std::fmt::Result {
    f.write_str("\"")?;
    for c in s.chars() {
        match c {
            '"' => f.write_str("\\\"")?,
            '\\' => f.write_str("\\\\")?,
            '\n' => f.write_str("\\n")?,
            '\r' => f.write_str("\\r")?,
            '\t' => f.write_str("\\t")?,
            c if (c as u32) < 0x20 => write!(f, "\\u{:04x}", c as u32)?,
            c => write!(f, "{c}")?,
        }
    }
    f.write_str("\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_escapes_and_nests() {
        let j = Json::Obj(vec![
            ("s", Json::Str("a\"b\\c\nd\u{1}".into())),
            (
                "a",
                Json::Arr(vec![Json::Int(1), Json::Null, Json::Bool(false)]),
            ),
            ("x", Json::Num(1.23456)),
            ("nan", Json::Num(f64::NAN)),
        ]);
        assert_eq!(
            j.to_string(),
            r#"{"s":"a\"b\\c\nd\u0001","a":[1,null,false],"x":1.235,"nan":null}"#
        );
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
