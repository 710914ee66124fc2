//! What kind of database a connection reached: a standalone server, a Galera node, a replica,
//! a Group Replication member; whether it is writable and whether it replicates semi-synchronously.
//!
//! Read once per connection by the election thread (`detect`), logged in its "datastore
//! connected" line and shown in `/status`. Only `SHOW` statements and information_schema reads,
//! which every MySQL and MariaDB version answers (a missing variable is simply absent), so the
//! same code runs on all of them; a statement the user may not run (replica status needs the
//! REPLICATION CLIENT privilege) counts as "not known", never as an error.

use super::{column, StoreError};
use mysql::prelude::Queryable;
use mysql::{Conn, Row};
use std::collections::HashMap;
use std::fmt;

/// How brokers elect their master on a database (config `election`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Election {
    /// `SELECT ... FOR UPDATE` held on the lock row: exclusive on one server.
    Lock,
    /// A lease taken and renewed by committed compare-and-set writes: safe where row locks are
    /// not exclusive across the cluster (Galera, multi-primary Group Replication) or a proxy
    /// may move connections between servers.
    Lease,
}

impl Election {
    pub fn as_str(self) -> &'static str {
        match self {
            Election::Lock => "lock",
            Election::Lease => "lease",
        }
    }
}

/// The replication around the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// No replication seen (it may still have replicas: see `semi_sync`).
    Standalone,
    /// A Galera node (MariaDB Galera Cluster, Percona XtraDB Cluster).
    Galera {
        cluster_size: u32,
        /// `wsrep_cluster_status`: `Primary` when the node is in the primary component.
        status: String,
        /// `wsrep_local_state_comment`: `Synced`, `Donor/Desynced`, `Joining`, ...
        state: String,
        /// `wsrep_ready`: the node accepts queries.
        ready: bool,
    },
    /// A replica of another server (`SHOW REPLICA STATUS` has a row).
    Replica { source: String },
    /// A MySQL Group Replication member.
    GroupReplication { single_primary: bool, role: String },
}

/// What `detect` found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Database {
    /// `MariaDB 10.11.19`, `MySQL 8.0.36`.
    pub version: String,
    pub kind: Kind,
    /// Why the server takes no writes (`read_only=ON`, ...); None when it is writable.
    pub read_only: Option<String>,
    /// Semi-synchronous replication from this server: None when the server has no such plugin,
    /// else whether it is on.
    pub semi_sync: Option<bool>,
    /// This server as it names itself (`hostname:port`, and the Galera node name): how a broker
    /// tells that two connections reached the same node.
    pub node: String,
    /// Galera's per-transaction limits (`wsrep_max_ws_rows`, 0 = none; `wsrep_max_ws_size`).
    pub write_set_limits: Option<(u64, u64)>,
    /// Binary logging is on: the server may have replicas.
    pub log_bin: bool,
}

impl Database {
    /// The election `auto` picks: a lease where a row lock is not exclusive across the
    /// cluster, the row lock elsewhere.
    pub fn auto_election(&self) -> Election {
        match &self.kind {
            Kind::Galera { .. } | Kind::GroupReplication { .. } => Election::Lease,
            Kind::Standalone | Kind::Replica { .. } => Election::Lock,
        }
    }

    /// Why a broker must not become master through this server, if it must not: it takes no
    /// writes, or (Galera) it is not a synced member of the primary component.
    pub fn unfit_for_master(&self) -> Option<String> {
        if let Some(why) = &self.read_only {
            return Some(format!("the server is read-only ({why})"));
        }
        match &self.kind {
            Kind::Replica { source } => Some(format!("the server is a replica of {source}")),
            Kind::Galera { status, .. } if status != "Primary" => Some(format!(
                "the Galera node is not in the primary component (wsrep_cluster_status {status})"
            )),
            Kind::Galera { ready: false, .. } => {
                Some("the Galera node is not ready (wsrep_ready OFF)".to_string())
            }
            Kind::Galera { state, .. } if state != "Synced" => Some(format!(
                "the Galera node is not synced (wsrep_local_state_comment {state})"
            )),
            Kind::GroupReplication { role, .. } if role != "PRIMARY" => Some(format!(
                "the server is a Group Replication {} member",
                role.to_lowercase()
            )),
            _ => None,
        }
    }

