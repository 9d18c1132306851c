//! A bounded sketch of which objects one task touches together.
//!
//! Space-Saving over object pairs: at most `capacity` counters; a new pair, when the sketch is
//! full, takes over the smallest counter and inherits its count plus one. Heavy pairs (those
//! whose true count exceeds total/capacity) are guaranteed to be present, and memory is fixed.
//! Counts are halved at every placement pass, so the sketch follows a changing workload.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use crate::ids::ObjectId;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CoAccess {
    capacity: usize,
    counts: BTreeMap<(ObjectId, ObjectId), u32>,
}

impl CoAccess {
    pub fn new(capacity: usize) -> Self {
        CoAccess {
            capacity: capacity.max(1),
            counts: BTreeMap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.counts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// One task touched `a` and `b`.
    pub fn observe(&mut self, a: ObjectId, b: ObjectId) {
        if a == b {
            return;
        }
        let key = if a < b { (a, b) } else { (b, a) };
        if let Some(count) = self.counts.get_mut(&key) {
            *count = count.saturating_add(1);
            return;
        }
        if self.counts.len() < self.capacity {
            self.counts.insert(key, 1);
            return;
        }
        let Some((&victim, &floor)) = self.counts.iter().min_by_key(|(_, count)| **count) else {
            return;
        };
        self.counts.remove(&victim);
        self.counts.insert(key, floor.saturating_add(1));
    }

    /// Ages every count (halving), dropping the ones that reach zero.
    pub fn decay(&mut self) {
        self.counts.retain(|_, count| {
            *count /= 2;
            *count > 0
        });
    }

    /// All pairs with their weights.
    pub fn pairs(&self) -> impl Iterator<Item = (ObjectId, ObjectId, u32)> + '_ {
        self.counts.iter().map(|(&(a, b), &count)| (a, b, count))
    }

    /// The pairs that involve `id`, as (partner, weight).
    pub fn partners(&self, id: ObjectId) -> Vec<(ObjectId, u32)> {
        self.pairs()
            .filter_map(|(a, b, w)| match (a == id, b == id) {
                (true, _) => Some((b, w)),
                (_, true) => Some((a, w)),
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::AgentId;
    use proptest::prelude::*;

    fn o(seq: u64) -> ObjectId {
        ObjectId {
            home: AgentId(0),
            seq,
        }
    }

    #[test]
    fn pairs_are_unordered_and_counted() {
        let mut sketch = CoAccess::new(8);
        sketch.observe(o(1), o(2));
        sketch.observe(o(2), o(1));
        sketch.observe(o(3), o(3));
        assert_eq!(
            sketch.pairs().collect::<Vec<_>>(),
            alloc::vec![(o(1), o(2), 2)]
        );
        assert_eq!(sketch.partners(o(2)), alloc::vec![(o(1), 2)]);
        sketch.decay();
        sketch.decay();
        assert!(sketch.is_empty());
    }

    proptest! {
        /// Memory stays fixed, and a pair seen more than total/capacity times is never lost.
        #[test]
        fn heavy_pairs_survive_in_fixed_memory(
            noise in proptest::collection::vec((0u64..200, 0u64..200), 0..400),
            capacity in 4usize..32,
        ) {
            let mut sketch = CoAccess::new(capacity);
            let heavy = noise.len() / capacity + 1;
            let mut stream: Vec<(u64, u64)> = noise.clone();
            for i in 0..heavy {
                stream.insert((i * 7) % (stream.len() + 1), (1000, 1001));
            }
            for (a, b) in stream.iter() {
                sketch.observe(o(*a), o(*b));
                prop_assert!(sketch.len() <= capacity);
            }
            let total = stream.len();
            if heavy * capacity > total {
                prop_assert!(sketch.pairs().any(|(a, b, _)| (a, b) == (o(1000), o(1001))));
            }
        }
    }
}
