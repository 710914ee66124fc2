//! All SQL: connecting, the lock and epoch (`lock`), the schema and recovery (`schema`), the
//! group-commit writer (`writer`, with each operation's SQL in `apply`) and the body pager
//! (`pager`).
//!
//! `connect`, `prepare` and `recover` run on the server thread before any client is served; the
//! writer runs on its own thread. Nothing here knows sessions or the router: results leave through
//! callbacks (`Done`) and a forwarding function handed in by the server, so arrows point one way.
//! Every write transaction goes through `writer::Writer::commit_batch`, the one place where the
//! fencing check of master/slave will go.

mod apply;
pub mod lock;
mod pager;
mod schema;
mod writer;

pub use pager::{spawn_pager, Connector, PageForward, PageRequest, Paged};
pub use writer::{spawn_writer, Fence, WriterHandle, WriterStats};

use crate::message::Message;
use crate::queue::{PagedMeta, Queue};
use mysql::prelude::Queryable;
use mysql::{Conn, Opts, OptsBuilder, SslOpts};
use std::collections::HashMap;
use std::fmt;
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
}

/// What the writer forwards to the router, in commit order.
#[derive(Debug)]
pub enum Committed {
    Messages(Vec<Arc<Message>>),
    Durable(DurableRow),
    /// The flow-control weight of a batch's SENDs, after its messages: the router gives it back
    /// (`FlowControl::committed`) once it has routed them.
    Admitted(usize),
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

/// Errors at the store boundary.
#[derive(Clone, Debug)]
pub enum StoreError {
    /// The server could not be reached or the connection broke (retryable by reconnecting).
    Unreachable(String),
    /// The server answered with an error.
    Sql(String),
    /// The database is not fit for hamq (wrong engine, newer schema).
    Unfit(String),
    /// The writer thread is gone (shutdown or a previous failure).
    Stopped,
    /// Another broker took over: the epoch moved on from ours. Nothing may be written.
    Deposed { ours: u64, current: u64 },
    /// COMMIT was sent but not confirmed: the batch may or may not have committed.
    Unconfirmed(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Unreachable(e) => write!(f, "datastore unreachable: {e}"),
            StoreError::Sql(e) => write!(f, "datastore error: {e}"),
            StoreError::Unfit(e) => write!(f, "datastore not usable: {e}"),
            StoreError::Stopped => write!(f, "store writer stopped"),
            StoreError::Unconfirmed(e) => {
                write!(
                    f,
                    "the commit was not confirmed, it may or may not have happened: {e}"
                )
            }
            StoreError::Deposed { ours, current } => write!(
                f,
                "deposed: the datastore's epoch is {current}, ours was {ours}"
            ),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<mysql::Error> for StoreError {
    fn from(e: mysql::Error) -> StoreError {
        use std::io::ErrorKind;
        let io_kind = match &e {
            mysql::Error::IoError(io) => Some(io.kind()),
            mysql::Error::CodecError(codec) => std::error::Error::source(codec)
                .and_then(|s| s.downcast_ref::<std::io::Error>())
                .map(std::io::Error::kind),
            _ => None,
        };
        if matches!(io_kind, Some(ErrorKind::WouldBlock | ErrorKind::TimedOut)) {
            StoreError::Unreachable(format!(
                "no answer within the connection's read/write timeout ({e})"
            ))
        } else if e.is_connectivity_error() {
            StoreError::Unreachable(e.to_string())
        } else {
            StoreError::Sql(e.to_string())
        }
    }
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

/// The connection options of a datastore URL: the mysql crate's URL parameters (TLS ones
/// included: `root_cert_path`, `danger_accept_invalid_certs`, `danger_skip_domain_validation`,
/// `cert_chain_path` with `priv_key_path`, `cipher_suites`; any of them turns TLS on) plus
/// hamq's `require_ssl=true`, which turns TLS on by itself (server certificate checked against
/// the built-in Mozilla roots, and `root_cert_path` if given). With TLS on, a server that does
/// not offer it is refused.
pub fn opts_from_url(url: &str) -> Result<Opts, String> {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut require_ssl = false;
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("require_ssl", "true")) => require_ssl = true,
            Some(("require_ssl", "false")) => {}
            Some(("require_ssl", other)) => {
                return Err(format!("require_ssl is `{other}`, not true or false"))
            }
            _ => rest.push(pair),
        }
    }
    let url = match rest.is_empty() {
        true => base.to_string(),
        false => format!("{base}?{}", rest.join("&")),
    };
    let opts = Opts::from_url(&url).map_err(|e| e.to_string())?;
    if require_ssl && opts.get_ssl_opts().is_none() {
        return Ok(OptsBuilder::from_opts(opts)
            .ssl_opts(Some(SslOpts::default()))
            .into());
    }
    Ok(opts)
}

/// Open one connection with bounded socket calls and the session settings of the lease:
/// `wait_timeout = lease`, so the server drops a connection that goes silent (a frozen or cut-off
/// master) and with it any lock it held; the owner keeps it busy at shorter intervals.
/// `io_timeout` bounds every socket read and write; `lock_wait` bounds InnoDB lock waits.
/// Logs nothing: callers say what it was for.
pub fn connect(
    url: &str,
    lease: Duration,
    io_timeout: Duration,
    lock_wait: Duration,
) -> Result<Conn, StoreError> {
    let opts = opts_from_url(url).map_err(StoreError::Unfit)?;
    let tls = opts.get_ssl_opts().is_some();
    let init = vec![
        format!("SET SESSION wait_timeout = {}", lease.as_secs().max(1)),
        format!(
            "SET SESSION innodb_lock_wait_timeout = {}",
            lock_wait.as_secs().max(1)
        ),
        // Fencing relies on INSERT ... SELECT locking the epoch row it reads (writer::apply),
        // which READ COMMITTED would not do: never inherit it from the server's default.
        "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ".to_string(),
    ];
    let opts = OptsBuilder::from_opts(opts)
        .tcp_connect_timeout(Some(Duration::from_secs(5)))
        .read_timeout(Some(io_timeout))
        .write_timeout(Some(io_timeout))
        .stmt_cache_size(Some(STATEMENT_CACHE))
        .init(init);
    Conn::new(opts).map_err(|e| {
        let denied = matches!(&e, mysql::Error::MySqlError(m) if m.code == ACCESS_DENIED);
        match StoreError::from(e) {
            StoreError::Sql(text) if denied && !tls => StoreError::Sql(format!(
                "{text} (MariaDB says this too when it requires secure transport: \
                 then add require_ssl=true to the datastore URL)"
            )),
            other => other,
        }
    })
}

/// ER_ACCESS_DENIED_ERROR: wrong credentials, or (MariaDB) a plain connection to a server that
/// requires TLS.
const ACCESS_DENIED: u16 = 1045;

/// `MariaDB 10.11.6` or `MySQL 8.0.36`, for the "datastore connected" log line.
pub fn server_description(conn: &mut Conn) -> Result<String, StoreError> {
    let row: Option<mysql::Row> = conn.query_first("SELECT VERSION()")?;
    let version: String = match row {
        Some(row) => column(&row, 0)?,
        None => String::new(),
    };
    let product = if version.to_ascii_lowercase().contains("mariadb") {
        "MariaDB"
    } else {
        "MySQL"
    };
    let short = version.split('-').next().unwrap_or(&version);
    Ok(format!("{product} {short}"))
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
    fn tls_url_parameters() {
        let base = "mysql://u:p@db.example:3306/hamq";
        assert!(opts_from_url(base).unwrap().get_ssl_opts().is_none());
        let off = opts_from_url(&format!("{base}?require_ssl=false")).unwrap();
        assert!(off.get_ssl_opts().is_none());
        let on = opts_from_url(&format!("{base}?require_ssl=true")).unwrap();
        assert_eq!(on.get_ssl_opts(), Some(&SslOpts::default()));
        assert_eq!(on.get_db_name(), Some("hamq"));
        let ca = format!("{base}?require_ssl=true&root_cert_path=/etc/ca.pem&prefer_socket=false");
        let ca = opts_from_url(&ca).unwrap();
        let ssl = ca.get_ssl_opts().unwrap();
        assert_eq!(
            ssl.root_cert_path(),
            Some(std::path::Path::new("/etc/ca.pem"))
        );
        assert!(!ssl.accept_invalid_certs());
        assert!(!ca.get_prefer_socket());
        let implied = opts_from_url(&format!("{base}?root_cert_path=/etc/ca.pem")).unwrap();
        assert!(implied.get_ssl_opts().is_some());
        let bad = opts_from_url(&format!("{base}?require_ssl=yes")).unwrap_err();
        assert!(bad.contains("require_ssl"), "{bad}");
        assert!(opts_from_url(&format!("{base}?bogus=1")).is_err());
    }

    #[test]
    fn headers_round_trip_and_corruption_is_an_error() {
        let headers = vec![
            ("a".to_string(), "1".to_string()),
            ("".to_string(), "x\0y".to_string()),
        ];
        let bytes = encode_headers(&headers);
        assert_eq!(decode_headers(&bytes).unwrap(), headers);
        assert!(decode_headers(&bytes[..bytes.len() - 1]).is_err());
        assert!(decode_headers(&[1, 0]).is_err());
    }
}
