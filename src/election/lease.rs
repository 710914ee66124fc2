//! The lease election (`election = lease`), on the election thread, with connections of its
//! own: the election connection (reads, claims and renews the lease on the configured server),
//! `presence` (the same server: the row lock of `hamq_lock`, held while master) and, as a slave,
//! `watch` (the lease holder's node: waits on the holder's presence). See `store::lease` for
//! why both a lease and a presence.
//!
//! Slave, in a loop: read the lease. Free or lapsed (by the database's clock): take our own
//! presence, then claim the lease. Held, with the holder's presence on our own node: wait on our
//! presence, which we get the moment the holder's ends, then take the lease from exactly that
//! holder and term. Held elsewhere: wait on the holder's presence through a connection to its
//! node (checked to be that node); once it ends, the same. Each wait is bounded by one lock wait
//! (1 s), and never waits past the lease's end, so a lapsed lease is seen within a second.
//!
//! Master: renew the lease every keepalive (a tenth of it) and keep the presence alive; a
//! renewal that fails, finds the lease taken, or stalls past half the lease stops the broker at
//! once, well before the lease lapses for anyone else.

use super::{connect, serve_as_master, Ctx, Ended, LockLost, Mastership, Waiting, LOCK_WAIT};
use crate::store::epoch;
use crate::store::lease::{self, Claimant, Lease};
use crate::store::lock::{self, Held};
use crate::store::topology::{self, Database};
use crate::store::{self, StoreError, DEADLOCK};
use mysql::Conn;
use std::time::{Duration, Instant};

/// A slave that cannot watch the holder's presence reads the lease this often.
const POLL: Duration = Duration::from_millis(200);
/// Clock differences between database nodes worth a warning.
const CLOCK_WARNING_US: i64 = 500_000;

pub(super) fn elect(ctx: &Ctx<'_>, mut conn: Conn, database: &Database) -> Ended {
    let address = match store::address_of(&ctx.config.datastore) {
        Ok(address) => address,
        Err(e) => return Ended::Reconnect(e),
    };
    let me = Claimant {
        name: &ctx.config.name,
        node: &database.node,
        address: &address,
        lease: ctx.config.lease,
    };
    let mut presence = match own_node(ctx, database, &address) {
        Ok(presence) => presence,
        Err(e) => return Ended::Reconnect(e),
    };
    let mut slave = Slave::default();
    let mut presence_used = Instant::now();
    while !ctx.shutdown.is_stopping() {
        let lease = match lease::read(&mut conn) {
            Ok(lease) => lease,
            Err(e) => return Ended::Reconnect(e),
        };
        slave.check_clocks(&lease);
        match slave.next(&lease, &database.node) {
            Next::Claim => match claim(ctx, (&mut conn, &mut presence), &me, &lease) {
                Claim::Won(ended) => return ended,
                Claim::Failed(e) => return Ended::Reconnect(e),
                Claim::Lost => {}
            },
            Next::Watch => slave.watch(ctx, &lease),
            Next::Poll(wait) => ctx.shutdown.sleep(wait),
        }
        // The presence connection waits unused while this broker is a slave; the server drops
        // a connection silent for `wait_timeout` (= the lease), and a claim on it would fail
        // when the lease lapses (a takeover of a lost node took 5.4 s that way, not ~4).
        if presence_used.elapsed() >= ctx.config.keepalive() {
            if let Err(e) = presence.ping() {
                return Ended::Reconnect(StoreError::from(e));
            }
            presence_used = Instant::now();
        }
        let holder = match epoch::holder(&mut conn) {
            Ok(holder) => holder,
            Err(e) => return Ended::Reconnect(e),
        };
        let lapses = match lease.holder.is_empty() {
            true => String::new(),
            false => format!(
                "; its lease lapses in {} ms",
                lease.remaining_us.max(0) / 1000
            ),
        };
        slave.waiting.log(ctx, (&holder.0, holder.1), &lapses);
    }
    Ended::Stopping
}

