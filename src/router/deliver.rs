//! Routing committed messages, dispatching pending ones to consumers with room, putting back
//! what was not acknowledged, dead-lettering, expiry. Runs on the router thread only.

use super::{kind_of, target, InFlight, Router, Source, Sub};
use crate::message::{dead_letter_queue, now_ms, Delivery, Kind, Message};
use crate::queue::Entry;
use crate::router::subscriptions::format_ack_id;
use crate::router::AckMode;
use crate::store::StoreOp;
use std::collections::HashSet;
use std::sync::Arc;

impl Router {
    /// Messages the store committed (or passed through), in commit order.
    pub(super) fn route(&mut self, messages: Vec<Arc<Message>>) {
        let mut touched: HashSet<Arc<str>> = HashSet::new();
        for message in messages {
            match kind_of(&message.destination) {
                Kind::Queue => {
                    let entry = self.new_entry(message);
                    let name = entry.message.destination.clone();
                    self.queues
                        .entry(name.clone())
                        .or_default()
                        .queue
                        .push(entry);
                    touched.insert(name);
                }
                Kind::Topic => self.fan_out(message),
            }
        }
        for name in touched {
            self.dispatch(&Source::Queue(name));
        }
    }

    fn new_entry(&mut self, message: Arc<Message>) -> Entry {
        Entry {
            message,
            seq: self.seq(),
            redeliveries: 0,
            redelivered: false,
        }
    }

    /// A topic message goes to every current subscriber and into every durable subscription.
    /// A non-durable subscriber without room is a slow consumer: it is disconnected rather than
    /// letting the broker buffer for it without bound (it may reconnect and carry on).
    fn fan_out(&mut self, message: Arc<Message>) {
        let subscribers = self
            .topics
            .get(&message.destination)
            .cloned()
            .unwrap_or_default();
        for key in subscribers {
            let entry = self.new_entry(message.clone());
            if self.has_room(key) {
                self.deliver(key, entry, Source::Topic);
            } else if let Some(sub) = self.subs.get(&key) {
                log::warn!(
                    "slow consumer: subscription {} on {} has no room; closing its connection",
                    sub.id,
                    message.destination
                );
                if let Some(conn) = self.conns.get(&sub.conn) {
                    conn.outbox.close_now();
                }
            }
        }
        let durables: Vec<u64> = self
            .durables
            .values()
            .filter(|d| *d.row.topic == *message.destination)
            .map(|d| d.row.id)
            .collect();
        for id in durables {
            let entry = self.new_entry(message.clone());
            if let Some(d) = self.durables.get_mut(&id) {
                d.queue.push(entry);
            }
            self.dispatch(&Source::Durable(id));
        }
    }

    /// Whether subscription `key` may take one more message now.
    pub(super) fn has_room(&self, key: u64) -> bool {
        let Some(sub) = self.subs.get(&key) else {
            return false;
        };
        let window_open = sub.ack == AckMode::Auto || sub.inflight.len() < sub.prefetch;
        window_open
            && self
                .conns
                .get(&sub.conn)
                .is_some_and(|c| c.outbox.has_room())
    }

    /// Deliver pending messages of `source` to its consumers while they have room.
    pub(super) fn dispatch(&mut self, source: &Source) {
        self.blocked.remove(source);
        let now = now_ms();
        loop {
            let Some((front_expired, has_consumers)) = self.peek(source, now) else {
                return;
            };
            if front_expired {
                if let Some(entry) = self.pop(source) {
                    self.expire(entry, source);
                }
                continue;
            }
            let Some(key) = self.pick_consumer(source) else {
                if has_consumers {
                    self.blocked.insert(source.clone());
                }
                return;
            };
            let Some(entry) = self.pop(source) else {
                return;
            };
            self.deliver(key, entry, source.clone());
        }
    }

    /// (front message expired, source has consumers), or None when nothing is pending.
    fn peek(&self, source: &Source, now: i64) -> Option<(bool, bool)> {
        match source {
            Source::Queue(name) => {
                let dest = self.queues.get(name)?;
                let front = dest.queue.front()?;
                Some((front.message.is_expired(now), !dest.consumers.is_empty()))
            }
            Source::Durable(id) => {
                let durable = self.durables.get(id)?;
                let front = durable.queue.front()?;
                Some((front.message.is_expired(now), durable.active.is_some()))
            }
            Source::Topic => None,
        }
    }

    fn pop(&mut self, source: &Source) -> Option<Entry> {
        match source {
            Source::Queue(name) => self.queues.get_mut(name)?.queue.pop_front(),
            Source::Durable(id) => self.durables.get_mut(id)?.queue.pop_front(),
            Source::Topic => None,
        }
    }

    /// Round robin among the consumers that have room.
    fn pick_consumer(&mut self, source: &Source) -> Option<u64> {
        match source {
            Source::Queue(name) => {
                let dest = self.queues.get(name)?;
                let n = dest.consumers.len();
                let start = dest.next;
                let found = (0..n)
                    .map(|i| (start + i) % n.max(1))
                    .find(|&i| self.has_room(dest.consumers[i]))?;
                let key = dest.consumers[found];
                if let Some(dest) = self.queues.get_mut(name) {
                    dest.next = (found + 1) % n;
                }
                Some(key)
            }
            Source::Durable(id) => self
                .durables
                .get(id)?
                .active
                .filter(|&key| self.has_room(key)),
            Source::Topic => None,
        }
    }

