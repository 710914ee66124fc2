//! TLS: STOMP over the TLS listener (round trip, shared connection limit), clients that do not
//! speak TLS there, bad certificate and key files, and TLS to the database. Every certificate is
//! made by the test ([`Certs`]: a throwaway CA and a server certificate for localhost and
//! 127.0.0.1).

mod common;

use common::{shared_mariadb, Broker, Certs, Client, MariaDb, TIMEOUT};
use mysql::prelude::Queryable;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

fn env_refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// Spawns a broker with `env` and waits for its TLS listener.
fn tls_broker(name: &str, url: &str, env: &[(String, String)]) -> Broker {
    let broker = Broker::spawn_with_name(name, url, &env_refs(env));
    broker.stomp_tls_port();
    broker
}

/// Reads raw bytes until the broker closes the connection (Some(bytes)) or `timeout` passes
/// (None).
fn read_until_closed(stream: &mut TcpStream, timeout: Duration) -> Option<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        stream
            .set_read_timeout(Some(left))
            .expect("set_read_timeout");
        match stream.read(&mut chunk) {
            Ok(0) => return Some(got),
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return Some(got),
            Err(e) => panic!("reading from the broker: {e}"),
        }
    }
}

/// The plain listener's log line (the TLS one says `STOMP over TLS`).
const PLAIN_LISTENING: &str = "listening for STOMP on ";
/// Short enough that a second broker takes over soon after the first is killed.
const LEASE: (&str, &str) = ("HAMQ_LEASE", "3");

fn tcp(port: u16) -> TcpStream {
    TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).expect("connect")
}

#[test]
fn stomp_over_tls_round_trip_next_to_plain() {
    let certs = Certs::new();
    let url = shared_mariadb().create_database();
    let b = tls_broker("tls-rt", &url, &certs.broker_env());
    let (plain_port, tls_port) = (b.stomp_port(), b.stomp_tls_port());
    assert_ne!(plain_port, tls_port);

    let mut c = Client::connect_tls(tls_port, &certs.ca_pem);
    // Larger than a TLS record (16 KiB) and than one read: many records each way.
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let receipt = c.send_with_receipt("/queue/tls", "over tls", &[("persistent", "true")]);
    assert_eq!(receipt.command, "RECEIPT");
    c.send_with_receipt("/queue/tls", &big, &[]);
    let mut plain = Client::connect(plain_port);
    plain.send_with_receipt("/queue/tls", "over plain", &[]);
    plain.disconnect();

    c.subscribe_with_receipt("/queue/tls", "s1", "client-individual", &[]);
    let first = c.recv(TIMEOUT);
    assert_eq!(first.command, "MESSAGE");
    assert_eq!(first.header("destination"), Some("/queue/tls"));
    assert_eq!(first.header("subscription"), Some("s1"));
    assert_eq!(first.text(), "over tls");
    let second = c.recv(TIMEOUT);
    assert_eq!(second.body, big, "the large body changed on the way");
    let third = c.recv(TIMEOUT);
    assert_eq!(third.text(), "over plain");
    for m in [&first, &second, &third] {
        c.ack(m.header("ack").expect("ack header"));
    }
    assert_eq!(c.try_recv(Duration::from_millis(300)), None, "extra frame");
    c.disconnect();
    assert!(c.recv_eof(TIMEOUT), "not closed after DISCONNECT");

    // Acknowledged: nothing is left for the next consumer.
    let mut again = Client::connect_tls(tls_port, &certs.ca_pem);
    again.subscribe_with_receipt("/queue/tls", "s2", "auto", &[]);
    assert_eq!(again.try_recv(Duration::from_millis(300)), None);
}

