//! STOMP behaviour of one broker over real sockets against a real MariaDB: negotiation, frames,
//! queues, topics, ack modes, prefetch, transactions, priority, expiry, redelivery, dead letters.
//! Each test gets its own database on the shared server and its own broker.

mod common;

use common::probe::{mapping_count, thread_count};
use common::{shared_mariadb, Broker, Client, Frame, TIMEOUT};
use mysql::prelude::Queryable;
use std::time::{Duration, Instant};

const SHORT: Duration = Duration::from_millis(300);

fn broker(extra: &[(&str, &str)]) -> Broker {
    let url = shared_mariadb().create_database();
    Broker::start(&url, extra)
}

fn bodies(frames: &[Frame]) -> Vec<String> {
    frames.iter().map(Frame::text).collect()
}

fn recv_n(client: &mut Client, n: usize) -> Vec<Frame> {
    (0..n).map(|_| client.recv(TIMEOUT)).collect()
}

fn ack_all(client: &mut Client, frames: &[Frame]) {
    for f in frames {
        client.ack(f.header("ack").expect("ack header"));
    }
}

#[test]
fn version_negotiation_and_connected_headers() {
    let b = broker(&[]);
    let port = b.stomp_port();
    for (offer, expected) in [
        (Some("1.0,1.1,1.2"), "1.2"),
        (Some("1.1"), "1.1"),
        (Some("1.0"), "1.0"),
        (None, "1.0"),
    ] {
        let mut headers = vec![("login", "guest"), ("passcode", "guest")];
        if let Some(offer) = offer {
            headers.push(("accept-version", offer));
        }
        let (_, reply) = Client::connect_with(port, &headers);
        assert_eq!(reply.command, "CONNECTED", "{reply:?}");
        assert_eq!(reply.header("version"), Some(expected));
        assert!(reply.header("server").unwrap().starts_with("hamq/"));
        assert!(reply.header("session").is_some());
        assert_eq!(reply.header("heart-beat"), Some("1000,1000"));
    }
    let (mut c, reply) = Client::connect_with(port, &[("accept-version", "3.0")]);
    assert_eq!(reply.command, "ERROR");
    assert!(reply.header("message").unwrap().contains("1.0,1.1,1.2"));
    assert!(c.recv_eof(TIMEOUT));
}

#[test]
fn queue_message_headers_and_binary_body() {
    let b = broker(&[]);
    let mut c = Client::connect(b.stomp_port());
    let body = b"bin\0ary\nbody".to_vec();
    c.send_with_receipt(
        "/queue/h",
        &body,
        &[
            ("priority", "6"),
            ("correlation-id", "c-1"),
            ("reply-to", "/queue/r"),
            ("type", "t"),
            ("x-custom", "a:b\\c"),
        ],
    );
    c.subscribe_with_receipt("/queue/h", "s1", "auto", &[]);
    let m = c.recv(TIMEOUT);
    assert_eq!(m.command, "MESSAGE");
    assert_eq!(m.body, body);
    assert_eq!(m.header("content-length"), Some("12"));
    assert_eq!(m.header("destination"), Some("/queue/h"));
    assert_eq!(m.header("subscription"), Some("s1"));
    assert_eq!(m.header("persistent"), Some("true"));
    assert_eq!(m.header("priority"), Some("6"));
    assert_eq!(m.header("correlation-id"), Some("c-1"));
    assert_eq!(m.header("reply-to"), Some("/queue/r"));
    assert_eq!(m.header("type"), Some("t"));
    assert_eq!(m.header("x-custom"), Some("a:b\\c"));
    assert_eq!(m.header("redelivered"), None);
    assert!(m.header("message-id").unwrap().parse::<u64>().is_ok());
    assert!(m.header("timestamp").unwrap().parse::<u64>().unwrap() > 0);
    assert_eq!(m.header("expires"), Some("0"));
}

