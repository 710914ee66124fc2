//! No client input may stop the master. Each case runs against a MariaDB with its own defaults
//! (`latin1`, `max_allowed_packet` = 4 MiB, as many users' servers are) and against one started
//! with utf8mb4 and a 64 MiB packet limit, and asserts the exact outcome: the bad operation gets
//! an ERROR naming the problem, nothing of it is stored, every other client's receipted messages
//! are stored and delivered exactly once, and the broker never exits.

mod common;

use common::probe::metric;
use common::{poll, shared_mariadb_of, Broker, Client, Flavour, Frame, MariaDb, TIMEOUT};
use mysql::prelude::Queryable;
use mysql::{Conn, Opts};
use std::collections::HashMap;
use std::time::Duration;

const FLAVOURS: [Flavour; 2] = [Flavour::Defaults, Flavour::Utf8mb4];

/// A fresh database on the shared server of `flavour`, and a broker on it.
fn broker_on(flavour: Flavour, extra: &[(&str, &str)]) -> (Broker, String) {
    let url = shared_mariadb_of(flavour).create_database();
    let broker = Broker::start(&url, extra);
    (broker, url)
}

/// A plain connection to the broker's database, as the broker's own user.
fn store(url: &str) -> Conn {
    let opts = Opts::from_url(url).expect("a database URL");
    Conn::new(opts).unwrap_or_else(|e| panic!("connect to {url}: {e}"))
}

fn stored_destinations(url: &str) -> HashMap<String, u64> {
    store(url)
        .query_map(
            "SELECT destination, COUNT(*) FROM hamq_messages GROUP BY destination",
            |(d, n): (String, u64)| (d, n),
        )
        .expect("read hamq_messages")
        .into_iter()
        .collect()
}

fn assert_running(broker: &mut Broker) {
    assert!(
        broker.wait_exit(Duration::ZERO).is_none(),
        "the broker exited; log:\n{}",
        broker.log_lines().join("\n")
    );
    assert_eq!(broker.count_log("shutting down"), 0);
}

/// The ERROR a refused frame gets, then the connection's end.
fn expect_error(client: &mut Client, says: &str) -> Frame {
    let error = client.recv(TIMEOUT);
    assert_eq!(error.command, "ERROR", "{error:?}");
    let message = error.header("message").unwrap_or_default();
    assert!(message.contains(says), "{message:?} does not say {says:?}");
    assert!(client.recv_eof(TIMEOUT), "the connection stays open");
    error
}

/// A new connection still sends and receives.
fn still_serves(port: u16, queue: &str) {
    let mut c = Client::connect(port);
    c.send_with_receipt(queue, "still here", &[]);
    c.subscribe(queue, "s", "auto", &[]);
    assert_eq!(c.recv(TIMEOUT).text(), "still here");
}

/// Names that differ only in case, accents or trailing spaces are separate destinations, and
/// multi-byte names of every kind are stored as sent and come back from the store exactly
/// (after a restart, from the rows alone).
#[test]
fn multibyte_destinations_are_stored_and_recovered_exactly() {
    let longest = format!("/queue/{}", "語".repeat(244));
    let names = [
        "/queue/日本".to_string(),
        "/queue/😀-4-byte".to_string(),
        "/queue/e\u{301}-combining".to_string(),
        "/queue/é".to_string(),
        "/queue/e".to_string(),
        "/queue/עברית-rtl".to_string(),
        "/queue/A".to_string(),
        "/queue/a".to_string(),
        "/queue/a ".to_string(),
        longest.clone(),
    ];
    for flavour in FLAVOURS {
        let (mut broker, url) = broker_on(flavour, &[]);
        let mut producer = Client::connect(broker.stomp_port());
        for (i, name) in names.iter().enumerate() {
            producer.send_with_receipt(name, format!("{i}"), &[]);
        }
        let stored = stored_destinations(&url);
        let expected: HashMap<String, u64> = names.iter().map(|n| (n.clone(), 1)).collect();
        assert_eq!(stored, expected, "{flavour:?}");
        // One character too many: refused by name, nothing stored, the broker serves on.
        let over = format!("{longest}語");
        producer.send_frame("SEND", &[("destination", &over), ("receipt", "r")], b"x");
        let error = expect_error(&mut producer, "252 characters long, the limit is 251");
        assert_eq!(error.header("receipt-id"), Some("r"));
        assert_eq!(stored_destinations(&url).len(), names.len());
        broker.kill9();
        let mut broker = Broker::start(&url, &[]);
        let mut consumer = Client::connect(broker.stomp_port());
        for (i, name) in names.iter().enumerate() {
            consumer.subscribe(name, &format!("s{i}"), "client-individual", &[]);
            let m = consumer.recv(TIMEOUT);
            assert_eq!(
                (m.header("destination"), m.text()),
                (Some(name.as_str()), i.to_string())
            );
            consumer.ack(m.header("ack").expect("ack"));
        }
        assert!(consumer.try_recv(Duration::from_millis(300)).is_none());
        assert_running(&mut broker);
    }
}

