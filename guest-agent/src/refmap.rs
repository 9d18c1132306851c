//! `RefMap<K, V>`: a map whose entries live on different agents.
//!
//! Keys hash (FNV-1a over their postcard encoding) to shards; each shard is an ordinary object,
//! so shards sit on different agents, move with placement, and tasks go to the shard that holds
//! a key. The map value itself is small (its shard references) and travels inside tasks.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::marker::PhantomData;

use postcard_schema::schema::{DataModelType, NamedType, NamedValue};
use postcard_schema::Schema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::context::Ctx;
use crate::reference::{AnyRef, Ref};
use crate::registry::fnv1a;
use crate::task::{Access, Wait};

/// One shard's entries (stored as an object).
#[derive(Serialize, Deserialize)]
#[serde(bound(serialize = "K: Serialize + Ord, V: Serialize"))]
#[serde(bound(deserialize = "K: DeserializeOwned + Ord, V: DeserializeOwned"))]
pub struct Shard<K, V> {
    pub entries: BTreeMap<K, V>,
}

impl<K, V> Default for Shard<K, V> {
    fn default() -> Self {
        Shard {
            entries: BTreeMap::new(),
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub struct RefMap<K, V> {
    pub shards: Vec<AnyRef>,
    #[serde(skip)]
    _types: PhantomData<fn() -> (K, V)>,
}

impl<K, V> Clone for RefMap<K, V> {
    fn clone(&self) -> Self {
        RefMap {
            shards: self.shards.clone(),
            _types: PhantomData,
        }
    }
}

impl<K: Schema, V: Schema> Schema for RefMap<K, V> {
    const SCHEMA: &'static NamedType = &NamedType {
        name: "RefMap",
        ty: &DataModelType::Struct(&[
            &NamedValue {
                name: "shards",
                ty: <Vec<AnyRef>>::SCHEMA,
            },
            &NamedValue {
                name: "key",
                ty: K::SCHEMA,
            },
            &NamedValue {
                name: "value",
                ty: V::SCHEMA,
            },
        ]),
    };
}

impl<K, V> RefMap<K, V>
where
    K: Serialize + DeserializeOwned + Ord,
    V: Serialize + DeserializeOwned,
{
    /// A map over existing shard objects (each an empty `Shard<K, V>` to start with).
    pub fn new(shards: Vec<AnyRef>) -> Self {
        RefMap {
            shards,
            _types: PhantomData,
        }
    }

    /// The shard that holds `key`.
    pub fn shard_of(&self, key: &K) -> Option<Ref<Shard<K, V>>> {
        let bytes = postcard::to_allocvec(key).ok()?;
        let n = self.shards.len() as u64;
        let shard = self.shards.get((fnv1a(&bytes) % n.max(1)) as usize)?;
        Some(Ref::new(shard.id, shard.hint))
    }

    fn shard(&self, key: &K) -> Result<Ref<Shard<K, V>>, Wait> {
        self.shard_of(key)
            .ok_or_else(|| Wait::Fail(alloc::string::String::from("the map has no shards")))
    }

    /// Reads `key`'s value (the task goes to its shard, or fetches a copy).
    pub fn get(&self, cx: &mut Ctx<'_>, key: &K) -> Access<Option<V>> {
        let shard = match self.shard(key) {
            Ok(shard) => shard,
            Err(wait) => return Access::Wait(wait),
        };
        match cx.read(&shard) {
            Access::Ready(mut shard) => Access::Ready(shard.entries.remove(key)),
            Access::Wait(wait) => Access::Wait(wait),
        }
    }

    /// Sets `key` to `value` where its shard lives; returns the previous value.
    pub fn insert(&self, cx: &mut Ctx<'_>, key: K, value: V) -> Access<Option<V>> {
        let shard = match self.shard(&key) {
            Ok(shard) => shard,
            Err(wait) => return Access::Wait(wait),
        };
        let mut entries = match cx.get(&shard) {
            Access::Ready(entries) => entries,
            Access::Wait(wait) => return Access::Wait(wait),
        };
        let old = entries.entries.insert(key, value);
        match cx.put(&shard, &entries) {
            Access::Ready(()) => Access::Ready(old),
            Access::Wait(wait) => Access::Wait(wait),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::Config;
    use crate::registry::Registry;
    use crate::sim::{Faults, Swarm};
    use crate::task::{Step, Task};
    use alloc::string::String;
    use alloc::sync::Arc;

    /// Inserts keys 0..n, then reads them all back.
    #[derive(Serialize, Deserialize, Schema)]
    struct Fill {
        map: RefMap<u32, String>,
        n: u32,
        next: u32,
        reading: bool,
        found: u32,
    }

    impl Task for Fill {
        const NAME: &'static str = "test.fill";
        const VERSION: u32 = 1;
        type Output = u32;

        fn step(&mut self, cx: &mut Ctx<'_>) -> Step<u32> {
            if self.next == self.n {
                if self.reading {
                    return Step::Done(self.found);
                }
                self.reading = true;
                self.next = 0;
            }
            let key = self.next;
            if self.reading {
                let value = crate::need!(self.map.get(cx, &key));
                self.found += u32::from(value == Some(alloc::format!("v{key}")));
            } else {
                crate::need!(self.map.insert(cx, key, alloc::format!("v{key}")));
            }
            self.next += 1;
            Step::Continue
        }
    }

    #[test]
    fn entries_spread_over_agents_and_read_back() {
        let mut registry = Registry::new();
        registry.register::<Fill>().unwrap();
        let faults = Faults {
            max_delay: 2,
            drop_per_mille: 100,
            ..Faults::default()
        };
        let mut swarm = Swarm::new(3, Arc::new(registry), Config::default(), faults, 9);
        let shards: Vec<AnyRef> = (0..3)
            .map(|i| {
                let id = swarm.agents[i]
                    .insert_object(1, &Shard::<u32, String>::default())
                    .unwrap();
                AnyRef { id, hint: id.home }
            })
            .collect();
        let map = RefMap::<u32, String>::new(shards);
        let fut = swarm.agents[0]
            .submit(&Fill {
                map,
                n: 30,
                next: 0,
                reading: false,
                found: 0,
            })
            .unwrap();
        swarm.persist_all();
        assert!(swarm.run_until_quiet(8, 20_000));
        let want: Result<Vec<u8>, String> = Ok(postcard::to_allocvec(&30u32).unwrap());
        assert_eq!(swarm.agents[0].result(fut), Some(&want));
        for agent in &swarm.agents {
            let shard: Shard<u32, String> = agent
                .object(crate::ids::ObjectId {
                    home: agent.id(),
                    seq: 1,
                })
                .unwrap();
            assert!(!shard.entries.is_empty(), "{} holds no entries", agent.id());
        }
    }
}
