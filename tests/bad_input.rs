//! Bad input: malformed and oversized frames, wrong frame order, unknown destinations, a bad
//! config line, an unreachable database. Each gets a clear error naming the problem; the broker
//! keeps serving other clients and nothing half-done reaches the store.
//! One broker serves every case of a test (with small limits so the cases stay cheap).

mod common;

use common::{hash_password, shared_mariadb, Broker, Client, TIMEOUT};
use std::io::Write;
use std::time::{Duration, Instant};

const LIMITS: &[(&str, &str)] = &[
    ("HAMQ_MAX_COMMAND_LINE", "64"),
    ("HAMQ_MAX_HEADER_LINE", "256"),
    ("HAMQ_MAX_HEADERS", "20"),
    ("HAMQ_MAX_FRAME", "4096"),
    ("HAMQ_CONNECT_TIMEOUT_MS", "500"),
];

/// Connect, write `bytes`, expect an ERROR whose message contains `needle`, then EOF.
fn expect_error(port: u16, connect_first: bool, bytes: &[u8], needle: &str) {
    let mut c = if connect_first {
        Client::connect(port)
    } else {
        Client::raw(port)
    };
    c.write_raw(bytes);
    let error = c.recv(TIMEOUT);
    assert_eq!(error.command, "ERROR", "for {needle}: {error:?}");
    let message = error.header("message").unwrap_or_default().to_string();
    assert!(
        message.contains(needle),
        "`{message}` does not name `{needle}`"
    );
    assert!(
        c.recv_eof(TIMEOUT),
        "connection not closed after ERROR ({needle})"
    );
}

/// A well-behaved client still gets its message through.
fn still_serves(port: u16, dest: &str) {
    let mut c = Client::connect(port);
    c.send_with_receipt(dest, "ok", &[]);
    c.subscribe(dest, "s", "client-individual", &[]);
    let m = c.recv(TIMEOUT);
    assert_eq!(m.text(), "ok");
    c.ack(m.header("ack").unwrap());
    c.disconnect();
}

#[test]
fn malformed_and_oversized_frames_get_error_then_close() {
    let url = shared_mariadb().create_database();
    let b = Broker::start(&url, LIMITS);
    let port = b.stomp_port();
    let long_header = format!("SEND\ndestination:/queue/x\nh:{}\n\n\0", "v".repeat(300));
    let many_headers: String = (0..25).map(|i| format!("h{i}:v\n")).collect();
    let many_headers = format!("SEND\ndestination:/queue/x\n{many_headers}\n\0");
    let cases: Vec<(bool, Vec<u8>, &str)> = vec![
        (
            false,
            format!("{}\n\n\0", "C".repeat(100)).into_bytes(),
            "64",
        ),
        (true, long_header.into_bytes(), "256"),
        (true, many_headers.into_bytes(), "20"),
        (
            true,
            b"SEND\ndestination:/queue/x\ncontent-length:999999\n\n".to_vec(),
            "4096",
        ),
        (
            true,
            b"SEND\ndestination:/queue/x\nbad\\q:1\n\n\0".to_vec(),
            "escape",
        ),
        (
            true,
            b"SEND\ndestination:/queue/x\nnocolon\n\n\0".to_vec(),
            "nocolon",
        ),
        (
            true,
            b"SEND\ndestination:/queue/\xff\xfe\n\n\0".to_vec(),
            "UTF-8",
        ),
        (true, b"FROB\n\n\0".to_vec(), "FROB"),
        (
            false,
            b"SEND\ndestination:/queue/x\n\nhi\0".to_vec(),
            "CONNECT",
        ),
        (
            true,
            b"SEND\ndestination:/exchange/x\n\nhi\0".to_vec(),
            "/queue/NAME",
        ),
        (true, b"SEND\n\nhi\0".to_vec(), "destination"),
        (
            true,
            b"SEND\ndestination:/queue/x\npriority:12\n\nhi\0".to_vec(),
            "priority",
        ),
        (
            true,
            b"CONNECT\naccept-version:1.2\n\n\0".to_vec(),
            "already connected",
        ),
        (true, b"ACK\nid:77-1\n\n\0".to_vec(), "77-1"),
        (true, b"COMMIT\ntransaction:nope\n\n\0".to_vec(), "nope"),
        (
            true,
            b"SUBSCRIBE\ndestination:/queue/x\n\n\0".to_vec(),
            "id",
        ),
    ];
    for (connect_first, bytes, needle) in cases {
        expect_error(port, connect_first, &bytes, needle);
        still_serves(port, "/queue/after-error");
    }
    // None of the refused SENDs reached the store.
    let mut c = Client::connect(port);
    c.subscribe("/queue/x", "s", "auto", &[]);
    assert!(c.try_recv(Duration::from_millis(300)).is_none());
}

