//! The broker's configuration: `key = value` lines with `#` comments, each key overridable by an
//! environment variable `HAMQ_<KEY>` (so a daemontools `envdir` works).
//!
//! Owns parsing and validation only; `main` calls it once before any thread starts. An unknown key
//! or a bad value is an error naming the key and where it came from (file line or variable).

use crate::auth::password::PasswordHash;
use crate::auth::permit::Permit;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Everything the broker reads from its configuration, with defaults filled in.
#[derive(Clone, Debug)]
pub struct Config {
    /// Unique per broker; shown in logs and as the lock holder.
    pub name: String,
    /// `mysql://user:pass@host:port/db`.
    pub datastore: String,
    /// The plain STOMP listener; None = off.
    pub stomp_listen: Option<SocketAddr>,
    /// The STOMP-over-TLS listener; None = off.
    pub stomp_tls_listen: Option<SocketAddr>,
    /// PEM certificate chain (server certificate first) and private key of the TLS listener.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// The status listener's certificate and key: with them it speaks HTTPS only.
    pub status_tls_cert: Option<PathBuf>,
    pub status_tls_key: Option<PathBuf>,
    /// The status/metrics/admin HTTP listener; None = off.
    pub status_listen: Option<SocketAddr>,
    pub default_persistent: bool,
    pub max_redeliveries: u32,
    pub default_prefetch: usize,
    pub max_command_line: usize,
    pub max_header_line: usize,
    pub max_headers: usize,
    pub max_frame: usize,
    /// `login -> password hash`; empty means every CONNECT is accepted.
    pub users: Vec<(String, PasswordHash)>,
    /// What each user may do; empty means everything (see `auth`).
    pub permits: Vec<Permit>,
    /// How often the broker can send heart-beats (the `sx` of CONNECTED).
    pub heartbeat_send: Duration,
    /// The shortest interval the broker asks for client heart-beats: CONNECTED's `sy` is the
    /// client's own offer, or this when the client offers to beat more often; 0 = not required.
    pub heartbeat_receive: Duration,
    /// A socket that sends no CONNECT within this is closed.
    pub connect_timeout: Duration,
    /// A client that takes no bytes for this long while the broker writes to it is disconnected
    /// (its unacknowledged messages go to other consumers).
    pub slow_consumer: Duration,
    /// Open client connections at most; more are refused with an ERROR.
    pub max_connections: usize,
    /// Subscriptions one connection may hold.
    pub max_subscriptions: usize,
    /// Bytes of SEND bodies one open transaction may buffer.
    pub max_transaction_bytes: usize,
    /// Waiting messages at which SENDs to a queue wait for consumers (flow control); 0 = none.
    pub max_queue_depth: usize,
    /// Bytes of message bodies held in memory; beyond it bodies stay in the store until needed.
    pub memory_limit: usize,
    /// How long the database waits on a silent connection before dropping it (and the lock
    /// with it): the longest a frozen or cut-off master can keep the lock (or the lease).
    pub lease: Duration,
    /// How brokers elect their master (see `election`).
    pub election: ElectionChoice,
    /// Log lines start with the time (to the millisecond); off under multilog `t` or journald.
    pub log_timestamps: bool,
}

/// The `election` key: `auto` picks the lease on Galera and Group Replication, the row lock
/// elsewhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElectionChoice {
    Auto,
    Lock,
    Lease,
}

/// A configuration problem: which key, where it was set, and what is wrong.
#[derive(Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    /// `line N of PATH` or `environment variable HAMQ_X`.
    pub origin: String,
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "config key `{}` ({}): {}",
            self.key, self.origin, self.problem
        )
    }
}

impl std::error::Error for ConfigError {}

/// One configuration key: its name and how a value of it is read into the configuration.
struct Key {
    name: &'static str,
    set: fn(&mut Config, &str) -> Result<(), String>,
}

/// `key!("name", |config, value| statement)`: a key whose statement may fail with `?`.
macro_rules! key {
    ($name:literal, |$c:ident, $v:ident| $body:expr) => {
        Key {
            name: $name,
            set: |$c, $v| {
                $body;
                Ok(())
            },
        }
    };
}

