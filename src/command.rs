//! A decoded frame turned into a typed client command, or a clear reason why it is not one.
//!
//! Pure functions over `codec::Frame`, called by the session reader; no I/O, no state.

use crate::codec::{Frame, Version};
use crate::message::{check_name, parse_destination, Kind, NameError, BROKER_HEADERS, MAX_NAME};
use std::fmt;

/// SUBSCRIBE's `ack` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckMode {
    Auto,
    /// Cumulative: an ACK covers every earlier delivery on the subscription.
    Client,
    ClientIndividual,
}

/// How an ACK/NACK names its message, per STOMP version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AckRef {
    /// 1.2: the MESSAGE's `ack` header.
    Id(String),
    /// 1.1: `message-id` and `subscription`.
    MessageOf {
        message_id: String,
        subscription: String,
    },
    /// 1.0: `message-id` alone.
    Message(String),
}

/// How an UNSUBSCRIBE names its subscription.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubscriptionRef {
    /// The SUBSCRIBE's `id`.
    Id(String),
    /// 1.0 only: the destination, for a client that subscribed with or without an `id`. Every
    /// subscription of the connection to it ends.
    Destination(String),
}

/// Every frame a client may send, with its validated headers.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Connect(Connect),
    Send(Send),
    Subscribe(Subscribe),
    Unsubscribe {
        sub: Option<SubscriptionRef>,
        durable_name: Option<String>,
    },
    Ack {
        ack: AckRef,
        transaction: Option<String>,
        nack: bool,
    },
    Begin(String),
    Commit(String),
    Abort(String),
    Disconnect,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Connect {
    /// The highest version both sides speak.
    pub version: Version,
    pub login: Option<String>,
    pub passcode: Option<String>,
    /// The client's (can send, wants to receive) heart-beat intervals in ms.
    pub heart_beat: (u64, u64),
    pub client_id: Option<String>,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Send {
    pub destination: String,
    /// What `destination` names, parsed once here.
    pub kind: Kind,
    pub transaction: Option<String>,
    pub persistent: Option<bool>,
    pub priority: u8,
    pub expires: i64,
    /// Headers carried through to MESSAGE (first occurrence of each name).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Subscribe {
    pub id: String,
    pub destination: String,
    pub kind: Kind,
    pub ack: AckMode,
    pub prefetch: Option<usize>,
    pub durable_name: Option<String>,
}

/// Why a frame is not a command the broker takes; its text is the ERROR frame's `message`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProtocolError {
    /// A command STOMP does not have.
    UnknownCommand(String),
    /// `command` lacks a header it needs.
    MissingHeader {
        command: String,
        header: &'static str,
    },
    /// `header` has a `value` the broker does not take; `expected` says what it takes.
    BadHeader {
        header: &'static str,
        value: String,
        expected: &'static str,
    },
    /// CONNECT offers only versions this broker does not speak.
    NoCommonVersion { offered: String },
    /// A destination, client-id or subscription name the store cannot keep.
    Name(NameError),
    /// A durable subscription to something that is not a topic.
    DurableNeedsTopic,
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::UnknownCommand(command) => write!(f, "unknown command `{command}`"),
            ProtocolError::MissingHeader { command, header } => {
                let article = match header.starts_with(['a', 'e', 'i', 'o', 'u']) {
                    true => "an",
                    false => "a",
                };
                write!(f, "{command} needs {article} `{header}` header")
            }
            ProtocolError::BadHeader {
                header,
                value,
                expected,
            } => write!(f, "{header} `{value}` {expected}"),
            ProtocolError::NoCommonVersion { offered } => write!(
                f,
                "no common protocol version: client offers `{offered}`, hamq speaks 1.0,1.1,1.2"
            ),
            ProtocolError::Name(e) => e.fmt(f),
            ProtocolError::DurableNeedsTopic => {
                f.write_str("activemq.subscriptionName (a durable subscription) needs a /topic/")
            }
        }
    }
}

