//! What survives a broker's death: receipted messages survive kill -9 and come back in order
//! with `redelivered:true`; acked ones do not come back; durable subscriptions, priorities and
//! redelivery counts survive; a graceful stop (SIGTERM) exits 0 and loses nothing.

mod common;

use common::{shared_mariadb, Broker, Client, Frame, TIMEOUT};
use mysql::prelude::Queryable;
use std::time::Duration;

const SHORT: Duration = Duration::from_millis(300);

fn texts(frames: &[Frame]) -> Vec<String> {
    frames.iter().map(Frame::text).collect()
}

#[test]
fn receipted_messages_survive_kill_9_and_acked_ones_do_not_return() {
    let url = shared_mariadb().create_database();
    let mut b = Broker::start(&url, &[]);
    let mut p = Client::connect(b.stomp_port());
    for i in 0..100 {
        p.send_with_receipt("/queue/safe", format!("m{i}"), &[]);
    }
    let mut c = Client::connect(b.stomp_port());
    c.subscribe("/queue/safe", "s", "client-individual", &[]);
    let first: Vec<Frame> = (0..10).map(|_| c.recv(TIMEOUT)).collect();
    for m in &first {
        c.send_frame_with_receipt("ACK", &[("id", m.header("ack").unwrap())], b"");
    }
    // Delivered but not acked: m10 is in flight when the broker dies.
    let in_flight = c.recv(TIMEOUT);
    assert_eq!(in_flight.text(), "m10");
    b.kill9();

    let b = Broker::start(&url, &[]);
    b.wait_for_log("recovered 90 messages in 1 destinations", TIMEOUT);
    let mut c = Client::connect(b.stomp_port());
    c.subscribe("/queue/safe", "s", "client-individual", &[]);
    let rest: Vec<Frame> = (0..90).map(|_| c.recv(TIMEOUT)).collect();
    let expected: Vec<String> = (10..100).map(|i| format!("m{i}")).collect();
    assert_eq!(texts(&rest), expected);
    assert!(rest.iter().all(|m| m.header("redelivered") == Some("true")));
    assert!(c.try_recv(SHORT).is_none(), "an acked message came back");
}

#[test]
fn priorities_durables_and_redelivery_counts_survive_restart() {
    let url = shared_mariadb().create_database();
    let mut b = Broker::start(&url, &[]);
    let port = b.stomp_port();
    let login = [
        ("accept-version", "1.2"),
        ("login", "guest"),
        ("passcode", "guest"),
        ("client-id", "c1"),
    ];
    let durable = [("activemq.subscriptionName", "keep")];
    let (mut d, _) = Client::connect_with(port, &login);
    d.subscribe_with_receipt("/topic/t", "s", "client-individual", &durable);
    d.disconnect();
    let mut p = Client::connect(port);
    p.send_with_receipt("/queue/p", "low", &[("priority", "1")]);
    p.send_with_receipt("/queue/p", "high", &[("priority", "8")]);
    p.send_with_receipt("/topic/t", "kept", &[]);
    let mut c = Client::connect(port);
    c.subscribe(
        "/queue/p",
        "s",
        "client-individual",
        &[("activemq.prefetchSize", "1")],
    );
    let m = c.recv(TIMEOUT);
    assert_eq!(m.text(), "high");
    c.send_frame_with_receipt("NACK", &[("id", m.header("ack").unwrap())], b"");
    let again = c.recv(TIMEOUT);
    assert_eq!(again.header("redelivery-count"), Some("1"));
    // The NACK's RECEIPT came after its count was committed; the second delivery, unacked at
    // the crash, is not counted.
    b.kill9();

    let b = Broker::start(&url, &[]);
    let port = b.stomp_port();
    let mut c = Client::connect(port);
    c.subscribe("/queue/p", "s", "client-individual", &[]);
    let got: Vec<Frame> = (0..2).map(|_| c.recv(TIMEOUT)).collect();
    assert_eq!(texts(&got), ["high", "low"]);
    assert_eq!(got[0].header("redelivery-count"), Some("1"));
    assert_eq!(got[1].header("redelivery-count"), Some("0"));
    let (mut d, _) = Client::connect_with(port, &login);
    d.subscribe("/topic/t", "s", "client-individual", &durable);
    assert_eq!(d.recv(TIMEOUT).text(), "kept");
    assert!(d.try_recv(SHORT).is_none());
}

