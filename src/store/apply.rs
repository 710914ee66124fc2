//! One batch's operations as SQL: what the writer replays (`Work`), giving messages their ids,
//! inserting, removing, counting redeliveries, dead-lettering and durable subscriptions inside
//! the batch's transaction. Runs on the store-writer thread, called only by `writer`; it knows
//! nothing of the writer's loop, its queue or its retries.
//!
//! Every operation is applied by reference, so a batch whose transaction failed on one
//! operation's data can be applied again without it: ids are given afresh on each attempt (a
//! failed attempt only leaves gaps), and the in-memory index of durable subscriptions is the
//! caller's to restore.

use super::{
    column, encode_headers, encoded_headers_len, Committed, DurableRow, Durables, StoreError,
    StoreOp, Target,
};
use crate::message::{Kind, Message, NON_PERSISTENT_BIT};
use mysql::prelude::Queryable;
use mysql::{Conn, Transaction, Value};
use std::sync::Arc;

/// Most message rows in one INSERT statement.
const ROWS_PER_INSERT: usize = 64;
/// A statement takes no further row once its rows reach this many bytes (or what the server's
/// `max_allowed_packet` leaves, if less); a larger row goes alone.
const BYTES_PER_INSERT: usize = 1024 * 1024;
/// Most durable entries in one INSERT statement.
const ENTRIES_PER_INSERT: usize = 256;
/// Bytes of a message row's statement beyond its body and headers: both destinations (up to
/// 1,020 bytes each in utf8mb4), the fixed columns, length prefixes and the statement's own
/// fields. A row of body and headers up to `max_allowed_packet - ROW_OVERHEAD` always fits.
pub const ROW_OVERHEAD: usize = 4096;

/// A store operation as a batch holds it: a `StoreOp` without its callback, its SENDs shared so
/// that each attempt can give them ids in place without copying a body.
pub(super) enum Work {
    Commit {
        sends: Vec<Arc<Message>>,
        removals: Vec<Target>,
    },
    Redelivered {
        target: Target,
        count: u32,
    },
    DeadLetter {
        target: Target,
        message: Arc<Message>,
        dlq: String,
    },
    CreateDurable {
        client_id: String,
        name: String,
        topic: String,
    },
    DeleteDurable {
        id: u64,
    },
    Purge {
        ids: Vec<u64>,
    },
    Move {
        ids: Vec<u64>,
        to: String,
        token: u64,
    },
}

impl Work {
    /// The operation and its callback (`Done`), apart.
    pub(super) fn from_op(op: StoreOp) -> (Work, Option<super::Done>) {
        match op {
            StoreOp::Commit {
                sends,
                removals,
                done,
                ..
            } => {
                let sends = sends.into_iter().map(Arc::new).collect();
                (Work::Commit { sends, removals }, done)
            }
            StoreOp::Redelivered { target, count } => (Work::Redelivered { target, count }, None),
            StoreOp::DeadLetter {
                target,
                message,
                dlq,
            } => (
                Work::DeadLetter {
                    target,
                    message,
                    dlq,
                },
                None,
            ),
            StoreOp::CreateDurable {
                client_id,
                name,
                topic,
                done,
            } => (
                Work::CreateDurable {
                    client_id,
                    name,
                    topic,
                },
                Some(done),
            ),
            StoreOp::DeleteDurable { id } => (Work::DeleteDurable { id }, None),
            StoreOp::Purge { ids } => (Work::Purge { ids }, None),
            StoreOp::Move { ids, to, token } => (Work::Move { ids, to, token }, None),
        }
    }

    /// Whether applying it changes the index of durable subscriptions.
    pub(super) fn changes_durables(&self) -> bool {
        matches!(
            self,
            Work::CreateDurable { .. } | Work::DeleteDurable { .. }
        )
    }

    /// Whether it has nothing to write: SENDs that all stay in memory, or a receipt barrier.
    pub(super) fn stays_in_memory(&self, durables: &Durables) -> bool {
        match self {
            Work::Commit { sends, removals } => {
                removals.is_empty() && sends.iter().all(|m| transient(m, durables))
            }
            _ => false,
        }
    }
}

