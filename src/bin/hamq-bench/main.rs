//! hamq-bench: a STOMP 1.2 load generator for any broker (hamq, ActiveMQ, ...), with its own
//! minimal client and no dependency on the hamq library. Producers and consumers are
//! threads with one blocking connection each; the result is a table on stdout and, with
//! `--json`, one JSON object. `hamq-bench --help` lists the flags.
//!
//! Modules: `cli` (flags), `frame` (STOMP framing), `conn` (a connection), `payload` (stamped
//! bodies), `histogram` (latency percentiles), `shared` (state shared by the threads),
//! `producer` and `consumer` (the threads), `run` (one run), `report` (table and JSON).

mod cli;
mod conn;
mod consumer;
mod frame;
mod histogram;
mod payload;
mod producer;
mod report;
mod run;
mod shared;

use report::Report;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match cli::parse(&args) {
        Ok(Some(opts)) => opts,
        Ok(None) => {
            println!("{}", cli::HELP);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("hamq-bench: {e}\n(hamq-bench --help lists the flags)");
            return ExitCode::from(2);
        }
    };
    payload::now_ns(); // start the clock
    let totals = run::run(opts.clone());
    let report = Report {
        opts: &opts,
        totals: &totals,
    };
    print!("{}", report.table());
    match opts.json.as_deref() {
        Some("-") => println!("{}", report.json()),
        Some(path) => {
            if let Err(e) = std::fs::write(path, report.json() + "\n") {
                eprintln!("hamq-bench: cannot write {path}: {e}");
                return ExitCode::FAILURE;
            }
        }
        None => {}
    }
    if report.clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