#[test]
fn thousand_messages_keep_their_order() {
    let b = broker(&[]);
    let mut producer = Client::connect(b.stomp_port());
    for i in 0..1000 {
        producer.send("/queue/order", format!("m{i}"));
    }
    producer.disconnect();
    let mut consumer = Client::connect(b.stomp_port());
    consumer.subscribe("/queue/order", "s", "client-individual", &[]);
    let got = recv_n(&mut consumer, 1000);
    ack_all(&mut consumer, &got);
    let expected: Vec<String> = (0..1000).map(|i| format!("m{i}")).collect();
    assert_eq!(bodies(&got), expected);
    assert!(
        consumer.try_recv(SHORT).is_none(),
        "an extra message arrived"
    );
}

#[test]
fn priority_orders_waiting_messages() {
    let b = broker(&[]);
    let mut c = Client::connect(b.stomp_port());
    for (body, prio) in [("a", "4"), ("b", "9"), ("c", "0"), ("d", "9"), ("e", "4")] {
        c.send_with_receipt("/queue/prio", body, &[("priority", prio)]);
    }
    c.subscribe("/queue/prio", "s", "auto", &[]);
    let got = recv_n(&mut c, 5);
    assert_eq!(bodies(&got), ["b", "d", "a", "e", "c"]);
}

#[test]
fn expired_messages_are_never_delivered() {
    let b = broker(&[]);
    let mut c = Client::connect(b.stomp_port());
    let past = "1000";
    c.send_with_receipt("/queue/exp", "old", &[("expires", past)]);
    c.send_with_receipt("/queue/exp", "fresh", &[("expires", "0")]);
    c.subscribe("/queue/exp", "s", "auto", &[]);
    assert_eq!(c.recv(TIMEOUT).text(), "fresh");
    assert!(c.try_recv(SHORT).is_none());
}

#[test]
fn competing_consumers_share_a_queue_round_robin() {
    let b = broker(&[]);
    let port = b.stomp_port();
    let mut c1 = Client::connect(port);
    let mut c2 = Client::connect(port);
    c1.subscribe_with_receipt("/queue/rr", "a", "client-individual", &[]);
    c2.subscribe_with_receipt("/queue/rr", "b", "client-individual", &[]);
    let mut p = Client::connect(port);
    for i in 0..10 {
        p.send_with_receipt("/queue/rr", format!("{i}"), &[]);
    }
    let got1 = recv_n(&mut c1, 5);
    let got2 = recv_n(&mut c2, 5);
    assert_eq!(bodies(&got1), ["0", "2", "4", "6", "8"]);
    assert_eq!(bodies(&got2), ["1", "3", "5", "7", "9"]);
    assert!(c1.try_recv(SHORT).is_none() && c2.try_recv(SHORT).is_none());
}

#[test]
fn topics_fan_out_to_every_subscriber() {
    let b = broker(&[]);
    let port = b.stomp_port();
    let mut subs: Vec<Client> = (0..3).map(|_| Client::connect(port)).collect();
    for (i, s) in subs.iter_mut().enumerate() {
        s.subscribe_with_receipt("/topic/news", &format!("t{i}"), "auto", &[]);
    }
    let mut p = Client::connect(port);
    for i in 0..5 {
        p.send_with_receipt("/topic/news", format!("n{i}"), &[]);
    }
    for s in &mut subs {
        assert_eq!(bodies(&recv_n(s, 5)), ["n0", "n1", "n2", "n3", "n4"]);
        assert!(s.try_recv(SHORT).is_none());
    }
}

