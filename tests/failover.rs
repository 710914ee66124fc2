//! Master/slave over one database: two real brokers, two producers sending persistent messages
//! with a receipt each, one consumer acking each message (client-individual, with receipts), and
//! a probe that CONNECTs to both brokers all the time. Each test injects a fault and asserts:
//! zero receipted messages lost, zero acked messages redelivered, never two brokers answering
//! CONNECT at once, and a takeover within a (generous) bound. The test plays the supervisor:
//! a broker that exits is started again, as daemontools would.

mod common;

use common::{
    shared_mariadb, Broker, Client, Load, MariaDb, Pair, PAIR_LEASE, QUEUE, STEP, TIMEOUT,
};
use mysql::prelude::Queryable;
use std::time::{Duration, Instant};

#[test]
fn slave_opens_no_port_and_names_the_holder() {
    let url = shared_mariadb().create_database();
    let mut pair = Pair::start(&url);
    let slave_port = pair.port(1);
    assert!(Client::try_connect(slave_port, Duration::from_millis(300)).is_none());
    assert!(std::net::TcpStream::connect(("127.0.0.1", slave_port)).is_err());
    let log = pair
        .broker(0)
        .wait_for_log("acquired the lock (epoch 1)", STEP);
    assert!(log.contains("INFO"));
    assert_eq!(pair.broker(1).count_log("CREATE"), 0);
}

#[test]
fn kill_9_of_the_master() {
    let url = shared_mariadb().create_database();
    let mut pair = Pair::start(&url);
    let load = Load::start(pair.addrs());
    load.progress(200);
    pair.broker(0).kill9();
    let took = pair.await_master(1, STEP);
    eprintln!("takeover after kill -9: {took:?}");
    pair.broker(1)
        .wait_for_log("acquired the lock (epoch 2)", STEP);
    pair.spawn(0);
    pair.broker(0)
        .wait_for_log("waiting for the lock (held by beta", STEP);
    load.progress(200);
    load.finish();
}

#[test]
fn sigterm_of_the_master_hands_over_at_once() {
    let url = shared_mariadb().create_database();
    let mut pair = Pair::start(&url);
    let load = Load::start(pair.addrs());
    load.progress(200);
    pair.broker(0).sigterm();
    let took = pair.await_master(1, STEP);
    eprintln!("takeover after SIGTERM: {took:?}");
    pair.broker(0).wait_for_log("released the lock", STEP);
    pair.restart_after_exit(0, 0);
    load.progress(200);
    load.finish();
}

#[test]
fn frozen_master_loses_the_lock_and_steps_down_when_resumed() {
    let url = shared_mariadb().create_database();
    let mut pair = Pair::start(&url);
    let load = Load::start(pair.addrs());
    load.progress(200);
    pair.broker(0).sigstop();
    let took = pair.await_master(1, Duration::from_secs(3 + 5));
    eprintln!("takeover after SIGSTOP (lease {PAIR_LEASE} s): {took:?}");
    load.progress(200);
    pair.broker(0).sigcont();
    pair.broker(0).wait_for_log("lost the lock", STEP);
    pair.restart_after_exit(0, 1);
    pair.broker(0)
        .wait_for_log("waiting for the lock (held by beta", STEP);
    load.progress(200);
    load.finish();
}

#[test]
fn ping_pong_of_ten_failovers() {
    let url = shared_mariadb().create_database();
    let mut pair = Pair::start(&url);
    let load = Load::start(pair.addrs());
    for round in 0..10 {
        let (master, slave) = (round % 2, 1 - round % 2);
        load.progress(50);
        pair.broker(master).kill9();
        let took = pair.await_master(slave, STEP);
        eprintln!("round {round}: takeover {took:?}");
        pair.spawn(master);
        let holder = format!("waiting for the lock (held by {}", pair.names[slave]);
        pair.broker(master).wait_for_log(&holder, STEP);
    }
    load.progress(50);
    load.finish();
}

