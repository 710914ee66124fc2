//! A decoded frame turned into a typed client command, or a clear reason why it is not one.
//!
//! Pure functions over `codec::Frame`, called by the session reader; no I/O, no state.

use crate::codec::{Frame, Version};
use crate::message::{check_name, parse_destination, Kind, BROKER_HEADERS, MAX_NAME};

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

/// Versions this broker speaks, in preference order for negotiation (highest first).
pub const SUPPORTED: [Version; 3] = [Version::V1_2, Version::V1_1, Version::V1_0];

/// Parse `frame`, received on a connection that negotiated `version`.
pub fn parse(frame: Frame, version: Version) -> Result<Command, String> {
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
                return Err("UNSUBSCRIBE needs an `id` header".to_string());
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
        other => Err(format!("unknown command `{other}`")),
    }
}

fn connect(frame: &Frame) -> Result<Connect, String> {
    let offered: Vec<&str> = match frame.header("accept-version") {
        Some(list) => list.split(',').map(str::trim).collect(),
        None => vec!["1.0"],
    };
    let version = SUPPORTED
        .into_iter()
        .find(|v| offered.contains(&v.as_str()))
        .ok_or_else(|| {
            format!(
                "no common protocol version: client offers `{}`, hamq speaks 1.0,1.1,1.2",
                offered.join(",")
            )
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

fn parse_heart_beat(value: &str) -> Result<(u64, u64), String> {
    let bad = || format!("heart-beat `{value}` is not two numbers like 10000,10000");
    let (cx, cy) = value.split_once(',').ok_or_else(bad)?;
    let cx = cx.trim().parse().map_err(|_| bad())?;
    let cy = cy.trim().parse().map_err(|_| bad())?;
    Ok((cx, cy))
}

fn destination(frame: &Frame) -> Result<(String, Kind), String> {
    let value = frame
        .header("destination")
        .ok_or_else(|| format!("{} needs a `destination` header", frame.command))?;
    Ok((value.to_string(), parse_destination(value)?))
}

fn send(frame: Frame) -> Result<Send, String> {
    let (destination, kind) = destination(&frame)?;
    let persistent = match frame.header("persistent") {
        None => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(other) => return Err(format!("persistent `{other}` is not true or false")),
    };
    let priority = match frame.header("priority") {
        None => 4,
        Some(p) => p
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= 9)
            .ok_or_else(|| format!("priority `{p}` is not a number from 0 to 9"))?,
    };
    let expires = match frame.header("expires") {
        None => 0,
        Some(e) => e
            .parse::<i64>()
            .ok()
            .filter(|e| *e >= 0)
            .ok_or_else(|| format!("expires `{e}` is not a time in epoch milliseconds"))?,
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

fn subscribe(frame: &Frame, version: Version) -> Result<Subscribe, String> {
    let (destination, kind) = destination(frame)?;
    let id = match (frame.header("id"), version) {
        (Some(id), _) => id.to_string(),
        (None, Version::V1_0) => destination.clone(),
        (None, _) => return Err("SUBSCRIBE needs an `id` header".to_string()),
    };
    let ack = match frame.header("ack").unwrap_or("auto") {
        "auto" => AckMode::Auto,
        "client" => AckMode::Client,
        "client-individual" => AckMode::ClientIndividual,
        other => {
            return Err(format!(
                "ack `{other}` is not auto, client or client-individual"
            ))
        }
    };
    let prefetch = match frame.header("activemq.prefetchSize") {
        None => None,
        Some(p) => Some(
            p.parse::<usize>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("activemq.prefetchSize `{p}` is not a positive number"))?,
        ),
    };
    let durable_name = frame
        .header("activemq.subscriptionName")
        .map(str::to_string);
    if let Some(name) = &durable_name {
        check_name("activemq.subscriptionName", name, MAX_NAME)?;
    }
    if durable_name.is_some() && kind != Kind::Topic {
        return Err(
            "activemq.subscriptionName (a durable subscription) needs a /topic/".to_string(),
        );
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

fn ack_ref(frame: &Frame, version: Version) -> Result<AckRef, String> {
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
        (None, _) if version == Version::V1_2 => {
            Err(format!("{} needs an `id` header", frame.command))
        }
        (None, _) => Err(format!("{} needs a `message-id` header", frame.command)),
    }
}

fn transaction(frame: &Frame) -> Result<String, String> {
    frame
        .header("transaction")
        .map(str::to_string)
        .ok_or_else(|| format!("{} needs a `transaction` header", frame.command))
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
        let version = |r: Result<Command, String>| match r {
            Ok(Command::Connect(c)) => Ok(c.version),
            Ok(other) => Err(format!("{other:?}")),
            Err(e) => Err(e),
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
            assert!(parse(f, Version::V1_2).unwrap_err().contains(value));
        }
        let f = frame("SEND", &[("destination", "/exchange/a")]);
        assert!(parse(f, Version::V1_2).unwrap_err().contains("/queue/NAME"));
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
        assert!(parse(frame("ACK", &[]), Version::V1_2).is_err());
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
        assert!(parse(f, Version::V1_2).unwrap_err().contains("sometimes"));
        assert!(parse(frame("FOO", &[]), Version::V1_2)
            .unwrap_err()
            .contains("FOO"));
    }
}
