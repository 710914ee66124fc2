//! The router: ONE thread that owns all routing state (destinations, subscriptions, in-flight
//! deliveries, transactions' held acks), fed by one bounded channel (`RouterMsg`).
//!
//! Senders: session readers (requests, answered on the session's own reply channel), and the store
//! writer (committed messages and durable subscriptions, in commit order). Because both come through
//! the same FIFO channel, a durable subscription registered by the store is known here before the
//! session that asked for it subscribes to it.
//!
//! The router never blocks on anyone: deliveries go to outboxes only when they have room
//! (`Outbox::has_room`), replies go to reply channels a session is waiting on, and its store
//! writes take one route: `store_later` queues them in `store_backlog`, in order, and the loop
//! hands them to the writer with `try_send` (the writer may be blocked forwarding to us:
//! blocking here could deadlock). A request's RECEIPT (`Done`) rides behind the writes the
//! request caused, and its answer is held until they are handed over, so what the session sends
//! the store next comes after them. The backlog grows only with deliveries and acks, which the
//! prefetch windows bound.
//!
//! The router thread is the dispatcher; the state it keeps is in self-contained parts with no
//! I/O, each unit-tested on its own: `index::Index` (where a topic message goes, durable
//! subscriptions by name), `inflight::Deliveries` (a subscription's unacknowledged deliveries:
//! window, what an ACK covers), `paging::Residency` (the memory budget: resident or paged, which
//! pages to load) and `stats::CounterTable` (per-destination totals). The other submodules are
//! the router's handlers: `inbox` (the thread's loop and request handling), `deliver` (dispatch,
//! redelivery, dead letters), `subscriptions` (subscribe, ack), `paging` (loading bodies),
//! `topics` (non-durable topic subscribers' bounded backlogs), `stats` (figures for the status
//! endpoints), `admin` (the status listener's admin requests: browse, purge, move, delete,
//! connections, durable subscriptions).

mod admin;
mod deliver;
mod inbox;
mod index;
mod inflight;
mod paging;
mod stats;
mod subscriptions;
mod topics;

#[cfg(test)]
mod tests;

use inflight::{Deliveries, InFlight};

use crate::command::{AckMode, AckRef, SubscriptionRef};
use crate::flow_control::{Admission, FlowControl};
use crate::message::{Kind, Message, NON_PERSISTENT_BIT};
use crate::outbox::Outbox;
use crate::queue::{Entry, Queue, Slot};
use crate::store::{Committed, Done, DurableRow, PageRequest, Paged, Recovered, StoreOp, Target};
use crossbeam_channel::Sender;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

pub use admin::{
    AdminReply, AdminRequest, Browsed, ConnInfo, ConnectionView, DurableView, BODY_PREVIEW,
};
pub use stats::{DestinationStats, Stats};
pub use subscriptions::SubscribeRequest;

/// The configured bounds the router enforces.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_redeliveries: u32,
    /// Bytes of pending messages kept in memory (see `paging`).
    pub memory_limit: usize,
    /// Subscriptions per connection.
    pub max_subscriptions: usize,
    /// Waiting messages at which a queue's producers wait (flow control); 0 = no limit.
    pub max_queue_depth: usize,
    /// Weight of the messages one open transaction may hold acknowledged.
    pub max_transaction_bytes: usize,
}

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
        info: ConnInfo,
    },
    Subscribe {
        conn: ConnId,
        request: SubscribeRequest,
        receipt: Option<Done>,
    },
    /// Would `Subscribe` be refused? Asked before a durable subscription touches the store.
    CheckSubscribe {
        conn: ConnId,
        id: String,
        durable: (String, String),
    },
    /// The topic of a durable subscription (client-id, name), for the permission check of its
    /// removal; answered with `Reply::Topic`.
    DurableTopic {
        conn: ConnId,
        durable: (String, String),
    },
    /// Remove the subscription `sub` names; with `durable` also delete that durable
    /// subscription.
    Unsubscribe {
        conn: ConnId,
        sub: Option<SubscriptionRef>,
        durable: Option<(String, String)>,
        receipt: Option<Done>,
    },
    /// ACK (`nack` false) or NACK; with `transaction`, the ack is held until it ends.
    Ack {
        conn: ConnId,
        ack: AckRef,
        nack: bool,
        transaction: Option<String>,
        receipt: Option<Done>,
    },
    /// COMMIT or ABORT of a transaction: its held acks, and on COMMIT its SENDs, which the
    /// store commits with the acks' removals in one transaction.
    EndTransaction {
        conn: ConnId,
        transaction: String,
        end: Ending,
        receipt: Option<Done>,
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
    /// An admin request of the status listener (see `admin`).
    Admin {
        request: AdminRequest,
        reply: Sender<AdminReply>,
    },
    Shutdown,
}

