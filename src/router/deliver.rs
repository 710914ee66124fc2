//! Routing committed messages, dispatching pending ones to consumers with room, putting back
//! what was not acknowledged, dead-lettering, expiry. Runs on the router thread only.

use super::{target, InFlight, Router, Source, Sub};
use crate::command::AckMode;
use crate::flow_control::Admission;
use crate::message::{dead_letter_queue, now_ms, Delivery, Kind, Message};
use crate::queue::Entry;
use crate::router::subscriptions::format_ack_id;
use crate::store::StoreOp;
use std::collections::HashSet;
use std::sync::Arc;

/// What the front of a source looks like to dispatch.
enum Front {
    Empty,
    Expired,
    /// Its body is in the store: wait for the pager.
    Paged,
    Ready {
        has_consumers: bool,
    },
}

impl Router {
    /// Messages the store committed (or passed through), in commit order.
    pub(super) fn route(&mut self, messages: Vec<Arc<Message>>) {
        let mut touched: HashSet<Arc<str>> = HashSet::new();
        for message in messages {
            self.count(&message.destination, |c| c.enqueued += 1);
            match message.kind {
                Kind::Queue => {
                    let name = message.destination.clone();
                    let entry = self.new_entry(message);
                    self.push_entry(&Source::Queue(name.clone()), entry);
                    touched.insert(name);
                }
                Kind::Topic => self.fan_out(message),
            }
        }
        for name in touched {
            self.dispatch(&Source::Queue(name.clone()));
            self.check_full(&name);
        }
    }

    /// A topic message goes to every current subscriber (through its bounded backlog, see
    /// `topics`) and into every durable subscription.
    fn fan_out(&mut self, message: Arc<Message>) {
        let subscribers = if message.is_expired(now_ms()) {
            Vec::new()
        } else {
            self.index.subscribers(&message.destination).to_vec()
        };
        for key in subscribers {
            self.offer(key, message.clone());
        }
        let durables = self.index.durables_of(&message.destination).to_vec();
        for id in durables {
            let entry = self.new_entry(message.clone());
            self.push_entry(&Source::Durable(id), entry);
            self.dispatch(&Source::Durable(id));
        }
    }

    /// Whether subscription `key` may take one more message now.
    pub(super) fn has_room(&self, key: u64) -> bool {
        let Some(sub) = self.subs.get(&key) else {
            return false;
        };
        let window_open = sub.inflight.window_open(sub.ack, sub.prefetch);
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
        self.request_page(source);
        loop {
            match self.front(source, now) {
                Front::Empty | Front::Paged => return,
                Front::Expired => {
                    if let Some(entry) = self.pop_entry(source) {
                        self.expire(entry, source);
                    }
                }
                Front::Ready { has_consumers } => {
                    let Some(key) = self.pick_consumer(source) else {
                        if has_consumers {
                            self.blocked.insert(source.clone());
                        }
                        return;
                    };
                    let Some(entry) = self.pop_entry(source) else {
                        return;
                    };
                    self.deliver(key, entry, source.clone());
                    self.request_page(source);
                }
            }
        }
    }

