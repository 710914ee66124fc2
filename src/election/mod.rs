//! The election thread: wins and keeps the master lock, or waits for it as a slave.
//!
//! Runs on its own thread with its own plain connections (`store::lock` and `store::lease` hold
//! all their SQL). Each connection first looks at the database (`store::topology`): what it is,
//! logged in the "datastore connected" line, and whether a master may use it; through a
//! read-only server, a replica or a Galera node outside the primary component it never tries,
//! and says why. Then one of two elections, chosen by `election` (`auto`: the lease on Galera
//! and Group Replication, the lock elsewhere):
//! - `lock` (submodule `lock`): `SELECT ... FOR UPDATE` on the lock row, held in an open
//!   transaction for as long as it is master. Exclusive on one server.
//! - `lease` (submodule `lease`): a lease row taken and renewed by committed compare-and-set
//!   writes, which certification decides on a cluster, plus a presence lock on the master's own
//!   node so that a killed master is noticed at once (see `store::lease`).
//!
//! On winning it tells the server (`won`), which bumps the epoch, recovers and listens. As
//! master it proves the lock every `keepalive` (so the database's `wait_timeout` = lease never
//! drops it, and a lease never lapses) within a bound; if that fails or stalls it logs "lost
//! the lock", stops the broker at once and the process exits non-zero, for its supervisor to
//! restart it as a slave. It releases the lock when the server says everything is written
//! (`release`), or when dropped.

mod lease;
mod lock;

use crate::config::{Config, ElectionChoice};
use crate::shutdown::{Failure, Shutdown};
use crate::store::topology::{self, Database, Election as Kind};
use crate::store::{self, StoreError};
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use mysql::Conn;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Who is master as this broker knows it, for the status endpoints: set by the election
/// thread while waiting, and by the server once it took over.
pub struct Role {
    inner: Mutex<RoleInfo>,
    /// Reference point for `renewed_ms`.
    origin: Instant,
    /// When the master's lock last proved alive (ms since `origin`; 0 = never).
    renewed_ms: AtomicU64,
}

