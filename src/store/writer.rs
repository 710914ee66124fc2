//! The group-commit writer: one thread that owns the store's write connection.
//!
//! Sessions and the router send `StoreOp`s over a bounded channel (full: the sender blocks, which
//! slows producers to the store's pace). The thread takes whatever has queued up, applies it in ONE
//! transaction, commits, then forwards the committed messages (in order) and runs each `Done`. So
//! N producers cost one fsync per batch, not N. A failed batch is fatal: nothing of it committed,
//! every waiting `Done` gets the error, and `on_failure` stops the broker (its supervisor restarts
//! it and recovery reloads the store). It exits once every sender is dropped and the queue drained.

use super::apply::{self, Apply};
use super::{lock, Committed, Done, DurableRow, StoreError, StoreOp};
use crate::flow_control::FlowControl;
use crate::message::Message;
use crossbeam_channel::RecvTimeoutError;
use mysql::{Conn, Transaction, TxOpts};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use std::time::Instant;

/// How many operations one transaction takes at most.
const MAX_BATCH: usize = 512;
/// Longest wait for a batch to fill up to the size of the previous one (see `gather`).
const MAX_LINGER: Duration = Duration::from_millis(2);
/// Depth of the operation queue before senders block.
pub const QUEUE_DEPTH: usize = 4096;

/// The writer's input and its thread.
pub struct WriterHandle {
    pub ops: crossbeam_channel::Sender<StoreOp>,
    pub thread: JoinHandle<()>,
}

/// Forwards committed work to the router; false when the router is gone.
pub type Forward = Box<dyn FnMut(Committed) -> bool + Send>;

/// What the writer is fenced by.
#[derive(Clone, Copy, Debug)]
pub struct Fence {
    /// The epoch this master committed when it took over.
    pub epoch: u64,
    /// Longest idle time before an empty fenced transaction.
    pub keepalive: Duration,
}

/// What the writer has done so far, for /metrics: its batch size is `operations /
/// transactions`, its mean transaction time `busy_micros / transactions`.
#[derive(Default)]
pub struct WriterStats {
    /// Transactions committed (keep-alives included).
    pub transactions: AtomicU64,
    /// Operations in those transactions.
    pub operations: AtomicU64,
    /// Message rows inserted.
    pub rows_inserted: AtomicU64,
    /// Time spent in those transactions, from BEGIN to the end of COMMIT.
    pub busy_micros: AtomicU64,
}

/// Durable subscriptions by id and by topic, kept in step with the rows written.
#[derive(Default)]
pub(super) struct Durables {
    topic_of: HashMap<u64, String>,
    subs_of: HashMap<String, Vec<u64>>,
}

impl Durables {
    pub(super) fn topic(&self, id: u64) -> Option<&String> {
        self.topic_of.get(&id)
    }

    /// The subscriptions of `topic`, in id order.
    pub(super) fn subscribers(&self, topic: &str) -> &[u64] {
        self.subs_of.get(topic).map_or(&[], Vec::as_slice)
    }

    pub(super) fn insert(&mut self, id: u64, topic: String) {
        self.remove(id);
        let subs = self.subs_of.entry(topic.clone()).or_default();
        let at = subs.partition_point(|&s| s < id);
        subs.insert(at, id);
        self.topic_of.insert(id, topic);
    }

    pub(super) fn remove(&mut self, id: u64) {
        let Some(topic) = self.topic_of.remove(&id) else {
            return;
        };
        if let Some(subs) = self.subs_of.get_mut(&topic) {
            subs.retain(|&s| s != id);
            if subs.is_empty() {
                self.subs_of.remove(&topic);
            }
        }
    }
}

