//! All SQL: connecting (with session settings that do not depend on the server's defaults),
//! the election's lock row (`lock`, used by the election only, on its own connections) and the
//! fencing epoch (`epoch`), the lease (`lease`), the schema, its utf8mb4 conversion and recovery
//! (`schema`), the group-commit writer (`writer`, with each operation's SQL in `apply`), the
//! body pager (`pager`), the index of durable subscriptions by topic (`durables`, which the
//! router keeps one of too), and the one error type with the classification of MySQL errors
//! (`error`).
//!
//! `connect`, `take_over`, `prepare` and `recover` run on the server thread before any client is
//! served; the writer runs on its own thread. Nothing here knows sessions or the router: results
//! leave through callbacks (`Done`) and a forwarding function handed in by the server, so arrows
//! point one way. Every write transaction goes through `writer::Writer::attempt`, which fences
//! it with the epoch. Inside: `writer` -> `apply`, `epoch`, `durables`, `error`; `schema` and
//! `epoch` are used by the functions here; `lock` and `lease` by the election.

mod apply;
mod durables;
pub mod epoch;
mod error;
pub mod lease;
pub mod lock;
mod pager;
mod schema;
pub mod topology;
mod writer;

pub use durables::Durables;
pub use error::{StoreError, DEADLOCK};
pub use pager::{spawn_pager, Connector, PageRequest, Paged};
pub use writer::{spawn_writer, Fence, WriterHandle, WriterStats};

use crate::flow_control::Admission;
use crate::message::Message;
use crate::queue::{PagedMeta, Queue};
use mysql::prelude::Queryable;
use mysql::{Conn, OptsBuilder};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// What a store write is about: a queued message row, or one durable subscription's entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Message(u64),
    Entry { sub: u64, message: u64 },
}

/// Called once with the outcome after the batch holding the operation committed or failed.
pub type Done = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// One unit of work for the writer thread; each is applied inside the batch's transaction.
pub enum StoreOp {
    /// SENDs (one, or a transaction's) and acknowledged targets to remove. After commit the
    /// sends are forwarded for routing (in order, non-persistent ones too), then `done` runs.
    Commit {
        sends: Vec<Message>,
        removals: Vec<Target>,
        done: Option<Done>,
        /// The flow-control budget the sends took; forwarded to the router after the commit.
        admission: Admission,
    },
    /// The redelivery count of a message or entry changed.
    Redelivered { target: Target, count: u32 },
    /// Move a message to its dead-letter queue; the new row is forwarded for routing.
    DeadLetter {
        target: Target,
        message: Arc<Message>,
        dlq: String,
    },
    /// Create (or re-point) a durable subscription; forwarded as `Committed::Durable`.
    CreateDurable {
        client_id: String,
        name: String,
        topic: String,
        done: Done,
    },
    /// Delete a durable subscription, its entries and the messages no one else holds.
    DeleteDurable { id: u64 },
    /// Delete the rows of a purged queue's waiting messages: bare ids, as a purge may remove
    /// millions.
    Purge { ids: Vec<u64> },
    /// Re-point queue message rows at another queue (an admin move); forwarded as
    /// `Committed::Moved(token)`.
    Move {
        ids: Vec<u64>,
        to: String,
        token: u64,
    },
}

/// What the writer forwards to the router, in commit order.
#[derive(Debug)]
pub enum Committed {
    Messages(Vec<Arc<Message>>),
    Durable(DurableRow),
    /// The flow-control budget of a batch's SENDs, after its messages: the router drops it (and
    /// so gives it back) once it has routed them.
    Admitted(Admission),
    /// The move the router numbered so is committed.
    Moved(u64),
}

/// A durable topic subscription as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DurableRow {
    pub id: u64,
    pub client_id: String,
    pub name: String,
    pub topic: String,
}

/// What the store holds, as metadata (bodies are paged in later), in the order it was sent.
#[derive(Debug)]
pub struct Recovered {
    /// Each queue's waiting messages, paged out, built as the rows arrive: the router adopts
    /// them as they are, so a deep backlog is never held twice at the peak of a takeover.
    pub queues: HashMap<Arc<str>, Queue>,
    /// The arrival number (`Entry::seq`) of the last of them, in message id order.
    pub last_seq: u64,
    pub durables: Vec<DurableRow>,
    /// (durable id, message, redeliveries), ordered by message id.
    pub entries: Vec<(u64, PagedMeta, u32)>,
    /// The first message id the writer hands out (see `schema::next_message_id`).
    pub next_id: u64,
}

/// Give up a transaction on a broken connection without the `ROLLBACK` its `Drop` would send:
/// that would wait out another full read timeout before the broker can stop. The server rolls
/// the transaction back itself when the connection goes; the connection is never used again
/// (its owner stops), so forgetting the borrow-holding guard leaks nothing that matters.
pub(crate) fn abandon(tx: mysql::Transaction<'_>) {
    std::mem::forget(tx);
}

