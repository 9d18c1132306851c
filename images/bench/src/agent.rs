//! The pure part of `workload=agent`: the peer protocol's framing (the same bytes as
//! `guest-agentd`'s) and the timeline load an agent runs and checks.
//!
//! A peer connection carries traffic one way: the sender connects, says `P` and its id (u16
//! little-endian), then writes frames, each a u32 little-endian length and that many bytes (a
//! postcard [`guest_agent::Message`]). Acknowledgements come back on the connection the other
//! agent opens, exactly as between two `guest-agentd`s, so a VM agent and a daemon interoperate.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use guest_agent::timeline::{Params, Post, Timeline};
use guest_agent::{Agent, AgentError, AgentId, Event, FutureId};

/// The first byte of a peer connection (`guest-agentd`'s `HELLO_PEER`).
pub const HELLO_PEER: u8 = b'P';
/// Bytes of a peer connection's greeting: `P` and the sender's id.
pub const HELLO_LEN: usize = 3;
/// No frame between timeline agents comes near this; a larger length means a broken or hostile
/// peer, and the connection is dropped (the sender resends what was not acknowledged).
pub const MAX_FRAME: usize = 1 << 20;
/// Posts a timeline read asks for.
pub const TIMELINE_LIMIT: u32 = 10;

/// The greeting an agent sends on a connection it opens.
pub fn hello(me: u16) -> [u8; HELLO_LEN] {
    let [a, b] = me.to_le_bytes();
    [HELLO_PEER, a, b]
}

/// Appends `frame` with its length prefix to `out`.
pub fn push_frame(out: &mut Vec<u8>, frame: &[u8]) {
    out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
    out.extend_from_slice(frame);
}

/// Why a peer's byte stream was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamError {
    /// The connection did not start with `P`: not an agent (a `guest-agentd` client, say, whose
    /// JSON interface the unikernel does not serve).
    NotAPeer(u8),
    TooLarge(usize),
}

impl core::fmt::Display for StreamError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            StreamError::NotAPeer(b) => write!(f, "the connection began with {b:#04x}, not 'P'"),
            StreamError::TooLarge(n) => {
                write!(f, "a frame of {n} bytes exceeds the {MAX_FRAME}-byte limit")
            }
        }
    }
}

/// An incoming peer stream, reassembled from whatever pieces TCP hands over.
#[derive(Debug, Default)]
pub struct Inbound {
    buf: Vec<u8>,
    /// The peer's id, once its greeting is in.
    pub from: Option<u16>,
}

impl Inbound {
    /// Takes bytes from the stream and returns the frames they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, StreamError> {
        self.buf.extend_from_slice(bytes);
        let mut frames = Vec::new();
        let mut at = 0;
        if self.from.is_none() {
            match self.buf.first() {
                None => return Ok(frames),
                Some(&b) if b != HELLO_PEER => return Err(StreamError::NotAPeer(b)),
                Some(_) => {}
            }
            if self.buf.len() < HELLO_LEN {
                return Ok(frames);
            }
            self.from = Some(u16::from_le_bytes([self.buf[1], self.buf[2]]));
            at = HELLO_LEN;
        }
        while let Some(len) = self.buf.get(at..at + 4) {
            let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
            if len > MAX_FRAME {
                return Err(StreamError::TooLarge(len));
            }
            let Some(frame) = self.buf.get(at + 4..at + 4 + len) else {
                break;
            };
            frames.push(frame.to_vec());
            at += 4 + len;
        }
        self.buf.drain(..at);
        Ok(frames)
    }
}

/// Whether this agent's id and its peers' number the agents 0 to n-1, each once, as the data
/// set's placement (`Params::agents`) assumes.
pub fn ids_are_dense(me: u64, peers: impl IntoIterator<Item = u64>) -> bool {
    let mut ids: Vec<u64> = peers.into_iter().collect();
    ids.push(me);
    ids.sort_unstable();
    ids.iter().enumerate().all(|(i, &id)| id == i as u64)
}