#[test]
fn error_carries_the_receipt_id_of_the_bad_frame() {
    let url = shared_mariadb().create_database();
    let b = Broker::start(&url, LIMITS);
    let mut c = Client::connect(b.stomp_port());
    c.send_frame(
        "SEND",
        &[("destination", "/nowhere"), ("receipt", "r-9")],
        b"x",
    );
    let error = c.recv(TIMEOUT);
    assert_eq!(error.command, "ERROR");
    assert_eq!(error.header("receipt-id"), Some("r-9"));
}

#[test]
fn a_frame_split_at_every_byte_parses() {
    let url = shared_mariadb().create_database();
    let b = Broker::start(&url, &[]);
    let mut c = Client::connect(b.stomp_port());
    let frame = b"SEND\r\ndestination:/queue/split\r\nreceipt:r1\r\ncontent-length:5\r\nk:a\\cb\r\n\r\nx\0y\nz\0\n\n";
    for byte in frame.iter() {
        c.stream().write_all(&[*byte]).unwrap();
        c.stream().flush().unwrap();
    }
    let receipt = c.recv(TIMEOUT);
    assert_eq!(receipt.command, "RECEIPT");
    c.subscribe("/queue/split", "s", "auto", &[]);
    let m = c.recv(TIMEOUT);
    assert_eq!(m.body, b"x\0y\nz");
    assert_eq!(m.header("k"), Some("a:b"));
}

#[test]
fn a_socket_without_connect_is_closed_after_the_timeout() {
    let url = shared_mariadb().create_database();
    let b = Broker::start(&url, LIMITS);
    let mut c = Client::raw(b.stomp_port());
    let start = Instant::now();
    let error = c.recv(TIMEOUT);
    assert!(error.header("message").unwrap().contains("no CONNECT"));
    assert!(c.recv_eof(TIMEOUT));
    assert!(start.elapsed() >= Duration::from_millis(500));
    still_serves(b.stomp_port(), "/queue/t");
}

#[test]
fn wrong_credentials_are_refused() {
    let url = shared_mariadb().create_database();
    let users = format!(
        "guest:{} admin:{}",
        hash_password("guest"),
        hash_password("s3cret")
    );
    let b = Broker::start(&url, &[("HAMQ_USERS", &users)]);
    let port = b.stomp_port();
    for (login, pass) in [("guest", "nope"), ("nobody", "guest"), ("", "")] {
        let (mut c, reply) = Client::connect_with(
            port,
            &[
                ("accept-version", "1.2"),
                ("login", login),
                ("passcode", pass),
            ],
        );
        assert_eq!(reply.command, "ERROR");
        assert_eq!(reply.header("message"), Some("authentication failed"));
        assert!(c.recv_eof(TIMEOUT));
    }
    let (_, reply) = Client::connect_with(
        port,
        &[
            ("accept-version", "1.2"),
            ("login", "admin"),
            ("passcode", "s3cret"),
        ],
    );
    assert_eq!(reply.command, "CONNECTED");
}

