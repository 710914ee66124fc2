//! Master/slave on a primary with a replica behind a TCP proxy (as a VIP or HAProxy is): the
//! database fails over (the primary is killed, the replica promoted, the proxy switched), both
//! brokers reconnect through the proxy and exactly one becomes master on the promoted replica.
//! With semi-synchronous replication (AFTER_SYNC) nothing receipted is lost; with asynchronous
//! replication the database itself may lose committed rows, and the test reports how many
//! receipted messages went with them. A broker never becomes master on a read-only server.

mod common;

use common::{poll, Broker, Load, MariaDb, Pair, Proxy, STEP, TIMEOUT};
use mysql::prelude::Queryable;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A primary and a replica of it (GTID), semi-synchronous or not.
struct Replicated {
    primary: MariaDb,
    replica: MariaDb,
}

fn start(semi_sync: bool) -> Replicated {
    let binlog = |id: &str| {
        vec![
            "--log-bin=binlog".to_string(),
            format!("--server-id={id}"),
            "--binlog-format=ROW".to_string(),
            "--log-slave-updates".to_string(),
        ]
    };
    let primary = MariaDb::start_with_args(&binlog("1"));
    let mut replica_args = binlog("2");
    replica_args.push("--read-only=ON".to_string());
    let replica = MariaDb::start_with_args(&replica_args);
    let mut p = primary.root_conn();
    let mut r = replica.root_conn();
    if semi_sync {
        p.query_drop(
            "SET GLOBAL rpl_semi_sync_master_enabled = ON, \
             rpl_semi_sync_master_wait_point = AFTER_SYNC, \
             rpl_semi_sync_master_timeout = 60000",
        )
        .expect("semi-sync on the primary");
        r.query_drop("SET GLOBAL rpl_semi_sync_slave_enabled = ON")
            .expect("semi-sync on the replica");
    }
    // Both were set up alike (users included): replicate what comes from now on.
    let position: String = p
        .query_first("SELECT @@gtid_binlog_pos")
        .expect("binlog position")
        .unwrap_or_default();
    r.query_drop(format!("SET GLOBAL gtid_slave_pos = '{position}'"))
        .expect("set the replica's position");
    r.query_drop(format!(
        "CHANGE MASTER TO MASTER_HOST = '127.0.0.1', MASTER_PORT = {}, MASTER_USER = 'root', \
         MASTER_USE_GTID = slave_pos",
        primary.port()
    ))
    .expect("CHANGE MASTER");
    r.query_drop("START SLAVE").expect("START SLAVE");
    let replicating = poll(TIMEOUT, Duration::from_millis(50), || {
        let clients: Option<(String, u64)> = p
            .query_first("SHOW GLOBAL STATUS LIKE 'Rpl_semi_sync_master_clients'")
            .ok()
            .flatten();
        let io: Option<mysql::Row> = r.query_first("SHOW SLAVE STATUS").ok().flatten();
        let running = io
            .and_then(|row| row.get::<String, _>("Slave_IO_Running"))
            .is_some_and(|v| v == "Yes");
        let semi_ok = !semi_sync || clients.is_some_and(|(_, n)| n == 1);
        (running && semi_ok).then_some(())
    });
    assert!(replicating.is_some(), "the replica does not replicate");
    Replicated { primary, replica }
}

fn addr_of(db: &MariaDb) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], db.port()))
}

/// The database's failover: the primary dies, the replica is promoted, the proxy switched.
fn fail_over(set: &mut Replicated, proxy: &Proxy) {
    set.primary.kill9();
    let mut r = set.replica.root_conn();
    for statement in [
        "STOP SLAVE",
        "RESET SLAVE ALL",
        "SET GLOBAL read_only = OFF",
    ] {
        r.query_drop(statement).expect("promote the replica");
    }
    proxy.switch(addr_of(&set.replica));
}

