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
//! The queue itself is crossbeam's unbounded list (it allocates as it fills: a bounded array
//! would allocate all its slots up front, ~45 KiB per idle connection); the window and the
//! credits bound it to the message window plus the control credits plus one `Close`.

use crate::codec::Frame;
use crate::message::Delivery;
use crossbeam_channel::{bounded, unbounded, Receiver, SendTimeoutError, Sender};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

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
    Message(Delivery),
    /// Flush, then close the sending half (the peer sees EOF after the last frame).
    Close,
}

/// The sending side, cloned into the router and into store callbacks.
#[derive(Clone, Debug)]
pub struct Outbox {
    tx: Sender<Outgoing>,
    credits: Sender<()>,
    queued_bytes: Arc<AtomicUsize>,
    /// MESSAGE frames the writer has written to the socket so far.
    written: Arc<AtomicU64>,
    socket: Arc<TcpStream>,
}

/// The writer's side.
pub struct Inbox {
    pub rx: Receiver<Outgoing>,
    credits: Receiver<()>,
    queued_bytes: Arc<AtomicUsize>,
    written: Arc<AtomicU64>,
}

/// A new outbox for `socket` (a clone of the connection's stream, used only to shut it down).
pub fn outbox(socket: TcpStream) -> (Outbox, Inbox) {
    let (tx, rx) = unbounded();
    let (credits, credits_rx) = bounded(CONTROL_CREDITS);
    let queued_bytes = Arc::new(AtomicUsize::new(0));
    let written = Arc::new(AtomicU64::new(0));
    let outbox = Outbox {
        tx,
        credits,
        queued_bytes: queued_bytes.clone(),
        written: written.clone(),
        socket: Arc::new(socket),
    };
    let inbox = Inbox {
        rx,
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
        self.tx.len() < MESSAGE_WINDOW && (bytes == 0 || bytes < BYTE_WINDOW)
    }

    /// Queue a delivery; false when the connection is gone.
    pub fn deliver(&self, delivery: Delivery) -> bool {
        let weight = delivery.message.body.len();
        self.queued_bytes.fetch_add(weight, Ordering::Relaxed);
        match self.tx.try_send(Outgoing::Message(delivery)) {
            Ok(()) => true,
            Err(_) => {
                self.queued_bytes.fetch_sub(weight, Ordering::Relaxed);
                false
            }
        }
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
        self.tx.send(Outgoing::Control(frame)).is_ok()
    }

    /// How many MESSAGE frames reached the socket. Deliveries are written in the order they
    /// were queued, so the n-th delivery queued was written iff this is at least n.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::SeqCst)
    }

    /// Ask the writer to flush and close after what is queued.
    pub fn close(&self) {
        let _ = self.tx.try_send(Outgoing::Close);
    }

    /// Cut the connection at once (slow consumer, shutdown): both threads see their socket fail.
    pub fn close_now(&self) {
        let _ = self.socket.shutdown(Shutdown::Both);
    }
}

impl Inbox {
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
