//! The store's one error type and the classification of what the database answers.
//!
//! Plain data, built on whichever thread ran the SQL (server, election, store writer, pager).
//! Every MySQL error is sorted into one class at this boundary, by its code, so callers decide
//! on the class and never on message text:
//!
//! - **One operation's data** (`Rejected`): the statement failed because of what one client
//!   sent, not because the store is unwell. Only that operation fails (its client gets an ERROR
//!   in words); the writer retries the rest of its batch without it and the broker keeps serving.
//!   - 1366 `ER_TRUNCATED_WRONG_VALUE_FOR_FIELD` (incorrect string value) and 1300
//!     `ER_INVALID_CHARACTER_STRING`: text the column's character set cannot hold.
//!   - 1267, 1270, 1271 (`ER_CANT_AGGREGATE_*COLLATIONS`): a client's text compared under a
//!     collation it cannot be converted to.
//!   - 1406 `ER_DATA_TOO_LONG`, 1265 `WARN_DATA_TRUNCATED`: longer than the column.
//!   - 1264 `ER_WARN_DATA_OUT_OF_RANGE`, 1292 `ER_TRUNCATED_WRONG_VALUE`, 1366's numeric
//!     cousins: a number or value the column cannot take.
//!   - 1153 `ER_NET_PACKET_TOO_LARGE`, 1301 `ER_WARN_ALLOWED_PACKET_OVERFLOWED`: one row larger
//!     than the server's `max_allowed_packet` (the session refuses such frames before they get
//!     here; this is the safety net).
//!   - 1180 with `wsrep_max_ws_rows/size exceeded`: a transaction over a Galera cluster's
//!     write-set limits (a STOMP transaction of that many SENDs and ACKs; purges are split).
//!   - 1062 / 1586 duplicate key: only where the key is a client's name (a durable
//!     subscription's client-id and name, see `apply`); a duplicate message id would be hamq's
//!     own fault and stops the master like any other store-wide error.
//! - **Connectivity** (`Unreachable`, `Unconfirmed`): the connection broke or stalled; a COMMIT
//!   whose answer was lost is `Unconfirmed`. The lock may be someone else's now: the master stops.
//! - **Deposition** (`Deposed`): another broker took over.
//! - **Cluster conflicts** (`Sql` with code 1213, told apart by `code()`): on Galera a 1213 at
//!   COMMIT is a lost certification, which the caller classifies: the election's claim lost a
//!   race (it stays a slave), a master's renewal or batch re-reads the lease or epoch and
//!   retries if they are still its own, or stops as deposed. 1047 ("WSREP has not yet prepared
//!   node for application use": the node left the primary component) is `Unreachable`, like a
//!   lost connection: the cluster cannot be reached through that node; a slave waits, a master
//!   stops serving.
//! - **Store-wide** (`Sql`, `Unfit`): anything else the server answers (a missing table, no
//!   privilege, a read-only server, a full disk, a lock wait timeout inside a batch) and a
//!   database hamq cannot use. These say nothing about one client's data: the master stops and
//!   its supervisor restarts it, so a transient fault heals with a fresh takeover.

use std::fmt;

/// Errors at the store boundary.
#[derive(Clone, Debug)]
pub enum StoreError {
    /// The server could not be reached or the connection broke (retryable by reconnecting).
    Unreachable(String),
    /// One operation's data cannot be stored (see the module doc): that operation fails alone.
    Rejected(Rejection),
    /// The server answered with an error that is not about one operation's data.
    Sql {
        /// The MySQL error code; 0 when the error came from the driver, not the server.
        code: u16,
        message: String,
    },
    /// The database is not fit for hamq (wrong engine, newer schema).
    Unfit(String),
    /// The writer thread is gone (shutdown or a previous failure).
    Stopped,
    /// Another broker took over: the epoch moved on from ours. Nothing may be written.
    Deposed { ours: u64, current: u64 },
    /// COMMIT was sent but not confirmed: the batch may or may not have committed.
    Unconfirmed(String),
}

/// Why the database refused one operation's data, in words a client may read (never the
/// server's own text, which names tables and columns).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// The MySQL error code.
    pub code: u16,
    pub problem: &'static str,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (database error {})", self.problem, self.code)
    }
}

/// ER_LOCK_DEADLOCK; on Galera also a transaction that lost certification to another node's
/// (at COMMIT, or aborted in the middle by a replicated write).
pub const DEADLOCK: u16 = 1213;

/// ER_UNKNOWN_COM_ERROR as Galera uses it: "WSREP has not yet prepared node for application
/// use", the node is not a synced member of the primary component.
pub const WSREP_NOT_READY: u16 = 1047;

/// ER_ERROR_DURING_COMMIT.
const ERROR_DURING_COMMIT: u16 = 1180;

/// ER_DUP_ENTRY and ER_DUP_ENTRY_WITH_KEY_NAME.
pub const DUPLICATE_KEY: [u16; 2] = [1062, 1586];

/// The codes of one operation's data, with the words its client gets.
const DATA_ERRORS: &[(u16, &str)] = &[
    (
        1366,
        "a text value holds characters the database cannot store",
    ),
    (
        1300,
        "a text value is not valid in the database's character set",
    ),
    (
        1267,
        "a text value cannot be compared in the database's collation",
    ),
    (
        1270,
        "a text value cannot be compared in the database's collation",
    ),
    (
        1271,
        "a text value cannot be compared in the database's collation",
    ),
    (1406, "a value is longer than the database can store"),
    (1265, "a value had to be cut short to be stored"),
    (1264, "a number is out of the range the database can store"),
    (1292, "a value is not of the type the database expects"),
    (
        1153,
        "the message is larger than the database's max_allowed_packet",
    ),
    (
        1301,
        "the message is larger than the database's max_allowed_packet",
    ),
];

