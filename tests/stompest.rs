//! The integration tests that ship inside the third-party stompest package (PyPI `stompest`),
//! pointed at the real broker by scripts/stompest-tests: queue send/subscribe with
//! client-individual acks, transactions with receipts, subscription replay after a dropped
//! connection, STOMP 1.1 and 1.2 sessions, heart-beats, and UTF-8 headers, each over plain TCP and
//! again over the TLS listener. The script skips, with a reason, the test that does not apply to
//! hamq (a client-side failover test).

mod common;

use common::{shared_mariadb, Broker, Certs};
use std::process::Command;

#[test]
fn stompest_integration_suite_passes() {
    let url = shared_mariadb().create_database();
    // The suite's heart-beat test runs for 2.5 negotiated client heart-beat periods, then waits
    // for the broker to drop the silent client: 1 s instead of the default 30 s keeps it short.
    let certs = Certs::new();
    let mut env = certs.broker_env();
    env.push(("HAMQ_HEARTBEAT_RECEIVE_MS".into(), "1000".into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let broker = Broker::start(&url, &env);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/stompest-tests");
    let output = Command::new("bash")
        .arg(script)
        .arg(broker.stomp_port().to_string())
        .arg(broker.stomp_tls_port().to_string())
        .output()
        .expect("run scripts/stompest-tests");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "stompest integration tests failed ({}); python3 with stompest is required \
         (pip install stompest; .ci/run installs it):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(
        stdout.contains("stompest: ") && stdout.contains(" passed, 0 failed"),
        "unexpected output: {stdout}"
    );
    assert!(
        stdout.contains("SimpleStompIntegrationTestSSL.test_1_integration) ... ok"),
        "the TLS half did not run: {stdout}"
    );
}
