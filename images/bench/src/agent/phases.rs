//! The phases of a run with a warm-up (`warmup-ms=`) and placement passes (`place-ms=`).
//!
//! Without a warm-up, an agent's measured reads start once it is connected to every peer, as
//! they always did. With one, the agents go through barriers, so that the measured figures
//! contain nothing of the warm-up:
//! 1. `READY`: connected to every peer. When every agent is ready, the warm-up starts (the
//!    schedule's time 0 is that moment, within a network delay on every agent).
//! 2. For `warmup-ms`, warm-up reads run with policy `move` (as `agent-bench`'s placement
//!    rounds on daemons), and agent `i` of `n` runs a placement pass at `(i + 1/2) · P / n` into
//!    each period `P` (`place-ms`): agents take turns, each in its own slot, so that two agents
//!    never trade the two halves of a pair. A pass whose slot went by (the vCPU was not
//!    running) is skipped rather than run in another agent's slot. Every agent also shares its
//!    load, pairs and directory at the start of every slot, so the pass half a slot later sees
//!    where the previous pass put things (the runtime's periodic shares keep their own pace).
//! 3. `WARM`: the warm-up is over, every warm-up read of this agent is home and nothing it
//!    sent is unacknowledged.
//! 4. `COUNTED`: every agent is warm, so no warm-up task is left anywhere; once its own last
//!    hops are acknowledged, the agent takes its counters as the baseline of the figures and
//!    switches to the run's policy.
//! 5. `MEASURING`: every agent has counted, so no measured read ran before any baseline; the
//!    measured reads start.
//!
//! Phases travel as single bytes on the peer connections' unused direction: an agent writes
//! its phase on each connection a peer opened to it, and reads its peers' phases on the
//! connections it opened. `guest-agentd` neither writes nor reads them, so a run with a
//! warm-up needs bench agents only (with a daemon among them it never leaves `READY`).

use alloc::vec;
use alloc::vec::Vec;

use guest_agent::placement::Limits;
use guest_agent::{Agent, Policy, Stats};

use super::load::Load;

/// Connected to every peer.
pub const READY: u8 = 1;
/// Warm-up over, every warm-up read home, nothing unacknowledged.
pub const WARM: u8 = 2;
/// The figures' baseline is taken.
pub const COUNTED: u8 = 3;
/// The measured reads have started.
pub const MEASURING: u8 = 4;

/// What [`Phases::advance`] did, for the console.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Ready,
    WarmUp,
    /// A placement pass sent this many objects away.
    Pass {
        moved: usize,
    },
    Warm,
    Counted,
    Measuring,
}

#[derive(Clone, Debug)]
pub struct Phases {
    me: u16,
    agents: u16,
    warmup_ms: u64,
    place_ms: u64,
    policy: Policy,
    phase: u8,
    /// Each agent's phase as last reported (this agent's own entry unused).
    peers: Vec<u8>,
    /// When the warm-up started (VM clock, milliseconds).
    start_ms: Option<u64>,
    /// The placement period whose pass is next, and the slot whose start shares next.
    next_period: u64,
    next_share: u64,
    /// Placement passes run, and objects they sent away.
    pub passes: u64,
    pub moved: u64,
    /// The counters when the measured reads began (zero without a warm-up).
    baseline: Stats,
}

impl Phases {
    /// Agent `me` of `agents`, measuring with `policy` after `warmup_ms` of warm-up with a
    /// placement pass every `place_ms` (0: none).
    pub fn new(me: u16, agents: u16, warmup_ms: u64, place_ms: u64, policy: Policy) -> Self {
        Phases {
            me,
            agents: agents.max(1),
            warmup_ms,
            place_ms,
            policy,
            phase: 0,
            peers: vec![0; usize::from(agents)],
            start_ms: None,
            next_period: 0,
            next_share: 0,
            passes: 0,
            moved: 0,
            baseline: Stats::default(),
        }
    }

    /// Whether the agents go through the barriers (a run with a warm-up).
    pub fn barriers(&self) -> bool {
        self.warmup_ms > 0
    }

    /// The phase to tell peers (0: nothing to tell, as in a run without a warm-up).
    pub fn reported(&self) -> u8 {
        if self.barriers() {
            self.phase
        } else {
            0
        }
    }

