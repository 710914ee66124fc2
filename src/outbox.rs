//! A connection's outbox: the bounded queue in front of its writer thread, and its room rules.
//!
//! Three kinds of sender share one queue so frames leave in the order they were decided:
//! - the router puts MESSAGE deliveries, only while `has_room()` (a window of frames and bytes);
//!   a queue consumer without room simply gets nothing until the writer catches up;
//! - the session's reader puts control frames (CONNECTED, RECEIPT, ERROR), and so do store
//!   callbacks (a RECEIPT after commit). Each control frame is first `reserve`d: a credit taken
//!   from a bounded pool that the writer returns once the frame is written. A client that sends
//!   frames with receipts faster than it reads them therefore stops being read (TCP pushes back)
//!   instead of growing this queue, and a reserved frame always finds room.
//!
//! A control frame skips the queue when it can (`control`, `control_encoded`): if the connection
//! is plain TCP, nothing is queued and the writer thread sleeps (so everything it took is
//! flushed) or was never started, the caller writes the frame itself, without blocking
//! (`MSG_DONTWAIT`), holding the queue's lock so nothing can overtake it. That saves waking the
//! writer thread for every receipted SEND (perf: 20% less CPU per message with 16 producers).
//! A socket without room for it, or for all of it, gets the rest queued as usual.
//!
//! The writer thread is started by whoever first queues something (`StartWriter`), at once for
//! TLS (whose records only the writer may write), or when the session asks (heart-beats). An
//! idle connection, or one that only sends and reads its RECEIPTs, never has one: one thread
//! per connection instead of two (1,000 idle connections: ~12 KiB less each).
//!
//! The queue itself (`Line`) is a deque behind a mutex and a condition variable: it allocates
//! as it fills (a bounded channel would allocate all its slots up front, ~45 KiB per idle
//! connection), and its writer sleeps at once when it is empty (a crossbeam channel spins and
//! yields first: with a writer thread per connection waiting most of the time, that was most
//! of the broker's CPU under load). The window and the credits bound it to the message window
//! plus the control credits plus one `Close`.

use crate::codec::{encode, Frame, Version};
use crate::message::Delivery;
use crossbeam_channel::RecvTimeoutError;
use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// MESSAGE frames queued for one connection at most.
pub const MESSAGE_WINDOW: usize = 256;
/// Bytes of MESSAGE bodies queued for one connection before it has no room (one message always fits).
pub const BYTE_WINDOW: usize = 4 * 1024 * 1024;
/// Control frames reserved and not yet written, per connection.
pub const CONTROL_CREDITS: usize = 256;

/// What the writer thread is asked to do.
#[derive(Debug)]
pub enum Outgoing {
    /// An encoded control frame (CONNECTED, RECEIPT, ERROR, or what is left of one); returns a
    /// credit once written.
    Encoded(Vec<u8>),
    Message(Delivery),
    /// Flush, then close the sending half (the peer sees EOF after the last frame).
    Close,
}

/// Starts a connection's writer thread on its inbox (`session::writer::run`).
pub type StartWriter = Box<dyn FnOnce(Inbox) -> io::Result<JoinHandle<()>> + Send>;

/// The writer thread's life.
#[derive(Default)]
enum WriterThread {
    /// Nothing needed it yet.
    NotStarted(StartWriter),
    Running(JoinHandle<()>),
    /// Taken for joining, failed to start, or the connection closed without one.
    #[default]
    Gone,
}

/// The queue between a connection's senders and its writer thread.
struct Line {
    state: Mutex<LineState>,
    /// The writer waits here for items.
    ready: Condvar,
    /// A reader waits here for a control credit.
    credit: Condvar,
    /// The writer is gone (its inbox dropped) or was never needed before the close: nothing
    /// more is taken. Outside the lock: an inbox is dropped under it when its thread cannot
    /// start.
    closed: AtomicBool,
    /// Plain TCP: control frames may be written by their caller (see the module doc).
    direct: bool,
    /// Bytes of MESSAGE bodies queued.
    queued_bytes: AtomicUsize,
    /// MESSAGE frames the writer has written to the socket so far.
    written: AtomicU64,
    /// The connection's socket: direct writes, shutdown.
    socket: TcpStream,
}

#[derive(Default)]
struct LineState {
    items: VecDeque<Outgoing>,
    /// `Outbox` handles alive; when none is left the writer drains what is queued and stops.
    senders: usize,
    /// The writer sleeps on `ready`.
    waiting: bool,
    /// Control credits taken and not yet given back (at most `CONTROL_CREDITS`).
    reserved: usize,
    /// Callers of `reserve` sleeping on `credit`.
    credit_waiters: usize,
    writer: WriterThread,
}

