//! The election thread: wins and keeps the master lock, or waits for it as a slave.
//!
//! Runs on its own thread with its own plain connection (`store::lock` holds all its SQL). As a
//! slave it retries `SELECT ... FOR UPDATE` at once after each 1 s lock wait, logging who holds
//! the lock, and never writes or runs DDL (beyond creating the lock tables the very first time).
//! On winning it tells the server (`won`), which bumps the epoch, recovers and listens. As master
//! it uses the connection every `keepalive` (so the database's `wait_timeout` = lease never drops
//! it) with a read timeout; if that fails or stalls it logs "lost the lock", stops the broker at
//! once and the process exits non-zero, for its supervisor to restart it as a slave. It releases
//! the lock (rollback) when the server says everything is written (`release`), or when dropped.

use crate::config::Config;
use crate::shutdown::Shutdown;
use crate::store::{self, lock, StoreError};
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use mysql::Conn;
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
}

impl Role {
    pub fn get(&self) -> RoleInfo {
        self.inner.lock().map(|r| r.clone()).unwrap_or_default()
    }

    pub fn set(&self, info: RoleInfo) {
        if let Ok(mut r) = self.inner.lock() {
            *r = info;
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
}

/// The server's side of the election thread.
pub struct Election {
    /// Receives once, when this broker holds the lock.
    pub won: Receiver<()>,
    /// Send (or drop) to give the lock up.
    pub release: Sender<()>,
    pub thread: JoinHandle<()>,
}

/// How long one attempt waits on the lock before it is retried (and shutdown rechecked).
const LOCK_WAIT: Duration = Duration::from_secs(1);
/// A slave repeats its "waiting for the lock" line at least this often.
const WAITING_LOG_EVERY: Duration = Duration::from_secs(60);

pub fn spawn(
    config: Arc<Config>,
    shutdown: Arc<Shutdown>,
    role: Arc<Role>,
) -> std::io::Result<Election> {
    let (won_tx, won) = bounded(1);
    let (release, release_rx) = bounded(1);
    let thread = std::thread::Builder::new()
        .name("election".to_string())
        .spawn(move || run(&config, &shutdown, &role, won_tx, release_rx))?;
    Ok(Election {
        won,
        release,
        thread,
    })
}

fn run(config: &Config, shutdown: &Shutdown, role: &Role, won: Sender<()>, release: Receiver<()>) {
    let mut waiting = Waiting::default();
    let mut conn: Option<Conn> = None;
    let mut delay = Duration::from_millis(100);
    let mut first_try = true;
    while !shutdown.is_stopping() {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match open(config) {
                Ok(c) => {
                    delay = Duration::from_millis(100);
                    first_try = true;
                    conn.insert(c)
                }
                Err(e) => {
                    log::warn!("{e}; retrying in {} ms", delay.as_millis());
                    shutdown.sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(2));
                    continue;
                }
            },
        };
        // The first try on a connection does not wait, so a slave says at once who holds it.
        let nowait = std::mem::replace(&mut first_try, false);
        let master = |held: lock::Held<'_>| hold(held, config, shutdown, role, (&won, &release));
        let attempt = match lock::with_lock(c, nowait, master) {
            Ok(Some(())) => return,
            Ok(None) => lock::holder(c),
            Err(e) => Err(e),
        };
        match attempt {
            Ok((holder, epoch)) => {
                if holder == config.name {
                    log::warn!("the lock is held by a broker with this same name `{holder}`");
                }
                waiting.log(&holder, epoch);
                role.set(RoleInfo {
                    master: false,
                    epoch,
                    holder,
                });
            }
            Err(e) => {
                log::warn!("election: {e}; reconnecting");
                conn = None;
            }
        }
    }
}

/// Connect the election connection and make sure the lock exists.
fn open(config: &Config) -> Result<Conn, StoreError> {
    let io_timeout = (config.lease / 4).max(LOCK_WAIT * 2);
    let mut conn = store::connect(&config.datastore, config.lease, io_timeout, LOCK_WAIT)?;
    let description = store::server_description(&mut conn)?;
    log::info!("datastore connected: {description} (engine InnoDB)");
    lock::bootstrap(&mut conn)?;
    Ok(conn)
}

/// Throttles the slave's "waiting for the lock" line.
#[derive(Default)]
struct Waiting {
    last: Option<(String, Instant)>,
}

impl Waiting {
    fn log(&mut self, holder: &str, epoch: u64) {
        let repeat = match &self.last {
            Some((h, at)) => h != holder || at.elapsed() >= WAITING_LOG_EVERY,
            None => true,
        };
        if repeat {
            let holder = if holder.is_empty() {
                "nobody yet"
            } else {
                holder
            };
            log::info!("waiting for the lock (held by {holder}, epoch {epoch})");
            self.last = Some((holder.to_string(), Instant::now()));
        }
    }
}

/// Master: keep the lock alive until released or lost.
fn hold(
    mut held: lock::Held<'_>,
    config: &Config,
    shutdown: &Shutdown,
    role: &Role,
    channels: (&Sender<()>, &Receiver<()>),
) {
    let (won, release) = channels;
    role.renew();
    let _ = won.send(());
    let keepalive = config.keepalive();
    loop {
        match release.recv_timeout(keepalive) {
            Ok(()) | Err(RecvTimeoutError::Disconnected) => {
                match held.release() {
                    Ok(()) => log::info!("released the lock"),
                    // Already gone with its connection (the reason was logged when we stopped).
                    Err(e) => log::debug!("releasing the lock: {e}"),
                }
                return;
            }
            Err(RecvTimeoutError::Timeout) => {
                let started = Instant::now();
                if let Err(e) = held.keepalive() {
                    held.abandon();
                    return shutdown.fail(format!("lost the lock: keep-alive failed: {e}"));
                }
                let took = started.elapsed();
                if took > config.lease / 4 {
                    let ms = took.as_millis();
                    return shutdown.fail(format!("lost the lock: keep-alive stalled for {ms} ms"));
                }
                role.renew();
            }
        }
    }
}
