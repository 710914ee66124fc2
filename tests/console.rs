//! The web console in headless Chromium (Debian's `chromium`) against a real master and slave:
//! the master's status listener speaks HTTPS with a throwaway certificate, the page needs the
//! admin credentials, shows the broker's facts, destinations, connections and durable
//! subscriptions, and its script runs (the depth chart is drawn from `/status`); the slave's
//! page names its master. Screenshots of both are written to the test's temporary directory
//! and checked to be PNG images.

mod common;

use common::{
    free_port, hamq_command, hash_password, shared_mariadb, Broker, Certs, Client, TIMEOUT,
};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn chromium() -> PathBuf {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .expect("chromium not installed: apt-get install chromium (.ci/run installs it)")
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("hamq-console-{name}-{}", free_port()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Headless Chromium on `url` with `mode` (`--dump-dom`, or `--screenshot=FILE`), after 8 s of
/// the page's virtual time (its timers and fetches run); its stdout. Killed if it hangs.
fn chromium_run(profile: &Path, mode: &str, url: &str) -> String {
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--ignore-certificate-errors",
            "--window-size=1200,1000",
            "--virtual-time-budget=8000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(mode)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let mut stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        out
    });
    let status = common::wait_or_kill(&mut child, Duration::from_secs(90), "chromium");
    assert!(status.success(), "chromium {mode} {url}: {status}");
    reader.join().expect("chromium's output")
}

/// GET `url` over TLS without checking the certificate: (status code, body).
fn https_get(url: &str) -> (String, String) {
    let script = "import ssl, sys, urllib.request, urllib.error\n\
        ctx = ssl.create_default_context(); ctx.check_hostname = False\n\
        ctx.verify_mode = ssl.CERT_NONE\n\
        try:\n    r = urllib.request.urlopen(sys.argv[1], context=ctx, timeout=10)\n\
        except urllib.error.HTTPError as e:\n    r = e\n\
        sys.stdout.write(str(r.status) + '\\n' + r.read().decode())\n";
    let out = Command::new("python3")
        .args(["-c", script, url])
        .output()
        .expect("python3");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (code, body) = text.split_once('\n').unwrap_or((&text, ""));
    (code.to_string(), body.to_string())
}

fn assert_png(path: &Path) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is no PNG",
        path.display()
    );
    assert!(
        bytes.len() > 10_000,
        "{}: {} bytes",
        path.display(),
        bytes.len()
    );
}