/// Prepared statements kept per connection: the writer's multi-row INSERTs of 1 to 64 rows
/// (see `apply`) and every other statement fit, so none is prepared twice.
const STATEMENT_CACHE: usize = 128;

/// Open one connection with bounded socket calls and the session settings of the lease:
/// `wait_timeout = lease`, so the server drops a connection that goes silent (a frozen or cut-off
/// master) and with it any lock it held; the owner keeps it busy at shorter intervals.
/// `io_timeout` bounds every socket read and write; `lock_wait` bounds InnoDB row lock waits
/// and metadata lock waits (a DDL or a read queued behind one).
///
/// Nothing of the server's defaults is inherited that hamq's statements depend on (see
/// `SESSION`): the character set, SQL mode, isolation level and autocommit are set here.
/// Logs nothing: callers say what it was for.
///
/// On a Galera node every read also waits until the node has applied what the cluster
/// committed before it (`wsrep_sync_wait = 1`): a new master recovers as of the latest commit
/// anywhere in the cluster.
pub fn connect(
    url: &str,
    lease: Duration,
    io_timeout: Duration,
    lock_wait: Duration,
) -> Result<Conn, StoreError> {
    let mut conn = connect_to(url, None, lease, (io_timeout, lock_wait))?;
    let wsrep: Option<(String, String)> = conn.query_first("SHOW VARIABLES LIKE 'wsrep_on'")?;
    if wsrep.is_some_and(|(_, on)| on.eq_ignore_ascii_case("ON")) {
        conn.query_drop("SET SESSION wsrep_sync_wait = 1")?;
    }
    Ok(conn)
}

/// `connect` without the causal reads (the election's connections, which must keep answering
/// on a node outside the primary component, where a causal read times out; its claims and
/// renewals are writes, which certification orders whatever a read saw), to `address`
/// (`host:port`) instead of the URL's own server if given: another node of the same cluster,
/// with the URL's user, password, database and TLS settings.
pub fn connect_to(
    url: &str,
    address: Option<&str>,
    lease: Duration,
    (io_timeout, lock_wait): (Duration, Duration),
) -> Result<Conn, StoreError> {
    let mut opts = crate::config::datastore_opts(url).map_err(StoreError::Unfit)?;
    if let Some(address) = address {
        let (host, port) = address
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.trim_matches(['[', ']']), p.parse::<u16>().ok()?)))
            .ok_or_else(|| StoreError::Unfit(format!("`{address}` is not host:port")))?;
        opts = OptsBuilder::from_opts(opts)
            .ip_or_hostname(Some(host))
            .tcp_port(port)
            .into();
    }
    let tls = opts.get_ssl_opts().is_some();
    let lock_wait = lock_wait.as_secs().max(1);
    let mut init: Vec<String> = SESSION.iter().map(|s| s.to_string()).collect();
    init.push(format!(
        "SET SESSION wait_timeout = {}, innodb_lock_wait_timeout = {lock_wait}, \
         lock_wait_timeout = {lock_wait}",
        lease.as_secs().max(1)
    ));
    let opts = OptsBuilder::from_opts(opts)
        .tcp_connect_timeout(Some(Duration::from_secs(5)))
        .read_timeout(Some(io_timeout))
        .write_timeout(Some(io_timeout))
        .stmt_cache_size(Some(STATEMENT_CACHE))
        .init(init);
    Conn::new(opts).map_err(|e| {
        let denied = matches!(&e, mysql::Error::MySqlError(m) if m.code == ACCESS_DENIED);
        match StoreError::from(e) {
            StoreError::Sql { code, message } if denied && !tls => StoreError::Sql {
                code,
                message: format!(
                    "{message} (MariaDB says this too when it requires secure transport: \
                     then add require_ssl=true to the datastore URL)"
                ),
            },
            other => other,
        }
    })
}

/// `host:port` of the server a datastore URL names (what a lease holder announces).
pub fn address_of(url: &str) -> Result<String, StoreError> {
    let opts = crate::config::datastore_opts(url).map_err(StoreError::Unfit)?;
    Ok(format!(
        "{}:{}",
        opts.get_ip_or_hostname(),
        opts.get_tcp_port()
    ))
}

/// The session settings of every connection, whatever the server's defaults are:
/// - utf8mb4 on the wire (`SET NAMES`): a server started with `latin1` (MariaDB up to 11.5,
///   MySQL 5.7) or with `skip-character-set-client-handshake` would otherwise take a client's
///   multi-byte text for something else. The tables declare their own character set (`schema`).
/// - A strict SQL mode of our own: too-long or unstorable values are errors, never silently cut
///   (`STRICT_ALL_TABLES`), a missing engine is an error, not MyISAM (`NO_ENGINE_SUBSTITUTION`),
///   and none of the modes that change how our statements parse (`ANSI_QUOTES`,
///   `NO_BACKSLASH_ESCAPES`, `PIPES_AS_CONCAT`) can come from the server's default.
/// - REPEATABLE READ: fencing relies on INSERT ... SELECT locking the epoch row it reads
///   (`apply::insert_fenced`), which READ COMMITTED would not do.
/// - autocommit on: the lone fenced INSERT is its own transaction; `init_connect` or a global
///   `autocommit = 0` would leave it open.
const SESSION: &[&str] = &[
    "SET NAMES utf8mb4 COLLATE utf8mb4_bin",
    "SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION', autocommit = 1",
    "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ",
];

