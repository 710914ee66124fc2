//! Applying one store operation inside the writer's batch transaction: the SQL of inserting,
//! removing, counting redeliveries, dead-lettering and durable subscriptions. Runs on the
//! store-writer thread, called only by `writer`.

use super::writer::{push_messages, transient, Durables, Outcome};
use super::{column, encode_headers, Committed, DurableRow, StoreError, StoreOp, Target};
use crate::message::{Message, NON_PERSISTENT_BIT};
use mysql::prelude::Queryable;
use mysql::{Conn, Transaction, Value};
use std::sync::Arc;

/// Most message rows in one INSERT statement.
const ROWS_PER_INSERT: usize = 64;
/// A statement takes no further row once its bodies reach this many bytes (well under the
/// smallest default `max_allowed_packet`, MySQL 5.7's 4 MiB); a larger body goes alone.
const BYTES_PER_INSERT: usize = 1024 * 1024;
/// Most durable entries in one INSERT statement.
const ENTRIES_PER_INSERT: usize = 256;

/// One operation applied inside the batch's transaction.
pub(super) struct Apply<'a, 'b, 'c> {
    pub(super) tx: &'a mut Transaction<'b>,
    /// The durable subscriptions (kept in step with the rows written here).
    pub(super) durables: &'c mut Durables,
    pub(super) next_id: &'c mut u64,
    pub(super) next_transient: &'c mut u64,
}

impl Apply<'_, '_, '_> {
    /// SENDs and removals only gather rows; any other operation first writes what was
    /// gathered, so the statements run in the order of the operations they stand for.
    pub(super) fn apply(&mut self, op: StoreOp, out: &mut Outcome) -> Result<(), StoreError> {
        if !matches!(op, StoreOp::Commit { .. }) {
            write_rows(self.tx, out)?;
        }
        match op {
            StoreOp::Commit {
                sends,
                removals,
                done,
            } => {
                out.dones.extend(done);
                let routed = sends
                    .into_iter()
                    .map(|message| self.insert(message, out))
                    .collect();
                for target in removals {
                    self.remove(target, out)?;
                }
                push_messages(out, routed);
            }
            StoreOp::Redelivered { target, count } => self.redelivered(target, count)?,
            StoreOp::DeadLetter {
                target,
                message,
                dlq,
            } => {
                let moved = self.dead_letter(target, &message, dlq, out)?;
                push_messages(out, moved.into_iter().map(Arc::new).collect());
            }
            StoreOp::CreateDurable {
                client_id,
                name,
                topic,
                done,
            } => {
                out.dones.push(done);
                let row = self.create_durable(client_id, name, topic)?;
                out.committed.push(Committed::Durable(row));
            }
            StoreOp::DeleteDurable { id } => self.delete_durable(id)?,
            StoreOp::Purge { ids } => delete_messages(self.tx, &ids)?,
        }
        Ok(())
    }

    fn message_id(&mut self) -> u64 {
        let id = *self.next_id;
        *self.next_id += 1;
        id
    }

    fn insert(&mut self, message: Message, out: &mut Outcome) -> Arc<Message> {
        assign(
            message,
            self.durables,
            (self.next_id, self.next_transient),
            out,
        )
    }

    fn last_id(&mut self) -> Result<u64, StoreError> {
        self.tx
            .last_insert_id()
            .ok_or_else(|| StoreError::Sql("INSERT gave no id".to_string()))
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
        dlq: String,
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
            (id, &dlq, source),
        )?;
        if self.tx.affected_rows() == 0 {
            return Ok(None);
        }
        let mut moved = message.clone();
        moved.id = id;
        moved.original_destination = Some(
            message
                .original_destination
                .clone()
                .unwrap_or_else(|| message.destination.to_string()),
        );
        moved.destination = Arc::from(dlq);
        self.remove(target, out)?;
        Ok(Some(moved))
    }

    fn create_durable(
        &mut self,
        client_id: String,
        name: String,
        topic: String,
    ) -> Result<DurableRow, StoreError> {
        let row: Option<mysql::Row> = self.tx.exec_first(
            "SELECT id, topic FROM hamq_durable_subs WHERE client_id = ? AND name = ? FOR UPDATE",
            (&client_id, &name),
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
                    (&topic, id),
                )?;
                id
            }
            None => self.insert_durable(&client_id, &name, &topic)?,
        };
        self.durables.insert(id, topic.clone());
        Ok(DurableRow {
            id,
            client_id,
            name,
            topic,
        })
    }

    fn insert_durable(
        &mut self,
        client_id: &str,
        name: &str,
        topic: &str,
    ) -> Result<u64, StoreError> {
        self.tx.exec_drop(
            "INSERT INTO hamq_durable_subs (client_id, name, topic) VALUES (?, ?, ?)",
            (client_id, name, topic),
        )?;
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

/// Give a message its id from `(next_id, next_transient)`. A persistent one (queues, and topics
/// that have durable subscriptions) joins the rows to insert, with an entry per durable
/// subscription of its topic; every other message gets a transient id.
pub(super) fn assign(
    mut message: Message,
    durables: &Durables,
    (next_id, next_transient): (&mut u64, &mut u64),
    out: &mut Outcome,
) -> Arc<Message> {
    if transient(&message, durables) {
        *next_transient += 1;
        message.id = NON_PERSISTENT_BIT | *next_transient;
        return Arc::new(message);
    }
    message.id = *next_id;
    *next_id += 1;
    let subscribers = durables.subscribers(&message.destination);
    out.entries
        .extend(subscribers.iter().map(|&sub| (sub, message.id)));
    let message = Arc::new(message);
    out.inserts.push(message.clone());
    message
}

/// Write `message` in ONE autocommitted statement that fences itself:
/// `INSERT ... SELECT <row> FROM hamq_epoch WHERE id = 1 AND epoch = ours`. Under REPEATABLE
/// READ (which `store::connect` sets) an INSERT ... SELECT reads the epoch row with a shared
/// lock, as `lock::check_epoch` does, so a takeover waits for it, and after one the statement
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

/// Write the gathered message rows and durable entries: multi-row INSERTs with the ids the
/// writer assigned, so a batch of N SENDs costs a statement or a few, not N round trips.
pub(super) fn write_rows(tx: &mut Transaction<'_>, out: &mut Outcome) -> Result<(), StoreError> {
    let rows = std::mem::take(&mut out.inserts);
    let mut rest = rows.as_slice();
    while !rest.is_empty() {
        let mut take = 0;
        let mut bytes = 0;
        while take < rest.len() && take < ROWS_PER_INSERT && (take == 0 || bytes < BYTES_PER_INSERT)
        {
            bytes += rest[take].body.len();
            take += 1;
        }
        let (chunk, tail) = rest.split_at(take);
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
pub(super) fn delete_messages(tx: &mut Transaction<'_>, ids: &[u64]) -> Result<(), StoreError> {
    for chunk in ids.chunks(500) {
        let list: Vec<String> = chunk.iter().map(u64::to_string).collect();
        tx.query_drop(format!(
            "DELETE FROM hamq_messages WHERE id IN ({})",
            list.join(",")
        ))?;
    }
    Ok(())
}
