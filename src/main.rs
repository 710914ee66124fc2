//! The `hamq` binary: read the configuration, set up logging and signals, run the broker; or,
//! with a command word, run an admin command against the broker on this host.

mod reload;

use hamq::auth::Authenticator;
use hamq::config::Config;
use hamq::shutdown::Shutdown;
use hamq::transport::TlsSettings;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;

const USAGE: &str = "usage: hamq [--config PATH]            run the broker
       hamq [--config PATH] COMMAND    an admin command:
           ";

fn main() -> ExitCode {
    hamq::memory::limit_arenas();
    let (path, command) = match parse_args(std::env::args().skip(1).collect()) {
        Ok(Args::Run(path, command)) => (path, command),
        Ok(Args::Help) => {
            print!("{USAGE}{}{CONFIG_HELP}", hamq::admin::USAGE);
            return ExitCode::SUCCESS;
        }
        Ok(Args::Version) => {
            println!("hamq {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(problem) => {
            eprintln!("hamq: {problem}\n{USAGE}{}", hamq::admin::USAGE);
            return ExitCode::from(2);
        }
    };
    // Needs no configuration: it makes a value for one.
    if command.first().is_some_and(|c| c == "hash") {
        if std::io::stdin().is_terminal() {
            eprint!("password (one line; it is shown as you type): ");
        }
        return print_or_fail(hamq::admin::hash(&command[1..], std::io::stdin().lock()));
    }
    let config = match read_config(&path) {
        Ok(config) => config,
        Err(problem) => {
            init_logging(true);
            log::error!("{problem}");
            return ExitCode::from(2);
        }
    };
    init_logging(config.log_timestamps);
    if !command.is_empty() {
        return print_or_fail(hamq::admin::run(&config, &command));
    }
    if let Err(e) = config
        .check_datastore()
        .and_then(|()| config.check_listeners())
    {
        log::error!("{e}");
        return ExitCode::from(2);
    }
    // A bad certificate or key stops the broker here, before it takes part in the election.
    let tls = match hamq::transport::server_config(&config) {
        Ok(tls) => tls,
        Err(problem) => {
            log::error!("{problem}");
            return ExitCode::from(2);
        }
    };
    run_broker(config, tls, &path)
}

/// One line per event on stderr, `RUST_LOG` (default `info`) choosing what. With `timestamps`,
/// each line starts with the UTC time to the millisecond (failovers take milliseconds); without,
/// for multilog's `t` or journald, which stamp lines themselves.
fn init_logging(timestamps: bool) {
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if timestamps {
        builder.format_timestamp_millis();
    } else {
        builder.format_timestamp(None);
    }
    builder.init();
}

/// An admin command's outcome: its output on stdout, or its problem on stderr and exit 1.
fn print_or_fail(outcome: Result<String, String>) -> ExitCode {
    match outcome {
        Ok(output) => {
            print!("{output}");
            ExitCode::SUCCESS
        }
        Err(problem) => {
            eprintln!("hamq: {problem}");
            ExitCode::FAILURE
        }
    }
}

fn read_config(path: &str) -> Result<Config, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("cannot read config {path}: {e}"))?;
    Config::parse(&text, path, std::env::vars()).map_err(|e| e.to_string())
}

fn run_broker(config: Config, tls: TlsSettings, path: &str) -> ExitCode {
    log::info!(
        "hamq {} starting as `{}`",
        env!("CARGO_PKG_VERSION"),
        config.name
    );
    let auth = match Authenticator::new(config.users.clone(), config.permits.clone()) {
        Ok(auth) => Arc::new(auth),
        Err(e) => {
            log::error!("cannot read /dev/urandom for the login cache's key: {e}");
            return ExitCode::from(2);
        }
    };
    let shutdown = Arc::new(Shutdown::default());
    let on_signal = shutdown.clone();
    // SIGINT and SIGTERM stop the broker; SIGHUP (`svc -h`) reloads instead (see `reload`).
    if let Err(e) = ctrlc::set_handler(move || on_signal.begin()) {
        log::error!("cannot install the signal handler: {e}");
        return ExitCode::from(2);
    }
    if let Err(e) = reload::watch(
        path.to_string(),
        config.clone(),
        auth.clone(),
        shutdown.clone(),
    ) {
        log::error!("cannot install the SIGHUP handler: {e}");
        return ExitCode::from(2);
    }
    match hamq::server::run(config, tls, auth, shutdown) {
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

const CONFIG_HELP: &str = "
PATH: --config, else $HAMQ_CONFIG, else $HAMQ_HOME/etc/hamq.conf, else etc/hamq.conf of the
checkout this binary was built in, else of the current directory.
";

/// What the command line asks for.
enum Args {
    /// The config path and the admin command's words (none: run the broker).
    Run(String, Vec<String>),
    Help,
    Version,
}

fn parse_args(args: Vec<String>) -> Result<Args, String> {
    let mut path = None;
    let mut rest = Vec::new();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--config" => path = Some(args.next().ok_or("--config needs a path")?),
            "-h" | "--help" => return Ok(Args::Help),
            "-V" | "--version" => return Ok(Args::Version),
            "--url" => {
                let url = args.next().ok_or("--url needs http://HOST:PORT")?;
                rest.extend([arg, url]);
            }
            "--json" => rest.push(arg),
            flag if flag.starts_with('-') && rest.is_empty() => {
                return Err(format!("unknown option `{flag}`"))
            }
            _ => rest.push(arg),
        }
    }
    Ok(Args::Run(path.unwrap_or_else(default_config), rest))
}

/// `--config` missing: `$HAMQ_CONFIG`, else `etc/hamq.conf` of `$HAMQ_HOME`, else of the
/// checkout this binary was built in (`<checkout>/target/release/hamq`), else of the current
/// directory. So `target/release/hamq status` works from anywhere.
fn default_config() -> String {
    if let Ok(path) = std::env::var("HAMQ_CONFIG") {
        return path;
    }
    if let Ok(home) = std::env::var("HAMQ_HOME") {
        return format!("{home}/etc/hamq.conf");
    }
    let checkout = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.join("etc/hamq.conf")));
    match checkout {
        Some(path) if path.is_file() => path.display().to_string(),
        _ => "etc/hamq.conf".to_string(),
    }
}
