//! Rendering the status figures: JSON, Prometheus text, and plain-text tables for the admin
//! command. Pure functions of the figures; called on the status thread.

use super::Shared;
use crate::election::RoleInfo;
use crate::router::Stats;
use serde::Serialize;
use std::fmt::Write;

pub(super) fn role_name(role: &RoleInfo) -> &'static str {
    if role.master {
        "master"
    } else {
        "slave"
    }
}

/// The `/status` document, its keys in this order (serde keeps a struct's field order).
#[derive(Serialize)]
struct StatusDoc<'a> {
    name: &'a str,
    role: &'static str,
    epoch: u64,
    holder: &'a str,
    database: &'a str,
    election: &'static str,
    uptime_seconds: u64,
    connections: usize,
    held_bytes: usize,
    memory_limit: usize,
    destinations: Vec<DestinationDoc<'a>>,
}

#[derive(Serialize)]
struct DestinationDoc<'a> {
    name: &'a str,
    depth: usize,
    in_flight: usize,
    consumers: usize,
    enqueued: u64,
    dequeued: u64,
    redelivered: u64,
    dead_lettered: u64,
}

pub fn status_json(shared: &Shared, role: &RoleInfo, stats: &Stats) -> String {
    let destinations = stats
        .destinations
        .iter()
        .map(|d| DestinationDoc {
            name: &d.name,
            depth: d.depth,
            in_flight: d.in_flight,
            consumers: d.consumers,
            enqueued: d.counters.enqueued,
            dequeued: d.counters.dequeued,
            redelivered: d.counters.redelivered,
            dead_lettered: d.counters.dead_lettered,
        })
        .collect();
    let doc = StatusDoc {
        name: &shared.name,
        role: role_name(role),
        epoch: role.epoch,
        holder: &role.holder,
        database: &role.database,
        election: election_name(role),
        uptime_seconds: shared.started.elapsed().as_secs(),
        connections: stats.connections,
        held_bytes: stats.held_bytes,
        memory_limit: shared.memory_limit,
        destinations,
    };
    // Serializing plain strings and numbers cannot fail; an empty object would say so.
    let mut text = serde_json::to_string(&doc).unwrap_or_else(|_| "{}".to_string());
    text.push('\n');
    text
}

/// A Prometheus label value.
fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// One unlabelled series of /metrics.
struct Series {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    value: f64,
}

fn gauge(name: &'static str, help: &'static str, value: f64) -> Series {
    Series {
        name,
        kind: "gauge",
        help,
        value,
    }
}

fn counter(name: &'static str, help: &'static str, value: f64) -> Series {
    Series {
        name,
        kind: "counter",
        help,
        value,
    }
}

