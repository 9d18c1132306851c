//! The KVM VM: memory slots and, for Linux guests, the in-kernel interrupt controllers.
use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_MEM_LOG_DIRTY_PAGES};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use super::dirty_log::{self, DirtyLogMode};
use super::memory::GuestMemory;

/// Where KVM puts the three pages VT-x needs for real-mode TSS emulation: just below the BIOS
/// area at the top of 4 GiB, inside our MMIO window where no RAM lives.
const KVM_TSS_ADDR: usize = 0xfffb_d000;
/// `KVM_PIT_SPEAKER_DUMMY`: lets the guest probe port 0x61 without a speaker device.
const PIT_SPEAKER_DUMMY: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("cannot open /dev/kvm")]
    OpenKvm(#[source] kvm_ioctls::Error),
    #[error("cannot create the KVM VM")]
    Create(#[source] kvm_ioctls::Error),
    #[error("cannot register guest memory slot {slot} with KVM")]
    MemorySlot {
        slot: u32,
        source: kvm_ioctls::Error,
    },
    #[error("cannot set up the in-kernel interrupt controllers")]
    IrqChip(#[source] kvm_ioctls::Error),
    #[error("cannot wire interrupt line {gsi}")]
    Irqfd { gsi: u32, source: kvm_ioctls::Error },
    #[error("cannot read the dirty log of slot {slot}")]
    DirtyLog {
        slot: u32,
        source: kvm_ioctls::Error,
    },
}

pub struct Vm {
    pub kvm: Kvm,
    pub fd: VmFd,
    dirty_mode: DirtyLogMode,
}

impl Vm {
    pub fn new() -> Result<Self, VmError> {
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        let fd = kvm.create_vm().map_err(VmError::Create)?;
        let dirty_mode = dirty_log::enable_manual(&fd);
        Ok(Self {
            kvm,
            fd,
            dirty_mode,
        })
    }

    /// Whether reading the dirty log leaves it set until [`Vm::clear_dirty_log`].
    pub fn dirty_log_mode(&self) -> DirtyLogMode {
        self.dirty_mode
    }

    /// Clears `bitmap`'s pages (from `first_page`, `pages` of them) in slot `slot`'s log.
    pub fn clear_dirty_log(
        &self,
        slot: u32,
        first_page: u64,
        pages: u32,
        bitmap: &[u64],
    ) -> Result<(), VmError> {
        dirty_log::clear(&self.fd, slot, first_page, pages, bitmap)
            .map_err(|source| VmError::DirtyLog { slot, source })
    }

    /// Registers every region of `mem` as a KVM slot (slot i = region i), with dirty logging
    /// if asked. Calling it again with the same memory only flips dirty logging.
    pub fn register_memory(&self, mem: &GuestMemory, log_dirty: bool) -> Result<(), VmError> {
        for (slot, region) in mem.iter().enumerate() {
            let slot = slot as u32;
            let host =
                mem.get_host_address(region.start_addr())
                    .map_err(|_| VmError::MemorySlot {
                        slot,
                        source: kvm_ioctls::Error::new(libc::EFAULT),
                    })?;
            let desc = kvm_userspace_memory_region {
                slot,
                flags: if log_dirty {
                    KVM_MEM_LOG_DIRTY_PAGES
                } else {
                    0
                },
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: the host range is a live mapping owned by `mem`, which the caller keeps
            // alive for as long as the VM exists; slots do not overlap because `mem`'s regions
            // do not.
            unsafe { self.fd.set_user_memory_region(desc) }
                .map_err(|source| VmError::MemorySlot { slot, source })?;
        }
        Ok(())
    }

    /// KVM's dirty log of memory slot `slot`, one bit per page; reading clears it unless the
    /// log is in manual mode.
    pub fn dirty_log(&self, slot: u32, size: u64) -> Result<Vec<u64>, VmError> {
        self.fd
            .get_dirty_log(slot, size as usize)
            .map_err(|source| VmError::DirtyLog { slot, source })
    }

    /// The in-kernel PIC, IOAPIC, LAPICs and PIT that a Linux guest expects.
    pub fn setup_irqchip(&self) -> Result<(), VmError> {
        self.fd
            .set_tss_address(KVM_TSS_ADDR)
            .map_err(VmError::IrqChip)?;
        self.fd.create_irq_chip().map_err(VmError::IrqChip)?;
        let pit = kvm_pit_config {
            flags: PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        self.fd.create_pit2(pit).map_err(VmError::IrqChip)?;
        Ok(())
    }

    pub fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), VmError> {
        self.fd
            .register_irqfd(evt, gsi)
            .map_err(|source| VmError::Irqfd { gsi, source })
    }
}
