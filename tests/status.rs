//! The status listener on master and slave: /health (200 vs 503), /status (JSON figures),
//! /metrics (Prometheus text), and each admin command's output (`hamq status|queues|browse|purge`).

mod common;

use common::probe::http;
use common::{free_port, hamq_command, shared_mariadb, Broker, Client, TIMEOUT};

/// Run `hamq COMMAND...` against the status listener on `port`.
fn admin(port: u16, args: &[&str]) -> (bool, String) {
    let config = std::env::temp_dir().join(format!("hamq-admin-{port}.conf"));
    std::fs::write(&config, format!("status_listen = 127.0.0.1:{port}\n")).unwrap();
    let config_arg = config.display().to_string();
    let run = hamq_command(&[&["--config", &config_arg], args].concat(), &[], "");
    (run.status.success(), run.text())
}

/// Every non-comment line of a Prometheus text exposition is `name{labels} value`.
fn check_prometheus(text: &str) -> Vec<(String, f64)> {
    let mut samples = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# ") {
            assert!(
                rest.starts_with("HELP ") || rest.starts_with("TYPE "),
                "{line}"
            );
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("a sample line");
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "metric name {name}"
        );
        if name_end < series.len() {
            assert!(series.ends_with('}'), "labels of {line}");
        }
        samples.push((series.to_string(), value.parse().expect("a number")));
    }
    samples
}

#[test]
fn master_and_slave_report_their_role_and_figures() {
    let url = shared_mariadb().create_database();
    let (port_a, port_b) = (free_port(), free_port());
    let a_status = format!("127.0.0.1:{port_a}");
    let b_status = format!("127.0.0.1:{port_b}");
    let a = Broker::start_with_name("sa", &url, &[("HAMQ_STATUS_LISTEN", &a_status)]);
    let b = Broker::spawn_with_name("sb", &url, &[("HAMQ_STATUS_LISTEN", &b_status)]);
    b.wait_for_log("waiting for the lock (held by sa", TIMEOUT);

    let mut c = Client::connect(a.stomp_port());
    for i in 0..3 {
        c.send_with_receipt("/queue/st", format!("{i}"), &[]);
    }
    c.subscribe(
        "/queue/st",
        "s",
        "client-individual",
        &[("activemq.prefetchSize", "1")],
    );
    let m = c.recv(TIMEOUT);
    c.send_frame_with_receipt("ACK", &[("id", m.header("ack").unwrap())], b"");
    let _second = c.recv(TIMEOUT);

    assert_eq!(
        http(port_a, "GET", "/health"),
        (200, "master\n".to_string())
    );
    assert_eq!(
        http(port_b, "GET", "/health"),
        (503, "slave (master: sa)\n".to_string())
    );

    let (code, json) = http(port_a, "GET", "/status");
    assert_eq!(code, 200);
    for part in [
        "\"name\":\"sa\"",
        "\"role\":\"master\"",
        "\"epoch\":1",
        "\"holder\":\"sa\"",
        "\"connections\":1",
        "{\"name\":\"/queue/st\",\"depth\":1,\"in_flight\":1,\"consumers\":1,\"enqueued\":3,\
         \"dequeued\":1,\"redelivered\":0,\"dead_lettered\":0}",
    ] {
        assert!(json.contains(part), "{part} missing in {json}");
    }
    let (_, json) = http(port_b, "GET", "/status");
    assert!(
        json.contains("\"role\":\"slave\"") && json.contains("\"holder\":\"sa\""),
        "{json}"
    );

    let (code, metrics) = http(port_a, "GET", "/metrics");
    assert_eq!(code, 200);
    let samples = check_prometheus(&metrics);
    let value = |series: &str| samples.iter().find(|(s, _)| s == series).map(|(_, v)| *v);
    assert_eq!(value("hamq_master"), Some(1.0));
    assert_eq!(
        value("hamq_destination_depth{destination=\"/queue/st\"}"),
        Some(1.0)
    );
    assert_eq!(
        value("hamq_destination_dequeued_total{destination=\"/queue/st\"}"),
        Some(1.0)
    );
    let (_, slave_metrics) = http(port_b, "GET", "/metrics");
    let slave = check_prometheus(&slave_metrics);
    assert!(slave.contains(&("hamq_master".to_string(), 0.0)));
    assert_eq!(http(port_a, "GET", "/nope").0, 404);
}

