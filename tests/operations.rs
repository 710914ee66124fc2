//! Day-to-day operation as an operator meets it: a health check that answers while the status
//! port is abused, `/health` naming each state, a standby that could not serve refusing to take
//! the lock, SIGHUP reloading users without a failover, and misspelt `HAMQ_` variables refused.

mod common;

use common::probe::{http, http_as};
use common::{
    free_port, hamq_command, hash_password, shared_mariadb, Broker, Client, Pair, STEP, TIMEOUT,
};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

fn status_env(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// While 10 sockets send half a request and stop, and 32 clients send wrong admin passwords,
/// every `/health` probe is answered within 100 ms.
#[test]
fn health_answers_in_100_ms_during_a_slowloris_and_password_guessing() {
    let port = free_port();
    let users = format!("ops:{}", hash_password("right"));
    let env = [
        ("HAMQ_STATUS_LISTEN", status_env(port)),
        ("HAMQ_USERS", users),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let broker = Broker::start(&shared_mariadb().create_database(), &env);
    broker.stomp_port();
    let admin = || http_as(port, "GET", "/admin/status", Some(("ops", "right"))).0;
    assert_eq!(admin(), 200, "the admin's first login, verified once");
    let slow: Vec<TcpStream> = (0..10)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
            s.write_all(b"GET /hea").expect("write");
            s
        })
        .collect();
    let guessers: Vec<_> = (0..32)
        .map(|i| {
            std::thread::spawn(move || {
                let (code, _, _) = http_as(
                    port,
                    "GET",
                    "/admin/status",
                    Some(("ops", &format!("no{i}"))),
                );
                code
            })
        })
        .collect();
    // A known admin does not queue behind the guessers' password checks.
    let asked = Instant::now();
    assert_eq!(admin(), 200);
    let admin_took = asked.elapsed();
    let mut worst = Duration::ZERO;
    for _ in 0..20 {
        let asked = Instant::now();
        assert_eq!(http(port, "GET", "/health"), (200, "master\n".to_string()));
        worst = worst.max(asked.elapsed());
    }
    for guesser in guessers {
        assert_eq!(guesser.join().expect("a guesser"), 401);
    }
    println!("slowest /health during the abuse: {worst:?}; the known admin: {admin_took:?}");
    assert!(worst < Duration::from_millis(100), "{worst:?}");
    assert!(admin_took < Duration::from_millis(100), "{admin_took:?}");
    // The half-sent requests are given up after 2 s with a 408.
    for mut s in slow {
        s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    }
}

/// `HEAD` answers like `GET` without a body; `/health` says which state a broker is in.
#[test]
fn head_requests_and_each_health_state() {
    let url = shared_mariadb().create_database();
    let (a_port, b_port) = (free_port(), free_port());
    let a = Broker::start(&url, &[("HAMQ_STATUS_LISTEN", &status_env(a_port))]);
    a.stomp_port();
    let mut s = TcpStream::connect(("127.0.0.1", a_port)).expect("connect");
    s.write_all(b"HEAD /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("read");
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.contains("Content-Length: 7\r\n"), "{answer}");
    assert!(
        answer.ends_with("\r\n\r\n"),
        "a body came with HEAD: {answer:?}"
    );
    let b = Broker::spawn_with_name("b", &url, &[("HAMQ_STATUS_LISTEN", &status_env(b_port))]);
    b.wait_for_log("waiting for the lock", STEP);
    assert_eq!(
        http(b_port, "GET", "/health"),
        (503, format!("slave (master: {})\n", a.name()))
    );
    // No datastore at all: a port nobody listens on.
    let (c_port, dead) = (free_port(), free_port());
    let nowhere = format!("mysql://hamq:hamq@127.0.0.1:{dead}/x");
    let c = Broker::spawn_with_name(
        "c",
        &nowhere,
        &[("HAMQ_STATUS_LISTEN", &status_env(c_port))],
    );
    c.wait_for_log("retrying in", STEP);
    let (code, body) = http(c_port, "GET", "/health");
    assert_eq!(code, 503);
    assert!(body.starts_with("datastore unreachable: "), "{body}");
}

