//! Executing each client command on the reader thread (see the parent module for the rules).

use super::{receipt_frame, Flow, Session};
use crate::auth::permit::Operation;
use crate::auth::Login;
use crate::codec::{encode, Frame, Version};
use crate::command::{self, AckRef, Command, Connect, Send, Subscribe, SubscriptionRef};
use crate::flow_control::Admission;
use crate::message::{now_ms, Message};
use crate::outbox::Outbox;
use crate::router::{Answer, ConnInfo, Ending, Reply, RouterMsg, SubscribeRequest};
use crate::store::{Done, StoreError, StoreOp};
use std::sync::Arc;
use std::time::Duration;

/// How long a refused CONNECT waits before its ERROR, to slow password guessing. It blocks only
/// this connection's own reader thread.
const FAILED_LOGIN_DELAY: Duration = Duration::from_secs(1);

impl Session {
    pub(super) fn handle(&mut self, frame: Frame) -> Flow {
        let receipt = frame.header("receipt").map(str::to_string);
        let receipt = receipt.as_deref();
        let connected = self.version.is_some();
        let is_connect = matches!(frame.command.as_str(), "CONNECT" | "STOMP");
        if !connected && !is_connect {
            let problem = format!("expected CONNECT or STOMP first, got {}", frame.command);
            return self.refuse(&problem, receipt);
        }
        if connected && is_connect {
            return self.refuse("already connected", receipt);
        }
        let version = self.version.unwrap_or(crate::codec::Version::V1_0);
        let command = match command::parse(frame, version) {
            Ok(command) => command,
            Err(problem) => return self.refuse(&problem.to_string(), receipt),
        };
        match command {
            Command::Connect(c) => self.connect(c),
            Command::Send(s) => self.send(s, receipt),
            Command::Subscribe(s) => self.subscribe(s, receipt),
            Command::Unsubscribe { sub, durable_name } => {
                self.unsubscribe(sub, durable_name, receipt)
            }
            Command::Ack {
                ack,
                transaction,
                nack,
            } => self.ack(ack, transaction, nack, receipt),
            Command::Begin(tx) => self.begin(tx, receipt),
            Command::Commit(tx) => self.commit(tx, receipt),
            Command::Abort(tx) => self.abort(tx, receipt),
            Command::Disconnect => self.disconnect(receipt),
        }
    }

    fn connect(&mut self, c: Connect) -> Flow {
        let login = self
            .ctx
            .auth
            .login(c.login.as_deref(), c.passcode.as_deref());
        if login == Login::Refused {
            // One line per failure with the address and the login as given, for audits and
            // fail2ban (the login is escaped so that it cannot forge a line of its own).
            let from = self
                .stream
                .socket()
                .peer_addr()
                .map_or_else(|_| "an unknown address".to_string(), |a| a.ip().to_string());
            log::warn!(
                "login failed from {from} for user {} (connection {})",
                c.login
                    .as_deref()
                    .map_or("(none given)".to_string(), |l| l.escape_debug().to_string()),
                self.id
            );
            self.ctx.shutdown.sleep(FAILED_LOGIN_DELAY);
            // The same words whichever part was wrong: the ERROR tells a guesser nothing.
            return self.refuse("authentication failed", None);
        }
        self.user = login.user().map(str::to_string);
        // No proof of the lock for half a lease (keep-alives come every tenth): this broker
        // was frozen and may have lost it; its election thread will tell at its next try.
        if !self.ctx.role.is_fresh(self.ctx.config.lease / 2) {
            return self.refuse("this broker is not (or no longer) master", None);
        }
        let config = &self.ctx.config;
        let sx = config.heartbeat_send.as_millis() as u64;
        let floor = config.heartbeat_receive.as_millis() as u64;
        let (cx, cy) = c.heart_beat;
        // The beats asked of the client follow its offer (never more often than the floor),
        // so a client that beats every second is found dead after two silent seconds, as
        // ActiveMQ and RabbitMQ do, and its unacknowledged messages go back to the queue.
        let sy = if floor > 0 { cx.max(floor) } else { 0 };
        let towards_client = if sx > 0 && cy > 0 { sx.max(cy) } else { 0 };
        let from_client = if cx > 0 && sy > 0 { cx.max(sy) } else { 0 };
        self.silence_limit = (from_client > 0).then(|| Duration::from_millis(2 * from_client));
        self.settings
            .set(c.version, Duration::from_millis(towards_client));
        self.decoder.set_version(c.version);
        self.version = Some(c.version);
        self.client_id = c.client_id;
        let connected = Frame::new("CONNECTED")
            .with_header("version", c.version.as_str())
            .with_header("session", &self.id.to_string())
            .with_header("server", concat!("hamq/", env!("CARGO_PKG_VERSION")))
            .with_header("heart-beat", &format!("{sx},{sy}"));
        let info = ConnInfo {
            address: self
                .stream
                .socket()
                .peer_addr()
                .map_or_else(|_| "unknown".to_string(), |a| a.to_string()),
            login: self.user.clone(),
            client_id: self.client_id.clone(),
            version: c.version.as_str(),
            connected: now_ms(),
            last_frame: self.last_frame.clone(),
        };
        let registered = self.ctx.router.send(RouterMsg::Connected {
            conn: self.id,
            outbox: self.outbox.clone(),
            reply: self.reply_tx.clone(),
            info,
        });
        if registered.is_err() || !self.reserve() || !self.outbox.control(&connected, c.version) {
            return Flow::Close;
        }
        // Heart-beats are the writer thread's to send; otherwise it starts when first needed.
        if towards_client > 0 && !self.outbox.start_writer() {
            return Flow::Close;
        }
        Flow::Continue
    }

