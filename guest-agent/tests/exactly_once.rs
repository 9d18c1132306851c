//! Exactly-once hops under a hostile network: every task completes once, every result arrives
//! once at its origin, and every write a task makes happens once.

use std::collections::BTreeMap;
use std::sync::Arc;

use guest_agent::sim::{Faults, Rng, Swarm};
use guest_agent::{
    need, AgentId, Config, Ctx, Event, FutureId, Policy, Ref, Registry, Schema, Step, Task,
};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Schema)]
struct Counter {
    hits: u64,
}

/// Walks a path of counters, incrementing each where it lives.
#[derive(Serialize, Deserialize, Schema)]
struct Visit {
    path: Vec<Ref<Counter>>,
    next: u32,
}

impl Task for Visit {
    const NAME: &'static str = "test.visit";
    const VERSION: u32 = 1;
    type Output = u32;

    fn step(&mut self, cx: &mut Ctx<'_>) -> Step<u32> {
        let Some(r) = self.path.get(self.next as usize).copied() else {
            return Step::Done(self.next);
        };
        let mut counter = need!(cx.get(&r));
        counter.hits += 1;
        need!(cx.put(&r, &counter));
        self.next += 1;
        Step::Continue
    }
}

/// Reads a path of counters (read-only: the runtime may fetch copies instead of moving).
#[derive(Serialize, Deserialize, Schema)]
struct Peek {
    path: Vec<Ref<Counter>>,
    next: u32,
    /// Ballast: makes the continuation bigger than a counter, so ship-or-fetch fetches.
    ballast: Vec<u8>,
}

impl Task for Peek {
    const NAME: &'static str = "test.peek";
    const VERSION: u32 = 1;
    type Output = u32;

    fn step(&mut self, cx: &mut Ctx<'_>) -> Step<u32> {
        let Some(r) = self.path.get(self.next as usize).copied() else {
            return Step::Done(self.next);
        };
        let _counter = need!(cx.read(&r));
        self.next += 1;
        Step::Continue
    }
}

/// Spawns one `Visit` per path and sums their results (they rendezvous here).
#[derive(Serialize, Deserialize, Schema)]
enum Fanout {
    Start {
        paths: Vec<Vec<Ref<Counter>>>,
        home: AgentId,
    },
    Gather {
        futs: Vec<FutureId>,
        next: u32,
        total: u32,
    },
}

impl Task for Fanout {
    const NAME: &'static str = "test.fanout";
    const VERSION: u32 = 1;
    type Output = u32;

    fn step(&mut self, cx: &mut Ctx<'_>) -> Step<u32> {
        match self {
            Fanout::Start { paths, home } => {
                // Spawn from another agent than the submitter, so results rendezvous there.
                if cx.here() != *home {
                    return Step::MoveTo(*home);
                }
                let mut futs = Vec::new();
                for path in paths.iter() {
                    futs.push(need!(cx.spawn(&Visit {
                        path: path.clone(),
                        next: 0
                    })));
                }
                *self = Fanout::Gather {
                    futs,
                    next: 0,
                    total: 0,
                };
                Step::Continue
            }
            Fanout::Gather { futs, next, total } => {
                let Some(&fut) = futs.get(*next as usize) else {
                    return Step::Done(*total);
                };
                *total += need!(cx.result::<u32>(fut));
                *next += 1;
                Step::Continue
            }
        }
    }
}

fn registry() -> Arc<Registry> {
    let mut registry = Registry::new();
    registry.register::<Visit>().unwrap();
    registry.register::<Peek>().unwrap();
    registry.register::<Fanout>().unwrap();
    Arc::new(registry)
}

struct Outcome {
    expected_hits: BTreeMap<usize, u64>,
    submitted: Vec<(usize, FutureId, u32)>,
    counters: Vec<Ref<Counter>>,
}

/// Seeds counters over the agents and submits a random mix of tasks.
fn workload(swarm: &mut Swarm, rng: &mut Rng, tasks: usize) -> Outcome {
    let n = swarm.agents.len() as u64;
    let mut counters = Vec::new();
    for seq in 1..=24u64 {
        let home = rng.below(n) as usize;
        let id = swarm.agents[home]
            .insert_object(seq, &Counter { hits: 0 })
            .unwrap();
        counters.push(Ref::new(id, id.home));
    }
    let mut expected_hits = BTreeMap::new();
    let mut submitted = Vec::new();
    let path = |rng: &mut Rng, hits: &mut BTreeMap<usize, u64>, write: bool| {
        let len = 1 + rng.below(6) as usize;
        (0..len)
            .map(|_| {
                let i = rng.below(counters.len() as u64) as usize;
                if write {
                    *hits.entry(i).or_default() += 1;
                }
                counters[i]
            })
            .collect::<Vec<_>>()
    };
    for _ in 0..tasks {
        let at = rng.below(n) as usize;
        let (fut, expect) = match rng.below(3) {
            0 => {
                let p = path(rng, &mut expected_hits, true);
                let len = p.len() as u32;
                (
                    swarm.agents[at]
                        .submit(&Visit { path: p, next: 0 })
                        .unwrap(),
                    len,
                )
            }
            1 => {
                let p = path(rng, &mut expected_hits, false);
                let len = p.len() as u32;
                let peek = Peek {
                    path: p,
                    next: 0,
                    ballast: vec![7; 64],
                };
                (swarm.agents[at].submit(&peek).unwrap(), len)
            }
            _ => {
                let k = 1 + rng.below(4) as usize;
                let paths: Vec<_> = (0..k)
                    .map(|_| path(rng, &mut expected_hits, true))
                    .collect();
                let total = paths.iter().map(|p| p.len() as u32).sum();
                let home = AgentId(rng.below(n) as u16);
                (
                    swarm.agents[at]
                        .submit(&Fanout::Start { paths, home })
                        .unwrap(),
                    total,
                )
            }
        };
        submitted.push((at, fut, expect));
    }
    swarm.persist_all();
    Outcome {
        expected_hits,
        submitted,
        counters: counters.clone(),
    }
}