#[test]
fn database_restart_gives_exactly_one_master() {
    let mut db = MariaDb::start();
    let url = db.create_database();
    let mut pair = Pair::start(&url);
    let load = Load::start(pair.addrs());
    load.progress(200);
    db.kill9();
    pair.broker(0).wait_for_log("lost the lock", STEP);
    db.restart();
    pair.restart_after_exit(0, 1);
    // Exactly one of them becomes master; the other waits for it.
    let deadline = Instant::now() + STEP * 3;
    let master = loop {
        let listening: Vec<usize> = (0..2)
            .filter(|&i| pair.broker(i).count_log("listening for STOMP") > 0)
            .collect();
        if let Some(&i) = listening.last() {
            if i == 0 || pair.broker(1).count_log("listening for STOMP") > 0 {
                break i;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no master after the database restart"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let other = 1 - master;
    let holder = format!("waiting for the lock (held by {}", pair.names[master]);
    pair.broker(other).wait_for_log(&holder, STEP * 2);
    load.progress(200);
    load.finish();
}

#[test]
fn the_documented_privileges_are_enough() {
    use mysql::prelude::Queryable;
    let db = shared_mariadb();
    let url = db.create_database();
    let name = url.rsplit('/').next().unwrap().to_string();
    let user = format!("{name}_u");
    let mut root = db.root_conn();
    for host in ["127.0.0.1", "localhost"] {
        root.query_drop(format!("CREATE USER '{user}'@'{host}' IDENTIFIED BY 'pw'"))
            .unwrap();
        // Exactly the grant the README gives.
        root.query_drop(format!(
            "GRANT SELECT, INSERT, UPDATE, DELETE, CREATE ON `{name}`.* TO '{user}'@'{host}'"
        ))
        .unwrap();
    }
    let url = format!("mysql://{user}:pw@127.0.0.1:{}/{name}", db.port());
    let mut pair = Pair::start(&url);
    let mut c = Client::connect(pair.port(0));
    c.send_with_receipt(QUEUE, "kept", &[]);
    pair.broker(0).kill9();
    pair.await_master(1, STEP);
    let mut c = Client::connect(pair.port(1));
    c.subscribe(QUEUE, "s", "auto", &[]);
    assert_eq!(c.recv(STEP).text(), "kept");
}

/// Fencing without a second broker: once the epoch moved on (as a new master's takeover does),
/// neither a batch of SENDs (one self-fencing INSERT) nor a transaction with an ACK (the epoch
/// check first) writes anything: no RECEIPT, the broker stops saying it was deposed, and the
/// store holds exactly what it held before.
#[test]
fn a_moved_epoch_fences_sends_and_acks() {
    let db = shared_mariadb();
    let url = db.create_database();
    let database = url.rsplit('/').next().unwrap().to_string();
    let mut root = db.root_conn();
    root.query_drop(format!("USE `{database}`")).unwrap();
    let rows = |root: &mut mysql::Conn| -> Vec<String> {
        root.query("SELECT CAST(body AS CHAR) FROM hamq_messages ORDER BY id")
            .unwrap()
    };

    // SENDs: the single-INSERT path.
    let mut b = Broker::start(&url, &[]);
    let mut p = Client::connect(b.stomp_port());
    p.send_with_receipt("/queue/fence", "before", &[]);
    root.query_drop("UPDATE hamq_epoch SET epoch = epoch + 1 WHERE id = 1")
        .unwrap();
    let refused = p.try_with_receipt("SEND", &[("destination", "/queue/fence")], b"after", STEP);
    assert!(
        refused.is_err(),
        "a deposed master confirmed a SEND: {refused:?}"
    );
    let status = b.wait_exit(STEP).expect("the deposed broker did not stop");
    assert!(!status.success());
    assert!(b.count_log("deposed: the datastore's epoch is") > 0);
    assert_eq!(rows(&mut root), vec!["before".to_string()]);

    // An ACK: the transaction path.
    let mut b = Broker::start(&url, &[]);
    let mut c = Client::connect(b.stomp_port());
    c.subscribe("/queue/fence", "s", "client-individual", &[]);
    let m = c.recv(TIMEOUT);
    root.query_drop("UPDATE hamq_epoch SET epoch = epoch + 1 WHERE id = 1")
        .unwrap();
    let refused = c.try_with_receipt("ACK", &[("id", m.header("ack").unwrap())], b"", STEP);
    assert!(
        refused.is_err(),
        "a deposed master confirmed an ACK: {refused:?}"
    );
    let status = b.wait_exit(STEP).expect("the deposed broker did not stop");
    assert!(!status.success());
    assert!(b.count_log("deposed: the datastore's epoch is") > 0);
    assert_eq!(rows(&mut root), vec!["before".to_string()]);
}