impl StoreError {
    /// The MySQL error code behind this error, if the server gave one.
    pub fn code(&self) -> Option<u16> {
        match self {
            StoreError::Rejected(r) => Some(r.code),
            StoreError::Sql { code, .. } if *code != 0 => Some(*code),
            _ => None,
        }
    }

    /// Whether only the operation that caused it fails (the broker keeps serving).
    pub fn is_rejection(&self) -> bool {
        matches!(self, StoreError::Rejected(_))
    }

    /// A server or driver error that is not about connectivity.
    pub fn sql(message: impl Into<String>) -> StoreError {
        StoreError::Sql {
            code: 0,
            message: message.into(),
        }
    }

    /// A duplicate key that only a client's names can cause, as a rejection of its operation.
    pub fn duplicate_name(self, problem: &'static str) -> StoreError {
        match self.code() {
            Some(code) if DUPLICATE_KEY.contains(&code) => {
                StoreError::Rejected(Rejection { code, problem })
            }
            _ => self,
        }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Unreachable(e) => write!(f, "datastore unreachable: {e}"),
            StoreError::Rejected(r) => write!(f, "{r}"),
            StoreError::Sql { message, .. } => write!(f, "datastore error: {message}"),
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
            return StoreError::Unreachable(
                "no answer within the connection's read/write timeout".to_string(),
            );
        }
        if e.is_connectivity_error() {
            return StoreError::Unreachable(words(&e));
        }
        let mysql::Error::MySqlError(server) = &e else {
            return StoreError::sql(words(&e));
        };
        if server.code == WSREP_NOT_READY {
            return StoreError::Unreachable(
                "the Galera node is not in the primary component \
                 (WSREP has not yet prepared node for application use)"
                    .to_string(),
            );
        }
        // ER_ERROR_DURING_COMMIT is also Galera's answer to a transaction over its write-set
        // limits, which only that transaction's size causes.
        if server.code == ERROR_DURING_COMMIT && server.message.contains("wsrep_max_ws") {
            return StoreError::Rejected(Rejection {
                code: server.code,
                problem: "the transaction is larger than the database cluster accepts \
                          (wsrep_max_ws_rows, wsrep_max_ws_size)",
            });
        }
        match DATA_ERRORS.iter().find(|(code, _)| *code == server.code) {
            Some(&(code, problem)) => StoreError::Rejected(Rejection { code, problem }),
            None => StoreError::Sql {
                code: server.code,
                message: format!(
                    "ERROR {} ({}): {}",
                    server.code, server.state, server.message
                ),
            },
        }
    }
}

/// The driver's error in words: its own `Display` wraps each kind in Rust-like braces
/// (`IoError { server disconnected }`), which an operator's log should not show.
fn words(e: &mysql::Error) -> String {
    match e {
        mysql::Error::IoError(io) => io.to_string(),
        mysql::Error::CodecError(codec) => match std::error::Error::source(codec) {
            Some(io) => io.to_string(),
            None => codec.to_string(),
        },
        mysql::Error::DriverError(driver) => driver.to_string(),
        mysql::Error::UrlError(url) => url.to_string(),
        mysql::Error::TlsError(tls) => format!("TLS: {tls}"),
        mysql::Error::MySqlError(server) => format!("ERROR {}: {}", server.code, server.message),
        mysql::Error::FromValueError(_) | mysql::Error::FromRowError(_) => {
            "an unexpected value in a row the store read".to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(code: u16) -> StoreError {
        StoreError::from(mysql::Error::MySqlError(mysql::MySqlError {
            state: "HY000".to_string(),
            message: "Incorrect string value: '\\xE6\\x97' for column `t`.`hamq_messages`"
                .to_string(),
            code,
        }))
    }

    #[test]
    fn data_errors_are_rejections_in_words_and_others_keep_their_code() {
        let rejected = server(1366);
        assert!(rejected.is_rejection());
        assert_eq!(rejected.code(), Some(1366));
        let words = rejected.to_string();
        assert!(
            words.contains("characters the database cannot store"),
            "{words}"
        );
        assert!(!words.contains("hamq_messages"), "{words}");
        for code in [1406, 1264, 1267, 1153] {
            assert!(server(code).is_rejection(), "{code}");
        }
        let other = server(1146);
        assert!(!other.is_rejection());
        assert_eq!(other.code(), Some(1146));
        assert!(other.to_string().contains("1146"));
    }

    #[test]
    fn driver_errors_read_as_words() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "server disconnected");
        let e = StoreError::from(mysql::Error::IoError(io));
        assert_eq!(e.to_string(), "datastore unreachable: server disconnected");
        let refused = mysql::Error::DriverError(mysql::DriverError::CouldNotConnect(Some((
            "127.0.0.1:1".to_string(),
            "Connection refused (os error 111)".to_string(),
            std::io::ErrorKind::ConnectionRefused,
        ))));
        let text = StoreError::from(refused).to_string();
        assert!(!text.contains("DriverError {"), "{text}");
        assert!(text.contains("Connection refused"), "{text}");
    }

    #[test]
    fn a_duplicate_key_is_the_client_s_only_where_the_caller_says_so() {
        let dup = server(1062);
        assert!(!dup.is_rejection());
        let named = dup.duplicate_name("that name is taken");
        assert!(named.is_rejection());
        assert_eq!(
            named.to_string(),
            "that name is taken (database error 1062)"
        );
        assert!(!server(1146).duplicate_name("x").is_rejection());
    }
}