fn check(swarm: &Swarm, outcome: &Outcome) -> Result<(), TestCaseError> {
    let mut completed: BTreeMap<FutureId, u32> = BTreeMap::new();
    let mut remembered: BTreeMap<FutureId, u32> = BTreeMap::new();
    for (agent, event) in &swarm.events {
        match event {
            Event::Completed(fut) => *completed.entry(*fut).or_default() += 1,
            Event::Remembered(fut) => {
                prop_assert_eq!(
                    *agent,
                    fut.origin,
                    "{} remembered away from its origin",
                    fut
                );
                *remembered.entry(*fut).or_default() += 1;
            }
        }
    }
    for (fut, count) in &completed {
        prop_assert_eq!(*count, 1, "{} completed {} times", fut, count);
    }
    for (fut, count) in &remembered {
        prop_assert_eq!(*count, 1, "{}'s result arrived {} times", fut, count);
    }
    prop_assert_eq!(
        completed.keys().collect::<Vec<_>>(),
        remembered.keys().collect::<Vec<_>>()
    );
    for (at, fut, expect) in &outcome.submitted {
        let result = swarm.agents[*at].result(*fut);
        let want: Result<Vec<u8>, String> = Ok(postcard::to_allocvec(expect).unwrap());
        prop_assert_eq!(result, Some(&want), "{}", fut);
    }
    for (i, r) in outcome.counters.iter().enumerate() {
        let holder = swarm.agents.iter().find(|a| a.holds(r.id));
        let counter: Counter = holder
            .and_then(|a| a.object(r.id))
            .expect("every counter exists once");
        let want = outcome.expected_hits.get(&i).copied().unwrap_or(0);
        prop_assert_eq!(
            counter.hits,
            want,
            "counter {} was written {} times, not {}",
            i,
            counter.hits,
            want
        );
    }
    Ok(())
}

fn run(
    seed: u64,
    agents: u16,
    tasks: usize,
    faults: Faults,
    policy: Policy,
) -> Result<Swarm, TestCaseError> {
    let config = Config {
        policy,
        rto_ms: 3 * faults.max_delay.max(1) + 2,
        sketch_capacity: 64,
    };
    let mut swarm = Swarm::new(agents, registry(), config, faults, seed);
    let mut rng = Rng::new(seed ^ 0xabcdef);
    let outcome = workload(&mut swarm, &mut rng, tasks);
    let quiet = swarm.run_until_quiet(8, 60_000);
    prop_assert!(quiet, "the swarm did not finish within the tick budget");
    check(&swarm, &outcome)?;
    Ok(swarm)
}

#[test]
fn a_clean_network_runs_every_task_once() {
    let swarm = run(
        1,
        3,
        40,
        Faults {
            max_delay: 1,
            ..Faults::default()
        },
        Policy::Move,
    )
    .unwrap();
    assert_eq!(swarm.restarts, 0);
}

#[test]
fn restarts_mid_run_lose_nothing_and_repeat_nothing() {
    let faults = Faults {
        max_delay: 3,
        restart_per_mille: 20,
        ..Faults::default()
    };
    let swarm = run(7, 3, 40, faults, Policy::Move).unwrap();
    assert!(swarm.restarts > 0, "the test must actually restart agents");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn every_task_completes_once_and_its_result_arrives_once(
        seed in any::<u64>(),
        agents in 2u16..5,
        tasks in 1usize..30,
        drop in 0u32..300,
        duplicate in 0u32..300,
        max_delay in 1u64..12,
        reconnect in 0u32..50,
        restart in 0u32..30,
        policy in prop_oneof![Just(Policy::Move), Just(Policy::Fetch), Just(Policy::ShipOrFetch)],
    ) {
        let faults = Faults {
            drop_per_mille: drop,
            duplicate_per_mille: duplicate,
            max_delay,
            reconnect_per_mille: reconnect,
            restart_per_mille: restart,
        };
        run(seed, agents, tasks, faults, policy)?;
    }
}
