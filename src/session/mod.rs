//! One client connection: its reader thread (this module: read, decode, execute) and its writer
//! thread (`writer`: writes what is queued in the outbox; started by the outbox when first
//! needed, see `outbox`).
//!
//! The reader parses frames with the codec, turns them into commands, and executes them by
//! sending owned requests: SENDs, acks and commits to the store writer (whose callbacks queue the
//! RECEIPT after commit), subscriptions and acks to the router (waiting for its answer on this
//! session's reply channel). Every wait is bounded and rechecks shutdown. Bad input gets an ERROR
//! naming the problem, then the connection closes; nothing of a refused frame reaches the store.
//! Submodule `handlers` executes each command.

mod handlers;
pub mod writer;

use crate::codec::{Decoded, Decoder, Frame, Limits, Version};
use crate::config::Config;
use crate::message::now_ms;
use crate::outbox::{outbox, Outbox, StartWriter};
use crate::router::{Answer, ConnId, RouterMsg};
use crate::shutdown::Shutdown;
use crate::store::{StoreError, StoreOp};
use crate::transport::Transport;
use crossbeam_channel::{Receiver, Sender};
use std::collections::HashMap;
use std::io::{ErrorKind, Read};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use writer::WriterSettings;

/// What every session shares.
#[derive(Clone)]
pub struct Context {
    pub config: Arc<Config>,
    /// The decoder's limits: the configured ones, and the store's bound on a SEND
    /// (`Limits::max_send`, from the database's `max_allowed_packet`).
    pub frame_limits: Limits,
    pub router: Sender<RouterMsg>,
    pub store: Sender<StoreOp>,
    pub shutdown: Arc<Shutdown>,
    /// The election's view: CONNECT is refused while the lock is not known to be alive.
    pub role: Arc<crate::election::Role>,
    /// Producer flow control: a SEND waits here before it goes to the store.
    pub flow: Arc<crate::flow_control::FlowControl>,
    /// Checks CONNECT's credentials and each SEND's and SUBSCRIBE's permission.
    pub auth: Arc<crate::auth::Authenticator>,
}

/// How long any single wait lasts before shutdown is checked again.
const TICK: Duration = Duration::from_millis(200);
/// A connection's read buffer starts at this size and grows up to the max under load.
const READ_BUFFER_MIN: usize = 1024;
const READ_BUFFER_MAX: usize = 64 * 1024;
/// After an ERROR, how long unread input is drained so the peer gets the ERROR, not a reset.
const LINGER: Duration = Duration::from_secs(2);

/// Whether the reader goes on after a frame.
#[derive(PartialEq, Eq)]
enum Flow {
    Continue,
    Close,
}

struct Session {
    id: ConnId,
    ctx: Context,
    /// The reader's side of the connection.
    stream: Transport,
    /// When the connection was accepted: the CONNECT timeout counts from here.
    accepted: Instant,
    outbox: Outbox,
    settings: Arc<WriterSettings>,
    decoder: Decoder,
    /// None until CONNECT succeeded.
    version: Option<Version>,
    /// The configured user CONNECT logged in as; None when no users are configured.
    user: Option<String>,
    client_id: Option<String>,
    /// Open transactions: their buffered SENDs and those SENDs' body bytes.
    transactions: HashMap<String, (Vec<crate::message::Message>, usize)>,
    /// Client heart-beats expected at least this often (twice the agreed interval); None = never.
    silence_limit: Option<Duration>,
    reply_tx: Sender<Answer>,
    reply_rx: Receiver<Answer>,
    store_tx: Sender<Result<(), StoreError>>,
    store_rx: Receiver<Result<(), StoreError>>,
    /// Epoch milliseconds of the last frame read (not heart-beats), for the admin's
    /// connection list (`ConnInfo::last_frame`).
    last_frame: Arc<AtomicI64>,
}

