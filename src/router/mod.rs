//! The router: ONE thread that owns all routing state (destinations, subscriptions, in-flight
//! deliveries, transactions' held acks), fed by one bounded channel (`RouterMsg`).
//!
//! Senders: session readers (requests, answered on the session's own reply channel), and the store
//! writer (committed messages and durable subscriptions, in commit order). Because both come through
//! the same FIFO channel, a durable subscription registered by the store is known here before the
//! session that asked for it subscribes to it.
//!
//! The router never blocks on anyone: deliveries go to outboxes only when they have room
//! (`Outbox::has_room`), replies go to reply channels a session is waiting on, and its own store
//! writes (auto-ack removals, redelivery counts, dead-lettering) wait in `store_backlog` and are
//! handed over with `try_send` (the writer may be blocked forwarding to us: blocking here could
//! deadlock). The backlog grows only with deliveries and acks, which the windows bound.
//! Submodules: `deliver` (dispatch, redelivery, dead letters), `subscriptions` (subscribe, ack),
//! `paging` (bounded memory: which bodies stay in memory, loading the others), `topics`
//! (non-durable topic subscribers' bounded backlogs).

mod deliver;
mod paging;
mod stats;
mod subscriptions;
mod topics;

use crate::message::{Kind, Message, NON_PERSISTENT_BIT};
use crate::outbox::Outbox;
use crate::queue::{Entry, Queue, Slot};
use crate::store::{Committed, DurableRow, PageRequest, Paged, Recovered, StoreOp, Target};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use stats::{Browsed, Counters, DestinationStats, Stats};
pub use subscriptions::{AckMode, AckRef, SubscribeRequest};

/// A connection's number, unique for the process.
pub type ConnId = u64;

/// Depth of the router's inbox before senders block.
pub const INBOX_DEPTH: usize = 8192;

/// A session's request or the store's news.
pub enum RouterMsg {
    /// A client completed CONNECT; deliveries go to `outbox`, answers to `reply`.
    Connected {
        conn: ConnId,
        outbox: Outbox,
        reply: Sender<Answer>,
    },
    Subscribe {
        conn: ConnId,
        request: SubscribeRequest,
    },
    /// Would `Subscribe` be refused? Asked before a durable subscription touches the store.
    CheckSubscribe {
        conn: ConnId,
        id: String,
        durable: (String, String),
    },
    /// Remove subscription `id`; with `durable` also delete that durable subscription.
    Unsubscribe {
        conn: ConnId,
        id: Option<String>,
        durable: Option<(String, String)>,
    },
    /// ACK (`nack` false) or NACK; with `transaction`, the ack is held until it ends.
    Ack {
        conn: ConnId,
        ack: AckRef,
        nack: bool,
        transaction: Option<String>,
    },
    /// COMMIT (`commit`) or ABORT of a transaction's held acks.
    EndTransaction {
        conn: ConnId,
        transaction: String,
        commit: bool,
    },
    /// The connection is gone: its unacknowledged messages go back for redelivery.
    Disconnected {
        conn: ConnId,
    },
    Committed(Committed),
    /// Bodies the pager loaded.
    PagedIn(Paged<Source>),
    /// Figures for the status endpoints.
    Stats(Sender<Stats>),
    /// The first `limit` waiting messages of a queue.
    Browse {
        destination: String,
        limit: usize,
        reply: Sender<Vec<Browsed>>,
    },
    /// Remove a queue's waiting messages; answers how many.
    Purge {
        destination: String,
        reply: Sender<usize>,
    },
    Shutdown,
}

/// What a session's request gets back on its reply channel: the reply, and the store writes
/// the request caused in the router (redelivery counts, dead-lettering, auto-ack removals).
/// The session hands those to the store before anything else, so a RECEIPT it sends after them
/// comes only once they are committed.
pub struct Answer {
    pub reply: Reply,
    pub writes: Vec<StoreOp>,
}

