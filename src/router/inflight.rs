//! One subscription's deliveries awaiting acknowledgement, in delivery order, and the
//! accounting on them: the prefetch window, which deliveries an ACK covers (every earlier one
//! too in `client` mode, itself alone otherwise) and their weight, and the auto-ack deliveries
//! that the connection's writer has put on the socket. A value with no I/O, owned by its
//! subscription on the router thread.

use super::Source;
use crate::command::AckMode;
use crate::queue::Entry;
use std::collections::VecDeque;

/// A delivery awaiting acknowledgement.
pub(super) struct InFlight {
    pub(super) entry: Entry,
    /// Where it returns to when it is not acknowledged.
    pub(super) source: Source,
    /// Its number among the deliveries handed to the connection's outbox (see
    /// `Outbox::written`): a delivery never written is put back without counting.
    pub(super) handed: u64,
}

/// A subscription's deliveries awaiting acknowledgement, oldest first.
#[derive(Default)]
pub(super) struct Deliveries {
    list: VecDeque<InFlight>,
}

impl Deliveries {
    pub(super) fn len(&self) -> usize {
        self.list.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub(super) fn push(&mut self, flight: InFlight) {
        self.list.push_back(flight);
    }

    /// Whether a subscription acknowledging in `mode` may take one more delivery with a
    /// prefetch window of `prefetch` (auto: the outbox's room is the only bound).
    pub(super) fn window_open(&self, mode: AckMode, prefetch: usize) -> bool {
        mode == AckMode::Auto || self.list.len() < prefetch
    }

    /// The position of message `id`'s delivery.
    pub(super) fn position(&self, id: u64) -> Option<usize> {
        self.list.iter().position(|f| f.entry.id() == id)
    }

    /// The first position an ACK at `pos` in `mode` covers.
    fn first_covered(mode: AckMode, pos: usize) -> usize {
        match mode {
            AckMode::Client => 0,
            _ => pos,
        }
    }

    /// The weight of the messages an ACK at `pos` in `mode` covers.
    pub(super) fn weight_covered(&self, mode: AckMode, pos: usize) -> usize {
        let first = Deliveries::first_covered(mode, pos);
        self.list
            .range(first..=pos.min(self.list.len().saturating_sub(1)))
            .map(|f| f.entry.weight())
            .sum()
    }

    /// Take the deliveries an ACK (or NACK) at `pos` in `mode` covers, oldest first.
    pub(super) fn take_covered(&mut self, mode: AckMode, pos: usize) -> Vec<InFlight> {
        if pos >= self.list.len() {
            return Vec::new();
        }
        let first = Deliveries::first_covered(mode, pos);
        self.list.drain(first..=pos).collect()
    }

    /// Take the oldest deliveries among the first `written` handed to the connection's outbox
    /// (what an auto-ack subscription counts as acknowledged).
    pub(super) fn take_written(&mut self, written: u64) -> Vec<InFlight> {
        let mut settled = Vec::new();
        while self.list.front().is_some_and(|f| f.handed <= written) {
            settled.extend(self.list.pop_front());
        }
        settled
    }

    /// Every delivery, oldest first (the subscription ends).
    pub(super) fn take_all(&mut self) -> VecDeque<InFlight> {
        std::mem::take(&mut self.list)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;
    use crate::queue::{entry_weight, Slot};
    use std::sync::Arc;

    /// Deliveries of messages 1..=n, each weighing its id in bytes, the k-th handed k-th.
    fn deliveries(n: u64) -> Deliveries {
        let mut d = Deliveries::default();
        for id in 1..=n {
            let message = Arc::new(Message::test(id, "/queue/a", b""));
            d.push(InFlight {
                entry: Entry {
                    slot: Slot::Resident(message, entry_weight(id as usize)),
                    seq: id,
                    redeliveries: 0,
                    redelivered: false,
                },
                source: Source::Queue(Arc::from("/queue/a")),
                handed: id,
            });
        }
        d
    }

    fn ids(flights: impl IntoIterator<Item = InFlight>) -> Vec<u64> {
        flights.into_iter().map(|f| f.entry.id()).collect()
    }

    #[test]
    fn a_client_ack_covers_every_earlier_delivery_an_individual_one_itself() {
        let mut d = deliveries(5);
        assert_eq!(d.position(3), Some(2));
        assert_eq!(d.position(9), None);
        assert_eq!(d.weight_covered(AckMode::Client, 2), 1 + 2 + 3);
        assert_eq!(d.weight_covered(AckMode::ClientIndividual, 2), 3);
        assert_eq!(ids(d.take_covered(AckMode::ClientIndividual, 2)), [3]);
        assert_eq!(ids(d.take_covered(AckMode::Client, 2)), [1, 2, 4]);
        assert_eq!(ids(d.take_covered(AckMode::Client, 7)), [] as [u64; 0]);
        assert_eq!(ids(d.take_all()), [5]);
        assert!(d.is_empty());
    }

    #[test]
    fn the_prefetch_window_bounds_all_but_auto_subscriptions() {
        let d = deliveries(3);
        assert!(!d.window_open(AckMode::Client, 3));
        assert!(d.window_open(AckMode::ClientIndividual, 4));
        assert!(d.window_open(AckMode::Auto, 1));
    }

    #[test]
    fn auto_deliveries_settle_as_far_as_the_writer_wrote() {
        let mut d = deliveries(4);
        assert_eq!(ids(d.take_written(0)), [] as [u64; 0]);
        assert_eq!(ids(d.take_written(2)), [1, 2]);
        assert_eq!(d.len(), 2);
        assert_eq!(ids(d.take_written(9)), [3, 4]);
    }
}
