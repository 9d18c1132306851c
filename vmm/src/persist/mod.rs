//! The VM state format and snapshots.
//!
//! A state blob holds everything but guest memory: the machine's shape, each vCPU, the VM's
//! interrupt controllers, and every device model. It is one versioned binary format with a
//! magic, a version and a CRC (see [`format`]); a `vmm` rejects, with a clear error, a version
//! it cannot read. Snapshots ([`snapshot`]) put a state blob and a memory image in a directory.
pub mod format;
pub mod snapshot;

use serde::{Deserialize, Serialize};

use crate::config::BootMode;
use crate::devices::serial::SerialSnapshot;
use crate::devices::virtio::block::persist::BlockSnapshot;
use crate::devices::virtio::net::persist::NetSnapshot;
use crate::vstate::vcpu_state::VcpuState;
use crate::vstate::vm_state::IrqchipState;

/// The machine's shape: what a destination needs to build an empty VM to restore into.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineState {
    pub boot: BootMode,
    pub mem_mib: u64,
    pub vcpus: u8,
    pub cmdline: String,
    /// Whether the VM has the in-kernel PIC, IOAPIC and PIT.
    pub irqchip: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct VmState {
    pub machine: MachineState,
    /// The VM clock (guest running time) at the moment of the save.
    pub clock_ns: u64,
    pub vcpus: Vec<VcpuState>,
    pub irqchip: Option<IrqchipState>,
    pub serial: SerialSnapshot,
    /// The boot timer: how long the guest took to boot where it first ran, if it said so.
    pub boot_time_ns: Option<u64>,
    /// The virtio-net devices, in MMIO order (state format version 2).
    pub net: Vec<NetSnapshot>,
    /// The virtio-blk devices, in MMIO order after the network devices (version 3).
    pub disks: Vec<BlockSnapshot>,
}

/// [`VmState`] as format version 2 wrote it: no disks. Read and upgraded, never written.
#[derive(Deserialize)]
pub(crate) struct VmStateV2 {
    machine: MachineState,
    clock_ns: u64,
    vcpus: Vec<VcpuState>,
    irqchip: Option<IrqchipState>,
    serial: SerialSnapshot,
    boot_time_ns: Option<u64>,
    net: Vec<NetSnapshot>,
}

impl From<VmStateV2> for VmState {
    fn from(v: VmStateV2) -> Self {
        Self {
            machine: v.machine,
            clock_ns: v.clock_ns,
            vcpus: v.vcpus,
            irqchip: v.irqchip,
            serial: v.serial,
            boot_time_ns: v.boot_time_ns,
            net: v.net,
            disks: Vec::new(),
        }
    }
}
