//! Unit tests of the router's requests and its one route to the store, driven through
//! `Router::handle` on the test's thread, with real channels and a loopback socket under the
//! connection's outbox. No database: what reaches the store is read off the writer's channel.

use super::*;
use crate::outbox::{outbox, Inbox};
use crate::store::StoreError;
use crossbeam_channel::{bounded, Receiver, TryRecvError};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::AtomicI64;

const CONN: ConnId = 1;

/// A router whose writer channel holds one op, with connection `CONN` subscribed to
/// `/queue/a` in client-ack mode.
struct Bench {
    router: Router,
    store: Receiver<StoreOp>,
    replies: Receiver<Answer>,
    /// Holds the outbox's writer thread (which never writes) until the test ends.
    _stop: Sender<()>,
    _peer: TcpStream,
}

impl Bench {
    fn new(ack: AckMode) -> Bench {
        let (store_tx, store) = bounded(1);
        let (pager, _) = bounded(1);
        let limits = Limits {
            max_redeliveries: 5,
            memory_limit: 1 << 20,
            max_subscriptions: 10,
            max_queue_depth: 0,
            max_transaction_bytes: 1 << 20,
        };
        let recovered = Recovered {
            queues: HashMap::new(),
            last_seq: 0,
            durables: Vec::new(),
            entries: Vec::new(),
            next_id: 1,
        };
        let flow = Arc::new(FlowControl::new(1 << 20));
        let mut router = Router::new(store_tx, pager, limits, flow, recovered);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address");
        let client = TcpStream::connect(address).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        let (stop, stopped) = bounded::<()>(0);
        let start: crate::outbox::StartWriter = Box::new(move |inbox: Inbox| {
            std::thread::Builder::new().spawn(move || {
                let _held = inbox;
                let _ = stopped.recv();
            })
        });
        let outbox = outbox(server, true, start).expect("outbox");
        let (reply, replies) = bounded(1);
        let info = ConnInfo {
            address: address.to_string(),
            login: None,
            client_id: None,
            version: "1.0",
            connected: 0,
            last_frame: Arc::new(AtomicI64::new(0)),
        };
        router.handle(RouterMsg::Connected {
            conn: CONN,
            outbox,
            reply,
            info,
        });
        let request = SubscribeRequest {
            id: "s".to_string(),
            destination: "/queue/a".to_string(),
            kind: Kind::Queue,
            ack,
            prefetch: 10,
            durable: None,
        };
        router.handle(RouterMsg::Subscribe {
            conn: CONN,
            request,
            receipt: None,
        });
        let bench = Bench {
            router,
            store,
            replies,
            _stop: stop,
            _peer: client,
        };
        assert!(matches!(bench.answer().reply, Reply::Done));
        bench
    }

    /// Message `id` committed to `/queue/a` (and so delivered to the subscription).
    fn committed(&mut self, id: u64) {
        self.router
            .handle(RouterMsg::Committed(Committed::Messages(vec![Arc::new(
                message(id),
            )])));
    }

    fn answer(&self) -> Answer {
        self.replies.try_recv().expect("an answer")
    }

    /// Take the op standing in for a busy writer, so the router's backlog can move.
    fn fill_writer(&self) {
        let filler = StoreOp::Purge { ids: Vec::new() };
        self.router
            .store
            .try_send(filler)
            .expect("the writer's channel has room");
    }

    /// The next op on the writer's channel, which must be a commit: (its SENDs' ids, its
    /// removals, its `Done`).
    fn commit(&self, what: &str) -> (Vec<u64>, Vec<Target>, Option<Done>) {
        let Ok(StoreOp::Commit {
            sends,
            removals,
            done,
            ..
        }) = self.store.try_recv()
        else {
            panic!("expected {what}");
        };
        (sends.iter().map(|m| m.id).collect(), removals, done)
    }

    fn free_writer(&self) {
        assert!(matches!(self.store.try_recv(), Ok(StoreOp::Purge { .. })));
    }
}

fn message(id: u64) -> Message {
    Message::test(id, "/queue/a", b"x")
}

/// A receipt whose running the test can see.
fn receipt() -> (Done, Receiver<Result<(), StoreError>>) {
    let (tx, rx) = bounded(1);
    let done: Done = Box::new(move |result| {
        let _ = tx.try_send(result);
    });
    (done, rx)
}

fn ack(id: u64, nack: bool, transaction: Option<&str>, receipt: Option<Done>) -> RouterMsg {
    RouterMsg::Ack {
        conn: CONN,
        ack: AckRef::Message(crate::message::format_message_id(id)),
        nack,
        transaction: transaction.map(str::to_string),
        receipt,
    }
}

