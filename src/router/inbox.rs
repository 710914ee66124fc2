//! The router thread's loop: take requests and news from the inbox, answer sessions on their
//! reply channels, retry blocked dispatches, sweep expired messages, and hand the router's own
//! store writes to the writer without blocking. Runs on the router thread only.

use super::{Answer, Conn, ConnId, Reply, Router, RouterMsg};
use crate::store::{Committed, StoreOp};
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
                info,
            } => {
                self.conns.insert(conn, Conn::new(outbox, reply, info));
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
            RouterMsg::DurableTopic { conn, durable } => {
                let topic = self
                    .index
                    .durable(&durable)
                    .and_then(|id| self.durables.get(&id))
                    .map(|d| d.row.topic.clone());
                self.reply(conn, Reply::Topic(topic));
            }
            RouterMsg::Unsubscribe { conn, sub, durable } => {
                let reply = self.unsubscribe(conn, sub, durable);
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
    pub(super) fn store_later(&mut self, op: StoreOp) {
        if self.in_request {
            self.collected.push(op);
        } else {
            self.store_backlog.push_back(op);
        }
    }
}