    fn send(&mut self, s: Send, receipt: Option<&str>) -> Flow {
        // Also inside a transaction: refused now, not at COMMIT.
        if let Some(denied) = self.deny(Operation::Write, &s.destination, receipt) {
            return denied;
        }
        let message = Message {
            id: 0,
            destination: Arc::from(s.destination.as_str()),
            kind: s.kind,
            persistent: s.persistent.unwrap_or(self.ctx.config.default_persistent),
            priority: s.priority,
            expires: s.expires,
            timestamp: now_ms(),
            original_destination: None,
            headers: s.headers,
            body: s.body,
        };
        if let Some(tx) = s.transaction {
            let Some((sends, bytes)) = self.transactions.get_mut(&tx) else {
                return self.refuse(&format!("transaction `{tx}` was not begun"), receipt);
            };
            let limit = self.ctx.config.max_transaction_bytes;
            *bytes += message.body.len();
            if *bytes > limit {
                self.transactions.remove(&tx);
                let problem = format!("transaction `{tx}` exceeds {limit} bytes of SEND bodies");
                return self.refuse(&problem, receipt);
            }
            sends.push(message);
            return self.receipt_now(receipt);
        }
        self.commit_to_store(message, receipt)
    }

    /// Queue a SEND's store commit; its RECEIPT (if asked for) is sent once it is durable, and a
    /// commit the database refuses gets its ERROR.
    fn commit_to_store(&mut self, message: Message, receipt: Option<&str>) -> Flow {
        let Some(done) = self.store_done(receipt, true) else {
            return Flow::Close;
        };
        let sends = vec![message];
        let Some(admission) = self.admit(&sends) else {
            return Flow::Close;
        };
        let op = StoreOp::Commit {
            sends,
            removals: Vec::new(),
            done,
            admission,
        };
        if self.to_store(op) {
            Flow::Continue
        } else {
            Flow::Close
        }
    }

    /// What reports a store commit's outcome: the RECEIPT if one was asked for (its credit
    /// reserved here), and for SENDs an ERROR if it fails. None when the broker is stopping.
    fn store_done(&self, receipt: Option<&str>, sends: bool) -> Option<Option<Done>> {
        if receipt.is_some() && !self.reserve() {
            return None;
        }
        let version = self.control_version();
        Some((receipt.is_some() || sends).then(|| {
            let receipt = receipt.map(str::to_string);
            reply_done(self.outbox.clone(), receipt, version)
        }))
    }

    /// SENDs pass flow control before they reach the store (their budget goes back as the
    /// `Admission` drops, once they are routed). None when the broker is stopping.
    fn admit(&self, sends: &[Message]) -> Option<Admission> {
        let mut admission = Admission::default();
        for m in sends {
            let stopping = || self.ctx.shutdown.is_stopping();
            // What was taken goes back as `admission` drops.
            admission.join(self.ctx.flow.admit(&m.destination, m.weight(), stopping)?);
        }
        Some(admission)
    }