/// The outcome of a session's request.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    Done,
    /// What the request asks the store to remove (ACK, COMMIT).
    Removals(Vec<Target>),
    /// UNSUBSCRIBE removed this durable subscription: the store must delete it.
    DurableRemoved(u64),
    /// The request was refused; the text goes into the ERROR frame.
    Refused(String),
}

/// Where an entry waits (and a delivered one returns when not acknowledged).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    Queue(Arc<str>),
    Durable(u64),
    /// A non-durable topic subscription: nothing to return to.
    Topic,
}

struct InFlight {
    entry: Entry,
    source: Source,
    /// Its number among the deliveries handed to the connection's outbox (see
    /// `Outbox::written`): a delivery never written is put back without counting.
    handed: u64,
}

struct Sub {
    conn: ConnId,
    id: Arc<str>,
    source: Source,
    /// Topic name for non-durable topic subscriptions (to detach on removal).
    topic: Option<Arc<str>>,
    ack: AckMode,
    prefetch: usize,
    /// Delivered and not yet acknowledged, in delivery order (client acks are cumulative).
    inflight: VecDeque<InFlight>,
    /// Non-durable topic subscriptions: messages waiting for room (see `topics`).
    backlog: VecDeque<Arc<Message>>,
    backlog_bytes: usize,
}

struct Conn {
    outbox: Outbox,
    reply: Sender<Answer>,
    /// Client subscription id -> router subscription key.
    subs: HashMap<String, u64>,
    /// Acks inside open transactions, per transaction id.
    held: HashMap<String, Vec<InFlight>>,
    /// Deliveries handed to the outbox so far.
    handed: u64,
}

#[derive(Default)]
struct QueueDest {
    queue: Queue,
    consumers: Vec<u64>,
    /// Round-robin position in `consumers`.
    next: usize,
}

struct Durable {
    row: DurableRow,
    queue: Queue,
    active: Option<u64>,
}

/// The routing state, owned by the router thread.
pub struct Router {
    conns: HashMap<ConnId, Conn>,
    subs: HashMap<u64, Sub>,
    queues: HashMap<Arc<str>, QueueDest>,
    topics: HashMap<Arc<str>, Vec<u64>>,
    durables: HashMap<u64, Durable>,
    durable_names: HashMap<(String, String), u64>,
    /// Sources that have pending messages and a consumer whose outbox was full.
    blocked: HashSet<Source>,
    /// Topic subscriptions with a backlog waiting for room.
    blocked_subs: HashSet<u64>,
    /// Auto-ack subscriptions with deliveries not yet known to be written.
    auto_pending: HashSet<u64>,
    /// Per-destination totals for the status endpoints.
    counters: HashMap<Arc<str>, Counters>,
    store: Sender<StoreOp>,
    store_backlog: VecDeque<StoreOp>,
    /// Handling a session's request: store writes go into `collected` for its answer.
    in_request: bool,
    collected: Vec<StoreOp>,
    pager: Sender<PageRequest<Source>>,
    /// Sources with a page request out.
    paging: HashSet<Source>,
    /// Bytes of messages held by pending resident entries, against `memory_limit`.
    resident: usize,
    memory_limit: usize,
    max_redeliveries: u32,
    next_seq: u64,
    next_sub: u64,
}

/// How often pending work (full outboxes, store backlog) is retried while there is some.
const RETRY: Duration = Duration::from_millis(5);
/// How often expired messages are swept out.
const SWEEP: Duration = Duration::from_secs(1);

impl Router {
    /// Build the state from what the store recovered, in the store's order.
    pub fn new(
        store: Sender<StoreOp>,
        pager: Sender<PageRequest<Source>>,
        limits: (u32, usize),
        recovered: Recovered,
    ) -> Router {
        let (max_redeliveries, memory_limit) = limits;
        let mut router = Router {
            conns: HashMap::new(),
            subs: HashMap::new(),
            queues: HashMap::new(),
            topics: HashMap::new(),
            durables: HashMap::new(),
            durable_names: HashMap::new(),
            blocked: HashSet::new(),
            blocked_subs: HashSet::new(),
            auto_pending: HashSet::new(),
            counters: HashMap::new(),
            store,
            store_backlog: VecDeque::new(),
            in_request: false,
            collected: Vec::new(),
            pager,
            paging: HashSet::new(),
            resident: 0,
            memory_limit,
            max_redeliveries,
            next_seq: 1,
            next_sub: 1,
        };
        for (name, meta, redeliveries) in recovered.queued {
            let entry = router.recovered_entry(meta, redeliveries);
            router.queues.entry(name).or_default().queue.push(entry);
        }
        for row in recovered.durables {
            router.add_durable(row);
        }
        for (durable, meta, redeliveries) in recovered.entries {
            let entry = router.recovered_entry(meta, redeliveries);
            if let Some(d) = router.durables.get_mut(&durable) {
                d.queue.push(entry);
            }
        }
        router
    }

