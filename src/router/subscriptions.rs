//! Subscribing, unsubscribing, acknowledging and transactions' held acks; connections leaving.
//! Runs on the router thread only; each request returns the `Reply` its session waits for, and
//! queues the store writes it causes (`Router::store_later`).

use super::{target, ConnId, Deliveries, Ending, Reply, Router, Source, Sub};
use crate::command::{AckMode, AckRef, SubscriptionRef};
use crate::flow_control::Admission;
use crate::message::{parse_message_id, Kind, Message};
use crate::store::{StoreOp, Target};
use std::collections::VecDeque;
use std::sync::Arc;

/// A validated SUBSCRIBE.
#[derive(Clone, Debug)]
pub struct SubscribeRequest {
    pub id: String,
    pub destination: String,
    pub kind: Kind,
    pub ack: AckMode,
    pub prefetch: usize,
    /// (client-id, subscription name) of a durable topic subscription; the store has created it.
    pub durable: Option<(String, String)>,
}

/// The 1.2 `ack` header the router issues: `SUBSCRIPTIONKEY-MESSAGEID`.
pub fn format_ack_id(key: u64, message_id: &str) -> String {
    format!("{key}-{message_id}")
}

fn parse_ack_id(text: &str) -> Option<(u64, u64)> {
    let (key, message) = text.split_once('-')?;
    Some((key.parse().ok()?, parse_message_id(message)?))
}

impl Router {
    /// Why a SUBSCRIBE with this id (and durable name) would be refused, if it would.
    pub(super) fn refusal(
        &self,
        conn: ConnId,
        id: &str,
        durable: Option<&(String, String)>,
    ) -> Option<String> {
        let Some(c) = self.conns.get(&conn) else {
            return Some("not connected".to_string());
        };
        if c.subs.contains_key(id) {
            return Some(format!(
                "subscription id `{id}` is already in use on this connection"
            ));
        }
        if c.subs.len() >= self.max_subscriptions {
            return Some(format!(
                "this connection already has {} subscriptions, the limit",
                c.subs.len()
            ));
        }
        let (client_id, name) = durable?;
        let active = self
            .index
            .durable(&(client_id.clone(), name.clone()))
            .and_then(|d| self.durables.get(&d))
            .is_some_and(|d| d.active.is_some());
        active.then(|| {
            format!("durable subscription `{name}` of client `{client_id}` is already active")
        })
    }

    pub(super) fn subscribe(&mut self, conn: ConnId, request: SubscribeRequest) -> Reply {
        if let Some(problem) = self.refusal(conn, &request.id, request.durable.as_ref()) {
            return Reply::Refused(problem);
        }
        self.next_sub += 1;
        let key = self.next_sub;
        let destination: Arc<str> = Arc::from(request.destination.as_str());
        let (source, topic) = match (&request.durable, request.kind) {
            (Some(name), _) => {
                let Some(id) = self.index.durable(name) else {
                    return Reply::Refused(format!("durable subscription `{}` not found", name.1));
                };
                let Some(durable) = self.durables.get_mut(&id) else {
                    return Reply::Refused(format!("durable subscription `{}` not found", name.1));
                };
                if durable.active.is_some() {
                    return Reply::Refused(format!(
                        "durable subscription `{}` of client `{}` is already active",
                        name.1, name.0
                    ));
                }
                durable.active = Some(key);
                (Source::Durable(id), None)
            }
            (None, Kind::Queue) => {
                let dest = self.queues.entry(destination.clone()).or_default();
                dest.consumers.push(key);
                (Source::Queue(destination.clone()), None)
            }
            (None, Kind::Topic) => {
                self.index.subscribe(&destination, key);
                (Source::Topic, Some(destination.clone()))
            }
        };
        let sub = Sub {
            conn,
            id: Arc::from(request.id.as_str()),
            destination,
            source: source.clone(),
            topic,
            ack: request.ack,
            prefetch: request.prefetch,
            inflight: Deliveries::default(),
            backlog: VecDeque::new(),
            backlog_bytes: 0,
        };
        self.subs.insert(key, sub);
        if let Some(c) = self.conns.get_mut(&conn) {
            c.subs.insert(request.id, key);
        }
        self.dispatch(&source);
        Reply::Done
    }

