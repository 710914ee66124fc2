//! A client connection's byte stream: plain TCP, or TLS (rustls with the ring provider) over TCP.
//!
//! Owns loading the listeners' certificates and keys (`server_config`, called once by `main`:
//! the STOMP TLS listener's and the status listener's), the TLS handshake (`accept_tls`, run on
//! the connection's reader thread before its session starts, bounded by the CONNECT timeout; the
//! status listener's request threads use it too), and the stream both session threads use.
//!
//! A session reads on its reader thread and writes on its writer thread, each with its own clone
//! of the socket. A rustls connection cannot be split in two, so the TLS variant keeps it behind
//! a mutex shared by both clones, held only to encrypt or decrypt, never during socket I/O (a
//! client that does not read while it sends must not stop the broker from reading, as over
//! plain TCP):
//! - the reader reads ciphertext from its socket without the lock, then locks to feed it to
//!   rustls and take the plaintext;
//! - the writer locks, hands rustls the plaintext, takes every record rustls has queued (its
//!   own, and those the reader's input caused: alerts, key update answers), unlocks, and writes
//!   them to the socket. Only the writer writes, so records leave in the order rustls made them;
//!   it also flushes when idle, and at close (after close_notify).
//!
//! Socket timeouts keep their plain-TCP meaning: the reader's read timeout ticks its loop, the
//! writer's write timeout is the slow-consumer limit. Calls only rustls and the standard library.

use crate::config::Config;
use crate::shutdown::Shutdown;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ServerConfig, ServerConnection};
use std::fmt;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown as Both, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long one handshake read waits before the deadline and shutdown are checked again.
const TICK: Duration = Duration::from_millis(200);
/// Ciphertext read from the socket at once.
const READ_CHUNK: usize = 64 * 1024;

/// Why the TLS settings cannot be built; each names the config key and the file.
#[derive(Debug)]
pub enum TlsError {
    /// A listener with TLS lacks one of the keys it needs (which ones go together).
    Incomplete(&'static str),
    /// The file cannot be read.
    Read {
        key: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// The file holds no PEM item of the kind wanted (`certificate` or `private key`).
    Missing {
        key: &'static str,
        path: PathBuf,
        kind: &'static str,
    },
    /// The file's PEM cannot be parsed as that kind.
    BadPem {
        key: &'static str,
        path: PathBuf,
        kind: &'static str,
        source: rustls::pki_types::pem::Error,
    },
    /// rustls refused the certificate with the key (they do not belong together, say).
    Refused {
        cert: (&'static str, PathBuf),
        key: (&'static str, PathBuf),
        source: Box<rustls::Error>,
    },
    /// rustls could not set up a server configuration at all.
    Setup(Box<rustls::Error>),
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Incomplete(why) => f.write_str(why),
            TlsError::Read { key, path, source } => {
                write!(f, "{key} {}: cannot read it: {source}", path.display())
            }
            TlsError::Missing { key, path, kind } => {
                let marker = match *kind {
                    "certificate" => "CERTIFICATE",
                    _ => "PRIVATE KEY",
                };
                write!(
                    f,
                    "{key} {}: holds no PEM {kind} (-----BEGIN {marker}-----)",
                    path.display()
                )
            }
            TlsError::BadPem {
                key,
                path,
                kind,
                source,
            } => write!(f, "{key} {}: not a PEM {kind}: {source}", path.display()),
            TlsError::Refused { cert, key, source } => write!(
                f,
                "{} {} with {} {}: {source}",
                cert.0,
                cert.1.display(),
                key.0,
                key.1.display()
            ),
            TlsError::Setup(e) => write!(f, "TLS setup: {e}"),
        }
    }
}

impl std::error::Error for TlsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TlsError::Read { source, .. } => Some(source),
            TlsError::BadPem { source, .. } => Some(source),
            TlsError::Refused { source, .. } | TlsError::Setup(source) => Some(source.as_ref()),
            TlsError::Incomplete(_) | TlsError::Missing { .. } => None,
        }
    }
}

/// Why a connection's TLS handshake did not complete; the connection is dropped.
#[derive(Debug)]
pub enum HandshakeError {
    /// Not done within the CONNECT timeout.
    Timeout(Duration),
    /// The client closed the connection first.
    Closed,
    /// The broker is stopping.
    Stopping,
    /// rustls could not start a connection.
    Setup(rustls::Error),
    /// The client's TLS was refused (an alert was sent as far as it listens).
    Tls(rustls::Error),
    /// The socket failed.
    Io(io::Error),
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::Timeout(timeout) => write!(
                f,
                "no TLS handshake within {} ms (the CONNECT timeout)",
                timeout.as_millis()
            ),
            HandshakeError::Closed => f.write_str("the client closed during the TLS handshake"),
            HandshakeError::Stopping => f.write_str("the broker is stopping"),
            HandshakeError::Setup(e) => write!(f, "TLS setup: {e}"),
            HandshakeError::Tls(e) => write!(f, "TLS handshake failed: {e}"),
            HandshakeError::Io(e) => write!(f, "TLS handshake failed: {e}"),
        }
    }
}