/// The timeline data set every agent of a run seeds: `users` users over `agents` agents (ids 0
/// to `agents - 1`), otherwise the defaults `guest-agentd` uses.
pub fn params(users: u32, agents: u16) -> Params {
    Params {
        users,
        agents,
        ..Params::default()
    }
}

/// The posts a timeline read of `user` must return on the freshly seeded data set.
pub fn expected_timeline(params: &Params, user: u32, limit: u32) -> Vec<Post> {
    let mut posts: Vec<Post> = params
        .follows_of(user)
        .into_iter()
        .flat_map(|f| {
            (0..params.posts_per_user).map(move |i| (f, u64::from(i) << 32 | u64::from(f)))
        })
        .map(|(author, id)| Post {
            author,
            id,
            text: params.text(author, id),
        })
        .collect();
    posts.sort_by_key(|p| core::cmp::Reverse(p.id));
    posts.truncate(limit as usize);
    posts
}

/// An agent's own timeline reads: submitted at a pace, each result checked once it is home.
/// It lives in guest memory with the agent, so a migration carries it too.
#[derive(Debug)]
pub struct Load {
    params: Params,
    me: AgentId,
    tasks: u64,
    /// Reads per second; 0 submits them all at once.
    rate: u64,
    /// Most reads outstanding at once (a closed loop of this many clients); 0: no limit.
    window: u64,
    pub submitted: u64,
    /// Futures submitted and not yet home, with the user each reads and when it was submitted
    /// (VM clock, microseconds).
    pending: BTreeMap<FutureId, (u32, u64)>,
    /// Each read's time from submit to its result home, in microseconds.
    latencies: Vec<u64>,
    /// When the first read was submitted and the last result came home.
    first_us: Option<u64>,
    last_us: u64,
    /// Results home and equal to the expected timeline.
    pub results: u64,
    /// Results home but different from the expected timeline.
    pub wrong: u64,
    /// Results that arrived for a future already home (or never submitted here).
    pub twice: u64,
    /// Failed tasks (a task error, not a transport one: hops are retried forever).
    pub failed: u64,
}

impl Load {
    pub fn new(params: Params, me: AgentId, tasks: u64, rate: u64) -> Self {
        Load {
            params,
            me,
            tasks,
            rate,
            window: 0,
            submitted: 0,
            pending: BTreeMap::new(),
            latencies: Vec::new(),
            first_us: None,
            last_us: 0,
            results: 0,
            wrong: 0,
            twice: 0,
            failed: 0,
        }
    }

    /// The user the `i`th read of this agent asks about: spread over all users, and different
    /// on every agent.
    pub fn user(&self, i: u64) -> u32 {
        let users = u64::from(self.params.users.max(1));
        ((i * 7919 + u64::from(self.me.0) * 104_729) % users) as u32
    }

    /// At most `window` reads outstanding at once (0: no limit).
    pub fn with_window(mut self, window: u64) -> Self {
        self.window = window;
        self
    }

