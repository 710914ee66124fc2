//! Producer flow control: when a queue reaches `max_queue_depth`, or the store falls behind,
//! SENDs wait instead of the broker's memory growing; once there is room again every message
//! arrives, in order, none lost, none extra.

mod common;

use common::probe::{metric, rss_kib};
use common::{free_port, poll, shared_mariadb, Broker, Client, TIMEOUT};
use mysql::prelude::Queryable;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const SHORT: Duration = Duration::from_millis(300);
const POLL: Duration = Duration::from_millis(20);

fn texts(frames: &[common::Frame]) -> Vec<String> {
    frames.iter().map(common::Frame::text).collect()
}

#[test]
fn a_full_queue_holds_its_producer_until_a_consumer_makes_room() {
    let url = shared_mariadb().create_database();
    let status = free_port().to_string();
    let status_addr = format!("127.0.0.1:{status}");
    let env = [
        ("HAMQ_MAX_QUEUE_DEPTH", "50"),
        ("HAMQ_STATUS_LISTEN", status_addr.as_str()),
    ];
    let b = Broker::start(&url, &env);
    let port = b.stomp_port();
    let status: u16 = status.parse().unwrap();

    // Receipt per SEND: the producer's progress is the number of receipts it got.
    let receipted = Arc::new(AtomicUsize::new(0));
    let producer = {
        let receipted = receipted.clone();
        std::thread::spawn(move || {
            let mut p = Client::connect(port);
            for i in 0..300 {
                p.send_with_receipt("/queue/limited", format!("m{i}"), &[]);
                receipted.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    // Another queue's producer is not held.
    let mut other = Client::connect(port);
    other.send_with_receipt("/queue/free", "free", &[]);

    poll(TIMEOUT, POLL, || {
        (metric(status, "hamq_flow_control_waits_total") >= 1).then_some(())
    })
    .expect("the producer of the full queue never waited");
    let held_at = receipted.load(Ordering::SeqCst);
    // The mark follows routing, so SENDs committed while the router catches up slip in.
    assert!(
        (50..=75).contains(&held_at),
        "the producer was held after {held_at} messages, the limit is 50"
    );
    // Still held: the queue is full and no one consumes.
    other.send_with_receipt("/queue/free", "free again", &[]);
    assert_eq!(receipted.load(Ordering::SeqCst), held_at);

    let mut c = Client::connect(port);
    c.subscribe("/queue/limited", "s", "client-individual", &[]);
    let mut got = Vec::new();
    for _ in 0..300 {
        let m = c.recv(TIMEOUT);
        c.ack(m.header("ack").unwrap());
        got.push(m);
    }
    producer.join().expect("producer panicked");
    let expected: Vec<String> = (0..300).map(|i| format!("m{i}")).collect();
    assert_eq!(texts(&got), expected);
    assert!(c.try_recv(SHORT).is_none(), "extra message");
    assert_eq!(receipted.load(Ordering::SeqCst), 300);
}

#[test]
fn a_stalled_store_slows_producers_and_memory_stays_bounded() {
    const MIB: usize = 1024 * 1024;
    const COUNT: usize = 1000;
    let db = shared_mariadb();
    let url = db.create_database();
    let status = free_port();
    let status_addr = format!("127.0.0.1:{status}");
    // A long lease: the store stalls for a moment here, well inside its read timeout.
    let env = [
        ("HAMQ_STATUS_LISTEN", status_addr.as_str()),
        ("HAMQ_LEASE", "30"),
    ];
    let b = Broker::start(&url, &env);
    let port = b.stomp_port();
    let base_kib = rss_kib(b.pid());

    // Stall the store: every write transaction's fencing check reads the epoch row in share
    // mode, so holding it exclusively stops the writer until we let go.
    let database = url.rsplit('/').next().unwrap().to_string();
    let mut blocker = db.root_conn();
    blocker.query_drop(format!("USE `{database}`")).unwrap();
    blocker.query_drop("BEGIN").unwrap();
    blocker
        .query_drop("SELECT epoch FROM hamq_epoch WHERE id = 1 FOR UPDATE")
        .unwrap();

    // 1000 SENDs of 64 KiB without receipts: 64 MiB, four times the store backlog budget.
    let body = |i: usize| {
        let mut b = format!("{i:04}").into_bytes();
        b.resize(64 * 1024, b'x');
        b
    };
    let sent = Arc::new(AtomicUsize::new(0));
    let producer = {
        let sent = sent.clone();
        std::thread::spawn(move || {
            let mut p = Client::connect(port);
            for i in 0..COUNT {
                p.send_frame(
                    "SEND",
                    &[("destination", "/queue/stall"), ("persistent", "true")],
                    &body(i),
                );
                sent.fetch_add(1, Ordering::SeqCst);
            }
            p.send_frame_with_receipt("DISCONNECT", &[], b"");
        })
    };
    poll(TIMEOUT, POLL, || {
        let backlog = metric(status, "hamq_store_backlog_bytes") as usize;
        let full = backlog + 64 * 1024 > 16 * MIB;
        (full && metric(status, "hamq_flow_control_waits_total") >= 1).then_some(())
    })
    .expect("the store backlog never filled up");
    let held_kib = rss_kib(b.pid());
    assert!(
        sent.load(Ordering::SeqCst) < COUNT,
        "the producer was never slowed down"
    );
    // The budget (16 MiB) plus what the socket buffers hold, not the 64 MiB sent.
    assert!(
        held_kib < base_kib + 40 * 1024,
        "broker RSS grew from {base_kib} KiB to {held_kib} KiB while the store stalled"
    );
    blocker.query_drop("ROLLBACK").unwrap();

    producer.join().expect("producer panicked");
    let sizes: Vec<(u64, u64)> = blocker
        .query("SELECT id, LENGTH(body) FROM hamq_messages ORDER BY id")
        .unwrap();
    let wrong: Vec<&(u64, u64)> = sizes.iter().filter(|(_, n)| *n != 64 * 1024).collect();
    assert!(
        sizes.len() == COUNT && wrong.is_empty(),
        "{} rows stored, these with the wrong size: {wrong:?}",
        sizes.len()
    );
    let mut c = Client::connect(port);
    c.subscribe("/queue/stall", "s", "auto", &[]);
    for i in 0..COUNT {
        let m = c.recv(TIMEOUT);
        assert!(
            m.body == body(i),
            "message {i}: {} bytes, starting {:?}, {m:?}",
            m.body.len(),
            String::from_utf8_lossy(&m.body[..m.body.len().min(8)]),
        );
    }
    assert!(c.try_recv(SHORT).is_none(), "extra message");
}

/// A topic subscriber that falls behind holds the topic's producers instead of being cut off:
/// 12,000 non-persistent messages (more than a subscriber may ever have waiting) reach a slow
/// subscriber and a fast one, all of them, in order.
#[test]
fn a_lagging_topic_subscriber_holds_the_producer_and_loses_nothing() {
    const COUNT: usize = 12_000;
    let url = shared_mariadb().create_database();
    let status = free_port();
    let status_addr = format!("127.0.0.1:{status}");
    let b = Broker::start(&url, &[("HAMQ_STATUS_LISTEN", status_addr.as_str())]);
    let port = b.stomp_port();

    // Client acks with a window of one: it gets nothing more until it acks.
    let mut slow = Client::connect(port);
    let window = [("activemq.prefetchSize", "1")];
    slow.subscribe_with_receipt("/topic/lag", "s", "client-individual", &window);
    // Subscribed before the producer starts: a topic keeps nothing for later subscribers.
    let mut fast = Client::connect(port);
    fast.subscribe_with_receipt("/topic/lag", "f", "auto", &[]);
    let fast = std::thread::spawn(move || {
        (0..COUNT)
            .map(|_| fast.recv(TIMEOUT).text())
            .collect::<Vec<_>>()
    });
    let producer = std::thread::spawn(move || {
        let mut p = Client::connect(port);
        for i in 0..COUNT {
            p.send_frame(
                "SEND",
                &[("destination", "/topic/lag"), ("persistent", "false")],
                format!("t{i}").as_bytes(),
            );
        }
        p.send_frame_with_receipt("DISCONNECT", &[], b"");
    });
    poll(TIMEOUT, POLL, || {
        (metric(status, "hamq_flow_control_waits_total") >= 1).then_some(())
    })
    .expect("the topic's producer was never held");

    let mut got = Vec::with_capacity(COUNT);
    for _ in 0..COUNT {
        let m = slow.recv(TIMEOUT);
        slow.ack(m.header("ack").unwrap());
        got.push(m.text());
    }
    producer.join().expect("producer panicked");
    let expected: Vec<String> = (0..COUNT).map(|i| format!("t{i}")).collect();
    assert!(
        got == expected,
        "the slow subscriber lost or reordered messages"
    );
    assert!(
        fast.join().expect("fast subscriber panicked") == expected,
        "the fast subscriber lost or reordered messages"
    );
    assert!(slow.try_recv(SHORT).is_none(), "extra message");
}
