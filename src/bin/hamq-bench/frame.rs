//! STOMP 1.2 frames: the [`Frame`] type, its encoding (header escaping, `content-length`) and
//! [`Decoder`], an incremental parser over bytes as they arrive from a socket (frames split
//! across reads, bodies with NULs when `content-length` is given, heart-beat EOLs skipped).

use std::fmt;

/// Refuse a `content-length` above this, before allocating for it.
const MAX_BODY: usize = 1 << 30;
/// Refuse a frame head (command and headers) longer than this without its blank line.
const MAX_HEAD: usize = 1 << 20;

/// One STOMP frame; headers keep their order and repeats (the first occurrence wins).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Frame {
    pub command: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Frame {
    pub fn new(command: &str) -> Frame {
        Frame {
            command: command.to_string(),
            ..Frame::default()
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Frame {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn body(mut self, body: Vec<u8>) -> Frame {
        self.body = body;
        self
    }

    /// The first header called `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// An ERROR frame's `message` header, and its body when it is short text.
    pub fn error_text(&self) -> String {
        let message = self.get("message").unwrap_or("(no message header)");
        let body = String::from_utf8_lossy(&self.body);
        let body = body.trim();
        if body.is_empty() || body.len() > 200 {
            message.to_string()
        } else {
            format!("{message}: {body}")
        }
    }

    /// The wire form: headers escaped except in CONNECT/CONNECTED (as STOMP 1.2 says), and a
    /// `content-length` for a non-empty body unless the headers already carry one.
    pub fn encode(&self) -> Vec<u8> {
        let escape = !matches!(self.command.as_str(), "CONNECT" | "STOMP" | "CONNECTED");
        let mut out = Vec::with_capacity(64 + self.body.len());
        out.extend_from_slice(self.command.as_bytes());
        out.push(b'\n');
        for (k, v) in &self.headers {
            push_header_part(&mut out, k, escape);
            out.push(b':');
            push_header_part(&mut out, v, escape);
            out.push(b'\n');
        }
        if !self.body.is_empty() && self.get("content-length").is_none() {
            out.extend_from_slice(format!("content-length:{}\n", self.body.len()).as_bytes());
        }
        out.push(b'\n');
        out.extend_from_slice(&self.body);
        out.push(0);
        out
    }
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {:?} ({} body bytes)",
            self.command,
            self.headers,
            self.body.len()
        )
    }
}

fn push_header_part(out: &mut Vec<u8>, s: &str, escape: bool) {
    if !escape {
        out.extend_from_slice(s.as_bytes());
        return;
    }
    for b in s.bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b':' => out.extend_from_slice(b"\\c"),
            _ => out.push(b),
        }
    }
}

/// Reverses the 1.2 header escaping; an undefined escape sequence is a protocol error.
pub fn unescape(s: &str) -> Result<String, String> {
    if !s.contains('\\') {
        return Ok(s.to_string());
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('c') => out.push(':'),
            other => {
                return Err(format!(
                    "undefined escape `\\{}` in a header",
                    other.unwrap_or(' ')
                ))
            }
        }
    }
    Ok(out)
}

/// Bytes in, frames out. Feed it whatever the socket gave with [`Decoder::extend`], then take
/// complete frames with [`Decoder::next_frame`] until it says `None` (more bytes needed).
#[derive(Default)]
pub struct Decoder {
    buf: Vec<u8>,
    /// Start of the unparsed bytes in `buf`.
    pos: usize,
    /// Heart-beat EOLs skipped so far (for tests and curiosity).
    pub heartbeats: u64,
}

/// Where a parsed frame head ends and what it says.
struct Head {
    frame: Frame,
    /// Index in `buf` of the first body byte.
    body_start: usize,
    content_length: Option<usize>,
}