    /// Hand `entry` to subscription `key`'s outbox. With auto ack it counts as acknowledged
    /// (removed from the store) once handed over; otherwise it is in flight until ACK/NACK.
    pub(super) fn deliver(&mut self, key: u64, entry: Entry, source: Source) {
        let Some(sub) = self.subs.get_mut(&key) else {
            return self.put_back(entry, &source);
        };
        let delivery = Delivery {
            message: entry.message.clone(),
            subscription: sub.id.clone(),
            ack: format_ack_id(key, &entry.message.message_id()),
            redelivered: entry.redelivered,
            redeliveries: entry.redeliveries,
        };
        let handed = self
            .conns
            .get(&sub.conn)
            .is_some_and(|c| c.outbox.deliver(delivery));
        if !handed {
            return self.put_back(entry, &source);
        }
        if sub.ack == AckMode::Auto {
            if let Some(t) = target(&entry.message, &source) {
                self.store_later(StoreOp::Commit {
                    sends: Vec::new(),
                    removals: vec![t],
                    done: None,
                });
            }
        } else {
            sub.inflight.push_back(InFlight { entry, source });
        }
    }

    /// Return an undelivered entry to where it came from, unchanged.
    fn put_back(&mut self, entry: Entry, source: &Source) {
        match source {
            Source::Queue(name) => self
                .queues
                .entry(name.clone())
                .or_default()
                .queue
                .push(entry),
            Source::Durable(id) => {
                if let Some(d) = self.durables.get_mut(id) {
                    d.queue.push(entry);
                }
            }
            Source::Topic => {}
        }
    }

    /// Delivered but not acknowledged (NACK, ABORT, consumer gone): count it, then redeliver it
    /// or, past `max_redeliveries`, move it to the dead-letter queue.
    pub(super) fn redeliver(&mut self, mut flight: InFlight) {
        if flight.source == Source::Topic {
            return;
        }
        flight.entry.redeliveries += 1;
        flight.entry.redelivered = true;
        if flight.entry.redeliveries > self.max_redeliveries {
            return self.dead_letter(flight);
        }
        if let Some(t) = target(&flight.entry.message, &flight.source) {
            self.store_later(StoreOp::Redelivered {
                target: t,
                count: flight.entry.redeliveries,
            });
        }
        self.put_back(flight.entry, &flight.source);
        self.blocked.insert(flight.source);
    }

    fn dead_letter(&mut self, flight: InFlight) {
        let message = flight.entry.message;
        let dlq = dead_letter_queue(&message.destination);
        log::warn!(
            "message {} of {} moved to {dlq} after {} deliveries",
            message.message_id(),
            message.destination,
            flight.entry.redeliveries
        );
        match target(&message, &flight.source) {
            Some(t) => self.store_later(StoreOp::DeadLetter {
                target: t,
                message,
                dlq,
            }),
            None => {
                let mut moved = (*message).clone();
                moved.original_destination = Some(
                    moved
                        .original_destination
                        .take()
                        .unwrap_or_else(|| moved.destination.to_string()),
                );
                moved.destination = Arc::from(dlq);
                self.route(vec![Arc::new(moved)]);
            }
        }
    }

    fn expire(&mut self, entry: Entry, source: &Source) {
        log::debug!(
            "message {} of {} expired",
            entry.message.message_id(),
            entry.message.destination
        );
        if let Some(t) = target(&entry.message, source) {
            self.store_later(StoreOp::Commit {
                sends: Vec::new(),
                removals: vec![t],
                done: None,
            });
        }
    }

    pub(super) fn retry_blocked(&mut self) {
        let blocked: Vec<Source> = self.blocked.drain().collect();
        for source in blocked {
            self.dispatch(&source);
        }
    }

    /// Remove expired messages that wait where no one consumes.
    pub(super) fn sweep_expired(&mut self) {
        let now = now_ms();
        let mut expired = Vec::new();
        for (name, dest) in &mut self.queues {
            for entry in dest.queue.take_expired(now) {
                expired.push((entry, Source::Queue(name.clone())));
            }
        }
        for (id, durable) in &mut self.durables {
            for entry in durable.queue.take_expired(now) {
                expired.push((entry, Source::Durable(*id)));
            }
        }
        for (entry, source) in expired {
            self.expire(entry, &source);
        }
    }

    /// Detach subscription `key` from its source and put its in-flight messages back.
    pub(super) fn remove_sub(&mut self, key: u64) -> Option<Sub> {
        let mut sub = self.subs.remove(&key)?;
        match &sub.source {
            Source::Queue(name) => {
                if let Some(dest) = self.queues.get_mut(name) {
                    dest.consumers.retain(|&k| k != key);
                    dest.next = 0;
                }
            }
            Source::Durable(id) => {
                if let Some(d) = self.durables.get_mut(id) {
                    d.active = None;
                }
            }
            Source::Topic => {
                if let Some(topic) = &sub.topic {
                    if let Some(list) = self.topics.get_mut(topic) {
                        list.retain(|&k| k != key);
                    }
                }
            }
        }
        for flight in std::mem::take(&mut sub.inflight) {
            self.redeliver(flight);
        }
        Some(sub)
    }
}