/// Brokers through the proxy, load, the database's failover; exactly one master after it.
fn failover_through_the_proxy(semi_sync: bool) -> common::Outcome {
    let mut set = start(semi_sync);
    let proxy = Proxy::start(addr_of(&set.primary));
    let db = set.primary.create_database();
    let name = db.rsplit('/').next().expect("a database name").to_string();
    let url = format!("mysql://hamq:hamq@127.0.0.1:{}/{name}", proxy.port());
    let mut pair = Pair::start(&url);
    let connected = pair.broker(0).wait_for_log("datastore connected", STEP);
    assert!(connected.contains("standalone, read-write"), "{connected}");
    let semi = if semi_sync {
        "semi-sync on"
    } else {
        "semi-sync off"
    };
    assert!(connected.contains(semi), "{connected}");
    assert_eq!(
        pair.broker(0)
            .count_log("semi-synchronous replication is off"),
        usize::from(!semi_sync)
    );
    let load = Load::start(pair.addrs());
    load.progress(300);
    let failed_over = Instant::now();
    fail_over(&mut set, &proxy);
    pair.broker(0).wait_for_log("lost the lock", STEP);
    pair.restart_after_exit(0, 1);
    let master = poll(STEP * 3, Duration::from_millis(20), || {
        (0..2).find(|&i| pair.broker(i).count_log("listening for STOMP") > 0)
    })
    .expect("no master on the promoted replica");
    println!(
        "replication (semi-sync {}): a master on the promoted replica after {:?}",
        if semi_sync { "on" } else { "off" },
        failed_over.elapsed()
    );
    let holder = format!("waiting for the lock (held by {}", pair.names[master]);
    pair.broker(1 - master).wait_for_log(&holder, STEP * 2);
    load.progress(300);
    load.stop_and_count()
}

#[test]
fn semi_sync_replica_promoted_behind_a_proxy_loses_nothing() {
    let outcome = failover_through_the_proxy(true);
    assert!(outcome.lost.is_empty(), "lost: {:?}", outcome.lost);
    assert!(outcome.violations.is_empty(), "{:?}", outcome.violations);
}

/// Asynchronous replication: the database itself can lose what it committed last. The test
/// asserts that the group recovers with one master and reports what the failover cost.
#[test]
fn async_replica_promoted_behind_a_proxy_reports_what_it_lost() {
    let outcome = failover_through_the_proxy(false);
    println!(
        "asynchronous replication: {} of {} receipted messages lost in the database's \
         failover; {} other anomalies (acked messages delivered again): {:?}",
        outcome.lost.len(),
        outcome.receipted,
        outcome.violations.len(),
        outcome.violations
    );
}

#[test]
fn no_master_on_a_read_only_server_until_it_is_writable() {
    let set = start(false);
    let db = set.primary.create_database();
    let name = db.rsplit('/').next().expect("a database name").to_string();
    // The database reaches the replica through replication; the broker connects to the replica.
    let replica_url = format!("mysql://hamq:hamq@127.0.0.1:{}/{name}", set.replica.port());
    let exists = poll(TIMEOUT, Duration::from_millis(20), || {
        let found: Option<String> = set
            .replica
            .root_conn()
            .exec_first(
                "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?",
                (&name,),
            )
            .ok()
            .flatten();
        found.map(|_| ())
    });
    assert!(exists.is_some(), "the database did not replicate");
    let mut broker = Broker::spawn_with_name("on-replica", &replica_url, &[]);
    let refused = broker.wait_for_log("not trying for the lock", STEP);
    assert!(refused.contains("read-only (read_only=ON)"), "{refused}");
    let connected = broker.wait_for_log("datastore connected", STEP);
    assert!(connected.contains("replica of 127.0.0.1:"), "{connected}");
    // Two more rechecks, still nothing: no port, no table created on the replica.
    broker.wait_for_log_time("not trying for the lock", STEP);
    assert_eq!(broker.count_log("listening for STOMP"), 0);
    let tables: Vec<String> = set
        .replica
        .root_conn()
        .exec(
            "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = ?",
            (&name,),
        )
        .expect("list tables");
    assert_eq!(tables, Vec::<String>::new());
    let mut r = set.replica.root_conn();
    for statement in [
        "STOP SLAVE",
        "RESET SLAVE ALL",
        "SET GLOBAL read_only = OFF",
    ] {
        r.query_drop(statement).expect("promote the replica");
    }
    broker.wait_for_log("listening for STOMP", STEP * 2);
    assert!(broker.wait_exit(Duration::ZERO).is_none());
}
