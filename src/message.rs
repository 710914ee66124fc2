//! A message as the broker holds it, destination names, message ids, and the MESSAGE frame.
//!
//! Plain data shared (behind `Arc`) by the session, store and router threads; it calls only the
//! codec's `Frame`. Nothing here blocks.

use crate::codec::{encode_head, Version};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Ids of non-persistent messages live above this bit, so they never meet the database's
/// auto-increment ids of persistent ones.
pub const NON_PERSISTENT_BIT: u64 = 1 << 62;

/// Longest destination a client may name, in characters: the store's column takes 255 (in any
/// script: utf8mb4), and its dead-letter queue (`/topic/x` -> `/queue/DLQ.x`) is up to 4 longer.
pub const MAX_DESTINATION: usize = 251;

/// Longest client-id or durable subscription name, in characters (the store's column).
pub const MAX_NAME: usize = 255;

/// Why a destination, client-id or durable subscription name cannot be taken; its text is what
/// the client reads in the ERROR frame (or the operator in the admin answer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NameError {
    /// `what` holds a control character.
    Control { what: &'static str, char: char },
    /// `what` is `length` characters long, over `max`.
    TooLong {
        what: &'static str,
        length: usize,
        max: usize,
    },
    /// A destination that is neither `/queue/NAME` nor `/topic/NAME`.
    Unsupported(String),
    /// `/queue/` or `/topic/` with nothing after it.
    EmptyName(String),
}

impl std::fmt::Display for NameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NameError::Control { what, char } => write!(
                f,
                "{what} contains the control character U+{:04X}, which names may not hold",
                u32::from(*char)
            ),
            NameError::TooLong { what, length, max } => {
                write!(f, "{what} is {length} characters long, the limit is {max}")
            }
            NameError::Unsupported(value) => write!(
                f,
                "destination `{value}` is not supported: use /queue/NAME or /topic/NAME"
            ),
            NameError::EmptyName(value) => write!(f, "destination `{value}` has an empty name"),
        }
    }
}

impl std::error::Error for NameError {}

/// Check a name the store keeps as text (a destination, client-id or durable subscription
/// name): at most `max` characters, and no control characters (U+0000 to U+001F, U+007F to
/// U+009F: NUL, line ends, escapes, which no destination or name needs and which would reach
/// logs, status pages and other clients as they are). The codec already refused what is not
/// UTF-8; every other character is one that utf8mb4 stores.
pub fn check_name(what: &'static str, value: &str, max: usize) -> Result<(), NameError> {
    if let Some(char) = value.chars().find(|c| c.is_control()) {
        return Err(NameError::Control { what, char });
    }
    let length = value.chars().count();
    if length > max {
        return Err(NameError::TooLong { what, length, max });
    }
    Ok(())
}

/// The two kinds of destination STOMP clients know from ActiveMQ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Competing consumers: each message to one subscriber.
    Queue,
    /// Fan-out to every current subscriber (and to durable subscriptions).
    Topic,
}

impl Kind {
    /// The kind of a destination the broker already checked (stored, or parsed before):
    /// `/topic/...` is a topic, anything else a queue.
    pub fn of(destination: &str) -> Kind {
        if destination.starts_with("/topic/") {
            Kind::Topic
        } else {
            Kind::Queue
        }
    }
}

/// Parse a `destination` header: `/queue/NAME` or `/topic/NAME`.
pub fn parse_destination(value: &str) -> Result<Kind, NameError> {
    let (kind, name) = if let Some(name) = value.strip_prefix("/queue/") {
        (Kind::Queue, name)
    } else if let Some(name) = value.strip_prefix("/topic/") {
        (Kind::Topic, name)
    } else {
        return Err(NameError::Unsupported(value.to_string()));
    };
    if name.is_empty() {
        return Err(NameError::EmptyName(value.to_string()));
    }
    check_name("destination", value, MAX_DESTINATION)?;
    Ok(kind)
}

/// The dead-letter queue for messages of `destination`: `/queue/DLQ.<name>`. A dead-letter
/// queue is its own: a message failing there stays there (no `DLQ.DLQ.` chains).
pub fn dead_letter_queue(destination: &str) -> String {
    if destination.starts_with("/queue/DLQ.") {
        return destination.to_string();
    }
    let name = destination
        .strip_prefix("/queue/")
        .or_else(|| destination.strip_prefix("/topic/"))
        .unwrap_or(destination);
    format!("/queue/DLQ.{name}")
}

