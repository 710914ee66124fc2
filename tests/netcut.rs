//! Master/slave under a network cut between the master and the database, made with a Linux
//! network namespace (root and `ip` needed; without namespaces the tests say "skipped" and
//! pass). The master "alpha" runs inside the namespace, joined to the host by veth pairs; the
//! slave "beta", a private MariaDB and the test's clients run on the host. The database listens
//! on 127.0.0.1 (beta) and on the host end of veth 0 (alpha). Load and checks are those of
//! `tests/failover.rs`: zero receipted messages lost, zero acked messages redelivered, never
//! both brokers answering CONNECT. The test plays the supervisor and restarts alpha.
//!
//! With lease L (3 s here) the master's election connection has a read timeout of
//! max(L/4, 2 s) and is used every L/10, while the database drops a silent session after
//! `wait_timeout` = L: so alpha must give up before the database hands the lock to beta.

mod common;

use common::{free_port, Client, Load, MariaDb, NetNs, Pair, Side};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const LEASE: Duration = Duration::from_secs(3);
const STEP: Duration = Duration::from_secs(5);

/// The namespace, or `None` (after saying so) when this kernel or user cannot make one.
fn namespace_or_skip(veths: usize) -> Option<NetNs> {
    match NetNs::create(veths) {
        Ok(ns) => Some(ns),
        Err(e) => {
            eprintln!("skipped: network namespaces unavailable: {e}");
            None
        }
    }
}

/// A private MariaDB on 127.0.0.1 and on the host end of veth 0, open to hamq from the
/// namespace end.
fn database_for(ns: &NetNs) -> MariaDb {
    let veth = ns.veth(0);
    let db = MariaDb::start_bound(&format!("127.0.0.1,{}", veth.host_ip));
    db.allow_hamq_from(&veth.ns_ip.to_string());
    db
}

/// Alpha (index 0) in the namespace, beta (1) on the host, on one database. Alpha reaches the
/// database over veth 0 and its clients reach it over veth `client_veth`. Alpha is master and
/// beta waits for the lock when this returns.
fn start_pair(ns: &NetNs, db: &MariaDb, client_veth: usize) -> Pair {
    let url = db.create_database();
    let via_veth = format!("@{}:", ns.veth(0).host_ip);
    let alpha_url = url.replacen("@127.0.0.1:", &via_veth, 1);
    assert_ne!(alpha_url, url, "unexpected database URL {url}");
    let port = free_port();
    let alpha = Side {
        url: alpha_url,
        wrapper: ns.exec_prefix(),
        listen: format!("0.0.0.0:{port}"),
        addr: SocketAddr::from((ns.veth(client_veth).ns_ip, port)),
    };
    let lease = LEASE.as_secs().to_string();
    let mut pair = Pair::unstarted([alpha, Side::local(&url)], &lease);
    pair.spawn(0);
    pair.broker(0).stomp_port();
    assert!(
        Client::try_connect_addr(pair.addrs()[0], STEP).is_some(),
        "alpha does not answer CONNECT at {} from the host",
        pair.addrs()[0]
    );
    pair.spawn(1);
    pair.broker(1)
        .wait_for_log("waiting for the lock (held by alpha", STEP);
    pair
}

/// What happened after the cut, measured from just before it.
struct AfterCut {
    cut: Instant,
    /// Beta's "acquired the lock" (its epoch bump is committed: alpha is fenced from then on).
    acquired: Instant,
    /// Beta's "listening for STOMP".
    listening: Instant,
    /// Alpha's "lost the lock".
    lost: Instant,
    exited: Instant,
}

impl AfterCut {
    fn ms(&self, t: Instant) -> u128 {
        t.saturating_duration_since(self.cut).as_millis()
    }
}

/// Cut veth 0 (alpha's path to the database) and check the failover: beta listens within
/// lease + 5 s, alpha says "lost the lock" within the lease and before beta takes over, and
/// exits with code 1. The cut stays until the returned guard is restored.
fn cut_and_fail_over<'a>(ns: &'a NetNs, pair: &mut Pair) -> (common::Cut<'a>, AfterCut) {
    let cut_at = Instant::now();
    let cut = ns.cut(0);
    let listening = pair
        .broker(1)
        .wait_for_log_time("listening for STOMP", LEASE + STEP);
    let acquired = pair
        .broker(1)
        .wait_for_log_time("acquired the lock (epoch 2)", STEP);
    let lost = pair.broker(0).wait_for_log_time("lost the lock", STEP);
    let status = pair
        .broker(0)
        .wait_exit(STEP * 3)
        .expect("alpha did not exit after losing the lock");
    let after = AfterCut {
        cut: cut_at,
        acquired,
        listening,
        lost,
        exited: Instant::now(),
    };
    eprintln!(
        "{}: after the cut (lease {} s): alpha lost the lock at {} ms, exited ({status}) by \
         {} ms; beta acquired the lock at {} ms, listened at {} ms (takeover {} ms)",
        std::thread::current().name().unwrap_or("test"),
        LEASE.as_secs(),
        after.ms(after.lost),
        after.ms(after.exited),
        after.ms(after.acquired),
        after.ms(after.listening),
        after.ms(after.listening),
    );
    assert!(
        listening.duration_since(cut_at) <= LEASE + STEP,
        "beta listened {} ms after the cut, later than lease + 5 s",
        after.ms(listening)
    );
    assert!(
        lost.duration_since(cut_at) <= LEASE,
        "alpha logged \"lost the lock\" {} ms after the cut, later than the lease",
        after.ms(lost)
    );
    assert!(
        lost < acquired,
        "beta acquired the lock ({} ms after the cut) before alpha gave it up ({} ms)",
        after.ms(acquired),
        after.ms(lost)
    );
    assert_eq!(status.code(), Some(1), "exit code of alpha: {status}");
    (cut, after)
}

