//! The README's client failover example, run through a real takeover: stomp.py
//! (`scripts/stomp-py-failover.py`) sends with receipts and consumes with acks against a pair;
//! the master is killed with kill -9 half-way; every message must arrive. The README's snippet
//! must be the script's own code, word for word.

mod common;

use common::supervise::Captured;
use common::{python3_with_stomp, shared_mariadb, Pair, STEP};
use std::process::Command;
use std::time::Duration;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/stomp-py-failover.py");

#[test]
fn the_readme_s_stomp_py_example_is_the_script_s_code() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("read README.md");
    let start = readme
        .find("```python\n")
        .expect("a python block in README.md")
        + 10;
    let snippet = &readme[start..start + readme[start..].find("```").expect("its end")];
    let script = std::fs::read_to_string(SCRIPT).expect("read the script");
    assert!(
        script.contains(snippet),
        "README.md's python example is not in {SCRIPT}:\n{snippet}"
    );
}

#[test]
fn stomp_py_example_survives_kill_9_of_the_master() {
    let python = python3_with_stomp().expect("python3 with stomp.py (.ci/run installs it)");
    let url = shared_mariadb().create_database();
    let mut pair = Pair::start(&url);
    let brokers = format!("127.0.0.1:{},127.0.0.1:{}", pair.port(0), pair.port(1));
    let mut cmd = Command::new(python);
    cmd.arg(SCRIPT)
        .args(["--brokers", &brokers, "--count", "300", "--timeout", "60"]);
    let mut client = Captured::spawn("stomp-py-failover", cmd);
    client
        .output()
        .wait_for("sent 100", Duration::from_secs(30));
    pair.broker(0).kill9();
    pair.await_master(1, STEP);
    let status = client
        .wait_exit(Duration::from_secs(90))
        .expect("the example did not finish");
    let output = client.output().tail(400);
    assert!(status.success(), "the example failed ({status}):\n{output}");
    assert!(output.contains("received 300 of 300"), "{output}");
    // The example never sends a second CONNECT on a live connection (stomp.py's
    // `connect(wait=True)` returns before the listener hears of CONNECTED).
    for i in 0..2 {
        assert_eq!(
            pair.broker(i).count_log("already connected"),
            0,
            "broker {i}"
        );
    }
}