#[test]
fn non_tls_and_silent_clients_on_the_tls_port_are_dropped() {
    let certs = Certs::new();
    let url = shared_mariadb().create_database();
    let mut env = certs.broker_env();
    env.push(("HAMQ_STOMP_LISTEN".into(), String::new()));
    env.push(("HAMQ_CONNECT_TIMEOUT_MS".into(), "1000".into()));
    let b = tls_broker("tls-hostile", &url, &env);
    let port = b.stomp_tls_port();
    assert_eq!(b.count_log(PLAIN_LISTENING), 0, "plain listener open");

    let mut good = Client::connect_tls(port, &certs.ca_pem);
    good.subscribe_with_receipt("/queue/good", "s", "client-individual", &[]);

    // Plain STOMP on the TLS port: refused at once, never answered in plain text.
    let started = Instant::now();
    let mut plain = tcp(port);
    plain
        .write_all(b"CONNECT\naccept-version:1.2\nlogin:guest\npasscode:guest\n\n\0")
        .expect("write");
    let answer = read_until_closed(&mut plain, TIMEOUT).expect("plain client not dropped");
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "dropped only after {:?}",
        started.elapsed()
    );
    assert!(
        !String::from_utf8_lossy(&answer).contains("CONNECTED"),
        "answered in plain text: {answer:?}"
    );
    b.wait_for_log("TLS handshake failed", TIMEOUT);

    // Connects and never starts a handshake: dropped at the CONNECT timeout.
    let started = Instant::now();
    let mut silent = tcp(port);
    let answer = read_until_closed(&mut silent, TIMEOUT).expect("silent client not dropped");
    let waited = started.elapsed();
    assert!(answer.is_empty(), "sent {answer:?} to a silent client");
    assert!(
        waited >= Duration::from_millis(950) && waited < Duration::from_secs(5),
        "silent client dropped after {waited:?}, the CONNECT timeout is 1 s"
    );
    b.wait_for_log("no TLS handshake within 1000 ms", TIMEOUT);

    // Handshakes but sends no CONNECT: the usual ERROR, over TLS, then the close.
    let mut idle = Client::raw_tls(port, &certs.ca_pem);
    let error = idle.recv(TIMEOUT);
    assert_eq!(error.command, "ERROR");
    assert_eq!(
        error.header("message"),
        Some("no CONNECT frame within 1000 ms")
    );
    assert!(idle.recv_eof(TIMEOUT), "not closed after the ERROR");

    // The good client was not disturbed.
    good.send_with_receipt("/queue/good", "still here", &[]);
    let m = good.recv(TIMEOUT);
    assert_eq!(m.text(), "still here");
    good.ack(m.header("ack").expect("ack header"));
    assert_eq!(
        good.try_recv(Duration::from_millis(300)),
        None,
        "extra frame"
    );
    good.disconnect();
}

#[test]
fn tls_connections_count_towards_max_connections() {
    let certs = Certs::new();
    let url = shared_mariadb().create_database();
    let mut env = certs.broker_env();
    env.push(("HAMQ_MAX_CONNECTIONS".into(), "1".into()));
    let b = tls_broker("tls-limit", &url, &env);
    let (plain_port, tls_port) = (b.stomp_port(), b.stomp_tls_port());
    let mut first = Client::connect_tls(tls_port, &certs.ca_pem);

    let (mut over, reply) = Client::connect_with(plain_port, &[("accept-version", "1.2")]);
    assert_eq!(reply.command, "ERROR");
    assert_eq!(
        reply.header("message"),
        Some("too many connections: the limit is 1, try again later")
    );
    assert!(over.recv_eof(TIMEOUT));
    // A TLS connection over the limit is closed before any handshake.
    let mut over_tls = tcp(tls_port);
    let answer = read_until_closed(&mut over_tls, TIMEOUT).expect("not closed over the limit");
    assert!(answer.is_empty(), "{answer:?}");
    let refusals = || b.count_log("refused a connection: too many connections");
    let deadline = Instant::now() + TIMEOUT;
    while refusals() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(refusals(), 2, "both refusals logged");

    // The connection inside the limit works on.
    first.send_with_receipt("/queue/limit", "fine", &[]);
    first.subscribe_with_receipt("/queue/limit", "s", "auto", &[]);
    assert_eq!(first.recv(TIMEOUT).text(), "fine");
    first.disconnect();
}

#[test]
fn bad_certificate_or_key_files_stop_the_broker_naming_the_file() {
    let certs = Certs::new();
    // The broker stops before it connects to the database.
    let url = "mysql://hamq:hamq@127.0.0.1:1/unused";
    let missing = certs.path_str("missing.pem");
    let (cert, key) = (certs.path_str("cert.pem"), certs.path_str("key.pem"));
    let other_key = certs.path_str("other-key.pem");
    let cases = [
        (
            missing.clone(),
            key.clone(),
            format!("tls_cert {missing}: cannot read it"),
        ),
        (
            cert.clone(),
            missing.clone(),
            format!("tls_key {missing}: cannot read it"),
        ),
        (
            key.clone(),
            key.clone(),
            format!("tls_cert {key}: holds no PEM certificate"),
        ),
        (
            cert.clone(),
            cert.clone(),
            format!("tls_key {cert}: holds no PEM private key"),
        ),
        (
            cert.clone(),
            other_key.clone(),
            format!("tls_cert {cert} with tls_key {other_key}: "),
        ),
    ];
    for (cert, key, needle) in cases {
        let env = [
            ("HAMQ_STOMP_TLS_LISTEN", "127.0.0.1:0"),
            ("HAMQ_TLS_CERT", cert.as_str()),
            ("HAMQ_TLS_KEY", key.as_str()),
        ];
        let mut b = Broker::spawn_with_name("badtls", url, &env);
        let status = b
            .wait_exit(TIMEOUT)
            .expect("broker with a bad TLS file kept running");
        assert_eq!(status.code(), Some(2), "for {needle}");
        let line = b.wait_for_log(&needle, TIMEOUT);
        assert!(line.contains("ERROR"), "{line}");
    }
    let mut b = Broker::spawn_with_name(
        "notlskey",
        url,
        &[
            ("HAMQ_STOMP_TLS_LISTEN", "127.0.0.1:0"),
            ("HAMQ_TLS_CERT", &cert),
        ],
    );
    assert_eq!(b.wait_exit(TIMEOUT).and_then(|s| s.code()), Some(2));
    b.wait_for_log(
        "config key `tls_key` (the final configuration): stomp_tls_listen is set",
        TIMEOUT,
    );
}