/// A client-id and durable subscription name in any script, up to 255 characters of 4-byte
/// text, keep their subscription through a restart; names differing in case or a trailing
/// space are separate subscriptions.
#[test]
fn durable_subscriptions_with_names_in_any_script() {
    let long_client = "𝒞".repeat(255);
    let long_name = "𝓃".repeat(255);
    let cases = [
        ("客户".to_string(), "订阅".to_string()),
        ("客户".to_string(), "订阅 ".to_string()),
        ("客户".to_string(), "Sub".to_string()),
        ("客户".to_string(), "sub".to_string()),
        (long_client.clone(), long_name.clone()),
    ];
    for flavour in FLAVOURS {
        let (mut broker, url) = broker_on(flavour, &[]);
        let port = broker.stomp_port();
        for (client_id, name) in &cases {
            let mut c = durable_client(port, client_id);
            let sub = [("activemq.subscriptionName", name.as_str())];
            c.subscribe_with_receipt("/topic/t", "d", "auto", &sub);
            c.disconnect();
        }
        let mut producer = Client::connect(port);
        producer.send_with_receipt("/topic/t", "kept for each", &[]);
        let subs: u64 = store(&url)
            .query_first("SELECT COUNT(*) FROM hamq_durable_subs")
            .expect("count")
            .expect("a row");
        assert_eq!(subs, cases.len() as u64, "{flavour:?}");
        // 256 characters: refused, nothing created.
        let mut c = durable_client(port, &long_client);
        let over = format!("{long_name}𝓃");
        c.send_frame(
            "SUBSCRIBE",
            &[
                ("destination", "/topic/t"),
                ("id", "d"),
                ("activemq.subscriptionName", &over),
            ],
            b"",
        );
        expect_error(&mut c, "256 characters long, the limit is 255");
        broker.kill9();
        let mut broker = Broker::start(&url, &[]);
        for (client_id, name) in &cases {
            let mut c = durable_client(broker.stomp_port(), client_id);
            let sub = [("activemq.subscriptionName", name.as_str())];
            c.subscribe("/topic/t", "d", "auto", &sub);
            assert_eq!(c.recv(TIMEOUT).text(), "kept for each", "{name:?}");
            assert!(c.try_recv(Duration::from_millis(200)).is_none());
        }
        assert_running(&mut broker);
    }
}

fn durable_client(port: u16, client_id: &str) -> Client {
    let (c, reply) = Client::connect_with(
        port,
        &[
            ("accept-version", "1.2"),
            ("login", "guest"),
            ("passcode", "guest"),
            ("client-id", client_id),
        ],
    );
    assert_eq!(reply.command, "CONNECTED", "{reply:?}");
    c
}

/// NUL and other control characters in a destination, client-id or subscription name are
/// refused with an ERROR naming the character; nothing reaches the store.
#[test]
fn control_characters_in_names_are_refused_and_nothing_is_stored() {
    let (mut broker, url) = broker_on(Flavour::Defaults, &[]);
    let port = broker.stomp_port();
    let controls = ["\0", "\u{1}", "\u{1b}", "\u{7f}", "\u{85}", "\r", "\n"];
    for control in controls {
        let code = format!(
            "U+{:04X}",
            u32::from(control.chars().next().expect("a char"))
        );
        let destination = format!("/queue/a{control}b");
        let mut c = Client::connect(port);
        c.send_frame("SEND", &[("destination", &destination)], b"x");
        expect_error(&mut c, &code);
        let mut c = Client::connect(port);
        c.send_frame(
            "SUBSCRIBE",
            &[("destination", &destination), ("id", "s")],
            b"",
        );
        expect_error(&mut c, &code);
        // CONNECT headers are not escaped: only what a raw line can carry.
        if !matches!(control, "\r" | "\n") {
            let client_id = format!("c{control}1");
            let (mut c, reply) = Client::connect_with(
                port,
                &[("accept-version", "1.2"), ("client-id", &client_id)],
            );
            assert_eq!(reply.command, "ERROR", "{reply:?}");
            assert!(reply.header("message").unwrap_or_default().contains(&code));
            assert!(c.recv_eof(TIMEOUT));
        }
        let mut c = durable_client(port, "c1");
        let name = format!("n{control}1");
        let sub = [
            ("destination", "/topic/t"),
            ("id", "s"),
            ("activemq.subscriptionName", name.as_str()),
        ];
        c.send_frame("SUBSCRIBE", &sub, b"");
        expect_error(&mut c, &code);
    }
    let mut conn = store(&url);
    let messages: u64 = conn
        .query_first("SELECT COUNT(*) FROM hamq_messages")
        .expect("count")
        .expect("row");
    let subs: u64 = conn
        .query_first("SELECT COUNT(*) FROM hamq_durable_subs")
        .expect("count")
        .expect("row");
    assert_eq!((messages, subs), (0, 0));
    still_serves(port, "/queue/after");
    assert_running(&mut broker);
}

