//! What an agent counts: steps, hops and bytes by kind, so the bench can say where the bytes go.

use serde::{Deserialize, Serialize};

use crate::wire::Payload;

/// The kinds of traffic, for accounting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A continuation moving to its data.
    Task,
    /// A result going home.
    Result,
    /// A fetch request or its answer (data shipping).
    Fetch,
    /// An object moved by placement.
    Object,
    /// Acknowledgements, hints and load reports.
    Control,
}

impl Kind {
    pub fn of(payload: &Payload) -> Self {
        match payload {
            Payload::Task(_) => Kind::Task,
            Payload::Result { .. } => Kind::Result,
            Payload::Fetch { .. } | Payload::Fetched { .. } => Kind::Fetch,
            Payload::Object { .. } => Kind::Object,
        }
    }
}

/// Counters since the agent was created (they survive restarts with the rest of the state).
/// Frames are counted each time they are transmitted, retransmissions included.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub steps: u64,
    pub completed: u64,
    pub remembered: u64,
    /// The hop counts of the tasks that completed here, summed.
    pub task_hops_at_completion: u64,
    pub fetches: u64,
    pub objects_received: u64,
    pub task_frames: u64,
    pub task_bytes: u64,
    pub result_frames: u64,
    pub result_bytes: u64,
    pub fetch_frames: u64,
    pub fetch_bytes: u64,
    pub object_frames: u64,
    pub object_bytes: u64,
    pub control_frames: u64,
    pub control_bytes: u64,
    /// Hops that arrived again after being applied (dropped, re-acknowledged).
    pub duplicates: u64,
    /// Payloads addressed to agents that are not peers (from bad hints).
    pub undeliverable: u64,
}

impl Stats {
    pub fn sent(&mut self, kind: Kind, bytes: usize) {
        let bytes = bytes as u64;
        let (frames, total) = match kind {
            Kind::Task => (&mut self.task_frames, &mut self.task_bytes),
            Kind::Result => (&mut self.result_frames, &mut self.result_bytes),
            Kind::Fetch => (&mut self.fetch_frames, &mut self.fetch_bytes),
            Kind::Object => (&mut self.object_frames, &mut self.object_bytes),
            Kind::Control => (&mut self.control_frames, &mut self.control_bytes),
        };
        *frames += 1;
        *total += bytes;
    }

    /// Bytes of application traffic: continuations, results and fetches (not placement moves
    /// or acknowledgements, which the bench reports apart).
    pub fn request_bytes(&self) -> u64 {
        self.task_bytes + self.result_bytes + self.fetch_bytes
    }

    /// Adds another agent's counters (for swarm-wide totals).
    pub fn add(&mut self, other: &Stats) {
        self.steps += other.steps;
        self.completed += other.completed;
        self.remembered += other.remembered;
        self.task_hops_at_completion += other.task_hops_at_completion;
        self.fetches += other.fetches;
        self.objects_received += other.objects_received;
        self.task_frames += other.task_frames;
        self.task_bytes += other.task_bytes;
        self.result_frames += other.result_frames;
        self.result_bytes += other.result_bytes;
        self.fetch_frames += other.fetch_frames;
        self.fetch_bytes += other.fetch_bytes;
        self.object_frames += other.object_frames;
        self.object_bytes += other.object_bytes;
        self.control_frames += other.control_frames;
        self.control_bytes += other.control_bytes;
        self.duplicates += other.duplicates;
        self.undeliverable += other.undeliverable;
    }
}
