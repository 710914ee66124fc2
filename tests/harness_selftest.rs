//! Tests of the test harness itself: the MariaDB guard and the STOMP client, without a broker.

mod common;

use common::{shared_mariadb, Client, MariaDb, TIMEOUT};
use mysql::prelude::Queryable;
use mysql::{Conn, Opts};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::thread;

fn conn(url: &str) -> Conn {
    Conn::new(Opts::from_url(url).expect("valid url"))
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
}

fn pid_alive(pid: u32) -> bool {
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

#[test]
fn shared_mariadb_gives_two_isolated_databases() {
    let db = shared_mariadb();
    let (url1, url2) = (db.create_database(), db.create_database());
    assert_ne!(url1, url2);
    assert!(
        url1.starts_with(&format!("mysql://hamq:hamq@127.0.0.1:{}/t_", db.port())),
        "{url1}"
    );
    for (url, value) in [(&url1, 1), (&url2, 2)] {
        let mut c = conn(url);
        c.query_drop("CREATE TABLE t (v INT) ENGINE=InnoDB")
            .unwrap();
        c.exec_drop("INSERT INTO t VALUES (?)", (value,)).unwrap();
    }
    assert_eq!(
        conn(&url1).query::<i32, _>("SELECT v FROM t").unwrap(),
        vec![1]
    );
    assert_eq!(
        conn(&url2).query::<i32, _>("SELECT v FROM t").unwrap(),
        vec![2]
    );
    assert!(
        std::ptr::eq(db, shared_mariadb()),
        "one shared server per test binary"
    );
}

#[test]
fn kill9_then_restart_keeps_a_committed_row() {
    let mut db = MariaDb::start();
    let url = db.create_database();
    let mut c = conn(&url);
    c.query_drop("CREATE TABLE t (v VARCHAR(20)) ENGINE=InnoDB")
        .unwrap();
    c.query_drop("INSERT INTO t VALUES ('committed')").unwrap();
    drop(c);

    let (pid, port) = (db.pid(), db.port());
    db.kill9();
    assert!(!pid_alive(pid), "mariadbd {pid} still exists after kill9");
    db.restart();
    assert_eq!(db.port(), port, "restart keeps the port");
    assert_ne!(db.pid(), pid);
    let rows: Vec<String> = conn(&url).query("SELECT v FROM t").unwrap();
    assert_eq!(rows, vec!["committed".to_string()]);
}

#[test]
fn drop_stops_mariadbd_and_removes_its_directory() {
    let db = MariaDb::start();
    let (pid, dir) = (db.pid(), db.dir().to_path_buf());
    assert!(
        db.socket_path().exists() && db.datadir().join("mysql").is_dir(),
        "{}",
        dir.display()
    );
    db.root_conn().query_drop("SELECT 1").unwrap();
    drop(db);
    assert!(!pid_alive(pid), "mariadbd {pid} still exists after drop");
    assert!(!dir.exists(), "{} still exists after drop", dir.display());
}

/// Reads one client frame (up to its NUL) from the fake server's socket.
fn read_client_frame(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut byte = [0u8];
    while s.read(&mut byte).expect("fake server read") == 1 && byte[0] != 0 {
        out.push(byte[0]);
    }
    String::from_utf8(out).unwrap()
}

fn fake_server(listener: TcpListener) {
    let (mut s, _) = listener.accept().unwrap();
    let connect = read_client_frame(&mut s);
    assert!(
        connect.starts_with("CONNECT\n") && connect.contains("accept-version:1.2\n"),
        "{connect:?}"
    );
    // Heart-beats before a CRLF frame; CONNECTED headers are never unescaped.
    s.write_all(b"\n\r\nCONNECTED\r\nversion:1.2\r\nserver:a\\cb\r\n\r\n\0")
        .unwrap();
    // Escaped headers, a binary body with a NUL, then a NUL-terminated body, in one write.
    let mut burst =
        b"MESSAGE\nk\\cx:v\\nw\\\\\ncontent-length:5\ncontent-length:9\n\nab\0cd\0\n".to_vec();
    burst.extend_from_slice(b"ERROR\nmessage:oops\n\ntext body\0");
    s.write_all(&burst).unwrap();
    let send = read_client_frame(&mut s);
    assert!(
        send.starts_with("SEND\ndestination:/queue/a\\cb\n"),
        "{send:?}"
    );
    assert!(
        send.contains("content-length:2\n") && send.ends_with("\n\nhi"),
        "{send:?}"
    );
    let receipt = send
        .lines()
        .find_map(|l| l.strip_prefix("receipt:"))
        .unwrap()
        .to_string();
    let reply =
        format!("MESSAGE\ndestination:/queue/x\n\nearly\0RECEIPT\nreceipt-id:{receipt}\n\n\0");
    s.write_all(reply.as_bytes()).unwrap();
    // Then the connection closes (the socket drops).
}

#[test]
fn client_parses_frames_from_a_fake_server() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = thread::spawn(move || fake_server(listener));

    let mut c = Client::connect(port);
    let msg = c.recv(TIMEOUT);
    assert_eq!(msg.command, "MESSAGE");
    assert_eq!(msg.header("k:x"), Some("v\nw\\"));
    assert_eq!(msg.header("content-length"), Some("5"), "first header wins");
    assert_eq!(msg.body, b"ab\0cd");
    let err = c.recv(TIMEOUT);
    assert_eq!(
        (err.command.as_str(), err.text().as_str()),
        ("ERROR", "text body")
    );

    let receipt = c.send_with_receipt("/queue/a:b", "hi", &[]);
    assert_eq!(receipt.command, "RECEIPT");
    let early = c.recv(TIMEOUT);
    assert_eq!(
        early.text(),
        "early",
        "a frame read while awaiting a receipt is kept"
    );
    assert!(c.recv_eof(TIMEOUT), "the fake server closed the connection");
    server.join().expect("fake server assertions");
}

#[test]
fn try_recv_times_out_without_a_frame() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut c = Client::raw(listener.local_addr().unwrap().port());
    let (_server_side, _) = listener.accept().unwrap();
    assert!(c.try_recv(std::time::Duration::from_millis(50)).is_none());
    assert!(!c.recv_eof(std::time::Duration::from_millis(50)));
}

#[test]
fn python_stomp_script_is_valid_python() {
    let Some(python) = common::python3_with_stomp() else {
        eprintln!("skipped: no python3 with stomp.py");
        return;
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/stomp_py_client.py");
    let status = std::process::Command::new(python)
        .args(["-c", "import ast, sys; ast.parse(open(sys.argv[1]).read())"])
        .arg(&script)
        .status()
        .unwrap();
    assert!(status.success(), "{} does not parse", script.display());
}
