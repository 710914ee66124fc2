//! STOMP wire format: the `Frame` type, an incremental `Decoder` that enforces size limits,
//! and `encode`.
//!
//! Connection reader threads feed socket bytes into a `Decoder` and pull frames and heart-beats
//! out of it; writer threads call `encode`. This module uses nothing but std: it knows no
//! sockets, store or router, so every rule here can be tested from byte strings alone.

use std::fmt;

/// A negotiated STOMP protocol version; ordering follows protocol age.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    V1_0,
    V1_1,
    V1_2,
}

impl Version {
    /// The version as written in `accept-version` and `version` headers.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V1_0 => "1.0",
            Version::V1_1 => "1.1",
            Version::V1_2 => "1.2",
        }
    }
}

/// One STOMP frame. Headers keep their wire order, repeats included.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub command: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Frame {
    pub fn new(command: &str) -> Frame {
        Frame {
            command: command.to_owned(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// Appends a header (even if one of that name exists: the first still wins on lookup).
    pub fn with_header(mut self, name: &str, value: &str) -> Frame {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn with_body(mut self, body: Vec<u8>) -> Frame {
        self.body = body;
        self
    }

    /// Value of the first header called `name`; the spec says later repeats are ignored.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Bounds on what a peer may make the decoder buffer. Line limits exclude the EOL.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_command_line: usize,
    pub max_header_line: usize,
    pub max_headers: usize,
    /// Largest accepted frame body, in bytes.
    pub max_frame: usize,
    /// Largest SEND the store can hold in one row: its body plus `stored_header_bytes` of its
    /// headers (set from the database's `max_allowed_packet`; `usize::MAX` = no such bound).
    pub max_send: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_command_line: 1024,
            max_header_line: 10 * 1024,
            max_headers: 1000,
            max_frame: 10 * 1024 * 1024,
            max_send: usize::MAX,
        }
    }
}

/// What a SEND's headers count against `Limits::max_send`: each name and value, and 8 bytes
/// for their two lengths (the store's encoding of headers; repeats are counted too).
pub fn stored_header_bytes(headers: &[(String, String)]) -> usize {
    headers.iter().map(|(n, v)| n.len() + v.len() + 8).sum()
}

/// What `Decoder::decode` yields: a whole frame, or one EOL received between frames.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    Frame(Frame),
    HeartBeat,
}

/// Every way a peer's bytes can be wrong. All are fatal for the connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The command line grew past `max_command_line` bytes.
    CommandTooLong { limit: usize },
    /// A header line grew past `max_header_line` bytes.
    HeaderLineTooLong { limit: usize },
    /// The frame has more than `max_headers` header lines.
    TooManyHeaders { limit: usize },
    /// The body (declared by content-length, or seen so far without one) exceeds `max_frame`.
    BodyTooLarge { length: usize, limit: usize },
    /// A SEND's body and headers (`stored_header_bytes`) exceed `max_send`.
    TooLargeToStore { length: usize, limit: usize },
    /// The content-length value is not a non-negative decimal integer.
    InvalidContentLength(String),
    /// A header used an escape other than `\r`, `\n`, `\c`, `\\` (or ended in a lone `\`).
    InvalidEscape(String),
    /// A header line has no `:`; carries the start of the line.
    HeaderWithoutColon(String),
    /// The command or a header is not valid UTF-8.
    NotUtf8,
    /// The byte after a content-length body is not NUL.
    MissingNul,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use DecodeError::*;
        match self {
            CommandTooLong { limit } => over(f, "command line", *limit, "bytes"),
            HeaderLineTooLong { limit } => over(f, "header line", *limit, "bytes"),
            TooManyHeaders { limit } => over(f, "header count", *limit, "headers"),
            BodyTooLarge { length, limit } => {
                over(f, &format!("frame body of {length} bytes"), *limit, "bytes")
            }
            TooLargeToStore { length, limit } => write!(
                f,
                "SEND of {length} bytes (body and headers) exceeds the limit of {limit} bytes \
                 that the store can hold in one message, set by the database's max_allowed_packet"
            ),
            InvalidContentLength(v) => {
                write!(f, "content-length {v:?} is not a non-negative integer")
            }
            InvalidEscape(seq) => write!(f, "invalid escape sequence {seq:?} in a header"),
            HeaderWithoutColon(line) => write!(f, "header line {line:?} has no ':' separator"),
            NotUtf8 => write!(f, "command or header is not valid UTF-8"),
            MissingNul => write!(
                f,
                "frame body does not end with NUL where content-length says"
            ),
        }
    }
}

