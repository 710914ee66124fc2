//! CI's smoke run of the load generator (issue 5): `hamq-bench --duration 5 --producers 2
//! --consumers 2` (defaults otherwise: persistent, no receipts, auto ack) against a hamq
//! started by the harness. It must run without errors and deliver; how fast is not checked.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

/// Five seconds of sending, the drain, and slack for a loaded CI machine.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

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

#[test]
fn five_second_smoke_run_against_hamq() {
    let url = common::shared_mariadb().create_database();
    let b = common::Broker::start(&url, &[]);
    let json_path =
        std::env::temp_dir().join(format!("hamq-bench-smoke-{}.json", std::process::id()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_hamq-bench"))
        .args(["--port", &b.stomp_port().to_string()])
        .args(["--destination", "/queue/bench-smoke", "--duration", "5"])
        .args(["--producers", "2", "--consumers", "2", "--json"])
        .arg(&json_path)
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn hamq-bench");
    let status = common::wait_or_kill(&mut child, RUN_TIMEOUT, "hamq-bench");
    let json = std::fs::read_to_string(&json_path).unwrap_or_else(|e| {
        panic!(
            "hamq-bench ({status}) wrote no {}: {e}",
            json_path.display()
        )
    });
    let _ = std::fs::remove_file(&json_path);
    eprintln!("hamq-bench: {status}\n{json}");
    assert_eq!(num(&json, "errors"), 0, "{json}");
    assert!(num(&json, "sent") > 0, "{json}");
    assert!(num(&json, "received") > 0, "{json}");
    assert_eq!(num(&json, "duplicates"), 0, "{json}");
    assert_eq!(num(&json, "corrupt"), 0, "{json}");
    assert_ne!(status.code(), Some(2), "command line refused");
}