/// What a SEND's headers count against the store's limit (README, "Database requirements").
fn header_cost(headers: &[(&str, &str)]) -> usize {
    headers.iter().map(|(n, v)| n.len() + v.len() + 8).sum()
}

/// The limit the broker logged at takeover.
fn logged_send_limit(broker: &Broker) -> usize {
    let line = broker.wait_for_log("a SEND may carry ", TIMEOUT);
    let rest = &line[line.find("a SEND may carry ").expect("found") + 17..];
    rest.split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number in {line:?}"))
}

/// On a 4 MiB server a SEND exactly at the limit the broker logs is stored and delivered whole,
/// one byte more is refused before its body is read, naming `max_allowed_packet`; a 5 MiB SEND
/// (under `max_frame`) is refused there and stored on the 64 MiB server.
#[test]
fn sends_at_and_over_the_database_packet_limit() {
    let (mut broker, url) = broker_on(Flavour::Defaults, &[]);
    let port = broker.stomp_port();
    let limit = logged_send_limit(&broker);
    assert_eq!(limit, 4 * 1024 * 1024 - 4096);
    let body_for = |length: usize| -> Vec<u8> { (0..length).map(|i| (i % 251) as u8).collect() };
    let fitting = |extra: usize| {
        let probe = (limit - 100).to_string();
        let cost = header_cost(&[
            ("destination", "/queue/big"),
            ("receipt", "r"),
            ("content-length", &probe),
        ]);
        limit - cost + extra
    };
    let at = fitting(0);
    let mut producer = Client::connect(port);
    let length = at.to_string();
    let headers = [
        ("destination", "/queue/big"),
        ("receipt", "r"),
        ("content-length", length.as_str()),
    ];
    producer.send_frame("SEND", &headers, &body_for(at));
    let reply = producer.recv(TIMEOUT);
    assert_eq!(reply.command, "RECEIPT", "{reply:?}");
    // One byte over: the ERROR comes for the head alone, before any of the body was sent.
    let over = (at + 1).to_string();
    let head = format!("SEND\ndestination:/queue/big\nreceipt:r2\ncontent-length:{over}\n\n");
    producer.write_raw(head.as_bytes());
    let error = expect_error(&mut producer, "max_allowed_packet");
    let message = error.header("message").unwrap_or_default();
    assert!(
        message.contains(&format!("limit of {limit} bytes")),
        "{message}"
    );
    let five = 5 * 1024 * 1024;
    let mut c = Client::connect(port);
    c.send_frame(
        "SEND",
        &[("destination", "/queue/big"), ("receipt", "r")],
        &body_for(five),
    );
    expect_error(&mut c, "max_allowed_packet");
    let mut consumer = Client::connect(port);
    consumer.subscribe("/queue/big", "s", "auto", &[]);
    let m = consumer.recv(TIMEOUT);
    assert_eq!(m.body, body_for(at));
    assert!(consumer.try_recv(Duration::from_millis(300)).is_none());
    assert_eq!(
        stored_destinations(&url).get("/queue/big"),
        None,
        "auto-acked"
    );
    assert_running(&mut broker);

    let (mut big, _) = broker_on(Flavour::Utf8mb4, &[]);
    assert_eq!(logged_send_limit(&big), 64 * 1024 * 1024 - 4096);
    let mut c = Client::connect(big.stomp_port());
    c.send_with_receipt("/queue/big", body_for(five), &[]);
    c.subscribe("/queue/big", "s", "auto", &[]);
    assert_eq!(c.recv(TIMEOUT).body, body_for(five));
    assert_running(&mut big);
}

/// A data error from the database itself (here a trigger that refuses one destination, as a
/// stand-in for any error caused by one operation's data) fails that SEND alone, even in a batch
/// with 100 good SENDs of ten other clients: they are all stored and delivered exactly once,
/// in each producer's order.
#[test]
fn one_poison_send_in_a_batch_of_a_hundred_fails_alone() {
    for flavour in FLAVOURS {
        poison_in_a_batch(shared_mariadb_of(flavour));
    }
}

