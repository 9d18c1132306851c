//! What hostd keeps on disk about each VM, in `<data dir>/vms/<vm id>/vm.json`: enough to
//! re-adopt its `vmm` process after a restart and to redeem what the tenant paid. The file is
//! replaced atomically and durably on every accepted payment, before the payment is answered.

use std::path::Path;

use laundromat_api::hostd::{BlobDigest, BootMode};
use serde::{Deserialize, Serialize};
use token::chain::verifier::VerifierState;
use token::SignedToken;

use crate::vmm_process::ProcessId;

pub const RECORD_FILE: &str = "vm.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmRecord {
    pub vm_id: String,
    pub token: SignedToken,
    pub boot: BootMode,
    pub kernel: BlobDigest,
    pub initrd: Option<BlobDigest>,
    pub cmdline: String,
    pub memory_mib: u32,
    pub vcpus: u32,
    /// Unix milliseconds; paid time counts from here (see `token::paid_time`).
    pub admitted_at_ms: u64,
    /// The last accepted link and its index: the host's money.
    pub payment: VerifierState,
    /// The highest index the broker has credited this host for.
    pub redeemed_index: u64,
    /// Its tap and MAC on this host (`hostd --bridge`); none: no NIC. Written before the tap
    /// is made, so that a restart after a crash finds the tap to delete.
    #[serde(default)]
    pub net: Option<crate::network::VmNet>,
    /// Its disk, if the image carries one (see `crate::disks`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<crate::disks::VmDisk>,
    /// The `vmm` process, once started.
    pub process: Option<ProcessId>,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("cannot read or write the VM record")]
    Io(#[from] std::io::Error),
    #[error("the VM record is corrupt")]
    Corrupt(#[from] serde_json::Error),
}

impl VmRecord {
    pub fn save(&self, dir: &Path) -> Result<(), RecordError> {
        let bytes = serde_json::to_vec_pretty(self)?;
        Ok(crate::durable::write_atomic(
            &dir.join(RECORD_FILE),
            &bytes,
        )?)
    }

    pub fn load(dir: &Path) -> Result<Self, RecordError> {
        let bytes = std::fs::read(dir.join(RECORD_FILE))?;
        Ok(serde_json::from_slice(&bytes)?)
    }
}
