//! Non-durable topic subscribers: each has a bounded backlog of messages waiting for room in
//! its prefetch window and outbox. Runs on the router thread only.
//!
//! Policy (slow consumer): a subscriber whose backlog passes `BACKLOG_MESSAGES` messages or
//! `BACKLOG_BYTES` bytes cannot keep up with the topic; it is disconnected rather than letting
//! the broker buffer for it without bound. Anyone reading normally never gets near the limit.

use super::{Router, Source};
use crate::message::Message;
use crate::queue::{Entry, Slot};
use std::sync::Arc;

/// Messages one topic subscriber may have waiting.
const BACKLOG_MESSAGES: usize = 10_000;
/// Bytes one topic subscriber may have waiting.
const BACKLOG_BYTES: usize = 64 * 1024 * 1024;

impl Router {
    /// Queue `message` for topic subscription `key` and deliver what fits.
    pub(super) fn offer(&mut self, key: u64, message: Arc<Message>) {
        let Some(sub) = self.subs.get_mut(&key) else {
            return;
        };
        sub.backlog_bytes += message.body.len();
        sub.backlog.push_back(message);
        if sub.backlog.len() > BACKLOG_MESSAGES || sub.backlog_bytes > BACKLOG_BYTES {
            log::warn!(
                "slow consumer: subscription {} fell {} messages behind; closing its connection",
                sub.id,
                sub.backlog.len()
            );
            let conn = sub.conn;
            sub.backlog.clear();
            sub.backlog_bytes = 0;
            if let Some(c) = self.conns.get(&conn) {
                c.outbox.close_now();
            }
            return self.disconnected(conn);
        }
        self.feed(key);
    }

    /// Deliver from subscription `key`'s backlog while it has room.
    pub(super) fn feed(&mut self, key: u64) {
        self.blocked_subs.remove(&key);
        while self.has_room(key) {
            let Some(sub) = self.subs.get_mut(&key) else {
                return;
            };
            let Some(message) = sub.backlog.pop_front() else {
                return;
            };
            sub.backlog_bytes -= message.body.len();
            let entry = Entry {
                slot: Slot::Resident(message),
                seq: self.seq(),
                redeliveries: 0,
                redelivered: false,
            };
            self.deliver(key, entry, Source::Topic);
        }
        if self.subs.get(&key).is_some_and(|s| !s.backlog.is_empty()) {
            self.blocked_subs.insert(key);
        }
    }
}