/// The presence connection, on the same node as the election connection (a proxy might route
/// two connections to two nodes, where row locks do not meet).
fn own_node(ctx: &Ctx<'_>, database: &Database, address: &str) -> Result<Conn, StoreError> {
    let mut presence = connect(ctx.config, None)?;
    let node = topology::detect(&mut presence)?.node;
    if node != database.node {
        return Err(StoreError::Unfit(format!(
            "two connections to {} reached two servers ({} and {node}): a lease election \
             needs a stable route to one node",
            address, database.node
        )));
    }
    Ok(presence)
}

/// What a try for the lease came to.
enum Claim {
    /// Won, was master, and that ended.
    Won(Ended),
    /// Someone else holds it, or won the race.
    Lost,
    Failed(StoreError),
}

/// Take our presence (waiting one lock wait at most), then the lease: free or lapsed, or from
/// the holder whose presence is known to be gone.
fn claim(
    ctx: &Ctx<'_>,
    (conn, presence): (&mut Conn, &mut Conn),
    me: &Claimant<'_>,
    seen: &Lease,
) -> Claim {
    let held = match lock::try_lock(presence, false) {
        Ok(Some(held)) => held,
        // Our node's presence is still held: by the holder, which is alive.
        Ok(None) => return Claim::Lost,
        Err(e) => return Claim::Failed(e),
    };
    let claimed = match seen.is_free() {
        true => lease::take(conn, me),
        false => lease::steal(conn, me, &seen.holder, seen.term),
    };
    match claimed {
        Ok(Some(term)) => {
            log::info!(
                "took the lease (term {term}, {} s, renewed every {} ms){}",
                ctx.config.lease.as_secs(),
                ctx.config.keepalive().as_millis(),
                match seen.is_free() {
                    true => String::new(),
                    false => format!(" from {}, whose presence ended", seen.holder),
                }
            );
            Claim::Won(hold(ctx, held, conn, me, term))
        }
        Ok(None) => {
            let _ = held.release();
            Claim::Lost
        }
        Err(e) => {
            let _ = held.release();
            Claim::Failed(e)
        }
    }
}

/// Master: renew the lease and keep the presence until released or lost.
fn hold(ctx: &Ctx<'_>, presence: Held<'_>, conn: &mut Conn, me: &Claimant<'_>, term: u64) -> Ended {
    let leased = Leased {
        presence: Some(presence),
        conn,
        me,
        term,
    };
    serve_as_master(ctx, leased)
}

struct Leased<'a, 'c, 'm> {
    /// None once its connection broke.
    presence: Option<Held<'a>>,
    conn: &'c mut Conn,
    me: &'c Claimant<'m>,
    term: u64,
}

impl Mastership for Leased<'_, '_, '_> {
    fn prove(&mut self) -> Result<(), LockLost> {
        let Some(presence) = self.presence.as_mut() else {
            return Err(LockLost::Gone);
        };
        if let Err(e) = presence.keepalive() {
            if let Some(presence) = self.presence.take() {
                presence.abandon();
            }
            return Err(LockLost::KeepAlive(e));
        }
        match lease::renew(self.conn, self.me, self.term) {
            Ok(true) => Ok(()),
            Ok(false) => Err(self.taken_by()),
            // A claim raced this renewal: only a lapsed lease can be claimed, so it is
            // someone else's now, unless the claim lost.
            Err(e) if e.code() == Some(DEADLOCK) => match lease::read(self.conn) {
                Ok(now) if now.holder == self.me.name && now.term == self.term => Ok(()),
                _ => Err(self.taken_by()),
            },
            Err(e) => Err(LockLost::Renewal(e)),
        }
    }

    /// Half the lease: a renewal that took this long still renewed it, and with renewals every
    /// tenth of the lease the master stops by 0.6 of it after its last renewal, well before
    /// anyone may claim it (a cluster's commits pause for a second or so at a view change, when
    /// a node joins or leaves).
    fn stall_bound(&self, lease: Duration) -> Duration {
        lease / 2
    }

    fn release(self) {
        if let Err(e) = lease::release(self.conn, self.me.name, self.term) {
            log::debug!("releasing the lease: {e}");
        }
        if let Some(presence) = self.presence {
            let _ = presence.release();
        }
        log::info!("released the lock");
    }
}

