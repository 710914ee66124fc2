//! One blocking STOMP 1.2 connection over TCP: CONNECT/CONNECTED, writing frames, reading
//! frames with the socket's read timeout (so callers can check their stop flags), a
//! non-blocking peek for ERROR frames, and DISCONNECT with a receipt.

use crate::frame::{Decoder, Frame};
use std::io::{self, ErrorKind, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// How long to wait for the TCP connection, CONNECTED, and a write to drain.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// Where and as whom to connect.
#[derive(Clone, Debug)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub login: String,
    pub passcode: String,
}

pub struct Connection {
    stream: TcpStream,
    decoder: Decoder,
    read_buf: Vec<u8>,
    /// The protocol version from CONNECTED (`1.0` when absent).
    pub version: String,
}

/// What [`Connection::recv`] got.
pub enum Recv {
    Frame(Frame),
    /// The read timeout passed with no complete frame.
    Idle,
}

impl Connection {
    /// TCP connect, CONNECT (accept-version 1.2, no heart-beats), and CONNECTED. `Err` says
    /// why not, e.g. the `message` of an ERROR frame.
    pub fn open(target: &Target) -> Result<Connection, String> {
        let addr = (target.host.as_str(), target.port)
            .to_socket_addrs()
            .map_err(|e| format!("resolve {}: {e}", target.host))?
            .next()
            .ok_or_else(|| format!("resolve {}: no address", target.host))?;
        let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        stream
            .set_write_timeout(Some(WRITE_TIMEOUT))
            .map_err(|e| e.to_string())?;
        let mut conn = Connection {
            stream,
            decoder: Decoder::default(),
            read_buf: vec![0; 64 * 1024],
            version: String::new(),
        };
        let connect = Frame::new("CONNECT")
            .header("accept-version", "1.2")
            .header("host", &target.host)
            .header("login", &target.login)
            .header("passcode", &target.passcode)
            .header("heart-beat", "0,0");
        conn.send(&connect)
            .map_err(|e| format!("write CONNECT: {e}"))?;
        let reply = conn
            .recv_until(Instant::now() + CONNECT_TIMEOUT)
            .map_err(|e| format!("waiting for CONNECTED: {e}"))?;
        match reply.command.as_str() {
            "CONNECTED" => {
                conn.version = reply.get("version").unwrap_or("1.0").to_string();
                Ok(conn)
            }
            "ERROR" => Err(format!("CONNECT refused: {}", reply.error_text())),
            other => Err(format!("CONNECT answered with {other}")),
        }
    }

    pub fn send(&mut self, frame: &Frame) -> io::Result<()> {
        self.stream.write_all(&frame.encode())
    }

    /// How long [`Connection::recv`] blocks at most.
    pub fn set_read_timeout(&self, timeout: Duration) -> io::Result<()> {
        self.stream.set_read_timeout(Some(timeout))
    }

    /// The next frame, or [`Recv::Idle`] when the read timeout passed. `Err` when the socket
    /// failed or closed (`UnexpectedEof`) or the bytes are not STOMP (`InvalidData`).
    pub fn recv(&mut self) -> io::Result<Recv> {
        loop {
            if let Some(frame) = self.decoder.next_frame().map_err(invalid)? {
                return Ok(Recv::Frame(frame));
            }
            match self.stream.read(&mut self.read_buf) {
                Ok(0) => return Err(closed()),
                Ok(n) => self.decoder.extend(&self.read_buf[..n]),
                Err(e) if is_timeout(&e) => return Ok(Recv::Idle),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// The next frame before `deadline` (read timeouts are retried until then).
    pub fn recv_until(&mut self, deadline: Instant) -> io::Result<Frame> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(ErrorKind::TimedOut, "no frame in time"));
            }
            self.set_read_timeout(left.min(Duration::from_secs(1)))?;
            if let Recv::Frame(frame) = self.recv()? {
                return Ok(frame);
            }
        }
    }

    /// A frame already received, without blocking: how a producer that awaits no receipts
    /// notices an ERROR frame.
    pub fn poll(&mut self) -> io::Result<Option<Frame>> {
        if let Some(frame) = self.decoder.next_frame().map_err(invalid)? {
            return Ok(Some(frame));
        }
        self.stream.set_nonblocking(true)?;
        let read = self.stream.read(&mut self.read_buf);
        self.stream.set_nonblocking(false)?;
        match read {
            Ok(0) => Err(closed()),
            Ok(n) => {
                self.decoder.extend(&self.read_buf[..n]);
                self.decoder.next_frame().map_err(invalid)
            }
            Err(e) if is_timeout(&e) || e.kind() == ErrorKind::Interrupted => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// DISCONNECT with a receipt, waiting up to `wait` for it (so that everything sent before
    /// was processed), then close. Frames arriving meanwhile are dropped.
    pub fn disconnect(mut self, wait: Duration) -> Result<(), String> {
        let frame = Frame::new("DISCONNECT").header("receipt", "bye");
        self.send(&frame)
            .map_err(|e| format!("write DISCONNECT: {e}"))?;
        let deadline = Instant::now() + wait;
        loop {
            let f = self
                .recv_until(deadline)
                .map_err(|e| format!("waiting for the DISCONNECT receipt: {e}"))?;
            match f.command.as_str() {
                "RECEIPT" if f.get("receipt-id") == Some("bye") => return Ok(()),
                "ERROR" => return Err(format!("ERROR at DISCONNECT: {}", f.error_text())),
                _ => {}
            }
        }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

fn invalid(why: String) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, why)
}

fn closed() -> io::Error {
    io::Error::new(ErrorKind::UnexpectedEof, "the broker closed the connection")
}