#[test]
fn durable_subscription_keeps_messages_while_away_and_unsubscribe_removes_it() {
    let b = broker(&[]);
    let port = b.stomp_port();
    let durable = [("activemq.subscriptionName", "d1")];
    let login = [
        ("accept-version", "1.2"),
        ("login", "guest"),
        ("passcode", "guest"),
        ("client-id", "app"),
    ];
    let (mut c, _) = Client::connect_with(port, &login);
    c.subscribe_with_receipt("/topic/dur", "s", "client-individual", &durable);
    c.disconnect();
    let mut p = Client::connect(port);
    for i in 0..3 {
        p.send_with_receipt("/topic/dur", format!("d{i}"), &[]);
    }
    let (mut c, _) = Client::connect_with(port, &login);
    c.subscribe_with_receipt("/topic/dur", "s", "client-individual", &durable);
    let got = recv_n(&mut c, 3);
    assert_eq!(bodies(&got), ["d0", "d1", "d2"]);
    ack_all(&mut c, &got);
    c.send_frame_with_receipt(
        "UNSUBSCRIBE",
        &[("id", "s"), ("activemq.subscriptionName", "d1")],
        b"",
    );
    p.send_with_receipt("/topic/dur", "after", &[]);
    c.subscribe_with_receipt("/topic/dur", "s2", "auto", &[]);
    assert!(
        c.try_recv(SHORT).is_none(),
        "removed durable still got messages"
    );
}

#[test]
fn client_ack_is_cumulative_and_unacked_return_on_disconnect() {
    let b = broker(&[]);
    let port = b.stomp_port();
    let mut p = Client::connect(port);
    for i in 0..4 {
        p.send_with_receipt("/queue/cum", format!("{i}"), &[]);
    }
    let mut c = Client::connect(port);
    c.subscribe("/queue/cum", "s", "client", &[]);
    let got = recv_n(&mut c, 4);
    // Acking the third acks the first three; the fourth comes back, marked redelivered.
    c.send_frame_with_receipt("ACK", &[("id", got[2].header("ack").unwrap())], b"");
    c.disconnect();
    let mut c = Client::connect(port);
    c.subscribe("/queue/cum", "s", "client-individual", &[]);
    let again = c.recv(TIMEOUT);
    assert_eq!(again.text(), "3");
    assert_eq!(again.header("redelivered"), Some("true"));
    assert_eq!(again.header("redelivery-count"), Some("1"));
    assert!(c.try_recv(SHORT).is_none());
}

#[test]
fn prefetch_limits_unacknowledged_deliveries() {
    let b = broker(&[]);
    let port = b.stomp_port();
    let mut p = Client::connect(port);
    for i in 0..5 {
        p.send_with_receipt("/queue/pf", format!("{i}"), &[]);
    }
    let mut c = Client::connect(port);
    c.subscribe(
        "/queue/pf",
        "s",
        "client-individual",
        &[("activemq.prefetchSize", "2")],
    );
    let first = recv_n(&mut c, 2);
    assert!(c.try_recv(SHORT).is_none(), "prefetch 2 exceeded");
    c.ack(first[0].header("ack").unwrap());
    assert_eq!(c.recv(TIMEOUT).text(), "2");
    assert!(c.try_recv(SHORT).is_none());
}

#[test]
fn nack_redelivers_then_dead_letters_after_max_redeliveries() {
    let b = broker(&[("HAMQ_MAX_REDELIVERIES", "2")]);
    let mut c = Client::connect(b.stomp_port());
    c.send_with_receipt("/queue/poison", "bad", &[("x-id", "7")]);
    c.subscribe("/queue/poison", "s", "client-individual", &[]);
    for delivery in 0..3 {
        let m = c.recv(TIMEOUT);
        assert_eq!(m.text(), "bad");
        let expected = (delivery > 0).then(|| delivery.to_string());
        assert_eq!(m.header("redelivery-count").map(str::to_string), expected);
        c.nack(m.header("ack").unwrap());
    }
    assert!(
        c.try_recv(SHORT).is_none(),
        "delivered more than 1 + max_redeliveries times"
    );
    c.subscribe("/queue/DLQ.poison", "dlq", "client-individual", &[]);
    let dead = c.recv(TIMEOUT);
    assert_eq!(dead.text(), "bad");
    assert_eq!(dead.header("destination"), Some("/queue/DLQ.poison"));
    assert_eq!(dead.header("original-destination"), Some("/queue/poison"));
    assert_eq!(dead.header("x-id"), Some("7"));
    c.ack(dead.header("ack").unwrap());
}