/// One message. Immutable once routed; redelivery state lives with the queue entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The database's id for a persistent message, `NON_PERSISTENT_BIT | n` otherwise.
    pub id: u64,
    pub destination: Arc<str>,
    /// What `destination` names: parsed once, from the SEND or the stored row.
    pub kind: Kind,
    pub persistent: bool,
    /// 0-9, higher first.
    pub priority: u8,
    /// Epoch milliseconds after which it is never delivered; 0 = never.
    pub expires: i64,
    /// Epoch milliseconds when the broker received it.
    pub timestamp: i64,
    /// Set on a dead-lettered message: where it was sent first.
    pub original_destination: Option<String>,
    /// The SEND's headers that the MESSAGE carries through (not the ones the broker sets).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Message {
    /// The `message-id` header: the database id, or `np-N` for a non-persistent message.
    pub fn message_id(&self) -> String {
        format_message_id(self.id)
    }

    /// Its copy in dead-letter queue `dlq`, remembering where it was sent first (the same id:
    /// a stored one gets its new id from the store).
    pub fn dead_lettered(&self, dlq: &str) -> Message {
        let original = self
            .original_destination
            .clone()
            .unwrap_or_else(|| self.destination.to_string());
        Message {
            destination: Arc::from(dlq),
            kind: Kind::Queue,
            original_destination: Some(original),
            ..self.clone()
        }
    }

    pub fn is_expired(&self, now_ms: i64) -> bool {
        self.expires > 0 && self.expires <= now_ms
    }

    /// Bytes this message keeps in memory, for window and memory accounting: each of its heap
    /// blocks as the allocator hands it out (`heap_block`), so a million small messages count
    /// what they really take.
    pub fn weight(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| heap_block(k.capacity()) + heap_block(v.capacity()))
            .sum();
        heap_block(2 * std::mem::size_of::<usize>() + std::mem::size_of::<Message>())
            + heap_block(2 * std::mem::size_of::<usize>() + self.destination.len())
            + heap_block(self.body.capacity())
            + heap_block(self.headers.capacity() * std::mem::size_of::<(String, String)>())
            + headers
            + self
                .original_destination
                .as_ref()
                .map_or(0, |d| heap_block(d.capacity()))
    }
}

/// What a heap allocation of `bytes` takes from glibc's malloc: an 8-byte header, rounded up to
/// 16 bytes, 32 at least; nothing for an empty Vec or String, which allocates nothing.
fn heap_block(bytes: usize) -> usize {
    if bytes == 0 {
        0
    } else {
        (bytes + 8).next_multiple_of(16).max(32)
    }
}

pub fn format_message_id(id: u64) -> String {
    if id & NON_PERSISTENT_BIT != 0 {
        format!("np-{}", id & !NON_PERSISTENT_BIT)
    } else {
        id.to_string()
    }
}

/// Inverse of `format_message_id`.
pub fn parse_message_id(text: &str) -> Option<u64> {
    match text.strip_prefix("np-") {
        Some(n) => n.parse::<u64>().ok().map(|n| n | NON_PERSISTENT_BIT),
        None => text.parse().ok(),
    }
}

/// Headers a SEND uses to instruct the broker; they are not carried through to MESSAGE.
pub const BROKER_HEADERS: &[&str] = &[
    "destination",
    "transaction",
    "receipt",
    "content-length",
    "persistent",
    "priority",
    "expires",
    "message-id",
    "subscription",
    "ack",
    "timestamp",
    "redelivered",
    "redelivery-count",
    "original-destination",
];

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// One delivery of a message to one subscription.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub message: Arc<Message>,
    /// The client's subscription id.
    pub subscription: Arc<str>,
    /// The 1.2 `ack` header value.
    pub ack: String,
    pub redelivered: bool,
    pub redeliveries: u32,
}

impl Delivery {
    /// The MESSAGE frame up to its body; `content-length` is always set (clients rely on it
    /// for binary bodies). The writer sends the body from the shared message, uncopied.
    pub fn encode_head(&self, version: Version, out: &mut Vec<u8>) {
        let m = &self.message;
        let numbers = [
            m.message_id(),
            m.priority.to_string(),
            m.expires.to_string(),
            m.timestamp.to_string(),
            m.body.len().to_string(),
            self.redeliveries.to_string(),
        ];
        let mut headers = vec![
            ("destination", &*m.destination),
            ("message-id", numbers[0].as_str()),
            ("subscription", &*self.subscription),
            ("ack", self.ack.as_str()),
            ("priority", numbers[1].as_str()),
            ("expires", numbers[2].as_str()),
            ("timestamp", numbers[3].as_str()),
            ("content-length", numbers[4].as_str()),
        ];
        if m.persistent {
            headers.push(("persistent", "true"));
        }
        if self.redelivered {
            headers.push(("redelivered", "true"));
            headers.push(("redelivery-count", numbers[5].as_str()));
        }
        if let Some(original) = &m.original_destination {
            headers.push(("original-destination", original.as_str()));
        }
        headers.extend(m.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())));
        encode_head("MESSAGE", headers, version, out);
    }
}