    /// What a master on this database should be warned of, if anything: replication that may
    /// lose committed rows when the database fails over, or an election that is not safe here.
    pub fn warnings(&self, election: Election) -> Vec<String> {
        let mut warnings = Vec::new();
        let clustered = matches!(
            self.kind,
            Kind::Galera { .. } | Kind::GroupReplication { .. }
        );
        if !clustered && self.log_bin && self.semi_sync != Some(true) {
            warnings.push(
                "binary logging is on and semi-synchronous replication is off: if the \
                 database fails over to an asynchronous replica, messages that got their \
                 RECEIPT just before may be lost with the rows the replica never received \
                 (turn on rpl_semi_sync_master_enabled, with rpl_semi_sync_master_wait_point \
                 = AFTER_SYNC)"
                    .to_string(),
            );
        }
        if clustered && election == Election::Lock {
            warnings.push(
                "election = lock on a cluster: row locks are not exclusive across its nodes, \
                 so brokers on two nodes can both become master (use election = auto or lease)"
                    .to_string(),
            );
        }
        warnings
    }
}

impl fmt::Display for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.version)?;
        match &self.kind {
            Kind::Standalone => write!(f, ", standalone")?,
            Kind::Galera {
                cluster_size,
                status,
                state,
                ..
            } => write!(
                f,
                ", Galera node {} in a cluster of {cluster_size} ({status}, {state})",
                self.node
            )?,
            Kind::Replica { source } => write!(f, ", replica of {source}")?,
            Kind::GroupReplication {
                single_primary,
                role,
            } => {
                let mode = if *single_primary {
                    "single-primary"
                } else {
                    "multi-primary"
                };
                write!(f, ", Group Replication {mode} {}", role.to_lowercase())?
            }
        }
        match &self.read_only {
            Some(why) => write!(f, ", read-only ({why})")?,
            None => write!(f, ", read-write")?,
        }
        // Semi-sync only means something where there is a binary log to replicate.
        match (self.log_bin, self.semi_sync) {
            (true, Some(true)) => write!(f, ", binlog, semi-sync on"),
            (true, Some(false)) => write!(f, ", binlog, semi-sync off"),
            (true, None) => write!(f, ", binlog"),
            (false, _) => Ok(()),
        }
    }
}

/// Variables read by name (absent ones are simply missing from the answer).
const VARIABLES: &str = "'version', 'version_comment', 'hostname', 'port', 'read_only', \
     'super_read_only', 'innodb_read_only', 'wsrep_on', 'wsrep_node_name', \
     'wsrep_max_ws_rows', 'wsrep_max_ws_size', 'rpl_semi_sync_master_enabled', \
     'rpl_semi_sync_source_enabled', 'group_replication_group_name', \
     'group_replication_single_primary_mode', 'log_bin'";

const STATUS: &str = "'wsrep_cluster_size', 'wsrep_cluster_status', \
     'wsrep_local_state_comment', 'wsrep_ready'";