impl std::error::Error for HandshakeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            HandshakeError::Setup(e) | HandshakeError::Tls(e) => Some(e),
            HandshakeError::Io(e) => Some(e),
            HandshakeError::Timeout(_) | HandshakeError::Closed | HandshakeError::Stopping => None,
        }
    }
}

/// The TLS settings of both listeners that can have them, built once at start.
#[derive(Clone, Default)]
pub struct TlsSettings {
    /// `stomp_tls_listen`'s, from `tls_cert` and `tls_key`.
    pub stomp: Option<Arc<ServerConfig>>,
    /// The status listener's, from `status_tls_cert` and `status_tls_key`: when set, it speaks
    /// HTTPS only (admin passwords go in HTTP Basic).
    pub status: Option<Arc<ServerConfig>>,
}

/// Load the certificates and keys the configuration names; Err names the key and the file.
pub fn server_config(config: &Config) -> Result<TlsSettings, TlsError> {
    let stomp = match (&config.stomp_tls_listen, &config.tls_cert, &config.tls_key) {
        (None, _, _) => None,
        (Some(_), Some(cert), Some(key)) => Some(build(("tls_cert", cert), ("tls_key", key))?),
        (Some(_), _, _) => {
            return Err(TlsError::Incomplete(
                "stomp_tls_listen is set, so tls_cert and tls_key must be too",
            ))
        }
    };
    let status = match (&config.status_tls_cert, &config.status_tls_key) {
        (None, None) => None,
        (Some(cert), Some(key)) => Some(build(("status_tls_cert", cert), ("status_tls_key", key))?),
        _ => {
            return Err(TlsError::Incomplete(
                "set both status_tls_cert and status_tls_key, or neither",
            ))
        }
    };
    Ok(TlsSettings { stomp, status })
}

/// A server configuration from the certificate chain and key in these (key name, file)s.
fn build(
    (cert_key, cert_path): (&'static str, &Path),
    (key_key, key_path): (&'static str, &Path),
) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = load_certs(cert_key, cert_path)?;
    let key = load_key(key_key, key_path)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(Box::new(e)))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|source| TlsError::Refused {
            cert: (cert_key, cert_path.to_path_buf()),
            key: (key_key, key_path.to_path_buf()),
            source: Box::new(source),
        })?;
    Ok(Arc::new(server))
}

fn read_pem(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        key,
        path: path.to_path_buf(),
        source,
    })
}

fn load_certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let kind = "certificate";
    let pem = read_pem(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::BadPem {
            key,
            path: path.to_path_buf(),
            kind,
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::Missing {
            key,
            path: path.to_path_buf(),
            kind,
        });
    }
    Ok(certs)
}

fn load_key(key: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let kind = "private key";
    let pem = read_pem(key, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::Missing {
            key,
            path: path.to_path_buf(),
            kind,
        },
        source => TlsError::BadPem {
            key,
            path: path.to_path_buf(),
            kind,
            source,
        },
    })
}

/// One side (reader or writer) of a connection's stream.
pub enum Transport {
    Plain(TcpStream),
    Tls(TlsStream),
}

/// One side of a TLS connection: its own socket clone, the shared rustls state, and ciphertext
/// on its way: on the reader's side read but not yet taken by rustls, on the writer's side taken
/// from rustls and not yet written.
pub struct TlsStream {
    socket: TcpStream,
    conn: Arc<Mutex<ServerConnection>>,
    incoming: Vec<u8>,
    /// `incoming[taken..]` is still to be fed to rustls.
    taken: usize,
    outgoing: Vec<u8>,
}

/// Run the TLS handshake on a socket accepted at `accepted`, until `timeout` (the CONNECT
/// timeout) has passed since then, or shutdown. Err says why the connection is dropped.
pub fn accept_tls(
    socket: TcpStream,
    config: Arc<ServerConfig>,
    (accepted, timeout): (Instant, Duration),
    shutdown: &Shutdown,
) -> Result<Transport, HandshakeError> {
    let mut conn = ServerConnection::new(config).map_err(HandshakeError::Setup)?;
    let deadline = accepted + timeout;
    let failed = |e: io::Error| match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => HandshakeError::Timeout(timeout),
        _ => HandshakeError::Io(e),
    };
    while conn.is_handshaking() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HandshakeError::Timeout(timeout));
        }
        if shutdown.is_stopping() {
            return Err(HandshakeError::Stopping);
        }
        let _ = socket.set_read_timeout(Some(left.min(TICK)));
        let _ = socket.set_write_timeout(Some(left));
        if conn.wants_write() {
            conn.write_tls(&mut &socket).map_err(failed)?;
            continue;
        }
        match conn.read_tls(&mut &socket) {
            Ok(0) => return Err(HandshakeError::Closed),
            Ok(_) => {
                if let Err(e) = conn.process_new_packets() {
                    // Tell the client why (an alert), as far as it listens.
                    let _ = conn.write_tls(&mut &socket);
                    return Err(HandshakeError::Tls(e));
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(failed(e)),
        }
    }
    while conn.wants_write() {
        conn.write_tls(&mut &socket).map_err(failed)?;
    }
    Ok(Transport::Tls(TlsStream::new(
        socket,
        Arc::new(Mutex::new(conn)),
    )))
}

