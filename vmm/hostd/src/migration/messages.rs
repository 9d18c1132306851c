//! What the hosts and the requester exchange about a migration.

use laundromat_api::hostd::{BootMode, DiskImage};
use serde::{Deserialize, Serialize};
use token::chain::verifier::VerifierState;
use token::{HostId, Link, SignedToken};

use crate::images::BlobDigest;

/// `POST /v1/vms/{id}/migrate`: where to.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrateRequest {
    pub to: HostId,
}

/// The VM as it moves: what the destination needs to run and bill it. The payment state is
/// the token, the last accepted link with its index, and the paid time (admission instant and
/// the paid-until it gives).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MovingVm {
    pub vm_id: String,
    pub token: SignedToken,
    pub boot: BootMode,
    pub kernel: BlobDigest,
    pub initrd: Option<BlobDigest>,
    pub cmdline: String,
    pub memory_mib: u32,
    pub vcpus: u32,
    pub admitted_at_ms: u64,
    /// The guest NIC's MAC, if it has one: the destination gives it a tap with the same MAC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// The disk image, if the VM has one: the destination must reach it already (see
    /// `crate::disks`); the file does not move.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<DiskImage>,
    pub payment: VerifierState,
    pub paid_until_ms: u64,
}

/// `POST /v1/migrations` (source host → destination host): get ready to receive.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrepareIncoming {
    pub migration_id: String,
    pub vm: MovingVm,
    /// The source's migration key (hex): the only key the destination's `vmm` lets in. The
    /// source's host identity signs this request, and so vouches for it.
    pub migration_key: String,
}

/// The destination's answer: where its `vmm --incoming` listens, its host key, and the
/// migration key its `vmm` presents, with the host key's signature over it (the answer itself
/// is not signed).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Prepared {
    pub url: String,
    pub host_key: String,
    pub migration_key: String,
    pub migration_key_endorsement: String,
}

/// `POST /v1/migrations/{id}/payment`: the source's last accepted link at the switchover,
/// sent while the migration is held before `Commit` (the source accepts no more links).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentSync {
    pub index: u64,
    pub link: Link,
}

/// How a migration stands at the destination (`GET /v1/migrations/{id}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncomingOutcome {
    /// The `vmm --incoming` waits or receives; it has not run the VM.
    Waiting,
    /// The VM runs here: the source must never run it again.
    Running,
    /// The `vmm --incoming` ended without running the VM: the source keeps it.
    Failed,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct OutcomeAnswer {
    pub outcome: IncomingOutcome,
}