fn over(f: &mut fmt::Formatter<'_>, what: &str, limit: usize, unit: &str) -> fmt::Result {
    write!(f, "{what} exceeds the limit of {limit} {unit}")
}

impl std::error::Error for DecodeError {}

/// Heart-beat bytes the server sends: a single "\n".
pub const HEARTBEAT: &[u8] = b"\n";

/// How much of a header line without a colon is echoed back in the error.
const ECHO_CHARS: usize = 40;
/// Consumed bytes are only moved out of the buffer once there are this many (and they are
/// at least half of it), so compaction costs amortised O(1) per byte.
const COMPACT_MIN: usize = 4096;

/// CONNECT/CONNECTED predate escaping (1.0 compatibility); STOMP is CONNECT's 1.1+ alias.
fn escapes_headers(command: &str, version: Version) -> bool {
    version >= Version::V1_1 && !matches!(command, "CONNECT" | "CONNECTED" | "STOMP")
}

#[derive(Clone, Copy, Debug)]
enum State {
    Command,
    Headers,
    Body {
        length: Option<usize>,
        limit: BodyLimit,
    },
}

/// The largest body of the frame being read, and which limit sets it.
#[derive(Clone, Copy, Debug)]
struct BodyLimit {
    max: usize,
    /// Set when `max_send` is the tighter bound: the header bytes counted against it.
    headers: Option<usize>,
}

impl BodyLimit {
    fn exceeded(self, body: usize, limits: &Limits) -> DecodeError {
        match self.headers {
            Some(headers) => DecodeError::TooLargeToStore {
                length: headers.saturating_add(body),
                limit: limits.max_send,
            },
            None => DecodeError::BodyTooLarge {
                length: body,
                limit: self.max,
            },
        }
    }
}

/// Incremental frame decoder. Holds only the unconsumed bytes plus the frame being built.
#[derive(Debug)]
pub struct Decoder {
    limits: Limits,
    version: Version,
    buf: Vec<u8>,
    /// First unconsumed byte of `buf`.
    start: usize,
    /// Bytes in `start..scan` are known not to hold the delimiter being searched for.
    scan: usize,
    state: State,
    command: String,
    headers: Vec<(String, String)>,
    /// Once the stream is corrupt nothing after it can be trusted, so errors are sticky.
    failed: Option<DecodeError>,
}

impl Decoder {
    pub fn new(limits: Limits) -> Decoder {
        Decoder {
            limits,
            version: Version::V1_0,
            buf: Vec::new(),
            start: 0,
            scan: 0,
            state: State::Command,
            command: String::new(),
            headers: Vec::new(),
            failed: None,
        }
    }

    /// Version negotiated on CONNECT; until set, behaves as 1.0 for escaping
    /// (CONNECT is never unescaped anyway).
    pub fn set_version(&mut self, v: Version) {
        self.version = v;
    }

