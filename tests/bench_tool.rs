//! The load generator `hamq-bench` (issue 5) as a STOMP client: fixed-count runs against a
//! real hamq (queue with receipts and client-individual acks; topic fan-out; consume-only of
//! a pre-loaded queue; idle connections past `max_connections`), and runs against a fake
//! broker written here that splits frames across writes at odd offsets, puts heart-beat EOLs
//! between frames, sends bodies with NULs and escaped headers, can hold a backlog (with a
//! duplicate, a damaged and unstamped bodies) for consume-only runs, and checks what the tool
//! writes (CONNECT, SEND, ACK framing). Its unit tests live in `src/bin/hamq-bench/`.

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs hamq-bench with `args` (split at whitespace) plus `--json -`, killing it after
/// [`RUN_TIMEOUT`].
fn bench(args: &str) -> Output {
    let args: Vec<&str> = args.split_whitespace().collect();
    let mut child = Command::new(env!("CARGO_BIN_EXE_hamq-bench"))
        .args(&args)
        .args(["--json", "-"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn hamq-bench");
    let out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    let read = |mut r: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let (out, err) = (read(Box::new(out)), read(Box::new(err)));
    let status = common::wait_or_kill(&mut child, RUN_TIMEOUT, &format!("hamq-bench {args:?}"));
    let output = Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    };
    eprintln!(
        "hamq-bench {args:?}: {status}\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The JSON object: the last stdout line.
fn json_of(output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().unwrap_or("");
    assert!(
        line.starts_with('{') && line.ends_with('}'),
        "no JSON line: {stdout}"
    );
    line.to_string()
}

/// The first `"key":<whole number>` in `json`.
fn num(json: &str, key: &str) -> u64 {
    let pat = format!("\"{key}\":");
    let at = json
        .find(&pat)
        .unwrap_or_else(|| panic!("no {key} in {json}"))
        + pat.len();
    let digits: String = json[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("{key} is not a number in {json}"))
}

/// Asserts the counts and that the run ended cleanly (exit 0).
fn assert_counts(output: &Output, expect: &[(&str, u64)]) {
    let json = json_of(output);
    for (key, want) in expect {
        assert_eq!(num(&json, key), *want, "{key} in {json}");
    }
    assert!(output.status.success(), "exit status {}", output.status);
}

#[test]
fn fixed_count_queue_with_receipts_and_individual_acks() {
    let url = common::shared_mariadb().create_database();
    let b = common::Broker::start(&url, &[]);
    let port = b.stomp_port();
    let out = bench(&format!(
        "--port {port} --destination /queue/bench-fixed --producers 2 --consumers 2 \
         --count 500 --persistent true --receipt true --ack client-individual \
         --prefetch 50"
    ));
    assert_counts(
        &out,
        &[
            ("sent", 1000),
            ("receipted", 1000),
            ("received", 1000),
            ("duplicates", 0),
            ("missing", 0),
            ("corrupt", 0),
            ("errors", 0),
        ],
    );
    let json = json_of(&out);
    let receipts = &json[json.find("\"send_to_receipt\"").unwrap()..];
    assert_eq!(
        num(receipts, "count"),
        1000,
        "one latency sample per receipt"
    );
    let deliveries = &json[json.find("\"send_to_delivery\"").unwrap()..];
    assert_eq!(num(deliveries, "count"), 1000);
    let table = String::from_utf8_lossy(&out.stdout);
    for word in ["send-to-receipt", "send-to-delivery", "p99", "duplicates"] {
        assert!(table.contains(word), "the table lacks {word}");
    }
}

#[test]
fn topic_fans_out_to_every_consumer() {
    let url = common::shared_mariadb().create_database();
    let b = common::Broker::start(&url, &[]);
    let port = b.stomp_port();
    let out = bench(&format!(
        "--port {port} --destination /topic/bench-fanout --producers 2 --consumers 3 \
         --count 200 --receipt true --persistent false --ack client"
    ));
    assert_counts(
        &out,
        &[
            ("sent", 400),
            ("expected", 1200),
            ("received", 1200),
            ("duplicates", 0),
            ("missing", 0),
            ("errors", 0),
        ],
    );
}

#[test]
fn help_and_bad_flags() {
    let help = Command::new(env!("CARGO_BIN_EXE_hamq-bench"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    let flags = "--host --port --login --passcode --destination --producers --consumers \
                 --size --count --duration --persistent --receipt --ack --prefetch --json \
                 --warmup --idle-connections consume-only [61613] [/queue/bench]";
    for flag in flags.split_whitespace() {
        assert!(text.contains(flag), "--help lacks {flag}:\n{text}");
    }
    let bad = Command::new(env!("CARGO_BIN_EXE_hamq-bench"))
        .args(["--ack", "sometimes"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--ack sometimes"));
}

// ---- a fake broker ----

/// A frame as the fake broker reads it (headers raw, not unescaped).
#[derive(Debug)]
struct Frame {
    command: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Frame {
    fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The next client frame (EOLs before it skipped), `None` at EOF.
fn read_frame(r: &mut BufReader<TcpStream>) -> Option<Frame> {
    let mut line = String::new();
    let command = loop {
        line.clear();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let l = line.trim_end_matches(['\r', '\n']);
        if !l.is_empty() {
            break l.to_string();
        }
    };
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).ok()?;
        let l = line.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').expect("a header line has a colon");
        headers.push((k.to_string(), v.to_string()));
    }
    let mut frame = Frame {
        command,
        headers,
        body: Vec::new(),
    };
    match frame.get("content-length") {
        Some(n) => {
            frame.body = vec![0; n.parse().expect("content-length is a number")];
            r.read_exact(&mut frame.body).ok()?;
            let mut nul = [1];
            r.read_exact(&mut nul).ok()?;
            assert_eq!(nul, [0], "{} body not followed by NUL", frame.command);
        }
        None => {
            r.read_until(0, &mut frame.body).ok()?;
            assert_eq!(frame.body.pop(), Some(0), "frame not ended by NUL");
        }
    }
    Some(frame)
}

/// What the fake broker saw.
#[derive(Default)]
struct Seen {
    connects: AtomicU64,
    disconnects: AtomicU64,
    sends: AtomicU64,
    forwarded: AtomicU64,
    /// ACK `id`s (unescaped).
    acks: Mutex<HashSet<String>>,
    /// Framing the fake broker found wrong in the tool's frames.
    problems: Mutex<Vec<String>>,
}

struct Fake {
    port: u16,
    seen: Arc<Seen>,
}

/// Bodies the fake broker delivers to each new subscription, after its RECEIPT.
type Backlog = Arc<Vec<Vec<u8>>>;

type Consumers = Arc<Mutex<Vec<(String, TcpStream)>>>;

impl Fake {
    /// Listens on a free port; with `error_after`, the first consumer gets an ERROR frame
    /// (and its connection closes) instead of message number `error_after`.
    fn start(error_after: Option<u64>) -> Fake {
        Self::start_with_backlog(error_after, Vec::new())
    }

    /// Like [`Fake::start`], with `backlog` delivered to every SUBSCRIBE.
    fn start_with_backlog(error_after: Option<u64>, backlog: Vec<Vec<u8>>) -> Fake {
        let backlog: Backlog = Arc::new(backlog);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Seen::default());
        let consumers: Consumers = Arc::default();
        let s = Arc::clone(&seen);
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (s, c) = (Arc::clone(&s), Arc::clone(&consumers));
                let b = Arc::clone(&backlog);
                thread::spawn(move || serve(stream, &s, &c, &b, error_after));
            }
        });
        Fake { port, seen }
    }

    fn problems(&self) -> Vec<String> {
        self.seen.problems.lock().unwrap().clone()
    }
}

fn serve(
    stream: TcpStream,
    seen: &Seen,
    consumers: &Consumers,
    backlog: &Backlog,
    error_after: Option<u64>,
) {
    stream.set_nodelay(true).unwrap();
    let mut out = stream.try_clone().unwrap();
    let mut r = BufReader::new(stream);
    let problem = |p: String| seen.problems.lock().unwrap().push(p);
    while let Some(f) = read_frame(&mut r) {
        match f.command.as_str() {
            "CONNECT" | "STOMP" => {
                seen.connects.fetch_add(1, Ordering::Relaxed);
                let ok = f.get("accept-version").is_some_and(|v| v.contains("1.2"))
                    && f.get("login") == Some("guest")
                    && f.get("passcode") == Some("guest")
                    && f.get("heart-beat") == Some("0,0")
                    && f.get("host").is_some();
                if !ok {
                    problem(format!("bad CONNECT {f:?}"));
                }
                let _ = out.write_all(b"\nCONNECTED\nversion:1.2\nheart-beat:0,0\n\n\0\r\n\n");
            }
            "SUBSCRIBE" => {
                let id = f.get("id").unwrap_or("?").to_string();
                consumers
                    .lock()
                    .unwrap()
                    .push((id, out.try_clone().unwrap()));
            }
            "SEND" => on_send(&f, seen, consumers, error_after),
            "ACK" => {
                let id = f.get("id").unwrap_or("").replace("\\c", ":");
                if !seen.acks.lock().unwrap().insert(id.clone()) {
                    problem(format!("ACK {id} twice"));
                }
            }
            "DISCONNECT" => {
                seen.disconnects.fetch_add(1, Ordering::Relaxed);
            }
            other => problem(format!("unexpected {other}")),
        }
        if let Some(receipt) = f.get("receipt") {
            let frame = format!("RECEIPT\nreceipt-id:{receipt}\n\n\0\n");
            let _forwarding = consumers.lock().unwrap(); // no RECEIPT inside a MESSAGE
            let _ = out.write_all(frame.as_bytes());
        }
        if f.command == "SUBSCRIBE" {
            let id = f.get("id").unwrap_or("?");
            for (n, body) in backlog.iter().enumerate() {
                forward(n as u64, id, &mut out, body, None);
            }
        }
        if f.command == "DISCONNECT" {
            return;
        }
    }
}

/// Checks a SEND and forwards it, round robin, as a MESSAGE written in pieces.
fn on_send(f: &Frame, seen: &Seen, consumers: &Consumers, error_after: Option<u64>) {
    let n = seen.sends.fetch_add(1, Ordering::Relaxed);
    let cl = f
        .get("content-length")
        .and_then(|v| v.parse::<usize>().ok());
    if cl != Some(f.body.len()) || f.get("destination") != Some("/queue/fake") {
        let what = format!("bad SEND {:?} with {} body bytes", f.headers, f.body.len());
        seen.problems.lock().unwrap().push(what);
    }
    if !f.body.contains(&0) {
        let what = "a 1000-byte body without NULs: the test misses its point".to_string();
        seen.problems.lock().unwrap().push(what);
    }
    let mut consumers = consumers.lock().unwrap();
    if consumers.is_empty() {
        return;
    }
    let i = n as usize % consumers.len();
    let (sub, stream) = &mut consumers[i];
    if forward(n, sub, stream, &f.body, error_after) {
        seen.forwarded.fetch_add(1, Ordering::Relaxed);
    }
}

/// Writes SEND number `n` as a MESSAGE in three pieces, cut inside the head and inside the
/// body at offsets that move with `n`, then heart-beat EOLs; or an ERROR frame and a closed
/// connection when `n` is `error_after`. True when a MESSAGE was written.
fn forward(
    n: u64,
    sub: &str,
    stream: &mut TcpStream,
    body: &[u8],
    error_after: Option<u64>,
) -> bool {
    if error_after == Some(n) {
        let _ = stream.write_all(b"ERROR\nmessage:fake broker says no\n\nbye\0");
        let _ = stream.shutdown(std::net::Shutdown::Both);
        return false;
    }
    let mut msg = format!(
        "MESSAGE\nsubscription:{sub}\nmessage-id:m{n}\nack:ack\\c{n}\n\
         destination:/queue/fake\nx-odd:a\\cb\\\\c\\nd\ncontent-length:{}\n\n",
        body.len()
    )
    .into_bytes();
    msg.extend_from_slice(body);
    msg.push(0);
    let cut1 = 1 + (n as usize * 7) % 60;
    let cut2 = msg.len() - 2 - (n as usize * 13) % (body.len() - 2);
    for (k, piece) in [&msg[..cut1], &msg[cut1..cut2], &msg[cut2..]]
        .iter()
        .enumerate()
    {
        if stream.write_all(piece).is_err() {
            return false;
        }
        if n.is_multiple_of(4) && k < 2 {
            thread::sleep(Duration::from_millis(2)); // let the client read the piece alone
        }
    }
    let eols: &[u8] = if n.is_multiple_of(2) {
        b"\n"
    } else {
        b"\r\n\n\r\n"
    };
    stream.write_all(eols).is_ok()
}

#[test]
fn split_frames_nul_bodies_and_heartbeats_from_a_fake_broker() {
    let fake = Fake::start(None);
    let port = fake.port;
    let out = bench(&format!(
        "--port {port} --destination /queue/fake --producers 2 --consumers 2 --count \
         100 --size 1000 --receipt true --ack client-individual"
    ));
    assert_counts(
        &out,
        &[
            ("sent", 200),
            ("receipted", 200),
            ("received", 200),
            ("duplicates", 0),
            ("missing", 0),
            ("corrupt", 0),
            ("stale", 0),
            ("errors", 0),
        ],
    );
    assert_eq!(fake.problems(), Vec::<String>::new());
    assert_eq!(fake.seen.connects.load(Ordering::Relaxed), 4);
    assert_eq!(fake.seen.forwarded.load(Ordering::Relaxed), 200);
    let acks = fake.seen.acks.lock().unwrap().clone();
    let want: HashSet<String> = (0..200).map(|n| format!("ack:{n}")).collect();
    assert_eq!(
        acks, want,
        "one ACK per MESSAGE, with its unescaped `ack` header as id"
    );
}

#[test]
fn an_error_frame_stops_the_consumer_and_is_reported() {
    let fake = Fake::start(Some(30));
    let port = fake.port;
    let out = bench(&format!(
        "--port {port} --destination /queue/fake --producers 1 --consumers 1 --count 60 \
         --size 1000 --receipt true --drain 1"
    ));
    let json = json_of(&out);
    assert_eq!(out.status.code(), Some(1), "errors make the exit status 1");
    assert_eq!((num(&json, "sent"), num(&json, "received")), (60, 30));
    assert_eq!((num(&json, "missing"), num(&json, "errors")), (30, 1));
    assert!(json.contains("fake broker says no"), "{json}");
}

// ---- consume-only and idle connections ----

/// A body as hamq-bench stamps it (see `src/bin/hamq-bench/payload.rs`): the stamp line,
/// then the byte pattern `i % 251` up to `size`.
fn stamped(run: u64, producer: u32, seq: u64, size: usize) -> Vec<u8> {
    let mut body = format!("hamq-bench {run:016x} {producer} {seq} 12345\n").into_bytes();
    let start = body.len();
    body.extend((start..size).map(|i| (i % 251) as u8));
    body
}

#[test]
fn consume_only_counts_a_foreign_backlog_and_checks_its_stamps() {
    let (r1, r2) = (0x1111_2222_3333_4444, 0x5555_6666_7777_8888);
    let mut backlog = Vec::new();
    backlog.extend((0..30).map(|seq| stamped(r1, 0, seq, 1000)));
    backlog.extend((0..20).map(|seq| stamped(r1, 1, seq, 1000)));
    backlog.extend((0..5).map(|seq| stamped(r2, 0, seq, 1000)));
    backlog.push(stamped(r1, 0, 7, 1000)); // a duplicate
    let mut damaged = stamped(r1, 1, 25, 1000);
    damaged[700] ^= 0xff;
    backlog.push(damaged);
    for text in [
        "not from hamq-bench, 1",
        "not from hamq-bench, 2",
        "three\0with a NUL",
    ] {
        backlog.push(text.as_bytes().to_vec());
    }
    let fake = Fake::start_with_backlog(None, backlog);
    let port = fake.port;
    let out = bench(&format!(
        "--port {port} --destination /queue/fake --producers 0 --consumers 1 --size 1000 \
         --ack client-individual --drain 1"
    ));
    let json = json_of(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a duplicate and a damaged body: exit 1"
    );
    for (key, want) in [
        ("sent", 0),
        ("received", 59),
        ("duplicates", 1),
        ("corrupt", 1),
        ("unstamped", 3),
        ("stale", 0),
        ("errors", 0),
    ] {
        assert_eq!(num(&json, key), want, "{key} in {json}");
    }
    assert!(
        json.contains(r#""missing":null"#),
        "no --count: nothing is missing: {json}"
    );
    assert!(json.contains(r#""consume_only":true"#), "{json}");
    assert_eq!(fake.problems(), Vec::<String>::new());
    let acks = fake.seen.acks.lock().unwrap().clone();
    let want: HashSet<String> = (0..60).map(|n| format!("ack:{n}")).collect();
    assert_eq!(acks, want, "every MESSAGE ACKed, the damaged one too");
}

#[test]
fn consume_only_stops_at_the_count() {
    let backlog = (0..50).map(|seq| stamped(7, 0, seq, 1024)).collect();
    let fake = Fake::start_with_backlog(None, backlog);
    let port = fake.port;
    // A drain time far beyond the run timeout: only the count can end this run.
    let out = bench(&format!(
        "--port {port} --destination /queue/fake --producers 0 --consumers 1 --count 20 \
         --ack client-individual --drain 600"
    ));
    assert_counts(
        &out,
        &[
            ("received", 20),
            ("expected", 20),
            ("missing", 0),
            ("duplicates", 0),
            ("unstamped", 0),
            ("errors", 0),
        ],
    );
    assert_eq!(fake.seen.acks.lock().unwrap().len(), 20);
    assert_eq!(fake.seen.disconnects.load(Ordering::Relaxed), 1);
}

#[test]
fn consume_only_drains_a_queue_preloaded_on_hamq() {
    let url = common::shared_mariadb().create_database();
    let b = common::Broker::start(&url, &[]);
    let port = b.stomp_port();
    let dest = "/queue/bench-backlog";
    let preload = bench(&format!(
        "--port {port} --destination {dest} --producers 2 --consumers 0 --count 300"
    ));
    assert_counts(&preload, &[("sent", 600), ("errors", 0)]);
    let mut c = common::Client::connect(port);
    for i in 0..4 {
        c.send_with_receipt(
            dest,
            format!("plain message {i}"),
            &[("persistent", "true")],
        );
    }
    c.disconnect();
    let out = bench(&format!(
        "--port {port} --destination {dest} --producers 0 --consumers 2 \
         --ack client-individual --drain 2"
    ));
    assert_counts(
        &out,
        &[
            ("sent", 0),
            ("received", 604),
            ("unstamped", 4),
            ("duplicates", 0),
            ("corrupt", 0),
            ("stale", 0),
            ("errors", 0),
        ],
    );
    let json = json_of(&out);
    let deliveries = &json[json.find("\"send_to_delivery\"").unwrap()..];
    assert_eq!(
        num(deliveries, "count"),
        0,
        "other runs' send times are not timed"
    );
    let again = bench(&format!(
        "--port {port} --destination {dest} --producers 0 --consumers 1 --drain 1"
    ));
    assert_counts(&again, &[("received", 0), ("errors", 0)]);
}

#[test]
fn idle_connections_to_a_fake_broker() {
    let fake = Fake::start(None);
    let port = fake.port;
    let out = bench(&format!(
        "--port {port} --idle-connections 30 --duration 0.3"
    ));
    assert_counts(
        &out,
        &[
            ("requested", 30),
            ("connected", 30),
            ("open_at_end", 30),
            ("errors", 0),
        ],
    );
    assert!(json_of(&out).contains(r#""mode":"idle-connections""#));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("30 of 30 connections open"), "{stderr}");
    assert_eq!(
        fake.problems(),
        Vec::<String>::new(),
        "CONNECTs with heart-beat 0,0"
    );
    assert_eq!(fake.seen.connects.load(Ordering::Relaxed), 30);
    assert_eq!(fake.seen.disconnects.load(Ordering::Relaxed), 30);
    assert_eq!(fake.seen.sends.load(Ordering::Relaxed), 0);
}

#[test]
fn idle_connections_past_hamqs_limit_are_reported() {
    let url = common::shared_mariadb().create_database();
    let b = common::Broker::start(&url, &[("HAMQ_MAX_CONNECTIONS", "5")]);
    let port = b.stomp_port();
    let out = bench(&format!(
        "--port {port} --idle-connections 8 --duration 0.2"
    ));
    let json = json_of(&out);
    assert_eq!(out.status.code(), Some(1), "refused connections: exit 1");
    for (key, want) in [
        ("requested", 8),
        ("connected", 5),
        ("open_at_end", 5),
        ("errors", 3),
    ] {
        assert_eq!(num(&json, key), want, "{key} in {json}");
    }
    assert!(
        json.contains("CONNECT refused: too many connections: the limit is 5"),
        "{json}"
    );
}
