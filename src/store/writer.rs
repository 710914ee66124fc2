//! The group-commit writer: one thread that owns the store's write connection.
//!
//! Sessions and the router send `StoreOp`s over a bounded channel (full: the sender blocks, which
//! slows producers to the store's pace). The thread takes whatever has queued up, applies it in ONE
//! transaction (`apply` has the SQL), commits, then forwards the committed messages (in order)
//! and runs each `Done`. So N producers cost one fsync per batch, not N.
//!
//! A batch that fails on one operation's data (`StoreError::Rejected`: text the database cannot
//! store, a row over its packet limit) is rolled back and its operations are tried again one by
//! one, each in its own fenced transaction: the one at fault gets the error (its client an
//! ERROR), the others commit in their order, and the broker goes on. Any other failure is fatal:
//! nothing of the batch committed, every waiting `Done` gets the error, and `on_failure` stops
//! the broker (its supervisor restarts it and recovery reloads the store). It exits once every
//! sender is dropped and the queue drained.

use super::apply::{self, Apply, Ids, Outcome, Work};
use super::Durables;
use super::{epoch, Committed, Done, DurableRow, StoreError, StoreOp};
use crate::flow_control::Admission;
use crate::message::Kind;
use crossbeam_channel::RecvTimeoutError;
use mysql::{Conn, Transaction, TxOpts};
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
    /// Fence each transaction by a write to the epoch row (`epoch::fence_by_write`), which a
    /// cluster certifies, instead of a locking read (`epoch::check_epoch`), which only one server
    /// enforces. Set with `election = lease`.
    pub certified: bool,
}

/// Most rows one purge transaction deletes (see `Writer::commit_split`).
const PURGE_ROWS: usize = 1000;

/// How often a batch that lost a certification conflict (on a cluster) is tried again before
/// the writer gives up.
const CONFLICT_RETRIES: usize = 3;

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

/// Start the writer on `conn`; `durables` are the recovered subscriptions, `next_id` the first
/// message id to hand out (`Recovered::next_id`), `max_packet` the server's `max_allowed_packet`
/// on `conn`.
pub fn spawn_writer(
    conn: Conn,
    fence: Fence,
    recovered: (&[DurableRow], u64),
    max_packet: usize,
    stats: Arc<WriterStats>,
    forward: Forward,
    on_failure: Box<dyn FnOnce(StoreError) + Send>,
) -> std::io::Result<WriterHandle> {
    let (ops, rx) = crossbeam_channel::bounded(QUEUE_DEPTH);
    let (durable_rows, next_id) = recovered;
    let mut writer = Writer {
        conn,
        fence,
        durables: Durables::from_rows(durable_rows),
        ids: Ids {
            next_id,
            next_transient: 1,
        },
        max_statement: max_packet.saturating_sub(apply::ROW_OVERHEAD),
        stats,
        forward,
        last_batch: 1,
        last_commit: Duration::ZERO,
        last_transaction: Instant::now(),
    };
    let thread = std::thread::Builder::new()
        .name("store-writer".to_string())
        .spawn(move || writer.run(rx, on_failure))?;
    Ok(WriterHandle { ops, thread })
}

struct Writer {
    conn: Conn,
    fence: Fence,
    /// To know which topic messages need rows at all, and whose entries.
    durables: Durables,
    /// This writer, the only one, assigns message ids in send order.
    ids: Ids,
    /// Bytes one INSERT statement may carry: the server's packet limit less the statement's own.
    max_statement: usize,
    stats: Arc<WriterStats>,
    forward: Forward,
    /// Operations in the last batch that reached the database, how long it took, and when it
    /// ended.
    last_batch: usize,
    last_commit: Duration,
    last_transaction: Instant,
}

/// One operation of a batch, with the callback that reports its outcome.
struct Pending {
    work: Work,
    done: Option<Done>,
    /// The SENDs' flow-control budget: to the router after the commit; given back here,
    /// by being dropped, when the operation fails.
    admission: Admission,
}

impl Pending {
    fn new(mut op: StoreOp) -> Pending {
        let admission = match &mut op {
            StoreOp::Commit { admission, .. } => std::mem::take(admission),
            _ => Admission::default(),
        };
        let (work, done) = Work::from_op(op);
        Pending {
            work,
            done,
            admission,
        }
    }
}

