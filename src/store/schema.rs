//! The schema (created idempotently, versioned, InnoDB checked) and recovery reads.
//!
//! Runs on the server thread before clients are served, on the connection `server` opened.

use super::{column, decode_headers, DurableRow, Recovered, StoreError};
use crate::message::{Kind, Message};
use crate::queue::{entry_weight, Entry, PagedMeta, Queue, Slot};
use mysql::prelude::Queryable;
use mysql::{Conn, Row};
use std::collections::HashMap;
use std::sync::Arc;

/// The schema version this build writes and reads.
const SCHEMA_VERSION: u32 = 1;

const TABLES: &[&str] = &[
    "hamq_schema",
    "hamq_messages",
    "hamq_durable_subs",
    "hamq_durable_entries",
];

/// The tables, `{names}` standing for the character set and collation of names (see
/// `name_collation`). Every text column is utf8mb4 with a binary collation, whatever the server's
/// or the database's default: `/queue/A` and `/queue/a` are two destinations (as in ActiveMQ), and
/// a name in any script is stored as it was sent. DYNAMIC rows, so that the unique key of two
/// utf8mb4 names (2,040 bytes) fits whatever `innodb_default_row_format` says.
const CREATE: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS hamq_schema (
        version INT UNSIGNED NOT NULL
    ) ENGINE=InnoDB DEFAULT {names}",
    "CREATE TABLE IF NOT EXISTS hamq_messages (
        id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
        destination VARCHAR(255) {names} NOT NULL,
        priority TINYINT UNSIGNED NOT NULL,
        expires BIGINT NOT NULL,
        timestamp BIGINT NOT NULL,
        redeliveries INT UNSIGNED NOT NULL DEFAULT 0,
        original_destination VARCHAR(255) {names} NULL,
        headers MEDIUMBLOB NOT NULL,
        body LONGBLOB NOT NULL,
        KEY by_destination (destination, id)
    ) ENGINE=InnoDB ROW_FORMAT=DYNAMIC DEFAULT {names}",
    "CREATE TABLE IF NOT EXISTS hamq_durable_subs (
        id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
        client_id VARCHAR(255) {names} NOT NULL,
        name VARCHAR(255) {names} NOT NULL,
        topic VARCHAR(255) {names} NOT NULL,
        UNIQUE KEY by_name (client_id, name),
        KEY by_topic (topic)
    ) ENGINE=InnoDB ROW_FORMAT=DYNAMIC DEFAULT {names}",
    "CREATE TABLE IF NOT EXISTS hamq_durable_entries (
        sub_id BIGINT UNSIGNED NOT NULL,
        msg_id BIGINT UNSIGNED NOT NULL,
        redeliveries INT UNSIGNED NOT NULL DEFAULT 0,
        PRIMARY KEY (sub_id, msg_id),
        KEY by_message (msg_id)
    ) ENGINE=InnoDB DEFAULT {names}",
];

/// A table definition with its `{names}` made `CHARACTER SET utf8mb4 COLLATE <collation>`.
pub(super) fn with_names(definition: &str, collation: &str) -> String {
    definition.replace(
        "{names}",
        &format!("CHARACTER SET utf8mb4 COLLATE {collation}"),
    )
}

/// The binary utf8mb4 collation names are stored in: one that compares every byte, trailing
/// spaces included (NO PAD: `utf8mb4_nopad_bin` on MariaDB, `utf8mb4_0900_bin` on MySQL 8), or
/// `utf8mb4_bin` where the server has neither (MySQL 5.7; it ignores trailing spaces when
/// comparing, so there `a` and `a ` name the same durable subscription).
pub(super) fn name_collation(conn: &mut Conn) -> Result<&'static str, StoreError> {
    const PREFERRED: [&str; 2] = ["utf8mb4_nopad_bin", "utf8mb4_0900_bin"];
    let found: Vec<String> = conn.query(
        "SELECT COLLATION_NAME FROM information_schema.COLLATIONS \
         WHERE COLLATION_NAME IN ('utf8mb4_nopad_bin', 'utf8mb4_0900_bin')",
    )?;
    Ok(PREFERRED
        .into_iter()
        .find(|c| found.iter().any(|f| f == c))
        .unwrap_or("utf8mb4_bin"))
}

