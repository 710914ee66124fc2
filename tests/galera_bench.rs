//! A benchmark, not a test (ignored by `cargo test`; `bench/galera` runs it in release mode):
//! hamq on one MariaDB (the row lock) next to hamq on a 3-node Galera cluster (the lease, the
//! broker on node 0), on the same machine in one run. Prints markdown tables: persistent sends
//! with a receipt each (1 and 16 producers, `hamq-bench`), and takeover times after kill -9 and
//! SIGTERM of the master (from the signal until the other broker listens; brokers on nodes 0
//! and 1 on Galera).

mod common;

use common::{Galera, MariaDb, Pair, Side};
use std::process::Command;
use std::time::{Duration, Instant};

const ROUNDS: usize = 5;
const LEASE: &str = "10";

/// Messages per second from `hamq-bench` (send rate, a receipt awaited per SEND).
fn send_rate(port: u16, producers: usize, destination: &str) -> f64 {
    let out = Command::new(env!("CARGO_BIN_EXE_hamq-bench"))
        .args(["--port", &port.to_string(), "--destination", destination])
        .args(["--producers", &producers.to_string(), "--consumers", "1"])
        .args(["--receipt", "true", "--duration", "10", "--warmup", "2"])
        .args(["--json", "-"])
        .output()
        .expect("run hamq-bench");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "hamq-bench failed:\n{text}");
    let json = text.lines().last().unwrap_or_default();
    let at = json.find("\"send_rate\":").expect("a send_rate") + 12;
    json[at..]
        .split([',', '}'])
        .next()
        .and_then(|n| n.trim().parse().ok())
        .expect("a number")
}

/// Median and worst of `rounds` takeovers (kill -9 or SIGTERM of the master, alternating).
fn takeovers(urls: [String; 2], sigterm: bool) -> (Duration, Duration) {
    let mut pair = Pair::start_sides(urls.map(|u| Side::local(&u)), LEASE);
    let mut times = Vec::new();
    let mut master = 0;
    for _ in 0..ROUNDS {
        let slave = 1 - master;
        let at = Instant::now();
        if sigterm {
            pair.broker(master).sigterm();
        } else {
            pair.broker(master).kill9();
        }
        let listened = pair
            .broker(slave)
            .wait_for_log_time("listening for STOMP", Duration::from_secs(30));
        times.push(listened.duration_since(at));
        pair.broker(master).wait_exit(Duration::from_secs(30));
        pair.spawn(master);
        let holder = format!("waiting for the lock (held by {}", pair.names[slave]);
        pair.broker(master)
            .wait_for_log(&holder, Duration::from_secs(30));
        master = slave;
    }
    times.sort();
    (times[times.len() / 2], times[times.len() - 1])
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

#[test]
#[ignore = "a benchmark: bench/galera runs it"]
fn galera_next_to_one_server() {
    let single = MariaDb::start();
    let cluster = Galera::start3();
    let mut throughput = Vec::new();
    let mut failover = Vec::new();
    for setup in ["one MariaDB (lock)", "Galera, 3 nodes (lease)"] {
        let galera = setup.starts_with("Galera");
        let db = if galera {
            cluster.create_database()
        } else {
            single.create_database()
        };
        let url = |node: usize| match galera {
            true => cluster.url(node, &db),
            false => db.clone(),
        };
        let broker = common::Broker::start(&url(0), &[("HAMQ_LEASE", LEASE)]);
        let one = send_rate(broker.stomp_port(), 1, "/queue/bench-1");
        let sixteen = send_rate(broker.stomp_port(), 16, "/queue/bench-16");
        drop(broker);
        throughput.push(format!("| {setup} | {one:.0} msg/s | {sixteen:.0} msg/s |"));
        let (kill_median, kill_worst) = takeovers([url(0), url(1)], false);
        let (term_median, term_worst) = takeovers([url(0), url(1)], true);
        failover.push(format!(
            "| {setup} | {} / {} | {} / {} |",
            ms(kill_median),
            ms(kill_worst),
            ms(term_median),
            ms(term_worst)
        ));
    }
    println!("\n| database | 1 producer | 16 producers |\n|---|---|---|");
    for row in throughput {
        println!("{row}");
    }
    println!(
        "\n| database ({ROUNDS} rounds, lease {LEASE} s) | kill -9: median / worst | \
         SIGTERM: median / worst |\n|---|---|---|"
    );
    for row in failover {
        println!("{row}");
    }
}