impl Line {
    fn lock(&self) -> MutexGuard<'_, LineState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// A control frame was written: its credit goes back.
    fn give_back(&self, mut state: MutexGuard<'_, LineState>) {
        state.reserved = state.reserved.saturating_sub(1);
        let wake = state.credit_waiters > 0;
        drop(state);
        if wake {
            self.credit.notify_one();
        }
    }

    /// False when the writer is gone.
    fn push(self: &Arc<Self>, item: Outgoing) -> bool {
        let state = self.lock();
        self.push_locked(state, item)
    }

    /// Queue `item` under the lock already taken, starting the writer if it never ran, and
    /// wake it if it sleeps. False when the writer is gone.
    fn push_locked(self: &Arc<Self>, mut state: MutexGuard<'_, LineState>, item: Outgoing) -> bool {
        if self.closed() || !self.start(&mut state) {
            return false;
        }
        state.items.push_back(item);
        let wake = state.waiting;
        drop(state);
        if wake {
            self.ready.notify_one();
        }
        true
    }

    /// Start the writer thread unless it was started before. False when it cannot start (the
    /// connection is cut: its reader ends).
    fn start(self: &Arc<Self>, state: &mut LineState) -> bool {
        let start = match std::mem::take(&mut state.writer) {
            WriterThread::NotStarted(start) => start,
            other => {
                state.writer = other;
                return true;
            }
        };
        match start(Inbox { line: self.clone() }) {
            Ok(thread) => {
                state.writer = WriterThread::Running(thread);
                true
            }
            Err(e) => {
                log::warn!("could not start a connection's writer thread: {e}; closing it");
                self.closed.store(true, Ordering::SeqCst);
                let _ = self.socket.shutdown(Shutdown::Both);
                false
            }
        }
    }
}

/// The sending side, cloned into the router and into store callbacks.
pub struct Outbox {
    line: Arc<Line>,
}

/// The writer's side.
pub struct Inbox {
    line: Arc<Line>,
}

/// A new outbox for `socket` (a clone of the connection's stream, used to shut it down and, if
/// `direct` (plain TCP), to write control frames directly). `start` starts its writer thread
/// when first needed; at once when not `direct`.
pub fn outbox(socket: TcpStream, direct: bool, start: StartWriter) -> io::Result<Outbox> {
    let line = Arc::new(Line {
        state: Mutex::new(LineState {
            senders: 1,
            writer: WriterThread::NotStarted(start),
            ..LineState::default()
        }),
        ready: Condvar::new(),
        credit: Condvar::new(),
        closed: AtomicBool::new(false),
        direct,
        queued_bytes: AtomicUsize::new(0),
        written: AtomicU64::new(0),
        socket,
    });
    let outbox = Outbox { line };
    if !direct && !outbox.start_writer() {
        return Err(io::Error::other("its writer thread could not start"));
    }
    Ok(outbox)
}

impl Outbox {
    /// Whether the router may queue another MESSAGE.
    pub fn has_room(&self) -> bool {
        let bytes = self.line.queued_bytes.load(Ordering::Relaxed);
        self.line.lock().items.len() < MESSAGE_WINDOW && (bytes == 0 || bytes < BYTE_WINDOW)
    }

    /// Queue a delivery; false when the connection is gone.
    pub fn deliver(&self, delivery: Delivery) -> bool {
        let weight = delivery.message.body.len();
        self.line.queued_bytes.fetch_add(weight, Ordering::Relaxed);
        if self.line.push(Outgoing::Message(delivery)) {
            return true;
        }
        self.line.queued_bytes.fetch_sub(weight, Ordering::Relaxed);
        false
    }

    /// Start the writer thread now if it has not started (heart-beats need it). False when it
    /// cannot start or the connection is closed.
    pub fn start_writer(&self) -> bool {
        let mut state = self.line.lock();
        !self.line.closed() && self.line.start(&mut state)
    }