/// Serve one accepted connection (TLS already handshaken) on this thread until it closes.
pub fn serve(id: ConnId, stream: Transport, accepted: Instant, ctx: Context) {
    let (settings, outbox) = match new_outbox(&stream, ctx.config.slow_consumer) {
        Ok(parts) => parts,
        Err(e) => return log::warn!("connection {id}: could not start its writer: {e}"),
    };
    let (reply_tx, reply_rx) = crossbeam_channel::bounded(1);
    let (store_tx, store_rx) = crossbeam_channel::bounded(1);
    let ctx_limits = ctx.frame_limits;
    let mut session = Session {
        id,
        ctx,
        stream,
        accepted,
        outbox,
        settings,
        decoder: Decoder::new(ctx_limits),
        version: None,
        user: None,
        client_id: None,
        transactions: HashMap::new(),
        silence_limit: None,
        reply_tx,
        reply_rx,
        store_tx,
        store_rx,
        last_frame: Arc::new(AtomicI64::new(now_ms())),
    };
    session.read_loop();
    if session.version.is_some() {
        let _ = session
            .ctx
            .router
            .send(RouterMsg::Disconnected { conn: id });
    }
    session.outbox.close();
    let writer = session.outbox.take_writer();
    drop(session);
    if let Some(writer) = writer {
        let _ = writer.join();
    }
}

/// The connection's outbox, whose writer thread starts when first needed (at once over TLS).
fn new_outbox(
    stream: &Transport,
    slow_consumer: Duration,
) -> std::io::Result<(Arc<WriterSettings>, Outbox)> {
    let direct = matches!(stream, Transport::Plain(_));
    let settings = Arc::new(WriterSettings::default());
    let write_half = stream.try_clone()?;
    let thread_settings = settings.clone();
    let start: StartWriter = Box::new(move |inbox| {
        std::thread::Builder::new()
            .name("conn-writer".to_string())
            .spawn(move || writer::run(write_half, inbox, thread_settings, slow_consumer))
    });
    let outbox = outbox(stream.socket().try_clone()?, direct, start)?;
    Ok((settings, outbox))
}