fn poison_in_a_batch(db: &MariaDb) {
    let url = db.create_database();
    let status_port = common::free_port();
    let status = format!("127.0.0.1:{status_port}");
    let mut broker = Broker::start(&url, &[("HAMQ_STATUS_LISTEN", &status)]);
    let port = broker.stomp_port();
    let mut root = store(&url);
    root.query_drop(
        "CREATE TRIGGER poison BEFORE INSERT ON hamq_messages FOR EACH ROW \
         IF NEW.destination = '/queue/poison' THEN \
         SIGNAL SQLSTATE '22001' SET MYSQL_ERRNO = 1406, \
         MESSAGE_TEXT = 'Data too long for column destination in hamq_messages'; END IF",
    )
    .expect("create the trigger");
    // Hold the epoch row so the writer's next transaction waits (well inside its 5 s read
    // timeout) while the batch queues up behind it.
    let mut holder = store(&url);
    holder.query_drop("START TRANSACTION").expect("begin");
    holder
        .query_drop("SELECT epoch FROM hamq_epoch WHERE id = 1 FOR UPDATE")
        .expect("lock the epoch row");
    let mut primer = Client::connect(port);
    primer.send_frame(
        "SEND",
        &[("destination", "/queue/good"), ("receipt", "p")],
        b"primer",
    );
    // The writer's INSERT of the primer has waited on the row for 100 ms.
    let waiting = poll(TIMEOUT, Duration::from_millis(10), || {
        let n: Option<u64> = root
            .query_first(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST \
                 WHERE INFO LIKE 'INSERT INTO hamq_messages%' AND TIME_MS >= 100",
            )
            .expect("read the process list");
        (n == Some(1)).then_some(())
    });
    assert!(
        waiting.is_some(),
        "the writer never waited on the epoch row"
    );
    // 100 KB each, so that the backlog tells 101 admitted SENDs from 100.
    let body = |p: usize, i: usize| format!("p{p}-{i:02}-{}", "x".repeat(100_000));
    let mut producers: Vec<Client> = (0..10).map(|_| Client::connect(port)).collect();
    for (p, c) in producers.iter_mut().enumerate() {
        for i in 0..10 {
            let receipt = format!("{p}-{i}");
            let headers = [
                ("destination", "/queue/good"),
                ("receipt", receipt.as_str()),
            ];
            c.send_frame("SEND", &headers, body(p, i).as_bytes());
        }
    }
    let mut poisoner = Client::connect(port);
    let headers = [("destination", "/queue/poison"), ("receipt", "bad")];
    poisoner.send_frame("SEND", &headers, body(99, 0).as_bytes());
    // Every SEND has been admitted (its weight counts in the backlog) before the row is let go.
    let admitted = poll(TIMEOUT, Duration::from_millis(10), || {
        (metric(status_port, "hamq_store_backlog_bytes") >= 101 * 100_000).then_some(())
    });
    assert!(admitted.is_some(), "the SENDs did not all reach the writer");
    holder.query_drop("COMMIT").expect("release the epoch row");
    assert_eq!(primer.recv(TIMEOUT).header("receipt-id"), Some("p"));
    for (p, c) in producers.iter_mut().enumerate() {
        for i in 0..10 {
            let r = c.recv(TIMEOUT);
            assert_eq!(r.command, "RECEIPT", "{r:?}");
            assert_eq!(r.header("receipt-id"), Some(format!("{p}-{i}").as_str()));
        }
    }
    let error = expect_error(
        &mut poisoner,
        "not stored: a value is longer than the database",
    );
    assert_eq!(error.header("receipt-id"), Some("bad"));
    let message = error.header("message").unwrap_or_default();
    assert!(!message.contains("hamq_messages"), "{message}");
    let retry = broker.wait_for_log("store operations failed on one operation's data", TIMEOUT);
    assert!(retry.contains("a batch of 101 store operations"), "{retry}");
    let mut consumer = Client::connect(port);
    consumer.subscribe("/queue/good", "s", "client-individual", &[]);
    let first = consumer.recv(TIMEOUT);
    assert_eq!(first.text(), "primer");
    consumer.ack(first.header("ack").expect("ack"));
    let mut seen: Vec<Vec<String>> = vec![Vec::new(); 10];
    for _ in 0..100 {
        let m = consumer.recv(TIMEOUT);
        let text = m.text();
        let p: usize = text[1..text.find('-').expect("p")]
            .parse()
            .expect("producer");
        seen[p].push(text);
        consumer.ack(m.header("ack").expect("ack"));
    }
    for (p, got) in seen.iter().enumerate() {
        let sent: Vec<String> = (0..10).map(|i| body(p, i)).collect();
        assert_eq!(got, &sent, "producer {p}");
    }
    assert!(consumer.try_recv(Duration::from_millis(300)).is_none());
    assert_eq!(stored_destinations(&url).get("/queue/poison"), None);
    // The same client tries again on a new connection: refused again, the broker goes on.
    let mut again = Client::connect(port);
    again.send_frame("SEND", &headers, b"again");
    expect_error(&mut again, "not stored");
    still_serves(port, "/queue/after");
    assert_running(&mut broker);
}
