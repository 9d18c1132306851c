//! An agent's own timeline reads: submitted at a pace, each result checked once it is home.
//!
//! A run may begin with warm-up reads (while placement passes move objects; see
//! [`super::phases`]): they are submitted and checked like the others, but their latencies and
//! times are left out of the figures. The measured reads continue the same sequence of users.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use guest_agent::timeline::{Params, Post, Timeline};
use guest_agent::{Agent, AgentError, AgentId, Event, FutureId};

use super::{expected_timeline, TIMELINE_LIMIT};

/// Where the load is. [`Load::new`] starts in `Measured` at time 0: a run without warm-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Nothing submitted yet: the agents have not started together.
    Waiting,
    /// Warm-up reads, paced from `from_us`, as many as fit until [`Load::end_warmup`].
    WarmUp { from_us: u64, first: u64 },
    /// The warm-up is over: no new reads until the measured ones start.
    Draining,
    /// The `tasks` measured reads, paced from `from_us`; the first is read number `first`.
    Measured { from_us: u64, first: u64 },
}

/// A read submitted and not home yet.
#[derive(Clone, Copy, Debug)]
struct Pending {
    user: u32,
    /// When it was submitted (VM clock, microseconds).
    at_us: u64,
    measured: bool,
}

/// It lives in guest memory with the agent, so a migration carries it too.
#[derive(Debug)]
pub struct Load {
    params: Params,
    me: AgentId,
    /// Measured reads.
    tasks: u64,
    /// Reads per second; 0 submits them all at once.
    rate: u64,
    /// Most reads outstanding at once (a closed loop of this many clients); 0: no limit.
    window: u64,
    stage: Stage,
    /// Reads submitted, warm-up ones included.
    pub submitted: u64,
    pending: BTreeMap<FutureId, Pending>,
    /// Each measured read's time from submit to its result home, in microseconds.
    latencies: Vec<u64>,
    /// When the first measured read was submitted and the last one came home.
    first_us: Option<u64>,
    last_us: u64,
    /// Results home and equal to the expected timeline (warm-up ones included).
    pub results: u64,
    /// Warm-up results home (right or not).
    pub warm: u64,
    /// Results home but different from the expected timeline.
    pub wrong: u64,
    /// Results that arrived for a future already home (or never submitted here).
    pub twice: u64,
    /// Failed tasks (a task error, not a transport one: hops are retried forever).
    pub failed: u64,
}

impl Load {
    /// `tasks` measured reads at `rate` per second, starting at time 0 with no warm-up.
    pub fn new(params: Params, me: AgentId, tasks: u64, rate: u64) -> Self {
        Load {
            params,
            me,
            tasks,
            rate,
            window: 0,
            stage: Stage::Measured {
                from_us: 0,
                first: 0,
            },
            submitted: 0,
            pending: BTreeMap::new(),
            latencies: Vec::new(),
            first_us: None,
            last_us: 0,
            results: 0,
            warm: 0,
            wrong: 0,
            twice: 0,
            failed: 0,
        }
    }

    /// At most `window` reads outstanding at once (0: no limit).
    pub fn with_window(mut self, window: u64) -> Self {
        self.window = window;
        self
    }

    /// Submits nothing until [`Load::start_warmup`] or [`Load::start_measured`].
    pub fn waiting(mut self) -> Self {
        self.stage = Stage::Waiting;
        self
    }

    pub fn stage(&self) -> Stage {
        self.stage
    }

    /// Warm-up reads start at `now_us` (only from `Waiting`).
    pub fn start_warmup(&mut self, now_us: u64) {
        if self.stage == Stage::Waiting {
            self.stage = Stage::WarmUp {
                from_us: now_us,
                first: self.submitted,
            };
        }
    }

    /// No more warm-up reads; those outstanding still come home.
    pub fn end_warmup(&mut self) {
        if matches!(self.stage, Stage::WarmUp { .. }) {
            self.stage = Stage::Draining;
        }
    }

    /// The warm-up is over and every warm-up read is home.
    pub fn warm_home(&self) -> bool {
        self.stage == Stage::Draining && self.pending.is_empty()
    }

    /// The measured reads start at `now_us` (once; a warm-up still running ends).
    pub fn start_measured(&mut self, now_us: u64) {
        if !matches!(self.stage, Stage::Measured { .. }) {
            self.stage = Stage::Measured {
                from_us: now_us,
                first: self.submitted,
            };
        }
    }

    /// The user the `i`th read of this agent asks about: spread over all users, and different
    /// on every agent.
    pub fn user(&self, i: u64) -> u32 {
        let users = u64::from(self.params.users.max(1));
        ((i * 7919 + u64::from(self.me.0) * 104_729) % users) as u32
    }

