//! Exactly-once hops over one directed link.
//!
//! The sender numbers hops 1, 2, 3, ... per link and keeps each until it is acknowledged,
//! resending on a timer and on every reconnect. The receiver applies hops in sequence order only
//! (so a task forwarded after an object on the same link never overtakes it), holds a bounded
//! window of early arrivals, and acknowledges cumulatively once a hop is applied: a duplicate
//! (`seq` at or below what it applied) is dropped and re-acknowledged. Both halves are part of
//! the agent's persistent state, so a restarted agent neither forgets an acknowledged hop nor
//! applies one twice.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use crate::wire::Payload;

/// How far ahead of the last acknowledged hop a sender transmits, and a receiver buffers.
pub const WINDOW: u64 = 256;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Outgoing {
    /// The last sequence number used.
    pub last_seq: u64,
    /// The highest cumulative acknowledgement received.
    pub acked: u64,
    /// Hops not yet acknowledged, by sequence number.
    pub unacked: BTreeMap<u64, Payload>,
    /// When each unacked hop was last transmitted; not persisted, so a restart resends all.
    #[serde(skip)]
    pub sent_at: BTreeMap<u64, u64>,
}

impl Outgoing {
    /// Queues a payload; returns its sequence number.
    pub fn push(&mut self, payload: Payload) -> u64 {
        self.last_seq += 1;
        self.unacked.insert(self.last_seq, payload);
        self.last_seq
    }

    /// Applies a cumulative acknowledgement; returns how many hops it settled.
    pub fn ack(&mut self, upto: u64) -> usize {
        // An ack beyond what we sent is a confused or hostile peer: settle only what exists.
        let upto = upto.min(self.last_seq);
        if upto <= self.acked {
            return 0;
        }
        self.acked = upto;
        let still = self.unacked.split_off(&(upto + 1));
        let settled = core::mem::replace(&mut self.unacked, still).len();
        self.sent_at = self.sent_at.split_off(&(upto + 1));
        settled
    }

    /// The hops due for (re)transmission at `now`: never sent, or sent `rto` ago or more.
    pub fn due(&mut self, now: u64, rto: u64) -> Vec<(u64, Payload)> {
        let limit = self.acked + WINDOW;
        let mut due = Vec::new();
        for (&seq, payload) in self.unacked.range(..=limit) {
            let stale = self
                .sent_at
                .get(&seq)
                .is_none_or(|&at| now.saturating_sub(at) >= rto);
            if stale {
                due.push((seq, payload.clone()));
            }
        }
        for (seq, _) in &due {
            self.sent_at.insert(*seq, now);
        }
        due
    }

    /// The connection was re-established: everything unacked goes again at the next flush.
    pub fn reconnected(&mut self) {
        self.sent_at.clear();
    }
}

/// What a receiver does with an arriving hop.
#[derive(Debug, PartialEq)]
pub enum Arrival {
    /// Apply these, in order (the arrival and any buffered hops it unblocked).
    Apply(Vec<Payload>),
    /// Already applied: re-acknowledge.
    Duplicate,
    /// Early: held until the gap fills (or dropped beyond the window; the sender resends).
    Held,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Incoming {
    /// Every hop with `seq <= applied` has been applied.
    pub applied: u64,
    /// Early arrivals. Unacknowledged, so the sender still has them; persisted anyway, because
    /// a runtime that logs inputs (`guest-agentd`) must find after a restart exactly the state
    /// its log's later frames were applied to.
    pub early: BTreeMap<u64, Payload>,
}

impl Incoming {
    pub fn arrive(&mut self, seq: u64, payload: Payload) -> Arrival {
        if seq <= self.applied {
            return Arrival::Duplicate;
        }
        if seq > self.applied + 1 {
            if seq <= self.applied + WINDOW {
                self.early.insert(seq, payload);
            }
            return Arrival::Held;
        }
        self.applied = seq;
        let mut apply = alloc::vec![payload];
        while let Some(next) = self.early.remove(&(self.applied + 1)) {
            self.applied += 1;
            apply.push(next);
        }
        Arrival::Apply(apply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{AgentId, FutureId};

    fn payload(n: u64) -> Payload {
        Payload::Result {
            fut: FutureId {
                origin: AgentId(0),
                seq: n,
            },
            result: Ok(alloc::vec![]),
        }
    }

    #[test]
    fn hops_apply_in_order_once() {
        let mut rx = Incoming::default();
        assert_eq!(rx.arrive(2, payload(2)), Arrival::Held);
        assert_eq!(
            rx.arrive(1, payload(1)),
            Arrival::Apply(alloc::vec![payload(1), payload(2)])
        );
        assert_eq!(rx.arrive(1, payload(1)), Arrival::Duplicate);
        assert_eq!(rx.arrive(2, payload(2)), Arrival::Duplicate);
        assert_eq!(rx.applied, 2);
    }

    #[test]
    fn a_hop_far_ahead_is_not_buffered() {
        let mut rx = Incoming::default();
        assert_eq!(rx.arrive(WINDOW + 5, payload(1)), Arrival::Held);
        assert!(rx.early.is_empty());
    }

    #[test]
    fn unacked_hops_are_resent_after_the_timeout_and_on_reconnect() {
        let mut tx = Outgoing::default();
        tx.push(payload(1));
        tx.push(payload(2));
        assert_eq!(tx.due(0, 100).len(), 2);
        assert!(tx.due(50, 100).is_empty());
        assert_eq!(tx.ack(1), 1);
        assert_eq!(tx.due(150, 100).len(), 1);
        tx.reconnected();
        assert_eq!(tx.due(151, 100).len(), 1);
        // An acknowledgement of hops never sent settles nothing that does not exist.
        assert_eq!(tx.ack(99), 1);
        assert_eq!(tx.acked, 2);
        assert!(tx.unacked.is_empty());
    }
}
