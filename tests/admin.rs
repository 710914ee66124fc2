//! The admin command beyond the figures, run as a process against a real broker and MariaDB:
//! browse with headers, size, age and body; the connection list; durable subscriptions listed
//! and removed; dead letters retried; a queue moved and deleted; each refused when the state or
//! the user's permissions forbid it, and what changed found again in the store after a takeover.

mod common;

use common::{free_port, hamq_command, hash_password, shared_mariadb, Broker, Client, TIMEOUT};
use std::time::Duration;

/// `hamq --url ... ARGS` as `user` (password `<user>-pw`): (exit code, stdout + stderr).
fn hamq(port: u16, user: &str, args: &[&str]) -> (Option<i32>, String) {
    let url = format!("http://127.0.0.1:{port}");
    let password = format!("{user}-pw");
    let env = [
        ("HAMQ_ADMIN_USER", user),
        ("HAMQ_ADMIN_PASSWORD", password.as_str()),
    ];
    let run = hamq_command(&[&["--url", url.as_str()], args].concat(), &env, "");
    (run.code(), run.text())
}

fn ok(port: u16, args: &[&str]) -> String {
    let (code, text) = hamq(port, "ops", args);
    assert_eq!(code, Some(0), "hamq {args:?}: {text}");
    text
}

/// A broker with users ops (may do anything) and app (reads and writes `/queue/app.>` only),
/// started and listening.
fn broker(url: &str, status_port: u16, name: &str) -> Broker {
    let broker = spawn(url, status_port, name);
    broker.stomp_port();
    broker
}

/// The same, spawned: it may wait as a slave.
fn spawn(url: &str, status_port: u16, name: &str) -> Broker {
    let users = format!(
        "ops:{} app:{}",
        hash_password("ops-pw"),
        hash_password("app-pw")
    );
    let status = format!("127.0.0.1:{status_port}");
    Broker::spawn_with_name(
        name,
        url,
        &[
            ("HAMQ_USERS", &users),
            ("HAMQ_PERMIT", "ops read,write,admin /queue/>; ops read,write,admin /topic/>; app read,write /queue/app.>"),
            ("HAMQ_STATUS_LISTEN", &status),
            ("HAMQ_MAX_REDELIVERIES", "0"),
        ],
    )
}

fn login(port: u16, extra: &[(&str, &str)]) -> Client {
    let mut headers = vec![
        ("accept-version", "1.2"),
        ("login", "ops"),
        ("passcode", "ops-pw"),
    ];
    headers.extend_from_slice(extra);
    let (client, reply) = Client::connect_with(port, &headers);
    assert_eq!(reply.command, "CONNECTED", "{reply:?}");
    client
}

#[test]
fn browse_shows_headers_size_age_and_body() {
    let url = shared_mariadb().create_database();
    let status = free_port();
    let b = broker(&url, status, "adm-browse");
    let mut p = login(b.stomp_port(), &[]);
    p.send_with_receipt(
        "/queue/br",
        "hello",
        &[("color", "red"), ("content-type", "text/plain")],
    );
    p.send_with_receipt("/queue/br", "x".repeat(300), &[("priority", "2")]);
    let out = ok(status, &["browse", "/queue/br"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0], "/queue/br: first 2 waiting messages of 2",
        "{out}"
    );
    assert!(
        lines[1].starts_with("message 1  priority 4  redelivered 0  5 bytes  age "),
        "{out}"
    );
    assert_eq!(
        lines[2..5],
        [
            "  color: red",
            "  content-type: text/plain",
            "  body: \"hello\""
        ],
        "{out}"
    );
    assert!(
        lines[5].starts_with("message 2  priority 2  redelivered 0  300 bytes  age "),
        "{out}"
    );
    assert_eq!(
        lines[6],
        format!("  body: \"{}\" ... (100 more bytes)", "x".repeat(200)),
        "{out}"
    );
    assert_eq!(lines.len(), 7, "{out}");

    let json: serde_json::Value =
        serde_json::from_str(&ok(status, &["--json", "browse", "/queue/br"])).expect("JSON");
    assert_eq!(json["total"], 2);
    let first = &json["messages"][0];
    assert_eq!(first["message_id"], "1");
    assert_eq!(first["headers"]["color"], "red");
    assert_eq!(first["size"], 5);
    assert_eq!(first["body_preview"], "hello");
    assert_eq!(first["persistent"], true);
    assert_eq!(json["messages"][1]["size"], 300);

    // app may read its own queues only.
    let (code, text) = hamq(status, "app", &["browse", "/queue/br"]);
    assert_eq!(
        (code, text.as_str()),
        (Some(1), "hamq: permission denied: read on /queue/br\n")
    );
    let (code, text) = hamq(status, "ops", &["browse", "/topic/t"]);
    assert_eq!(code, Some(1));
    assert_eq!(
        text,
        "hamq: destination: /topic/t is a topic, not a queue\n"
    );
}