/// What an attempt at a batch leaves to do once it committed.
#[derive(Default)]
pub(super) struct Outcome {
    /// For the router, in commit order.
    pub(super) committed: Vec<Committed>,
    /// Queue message rows to delete, gathered into one statement per batch.
    deletes: Vec<u64>,
    /// Message rows to insert, gathered into multi-row statements (`write_rows`).
    inserts: Vec<Arc<Message>>,
    /// Durable entries (subscription, message) to insert with them.
    entries: Vec<(u64, u64)>,
    /// Message rows written so far in this batch.
    pub(super) rows_written: u64,
}

/// The ids the writer hands out: stored messages' (the database's, see `schema::next_message_id`)
/// and the counter of messages that are not stored.
pub(super) struct Ids {
    pub(super) next_id: u64,
    pub(super) next_transient: u64,
}

/// Give the SENDs of a batch of operations with nothing to write their ids, and route them.
pub(super) fn assign_all<'w>(
    works: impl Iterator<Item = &'w mut Work>,
    durables: &Durables,
    ids: &mut Ids,
    out: &mut Outcome,
) {
    for work in works {
        if let Work::Commit { sends, .. } = work {
            let routed = sends
                .iter_mut()
                .map(|m| assign(m, durables, ids, out))
                .collect();
            push_messages(out, routed);
        }
    }
}

/// One operation applied inside the batch's transaction.
pub(super) struct Apply<'a, 'b, 'c> {
    pub(super) tx: &'a mut Transaction<'b>,
    /// The durable subscriptions (kept in step with the rows written here).
    pub(super) durables: &'c mut Durables,
    pub(super) ids: &'c mut Ids,
    /// Bytes one INSERT statement may carry (see `write_rows`).
    pub(super) max_statement: usize,
}

