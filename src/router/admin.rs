//! The admin requests of the status listener: browse a queue's messages with their contents,
//! purge, move (retry dead letters), delete a queue, list connections and durable
//! subscriptions, remove a durable subscription. Runs on the router thread only; the status
//! thread asks with `RouterMsg::Admin` and waits (bounded) on its own reply channel. Permissions
//! are the status thread's to check before it asks.
//!
//! A move changes the rows' destination in the store first (`StoreOp::Move`): the entries wait
//! aside (`Router::moving`) until the writer forwards `Committed::Moved`, then join their new
//! queue and the reply goes out. So a body paged in later is read with its new destination, and
//! a crash before the commit leaves the messages where they were.

use super::{ConnId, Router, Source};
use crate::message::{Kind, Message, NON_PERSISTENT_BIT};
use crate::queue::{Entry, Slot};
use crate::store::StoreOp;
use crossbeam_channel::Sender;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

/// Messages one move takes at most: a store transaction of this many rows is still quick to
/// certify on Galera; an operator moves a deeper queue by repeating the command.
pub const MOVE_LIMIT: usize = 10_000;
/// Body bytes a browse shows of each message.
pub const BODY_PREVIEW: usize = 200;

/// What an admin asks the router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminRequest {
    /// The first `limit` waiting messages of a queue.
    Browse {
        destination: String,
        limit: usize,
    },
    /// Remove a queue's waiting messages.
    Purge {
        destination: String,
    },
    /// Move a queue's waiting messages (at most `MOVE_LIMIT`) to `to`; None: a dead-letter
    /// queue's `/queue/DLQ.NAME` back to `/queue/NAME` (retry).
    Move {
        from: String,
        to: Option<String>,
    },
    /// Forget a queue: its waiting messages and its figures; refused while it has consumers.
    Delete {
        destination: String,
    },
    Connections,
    Durables,
    /// Delete a durable subscription (and what it holds); refused while it is active.
    RemoveDurable {
        client_id: String,
        name: String,
    },
}

/// The router's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminReply {
    /// Up to the asked number of messages, and how many wait in all.
    Browsed(Vec<Browsed>, usize),
    Connections(Vec<ConnectionView>),
    Durables(Vec<DurableView>),
    /// Done; the words say what was done.
    Done(String),
    /// Not done; the words say why.
    Refused(String),
}

/// A waiting message as `browse` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Browsed {
    pub id: u64,
    pub priority: u8,
    pub redeliveries: u32,
    /// What it holds, when its body is in memory (else it waits in the store).
    pub contents: Option<Contents>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Contents {
    pub persistent: bool,
    /// Epoch milliseconds when the broker received it.
    pub timestamp: i64,
    pub expires: i64,
    pub original_destination: Option<String>,
    pub headers: Vec<(String, String)>,
    /// The body's full size, and its first `BODY_PREVIEW` bytes.
    pub size: usize,
    pub body: Vec<u8>,
}

/// What a session tells the router about itself when it connects.
#[derive(Debug)]
pub struct ConnInfo {
    pub address: String,
    /// The configured user; None when no users are configured.
    pub login: Option<String>,
    pub client_id: Option<String>,
    pub version: &'static str,
    /// Epoch milliseconds of the CONNECT.
    pub connected: i64,
    /// Epoch milliseconds of the last frame read (heart-beats not counted); the session's
    /// reader updates it.
    pub last_frame: Arc<AtomicI64>,
}

/// One connection as `connections` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionView {
    pub id: ConnId,
    pub address: String,
    pub login: Option<String>,
    pub client_id: Option<String>,
    pub version: &'static str,
    pub connected: i64,
    pub last_frame: i64,
    /// (subscription id, destination, messages in flight), by id.
    pub subscriptions: Vec<(String, String, usize)>,
    /// Acknowledged inside transactions not yet committed.
    pub held: usize,
}

/// One durable subscription as `durables` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DurableView {
    pub client_id: String,
    pub name: String,
    pub topic: String,
    pub pending: usize,
    pub active: bool,
}

/// A move waiting for its store commit.
pub(super) struct Moving {
    to: Arc<str>,
    entries: Vec<Entry>,
    from: String,
    reply: Sender<AdminReply>,
}

