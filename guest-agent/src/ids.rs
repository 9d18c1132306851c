//! Names that travel between agents: agents, objects, futures and hops.

use core::fmt;
use postcard_schema::Schema;
use serde::{Deserialize, Serialize};

/// One agent (one VM's runtime). Agents are numbered by the deployment's configuration.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Schema,
)]
pub struct AgentId(pub u16);

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "agent {}", self.0)
    }
}

/// A global object id: the agent that created the object (its *home*, which always knows where
/// the object went) and a sequence number unique on that agent.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Schema,
)]
pub struct ObjectId {
    pub home: AgentId,
    pub seq: u64,
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "object {}.{}", self.home.0, self.seq)
    }
}

/// The name of a task's eventual result. Its `origin` is where the result is remembered: the
/// agent that spawned the task.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Schema,
)]
pub struct FutureId {
    pub origin: AgentId,
    pub seq: u64,
}

impl fmt::Display for FutureId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "future {}.{}", self.origin.0, self.seq)
    }
}

/// One transfer on the link `from -> to`: sequence numbers count up from 1 per link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct HopId {
    pub from: AgentId,
    pub to: AgentId,
    pub seq: u64,
}