/// The Prometheus text: every figure in base units (seconds, bytes).
pub fn metrics(shared: &Shared, role: &RoleInfo, stats: &Stats) -> String {
    use std::sync::atomic::Ordering::Relaxed;
    let store = &shared.store;
    let process = process_figures();
    let series = [
        gauge(
            "hamq_master",
            "1 when this broker is master",
            f64::from(u8::from(role.master)),
        ),
        gauge(
            "hamq_epoch",
            "fencing epoch of the current master",
            role.epoch as f64,
        ),
        gauge(
            "hamq_uptime_seconds",
            "seconds since start",
            shared.started.elapsed().as_secs_f64(),
        ),
        gauge(
            "hamq_connections",
            "open client connections",
            stats.connections as f64,
        ),
        gauge(
            "hamq_held_bytes",
            "bytes held by waiting messages (entries, and bodies kept in memory)",
            stats.held_bytes as f64,
        ),
        gauge(
            "hamq_memory_limit_bytes",
            "memory_limit: past it, new messages keep only their metadata in memory",
            shared.memory_limit as f64,
        ),
        counter(
            "hamq_store_transactions_total",
            "store transactions committed (batches, keep-alives included)",
            store.transactions.load(Relaxed) as f64,
        ),
        counter(
            "hamq_store_operations_total",
            "store operations in those transactions",
            store.operations.load(Relaxed) as f64,
        ),
        counter(
            "hamq_store_rows_inserted_total",
            "message rows inserted",
            store.rows_inserted.load(Relaxed) as f64,
        ),
        counter(
            "hamq_store_busy_seconds_total",
            "time spent in store transactions",
            store.busy_micros.load(Relaxed) as f64 / 1e6,
        ),
        counter(
            "hamq_flow_control_waits_total",
            "SENDs that waited for the store or a full queue",
            shared.flow.waits() as f64,
        ),
        gauge(
            "hamq_store_backlog_bytes",
            "weight of SENDs (bodies, headers, overhead) waiting for the store writer",
            shared.flow.pending() as f64,
        ),
        gauge(
            "process_resident_memory_bytes",
            "resident memory",
            process.resident_bytes,
        ),
        gauge(
            "process_threads",
            "threads of the broker process",
            process.threads,
        ),
        gauge(
            "process_open_fds",
            "open file descriptors",
            process.open_fds,
        ),
    ];
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP hamq_build_info the running build\n# TYPE hamq_build_info gauge\n\
         hamq_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    for s in series {
        let _ = writeln!(
            out,
            "# HELP {} {}\n# TYPE {} {}\n{} {}",
            s.name, s.help, s.name, s.kind, s.name, s.value
        );
    }
    type Figure = fn(&crate::router::DestinationStats) -> u64;
    let per_destination: [(&str, &str, &str, Figure); 7] = [
        ("hamq_destination_depth", "gauge", "messages waiting", |d| {
            d.depth as u64
        }),
        (
            "hamq_destination_in_flight",
            "gauge",
            "delivered, not acknowledged",
            |d| d.in_flight as u64,
        ),
        (
            "hamq_destination_consumers",
            "gauge",
            "subscriptions",
            |d| d.consumers as u64,
        ),
        (
            "hamq_destination_enqueued_total",
            "counter",
            "messages routed",
            |d| d.counters.enqueued,
        ),
        (
            "hamq_destination_dequeued_total",
            "counter",
            "messages acknowledged",
            |d| d.counters.dequeued,
        ),
        (
            "hamq_destination_redelivered_total",
            "counter",
            "redeliveries",
            |d| d.counters.redelivered,
        ),
        (
            "hamq_destination_dead_lettered_total",
            "counter",
            "moved to the DLQ",
            |d| d.counters.dead_lettered,
        ),
    ];
    for (name, kind, help, figure) in per_destination {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for d in &stats.destinations {
            let _ = writeln!(
                out,
                "{name}{{destination=\"{}\"}} {}",
                label(&d.name),
                figure(d)
            );
        }
    }
    out
}

/// This process as /proc tells it (zeros where it cannot be read).
struct Process {
    resident_bytes: f64,
    threads: f64,
    open_fds: f64,
}

fn process_figures() -> Process {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| -> f64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|n| n.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count());
    Process {
        resident_bytes: field("VmRSS:") * 1024.0,
        threads: field("Threads:"),
        open_fds: open_fds as f64,
    }
}

/// `lock`, `lease`, or empty before the election connection decided.
pub(super) fn election_name(role: &RoleInfo) -> &'static str {
    role.election.map_or("", |e| e.as_str())
}

pub fn status_table(shared: &Shared, role: &RoleInfo, stats: &Stats) -> String {
    format!(
        "name         {}\nrole         {}\nmaster       {}\nepoch        {}\ndatabase     {}\n\
         election     {}\nuptime       {} s\nconnections  {}\ndestinations {}\n",
        shared.name,
        role_name(role),
        role.holder,
        role.epoch,
        role.database,
        election_name(role),
        shared.started.elapsed().as_secs(),
        stats.connections,
        stats.destinations.len()
    )
}

pub fn queues_table(stats: &Stats) -> String {
    let width = stats
        .destinations
        .iter()
        .map(|d| d.name.len())
        .max()
        .unwrap_or(0)
        .max("DESTINATION".len());
    let mut out = format!(
        "{:width$}  {:>8} {:>9} {:>9} {:>10} {:>10} {:>11} {:>13}\n",
        "DESTINATION",
        "DEPTH",
        "IN-FLIGHT",
        "CONSUMERS",
        "ENQUEUED",
        "DEQUEUED",
        "REDELIVERED",
        "DEAD-LETTERED"
    );
    for d in &stats.destinations {
        let c = &d.counters;
        let _ = writeln!(
            out,
            "{:width$}  {:>8} {:>9} {:>9} {:>10} {:>10} {:>11} {:>13}",
            d.name,
            d.depth,
            d.in_flight,
            d.consumers,
            c.enqueued,
            c.dequeued,
            c.redelivered,
            c.dead_lettered
        );
    }
    out
}
