//! Authentication and permissions over real sockets against a real MariaDB: hashed users and
//! `hamq hash`, the one ERROR for every kind of bad credentials, anonymous access without users,
//! per-operation `permit` rules with `*` and `>` wildcards on SEND, SUBSCRIBE and durable
//! subscriptions, and the status listener's admin endpoints with HTTP Basic credentials.

mod common;

use common::probe::http_as;
use common::{
    free_port, hamq_command, hash_password, shared_mariadb, Broker, Client, Frame, TIMEOUT,
};
use std::time::{Duration, Instant};

/// app may read and write orders and prices; ops may read and administer everything, write
/// nothing.
const PERMITS: &str = "app read,write /queue/orders.>; app read,write /topic/*.prices; \
                       ops read,admin /queue/>; ops read,admin /topic/>";

/// A broker whose users are app (password `app-pw`) and ops (`ops-pw`), with `extra` env.
fn broker_with_users(extra: &[(&str, &str)]) -> Broker {
    let users = format!(
        "app:{} ops:{}",
        hash_password("app-pw"),
        hash_password("ops-pw")
    );
    let mut env = vec![("HAMQ_USERS", users.as_str())];
    env.extend_from_slice(extra);
    Broker::start(&shared_mariadb().create_database(), &env)
}

/// CONNECT (1.2) as `login`; panics unless CONNECTED comes back.
fn login(port: u16, login: &str, passcode: &str, extra: &[(&str, &str)]) -> Client {
    let mut headers = vec![
        ("accept-version", "1.2"),
        ("login", login),
        ("passcode", passcode),
    ];
    headers.extend_from_slice(extra);
    let (client, reply) = Client::connect_with(port, &headers);
    assert_eq!(reply.command, "CONNECTED", "{login}: {reply:?}");
    client
}

/// Sends `command` with a `receipt` header; the answer must be the ERROR `message` echoing the
/// receipt id, then the broker closes the connection.
fn assert_refused(client: &mut Client, command: &str, headers: &[(&str, &str)], message: &str) {
    let mut all = headers.to_vec();
    all.push(("receipt", "r-refused"));
    client.send_frame(command, &all, b"");
    let error = client.recv(TIMEOUT);
    assert_eq!(error.command, "ERROR", "{command} {headers:?}: {error:?}");
    assert_eq!(error.header("message"), Some(message));
    assert_eq!(error.header("receipt-id"), Some("r-refused"));
    assert!(
        client.recv_eof(TIMEOUT),
        "connection not closed after {message}"
    );
}

/// `hamq COMMAND...` against the status listener on `port`, with `env` added.
fn admin(port: u16, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let config = std::env::temp_dir().join(format!("hamq-auth-admin-{port}.conf"));
    std::fs::write(&config, format!("status_listen = 127.0.0.1:{port}\n")).unwrap();
    let config_arg = config.display().to_string();
    let run = hamq_command(&[&["--config", &config_arg], args].concat(), env, "");
    let _ = std::fs::remove_file(&config);
    (run.status.success(), run.text())
}

/// Bodies of the next `n` MESSAGE frames.
fn bodies(client: &mut Client, n: usize) -> Vec<String> {
    (0..n).map(|_| client.recv(TIMEOUT).text()).collect()
}

#[test]
fn bad_unknown_or_missing_credentials_get_the_same_error_after_a_delay() {
    let b = broker_with_users(&[]);
    let port = b.stomp_port();
    let mut errors: Vec<Frame> = Vec::new();
    for credentials in [
        vec![("login", "app"), ("passcode", "ops-pw")],
        vec![("login", "nobody"), ("passcode", "app-pw")],
        vec![("login", "app")],
        vec![],
    ] {
        let mut headers = vec![("accept-version", "1.2")];
        headers.extend_from_slice(&credentials);
        let start = Instant::now();
        let (mut c, reply) = Client::connect_with(port, &headers);
        assert!(
            start.elapsed() >= Duration::from_secs(1),
            "refused without the delay: {credentials:?}"
        );
        assert_eq!(reply.command, "ERROR", "{credentials:?}");
        assert_eq!(reply.header("message"), Some("authentication failed"));
        assert!(c.recv_eof(TIMEOUT));
        errors.push(reply);
    }
    assert!(errors.windows(2).all(|w| w[0] == w[1]), "{errors:?}");
    // Right credentials; no permit lines: every user may do everything, durable included.
    let mut ops = login(port, "ops", "ops-pw", &[("client-id", "ops-1")]);
    let durable = [("activemq.subscriptionName", "all")];
    ops.subscribe_with_receipt("/topic/news", "1", "auto", &durable);
    ops.subscribe_with_receipt("/queue/work", "2", "auto", &[]);
    let mut app = login(port, "app", "app-pw", &[]);
    app.send_with_receipt("/topic/news", "n1", &[]);
    app.send_with_receipt("/queue/work", "w1", &[]);
    assert_eq!(bodies(&mut ops, 2), ["n1", "w1"]);
    assert!(
        !b.log_lines().iter().any(|l| l.contains("-pw")),
        "a password reached the log"
    );
}

