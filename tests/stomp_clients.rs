//! Rules outside STOMP clients rely on that a first reading of the spec gets wrong: a 1.0
//! UNSUBSCRIBE by destination, a NACK the broker cannot honour, and heart-beats that follow the
//! client's own offer (so a dead consumer's messages come back within seconds).

mod common;

use common::{shared_mariadb, Broker, Client, TIMEOUT};
use std::time::{Duration, Instant};

const SHORT: Duration = Duration::from_millis(300);

fn broker() -> Broker {
    Broker::start(&shared_mariadb().create_database(), &[])
}

fn connect_1_0(port: u16) -> Client {
    let (c, reply) = Client::connect_with(port, &[("login", "guest"), ("passcode", "guest")]);
    assert_eq!(reply.header("version"), Some("1.0"), "{reply:?}");
    c
}

#[test]
fn stomp_1_0_unsubscribe_by_destination_after_subscribing_with_an_id() {
    let b = broker();
    let port = b.stomp_port();
    let mut producer = Client::connect(port);
    let mut c = connect_1_0(port);
    c.send_frame_with_receipt(
        "SUBSCRIBE",
        &[
            ("destination", "/queue/u"),
            ("id", "sub-1"),
            ("ack", "auto"),
        ],
        b"",
    );
    producer.send_with_receipt("/queue/u", "one", &[]);
    assert_eq!(c.recv(TIMEOUT).text(), "one");
    c.send_frame_with_receipt("UNSUBSCRIBE", &[("destination", "/queue/u")], b"");
    producer.send_with_receipt("/queue/u", "two", &[]);
    assert!(c.try_recv(SHORT).is_none(), "still subscribed");
    let mut other = Client::connect(port);
    other.subscribe("/queue/u", "s", "auto", &[]);
    assert_eq!(other.recv(TIMEOUT).text(), "two");
    // Nothing subscribed there any more: an ERROR naming the destination.
    c.send_frame("UNSUBSCRIBE", &[("destination", "/queue/u")], b"");
    let error = c.recv(TIMEOUT);
    assert_eq!(error.command, "ERROR");
    assert_eq!(
        error.header("message"),
        Some("no subscription to `/queue/u` on this connection")
    );
    assert!(c.recv_eof(TIMEOUT));
}

/// Some clients ACK on auto subscriptions too: the ACK is accepted whether or not the broker
/// has already settled the delivery (it had closed such a client with "not awaiting
/// acknowledgement" once the write was done).
#[test]
fn ack_on_an_auto_subscription_gets_its_receipt() {
    let b = broker();
    let mut c = Client::connect(b.stomp_port());
    c.subscribe_with_receipt("/queue/a", "s", "auto", &[]);
    c.send_with_receipt("/queue/a", "first", &[]);
    let first = c.recv(TIMEOUT);
    // Once the second is delivered, the first is long written and settled.
    c.send_with_receipt("/queue/a", "second", &[]);
    assert_eq!(c.recv(TIMEOUT).text(), "second");
    let ack = first.header("ack").expect("an ack header").to_string();
    c.send_frame("ACK", &[("id", &ack), ("receipt", "r-ack")], b"");
    let reply = c.recv(TIMEOUT);
    assert_eq!(reply.command, "RECEIPT", "{reply:?}");
    assert_eq!(reply.header("receipt-id"), Some("r-ack"));
}

#[test]
fn nack_on_an_auto_subscription_is_an_error_not_a_receipt() {
    let b = broker();
    let port = b.stomp_port();
    let mut c = Client::connect(port);
    c.subscribe_with_receipt("/queue/n", "s", "auto", &[]);
    c.send_with_receipt("/queue/n", "auto-acked", &[]);
    let m = c.recv(TIMEOUT);
    let ack = m.header("ack").expect("an ack header").to_string();
    c.send_frame("NACK", &[("id", &ack), ("receipt", "r")], b"");
    let error = c.recv(TIMEOUT);
    assert_eq!(error.command, "ERROR", "{error:?}");
    assert_eq!(error.header("receipt-id"), Some("r"));
    let message = error.header("message").unwrap_or_default();
    assert!(message.contains("ack mode is auto"), "{message}");
    assert!(c.recv_eof(TIMEOUT));
    // It was consumed: nothing comes back.
    let mut other = Client::connect(port);
    other.subscribe("/queue/n", "s", "auto", &[]);
    assert!(other.try_recv(SHORT).is_none());
}

fn connect_beating(port: u16, heart_beat: &str) -> (Client, String) {
    let (c, reply) = Client::connect_with(
        port,
        &[
            ("accept-version", "1.2"),
            ("login", "guest"),
            ("passcode", "guest"),
            ("heart-beat", heart_beat),
        ],
    );
    assert_eq!(reply.command, "CONNECTED", "{reply:?}");
    let agreed = reply.header("heart-beat").unwrap_or_default().to_string();
    (c, agreed)
}

#[test]
fn heart_beats_follow_the_client_s_offer_and_a_dead_consumer_s_messages_return_in_seconds() {
    let b = broker();
    let port = b.stomp_port();
    // The broker asks for the client's own interval, never less than 1 s (the default floor).
    assert_eq!(connect_beating(port, "5000,0").1, "1000,5000");
    assert_eq!(connect_beating(port, "300,0").1, "1000,1000");
    assert_eq!(connect_beating(port, "0,0").1, "1000,1000");
    // A client that beats every 900 ms stays connected.
    let (mut alive, agreed) = connect_beating(port, "1000,0");
    assert_eq!(agreed, "1000,1000");
    let until = Instant::now() + Duration::from_millis(3500);
    while Instant::now() < until {
        alive.write_raw(b"\n");
        std::thread::sleep(Duration::from_millis(900));
    }
    alive.send_with_receipt("/queue/hb-alive", "still connected", &[]);
    // A consumer that promised beats every second, got a message and went silent.
    let (mut dead, _) = connect_beating(port, "1000,0");
    dead.subscribe_with_receipt("/queue/hb", "d", "client-individual", &[]);
    let silent_since = Instant::now();
    let mut producer = Client::connect(port);
    producer.send_with_receipt("/queue/hb", "unacknowledged", &[]);
    assert_eq!(dead.recv(TIMEOUT).text(), "unacknowledged");
    let mut other = Client::connect(port);
    other.subscribe_with_receipt("/queue/hb", "s", "client-individual", &[]);
    let back = other.recv(TIMEOUT);
    let took = silent_since.elapsed();
    assert_eq!(back.text(), "unacknowledged");
    assert_eq!(back.header("redelivered"), Some("true"));
    assert!(took < Duration::from_secs(5), "came back after {took:?}");
    // The dead consumer was told why, then closed.
    let error = dead.recv(TIMEOUT);
    assert_eq!(error.command, "ERROR", "{error:?}");
    assert_eq!(
        error.header("message"),
        Some("no heart-beat or frame from the client for 2000 ms")
    );
    assert!(dead.recv_eof(TIMEOUT));
}
