//! hamq-bench: a STOMP 1.2 load generator for any broker (hamq, ActiveMQ, ...), with its own
//! minimal client and no dependency on the hamq library. Producers and consumers are
//! threads with one blocking connection each; the result is a table on stdout and, with
//! `--json`, one JSON object. `hamq-bench --help` lists the flags.
//!
//! Modules: `cli` (flags), `frame` (STOMP framing), `conn` (a connection), `payload` (stamped
//! bodies), `histogram` (latency percentiles), `shared` (state shared by the threads),
//! `producer` and `consumer` (the threads), `run` (one run), `report` (table and JSON),
//! `idle` (the idle-connections mode, with its own report).

mod cli;
mod conn;
mod consumer;
mod frame;
mod histogram;
mod idle;
mod payload;
mod producer;
mod report;
mod run;
mod shared;

use idle::IdleReport;
use report::Report;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match cli::parse(&args) {
        Ok(Some(opts)) => opts,
        Ok(None) => {
            println!("{}", cli::help());
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("hamq-bench: {e}\n(hamq-bench --help lists the flags)");
            return ExitCode::from(2);
        }
    };
    payload::now_ns(); // start the clock
    let (table, json, clean) = if opts.idle_connections > 0 {
        let result = idle::run(&opts);
        let report = IdleReport {
            opts: &opts,
            result: &result,
        };
        (report.table(), report.json(), report.clean())
    } else {
        let totals = run::run(opts.clone());
        let report = Report {
            opts: &opts,
            totals: &totals,
        };
        (report.table(), report.json(), report.clean())
    };
    print!("{table}");
    match opts.json.as_deref() {
        Some("-") => println!("{json}"),
        Some(path) => {
            if let Err(e) = std::fs::write(path, json + "\n") {
                eprintln!("hamq-bench: cannot write {path}: {e}");
                return ExitCode::FAILURE;
            }
        }
        None => {}
    }
    if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