    /// Submits the reads due `now_us` (microseconds since the run began); returns how many.
    pub fn submit_due(&mut self, agent: &mut Agent, now_us: u64) -> Result<u64, AgentError> {
        let mut due = match self.rate {
            0 => self.tasks,
            rate => (now_us.saturating_mul(rate) / 1_000_000 + 1).min(self.tasks),
        };
        if self.window > 0 {
            due = due.min(self.submitted - self.pending.len() as u64 + self.window);
        }
        let before = self.submitted;
        while self.submitted < due {
            let user = self.user(self.submitted);
            let task = Timeline::Start {
                user: self.params.profile(user),
                limit: TIMELINE_LIMIT,
            };
            let fut = agent.submit(&task)?;
            self.pending.insert(fut, (user, now_us));
            self.first_us.get_or_insert(now_us);
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
                    let Some((user, submitted_us)) = self.pending.remove(&fut) else {
                        self.twice += 1;
                        continue;
                    };
                    self.latencies.push(now_us.saturating_sub(submitted_us));
                    self.last_us = self.last_us.max(now_us);
                    match result {
                        Some(Ok(bytes)) => {
                            let want = expected_timeline(&self.params, user, TIMELINE_LIMIT);
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

    /// Every read was submitted and its result is home.
    pub fn finished(&self) -> bool {
        self.submitted == self.tasks && self.pending.is_empty()
    }

    /// Reads this agent runs in all.
    pub fn tasks(&self) -> u64 {
        self.tasks
    }

    /// Each finished read's latency in microseconds, in completion order.
    pub fn latencies(&self) -> &[u64] {
        &self.latencies
    }

    /// The `p`th percentile (0 to 100) of the latencies so far, in microseconds.
    pub fn percentile(&self, p: u64) -> u64 {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        let i = (sorted.len() as u64 * p.min(100) / 100) as usize;
        sorted
            .get(i.min(sorted.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    }

    /// From the first submit to the last result home, in microseconds.
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
    use super::*;
    use alloc::sync::Arc;
    use guest_agent::sim::{Faults, Swarm};

    #[test]
    fn frames_reassemble_from_any_split_and_bad_streams_are_refused() {
        let mut wire = hello(2).to_vec();
        push_frame(&mut wire, b"first");
        push_frame(&mut wire, b"");
        push_frame(&mut wire, &[7u8; 3000]);
        for piece in [1, 2, 3, 7, 4096] {
            let mut inbound = Inbound::default();
            let mut got = Vec::new();
            for chunk in wire.chunks(piece) {
                got.extend(inbound.push(chunk).unwrap());
            }
            assert_eq!(inbound.from, Some(2));
            assert_eq!(got, [b"first".to_vec(), Vec::new(), [7u8; 3000].to_vec()]);
        }
        assert_eq!(
            Inbound::default().push(b"C{}"),
            Err(StreamError::NotAPeer(b'C'))
        );
        let mut huge = hello(1).to_vec();
        huge.extend_from_slice(&(MAX_FRAME as u32 + 1).to_le_bytes());
        assert_eq!(
            Inbound::default().push(&huge),
            Err(StreamError::TooLarge(MAX_FRAME + 1))
        );
    }

    #[test]
    fn agent_ids_must_be_dense_and_unique() {
        assert!(ids_are_dense(0, []));
        assert!(ids_are_dense(1, [0, 2]));
        assert!(ids_are_dense(2, [1, 0]));
        assert!(!ids_are_dense(0, [2]), "a gap");
        assert!(!ids_are_dense(1, [1, 0]), "itself as a peer");
        assert!(!ids_are_dense(0, [1, 1]), "a peer twice");
        assert!(!ids_are_dense(3, [0, 1]), "out of range");
    }

    #[test]
    fn the_load_runs_every_read_once_over_a_lossy_swarm_and_checks_the_results() {
        let params = params(60, 3);
        let registry = Arc::new(guest_agent::timeline::registry().unwrap());
        let faults = Faults {
            max_delay: 2,
            drop_per_mille: 50,
            duplicate_per_mille: 50,
            ..Faults::default()
        };
        let config = guest_agent::Config::default();
        let mut swarm = Swarm::new(3, registry, config, faults, 7);
        for agent in swarm.agents.iter_mut() {
            params.seed_agent(agent).unwrap();
        }
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
        let registry = Arc::new(guest_agent::timeline::registry().unwrap());
        let mut agent = Agent::new(AgentId(0), &[], registry, guest_agent::Config::default());
        params.seed_agent(&mut agent).unwrap();
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
        let registry = Arc::new(guest_agent::timeline::registry().unwrap());
        let mut agent = Agent::new(AgentId(0), &[], registry, guest_agent::Config::default());
        params.seed_agent(&mut agent).unwrap();
        let mut load = Load::new(params, AgentId(0), 10, 0).with_window(3);
        assert_eq!(load.submit_due(&mut agent, 0).unwrap(), 3);
        assert_eq!(load.submit_due(&mut agent, 5).unwrap(), 0);
        agent.run(10_000);
        let events = agent.take_events();
        load.observe(&mut agent, events, 10);
        assert_eq!(load.submit_due(&mut agent, 10).unwrap(), 3);
        assert_eq!((load.results, load.outstanding()), (3, 3));
    }
}
