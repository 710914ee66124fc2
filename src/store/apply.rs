//! Applying one store operation inside the writer's batch transaction: the SQL of inserting,
//! removing, counting redeliveries, dead-lettering and durable subscriptions. Runs on the
//! store-writer thread, called only by `writer`.

use super::writer::{push_messages, transient, Outcome};
use super::{column, encode_headers, Committed, DurableRow, StoreError, StoreOp, Target};
use crate::message::{Message, NON_PERSISTENT_BIT};
use mysql::prelude::Queryable;
use mysql::Transaction;
use std::collections::HashMap;
use std::sync::Arc;

/// One operation applied inside the batch's transaction.
pub(super) struct Apply<'a, 'b, 'c> {
    pub(super) tx: &'a mut Transaction<'b>,
    /// Durable subscription id -> topic (kept in step with the rows written here).
    pub(super) durable_topics: &'c mut HashMap<u64, String>,
    pub(super) next_transient: &'c mut u64,
}

impl Apply<'_, '_, '_> {
    pub(super) fn apply(&mut self, op: StoreOp, out: &mut Outcome) -> Result<(), StoreError> {
        match op {
            StoreOp::Commit {
                sends,
                removals,
                done,
            } => {
                out.dones.extend(done);
                let mut routed = Vec::with_capacity(sends.len());
                for message in sends {
                    routed.push(Arc::new(self.insert(message)?));
                }
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
        }
        Ok(())
    }

    fn transient_id(&mut self) -> u64 {
        *self.next_transient += 1;
        NON_PERSISTENT_BIT | *self.next_transient
    }

    /// Store a persistent message (queues, and topics that have durable subscriptions); give
    /// every other message a transient id.
    fn insert(&mut self, mut message: Message) -> Result<Message, StoreError> {
        if transient(&message, self.durable_topics) {
            message.id = self.transient_id();
            return Ok(message);
        }
        self.tx.exec_drop(
            "INSERT INTO hamq_messages (destination, priority, expires, timestamp, \
             original_destination, headers, body) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                &*message.destination,
                message.priority,
                message.expires,
                message.timestamp,
                message.original_destination.as_deref(),
                encode_headers(&message.headers),
                message.body.as_slice(),
            ),
        )?;
        message.id = self.last_id()?;
        if message.destination.starts_with("/topic/") {
            self.tx.exec_drop(
                "INSERT INTO hamq_durable_entries (sub_id, msg_id) \
                 SELECT id, ? FROM hamq_durable_subs WHERE topic = ?",
                (message.id, &*message.destination),
            )?;
        }
        Ok(message)
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
        self.tx.exec_drop(
            "INSERT INTO hamq_messages (destination, priority, expires, timestamp, \
             original_destination, headers, body) SELECT ?, priority, expires, timestamp, \
             COALESCE(original_destination, destination), headers, body \
             FROM hamq_messages WHERE id = ?",
            (&dlq, source),
        )?;
        if self.tx.affected_rows() == 0 {
            return Ok(None);
        }
        let mut moved = message.clone();
        moved.id = self.last_id()?;
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
        self.durable_topics.insert(id, topic.clone());
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
        self.durable_topics.remove(&id);
        self.tx
            .exec_drop("DELETE FROM hamq_durable_subs WHERE id = ?", (id,))?;
        Ok(())
    }

    /// Remove a durable subscription's entries and the messages no one else holds.
    fn drop_entries(&mut self, id: u64) -> Result<(), StoreError> {
        let topic = self.durable_topics.get(&id).cloned();
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