#[test]
fn connections_list_address_login_subscriptions_and_in_flight() {
    let url = shared_mariadb().create_database();
    let status = free_port();
    let b = broker(&url, status, "adm-conns");
    let mut p = login(b.stomp_port(), &[]);
    p.send_with_receipt("/queue/cx", "one", &[]);
    let mut c = login(b.stomp_port(), &[("client-id", "worker-7")]);
    c.subscribe_with_receipt("/queue/cx", "s1", "client-individual", &[]);
    assert_eq!(c.recv(TIMEOUT).text(), "one");
    let mine = c.stream().local_addr().expect("local address").to_string();

    let out = ok(status, &["connections"]);
    let row: Vec<&str> = out
        .lines()
        .find(|l| l.contains(&mine))
        .unwrap_or_else(|| panic!("no row for {mine}: {out}"))
        .split_whitespace()
        .collect();
    // CONN ADDRESS LOGIN CLIENT-ID VERSION CONNECTED(2) IDLE(2) IN-FLIGHT SUBSCRIPTIONS
    assert_eq!(
        row[1..5],
        [mine.as_str(), "ops", "worker-7", "1.2"],
        "{out}"
    );
    assert_eq!(row[9..], ["1", "s1=/queue/cx"], "{out}");
    assert_eq!(
        out.lines().count(),
        3,
        "a header and two connections: {out}"
    );

    let json: serde_json::Value =
        serde_json::from_str(&ok(status, &["--json", "connections"])).expect("JSON");
    let list = json["connections"].as_array().expect("a list");
    let worker = list
        .iter()
        .find(|c| c["address"] == mine.as_str())
        .expect("the worker");
    assert_eq!(worker["client_id"], "worker-7");
    assert_eq!(worker["in_flight"], 1);
    assert_eq!(worker["subscriptions"][0]["destination"], "/queue/cx");
    assert!(
        worker["idle_seconds"].as_f64().is_some_and(|s| s >= 0.0),
        "{worker}"
    );

    // Everyone's subscriptions: only for a user who may administer every destination.
    let (code, text) = hamq(status, "app", &["connections"]);
    assert_eq!(
        (code, text.as_str()),
        (Some(1), "hamq: permission denied: admin on /queue/>\n")
    );
}

#[test]
fn durable_subscriptions_listed_and_removed_only_when_inactive() {
    let url = shared_mariadb().create_database();
    let status = free_port();
    let b = broker(&url, status, "adm-durable");
    let durable = [("activemq.subscriptionName", "prices-eu")];
    let mut sub = login(b.stomp_port(), &[("client-id", "shop")]);
    sub.subscribe_with_receipt("/topic/prices", "d", "auto", &durable);
    let out = ok(status, &["durables"]);
    let row: Vec<&str> = out
        .lines()
        .nth(1)
        .expect("a row")
        .split_whitespace()
        .collect();
    assert_eq!(
        row,
        ["shop", "prices-eu", "/topic/prices", "0", "yes"],
        "{out}"
    );
    let (code, text) = hamq(status, "ops", &["remove-durable", "shop", "prices-eu"]);
    assert_eq!(code, Some(1));
    assert_eq!(
        text,
        "hamq: durable subscription `prices-eu` of client `shop` is active: its subscriber \
         must disconnect first\n"
    );
    sub.disconnect();
    let mut p = login(b.stomp_port(), &[]);
    p.send_with_receipt("/topic/prices", "1.10", &[]);
    p.send_with_receipt("/topic/prices", "1.20", &[]);
    let json: serde_json::Value =
        serde_json::from_str(&ok(status, &["--json", "durables"])).expect("JSON");
    assert_eq!(
        json["durables"],
        serde_json::json!([{"client_id": "shop", "name": "prices-eu", "topic": "/topic/prices",
                            "pending": 2, "active": false}])
    );
    assert_eq!(
        ok(status, &["remove-durable", "shop", "prices-eu"]),
        "removed durable subscription `prices-eu` of client `shop` and its 2 pending messages\n"
    );
    assert_eq!(ok(status, &["durables"]).lines().count(), 1);
    let (code, text) = hamq(status, "ops", &["remove-durable", "shop", "prices-eu"]);
    assert_eq!(code, Some(1));
    assert_eq!(
        text,
        "hamq: no durable subscription `prices-eu` of client `shop`\n"
    );
    // Subscribing again makes a new, empty subscription: the removed one's messages are gone.
    let mut again = login(b.stomp_port(), &[("client-id", "shop")]);
    again.subscribe_with_receipt("/topic/prices", "d", "auto", &durable);
    assert!(again.try_recv(Duration::from_millis(300)).is_none());
}

