//! The command line: `--key value` (or `--key=value`) flags parsed by hand into [`Options`],
//! with validation and the `--help` text listing every flag and its default.

use std::time::Duration;

/// How consumers acknowledge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckMode {
    Auto,
    Client,
    ClientIndividual,
}

impl AckMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AckMode::Auto => "auto",
            AckMode::Client => "client",
            AckMode::ClientIndividual => "client-individual",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Options {
    pub host: String,
    pub port: u16,
    pub login: String,
    pub passcode: String,
    pub destination: String,
    pub producers: u32,
    pub consumers: u32,
    pub size: usize,
    /// Messages per producer; 0 = send for `duration`.
    pub count: u64,
    pub duration: Duration,
    pub persistent: bool,
    pub receipt: bool,
    pub ack: AckMode,
    pub prefetch: Option<u32>,
    /// `-` = stdout.
    pub json: Option<String>,
    pub warmup: Duration,
    pub drain: Duration,
    /// Idle-connections mode: open this many connections and hold them (0 = off).
    pub idle_connections: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            host: "127.0.0.1".into(),
            port: 61613,
            login: "guest".into(),
            passcode: "guest".into(),
            destination: "/queue/bench".into(),
            producers: 1,
            consumers: 1,
            size: 1024,
            count: 0,
            duration: Duration::from_secs(10),
            persistent: true,
            receipt: false,
            ack: AckMode::Auto,
            prefetch: None,
            json: None,
            warmup: Duration::ZERO,
            drain: Duration::from_secs(10),
            idle_connections: 0,
        }
    }
}

impl Options {
    /// Consume-only mode (`--producers 0`): consumers take what is already on the
    /// destination, until `count` messages arrived in all or none came for `drain`.
    pub fn consume_only(&self) -> bool {
        self.producers == 0 && self.idle_connections == 0
    }

    /// Topic destinations deliver every message to every consumer.
    pub fn fanout(&self) -> u64 {
        if self.destination.starts_with("/topic/") {
            u64::from(self.consumers)
        } else {
            u64::from(self.consumers.min(1))
        }
    }
}

/// The `--help` text: every flag, with its default read from `Options::default()`.
pub fn help() -> String {
    let d = Options::default();
    let secs = |t: Duration| t.as_secs_f64().to_string();
    let flags: [(&str, &str, Option<String>); 20] = [
        ("--host H", "broker host", Some(d.host.clone())),
        ("--port P", "broker STOMP port", Some(d.port.to_string())),
        ("--login L", "CONNECT login", Some(d.login.clone())),
        ("--passcode P", "CONNECT passcode", Some(d.passcode.clone())),
        (
            "--destination D",
            "/queue/... or /topic/... (a topic fans out)",
            Some(d.destination.clone()),
        ),
        (
            "--producers N",
            "producer connections, one thread each; 0 = consume-only\n(see below)",
            Some(d.producers.to_string()),
        ),
        (
            "--consumers N",
            "consumer connections, one thread each",
            Some(d.consumers.to_string()),
        ),
        (
            "--size BYTES",
            "body size (at least the ~50-byte stamp line)",
            Some(d.size.to_string()),
        ),
        (
            "--count N",
            "messages per producer; 0 = send for --duration",
            Some(d.count.to_string()),
        ),
        (
            "--duration SECS",
            "sending time when --count is 0",
            Some(secs(d.duration)),
        ),
        (
            "--persistent BOOL",
            "the SEND `persistent` header",
            Some(d.persistent.to_string()),
        ),
        (
            "--receipt BOOL",
            "a receipt per SEND, awaited before the next",
            Some(d.receipt.to_string()),
        ),
        (
            "--ack MODE",
            "auto | client | client-individual (consumers\nACK each message unless auto)",
            Some(d.ack.as_str().to_string()),
        ),
        (
            "--prefetch N",
            "activemq.prefetchSize on SUBSCRIBE",
            Some(
                d.prefetch
                    .map_or("broker default".into(), |n| n.to_string()),
            ),
        ),
        (
            "--warmup SECS",
            "leave the first SECS out of rates/latencies",
            Some(secs(d.warmup)),
        ),
        (
            "--drain SECS",
            "how long consumers may keep receiving after\nthe producers are done",
            Some(secs(d.drain)),
        ),
        (
            "--idle-connections N",
            "open N connections (CONNECT, heart-beat 0,0), hold\nthem for --duration, \
             DISCONNECT; no messages",
            Some(match d.idle_connections {
                0 => "0 = off".to_string(),
                n => n.to_string(),
            }),
        ),
        (
            "--json PATH",
            "also write the JSON result to PATH (- = stdout)",
            d.json.clone(),
        ),
        ("--help", "this text", None),
        ("-h", "the same", None),
    ];
    let mut text = String::from(
        "hamq-bench: a STOMP 1.2 load generator for any broker (hamq, ActiveMQ, ...)\n\n\
         usage: hamq-bench [--key value]...\n\n",
    );
    for (flag, what, default) in flags {
        let mut lines = what.lines().peekable();
        let mut column = flag;
        while let Some(line) = lines.next() {
            let last = lines.peek().is_none();
            match (&default, last) {
                (Some(default), true) => {
                    text += &format!("  {column:<20} {line:<45} [{default}]\n");
                }
                _ => text += &format!("  {column:<20} {line}\n"),
            }
            column = "";
        }
    }
    text + "\n" + HELP_MODES
}