/// Play the supervisor: start alpha again in the namespace; it must wait for beta.
fn restart_alpha_as_slave(pair: &mut Pair) {
    pair.spawn(0);
    pair.broker(0)
        .wait_for_log("waiting for the lock (held by beta", STEP);
}

#[test]
fn network_cut_between_master_and_database() {
    let Some(ns) = namespace_or_skip(1) else {
        return;
    };
    let db = database_for(&ns);
    // Alpha's clients use the same veth: the cut takes alpha off the database and the clients.
    let mut pair = start_pair(&ns, &db, 0);
    let load = Load::start(pair.addrs());
    load.progress(200);
    let (cut, _) = cut_and_fail_over(&ns, &mut pair);
    load.progress(200);
    cut.restore();
    restart_alpha_as_slave(&mut pair);
    load.progress(200);
    load.finish();
}

/// SENDs to alpha alone, one thread with `persistent:true` and one with `persistent:false`,
/// each waiting for its RECEIPT as long as alpha keeps the connection (a late receipt still
/// counts); records when alpha last answered CONNECT and last gave each kind of receipt.
struct Watch {
    stop: Arc<AtomicBool>,
    seen: Arc<Seen>,
    threads: Vec<JoinHandle<()>>,
}

#[derive(Default)]
struct Seen {
    connected: Mutex<Option<Instant>>,
    /// [persistent, non-persistent]
    receipt: [Mutex<Option<Instant>>; 2],
    receipts: [AtomicUsize; 2],
}

impl Watch {
    fn start(alpha: SocketAddr) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Seen::default());
        let threads = (0..2)
            .map(|kind| {
                let (stop, seen) = (stop.clone(), seen.clone());
                std::thread::spawn(move || watch(alpha, kind, &stop, &seen))
            })
            .collect();
        Watch {
            stop,
            seen,
            threads,
        }
    }

    fn receipts(&self, kind: usize) -> usize {
        self.seen.receipts[kind].load(Ordering::SeqCst)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn watch(alpha: SocketAddr, kind: usize, stop: &AtomicBool, seen: &Seen) {
    let persistent = if kind == 0 { "true" } else { "false" };
    let headers = [
        ("destination", "/queue/netcut-watch"),
        ("persistent", persistent),
    ];
    while !stop.load(Ordering::SeqCst) {
        let Some(mut c) = Client::try_connect_addr(alpha, Duration::from_millis(300)) else {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        *seen.connected.lock().unwrap() = Some(Instant::now());
        while !stop.load(Ordering::SeqCst) {
            match c.try_with_receipt("SEND", &headers, b"watch", Duration::from_secs(30)) {
                Ok(_) => {
                    *seen.receipt[kind].lock().unwrap() = Some(Instant::now());
                    seen.receipts[kind].fetch_add(1, Ordering::SeqCst);
                }
                Err(_) => break,
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

#[test]
fn database_cut_while_clients_still_reach_the_master() {
    let Some(ns) = namespace_or_skip(2) else {
        return;
    };
    let db = database_for(&ns);
    // Veth 0 carries alpha's database traffic only, veth 1 its clients (and stays up).
    let mut pair = start_pair(&ns, &db, 1);
    let load = Load::start(pair.addrs());
    let watch = Watch::start(pair.addrs()[0]);
    load.progress(200);
    assert!(
        watch.receipts(0) > 0 && watch.receipts(1) > 0,
        "alpha gave the watch no receipts before the cut"
    );
    let (cut, after) = cut_and_fail_over(&ns, &mut pair);

    let latest = |a: Option<Instant>, b: Option<Instant>| a.max(b);
    let connected = latest(
        *load.ledger().last_connected[0].lock().unwrap(),
        *watch.seen.connected.lock().unwrap(),
    )
    .expect("alpha never answered CONNECT");
    let receipt = latest(
        *load.ledger().last_receipt[0].lock().unwrap(),
        *watch.seen.receipt[0].lock().unwrap(),
    )
    .expect("alpha never gave a receipt");
    let transient = watch.seen.receipt[1].lock().unwrap().expect("no receipt");
    eprintln!(
        "alpha (still reachable by its clients) last answered CONNECT at {} ms, last receipted \
         a persistent SEND at {} ms and a non-persistent SEND at {} ms after the cut",
        after.ms(connected),
        after.ms(receipt),
        after.ms(transient)
    );
    assert!(
        connected.saturating_duration_since(after.cut) <= LEASE,
        "alpha answered CONNECT {} ms after the cut, later than the lease",
        after.ms(connected)
    );
    assert!(
        connected < after.listening,
        "alpha answered CONNECT after beta listened"
    );
    assert!(
        receipt < after.acquired,
        "alpha receipted a persistent SEND {} ms after the cut, after beta took over ({} ms)",
        after.ms(receipt),
        after.ms(after.acquired)
    );
    assert!(
        transient < after.acquired,
        "alpha receipted a non-persistent SEND {} ms after the cut, after beta took over ({} ms)",
        after.ms(transient),
        after.ms(after.acquired)
    );

    load.progress(200);
    cut.restore();
    restart_alpha_as_slave(&mut pair);
    load.progress(200);
    drop(watch);
    load.finish();
}
