//! Placement: moving objects so that tasks hop less (Swarm proposed it; it never built it).
//!
//! Each agent's co-access sketch says which objects one task used together. A pass looks at the
//! objects held here: an object whose partners mostly live on another agent goes there, if the
//! move gains enough (the partners' weight there, minus their weight here), if the destination
//! stays under the balance limit, within the pass's migration budget, and if the object has not
//! moved within the cooldown (damping: a fresh move is not undone by the next pass). Objects
//! leave forwarding pointers, so tasks in flight follow them. Runtimes should let agents take
//! turns (one pass at a time), so two agents do not swap the two halves of a pair.
//!
//! A task's steps run on several agents, so each agent sees only part of the pairs that concern
//! the objects it holds. Runtimes therefore call, now and then, [`Agent::share_pairs`] (each
//! peer gets the sketch's pairs that involve objects it holds, replacing its previous report)
//! and [`Agent::share_directory`] (each peer learns which objects are here, with their epochs,
//! so that tasks and the next pass stop routing by stale guesses through forwarding pointers).

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use crate::agent::Agent;
use crate::ids::{AgentId, ObjectId};
use crate::store::Store;
use crate::wire::{Message, Payload};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PlacementState {
    /// Objects held by each peer, as last reported.
    pub loads: BTreeMap<AgentId, u64>,
    /// Passes run so far.
    pub passes: u64,
    /// The pass at which each object last moved here or away (for damping).
    pub moved_at: BTreeMap<ObjectId, u64>,
    /// Objects this agent sent away.
    pub moved: u64,
    /// Co-access pairs other agents saw that involve objects held here, by reporter: a task
    /// that touched one of our objects may have run its other steps anywhere.
    pub remote: BTreeMap<AgentId, Vec<(ObjectId, ObjectId, u32)>>,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Limits {
    /// No agent may end a pass above this percentage of the mean load.
    pub balance_percent: u64,
    /// At most this many objects leave per pass.
    pub budget: usize,
    /// A move must gain at least this much co-access weight.
    pub min_gain: u64,
    /// An object that moved stays put for this many passes.
    pub cooldown: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            balance_percent: 115,
            budget: 64,
            min_gain: 2,
            cooldown: 3,
        }
    }
}

/// The most objects one agent may hold: `balance_percent` of the mean, rounded up.
pub fn balance_cap(total: u64, agents: usize, limits: &Limits) -> u64 {
    let agents = (agents as u64).max(1);
    (total * limits.balance_percent).div_ceil(agents * 100)
}

/// The moves one pass makes at agent `me`, best first, from co-access `pairs` (seen here or
/// reported by peers).
pub fn plan(
    me: AgentId,
    pairs: impl Iterator<Item = (ObjectId, ObjectId, u32)>,
    store: &Store,
    loads: &BTreeMap<AgentId, u64>,
    limits: &Limits,
    recently_moved: impl Fn(ObjectId) -> bool,
) -> Vec<(ObjectId, AgentId)> {
    let mut affinity: BTreeMap<ObjectId, BTreeMap<AgentId, u64>> = BTreeMap::new();
    for (a, b, weight) in pairs {
        for (x, y) in [(a, b), (b, a)] {
            if store.objects.contains_key(&x) {
                let at = store.locate(me, y);
                *affinity.entry(x).or_default().entry(at).or_default() += u64::from(weight);
            }
        }
    }
    let mut candidates: Vec<(u64, ObjectId, AgentId)> = Vec::new();
    for (object, weights) in &affinity {
        if recently_moved(*object) {
            continue;
        }
        let here = weights.get(&me).copied().unwrap_or(0);
        let best = weights
            .iter()
            .filter(|(at, _)| **at != me && loads.contains_key(at))
            .max_by_key(|(_, w)| **w);
        if let Some((&to, &weight)) = best {
            let gain = weight.saturating_sub(here);
            if gain >= limits.min_gain.max(1) {
                candidates.push((gain, *object, to));
            }
        }
    }
    candidates.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let cap = balance_cap(loads.values().sum(), loads.len(), limits);
    let mut loads = loads.clone();
    let mut moves = Vec::new();
    for (_, object, to) in candidates {
        if moves.len() >= limits.budget {
            break;
        }
        let Some(load) = loads.get_mut(&to) else {
            continue;
        };
        if *load + 1 > cap {
            continue;
        }
        *load += 1;
        if let Some(mine) = loads.get_mut(&me) {
            *mine = mine.saturating_sub(1);
        }
        moves.push((object, to));
    }
    shed_excess(me, &affinity, store, &mut loads, cap, limits, &mut moves);
    moves
}

