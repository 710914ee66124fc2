//! A tiny STOMP 1.2 client over a real TcpStream (plain, or TLS through rustls), with its own
//! frame parser: tests must not depend on the crate's codec.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use std::collections::VecDeque;
use std::fmt;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The default wait for a frame or a connection.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// One STOMP frame; headers keep their order and repeats.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    pub command: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Frame {
    /// The first header with this name (STOMP: the first occurrence wins).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = &self.body[..self.body.len().min(1000)];
        let more = if shown.len() < self.body.len() {
            "..."
        } else {
            ""
        };
        f.debug_struct("Frame")
            .field("command", &self.command)
            .field("headers", &self.headers)
            .field(
                "body",
                &format!(
                    "{}{more} ({} bytes)",
                    String::from_utf8_lossy(shown),
                    self.body.len()
                ),
            )
            .finish()
    }
}

enum Next {
    Frame(Frame),
    Timeout,
    Eof,
}

/// The client's byte stream: plain TCP, or TLS over it.
enum Stream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(tcp) => tcp,
            Stream::Tls(tls) => tls.get_ref(),
        }
    }

    fn set_read_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()> {
        self.tcp().set_read_timeout(timeout)
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(tcp) => tcp.read(buf),
            Stream::Tls(tls) => tls.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(tcp) => tcp.write(buf),
            Stream::Tls(tls) => tls.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Plain(tcp) => tcp.flush(),
            Stream::Tls(tls) => tls.flush(),
        }
    }
}

/// CONNECT headers as guest/guest with STOMP 1.2.
const GUEST: [(&str, &str); 4] = [
    ("accept-version", "1.2"),
    ("host", "/"),
    ("login", "guest"),
    ("passcode", "guest"),
];

/// A STOMP connection. Frames that arrive while waiting for a receipt are kept for `recv`.
pub struct Client {
    stream: Stream,
    buf: Vec<u8>,
    pending: VecDeque<Frame>,
    receipts: u64,
}

impl Client {
    /// A TCP connection to 127.0.0.1:`port` with no CONNECT sent.
    pub fn raw(port: u16) -> Client {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let stream = TcpStream::connect_timeout(&addr, TIMEOUT)
            .unwrap_or_else(|e| panic!("cannot connect to the broker at {addr}: {e}"));
        stream.set_nodelay(true).expect("set_nodelay");
        Client {
            stream: Stream::Plain(stream),
            buf: Vec::new(),
            pending: VecDeque::new(),
            receipts: 0,
        }
    }

    /// A TLS connection to 127.0.0.1:`port` (handshake done within [`TIMEOUT`], server name
    /// `localhost`) trusting only the CA certificate `ca_pem`, with no CONNECT sent.
    pub fn raw_tls(port: u16, ca_pem: &str) -> Client {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(cert.expect("CA PEM")).expect("CA certificate");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from("localhost").expect("server name");
        let mut conn = ClientConnection::new(Arc::new(config), name).expect("TLS client");
        let mut tcp = match Self::raw(port).stream {
            Stream::Plain(tcp) => tcp,
            Stream::Tls(_) => unreachable!("raw() is plain TCP"),
        };
        tcp.set_read_timeout(Some(TIMEOUT))
            .expect("set_read_timeout");
        while conn.is_handshaking() {
            conn.complete_io(&mut tcp)
                .unwrap_or_else(|e| panic!("TLS handshake with port {port}: {e}"));
        }
        Client {
            stream: Stream::Tls(Box::new(StreamOwned::new(conn, tcp))),
            buf: Vec::new(),
            pending: VecDeque::new(),
            receipts: 0,
        }
    }

    /// CONNECT as guest/guest with STOMP 1.2; panics unless CONNECTED comes back.
    pub fn connect(port: u16) -> Client {
        Self::raw(port).connected(port)
    }

    /// [`Client::connect`] over TLS (see [`Client::raw_tls`]).
    pub fn connect_tls(port: u16, ca_pem: &str) -> Client {
        Self::raw_tls(port, ca_pem).connected(port)
    }

    fn connected(mut self, port: u16) -> Client {
        self.send_frame("CONNECT", &GUEST, b"");
        let reply = self.recv(TIMEOUT);
        assert_eq!(
            reply.command, "CONNECTED",
            "CONNECT to port {port} was answered with {reply:?}"
        );
        self
    }

    /// Sends CONNECT with exactly `headers` and returns the first frame of the reply.
    pub fn connect_with(port: u16, headers: &[(&str, &str)]) -> (Client, Frame) {
        let mut client = Self::raw(port);
        client.send_frame("CONNECT", headers, b"");
        let reply = client.recv(TIMEOUT);
        (client, reply)
    }

