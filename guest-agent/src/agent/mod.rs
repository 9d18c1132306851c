//! The agent: one runtime's tasks, objects and links, as a state machine without I/O.
//!
//! A runtime drives it: it hands in received frames ([`Agent::receive`]), lets tasks run
//! ([`Agent::run`]), makes the state durable if it promises durability, and then sends what
//! [`Agent::flush`] produces. Acknowledgements leave only through `flush`, so a runtime that
//! persists [`Agent::snapshot`] before flushing never acknowledges a hop it could forget.

mod deliver;
mod exec;

use alloc::collections::{BTreeMap, VecDeque};
use alloc::sync::Arc;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use crate::context::Counters;
use crate::ids::{AgentId, FutureId, HopId, ObjectId};
use crate::link::{Arrival, Incoming, Outgoing};
use crate::registry::{Registry, TaskState};
use crate::sketch::CoAccess;
use crate::stats::{Kind, Stats};
use crate::store::{Seen, Store};
use crate::task::Task;
use crate::wire::{Message, Payload, TaskRecord, TaskResult, WireError};

/// How many objects a task remembers having touched, for the co-access sketch.
const TOUCH_MEMORY: usize = 16;
/// A task that hops this often is chasing something that is not there.
const MAX_HOPS: u32 = 10_000;

/// How a read of a remote object is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Policy {
    /// Always move the task to the object (continuation shipping).
    Move,
    /// Always fetch a copy to the task (data shipping).
    Fetch,
    /// Fetch when the object is smaller than the task, move otherwise (by measured sizes).
    ShipOrFetch,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Config {
    pub policy: Policy,
    /// Retransmit unacknowledged hops after this many milliseconds.
    pub rto_ms: u64,
    /// Pairs kept by the co-access sketch.
    pub sketch_capacity: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            policy: Policy::Move,
            rto_ms: 200,
            sketch_capacity: 4096,
        }
    }
}

/// Something a test harness or a runtime may want to observe. Emitted as the state changes;
/// a runtime that persists state should read them at the same point it persists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A task finished here (with a value or a failure).
    Completed(FutureId),
    /// A result arrived at its origin and is remembered there.
    Remembered(FutureId),
}

/// A parked request waiting for an object that is on its way here.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum Parked {
    Task(TaskRecord),
    Fetch { requester: AgentId, limit: u32 },
}