#[test]
fn without_users_anyone_connects_whatever_the_login() {
    let b = Broker::start(&shared_mariadb().create_database(), &[]);
    let port = b.stomp_port();
    let (_, reply) = Client::connect_with(port, &[("accept-version", "1.2")]);
    assert_eq!(reply.command, "CONNECTED");
    let mut consumer = login(port, "someone", "anything", &[("client-id", "c")]);
    let durable = [("activemq.subscriptionName", "d")];
    consumer.subscribe_with_receipt("/topic/t", "1", "auto", &durable);
    let mut producer = login(port, "", "", &[]);
    producer.send_with_receipt("/topic/t", "hello", &[]);
    assert_eq!(bodies(&mut consumer, 1), ["hello"]);
}

#[test]
fn hamq_hash_prints_a_hash_that_logs_in() {
    let hash = |input: &str| {
        let run = hamq_command(&["hash"], &[], input);
        (run.status, run.stdout, run.stderr)
    };
    let (status, out, err) = hash("correct horse:battery\n");
    assert!(status.success(), "{err}");
    let fields: Vec<&str> = out.trim_end().split('$').collect();
    assert_eq!(out.lines().count(), 1, "{out}");
    assert_eq!(fields[..2], ["pbkdf2-sha256", "300000"], "{out}");
    assert_eq!((fields[2].len(), fields[3].len()), (32, 64), "{out}");
    assert!(fields[2..]
        .iter()
        .all(|f| f.chars().all(|c| c.is_ascii_hexdigit())));
    let (status, _, err) = hash("");
    assert!(!status.success());
    assert_eq!(
        err.trim_end(),
        "hamq: no password on stdin (an empty password is not accepted)"
    );

    let users = format!("u:{}", out.trim_end());
    let b = Broker::start(
        &shared_mariadb().create_database(),
        &[("HAMQ_USERS", &users)],
    );
    login(b.stomp_port(), "u", "correct horse:battery", &[]);
    let (_, reply) = Client::connect_with(
        b.stomp_port(),
        &[("login", "u"), ("passcode", "correct horse")],
    );
    assert_eq!(reply.header("message"), Some("authentication failed"));
}

#[test]
fn plain_text_passwords_and_bad_permits_stop_the_broker() {
    let hash = hash_password("pw");
    let users = format!("app:{hash}");
    let plain = format!("app:{hash} ops:plain-secret");
    for (env, needle) in [
        (
            vec![("HAMQ_USERS", plain.as_str())],
            "user `ops`: password is not a hash",
        ),
        (
            vec![("HAMQ_USERS", &users), ("HAMQ_PERMIT", "bob read /queue/a")],
            "a rule names `bob` but `users` has no such user",
        ),
        (
            vec![("HAMQ_USERS", &users), ("HAMQ_PERMIT", "app read queue.a")],
            "pattern `queue.a` must start with /queue/ or /topic/",
        ),
        (
            vec![("HAMQ_PERMIT", "* read /queue/a")],
            "a rule names `*` but `users` has no such user",
        ),
    ] {
        let url = "mysql://hamq:hamq@127.0.0.1:1/hamq";
        let mut b = Broker::spawn_with_name("badauth", url, &env);
        let status = b.wait_exit(TIMEOUT).expect("a bad config kept it running");
        assert_eq!(status.code(), Some(2), "{env:?}");
        b.wait_for_log(needle, TIMEOUT);
        assert!(!b.log_lines().iter().any(|l| l.contains("plain-secret")));
    }
}