impl Decoder {
    pub fn extend(&mut self, bytes: &[u8]) {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > 64 * 1024 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, `Ok(None)` when more bytes are needed, `Err` on a malformed
    /// frame (the connection is then unusable).
    pub fn next_frame(&mut self) -> Result<Option<Frame>, String> {
        self.skip_eols();
        let Some(head) = self.parse_head()? else {
            return Ok(None);
        };
        let Head {
            mut frame,
            body_start,
            content_length,
        } = head;
        let body_end = match content_length {
            Some(n) => {
                if self.buf.len() < body_start + n + 1 {
                    return Ok(None);
                }
                if self.buf[body_start + n] != 0 {
                    return Err(format!("{}: no NUL after the {n}-byte body", frame.command));
                }
                body_start + n
            }
            None => match find(&self.buf[body_start..], 0) {
                Some(i) => body_start + i,
                None => return Ok(None),
            },
        };
        frame.body = self.buf[body_start..body_end].to_vec();
        self.pos = body_end + 1;
        Ok(Some(frame))
    }

    fn skip_eols(&mut self) {
        loop {
            let rest = &self.buf[self.pos..];
            if rest.first() == Some(&b'\n') {
                self.pos += 1;
            } else if rest.starts_with(b"\r\n") {
                self.pos += 2;
            } else {
                return;
            }
            self.heartbeats += 1;
        }
    }

    /// Command and headers up to the blank line, or `None` when they are not all here yet.
    fn parse_head(&self) -> Result<Option<Head>, String> {
        let mut at = self.pos;
        let mut lines = Vec::new();
        loop {
            let Some(nl) = find(&self.buf[at..], b'\n') else {
                if self.buf.len() - self.pos > MAX_HEAD {
                    return Err(format!("a frame head longer than {MAX_HEAD} bytes"));
                }
                return Ok(None);
            };
            let raw = &self.buf[at..at + nl];
            let line = raw.strip_suffix(b"\r").unwrap_or(raw);
            at += nl + 1;
            if line.is_empty() {
                break;
            }
            lines.push(std::str::from_utf8(line).map_err(|_| "a header line is not UTF-8")?);
        }
        let (command, header_lines) = lines.split_first().ok_or("an empty frame head")?;
        let mut frame = Frame::new(command);
        let escaped = !matches!(*command, "CONNECTED" | "CONNECT");
        for line in header_lines {
            let (k, v) = line
                .split_once(':')
                .ok_or_else(|| format!("{command}: header line without a colon: {line:?}"))?;
            let (k, v) = if escaped {
                (unescape(k)?, unescape(v)?)
            } else {
                (k.to_string(), v.to_string())
            };
            frame.headers.push((k, v));
        }
        let content_length = match frame.get("content-length") {
            None => None,
            Some(v) => match v.trim().parse::<usize>() {
                Ok(n) if n <= MAX_BODY => Some(n),
                _ => return Err(format!("{command}: bad content-length `{v}`")),
            },
        };
        Ok(Some(Head {
            frame,
            body_start: at,
            content_length,
        }))
    }
}

fn find(haystack: &[u8], byte: u8) -> Option<usize> {
    haystack.iter().position(|&b| b == byte)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(chunks: &[&[u8]]) -> Vec<Frame> {
        let mut d = Decoder::default();
        let mut out = Vec::new();
        for chunk in chunks {
            d.extend(chunk);
            while let Some(f) = d.next_frame().unwrap() {
                out.push(f);
            }
        }
        out
    }

    #[test]
    fn encode_escapes_headers_and_adds_content_length() {
        let f = Frame::new("SEND")
            .header("destination", "/queue/a:b")
            .header("x\\y", "line1\nline2\r")
            .body(b"a\0b".to_vec());
        let wire = f.encode();
        let expected: &[u8] = b"SEND\ndestination:/queue/a\\cb\nx\\\\y:line1\\nline2\\r\n\
            content-length:3\n\na\0b\0";
        assert_eq!(wire, expected);
        let back = decode_all(&[&wire]).remove(0);
        assert_eq!(back, f.header("content-length", "3"));
    }

    #[test]
    fn connect_headers_are_not_escaped() {
        let f = Frame::new("CONNECT").header("passcode", "a:b\\c");
        assert_eq!(f.encode(), b"CONNECT\npasscode:a:b\\c\n\n\0".to_vec());
        let connected = b"CONNECTED\nserver:x\\y:1\n\n\0";
        assert_eq!(decode_all(&[connected])[0].get("server"), Some("x\\y:1"));
    }

    #[test]
    fn empty_body_has_no_content_length() {
        assert_eq!(
            Frame::new("DISCONNECT").encode(),
            b"DISCONNECT\n\n\0".to_vec()
        );
    }

    #[test]
    fn unescape_rejects_undefined_escapes() {
        assert_eq!(unescape("a\\c\\n\\r\\\\").unwrap(), "a:\n\r\\");
        assert!(unescape("a\\t").is_err());
        assert!(unescape("a\\").is_err());
    }

    #[test]
    fn split_frames_nul_bodies_and_heartbeats() {
        let one = Frame::new("MESSAGE")
            .header("ack", "7")
            .body(vec![0, 1, 0, b'\n', 0])
            .encode();
        let two = b"RECEIPT\r\nreceipt-id:r1\r\n\r\n\0".to_vec();
        let mut stream = b"\n\r\n".to_vec();
        stream.extend_from_slice(&one);
        stream.extend_from_slice(b"\n\n\r\n");
        stream.extend_from_slice(&two);
        stream.push(b'\n');
        // Every split point, including inside `\r\n` and inside the body.
        for cut in 0..stream.len() {
            let frames = decode_all(&[&stream[..cut], &stream[cut..]]);
            assert_eq!(frames.len(), 2, "cut at {cut}");
            assert_eq!(frames[0].body, vec![0, 1, 0, b'\n', 0]);
            assert_eq!(frames[1].get("receipt-id"), Some("r1"));
        }
        let mut d = Decoder::default();
        let mut n = 0;
        for byte in stream.chunks(1) {
            d.extend(byte);
            while d.next_frame().unwrap().is_some() {
                n += 1;
            }
        }
        assert_eq!((n, d.heartbeats), (2, 6));
    }

    #[test]
    fn body_without_content_length_ends_at_nul() {
        let frames = decode_all(&[b"MESSAGE\nx:1\n\nhello\0\nERROR\nmessage:m\n\nbad\0"]);
        assert_eq!(frames[0].body, b"hello");
        assert_eq!(frames[1].error_text(), "m: bad");
    }

    #[test]
    fn malformed_frames_are_errors() {
        for bad in [
            &b"MESSAGE\ncontent-length:2\n\nabc\0"[..],
            b"MESSAGE\nno-colon\n\n\0",
            b"MESSAGE\ncontent-length:x\n\n\0",
            b"MESSAGE\nk:\\q\n\n\0",
        ] {
            let mut d = Decoder::default();
            d.extend(bad);
            assert!(
                d.next_frame().is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
