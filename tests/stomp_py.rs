//! A real third-party client, stomp.py, against the real broker: send with receipts,
//! client-individual acks, transactions, topics (tests/stomp_py_client.py holds the scenario).

mod common;

use common::{python3_with_stomp, shared_mariadb, Broker};
use std::process::Command;

#[test]
fn stomp_py_scenario_passes() {
    let python = python3_with_stomp()
        .expect("python3 with stomp.py is required (pip install stomp-py; .ci/run installs it)");
    let url = shared_mariadb().create_database();
    let broker = Broker::start(&url, &[]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/stomp_py_client.py");
    let output = Command::new(python)
        .arg(script)
        .arg("--port")
        .arg(broker.stomp_port().to_string())
        .output()
        .expect("run the stomp.py scenario");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "stomp.py scenario failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(
        stdout.contains("\"ok\": true"),
        "unexpected output: {stdout}"
    );
}