#[test]
fn console_in_chromium_over_https_on_master_and_slave() {
    let certs = Certs::new();
    let url = shared_mariadb().create_database();
    let (status_a, status_b) = (free_port(), free_port());
    let users = format!("ops:{}", hash_password("ops-pw"));
    let listen_a = format!("127.0.0.1:{status_a}");
    let listen_b = format!("127.0.0.1:{status_b}");
    let (cert, key) = (certs.path_str("cert.pem"), certs.path_str("key.pem"));
    let a = Broker::start_with_name(
        "console-a",
        &url,
        &[
            ("HAMQ_USERS", &users),
            ("HAMQ_STATUS_LISTEN", &listen_a),
            ("HAMQ_STATUS_TLS_CERT", &cert),
            ("HAMQ_STATUS_TLS_KEY", &key),
        ],
    );
    let b = Broker::spawn_with_name(
        "console-b",
        &url,
        &[("HAMQ_USERS", &users), ("HAMQ_STATUS_LISTEN", &listen_b)],
    );
    b.wait_for_log("waiting for the lock (held by console-a", TIMEOUT);
    a.wait_for_log(&format!("status listening on {listen_a} (https)"), TIMEOUT);

    let login = |extra: &[(&str, &str)]| {
        let mut headers = vec![
            ("accept-version", "1.2"),
            ("login", "ops"),
            ("passcode", "ops-pw"),
        ];
        headers.extend_from_slice(extra);
        let (client, reply) = Client::connect_with(a.stomp_port(), &headers);
        assert_eq!(reply.command, "CONNECTED", "{reply:?}");
        client
    };
    let mut p = login(&[]);
    for i in 0..3 {
        p.send_with_receipt("/queue/console.orders", format!("order {i}"), &[]);
    }
    let mut shop = login(&[("client-id", "shop")]);
    let durable = [("activemq.subscriptionName", "prices-eu")];
    shop.subscribe_with_receipt("/topic/prices", "d", "auto", &durable);
    shop.disconnect();
    let mut worker = login(&[("client-id", "console-worker")]);
    worker.subscribe_with_receipt("/queue/console.work", "w1", "client-individual", &[]);

    let profile = TempDir::new("profile");
    let page = format!("https://ops:ops-pw@127.0.0.1:{status_a}/admin/console");
    let dom = chromium_run(&profile.0, "--dump-dom", &page);
    for expected in [
        "<title>hamq console-a (master)</title>",
        "<td id=\"fact-role\">master</td>",
        "<td id=\"fact-epoch\">1</td>",
        "<td id=\"fact-lock-holder\">console-a</td>",
        "<td id=\"fact-election\">lock</td>",
        "<td id=\"fact-database\">MariaDB ",
        "<tr class=\"dest\" data-name=\"/queue/console.orders\"><td>/queue/console.orders</td>\
         <td>3</td>",
        "<td>console-worker</td>",
        "w1=/queue/console.work",
        "<tr class=\"durable\"><td>shop</td><td>prices-eu</td><td>/topic/prices</td>",
        "data-act=\"purge\" data-dest=\"/queue/console.orders\"",
        // Drawn by the page's script from /status: it ran, and fetched over HTTPS.
        "<polyline points=",
        "/queue/console.orders 3</span>",
    ] {
        assert!(
            dom.contains(expected),
            "the console lacks {expected:?}:\n{dom}"
        );
    }
    let shots = TempDir::new("shots");
    let master_png = shots.0.join("master.png");
    chromium_run(
        &profile.0,
        &format!("--screenshot={}", master_png.display()),
        &page,
    );
    assert_png(&master_png);

    // Without credentials (asked by Python's urllib over TLS): 401 and its words only.
    let anonymous = format!("https://127.0.0.1:{status_a}/admin/console");
    let (code, body) = https_get(&anonymous);
    assert_eq!(
        (code.as_str(), body.as_str()),
        (
            "401",
            "authentication required: HTTP Basic credentials of a user in `users`\n"
        )
    );
    // The admin command over HTTPS, trusting the CA it is given.
    let url = format!("https://127.0.0.1:{status_a}");
    let admin = |ca: &str| {
        let env = [
            ("HAMQ_ADMIN_USER", "ops"),
            ("HAMQ_ADMIN_PASSWORD", "ops-pw"),
            ("HAMQ_ADMIN_CA", ca),
        ];
        let run = hamq_command(&["--url", &url, "status"], &env, "");
        (run.code(), run.text())
    };
    let (code, text) = admin(&certs.path_str("ca.pem"));
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("role         master"), "{text}");
    let (code, text) = admin(&cert);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("invalid peer certificate"), "{text}");
    // The TLS status port does not answer plain HTTP.
    let mut plain = TcpStream::connect(("127.0.0.1", status_a)).expect("connect");
    plain.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    plain
        .write_all(b"GET /health HTTP/1.1\r\n\r\n")
        .expect("write");
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(!answer.starts_with(b"HTTP/1.1 200"), "plain HTTP answered");

    let slave_page = format!("http://ops:ops-pw@127.0.0.1:{status_b}/admin/console");
    let slave_dom = chromium_run(&profile.0, "--dump-dom", &slave_page);
    for expected in [
        "<td id=\"fact-role\">slave</td>",
        "<td id=\"fact-lock-holder\">console-a</td>",
        "This broker is a slave (master: <b>console-a</b>)",
    ] {
        assert!(
            slave_dom.contains(expected),
            "lacks {expected:?}:\n{slave_dom}"
        );
    }
    let slave_png = shots.0.join("slave.png");
    chromium_run(
        &profile.0,
        &format!("--screenshot={}", slave_png.display()),
        &slave_page,
    );
    assert_png(&slave_png);
    if let Ok(keep) = std::env::var("HAMQ_CONSOLE_SHOTS") {
        for png in [&master_png, &slave_png] {
            let name = png.file_name().expect("a name");
            std::fs::copy(png, Path::new(&keep).join(name)).expect("keep the screenshot");
        }
    }
    drop(worker);
}