/// What `--help` says after the flags.
const HELP_MODES: &str = "\
Consume-only (--producers 0, --consumers N >= 1): the consumers take what is already on the
destination (e.g. pre-loaded by an earlier run) until --count messages arrived in all, or none
arrived for --drain seconds. Rate = messages / time from the first to the last. Bodies with a
hamq-bench stamp line are checked for damage (at --size) and duplicates; others are counted as
`unstamped`. Idle connections: a line `N of N connections open` goes to stderr once all are
open (for measuring the broker's memory), and the report says how many were still open at the end.

Prints a table (stdout) and, with --json, one JSON object; a progress line goes to stderr
every 5 s on runs longer than 10 s. Exit status: 0 clean, 1 when there were errors,
duplicates, missing or corrupt messages, 2 for a bad command line.";

/// The options of a run, `Ok(None)` for `--help`, or what is wrong with the command line.
pub fn parse(args: &[String]) -> Result<Option<Options>, String> {
    let mut o = Options::default();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        if arg == "--help" || arg == "-h" {
            return Ok(None);
        }
        let Some(flag) = arg.strip_prefix("--") else {
            return Err(format!(
                "unexpected argument `{arg}` (flags are --key value)"
            ));
        };
        let (key, value) = match flag.split_once('=') {
            Some((k, v)) => (k, v.to_string()),
            None => {
                i += 1;
                let v = args
                    .get(i)
                    .ok_or_else(|| format!("--{flag} needs a value"))?;
                (flag, v.clone())
            }
        };
        set(&mut o, key, &value).map_err(|e| format!("--{key} {value}: {e}"))?;
        i += 1;
    }
    validate(&o)?;
    Ok(Some(o))
}

fn set(o: &mut Options, key: &str, v: &str) -> Result<(), String> {
    match key {
        "host" => o.host = v.to_string(),
        "port" => o.port = number(v)?,
        "login" => o.login = v.to_string(),
        "passcode" => o.passcode = v.to_string(),
        "destination" => o.destination = v.to_string(),
        "producers" => o.producers = number(v)?,
        "consumers" => o.consumers = number(v)?,
        "size" => o.size = number(v)?,
        "count" => o.count = number(v)?,
        "duration" => o.duration = seconds(v)?,
        "persistent" => o.persistent = boolean(v)?,
        "receipt" => o.receipt = boolean(v)?,
        "ack" => {
            o.ack = match v {
                "auto" => AckMode::Auto,
                "client" => AckMode::Client,
                "client-individual" => AckMode::ClientIndividual,
                _ => return Err("expected auto, client or client-individual".into()),
            }
        }
        "prefetch" => o.prefetch = Some(number(v)?).filter(|&n| n > 0),
        "json" => o.json = Some(v.to_string()),
        "warmup" => o.warmup = seconds(v)?,
        "drain" => o.drain = seconds(v)?,
        "idle-connections" => o.idle_connections = number(v)?,
        _ => return Err("unknown flag (see --help)".into()),
    }
    Ok(())
}