/// Every key the broker knows, the one list of them: the file, the environment and the error
/// for an unknown key all read it. (Defaults are `Config::default`'s.)
const KEYS: &[Key] = &[
    key!("name", |c, v| c.name = non_empty(v)?),
    key!("datastore", |c, v| c.datastore = datastore(v)?),
    key!("stomp_listen", |c, v| c.stomp_listen =
        listen(v, "0.0.0.0:61613")?),
    key!("stomp_tls_listen", |c, v| c.stomp_tls_listen =
        listen(v, "0.0.0.0:61614")?),
    key!("tls_cert", |c, v| c.tls_cert = path(v)),
    key!("tls_key", |c, v| c.tls_key = path(v)),
    key!("status_tls_cert", |c, v| c.status_tls_cert = path(v)),
    key!("status_tls_key", |c, v| c.status_tls_key = path(v)),
    key!("status_listen", |c, v| c.status_listen =
        listen(v, "127.0.0.1:8161")?),
    key!("default_persistent", |c, v| c.default_persistent =
        boolean(v)?),
    key!("max_redeliveries", |c, v| c.max_redeliveries = number(v)?),
    key!("default_prefetch", |c, v| c.default_prefetch = positive(v)?),
    key!("max_command_line", |c, v| c.max_command_line = positive(v)?),
    key!("max_header_line", |c, v| c.max_header_line = positive(v)?),
    key!("max_headers", |c, v| c.max_headers = positive(v)?),
    key!("max_frame", |c, v| c.max_frame = positive(v)?),
    key!("users", |c, v| c.users = users(v)?),
    // Repeatable; one line may also hold several rules separated by `;`.
    key!(
        "permit",
        |c, v| for rule in v.split(';').filter(|r| !r.trim().is_empty()) {
            c.permits.push(Permit::parse(rule)?);
        }
    ),
    key!("heartbeat_send_ms", |c, v| c.heartbeat_send = millis(v)?),
    key!("heartbeat_receive_ms", |c, v| c.heartbeat_receive =
        millis(v)?),
    key!("connect_timeout_ms", |c, v| c.connect_timeout =
        Duration::from_millis(positive(v)? as u64)),
    key!("slow_consumer_ms", |c, v| c.slow_consumer =
        Duration::from_millis(positive(v)? as u64)),
    key!("max_connections", |c, v| c.max_connections = positive(v)?),
    key!("max_subscriptions", |c, v| c.max_subscriptions =
        positive(v)?),
    key!("max_transaction_bytes", |c, v| c.max_transaction_bytes =
        positive(v)?),
    key!("max_queue_depth", |c, v| c.max_queue_depth = number(v)?),
    key!("memory_limit", |c, v| c.memory_limit = positive(v)?),
    key!("lease", |c, v| c.lease = lease(v)?),
    key!("election", |c, v| c.election = match v {
        "auto" => ElectionChoice::Auto,
        "lock" => ElectionChoice::Lock,
        "lease" => ElectionChoice::Lease,
        other => return Err(format!("`{other}` is not auto, lock or lease")),
    }),
    key!("log_timestamps", |c, v| c.log_timestamps = boolean(v)?),
];

fn key_names() -> String {
    KEYS.iter().map(|k| k.name).collect::<Vec<_>>().join(", ")
}

/// `HAMQ_` variables that are not configuration keys: `run`'s and `scripts/local-mariadb`'s,
/// the admin command's credentials, URL and CA, `bench/compare`'s `HAMQ_BIN` (inherited by the
/// brokers it starts), and the test harness's.
const NOT_KEYS: &[&str] = &[
    "HOME",
    "CONFIG",
    "LOCAL_DB_PORT",
    "LOCAL_DB_SBIN",
    "ADMIN_USER",
    "ADMIN_PASSWORD",
    "ADMIN_URL",
    "ADMIN_CA",
    "BIN",
    "TEST_MARIADB",
    "HOSTILE_SEED",
    "CI_TEST_TIMEOUT",
];