    /// Submits the reads due at `now_us` (VM clock, microseconds); returns how many.
    pub fn submit_due(&mut self, agent: &mut Agent, now_us: u64) -> Result<u64, AgentError> {
        let (from_us, first, total, measured) = match self.stage {
            Stage::Waiting | Stage::Draining => return Ok(0),
            Stage::WarmUp { from_us, first } => (from_us, first, u64::MAX, false),
            Stage::Measured { from_us, first } => (from_us, first, self.tasks, true),
        };
        let mut due = match self.rate {
            0 => total,
            rate => {
                (now_us.saturating_sub(from_us).saturating_mul(rate) / 1_000_000 + 1).min(total)
            }
        };
        // A warm-up has no count of its own: without a rate or a window it would never stop
        // submitting, so it keeps one read outstanding.
        let window = match self.window {
            0 if !measured && self.rate == 0 => 1,
            w => w,
        };
        if window > 0 {
            let room = window.saturating_sub(self.pending.len() as u64);
            due = due.min(self.submitted - first + room);
        }
        let before = self.submitted;
        while self.submitted - first < due {
            let user = self.user(self.submitted);
            let task = Timeline::Start {
                user: self.params.profile(user),
                limit: TIMELINE_LIMIT,
            };
            let fut = agent.submit(&task)?;
            self.pending.insert(
                fut,
                Pending {
                    user,
                    at_us: now_us,
                    measured,
                },
            );
            if measured {
                self.first_us.get_or_insert(now_us);
            }
            self.submitted += 1;
        }
        Ok(self.submitted - before)
    }

    /// Handles the agent's events (from [`Agent::take_events`]) at `now_us`: takes and checks
    /// each result that came home. Returns how many tasks completed here (for any origin).
    pub fn observe(
        &mut self,
        agent: &mut Agent,
        events: impl IntoIterator<Item = Event>,
        now_us: u64,
    ) -> u64 {
        let mut completed = 0;
        for event in events {
            match event {
                Event::Completed(_) => completed += 1,
                Event::Remembered(fut) => {
                    let result = agent.take_result(fut);
                    let Some(read) = self.pending.remove(&fut) else {
                        self.twice += 1;
                        continue;
                    };
                    if read.measured {
                        self.latencies.push(now_us.saturating_sub(read.at_us));
                        self.last_us = self.last_us.max(now_us);
                    } else {
                        self.warm += 1;
                    }
                    match result {
                        Some(Ok(bytes)) => {
                            let want = expected_timeline(&self.params, read.user, TIMELINE_LIMIT);
                            match postcard::from_bytes::<Vec<Post>>(&bytes) {
                                Ok(posts) if posts == want => self.results += 1,
                                _ => self.wrong += 1,
                            }
                        }
                        Some(Err(_)) => self.failed += 1,
                        None => self.twice += 1,
                    }
                }
            }
        }
        completed
    }

    /// Measured reads submitted so far.
    pub fn measured_submitted(&self) -> u64 {
        match self.stage {
            Stage::Measured { first, .. } => self.submitted - first,
            _ => 0,
        }
    }

    /// Every measured read was submitted and its result is home.
    pub fn finished(&self) -> bool {
        self.measured_submitted() == self.tasks && self.pending.is_empty()
    }

    /// Measured reads this agent runs in all.
    pub fn tasks(&self) -> u64 {
        self.tasks
    }

    /// Reads whose result is not home: outstanding ones and measured ones not yet submitted.
    pub fn missing(&self) -> u64 {
        self.pending.len() as u64 + (self.tasks - self.measured_submitted())
    }

    /// Each measured read's latency in microseconds, in completion order.
    pub fn latencies(&self) -> &[u64] {
        &self.latencies
    }