#[test]
fn transactions_commit_atomically_and_abort_discards() {
    let b = broker(&[]);
    let port = b.stomp_port();
    let mut p = Client::connect(port);
    p.send_frame_with_receipt("BEGIN", &[("transaction", "t1")], b"");
    for body in ["x1", "x2"] {
        p.send_frame(
            "SEND",
            &[("destination", "/queue/tx"), ("transaction", "t1")],
            body.as_bytes(),
        );
    }
    p.send_frame_with_receipt("ABORT", &[("transaction", "t1")], b"");
    p.send_frame_with_receipt("BEGIN", &[("transaction", "t2")], b"");
    for body in ["y1", "y2"] {
        p.send_frame(
            "SEND",
            &[("destination", "/queue/tx"), ("transaction", "t2")],
            body.as_bytes(),
        );
    }
    let mut c = Client::connect(port);
    c.subscribe_with_receipt("/queue/tx", "s", "client-individual", &[]);
    assert!(c.try_recv(SHORT).is_none(), "uncommitted SEND delivered");
    p.send_frame_with_receipt("COMMIT", &[("transaction", "t2")], b"");
    let got = recv_n(&mut c, 2);
    assert_eq!(bodies(&got), ["y1", "y2"]);
    // Acks inside an aborted transaction give the messages back.
    c.send_frame_with_receipt("BEGIN", &[("transaction", "a")], b"");
    for m in &got {
        let ack = m.header("ack").unwrap();
        c.send_frame("ACK", &[("id", ack), ("transaction", "a")], b"");
    }
    c.send_frame_with_receipt("ABORT", &[("transaction", "a")], b"");
    let again = recv_n(&mut c, 2);
    assert_eq!(bodies(&again), ["y1", "y2"]);
    assert!(again
        .iter()
        .all(|m| m.header("redelivered") == Some("true")));
    c.send_frame_with_receipt("BEGIN", &[("transaction", "b")], b"");
    for m in &again {
        c.send_frame(
            "ACK",
            &[("id", m.header("ack").unwrap()), ("transaction", "b")],
            b"",
        );
    }
    c.send_frame_with_receipt("COMMIT", &[("transaction", "b")], b"");
    c.disconnect();
    let mut c = Client::connect(port);
    c.subscribe("/queue/tx", "s", "auto", &[]);
    assert!(c.try_recv(SHORT).is_none(), "committed ack undone");
}

#[test]
fn ack_addressing_of_stomp_1_0_and_1_1() {
    let b = broker(&[]);
    let port = b.stomp_port();
    let mut p = Client::connect(port);
    p.send_with_receipt("/queue/v", "one", &[]);
    p.send_with_receipt("/queue/v", "two", &[]);
    let (mut c11, _) = Client::connect_with(
        port,
        &[
            ("accept-version", "1.1"),
            ("login", "guest"),
            ("passcode", "guest"),
        ],
    );
    c11.subscribe(
        "/queue/v",
        "s",
        "client-individual",
        &[("activemq.prefetchSize", "1")],
    );
    let m = c11.recv(TIMEOUT);
    let id = m.header("message-id").unwrap().to_string();
    c11.send_frame_with_receipt("ACK", &[("message-id", &id), ("subscription", "s")], b"");
    c11.disconnect();
    let (mut c10, _) = Client::connect_with(port, &[("login", "guest"), ("passcode", "guest")]);
    c10.send_frame(
        "SUBSCRIBE",
        &[("destination", "/queue/v"), ("ack", "client")],
        b"",
    );
    let m = c10.recv(TIMEOUT);
    assert_eq!(m.text(), "two");
    let id = m.header("message-id").unwrap().to_string();
    c10.send_frame_with_receipt("ACK", &[("message-id", &id)], b"");
    c10.disconnect();
    let mut c = Client::connect(port);
    c.subscribe("/queue/v", "s", "auto", &[]);
    assert!(c.try_recv(SHORT).is_none());
}