impl Default for Config {
    fn default() -> Config {
        // The frame limits are the codec's own defaults.
        let limits = crate::codec::Limits::default();
        Config {
            name: default_name(),
            datastore: String::new(),
            stomp_listen: Some(SocketAddr::from(([0, 0, 0, 0], 61613))),
            stomp_tls_listen: None,
            tls_cert: None,
            tls_key: None,
            status_tls_cert: None,
            status_tls_key: None,
            status_listen: None,
            default_persistent: true,
            max_redeliveries: 6,
            default_prefetch: 1000,
            max_command_line: limits.max_command_line,
            max_header_line: limits.max_header_line,
            max_headers: limits.max_headers,
            max_frame: limits.max_frame,
            users: Vec::new(),
            permits: Vec::new(),
            heartbeat_send: Duration::from_millis(1000),
            heartbeat_receive: Duration::from_millis(1000),
            connect_timeout: Duration::from_millis(30_000),
            slow_consumer: Duration::from_secs(30),
            max_connections: 10_000,
            max_subscriptions: 1000,
            max_transaction_bytes: 64 * 1024 * 1024,
            max_queue_depth: 0,
            memory_limit: 24 * 1024 * 1024,
            lease: Duration::from_secs(10),
            election: ElectionChoice::Auto,
            log_timestamps: true,
        }
    }
}

fn default_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "hamq".to_string())
}

impl Config {
    /// How often the master uses each of its database connections: a tenth of the lease.
    pub fn keepalive(&self) -> Duration {
        (self.lease / 10).max(Duration::from_millis(100))
    }

    /// Bound on every socket call of the store's connections: well inside the lease, so a
    /// stalled database is noticed before a slave may take over.
    pub fn store_io_timeout(&self) -> Duration {
        (self.lease / 2).max(Duration::from_secs(1))
    }

    /// Parse the file's text (`path` only names it in errors), then apply `env` overrides
    /// (pairs of variable name and value, usually `std::env::vars()`).
    pub fn parse(
        text: &str,
        path: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut config = Config::default();
        for (index, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let origin = format!("line {} of {}", index + 1, path);
            let Some((key, value)) = line.split_once('=') else {
                return Err(ConfigError {
                    key: line.to_string(),
                    origin,
                    problem: "expected `key = value`".to_string(),
                });
            };
            config.set(key.trim(), value.trim(), &origin)?;
        }
        for (var, value) in env {
            let Some(key) = var.strip_prefix("HAMQ_") else {
                continue;
            };
            // Variables the scripts and tools use for themselves are not keys.
            if NOT_KEYS.contains(&key) {
                continue;
            }
            let origin = format!("environment variable {var}");
            let key = key.to_ascii_lowercase();
            if !KEYS.iter().any(|k| k.name == key) {
                // A misspelt variable in an envdir would otherwise be ignored without a word.
                return Err(ConfigError {
                    key: var.clone(),
                    origin,
                    problem: format!(
                        "not a configuration key; the keys are {} (as HAMQ_ and the key in \
                         capitals), and HAMQ_{} are the scripts' own",
                        key_names(),
                        NOT_KEYS.join(", HAMQ_")
                    ),
                });
            }
            // The one repeatable key: the variable replaces all of the file's rules.
            if key == "permit" {
                config.permits.clear();
            }
            config.set(&key, value.trim(), &origin)?;
        }
        config.check_permits()?;
        Ok(config)
    }

    /// Every `permit` rule names a configured user (or `*`), and rules need users.
    fn check_permits(&self) -> Result<(), ConfigError> {
        let unknown = self.permits.iter().find_map(|rule| match &rule.login {
            None if self.users.is_empty() => Some("*"),
            Some(login) if !self.users.iter().any(|(user, _)| user == login) => Some(login),
            _ => None,
        });
        match unknown {
            Some(login) => Err(ConfigError {
                key: "permit".to_string(),
                origin: "the final configuration".to_string(),
                problem: format!(
                    "a rule names `{login}` but `users` has no such user \
                     (rules apply only when users are configured)"
                ),
            }),
            None => Ok(()),
        }
    }

    /// The broker (not the admin command) needs a real datastore URL.
    pub fn check_datastore(&self) -> Result<(), ConfigError> {
        if self.datastore.is_empty() || self.datastore == "local" {
            return Err(ConfigError {
                key: "datastore".to_string(),
                origin: "the final configuration".to_string(),
                problem: "`local` (or nothing) is resolved by ./run, which starts a private \
                          MariaDB: start hamq through ./run, or give \
                          mysql://user:pass@host:port/db"
                    .to_string(),
            });
        }
        Ok(())
    }