    /// The `p`th percentile (0 to 100) of the measured latencies so far, in microseconds.
    pub fn percentile(&self, p: u64) -> u64 {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        let i = (sorted.len() as u64 * p.min(100) / 100) as usize;
        sorted
            .get(i.min(sorted.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    }

    /// From the first measured submit to the last measured result home, in microseconds.
    pub fn span_us(&self) -> u64 {
        self.first_us
            .map_or(0, |first| self.last_us.saturating_sub(first))
    }

    /// Reads submitted whose result is not home yet.
    pub fn outstanding(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::super::params;
    use super::super::testing::{lone_agent as agent, lossy_swarm};
    use super::*;

    #[test]
    fn the_load_runs_every_read_once_over_a_lossy_swarm_and_checks_the_results() {
        let params = params(60, 3);
        let mut swarm = lossy_swarm(&params, 50, guest_agent::Config::default(), 7);
        let mut loads: Vec<Load> = (0..3)
            .map(|i| Load::new(params, AgentId(i), 20, 0))
            .collect();
        for (load, agent) in loads.iter_mut().zip(swarm.agents.iter_mut()) {
            assert_eq!(load.submit_due(agent, 0).unwrap(), 20);
        }
        let mut completed = 0;
        for _ in 0..10_000 {
            swarm.tick(8);
            for (id, event) in core::mem::take(&mut swarm.events) {
                let i = usize::from(id.0);
                completed += loads[i].observe(&mut swarm.agents[i], [event], swarm.now);
            }
            if loads.iter().all(Load::finished) {
                break;
            }
        }
        for load in &loads {
            assert!(load.finished(), "{load:?}");
            assert_eq!(
                (load.results, load.wrong, load.twice, load.failed),
                (20, 0, 0, 0)
            );
        }
        assert_eq!(completed, 60);
    }

    #[test]
    fn reads_are_paced_by_the_rate() {
        let params = params(30, 1);
        let mut agent = agent(&params);
        let mut load = Load::new(params, AgentId(0), 10, 4);
        assert_eq!(load.submit_due(&mut agent, 0).unwrap(), 1);
        assert_eq!(load.submit_due(&mut agent, 499_000).unwrap(), 1);
        assert_eq!(load.submit_due(&mut agent, 1_000_000).unwrap(), 3);
        assert_eq!(load.submit_due(&mut agent, 60_000_000).unwrap(), 5);
        assert_eq!(load.outstanding(), 10);
        agent.run(10_000);
        let events = agent.take_events();
        assert_eq!(
            load.observe(&mut agent, events.iter().copied(), 61_000_000),
            10
        );
        assert!(load.finished());
        assert_eq!(load.results, 10);
        assert_eq!(load.span_us(), 61_000_000);
        assert_eq!(load.percentile(0), 1_000_000);
        assert_eq!(load.percentile(100), 61_000_000);
        assert_eq!(load.latencies().len(), 10);
        // The same results again (a hop applied twice would do this) are counted, not hidden.
        load.observe(&mut agent, events, 62_000_000);
        assert_eq!((load.results, load.twice), (10, 10));
    }

    #[test]
    fn a_window_bounds_the_reads_outstanding() {
        let params = params(30, 1);
        let mut agent = agent(&params);
        let mut load = Load::new(params, AgentId(0), 10, 0).with_window(3);
        assert_eq!(load.submit_due(&mut agent, 0).unwrap(), 3);
        assert_eq!(load.submit_due(&mut agent, 5).unwrap(), 0);
        agent.run(10_000);
        let events = agent.take_events();
        load.observe(&mut agent, events, 10);
        assert_eq!(load.submit_due(&mut agent, 10).unwrap(), 3);
        assert_eq!((load.results, load.outstanding()), (3, 3));
    }

    #[test]
    fn warm_up_reads_are_checked_but_left_out_of_the_figures() {
        let params = params(30, 1);
        let mut agent = agent(&params);
        let mut load = Load::new(params, AgentId(0), 4, 0).with_window(2).waiting();
        assert_eq!(load.submit_due(&mut agent, 0).unwrap(), 0, "not started");
        load.start_warmup(1_000);
        // Warm-up reads go on (two at a time) until the warm-up ends.
        for round in 0..3 {
            let now = 2_000 + round * 1_000;
            assert_eq!(load.submit_due(&mut agent, now).unwrap(), 2);
            agent.run(10_000);
            let events = agent.take_events();
            load.observe(&mut agent, events, now + 500);
        }
        assert_eq!(load.submit_due(&mut agent, 9_000).unwrap(), 2);
        load.end_warmup();
        assert!(!load.warm_home(), "two warm-up reads are still out");
        assert_eq!(load.submit_due(&mut agent, 9_500).unwrap(), 0, "draining");
        agent.run(10_000);
        let events = agent.take_events();
        load.observe(&mut agent, events, 10_000);
        assert!(load.warm_home());
        assert_eq!((load.warm, load.results, load.missing()), (8, 8, 4));
        assert!(load.latencies().is_empty() && load.span_us() == 0);

        load.start_measured(20_000);
        assert_eq!(load.submit_due(&mut agent, 20_000).unwrap(), 2);
        assert_eq!(load.measured_submitted(), 2);
        agent.run(10_000);
        let events = agent.take_events();
        load.observe(&mut agent, events, 20_300);
        assert_eq!(load.submit_due(&mut agent, 20_300).unwrap(), 2);
        assert_eq!(
            load.submit_due(&mut agent, 20_400).unwrap(),
            0,
            "all four out"
        );
        agent.run(10_000);
        let events = agent.take_events();
        load.observe(&mut agent, events, 20_700);
        assert!(load.finished());
        assert_eq!((load.results, load.warm, load.missing()), (12, 8, 0));
        assert_eq!(load.latencies(), [300, 300, 400, 400]);
        assert_eq!(load.span_us(), 700);
        // The measured reads continue the warm-up's sequence of users.
        assert_eq!(load.submitted, 12);
    }

    #[test]
    fn a_warm_up_without_rate_or_window_keeps_one_read_out() {
        let params = params(30, 1);
        let mut agent = agent(&params);
        let mut load = Load::new(params, AgentId(0), 4, 0).waiting();
        load.start_warmup(0);
        assert_eq!(load.submit_due(&mut agent, 0).unwrap(), 1);
        assert_eq!(load.submit_due(&mut agent, 1).unwrap(), 0);
    }
}