/// Look at the server `conn` reached.
pub fn detect(conn: &mut Conn) -> Result<Database, StoreError> {
    let vars = named(
        conn,
        &format!("SHOW GLOBAL VARIABLES WHERE Variable_name IN ({VARIABLES})"),
    )?;
    let on = |name: &str| vars.get(name).is_some_and(|v| v.eq_ignore_ascii_case("ON"));
    let read_only = ["super_read_only", "read_only", "innodb_read_only"]
        .into_iter()
        .find(|name| on(name))
        .map(|name| format!("{name}=ON"));
    let hostname = vars.get("hostname").cloned().unwrap_or_default();
    let port = vars.get("port").cloned().unwrap_or_default();
    let mut node = format!("{hostname}:{port}");
    let kind = if on("wsrep_on") {
        let status = named(
            conn,
            &format!("SHOW GLOBAL STATUS WHERE Variable_name IN ({STATUS})"),
        )?;
        let text = |name: &str| status.get(name).cloned().unwrap_or_default();
        if let Some(name) = vars.get("wsrep_node_name").filter(|n| !n.is_empty()) {
            node = format!("{node} ({name})");
        }
        Kind::Galera {
            cluster_size: text("wsrep_cluster_size").parse().unwrap_or(0),
            status: text("wsrep_cluster_status"),
            state: text("wsrep_local_state_comment"),
            ready: text("wsrep_ready").eq_ignore_ascii_case("ON"),
        }
    } else if vars
        .get("group_replication_group_name")
        .is_some_and(|g| !g.is_empty())
    {
        Kind::GroupReplication {
            single_primary: on("group_replication_single_primary_mode"),
            role: group_replication_role(conn).unwrap_or_else(|| "UNKNOWN".to_string()),
        }
    } else {
        match replica_source(conn) {
            Some(source) => Kind::Replica { source },
            None => Kind::Standalone,
        }
    };
    let semi_sync = [
        "rpl_semi_sync_master_enabled",
        "rpl_semi_sync_source_enabled",
    ]
    .into_iter()
    .find(|name| vars.contains_key(*name))
    .map(on);
    let number = |name: &str| vars.get(name).and_then(|v| v.parse::<u64>().ok());
    let write_set_limits = match (number("wsrep_max_ws_rows"), number("wsrep_max_ws_size")) {
        (Some(rows), Some(size)) if on("wsrep_on") => Some((rows, size)),
        _ => None,
    };
    Ok(Database {
        version: describe_version(vars.get("version").map_or("", String::as_str)),
        kind,
        read_only,
        semi_sync,
        node,
        write_set_limits,
        log_bin: on("log_bin"),
    })
}

/// `MariaDB 10.11.6` or `MySQL 8.0.36`.
fn describe_version(version: &str) -> String {
    let product = if version.to_ascii_lowercase().contains("mariadb") {
        "MariaDB"
    } else {
        "MySQL"
    };
    let short = version.split('-').next().unwrap_or(version);
    format!("{product} {short}")
}

/// `SHOW ... WHERE Variable_name IN (...)` as a map with lower-case names.
fn named(conn: &mut Conn, query: &str) -> Result<HashMap<String, String>, StoreError> {
    let rows: Vec<Row> = conn.query(query)?;
    rows.iter()
        .map(|row| {
            let name: String = column(row, 0)?;
            let value: Option<String> = column(row, 1)?;
            Ok((name.to_ascii_lowercase(), value.unwrap_or_default()))
        })
        .collect()
}

/// The source of a replica: `SHOW REPLICA STATUS` (MariaDB 10.5.1+, MySQL 8.0.22+), else the
/// older `SHOW SLAVE STATUS`. None when there is no row, or the user may not ask.
fn replica_source(conn: &mut Conn) -> Option<String> {
    for query in ["SHOW REPLICA STATUS", "SHOW SLAVE STATUS"] {
        if let Ok(rows) = conn.query::<Row, _>(query) {
            let row = rows.into_iter().next()?;
            let host = ["Source_Host", "Master_Host"]
                .iter()
                .find_map(|c| row.get_opt::<String, _>(*c).and_then(Result::ok))
                .unwrap_or_default();
            let port = ["Source_Port", "Master_Port"]
                .iter()
                .find_map(|c| row.get_opt::<u64, _>(*c).and_then(Result::ok))
                .unwrap_or(0);
            return Some(format!("{host}:{port}"));
        }
    }
    None
}

