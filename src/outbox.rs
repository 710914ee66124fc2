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
//! A RECEIPT decided by the store writer after a commit skips the queue when it can
//! (`receipt`): if the connection is plain TCP, nothing is queued and the writer thread sleeps
//! (so everything it took is flushed), the caller writes the frame itself, without blocking
//! (`MSG_DONTWAIT`), holding the queue's lock so nothing can overtake it. That saves waking the
//! writer thread for every receipted SEND (perf: 20% less CPU per message with 16 producers).
//! A socket without room for it, or for all of it, gets the rest queued as usual.
//!
//! The queue itself (`Line`) is a deque behind a mutex and a condition variable: it allocates
//! as it fills (a bounded channel would allocate all its slots up front, ~45 KiB per idle
//! connection), and its writer sleeps at once when it is empty (a crossbeam channel spins and
//! yields first: with a writer thread per connection waiting most of the time, that was most
//! of the broker's CPU under load). The window and the credits bound it to the message window
//! plus the control credits plus one `Close`.

use crate::codec::Frame;
use crate::message::Delivery;
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, SendTimeoutError, Sender};
use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
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
    /// CONNECTED, RECEIPT or ERROR; returns a credit once written.
    Control(Frame),
    /// A control frame already encoded (what is left of a RECEIPT); returns a credit too.
    Encoded(Vec<u8>),
    Message(Delivery),
    /// Flush, then close the sending half (the peer sees EOF after the last frame).
    Close,
}

/// The queue between a connection's senders and its writer thread.
#[derive(Default)]
struct Line {
    state: Mutex<LineState>,
    ready: Condvar,
}

#[derive(Default)]
struct LineState {
    items: VecDeque<Outgoing>,
    /// `Outbox` handles alive; when none is left the writer drains what is queued and stops.
    senders: usize,
    /// The writer is gone: nothing more is taken.
    closed: bool,
    /// The writer sleeps on `ready`.
    waiting: bool,
}

impl Line {
    fn lock(&self) -> MutexGuard<'_, LineState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// False when the writer is gone.
    fn push(&self, item: Outgoing) -> bool {
        let state = self.lock();
        if state.closed {
            return false;
        }
        self.push_locked(state, item);
        true
    }

    /// Queue `item` under the lock already taken, and wake the writer if it sleeps.
    fn push_locked(&self, mut state: MutexGuard<'_, LineState>, item: Outgoing) {
        state.items.push_back(item);
        let wake = state.waiting;
        drop(state);
        if wake {
            self.ready.notify_one();
        }
    }
}

/// The sending side, cloned into the router and into store callbacks.
pub struct Outbox {
    line: Arc<Line>,
    credits: Sender<()>,
    /// Where a RECEIPT written directly gives its credit back.
    credits_back: Receiver<()>,
    /// Plain TCP: a RECEIPT may be written by its caller (see the module doc).
    direct: bool,
    queued_bytes: Arc<AtomicUsize>,
    /// MESSAGE frames the writer has written to the socket so far.
    written: Arc<AtomicU64>,
    socket: Arc<TcpStream>,
}

/// The writer's side.
pub struct Inbox {
    line: Arc<Line>,
    credits: Receiver<()>,
    queued_bytes: Arc<AtomicUsize>,
    written: Arc<AtomicU64>,
}

/// A new outbox for `socket` (a clone of the connection's stream, used to shut it down and, if
/// `direct` (plain TCP), to write RECEIPTs directly).
pub fn outbox(socket: TcpStream, direct: bool) -> (Outbox, Inbox) {
    let line = Arc::new(Line::default());
    line.lock().senders = 1;
    let (credits, credits_rx) = bounded(CONTROL_CREDITS);
    let queued_bytes = Arc::new(AtomicUsize::new(0));
    let written = Arc::new(AtomicU64::new(0));
    let outbox = Outbox {
        line: line.clone(),
        credits,
        credits_back: credits_rx.clone(),
        direct,
        queued_bytes: queued_bytes.clone(),
        written: written.clone(),
        socket: Arc::new(socket),
    };
    let inbox = Inbox {
        line,
        credits: credits_rx,
        queued_bytes,
        written,
    };
    (outbox, inbox)
}

