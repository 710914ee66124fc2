//! The lease's SQL (`election = lease`), on the election thread's own plain connections.
//!
//! The lease is the row `hamq_lease.id = 1`: who holds it, under which term, until when. It is
//! taken and renewed only by committed compare-and-set UPDATEs (`WHERE holder = ... AND term =
//! ...`, or `WHERE` it is free or lapsed), so on a cluster the database's certification decides
//! between two brokers that try at once: exactly one commit matches, the other fails with a
//! deadlock (1213) or updates nothing. Expiry is decided by the database's clock, read in the
//! same statement (`NOW_US`: microseconds since 1970 of `UTC_TIMESTAMP(6)`, so neither a
//! broker's clock, nor a time zone, nor a daylight-saving change enters). Only the difference
//! between the clocks of two database nodes does, when brokers use different nodes: it must stay
//! well under half the lease (NTP keeps it to milliseconds).
//!
//! A lease alone would make a slave wait for it to lapse after its master was killed. So the
//! holder also keeps a *presence*: the row lock of `hamq_lock` held in an open transaction on its
//! own node (`lock::try_lock`), which the node releases the moment the holder's connection
//! ends. The lease row says where that is (`node` as the server names itself, `address` as the
//! holder reaches it); a slave waits on the same row lock through a connection to that node and,
//! once it gets it, knows the holder is gone and takes the lease from exactly that holder and
//! term (`steal`). Row locks are node-local on Galera, which is why the lease decides who is
//! master and the presence only tells, early, that a master has gone.

use super::{column, StoreError};
use mysql::prelude::Queryable;
use mysql::{Conn, Row, TxOpts};
use std::time::Duration;

/// The database's clock, as microseconds since 1970 in UTC.
const NOW_US: &str = "TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', UTC_TIMESTAMP(6))";

/// The lease table, `{names}` as in `schema`.
pub(super) const CREATE: &str = "CREATE TABLE IF NOT EXISTS hamq_lease (
    id TINYINT UNSIGNED NOT NULL PRIMARY KEY,
    holder VARCHAR(255) {names} NOT NULL,
    term BIGINT UNSIGNED NOT NULL,
    node VARCHAR(255) {names} NOT NULL,
    address VARCHAR(255) {names} NOT NULL,
    renewed_us BIGINT NOT NULL,
    expires_us BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT {names}";

pub(super) const FIRST_ROW: &str = "INSERT IGNORE INTO hamq_lease VALUES (1, '', 0, '', '', 0, 0)";

/// The lease as one reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The broker's name; empty when nobody holds it.
    pub holder: String,
    pub term: u64,
    /// The holder's node as the server names itself (`topology::Database::node`).
    pub node: String,
    /// `host:port` the holder reaches that node by.
    pub address: String,
    /// Microseconds until it lapses, by the reading node's clock (negative: lapsed).
    pub remaining_us: i64,
    /// How far the holder's node's clock was ahead of the reader's at the last renewal, in
    /// microseconds, when it was (a renewal from the future); 0 otherwise.
    pub ahead_us: i64,
}

impl Lease {
    /// Whether anyone may take it now.
    pub fn is_free(&self) -> bool {
        self.holder.is_empty() || self.remaining_us < 0
    }
}

/// Who takes the lease.
pub struct Claimant<'a> {
    pub name: &'a str,
    pub node: &'a str,
    pub address: &'a str,
    pub lease: Duration,
}

/// The lease as it is now.
pub fn read(conn: &mut Conn) -> Result<Lease, StoreError> {
    let row: Option<Row> = conn.query_first(format!(
        "SELECT holder, term, node, address, expires_us - {NOW_US}, renewed_us - {NOW_US} \
         FROM hamq_lease WHERE id = 1"
    ))?;
    let row = row.ok_or_else(|| StoreError::Unfit("hamq_lease has no row".to_string()))?;
    Ok(Lease {
        holder: column(&row, 0)?,
        term: column(&row, 1)?,
        node: column(&row, 2)?,
        address: column(&row, 3)?,
        remaining_us: column(&row, 4)?,
        ahead_us: column::<i64>(&row, 5)?.max(0),
    })
}

/// Take the lease if it is free or lapsed. `Ok(Some(term))` when taken; `Ok(None)` when someone
/// holds it, or won a race for it (a certification conflict at COMMIT).
pub fn take(conn: &mut Conn, me: &Claimant<'_>) -> Result<Option<u64>, StoreError> {
    claim(conn, me, "(holder = '' OR expires_us < NOW_US)", None)
}

/// Take the lease from `holder` under `term`, whose presence is known to be gone, before it
/// lapses. Nothing happens if anyone took or renewed it under another term meanwhile.
pub fn steal(
    conn: &mut Conn,
    me: &Claimant<'_>,
    holder: &str,
    term: u64,
) -> Result<Option<u64>, StoreError> {
    claim(conn, me, "holder = ? AND term = ?", Some((holder, term)))
}

fn claim(
    conn: &mut Conn,
    me: &Claimant<'_>,
    condition: &str,
    from: Option<(&str, u64)>,
) -> Result<Option<u64>, StoreError> {
    let lease_us = me.lease.as_micros() as i64;
    let sql = format!(
        "UPDATE hamq_lease SET holder = ?, term = term + 1, node = ?, address = ?, \
         renewed_us = {NOW_US}, expires_us = {NOW_US} + ? WHERE id = 1 AND {}",
        condition.replace("NOW_US", NOW_US)
    );
    let mut params: Vec<mysql::Value> = vec![
        me.name.into(),
        me.node.into(),
        me.address.into(),
        lease_us.into(),
    ];
    if let Some((holder, term)) = from {
        params.push(holder.into());
        params.push(term.into());
    }
    let mut tx = conn.start_transaction(TxOpts::default())?;
    tx.exec_drop(sql, params)?;
    if tx.affected_rows() != 1 {
        tx.rollback()?;
        return Ok(None);
    }
    let term: Option<u64> = tx.query_first("SELECT term FROM hamq_lease WHERE id = 1")?;
    match tx.commit() {
        Ok(()) => Ok(term),
        // Another broker's claim was certified first.
        Err(mysql::Error::MySqlError(e)) if e.code == super::DEADLOCK => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Extend the lease by `me.lease` from now. `Ok(false)` when it is no longer ours.
pub fn renew(conn: &mut Conn, me: &Claimant<'_>, term: u64) -> Result<bool, StoreError> {
    conn.exec_drop(
        format!(
            "UPDATE hamq_lease SET renewed_us = {NOW_US}, expires_us = {NOW_US} + ? \
             WHERE id = 1 AND holder = ? AND term = ?"
        ),
        (me.lease.as_micros() as i64, me.name, term),
    )?;
    Ok(conn.affected_rows() == 1)
}

/// Give the lease up at once (a graceful stop): the next claimant takes it without waiting.
pub fn release(conn: &mut Conn, name: &str, term: u64) -> Result<(), StoreError> {
    conn.exec_drop(
        "UPDATE hamq_lease SET holder = '', node = '', address = '', expires_us = 0 \
         WHERE id = 1 AND holder = ? AND term = ?",
        (name, term),
    )?;
    Ok(())
}