#[test]
fn bad_config_names_the_key_and_exits() {
    let url = shared_mariadb().create_database();
    for (key, value, needle) in [
        ("HAMQ_MAX_FRAME", "lots", "max_frame"),
        ("HAMQ_STOMP_LISTEN", "nowhere", "stomp_listen"),
        ("HAMQ_DATASTORE", "postgres://x", "datastore"),
    ] {
        let mut b = Broker::spawn_with_name("badconf", &url, &[(key, value)]);
        let status = b
            .wait_exit(TIMEOUT)
            .expect("broker with a bad config kept running");
        assert_eq!(status.code(), Some(2));
        let line = b.wait_for_log(needle, TIMEOUT);
        assert!(
            line.contains(&format!("HAMQ_{}", needle.to_uppercase())),
            "{line}"
        );
    }
}

#[test]
fn unreachable_database_is_retried_and_logged() {
    let dead_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("mysql://hamq:hamq@127.0.0.1:{dead_port}/hamq");
    let mut b = Broker::spawn_with_name("unreachable", &url, &[]);
    b.wait_for_log("datastore unreachable", TIMEOUT);
    b.wait_for_log("retrying in 200 ms", TIMEOUT);
    assert!(
        b.wait_exit(Duration::from_millis(100)).is_none(),
        "gave up instead of retrying"
    );
    b.sigterm();
    let status = b
        .wait_exit(TIMEOUT)
        .expect("did not stop on SIGTERM while retrying");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn overlong_names_are_refused_without_touching_the_store() {
    let url = shared_mariadb().create_database();
    let b = Broker::start(&url, &[]);
    let port = b.stomp_port();
    let long = "x".repeat(300);
    let (mut c, reply) = Client::connect_with(
        port,
        &[
            ("accept-version", "1.2"),
            ("login", "guest"),
            ("passcode", "guest"),
            ("client-id", &long),
        ],
    );
    assert_eq!(reply.command, "ERROR");
    assert!(reply.header("message").unwrap().contains("client-id"));
    assert!(c.recv_eof(TIMEOUT));
    expect_error(
        port,
        true,
        format!("SUBSCRIBE\nid:1\ndestination:/topic/t\nactivemq.subscriptionName:{long}\n\n\0")
            .as_bytes(),
        "subscriptionName",
    );
    expect_error(
        port,
        true,
        format!("SEND\ndestination:/queue/{}\n\nx\0", "q".repeat(250)).as_bytes(),
        "limit is 251",
    );
    still_serves(port, "/queue/after-long-names");
}

#[test]
fn heart_beats_alone_do_not_stand_in_for_connect() {
    let url = shared_mariadb().create_database();
    let b = Broker::start(&url, LIMITS);
    let mut c = Client::raw(b.stomp_port());
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        if c.stream().write_all(b"\n").is_err() {
            break;
        }
        if let Some(error) = c.try_recv(Duration::from_millis(100)) {
            assert!(error.header("message").unwrap().contains("no CONNECT"));
            return;
        }
    }
    panic!("a socket sending only EOLs was kept open past the CONNECT timeout");
}