    /// Append bytes read from the socket.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
            self.scan = 0;
        } else if self.start >= COMPACT_MIN && self.start * 2 >= self.buf.len() {
            self.buf.drain(..self.start);
            self.scan -= self.start;
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes buffered but not yet consumed (for tests / memory accounting).
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Next complete frame or heart-beat; `Ok(None)` when more bytes are needed, `Err` on bad
    /// bytes. Limits are enforced as soon as a violation is visible, so the buffer stays bounded
    /// by the limits plus whatever one `feed` added.
    pub fn decode(&mut self) -> Result<Option<Decoded>, DecodeError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let result = self.step();
        if let Err(e) = &result {
            self.failed = Some(e.clone());
        }
        result
    }

    fn step(&mut self) -> Result<Option<Decoded>, DecodeError> {
        loop {
            match self.state {
                State::Command => {
                    let limit = self.limits.max_command_line;
                    let line = self
                        .next_line(limit)
                        .ok_or(DecodeError::CommandTooLong { limit })?;
                    let Some((a, b)) = line else { return Ok(None) };
                    if a == b {
                        return Ok(Some(Decoded::HeartBeat));
                    }
                    self.command = utf8(&self.buf[a..b])?.to_owned();
                    self.state = State::Headers;
                }
                State::Headers => {
                    let limit = self.limits.max_header_line;
                    let line = self
                        .next_line(limit)
                        .ok_or(DecodeError::HeaderLineTooLong { limit })?;
                    let Some((a, b)) = line else { return Ok(None) };
                    if a == b {
                        let limit = self.body_limit();
                        let length = self.content_length(limit)?;
                        self.state = State::Body { length, limit };
                        continue;
                    }
                    let limit = self.limits.max_headers;
                    if self.headers.len() >= limit {
                        return Err(DecodeError::TooManyHeaders { limit });
                    }
                    let header = self.parse_header(&self.buf[a..b])?;
                    self.headers.push(header);
                }
                State::Body { length, limit } => return self.read_body(length, limit),
            }
        }
    }

    /// Consumes one line and returns its range without the EOL (`Some(None)`: no EOL yet), or
    /// `None` if it is already longer than `limit`.
    fn next_line(&mut self, limit: usize) -> Option<Option<(usize, usize)>> {
        let end = self.buf.len();
        let Some(offset) = self.buf[self.scan..end].iter().position(|&b| b == b'\n') else {
            self.scan = end;
            let mut pending = end - self.start;
            // A trailing CR may be the first half of a CRLF, so it is not line content yet.
            if pending > 0 && self.buf[end - 1] == b'\r' {
                pending -= 1;
            }
            return if pending > limit { None } else { Some(None) };
        };
        let lf = self.scan + offset;
        let first = self.start;
        let has_cr = lf > first && self.buf[lf - 1] == b'\r';
        let last = lf - usize::from(has_cr);
        if last - first > limit {
            return None;
        }
        self.start = lf + 1;
        self.scan = self.start;
        Some(Some((first, last)))
    }

    fn parse_header(&self, line: &[u8]) -> Result<(String, String), DecodeError> {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            let echo = String::from_utf8_lossy(line)
                .chars()
                .take(ECHO_CHARS)
                .collect();
            return Err(DecodeError::HeaderWithoutColon(echo));
        };
        let name = utf8(&line[..colon])?;
        let value = utf8(&line[colon + 1..])?;
        if escapes_headers(&self.command, self.version) {
            Ok((unescape(name)?, unescape(value)?))
        } else {
            Ok((name.to_owned(), value.to_owned()))
        }
    }

    /// `max_frame`, or for a SEND whose headers leave less room in the store, what they leave.
    fn body_limit(&self) -> BodyLimit {
        let max = self.limits.max_frame;
        if self.command != "SEND" || self.limits.max_send == usize::MAX {
            return BodyLimit { max, headers: None };
        }
        let headers = stored_header_bytes(&self.headers);
        match self.limits.max_send.saturating_sub(headers) {
            room if room < max => BodyLimit {
                max: room,
                headers: Some(headers),
            },
            _ => BodyLimit { max, headers: None },
        }
    }

    /// Checks the declared length against the limit before any body byte is buffered.
    fn content_length(&self, limit: BodyLimit) -> Result<Option<usize>, DecodeError> {
        let Some((_, raw)) = self.headers.iter().find(|(n, _)| n == "content-length") else {
            return Ok(None);
        };
        // Tolerate padding from 1.0-era clients that wrote "content-length: 5".
        let value = raw.trim_matches(' ');
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
            return Err(DecodeError::InvalidContentLength(raw.clone()));
        }
        // All digits, so a parse failure can only be overflow: certainly too large.
        let length = value.parse().unwrap_or(usize::MAX);
        if length > limit.max {
            return Err(limit.exceeded(length, &self.limits));
        }
        Ok(Some(length))
    }

    fn read_body(
        &mut self,
        length: Option<usize>,
        limit: BodyLimit,
    ) -> Result<Option<Decoded>, DecodeError> {
        let too_large = |length| Err(limit.exceeded(length, &self.limits));
        let available = self.buf.len() - self.start;
        let body_len = match length {
            Some(n) if available <= n => return Ok(None),
            Some(n) if self.buf[self.start + n] != 0 => return Err(DecodeError::MissingNul),
            Some(n) => n,
            None => match self.buf[self.scan..].iter().position(|&b| b == 0) {
                Some(offset) => self.scan + offset - self.start,
                None => {
                    self.scan = self.buf.len();
                    return if available > limit.max {
                        too_large(available)
                    } else {
                        Ok(None)
                    };
                }
            },
        };
        if body_len > limit.max {
            return too_large(body_len);
        }
        let body = self.buf[self.start..self.start + body_len].to_vec();
        self.start += body_len + 1;
        self.scan = self.start;
        self.state = State::Command;
        let mut frame = Frame::new("").with_body(body);
        frame.command = std::mem::take(&mut self.command);
        frame.headers = std::mem::take(&mut self.headers);
        Ok(Some(Decoded::Frame(frame)))
    }
}

