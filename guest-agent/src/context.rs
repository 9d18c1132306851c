//! `Ctx`: what a task's step may touch on the agent it runs on.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::vec::Vec;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::ids::{AgentId, FutureId, ObjectId};
use crate::reference::{AnyRef, Ref};
use crate::registry::Registry;
use crate::store::{Store, Stored};
use crate::task::{Access, Task, Wait};
use crate::wire::{TaskRecord, TaskResult};

/// Counters that name new objects and futures on one agent.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Counters {
    pub next_object: u64,
    pub next_future: u64,
}

/// The step's view of its agent. Accesses record which objects the task touched, which feeds
/// the co-access sketch that placement reads.
pub struct Ctx<'a> {
    pub(crate) me: AgentId,
    pub(crate) store: &'a mut Store,
    pub(crate) results: &'a mut BTreeMap<FutureId, TaskResult>,
    pub(crate) counters: &'a mut Counters,
    pub(crate) registry: &'a Registry,
    pub(crate) copies: &'a [(ObjectId, Vec<u8>)],
    pub(crate) parent_touched: &'a [ObjectId],
    pub(crate) touched: Vec<ObjectId>,
    pub(crate) spawned: Vec<TaskRecord>,
}

fn decode<T: DeserializeOwned>(id: ObjectId, bytes: &[u8]) -> Access<T> {
    match postcard::from_bytes(bytes) {
        Ok(value) => Access::Ready(value),
        Err(error) => Access::Wait(Wait::Fail(format!(
            "{id} does not decode as the type the task expects: {error}"
        ))),
    }
}

fn encode<T: Serialize>(what: &str, value: &T) -> Result<Vec<u8>, Wait> {
    postcard::to_allocvec(value)
        .map_err(|error| Wait::Fail(format!("{what} does not encode: {error}")))
}

impl Ctx<'_> {
    /// The agent this step runs on.
    pub fn here(&self) -> AgentId {
        self.me
    }

    /// Whether `r`'s object is on this agent (a fetched copy does not count).
    pub fn is_here<T>(&self, r: &Ref<T>) -> bool {
        self.store.objects.contains_key(&r.id)
    }

    /// Where `r`'s object most likely is (exact when here, a hint otherwise).
    pub fn location(&self, r: impl Into<AnyRef>) -> AgentId {
        self.store.locate(self.me, r.into().id)
    }

    fn touch(&mut self, id: ObjectId) {
        if !self.touched.contains(&id) {
            self.touched.push(id);
        }
    }

    /// Reads `r`'s object: here, or from a copy fetched for this step; otherwise waits for it
    /// (the runtime moves the task or fetches a copy).
    pub fn read<T: DeserializeOwned>(&mut self, r: &Ref<T>) -> Access<T> {
        if let Some(stored) = self.store.objects.get(&r.id) {
            let value = decode(r.id, &stored.bytes);
            self.touch(r.id);
            return value;
        }
        if let Some((_, bytes)) = self.copies.iter().find(|(id, _)| *id == r.id) {
            let value = decode(r.id, bytes);
            self.touch(r.id);
            return value;
        }
        Access::Wait(Wait::Read(r.any()))
    }

    /// Reads `r`'s object with the intent to write it: only the object itself will do, so the
    /// task moves to it.
    pub fn get<T: DeserializeOwned>(&mut self, r: &Ref<T>) -> Access<T> {
        match self.store.objects.get(&r.id) {
            Some(stored) => {
                let value = decode(r.id, &stored.bytes);
                self.touch(r.id);
                value
            }
            None => Access::Wait(Wait::Deref(r.any())),
        }
    }

    /// Replaces `r`'s object; the task moves to it first if it is elsewhere.
    pub fn put<T: Serialize>(&mut self, r: &Ref<T>, value: &T) -> Access<()> {
        let Some(stored) = self.store.objects.get_mut(&r.id) else {
            return Access::Wait(Wait::Deref(r.any()));
        };
        match encode("the object", value) {
            Ok(bytes) => stored.bytes = bytes,
            Err(wait) => return Access::Wait(wait),
        }
        self.touch(r.id);
        Access::Ready(())
    }

    /// Creates an object here.
    pub fn create<T: Serialize>(&mut self, value: &T) -> Access<Ref<T>> {
        let bytes = match encode("the new object", value) {
            Ok(bytes) => bytes,
            Err(wait) => return Access::Wait(wait),
        };
        self.counters.next_object += 1;
        let id = ObjectId {
            home: self.me,
            seq: self.counters.next_object,
        };
        self.store.objects.insert(id, Stored { bytes, epoch: 0 });
        self.touch(id);
        Access::Ready(Ref::new(id, self.me))
    }

    /// Spawns a child task here; its result will wait here, under the returned future id, until
    /// a step of this agent takes it with [`Ctx::result`].
    pub fn spawn<T: Task>(&mut self, task: &T) -> Access<FutureId> {
        let state = match self.registry.encode(task) {
            Ok(state) => state,
            Err(error) => return Access::Wait(Wait::Fail(format!("{error}"))),
        };
        self.counters.next_future += 1;
        let fut = FutureId {
            origin: self.me,
            seq: self.counters.next_future,
        };
        let mut touched = self.parent_touched.to_vec();
        touched.extend(self.touched.iter().copied());
        self.spawned.push(TaskRecord {
            fut,
            state,
            wait: None,
            via_pointer: None,
            hops: 0,
            touched,
            copies: Vec::new(),
        });
        Access::Ready(fut)
    }

    /// Takes a child's result: the task goes to the future's origin and waits there for it.
    pub fn result<O: DeserializeOwned>(&mut self, fut: FutureId) -> Access<O> {
        if fut.origin != self.me {
            return Access::Wait(Wait::Result(fut));
        }
        match self.results.remove(&fut) {
            None => Access::Wait(Wait::Result(fut)),
            Some(Err(why)) => Access::Wait(Wait::Fail(format!("{fut} failed: {why}"))),
            Some(Ok(bytes)) => match postcard::from_bytes(&bytes) {
                Ok(value) => Access::Ready(value),
                Err(error) => Access::Wait(Wait::Fail(format!(
                    "{fut}'s result does not decode as the type the task expects: {error}"
                ))),
            },
        }
    }
}