impl std::error::Error for ProtocolError {}

impl From<NameError> for ProtocolError {
    fn from(e: NameError) -> ProtocolError {
        ProtocolError::Name(e)
    }
}

fn missing(frame: &Frame, header: &'static str) -> ProtocolError {
    ProtocolError::MissingHeader {
        command: frame.command.clone(),
        header,
    }
}

fn bad(header: &'static str, value: &str, expected: &'static str) -> ProtocolError {
    ProtocolError::BadHeader {
        header,
        value: value.to_string(),
        expected,
    }
}

/// Versions this broker speaks, in preference order for negotiation (highest first).
pub const SUPPORTED: [Version; 3] = [Version::V1_2, Version::V1_1, Version::V1_0];

/// Parse `frame`, received on a connection that negotiated `version`.
pub fn parse(frame: Frame, version: Version) -> Result<Command, ProtocolError> {
    match frame.command.as_str() {
        "CONNECT" | "STOMP" => connect(&frame).map(Command::Connect),
        "SEND" => send(frame).map(Command::Send),
        "SUBSCRIBE" => subscribe(&frame, version).map(Command::Subscribe),
        "UNSUBSCRIBE" => {
            let durable_name = frame
                .header("activemq.subscriptionName")
                .map(str::to_string);
            // 1.0 allows naming the destination instead of the id.
            let by_destination = frame
                .header("destination")
                .filter(|_| version == Version::V1_0)
                .map(|d| SubscriptionRef::Destination(d.to_string()));
            let sub = frame
                .header("id")
                .map(|id| SubscriptionRef::Id(id.to_string()))
                .or(by_destination);
            if sub.is_none() && durable_name.is_none() {
                return Err(missing(&frame, "id"));
            }
            Ok(Command::Unsubscribe { sub, durable_name })
        }
        "ACK" | "NACK" => Ok(Command::Ack {
            ack: ack_ref(&frame, version)?,
            transaction: frame.header("transaction").map(str::to_string),
            nack: frame.command == "NACK",
        }),
        "BEGIN" => transaction(&frame).map(Command::Begin),
        "COMMIT" => transaction(&frame).map(Command::Commit),
        "ABORT" => transaction(&frame).map(Command::Abort),
        "DISCONNECT" => Ok(Command::Disconnect),
        other => Err(ProtocolError::UnknownCommand(other.to_string())),
    }
}

fn connect(frame: &Frame) -> Result<Connect, ProtocolError> {
    let offered: Vec<&str> = match frame.header("accept-version") {
        Some(list) => list.split(',').map(str::trim).collect(),
        None => vec!["1.0"],
    };
    let version = SUPPORTED
        .into_iter()
        .find(|v| offered.contains(&v.as_str()))
        .ok_or_else(|| ProtocolError::NoCommonVersion {
            offered: offered.join(","),
        })?;
    if let Some(client_id) = frame.header("client-id") {
        check_name("client-id", client_id, MAX_NAME)?;
    }
    let heart_beat = match frame.header("heart-beat") {
        None => (0, 0),
        Some(value) => parse_heart_beat(value)?,
    };
    Ok(Connect {
        version,
        login: frame.header("login").map(str::to_string),
        passcode: frame.header("passcode").map(str::to_string),
        heart_beat,
        client_id: frame.header("client-id").map(str::to_string),
    })
}

fn parse_heart_beat(value: &str) -> Result<(u64, u64), ProtocolError> {
    let bad = || bad("heart-beat", value, "is not two numbers like 10000,10000");
    let (cx, cy) = value.split_once(',').ok_or_else(bad)?;
    let cx = cx.trim().parse().map_err(|_| bad())?;
    let cy = cy.trim().parse().map_err(|_| bad())?;
    Ok((cx, cy))
}

fn destination(frame: &Frame) -> Result<(String, Kind), ProtocolError> {
    let value = frame
        .header("destination")
        .ok_or_else(|| missing(frame, "destination"))?;
    Ok((value.to_string(), parse_destination(value)?))
}