    /// Take a control credit, waiting while the client has too many unread replies.
    /// `Some(false)` if none came within `timeout` (the caller checks for shutdown and tries
    /// again), `None` when the writer is gone.
    pub fn reserve(&self, timeout: Duration) -> Option<bool> {
        let deadline = Instant::now() + timeout;
        let mut state = self.line.lock();
        loop {
            if self.line.closed() {
                return None;
            }
            if state.reserved < CONTROL_CREDITS {
                state.reserved += 1;
                return Some(true);
            }
            let now = Instant::now();
            if now >= deadline {
                return Some(false);
            }
            state.credit_waiters += 1;
            state = match self.line.credit.wait_timeout(state, deadline - now) {
                Ok((state, _)) => state,
                Err(poisoned) => poisoned.into_inner().0,
            };
            state.credit_waiters -= 1;
        }
    }

    /// Send a control frame for which a credit was reserved, encoded for `version` (see
    /// `control_encoded`).
    pub fn control(&self, frame: &Frame, version: Version) -> bool {
        let mut bytes = Vec::new();
        encode(frame, version, &mut bytes);
        self.control_encoded(bytes)
    }

    /// Send an encoded control frame for which a credit was reserved: written at once by the
    /// caller when the writer thread is idle or was never started (see the module doc), else
    /// queued. False when the writer is gone.
    pub fn control_encoded(&self, frame: Vec<u8>) -> bool {
        let line = &self.line;
        let state = line.lock();
        if line.closed() {
            return false;
        }
        let mut rest = frame;
        let idle = state.waiting || matches!(state.writer, WriterThread::NotStarted(_));
        if line.direct && idle && state.items.is_empty() {
            match send_now(&line.socket, &rest) {
                Ok(n) if n == rest.len() => {
                    line.give_back(state);
                    return true;
                }
                Ok(n) => {
                    rest.drain(..n);
                }
                // No room (or a failing socket, which the writer will find): queue it all.
                Err(_) => {}
            }
        }
        line.push_locked(state, Outgoing::Encoded(rest))
    }

    /// How many MESSAGE frames reached the socket. Deliveries are written in the order they
    /// were queued, so the n-th delivery queued was written iff this is at least n.
    pub fn written(&self) -> u64 {
        self.line.written.load(Ordering::SeqCst)
    }

    /// Flush and close the sending half after what is queued: the writer does it, or, when it
    /// never started (nothing was ever queued), this call does.
    pub fn close(&self) {
        let mut state = self.line.lock();
        if matches!(state.writer, WriterThread::NotStarted(_)) {
            state.writer = WriterThread::Gone;
            self.line.closed.store(true, Ordering::SeqCst);
            drop(state);
            let _ = self.line.socket.shutdown(Shutdown::Write);
            return;
        }
        self.line.push_locked(state, Outgoing::Close);
    }

    /// The writer thread, if it was started, to join (after `close`); it is not started after
    /// this.
    pub fn take_writer(&self) -> Option<JoinHandle<()>> {
        match std::mem::take(&mut self.line.lock().writer) {
            WriterThread::Running(thread) => Some(thread),
            _ => None,
        }
    }

    /// Cut the connection at once (slow consumer, shutdown): both threads see their socket fail.
    pub fn close_now(&self) {
        let _ = self.line.socket.shutdown(Shutdown::Both);
    }
}

/// `send(2)` that never blocks, whatever the socket's mode (the reader thread keeps it
/// blocking), and raises no SIGPIPE.
fn send_now(socket: &TcpStream, bytes: &[u8]) -> io::Result<usize> {
    let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
    // SAFETY: the descriptor stays open while `socket` is borrowed, and the pointer and length
    // describe `bytes`, which outlives the call.
    let sent = unsafe {
        libc::send(
            socket.as_raw_fd(),
            bytes.as_ptr().cast(),
            bytes.len(),
            flags,
        )
    };
    usize::try_from(sent).map_err(|_| io::Error::last_os_error())
}

impl Clone for Outbox {
    fn clone(&self) -> Outbox {
        self.line.lock().senders += 1;
        Outbox {
            line: self.line.clone(),
        }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        let mut state = self.line.lock();
        state.senders -= 1;
        let wake = state.senders == 0 && state.waiting;
        drop(state);
        if wake {
            self.line.ready.notify_one();
        }
    }
}

impl fmt::Debug for Outbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outbox")
            .field("queued_bytes", &self.line.queued_bytes)
            .field("written", &self.line.written)
            .finish()
    }
}