fn validate(o: &Options) -> Result<(), String> {
    if o.idle_connections > 0 {
        if o.duration.is_zero() {
            return Err("--idle-connections needs a --duration above 0 to hold them".into());
        }
    } else if o.consume_only() {
        if o.consumers == 0 {
            return Err("--producers 0 (consume-only) needs --consumers 1 or more".into());
        }
        if o.drain.is_zero() {
            return Err("consume-only needs a --drain above 0 (the idle time that ends it)".into());
        }
        if !o.warmup.is_zero() {
            return Err("--warmup needs producers (consume-only measures every delivery)".into());
        }
    } else if o.count == 0 && o.duration.is_zero() {
        return Err("give --count N or a --duration above 0".into());
    }
    if o.destination.is_empty() {
        return Err("--destination is empty".into());
    }
    Ok(())
}

fn number<T: std::str::FromStr>(v: &str) -> Result<T, String> {
    v.parse()
        .map_err(|_| "not a whole number in range".to_string())
}

fn boolean(v: &str) -> Result<bool, String> {
    match v {
        "true" | "yes" | "1" => Ok(true),
        "false" | "no" | "0" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}

fn seconds(v: &str) -> Result<Duration, String> {
    let s: f64 = v
        .parse()
        .map_err(|_| "not a number of seconds".to_string())?;
    Duration::try_from_secs_f64(s).map_err(|_| "not a non-negative number of seconds".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn defaults_and_overrides() {
        assert_eq!(parse(&[]), Ok(Some(Options::default())));
        let Ok(Some(o)) = parse(&args(
            "--port 61700 --destination=/topic/t --producers 2 --consumers 3 --count 500 \
             --persistent false --receipt true --ack client-individual --prefetch 10 \
             --json - --warmup 0.5",
        )) else {
            panic!("should parse")
        };
        assert_eq!(
            (o.port, o.producers, o.consumers, o.count),
            (61700, 2, 3, 500)
        );
        assert_eq!(
            (o.persistent, o.receipt, o.ack),
            (false, true, AckMode::ClientIndividual)
        );
        assert_eq!((o.prefetch, o.json.as_deref()), (Some(10), Some("-")));
        assert_eq!(o.warmup, Duration::from_millis(500));
        assert_eq!(o.fanout(), 3);
    }

    #[test]
    fn queues_do_not_fan_out() {
        let o = Options {
            consumers: 4,
            ..Options::default()
        };
        assert_eq!(o.fanout(), 1);
        assert_eq!(Options { consumers: 0, ..o }.fanout(), 0);
    }

    #[test]
    fn consume_only_and_idle_modes() {
        let Ok(Some(o)) = parse(&args("--producers 0 --consumers 2 --count 500")) else {
            panic!("should parse")
        };
        assert!(o.consume_only());
        let Ok(Some(o)) = parse(&args("--producers=0 --drain 3")) else {
            panic!("should parse")
        };
        assert_eq!((o.consume_only(), o.count), (true, 0));
        let Ok(Some(o)) = parse(&args("--idle-connections 1000 --duration 30")) else {
            panic!("should parse")
        };
        assert_eq!((o.idle_connections, o.consume_only()), (1000, false));
        assert!(!Options::default().consume_only());
    }

    #[test]
    fn help_and_errors() {
        assert_eq!(parse(&args("--count 3 --help")), Ok(None));
        for bad in [
            "--bogus 1",
            "--port",
            "--port x",
            "--ack sometimes",
            "--receipt maybe",
            "--producers 0 --consumers 0",
            "--producers 0 --drain 0",
            "--producers 0 --warmup 1",
            "--idle-connections 5 --duration 0",
            "--idle-connections -1",
            "--count 0 --duration 0",
            "stray",
            "--duration -1",
        ] {
            assert!(parse(&args(bad)).is_err(), "{bad}");
        }
    }
}