/// Convert a table whose text columns (or default) are not utf8mb4 in `collation`: tables made
/// by an older hamq took the server's default, `latin1` on many servers. One `ALTER TABLE` per
/// table, each atomic, checked again at every takeover: a conversion cut short by a crash is
/// finished by the next master, and one already done costs a look at information_schema. Only
/// the master runs it (slaves wait on `hamq_lock`, which has no text and is never altered).
pub(super) fn convert_table(
    conn: &mut Conn,
    table: &str,
    collation: &str,
) -> Result<(), StoreError> {
    let found: Vec<Row> = conn.exec(
        "SELECT COLUMN_NAME, COLLATION_NAME FROM information_schema.COLUMNS \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? AND COLLATION_NAME IS NOT NULL \
         UNION ALL SELECT '(table default)', TABLE_COLLATION FROM information_schema.TABLES \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?",
        (table, table),
    )?;
    let mut old = Vec::new();
    for row in &found {
        let column_name: String = column(row, 0)?;
        let current: String = column::<Option<String>>(row, 1)?.unwrap_or_default();
        if current != collation {
            old.push(format!("{column_name} {current}"));
        }
    }
    if old.is_empty() {
        return Ok(());
    }
    let rows: Option<u64> = conn.query_first(format!("SELECT COUNT(*) FROM {table}"))?;
    log::info!(
        "converting table {table} to utf8mb4 / {collation} ({} rows; was {})",
        rows.unwrap_or(0),
        old.join(", ")
    );
    let started = std::time::Instant::now();
    conn.query_drop(format!(
        "ALTER TABLE {table} ROW_FORMAT=DYNAMIC, \
         CONVERT TO CHARACTER SET utf8mb4 COLLATE {collation}"
    ))?;
    log::info!(
        "converted table {table} in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

pub(super) fn prepare(conn: &mut Conn) -> Result<(), StoreError> {
    let innodb: Option<Row> =
        conn.query_first("SELECT SUPPORT FROM information_schema.ENGINES WHERE ENGINE = 'InnoDB'")?;
    let innodb = innodb.map(|row| column::<String>(&row, 0)).transpose()?;
    if !matches!(innodb.as_deref(), Some("YES" | "DEFAULT")) {
        return Err(StoreError::Unfit(
            "the server has no InnoDB engine; hamq needs InnoDB".to_string(),
        ));
    }
    let collation = name_collation(conn)?;
    for statement in CREATE {
        conn.query_drop(with_names(statement, collation))?;
    }
    check_engines(conn, TABLES)?;
    for table in TABLES {
        convert_table(conn, table, collation)?;
    }
    let row: Option<Row> = conn.query_first("SELECT MAX(version) FROM hamq_schema")?;
    let version = match row {
        Some(row) => column::<Option<u32>>(&row, 0)?,
        None => None,
    };
    match version {
        None => {
            conn.exec_drop(
                "INSERT INTO hamq_schema (version) VALUES (?)",
                (SCHEMA_VERSION,),
            )?;
            log::info!("created schema version {SCHEMA_VERSION}");
        }
        Some(v) if v > SCHEMA_VERSION => {
            return Err(StoreError::Unfit(format!(
                "schema version {v} is newer than this hamq ({SCHEMA_VERSION}); upgrade hamq"
            )))
        }
        // The utf8mb4 conversion above keeps version 1: an older hamq reads converted tables
        // as well as ever, so brokers can be upgraded one at a time. A migration that older
        // readers cannot follow will raise the version here.
        Some(v) => log::info!("schema version {v} is current"),
    }
    Ok(())
}

/// A table created by hand (or by an old default) with another engine has no transactions.
pub(super) fn check_engines(conn: &mut Conn, tables: &[&str]) -> Result<(), StoreError> {
    let rows: Vec<Row> = conn.query(
        "SELECT TABLE_NAME, ENGINE FROM information_schema.TABLES
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME LIKE 'hamq\\_%'",
    )?;
    for row in rows {
        let table: String = column(&row, 0)?;
        let engine: String = column::<Option<String>>(&row, 1)?.unwrap_or_default();
        if tables.contains(&table.as_str()) && !engine.eq_ignore_ascii_case("InnoDB") {
            return Err(StoreError::Unfit(format!(
                "table {table} uses engine {engine}; hamq needs InnoDB \
                 (ALTER TABLE {table} ENGINE=InnoDB)"
            )));
        }
    }
    Ok(())
}

const MESSAGE_COLUMNS: &str = "m.id, m.destination, m.priority, m.expires, m.timestamp, \
     m.original_destination, m.headers, m.body";

/// Metadata columns: enough to order, expire and size an entry without its body.
const META_COLUMNS: &str = "m.id, m.priority, m.expires, LENGTH(m.headers) + LENGTH(m.body) + 128";

/// A deep backlog's recovery logs its progress every this many messages.
const PROGRESS_EVERY: u64 = 100_000;

/// Recovery reads metadata only: bodies are paged in when consumers reach them, so a deep
/// backlog costs a few dozen bytes per message and the new master serves sooner.
pub(super) fn recover(conn: &mut Conn) -> Result<Recovered, StoreError> {
    let query = format!(
        "SELECT {META_COLUMNS}, m.redeliveries, m.destination FROM hamq_messages m
         WHERE m.destination LIKE '/queue/%' ORDER BY m.id"
    );
    // InnoDB's estimate, instant (a COUNT(*) would read a deep backlog once more): enough to
    // tell an operator how far a long recovery has come.
    let estimate: Option<u64> = conn.query_first(
        "SELECT TABLE_ROWS FROM information_schema.TABLES \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'hamq_messages'",
    )?;
    let estimate = estimate.unwrap_or(0);
    if estimate >= PROGRESS_EVERY {
        log::info!("recovering about {estimate} stored messages");
    }
    let mut queues: HashMap<Arc<str>, Queue> = HashMap::new();
    let mut seq: u64 = 0;
    for row in conn.query_iter(query)? {
        let row = row?;
        seq += 1;
        if seq.is_multiple_of(PROGRESS_EVERY) {
            log::info!("recovering: {seq} of about {estimate} queued messages so far");
        }
        let entry = Entry {
            slot: Slot::Paged(meta_from_row(&row)?),
            seq,
            redeliveries: column(&row, 4)?,
            redelivered: true,
        };
        let name: String = column(&row, 5)?;
        match queues.get_mut(name.as_str()) {
            Some(queue) => queue.push(entry),
            None => queues.entry(Arc::from(name)).or_default().push(entry),
        }
    }
    let rows: Vec<Row> =
        conn.query("SELECT id, client_id, name, topic FROM hamq_durable_subs ORDER BY id")?;
    let durables = rows
        .iter()
        .map(|row| {
            Ok(DurableRow {
                id: column(row, 0)?,
                client_id: column(row, 1)?,
                name: column(row, 2)?,
                topic: column(row, 3)?,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    let query = format!(
        "SELECT {META_COLUMNS}, e.redeliveries, e.sub_id FROM hamq_durable_entries e
         JOIN hamq_messages m ON m.id = e.msg_id ORDER BY m.id, e.sub_id"
    );
    let mut entries = Vec::new();
    for row in conn.query_iter(query)? {
        let row = row?;
        entries.push((
            column::<u64>(&row, 5)?,
            meta_from_row(&row)?,
            column::<u32>(&row, 4)?,
        ));
    }
    Ok(Recovered {
        queues,
        last_seq: seq,
        durables,
        entries,
        next_id: next_message_id(conn)?,
    })
}

/// The first message id this master may hand out. The writer assigns ids itself (so a batch is
/// one multi-row INSERT), and every id it writes moves the table's AUTO_INCREMENT counter past
/// it; InnoDB keeps that counter across restarts (MariaDB 10.2.4+, MySQL 8), so reading it
/// through a rolled-back insert never hands out an id that a message once had, even after the
/// message with the highest id was acknowledged and deleted.
fn next_message_id(conn: &mut Conn) -> Result<u64, StoreError> {
    let mut tx = conn.start_transaction(mysql::TxOpts::default())?;
    tx.query_drop(
        "INSERT INTO hamq_messages (destination, priority, expires, timestamp, headers, body) \
         VALUES ('', 0, 0, 0, '', '')",
    )?;
    let reserved = tx.last_insert_id();
    tx.rollback()?;
    let reserved = reserved.ok_or_else(|| StoreError::sql("the id reservation gave no id"))?;
    let row: Option<Row> = conn.query_first("SELECT COALESCE(MAX(id), 0) FROM hamq_messages")?;
    let highest = match row {
        Some(row) => column::<u64>(&row, 0)?,
        None => 0,
    };
    Ok(reserved.max(highest + 1))
}

fn meta_from_row(row: &Row) -> Result<PagedMeta, StoreError> {
    Ok(PagedMeta {
        id: column(row, 0)?,
        priority: column(row, 1)?,
        expires: column(row, 2)?,
        weight: entry_weight(column::<usize>(row, 3)?),
    })
}

/// Whole messages by id (the pager's query). Ids not found were removed meanwhile.
pub(super) fn load_messages(
    conn: &mut Conn,
    ids: &[u64],
) -> Result<HashMap<u64, Arc<Message>>, StoreError> {
    let mut found = HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(500) {
        // Numbers we formatted ourselves, never client text.
        let list: Vec<String> = chunk.iter().map(u64::to_string).collect();
        let query = format!(
            "SELECT {MESSAGE_COLUMNS} FROM hamq_messages m WHERE m.id IN ({})",
            list.join(",")
        );
        for row in conn.query_iter(query)? {
            let message = message_from_row(&row?)?;
            found.insert(message.id, Arc::new(message));
        }
    }
    Ok(found)
}

fn message_from_row(row: &Row) -> Result<Message, StoreError> {
    let headers: Vec<u8> = column(row, 6)?;
    let destination: String = column(row, 1)?;
    Ok(Message {
        id: column(row, 0)?,
        kind: Kind::of(&destination),
        destination: Arc::from(destination),
        persistent: true,
        priority: column(row, 2)?,
        expires: column(row, 3)?,
        timestamp: column(row, 4)?,
        original_destination: column(row, 5)?,
        headers: decode_headers(&headers)?,
        body: column(row, 7)?,
    })
}