#[test]
fn an_ack_s_receipt_rides_behind_its_removal_and_its_answer_waits_for_the_hand_over() {
    let mut bench = Bench::new(AckMode::Client);
    bench.committed(5);
    bench.fill_writer();
    let (done, ran) = receipt();
    bench.router.handle(ack(5, false, None, Some(done)));
    assert!(
        matches!(bench.replies.try_recv(), Err(TryRecvError::Empty)),
        "answered before its removal was handed to the writer"
    );
    bench.free_writer();
    bench.router.flush_backlog();
    let answer = bench.answer();
    assert_eq!(answer.reply, Reply::Done);
    assert!(answer.receipt.is_none(), "the receipt went to the store");
    let (sends, removals, done) = bench.commit("the ACK's commit");
    assert!(sends.is_empty());
    assert_eq!(removals, [Target::Message(5)]);
    let done = done.expect("the commit carries the receipt");
    assert!(matches!(ran.try_recv(), Err(TryRecvError::Empty)));
    done(Ok(()));
    assert!(matches!(ran.try_recv(), Ok(Ok(()))));
    assert!(bench.store.try_recv().is_err(), "nothing else was written");
}

#[test]
fn a_request_that_writes_nothing_gets_its_receipt_back_at_once() {
    let mut bench = Bench::new(AckMode::Client);
    bench.fill_writer();
    let (done, _) = receipt();
    bench.router.handle(RouterMsg::Unsubscribe {
        conn: CONN,
        sub: Some(SubscriptionRef::Id("s".to_string())),
        durable: None,
        receipt: Some(done),
    });
    let answer = bench.answer();
    assert_eq!(answer.reply, Reply::Done);
    assert!(answer.receipt.is_some(), "the session sends it itself");
    bench.free_writer();
    bench.router.flush_backlog();
    assert!(bench.store.try_recv().is_err(), "nothing was written");
}

#[test]
fn a_nack_s_count_is_written_before_its_receipt_and_a_later_ack_after_both() {
    let mut bench = Bench::new(AckMode::ClientIndividual);
    bench.committed(5);
    let (done, _) = receipt();
    bench.router.handle(ack(5, true, None, Some(done)));
    let Ok(StoreOp::Redelivered { target, count: 1 }) = bench.store.try_recv() else {
        panic!("expected the redelivery count first");
    };
    assert_eq!(target, Target::Message(5));
    // The writer's channel holds one op: the receipt's empty commit waited in the backlog, and
    // the answer with it.
    assert!(matches!(bench.replies.try_recv(), Err(TryRecvError::Empty)));
    bench.router.flush_backlog();
    assert_eq!(bench.answer().reply, Reply::Done);
    let (sends, removals, done) = bench.commit("an empty commit carrying the NACK's receipt");
    assert!(sends.is_empty() && removals.is_empty() && done.is_some());
    // Redelivered to the same subscription; acknowledged this time.
    bench.router.handle(ack(5, false, None, None));
    assert_eq!(bench.answer().reply, Reply::Done);
    let (_, removals, done) = bench.commit("the ACK's removal");
    assert_eq!(removals, [Target::Message(5)]);
    assert!(done.is_none());
}

#[test]
fn a_transaction_s_sends_and_held_acks_reach_the_store_as_one_commit() {
    let mut bench = Bench::new(AckMode::ClientIndividual);
    bench.committed(5);
    bench.committed(6);
    bench.router.handle(ack(5, false, Some("t"), None));
    assert_eq!(bench.answer().reply, Reply::Done);
    bench.router.handle(ack(6, false, Some("t"), None));
    assert_eq!(bench.answer().reply, Reply::Done);
    assert!(
        bench.store.try_recv().is_err(),
        "held acks wait for the COMMIT"
    );
    let (done, _) = receipt();
    bench.router.handle(RouterMsg::EndTransaction {
        conn: CONN,
        transaction: "t".to_string(),
        end: Ending::Commit {
            sends: vec![message(7)],
            admission: Admission::default(),
        },
        receipt: Some(done),
    });
    assert_eq!(bench.answer().reply, Reply::Done);
    let (sends, removals, done) = bench.commit("one commit with the receipt");
    assert_eq!(sends, [7]);
    assert_eq!(removals, [Target::Message(5), Target::Message(6)]);
    assert!(done.is_some());
}

#[test]
fn an_abort_redelivers_held_acks_and_writes_their_counts() {
    let mut bench = Bench::new(AckMode::ClientIndividual);
    bench.committed(5);
    bench.router.handle(ack(5, false, Some("t"), None));
    assert_eq!(bench.answer().reply, Reply::Done);
    bench.router.handle(RouterMsg::EndTransaction {
        conn: CONN,
        transaction: "t".to_string(),
        end: Ending::Abort,
        receipt: None,
    });
    assert_eq!(bench.answer().reply, Reply::Done);
    let Ok(StoreOp::Redelivered { target, count: 1 }) = bench.store.try_recv() else {
        panic!("expected the redelivery count");
    };
    assert_eq!(target, Target::Message(5));
}