/// An agent above the cap (it started there, or others filled it) sheds objects to the least
/// loaded peer, the ones with the most partners there first. Without this, two full agents can
/// never trade with each other and an empty one attracts nothing, so placement stalls for good.
fn shed_excess(
    me: AgentId,
    affinity: &BTreeMap<ObjectId, BTreeMap<AgentId, u64>>,
    store: &Store,
    loads: &mut BTreeMap<AgentId, u64>,
    cap: u64,
    limits: &Limits,
    moves: &mut Vec<(ObjectId, AgentId)>,
) {
    while moves.len() < limits.budget && loads.get(&me).is_some_and(|&l| l > cap) {
        let Some((&to, &load)) = loads
            .iter()
            .filter(|(at, _)| **at != me)
            .min_by_key(|(at, l)| (**l, **at))
        else {
            return;
        };
        if load + 1 > cap {
            return;
        }
        let weight = |id: &ObjectId| {
            let w = affinity.get(id);
            let there = w.and_then(|w| w.get(&to)).copied().unwrap_or(0);
            let here = w.and_then(|w| w.get(&me)).copied().unwrap_or(0);
            there as i64 - here as i64
        };
        let Some(object) = store
            .objects
            .keys()
            .filter(|id| !moves.iter().any(|(m, _)| m == *id))
            .max_by_key(|id| (weight(id), core::cmp::Reverse(**id)))
            .copied()
        else {
            return;
        };
        moves.push((object, to));
        *loads.entry(to).or_default() += 1;
        if let Some(mine) = loads.get_mut(&me) {
            *mine -= 1;
        }
    }
}

impl Agent {
    /// Tells every peer how many objects this agent holds (best effort; for the balance limit).
    pub fn report_load(&mut self) {
        let me = self.st.id;
        let objects = self.st.store.objects.len() as u64;
        let peers: Vec<AgentId> = self.st.outgoing.keys().copied().collect();
        for peer in peers {
            self.control
                .push((peer, Message::Load { from: me, objects }));
        }
    }

    /// Sends each peer the pairs of this agent's sketch that involve an object it holds (best
    /// effort), so placement there knows co-access seen here. Each report replaces the last.
    pub fn share_pairs(&mut self) {
        let me = self.st.id;
        let mut by_peer: BTreeMap<AgentId, Vec<(ObjectId, ObjectId, u32)>> = self
            .st
            .outgoing
            .keys()
            .map(|&peer| (peer, Vec::new()))
            .collect();
        for (a, b, w) in self.st.sketch.pairs() {
            let (at_a, at_b) = (self.st.store.locate(me, a), self.st.store.locate(me, b));
            for at in [at_a, at_b] {
                if let Some(list) = by_peer.get_mut(&at) {
                    if list.last() != Some(&(a, b, w)) {
                        list.push((a, b, w));
                    }
                }
            }
        }
        for (peer, pairs) in by_peer {
            self.control
                .push((peer, Message::Pairs { from: me, pairs }));
        }
    }

    /// Tells every peer which objects this agent holds (best effort), so that they route tasks
    /// straight here instead of through stale guesses and forwarding pointers.
    pub fn share_directory(&mut self) {
        let me = self.st.id;
        let held: Vec<(ObjectId, u32, u32)> = self
            .st
            .store
            .objects
            .iter()
            .map(|(&id, stored)| {
                let size = u32::try_from(stored.bytes.len()).unwrap_or(u32::MAX);
                (id, stored.epoch, size)
            })
            .collect();
        let peers: Vec<AgentId> = self.st.outgoing.keys().copied().collect();
        for peer in peers {
            let held = held.clone();
            self.control
                .push((peer, Message::Directory { from: me, held }));
        }
    }

    /// Records a peer's load directly (runtimes that know it without messages).
    pub fn set_load(&mut self, peer: AgentId, objects: u64) {
        self.st.placement.loads.insert(peer, objects);
    }

    /// Objects this agent has sent away by placement.
    pub fn objects_moved(&self) -> u64 {
        self.st.placement.moved
    }