#[test]
fn retry_move_and_delete_change_the_store_too() {
    let url = shared_mariadb().create_database();
    let status = free_port();
    let mut b = broker(&url, status, "adm-move-a");
    let mut p = login(b.stomp_port(), &[]);
    p.send_with_receipt("/queue/work", "poison", &[("kind", "bad")]);
    // max_redeliveries 0: the first NACK dead-letters it.
    let mut c = login(b.stomp_port(), &[]);
    c.subscribe_with_receipt("/queue/work", "w", "client-individual", &[]);
    let m = c.recv(TIMEOUT);
    c.nack(m.header("ack").expect("ack header"));
    c.disconnect();
    let dead = common::poll(TIMEOUT, Duration::from_millis(50), || {
        ok(status, &["browse", "/queue/DLQ.work"])
            .contains("waiting messages of 1")
            .then_some(())
    });
    assert!(dead.is_some(), "not dead-lettered");
    let out = ok(status, &["browse", "/queue/DLQ.work"]);
    assert!(out.contains("  original-destination: /queue/work"), "{out}");
    assert_eq!(
        ok(status, &["retry", "/queue/DLQ.work"]),
        "moved 1 messages from /queue/DLQ.work to /queue/work\n"
    );
    let (code, text) = hamq(status, "ops", &["retry", "/queue/work"]);
    assert_eq!(code, Some(1));
    assert_eq!(
        text,
        "hamq: /queue/work is not a dead-letter queue (/queue/DLQ.NAME)\n"
    );

    for body in ["m1", "m2", "m3"] {
        p.send_with_receipt("/queue/from", body, &[]);
    }
    assert_eq!(
        ok(status, &["move", "/queue/from", "/queue/to"]),
        "moved 3 messages from /queue/from to /queue/to\n"
    );
    let mut holder = login(b.stomp_port(), &[]);
    holder.subscribe_with_receipt("/queue/gone", "g", "auto", &[]);
    let (code, text) = hamq(status, "ops", &["delete", "/queue/gone"]);
    assert_eq!(code, Some(1));
    assert_eq!(
        text,
        "hamq: /queue/gone has 1 consumers: they must unsubscribe first\n"
    );
    let (code, text) = hamq(status, "app", &["delete", "/queue/app.x"]);
    assert_eq!(
        (code, text.as_str()),
        (Some(1), "hamq: permission denied: admin on /queue/app.x\n")
    );
    holder.disconnect();
    p.send_with_receipt("/queue/gone", "y", &[]);
    p.send_with_receipt("/queue/gone", "z", &[]);
    let deleted = common::poll(TIMEOUT, Duration::from_millis(50), || {
        let (code, text) = hamq(status, "ops", &["delete", "/queue/gone"]);
        (code == Some(0)).then_some(text)
    })
    .expect("delete refused after the consumer left");
    assert_eq!(deleted, "deleted /queue/gone and its 2 waiting messages\n");
    assert!(!ok(status, &["queues"]).contains("/queue/gone"));

    // A takeover reads the store: each message is where the admin put it.
    let status_b = free_port();
    let b2 = spawn(&url, status_b, "adm-move-b");
    b2.wait_for_log("waiting for the lock", TIMEOUT);
    b.kill9();
    b2.wait_for_log("listening for STOMP", TIMEOUT);
    let mut r = login(b2.stomp_port(), &[]);
    r.subscribe_with_receipt("/queue/work", "w", "auto", &[]);
    let m = r.recv(TIMEOUT);
    assert_eq!(
        (m.text(), m.header("kind")),
        ("poison".to_string(), Some("bad"))
    );
    assert_eq!(m.header("original-destination"), None);
    r.subscribe_with_receipt("/queue/to", "t", "auto", &[]);
    let bodies: Vec<String> = (0..3).map(|_| r.recv(TIMEOUT).text()).collect();
    assert_eq!(bodies, ["m1", "m2", "m3"]);
    r.subscribe_with_receipt("/queue/from", "f", "auto", &[]);
    r.subscribe_with_receipt("/queue/gone", "g", "auto", &[]);
    r.subscribe_with_receipt("/queue/DLQ.work", "d", "auto", &[]);
    assert!(
        r.try_recv(Duration::from_millis(300)).is_none(),
        "a message where none belongs"
    );
}