#[test]
fn non_persistent_messages_are_routed_too() {
    let b = broker(&[]);
    let mut c = Client::connect(b.stomp_port());
    c.subscribe_with_receipt("/queue/np", "s", "client-individual", &[]);
    c.send_with_receipt("/queue/np", "volatile", &[("persistent", "false")]);
    let m = c.recv(TIMEOUT);
    assert_eq!(m.text(), "volatile");
    assert_eq!(m.header("persistent"), None);
    assert!(m.header("message-id").unwrap().starts_with("np-"));
    c.ack(m.header("ack").unwrap());
}

#[test]
fn heart_beats_both_ways() {
    let b = broker(&[
        ("HAMQ_HEARTBEAT_SEND_MS", "100"),
        ("HAMQ_HEARTBEAT_RECEIVE_MS", "200"),
    ]);
    let port = b.stomp_port();
    let hb = [
        ("accept-version", "1.2"),
        ("login", "guest"),
        ("passcode", "guest"),
    ];
    // The client wants beats every 100 ms: EOLs arrive although nothing else is sent.
    let (c, reply) = Client::connect_with(port, &[hb[0], hb[1], hb[2], ("heart-beat", "0,100")]);
    assert_eq!(reply.header("heart-beat"), Some("100,200"));
    let mut buf = [0u8; 16];
    use std::io::Read;
    c.stream().set_read_timeout(Some(TIMEOUT)).unwrap();
    let n = c.stream().read(&mut buf).unwrap();
    assert!(
        n > 0 && buf[..n].iter().all(|&b| b == b'\n'),
        "{:?}",
        &buf[..n]
    );
    // A client that promised beats every 200 ms and goes silent is closed after 2 intervals.
    let (mut silent, _) =
        Client::connect_with(port, &[hb[0], hb[1], hb[2], ("heart-beat", "200,0")]);
    let error = silent.recv(TIMEOUT);
    assert_eq!(error.command, "ERROR");
    assert!(error.header("message").unwrap().contains("heart-beat"));
    assert!(silent.recv_eof(TIMEOUT));
}

#[test]
fn bodies_beyond_the_memory_limit_are_paged_from_the_store() {
    // 16 KiB of bodies in memory: most of these 300 messages of 1 KiB wait in the store only.
    let b = broker(&[("HAMQ_MEMORY_LIMIT", "16384")]);
    let port = b.stomp_port();
    let mut p = Client::connect(port);
    let body = |i: usize| format!("{i:04}{}", "x".repeat(1020));
    for i in 0..300 {
        let prio = if i % 50 == 0 { "7" } else { "4" };
        p.send_with_receipt("/queue/deep", body(i), &[("priority", prio)]);
    }
    let mut c = Client::connect(port);
    c.subscribe(
        "/queue/deep",
        "s",
        "client-individual",
        &[("activemq.prefetchSize", "7")],
    );
    let mut got = Vec::new();
    for _ in 0..300 {
        let m = c.recv(TIMEOUT);
        c.ack(m.header("ack").unwrap());
        got.push(m.text());
    }
    let high: Vec<usize> = (0..300).filter(|i| i % 50 == 0).collect();
    let normal = (0..300).filter(|i| i % 50 != 0);
    let expected: Vec<String> = high.into_iter().chain(normal).map(body).collect();
    assert_eq!(got.len(), expected.len());
    assert!(got == expected, "paged messages out of order or altered");
    assert!(c.try_recv(SHORT).is_none());
}