    /// Ask the router for a request that may write to the store; the RECEIPT goes with it and
    /// is sent once those writes are committed (see `router::Answer`).
    fn request(
        &mut self,
        receipt: Option<&str>,
        msg: impl FnOnce(Option<Done>) -> RouterMsg,
    ) -> Flow {
        let Some(done) = self.store_done(receipt, false) else {
            return Flow::Close;
        };
        self.settle(msg(done), receipt)
    }

    fn settle(&mut self, msg: RouterMsg, receipt: Option<&str>) -> Flow {
        match self.ask(msg) {
            Some(Answer {
                reply: Reply::Done,
                receipt: unused,
            }) => {
                if let Some(done) = unused {
                    done(Ok(()));
                }
                Flow::Continue
            }
            Some(Answer {
                reply: Reply::Refused(problem),
                ..
            }) => self.refuse(&problem, receipt),
            Some(Answer {
                reply: Reply::Topic(_),
                ..
            })
            | None => Flow::Close,
        }
    }

    /// ERROR and close (Some) unless this connection's user may do `operation` on
    /// `destination`.
    fn deny(
        &mut self,
        operation: Operation,
        destination: &str,
        receipt: Option<&str>,
    ) -> Option<Flow> {
        if self
            .ctx
            .auth
            .allows(self.user.as_deref(), operation, destination)
        {
            return None;
        }
        let problem = format!("permission denied: {operation} on {destination}");
        Some(self.refuse(&problem, receipt))
    }

    fn subscribe(&mut self, s: Subscribe, receipt: Option<&str>) -> Flow {
        if let Some(denied) = self.deny(Operation::Read, &s.destination, receipt) {
            return denied;
        }
        // Creating a durable subscription keeps messages for it in the store: admin.
        if s.durable_name.is_some() {
            if let Some(denied) = self.deny(Operation::Admin, &s.destination, receipt) {
                return denied;
            }
        }
        let durable = match (&s.durable_name, &self.client_id) {
            (None, _) => None,
            (Some(_), None) => {
                let problem = "a durable subscription needs a client-id header on CONNECT";
                return self.refuse(problem, receipt);
            }
            (Some(name), Some(client_id)) => Some((client_id.clone(), name.clone())),
        };
        if let Some((client_id, name)) = &durable {
            // Refusals first: nothing of a refused SUBSCRIBE may reach the store.
            let check = RouterMsg::CheckSubscribe {
                conn: self.id,
                id: s.id.clone(),
                durable: (client_id.clone(), name.clone()),
            };
            match self.ask(check).map(|answer| answer.reply) {
                Some(Reply::Done) => {}
                Some(Reply::Refused(problem)) => return self.refuse(&problem, receipt),
                _ => return Flow::Close,
            }
            let op = StoreOp::CreateDurable {
                client_id: client_id.clone(),
                name: name.clone(),
                topic: s.destination.clone(),
                done: notify(self.store_tx.clone()),
            };
            match self.to_store(op).then(|| self.await_store()).flatten() {
                Some(Ok(())) => {}
                Some(Err(e)) => return self.refuse(&e.to_string(), receipt),
                None => return Flow::Close,
            }
        }
        let request = SubscribeRequest {
            id: s.id,
            destination: s.destination,
            kind: s.kind,
            ack: s.ack,
            prefetch: s.prefetch.unwrap_or(self.ctx.config.default_prefetch),
            durable,
        };
        let conn = self.id;
        self.request(receipt, |receipt| RouterMsg::Subscribe {
            conn,
            request,
            receipt,
        })
    }

    fn unsubscribe(
        &mut self,
        sub: Option<SubscriptionRef>,
        durable_name: Option<String>,
        receipt: Option<&str>,
    ) -> Flow {
        let durable = match (durable_name, &self.client_id) {
            (Some(name), Some(client_id)) => Some((client_id.clone(), name)),
            (Some(_), None) => {
                let problem = "removing a durable subscription needs a client-id on CONNECT";
                return self.refuse(problem, receipt);
            }
            (None, _) => None,
        };
        if let (Some(name), true) = (&durable, self.ctx.auth.enabled()) {
            let ask = RouterMsg::DurableTopic {
                conn: self.id,
                durable: name.clone(),
            };
            match self.ask(ask).map(|answer| answer.reply) {
                Some(Reply::Topic(Some(topic))) => {
                    if let Some(denied) = self.deny(Operation::Admin, &topic, receipt) {
                        return denied;
                    }
                }
                Some(Reply::Topic(None)) => {}
                _ => return Flow::Close,
            }
        }
        let conn = self.id;
        self.request(receipt, |receipt| RouterMsg::Unsubscribe {
            conn,
            sub,
            durable,
            receipt,
        })
    }