/// This member's role in its group (`PRIMARY`, `SECONDARY`), from performance_schema.
fn group_replication_role(conn: &mut Conn) -> Option<String> {
    conn.query_first::<String, _>(
        "SELECT MEMBER_ROLE FROM performance_schema.replication_group_members \
         WHERE MEMBER_ID = @@server_uuid",
    )
    .ok()
    .flatten()
}

/// The engines of hamq's tables that exist, for the "datastore connected" line: `InnoDB`, or
/// each table with another engine (which `schema` and `lock` refuse).
pub fn table_engines(conn: &mut Conn) -> Result<String, StoreError> {
    let rows: Vec<Row> = conn.query(
        "SELECT TABLE_NAME, ENGINE FROM information_schema.TABLES \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME LIKE 'hamq\\_%' ORDER BY TABLE_NAME",
    )?;
    let mut others = Vec::new();
    for row in &rows {
        let table: String = column(row, 0)?;
        let engine: String = column::<Option<String>>(row, 1)?.unwrap_or_default();
        if !engine.eq_ignore_ascii_case("InnoDB") {
            others.push(format!("{table} on {engine}"));
        }
    }
    Ok(match (rows.is_empty(), others.is_empty()) {
        (true, _) => "no hamq tables yet".to_string(),
        (false, true) => "tables on InnoDB".to_string(),
        (false, false) => others.join(", "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn galera(status: &str, state: &str) -> Database {
        Database {
            version: "MariaDB 10.11.6".to_string(),
            kind: Kind::Galera {
                cluster_size: 3,
                status: status.to_string(),
                state: state.to_string(),
                ready: true,
            },
            read_only: None,
            semi_sync: Some(false),
            node: "db1:3306 (node1)".to_string(),
            write_set_limits: Some((0, 2147483647)),
            log_bin: false,
        }
    }

    #[test]
    fn the_election_and_the_refusals_follow_what_was_found() {
        let synced = galera("Primary", "Synced");
        assert_eq!(synced.auto_election(), Election::Lease);
        assert_eq!(synced.unfit_for_master(), None);
        assert_eq!(
            synced.to_string(),
            "MariaDB 10.11.6, Galera node db1:3306 (node1) in a cluster of 3 (Primary, Synced), \
             read-write"
        );
        let cut = galera("non-Primary", "Initialized");
        assert!(cut
            .unfit_for_master()
            .unwrap()
            .contains("primary component"));
        let joining = galera("Primary", "Joining");
        assert!(joining.unfit_for_master().unwrap().contains("Joining"));
        let replica = Database {
            kind: Kind::Replica {
                source: "db0:3306".to_string(),
            },
            read_only: Some("read_only=ON".to_string()),
            ..synced.clone()
        };
        assert_eq!(replica.auto_election(), Election::Lock);
        assert_eq!(
            replica.unfit_for_master().unwrap(),
            "the server is read-only (read_only=ON)"
        );
        let secondary = Database {
            kind: Kind::GroupReplication {
                single_primary: true,
                role: "SECONDARY".to_string(),
            },
            ..synced
        };
        assert_eq!(secondary.auto_election(), Election::Lease);
        assert!(secondary.unfit_for_master().unwrap().contains("secondary"));
        assert_eq!(
            describe_version("10.11.6-MariaDB-0+deb12u1"),
            "MariaDB 10.11.6"
        );
        assert_eq!(describe_version("8.0.36"), "MySQL 8.0.36");
        let standalone = Database {
            kind: Kind::Standalone,
            read_only: None,
            log_bin: true,
            ..galera("Primary", "Synced")
        };
        assert!(standalone.warnings(Election::Lock)[0].contains("semi-synchronous"));
        let semi = Database {
            semi_sync: Some(true),
            ..standalone
        };
        assert!(semi.warnings(Election::Lock).is_empty());
        let cluster = galera("Primary", "Synced");
        assert!(cluster.warnings(Election::Lease).is_empty());
        assert!(cluster.warnings(Election::Lock)[0].contains("both become master"));
    }
}
