//! The VM configuration and its validation against this host.
use std::path::PathBuf;

use crate::devices::virtio::block::DiskConfig;
use crate::devices::virtio::net::NetConfig;
use crate::vstate::memory::Backing;

/// How the guest is started.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum BootMode {
    /// The Linux x86-64 boot protocol (bzImage or ELF vmlinux).
    Linux,
    /// The PVH ELF note, 32-bit protected-mode entry.
    Pvh,
    /// Laundromat's ring-3 unikernel entry.
    Bench,
}

#[derive(Clone, Debug)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub boot: BootMode,
    pub mem_mib: u64,
    pub vcpus: u8,
    pub backing: Backing,
    /// virtio-net devices, in the order of their MMIO windows.
    pub net: Vec<NetConfig>,
    /// virtio-blk devices, in the MMIO windows after the network devices'.
    pub disks: Vec<DiskConfig>,
}

/// Smallest guest we accept: room for the boot structures, an image and a stack.
pub const MIN_MEM_MIB: u64 = 8;
/// Most vCPUs we configure: bounded by the bench boot-info area and the MP table's space.
pub const MAX_VCPUS: u32 = bench_abi::MAX_VCPUS;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("a VM needs at least one vCPU")]
    NoVcpus,
    #[error("{asked} vCPUs requested, but at most {max} are supported here")]
    TooManyVcpus { asked: u32, max: u32 },
    #[error("{asked} MiB of memory is too small: at least {min} MiB is needed")]
    MemoryTooSmall { asked: u64, min: u64 },
    #[error("{asked} MiB of memory is more than this host's {host} MiB")]
    MemoryTooLarge { asked: u64, host: u64 },
    #[error("an initrd cannot be used with --boot bench")]
    InitrdWithBench,
    #[error("{asked} network devices requested, but at most {max} are supported")]
    TooManyNets { asked: usize, max: usize },
    #[error(
        "{asked} virtio devices (network and disk) requested, but at most {max} are supported"
    )]
    TooManyDevices { asked: usize, max: usize },
    #[error("the saved VM has {saved} disks, but {given} --disk options were given")]
    DiskMismatch { saved: usize, given: usize },
    #[error("the saved VM has {saved} network devices, but {given} --net options were given")]
    NetMismatch { saved: usize, given: usize },
}

/// Total physical memory of this host in MiB, from /proc/meminfo.
pub fn host_mem_mib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

impl VmConfig {
    /// Checks the configuration against `kvm_max_vcpus` and `host_mib`.
    pub fn validate(&self, kvm_max_vcpus: u32, host_mib: u64) -> Result<(), ConfigError> {
        let max = kvm_max_vcpus.min(MAX_VCPUS);
        if self.vcpus == 0 {
            return Err(ConfigError::NoVcpus);
        }
        if u32::from(self.vcpus) > max {
            return Err(ConfigError::TooManyVcpus {
                asked: self.vcpus.into(),
                max,
            });
        }
        if self.mem_mib < MIN_MEM_MIB {
            return Err(ConfigError::MemoryTooSmall {
                asked: self.mem_mib,
                min: MIN_MEM_MIB,
            });
        }
        if self.mem_mib > host_mib {
            return Err(ConfigError::MemoryTooLarge {
                asked: self.mem_mib,
                host: host_mib,
            });
        }
        if self.boot == BootMode::Bench && self.initrd.is_some() {
            return Err(ConfigError::InitrdWithBench);
        }
        if self.net.len() > bench_abi::MAX_VIRTIO {
            return Err(ConfigError::TooManyNets {
                asked: self.net.len(),
                max: bench_abi::MAX_VIRTIO,
            });
        }
        let devices = self.net.len() + self.disks.len();
        if devices > bench_abi::MAX_VIRTIO {
            return Err(ConfigError::TooManyDevices {
                asked: devices,
                max: bench_abi::MAX_VIRTIO,
            });
        }
        Ok(())
    }

    /// Checks the configuration against what `kvm` and this host's memory allow.
    pub fn validate_for_host(&self, kvm: &kvm_ioctls::Kvm) -> Result<(), ConfigError> {
        self.validate(
            kvm.get_max_vcpus() as u32,
            host_mem_mib().unwrap_or(u64::MAX),
        )
    }

    /// The machine's shape, as saved in a VM state.
    pub fn machine(&self) -> crate::persist::MachineState {
        crate::persist::MachineState {
            boot: self.boot,
            mem_mib: self.mem_mib,
            vcpus: self.vcpus,
            cmdline: self.cmdline.clone(),
            irqchip: self.boot == BootMode::Linux,
        }
    }

    /// The configuration of a VM restored from `machine`: there is no kernel to load.
    pub fn for_machine(machine: &crate::persist::MachineState, backing: Backing) -> Self {
        Self {
            kernel: PathBuf::new(),
            initrd: None,
            cmdline: machine.cmdline.clone(),
            boot: machine.boot,
            mem_mib: machine.mem_mib,
            vcpus: machine.vcpus,
            backing,
            net: Vec::new(),
            disks: Vec::new(),
        }
    }

    pub fn mem_bytes(&self) -> u64 {
        self.mem_mib << 20
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(vcpus: u8, mem_mib: u64) -> VmConfig {
        VmConfig {
            kernel: "k".into(),
            initrd: None,
            cmdline: String::new(),
            boot: BootMode::Bench,
            mem_mib,
            vcpus,
            backing: Backing::Anonymous,
            net: Vec::new(),
            disks: Vec::new(),
        }
    }

    #[test]
    fn rejects_impossible_sizes() {
        assert_eq!(cfg(0, 64).validate(8, 1024), Err(ConfigError::NoVcpus));
        assert_eq!(
            cfg(9, 64).validate(8, 1024),
            Err(ConfigError::TooManyVcpus { asked: 9, max: 8 })
        );
        assert_eq!(
            cfg(200, 64).validate(1024, 1024),
            Err(ConfigError::TooManyVcpus {
                asked: 200,
                max: MAX_VCPUS
            })
        );
        assert!(matches!(
            cfg(1, 1).validate(8, 1024),
            Err(ConfigError::MemoryTooSmall { .. })
        ));
        assert!(matches!(
            cfg(1, 4096).validate(8, 1024),
            Err(ConfigError::MemoryTooLarge { .. })
        ));
        assert_eq!(cfg(2, 64).validate(8, 1024), Ok(()));
    }

    #[test]
    fn reads_host_memory() {
        assert!(host_mem_mib().unwrap_or(0) > 0);
    }
}