/// How a transaction ends.
pub enum Ending {
    /// Its SENDs, and the flow-control budget they took.
    Commit {
        sends: Vec<Message>,
        admission: Admission,
    },
    Abort,
}

/// What a session's request gets back on its reply channel. A request that may write to the
/// store carries its `receipt` (the `Done` that sends the RECEIPT, or reports a failed commit).
/// When the request caused store writes, the receipt follows them to the store and the answer
/// comes once they are handed to the writer; when it caused none, it comes back here unused
/// and the session runs it at once.
pub struct Answer {
    pub reply: Reply,
    pub receipt: Option<Done>,
}

/// The outcome of a session's request.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    Done,
    /// The request was refused; the text goes into the ERROR frame.
    Refused(String),
    /// The topic of the durable subscription asked about (None: there is none).
    Topic(Option<String>),
}

/// Where an entry waits (and a delivered one returns when not acknowledged).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    Queue(Arc<str>),
    Durable(u64),
    /// A non-durable topic subscription: nothing to return to.
    Topic,
}

struct Sub {
    conn: ConnId,
    id: Arc<str>,
    /// The SUBSCRIBE's destination (what a 1.0 UNSUBSCRIBE may name instead of the id).
    destination: Arc<str>,
    source: Source,
    /// Topic name for non-durable topic subscriptions (to detach on removal).
    topic: Option<Arc<str>>,
    ack: AckMode,
    prefetch: usize,
    /// Delivered and not yet acknowledged, in delivery order (client acks are cumulative).
    inflight: Deliveries,
    /// Non-durable topic subscriptions: messages waiting for room (see `topics`).
    backlog: VecDeque<Arc<Message>>,
    backlog_bytes: usize,
}

struct Conn {
    outbox: Outbox,
    info: ConnInfo,
    reply: Sender<Answer>,
    /// Client subscription id -> router subscription key.
    subs: HashMap<String, u64>,
    /// Acks inside open transactions, per transaction id, with their messages' weight
    /// (bounded by `max_transaction_bytes`).
    held: HashMap<String, (Vec<InFlight>, usize)>,
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
    durables: HashMap<u64, Durable>,
    /// Where topic messages go, and durable subscriptions by name.
    index: index::Index,
    /// Sources that have pending messages and a consumer whose outbox was full.
    blocked: HashSet<Source>,
    /// Topic subscriptions with a backlog waiting for room.
    blocked_subs: HashSet<u64>,
    /// Auto-ack subscriptions with deliveries not yet known to be written.
    auto_pending: HashSet<u64>,
    /// Per-destination totals for the status endpoints.
    counters: stats::CounterTable,
    store: Sender<StoreOp>,
    /// The router's store writes not yet handed to the writer, in order (see the module doc).
    store_backlog: VecDeque<StoreOp>,
    /// Store writes queued and handed over so far: `queued - handed` are in the backlog.
    queued: u64,
    handed: u64,
    /// Answers held until the writes of their request are handed over: (`queued` after the
    /// request, connection, answer), in that order.
    deferred: VecDeque<(u64, ConnId, Answer)>,
    pager: Sender<PageRequest<Source>>,
    /// The memory budget of pending entries, and the page requests out (see `paging`).
    residency: paging::Residency,
    max_redeliveries: u32,
    max_subscriptions: usize,
    max_queue_depth: usize,
    max_transaction_bytes: usize,
    /// Queues marked full in `flow` (see `check_full`).
    full: HashSet<Arc<str>>,
    flow: Arc<FlowControl>,
    next_seq: u64,
    next_sub: u64,
    /// Admin moves waiting for their store commit, by token (see `admin`).
    moving: HashMap<u64, admin::Moving>,
    next_move: u64,
}