    pub fn phase(&self) -> u8 {
        self.phase
    }

    /// A peer said it reached `phase` (phases only go forward; bytes that are not a phase are
    /// ignored).
    pub fn peer_said(&mut self, peer: u16, phase: u8) {
        if let Some(p) = self.peers.get_mut(usize::from(peer)) {
            if (READY..=MEASURING).contains(&phase) && usize::from(peer) != usize::from(self.me) {
                *p = (*p).max(phase);
            }
        }
    }

    fn all_peers(&self, phase: u8) -> bool {
        self.peers
            .iter()
            .enumerate()
            .all(|(i, &p)| i == usize::from(self.me) || p >= phase)
    }

    /// When this agent's pass of placement period `k` is due, from the warm-up's start (ms).
    fn slot(&self, k: u64) -> (u64, u64) {
        let n = u64::from(self.agents);
        let me = u64::from(self.me);
        let base = k * self.place_ms;
        let at = base + (2 * me + 1) * self.place_ms / (2 * n);
        let end = base + (me + 1) * self.place_ms / n;
        (at, end)
    }

    /// Moves the run on at `now_ms` (VM clock): `connected` says whether every peer connection
    /// of this agent is up. Returns what changed, if anything.
    pub fn advance(
        &mut self,
        now_ms: u64,
        connected: bool,
        agent: &mut Agent,
        load: &mut Load,
    ) -> Option<Change> {
        let now_us = now_ms.saturating_mul(1000);
        match self.phase {
            0 if connected && !self.barriers() => {
                self.phase = MEASURING;
                load.start_measured(now_us);
                Some(Change::Measuring)
            }
            0 if connected => {
                self.phase = READY;
                Some(Change::Ready)
            }
            READY => match self.start_ms {
                None if self.all_peers(READY) => {
                    self.start_ms = Some(now_ms);
                    agent.config_mut().policy = Policy::Move;
                    load.start_warmup(now_us);
                    Some(Change::WarmUp)
                }
                None => None,
                Some(start) => self.warm_up(now_ms - start.min(now_ms), agent, load),
            },
            WARM if self.all_peers(WARM) && agent.unacked() == 0 => {
                self.baseline = *agent.stats();
                agent.config_mut().policy = self.policy;
                self.phase = COUNTED;
                Some(Change::Counted)
            }
            COUNTED if self.all_peers(COUNTED) => {
                self.phase = MEASURING;
                load.start_measured(now_us);
                Some(Change::Measuring)
            }
            _ => None,
        }
    }

    /// The warm-up, `elapsed` ms after it started.
    fn warm_up(&mut self, elapsed: u64, agent: &mut Agent, load: &mut Load) -> Option<Change> {
        if elapsed >= self.warmup_ms {
            load.end_warmup();
            if load.warm_home() && agent.unacked() == 0 {
                self.phase = WARM;
                return Some(Change::Warm);
            }
            return None;
        }
        if self.place_ms == 0 {
            return None;
        }
        let slot_ms = (self.place_ms / u64::from(self.agents)).max(1);
        if self.next_share * slot_ms <= elapsed {
            agent.report_load();
            agent.share_pairs();
            agent.share_directory();
            self.next_share = elapsed / slot_ms + 1;
        }
        while self.slot(self.next_period).1 <= elapsed {
            self.next_period += 1;
        }
        if self.slot(self.next_period).0 > elapsed {
            return None;
        }
        self.next_period += 1;
        let moved = agent.placement_pass(&Limits::default());
        self.passes += 1;
        self.moved += moved as u64;
        Some(Change::Pass { moved })
    }

    /// The placement period of this agent's last pass (0 before any).
    pub fn period(&self) -> u64 {
        self.next_period.saturating_sub(1)
    }

    /// The counters since the measured reads began: `(hops, fetches, bytes)` of the tasks that
    /// completed here, the copies fetched here and the application bytes sent.
    pub fn measured(&self, stats: &Stats) -> (u64, u64, u64) {
        let base = &self.baseline;
        (
            stats
                .task_hops_at_completion
                .saturating_sub(base.task_hops_at_completion),
            stats.fetches.saturating_sub(base.fetches),
            stats.request_bytes().saturating_sub(base.request_bytes()),
        )
    }
}

#[cfg(test)]
#[path = "phases_tests.rs"]
mod tests;
