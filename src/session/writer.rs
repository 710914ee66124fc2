//! A connection's writer thread: writes what its outbox queued (control frames that found the
//! socket idle are written by their sender instead, see `outbox`). Started when first needed.
//!
//! Takes `Outgoing` items from the connection's `Inbox` in order, encodes them, and flushes when
//! the queue is empty (so bursts go out in few syscalls). Sends a heart-beat EOL when nothing was
//! written for the agreed interval, and flushes when idle (over TLS that sends the records the
//! reader's input caused). Every write is bounded by `slow_consumer` (config
//! `slow_consumer_ms`): a client
//! that does not read for that long is disconnected (its unacknowledged messages are redelivered
//! elsewhere). On any write error it shuts the socket down, which also ends the reader.
//! Writes go through `transport` (plain TCP or TLS).

use crate::codec::{Version, HEARTBEAT};
use crate::outbox::{Inbox, Outgoing};
use crate::transport::Transport;
use crossbeam_channel::RecvTimeoutError;
use std::io::{BufWriter, Write};
use std::net::Shutdown;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What the reader decides at CONNECT and the writer must follow.
#[derive(Default)]
pub struct WriterSettings {
    /// 0 = 1.0, 1 = 1.1, 2 = 1.2.
    version: AtomicU8,
    /// Heart-beat interval towards the client; 0 = none.
    heartbeat_ms: AtomicU64,
}

impl WriterSettings {
    pub fn set(&self, version: Version, heartbeat: Duration) {
        let v = match version {
            Version::V1_0 => 0,
            Version::V1_1 => 1,
            Version::V1_2 => 2,
        };
        self.version.store(v, Ordering::SeqCst);
        self.heartbeat_ms
            .store(heartbeat.as_millis() as u64, Ordering::SeqCst);
    }

    fn version(&self) -> Version {
        match self.version.load(Ordering::SeqCst) {
            0 => Version::V1_0,
            1 => Version::V1_1,
            _ => Version::V1_2,
        }
    }

    fn heartbeat(&self) -> Option<Duration> {
        match self.heartbeat_ms.load(Ordering::SeqCst) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }
}

/// The write buffer of a connection that has not been sent a MESSAGE yet, and of one that has.
/// 1,000 idle connections took 7 KiB less each with the small one (RSS).
const CONTROL_BUFFER: usize = 1024;
const MESSAGE_BUFFER: usize = 16 * 1024;

/// How long to wait for work when no heart-beat is due, so the thread notices a dropped inbox.
const IDLE_WAIT: Duration = Duration::from_secs(1);

/// Write until the inbox closes or a write fails; a write blocked for `slow_consumer` fails.
pub fn run(
    stream: Transport,
    inbox: Inbox,
    settings: Arc<WriterSettings>,
    slow_consumer: Duration,
) {
    let _ = stream.socket().set_write_timeout(Some(slow_consumer));
    // Frames smaller than the buffer are gathered into one write; larger bodies go out
    // directly. A connection that only sends (CONNECTED and RECEIPTs) keeps a small buffer;
    // its first MESSAGE gets it the large one.
    let mut out = BufWriter::with_capacity(CONTROL_BUFFER, stream);
    let mut buf = Vec::new();
    let result = loop {
        let heartbeat = settings.heartbeat();
        let item = match inbox.recv_timeout(heartbeat.unwrap_or(IDLE_WAIT)) {
            Ok(item) => item,
            Err(RecvTimeoutError::Timeout) => {
                let beat = match heartbeat {
                    Some(_) => out.write_all(HEARTBEAT),
                    None => Ok(()),
                };
                if let Err(e) = beat.and_then(|_| out.flush()) {
                    break Err(e);
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break out.flush(),
        };
        buf.clear();
        match item {
            Outgoing::Encoded(bytes) => {
                buf.extend_from_slice(&bytes);
                inbox.written_control();
            }
            Outgoing::Message(delivery) => {
                if out.capacity() < MESSAGE_BUFFER {
                    match out.into_inner() {
                        Ok(stream) => out = BufWriter::with_capacity(MESSAGE_BUFFER, stream),
                        Err(e) => {
                            let (e, old) = e.into_parts();
                            out = old;
                            break Err(e);
                        }
                    }
                }
                delivery.encode_head(settings.version(), &mut buf);
                let body = &delivery.message.body;
                let written = out
                    .write_all(&buf)
                    .and_then(|()| out.write_all(body))
                    .and_then(|()| out.write_all(b"\0"));
                if let Err(e) = written {
                    break Err(e);
                }
                inbox.written_message(body.len());
                buf.clear();
            }
            Outgoing::Close => {
                let flushed = out.flush();
                let _ = out.get_mut().close_write();
                break flushed;
            }
        }
        let written = out.write_all(&buf);
        let flushed = match written {
            Ok(()) if inbox.is_empty() => out.flush(),
            other => other,
        };
        if let Err(e) = flushed {
            break Err(e);
        }
    };
    if let Err(e) = result {
        log::debug!("connection write failed: {e}");
        let _ = out.get_ref().socket().shutdown(Shutdown::Both);
    }
}