#[cfg(test)]
impl Message {
    /// A persistent message to `destination` (a topic if it names one), priority 4, no headers,
    /// for unit tests of any module; other fields by struct update.
    pub(crate) fn test(id: u64, destination: &str, body: &[u8]) -> Message {
        Message {
            id,
            destination: Arc::from(destination),
            kind: Kind::of(destination),
            persistent: true,
            priority: 4,
            expires: 0,
            timestamp: 0,
            original_destination: None,
            headers: Vec::new(),
            body: body.to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_lettered_copy_remembers_where_the_message_was_first_sent() {
        let message = Message {
            priority: 7,
            timestamp: 1,
            headers: vec![("k".to_string(), "v".to_string())],
            ..Message::test(9, "/topic/t", b"b")
        };
        let copy = message.dead_lettered("/queue/DLQ.t");
        assert_eq!(&*copy.destination, "/queue/DLQ.t");
        assert_eq!(copy.kind, Kind::Queue);
        assert_eq!(copy.original_destination.as_deref(), Some("/topic/t"));
        assert_eq!(
            (copy.id, copy.priority, &copy.headers, &copy.body),
            (9, 7, &message.headers, &message.body)
        );
        let again = Message {
            destination: Arc::from("/queue/other"),
            kind: Kind::Queue,
            ..copy
        }
        .dead_lettered("/queue/DLQ.other");
        assert_eq!(again.original_destination.as_deref(), Some("/topic/t"));
    }

    #[test]
    fn destinations() {
        assert_eq!(parse_destination("/queue/a"), Ok(Kind::Queue));
        assert_eq!(parse_destination("/topic/a.b"), Ok(Kind::Topic));
        assert!(parse_destination("/queue/").is_err());
        assert!(parse_destination("/temp-queue/x")
            .unwrap_err()
            .to_string()
            .contains("/queue/NAME"));
        assert!(parse_destination(&format!("/queue/{}", "x".repeat(300))).is_err());
        assert_eq!(dead_letter_queue("/queue/a"), "/queue/DLQ.a");
        assert_eq!(dead_letter_queue("/topic/t"), "/queue/DLQ.t");
        assert_eq!(dead_letter_queue("/queue/DLQ.a"), "/queue/DLQ.a");
        let longest = format!("/topic/{}", "x".repeat(MAX_DESTINATION - 7));
        assert!(parse_destination(&longest).is_ok());
        assert_eq!(dead_letter_queue(&longest).len(), 255);
        let wide = format!("/queue/{}", "日".repeat(MAX_DESTINATION - 7));
        assert_eq!(parse_destination(&wide), Ok(Kind::Queue));
        assert_eq!(dead_letter_queue(&wide).chars().count(), 255);
        let over = format!("{wide}本");
        assert_eq!(
            parse_destination(&over).unwrap_err(),
            NameError::TooLong {
                what: "destination",
                length: 252,
                max: 251
            }
        );
        assert_eq!(
            parse_destination(&over).unwrap_err().to_string(),
            "destination is 252 characters long, the limit is 251"
        );
        for bad in [
            "/queue/a\0b",
            "/queue/a\u{7f}",
            "/queue/\u{85}x",
            "/topic/t\r",
        ] {
            let problem = parse_destination(bad).unwrap_err().to_string();
            assert!(problem.contains("control character U+00"), "{problem}");
        }
        for good in [
            "/queue/日本",
            "/queue/😀",
            "/queue/e\u{301}",
            "/queue/עברית",
            "/queue/a b",
        ] {
            assert!(parse_destination(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn message_ids_round_trip() {
        for id in [1, 42, NON_PERSISTENT_BIT | 7] {
            assert_eq!(parse_message_id(&format_message_id(id)), Some(id));
        }
        assert_eq!(format_message_id(NON_PERSISTENT_BIT | 7), "np-7");
        assert_eq!(parse_message_id("x"), None);
    }

    #[test]
    fn weight_is_the_heap_blocks_taken() {
        assert_eq!([0, 1, 24, 25, 1024].map(heap_block), [0, 32, 32, 48, 1040]);
        let message = Message {
            headers: vec![("k".to_string(), "v".to_string())],
            ..Message::test(1, "/queue/q", &[0; 1024])
        };
        let own = heap_block(16 + std::mem::size_of::<Message>());
        assert_eq!(message.weight(), own + 32 + 1040 + 64 + 2 * 32);
    }
}
