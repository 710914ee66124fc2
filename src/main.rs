//! The `hamq` binary: read the configuration, set up logging and signals, run the broker.

use hamq::config::Config;
use hamq::shutdown::Shutdown;
use std::process::ExitCode;
use std::sync::Arc;

const USAGE: &str = "usage: hamq [--config PATH]   (default PATH: etc/hamq.conf)";

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let path = match config_path(std::env::args().skip(1).collect()) {
        Ok(path) => path,
        Err(problem) => {
            eprintln!("hamq: {problem}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) => {
            log::error!("cannot read config {path}: {e}");
            return ExitCode::from(2);
        }
    };
    let config = match Config::parse(&text, &path, std::env::vars()) {
        Ok(config) => config,
        Err(e) => {
            log::error!("{e}");
            return ExitCode::from(2);
        }
    };
    log::info!(
        "hamq {} starting as `{}`",
        env!("CARGO_PKG_VERSION"),
        config.name
    );
    let shutdown = Arc::new(Shutdown::default());
    let on_signal = shutdown.clone();
    if let Err(e) = ctrlc::set_handler(move || on_signal.begin()) {
        log::error!("cannot install the signal handler: {e}");
        return ExitCode::from(2);
    }
    match hamq::server::run(config, shutdown) {
        Ok(()) => {
            log::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(why) => {
            log::error!("stopped: {why}");
            ExitCode::FAILURE
        }
    }
}

fn config_path(args: Vec<String>) -> Result<String, String> {
    match args.as_slice() {
        [] => Ok("etc/hamq.conf".to_string()),
        [flag, path] if flag == "--config" => Ok(path.clone()),
        [flag] if flag == "--help" || flag == "-h" => Err("help".to_string()),
        other => Err(format!("unexpected arguments: {}", other.join(" "))),
    }
}