impl Default for Role {
    fn default() -> Role {
        Role {
            inner: Mutex::default(),
            origin: Instant::now(),
            renewed_ms: AtomicU64::new(0),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoleInfo {
    pub master: bool,
    pub epoch: u64,
    /// The broker holding the lock (this one's name when master).
    pub holder: String,
    /// What the election connection found (`topology::Database`'s description); empty until
    /// it connected.
    pub database: String,
    /// The election in use; None until decided.
    pub election: Option<Kind>,
    /// Where this broker is in its life, for `/health`.
    pub phase: Phase,
}

/// Where a broker is in its life: only `Serving` is healthy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Phase {
    /// Connecting to the datastore for the first time.
    #[default]
    Starting,
    /// The datastore cannot be reached (why).
    Unreachable(String),
    /// This broker could not serve as master (why): a read-only server, a port it cannot bind.
    Unfit(String),
    /// A slave, waiting for the lock.
    Waiting,
    /// Master, recovering the store; not serving clients yet.
    Recovering,
    /// Master, listening for clients. (Stopping is the shutdown signal's to tell.)
    Serving,
}

impl Role {
    pub fn get(&self) -> RoleInfo {
        self.inner.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Change what is known, keeping the rest.
    pub fn update(&self, change: impl FnOnce(&mut RoleInfo)) {
        if let Ok(mut r) = self.inner.lock() {
            change(&mut r);
        }
    }

    /// The lock just proved alive (won, or a keep-alive succeeded).
    fn renew(&self) {
        let ms = self.origin.elapsed().as_millis() as u64;
        self.renewed_ms.store(ms.max(1), Ordering::SeqCst);
    }

    /// Whether the lock proved alive within `bound`. A master that was frozen longer than that
    /// (and may have lost the lock meanwhile) must not take new clients before its next
    /// keep-alive tells: the sessions refuse CONNECT until then.
    pub fn is_fresh(&self, bound: Duration) -> bool {
        let renewed = self.renewed_ms.load(Ordering::SeqCst);
        let now = self.origin.elapsed().as_millis() as u64;
        renewed > 0 && now.saturating_sub(renewed) <= bound.as_millis() as u64
    }

    /// A slave's view: who holds the lock, under which epoch.
    fn waiting(&self, holder: &str, epoch: u64) {
        self.update(|r| {
            r.master = false;
            r.holder = holder.to_string();
            r.epoch = epoch;
            r.phase = Phase::Waiting;
        });
    }

    pub fn set_phase(&self, phase: Phase) {
        self.update(|r| r.phase = phase);
    }
}

/// The server's side of the election thread.
pub struct Election {
    /// Receives once, when this broker holds the lock.
    pub won: Receiver<()>,
    /// Send (or drop) to give the lock up.
    pub release: Sender<()>,
    pub thread: JoinHandle<()>,
}

/// How long one attempt waits on a lock before it is retried (and shutdown rechecked).
const LOCK_WAIT: Duration = Duration::from_secs(1);
/// A slave repeats its "waiting for the lock" line at least this often.
const WAITING_LOG_EVERY: Duration = Duration::from_secs(60);
/// How often a broker that found its database unfit for a master looks again.
const UNFIT_RECHECK: Duration = Duration::from_secs(2);

pub fn spawn(
    config: Arc<Config>,
    shutdown: Arc<Shutdown>,
    role: Arc<Role>,
) -> std::io::Result<Election> {
    let (won_tx, won) = bounded(1);
    let (release, release_rx) = bounded(1);
    let thread = std::thread::Builder::new()
        .name("election".to_string())
        .spawn(move || {
            let ctx = Ctx {
                config: &config,
                shutdown: &shutdown,
                role: &role,
                won: &won_tx,
                release: &release_rx,
            };
            run(&ctx)
        })?;
    Ok(Election {
        won,
        release,
        thread,
    })
}

/// What both elections use.
struct Ctx<'a> {
    config: &'a Config,
    shutdown: &'a Shutdown,
    role: &'a Role,
    won: &'a Sender<()>,
    release: &'a Receiver<()>,
}

/// How an election on one connection ended.
enum Ended {
    /// It was master and is done (released, or the broker stops because the lock was lost).
    Master,
    /// The broker stops before winning.
    Stopping,
    /// The connection or the database failed: connect again.
    Reconnect(StoreError),
}

fn run(ctx: &Ctx<'_>) {
    let mut delay = Duration::from_millis(100);
    // The database the warnings were last given for: once, not at every reconnect.
    let mut warned: Option<Database> = None;
    while !ctx.shutdown.is_stopping() {
        let (conn, database) = match open(ctx.config) {
            Ok(found) => {
                delay = Duration::from_millis(100);
                found
            }
            Err(e) => {
                ctx.role.set_phase(Phase::Unreachable(e.to_string()));
                log::warn!("{e}; retrying in {} ms", delay.as_millis());
                ctx.shutdown.sleep(delay);
                delay = (delay * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        let kind = match ctx.config.election {
            ElectionChoice::Auto => database.auto_election(),
            ElectionChoice::Lock => Kind::Lock,
            ElectionChoice::Lease => Kind::Lease,
        };
        ctx.role.update(|r| {
            r.database = database.to_string();
            r.election = Some(kind);
        });
        if warned.as_ref() != Some(&database) {
            for warning in database.warnings(kind) {
                log::warn!("{warning}");
            }
            warned = Some(database.clone());
        }
        if let Some(why) = database.unfit_for_master() {
            ctx.role.set_phase(Phase::Unfit(why.clone()));
            log::warn!(
                "not trying for the lock: {why}; a master needs a writable server \
                 (checking again in {} s)",
                UNFIT_RECHECK.as_secs()
            );
            ctx.shutdown.sleep(UNFIT_RECHECK);
            continue;
        }
        let mut conn = conn;
        if let Err(e) = store::lock::bootstrap(&mut conn) {
            ctx.role.set_phase(Phase::Unfit(e.to_string()));
            log::warn!("{e}; retrying in {} s", UNFIT_RECHECK.as_secs());
            ctx.shutdown.sleep(UNFIT_RECHECK);
            continue;
        }
        let ended = match kind {
            Kind::Lock => lock::elect(ctx, conn),
            Kind::Lease => lease::elect(ctx, conn, &database),
        };
        match ended {
            Ended::Master | Ended::Stopping => return,
            Ended::Reconnect(e) => {
                ctx.role.set_phase(Phase::Unreachable(e.to_string()));
                log::warn!("election: {e}; reconnecting")
            }
        }
    }
}

/// Connect an election connection and look at the database.
fn open(config: &Config) -> Result<(Conn, Database), StoreError> {
    let mut conn = connect(config, None)?;
    let database = topology::detect(&mut conn)?;
    let engines = topology::table_engines(&mut conn)?;
    log::info!("datastore connected: {database}; {engines}");
    Ok((conn, database))
}

/// An election connection (to `address` instead of the configured server, for a lease
/// holder's node): reads bounded by a quarter of the lease, lock waits by `LOCK_WAIT`.
fn connect(config: &Config, address: Option<&str>) -> Result<Conn, StoreError> {
    let io_timeout = (config.lease / 4).max(LOCK_WAIT * 2);
    store::connect_to(
        &config.datastore,
        address,
        config.lease,
        (io_timeout, LOCK_WAIT),
    )
}

/// Why a master's lock is no longer proved ours: the broker stops (`Failure::LostLock`).
#[derive(Debug)]
pub enum LockLost {
    /// The lock's connection is already gone (an earlier proof broke it).
    Gone,
    /// The keep-alive on the lock's connection failed: the server dropped the lock with it.
    KeepAlive(StoreError),
    /// The lease's renewal failed.
    Renewal(StoreError),
    /// Another broker holds the lease now (`holder`, `term`).
    Taken { holder: String, term: u64 },
    /// The lease is not ours, and reading it failed too.
    Unknown(StoreError),
    /// A proof took longer than its bound: the lock may have lapsed meanwhile.
    Stalled(Duration),
}

impl fmt::Display for LockLost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockLost::Gone => f.write_str("the lock's connection is gone"),
            LockLost::KeepAlive(e) => write!(f, "keep-alive failed: {e}"),
            LockLost::Renewal(e) => write!(f, "lease renewal failed: {e}"),
            LockLost::Taken { holder, term } => {
                write!(f, "the lease is held by {holder} (term {term}) now")
            }
            LockLost::Unknown(e) => write!(f, "the lease is no longer ours ({e})"),
            LockLost::Stalled(took) => {
                write!(f, "keep-alive stalled for {} ms", took.as_millis())
            }
        }
    }
}

impl std::error::Error for LockLost {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LockLost::KeepAlive(e) | LockLost::Renewal(e) | LockLost::Unknown(e) => Some(e),
            LockLost::Gone | LockLost::Taken { .. } | LockLost::Stalled(_) => None,
        }
    }
}