impl Leased<'_, '_, '_> {
    fn taken_by(&mut self) -> LockLost {
        match lease::read(self.conn) {
            Ok(now) => LockLost::Taken {
                holder: now.holder,
                term: now.term,
            },
            Err(e) => LockLost::Unknown(e),
        }
    }
}

/// What a slave knows between reads of the lease.
#[derive(Default)]
struct Slave {
    waiting: Waiting,
    /// A connection to the holder's node: its address, and the connection.
    watch: Option<(String, Conn)>,
    /// The holder and term whose presence ended while it held the lease.
    gone: Option<(String, u64)>,
    /// The address and term whose node could not be watched: not tried again in that term.
    unwatchable: Option<(String, u64)>,
    warned_clock: bool,
}

/// What a slave does once it has read the lease.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    /// Take our presence, then the lease: it is free or lapsed, its holder's presence ended,
    /// or the holder's node is ours (where our presence lock waits on the holder's own).
    Claim,
    /// Wait on the holder's presence through a connection to its node.
    Watch,
    /// Read the lease again after this long: the holder's node cannot be watched (unknown, or
    /// not reachable in this term), or the lease lapses before one lock wait would end.
    Poll(Duration),
}

impl Slave {
    /// The step after reading `lease`, on a node named `my_node`.
    fn next(&self, lease: &Lease, my_node: &str) -> Next {
        let gone = self.gone.as_ref() == Some(&(lease.holder.clone(), lease.term));
        let here = !lease.node.is_empty() && lease.node == my_node;
        if lease.is_free() || gone || here {
            return Next::Claim;
        }
        let until_lapse = Duration::from_micros(lease.remaining_us.max(0) as u64);
        let blocked = self.unwatchable.as_ref() == Some(&(lease.address.clone(), lease.term));
        if blocked || lease.node.is_empty() || until_lapse < LOCK_WAIT {
            return Next::Poll(POLL.min(until_lapse + Duration::from_millis(10)));
        }
        Next::Watch
    }

    /// Wait on the holder's presence, on its node, for one lock wait at most and never past
    /// the lease's end; notes in `gone` when it ends.
    fn watch(&mut self, ctx: &Ctx<'_>, lease: &Lease) {
        let Some(watch) = self.watch_connection(ctx, lease) else {
            return;
        };
        // Whether the presence ended (the lock won and given back at once), on one statement
        // so that the borrow of the watch connection ends with it.
        let ended = lock::try_lock(watch, false).map(|held| held.map(Held::release).is_some());
        match ended {
            Ok(true) => {
                log::info!(
                    "the presence of {} (term {}) on {} ended: taking over before its lease lapses",
                    lease.holder,
                    lease.term,
                    lease.node
                );
                self.gone = Some((lease.holder.clone(), lease.term));
            }
            Ok(false) => {}
            Err(e) => {
                log::info!("watching {}: {e}", lease.address);
                self.watch = None;
            }
        }
    }

