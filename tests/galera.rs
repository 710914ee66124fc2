//! Master/slave on a real 3-node MariaDB Galera cluster, the two brokers on different nodes: the
//! lease election (chosen by `election = auto`) gives exactly one master, fenced by
//! certification, through kills, stops, freezes, node losses, a node leaving the primary
//! component and a whole-cluster restart. During each fault two producers send persistent
//! messages with receipts and a consumer acks each (`common::Load`): zero receipted messages
//! lost, zero acked messages redelivered, never both brokers answering CONNECT, every
//! redelivery flagged, and the takeover within its bound (kill and SIGTERM under 1 s; freeze,
//! node loss and leaving the primary component under lease + 1 s).
//!
//! One cluster serves every case in turn, each on its own database (a cluster takes ~15 s to
//! start); the cases that take nodes down bring them back before the next.

mod common;

use common::probe::http;
use common::{free_port, Broker, Client, Galera, Load, NetNs, NodeSpec, Pair, Proxy, Side, STEP};
use mysql::prelude::Queryable;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The lease (seconds): longer than the cluster's 2 s to declare a killed node gone (the harness's
/// `evs.suspect_timeout`), as the default 10 s lease is longer than Galera's default 5 s; until
/// then the surviving nodes commit nothing.
const LEASE: &str = "4";

fn lease() -> Duration {
    Duration::from_secs(LEASE.parse().expect("a number"))
}

/// alpha on node 0 (master), beta on node 1 (waiting), on a fresh database.
fn pair_on(cluster: &Galera) -> Pair {
    let db = cluster.create_database();
    Pair::start_leased([cluster.url(0, &db), cluster.url(1, &db)], LEASE)
}

/// The time from `since` until broker `i` listens (its log line read), at most `bound`.
fn takeover(pair: &mut Pair, i: usize, since: Instant, bound: Duration) -> Duration {
    let at = pair
        .broker(i)
        .wait_for_log_time("listening for STOMP", bound);
    at.duration_since(since)
}

#[test]
fn master_slave_on_galera() {
    let mut cluster = Galera::start3();
    either_start_order_gives_one_master_that_stays(&cluster);
    kill_9_and_sigterm_of_the_master(&cluster);
    frozen_master(&cluster);
    loss_of_the_master_s_node(&mut cluster);
    master_s_node_leaves_the_primary_component(&cluster);
    whole_cluster_restart(&mut cluster);
    write_set_limits(&cluster);
    both_brokers_through_a_proxy(&cluster);
    drop(cluster);
    network_cut_of_the_master_s_node();
}

fn either_start_order_gives_one_master_that_stays(cluster: &Galera) {
    for first in [0, 1] {
        let db = cluster.create_database();
        let sides = [cluster.url(first, &db), cluster.url(1 - first, &db)];
        let mut pair = Pair::unstarted(sides.map(|url| Side::local(&url)), LEASE);
        pair.spawn(0);
        pair.broker(0).stomp_port();
        pair.spawn(1);
        pair.broker(1)
            .wait_for_log("waiting for the lock (held by alpha", STEP);
        let connected = pair.broker(0).wait_for_log("datastore connected", STEP);
        assert!(connected.contains("Galera node"), "{connected}");
        assert_eq!(pair.broker(0).count_log("took the lease (term"), 1);
        // Renewals for several leases' worth: beta still waits, alpha still serves.
        let load = Load::start(pair.addrs());
        load.progress(300);
        let until = Instant::now() + lease() * 2;
        while Instant::now() < until {
            load.progress(20);
        }
        assert_eq!(pair.broker(1).count_log("listening for STOMP"), 0);
        assert_eq!(pair.broker(0).count_log("lost the lock"), 0);
        load.finish();
    }
}

fn kill_9_and_sigterm_of_the_master(cluster: &Galera) {
    let mut pair = pair_on(cluster);
    let load = Load::start(pair.addrs());
    load.progress(200);
    let killed = Instant::now();
    pair.broker(0).kill9();
    let took = takeover(&mut pair, 1, killed, STEP);
    println!("Galera: takeover after kill -9 of the master: {took:?}");
    assert!(took < Duration::from_secs(1), "kill -9: {took:?}");
    assert!(
        pair.broker(1)
            .wait_for_log("took the lease", STEP)
            .contains("whose presence ended"),
        "the slave waited for the lease to lapse"
    );
    pair.spawn(0);
    pair.broker(0)
        .wait_for_log("waiting for the lock (held by beta", STEP);
    load.progress(200);
    let stopped = Instant::now();
    pair.broker(1).sigterm();
    let took = takeover(&mut pair, 0, stopped, STEP);
    println!("Galera: takeover after SIGTERM of the master: {took:?}");
    assert!(took < Duration::from_secs(1), "SIGTERM: {took:?}");
    pair.restart_after_exit(1, 0);
    pair.broker(1)
        .wait_for_log("waiting for the lock (held by alpha", STEP);
    load.progress(200);
    load.finish();
}