/// Start the writer on `conn`; `durables` are the recovered subscriptions, `next_id` the first
/// message id to hand out (`Recovered::next_id`).
pub fn spawn_writer(
    conn: Conn,
    fence: Fence,
    recovered: (&[DurableRow], u64),
    (stats, flow): (Arc<WriterStats>, Arc<FlowControl>),
    forward: Forward,
    on_failure: Box<dyn FnOnce(StoreError) + Send>,
) -> std::io::Result<WriterHandle> {
    let (ops, rx) = crossbeam_channel::bounded(QUEUE_DEPTH);
    let (durable_rows, next_id) = recovered;
    let mut durables = Durables::default();
    for row in durable_rows {
        durables.insert(row.id, row.topic.clone());
    }
    let mut writer = Writer {
        conn,
        fence,
        durables,
        next_id,
        next_transient: 1,
        stats,
        flow,
        last_batch: 1,
        last_commit: Duration::ZERO,
        last_transaction: Instant::now(),
    };
    let thread = std::thread::Builder::new()
        .name("store-writer".to_string())
        .spawn(move || writer.run(rx, forward, on_failure))?;
    Ok(WriterHandle { ops, thread })
}

struct Writer {
    conn: Conn,
    fence: Fence,
    /// To know which topic messages need rows at all, and whose entries.
    durables: Durables,
    /// The next stored message's id: this writer, the only one, assigns them in send order.
    next_id: u64,
    /// Counter for the ids of messages that are not stored.
    next_transient: u64,
    stats: Arc<WriterStats>,
    /// Gives back the flow-control weight of a failed batch's SENDs; for committed ones the
    /// router does, once it routed them (`Committed::Admitted`).
    flow: Arc<FlowControl>,
    /// Operations in the last batch that reached the database, how long it took, and when it
    /// ended.
    last_batch: usize,
    last_commit: Duration,
    last_transaction: Instant,
}

/// What one applied operation leaves to do after the commit.
#[derive(Default)]
pub(super) struct Outcome {
    pub(super) committed: Vec<Committed>,
    pub(super) dones: Vec<Done>,
    /// Queue message rows to delete, gathered into one statement per batch.
    pub(super) deletes: Vec<u64>,
    /// Message rows to insert, gathered into multi-row statements (`apply::write_rows`).
    pub(super) inserts: Vec<Arc<Message>>,
    /// Durable entries (subscription, message) to insert with them.
    pub(super) entries: Vec<(u64, u64)>,
    /// Message rows written so far in this batch.
    pub(super) rows_written: u64,
}