/// A standby whose STOMP port is taken never takes the lock (it could not serve), says why in
/// its log and `/health`, and takes over once the port is free.
#[test]
fn a_standby_that_cannot_listen_does_not_take_the_lock() {
    let url = shared_mariadb().create_database();
    let mut pair = Pair::start(&url);
    let squatter = TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = squatter.local_addr().expect("address");
    let status = free_port();
    let env = [
        ("HAMQ_STOMP_LISTEN", taken.to_string()),
        ("HAMQ_STATUS_LISTEN", status_env(status)),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut standby = Broker::spawn_with_name("standby", &url, &env);
    standby.wait_for_log(&format!("cannot listen on {taken}"), STEP);
    let (code, body) = http(status, "GET", "/health");
    assert_eq!(code, 503);
    assert!(
        body.starts_with(&format!("unfit: cannot listen on {taken}")),
        "{body}"
    );
    // Both others gone: the standby still does not take the lock while it cannot serve.
    pair.broker(1).kill9();
    pair.broker(0).kill9();
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        assert_eq!(standby.count_log("acquired the lock"), 0);
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(squatter);
    standby.wait_for_log("listening for STOMP", STEP);
    assert_eq!(
        http(status, "GET", "/health"),
        (200, "master\n".to_string())
    );
    assert!(standby.wait_exit(Duration::ZERO).is_none());
}

/// SIGHUP re-reads the file: a changed password works at once, the old one no more, and the
/// broker stays master (no failover, same process).
#[test]
fn sighup_reloads_users_without_stopping() {
    let url = shared_mariadb().create_database();
    let mut broker = Broker::start(&url, &[]);
    let pid = broker.pid();
    let write = |broker: &Broker, password: &str| {
        std::fs::write(
            broker.config_path(),
            format!("users = app:{}\n", hash_password(password)),
        )
        .expect("write the config");
    };
    let login = |port: u16, password: &str| {
        let (_, reply) = Client::connect_with(
            port,
            &[
                ("accept-version", "1.2"),
                ("login", "app"),
                ("passcode", password),
            ],
        );
        reply.command
    };
    write(&broker, "first");
    broker.sighup();
    broker.wait_for_log("SIGHUP: reloaded", STEP);
    let port = broker.stomp_port();
    assert_eq!(login(port, "first"), "CONNECTED");
    write(&broker, "second");
    broker.sighup();
    assert!(broker
        .wait_for_log_nth("SIGHUP: reloaded", 2, STEP)
        .contains("1 users, 0 permit rules"));
    assert_eq!(login(port, "first"), "ERROR");
    assert_eq!(login(port, "second"), "CONNECTED");
    std::fs::write(broker.config_path(), "max_frame = lots\n").expect("write");
    broker.sighup();
    let refused = broker.wait_for_log("SIGHUP: config key `max_frame`", STEP);
    assert!(refused.contains("nothing changed"), "{refused}");
    assert_eq!(login(port, "second"), "CONNECTED");
    assert!(broker.wait_exit(Duration::ZERO).is_none());
    assert_eq!(broker.pid(), pid);
    assert_eq!(broker.count_log("shutting down"), 0);
}

#[test]
fn a_misspelt_hamq_variable_stops_the_broker_naming_it() {
    let url = shared_mariadb().create_database();
    let mut broker = Broker::spawn_with_name("typo", &url, &[("HAMQ_STOMP_LISTN", "1.2.3.4:1")]);
    let status = broker.wait_exit(STEP).expect("the broker did not stop");
    assert_eq!(status.code(), Some(2));
    let line = broker.wait_for_log("HAMQ_STOMP_LISTN", STEP);
    assert!(line.contains("not a configuration key"), "{line}");
}

/// Log lines an operator can use: millisecond timestamps (or none, for multilog), a failed
/// login with its address and login, driver errors in words.
#[test]
fn log_lines_for_operators() {
    let url = shared_mariadb().create_database();
    let users = format!("app:{}", hash_password("right"));
    let broker = Broker::start(&url, &[("HAMQ_USERS", &users)]);
    let (_, reply) = Client::connect_with(
        broker.stomp_port(),
        &[
            ("accept-version", "1.2"),
            ("login", "app\u{1b}[2J"),
            ("passcode", "no"),
        ],
    );
    assert_eq!(reply.command, "ERROR");
    let failed = broker.wait_for_log("login failed from 127.0.0.1 for user app", STEP);
    // A terminal escape in the login reaches the log escaped.
    assert!(failed.contains("user app\\u{1b}[2J"), "{failed}");
    let first = broker.wait_for_log("starting as", STEP);
    let stamp = first.split_whitespace().next().unwrap_or_default();
    // `[2026-12-02T11:50:01.123Z`: the time to the millisecond.
    assert_eq!(stamp.len(), 25, "{first}");
    assert!(
        stamp.ends_with('Z') && stamp.as_bytes()[20] == b'.',
        "{first}"
    );
    let plain = Broker::spawn_with_name("plain", &url, &[("HAMQ_LOG_TIMESTAMPS", "off")]);
    let line = plain.wait_for_log("starting as", STEP);
    assert!(line.starts_with("[INFO  hamq] hamq"), "{line}");
    let dead = free_port();
    let nowhere = Broker::spawn_with_name("n", &format!("mysql://h:h@127.0.0.1:{dead}/x"), &[]);
    let refused = nowhere.wait_for_log("retrying in", STEP);
    assert!(!refused.contains("Error {"), "{refused}");
    assert!(refused.contains("Connection refused"), "{refused}");
}

/// /metrics in base units, with the build and the process; a slave shows its memory limit.
#[test]
fn metrics_in_base_units_with_build_and_process() {
    let url = shared_mariadb().create_database();
    let (port, slave_port) = (free_port(), free_port());
    let broker = Broker::start(&url, &[("HAMQ_STATUS_LISTEN", &status_env(port))]);
    let mut c = Client::connect(broker.stomp_port());
    c.send_with_receipt("/queue/m", "x", &[]);
    let (code, text) = http(port, "GET", "/metrics");
    assert_eq!(code, 200);
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
    };
    let build = format!(
        "hamq_build_info{{version=\"{}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(value(&build), 1.0);
    assert!(value("process_resident_memory_bytes") > 1e6);
    assert!(value("process_threads") >= 5.0);
    assert!(value("process_open_fds") >= 5.0);
    assert!(value("hamq_store_busy_seconds_total") > 0.0);
    assert!(
        value("hamq_store_busy_seconds_total") < 10.0,
        "seconds, not microseconds"
    );
    assert!(!text.contains("microseconds"));
    let slave = Broker::spawn_with_name(
        "s",
        &url,
        &[
            ("HAMQ_STATUS_LISTEN", &status_env(slave_port)),
            ("HAMQ_MEMORY_LIMIT", "1234567"),
        ],
    );
    slave.wait_for_log("waiting for the lock", STEP);
    let (_, slave_text) = http(slave_port, "GET", "/metrics");
    assert!(
        slave_text.contains("\nhamq_memory_limit_bytes 1234567\n"),
        "{slave_text}"
    );
}

/// `hamq COMMAND...` with `env` only (no `--config`, no HAMQ_ variables of the test run).
fn hamq_cli(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let run = hamq_command(args, env, "");
    (run.code(), run.text())
}

/// `--help` and `--version` exit 0; the admin command finds its broker by `--url`, by
/// `HAMQ_ADMIN_URL` and by `$HAMQ_HOME/etc/hamq.conf`; `--json` prints the `/status` document.
#[test]
fn the_admin_command_finds_its_broker_and_explains_itself() {
    let (code, help) = hamq_cli(&["--help"], &[]);
    assert_eq!(code, Some(0), "{help}");
    assert!(help.starts_with("usage: hamq [--config PATH]"), "{help}");
    for word in ["--url", "--json", "HAMQ_ADMIN_USER", "HAMQ_HOME", "hash"] {
        assert!(
            help.contains(word),
            "--help does not mention {word}: {help}"
        );
    }
    let (code, version) = hamq_cli(&["--version"], &[]);
    assert_eq!(code, Some(0));
    assert_eq!(version, format!("hamq {}\n", env!("CARGO_PKG_VERSION")));
    let (code, text) = hamq_cli(&["--frobnicate"], &[]);
    assert_eq!(code, Some(2), "{text}");

    let status_port = free_port();
    let url = shared_mariadb().create_database();
    let users = format!("ops:{}", hash_password("ops-pw"));
    let broker = Broker::start(
        &url,
        &[
            ("HAMQ_USERS", &users),
            ("HAMQ_STATUS_LISTEN", &status_env(status_port)),
        ],
    );
    let creds = [
        ("HAMQ_ADMIN_USER", "ops"),
        ("HAMQ_ADMIN_PASSWORD", "ops-pw"),
    ];
    let (mut client, reply) = Client::connect_with(
        broker.stomp_port(),
        &[
            ("accept-version", "1.2"),
            ("login", "ops"),
            ("passcode", "ops-pw"),
        ],
    );
    assert_eq!(reply.command, "CONNECTED", "{reply:?}");
    client.send_with_receipt("/queue/admin.cli", "one", &[]);

    let home = std::env::temp_dir().join(format!("hamq-admin-home-{status_port}"));
    std::fs::create_dir_all(home.join("etc")).expect("mkdir");
    std::fs::write(
        home.join("etc/hamq.conf"),
        format!("status_listen = 127.0.0.1:{status_port}\n"),
    )
    .expect("write the config");
    let home_env = home.to_string_lossy().to_string();
    let mut by_home = creds.to_vec();
    by_home.push(("HAMQ_HOME", &home_env));
    let (code, queues) = hamq_cli(&["queues"], &by_home);
    std::fs::remove_dir_all(&home).expect("remove the home");
    assert_eq!(code, Some(0), "{queues}");
    assert!(queues.contains("/queue/admin.cli"), "{queues}");

    let address = format!("http://127.0.0.1:{status_port}");
    let (code, by_flag) = hamq_cli(&["--url", &address, "queues"], &creds);
    assert_eq!((code, &by_flag), (Some(0), &queues));
    let mut by_env = creds.to_vec();
    by_env.push(("HAMQ_ADMIN_URL", &address));
    let (code, json) = hamq_cli(&["--json", "status"], &by_env);
    assert_eq!(code, Some(0), "{json}");
    assert!(json.trim_start().starts_with('{'), "{json}");
    assert!(json.contains("\"/queue/admin.cli\""), "{json}");

    let (code, text) = hamq_cli(&["--url", "ftp://127.0.0.1:1", "status"], &creds);
    assert_eq!(code, Some(1), "{text}");
    assert_eq!(
        text,
        "hamq: --url `ftp://127.0.0.1:1` is not http://HOST:PORT or https://HOST:PORT\n"
    );
}