#[test]
fn send_needs_write_even_inside_a_transaction() {
    let status_port = free_port();
    let status_listen = format!("127.0.0.1:{status_port}");
    let b = broker_with_users(&[
        ("HAMQ_PERMIT", PERMITS),
        ("HAMQ_STATUS_LISTEN", &status_listen),
    ]);
    let port = b.stomp_port();
    let send = |dest| vec![("destination", dest)];
    let mut app = login(port, "app", "app-pw", &[]);
    // `orders.>` needs one more segment: /queue/orders itself is not covered.
    assert_refused(
        &mut app,
        "SEND",
        &send("/queue/orders"),
        "permission denied: write on /queue/orders",
    );
    let mut app = login(port, "app", "app-pw", &[]);
    app.send_frame_with_receipt("BEGIN", &[("transaction", "t1")], b"");
    app.send_frame_with_receipt(
        "SEND",
        &[("destination", "/queue/orders.eu"), ("transaction", "t1")],
        b"in t1",
    );
    assert_refused(
        &mut app,
        "SEND",
        &[("destination", "/queue/secret"), ("transaction", "t1")],
        "permission denied: write on /queue/secret",
    );
    let mut ops = login(port, "ops", "ops-pw", &[]);
    assert_refused(
        &mut ops,
        "SEND",
        &send("/queue/orders.eu"),
        "permission denied: write on /queue/orders.eu",
    );
    let mut app = login(port, "app", "app-pw", &[]);
    app.send_with_receipt("/queue/orders.eu.north", "allowed", &[]);
    let mut ops = login(port, "ops", "ops-pw", &[]);
    ops.subscribe_with_receipt("/queue/orders.eu.north", "1", "auto", &[]);
    assert_eq!(bodies(&mut ops, 1), ["allowed"]);
    // Nothing of the refused frames (nor of the open transaction they ended) was stored.
    let (code, _, status) = http_as(status_port, "GET", "/status", None);
    assert_eq!(code, 200);
    for name in ["/queue/orders\"", "/queue/secret", "/queue/orders.eu\""] {
        assert!(!status.contains(name), "{name} in {status}");
    }
}

#[test]
fn subscribe_needs_read_and_a_durable_subscription_admin() {
    let b = broker_with_users(&[("HAMQ_PERMIT", PERMITS)]);
    let port = b.stomp_port();
    let sub = |dest, id| vec![("destination", dest), ("id", id)];
    for (dest, refused) in [
        ("/queue/secret", "read on /queue/secret"),
        // `*` matches exactly one segment.
        ("/topic/eu.x.prices", "read on /topic/eu.x.prices"),
        ("/topic/prices", "read on /topic/prices"),
    ] {
        let mut app = login(port, "app", "app-pw", &[]);
        let message = format!("permission denied: {refused}");
        assert_refused(&mut app, "SUBSCRIBE", &sub(dest, "1"), &message);
    }
    let mut app = login(port, "app", "app-pw", &[("client-id", "app-1")]);
    let mut durable = sub("/topic/eu.prices", "d");
    durable.push(("activemq.subscriptionName", "prices"));
    assert_refused(
        &mut app,
        "SUBSCRIBE",
        &durable,
        "permission denied: admin on /topic/eu.prices",
    );
    let mut ops = login(port, "ops", "ops-pw", &[("client-id", "ops-1")]);
    ops.send_frame_with_receipt("SUBSCRIBE", &durable, b"");
    let mut app = login(port, "app", "app-pw", &[]);
    app.subscribe_with_receipt("/topic/eu.prices", "1", "auto", &[]);
    app.subscribe_with_receipt("/queue/orders.eu", "2", "auto", &[]);
    app.send_with_receipt("/topic/eu.prices", "p1", &[]);
    app.send_with_receipt("/queue/orders.eu", "o1", &[]);
    assert_eq!(bodies(&mut app, 2), ["p1", "o1"]);
    assert_eq!(bodies(&mut ops, 1), ["p1"]);

    // Removing the durable subscription needs admin on its topic too.
    ops.disconnect();
    let remove = [("id", "d"), ("activemq.subscriptionName", "prices")];
    let mut app = login(port, "app", "app-pw", &[("client-id", "ops-1")]);
    assert_refused(
        &mut app,
        "UNSUBSCRIBE",
        &remove,
        "permission denied: admin on /topic/eu.prices",
    );
    let mut ops = login(port, "ops", "ops-pw", &[("client-id", "ops-1")]);
    ops.send_frame_with_receipt("UNSUBSCRIBE", &remove, b"");
}