/// What a master holds: a lock it can prove and give up.
trait Mastership {
    /// Show that the lock is still ours (bounded by the connection's read timeout); the error
    /// says why not.
    fn prove(&mut self) -> Result<(), LockLost>;
    /// Give the lock up at once (everything is written): a slave may take over now.
    fn release(self);

    /// The longest a proof may take before the master gives up, for a lease of `lease`.
    fn stall_bound(&self, lease: Duration) -> Duration;
}

/// Master: tell the server, then prove the lock every `keepalive` until the server releases it,
/// or a proof fails or stalls past its bound (then the broker stops).
fn serve_as_master(ctx: &Ctx<'_>, mut mastership: impl Mastership) -> Ended {
    ctx.role.renew();
    let _ = ctx.won.send(());
    let keepalive = ctx.config.keepalive();
    loop {
        match ctx.release.recv_timeout(keepalive) {
            Ok(()) | Err(RecvTimeoutError::Disconnected) => {
                mastership.release();
                return Ended::Master;
            }
            Err(RecvTimeoutError::Timeout) => {
                let started = Instant::now();
                let proved = mastership.prove().and_then(|()| {
                    let took = started.elapsed();
                    match took > mastership.stall_bound(ctx.config.lease) {
                        true => Err(LockLost::Stalled(took)),
                        false => Ok(()),
                    }
                });
                if let Err(why) = proved {
                    ctx.shutdown.fail(Failure::LostLock(Box::new(why)));
                    return Ended::Master;
                }
                ctx.role.renew();
            }
        }
    }
}