impl Writer {
    fn run(
        &mut self,
        rx: crossbeam_channel::Receiver<StoreOp>,
        mut forward: Forward,
        on_failure: Box<dyn FnOnce(StoreError) + Send>,
    ) {
        loop {
            // The connection must see a transaction at least every `keepalive`, also while a
            // stream of batches with nothing to write (non-persistent messages) keeps this
            // loop busy: the server drops a connection idle for the lease.
            let idle = self.last_transaction.elapsed();
            let batch = if idle >= self.fence.keepalive {
                Vec::new()
            } else {
                match rx.recv_timeout(self.fence.keepalive - idle) {
                    Ok(first) => self.gather(first, &rx),
                    Err(RecvTimeoutError::Timeout) => Vec::new(),
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            };
            let weight = send_weight(&batch);
            match self.commit_batch(batch) {
                Ok(outcome) => {
                    for committed in outcome.committed {
                        forward(committed);
                    }
                    // The router gives the SENDs' weight back once it routed them, so the
                    // budget bounds its inbox too, not only this writer's queue.
                    if weight > 0 && !forward(Committed::Admitted(weight)) {
                        self.flow.committed(weight);
                    }
                    for done in outcome.dones {
                        done(Ok(()));
                    }
                }
                Err((error, dones)) => {
                    self.flow.committed(weight);
                    log::error!("store write failed: {error}");
                    for done in dones {
                        done(Err(error.clone()));
                    }
                    on_failure(error);
                    fail_remaining(&rx, &self.flow);
                    return;
                }
            }
        }
    }

    /// Everything queued behind `first`. When the previous batch was larger, wait a little for
    /// as many operations to arrive (the senders of the last batch are answering their
    /// receipts): without it, a batch taken the moment the first of N waiting producers sends
    /// holds half of them, and the rest wait a whole extra commit. The wait is bounded by a
    /// quarter of the last commit's time (`MAX_LINGER` at most), so a lone producer, whose
    /// batches hold one operation, never waits.
    fn gather(
        &mut self,
        first: StoreOp,
        rx: &crossbeam_channel::Receiver<StoreOp>,
    ) -> Vec<StoreOp> {
        let mut batch = vec![first];
        batch.extend(rx.try_iter().take(MAX_BATCH - 1));
        let want = self.last_batch.min(MAX_BATCH);
        if batch.len() < want {
            let deadline = Instant::now() + (self.last_commit / 4).min(MAX_LINGER);
            while batch.len() < want {
                match rx.recv_deadline(deadline) {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
        }
        batch
    }

    /// THE place every write transaction goes through.
    fn commit_batch(&mut self, batch: Vec<StoreOp>) -> Result<Outcome, (StoreError, Vec<Done>)> {
        let mut outcome = Outcome::default();
        if !batch.is_empty() && batch.iter().all(|op| self.stays_in_memory(op)) {
            // Nothing to write: ids are assigned, messages routed in order, receipts sent. (The
            // idle keep-alive batch is empty and still runs its fence.)
            self.assign_all(batch, &mut outcome);
            return Ok(outcome);
        }
        match self.apply_all(batch, &mut outcome) {
            Ok(()) => Ok(outcome),
            Err(error) => Err((error, outcome.dones)),
        }
    }

    /// An operation with nothing to write (non-persistent sends, a receipt barrier).
    fn stays_in_memory(&self, op: &StoreOp) -> bool {
        match op {
            StoreOp::Commit {
                sends, removals, ..
            } => removals.is_empty() && sends.iter().all(|m| transient(m, &self.durables)),
            _ => false,
        }
    }

    /// Ids for the SENDs of a batch of `Commit`s without removals; their rows (if any) wait in
    /// `out.inserts`, their messages in `out.committed`.
    fn assign_all(&mut self, batch: Vec<StoreOp>, out: &mut Outcome) {
        let (durables, next_id, next_transient) =
            (&self.durables, &mut self.next_id, &mut self.next_transient);
        for op in batch {
            if let StoreOp::Commit { sends, done, .. } = op {
                out.dones.extend(done);
                let routed = sends
                    .into_iter()
                    .map(|m| apply::assign(m, durables, (&mut *next_id, &mut *next_transient), out))
                    .collect();
                push_messages(out, routed);
            }
        }
    }

    fn apply_all(&mut self, batch: Vec<StoreOp>, out: &mut Outcome) -> Result<(), StoreError> {
        let started = Instant::now();
        let operations = batch.len() as u64;
        if self.one_insert_does(&batch) {
            self.write_one_insert(batch, out)?;
        } else {
            self.write(batch, out)?;
        }
        let stats = &self.stats;
        stats.transactions.fetch_add(1, Ordering::Relaxed);
        stats.operations.fetch_add(operations, Ordering::Relaxed);
        stats
            .rows_inserted
            .fetch_add(out.rows_written, Ordering::Relaxed);
        self.last_batch = operations as usize;
        self.last_commit = started.elapsed();
        self.last_transaction = Instant::now();
        let micros = self.last_commit.as_micros().try_into().unwrap_or(u64::MAX);
        stats.busy_micros.fetch_add(micros, Ordering::Relaxed);
        Ok(())
    }

    /// Whether the batch is SENDs with one stored row that needs no durable entries (a lone
    /// producer sending to a queue: the case where round trips are most of the cost).
    fn one_insert_does(&self, batch: &[StoreOp]) -> bool {
        let mut rows = 0;
        for op in batch {
            let StoreOp::Commit {
                sends, removals, ..
            } = op
            else {
                return false;
            };
            if !removals.is_empty() {
                return false;
            }
            for m in sends.iter().filter(|m| !transient(m, &self.durables)) {
                if m.destination.starts_with("/topic/") {
                    return false;
                }
                rows += 1;
            }
        }
        rows == 1
    }

    /// Such a batch costs one round trip and one fsync: a single autocommitted INSERT that
    /// fences itself (see `apply::insert_fenced`).
    fn write_one_insert(
        &mut self,
        batch: Vec<StoreOp>,
        out: &mut Outcome,
    ) -> Result<(), StoreError> {
        self.assign_all(batch, out);
        let rows = std::mem::take(&mut out.inserts);
        let Some(row) = rows.first() else {
            return Ok(());
        };
        let written =
            apply::insert_fenced(&mut self.conn, row, self.fence.epoch).map_err(|e| match e {
                // Autocommitted: a statement whose answer was lost may have committed.
                StoreError::Unreachable(e) => StoreError::Unconfirmed(e),
                other => other,
            })?;
        if !written {
            let (_, current) = lock::holder(&mut self.conn)?;
            return Err(StoreError::Deposed {
                ours: self.fence.epoch,
                current,
            });
        }
        out.rows_written += 1;
        Ok(())
    }

    /// One fenced transaction: the epoch check, every operation, the gathered rows, COMMIT.
    fn write(&mut self, batch: Vec<StoreOp>, out: &mut Outcome) -> Result<(), StoreError> {
        let durables = &mut self.durables;
        let next_id = &mut self.next_id;
        let next_transient = &mut self.next_transient;
        let mut tx = match self.conn.start_transaction(TxOpts::default()) {
            Ok(tx) => tx,
            Err(e) => {
                for op in batch {
                    collect_done(op, out);
                }
                return Err(e.into());
            }
        };
        if let Err(e) = lock::check_epoch(&mut tx, self.fence.epoch) {
            give_up(tx, &e);
            for op in batch {
                collect_done(op, out);
            }
            return Err(e);
        }
        let mut failure = None;
        for op in batch {
            if failure.is_some() {
                collect_done(op, out);
                continue;
            }
            let mut ctx = Apply {
                tx: &mut tx,
                durables,
                next_id,
                next_transient,
            };
            if let Err(e) = ctx.apply(op, out) {
                failure = Some(e);
            }
        }
        let failure = match failure {
            Some(e) => Some(e),
            None => apply::write_rows(&mut tx, out)
                .and_then(|()| apply::delete_messages(&mut tx, &out.deletes))
                .err(),
        };
        if let Some(e) = failure {
            give_up(tx, &e);
            return Err(e);
        }
        tx.commit().map_err(|e| match StoreError::from(e) {
            // The reply to COMMIT was lost: the batch may have committed.
            StoreError::Unreachable(e) => StoreError::Unconfirmed(e),
            other => other,
        })
    }
}

/// End a failed transaction: rolled back explicitly when the connection works (`Drop` would
/// swallow the rollback's error), abandoned when it is broken (see `store::abandon`).
fn give_up(tx: Transaction<'_>, error: &StoreError) {
    match error {
        StoreError::Unreachable(_) => super::abandon(tx),
        _ => {
            let _ = tx.rollback();
        }
    }
}

/// After a failure, keep answering senders until they are all gone, so no one waits for ever.
fn fail_remaining(rx: &crossbeam_channel::Receiver<StoreOp>, flow: &FlowControl) {
    for op in rx.iter() {
        flow.committed(send_weight(std::slice::from_ref(&op)));
        let mut out = Outcome::default();
        collect_done(op, &mut out);
        for done in out.dones {
            done(Err(StoreError::Stopped));
        }
    }
}

/// Weight of the SENDs in `ops` (bodies, headers, overhead): what their senders took from the
/// flow-control budget.
fn send_weight(ops: &[StoreOp]) -> usize {
    ops.iter()
        .map(|op| match op {
            StoreOp::Commit { sends, .. } => sends.iter().map(|m| m.weight()).sum(),
            _ => 0,
        })
        .sum()
}

fn collect_done(op: StoreOp, out: &mut Outcome) {
    match op {
        StoreOp::Commit { done: Some(d), .. } | StoreOp::CreateDurable { done: d, .. } => {
            out.dones.push(d)
        }
        _ => {}
    }
}

/// Whether a message is kept in memory only: non-persistent, or a topic message that no
/// durable subscription will read.
pub(super) fn transient(message: &Message, durables: &Durables) -> bool {
    let topic_without_durables = message.destination.starts_with("/topic/")
        && durables.subscribers(&message.destination).is_empty();
    !message.persistent || topic_without_durables
}

/// Consecutive messages travel to the router as one `Committed::Messages`.
pub(super) fn push_messages(out: &mut Outcome, messages: Vec<Arc<Message>>) {
    if messages.is_empty() {
        return;
    }
    if let Some(Committed::Messages(last)) = out.committed.last_mut() {
        last.extend(messages);
    } else {
        out.committed.push(Committed::Messages(messages));
    }
}