fn send(frame: Frame) -> Result<Send, ProtocolError> {
    let (destination, kind) = destination(&frame)?;
    let persistent = match frame.header("persistent") {
        None => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(other) => return Err(bad("persistent", other, "is not true or false")),
    };
    let priority = match frame.header("priority") {
        None => 4,
        Some(p) => p
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= 9)
            .ok_or_else(|| bad("priority", p, "is not a number from 0 to 9"))?,
    };
    let expires = match frame.header("expires") {
        None => 0,
        Some(e) => e
            .parse::<i64>()
            .ok()
            .filter(|e| *e >= 0)
            .ok_or_else(|| bad("expires", e, "is not a time in epoch milliseconds"))?,
    };
    let mut headers: Vec<(String, String)> = Vec::new();
    for (name, value) in &frame.headers {
        let known = BROKER_HEADERS.contains(&name.as_str());
        if !known && !headers.iter().any(|(n, _)| n == name) {
            headers.push((name.clone(), value.clone()));
        }
    }
    Ok(Send {
        destination,
        kind,
        transaction: frame.header("transaction").map(str::to_string),
        persistent,
        priority,
        expires,
        headers,
        body: frame.body,
    })
}

fn subscribe(frame: &Frame, version: Version) -> Result<Subscribe, ProtocolError> {
    let (destination, kind) = destination(frame)?;
    let id = match (frame.header("id"), version) {
        (Some(id), _) => id.to_string(),
        (None, Version::V1_0) => destination.clone(),
        (None, _) => return Err(missing(frame, "id")),
    };
    let ack = match frame.header("ack").unwrap_or("auto") {
        "auto" => AckMode::Auto,
        "client" => AckMode::Client,
        "client-individual" => AckMode::ClientIndividual,
        other => {
            return Err(bad(
                "ack",
                other,
                "is not auto, client or client-individual",
            ))
        }
    };
    let prefetch = match frame.header("activemq.prefetchSize") {
        None => None,
        Some(p) => Some(
            p.parse::<usize>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| bad("activemq.prefetchSize", p, "is not a positive number"))?,
        ),
    };
    let durable_name = frame
        .header("activemq.subscriptionName")
        .map(str::to_string);
    if let Some(name) = &durable_name {
        check_name("activemq.subscriptionName", name, MAX_NAME)?;
    }
    if durable_name.is_some() && kind != Kind::Topic {
        return Err(ProtocolError::DurableNeedsTopic);
    }
    Ok(Subscribe {
        id,
        destination,
        kind,
        ack,
        prefetch,
        durable_name,
    })
}

fn ack_ref(frame: &Frame, version: Version) -> Result<AckRef, ProtocolError> {
    if let Some(id) = frame.header("id").filter(|_| version == Version::V1_2) {
        return Ok(AckRef::Id(id.to_string()));
    }
    let message_id = frame.header("message-id").map(str::to_string);
    match (message_id, frame.header("subscription")) {
        (Some(message_id), Some(subscription)) => Ok(AckRef::MessageOf {
            message_id,
            subscription: subscription.to_string(),
        }),
        (Some(message_id), None) => Ok(AckRef::Message(message_id)),
        (None, _) if version == Version::V1_2 => Err(missing(frame, "id")),
        (None, _) => Err(missing(frame, "message-id")),
    }
}