/// Everything queued behind `first`, up to `MAX_BATCH`. When the previous batch was larger
/// (`last_batch`), wait up to `linger` for as many operations to arrive (the senders of the
/// last batch are answering their receipts): without it, a batch taken the moment the first of
/// N waiting producers sends holds half of them, and the rest wait a whole extra commit. The
/// writer bounds the wait by a quarter of the last commit's time (`MAX_LINGER` at most), so a
/// lone producer, whose batches hold one operation, never waits.
fn gather<T>(
    first: T,
    rx: &crossbeam_channel::Receiver<T>,
    last_batch: usize,
    linger: Duration,
) -> Vec<T> {
    let mut batch = vec![first];
    batch.extend(rx.try_iter().take(MAX_BATCH - 1));
    let want = last_batch.min(MAX_BATCH);
    if batch.len() < want {
        let deadline = Instant::now() + linger;
        while batch.len() < want {
            match rx.recv_deadline(deadline) {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
    }
    batch
}

/// The batch as the transactions it is committed in, in order: a purge of more than
/// `PURGE_ROWS` messages becomes transactions of its own, `PURGE_ROWS` rows each; the
/// operations around it stay together.
fn split_purges(batch: Vec<Pending>) -> Vec<Vec<Pending>> {
    let mut parts: Vec<Vec<Pending>> = vec![Vec::new()];
    for pending in batch {
        match pending.work {
            Work::Purge { ids } if ids.len() > PURGE_ROWS => {
                for chunk in ids.chunks(PURGE_ROWS) {
                    let work = Work::Purge {
                        ids: chunk.to_vec(),
                    };
                    parts.push(vec![Pending {
                        work,
                        done: None,
                        admission: Admission::default(),
                    }]);
                }
                parts.push(Vec::new());
            }
            work => parts.last_mut().expect("a part").push(Pending {
                work,
                done: pending.done,
                admission: pending.admission,
            }),
        }
    }
    parts.retain(|p| !p.is_empty());
    parts
}

/// A fatal failure and the operations that were not answered yet.
type Failed = (StoreError, Vec<Pending>);

impl Writer {
    fn run(
        &mut self,
        rx: crossbeam_channel::Receiver<StoreOp>,
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
                    Ok(first) => {
                        let linger = (self.last_commit / 4).min(MAX_LINGER);
                        gather(first, &rx, self.last_batch, linger)
                    }
                    Err(RecvTimeoutError::Timeout) => Vec::new(),
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            };
            let batch = batch.into_iter().map(Pending::new).collect();
            if let Err((error, unanswered)) = self.commit_split(batch) {
                log::error!("store write failed: {error}");
                for pending in unanswered {
                    if let Some(done) = pending.done {
                        done(Err(error.clone()));
                    }
                }
                on_failure(error);
                fail_remaining(&rx);
                return;
            }
        }
    }

    /// Commit a batch in transactions a cluster accepts: a purge of more than `PURGE_ROWS`
    /// messages goes in transactions of its own, `PURGE_ROWS` rows each (Galera refuses a
    /// write set over `wsrep_max_ws_rows` / `wsrep_max_ws_size`, and certifies a huge one
    /// slowly). A purge cut short by a crash leaves the rest of its messages in the store.
    fn commit_split(&mut self, batch: Vec<Pending>) -> Result<(), Failed> {
        let mut parts = split_purges(batch).into_iter().peekable();
        if parts.peek().is_none() {
            // The idle keep-alive: an empty, fenced transaction.
            return self.commit(Vec::new());
        }
        while let Some(part) = parts.next() {
            if let Err((error, mut unanswered)) = self.commit(part) {
                unanswered.extend(parts.flatten());
                return Err((error, unanswered));
            }
        }
        Ok(())
    }

    /// Commit a batch and answer each of its operations. On a rejection of one operation's
    /// data, each operation is tried alone (see the module doc).
    fn commit(&mut self, mut batch: Vec<Pending>) -> Result<(), Failed> {
        let saved = self.save_durables(&batch);
        match self.attempt_with_retries(&mut batch, &saved) {
            Ok(outcome) => {
                self.finish(batch, outcome);
                Ok(())
            }
            Err(error) if error.is_rejection() => {
                self.restore_durables(saved);
                if batch.len() == 1 {
                    self.refuse(batch, &error);
                    return Ok(());
                }
                log::warn!(
                    "a batch of {} store operations failed on one operation's data ({error}); \
                     committing each alone",
                    batch.len()
                );
                self.commit_each(batch)
            }
            Err(error) => Err((error, batch)),
        }
    }

    /// The batch again, one operation per transaction, in order.
    fn commit_each(&mut self, batch: Vec<Pending>) -> Result<(), Failed> {
        let mut rest = batch.into_iter();
        while let Some(pending) = rest.next() {
            let mut one = vec![pending];
            let saved = self.save_durables(&one);
            match self.attempt_with_retries(&mut one, &saved) {
                Ok(outcome) => self.finish(one, outcome),
                Err(error) if error.is_rejection() => {
                    self.restore_durables(saved);
                    self.refuse(one, &error);
                }
                Err(error) => {
                    one.extend(rest);
                    return Err((error, one));
                }
            }
        }
        Ok(())
    }

    /// `attempt`, again after a lost certification (1213 on a cluster): another node's write
    /// set won. If that was a new master's epoch bump, the next attempt's fence finds the epoch
    /// moved and fails as deposed; anything else is tried again, a few times.
    fn attempt_with_retries(
        &mut self,
        batch: &mut [Pending],
        saved: &Option<Durables>,
    ) -> Result<Outcome, StoreError> {
        let mut tries = 0;
        loop {
            match self.attempt(batch) {
                Err(e) if self.fence.certified && e.code() == Some(super::DEADLOCK) => {
                    tries += 1;
                    if tries > CONFLICT_RETRIES {
                        return Err(e);
                    }
                    log::info!("a batch lost a certification conflict ({e}); trying it again");
                    self.restore_durables(saved.clone());
                }
                other => return other,
            }
        }
    }

    /// The index of durable subscriptions, kept for a batch that changes it (it is small).
    fn save_durables(&self, batch: &[Pending]) -> Option<Durables> {
        batch
            .iter()
            .any(|p| p.work.changes_durables())
            .then(|| self.durables.clone())
    }

    fn restore_durables(&mut self, saved: Option<Durables>) {
        if let Some(durables) = saved {
            self.durables = durables;
        }
    }

    /// After the commit: the router gets the committed messages in order, then the SENDs'
    /// budget to drop once it routed them (so the budget bounds its inbox too, not only this
    /// writer's queue), then every operation's `Done`.
    fn finish(&mut self, batch: Vec<Pending>, outcome: Outcome) {
        for committed in outcome.committed {
            (self.forward)(committed);
        }
        let mut admission = Admission::default();
        let mut dones = Vec::with_capacity(batch.len());
        for pending in batch {
            admission.join(pending.admission);
            dones.extend(pending.done);
        }
        if admission.bytes() > 0 {
            (self.forward)(Committed::Admitted(admission));
        }
        for done in dones {
            done(Ok(()));
        }
    }

    /// One operation the database refused: only its sender hears of it.
    fn refuse(&mut self, batch: Vec<Pending>, error: &StoreError) {
        for pending in batch {
            log::warn!("an operation was not stored: {error}; its client gets an ERROR");
            if let Some(done) = pending.done {
                done(Err(error.clone()));
            }
        }
    }

    /// THE place every write transaction goes through. Nothing is committed on `Err`.
    fn attempt(&mut self, batch: &mut [Pending]) -> Result<Outcome, StoreError> {
        let mut out = Outcome::default();
        let durables = &self.durables;
        if !batch.is_empty() && batch.iter().all(|p| p.work.stays_in_memory(durables)) {
            // Nothing to write: ids are assigned, messages routed in order, receipts sent. (The
            // idle keep-alive batch is empty and still runs its fence.)
            let works = batch.iter_mut().map(|p| &mut p.work);
            apply::assign_all(works, durables, &mut self.ids, &mut out);
            return Ok(out);
        }
        let started = Instant::now();
        let operations = batch.len() as u64;
        if self.one_insert_does(batch) {
            self.write_one_insert(batch, &mut out)?;
        } else {
            self.write(batch, &mut out)?;
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
        Ok(out)
    }

    /// Whether the batch is SENDs with one stored row that needs no durable entries (a lone
    /// producer sending to a queue: the case where round trips are most of the cost).
    fn one_insert_does(&self, batch: &[Pending]) -> bool {
        if self.fence.certified {
            return false;
        }
        let mut rows = 0;
        for pending in batch {
            let Work::Commit { sends, removals } = &pending.work else {
                return false;
            };
            if !removals.is_empty() {
                return false;
            }
            for m in sends
                .iter()
                .filter(|m| !apply::transient(m, &self.durables))
            {
                if m.kind == Kind::Topic {
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
        batch: &mut [Pending],
        out: &mut Outcome,
    ) -> Result<(), StoreError> {
        let works = batch.iter_mut().map(|p| &mut p.work);
        apply::assign_all(works, &self.durables, &mut self.ids, out);
        let Some(row) = apply::only_row(out) else {
            return Ok(());
        };
        let written =
            apply::insert_fenced(&mut self.conn, &row, self.fence.epoch).map_err(|e| match e {
                // Autocommitted: a statement whose answer was lost may have committed.
                StoreError::Unreachable(e) => StoreError::Unconfirmed(e),
                other => other,
            })?;
        if !written {
            let (_, current) = epoch::holder(&mut self.conn)?;
            return Err(StoreError::Deposed {
                ours: self.fence.epoch,
                current,
            });
        }
        out.rows_written += 1;
        Ok(())
    }

    /// One fenced transaction: the epoch check, every operation, the gathered rows, COMMIT.
    fn write(&mut self, batch: &mut [Pending], out: &mut Outcome) -> Result<(), StoreError> {
        let mut tx = self.conn.start_transaction(TxOpts::default())?;
        let fenced = match self.fence.certified {
            true => epoch::fence_by_write(&mut tx, self.fence.epoch),
            false => epoch::check_epoch(&mut tx, self.fence.epoch),
        };
        if let Err(e) = fenced {
            give_up(tx, &e);
            return Err(e);
        }
        let mut ctx = Apply {
            tx: &mut tx,
            durables: &mut self.durables,
            ids: &mut self.ids,
            max_statement: self.max_statement,
        };
        let applied = batch
            .iter_mut()
            .try_for_each(|p| ctx.apply(&mut p.work, out))
            .and_then(|()| ctx.finish(out));
        if let Err(e) = applied {
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
fn fail_remaining(rx: &crossbeam_channel::Receiver<StoreOp>) {
    for op in rx.iter() {
        let pending = Pending::new(op);
        if let Some(done) = pending.done {
            done(Err(StoreError::Stopped));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Target;

    fn pending(work: Work) -> Pending {
        Pending {
            work,
            done: None,
            admission: Admission::default(),
        }
    }

    /// Each part's operations, as (kind, ids or size).
    fn shape(parts: &[Vec<Pending>]) -> Vec<Vec<(&'static str, usize)>> {
        parts
            .iter()
            .map(|part| {
                part.iter()
                    .map(|p| match &p.work {
                        Work::Purge { ids } => ("purge", ids.len()),
                        Work::Redelivered { count, .. } => ("count", *count as usize),
                        _ => ("other", 0),
                    })
                    .collect()
            })
            .collect()
    }

    fn count(n: u32) -> Pending {
        pending(Work::Redelivered {
            target: Target::Message(1),
            count: n,
        })
    }

    fn purge(n: u64) -> Pending {
        pending(Work::Purge {
            ids: (0..n).collect(),
        })
    }

    #[test]
    fn a_large_purge_goes_in_transactions_of_its_own_between_its_neighbours() {
        let batch = vec![
            count(1),
            purge(10),
            count(2),
            purge(2500),
            count(3),
            count(4),
        ];
        let parts = split_purges(batch);
        assert_eq!(
            shape(&parts),
            [
                vec![("count", 1), ("purge", 10), ("count", 2)],
                vec![("purge", 1000)],
                vec![("purge", 1000)],
                vec![("purge", 500)],
                vec![("count", 3), ("count", 4)],
            ]
        );
        let Work::Purge { ids } = &parts[3][0].work else {
            unreachable!()
        };
        assert_eq!(
            (ids[0], ids[ids.len() - 1]),
            (2000, 2499),
            "in order, none lost"
        );
        assert!(split_purges(Vec::new()).is_empty(), "the keep-alive batch");
        assert_eq!(
            shape(&split_purges(vec![purge(1000)])),
            [vec![("purge", 1000)]]
        );
    }

    #[test]
    fn a_batch_takes_what_is_queued_and_lingers_only_for_a_larger_last_batch() {
        let (tx, rx) = crossbeam_channel::unbounded();
        for n in 1..=3 {
            tx.send(n).expect("open");
        }
        // The last batch was one operation: no wait, whatever is queued.
        assert_eq!(gather(0, &rx, 1, Duration::from_secs(60)), [0, 1, 2, 3]);
        // It was larger: wait for the rest, up to the linger, then go with what came.
        let started = Instant::now();
        assert_eq!(gather(0, &rx, 8, Duration::from_millis(20)), [0]);
        assert!(started.elapsed() >= Duration::from_millis(20));
        let sender = std::thread::spawn(move || {
            for n in 1..=7 {
                tx.send(n).expect("open");
            }
            tx
        });
        let started = Instant::now();
        let batch = gather(0, &rx, 8, Duration::from_secs(60));
        assert_eq!(batch, (0..8).collect::<Vec<_>>());
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "stops once it has them"
        );
        let tx = sender.join().expect("sender");
        // Never more than MAX_BATCH; the rest waits for the next batch.
        for n in 0..MAX_BATCH + 10 {
            tx.send(n).expect("open");
        }
        let first = rx.recv().expect("queued");
        assert_eq!(
            gather(first, &rx, MAX_BATCH * 2, Duration::ZERO).len(),
            MAX_BATCH
        );
        assert_eq!(rx.len(), 10);
    }
}
