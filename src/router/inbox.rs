//! The router thread's loop: take requests and news from the inbox, answer sessions on their
//! reply channels, retry blocked dispatches, sweep expired messages, and hand the router's own
//! store writes to the writer without blocking. Runs on the router thread only.

use super::{Answer, Conn, ConnId, Reply, Router, RouterMsg};
use crate::flow_control::Admission;
use crate::store::{Committed, Done, StoreOp};
use crossbeam_channel::{Receiver, RecvTimeoutError, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often pending work (full outboxes, store backlog) is retried while there is some.
const RETRY: Duration = Duration::from_millis(5);
/// How often expired messages are swept out.
const SWEEP: Duration = Duration::from_secs(1);

impl Router {
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
            self.release_full();
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
        self.handed = self.queued;
        self.answer_deferred();
    }

    pub(super) fn handle(&mut self, msg: RouterMsg) {
        match msg {
            RouterMsg::Connected {
                conn,
                outbox,
                reply,
                info,
            } => {
                self.conns.insert(conn, Conn::new(outbox, reply, info));
            }
            RouterMsg::Subscribe {
                conn,
                request,
                receipt,
            } => {
                let before = self.queued;
                let reply = self.subscribe(conn, request);
                self.answer(conn, reply, receipt, before);
            }
            RouterMsg::CheckSubscribe { conn, id, durable } => {
                let reply = match self.refusal(conn, &id, Some(&durable)) {
                    Some(problem) => Reply::Refused(problem),
                    None => Reply::Done,
                };
                self.answer(conn, reply, None, self.queued);
            }
            RouterMsg::DurableTopic { conn, durable } => {
                let topic = self
                    .index
                    .durable(&durable)
                    .and_then(|id| self.durables.get(&id))
                    .map(|d| d.row.topic.clone());
                self.answer(conn, Reply::Topic(topic), None, self.queued);
            }
            RouterMsg::Unsubscribe {
                conn,
                sub,
                durable,
                receipt,
            } => {
                let before = self.queued;
                let reply = self.unsubscribe(conn, sub, durable);
                self.answer(conn, reply, receipt, before);
            }
            RouterMsg::Ack {
                conn,
                ack,
                nack,
                transaction,
                receipt,
            } => {
                let before = self.queued;
                let reply = self.ack(conn, ack, nack, transaction);
                self.answer(conn, reply, receipt, before);
            }
            RouterMsg::EndTransaction {
                conn,
                transaction,
                end,
                receipt,
            } => {
                let before = self.queued;
                self.end_transaction(conn, &transaction, end);
                self.answer(conn, Reply::Done, receipt, before);
            }
            RouterMsg::Disconnected { conn } => self.disconnected(conn),
            RouterMsg::Committed(Committed::Messages(messages)) => self.route(messages),
            RouterMsg::Committed(Committed::Durable(row)) => self.add_durable(row),
            // Routed: the budget goes back as it drops.
            RouterMsg::Committed(Committed::Admitted(admission)) => drop(admission),
            RouterMsg::Committed(Committed::Moved(token)) => self.moved(token),
            RouterMsg::PagedIn(paged) => self.paged_in(paged),
            RouterMsg::Stats(reply) => {
                let _ = reply.try_send(self.stats());
            }
            RouterMsg::Admin { request, reply } => self.admin(request, reply),
            RouterMsg::Shutdown => {}
        }
    }

    /// Answer a session's request. If it queued store writes (`queued` moved from `before`),
    /// its receipt goes to the store behind them, and the answer waits until they are handed
    /// to the writer (see `Answer`).
    fn answer(&mut self, conn: ConnId, reply: Reply, receipt: Option<Done>, before: u64) {
        let wrote = self.queued > before;
        let receipt = match receipt {
            Some(done) if wrote => {
                self.store_after(done);
                None
            }
            unused => unused,
        };
        let answer = Answer { reply, receipt };
        if wrote {
            self.flush_backlog();
            if self.handed < self.queued {
                self.deferred.push_back((self.queued, conn, answer));
                return;
            }
        }
        self.send_answer(conn, answer);
    }

    /// The session is blocked on its reply channel (capacity 1, one request at a time), so
    /// this never finds it full; a session that is gone finds its answer dropped.
    fn send_answer(&self, conn: ConnId, answer: Answer) {
        if let Some(c) = self.conns.get(&conn) {
            let _ = c.reply.try_send(answer);
        }
    }

    /// Send the held answers whose writes are handed over.
    fn answer_deferred(&mut self) {
        while let Some((mark, _, _)) = self.deferred.front() {
            if *mark > self.handed {
                return;
            }
            if let Some((_, conn, answer)) = self.deferred.pop_front() {
                self.send_answer(conn, answer);
            }
        }
    }

    /// Hand queued store writes to the writer without blocking (see the module doc).
    pub(super) fn flush_backlog(&mut self) {
        while let Some(op) = self.store_backlog.pop_front() {
            match self.store.try_send(op) {
                Ok(()) => self.handed += 1,
                Err(TrySendError::Full(op)) => {
                    self.store_backlog.push_front(op);
                    break;
                }
                Err(TrySendError::Disconnected(_)) => {
                    // Stopping: the sessions see it on their own hand-overs.
                    self.store_backlog.clear();
                    self.handed = self.queued;
                    break;
                }
            }
        }
        self.answer_deferred();
    }

    /// Queue a store write of the router's (the one route: see the module doc).
    pub(super) fn store_later(&mut self, op: StoreOp) {
        self.store_backlog.push_back(op);
        self.queued += 1;
    }

    /// Run `done` once everything queued so far is committed: on the last queued write when
    /// it is a commit without one, else on an empty commit behind it.
    fn store_after(&mut self, done: Done) {
        if let Some(StoreOp::Commit {
            done: slot @ None, ..
        }) = self.store_backlog.back_mut()
        {
            *slot = Some(done);
            return;
        }
        self.store_later(StoreOp::Commit {
            sends: Vec::new(),
            removals: Vec::new(),
            done: Some(done),
            admission: Admission::default(),
        });
    }
}