fn utf8(bytes: &[u8]) -> Result<&str, DecodeError> {
    std::str::from_utf8(bytes).map_err(|_| DecodeError::NotUtf8)
}

fn unescape(s: &str) -> Result<String, DecodeError> {
    if !s.contains('\\') {
        return Ok(s.to_owned());
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        out.push(match chars.next() {
            Some('r') => '\r',
            Some('n') => '\n',
            Some('c') => ':',
            Some('\\') => '\\',
            Some(other) => return Err(DecodeError::InvalidEscape(format!("\\{other}"))),
            None => return Err(DecodeError::InvalidEscape("\\".to_owned())),
        });
    }
    Ok(out)
}

/// Byte-wise is safe: UTF-8 continuation bytes never equal an ASCII byte.
fn write_escaped(s: &str, out: &mut Vec<u8>) {
    for b in s.bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b':' => out.extend_from_slice(b"\\c"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            _ => out.push(b),
        }
    }
}

/// Without escaping a CR or LF cannot be represented and would let header text forge extra
/// headers or an early body, so each becomes a space.
fn write_raw(s: &str, out: &mut Vec<u8>) {
    let blank_eol = |b| if b == b'\n' || b == b'\r' { b' ' } else { b };
    out.extend(s.bytes().map(blank_eol));
}

/// Encode one frame. Escapes header names and values per `version` (1.1+, not for
/// CONNECT/CONNECTED); writes `command\n`, headers, `\n`, body, NUL. Does NOT add
/// content-length itself (callers add it).
pub fn encode(frame: &Frame, version: Version, out: &mut Vec<u8>) {
    let headers = frame.headers.iter().map(|(n, v)| (n.as_str(), v.as_str()));
    encode_head(&frame.command, headers, version, out);
    out.extend_from_slice(&frame.body);
    out.push(0);
}