#[test]
fn an_idle_pager_closes_its_connection_and_opens_one_for_the_next_page() {
    // Lease 10 s: the pager lets its connection go after 1 s without a request.
    let db = shared_mariadb();
    let url = db.create_database();
    let name = url.rsplit('/').next().unwrap().to_string();
    let connections = || -> u64 {
        let sql =
            format!("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = '{name}'");
        db.root_conn().query_first(sql).unwrap().unwrap()
    };
    let b = Broker::start(
        &url,
        &[("HAMQ_MEMORY_LIMIT", "16384"), ("HAMQ_LEASE", "10")],
    );
    let port = b.stomp_port();
    // The election's and the writer's; the pager connects when first asked.
    let before = connections();
    let mut p = Client::connect(port);
    let body = |i: usize| format!("{i:04}{}", "x".repeat(1020));
    for i in 0..200 {
        p.send_with_receipt("/queue/idlepager", body(i), &[]);
    }
    let mut c = Client::connect(port);
    c.subscribe("/queue/idlepager", "s", "client-individual", &[]);
    let mut got = Vec::new();
    let mut take = |c: &mut Client, n: usize| {
        for _ in 0..n {
            let m = c.recv(TIMEOUT);
            c.ack(m.header("ack").unwrap());
            got.push(m.text());
        }
    };
    // 16 KiB of memory: most of the first 100 were paged in.
    take(&mut c, 100);
    let deadline = Instant::now() + TIMEOUT;
    while connections() != before {
        assert!(Instant::now() < deadline, "the pager kept its connection");
        std::thread::sleep(Duration::from_millis(50));
    }
    take(&mut c, 100);
    let expected: Vec<String> = (0..200).map(body).collect();
    assert!(
        got == expected,
        "paged messages lost, altered or out of order"
    );
    assert!(c.try_recv(SHORT).is_none());
}