fn frozen_master(cluster: &Galera) {
    let mut pair = pair_on(cluster);
    let load = Load::start(pair.addrs());
    load.progress(200);
    let frozen = Instant::now();
    pair.broker(0).sigstop();
    let took = takeover(&mut pair, 1, frozen, lease() + STEP);
    println!("Galera: takeover after SIGSTOP (lease {LEASE} s): {took:?}");
    assert!(took < lease() + Duration::from_secs(1), "freeze: {took:?}");
    load.progress(200);
    pair.broker(0).sigcont();
    pair.broker(0).wait_for_log("lost the lock", STEP);
    pair.restart_after_exit(0, 1);
    pair.broker(0)
        .wait_for_log("waiting for the lock (held by beta", STEP);
    load.progress(200);
    load.finish();
}

fn loss_of_the_master_s_node(cluster: &mut Galera) {
    let mut pair = pair_on(cluster);
    let load = Load::start(pair.addrs());
    load.progress(200);
    let lost = Instant::now();
    cluster.kill9(0);
    let took = takeover(&mut pair, 1, lost, lease() + STEP);
    println!("Galera: takeover after kill -9 of the master's node: {took:?}");
    assert!(
        took < lease() + Duration::from_secs(1),
        "node loss: {took:?}"
    );
    pair.broker(0).wait_for_log("lost the lock", STEP);
    load.progress(200);
    cluster.rejoin(0);
    pair.restart_after_exit(0, 1);
    pair.broker(0)
        .wait_for_log("waiting for the lock (held by beta", STEP * 2);
    load.progress(200);
    load.finish();
}

fn master_s_node_leaves_the_primary_component(cluster: &Galera) {
    let mut pair = pair_on(cluster);
    let load = Load::start(pair.addrs());
    load.progress(200);
    let isolated = Instant::now();
    cluster.isolate(0, true);
    let took = takeover(&mut pair, 1, isolated, lease() + STEP * 2);
    println!("Galera: takeover after the master's node left the primary component: {took:?}");
    pair.broker(0).wait_for_log("lost the lock", STEP);
    load.progress(200);
    // Until its node is back in the primary component, alpha does not even try.
    pair.restart_after_exit(0, 1);
    pair.broker(0)
        .wait_for_log("not trying for the lock: the Galera node", STEP * 2);
    cluster.isolate(0, false);
    pair.broker(0)
        .wait_for_log("waiting for the lock (held by beta", STEP * 4);
    load.progress(200);
    load.finish();
    // Leaving the primary component takes the group a few seconds to notice (evs timeouts):
    // the bound is the lease plus that.
    assert!(
        took < lease() + Duration::from_secs(8),
        "non-primary: {took:?}"
    );
}

fn whole_cluster_restart(cluster: &mut Galera) {
    let mut pair = pair_on(cluster);
    let load = Load::start(pair.addrs());
    load.progress(200);
    cluster.restart_all();
    pair.broker(0).wait_for_log("lost the lock", STEP * 4);
    pair.restart_after_exit(0, 1);
    let master = common::poll(STEP * 4, Duration::from_millis(20), || {
        (0..2).find(|&i| pair.broker(i).count_log("listening for STOMP") > 0)
    })
    .expect("no master after the cluster restart");
    let holder = format!("waiting for the lock (held by {}", pair.names[master]);
    pair.broker(1 - master).wait_for_log(&holder, STEP * 2);
    load.progress(200);
    load.finish();
}

/// The master's host drops off the network: node 0 and alpha run in a network namespace, the
/// other nodes, beta and the clients on the host, and the veth between them is cut. Node 0
/// leaves the primary component, alpha can no longer renew and stops, beta takes over when the
/// lease lapses; after the cut is mended node 0 rejoins and alpha waits for beta.
fn network_cut_of_the_master_s_node() {
    let ns = NetNs::create(1).expect("network namespaces (root and iproute2)");
    let veth = ns.veth(0).clone();
    let host = NodeSpec {
        ip: veth.host_ip,
        wrapper: Vec::new(),
    };
    let inside = NodeSpec {
        ip: veth.ns_ip,
        wrapper: ns.exec_prefix(),
    };
    let mut cluster = Galera::start(&[inside, host.clone(), host]);
    let db = cluster.create_database();
    let port = free_port();
    let alpha = Side {
        url: cluster.url(0, &db),
        wrapper: ns.exec_prefix(),
        listen: format!("0.0.0.0:{port}"),
        addr: SocketAddr::from((veth.ns_ip, port)),
    };
    let mut pair = Pair::start_sides([alpha, Side::local(&cluster.url(1, &db))], LEASE);
    let load = Load::start(pair.addrs());
    load.progress(200);
    let cut_at = Instant::now();
    let cut = ns.cut(0);
    let took = takeover(&mut pair, 1, cut_at, lease() + STEP);
    println!("Galera: takeover after a network cut of the master's node: {took:?}");
    pair.broker(0).wait_for_log("lost the lock", STEP);
    load.progress(200);
    cut.restore();
    cluster.wait_synced(0);
    pair.restart_after_exit(0, 1);
    pair.broker(0)
        .wait_for_log("waiting for the lock (held by beta", STEP * 4);
    load.progress(200);
    load.finish();
    assert!(
        took < lease() + Duration::from_secs(1),
        "network cut: {took:?}"
    );
}