    /// One placement pass; returns the number of objects sent away.
    pub fn placement_pass(&mut self, limits: &Limits) -> usize {
        let me = self.st.id;
        let mut loads = self.st.placement.loads.clone();
        loads.insert(me, self.st.store.objects.len() as u64);
        let pass = self.st.placement.passes;
        let moved_at = &self.st.placement.moved_at;
        let recently = |id| {
            moved_at
                .get(&id)
                .is_some_and(|&at| pass < at + limits.cooldown)
        };
        let remote = self.st.placement.remote.values().flatten().copied();
        let moves = plan(
            me,
            self.st.sketch.pairs().chain(remote),
            &self.st.store,
            &loads,
            limits,
            recently,
        );
        for &(object, to) in &moves {
            let Some((epoch, bytes)) = self.st.store.depart(object, to) else {
                continue;
            };
            self.st.placement.moved_at.insert(object, pass);
            self.st.placement.moved += 1;
            self.send(
                to,
                Payload::Object {
                    id: object,
                    epoch,
                    bytes,
                },
            );
            if let Some(load) = self.st.placement.loads.get_mut(&to) {
                *load += 1;
            }
            // The home answers for its objects: keep its pointer close to the truth.
            if object.home != me && object.home != to {
                let size = 0;
                self.control.push((
                    object.home,
                    Message::Hint {
                        object,
                        at: to,
                        epoch,
                        size,
                    },
                ));
            }
        }
        self.st.sketch.decay();
        self.st.placement.passes += 1;
        moves.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::Config;
    use crate::context::Ctx;
    use crate::reference::Ref;
    use crate::registry::Registry;
    use crate::sim::{Faults, Rng, Swarm};
    use crate::task::{Step, Task};
    use alloc::sync::Arc;
    use postcard_schema::Schema;
    use proptest::prelude::*;

    /// Reads every object of one group (objects used together), here first.
    #[derive(Serialize, Deserialize, Schema)]
    struct ReadGroup {
        pending: Vec<Ref<u64>>,
    }

    impl Task for ReadGroup {
        const NAME: &'static str = "test.read-group";
        const VERSION: u32 = 1;
        type Output = u32;

        fn step(&mut self, cx: &mut Ctx<'_>) -> Step<u32> {
            let Some(i) = self
                .pending
                .iter()
                .position(|r| cx.is_here(r))
                .or((!self.pending.is_empty()).then_some(0))
            else {
                return Step::Done(0);
            };
            let _value = crate::need!(cx.read(&self.pending[i]));
            self.pending.swap_remove(i);
            Step::Continue
        }
    }

    /// Runs one read of each group from `rng`'s choice of agents; returns hops per request.
    fn hops_per_request(
        swarm: &mut Swarm,
        groups: &[Vec<Ref<u64>>],
        rng: &mut Rng,
        rounds: usize,
    ) -> f64 {
        let before: u64 = swarm
            .agents
            .iter()
            .map(|a| a.stats().task_hops_at_completion)
            .sum();
        let mut futs = Vec::new();
        for _ in 0..rounds {
            for group in groups {
                let at = rng.below(swarm.agents.len() as u64) as usize;
                let fut = swarm.agents[at]
                    .submit(&ReadGroup {
                        pending: group.clone(),
                    })
                    .unwrap();
                futs.push((at, fut));
            }
        }
        swarm.persist_all();
        assert!(swarm.run_until_quiet(16, 50_000));
        for (at, fut) in &futs {
            assert!(
                matches!(swarm.agents[*at].result(*fut), Some(Ok(_))),
                "{fut}"
            );
        }
        let after: u64 = swarm
            .agents
            .iter()
            .map(|a| a.stats().task_hops_at_completion)
            .sum();
        (after - before) as f64 / futs.len() as f64
    }

    fn exchange_loads(swarm: &mut Swarm) {
        let loads: Vec<(AgentId, u64)> = swarm
            .agents
            .iter()
            .map(|a| (a.id(), a.objects() as u64))
            .collect();
        for agent in swarm.agents.iter_mut() {
            for &(peer, load) in &loads {
                if peer != agent.id() {
                    agent.set_load(peer, load);
                }
            }
        }
    }

    /// Reads `group` `times` times, from agent 0, and lets every agent share its pairs.
    fn read_often(swarm: &mut Swarm, group: &[Ref<u64>], times: usize) {
        for _ in 0..times {
            let pending = group.to_vec();
            swarm.agents[0].submit(&ReadGroup { pending }).unwrap();
        }
        assert!(swarm.run_until_quiet(16, 50_000));
        exchange_loads(swarm);
        for agent in swarm.agents.iter_mut() {
            agent.share_pairs();
            agent.share_directory();
        }
        assert!(swarm.run_until_quiet(16, 50_000));
    }

    #[test]
    fn an_object_that_just_arrived_stays_put_for_the_cooldown() {
        let mut registry = Registry::new();
        registry.register::<ReadGroup>().unwrap();
        let mut swarm = Swarm::new(
            2,
            Arc::new(registry),
            Config::default(),
            Faults::default(),
            7,
        );
        let mut object = |at: usize, seq: u64| {
            let id = swarm.agents[at].insert_object(seq, &seq).unwrap();
            Ref::new(id, id.home)
        };
        let x = object(0, 1);
        let (a, b) = (object(1, 2), object(1, 3));
        let others: Vec<Ref<u64>> = (4..8).map(|seq| object(0, seq)).collect();
        let limits = Limits {
            balance_percent: 1000,
            ..Limits::default()
        };
        // x is used with a and b, which live on agent 1: agent 0 sends it there.
        read_often(&mut swarm, &[x, a, b], 20);
        swarm.agents[0].placement_pass(&limits);
        assert!(swarm.run_until_quiet(16, 50_000));
        assert!(swarm.agents[1].holds(x.id), "x did not move to agent 1");
        // Now x is used far more with objects on agent 0; agent 1's next passes must not
        // send the fresh arrival straight back.
        let mut group = others;
        group.push(x);
        read_often(&mut swarm, &group, 40);
        for _ in 0..limits.cooldown {
            swarm.agents[1].placement_pass(&limits);
            assert!(swarm.run_until_quiet(16, 50_000));
            assert!(
                swarm.agents[1].holds(x.id),
                "x moved again within the cooldown"
            );
        }
        // After the cooldown the pairs may move it back.
        read_often(&mut swarm, &group, 40);
        swarm.agents[1].placement_pass(&limits);
        assert!(swarm.run_until_quiet(16, 50_000));
        assert!(
            swarm.agents[0].holds(x.id),
            "x never went back after the cooldown"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// On a generated workload (groups of objects always used together, scattered at
        /// random), passes cut hops, keep every agent under the balance limit (or at most where
        /// it started), and lose or duplicate no object.
        #[test]
        fn placement_cuts_hops_within_the_balance_limit(
            seed in any::<u64>(),
            group_size in 3usize..6,
            group_count in 12usize..24,
        ) {
            let mut registry = Registry::new();
            registry.register::<ReadGroup>().unwrap();
            let faults = Faults { max_delay: 1, ..Faults::default() };
            let mut swarm = Swarm::new(3, Arc::new(registry), Config::default(), faults, seed);
            let mut rng = Rng::new(seed);
            let mut groups = Vec::new();
            let mut seq = 0;
            for _ in 0..group_count {
                let mut group = Vec::new();
                for _ in 0..group_size {
                    seq += 1;
                    let at = rng.below(3) as usize;
                    let id = swarm.agents[at].insert_object(seq, &seq).unwrap();
                    group.push(Ref::new(id, id.home));
                }
                groups.push(group);
            }
            let initial: Vec<u64> = swarm.agents.iter().map(|a| a.objects() as u64).collect();
            let total: u64 = initial.iter().sum();
            let limits = Limits::default();
            let cap = balance_cap(total, 3, &limits);
            let probe = Rng::new(seed ^ 2);
            let random = hops_per_request(&mut swarm, &groups, &mut probe.clone(), 3);
            for _ in 0..4 {
                for i in 0..swarm.agents.len() {
                    exchange_loads(&mut swarm);
                    for agent in swarm.agents.iter_mut() {
                        agent.share_pairs();
                        agent.share_directory();
                    }
                    prop_assert!(swarm.run_until_quiet(16, 50_000));
                    swarm.agents[i].placement_pass(&limits);
                    prop_assert!(swarm.run_until_quiet(16, 50_000));
                    for (agent, start) in swarm.agents.iter().zip(&initial) {
                        let load = agent.objects() as u64;
                        prop_assert!(load <= cap.max(*start), "{} holds {load}, over {cap}", agent.id());
                    }
                }
                hops_per_request(&mut swarm, &groups, &mut rng, 3);
            }
            let placed = hops_per_request(&mut swarm, &groups, &mut probe.clone(), 3);
            prop_assert!(placed < random, "hops per request went from {random} to {placed}");
            let now: u64 = swarm.agents.iter().map(|a| a.objects() as u64).sum();
            prop_assert_eq!(now, total, "objects were lost or duplicated by moves");
        }
    }
}
