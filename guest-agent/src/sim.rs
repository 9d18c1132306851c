//! An in-memory swarm with a hostile network, for testing tasks and the runtime itself.
//!
//! Time is a tick counter. Every frame may be dropped, duplicated or delayed; links are cut
//! (a reconnect makes the sender resend everything unacknowledged); agents crash and restart
//! from their last durable state. Durability is modelled as a runtime must implement it: an
//! agent's state is saved after it handles and runs, *before* it flushes its acknowledgements
//! and hops; a crash throws away everything since the last save.

use alloc::sync::Arc;
use alloc::vec::Vec;

use crate::agent::{Agent, Config, Event, Transport};
use crate::ids::AgentId;
use crate::registry::Registry;

/// A small deterministic generator (xorshift64*), so a failing seed replays exactly.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True with probability `per_mille / 1000`.
    pub fn chance(&mut self, per_mille: u32) -> bool {
        self.below(1000) < u64::from(per_mille)
    }
}

/// How hostile the network and the machines are, per frame or per agent and tick.
#[derive(Clone, Copy, Debug, Default)]
pub struct Faults {
    pub drop_per_mille: u32,
    pub duplicate_per_mille: u32,
    /// Frames arrive 1..=max_delay ticks after they are sent, in any order.
    pub max_delay: u64,
    /// Per agent and tick: the agent's links break and come back.
    pub reconnect_per_mille: u32,
    /// Per agent and tick: the agent crashes and restarts from its durable state.
    pub restart_per_mille: u32,
}

struct Frame {
    at: u64,
    to: AgentId,
    bytes: Vec<u8>,
}

#[derive(Default)]
struct Outbox {
    frames: Vec<(AgentId, Vec<u8>)>,
}

impl Transport for Outbox {
    fn send(&mut self, to: AgentId, frame: &[u8]) {
        self.frames.push((to, frame.to_vec()));
    }
}

pub struct Swarm {
    pub agents: Vec<Agent>,
    durable: Vec<Vec<u8>>,
    registry: Arc<Registry>,
    wire: Vec<Frame>,
    pub now: u64,
    pub faults: Faults,
    rng: Rng,
    /// Events that became durable, with the agent they happened on.
    pub events: Vec<(AgentId, Event)>,
    pub restarts: u64,
    /// Frames handed to the network (before drops and duplicates).
    pub frames_sent: u64,
}

impl Swarm {
    /// `n` agents numbered 0..n, all peers of each other.
    pub fn new(n: u16, registry: Arc<Registry>, config: Config, faults: Faults, seed: u64) -> Self {
        let ids: Vec<AgentId> = (0..n).map(AgentId).collect();
        let agents: Vec<Agent> = ids
            .iter()
            .map(|&id| Agent::new(id, &ids, Arc::clone(&registry), config.clone()))
            .collect();
        let durable = agents
            .iter()
            .map(|a| a.snapshot().unwrap_or_default())
            .collect();
        Swarm {
            agents,
            durable,
            registry,
            wire: Vec::new(),
            now: 0,
            faults,
            rng: Rng::new(seed),
            events: Vec::new(),
            restarts: 0,
            frames_sent: 0,
        }
    }

    /// Saves every agent's state as durable (after seeding objects or submitting tasks).
    pub fn persist_all(&mut self) {
        for (i, agent) in self.agents.iter_mut().enumerate() {
            if let Ok(bytes) = agent.snapshot() {
                self.durable[i] = bytes;
            }
            for event in agent.take_events() {
                self.events.push((agent.id(), event));
            }
        }
    }

    /// One tick: deliver due frames, run, persist, flush; then maybe break links or crash.
    pub fn tick(&mut self, steps_per_tick: usize) {
        self.now += 1;
        let now = self.now;
        let (due, later): (Vec<Frame>, Vec<Frame>) = core::mem::take(&mut self.wire)
            .into_iter()
            .partition(|f| f.at <= now);
        self.wire = later;
        for frame in due {
            if let Some(agent) = self.agents.get_mut(usize::from(frame.to.0)) {
                // Garbage never reaches here in this harness; a real runtime logs and drops.
                let _ = agent.receive(&frame.bytes);
            }
        }
        for i in 0..self.agents.len() {
            self.agents[i].run(steps_per_tick);
            if self.rng.chance(self.faults.restart_per_mille) {
                self.restart(i);
                continue;
            }
            let agent = &mut self.agents[i];
            if let Ok(bytes) = agent.snapshot() {
                self.durable[i] = bytes;
            }
            for event in agent.take_events() {
                self.events.push((agent.id(), event));
            }
            let mut outbox = Outbox::default();
            agent.flush(now, &mut outbox);
            for (to, bytes) in outbox.frames {
                self.transmit(to, bytes);
            }
            if self.rng.chance(self.faults.reconnect_per_mille) {
                let peers: Vec<AgentId> = self.agents[i].peers().collect();
                for peer in peers {
                    self.agents[i].reconnected(peer);
                }
            }
        }
    }

    fn transmit(&mut self, to: AgentId, bytes: Vec<u8>) {
        self.frames_sent += 1;
        if self.rng.chance(self.faults.drop_per_mille) {
            return;
        }
        let copies = if self.rng.chance(self.faults.duplicate_per_mille) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let at = self.now + 1 + self.rng.below(self.faults.max_delay.max(1));
            self.wire.push(Frame {
                at,
                to,
                bytes: bytes.clone(),
            });
        }
    }

    /// Crashes agent `i`: everything since its last durable state is gone.
    pub fn restart(&mut self, i: usize) {
        self.restarts += 1;
        if let Ok(agent) = Agent::restore(&self.durable[i], Arc::clone(&self.registry)) {
            self.agents[i] = agent;
        }
    }

    /// Nothing left to run, send or deliver.
    pub fn quiet(&self) -> bool {
        self.wire.is_empty()
            && self
                .agents
                .iter()
                .all(|a| a.runnable() == 0 && a.unacked() == 0)
    }

    /// Ticks until quiet, at most `max_ticks`; returns whether it got quiet. Once quiet, one
    /// more round of flushes settles acknowledgements still to send.
    pub fn run_until_quiet(&mut self, steps_per_tick: usize, max_ticks: u64) -> bool {
        let start = self.now;
        while self.now - start < max_ticks {
            self.tick(steps_per_tick);
            if self.quiet() {
                return true;
            }
        }
        false
    }
}