impl Router {
    pub(super) fn admin(&mut self, request: AdminRequest, reply: Sender<AdminReply>) {
        let answer = match request {
            AdminRequest::Browse { destination, limit } => self.browse(&destination, limit),
            AdminRequest::Purge { destination } => {
                let n = self.purge(&destination);
                AdminReply::Done(format!("purged {n} messages from {destination}"))
            }
            AdminRequest::Move { from, to } => match self.move_queue(from, to, reply.clone()) {
                Some(answer) => answer,
                None => return,
            },
            AdminRequest::Delete { destination } => self.delete_queue(&destination),
            AdminRequest::Connections => AdminReply::Connections(self.connections()),
            AdminRequest::Durables => AdminReply::Durables(self.durable_views()),
            AdminRequest::RemoveDurable { client_id, name } => self.remove_durable(client_id, name),
        };
        let _ = reply.try_send(answer);
    }

    fn browse(&self, destination: &str, limit: usize) -> AdminReply {
        let Some(dest) = self.queues.get(destination) else {
            return AdminReply::Browsed(Vec::new(), 0);
        };
        let list = dest
            .queue
            .iter()
            .take(limit)
            .map(|e| Browsed {
                id: e.id(),
                priority: e.priority(),
                redeliveries: e.redeliveries,
                contents: e.message().map(|m| Contents {
                    persistent: m.persistent,
                    timestamp: m.timestamp,
                    expires: m.expires,
                    original_destination: m.original_destination.clone(),
                    headers: m.headers.clone(),
                    size: m.body.len(),
                    body: m.body[..m.body.len().min(BODY_PREVIEW)].to_vec(),
                }),
            })
            .collect();
        AdminReply::Browsed(list, dest.queue.len())
    }

    /// Remove every waiting (not in-flight) message of a queue; returns how many.
    pub(super) fn purge(&mut self, destination: &str) -> usize {
        let Some(dest) = self.queues.get_mut(destination) else {
            return 0;
        };
        // Bare ids, then the entries go: a deep queue is not copied on its way out.
        let purged = dest.queue.len();
        let mut ids = Vec::with_capacity(purged);
        ids.extend(
            dest.queue
                .iter()
                .map(Entry::id)
                .filter(|id| id & NON_PERSISTENT_BIT == 0),
        );
        self.residency.release(dest.queue.clear());
        self.residency
            .answered(&Source::Queue(Arc::from(destination)));
        self.count(destination, |c| c.dequeued += purged as u64);
        self.store_later(StoreOp::Purge { ids });
        log::info!("purged {purged} messages from {destination}");
        purged
    }

    /// Take up to `MOVE_LIMIT` waiting messages out of `from` and ask the store to re-point
    /// their rows; None: the reply follows the commit (`moved`).
    fn move_queue(
        &mut self,
        from: String,
        to: Option<String>,
        reply: Sender<AdminReply>,
    ) -> Option<AdminReply> {
        let to = match to {
            Some(to) => to,
            None => match from.strip_prefix("/queue/DLQ.") {
                Some(name) => format!("/queue/{name}"),
                None => {
                    let why = format!(
                        "{from} is not a dead-letter queue (/queue/DLQ.NAME); move names both"
                    );
                    return Some(AdminReply::Refused(why));
                }
            },
        };
        if to == from {
            return Some(AdminReply::Refused(format!("{from} is where they are")));
        }
        let Some(dest) = self.queues.get_mut(from.as_str()) else {
            return Some(AdminReply::Done(format!(
                "moved 0 messages from {from} to {to}"
            )));
        };
        let mut entries = Vec::new();
        while entries.len() < MOVE_LIMIT {
            let Some(entry) = dest.queue.pop_front() else {
                break;
            };
            entries.push(entry);
        }
        self.residency
            .release(entries.iter().map(Entry::held_bytes).sum::<usize>());
        self.residency
            .answered(&Source::Queue(Arc::from(from.as_str())));
        let ids: Vec<u64> = entries
            .iter()
            .map(Entry::id)
            .filter(|id| id & NON_PERSISTENT_BIT == 0)
            .collect();
        let moving = Moving {
            to: Arc::from(to.as_str()),
            entries,
            from,
            reply,
        };
        if ids.is_empty() {
            return Some(self.arrive(moving));
        }
        let token = self.next_move;
        self.next_move += 1;
        self.moving.insert(token, moving);
        self.store_later(StoreOp::Move {
            ids,
            to: to.clone(),
            token,
        });
        None
    }

    /// The store re-pointed move `token`'s rows: its entries join their new queue.
    pub(super) fn moved(&mut self, token: u64) {
        if let Some(moving) = self.moving.remove(&token) {
            let reply = moving.reply.clone();
            let _ = reply.try_send(self.arrive(moving));
        }
    }

