//! Migration statistics, named after QEMU's `query-migrate` fields where they exist.
use serde::Serialize;

pub use crate::convergence::StopReason;

/// Outcome of a migration.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    #[default]
    Setup,
    Active,
    /// The destination runs the VM; the source has stopped it.
    Completed,
    /// Pre-copy gave up (timeout with the cancel policy); the source runs on.
    Cancelled,
    /// Something broke before commit; the source runs on, unchanged.
    Failed,
    /// The commit was sent but never acknowledged: the destination may or may not run the
    /// VM, so the source stays paused rather than guess.
    Unknown,
}

#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct RamStats {
    /// Bytes put on the wire for memory (page data and frame headers).
    pub transferred: u64,
    /// Bytes still dirty at the last measurement.
    pub remaining: u64,
    /// Guest RAM size.
    pub total: u64,
    /// Zero pages (skipped in the first pass, sent as zero runs later).
    pub duplicate: u64,
    /// Pages sent with their contents.
    pub normal: u64,
    pub normal_bytes: u64,
    /// Dirty-log synchronisations, i.e. rounds after the first full pass.
    pub dirty_sync_count: u64,
    /// Pages dirtied per second in the last round.
    pub dirty_pages_rate: u64,
    /// Measured link throughput in megabits per second.
    pub mbps: f64,
}

#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct DowntimeParts {
    /// Stopping the vCPUs and sending the dirty pages left when they stopped.
    pub final_pages_ms: f64,
    /// Of `final_pages_ms`: stopping the vCPUs, and reading the last dirty log.
    pub pause_ms: f64,
    pub final_sync_ms: f64,
    /// Saving and sending the device and vCPU state, until the destination is ready.
    pub state_ms: f64,
    /// Waiting, paused, for the orchestrator's commit (only with a hold before commit).
    pub hold_ms: f64,
    /// Commit, destination resume, and its acknowledgement.
    pub resume_ms: f64,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct RoundStats {
    pub round: u32,
    pub pages: u64,
    pub bytes: u64,
    pub duration_ms: f64,
    /// Pages found dirty when this round's dirty log was read.
    pub dirty_pages: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Stats {
    pub status: Status,
    pub total_time_ms: f64,
    pub setup_time_ms: f64,
    pub downtime_ms: f64,
    pub downtime_parts: DowntimeParts,
    pub expected_downtime_ms: f64,
    pub ram: RamStats,
    pub cpu_throttle_percentage: u8,
    /// Which rule ended pre-copy, once one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<StopReason>,
    pub rounds: Vec<RoundStats>,
    /// Why the migration did not complete, if it did not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A live progress report, emitted once per round.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Progress {
    pub status: Status,
    pub round: u32,
    pub elapsed_ms: f64,
    pub transferred: u64,
    pub remaining: u64,
    pub dirty_pages_rate: u64,
    pub mbps: f64,
    pub expected_downtime_ms: f64,
    pub cpu_throttle_percentage: u8,
    /// Set on the last report of pre-copy: which rule ended it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<StopReason>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_uses_qemu_names() {
        let v = serde_json::to_value(Stats {
            status: Status::Completed,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(v["status"], "completed");
        assert!(v.get("total-time-ms").is_some());
        assert!(v["ram"].get("dirty-sync-count").is_some());
        assert!(v["ram"].get("duplicate").is_some());
        assert!(v.get("error").is_none());
        let v = serde_json::to_value(Stats {
            stop_reason: Some(StopReason::Floor),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(v["stop-reason"], "floor");
    }
}
