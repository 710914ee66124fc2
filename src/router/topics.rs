//! Non-durable topic subscribers: each has a bounded backlog of messages waiting for room in
//! its prefetch window and outbox. Runs on the router thread only.
//!
//! Policy: a subscriber `BACKLOG_HOLD` messages behind holds the topic's producers (flow
//! control, as for a full queue) until every subscriber of the topic is back under half of it;
//! one that stops reading altogether is cut off by its writer's `slow_consumer_ms` timeout,
//! which frees the topic again. Messages already past the gate when the hold begins (up to the
//! store backlog budget of small messages) still arrive; a subscriber whose backlog passes
//! `BACKLOG_BYTES` of message weight (bodies, headers and per-message overhead) is
//! disconnected rather than letting the broker buffer for it without bound.

use super::{Router, Source};
use crate::message::Message;
use crate::queue::{Entry, Slot};
use std::sync::Arc;

/// A subscriber this far behind holds the topic's producers.
pub(super) const BACKLOG_HOLD: usize = 1_000;
/// Weight (see `Message::weight`) one topic subscriber may have waiting.
const BACKLOG_BYTES: usize = 64 * 1024 * 1024;

impl Router {
    /// Queue `message` for topic subscription `key` and deliver what fits.
    pub(super) fn offer(&mut self, key: u64, message: Arc<Message>) {
        let Some(sub) = self.subs.get_mut(&key) else {
            return;
        };
        sub.backlog_bytes += message.weight();
        sub.backlog.push_back(message);
        if sub.backlog_bytes > BACKLOG_BYTES {
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
        if sub.backlog.len() >= BACKLOG_HOLD {
            if let Some(topic) = sub.topic.clone() {
                self.hold(&topic);
            }
        }
        self.feed(key);
    }

    /// Whether every subscriber of `topic` is back under half of `BACKLOG_HOLD`.
    pub(super) fn topic_caught_up(&self, topic: &str) -> bool {
        self.index.subscribers(topic).iter().all(|k| {
            self.subs
                .get(k)
                .is_none_or(|s| s.backlog.len() < BACKLOG_HOLD / 2)
        })
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
            sub.backlog_bytes -= message.weight();
            let entry = Entry {
                slot: Slot::resident(message),
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
