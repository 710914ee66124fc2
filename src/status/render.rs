//! Rendering the status figures: JSON, Prometheus text, and plain-text tables for the admin
//! command. Pure functions of the figures; called on the status thread.

use super::Shared;
use crate::election::RoleInfo;
use crate::router::{Browsed, Stats};
use std::fmt::Write;

fn role_name(role: &RoleInfo) -> &'static str {
    if role.master {
        "master"
    } else {
        "slave"
    }
}

/// A JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

pub fn status_json(shared: &Shared, role: &RoleInfo, stats: &Stats) -> String {
    let destinations: Vec<String> = stats
        .destinations
        .iter()
        .map(|d| {
            format!(
                "{{\"name\":{},\"depth\":{},\"in_flight\":{},\"consumers\":{},\"enqueued\":{},\
                 \"dequeued\":{},\"redelivered\":{},\"dead_lettered\":{}}}",
                json_string(&d.name),
                d.depth,
                d.in_flight,
                d.consumers,
                d.counters.enqueued,
                d.counters.dequeued,
                d.counters.redelivered,
                d.counters.dead_lettered
            )
        })
        .collect();
    format!(
        "{{\"name\":{},\"role\":\"{}\",\"epoch\":{},\"holder\":{},\"database\":{},\
         \"election\":{},\"uptime_seconds\":{},\"connections\":{},\"held_bytes\":{},\
         \"memory_limit\":{},\"destinations\":[{}]}}\n",
        json_string(&shared.name),
        role_name(role),
        role.epoch,
        json_string(&role.holder),
        json_string(&role.database),
        json_string(election_name(role)),
        shared.started.elapsed().as_secs(),
        stats.connections,
        stats.held_bytes,
        stats.memory_limit,
        destinations.join(",")
    )
}

/// A Prometheus label value.
fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

pub fn metrics(shared: &Shared, role: &RoleInfo, stats: &Stats) -> String {
    let mut out = String::new();
    let gauges = [
        (
            "hamq_master",
            "1 when this broker is master",
            u64::from(role.master),
        ),
        (
            "hamq_epoch",
            "fencing epoch of the current master",
            role.epoch,
        ),
        (
            "hamq_uptime_seconds",
            "seconds since start",
            shared.started.elapsed().as_secs(),
        ),
        (
            "hamq_connections",
            "open client connections",
            stats.connections as u64,
        ),
        (
            "hamq_held_bytes",
            "bytes held by waiting messages (entries, and bodies kept in memory)",
            stats.held_bytes as u64,
        ),
        (
            "hamq_memory_limit_bytes",
            "memory_limit: past it, new messages keep only their metadata in memory",
            stats.memory_limit as u64,
        ),
    ];
    for (name, help, value) in gauges {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
        );
    }
    let store = &shared.store;
    let counters = [
        (
            "hamq_store_transactions_total",
            "store transactions committed (batches, keep-alives included)",
            &store.transactions,
        ),
        (
            "hamq_store_operations_total",
            "store operations in those transactions",
            &store.operations,
        ),
        (
            "hamq_store_rows_inserted_total",
            "message rows inserted",
            &store.rows_inserted,
        ),
        (
            "hamq_store_busy_microseconds_total",
            "time spent in store transactions",
            &store.busy_micros,
        ),
    ];
    for (name, help, value) in counters {
        let value = value.load(std::sync::atomic::Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
        );
    }
    let flow = [
        (
            "hamq_flow_control_waits_total",
            "counter",
            "SENDs that waited for the store or a full queue",
            shared.flow.waits(),
        ),
        (
            "hamq_store_backlog_bytes",
            "gauge",
            "weight of SENDs (bodies, headers, overhead) waiting for the store writer",
            shared.flow.pending() as u64,
        ),
    ];
    for (name, kind, help, value) in flow {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    }
    type Figure = fn(&crate::router::DestinationStats) -> u64;
    let series: [(&str, &str, &str, Figure); 7] = [
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
    for (name, kind, help, figure) in series {
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

/// `lock`, `lease`, or empty before the election connection decided.
fn election_name(role: &RoleInfo) -> &'static str {
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

pub fn browse_table(destination: &str, list: &[Browsed]) -> String {
    let mut out = format!(
        "{destination}: first {} waiting messages\n{:>12} {:>8} {:>12} {:>9}\n",
        list.len(),
        "MESSAGE-ID",
        "PRIORITY",
        "REDELIVERED",
        "IN-MEMORY"
    );
    for m in list {
        let resident = if m.resident { "yes" } else { "no" };
        let id = crate::message::format_message_id(m.id);
        let _ = writeln!(
            out,
            "{id:>12} {:>8} {:>12} {resident:>9}",
            m.priority, m.redeliveries
        );
    }
    out
}