/// Everything an agent must keep across a restart or a VM migration.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AgentState {
    pub(crate) id: AgentId,
    pub(crate) config: Config,
    pub(crate) counters: Counters,
    pub(crate) store: Store,
    pub(crate) runnable: VecDeque<TaskRecord>,
    pub(crate) awaiting: BTreeMap<FutureId, Vec<TaskRecord>>,
    pub(crate) fetching: BTreeMap<ObjectId, Vec<TaskRecord>>,
    pub(crate) arriving: BTreeMap<ObjectId, Vec<Parked>>,
    pub(crate) results: BTreeMap<FutureId, TaskResult>,
    pub(crate) outgoing: BTreeMap<AgentId, Outgoing>,
    pub(crate) incoming: BTreeMap<AgentId, Incoming>,
    pub(crate) sketch: CoAccess,
    pub(crate) placement: crate::placement::PlacementState,
    pub(crate) stats: Stats,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("the frame from the network is not a message")]
    Wire(#[from] WireError),
    #[error("{from} is not a peer of {me}")]
    UnknownPeer { me: AgentId, from: AgentId },
    #[error("the hop is addressed to {to}, not to {me}")]
    Misaddressed { me: AgentId, to: AgentId },
    #[error("the task cannot be submitted: {0}")]
    Registry(#[from] crate::registry::RegistryError),
    #[error("the saved agent state does not decode: {0}")]
    Snapshot(postcard::Error),
}

/// Sends frames to peers. Delivery may fail, reorder or duplicate: the agent copes.
pub trait Transport {
    fn send(&mut self, to: AgentId, frame: &[u8]);
}

pub struct Agent {
    pub(crate) st: AgentState,
    pub(crate) registry: Arc<Registry>,
    /// Control messages (acks, hints, loads) waiting for the next flush; hops wait in `outgoing`.
    pub(crate) control: Vec<(AgentId, Message)>,
    pub(crate) events: Vec<Event>,
}

impl Agent {
    /// A fresh agent `id` among `peers` (itself excluded or not).
    pub fn new(id: AgentId, peers: &[AgentId], registry: Arc<Registry>, config: Config) -> Self {
        let mut st = AgentState {
            id,
            sketch: CoAccess::new(config.sketch_capacity),
            config,
            counters: Counters::default(),
            store: Store::default(),
            runnable: VecDeque::new(),
            awaiting: BTreeMap::new(),
            fetching: BTreeMap::new(),
            arriving: BTreeMap::new(),
            results: BTreeMap::new(),
            outgoing: BTreeMap::new(),
            incoming: BTreeMap::new(),
            placement: Default::default(),
            stats: Stats::default(),
        };
        for &peer in peers.iter().filter(|&&p| p != id) {
            st.outgoing.insert(peer, Outgoing::default());
            st.incoming.insert(peer, Incoming::default());
        }
        Agent {
            st,
            registry,
            control: Vec::new(),
            events: Vec::new(),
        }
    }

    pub fn id(&self) -> AgentId {
        self.st.id
    }

    pub fn peers(&self) -> impl Iterator<Item = AgentId> + '_ {
        self.st.outgoing.keys().copied()
    }

    pub fn stats(&self) -> &Stats {
        &self.st.stats
    }

    pub fn config_mut(&mut self) -> &mut Config {
        &mut self.st.config
    }

    /// The state to persist (postcard). Restoring it gives an agent that forgot nothing it
    /// acknowledged and will resend everything it has not had acknowledged.
    pub fn snapshot(&self) -> Result<Vec<u8>, AgentError> {
        postcard::to_allocvec(&self.st).map_err(AgentError::Snapshot)
    }

    pub fn restore(bytes: &[u8], registry: Arc<Registry>) -> Result<Self, AgentError> {
        let st: AgentState = postcard::from_bytes(bytes).map_err(AgentError::Snapshot)?;
        Ok(Agent {
            st,
            registry,
            control: Vec::new(),
            events: Vec::new(),
        })
    }

    /// Events since the last call.
    pub fn take_events(&mut self) -> Vec<Event> {
        core::mem::take(&mut self.events)
    }

    /// Work left to do here (runnable tasks).
    pub fn runnable(&self) -> usize {
        self.st.runnable.len()
    }

    /// Hops sent and not yet acknowledged, over all links.
    pub fn unacked(&self) -> usize {
        self.st.outgoing.values().map(|out| out.unacked.len()).sum()
    }

    /// Objects held here.
    pub fn objects(&self) -> usize {
        self.st.store.objects.len()
    }

    pub fn holds(&self, id: ObjectId) -> bool {
        self.st.store.objects.contains_key(&id)
    }

    /// Puts an object here under a chosen sequence number (deterministic seeding: every agent
    /// can name the objects of a data set without asking). Later `create`s never reuse it.
    pub fn insert_object<T: Serialize>(
        &mut self,
        seq: u64,
        value: &T,
    ) -> Result<ObjectId, AgentError> {
        let bytes = postcard::to_allocvec(value).map_err(AgentError::Snapshot)?;
        let id = ObjectId {
            home: self.st.id,
            seq,
        };
        self.st.store.arrive(id, 0, bytes);
        self.st.counters.next_object = self.st.counters.next_object.max(seq);
        Ok(id)
    }

    /// Reads an object held here (for runtimes and tests; tasks use `Ctx`).
    pub fn object<T: serde::de::DeserializeOwned>(&self, id: ObjectId) -> Option<T> {
        let stored = self.st.store.objects.get(&id)?;
        postcard::from_bytes(&stored.bytes).ok()
    }

    /// Starts a task here; its result will be remembered here under the returned future.
    pub fn submit<T: Task>(&mut self, task: &T) -> Result<FutureId, AgentError> {
        let state = self.registry.encode(task)?;
        self.submit_state(state)
    }

    /// Starts a task given as wire state (from a client that names the type itself).
    pub fn submit_state(&mut self, state: TaskState) -> Result<FutureId, AgentError> {
        self.registry.check(&state.kind)?;
        self.st.counters.next_future += 1;
        let fut = FutureId {
            origin: self.st.id,
            seq: self.st.counters.next_future,
        };
        self.st.runnable.push_back(TaskRecord {
            fut,
            state,
            wait: None,
            via_pointer: None,
            hops: 0,
            touched: Vec::new(),
            copies: Vec::new(),
        });
        Ok(fut)
    }

    /// A remembered result, if it has arrived (it stays until taken).
    pub fn result(&self, fut: FutureId) -> Option<&TaskResult> {
        self.st.results.get(&fut)
    }

    pub fn take_result(&mut self, fut: FutureId) -> Option<TaskResult> {
        self.st.results.remove(&fut)
    }

    /// The connection to `peer` came back: resend everything it has not acknowledged.
    pub fn reconnected(&mut self, peer: AgentId) {
        if let Some(out) = self.st.outgoing.get_mut(&peer) {
            out.reconnected();
        }
    }

    /// Handles one frame from the network.
    pub fn receive(&mut self, frame: &[u8]) -> Result<(), AgentError> {
        let message = Message::decode(frame)?;
        self.handle(message)
    }

    pub fn handle(&mut self, message: Message) -> Result<(), AgentError> {
        let me = self.st.id;
        match message {
            Message::Hop { id, payload } => {
                if id.to != me {
                    return Err(AgentError::Misaddressed { me, to: id.to });
                }
                let incoming = self
                    .st
                    .incoming
                    .get_mut(&id.from)
                    .ok_or(AgentError::UnknownPeer { me, from: id.from })?;
                match incoming.arrive(id.seq, payload) {
                    Arrival::Apply(payloads) => {
                        for payload in payloads {
                            self.apply(payload);
                        }
                    }
                    Arrival::Duplicate => self.st.stats.duplicates += 1,
                    Arrival::Held => return Ok(()),
                }
                let upto = self
                    .st
                    .incoming
                    .get(&id.from)
                    .map_or(0, |incoming| incoming.applied);
                self.control
                    .retain(|(to, m)| !(*to == id.from && matches!(m, Message::Ack { .. })));
                self.control.push((
                    id.from,
                    Message::Ack {
                        from: me,
                        to: id.from,
                        upto,
                    },
                ));
            }
            Message::Ack { from, to, upto } => {
                if to != me {
                    return Err(AgentError::Misaddressed { me, to });
                }
                let out = self
                    .st
                    .outgoing
                    .get_mut(&from)
                    .ok_or(AgentError::UnknownPeer { me, from })?;
                out.ack(upto);
            }
            Message::Hint {
                object,
                at,
                epoch,
                size,
            } => {
                self.st.store.learn(object, Seen { at, epoch, size });
            }
            Message::Load { from, objects } => {
                if !self.st.outgoing.contains_key(&from) {
                    return Err(AgentError::UnknownPeer { me, from });
                }
                self.st.placement.loads.insert(from, objects);
            }
            Message::Pairs { from, mut pairs } => {
                if !self.st.outgoing.contains_key(&from) {
                    return Err(AgentError::UnknownPeer { me, from });
                }
                // Fixed memory: a peer reports at most a sketch's worth.
                pairs.truncate(self.st.config.sketch_capacity);
                self.st.placement.remote.insert(from, pairs);
            }
            Message::Directory { from, held } => {
                if !self.st.outgoing.contains_key(&from) {
                    return Err(AgentError::UnknownPeer { me, from });
                }
                for (object, epoch, size) in held {
                    let seen = Seen {
                        at: from,
                        epoch,
                        size,
                    };
                    self.st.store.learn(object, seen);
                }
            }
        }
        Ok(())
    }

    /// Sends what is due at `now`: new and timed-out hops, acknowledgements, hints.
    pub fn flush(&mut self, now: u64, tx: &mut dyn Transport) {
        let me = self.st.id;
        let rto = self.st.config.rto_ms;
        for (&peer, out) in self.st.outgoing.iter_mut() {
            for (seq, payload) in out.due(now, rto) {
                let kind = Kind::of(&payload);
                let message = Message::Hop {
                    id: HopId {
                        from: me,
                        to: peer,
                        seq,
                    },
                    payload,
                };
                if let Ok(frame) = message.encode() {
                    self.st.stats.sent(kind, frame.len());
                    tx.send(peer, &frame);
                }
            }
        }
        for (peer, message) in core::mem::take(&mut self.control) {
            if let Ok(frame) = message.encode() {
                self.st.stats.sent(Kind::Control, frame.len());
                tx.send(peer, &frame);
            }
        }
    }

    pub(crate) fn send(&mut self, to: AgentId, payload: Payload) {
        match self.st.outgoing.get_mut(&to) {
            Some(out) => {
                out.push(payload);
            }
            // Callers check peers before shipping tasks; anything else addressed to a stranger
            // came from a peer's bad hint and has nowhere to go.
            None => self.st.stats.undeliverable += 1,
        }
    }
}