impl Apply<'_, '_, '_> {
    /// SENDs and removals only gather rows; any other operation first writes what was
    /// gathered, so the statements run in the order of the operations they stand for.
    pub(super) fn apply(&mut self, work: &mut Work, out: &mut Outcome) -> Result<(), StoreError> {
        if !matches!(work, Work::Commit { .. }) {
            self.flush(out)?;
        }
        match work {
            Work::Commit { sends, removals } => {
                let routed = sends
                    .iter_mut()
                    .map(|m| assign(m, self.durables, self.ids, out))
                    .collect();
                for target in removals.iter() {
                    self.remove(*target, out)?;
                }
                push_messages(out, routed);
            }
            Work::Redelivered { target, count } => self.redelivered(*target, *count)?,
            Work::DeadLetter {
                target,
                message,
                dlq,
            } => {
                let moved = self.dead_letter(*target, message, dlq, out)?;
                push_messages(out, moved.into_iter().map(Arc::new).collect());
            }
            Work::CreateDurable {
                client_id,
                name,
                topic,
            } => {
                let row = self.create_durable(client_id, name, topic)?;
                out.committed.push(Committed::Durable(row));
            }
            Work::DeleteDurable { id } => self.delete_durable(*id)?,
            Work::Purge { ids } => delete_messages(self.tx, ids)?,
            Work::Move { ids, to, token } => {
                move_messages(self.tx, ids, to)?;
                out.committed.push(Committed::Moved(*token));
            }
        }
        Ok(())
    }

    /// Write the rows gathered so far, then the deletes: the end of every batch.
    pub(super) fn finish(&mut self, out: &mut Outcome) -> Result<(), StoreError> {
        self.flush(out)?;
        delete_messages(self.tx, &std::mem::take(&mut out.deletes))
    }

    fn flush(&mut self, out: &mut Outcome) -> Result<(), StoreError> {
        write_rows(self.tx, out, self.max_statement)
    }

    fn message_id(&mut self) -> u64 {
        let id = self.ids.next_id;
        self.ids.next_id += 1;
        id
    }

    fn last_id(&mut self) -> Result<u64, StoreError> {
        self.tx
            .last_insert_id()
            .ok_or_else(|| StoreError::sql("INSERT gave no id"))
    }

    fn remove(&mut self, target: Target, out: &mut Outcome) -> Result<(), StoreError> {
        match target {
            Target::Message(id) => out.deletes.push(id),
            Target::Entry { sub, message } => {
                self.tx.exec_drop(
                    "DELETE FROM hamq_durable_entries WHERE sub_id = ? AND msg_id = ?",
                    (sub, message),
                )?;
                self.tx.exec_drop(
                    "DELETE FROM hamq_messages WHERE id = ? AND NOT EXISTS \
                     (SELECT 1 FROM hamq_durable_entries WHERE msg_id = ?)",
                    (message, message),
                )?;
            }
        }
        Ok(())
    }

    fn redelivered(&mut self, target: Target, count: u32) -> Result<(), StoreError> {
        match target {
            Target::Message(id) => self.tx.exec_drop(
                "UPDATE hamq_messages SET redeliveries = ? WHERE id = ?",
                (count, id),
            )?,
            Target::Entry { sub, message } => self.tx.exec_drop(
                "UPDATE hamq_durable_entries SET redeliveries = ? WHERE sub_id = ? AND msg_id = ?",
                (count, sub, message),
            )?,
        }
        Ok(())
    }

    /// Copy the row into the dead-letter queue (a new id), then remove the original target.
    fn dead_letter(
        &mut self,
        target: Target,
        message: &Message,
        dlq: &str,
        out: &mut Outcome,
    ) -> Result<Option<Message>, StoreError> {
        let source = match target {
            Target::Message(id) | Target::Entry { message: id, .. } => id,
        };
        let id = self.message_id();
        self.tx.exec_drop(
            "INSERT INTO hamq_messages (id, destination, priority, expires, timestamp, \
             original_destination, headers, body) SELECT ?, ?, priority, expires, timestamp, \
             COALESCE(original_destination, destination), headers, body \
             FROM hamq_messages WHERE id = ?",
            (id, dlq, source),
        )?;
        if self.tx.affected_rows() == 0 {
            return Ok(None);
        }
        let moved = Message {
            id,
            ..message.dead_lettered(dlq)
        };
        self.remove(target, out)?;
        Ok(Some(moved))
    }

    fn create_durable(
        &mut self,
        client_id: &str,
        name: &str,
        topic: &str,
    ) -> Result<DurableRow, StoreError> {
        let row: Option<mysql::Row> = self.tx.exec_first(
            "SELECT id, topic FROM hamq_durable_subs WHERE client_id = ? AND name = ? FOR UPDATE",
            (client_id, name),
        )?;
        let existing: Option<(u64, String)> = match row {
            Some(row) => Some((column(&row, 0)?, column(&row, 1)?)),
            None => None,
        };
        let id = match existing {
            Some((id, old)) if old == topic => id,
            Some((id, _)) => {
                // Re-pointed at another topic: what it held for the old one is dropped; the
                // subscription keeps its id, so the router re-points the same one.
                self.drop_entries(id)?;
                self.tx.exec_drop(
                    "UPDATE hamq_durable_subs SET topic = ? WHERE id = ?",
                    (topic, id),
                )?;
                id
            }
            None => self.insert_durable(client_id, name, topic)?,
        };
        self.durables.insert(id, topic.to_string());
        Ok(DurableRow {
            id,
            client_id: client_id.to_string(),
            name: name.to_string(),
            topic: topic.to_string(),
        })
    }

    /// A duplicate key here can only be the client's names: two that the database's collation
    /// counts as one (a server without a NO PAD collation, see `schema::name_collation`).
    fn insert_durable(
        &mut self,
        client_id: &str,
        name: &str,
        topic: &str,
    ) -> Result<u64, StoreError> {
        self.tx
            .exec_drop(
                "INSERT INTO hamq_durable_subs (client_id, name, topic) VALUES (?, ?, ?)",
                (client_id, name, topic),
            )
            .map_err(|e| {
                StoreError::from(e).duplicate_name(
                    "the database takes this client-id and subscription name for another \
                     durable subscription's",
                )
            })?;
        self.last_id()
    }

    fn delete_durable(&mut self, id: u64) -> Result<(), StoreError> {
        self.drop_entries(id)?;
        self.durables.remove(id);
        self.tx
            .exec_drop("DELETE FROM hamq_durable_subs WHERE id = ?", (id,))?;
        Ok(())
    }

    /// Remove a durable subscription's entries and the messages no one else holds.
    fn drop_entries(&mut self, id: u64) -> Result<(), StoreError> {
        let topic = self.durables.topic(id).cloned();
        self.tx
            .exec_drop("DELETE FROM hamq_durable_entries WHERE sub_id = ?", (id,))?;
        if let Some(topic) = topic {
            self.tx.exec_drop(
                "DELETE FROM hamq_messages WHERE destination = ? AND NOT EXISTS \
                 (SELECT 1 FROM hamq_durable_entries e WHERE e.msg_id = hamq_messages.id)",
                (topic,),
            )?;
        }
        Ok(())
    }
}

