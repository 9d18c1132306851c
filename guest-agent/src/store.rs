//! Where objects are: the ones held here, forwarding pointers to the ones that left, and a cache
//! of where others were last seen.
//!
//! Every move of an object bumps its epoch. A forwarding pointer records the agent the object
//! was sent to and the epoch it went with, so following pointers always goes forward in time
//! and cannot loop; an agent that receives a task through a pointer but holds neither the object
//! nor a newer pointer knows the object is on its way and parks the task until it arrives.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use crate::ids::{AgentId, ObjectId};

/// An object held here: its postcard encoding and the epoch it arrived with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stored {
    pub bytes: Vec<u8>,
    pub epoch: u32,
}

/// Where an object was seen last.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Seen {
    pub at: AgentId,
    pub epoch: u32,
    pub size: u32,
}

/// How to reach an object from here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// It is here.
    Here,
    /// It left with this epoch for this agent (a forwarding pointer).
    Forward(AgentId, u32),
    /// A forwarding pointer sent us here, so it is on its way: wait for it.
    Park,
    /// Best guess (a cache entry, the reference's hint, or the object's home).
    Guess(AgentId),
    /// It does not exist: this is its home and it never left.
    Missing,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Store {
    pub objects: BTreeMap<ObjectId, Stored>,
    pub forwards: BTreeMap<ObjectId, (AgentId, u32)>,
    pub seen: BTreeMap<ObjectId, Seen>,
}

impl Store {
    /// The way to `id` from agent `me`. `claim` is the epoch of the pointer that sent the
    /// asking task here, if one did; `hint` is the reference's own hint.
    pub fn route(&self, me: AgentId, id: ObjectId, claim: Option<u32>, hint: AgentId) -> Route {
        if self.objects.contains_key(&id) {
            return Route::Here;
        }
        if let Some(&(at, epoch)) = self.forwards.get(&id) {
            if claim.is_none_or(|claim| epoch >= claim) {
                return Route::Forward(at, epoch);
            }
        }
        if claim.is_some() {
            return Route::Park;
        }
        if id.home == me {
            return Route::Missing;
        }
        match self.seen.get(&id) {
            Some(seen) if seen.at != me => Route::Guess(seen.at),
            _ if hint != me => Route::Guess(hint),
            _ => Route::Guess(id.home),
        }
    }

    /// Best guess of where `id` is, for placement and for tasks that group work by location.
    pub fn locate(&self, me: AgentId, id: ObjectId) -> AgentId {
        match self.route(me, id, None, id.home) {
            Route::Here | Route::Park | Route::Missing => me,
            Route::Forward(at, _) | Route::Guess(at) => at,
        }
    }

    /// The last measured size of `id`, if known.
    pub fn size(&self, id: ObjectId) -> Option<u32> {
        match self.objects.get(&id) {
            Some(stored) => u32::try_from(stored.bytes.len()).ok(),
            None => self.seen.get(&id).map(|seen| seen.size),
        }
    }

    /// Learns that `id` was at `at` with `epoch`. Pointers only ever move forward in epochs.
    pub fn learn(&mut self, id: ObjectId, seen: Seen) {
        if self.objects.contains_key(&id) {
            return;
        }
        if let Some(pointer) = self.forwards.get_mut(&id) {
            if seen.epoch > pointer.1 {
                *pointer = (seen.at, seen.epoch);
            }
        } else if id.home == seen.at {
            // Our cache would only repeat what the id already says.
            self.seen.remove(&id);
            return;
        }
        let newer = self.seen.get(&id).is_none_or(|old| seen.epoch >= old.epoch);
        if newer {
            self.seen.insert(id, seen);
        }
    }

    /// Takes `id` out to send it to `to`, leaving a forwarding pointer. Returns its new epoch
    /// and bytes.
    pub fn depart(&mut self, id: ObjectId, to: AgentId) -> Option<(u32, Vec<u8>)> {
        let stored = self.objects.remove(&id)?;
        let epoch = stored.epoch.wrapping_add(1);
        self.forwards.insert(id, (to, epoch));
        Some((epoch, stored.bytes))
    }

    /// An object arrives (placement moved it here).
    pub fn arrive(&mut self, id: ObjectId, epoch: u32, bytes: Vec<u8>) {
        self.forwards.remove(&id);
        self.seen.remove(&id);
        self.objects.insert(id, Stored { bytes, epoch });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: AgentId = AgentId(0);
    const B: AgentId = AgentId(1);
    const C: AgentId = AgentId(2);

    fn obj(home: AgentId) -> ObjectId {
        ObjectId { home, seq: 7 }
    }

    #[test]
    fn a_departed_object_is_reached_through_its_pointer() {
        let mut store = Store::default();
        store.arrive(obj(A), 0, alloc::vec![1, 2, 3]);
        assert_eq!(store.route(A, obj(A), None, A), Route::Here);
        assert_eq!(store.depart(obj(A), B), Some((1, alloc::vec![1, 2, 3])));
        assert_eq!(store.route(A, obj(A), None, A), Route::Forward(B, 1));
    }

    #[test]
    fn a_task_sent_by_a_pointer_waits_for_the_object_in_flight() {
        let store = Store::default();
        assert_eq!(store.route(B, obj(A), Some(1), A), Route::Park);
        // Without the pointer's word, a stranger sends the task home.
        assert_eq!(store.route(B, obj(A), None, B), Route::Guess(A));
    }

    #[test]
    fn an_old_pointer_does_not_answer_a_newer_claim() {
        let mut store = Store::default();
        store.arrive(obj(A), 1, alloc::vec![]);
        store.depart(obj(A), C);
        // The object came back here at epoch 3 and is in flight again: park, do not bounce.
        assert_eq!(store.route(B, obj(A), Some(3), A), Route::Park);
        assert_eq!(store.route(B, obj(A), Some(2), A), Route::Forward(C, 2));
    }

    #[test]
    fn the_home_knows_when_an_object_never_existed() {
        let store = Store::default();
        assert_eq!(store.route(A, obj(A), None, A), Route::Missing);
    }

    #[test]
    fn hints_only_move_pointers_forward() {
        let mut store = Store::default();
        store.arrive(obj(A), 0, alloc::vec![]);
        store.depart(obj(A), B);
        store.learn(
            obj(A),
            Seen {
                at: C,
                epoch: 5,
                size: 1,
            },
        );
        assert_eq!(store.route(A, obj(A), None, A), Route::Forward(C, 5));
        store.learn(
            obj(A),
            Seen {
                at: B,
                epoch: 2,
                size: 1,
            },
        );
        assert_eq!(store.route(A, obj(A), None, A), Route::Forward(C, 5));
    }
}
