//! The election lock's SQL, on the election thread's own plain connection (never pooled: a pool
//! would roll the transaction back when the connection is returned).
//!
//! The lock is the row `hamq_lock.id = 1`, held by `SELECT ... FOR UPDATE` inside a transaction
//! that stays open for as long as the broker is master: `Held` borrows the connection for exactly
//! that scope and `release` ends it with a rollback. If the connection dies (kill -9, a frozen
//! host whose session passes `wait_timeout`, a network cut, a database restart) the server rolls
//! the transaction back and the lock passes to a waiting slave. `bootstrap` creates the
//! election's tables (lock, epoch, lease). Used by the election only; the fencing epoch's SQL,
//! which the server and the store writer run on their own connections, is `epoch`'s.

use super::{column, StoreError};
use mysql::prelude::Queryable;
use mysql::{Conn, Row, Transaction, TxOpts};

/// "Lock wait timeout exceeded" (MySQL, MariaDB; also MariaDB's NOWAIT): someone else holds it.
const LOCK_WAIT_TIMEOUT: u16 = 1205;
/// MySQL 8's answer to NOWAIT on a locked row.
const LOCK_NOWAIT: u16 = 3572;

const BOOTSTRAP: &[(&str, &str)] = &[
    (
        "hamq_lock",
        "CREATE TABLE IF NOT EXISTS hamq_lock (id TINYINT UNSIGNED NOT NULL PRIMARY KEY) \
         ENGINE=InnoDB DEFAULT {names}",
    ),
    (
        "hamq_epoch",
        "CREATE TABLE IF NOT EXISTS hamq_epoch (
            id TINYINT UNSIGNED NOT NULL PRIMARY KEY,
            epoch BIGINT UNSIGNED NOT NULL,
            holder VARCHAR(255) {names} NOT NULL,
            since BIGINT NOT NULL,
            fenced BIGINT UNSIGNED NOT NULL DEFAULT 0
        ) ENGINE=InnoDB DEFAULT {names}",
    ),
    ("hamq_lease", super::lease::CREATE),
];

/// The election's tables, whose engine `bootstrap` checks.
const TABLES: [&str; 3] = ["hamq_lock", "hamq_epoch", "hamq_lease"];

/// Create the lock, epoch and lease tables and rows the very first time (a table missing from
/// an older hamq's database, the lease's, is created the same way: nobody uses it yet). It only
/// reads when they exist (a slave never runs DDL against a live master's tables: DDL would
/// wait behind its lock). A table on another engine than InnoDB has no row locks or
/// transactions, so two brokers would both win: refused, naming the table.
pub fn bootstrap(conn: &mut Conn) -> Result<(), StoreError> {
    for (table, create) in BOOTSTRAP {
        let row: Option<Row> = conn.exec_first(
            "SELECT COUNT(*) FROM information_schema.TABLES
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?",
            (table,),
        )?;
        let exists = row.map(|r| column::<u64>(&r, 0)).transpose()?.unwrap_or(0) > 0;
        if !exists {
            let collation = super::schema::name_collation(conn)?;
            conn.query_drop(super::schema::with_names(create, collation))?;
            log::info!("created table {table}");
        }
    }
    super::schema::check_engines(conn, &TABLES)?;
    let rows: Option<Row> = conn.query_first(
        "SELECT (SELECT COUNT(*) FROM hamq_lock WHERE id = 1) + \
         (SELECT COUNT(*) FROM hamq_epoch WHERE id = 1) + \
         (SELECT COUNT(*) FROM hamq_lease WHERE id = 1)",
    )?;
    let rows = rows.map(|r| column::<u64>(&r, 0)).transpose()?.unwrap_or(0);
    if rows < 3 {
        conn.query_drop("INSERT IGNORE INTO hamq_lock (id) VALUES (1)")?;
        conn.query_drop(
            "INSERT IGNORE INTO hamq_epoch (id, epoch, holder, since) VALUES (1, 0, '', 0)",
        )?;
        conn.query_drop(super::lease::FIRST_ROW)?;
    }
    Ok(())
}

/// The lock, held for the lifetime of this value.
pub struct Held<'a> {
    tx: Transaction<'a>,
}

/// Try for the lock, waiting up to the session's `innodb_lock_wait_timeout` (not at all with
/// `nowait`). `Ok(Some(held))`: this broker holds it for as long as `held` lives (it borrows the
/// connection, whose transaction is the lock). `Ok(None)`: another broker holds it.
pub fn try_lock(conn: &mut Conn, nowait: bool) -> Result<Option<Held<'_>>, StoreError> {
    let mut tx = conn.start_transaction(TxOpts::default())?;
    let query = if nowait {
        "SELECT id FROM hamq_lock WHERE id = 1 FOR UPDATE NOWAIT"
    } else {
        "SELECT id FROM hamq_lock WHERE id = 1 FOR UPDATE"
    };
    match tx.query_drop(query) {
        Ok(()) => Ok(Some(Held { tx })),
        Err(mysql::Error::MySqlError(e))
            if e.code == LOCK_WAIT_TIMEOUT || e.code == LOCK_NOWAIT =>
        {
            // Explicit rollback: Drop would swallow its error.
            let _ = tx.rollback();
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

impl Held<'_> {
    /// Use the connection (so `wait_timeout` never fires) and prove it still works; the
    /// connection's read timeout bounds how long this may take.
    pub fn keepalive(&mut self) -> Result<(), StoreError> {
        self.tx.query_drop("DO 1")?;
        Ok(())
    }

    /// The connection broke: stop without the rollback that would wait on it (the server
    /// already dropped the transaction, and the lock with it).
    pub fn abandon(self) {
        super::abandon(self.tx);
    }

    /// Give the lock up at once: a waiting slave gets it the moment this returns.
    pub fn release(self) -> Result<(), StoreError> {
        self.tx.rollback()?;
        Ok(())
    }
}