    /// UNSUBSCRIBE the subscription `sub` names; with `durable`, also delete that durable
    /// subscription (which must then be inactive or be this very subscription).
    pub(super) fn unsubscribe(
        &mut self,
        conn: ConnId,
        sub: Option<SubscriptionRef>,
        durable: Option<(String, String)>,
    ) -> Reply {
        let keys = match &sub {
            Some(named) => self.take_subs(conn, named),
            None => Vec::new(),
        };
        if !keys.is_empty() {
            let written = self.conns.get(&conn).map_or(0, |c| c.outbox.written());
            for key in keys {
                self.remove_sub(key, written);
            }
        } else if durable.is_none() {
            return Reply::Refused(match sub {
                Some(SubscriptionRef::Destination(d)) => {
                    format!("no subscription to `{d}` on this connection")
                }
                Some(SubscriptionRef::Id(id)) => {
                    format!("no subscription with id `{id}` on this connection")
                }
                None => "UNSUBSCRIBE names no subscription".to_string(),
            });
        }
        let Some(name) = durable else {
            return Reply::Done;
        };
        let Some(durable_id) = self.index.durable(&name) else {
            return Reply::Refused(format!("durable subscription `{}` not found", name.1));
        };
        if self
            .durables
            .get(&durable_id)
            .is_some_and(|d| d.active.is_some())
        {
            return Reply::Refused(format!(
                "durable subscription `{}` is active on another connection",
                name.1
            ));
        }
        if let Some(mut durable) = self.durables.remove(&durable_id) {
            self.index.remove_durable(&durable.row);
            self.residency.release(durable.queue.clear());
        }
        self.blocked.remove(&Source::Durable(durable_id));
        self.store_later(StoreOp::DeleteDurable { id: durable_id });
        Reply::Done
    }

    /// Take the named subscriptions out of the connection's index: by id, or (1.0) every one
    /// to a destination.
    fn take_subs(&mut self, conn: ConnId, named: &SubscriptionRef) -> Vec<u64> {
        let Some(c) = self.conns.get_mut(&conn) else {
            return Vec::new();
        };
        match named {
            SubscriptionRef::Id(id) => c.subs.remove(id).into_iter().collect(),
            SubscriptionRef::Destination(destination) => {
                let subs = &self.subs;
                let mut keys = Vec::new();
                c.subs.retain(|_, key| {
                    let matches = subs
                        .get(key)
                        .is_some_and(|s| &*s.destination == destination.as_str());
                    if matches {
                        keys.push(*key);
                    }
                    !matches
                });
                keys.sort_unstable();
                keys
            }
        }
    }

    /// The client id of the auto subscription an ACK/NACK names, if it names one (its `ack`
    /// id, or 1.1's `subscription`).
    fn auto_subscription(&self, conn: ConnId, ack: &AckRef) -> Option<Arc<str>> {
        let c = self.conns.get(&conn)?;
        let key = match ack {
            AckRef::Id(text) => parse_ack_id(text).map(|(key, _)| key)?,
            AckRef::MessageOf { subscription, .. } => *c.subs.get(subscription)?,
            AckRef::Message(_) => return None,
        };
        let sub = self.subs.get(&key).filter(|s| s.conn == conn)?;
        (sub.ack == AckMode::Auto).then(|| sub.id.clone())
    }

    /// Find the subscription and position of the acknowledged delivery. Lenient like ActiveMQ:
    /// an `ack` id (`KEY-MESSAGEID`) is accepted where a message id is expected, as clients of
    /// 1.0/1.1 often echo the MESSAGE's `ack` header.
    fn resolve(&self, conn: ConnId, ack: &AckRef) -> Result<(u64, usize), String> {
        let c = self.conns.get(&conn).ok_or("not connected")?;
        let (text, subscription) = match ack {
            AckRef::Id(id) => (id.as_str(), None),
            AckRef::MessageOf {
                message_id,
                subscription,
            } => {
                let key = c
                    .subs
                    .get(subscription)
                    .ok_or_else(|| format!("no subscription with id `{subscription}`"))?;
                (message_id.as_str(), Some(*key))
            }
            AckRef::Message(message_id) => (message_id.as_str(), None),
        };
        let (key, id) = match (parse_message_id(text), parse_ack_id(text)) {
            (Some(id), _) => (subscription, id),
            (None, Some((key, id))) => (Some(key), id),
            (None, None) => return Err(format!("`{text}` is not an id this broker issued")),
        };
        let keys: Vec<u64> = match key {
            Some(k) if c.subs.values().any(|&mine| mine == k) => vec![k],
            Some(_) => {
                return Err(format!(
                    "`{text}` is not for a subscription of this connection"
                ))
            }
            None => c.subs.values().copied().collect(),
        };
        keys.into_iter()
            .find_map(|k| {
                let sub = self.subs.get(&k)?;
                let pos = sub.inflight.position(id)?;
                Some((k, pos))
            })
            .ok_or_else(|| format!("message `{text}` is not awaiting acknowledgement here"))
    }