    /// The broker needs a listener, and a TLS listener needs its certificate and key (whose
    /// files `transport::server_config` reads).
    pub fn check_listeners(&self) -> Result<(), ConfigError> {
        let problem = |key: &str, problem: &str| ConfigError {
            key: key.to_string(),
            origin: "the final configuration".to_string(),
            problem: problem.to_string(),
        };
        if self.stomp_listen.is_none() && self.stomp_tls_listen.is_none() {
            return Err(problem(
                "stomp_listen",
                "empty, and so is stomp_tls_listen: clients could not connect at all",
            ));
        }
        if self.stomp_tls_listen.is_some() {
            for (key, path) in [("tls_cert", &self.tls_cert), ("tls_key", &self.tls_key)] {
                if path.is_none() {
                    return Err(problem(key, "stomp_tls_listen is set, so this must be too"));
                }
            }
        }
        match (&self.status_tls_cert, &self.status_tls_key) {
            (Some(_), None) => {
                return Err(problem(
                    "status_tls_key",
                    "status_tls_cert is set, so this must be too",
                ))
            }
            (None, Some(_)) => {
                return Err(problem(
                    "status_tls_cert",
                    "status_tls_key is set, so this must be too",
                ))
            }
            (Some(_), Some(_)) if self.status_listen.is_none() => {
                return Err(problem(
                    "status_tls_cert",
                    "set, but status_listen is empty: there is no status listener",
                ))
            }
            _ => {}
        }
        Ok(())
    }

    fn set(&mut self, key: &str, value: &str, origin: &str) -> Result<(), ConfigError> {
        let problem = match KEYS.iter().find(|k| k.name == key) {
            Some(k) => match (k.set)(self, value) {
                Ok(()) => return Ok(()),
                Err(problem) => problem,
            },
            None => format!("unknown key; known keys are: {}", key_names()),
        };
        Err(ConfigError {
            key: key.to_string(),
            origin: origin.to_string(),
            problem,
        })
    }
}

fn non_empty(value: &str) -> Result<String, String> {
    if value.is_empty() {
        Err("must not be empty".to_string())
    } else {
        Ok(value.to_string())
    }
}

/// An address to listen on, or off when empty.
fn listen(value: &str, example: &str) -> Result<Option<SocketAddr>, String> {
    if value.is_empty() {
        return Ok(None);
    }
    value
        .parse()
        .map(Some)
        .map_err(|_| format!("`{value}` is not an address like {example} (or empty)"))
}

/// A file path, or none when empty.
fn path(value: &str) -> Option<PathBuf> {
    (!value.is_empty()).then(|| PathBuf::from(value))
}

/// `local` is accepted here and refused only if no override (from ./run) replaced it.
fn datastore(value: &str) -> Result<String, String> {
    if value == "local" {
        return Ok(value.to_string());
    }
    if !value.starts_with("mysql://") {
        return Err(format!(
            "`{value}` is not a URL like mysql://user:pass@host:port/db"
        ));
    }
    datastore_opts(value).map_err(|e| format!("bad datastore URL: {e}"))?;
    Ok(value.to_string())
}

/// `true`/`yes`/`on`/`1` or `false`/`no`/`off`/`0`, in any case.
fn boolean(value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" => Ok(false),
        _ => Err(format!(
            "`{value}` is not a boolean (true, yes, on, 1 or false, no, off, 0)"
        )),
    }
}

fn number<T: std::str::FromStr>(value: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("`{value}` is not a non-negative whole number"))
}

fn positive(value: &str) -> Result<usize, String> {
    match number::<usize>(value)? {
        0 => Err("must be greater than 0".to_string()),
        n => Ok(n),
    }
}

fn millis(value: &str) -> Result<Duration, String> {
    number::<u64>(value).map(Duration::from_millis)
}

/// Whole seconds (the database's `wait_timeout` has no finer unit), at least 2.
fn lease(value: &str) -> Result<Duration, String> {
    match number::<u64>(value)? {
        n if n < 2 => Err("must be at least 2 (seconds)".to_string()),
        n => Ok(Duration::from_secs(n)),
    }
}