#[test]
fn connection_subscription_and_transaction_limits() {
    let url = shared_mariadb().create_database();
    let limits = [
        ("HAMQ_MAX_CONNECTIONS", "3"),
        ("HAMQ_MAX_SUBSCRIPTIONS", "2"),
        ("HAMQ_MAX_TRANSACTION_BYTES", "100"),
    ];
    let b = Broker::start(&url, &limits);
    let port = b.stomp_port();

    // Subscriptions per connection.
    let mut c = Client::connect(port);
    c.subscribe_with_receipt("/queue/l1", "a", "auto", &[]);
    c.subscribe_with_receipt("/queue/l2", "b", "auto", &[]);
    c.send_frame(
        "SUBSCRIBE",
        &[("destination", "/queue/l3"), ("id", "c")],
        b"",
    );
    let error = c.recv(TIMEOUT);
    assert!(
        error
            .header("message")
            .unwrap()
            .contains("2 subscriptions, the limit"),
        "{error:?}"
    );
    assert!(c.recv_eof(TIMEOUT));

    // Bytes a transaction may buffer; nothing of it is stored.
    let mut t = Client::connect(port);
    t.send_frame_with_receipt("BEGIN", &[("transaction", "big")], b"");
    let part = [("destination", "/queue/tx-limit"), ("transaction", "big")];
    t.send_frame_with_receipt("SEND", &part, &[b'x'; 60]);
    t.send_frame("SEND", &part, &[b'y'; 60]);
    let error = t.recv(TIMEOUT);
    assert!(
        error
            .header("message")
            .unwrap()
            .contains("exceeds 100 bytes"),
        "{error:?}"
    );
    assert!(t.recv_eof(TIMEOUT));
    let mut r = Client::connect(port);
    r.subscribe("/queue/tx-limit", "s", "auto", &[]);
    assert!(
        r.try_recv(Duration::from_millis(300)).is_none(),
        "part of a refused transaction stored"
    );

    // Connections: `r` and two more fill the limit of 3 (once the refused sessions above have
    // finished lingering); the next is refused politely.
    let _c2 = connect_when_room(port);
    let _c3 = connect_when_room(port);
    let mut over = Client::raw(port);
    let error = over.recv(TIMEOUT);
    assert!(
        error
            .header("message")
            .unwrap()
            .contains("too many connections"),
        "{error:?}"
    );
    assert!(over.recv_eof(TIMEOUT));
    // Once one leaves, a new client gets in again.
    r.disconnect();
    drop(r);
    connect_when_room(port).send_with_receipt("/queue/after-limit", "ok", &[]);
}

/// A connected client as soon as the broker has room for one (polled, with a deadline).
fn connect_when_room(port: u16) -> Client {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(c) = Client::try_connect(port, Duration::from_secs(1)) {
            return c;
        }
        assert!(
            Instant::now() < deadline,
            "no room for a connection within {TIMEOUT:?}"
        );
    }
}

/// Acks inside a transaction free the prefetch window, so what one transaction may hold is
/// bounded by `max_transaction_bytes`; past it the ACK is refused, the connection closes, and
/// every message comes back (nothing of the transaction was committed).
#[test]
fn acks_held_in_a_transaction_are_bounded() {
    let url = shared_mariadb().create_database();
    let b = Broker::start(&url, &[("HAMQ_MAX_TRANSACTION_BYTES", "2000")]);
    let port = b.stomp_port();
    let mut p = Client::connect(port);
    for i in 0..10 {
        p.send_with_receipt("/queue/held", format!("{i}:{}", "x".repeat(300)), &[]);
    }
    let mut c = Client::connect(port);
    c.subscribe("/queue/held", "s", "client-individual", &[]);
    c.send_frame_with_receipt("BEGIN", &[("transaction", "t")], b"");
    let mut refused = None;
    for _ in 0..10 {
        let m = c.recv(TIMEOUT);
        assert_eq!(m.command, "MESSAGE", "{m:?}");
        let ack = m.header("ack").unwrap().to_string();
        let headers = [("id", ack.as_str()), ("transaction", "t")];
        if let Err(e) = c.try_with_receipt("ACK", &headers, b"", TIMEOUT) {
            refused = Some(e);
            break;
        }
    }
    let error = refused.expect("ten 300-byte acks in a 2000-byte transaction were all held");
    assert!(
        error.contains("would hold more than 2000 bytes of acknowledged messages"),
        "{error}"
    );
    assert!(c.recv_eof(TIMEOUT));
    let mut r = Client::connect(port);
    r.subscribe("/queue/held", "s", "auto", &[]);
    let mut got: Vec<String> = (0..10)
        .map(|_| {
            r.recv(TIMEOUT)
                .text()
                .split(':')
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    got.sort_by_key(|n| n.parse::<u32>().unwrap());
    let expected: Vec<String> = (0..10).map(|i| i.to_string()).collect();
    assert_eq!(got, expected);
    assert!(
        r.try_recv(Duration::from_millis(300)).is_none(),
        "extra message"
    );
}