impl Inbox {
    /// The next item; `Disconnected` once every `Outbox` is gone and nothing is left.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Outgoing, RecvTimeoutError> {
        let deadline = Instant::now() + timeout;
        let mut state = self.line.lock();
        loop {
            if let Some(item) = state.items.pop_front() {
                return Ok(item);
            }
            if state.senders == 0 {
                return Err(RecvTimeoutError::Disconnected);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(RecvTimeoutError::Timeout);
            }
            state.waiting = true;
            state = match self.line.ready.wait_timeout(state, deadline - now) {
                Ok((state, _)) => state,
                Err(poisoned) => poisoned.into_inner().0,
            };
            state.waiting = false;
        }
    }

    /// Nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.line.lock().items.is_empty()
    }

    /// The writer wrote a control frame: give its credit back.
    pub fn written_control(&self) {
        self.line.give_back(self.line.lock());
    }

    /// The writer wrote a MESSAGE of `body_len` bytes.
    pub fn written_message(&self, body_len: usize) {
        self.line
            .queued_bytes
            .fetch_sub(body_len, Ordering::Relaxed);
        self.line.written.fetch_add(1, Ordering::SeqCst);
    }
}

impl Drop for Inbox {
    /// Without the lock: an inbox whose thread cannot start is dropped under it.
    fn drop(&mut self) {
        self.line.closed.store(true, Ordering::SeqCst);
        self.line.credit.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    /// A writer thread as `session::writer` runs it, reduced to the parts the outbox relies
    /// on: take in order, flush before sleeping.
    fn writer(inbox: Inbox, mut socket: TcpStream) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || loop {
            match inbox.recv_timeout(Duration::from_secs(30)) {
                Ok(Outgoing::Encoded(bytes)) => {
                    socket.write_all(&bytes).expect("write");
                    inbox.written_control();
                }
                Ok(Outgoing::Close) | Err(_) => return,
                Ok(other) => panic!("unexpected {other:?}"),
            }
        })
    }

    fn small_buffer(socket: &TcpStream, option: libc::c_int, size: libc::c_int) {
        // SAFETY: a valid socket and a c_int option value of the given length.
        let set = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(set, 0);
    }

    /// Receipts written directly, cut short by a full socket, or queued behind the writer all
    /// reach the peer whole and in order.
    #[test]
    fn receipts_arrive_whole_and_in_order_whichever_way_they_go() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        // Small buffers: direct writes of these frames are cut short or find no room.
        small_buffer(&server, libc::SO_SNDBUF, 4096);
        small_buffer(&client, libc::SO_RCVBUF, 65536);
        let outbox = outbox(
            server.try_clone().expect("clone"),
            true,
            Box::new(move |inbox| Ok(writer(inbox, server))),
        )
        .expect("outbox");
        let frames: Vec<Vec<u8>> = (0..600u32)
            .map(|i| {
                let mut f = format!("RECEIPT\nreceipt-id:{i}:").into_bytes();
                // Over 64 KiB (one socket buffer segment), some can be cut short.
                let fill = if i % 50 == 7 {
                    150_000
                } else {
                    (i as usize % 7) * 3000 + 10
                };
                f.resize(f.len() + fill, b'x');
                f.extend_from_slice(b"\n\n\0");
                f
            })
            .collect();
        let expected = frames.clone();
        let (read_one, frame_read) = std::sync::mpsc::channel();
        let (go, start_reading) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut client = client;
            start_reading.recv().expect("told to read");
            for (i, frame) in expected.iter().enumerate() {
                let mut got = vec![0; frame.len()];
                client.read_exact(&mut got).expect("read");
                assert!(&got == frame, "frame {i} reordered or damaged");
                let _ = read_one.send(());
            }
        });
        // Nothing is read at first: frames go directly while there is room, then one is cut
        // short and the writer blocks on the rest, the next ones queue until the credits run
        // out; then the peer reads. The second half goes one at a time (the writer is idle:
        // written directly).
        let (mut reading, mut read) = (false, 0);
        for (i, frame) in frames.into_iter().enumerate() {
            if outbox.reserve(Duration::from_millis(200)) != Some(true) {
                if !reading {
                    go.send(()).expect("reader alive");
                    reading = true;
                }
                assert_eq!(outbox.reserve(Duration::from_secs(10)), Some(true));
            }
            assert!(outbox.control_encoded(frame));
            if i >= 300 {
                if !reading {
                    go.send(()).expect("reader alive");
                    reading = true;
                }
                while read <= i {
                    frame_read.recv().expect("reader alive");
                    read += 1;
                }
            }
        }
        reader.join().expect("reader");
        outbox.close();
        let thread = outbox
            .take_writer()
            .expect("a cut-short frame started the writer");
        thread.join().expect("writer");
    }
}