    /// Recovered entries start paged out. Everything recovered may have been delivered before
    /// the restart: say so.
    fn recovered_entry(&mut self, meta: crate::queue::PagedMeta, count: u32) -> Entry {
        Entry {
            slot: Slot::Paged(meta),
            seq: self.seq(),
            redeliveries: count,
            redelivered: true,
        }
    }

    fn seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    /// Start the router thread on its inbox (made by the caller, who also hands its sender
    /// to the store writer).
    pub fn spawn(mut self, inbox: Receiver<RouterMsg>) -> std::io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name("router".to_string())
            .spawn(move || self.run(inbox))
    }

    fn run(&mut self, rx: Receiver<RouterMsg>) {
        let mut last_sweep = Instant::now();
        loop {
            let idle = self.blocked.is_empty()
                && self.blocked_subs.is_empty()
                && self.auto_pending.is_empty();
            let wait = if idle && self.store_backlog.is_empty() {
                SWEEP
            } else {
                RETRY
            };
            match rx.recv_timeout(wait) {
                Ok(RouterMsg::Shutdown) | Err(RecvTimeoutError::Disconnected) => break,
                Ok(msg) => {
                    self.handle(msg);
                    // Take what else is waiting before the slower retry work below.
                    for msg in rx.try_iter().take(256) {
                        if matches!(msg, RouterMsg::Shutdown) {
                            return self.finish();
                        }
                        self.handle(msg);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            self.settle_auto();
            self.retry_blocked();
            if last_sweep.elapsed() >= SWEEP {
                self.sweep_expired();
                last_sweep = Instant::now();
            }
            self.flush_backlog();
        }
        self.finish();
    }

    /// At shutdown the store writer is draining; each hand-over is still bounded, since the
    /// writer may itself be blocked forwarding to this (no longer read) inbox.
    fn finish(&mut self) {
        for op in self.store_backlog.drain(..) {
            if self.store.send_timeout(op, Duration::from_secs(1)).is_err() {
                log::warn!("store writes of the router dropped at shutdown");
                break;
            }
        }
    }

    fn handle(&mut self, msg: RouterMsg) {
        self.in_request = matches!(
            msg,
            RouterMsg::Subscribe { .. }
                | RouterMsg::CheckSubscribe { .. }
                | RouterMsg::Unsubscribe { .. }
                | RouterMsg::Ack { .. }
                | RouterMsg::EndTransaction { .. }
        );
        self.dispatch_msg(msg);
        self.in_request = false;
        self.store_backlog.extend(self.collected.drain(..));
    }

    fn dispatch_msg(&mut self, msg: RouterMsg) {
        match msg {
            RouterMsg::Connected {
                conn,
                outbox,
                reply,
            } => {
                self.conns.insert(conn, Conn::new(outbox, reply));
            }
            RouterMsg::Subscribe { conn, request } => {
                let reply = self.subscribe(conn, request);
                self.reply(conn, reply);
            }
            RouterMsg::CheckSubscribe { conn, id, durable } => {
                let reply = match self.refusal(conn, &id, Some(&durable)) {
                    Some(problem) => Reply::Refused(problem),
                    None => Reply::Done,
                };
                self.reply(conn, reply);
            }
            RouterMsg::Unsubscribe { conn, id, durable } => {
                let reply = self.unsubscribe(conn, id, durable);
                self.reply(conn, reply);
            }
            RouterMsg::Ack {
                conn,
                ack,
                nack,
                transaction,
            } => {
                let reply = self.ack(conn, ack, nack, transaction);
                self.reply(conn, reply);
            }
            RouterMsg::EndTransaction {
                conn,
                transaction,
                commit,
            } => {
                let reply = self.end_transaction(conn, &transaction, commit);
                self.reply(conn, reply);
            }
            RouterMsg::Disconnected { conn } => self.disconnected(conn),
            RouterMsg::Committed(Committed::Messages(messages)) => self.route(messages),
            RouterMsg::Committed(Committed::Durable(row)) => self.add_durable(row),
            RouterMsg::PagedIn(paged) => self.paged_in(paged),
            RouterMsg::Stats(reply) => {
                let _ = reply.try_send(self.stats());
            }
            RouterMsg::Browse {
                destination,
                limit,
                reply,
            } => {
                let _ = reply.try_send(self.browse(&destination, limit));
            }
            RouterMsg::Purge { destination, reply } => {
                let _ = reply.try_send(self.purge(&destination));
            }
            RouterMsg::Shutdown => {}
        }
    }

    /// The session is blocked on its reply channel (capacity 1, one request at a time), so
    /// this never finds it full.
    fn reply(&mut self, conn: ConnId, reply: Reply) {
        let writes = std::mem::take(&mut self.collected);
        let answer = Answer { reply, writes };
        match self.conns.get(&conn) {
            Some(c) => {
                if let Err(e) = c.reply.try_send(answer) {
                    // The session is gone: its writes still must reach the store.
                    self.store_backlog.extend(e.into_inner().writes);
                }
            }
            None => self.store_backlog.extend(answer.writes),
        }
    }

    fn add_durable(&mut self, row: DurableRow) {
        if let Some(existing) = self.durables.get_mut(&row.id) {
            if existing.row.topic != row.topic {
                // Re-pointed to another topic: the store dropped what it held.
                let dropped: usize = existing
                    .queue
                    .drain()
                    .iter()
                    .map(Entry::resident_bytes)
                    .sum();
                existing.row = row;
                self.resident -= dropped;
            }
            return;
        }
        self.durable_names
            .insert((row.client_id.clone(), row.name.clone()), row.id);
        self.durables.insert(
            row.id,
            Durable {
                row,
                queue: Queue::default(),
                active: None,
            },
        );
    }

    /// Store writes of the router's own, handed over without blocking (see the module doc).
    fn flush_backlog(&mut self) {
        while let Some(op) = self.store_backlog.pop_front() {
            match self.store.try_send(op) {
                Ok(()) => {}
                Err(TrySendError::Full(op)) => {
                    self.store_backlog.push_front(op);
                    return;
                }
                Err(TrySendError::Disconnected(_)) => {
                    self.store_backlog.clear();
                    return;
                }
            }
        }
    }

    /// A store write of the router's own: handed back with the current request's answer (see
    /// `Answer`), or, outside a request, queued in the backlog.
    fn store_later(&mut self, op: StoreOp) {
        if self.in_request {
            self.collected.push(op);
        } else {
            self.store_backlog.push_back(op);
        }
    }
}

impl Conn {
    fn new(outbox: Outbox, reply: Sender<Answer>) -> Conn {
        Conn {
            outbox,
            reply,
            subs: HashMap::new(),
            held: HashMap::new(),
            handed: 0,
        }
    }
}

/// What the store must remove when this entry is acknowledged; None when nothing was stored.
fn target(id: u64, source: &Source) -> Option<Target> {
    if id & NON_PERSISTENT_BIT != 0 {
        return None;
    }
    match source {
        Source::Queue(_) => Some(Target::Message(id)),
        Source::Durable(sub) => Some(Target::Entry {
            sub: *sub,
            message: id,
        }),
        Source::Topic => None,
    }
}

fn kind_of(destination: &str) -> Kind {
    if destination.starts_with("/topic/") {
        Kind::Topic
    } else {
        Kind::Queue
    }
}
