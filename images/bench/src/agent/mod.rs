//! The pure part of `workload=agent`: the peer protocol's framing (the same bytes as
//! `guest-agentd`'s), the timeline load an agent runs and checks ([`load`]), and the phases of
//! a run with a warm-up and placement passes ([`phases`]).
//!
//! A peer connection carries traffic one way: the sender connects, says `P` and its id (u16
//! little-endian), then writes frames, each a u32 little-endian length and that many bytes (a
//! postcard [`guest_agent::Message`]). Acknowledgements come back on the connection the other
//! agent opens, exactly as between two `guest-agentd`s, so a VM agent and a daemon interoperate.

pub mod client;
pub mod load;
pub mod phases;

use alloc::vec::Vec;

use guest_agent::timeline::{Params, Post};

pub use load::Load;
pub use phases::Phases;

/// The first byte of a peer connection (`guest-agentd`'s `HELLO_PEER`).
pub const HELLO_PEER: u8 = b'P';
/// The first byte of a client connection (`guest-agentd`'s `HELLO_CLIENT`): JSON frames follow.
pub const HELLO_CLIENT: u8 = b'C';
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
    /// The connection started with neither `P` (an agent) nor `C` (a client).
    NotAPeer(u8),
    TooLarge(usize),
}

impl core::fmt::Display for StreamError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            StreamError::NotAPeer(b) => {
                write!(f, "the connection began with {b:#04x}, not 'P' or 'C'")
            }
            StreamError::TooLarge(n) => {
                write!(f, "a frame of {n} bytes exceeds the {MAX_FRAME}-byte limit")
            }
        }
    }
}

/// An incoming stream, from a peer or a client, reassembled from whatever pieces TCP hands
/// over.
#[derive(Debug, Default)]
pub struct Inbound {
    buf: Vec<u8>,
    /// The peer's id, once its greeting is in.
    pub from: Option<u16>,
    /// The connection is a client's: its frames are JSON requests (see [`client`]).
    pub client: bool,
}

impl Inbound {
    /// Takes bytes from the stream and returns the frames they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, StreamError> {
        self.buf.extend_from_slice(bytes);
        let mut frames = Vec::new();
        let mut at = 0;
        if self.from.is_none() && !self.client {
            match self.buf.first() {
                None => return Ok(frames),
                Some(&HELLO_CLIENT) => {
                    self.client = true;
                    at = 1;
                }
                Some(&b) if b != HELLO_PEER => return Err(StreamError::NotAPeer(b)),
                Some(_) => {}
            }
        }
        if self.from.is_none() && !self.client {
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

/// What the agent modules' tests share: a seeded agent alone, and a seeded lossy swarm.
#[cfg(test)]
mod testing {
    use alloc::sync::Arc;
    use guest_agent::sim::{Faults, Swarm};
    use guest_agent::timeline::Params;
    use guest_agent::{Agent, AgentId, Config};

    /// Agent 0 with no peers, holding all of `params`' data set.
    pub fn lone_agent(params: &Params) -> Agent {
        let registry = Arc::new(guest_agent::timeline::registry().unwrap());
        let mut agent = Agent::new(AgentId(0), &[], registry, Config::default());
        params.seed_agent(&mut agent).unwrap();
        agent
    }

    /// `params.agents` agents, each seeded with its share, over a network that drops and
    /// duplicates `per_mille` of the frames and delays them up to two ticks.
    pub fn lossy_swarm(params: &Params, per_mille: u32, config: Config, seed: u64) -> Swarm {
        let registry = Arc::new(guest_agent::timeline::registry().unwrap());
        let faults = Faults {
            max_delay: 2,
            drop_per_mille: per_mille,
            duplicate_per_mille: per_mille,
            ..Faults::default()
        };
        let mut swarm = Swarm::new(params.agents, registry, config, faults, seed);
        for agent in swarm.agents.iter_mut() {
            params.seed_agent(agent).unwrap();
        }
        swarm
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            Inbound::default().push(b"J{}"),
            Err(StreamError::NotAPeer(b'J'))
        );
        let mut client = Inbound::default();
        let mut wire = alloc::vec![HELLO_CLIENT];
        push_frame(&mut wire, b"{}");
        assert_eq!(client.push(&wire[..3]), Ok(Vec::new()));
        assert_eq!(client.push(&wire[3..]), Ok(alloc::vec![b"{}".to_vec()]));
        assert!(client.client && client.from.is_none());
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
}
