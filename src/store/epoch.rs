//! The fencing epoch's SQL: the row `hamq_epoch.id = 1` says who was master last and under
//! which epoch. The new master bumps it (`take_over`, on the server's store connection while the
//! election holds the lock); every write transaction of the store writer checks it first
//! (`check_epoch`, or `fence_by_write` on a cluster), so a deposed master's writes fail instead
//! of landing after a takeover. The election reads it (`holder`) for its "waiting for the lock"
//! line. No lock is taken or held here (that is `lock`'s).

use super::{column, StoreError};
use mysql::prelude::Queryable;
use mysql::{Conn, Row, Transaction, TxOpts};

/// A `hamq_epoch` made by an older hamq lacks `fenced` (see `fence_by_write`): added by the
/// new master before its epoch bump.
pub fn add_fence_column(conn: &mut Conn) -> Result<(), StoreError> {
    let found: Option<u64> = conn.query_first(
        "SELECT COUNT(*) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() \
         AND TABLE_NAME = 'hamq_epoch' AND COLUMN_NAME = 'fenced'",
    )?;
    if found == Some(0) {
        log::info!("adding column fenced to table hamq_epoch");
        conn.query_drop(
            "ALTER TABLE hamq_epoch ADD COLUMN fenced BIGINT UNSIGNED NOT NULL DEFAULT 0",
        )?;
    }
    Ok(())
}

/// Who was master last, and its epoch (a plain read; never waits).
pub fn holder(conn: &mut Conn) -> Result<(String, u64), StoreError> {
    let row: Option<Row> = conn.query_first("SELECT holder, epoch FROM hamq_epoch WHERE id = 1")?;
    match row {
        Some(row) => Ok((column(&row, 0)?, column(&row, 1)?)),
        None => Ok((String::new(), 0)),
    }
}

/// The new master's committed epoch bump (run on a store connection while the lock is held).
pub fn take_over(conn: &mut Conn, name: &str, now_ms: i64) -> Result<u64, StoreError> {
    let mut tx = conn.start_transaction(TxOpts::default())?;
    tx.exec_drop(
        "UPDATE hamq_epoch SET epoch = epoch + 1, holder = ?, since = ? WHERE id = 1",
        (name, now_ms),
    )?;
    let row: Option<Row> = tx.query_first("SELECT epoch FROM hamq_epoch WHERE id = 1")?;
    let epoch = match row {
        Some(row) => column::<u64>(&row, 0)?,
        None => return Err(StoreError::Unfit("hamq_epoch has no row".to_string())),
    };
    tx.commit()?;
    Ok(epoch)
}

/// The fencing check of a transaction on a cluster (`election = lease`): a write to the epoch
/// row, which puts that row in the transaction's write set. A read is not certified on Galera;
/// this write is, against the new master's epoch bump, so whichever commits second fails (a
/// deadlock, 1213), and after a takeover this UPDATE matches no row.
pub fn fence_by_write(tx: &mut Transaction<'_>, ours: u64) -> Result<(), StoreError> {
    tx.exec_drop(
        "UPDATE hamq_epoch SET fenced = fenced + 1 WHERE id = 1 AND epoch = ?",
        (ours,),
    )?;
    if tx.affected_rows() == 1 {
        return Ok(());
    }
    let current: Option<u64> = tx.query_first("SELECT epoch FROM hamq_epoch WHERE id = 1")?;
    Err(StoreError::Deposed {
        ours,
        current: current.unwrap_or(0),
    })
}

/// The fencing check every write transaction makes first on one server (`election = lock`).
/// The shared lock makes a new master's epoch bump wait for this transaction to end, so a
/// deposed master's last commit is ordered before the takeover (and recovered by the new
/// master) or fails here.
pub fn check_epoch(tx: &mut Transaction<'_>, ours: u64) -> Result<(), StoreError> {
    let row: Option<Row> =
        tx.query_first("SELECT epoch FROM hamq_epoch WHERE id = 1 LOCK IN SHARE MODE")?;
    let current = match row {
        Some(row) => column::<u64>(&row, 0)?,
        None => 0,
    };
    if current != ours {
        return Err(StoreError::Deposed { ours, current });
    }
    Ok(())
}