    fn front(&self, source: &Source, now: i64) -> Front {
        let has_consumers = self.has_consumers(source);
        match self.queue(source).and_then(|q| q.front()) {
            None => Front::Empty,
            Some(entry) if entry.is_expired(now) => Front::Expired,
            Some(entry) if entry.message().is_none() => Front::Paged,
            Some(_) => Front::Ready { has_consumers },
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
                    .map(|i| (start + i) % n)
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

    /// Hand a resident `entry` to subscription `key`'s outbox. With auto ack it counts as
    /// acknowledged (removed from the store) once handed over; otherwise it is in flight.
    pub(super) fn deliver(&mut self, key: u64, entry: Entry, source: Source) {
        let (Some(sub), Some(message)) = (self.subs.get_mut(&key), entry.message()) else {
            return self.push_entry(&source, entry);
        };
        let delivery = Delivery {
            message: message.clone(),
            subscription: sub.id.clone(),
            ack: format_ack_id(key, &message.message_id()),
            redelivered: entry.redelivered,
            redeliveries: entry.redeliveries,
        };
        let conn = sub.conn;
        let handed = match self.conns.get_mut(&conn) {
            Some(c) if c.outbox.deliver(delivery) => {
                c.handed += 1;
                Some(c.handed)
            }
            _ => None,
        };
        let Some(handed) = handed else {
            // Its writer is gone (the reader's `Disconnected` is on its way): stop routing to it
            // now, or dispatch would pick the same consumer for ever.
            self.push_entry(&source, entry);
            return self.disconnected(conn);
        };
        if sub.ack == AckMode::Auto {
            self.auto_pending.insert(key);
        }
        sub.inflight.push(InFlight {
            entry,
            source,
            handed,
        });
    }

    /// Auto-ack deliveries count as acknowledged once the writer has put them on the socket
    /// (`Outbox::written`); until then they are in flight, so a connection that breaks first
    /// gets them redelivered elsewhere instead of losing them.
    pub(super) fn settle_auto(&mut self) {
        let mut removals = Vec::new();
        for key in std::mem::take(&mut self.auto_pending) {
            let Some(sub) = self.subs.get_mut(&key) else {
                continue;
            };
            let written = self.conns.get(&sub.conn).map_or(0, |c| c.outbox.written());
            let settled = sub.inflight.take_written(written);
            if !sub.inflight.is_empty() {
                self.auto_pending.insert(key);
            }
            for f in settled {
                removals.extend(target(f.entry.id(), &f.source));
                self.count_dequeued(&f.entry);
            }
        }
        if !removals.is_empty() {
            self.store_later(StoreOp::Commit {
                sends: Vec::new(),
                removals,
                done: None,
                admission: Admission::default(),
            });
        }
    }

    /// Delivered but not acknowledged (NACK, ABORT, consumer gone): count it, then redeliver it
    /// or, past `max_redeliveries`, move it to the dead-letter queue. One the client never got
    /// (`seen` false: still in the outbox when the connection went) just goes back.
    pub(super) fn redeliver(&mut self, mut flight: InFlight, seen: bool) {
        if flight.source == Source::Topic {
            return;
        }
        if !seen {
            self.push_entry(&flight.source, flight.entry);
            self.blocked.insert(flight.source);
            return;
        }
        flight.entry.redeliveries += 1;
        flight.entry.redelivered = true;
        if let Some(m) = flight.entry.message().cloned() {
            self.count(&m.destination, |c| c.redelivered += 1);
        }
        if flight.entry.redeliveries > self.max_redeliveries {
            return self.dead_letter(flight);
        }
        if let Some(t) = target(flight.entry.id(), &flight.source) {
            self.store_later(StoreOp::Redelivered {
                target: t,
                count: flight.entry.redeliveries,
            });
        }
        self.push_entry(&flight.source, flight.entry);
        self.blocked.insert(flight.source);
    }

    fn dead_letter(&mut self, flight: InFlight) {
        let Some(message) = flight.entry.message().cloned() else {
            return;
        };
        let dlq = dead_letter_queue(&message.destination);
        if *dlq == *message.destination {
            // Failing in its dead-letter queue: it stays there for whoever reads that queue.
            return self.push_entry(&flight.source, flight.entry);
        }
        self.count(&message.destination, |c| c.dead_lettered += 1);
        log::warn!(
            "message {} of {} moved to {dlq} after {} deliveries",
            message.message_id(),
            message.destination,
            flight.entry.redeliveries
        );
        match target(message.id, &flight.source) {
            Some(t) => self.store_later(StoreOp::DeadLetter {
                target: t,
                message,
                dlq,
            }),
            None => self.route(vec![Arc::new(message.dead_lettered(&dlq))]),
        }
    }

    fn expire(&mut self, entry: Entry, source: &Source) {
        log::debug!("message {} expired", entry.id());
        if let Some(t) = target(entry.id(), source) {
            self.store_later(StoreOp::Commit {
                sends: Vec::new(),
                removals: vec![t],
                done: None,
                admission: Admission::default(),
            });
        }
    }

    pub(super) fn retry_blocked(&mut self) {
        let blocked: Vec<Source> = self.blocked.drain().collect();
        for source in blocked {
            self.dispatch(&source);
        }
        let subs: Vec<u64> = self.blocked_subs.drain().collect();
        for key in subs {
            self.feed(key);
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
            self.residency.release(entry.held_bytes());
            self.expire(entry, &source);
        }
    }

    /// Detach subscription `key` from its source and put its in-flight messages back; `written`
    /// is the connection's `Outbox::written` (what the client can have seen).
    pub(super) fn remove_sub(&mut self, key: u64, written: u64) -> Option<Sub> {
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
                    self.index.unsubscribe(topic, key);
                }
            }
        }
        self.blocked_subs.remove(&key);
        self.auto_pending.remove(&key);
        let mut consumed = Vec::new();
        for flight in sub.inflight.take_all() {
            let seen = flight.handed <= written;
            if seen && sub.ack == AckMode::Auto {
                consumed.extend(target(flight.entry.id(), &flight.source));
                self.count_dequeued(&flight.entry);
            } else {
                self.redeliver(flight, seen);
            }
        }
        if !consumed.is_empty() {
            self.store_later(StoreOp::Commit {
                sends: Vec::new(),
                removals: consumed,
                done: None,
                admission: Admission::default(),
            });
        }
        Some(sub)
    }
}
