//! The row-lock election (`election = lock`), on the election thread.
//!
//! As a slave it retries `SELECT ... FOR UPDATE` at once after each 1 s lock wait, logging who
//! holds the lock, and never writes or runs DDL (beyond creating the lock tables the very first
//! time). The first try on a connection does not wait, so a slave says at once who holds it. As
//! master it holds the transaction open and uses its connection every keepalive.

use super::{serve_as_master, Ctx, Ended, LockLost, Mastership, Waiting};
use crate::store::epoch;
use crate::store::lock::{self, Held};
use mysql::Conn;
use std::time::Duration;

pub(super) fn elect(ctx: &Ctx<'_>, mut conn: Conn) -> Ended {
    let mut waiting = Waiting::default();
    let mut nowait = true;
    while !ctx.shutdown.is_stopping() {
        match lock::try_lock(&mut conn, std::mem::take(&mut nowait)) {
            // Master for as long as the lock's transaction lives.
            Ok(Some(held)) => return serve_as_master(ctx, Locked(Some(held))),
            Ok(None) => {}
            Err(e) => return Ended::Reconnect(e),
        };
        // Another broker holds it: say which.
        match epoch::holder(&mut conn) {
            Ok(holder) => waiting.log(ctx, (&holder.0, holder.1), ""),
            Err(e) => return Ended::Reconnect(e),
        }
    }
    Ended::Stopping
}

/// The lock's transaction; None once its connection broke.
struct Locked<'a>(Option<Held<'a>>);

impl Mastership for Locked<'_> {
    fn prove(&mut self) -> Result<(), LockLost> {
        let Some(held) = self.0.as_mut() else {
            return Err(LockLost::Gone);
        };
        held.keepalive().map_err(|e| {
            // The connection broke: the server already dropped the transaction with it.
            if let Some(held) = self.0.take() {
                held.abandon();
            }
            LockLost::KeepAlive(e)
        })
    }

    /// A quarter of the lease: a connection silent for the lease is dropped by the server, and
    /// the lock with it, so a master must notice a stall well before.
    fn stall_bound(&self, lease: Duration) -> Duration {
        lease / 4
    }

    fn release(self) {
        if let Some(held) = self.0 {
            match held.release() {
                Ok(()) => log::info!("released the lock"),
                // Already gone with its connection (the reason was logged when we stopped).
                Err(e) => log::debug!("releasing the lock: {e}"),
            }
        }
    }
}