    fn ack(
        &mut self,
        ack: AckRef,
        transaction: Option<String>,
        nack: bool,
        receipt: Option<&str>,
    ) -> Flow {
        if let Some(tx) = &transaction {
            if !self.transactions.contains_key(tx) {
                return self.refuse(&format!("transaction `{tx}` was not begun"), receipt);
            }
        }
        let conn = self.id;
        self.request(receipt, |receipt| RouterMsg::Ack {
            conn,
            ack,
            nack,
            transaction,
            receipt,
        })
    }

    fn begin(&mut self, tx: String, receipt: Option<&str>) -> Flow {
        if self.transactions.contains_key(&tx) {
            return self.refuse(&format!("transaction `{tx}` is already open"), receipt);
        }
        self.transactions.insert(tx, (Vec::new(), 0));
        self.receipt_now(receipt)
    }

    /// The transaction's SENDs and held acks commit in one store transaction.
    fn commit(&mut self, tx: String, receipt: Option<&str>) -> Flow {
        let Some((sends, _)) = self.transactions.remove(&tx) else {
            return self.refuse(&format!("transaction `{tx}` was not begun"), receipt);
        };
        let Some(receipt_done) = self.store_done(receipt, !sends.is_empty()) else {
            return Flow::Close;
        };
        let Some(admission) = self.admit(&sends) else {
            return Flow::Close;
        };
        let msg = RouterMsg::EndTransaction {
            conn: self.id,
            transaction: tx,
            end: Ending::Commit { sends, admission },
            receipt: receipt_done,
        };
        self.settle(msg, receipt)
    }

    fn abort(&mut self, tx: String, receipt: Option<&str>) -> Flow {
        if self.transactions.remove(&tx).is_none() {
            return self.refuse(&format!("transaction `{tx}` was not begun"), receipt);
        }
        let conn = self.id;
        self.request(receipt, |receipt| RouterMsg::EndTransaction {
            conn,
            transaction: tx,
            end: Ending::Abort,
            receipt,
        })
    }

    /// With a receipt: wait until everything sent before is committed, then RECEIPT and close.
    fn disconnect(&mut self, receipt: Option<&str>) -> Flow {
        if let Some(id) = receipt {
            let barrier = StoreOp::Commit {
                sends: Vec::new(),
                removals: Vec::new(),
                done: Some(notify(self.store_tx.clone())),
                admission: Admission::default(),
            };
            if self.to_store(barrier) && matches!(self.await_store(), Some(Ok(()))) {
                self.receipt_now(Some(id));
            }
        }
        self.outbox.close();
        Flow::Close
    }
}

/// After commit: the RECEIPT if one was asked for (its credit was reserved). After a failed
/// commit: ERROR naming the problem, and close. Without a receipt no credit was reserved, and
/// this runs on the store writer, which must not wait: the ERROR goes only if a credit is free,
/// the connection closes either way.
fn reply_done(outbox: Outbox, receipt: Option<String>, version: Version) -> Done {
    Box::new(
        move |result: Result<(), StoreError>| match (result, receipt) {
            (Ok(()), None) => {}
            (Ok(()), Some(id)) => {
                let mut frame = Vec::with_capacity(32 + id.len());
                encode(&receipt_frame(&id), version, &mut frame);
                outbox.control_encoded(frame);
            }
            (Err(e), receipt) => {
                let problem = format!("not stored: {e}");
                let mut frame = Frame::new("ERROR").with_header("message", &problem);
                if let Some(id) = &receipt {
                    frame = frame.with_header("receipt-id", id);
                }
                if receipt.is_some() || outbox.reserve(Duration::ZERO) == Some(true) {
                    outbox.control(&frame, version);
                }
                outbox.close();
            }
        },
    )
}

/// Report the outcome to this session's store reply channel (the reader waits on it).
fn notify(tx: crossbeam_channel::Sender<Result<(), StoreError>>) -> Done {
    Box::new(move |result| {
        let _ = tx.try_send(result);
    })
}