impl Transport {
    /// Another side of the same connection: a socket clone, the same TLS state.
    pub fn try_clone(&self) -> io::Result<Transport> {
        Ok(match self {
            Transport::Plain(socket) => Transport::Plain(socket.try_clone()?),
            Transport::Tls(tls) => {
                Transport::Tls(TlsStream::new(tls.socket.try_clone()?, tls.conn.clone()))
            }
        })
    }

    /// The TCP socket under it: for timeouts, and for cutting the connection.
    pub fn socket(&self) -> &TcpStream {
        match self {
            Transport::Plain(socket) => socket,
            Transport::Tls(tls) => &tls.socket,
        }
    }

    /// After the last frame (writer side): tell a TLS peer the session ends (close_notify),
    /// then close the sending half so the peer sees EOF.
    pub fn close_write(&mut self) -> io::Result<()> {
        if let Transport::Tls(tls) = self {
            lock(&tls.conn)?.send_close_notify();
            tls.send_queued()?;
        }
        self.socket().shutdown(Both::Write)
    }
}

fn lock(conn: &Mutex<ServerConnection>) -> io::Result<MutexGuard<'_, ServerConnection>> {
    conn.lock()
        .map_err(|_| io::Error::other("TLS state poisoned by a panic"))
}

impl TlsStream {
    fn new(socket: TcpStream, conn: Arc<Mutex<ServerConnection>>) -> TlsStream {
        TlsStream {
            socket,
            conn,
            incoming: Vec::new(),
            taken: 0,
            outgoing: Vec::new(),
        }
    }

    /// Plaintext into `buf`: what rustls holds, else ciphertext fed from `incoming`, else read
    /// from the socket (a read timeout surfaces as WouldBlock/TimedOut, as for plain TCP).
    fn read_plain(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            {
                let mut conn = lock(&self.conn)?;
                match conn.reader().read(buf) {
                    // 0: the client ended the TLS session (close_notify).
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    // UnexpectedEof: TCP closed without close_notify.
                    Err(e) => return Err(e),
                }
                if self.taken < self.incoming.len() && conn.wants_read() {
                    let mut rest = &self.incoming[self.taken..];
                    self.taken += conn.read_tls(&mut rest)?;
                    // Records this causes (alerts, key update answers) go out with the writer's.
                    conn.process_new_packets()
                        .map_err(|e| io::Error::new(ErrorKind::InvalidData, e))?;
                    continue;
                }
            }
            self.fill()?;
        }
    }

    /// Read the next ciphertext from the socket, without holding the lock.
    fn fill(&mut self) -> io::Result<()> {
        if self.taken < self.incoming.len() {
            // rustls takes nothing more and holds no plaintext: it wants no more input.
            return Err(io::Error::new(ErrorKind::InvalidData, "TLS input stalled"));
        }
        self.incoming.resize(READ_CHUNK, 0);
        self.taken = 0;
        match (&self.socket).read(&mut self.incoming) {
            Ok(0) => {
                self.incoming.clear();
                // End of input: rustls then reports a clean or an unclean close.
                let mut conn = lock(&self.conn)?;
                conn.read_tls(&mut io::empty())?;
                conn.process_new_packets()
                    .map_err(|e| io::Error::new(ErrorKind::InvalidData, e))?;
                Ok(())
            }
            Ok(n) => {
                self.incoming.truncate(n);
                Ok(())
            }
            Err(e) => {
                self.incoming.clear();
                Err(e)
            }
        }
    }

    fn write_plain(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = lock(&self.conn)?.writer().write(data)?;
        self.send_queued()?;
        Ok(n)
    }

    /// Take every record rustls has queued, then write them without holding the lock (bounded
    /// by the socket's write timeout). Writer side only.
    fn send_queued(&mut self) -> io::Result<()> {
        {
            let mut conn = lock(&self.conn)?;
            while conn.wants_write() {
                conn.write_tls(&mut self.outgoing)?;
            }
        }
        let written = (&self.socket).write_all(&self.outgoing);
        self.outgoing.clear();
        written
    }
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(socket) => socket.read(buf),
            Transport::Tls(tls) => tls.read_plain(buf),
        }
    }
}

impl Write for Transport {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(socket) => socket.write(data),
            Transport::Tls(tls) => tls.write_plain(data),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(socket) => socket.flush(),
            Transport::Tls(tls) => tls.send_queued(),
        }
    }
}