/// A MariaDB that takes only TLS connections over TCP, with the test CA's server certificate.
fn tls_only_mariadb(certs: &Certs) -> (MariaDb, String) {
    let db = MariaDb::start_with_args(&[
        format!("--ssl-ca={}", certs.path_str("ca.pem")),
        format!("--ssl-cert={}", certs.path_str("cert.pem")),
        format!("--ssl-key={}", certs.path_str("key.pem")),
    ]);
    let mut root = db.root_conn();
    let have_ssl: Option<String> = root
        .query_first("SELECT @@have_ssl")
        .expect("SELECT @@have_ssl");
    assert_eq!(
        have_ssl.as_deref(),
        Some("YES"),
        "this mariadbd has no TLS support (see its log in {})",
        db.dir().display()
    );
    let url = db.create_database();
    // From now on the harness's plain root connections are refused too.
    root.query_drop("SET GLOBAL require_secure_transport = ON")
        .expect("require_secure_transport");
    (db, url)
}

#[test]
fn database_over_tls_keeps_persistent_messages() {
    let certs = Certs::new();
    let (_db, url) = tls_only_mariadb(&certs);
    // prefer_socket=false: stay on TCP (the crate would switch to the local socket otherwise).
    let tls_url = format!(
        "{url}?require_ssl=true&root_cert_path={}&prefer_socket=false",
        certs.path_str("ca.pem")
    );
    let mut first = Broker::start(&tls_url, &[LEASE]);
    let mut c = Client::connect(first.stomp_port());
    c.send_with_receipt("/queue/durable", "kept over tls", &[("persistent", "true")]);
    first.kill9();

    let second = Broker::start(&tls_url, &[LEASE]);
    second.wait_for_log("recovered 1 messages", TIMEOUT);
    let mut c = Client::connect(second.stomp_port());
    c.subscribe_with_receipt("/queue/durable", "s", "client-individual", &[]);
    let m = c.recv(TIMEOUT);
    assert_eq!(m.text(), "kept over tls");
    c.ack(m.header("ack").expect("ack header"));
    assert_eq!(c.try_recv(Duration::from_millis(300)), None, "extra frame");
    c.disconnect();
}

#[test]
fn database_refusing_plain_connections_is_reported() {
    let certs = Certs::new();
    let (_db, url) = tls_only_mariadb(&certs);
    let mut b = Broker::spawn_with_name("plain-to-tls-db", &url, &[]);
    // MariaDB answers a plain connection with its "Access denied": the broker adds the hint.
    let line = b.wait_for_log("add require_ssl=true to the datastore URL", TIMEOUT);
    assert!(line.contains("Access denied"), "{line}");
    assert_eq!(b.count_log(PLAIN_LISTENING), 0);
    b.sigterm();
    assert_eq!(b.wait_exit(TIMEOUT).and_then(|s| s.code()), Some(0));

    // Trusting another CA (of the same name): the certificate check fails, and says so.
    let stranger = Certs::new();
    let wrong_ca = format!(
        "{url}?root_cert_path={}&prefer_socket=false",
        stranger.path_str("ca.pem")
    );
    let mut b = Broker::spawn_with_name("wrong-ca", &wrong_ca, &[]);
    b.wait_for_log("invalid peer certificate", TIMEOUT);
    b.sigterm();
    assert_eq!(b.wait_exit(TIMEOUT).and_then(|s| s.code()), Some(0));
}

#[test]
fn tls_client_may_send_a_burst_without_reading_while_subscribed() {
    // The broker must go on reading while its writes to this client are blocked (the client
    // reads nothing until it has sent everything), as over plain TCP.
    let certs = Certs::new();
    let url = shared_mariadb().create_database();
    let b = tls_broker("tls-burst", &url, &certs.broker_env());
    let mut c = Client::connect_tls(b.stomp_tls_port(), &certs.ca_pem);
    c.subscribe_with_receipt("/queue/burst", "s", "auto", &[]);
    let count = 10000;
    let body = |i: usize| format!("{i:05}-{}", "x".repeat(4000));
    for i in 0..count {
        c.send_frame(
            "SEND",
            &[("destination", "/queue/burst"), ("persistent", "false")],
            body(i).as_bytes(),
        );
    }
    for i in 0..count {
        let m = c.recv(TIMEOUT);
        assert_eq!(m.command, "MESSAGE");
        assert_eq!(m.text(), body(i), "message {i} out of order or changed");
    }
    assert_eq!(c.try_recv(Duration::from_millis(300)), None, "extra frame");
    c.disconnect();
}