/// Whether a message is kept in memory only: non-persistent, or a topic message that no
/// durable subscription will read.
pub(super) fn transient(message: &Message, durables: &Durables) -> bool {
    let topic_without_durables =
        message.kind == Kind::Topic && durables.subscribers(&message.destination).is_empty();
    !message.persistent || topic_without_durables
}

/// Give a message its id. A persistent one (queues, and topics that have durable
/// subscriptions) joins the rows to insert, with an entry per durable subscription of its
/// topic; every other message gets a transient id. Only the writer holds the message while a
/// batch is tried, so setting the id copies nothing.
fn assign(
    message: &mut Arc<Message>,
    durables: &Durables,
    ids: &mut Ids,
    out: &mut Outcome,
) -> Arc<Message> {
    let stored = !transient(message, durables);
    let m = Arc::make_mut(message);
    if !stored {
        ids.next_transient += 1;
        m.id = NON_PERSISTENT_BIT | ids.next_transient;
        return message.clone();
    }
    m.id = ids.next_id;
    ids.next_id += 1;
    let subscribers = durables.subscribers(&m.destination);
    out.entries
        .extend(subscribers.iter().map(|&sub| (sub, m.id)));
    out.inserts.push(message.clone());
    message.clone()
}

/// Consecutive messages travel to the router as one `Committed::Messages`.
fn push_messages(out: &mut Outcome, messages: Vec<Arc<Message>>) {
    if messages.is_empty() {
        return;
    }
    if let Some(Committed::Messages(last)) = out.committed.last_mut() {
        last.extend(messages);
    } else {
        out.committed.push(Committed::Messages(messages));
    }
}

/// The one stored row of a batch (see `insert_fenced`), taken from the gathered inserts.
pub(super) fn only_row(out: &mut Outcome) -> Option<Arc<Message>> {
    let row = out.inserts.pop();
    out.inserts.clear();
    row
}

/// Write `message` in ONE autocommitted statement that fences itself:
/// `INSERT ... SELECT <row> FROM hamq_epoch WHERE id = 1 AND epoch = ours`. Under REPEATABLE
/// READ (which `store::connect` sets) an INSERT ... SELECT reads the epoch row with a shared
/// lock, as `epoch::check_epoch` does, so a takeover waits for it, and after one the statement
/// inserts nothing. Returns whether the row was inserted (false: deposed).
///
/// One row only: MariaDB 10.11 stored empty bodies for some executions of the multi-row form
/// (`... UNION ALL SELECT <row> ...`, prepared, binary protocol; tests/flow_control.rs caught
/// it), so batches of several rows take the transaction.
pub(super) fn insert_fenced(
    conn: &mut Conn,
    message: &Message,
    epoch: u64,
) -> Result<bool, StoreError> {
    let mut params = row_values(message).to_vec();
    params.push(Value::from(epoch));
    conn.exec_drop(
        "INSERT INTO hamq_messages (id, destination, priority, expires, timestamp, \
         original_destination, headers, body) \
         SELECT ?, ?, ?, ?, ?, ?, ?, ? FROM hamq_epoch WHERE id = 1 AND epoch = ?",
        params,
    )?;
    Ok(conn.affected_rows() == 1)
}

/// Bytes a message row adds to an INSERT statement (see `ROW_OVERHEAD` for the whole bound).
fn row_bytes(m: &Message) -> usize {
    m.body.len()
        + encoded_headers_len(&m.headers)
        + m.destination.len()
        + m.original_destination.as_ref().map_or(0, String::len)
        + 64
}