impl Session {
    fn read_loop(&mut self) {
        let _ = self.stream.socket().set_read_timeout(Some(TICK));
        let started = self.accepted;
        let mut last_read = Instant::now();
        // Small while the client is quiet (most of a broker's connections), doubled up to
        // `READ_BUFFER_MAX` whenever a read fills it.
        let mut buf = vec![0u8; READ_BUFFER_MIN];
        loop {
            if self.ctx.shutdown.is_stopping() {
                return;
            }
            match self.stream.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    last_read = Instant::now();
                    self.decoder.feed(&buf[..n]);
                    if n == buf.len() && buf.len() < READ_BUFFER_MAX {
                        buf.resize(buf.len() * 2, 0);
                    }
                    if self.decode_all() == Flow::Close {
                        return;
                    }
                    // Heart-beat EOLs alone must not keep an unauthenticated socket open.
                    if self.timed_out(started, last_read) {
                        return;
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    if self.timed_out(started, last_read) {
                        return;
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }

    /// Every frame of what was read. `last_frame` is stamped once per read, at its first frame
    /// (the frames of one read arrived together), not once per frame.
    fn decode_all(&mut self) -> Flow {
        let mut stamped = false;
        loop {
            match self.decoder.decode() {
                Ok(None) => return Flow::Continue,
                Ok(Some(Decoded::HeartBeat)) => {}
                Ok(Some(Decoded::Frame(frame))) => {
                    if !stamped {
                        self.last_frame.store(now_ms(), Ordering::Relaxed);
                        stamped = true;
                    }
                    if self.handle(frame) == Flow::Close {
                        return Flow::Close;
                    }
                }
                Err(e) => return self.refuse(&e.to_string(), None),
            }
        }
    }

    /// CONNECT not sent in time, or a connected client silent past twice its heart-beat.
    fn timed_out(&mut self, started: Instant, last_read: Instant) -> bool {
        if self.version.is_none() && started.elapsed() > self.ctx.config.connect_timeout {
            let limit = self.ctx.config.connect_timeout.as_millis();
            self.refuse(&format!("no CONNECT frame within {limit} ms"), None);
            return true;
        }
        if let Some(limit) = self.silence_limit {
            if last_read.elapsed() > limit {
                let ms = limit.as_millis();
                self.refuse(
                    &format!("no heart-beat or frame from the client for {ms} ms"),
                    None,
                );
                return true;
            }
        }
        false
    }

    /// Send an ERROR naming the problem (with `receipt-id` when the frame asked for a receipt),
    /// close, and drain what the client still sends for a moment so it reads the ERROR.
    fn refuse(&mut self, problem: &str, receipt: Option<&str>) -> Flow {
        log::info!("connection {}: {problem}; closing it", self.id);
        // Before CONNECTED no version is agreed and the writer does not escape (1.0 rules), but
        // the client may read 1.1+ rules, where a lone backslash is an invalid escape that makes
        // the whole ERROR unreadable. Doubled, it reads exactly under 1.1+ and visibly under 1.0.
        let text = |s: &str| match self.version {
            Some(_) => s.to_owned(),
            None => s.replace('\\', "\\\\"),
        };
        let mut frame = Frame::new("ERROR")
            .with_header("message", &text(problem))
            .with_header("content-type", "text/plain")
            .with_header("content-length", &problem.len().to_string());
        if let Some(receipt) = receipt {
            frame = frame.with_header("receipt-id", &text(receipt));
        }
        if self.reserve() {
            let frame = frame.with_body(problem.as_bytes().to_vec());
            self.outbox.control(&frame, self.control_version());
        }
        self.outbox.close();
        let deadline = Instant::now() + LINGER;
        let mut sink = [0u8; 8192];
        while Instant::now() < deadline {
            match self.stream.read(&mut sink) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => break,
            }
        }
        Flow::Close
    }

    /// The version control frames are encoded for: the agreed one, 1.0 before CONNECT.
    fn control_version(&self) -> Version {
        self.version.unwrap_or(Version::V1_0)
    }

    /// Take a control credit (see `outbox`), waiting while the client does not read its replies.
    fn reserve(&self) -> bool {
        loop {
            match self.outbox.reserve(TICK) {
                Some(true) => return true,
                Some(false) if !self.ctx.shutdown.is_stopping() => {}
                _ => return false,
            }
        }
    }

    /// Queue a RECEIPT now (for frames whose effect is already done).
    fn receipt_now(&self, receipt: Option<&str>) -> Flow {
        if let Some(id) = receipt {
            if !self.reserve()
                || !self
                    .outbox
                    .control(&receipt_frame(id), self.control_version())
            {
                return Flow::Close;
            }
        }
        Flow::Continue
    }

    /// Ask the router and wait for its answer. None when the broker is stopping.
    fn ask(&self, msg: RouterMsg) -> Option<Answer> {
        self.ctx.router.send(msg).ok()?;
        let answer = loop {
            match self.reply_rx.recv_timeout(TICK) {
                Ok(answer) => break answer,
                Err(_) if self.ctx.shutdown.is_stopping() => return None,
                Err(_) => {}
            }
        };
        Some(answer)
    }

    /// Hand an operation to the store writer; blocks while it is busy (producer flow control).
    fn to_store(&self, mut op: StoreOp) -> bool {
        loop {
            match self.ctx.store.send_timeout(op, TICK) {
                Ok(()) => return true,
                Err(crossbeam_channel::SendTimeoutError::Timeout(back)) => {
                    if self.ctx.shutdown.is_stopping() {
                        return false;
                    }
                    op = back;
                }
                Err(crossbeam_channel::SendTimeoutError::Disconnected(_)) => return false,
            }
        }
    }

    /// Wait for a store callback that reports to this session.
    fn await_store(&self) -> Option<Result<(), StoreError>> {
        loop {
            match self.store_rx.recv_timeout(TICK) {
                Ok(result) => return Some(result),
                Err(_) if self.ctx.shutdown.is_stopping() => return None,
                Err(_) => {}
            }
        }
    }
}

fn receipt_frame(id: &str) -> Frame {
    Frame::new("RECEIPT").with_header("receipt-id", id)
}