/// A frame's command line, headers and blank line: what comes before its body (the caller
/// writes the body and the NUL itself, e.g. straight from a shared message).
pub fn encode_head<'a>(
    command: &str,
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
    version: Version,
    out: &mut Vec<u8>,
) {
    let escape = escapes_headers(command, version);
    let write = if escape { write_escaped } else { write_raw };
    write_raw(command, out);
    out.push(b'\n');
    for (name, value) in headers {
        write(name, out);
        out.push(b':');
        write(value, out);
        out.push(b'\n');
    }
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use DecodeError::*;
    use Version::*;

    /// `headers` is "name=value|name=value"; the sample uses neither '|' nor '=' otherwise.
    fn fr(command: &str, headers: &str, body: &[u8]) -> Decoded {
        let pairs = headers.split('|').filter_map(|h| h.split_once('='));
        let f = pairs.fold(Frame::new(command), |f, (n, v)| f.with_header(n, v));
        Decoded::Frame(f.with_body(body.to_vec()))
    }

    /// Decodes everything available after each chunk; the first error ends the run.
    fn run(chunks: &[&[u8]], v: Version, limits: Limits) -> Result<Vec<Decoded>, DecodeError> {
        let mut d = Decoder::new(limits);
        d.set_version(v);
        let mut out = Vec::new();
        for chunk in chunks {
            d.feed(chunk);
            while let Some(item) = d.decode()? {
                out.push(item);
            }
        }
        Ok(out)
    }

    fn one(input: &[u8], v: Version) -> Result<Vec<Decoded>, DecodeError> {
        run(&[input], v, Limits::default())
    }

    const SAMPLE: &[u8] = b"CONNECT\naccept-version:1.2\nhost:h\npasscode:a\\tb:c\n\n\0\n\
        SEND\ndestination:/queue/a\ncontent-length:5\n\na\0b\0c\0\r\n\n\
        SEND\ndestination:/queue/b\nsp: x \n\nhello\0\
        SEND\ndest\\cination:/q\\n\\\\x\\r\n\n\0\
        SEND\r\ndestination:/queue/c\r\nfoo:bar\r\n\r\nbody\0\r\n\
        SEND\ndestination:/first\ndestination:/second\n\n\0";

    fn sample_expected() -> Vec<Decoded> {
        use Decoded::HeartBeat as Hb;
        vec![
            fr("CONNECT", "accept-version=1.2|host=h|passcode=a\\tb:c", b""),
            Hb,
            fr("SEND", "destination=/queue/a|content-length=5", b"a\0b\0c"),
            Hb,
            Hb,
            fr("SEND", "destination=/queue/b|sp= x ", b"hello"),
            fr("SEND", "dest:ination=/q\n\\x\r", b""),
            fr("SEND", "destination=/queue/c|foo=bar", b"body"),
            Hb,
            fr("SEND", "destination=/first|destination=/second", b""),
        ]
    }

    #[test]
    fn sample_decodes_whole_bytewise_and_split_everywhere() {
        let (expected, limits) = (sample_expected(), Limits::default());
        assert_eq!(run(&[SAMPLE], V1_2, limits).unwrap(), expected);
        let bytes: Vec<&[u8]> = SAMPLE.chunks(1).collect();
        assert_eq!(run(&bytes, V1_2, limits).unwrap(), expected);
        for at in 0..=SAMPLE.len() {
            let (a, b) = SAMPLE.split_at(at);
            assert_eq!(
                run(&[a, b], V1_2, limits).unwrap(),
                expected,
                "split at {at}"
            );
        }
    }

    #[test]
    fn header_lookup_first_occurrence_wins() {
        let decoded = one(SAMPLE, V1_2).unwrap();
        let Some(Decoded::Frame(f)) = decoded.last() else {
            panic!("no frame")
        };
        assert_eq!(f.header("destination"), Some("/first"));
        assert_eq!(f.header("missing"), None);
    }

    #[test]
    fn heartbeats_count_one_per_eol_and_lone_cr_waits() {
        use Decoded::HeartBeat as Hb;
        assert_eq!(one(b"\r\n\n\r\n", V1_0).unwrap(), [Hb, Hb, Hb]);
        assert_eq!(one(b"\r", V1_0), Ok(vec![]));
    }

    #[test]
    fn no_escaping_in_1_0_and_split_at_first_colon() {
        let got = one(b"SEND\nfoo:a\\nb:c\n\n\0", V1_0).unwrap();
        assert_eq!(got, vec![fr("SEND", "foo=a\\nb:c", b"")]);
        assert_eq!(
            one(b"SEND\nfoo:a:b\n\n\0", V1_2).unwrap(),
            vec![fr("SEND", "foo=a:b", b"")]
        );
    }

    fn round_trip(f: &Frame, v: Version) {
        let mut bytes = Vec::new();
        encode(f, v, &mut bytes);
        assert_eq!(
            one(&bytes, v).unwrap(),
            vec![Decoded::Frame(f.clone())],
            "{v:?}"
        );
    }

    #[test]
    fn encode_decode_round_trip_every_version() {
        let body = b"bin\0ary\n\0".to_vec();
        let base = Frame::new("MESSAGE")
            .with_header("content-length", &body.len().to_string())
            .with_header("plain", "héllo ✓")
            .with_header("colon", "a:b:c")
            .with_header("empty", "")
            .with_header("spaces", "  padded  ")
            .with_body(body);
        let escaped = base
            .clone()
            .with_header("weird:name\\", "back\\slash\\")
            .with_header("eols", "\r\nline\n\rx\\n")
            .with_header("dup", "1")
            .with_header("dup", "2");
        for v in [V1_0, V1_1, V1_2] {
            round_trip(&base, v);
        }
        round_trip(&escaped, V1_1);
        round_trip(&escaped, V1_2);
        round_trip(&Frame::new("CONNECTED").with_header("x", "a:\\b"), V1_2);
    }

    #[test]
    fn encode_exact_bytes_and_unrepresentable_eols() {
        let f = Frame::new("ERROR")
            .with_header("message", "a:b\nc")
            .with_body(b"x".to_vec());
        let mut out = Vec::new();
        encode(&f, V1_2, &mut out);
        assert_eq!(out, b"ERROR\nmessage:a\\cb\\nc\n\nx\0");
        out.clear();
        encode(&f, V1_0, &mut out);
        assert_eq!(out, b"ERROR\nmessage:a:b c\n\nx\0");
        out.clear();
        encode(
            &Frame::new("CONNECT").with_header("login", "a:b"),
            V1_2,
            &mut out,
        );
        assert_eq!(out, b"CONNECT\nlogin:a:b\n\n\0");
        assert_eq!(HEARTBEAT, b"\n");
    }

    fn small() -> Limits {
        Limits {
            max_command_line: 8,
            max_header_line: 20,
            max_headers: 2,
            max_frame: 10,
            max_send: usize::MAX,
        }
    }

    fn too_large(length: usize, limit: usize) -> DecodeError {
        BodyTooLarge { length, limit }
    }

    #[test]
    fn each_error_from_a_minimal_input() {
        let cases: Vec<(&[u8], DecodeError)> = vec![
            (b"SUBSCRIBE", CommandTooLong { limit: 8 }),
            (
                b"SEND\nabcdefgh:ijklmnopqrstu",
                HeaderLineTooLong { limit: 20 },
            ),
            (b"SEND\na:1\nb:2\nc:3\n", TooManyHeaders { limit: 2 }),
            (b"SEND\ncontent-length:11\n\n", too_large(11, 10)),
            (b"SEND\n\n0123456789A", too_large(11, 10)),
            (
                b"SEND\ncontent-length:-1\n\n",
                InvalidContentLength("-1".into()),
            ),
            (
                b"SEND\ncontent-length:\n\n",
                InvalidContentLength("".into()),
            ),
            (b"SEND\na:\\t\n", InvalidEscape("\\t".into())),
            (b"SEND\na:b\\\n", InvalidEscape("\\".into())),
            (b"SEND\nnocolon\n", HeaderWithoutColon("nocolon".into())),
            (b"SE\xffD\n", NotUtf8),
            (b"SEND\na:\xff\n", NotUtf8),
            (b"SEND\ncontent-length:1\n\nab", MissingNul),
        ];
        for (input, expected) in cases {
            assert_eq!(run(&[input], V1_2, small()), Err(expected), "{input:?}");
        }
        let huge = b"SEND\ncontent-length:99999999999999999999999\n\n";
        let limits = Limits {
            max_frame: 10,
            ..Limits::default()
        };
        assert_eq!(run(&[huge], V1_2, limits), Err(too_large(usize::MAX, 10)));
    }

    #[test]
    fn limits_are_inclusive_and_crlf_is_not_counted() {
        let ok: &[u8] = b"ABCDEFGH\r\nabcdefgh:ijklmnopqrs\r\nb:2\n\n0123456789\0";
        assert_eq!(run(&[ok], V1_2, small()).unwrap().len(), 1);
        assert_eq!(run(&[b"ABCDEFGH\r"], V1_2, small()), Ok(vec![]));
    }

    #[test]
    fn errors_are_sticky_and_display_is_clear() {
        let mut d = Decoder::new(small());
        d.feed(b"SEND\nnocolon\n\n\0");
        let err = d.decode().unwrap_err();
        d.feed(b"\n");
        assert_eq!(d.decode(), Err(err));
        let text = too_large(20971520, 10485760).to_string();
        assert_eq!(
            text,
            "frame body of 20971520 bytes exceeds the limit of 10485760 bytes"
        );
        let text = HeaderLineTooLong { limit: 10240 }.to_string();
        assert_eq!(text, "header line exceeds the limit of 10240 bytes");
    }

    #[test]
    fn oversized_content_length_fails_before_body_arrives() {
        let mut d = Decoder::new(Limits::default());
        d.feed(b"SEND\ndestination:/q\ncontent-length:20971520\n\n");
        assert_eq!(d.decode(), Err(too_large(20971520, 10485760)));
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn a_send_the_store_cannot_hold_fails_before_its_body_at_the_exact_byte() {
        let limits = Limits {
            max_send: 100,
            ..Limits::default()
        };
        // destination:/q costs 11 + 2 + 8 = 21, content-length:NN costs 14 + 2 + 8 = 24.
        let frame = |body: usize| {
            let mut f = format!("SEND\ndestination:/q\ncontent-length:{body:02}\n\n").into_bytes();
            f.extend(std::iter::repeat_n(b'x', body));
            f.push(0);
            f
        };
        assert_eq!(run(&[&frame(55)], V1_2, limits).unwrap().len(), 1);
        let mut d = Decoder::new(limits);
        d.feed(&frame(56)[..39]);
        let err = d.decode().unwrap_err();
        assert_eq!(
            err,
            TooLargeToStore {
                length: 101,
                limit: 100
            }
        );
        assert!(err.to_string().contains("max_allowed_packet"), "{err}");
        // Without content-length the body is measured as it arrives.
        let open = b"SEND\ndestination:/q\n\n";
        let ok = [&open[..], &[b'y'; 79], b"\0"].concat();
        assert_eq!(run(&[&ok], V1_2, limits).unwrap().len(), 1);
        let over = [&open[..], &[b'y'; 80], b"\0"].concat();
        assert!(matches!(
            run(&[&over], V1_2, limits),
            Err(TooLargeToStore { length: 101, .. })
        ));
        // Other frames keep the frame limit, and so does a SEND whose frame limit is tighter.
        let subscribe = [&b"SUBSCRIBE\ndestination:/q\n\n"[..], &[b'z'; 200], b"\0"].concat();
        assert_eq!(run(&[&subscribe], V1_2, limits).unwrap().len(), 1);
        let both = Limits {
            max_frame: 10,
            ..limits
        };
        assert_eq!(run(&[&frame(11)], V1_2, both), Err(too_large(11, 10)));
    }

    #[test]
    fn megabyte_header_line_fails_without_its_eol() {
        let mut d = Decoder::new(Limits::default());
        d.feed(b"SEND\nx:");
        let (mut fed, chunk) = (7, [b'a'; 4096]);
        let err = loop {
            assert!(fed < 1 << 20, "no error after a 1 MiB header line");
            d.feed(&chunk);
            fed += chunk.len();
            match d.decode() {
                Ok(None) => continue,
                other => break other,
            }
        };
        assert_eq!(err, Err(HeaderLineTooLong { limit: 10240 }));
        assert!(fed <= 5 + 10240 + chunk.len());
    }

    #[test]
    fn buffered_stays_bounded_and_drains() {
        let (mut d, mut stream) = (Decoder::new(Limits::default()), Vec::new());
        for i in 0..2000 {
            encode(
                &Frame::new("SEND").with_header("n", &i.to_string()),
                V1_2,
                &mut stream,
            );
        }
        let mut frames = 0;
        for chunk in stream.chunks(977) {
            d.feed(chunk);
            while let Some(item) = d.decode().unwrap() {
                assert!(matches!(item, Decoded::Frame(_)));
                frames += 1;
            }
            assert!(d.buffered() < 977);
            assert!(d.buf.len() <= 2 * COMPACT_MIN + 977);
        }
        assert_eq!((frames, d.buffered()), (2000, 0));
        let mut d = Decoder::new(Limits {
            max_frame: 1000,
            ..Limits::default()
        });
        d.feed(b"SEND\n\n");
        let result = loop {
            d.feed(&[b'z'; 64]);
            match d.decode() {
                Ok(None) => assert!(d.buffered() <= 1000),
                other => break other,
            }
        };
        assert!(matches!(result, Err(BodyTooLarge { limit: 1000, .. })));
    }

    #[test]
    fn version_strings_and_order() {
        let strs: Vec<_> = [V1_0, V1_1, V1_2].iter().map(|v| v.as_str()).collect();
        assert_eq!(strs, ["1.0", "1.1", "1.2"]);
        assert!(V1_0 < V1_1 && V1_1 < V1_2);
    }
}