/// Throttles the slave's "waiting for the lock" line, and warns once per holder that holds it
/// under this broker's own name.
#[derive(Default)]
struct Waiting {
    last: Option<(String, Instant)>,
    warned_same_name: Option<(String, u64)>,
}

impl Waiting {
    /// `detail`: what the election adds (the lease's remaining time).
    fn log(&mut self, ctx: &Ctx<'_>, (holder, epoch): (&str, u64), detail: &str) {
        ctx.role.waiting(holder, epoch);
        if holder == ctx.config.name && self.warned_same_name != Some((holder.to_string(), epoch)) {
            log::warn!(
                "the lock is held under this broker's own name `{holder}` (epoch {epoch}): \
                 an earlier run of this broker that has not let go yet, or another broker \
                 configured with the same name; give every broker its own `name`"
            );
            self.warned_same_name = Some((holder.to_string(), epoch));
        }
        let repeat = match &self.last {
            Some((h, at)) => h != holder || at.elapsed() >= WAITING_LOG_EVERY,
            None => true,
        };
        if repeat {
            let shown = if holder.is_empty() {
                "nobody yet"
            } else {
                holder
            };
            log::info!("waiting for the lock (held by {shown}, epoch {epoch}{detail})");
            self.last = Some((holder.to_string(), Instant::now()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    /// A lock whose proofs follow a script, each taking its time and giving its answer; past
    /// the script every proof succeeds at once.
    struct Scripted<'a> {
        proofs: Vec<(Duration, Result<(), LockLost>)>,
        proved: &'a AtomicU64,
        released: &'a AtomicBool,
    }

    impl Mastership for Scripted<'_> {
        fn prove(&mut self) -> Result<(), LockLost> {
            self.proved.fetch_add(1, Ordering::SeqCst);
            if self.proofs.is_empty() {
                return Ok(());
            }
            let (takes, answer) = self.proofs.remove(0);
            // The proof's own duration (what the stall bound is about), not a wait for anything.
            std::thread::sleep(takes);
            answer
        }

        fn release(self) {
            self.released.store(true, Ordering::SeqCst);
        }

        fn stall_bound(&self, lease: Duration) -> Duration {
            lease / 4
        }
    }

    /// How the master's life ended: what `serve_as_master` returned, whether it released the
    /// lock, how many proofs it made, and the failure it stopped the broker with.
    struct Life {
        master: bool,
        released: bool,
        proofs: u64,
        failure: Option<Failure>,
    }

    /// What a test sees of a master while it serves.
    struct Serving<'a> {
        release: Sender<()>,
        role: &'a Role,
        shutdown: &'a Shutdown,
        proofs: &'a AtomicU64,
    }

    /// Serve as master on `proofs` with a 1 s lease (keep-alive 100 ms, stall bound 250 ms);
    /// `after_won` runs once the server was told, and returns once the master should have
    /// ended.
    fn serve(
        proofs: Vec<(Duration, Result<(), LockLost>)>,
        after_won: impl FnOnce(Serving<'_>),
    ) -> Life {
        let config = Config {
            lease: Duration::from_secs(1),
            ..Config::default()
        };
        let (shutdown, role) = (Shutdown::default(), Role::default());
        let (won_tx, won) = bounded(1);
        let (release, release_rx) = bounded(1);
        let (proved, released) = (AtomicU64::new(0), AtomicBool::new(false));
        let ctx = Ctx {
            config: &config,
            shutdown: &shutdown,
            role: &role,
            won: &won_tx,
            release: &release_rx,
        };
        let lock = Scripted {
            proofs,
            proved: &proved,
            released: &released,
        };
        let master = std::thread::scope(|scope| {
            let serving = scope.spawn(|| serve_as_master(&ctx, lock));
            won.recv_timeout(Duration::from_secs(10))
                .expect("the server is told it won");
            assert!(role.is_fresh(config.lease), "won is a proof");
            after_won(Serving {
                release,
                role: &role,
                shutdown: &shutdown,
                proofs: &proved,
            });
            matches!(serving.join().expect("no panic"), Ended::Master)
        });
        Life {
            master,
            released: released.load(Ordering::SeqCst),
            proofs: proved.load(Ordering::SeqCst),
            failure: shutdown.take_failure(),
        }
    }

    /// Poll `done` until it holds, for 10 s at most.
    fn within_10s(done: impl Fn() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }

    fn lost(life: &Life) -> &LockLost {
        match &life.failure {
            Some(Failure::LostLock(why)) => why.downcast_ref().expect("a LockLost"),
            other => panic!("not a lost lock: {other:?}"),
        }
    }

    #[test]
    fn a_master_proves_its_lock_until_released_then_gives_it_up() {
        let life = serve(Vec::new(), |serving| {
            assert!(within_10s(|| serving.proofs.load(Ordering::SeqCst) >= 3));
            assert!(serving.role.is_fresh(Duration::from_secs(1)));
            assert!(!serving.shutdown.is_stopping());
            serving.release.send(()).expect("the master listens");
        });
        assert!(
            life.master && life.released,
            "released at the server's word"
        );
        assert!(
            life.proofs >= 3,
            "a proof every keep-alive: {}",
            life.proofs
        );
        assert!(life.failure.is_none());
    }

    #[test]
    fn a_master_whose_server_is_gone_gives_the_lock_up() {
        let life = serve(Vec::new(), |serving| drop(serving.release));
        assert!(life.master && life.released);
        assert!(life.failure.is_none());
    }

    #[test]
    fn a_failed_proof_stops_the_broker_without_releasing() {
        let proofs = vec![
            (Duration::ZERO, Ok(())),
            (Duration::ZERO, Err(LockLost::Gone)),
        ];
        let life = serve(proofs, |serving| {
            assert!(within_10s(|| serving.shutdown.is_stopping()));
        });
        assert!(life.master && !life.released);
        assert_eq!(life.proofs, 2, "nothing is proved after the failure");
        assert!(matches!(lost(&life), LockLost::Gone));
        let text = life.failure.as_ref().map(Failure::to_string);
        assert_eq!(
            text.as_deref(),
            Some("lost the lock: the lock's connection is gone")
        );
    }

    #[test]
    fn a_proof_that_succeeds_too_late_counts_as_lost() {
        let proofs = vec![(Duration::from_millis(300), Ok(()))];
        let life = serve(proofs, |serving| {
            assert!(within_10s(|| serving.shutdown.is_stopping()));
            let fresh = serving.role.is_fresh(Duration::from_millis(250));
            assert!(!fresh, "not renewed by a late proof");
        });
        assert!(life.master && !life.released);
        match lost(&life) {
            LockLost::Stalled(took) => assert!(*took >= Duration::from_millis(300), "{took:?}"),
            other => panic!("{other:?}"),
        }
    }
}