/// `login:hash` pairs; a pair's text is never echoed (it may be a plain-text password).
fn users(value: &str) -> Result<Vec<(String, PasswordHash)>, String> {
    let mut users: Vec<(String, PasswordHash)> = Vec::new();
    for (n, pair) in value.split_whitespace().enumerate() {
        let Some((login, hash)) = pair.split_once(':').filter(|(l, _)| !l.is_empty()) else {
            return Err(format!(
                "entry {} is not login:hash (make the hash with `hamq hash`)",
                n + 1
            ));
        };
        if users.iter().any(|(user, _)| user == login) {
            return Err(format!("user `{login}` is listed twice"));
        }
        let hash =
            PasswordHash::parse(hash).map_err(|e| format!("user `{login}`: password {e}"))?;
        users.push((login.to_string(), hash));
    }
    Ok(users)
}

/// The connection options of a datastore URL: the mysql crate's URL parameters (TLS ones
/// included: `root_cert_path`, `danger_accept_invalid_certs`, `danger_skip_domain_validation`,
/// `cert_chain_path` with `priv_key_path`, `cipher_suites`; any of them turns TLS on) plus
/// hamq's `require_ssl=true`, which turns TLS on by itself (server certificate checked against
/// the built-in Mozilla roots, and `root_cert_path` if given). With TLS on, a server that does
/// not offer it is refused.
pub fn datastore_opts(url: &str) -> Result<mysql::Opts, String> {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut require_ssl = false;
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("require_ssl", "true")) => require_ssl = true,
            Some(("require_ssl", "false")) => {}
            Some(("require_ssl", other)) => {
                return Err(format!("require_ssl is `{other}`, not true or false"))
            }
            _ => rest.push(pair),
        }
    }
    let url = match rest.is_empty() {
        true => base.to_string(),
        false => format!("{base}?{}", rest.join("&")),
    };
    let mut opts = mysql::Opts::from_url(&url).map_err(|e| e.to_string())?;
    // The mysql crate's default: after connecting over TCP to 127.0.0.1 or localhost, ask the
    // server for its Unix socket and move there. That would pass by a proxy on this host (and
    // its failover). Only the URL's own `prefer_socket=true` asks for it.
    if !rest.iter().any(|p| p.starts_with("prefer_socket=")) {
        opts = mysql::OptsBuilder::from_opts(opts)
            .prefer_socket(false)
            .into();
    }
    if require_ssl && opts.get_ssl_opts().is_none() {
        return Ok(mysql::OptsBuilder::from_opts(opts)
            .ssl_opts(Some(mysql::SslOpts::default()))
            .into());
    }
    Ok(opts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mysql::SslOpts;

    const URL: &str = "mysql://u:p@127.0.0.1:3306/hamq";

    fn parse(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        let config = Config::parse(text, "test.conf", env)?;
        config.check_datastore()?;
        Ok(config)
    }

    #[test]
    fn file_values_comments_and_env_override() {
        let text = format!("# comment\n\nname = a\ndatastore = {URL}\nmax_frame = 100\n");
        let config = parse(&text, &[("HAMQ_MAX_FRAME", "200"), ("HAMQ_HOME", "/x")]).unwrap();
        assert_eq!(config.name, "a");
        assert_eq!(config.datastore, URL);
        assert_eq!(config.max_frame, 200);
        assert_eq!(config.max_headers, 1000);
    }

    #[test]
    fn a_misspelt_variable_is_refused_and_booleans_take_the_usual_spellings() {
        let text = format!("datastore = {URL}\n");
        let err = parse(&text, &[("HAMQ_MAX_FRAMES", "200")]).unwrap_err();
        assert_eq!(err.key, "HAMQ_MAX_FRAMES");
        assert_eq!(err.origin, "environment variable HAMQ_MAX_FRAMES");
        assert!(err.problem.contains("max_frame"), "{}", err.problem);
        let tools = [
            ("HAMQ_HOME", "/x"),
            ("HAMQ_ADMIN_USER", "ops"),
            ("HAMQ_LOCAL_DB_PORT", "1"),
        ];
        assert!(parse(&text, &tools).is_ok());
        for (value, expected) in [
            ("1", true),
            ("TRUE", true),
            ("On", true),
            ("0", false),
            ("No", false),
        ] {
            let config = parse(&text, &[("HAMQ_DEFAULT_PERSISTENT", value)]).unwrap();
            assert_eq!(config.default_persistent, expected, "{value}");
        }
        let err = parse(&text, &[("HAMQ_DEFAULT_PERSISTENT", "2")]).unwrap_err();
        assert!(err.problem.contains("not a boolean"), "{}", err.problem);
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let err = parse(&format!("datastore = {URL}\nbogus = 1\n"), &[]).unwrap_err();
        assert_eq!(err.key, "bogus");
        assert_eq!(err.origin, "line 2 of test.conf");
        assert!(err.to_string().contains("unknown key"), "{err}");
    }

    #[test]
    fn bad_values_are_refused() {
        let cases = [
            ("max_frame = 0", "max_frame"),
            ("max_frame = -3", "max_frame"),
            ("default_persistent = maybe", "default_persistent"),
            ("stomp_listen = nowhere", "stomp_listen"),
            ("stomp_tls_listen = 61614", "stomp_tls_listen"),
            ("users = guest", "users"),
            ("lease = 1", "lease"),
            ("status_listen = 8161", "status_listen"),
            ("no equals sign", "no equals sign"),
        ];
        for (line, key) in cases {
            let err = parse(&format!("datastore = {URL}\n{line}\n"), &[]).unwrap_err();
            assert_eq!(err.key, key, "{line}");
            assert_eq!(err.origin, "line 2 of test.conf", "{line}");
        }
        let err = parse("", &[("HAMQ_MAX_HEADERS", "x"), ("HAMQ_DATASTORE", URL)]).unwrap_err();
        assert_eq!(err.origin, "environment variable HAMQ_MAX_HEADERS");
    }

    #[test]
    fn datastore_is_required_and_checked() {
        assert_eq!(parse("", &[]).unwrap_err().key, "datastore");
        assert_eq!(
            parse("datastore = local", &[]).unwrap_err().key,
            "datastore"
        );
        let resolved = parse("datastore = local", &[("HAMQ_DATASTORE", URL)]).unwrap();
        assert_eq!(resolved.datastore, URL);
        assert_eq!(
            parse("datastore = pg://x", &[]).unwrap_err().key,
            "datastore"
        );
    }

    /// A well-formed hash (no PBKDF2 runs in these tests).
    const HASH: &str = "pbkdf2-sha256$10000$000102030405060708090a0b0c0d0e0f$\
                        00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    #[test]
    fn listeners_plain_tls_or_both() {
        let plain = parse(&format!("datastore = {URL}\n"), &[]).unwrap();
        assert_eq!(plain.stomp_listen, Some("0.0.0.0:61613".parse().unwrap()));
        assert_eq!(plain.stomp_tls_listen, None);
        plain.check_listeners().unwrap();
        let text = format!(
            "datastore = {URL}\nstomp_listen =\nstomp_tls_listen = 127.0.0.1:61614\n\
             tls_cert = /etc/hamq/cert.pem\ntls_key = /etc/hamq/key.pem\n"
        );
        let tls_only = parse(&text, &[]).unwrap();
        assert_eq!(tls_only.stomp_listen, None);
        assert_eq!(
            tls_only.stomp_tls_listen,
            Some("127.0.0.1:61614".parse().unwrap())
        );
        assert_eq!(tls_only.tls_cert, Some(PathBuf::from("/etc/hamq/cert.pem")));
        assert_eq!(tls_only.tls_key, Some(PathBuf::from("/etc/hamq/key.pem")));
        tls_only.check_listeners().unwrap();
        let none = parse(&format!("datastore = {URL}\nstomp_listen =\n"), &[]).unwrap();
        assert_eq!(none.check_listeners().unwrap_err().key, "stomp_listen");
        let env = [("HAMQ_STOMP_TLS_LISTEN", "127.0.0.1:61614")];
        let no_key = parse(&format!("datastore = {URL}\ntls_cert = c.pem\n"), &env).unwrap();
        assert_eq!(no_key.check_listeners().unwrap_err().key, "tls_key");
        let status = |extra: &str| {
            let text = format!("datastore = {URL}\nstatus_listen = 127.0.0.1:8161\n{extra}");
            parse(&text, &[]).unwrap().check_listeners()
        };
        assert!(status("status_tls_cert = c.pem\nstatus_tls_key = k.pem\n").is_ok());
        let half = status("status_tls_cert = c.pem\n").unwrap_err();
        assert_eq!(half.key, "status_tls_key");
        let text = format!(
            "datastore = {URL}\nstatus_listen =\nstatus_tls_cert = c\nstatus_tls_key = k\n"
        );
        let nowhere = parse(&text, &[]).unwrap().check_listeners().unwrap_err();
        assert_eq!(nowhere.key, "status_tls_cert");
    }

    #[test]
    fn users_are_hashed_and_plain_text_is_refused() {
        let config = parse(
            &format!("datastore = {URL}\nusers = a:{HASH} b:{HASH}\n"),
            &[],
        )
        .unwrap();
        let logins: Vec<&str> = config.users.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(logins, ["a", "b"]);
        for (users, needle) in [
            (
                format!("a:{HASH} guest:s3cret"),
                "user `guest`: password is not a hash",
            ),
            (format!("a:{HASH} a:{HASH}"), "user `a` is listed twice"),
            (format!("a:{HASH} :{HASH}"), "entry 2 is not login:hash"),
        ] {
            let err = parse(&format!("datastore = {URL}\nusers = {users}\n"), &[]).unwrap_err();
            assert_eq!(
                (err.key.as_str(), err.origin.as_str()),
                ("users", "line 2 of test.conf")
            );
            assert!(err.problem.contains(needle), "{err}");
            assert!(!err.problem.contains("s3cret"), "{err}");
        }
    }

    #[test]
    fn permit_rules_repeat_and_need_their_users() {
        let text = format!(
            "datastore = {URL}\nusers = app:{HASH}\npermit = app read /queue/a\n\
             permit = * write /queue/b ; app admin /topic/>\n"
        );
        assert_eq!(parse(&text, &[]).unwrap().permits.len(), 3);
        let env = parse(&text, &[("HAMQ_PERMIT", "app read /queue/c")]).unwrap();
        assert_eq!(env.permits, [Permit::parse("app read /queue/c").unwrap()]);
        let err = parse(&format!("{text}permit = app delete /queue/a\n"), &[]).unwrap_err();
        assert_eq!(
            (err.key.as_str(), err.origin.as_str()),
            ("permit", "line 5 of test.conf")
        );
        let app = format!("users = app:{HASH}\n");
        for (users, rule, login) in [
            (app.as_str(), "bob read /queue/a", "`bob`"),
            ("", "* read /queue/a", "`*`"),
        ] {
            let err =
                parse(&format!("datastore = {URL}\n{users}permit = {rule}\n"), &[]).unwrap_err();
            assert_eq!(err.key, "permit");
            assert!(err.problem.contains(login), "{err}");
        }
    }

    #[test]
    fn tls_url_parameters() {
        let base = "mysql://u:p@db.example:3306/hamq";
        assert!(datastore_opts(base).unwrap().get_ssl_opts().is_none());
        assert!(!datastore_opts(base).unwrap().get_prefer_socket());
        let socket = datastore_opts(&format!("{base}?prefer_socket=true")).unwrap();
        assert!(socket.get_prefer_socket());
        let off = datastore_opts(&format!("{base}?require_ssl=false")).unwrap();
        assert!(off.get_ssl_opts().is_none());
        let on = datastore_opts(&format!("{base}?require_ssl=true")).unwrap();
        assert_eq!(on.get_ssl_opts(), Some(&SslOpts::default()));
        assert_eq!(on.get_db_name(), Some("hamq"));
        let ca = format!("{base}?require_ssl=true&root_cert_path=/etc/ca.pem&prefer_socket=false");
        let ca = datastore_opts(&ca).unwrap();
        let ssl = ca.get_ssl_opts().unwrap();
        assert_eq!(
            ssl.root_cert_path(),
            Some(std::path::Path::new("/etc/ca.pem"))
        );
        assert!(!ssl.accept_invalid_certs());
        assert!(!ca.get_prefer_socket());
        let implied = datastore_opts(&format!("{base}?root_cert_path=/etc/ca.pem")).unwrap();
        assert!(implied.get_ssl_opts().is_some());
        let bad = datastore_opts(&format!("{base}?require_ssl=yes")).unwrap_err();
        assert!(bad.contains("require_ssl"), "{bad}");
        assert!(datastore_opts(&format!("{base}?bogus=1")).is_err());
    }
}