#[test]
fn sigterm_stops_cleanly_and_keeps_everything() {
    let url = shared_mariadb().create_database();
    let mut b = Broker::start(&url, &[]);
    let mut p = Client::connect(b.stomp_port());
    for i in 0..20 {
        p.send_with_receipt("/queue/term", format!("{i}"), &[]);
    }
    b.sigterm();
    let status = b
        .wait_exit(TIMEOUT)
        .expect("no exit within 10 s of SIGTERM");
    assert_eq!(status.code(), Some(0));
    b.wait_for_log("shutting down", TIMEOUT);
    assert!(
        p.recv_eof(TIMEOUT),
        "client connection not closed on shutdown"
    );

    let b = Broker::start(&url, &[]);
    let mut c = Client::connect(b.stomp_port());
    c.subscribe("/queue/term", "s", "auto", &[]);
    let got: Vec<Frame> = (0..20).map(|_| c.recv(TIMEOUT)).collect();
    let expected: Vec<String> = (0..20).map(|i| i.to_string()).collect();
    assert_eq!(texts(&got), expected);
    assert!(c.try_recv(SHORT).is_none());
}

#[test]
fn many_producers_group_commit_loses_nothing() {
    let url = shared_mariadb().create_database();
    let b = Broker::start(&url, &[]);
    let port = b.stomp_port();
    let producers: Vec<_> = (0..8)
        .map(|p| {
            std::thread::spawn(move || {
                let mut c = Client::connect(port);
                for i in 0..100 {
                    c.send_with_receipt("/queue/gc", format!("{p}:{i}"), &[]);
                }
            })
        })
        .collect();
    for t in producers {
        t.join().expect("producer panicked");
    }
    let mut c = Client::connect(port);
    c.subscribe("/queue/gc", "s", "client-individual", &[]);
    let got: Vec<Frame> = (0..800).map(|_| c.recv(TIMEOUT)).collect();
    assert!(c.try_recv(SHORT).is_none(), "extra message");
    // Every message exactly once, and each producer's messages in its own order.
    for p in 0..8 {
        let mine: Vec<String> = texts(&got)
            .into_iter()
            .filter(|t| t.starts_with(&format!("{p}:")))
            .collect();
        let expected: Vec<String> = (0..100).map(|i| format!("{p}:{i}")).collect();
        assert_eq!(mine, expected, "producer {p}");
    }
}

/// The writer assigns message ids itself and writes a batch as multi-row INSERTs: a transaction
/// of 70 SENDs (more rows than one statement takes, bodies past its byte bound) comes back whole
/// and in order after kill -9, and ids are never handed out twice, not even after the message
/// with the highest id was acknowledged (deleted) and the broker restarted.
#[test]
fn big_batches_survive_and_message_ids_are_never_reused() {
    let url = shared_mariadb().create_database();
    let mut b = Broker::start(&url, &[]);
    let body = |i: usize| format!("{i:04}:{}", "x".repeat(20_000));
    let mut p = Client::connect(b.stomp_port());
    p.send_frame("BEGIN", &[("transaction", "t")], b"");
    for i in 0..70 {
        p.send_frame(
            "SEND",
            &[
                ("destination", "/queue/big"),
                ("transaction", "t"),
                ("persistent", "true"),
            ],
            body(i).as_bytes(),
        );
    }
    p.send_frame_with_receipt("COMMIT", &[("transaction", "t")], b"");
    p.send_with_receipt("/queue/gone", "last", &[]);
    let mut c = Client::connect(b.stomp_port());
    c.subscribe("/queue/gone", "g", "client-individual", &[]);
    let gone = c.recv(TIMEOUT);
    let mut seen = vec![gone.header("message-id").unwrap().to_string()];
    c.send_frame_with_receipt("ACK", &[("id", gone.header("ack").unwrap())], b"");
    b.kill9();

    let b = Broker::start(&url, &[]);
    b.wait_for_log("recovered 70 messages in 1 destinations", TIMEOUT);
    let mut c = Client::connect(b.stomp_port());
    c.subscribe("/queue/big", "s", "auto", &[]);
    let got: Vec<Frame> = (0..70).map(|_| c.recv(TIMEOUT)).collect();
    let expected: Vec<String> = (0..70).map(body).collect();
    assert_eq!(texts(&got), expected);
    assert!(c.try_recv(SHORT).is_none(), "extra message");
    seen.extend(
        got.iter()
            .map(|m| m.header("message-id").unwrap().to_string()),
    );
    let mut p = Client::connect(b.stomp_port());
    p.send_with_receipt("/queue/gone", "new", &[]);
    c.subscribe("/queue/gone", "g", "auto", &[]);
    let new = c.recv(TIMEOUT);
    assert_eq!(new.text(), "new");
    let new_id = new.header("message-id").unwrap().to_string();
    assert!(!seen.contains(&new_id), "id {new_id} was handed out twice");
}