/// With `wsrep_max_ws_rows` = 1500 on the master's node: a purge of 2,500 messages is
/// committed in parts the cluster accepts, and a STOMP transaction of 1,600 SENDs (one write
/// set over the limit) gets an ERROR naming the limit while the broker goes on serving.
fn write_set_limits(cluster: &Galera) {
    let db = cluster.create_database();
    let status_port = free_port();
    let status = format!("127.0.0.1:{status_port}");
    let mut broker = Broker::start(&cluster.url(0, &db), &[("HAMQ_STATUS_LISTEN", &status)]);
    cluster
        .root(0)
        .query_drop("SET GLOBAL wsrep_max_ws_rows = 1500")
        .expect("set wsrep_max_ws_rows");
    let mut c = Client::connect(broker.stomp_port());
    for i in 0..2500 {
        c.send("/queue/big-purge", format!("m{i}"));
    }
    c.send_with_receipt("/queue/big-purge", "last", &[]);
    let (code, body) = http(
        status_port,
        "POST",
        "/admin/purge?destination=/queue/big-purge",
    );
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("purged 2501 messages"), "{body}");
    let left = common::poll(STEP, Duration::from_millis(50), || {
        let n: Option<u64> = cluster
            .root(0)
            .query_first(format!("SELECT COUNT(*) FROM `{db}`.hamq_messages"))
            .ok()
            .flatten();
        (n == Some(0)).then_some(())
    });
    assert!(left.is_some(), "the purge did not reach the store");
    c.send_frame_with_receipt("BEGIN", &[("transaction", "t")], b"");
    for i in 0..1600 {
        let body = format!("t{i}");
        c.send_frame(
            "SEND",
            &[("destination", "/queue/big-tx"), ("transaction", "t")],
            body.as_bytes(),
        );
    }
    c.send_frame("COMMIT", &[("transaction", "t"), ("receipt", "c")], b"");
    let error = loop {
        let f = c.recv(STEP);
        if f.command != "RECEIPT" {
            break f;
        }
    };
    assert_eq!(error.command, "ERROR", "{error:?}");
    let message = error.header("message").unwrap_or_default();
    assert!(message.contains("wsrep_max_ws_rows"), "{message}");
    let mut after = Client::connect(broker.stomp_port());
    after.send_with_receipt("/queue/big-tx", "after", &[]);
    after.subscribe("/queue/big-tx", "s", "auto", &[]);
    assert_eq!(after.recv(STEP).text(), "after");
    assert!(broker.wait_exit(Duration::ZERO).is_none());
    cluster
        .root(0)
        .query_drop("SET GLOBAL wsrep_max_ws_rows = 0")
        .expect("reset wsrep_max_ws_rows");
}

/// Both brokers reach the cluster through one proxy to one node (as HAProxy or ProxySQL with a
/// single writer): the master's presence is on the same node as the slave's, so kill -9 is taken
/// over at once; then the proxy moves to another node, every connection breaks, and exactly one
/// master comes back there.
fn both_brokers_through_a_proxy(cluster: &Galera) {
    let db = cluster.create_database();
    let node = |i: usize| cluster.address(i).parse().expect("an address");
    let proxy = Proxy::start(node(2));
    let url = format!("mysql://hamq:hamq@127.0.0.1:{}/{db}", proxy.port());
    let mut pair = Pair::start_leased([url.clone(), url], LEASE);
    let load = Load::start(pair.addrs());
    load.progress(200);
    let killed = Instant::now();
    pair.broker(0).kill9();
    let took = takeover(&mut pair, 1, killed, STEP);
    println!("Galera through a proxy: takeover after kill -9 of the master: {took:?}");
    assert!(
        took < Duration::from_secs(1),
        "kill -9 through a proxy: {took:?}"
    );
    pair.spawn(0);
    pair.broker(0)
        .wait_for_log("waiting for the lock (held by beta", STEP);
    load.progress(200);
    proxy.switch(node(1));
    pair.broker(1).wait_for_log("lost the lock", STEP);
    pair.restart_after_exit(1, 1);
    let master = common::poll(STEP * 3, Duration::from_millis(20), || {
        (0..2).find(|&i| pair.broker(i).count_log("listening for STOMP") > 0)
    })
    .expect("no master after the proxy moved");
    let holder = format!("waiting for the lock (held by {}", pair.names[master]);
    pair.broker(1 - master).wait_for_log(&holder, STEP * 3);
    load.progress(200);
    load.finish();
}