    /// Writes one frame. Headers are 1.2-escaped (except in CONNECT/STOMP); a non-empty body
    /// gets a content-length unless `headers` has one.
    pub fn send_frame(&mut self, command: &str, headers: &[(&str, &str)], body: &[u8]) {
        let escape = !matches!(command, "CONNECT" | "STOMP");
        let mut out = format!("{command}\n").into_bytes();
        for (k, v) in headers {
            let (k, v) = if escape {
                (escape_header(k), escape_header(v))
            } else {
                (k.to_string(), v.to_string())
            };
            out.extend_from_slice(format!("{k}:{v}\n").as_bytes());
        }
        if !body.is_empty() && !headers.iter().any(|(k, _)| *k == "content-length") {
            out.extend_from_slice(format!("content-length:{}\n", body.len()).as_bytes());
        }
        out.push(b'\n');
        out.extend_from_slice(body);
        out.push(0);
        self.write_raw(&out);
    }

    /// Writes bytes as they are.
    pub fn write_raw(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("writing {} bytes to the broker: {e}", bytes.len()));
    }

    /// The next frame; panics on timeout or when the server closes the connection.
    pub fn recv(&mut self, timeout: Duration) -> Frame {
        match self.next(timeout) {
            Next::Frame(frame) => frame,
            Next::Timeout => panic!("no frame from the broker within {timeout:?}"),
            Next::Eof => panic!("the broker closed the connection while a frame was awaited"),
        }
    }

    /// The next frame, or `None` on timeout; panics when the server closes the connection.
    pub fn try_recv(&mut self, timeout: Duration) -> Option<Frame> {
        match self.next(timeout) {
            Next::Frame(frame) => Some(frame),
            Next::Timeout => None,
            Next::Eof => panic!("the broker closed the connection while a frame was awaited"),
        }
    }

    /// True when the server closes the connection within `timeout`; frames read meanwhile are
    /// discarded (and printed).
    pub fn recv_eof(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            match self.next(deadline.saturating_duration_since(Instant::now())) {
                Next::Frame(frame) => eprintln!("recv_eof: discarding {frame:?}"),
                Next::Timeout => return false,
                Next::Eof => return true,
            }
        }
    }

    /// SEND without receipt.
    pub fn send(&mut self, dest: &str, body: impl AsRef<[u8]>) {
        self.send_frame("SEND", &[("destination", dest)], body.as_ref());
    }

    /// SEND with a receipt; waits for it (see [`Client::send_frame_with_receipt`]).
    pub fn send_with_receipt(
        &mut self,
        dest: &str,
        body: impl AsRef<[u8]>,
        extra_headers: &[(&str, &str)],
    ) -> Frame {
        let mut headers = vec![("destination", dest)];
        headers.extend_from_slice(extra_headers);
        self.send_frame_with_receipt("SEND", &headers, body.as_ref())
    }

    /// Any frame with a fresh `receipt` header; returns the RECEIPT with the matching
    /// `receipt-id` within [`TIMEOUT`], keeping other frames for `recv`. Panics on ERROR.
    pub fn send_frame_with_receipt(
        &mut self,
        command: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Frame {
        self.receipts += 1;
        let id = format!("rcpt-{}", self.receipts);
        let mut all = headers.to_vec();
        all.push(("receipt", &id));
        self.send_frame(command, &all, body);
        let deadline = Instant::now() + TIMEOUT;
        let mut other = Vec::new();
        let receipt = loop {
            let frame = self.read_frame(deadline).unwrap_or_else(|why| {
                panic!("{why} while waiting for the RECEIPT of {command} (receipt {id}); kept {other:?}")
            });
            match frame.command.as_str() {
                "RECEIPT" if frame.header("receipt-id") == Some(id.as_str()) => break frame,
                "ERROR" => panic!(
                    "ERROR while waiting for the RECEIPT of {command} (receipt {id}): {frame:?}"
                ),
                _ => other.push(frame),
            }
        };
        self.pending.extend(other);
        receipt
    }

    /// SUBSCRIBE without receipt.
    pub fn subscribe(
        &mut self,
        dest: &str,
        id: &str,
        ack_mode: &str,
        extra_headers: &[(&str, &str)],
    ) {
        let headers = subscribe_headers(dest, id, ack_mode, extra_headers);
        self.send_frame("SUBSCRIBE", &headers, b"");
    }

    /// SUBSCRIBE and wait for its receipt, so that messages sent afterwards reach it.
    pub fn subscribe_with_receipt(
        &mut self,
        dest: &str,
        id: &str,
        ack_mode: &str,
        extra_headers: &[(&str, &str)],
    ) {
        let headers = subscribe_headers(dest, id, ack_mode, extra_headers);
        self.send_frame_with_receipt("SUBSCRIBE", &headers, b"");
    }

    pub fn unsubscribe(&mut self, id: &str) {
        self.send_frame("UNSUBSCRIBE", &[("id", id)], b"");
    }

    /// ACK with the 1.2 `id` header (the MESSAGE's `ack` header).
    pub fn ack(&mut self, ack_id: &str) {
        self.send_frame("ACK", &[("id", ack_id)], b"");
    }

    pub fn nack(&mut self, ack_id: &str) {
        self.send_frame("NACK", &[("id", ack_id)], b"");
    }

    /// DISCONNECT with a receipt, waited for.
    pub fn disconnect(&mut self) {
        self.send_frame_with_receipt("DISCONNECT", &[], b"");
    }

    /// CONNECT to 127.0.0.1:`port` as guest/guest (1.2) without panicking: `None` unless
    /// CONNECTED arrives within `timeout` (refused, no answer, ERROR). For failover tests.
    pub fn try_connect(port: u16, timeout: Duration) -> Option<Client> {
        Self::try_connect_addr(SocketAddr::from(([127, 0, 0, 1], port)), timeout)
    }

    /// [`Client::try_connect`] to any address, e.g. a broker inside a network namespace.
    pub fn try_connect_addr(addr: SocketAddr, timeout: Duration) -> Option<Client> {
        let stream = TcpStream::connect_timeout(&addr, timeout).ok()?;
        stream.set_nodelay(true).ok()?;
        let mut client = Client {
            stream: Stream::Plain(stream),
            buf: Vec::new(),
            pending: VecDeque::new(),
            receipts: 0,
        };
        let connect = b"CONNECT\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:guest\n\n\0";
        client.stream.write_all(connect).ok()?;
        match client.read_frame(Instant::now() + timeout) {
            Ok(frame) if frame.command == "CONNECTED" => Some(client),
            _ => None,
        }
    }

    /// Like [`Client::send_frame_with_receipt`] but never panics: `Err` says what went wrong
    /// (write failed, ERROR, closed, timed out). For failover tests.
    pub fn try_with_receipt(
        &mut self,
        command: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout: Duration,
    ) -> Result<Frame, String> {
        self.receipts += 1;
        let id = format!("rcpt-{}", self.receipts);
        let mut all = headers.to_vec();
        all.push(("receipt", &id));
        let mut out = format!("{command}\n").into_bytes();
        for (k, v) in &all {
            out.extend_from_slice(
                format!("{}:{}\n", escape_header(k), escape_header(v)).as_bytes(),
            );
        }
        out.extend_from_slice(format!("content-length:{}\n\n", body.len()).as_bytes());
        out.extend_from_slice(body);
        out.push(0);
        self.stream
            .write_all(&out)
            .map_err(|e| format!("write: {e}"))?;
        let deadline = Instant::now() + timeout;
        let mut other = Vec::new();
        let result = loop {
            match self.read_frame(deadline) {
                Ok(f) if f.command == "RECEIPT" && f.header("receipt-id") == Some(id.as_str()) => {
                    break Ok(f)
                }
                Ok(f) if f.command == "ERROR" => break Err(format!("ERROR {f:?}")),
                Ok(f) => other.push(f),
                Err(end) => break Err(end.to_string()),
            }
        };
        self.pending.extend(other);
        result
    }

    /// The next frame without panicking: `Ok(None)` on timeout, `Err` when the broker closed.
    pub fn try_next(&mut self, timeout: Duration) -> Result<Option<Frame>, String> {
        match self.read_frame(Instant::now() + timeout) {
            Ok(frame) => Ok(Some(frame)),
            Err(ReadEnd::Timeout) => Ok(None),
            Err(ReadEnd::Eof) => Err("the broker closed the connection".to_string()),
        }
    }

    /// The socket, e.g. to shut it down half-way.
    pub fn stream(&self) -> &TcpStream {
        self.stream.tcp()
    }

    fn next(&mut self, timeout: Duration) -> Next {
        match self.read_frame(Instant::now() + timeout) {
            Ok(frame) => Next::Frame(frame),
            Err(ReadEnd::Timeout) => Next::Timeout,
            Err(ReadEnd::Eof) => Next::Eof,
        }
    }

    /// A kept frame, or the next one from the socket before `deadline`.
    fn read_frame(&mut self, deadline: Instant) -> Result<Frame, ReadEnd> {
        if let Some(frame) = self.pending.pop_front() {
            return Ok(frame);
        }
        loop {
            let parsed = parse_frame(&self.buf).unwrap_or_else(|e| {
                panic!(
                    "malformed frame from the broker: {e}; bytes: {:?}",
                    String::from_utf8_lossy(&self.buf)
                )
            });
            if let Some((frame, used)) = parsed {
                self.buf.drain(..used);
                return Ok(frame);
            }
            self.fill(deadline)?;
        }
    }

    /// Reads more bytes into the buffer before `deadline`.
    fn fill(&mut self, deadline: Instant) -> Result<(), ReadEnd> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ReadEnd::Timeout);
        }
        self.stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .expect("set_read_timeout");
        let mut chunk = [0u8; 64 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => Err(ReadEnd::Eof),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                Err(ReadEnd::Timeout)
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => Ok(()),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::ConnectionReset
                        | ErrorKind::ConnectionAborted
                        | ErrorKind::UnexpectedEof
                ) =>
            {
                Err(ReadEnd::Eof)
            }
            Err(e) => panic!("reading from the broker: {e}"),
        }
    }
}