/// ER_ACCESS_DENIED_ERROR: wrong credentials, or (MariaDB) a plain connection to a server that
/// requires TLS.
const ACCESS_DENIED: u16 = 1045;

/// The new master's committed epoch bump (see `epoch::take_over`), on a store connection while
/// the election holds the lock. A `hamq_epoch` made by an older hamq is converted to utf8mb4
/// first, so that any broker name can be written to it, and gets its `fenced` column.
pub fn take_over(conn: &mut Conn, name: &str, now_ms: i64) -> Result<u64, StoreError> {
    let collation = schema::name_collation(conn)?;
    schema::convert_table(conn, "hamq_epoch", collation)?;
    epoch::add_fence_column(conn)?;
    epoch::take_over(conn, name, now_ms)
}

/// The server's `max_allowed_packet` as `conn` has it (a session copies the global value when
/// it connects, so the writer's connection keeps the value read here).
pub fn max_allowed_packet(conn: &mut Conn) -> Result<usize, StoreError> {
    let row: Option<mysql::Row> = conn.query_first("SELECT @@SESSION.max_allowed_packet")?;
    match row {
        Some(row) => column(&row, 0),
        None => Err(StoreError::sql("SELECT @@max_allowed_packet gave no row")),
    }
}

/// The largest SEND (body plus `codec::stored_header_bytes` of its headers) whose row fits in
/// one statement under `max_packet`.
pub fn max_send(max_packet: usize) -> usize {
    max_packet.saturating_sub(apply::ROW_OVERHEAD)
}

/// Create or upgrade the schema and check that it is usable (InnoDB, known version).
pub fn prepare(conn: &mut Conn) -> Result<(), StoreError> {
    schema::prepare(conn)
}

/// Everything to serve again after a restart, in the order it was sent.
pub fn recover(conn: &mut Conn) -> Result<Recovered, StoreError> {
    schema::recover(conn)
}

/// Column `index` of a row, checked: the `mysql` crate's typed reads panic on a surprise.
fn column<T: mysql::prelude::FromValue>(row: &mysql::Row, index: usize) -> Result<T, StoreError> {
    match row.get_opt::<T, usize>(index) {
        Some(Ok(value)) => Ok(value),
        _ => Err(StoreError::Unfit(format!(
            "unexpected value in column {index} of a row the store read"
        ))),
    }
}

/// `encode_headers(headers).len()`, without encoding them (`codec::stored_header_bytes`
/// counts a SEND's headers the same way before its body is read).
fn encoded_headers_len(headers: &[(String, String)]) -> usize {
    headers.iter().map(|(n, v)| n.len() + v.len() + 8).sum()
}

/// Headers as stored: for each, name length, name, value length, value (lengths as u32 LE).
fn encode_headers(headers: &[(String, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in headers {
        for part in [name, value] {
            out.extend_from_slice(&(part.len() as u32).to_le_bytes());
            out.extend_from_slice(part.as_bytes());
        }
    }
    out
}

fn decode_headers(mut bytes: &[u8]) -> Result<Vec<(String, String)>, StoreError> {
    let take = |bytes: &mut &[u8]| -> Result<String, StoreError> {
        let bad = || StoreError::Unfit("a stored message has corrupt headers".to_string());
        let (len, rest) = bytes.split_first_chunk::<4>().ok_or_else(bad)?;
        let len = u32::from_le_bytes(*len) as usize;
        if rest.len() < len {
            return Err(bad());
        }
        let (text, rest) = rest.split_at(len);
        *bytes = rest;
        String::from_utf8(text.to_vec()).map_err(|_| bad())
    };
    let mut headers = Vec::new();
    while !bytes.is_empty() {
        let name = take(&mut bytes)?;
        let value = take(&mut bytes)?;
        headers.push((name, value));
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_corruption_is_an_error() {
        let headers = vec![
            ("a".to_string(), "1".to_string()),
            ("".to_string(), "x\0y".to_string()),
        ];
        let bytes = encode_headers(&headers);
        assert_eq!(decode_headers(&bytes).unwrap(), headers);
        assert_eq!(encoded_headers_len(&headers), bytes.len());
        assert_eq!(
            crate::codec::stored_header_bytes(&headers),
            bytes.len(),
            "the decoder counts headers as the store encodes them"
        );
        assert!(decode_headers(&bytes[..bytes.len() - 1]).is_err());
        assert!(decode_headers(&[1, 0]).is_err());
    }
}
