//! Placement: moving objects so that tasks hop less. (Filled in below.)

use alloc::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::{AgentId, ObjectId};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PlacementState {
    /// Objects held by each peer, as last reported.
    pub loads: BTreeMap<AgentId, u64>,
    /// Passes run so far.
    pub passes: u64,
    /// The pass at which each object last moved (for damping).
    pub moved_at: BTreeMap<ObjectId, u64>,
}