/// Write the gathered message rows and durable entries: multi-row INSERTs with the ids the
/// writer assigned, so a batch of N SENDs costs a statement or a few, not N round trips. A
/// statement stays within `max_statement` bytes (the first row of each always goes: the
/// session refused any row the server could not take).
fn write_rows(
    tx: &mut Transaction<'_>,
    out: &mut Outcome,
    max_statement: usize,
) -> Result<(), StoreError> {
    let rows = std::mem::take(&mut out.inserts);
    let budget = max_statement.min(BYTES_PER_INSERT);
    let mut rest = rows.as_slice();
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(statement_rows(rest, budget));
        insert_messages(tx, chunk)?;
        out.rows_written += chunk.len() as u64;
        rest = tail;
    }
    for chunk in std::mem::take(&mut out.entries).chunks(ENTRIES_PER_INSERT) {
        let sql = format!(
            "INSERT INTO hamq_durable_entries (sub_id, msg_id) VALUES {}",
            placeholders(chunk.len(), 2)
        );
        let params: Vec<Value> = chunk
            .iter()
            .flat_map(|&(sub, message)| [Value::from(sub), Value::from(message)])
            .collect();
        tx.exec_drop(sql, params)?;
    }
    Ok(())
}

/// How many of `rows`, from the first, the next INSERT statement takes: at most
/// `ROWS_PER_INSERT`, within `budget` bytes, and always the first.
fn statement_rows(rows: &[Arc<Message>], budget: usize) -> usize {
    let mut bytes = 0;
    let mut take = 0;
    for row in rows.iter().take(ROWS_PER_INSERT) {
        let more = row_bytes(row);
        if take > 0 && bytes + more > budget {
            break;
        }
        bytes += more;
        take += 1;
    }
    take
}

fn insert_messages(tx: &mut Transaction<'_>, messages: &[Arc<Message>]) -> Result<(), StoreError> {
    let sql = format!(
        "INSERT INTO hamq_messages (id, destination, priority, expires, timestamp, \
         original_destination, headers, body) VALUES {}",
        placeholders(messages.len(), 8)
    );
    let params: Vec<Value> = messages.iter().flat_map(|m| row_values(m)).collect();
    tx.exec_drop(sql, params)?;
    Ok(())
}

/// A message row's values, in the column order of the INSERTs above.
fn row_values(m: &Message) -> [Value; 8] {
    [
        Value::from(m.id),
        Value::from(&*m.destination),
        Value::from(m.priority),
        Value::from(m.expires),
        Value::from(m.timestamp),
        Value::from(m.original_destination.as_deref()),
        Value::from(encode_headers(&m.headers)),
        Value::from(m.body.as_slice()),
    ]
}

/// `(?, ?), (?, ?)` for `rows` rows of `columns` values.
fn placeholders(rows: usize, columns: usize) -> String {
    let row = format!("({})", vec!["?"; columns].join(", "));
    vec![row; rows].join(", ")
}

/// One `DELETE ... IN (...)` per chunk instead of a round trip per acknowledged or purged
/// message. The ids are numbers formatted by us, never client text.
/// Re-point queue message rows at queue `to`, as fresh messages there: no original destination,
/// no deliveries counted.
fn move_messages(tx: &mut Transaction<'_>, ids: &[u64], to: &str) -> Result<(), StoreError> {
    for chunk in ids.chunks(500) {
        // Numbers we formatted ourselves; the destination goes as a parameter.
        let list: Vec<String> = chunk.iter().map(u64::to_string).collect();
        tx.exec_drop(
            format!(
                "UPDATE hamq_messages SET destination = ?, original_destination = NULL, \
                 redeliveries = 0 WHERE id IN ({})",
                list.join(",")
            ),
            (to,),
        )?;
    }
    Ok(())
}