impl Outbox {
    /// Whether the router may queue another MESSAGE.
    pub fn has_room(&self) -> bool {
        let bytes = self.queued_bytes.load(Ordering::Relaxed);
        self.line.lock().items.len() < MESSAGE_WINDOW && (bytes == 0 || bytes < BYTE_WINDOW)
    }

    /// Queue a delivery; false when the connection is gone.
    pub fn deliver(&self, delivery: Delivery) -> bool {
        let weight = delivery.message.body.len();
        self.queued_bytes.fetch_add(weight, Ordering::Relaxed);
        if self.line.push(Outgoing::Message(delivery)) {
            return true;
        }
        self.queued_bytes.fetch_sub(weight, Ordering::Relaxed);
        false
    }

    /// Take a control credit, waiting while the client has too many unread replies.
    /// `Some(false)` if none came within `timeout` (the caller checks for shutdown and tries
    /// again), `None` when the writer is gone.
    pub fn reserve(&self, timeout: Duration) -> Option<bool> {
        match self.credits.send_timeout((), timeout) {
            Ok(()) => Some(true),
            Err(SendTimeoutError::Timeout(())) => Some(false),
            Err(SendTimeoutError::Disconnected(())) => None,
        }
    }

    /// Queue a control frame for which a credit was reserved. False when the writer is gone.
    pub fn control(&self, frame: Frame) -> bool {
        self.line.push(Outgoing::Control(frame))
    }

    /// Send an encoded RECEIPT for which a credit was reserved: written at once by the caller
    /// when the writer thread is idle (see the module doc), else queued. False when the writer
    /// is gone.
    pub fn receipt(&self, frame: Vec<u8>) -> bool {
        let state = self.line.lock();
        if state.closed {
            return false;
        }
        let mut rest = frame;
        if self.direct && state.waiting && state.items.is_empty() {
            match send_now(&self.socket, &rest) {
                Ok(n) if n == rest.len() => {
                    drop(state);
                    let _ = self.credits_back.try_recv();
                    return true;
                }
                Ok(n) => {
                    rest.drain(..n);
                }
                // No room (or a failing socket, which the writer will find): queue it all.
                Err(_) => {}
            }
        }
        self.line.push_locked(state, Outgoing::Encoded(rest));
        true
    }

    /// How many MESSAGE frames reached the socket. Deliveries are written in the order they
    /// were queued, so the n-th delivery queued was written iff this is at least n.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::SeqCst)
    }

    /// Ask the writer to flush and close after what is queued.
    pub fn close(&self) {
        self.line.push(Outgoing::Close);
    }

    /// Cut the connection at once (slow consumer, shutdown): both threads see their socket fail.
    pub fn close_now(&self) {
        let _ = self.socket.shutdown(Shutdown::Both);
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
            credits: self.credits.clone(),
            credits_back: self.credits_back.clone(),
            direct: self.direct,
            queued_bytes: self.queued_bytes.clone(),
            written: self.written.clone(),
            socket: self.socket.clone(),
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
            .field("queued_bytes", &self.queued_bytes)
            .field("written", &self.written)
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
        let _ = self.credits.try_recv();
    }

    /// The writer wrote a MESSAGE of `body_len` bytes.
    pub fn written_message(&self, body_len: usize) {
        self.queued_bytes.fetch_sub(body_len, Ordering::Relaxed);
        self.written.fetch_add(1, Ordering::SeqCst);
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        self.line.lock().closed = true;
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
        let (outbox, inbox) = outbox(server.try_clone().expect("clone"), true);
        let thread = writer(inbox, server);
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
            assert!(outbox.receipt(frame));
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
        thread.join().expect("writer");
    }
}