#[test]
fn admin_commands_print_tables() {
    let url = shared_mariadb().create_database();
    let (port_a, port_b) = (free_port(), free_port());
    let a_status = format!("127.0.0.1:{port_a}");
    let b_status = format!("127.0.0.1:{port_b}");
    let mut a = Broker::start_with_name("aa", &url, &[("HAMQ_STATUS_LISTEN", &a_status)]);
    let b = Broker::spawn_with_name("ab", &url, &[("HAMQ_STATUS_LISTEN", &b_status)]);
    b.wait_for_log("waiting for the lock (held by aa", TIMEOUT);
    let mut c = Client::connect(a.stomp_port());
    c.send_with_receipt("/queue/adm", "one", &[("priority", "7")]);
    c.send_with_receipt("/queue/adm", "two", &[]);

    let (ok, out) = admin(port_a, &["status"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("role         master") && out.contains("master       aa"),
        "{out}"
    );
    let (ok, out) = admin(port_a, &["queues"]);
    assert!(ok, "{out}");
    let row: Vec<&str> = out
        .lines()
        .find(|l| l.starts_with("/queue/adm"))
        .expect("a row for /queue/adm")
        .split_whitespace()
        .collect();
    assert_eq!(
        row,
        ["/queue/adm", "2", "0", "0", "2", "0", "0", "0"],
        "{out}"
    );
    let (ok, out) = admin(port_a, &["browse", "/queue/adm"]);
    assert!(ok, "{out}");
    let priorities: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("message "))
        .map(|l| l.split_whitespace().nth(3).unwrap())
        .collect();
    assert_eq!(
        priorities,
        ["7", "4"],
        "priorities in delivery order: {out}"
    );
    // `one` is in flight to a consumer that does not acknowledge it: the purge leaves it.
    let mut holder = Client::connect(a.stomp_port());
    holder.subscribe(
        "/queue/adm",
        "h",
        "client-individual",
        &[("activemq.prefetchSize", "1")],
    );
    assert_eq!(holder.recv(TIMEOUT).text(), "one");
    let (ok, out) = admin(port_a, &["purge", "/queue/adm"]);
    assert!(ok, "{out}");
    assert_eq!(out, "purged 1 messages from /queue/adm\n");
    c.subscribe("/queue/adm", "s", "auto", &[]);
    assert!(
        c.try_recv(std::time::Duration::from_millis(300)).is_none(),
        "purged message delivered"
    );

    let (ok, out) = admin(port_b, &["queues"]);
    assert!(!ok);
    assert!(out.contains("slave; the master is aa"), "{out}");
    let (ok, out) = admin(port_a, &["browse"]);
    assert!(!ok && out.contains("usage"), "{out}");
    let (ok, out) = admin(free_port(), &["status"]);
    assert!(!ok && out.contains("no broker answers"), "{out}");

    // The store agrees: the slave, master once `aa` is gone, has `one` and not `two`.
    a.kill9();
    b.wait_for_log("listening for STOMP", TIMEOUT);
    let mut d = Client::connect(b.stomp_port());
    d.subscribe("/queue/adm", "d", "auto", &[]);
    assert_eq!(d.recv(TIMEOUT).text(), "one");
    assert!(
        d.try_recv(std::time::Duration::from_millis(300)).is_none(),
        "a purged message came back from the store"
    );
    drop((holder, c));
}

#[test]
fn held_bytes_follow_waiting_messages_through_recovery_and_back_to_zero() {
    let url = shared_mariadb().create_database();
    let port = free_port();
    let status = [("HAMQ_STATUS_LISTEN", format!("127.0.0.1:{port}"))];
    let env: Vec<(&str, &str)> = status.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let held = || -> f64 {
        let (code, metrics) = http(port, "GET", "/metrics");
        assert_eq!(code, 200, "{metrics}");
        let samples = check_prometheus(&metrics);
        let held = samples.iter().find(|(s, _)| s == "hamq_held_bytes");
        held.map(|(_, v)| *v).expect("hamq_held_bytes")
    };
    let mut b = Broker::start(&url, &env);
    assert_eq!(held(), 0.0);
    let mut p = Client::connect(b.stomp_port());
    for i in 0..50 {
        p.send_with_receipt("/queue/held", format!("{i:04}{}", "x".repeat(1000)), &[]);
    }
    // Resident: each message's 1 KiB body counts, and its entry.
    let resident = held();
    let least = 50 * (hamq::queue::ENTRY_BYTES + 1024);
    assert!(resident >= least as f64, "{resident} < {least}");
    b.kill9();

    // Recovered: entries only, bodies wait in the store.
    let b = Broker::start(&url, &env);
    b.wait_for_log("recovered 50 messages in 1 destinations", TIMEOUT);
    assert_eq!(held(), (50 * hamq::queue::ENTRY_BYTES) as f64);
    let mut c = Client::connect(b.stomp_port());
    c.subscribe("/queue/held", "s", "client-individual", &[]);
    for i in 0..50 {
        let m = c.recv(TIMEOUT);
        assert_eq!(m.text()[..4], format!("{i:04}"));
        c.ack(m.header("ack").unwrap());
    }
    // Every message left the queue once delivered: nothing is held any more.
    assert_eq!(held(), 0.0);
}