/// A connection gets its writer thread only when something must wait to be written: idle and
/// producing connections (their RECEIPTs written directly) have one thread, a subscriber and a
/// connection owed heart-beats two.
#[test]
fn a_connection_starts_its_writer_thread_only_when_it_needs_one() {
    let url = shared_mariadb().create_database();
    let b = Broker::start(&url, &[("HAMQ_HEARTBEAT_SEND_MS", "100")]);
    let port = b.stomp_port();
    let threads = || thread_count(b.pid());
    let until = |want: usize, what: &str| {
        let deadline = Instant::now() + TIMEOUT;
        while threads() != want {
            assert!(
                Instant::now() < deadline,
                "{what}: {} threads, not {want}",
                threads()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let base = threads();
    let idle: Vec<Client> = (0..10).map(|_| Client::connect(port)).collect();
    let mut p = Client::connect(port);
    for i in 0..50 {
        p.send_with_receipt("/queue/lazy", format!("m{i}"), &[]);
    }
    assert_eq!(threads(), base + 11, "10 idle connections and a producer");
    let mut c = Client::connect(port);
    c.subscribe("/queue/lazy", "s", "client-individual", &[]);
    for i in 0..50 {
        let m = c.recv(TIMEOUT);
        assert_eq!(m.text(), format!("m{i}"));
        c.ack(m.header("ack").unwrap());
    }
    assert_eq!(threads(), base + 13, "and a subscriber with its writer");
    let (beating, reply) = Client::connect_with(
        port,
        &[
            ("accept-version", "1.2"),
            ("login", "guest"),
            ("passcode", "guest"),
            ("heart-beat", "0,100"),
        ],
    );
    assert!(reply.header("heart-beat").unwrap().starts_with("100,"));
    until(
        base + 15,
        "and a connection owed heart-beats, with its writer",
    );
    drop((idle, p, c, beating));
    until(base, "all of them gone");
}

/// A connection that ends gives its threads' stacks back at once, not when the next connection
/// is accepted: after 100 clients connect and leave, with no one connecting after them, the
/// broker's memory mappings are back near where they were.
#[test]
fn ended_connections_leave_no_thread_stacks_behind() {
    let url = shared_mariadb().create_database();
    let b = Broker::start(&url, &[]);
    let maps = || mapping_count(b.pid());
    let before = maps();
    let mut clients: Vec<Client> = (0..100).map(|_| Client::connect(b.stomp_port())).collect();
    let open = maps();
    // A thread per idle connection, each a stack and a guard page at least: the count sees them.
    assert!(
        open >= before + 200,
        "{before} mappings before, {open} with 100 connections"
    );
    for c in &mut clients {
        c.disconnect();
    }
    drop(clients);
    // glibc keeps up to 40 MiB of stacks for reuse (~19 of 2 MiB); 100 kept would be 200+.
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let now = maps();
        if now <= before + 60 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{before} mappings before, {open} with 100 connections, still {now} after they ended"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn topic_subscriber_with_a_small_prefetch_gets_everything_as_it_acks() {
    let b = broker(&[]);
    let port = b.stomp_port();
    let mut c = Client::connect(port);
    c.subscribe_with_receipt(
        "/topic/slowack",
        "s",
        "client-individual",
        &[("activemq.prefetchSize", "1")],
    );
    let mut p = Client::connect(port);
    for i in 0..20 {
        p.send_with_receipt("/topic/slowack", format!("{i}"), &[]);
    }
    for i in 0..20 {
        let m = c.recv(TIMEOUT);
        assert_eq!(m.text(), i.to_string());
        assert!(
            c.try_recv(Duration::from_millis(20)).is_none(),
            "prefetch 1 exceeded"
        );
        c.ack(m.header("ack").unwrap());
    }
}

#[test]
fn durable_subscription_can_be_re_pointed_to_another_topic() {
    let b = broker(&[]);
    let port = b.stomp_port();
    let login = [
        ("accept-version", "1.2"),
        ("login", "guest"),
        ("passcode", "guest"),
        ("client-id", "rp"),
    ];
    let durable = [("activemq.subscriptionName", "d")];
    let (mut c, _) = Client::connect_with(port, &login);
    c.subscribe_with_receipt("/topic/a", "s", "auto", &durable);
    c.disconnect();
    let mut p = Client::connect(port);
    p.send_with_receipt("/topic/a", "old", &[]);
    let (mut c, _) = Client::connect_with(port, &login);
    c.subscribe_with_receipt("/topic/b", "s", "auto", &durable);
    // A second active subscriber of the same durable subscription is refused.
    let (mut twin, _) = Client::connect_with(port, &login);
    twin.send_frame(
        "SUBSCRIBE",
        &[
            ("destination", "/topic/b"),
            ("id", "x"),
            ("activemq.subscriptionName", "d"),
        ],
        b"",
    );
    let error = twin.recv(TIMEOUT);
    assert!(
        error.header("message").unwrap().contains("already active"),
        "{error:?}"
    );
    p.send_with_receipt("/topic/a", "ignored", &[]);
    p.send_with_receipt("/topic/b", "new", &[]);
    assert_eq!(c.recv(TIMEOUT).text(), "new");
    assert!(
        c.try_recv(SHORT).is_none(),
        "messages of the old topic arrived"
    );
}

#[test]
fn auto_acked_messages_are_removed_once_written() {
    let url = shared_mariadb().create_database();
    let mut b = Broker::start(&url, &[]);
    let port = b.stomp_port();
    let mut p = Client::connect(port);
    for i in 0..50 {
        p.send_with_receipt("/queue/auto", format!("{i}"), &[]);
    }
    let mut c = Client::connect(port);
    c.subscribe("/queue/auto", "s", "auto", &[]);
    let got = recv_n(&mut c, 50);
    assert_eq!(got.last().map(Frame::text), Some("49".to_string()));
    c.disconnect();
    b.sigterm();
    assert_eq!(b.wait_exit(TIMEOUT).and_then(|s| s.code()), Some(0));
    // Restarted on the same database: nothing consumed comes back.
    let b = Broker::start(&url, &[]);
    b.wait_for_log("recovered 0 messages", TIMEOUT);
}