/// A lone producer's SEND is one self-fencing INSERT ... SELECT (see store::apply): bodies of
/// every size, in any order, are stored and delivered exactly.
#[test]
fn single_sends_of_every_size_are_stored_exactly() {
    let db = shared_mariadb();
    let url = db.create_database();
    let b = Broker::start(&url, &[]);
    let sizes = [5, 70_000, 0, 1, 300_000, 3, 1_048_576, 12];
    let body =
        |i: usize, n: usize| -> Vec<u8> { (0..n).map(|k| b'a' + ((i + k) % 26) as u8).collect() };
    let mut p = Client::connect(b.stomp_port());
    for (i, &n) in sizes.iter().enumerate() {
        p.send_with_receipt("/queue/sizes", body(i, n), &[]);
    }
    let mut root = db.root_conn();
    root.query_drop(format!("USE `{}`", url.rsplit('/').next().unwrap()))
        .unwrap();
    let stored: Vec<u64> = root
        .query("SELECT LENGTH(body) FROM hamq_messages ORDER BY id")
        .unwrap();
    let expected: Vec<u64> = sizes.iter().map(|&n| n as u64).collect();
    assert_eq!(stored, expected);
    let mut c = Client::connect(b.stomp_port());
    c.subscribe("/queue/sizes", "s", "auto", &[]);
    for (i, &n) in sizes.iter().enumerate() {
        let m = c.recv(TIMEOUT);
        assert!(
            m.body == body(i, n),
            "message {i} ({n} bytes) came back as {m:?}"
        );
    }
    assert!(c.try_recv(SHORT).is_none(), "extra message");
}

/// The store connection idles out after the lease unless it sees a transaction: a steady
/// stream of non-persistent messages (nothing to write, but never an idle moment for the
/// writer either) must not let it. After twice the lease of such traffic a persistent SEND
/// is still receipted and the broker is still master.
#[test]
fn non_persistent_traffic_keeps_the_store_connection_alive() {
    let url = shared_mariadb().create_database();
    let b = Broker::start(&url, &[("HAMQ_LEASE", "2")]);
    let mut p = Client::connect(b.stomp_port());
    let until = std::time::Instant::now() + Duration::from_secs(4);
    let mut sent = 0;
    while std::time::Instant::now() < until {
        p.send_frame(
            "SEND",
            &[("destination", "/topic/chatter"), ("persistent", "false")],
            b"x",
        );
        sent += 1;
    }
    assert!(sent > 100, "only {sent} messages sent");
    p.send_with_receipt("/queue/after-chatter", "kept", &[]);
    let mut c = Client::connect(b.stomp_port());
    c.subscribe("/queue/after-chatter", "s", "auto", &[]);
    assert_eq!(c.recv(TIMEOUT).text(), "kept");
    assert_eq!(b.count_log("lost the lock"), 0);
}