#[derive(Debug)]
enum ReadEnd {
    Timeout,
    Eof,
}

impl fmt::Display for ReadEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReadEnd::Timeout => "timed out",
            ReadEnd::Eof => "the broker closed the connection",
        })
    }
}

fn subscribe_headers<'a>(
    dest: &'a str,
    id: &'a str,
    ack: &'a str,
    extra: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    let mut headers = vec![("destination", dest), ("id", id), ("ack", ack)];
    headers.extend_from_slice(extra);
    headers
}

fn escape_header(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('\r', "\\r")
        .replace('\n', "\\n")
        .replace(':', "\\c")
}

fn unescape_header(s: &str) -> Result<String, String> {
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
            other => return Err(format!("undefined escape \\{other:?} in header {s:?}")),
        });
    }
    Ok(out)
}

/// Parses one frame at the start of `buf` (after any heart-beat EOLs): `Ok(None)` when more
/// bytes are needed, else the frame and how many bytes it used.
fn parse_frame(buf: &[u8]) -> Result<Option<(Frame, usize)>, String> {
    let mut pos = 0;
    loop {
        match (buf.get(pos), buf.get(pos + 1)) {
            (Some(b'\n'), _) => pos += 1,
            (Some(b'\r'), Some(b'\n')) => pos += 2,
            (Some(b'\r'), None) | (None, _) => return Ok(None),
            _ => break,
        }
    }
    let Some((command, mut pos)) = read_line(buf, pos)? else {
        return Ok(None);
    };
    let mut headers = Vec::new();
    loop {
        let Some((line, next)) = read_line(buf, pos)? else {
            return Ok(None);
        };
        pos = next;
        if line.is_empty() {
            break;
        }
        let (k, v) = line
            .split_once(':')
            .ok_or_else(|| format!("{command} header without ':': {line:?}"))?;
        if command == "CONNECTED" {
            headers.push((k.to_string(), v.to_string()));
        } else {
            headers.push((unescape_header(k)?, unescape_header(v)?));
        }
    }
    let length = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .map(|(_, v)| v.clone());
    let (body, end) = match length {
        Some(v) => {
            let n: usize = v
                .trim()
                .parse()
                .map_err(|_| format!("{command}: bad content-length {v:?}"))?;
            if buf.len() < pos + n + 1 {
                return Ok(None);
            }
            if buf[pos + n] != 0 {
                return Err(format!(
                    "{command}: no NUL after the content-length:{n} body"
                ));
            }
            (buf[pos..pos + n].to_vec(), pos + n + 1)
        }
        None => match buf[pos..].iter().position(|&b| b == 0) {
            Some(i) => (buf[pos..pos + i].to_vec(), pos + i + 1),
            None => return Ok(None),
        },
    };
    Ok(Some((
        Frame {
            command,
            headers,
            body,
        },
        end,
    )))
}

/// One line from `pos` without its EOL (LF or CRLF), and where the next line starts.
fn read_line(buf: &[u8], pos: usize) -> Result<Option<(String, usize)>, String> {
    let Some(i) = buf[pos..].iter().position(|&b| b == b'\n') else {
        return Ok(None);
    };
    let line = &buf[pos..pos + i];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let text = String::from_utf8(line.to_vec())
        .map_err(|_| format!("non-UTF-8 line {:?}", String::from_utf8_lossy(line)))?;
    Ok(Some((text, pos + i + 1)))
}