impl Router {
    /// Build the state from what the store recovered, in the store's order.
    pub fn new(
        store: Sender<StoreOp>,
        pager: Sender<PageRequest<Source>>,
        limits: Limits,
        flow: Arc<FlowControl>,
        recovered: Recovered,
    ) -> Router {
        let Limits {
            max_redeliveries,
            memory_limit,
            max_subscriptions,
            max_queue_depth,
            max_transaction_bytes,
        } = limits;
        let mut router = Router {
            conns: HashMap::new(),
            subs: HashMap::new(),
            queues: HashMap::new(),
            durables: HashMap::new(),
            index: index::Index::default(),
            blocked: HashSet::new(),
            blocked_subs: HashSet::new(),
            auto_pending: HashSet::new(),
            counters: stats::CounterTable::default(),
            store,
            store_backlog: VecDeque::new(),
            queued: 0,
            handed: 0,
            deferred: VecDeque::new(),
            pager,
            residency: paging::Residency::new(memory_limit),
            max_redeliveries,
            max_subscriptions,
            max_queue_depth,
            max_transaction_bytes,
            full: HashSet::new(),
            flow,
            next_seq: recovered.last_seq,
            next_sub: 1,
            moving: HashMap::new(),
            next_move: 1,
        };
        for (name, queue) in recovered.queues {
            router.queues.entry(name).or_default().queue = queue;
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
        let queued: usize = router.queues.values().map(|d| d.queue.bytes()).sum();
        let durable: usize = router.durables.values().map(|d| d.queue.bytes()).sum();
        router.residency.hold(queued + durable);
        let names: Vec<Arc<str>> = router.queues.keys().cloned().collect();
        for name in &names {
            router.check_full(name);
        }
        router
    }

    /// Flow control: mark queue `name` full once it holds `max_queue_depth` waiting messages
    /// (its producers then wait in `FlowControl::admit`).
    fn check_full(&mut self, name: &Arc<str>) {
        if self.max_queue_depth == 0 || self.full.contains(name) {
            return;
        }
        let depth = self.queues.get(name).map_or(0, |q| q.queue.len());
        if depth >= self.max_queue_depth {
            self.hold(name);
        }
    }

    /// Make SENDs to `destination` wait (see `flow_control`).
    fn hold(&mut self, destination: &Arc<str>) {
        if self.full.insert(destination.clone()) {
            self.flow.set_full(destination, true);
        }
    }

    /// Clear the marks of queues that dropped below the limit and of topics whose subscribers
    /// caught up (after each round of work).
    fn release_full(&mut self) {
        if self.full.is_empty() {
            return;
        }
        let limit = self.max_queue_depth;
        let below: Vec<Arc<str>> = self
            .full
            .iter()
            .filter(|name| match Kind::of(name) {
                Kind::Topic => self.topic_caught_up(name),
                Kind::Queue => self.queues.get(*name).is_none_or(|q| q.queue.len() < limit),
            })
            .cloned()
            .collect();
        for name in below {
            self.full.remove(&name);
            self.flow.set_full(&name, false);
        }
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

    fn add_durable(&mut self, row: DurableRow) {
        if let Some(existing) = self.durables.get_mut(&row.id) {
            if existing.row.topic != row.topic {
                // Re-pointed to another topic: the store dropped what it held.
                let dropped = existing.queue.clear();
                self.index.repoint_durable(&row);
                existing.row = row;
                self.residency.release(dropped);
            }
            return;
        }
        self.index.add_durable(&row);
        self.durables.insert(
            row.id,
            Durable {
                row,
                queue: Queue::default(),
                active: None,
            },
        );
    }
}

impl Conn {
    fn new(outbox: Outbox, reply: Sender<Answer>, info: ConnInfo) -> Conn {
        Conn {
            outbox,
            info,
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