    fn arrive(&mut self, moving: Moving) -> AdminReply {
        let Moving {
            to, entries, from, ..
        } = moving;
        let n = entries.len();
        let source = Source::Queue(to.clone());
        for mut entry in entries {
            if let Slot::Resident(message, _) = &entry.slot {
                entry.slot = Slot::resident(Arc::new(Message {
                    destination: to.clone(),
                    kind: Kind::Queue,
                    original_destination: None,
                    ..(**message).clone()
                }));
            }
            entry.redeliveries = 0;
            self.push_entry(&source, entry);
        }
        self.count(&from, |c| c.dequeued += n as u64);
        self.count(&to, |c| c.enqueued += n as u64);
        self.check_full(&to);
        self.blocked.insert(source);
        log::info!("moved {n} messages from {from} to {to}");
        let left = self.queues.get(from.as_str()).map_or(0, |d| d.queue.len());
        if left > 0 {
            return AdminReply::Done(format!(
                "moved {n} messages from {from} to {to}; {left} wait still (run it again)"
            ));
        }
        AdminReply::Done(format!("moved {n} messages from {from} to {to}"))
    }

    fn delete_queue(&mut self, destination: &str) -> AdminReply {
        if let Some(dest) = self.queues.get(destination) {
            if !dest.consumers.is_empty() {
                return AdminReply::Refused(format!(
                    "{destination} has {} consumers: they must unsubscribe first",
                    dest.consumers.len()
                ));
            }
        }
        let purged = self.purge(destination);
        self.queues.remove(destination);
        self.counters.forget(destination);
        if self.full.remove(destination) {
            self.flow.set_full(&Arc::from(destination), false);
        }
        AdminReply::Done(format!(
            "deleted {destination} and its {purged} waiting messages"
        ))
    }

    fn connections(&self) -> Vec<ConnectionView> {
        let mut list: Vec<ConnectionView> = self
            .conns
            .iter()
            .map(|(&id, c)| {
                let mut subscriptions: Vec<(String, String, usize)> = c
                    .subs
                    .values()
                    .filter_map(|key| self.subs.get(key))
                    .map(|s| {
                        (
                            s.id.to_string(),
                            s.destination.to_string(),
                            s.inflight.len(),
                        )
                    })
                    .collect();
                subscriptions.sort();
                ConnectionView {
                    id,
                    address: c.info.address.clone(),
                    login: c.info.login.clone(),
                    client_id: c.info.client_id.clone(),
                    version: c.info.version,
                    connected: c.info.connected,
                    last_frame: c.info.last_frame.load(Ordering::Relaxed),
                    subscriptions,
                    held: c.held.values().map(|(flights, _)| flights.len()).sum(),
                }
            })
            .collect();
        list.sort_by_key(|c| c.id);
        list
    }

    fn durable_views(&self) -> Vec<DurableView> {
        let mut list: Vec<DurableView> = self
            .durables
            .values()
            .map(|d| DurableView {
                client_id: d.row.client_id.clone(),
                name: d.row.name.clone(),
                topic: d.row.topic.clone(),
                pending: d.queue.len(),
                active: d.active.is_some(),
            })
            .collect();
        list.sort_by(|a, b| (&a.client_id, &a.name).cmp(&(&b.client_id, &b.name)));
        list
    }

    fn remove_durable(&mut self, client_id: String, name: String) -> AdminReply {
        let key = (client_id, name);
        let Some(id) = self.index.durable(&key) else {
            return AdminReply::Refused(format!(
                "no durable subscription `{}` of client `{}`",
                key.1, key.0
            ));
        };
        if self.durables.get(&id).is_some_and(|d| d.active.is_some()) {
            return AdminReply::Refused(format!(
                "durable subscription `{}` of client `{}` is active: its subscriber must \
                 disconnect first",
                key.1, key.0
            ));
        }
        let mut pending = 0;
        if let Some(mut durable) = self.durables.remove(&id) {
            self.index.remove_durable(&durable.row);
            pending = durable.queue.len();
            self.residency.release(durable.queue.clear());
        }
        self.blocked.remove(&Source::Durable(id));
        self.residency.answered(&Source::Durable(id));
        self.store_later(StoreOp::DeleteDurable { id });
        log::info!(
            "removed durable subscription `{}` of client `{}` ({pending} pending messages)",
            key.1,
            key.0
        );
        AdminReply::Done(format!(
            "removed durable subscription `{}` of client `{}` and its {pending} pending messages",
            key.1, key.0
        ))
    }
}