fn delete_messages(tx: &mut Transaction<'_>, ids: &[u64]) -> Result<(), StoreError> {
    for chunk in ids.chunks(500) {
        let list: Vec<String> = chunk.iter().map(u64::to_string).collect();
        tx.query_drop(format!(
            "DELETE FROM hamq_messages WHERE id IN ({})",
            list.join(",")
        ))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(id_hint: &str, destination: &str, persistent: bool) -> Arc<Message> {
        Arc::new(Message {
            persistent,
            ..Message::test(0, destination, id_hint.as_bytes())
        })
    }

    fn commit(sends: Vec<Arc<Message>>) -> Work {
        Work::Commit {
            sends,
            removals: Vec::new(),
        }
    }

    #[test]
    fn ids_rows_and_entries_follow_send_order_and_the_durable_subscriptions() {
        let mut durables = Durables::default();
        durables.insert(7, "/topic/d".to_string());
        durables.insert(3, "/topic/d".to_string());
        let mut works = [
            commit(vec![
                send("q", "/queue/a", true),
                send("np", "/queue/a", false),
                send("d", "/topic/d", true),
                send("t", "/topic/none", true),
            ]),
            commit(vec![send("q2", "/queue/b", true)]),
        ];
        let mut ids = Ids {
            next_id: 100,
            next_transient: 0,
        };
        let mut out = Outcome::default();
        assign_all(works.iter_mut(), &durables, &mut ids, &mut out);

        // Stored messages take the database's ids in order; the others transient ones.
        let t = NON_PERSISTENT_BIT;
        let [Committed::Messages(routed)] = out.committed.as_slice() else {
            panic!("consecutive messages travel as one Committed::Messages");
        };
        let routed: Vec<(&[u8], u64)> = routed.iter().map(|m| (&m.body[..], m.id)).collect();
        let expected: [(&[u8], u64); 5] = [
            (b"q", 100),
            (b"np", t | 1),
            (b"d", 101),
            (b"t", t | 2),
            (b"q2", 102),
        ];
        assert_eq!(routed, expected);
        let rows: Vec<u64> = out.inserts.iter().map(|m| m.id).collect();
        assert_eq!(rows, [100, 101, 102]);
        assert_eq!(
            out.entries,
            [(3, 101), (7, 101)],
            "one per durable, in id order"
        );
        assert_eq!((ids.next_id, ids.next_transient), (103, 2));
        // The batch's own copies carry the ids too (a retry gives them afresh).
        let Work::Commit { sends, .. } = &works[1] else {
            unreachable!()
        };
        assert_eq!(sends[0].id, 102);
    }

    #[test]
    fn what_stays_in_memory_and_what_changes_the_durables() {
        let mut durables = Durables::default();
        durables.insert(1, "/topic/d".to_string());
        let memory_only = commit(vec![
            send("", "/queue/a", false),
            send("", "/topic/t", true),
        ]);
        assert!(memory_only.stays_in_memory(&durables));
        assert!(!commit(vec![send("", "/topic/d", true)]).stays_in_memory(&durables));
        assert!(!commit(vec![send("", "/queue/a", true)]).stays_in_memory(&durables));
        let ack = Work::Commit {
            sends: Vec::new(),
            removals: vec![Target::Message(5)],
        };
        assert!(!ack.stays_in_memory(&durables), "a removal is a write");
        let count = Work::Redelivered {
            target: Target::Message(5),
            count: 1,
        };
        assert!(!count.stays_in_memory(&durables));
        assert!(!count.changes_durables() && !ack.changes_durables());
        assert!(Work::DeleteDurable { id: 1 }.changes_durables());
        let create = Work::CreateDurable {
            client_id: "c".to_string(),
            name: "n".to_string(),
            topic: "/topic/d".to_string(),
        };
        assert!(create.changes_durables());
    }

    #[test]
    fn insert_statements_stay_within_their_row_and_byte_bounds() {
        let small: Vec<Arc<Message>> = (0..150).map(|_| send("x", "/queue/a", true)).collect();
        assert_eq!(statement_rows(&small, BYTES_PER_INSERT), ROWS_PER_INSERT);
        assert_eq!(statement_rows(&small[..10], BYTES_PER_INSERT), 10);
        let each = row_bytes(&small[0]);
        assert_eq!(statement_rows(&small, each * 3), 3);
        assert_eq!(statement_rows(&small, each * 3 - 1), 2);
        // A row larger than the budget still goes, alone.
        let big = vec![
            Arc::new(Message::test(0, "/queue/a", &[0; 5000])),
            send("x", "/queue/a", true),
        ];
        assert_eq!(statement_rows(&big, 1000), 1);
        assert_eq!(statement_rows(&big[1..], 1000), 1);
        assert_eq!(statement_rows(&[], 1000), 0);
    }

    #[test]
    fn the_one_row_of_a_lone_send_is_taken_from_the_gathered_rows() {
        let mut out = Outcome::default();
        let mut ids = Ids {
            next_id: 8,
            next_transient: 0,
        };
        let mut works = [commit(vec![send("a", "/queue/a", true)])];
        assign_all(works.iter_mut(), &Durables::default(), &mut ids, &mut out);
        assert_eq!(only_row(&mut out).map(|m| m.id), Some(8));
        assert!(out.inserts.is_empty() && only_row(&mut out).is_none());
    }
}