    /// The connection to the holder's node, opened (and checked to reach that very node) if
    /// needed. None when it cannot be: the lease's end is then what tells.
    fn watch_connection(&mut self, ctx: &Ctx<'_>, lease: &Lease) -> Option<&mut Conn> {
        if self
            .watch
            .as_ref()
            .is_some_and(|(a, _)| *a != lease.address)
        {
            self.watch = None;
        }
        if self.watch.is_none() {
            let opened = connect(ctx.config, Some(&lease.address)).and_then(|mut c| {
                let node = topology::detect(&mut c)?.node;
                match node == lease.node {
                    true => Ok(c),
                    false => Err(StoreError::Unfit(format!("it reached {node}"))),
                }
            });
            match opened {
                Ok(conn) => self.watch = Some((lease.address.clone(), conn)),
                Err(e) => {
                    log::info!(
                        "cannot watch the master's node {} at {} ({e}): waiting for its lease \
                         to lapse instead",
                        lease.node,
                        lease.address
                    );
                    self.unwatchable = Some((lease.address.clone(), lease.term));
                    return None;
                }
            }
        }
        self.watch.as_mut().map(|(_, conn)| conn)
    }

    /// Warn once when the holder's node's clock runs ahead of this node's: its lease lasts
    /// that much longer as this node sees it.
    fn check_clocks(&mut self, lease: &Lease) {
        if lease.ahead_us > CLOCK_WARNING_US && !self.warned_clock {
            log::warn!(
                "the clock of {}'s database node ({}) is {} ms ahead of this node's: its lease \
                 lasts that much longer here; keep the nodes' clocks in step (NTP)",
                lease.holder,
                lease.node,
                lease.ahead_us / 1000
            );
            self.warned_clock = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: &str, term: u64, node: &str, remaining_ms: i64) -> Lease {
        Lease {
            holder: holder.to_string(),
            term,
            node: node.to_string(),
            address: format!("{node}:3306"),
            remaining_us: remaining_ms * 1000,
            ahead_us: 0,
        }
    }

    #[test]
    fn a_slave_claims_a_free_lapsed_or_ended_lease_and_watches_a_live_one() {
        let mut slave = Slave::default();
        // Nobody holds it, or the holder's lease lapsed (by the database's clock).
        assert_eq!(slave.next(&lease("", 0, "", 0), "n2"), Next::Claim);
        assert_eq!(slave.next(&lease("alpha", 3, "n1", -1), "n2"), Next::Claim);
        // Held, on another node, for longer than a lock wait: watch its presence there.
        let live = lease("alpha", 3, "n1", 4_000);
        assert_eq!(slave.next(&live, "n2"), Next::Watch);
        // Held on this slave's own node: its presence lock waits on the holder's there.
        assert_eq!(slave.next(&live, "n1"), Next::Claim);
        // The watch saw that holder's presence end in that term: take over before the lapse.
        slave.gone = Some(("alpha".to_string(), 3));
        assert_eq!(slave.next(&live, "n2"), Next::Claim);
        // Not a later term of the same holder, nor another holder.
        assert_eq!(
            slave.next(&lease("alpha", 4, "n1", 4_000), "n2"),
            Next::Watch
        );
        assert_eq!(
            slave.next(&lease("beta", 3, "n1", 4_000), "n2"),
            Next::Watch
        );
    }

    #[test]
    fn a_slave_polls_where_it_cannot_watch_and_never_past_the_lapse() {
        let mut slave = Slave::default();
        // The holder's node is unknown (an older hamq): read again soon.
        assert_eq!(
            slave.next(&lease("alpha", 3, "", 4_000), "n2"),
            Next::Poll(POLL)
        );
        // It lapses within one lock wait: read again just after the lapse, not a poll later.
        assert_eq!(
            slave.next(&lease("alpha", 3, "n1", 50), "n2"),
            Next::Poll(Duration::from_millis(60))
        );
        assert_eq!(
            slave.next(&lease("alpha", 3, "n1", 900), "n2"),
            Next::Poll(POLL)
        );
        // Its node could not be reached in this term: not tried again until the next term.
        slave.unwatchable = Some(("n1:3306".to_string(), 3));
        assert_eq!(
            slave.next(&lease("alpha", 3, "n1", 4_000), "n2"),
            Next::Poll(POLL)
        );
        assert_eq!(
            slave.next(&lease("alpha", 4, "n1", 4_000), "n2"),
            Next::Watch
        );
    }
}
