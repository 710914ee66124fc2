//! The idle-connections mode (`--idle-connections N`), run on the main thread: open N
//! connections one after the other (TCP, CONNECT with heart-beat 0,0, CONNECTED), say on
//! stderr when they are all open (a script measures the broker's memory then), hold them for
//! `--duration` without traffic, look which ones the broker closed meanwhile, and DISCONNECT
//! each. Its result is a table and a JSON object of its own; it sends no messages.

use crate::cli::Options;
use crate::conn::{Connection, Target, CONNECT_TIMEOUT};
use crate::report::{secs, to_line};
use serde::Serialize;
use std::fmt::Write;
use std::time::{Duration, Instant};

/// Error messages kept for the report (all are counted).
const KEPT_ERRORS: usize = 20;

#[derive(Default)]
pub struct IdleResult {
    pub connected: u64,
    /// Connections the broker had not closed when the hold time was over.
    pub open_at_end: u64,
    pub errors: u64,
    pub error_messages: Vec<String>,
    /// From the first TCP connect to the last CONNECTED (or failure).
    pub connect_time: Duration,
    pub held: Duration,
}

impl IdleResult {
    fn error(&mut self, what: String) {
        self.errors += 1;
        if self.error_messages.len() < KEPT_ERRORS {
            self.error_messages.push(what);
        }
    }
}

pub fn run(opts: &Options) -> IdleResult {
    let target = Target {
        host: opts.host.clone(),
        port: opts.port,
        login: opts.login.clone(),
        passcode: opts.passcode.clone(),
    };
    let mut result = IdleResult::default();
    let started = Instant::now();
    let mut conns = Vec::new();
    for i in 0..opts.idle_connections {
        match Connection::open(&target) {
            Ok(conn) => conns.push(conn),
            Err(e) => result.error(format!("connection {i}: {e}")),
        }
    }
    result.connected = conns.len() as u64;
    result.connect_time = started.elapsed();
    eprintln!(
        "hamq-bench: {} of {} connections open after {:.2} s; holding them for {} s",
        conns.len(),
        opts.idle_connections,
        result.connect_time.as_secs_f64(),
        opts.duration.as_secs_f64()
    );
    let held_from = Instant::now();
    std::thread::sleep(opts.duration);
    result.held = held_from.elapsed();
    for (i, mut conn) in conns.into_iter().enumerate() {
        match conn.poll() {
            Ok(None) => {
                result.open_at_end += 1;
                if let Err(e) = conn.disconnect(CONNECT_TIMEOUT) {
                    result.error(format!("connection {i}: {e}"));
                }
            }
            Ok(Some(frame)) => result.error(format!(
                "connection {i}: {} while idle: {}",
                frame.command,
                frame.error_text()
            )),
            Err(e) => result.error(format!("connection {i} while idle: {e}")),
        }
    }
    result
}

pub struct IdleReport<'a> {
    pub opts: &'a Options,
    pub result: &'a IdleResult,
}

impl IdleReport<'_> {
    /// Every connection opened, stayed open and closed cleanly.
    pub fn clean(&self) -> bool {
        let r = self.result;
        r.errors == 0
            && r.connected == u64::from(self.opts.idle_connections)
            && r.open_at_end == r.connected
    }

    pub fn table(&self) -> String {
        let (o, r) = (self.opts, self.result);
        let mut s = String::new();
        let _ = writeln!(
            s,
            "hamq-bench   {}:{}  {} idle connections (CONNECT, heart-beat 0,0) held {:.2} s\n",
            o.host,
            o.port,
            o.idle_connections,
            r.held.as_secs_f64()
        );
        let _ = writeln!(
            s,
            "{:<18}{:>11}{:>11}{:>11}{:>11}",
            "connections", "requested", "connected", "open at end", "errors"
        );
        let _ = writeln!(
            s,
            "{:<18}{:>11}{:>11}{:>11}{:>11}\n",
            "", o.idle_connections, r.connected, r.open_at_end, r.errors
        );
        let _ = writeln!(
            s,
            "{:<18}{:.2} s to open them all",
            "time",
            r.connect_time.as_secs_f64()
        );
        if !r.error_messages.is_empty() {
            let _ = writeln!(s, "\nerrors (first {}):", r.error_messages.len());
            for e in &r.error_messages {
                let _ = writeln!(s, "  {e}");
            }
        }
        s
    }

    /// One JSON object on one line.
    pub fn json(&self) -> String {
        let (o, r) = (self.opts, self.result);
        to_line(&IdleDoc {
            tool: "hamq-bench",
            mode: "idle-connections",
            config: IdleConfig {
                host: &o.host,
                port: o.port,
                login: &o.login,
                idle_connections: o.idle_connections,
                duration_s: secs(o.duration),
            },
            requested: o.idle_connections,
            connected: r.connected,
            open_at_end: r.open_at_end,
            errors: r.errors,
            error_messages: &r.error_messages,
            connect_s: secs(r.connect_time),
            held_s: secs(r.held),
        })
    }
}

/// The JSON report of an idle-connections run, its keys in this order.
#[derive(Serialize)]
struct IdleDoc<'a> {
    tool: &'static str,
    mode: &'static str,
    config: IdleConfig<'a>,
    requested: u32,
    connected: u64,
    open_at_end: u64,
    errors: u64,
    error_messages: &'a [String],
    connect_s: f64,
    held_s: f64,
}

#[derive(Serialize)]
struct IdleConfig<'a> {
    host: &'a str,
    port: u16,
    login: &'a str,
    idle_connections: u32,
    duration_s: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_only_when_all_connected_and_stayed_open() {
        let opts = Options {
            idle_connections: 3,
            ..Options::default()
        };
        let mut result = IdleResult {
            connected: 3,
            open_at_end: 3,
            ..IdleResult::default()
        };
        let report = |r: &IdleResult| {
            let rep = IdleReport {
                opts: &opts,
                result: r,
            };
            (rep.clean(), rep.json())
        };
        let (clean, json) = report(&result);
        assert!(clean);
        assert!(json.contains(r#""requested":3,"connected":3,"open_at_end":3,"errors":0,"#));
        result.open_at_end = 2;
        assert!(!report(&result).0);
        result.open_at_end = 3;
        result.error("connection 3: refused".into());
        assert!(!report(&result).0);
    }
}