fn transaction(frame: &Frame) -> Result<String, ProtocolError> {
    frame
        .header("transaction")
        .map(str::to_string)
        .ok_or_else(|| missing(frame, "transaction"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(command: &str, headers: &[(&str, &str)]) -> Frame {
        headers
            .iter()
            .fold(Frame::new(command), |f, (k, v)| f.with_header(k, v))
    }

    #[test]
    fn negotiates_highest_common_version() {
        let c = |v: Option<&str>| {
            let f = match v {
                Some(v) => frame("CONNECT", &[("accept-version", v)]),
                None => frame("CONNECT", &[]),
            };
            parse(f, Version::V1_0)
        };
        let version = |r: Result<Command, ProtocolError>| match r {
            Ok(Command::Connect(c)) => Ok(c.version),
            Ok(other) => Err(format!("{other:?}")),
            Err(e) => Err(e.to_string()),
        };
        assert_eq!(version(c(Some("1.0,1.1,1.2"))), Ok(Version::V1_2));
        assert_eq!(version(c(Some("1.1"))), Ok(Version::V1_1));
        assert_eq!(version(c(None)), Ok(Version::V1_0));
        assert!(version(c(Some("2.0"))).unwrap_err().contains("1.0,1.1,1.2"));
    }

    #[test]
    fn send_headers_are_checked_and_carried() {
        let f = frame(
            "SEND",
            &[
                ("destination", "/queue/a"),
                ("priority", "7"),
                ("x", "1"),
                ("x", "2"),
                ("receipt", "r"),
            ],
        );
        let Ok(Command::Send(s)) = parse(f, Version::V1_2) else {
            panic!("not a send")
        };
        assert_eq!(s.priority, 7);
        assert_eq!(s.headers, vec![("x".to_string(), "1".to_string())]);
        for (name, value) in [("priority", "10"), ("expires", "-1"), ("persistent", "y")] {
            let f = frame("SEND", &[("destination", "/queue/a"), (name, value)]);
            let problem = parse(f, Version::V1_2).unwrap_err();
            assert!(
                matches!(&problem, ProtocolError::BadHeader { header, .. } if *header == name),
                "{problem:?}"
            );
            assert!(problem.to_string().contains(value));
        }
        let f = frame("SEND", &[("destination", "/exchange/a")]);
        assert!(parse(f, Version::V1_2)
            .unwrap_err()
            .to_string()
            .contains("/queue/NAME"));
    }

    #[test]
    fn ack_addressing_per_version() {
        let f = frame("ACK", &[("id", "3-7")]);
        assert!(matches!(
            parse(f, Version::V1_2),
            Ok(Command::Ack {
                ack: AckRef::Id(_),
                ..
            })
        ));
        let f = frame("ACK", &[("message-id", "7"), ("subscription", "s")]);
        assert!(matches!(
            parse(f, Version::V1_1),
            Ok(Command::Ack {
                ack: AckRef::MessageOf { .. },
                ..
            })
        ));
        let f = frame("NACK", &[("message-id", "7")]);
        assert!(matches!(
            parse(f, Version::V1_0),
            Ok(Command::Ack {
                ack: AckRef::Message(_),
                nack: true,
                ..
            })
        ));
        assert_eq!(
            parse(frame("ACK", &[]), Version::V1_2)
                .unwrap_err()
                .to_string(),
            "ACK needs an `id` header"
        );
        assert_eq!(
            parse(frame("NACK", &[]), Version::V1_1)
                .unwrap_err()
                .to_string(),
            "NACK needs a `message-id` header"
        );
    }

    #[test]
    fn subscribe_rules() {
        assert!(parse(
            frame("SUBSCRIBE", &[("destination", "/queue/a")]),
            Version::V1_2
        )
        .is_err());
        let f = frame("SUBSCRIBE", &[("destination", "/queue/a")]);
        assert!(matches!(parse(f, Version::V1_0), Ok(Command::Subscribe(s)) if s.id == "/queue/a"));
        let f = frame(
            "SUBSCRIBE",
            &[
                ("destination", "/queue/a"),
                ("id", "1"),
                ("ack", "sometimes"),
            ],
        );
        assert!(parse(f, Version::V1_2)
            .unwrap_err()
            .to_string()
            .contains("sometimes"));
        assert_eq!(
            parse(frame("FOO", &[]), Version::V1_2),
            Err(ProtocolError::UnknownCommand("FOO".to_string()))
        );
    }
}