#[test]
fn admin_endpoints_need_credentials_and_permission() {
    let status_port = free_port();
    let status_listen = format!("127.0.0.1:{status_port}");
    let b = broker_with_users(&[
        ("HAMQ_PERMIT", PERMITS),
        ("HAMQ_STATUS_LISTEN", &status_listen),
    ]);
    let mut app = login(b.stomp_port(), "app", "app-pw", &[]);
    app.send_with_receipt("/queue/orders.eu", "1", &[]);
    app.send_with_receipt("/queue/orders.eu", "2", &[]);
    for path in ["/status", "/health", "/metrics"] {
        assert_eq!(http_as(status_port, "GET", path, None).0, 200, "{path}");
    }
    let queues = "/admin/queues";
    let (code, head, body) = http_as(status_port, "GET", queues, None);
    assert_eq!(code, 401);
    assert!(
        head.contains("\r\nWWW-Authenticate: Basic realm=\"hamq\""),
        "{head}"
    );
    assert_eq!(
        body,
        "authentication required: HTTP Basic credentials of a user in `users`\n"
    );
    let (code, _, body) = http_as(status_port, "GET", queues, Some(("app", "ops-pw")));
    assert_eq!((code, body.as_str()), (401, "authentication failed\n"));
    let app_user = Some(("app", "app-pw"));
    let (code, _, body) = http_as(status_port, "GET", queues, app_user);
    assert_eq!(code, 200, "{body}");
    let browse = "/admin/browse?destination=/queue/orders.eu";
    let (code, _, body) = http_as(status_port, "GET", browse, app_user);
    assert_eq!(code, 200, "{body}");
    assert!(
        body.starts_with("/queue/orders.eu: first 2 waiting messages"),
        "{body}"
    );
    let secret = "/admin/browse?destination=/queue/secret";
    let (code, _, body) = http_as(status_port, "GET", secret, app_user);
    assert_eq!(
        (code, body.as_str()),
        (403, "permission denied: read on /queue/secret\n")
    );
    let purge = "/admin/purge?destination=/queue/orders.eu";
    let (code, _, body) = http_as(status_port, "POST", purge, app_user);
    assert_eq!(
        (code, body.as_str()),
        (403, "permission denied: admin on /queue/orders.eu\n")
    );

    // The admin command passes HAMQ_ADMIN_USER and HAMQ_ADMIN_PASSWORD.
    let args = ["purge", "/queue/orders.eu"];
    let (ok, text) = admin(status_port, &args, &[]);
    assert!(!ok);
    assert_eq!(
        text.trim_end(),
        "hamq: authentication required: HTTP Basic credentials of a user in `users` \
         (give a user with HAMQ_ADMIN_USER and HAMQ_ADMIN_PASSWORD)"
    );
    let (ok, text) = admin(status_port, &args, &[("HAMQ_ADMIN_USER", "ops")]);
    assert!(!ok);
    assert_eq!(
        text.trim_end(),
        "hamq: set both HAMQ_ADMIN_USER and HAMQ_ADMIN_PASSWORD, or neither"
    );
    let ops = [
        ("HAMQ_ADMIN_USER", "ops"),
        ("HAMQ_ADMIN_PASSWORD", "ops-pw"),
    ];
    let (ok, text) = admin(status_port, &args, &ops);
    assert!(ok, "{text}");
    assert_eq!(text, "purged 2 messages from /queue/orders.eu\n");
    let (code, _, body) = http_as(status_port, "GET", browse, app_user);
    assert_eq!(code, 200);
    assert!(
        body.starts_with("/queue/orders.eu: first 0 waiting messages"),
        "{body}"
    );
}
