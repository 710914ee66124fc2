//! The schema on a server with its own defaults (`latin1`): tables made by an older hamq, which
//! took the server's character set, are converted to utf8mb4 by the master while a slave waits,
//! a conversion cut short is finished by the next master, and what they held is kept.

mod common;

use common::{poll, shared_mariadb_of, Broker, Client, Flavour, TIMEOUT};
use mysql::prelude::Queryable;
use mysql::{Conn, Opts};
use std::time::Duration;

/// The tables as hamq 0.1.0 created them: no character set, so the server's default.
const OLD_SCHEMA: &[&str] = &[
    "CREATE TABLE hamq_lock (id TINYINT UNSIGNED NOT NULL PRIMARY KEY) ENGINE=InnoDB",
    "CREATE TABLE hamq_epoch (id TINYINT UNSIGNED NOT NULL PRIMARY KEY, \
     epoch BIGINT UNSIGNED NOT NULL, holder VARCHAR(255) NOT NULL, since BIGINT NOT NULL) \
     ENGINE=InnoDB",
    "CREATE TABLE hamq_schema (version INT UNSIGNED NOT NULL) ENGINE=InnoDB",
    "CREATE TABLE hamq_messages (id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY, \
     destination VARCHAR(255) NOT NULL, priority TINYINT UNSIGNED NOT NULL, \
     expires BIGINT NOT NULL, timestamp BIGINT NOT NULL, \
     redeliveries INT UNSIGNED NOT NULL DEFAULT 0, original_destination VARCHAR(255) NULL, \
     headers MEDIUMBLOB NOT NULL, body LONGBLOB NOT NULL, \
     KEY by_destination (destination, id)) ENGINE=InnoDB",
    "CREATE TABLE hamq_durable_subs (id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY, \
     client_id VARCHAR(255) NOT NULL, name VARCHAR(255) NOT NULL, topic VARCHAR(255) NOT NULL, \
     UNIQUE KEY by_name (client_id, name), KEY by_topic (topic)) ENGINE=InnoDB",
    "CREATE TABLE hamq_durable_entries (sub_id BIGINT UNSIGNED NOT NULL, \
     msg_id BIGINT UNSIGNED NOT NULL, redeliveries INT UNSIGNED NOT NULL DEFAULT 0, \
     PRIMARY KEY (sub_id, msg_id), KEY by_message (msg_id)) ENGINE=InnoDB",
    "INSERT INTO hamq_lock VALUES (1)",
    "INSERT INTO hamq_epoch VALUES (1, 4, 'old-broker', 0)",
    "INSERT INTO hamq_schema VALUES (1)",
    "INSERT INTO hamq_messages (destination, priority, expires, timestamp, headers, body) \
     VALUES ('/queue/café', 4, 0, 0, '', 'kept through the conversion')",
];

fn store(url: &str) -> Conn {
    Conn::new(Opts::from_url(url).expect("a database URL")).expect("connect")
}

/// (table, column) pairs whose collation is not `utf8mb4_nopad_bin`.
fn unconverted(url: &str) -> Vec<(String, String)> {
    store(url)
        .query(
            "SELECT TABLE_NAME, COLUMN_NAME FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = DATABASE() AND COLLATION_NAME IS NOT NULL \
             AND COLLATION_NAME <> 'utf8mb4_nopad_bin' ORDER BY 1, 2",
        )
        .expect("read information_schema")
}

#[test]
fn an_older_hamq_s_latin1_tables_are_converted_while_a_slave_waits() {
    let db = shared_mariadb_of(Flavour::Defaults);
    let url = db.create_database();
    let mut conn = store(&url);
    for statement in OLD_SCHEMA {
        conn.query_drop(statement).expect("the old schema");
    }
    // A conversion cut short: one table was done before the master died.
    conn.query_drop(
        "ALTER TABLE hamq_durable_subs CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin",
    )
    .expect("convert one table");
    let before = unconverted(&url);
    assert!(before.contains(&("hamq_messages".into(), "destination".into())));
    assert!(before.iter().all(|(t, _)| t != "hamq_durable_subs"));
    // Both start together, one with a name latin1 cannot hold: one converts, the other waits.
    let mut first = Broker::spawn_with_name("broker-東京", &url, &[]);
    let mut second = Broker::spawn_with_name("broker-b", &url, &[]);
    let first_won = poll(TIMEOUT, Duration::from_millis(10), || {
        let listening = |b: &Broker| b.count_log("listening for STOMP") > 0;
        match (listening(&first), listening(&second)) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        }
    })
    .expect("neither broker became master");
    let (master, slave) = match first_won {
        true => (&mut first, &mut second),
        false => (&mut second, &mut first),
    };
    for table in [
        "hamq_messages",
        "hamq_epoch",
        "hamq_schema",
        "hamq_durable_entries",
    ] {
        assert_eq!(
            master.count_log(&format!("converting table {table} to utf8mb4")),
            1,
            "{table}"
        );
    }
    assert_eq!(master.count_log("converting table hamq_durable_subs"), 0);
    assert_eq!(master.count_log("converting table hamq_lock"), 0);
    slave.wait_for_log("waiting for the lock", TIMEOUT);
    assert_eq!(unconverted(&url), Vec::<(String, String)>::new());
    let mut c = Client::connect(master.stomp_port());
    c.subscribe("/queue/café", "s", "client-individual", &[]);
    let kept = c.recv(TIMEOUT);
    assert_eq!(kept.text(), "kept through the conversion");
    assert_eq!(kept.header("destination"), Some("/queue/café"));
    c.send_with_receipt("/queue/日本", "new", &[]);
    // The slave takes over with nothing left to convert, and has both messages.
    master.kill9();
    let port = slave.stomp_port();
    assert_eq!(slave.count_log("converting table"), 0);
    let mut c = Client::connect(port);
    c.subscribe("/queue/café", "a", "auto", &[]);
    assert_eq!(c.recv(TIMEOUT).text(), "kept through the conversion");
    c.subscribe("/queue/日本", "b", "auto", &[]);
    assert_eq!(c.recv(TIMEOUT).text(), "new");
    let holder: Option<String> = store(&url)
        .query_first("SELECT holder FROM hamq_epoch WHERE id = 1")
        .expect("read the holder");
    assert_eq!(holder.as_deref(), Some(slave.name()));
}
