//! The slow-consumer policy: a client that stops reading while 100 MiB are sent its way does
//! not make the broker buffer without bound; it is disconnected after `slow_consumer_ms`, its
//! unacknowledged messages go to another consumer (none lost), and other clients carry on.

mod common;

use common::probe::rss_kib;
use common::{shared_mariadb, Broker, Client, TIMEOUT};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MIB: usize = 1024 * 1024;

#[test]
fn a_client_that_stops_reading_is_cut_off_and_loses_nothing() {
    let url = shared_mariadb().create_database();
    let env = [
        ("HAMQ_MEMORY_LIMIT", "8388608"),
        ("HAMQ_SLOW_CONSUMER_MS", "1000"),
    ];
    let b = Broker::start(&url, &env);
    let port = b.stomp_port();

    // Sample the broker's memory all along.
    let done = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (done, peak, pid) = (done.clone(), peak.clone(), b.pid());
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                peak.fetch_max(rss_kib(pid), Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    // Subscribes, then never reads again.
    let mut slow = Client::connect(port);
    slow.subscribe_with_receipt("/queue/slow", "s", "client-individual", &[]);

    let mut producer = Client::connect(port);
    let body = |i: usize| {
        let mut b = format!("{i:03}").into_bytes();
        b.resize(MIB, b'x');
        b
    };
    for i in 0..100 {
        producer.send_with_receipt("/queue/slow", body(i), &[]);
    }
    // Another client is served normally meanwhile.
    let mut other = Client::connect(port);
    other.send_with_receipt("/queue/other", "fine", &[]);
    other.subscribe("/queue/other", "o", "auto", &[]);
    assert_eq!(other.recv(TIMEOUT).text(), "fine");

    // A reader that keeps up gets all 100, including what the slow one held when cut off.
    let mut fresh = Client::connect(port);
    fresh.subscribe("/queue/slow", "f", "client-individual", &[]);
    let mut got = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while got.len() < 100 {
        assert!(
            Instant::now() < deadline,
            "only {} of 100 arrived",
            got.len()
        );
        if let Some(m) = fresh.try_recv(Duration::from_secs(1)) {
            assert_eq!(m.body.len(), MIB);
            got.insert(String::from_utf8_lossy(&m.body[..3]).to_string());
            fresh.ack(m.header("ack").unwrap());
        }
    }
    done.store(true, Ordering::SeqCst);
    sampler.join().unwrap();
    let expected: BTreeSet<String> = (0..100).map(|i| format!("{i:03}")).collect();
    assert_eq!(got, expected);
    assert!(
        slow.recv_eof(TIMEOUT),
        "the slow consumer was not disconnected"
    );
    let peak_mib = peak.load(Ordering::SeqCst) / 1024;
    eprintln!("broker peak RSS while 100 MiB passed a stalled consumer: {peak_mib} MiB");
    // 8 MiB of bodies in memory, a page in flight, outboxes, and the debug build's baseline;
    // before paging respected the limit for consumers without room, this reached 128 MiB.
    assert!(peak_mib < 96, "broker RSS reached {peak_mib} MiB");
}