    pub(super) fn ack(
        &mut self,
        conn: ConnId,
        ack: AckRef,
        nack: bool,
        transaction: Option<String>,
    ) -> Reply {
        // An auto subscription's deliveries are acknowledged as they are written, whether or
        // not the router has settled them yet: decided by the mode, not by that race.
        if let Some(id) = self.auto_subscription(conn, &ack) {
            return match nack {
                true => Reply::Refused(format!(
                    "NACK on subscription `{id}`, whose ack mode is auto: its messages are \
                     acknowledged as they are sent, there is nothing to NACK"
                )),
                false => Reply::Done,
            };
        }
        let (key, pos) = match self.resolve(conn, &ack) {
            Ok(found) => found,
            Err(problem) => return Reply::Refused(problem),
        };
        if let (Some(tx), false) = (&transaction, nack) {
            if let Err(problem) = self.may_hold(conn, key, pos, tx) {
                return Reply::Refused(problem);
            }
        }
        let Some(sub) = self.subs.get_mut(&key) else {
            return Reply::Refused("subscription vanished".to_string());
        };
        let taken = sub.inflight.take_covered(sub.ack, pos);
        let source = sub.source.clone();
        let reply = if nack {
            for flight in taken {
                self.redeliver(flight, true);
            }
            Reply::Done
        } else if let Some(tx) = transaction {
            if let Some(c) = self.conns.get_mut(&conn) {
                let (flights, bytes) = c.held.entry(tx).or_default();
                *bytes += taken.iter().map(|f| f.entry.weight()).sum::<usize>();
                flights.extend(taken);
            }
            Reply::Done
        } else {
            let removals = taken
                .iter()
                .filter_map(|f| target(f.entry.id(), &f.source))
                .collect();
            for f in &taken {
                self.count_dequeued(&f.entry);
            }
            self.remove_stored(Vec::new(), removals, Admission::default());
            Reply::Done
        };
        match source {
            Source::Topic => self.feed(key),
            source => self.dispatch(&source),
        }
        reply
    }

    /// Acks held in a transaction keep their messages until it ends, and no longer count
    /// against the prefetch window: their weight is bounded per transaction instead.
    fn may_hold(&self, conn: ConnId, key: u64, pos: usize, tx: &str) -> Result<(), String> {
        let Some(sub) = self.subs.get(&key) else {
            return Ok(());
        };
        let adding = sub.inflight.weight_covered(sub.ack, pos);
        let holding = self
            .conns
            .get(&conn)
            .and_then(|c| c.held.get(tx))
            .map_or(0, |(_, bytes)| *bytes);
        let limit = self.max_transaction_bytes;
        if holding + adding > limit {
            return Err(format!(
                "transaction `{tx}` would hold more than {limit} bytes of acknowledged \
                 messages; COMMIT or ABORT it first"
            ));
        }
        Ok(())
    }

    /// COMMIT: the held acks become removals, committed with the transaction's SENDs. ABORT:
    /// they are redelivered.
    pub(super) fn end_transaction(&mut self, conn: ConnId, transaction: &str, end: Ending) {
        let held = self
            .conns
            .get_mut(&conn)
            .and_then(|c| c.held.remove(transaction))
            .map(|(flights, _)| flights)
            .unwrap_or_default();
        let Ending::Commit { sends, admission } = end else {
            for flight in held {
                self.redeliver(flight, true);
            }
            return;
        };
        let removals = held
            .iter()
            .filter_map(|f| target(f.entry.id(), &f.source))
            .collect();
        for f in &held {
            self.count_dequeued(&f.entry);
        }
        self.remove_stored(sends, removals, admission);
    }

    /// Queue SENDs and removals (when there are any) as one store commit.
    fn remove_stored(&mut self, sends: Vec<Message>, removals: Vec<Target>, admission: Admission) {
        if sends.is_empty() && removals.is_empty() {
            return;
        }
        self.store_later(StoreOp::Commit {
            sends,
            removals,
            done: None,
            admission,
        });
    }

    /// The connection closed: its subscriptions end and what it had not acknowledged (also
    /// inside open transactions) goes back for redelivery.
    pub(super) fn disconnected(&mut self, conn: ConnId) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        let written = c.outbox.written();
        for key in c.subs.into_values() {
            self.remove_sub(key, written);
        }
        for flight in c.held.into_values().flat_map(|(flights, _)| flights) {
            self.redeliver(flight, true);
        }
    }
}
