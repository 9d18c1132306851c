//! The ioctl request numbers each thread kind may use, computed from the kernel's `_IOC`
//! encoding and the `kvm-bindings` structure sizes (`kvm-ioctls` keeps its numbers private).
use std::mem::size_of;

use kvm_bindings::*;

const KVMIO: u64 = 0xAE;
const NONE: u64 = 0;
const WRITE: u64 = 1;
const READ: u64 = 2;

const fn ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (KVMIO << 8) | nr
}
const fn io(nr: u64) -> u64 {
    ioc(NONE, nr, 0)
}
const fn ior<T>(nr: u64) -> u64 {
    ioc(READ, nr, size_of::<T>())
}
const fn iow<T>(nr: u64) -> u64 {
    ioc(WRITE, nr, size_of::<T>())
}
const fn iowr<T>(nr: u64) -> u64 {
    ioc(READ | WRITE, nr, size_of::<T>())
}

pub const KVM_RUN: u64 = io(0x80);
pub const KVM_GET_REGS: u64 = ior::<kvm_regs>(0x81);
pub const KVM_GET_SREGS: u64 = ior::<kvm_sregs>(0x83);

/// A vCPU thread runs the guest, and reads registers for a crash report.
pub const VCPU_IOCTLS: &[u64] = &[KVM_RUN, KVM_GET_REGS, KVM_GET_SREGS];

/// The control threads pause, save and resume vCPUs (state calls while the vCPU is parked),
/// save VM-wide state, and track dirty memory for migration. Never `KVM_RUN`, and never a new
/// VM or vCPU.
pub const CONTROL_IOCTLS: [u64; 36] = [
    io(0x03), // KVM_CHECK_EXTENSION
    KVM_GET_REGS,
    iow::<kvm_regs>(0x82), // KVM_SET_REGS
    KVM_GET_SREGS,
    iow::<kvm_sregs>(0x84),                   // KVM_SET_SREGS
    iowr::<kvm_msrs>(0x88),                   // KVM_GET_MSRS
    iow::<kvm_msrs>(0x89),                    // KVM_SET_MSRS
    ior::<kvm_fpu>(0x8c),                     // KVM_GET_FPU
    iow::<kvm_fpu>(0x8d),                     // KVM_SET_FPU
    ior::<kvm_lapic_state>(0x8e),             // KVM_GET_LAPIC
    iow::<kvm_lapic_state>(0x8f),             // KVM_SET_LAPIC
    iowr::<kvm_cpuid2>(0x91),                 // KVM_GET_CPUID2
    ior::<kvm_mp_state>(0x98),                // KVM_GET_MP_STATE
    iow::<kvm_mp_state>(0x99),                // KVM_SET_MP_STATE
    ior::<kvm_vcpu_events>(0x9f),             // KVM_GET_VCPU_EVENTS
    iow::<kvm_vcpu_events>(0xa0),             // KVM_SET_VCPU_EVENTS
    ior::<kvm_debugregs>(0xa1),               // KVM_GET_DEBUGREGS
    iow::<kvm_debugregs>(0xa2),               // KVM_SET_DEBUGREGS
    ior::<kvm_xsave>(0xa4),                   // KVM_GET_XSAVE
    iow::<kvm_xsave>(0xa5),                   // KVM_SET_XSAVE
    ior::<kvm_xcrs>(0xa6),                    // KVM_GET_XCRS
    iow::<kvm_xcrs>(0xa7),                    // KVM_SET_XCRS
    io(0xa3),                                 // KVM_GET_TSC_KHZ
    io(0xad),                                 // KVM_KVMCLOCK_CTRL
    iow::<kvm_dirty_log>(0x42),               // KVM_GET_DIRTY_LOG
    iowr::<kvm_clear_dirty_log>(0xc0),        // KVM_CLEAR_DIRTY_LOG
    iow::<kvm_userspace_memory_region>(0x46), // KVM_SET_USER_MEMORY_REGION (dirty logging)
    iowr::<kvm_irqchip>(0x62),                // KVM_GET_IRQCHIP
    ior::<kvm_irqchip>(0x63),                 // KVM_SET_IRQCHIP
    ior::<kvm_clock_data>(0x7c),              // KVM_GET_CLOCK
    iow::<kvm_clock_data>(0x7b),              // KVM_SET_CLOCK
    ior::<kvm_pit_state2>(0x9f),              // KVM_GET_PIT2
    iow::<kvm_pit_state2>(0xa0),              // KVM_SET_PIT2
    0x5421,                                   // FIONBIO
    0x5401,                                   // TCGETS (is stderr a terminal)
    0x5451,                                   // FIOCLEX
];

/// Building a VM, on the main thread before anything runs: the VM, its vCPUs, its interrupt
/// controller and timer, the eventfds its devices use, and (unjailed) opening the taps.
/// Everything here makes new KVM objects, which no running thread may do.
pub const BUILD_IOCTLS: [u64; 13] = [
    io(0x01),                    // KVM_CREATE_VM
    iowr::<kvm_msr_list>(0x02),  // KVM_GET_MSR_INDEX_LIST
    io(0x04),                    // KVM_GET_VCPU_MMAP_SIZE
    iowr::<kvm_cpuid2>(0x05),    // KVM_GET_SUPPORTED_CPUID
    io(0x41),                    // KVM_CREATE_VCPU
    io(0x47),                    // KVM_SET_TSS_ADDR
    io(0x60),                    // KVM_CREATE_IRQCHIP
    iow::<kvm_irqfd>(0x76),      // KVM_IRQFD
    iow::<kvm_pit_config>(0x77), // KVM_CREATE_PIT2
    iow::<kvm_ioeventfd>(0x79),  // KVM_IOEVENTFD
    iow::<kvm_cpuid2>(0x90),     // KVM_SET_CPUID2
    iow::<kvm_enable_cap>(0xa3), // KVM_ENABLE_CAP (manual dirty-log protection)
    crate::devices::virtio::net::tap::TUNSETIFF,
];

#[cfg(test)]
mod tests {
    use super::*;

    /// Numbers as the kernel headers spell them (`<linux/kvm.h>` on x86-64).
    #[test]
    fn computed_numbers_match_the_kernel_headers() {
        assert_eq!(KVM_RUN, 0xae80);
        assert_eq!(KVM_GET_REGS, 0x8090_ae81);
        assert_eq!(KVM_GET_SREGS, 0x8138_ae83);
        assert_eq!(iowr::<kvm_msrs>(0x88), 0xc008_ae88);
        assert_eq!(iow::<kvm_userspace_memory_region>(0x46), 0x4020_ae46);
        assert_eq!(iow::<kvm_dirty_log>(0x42), 0x4010_ae42);
        assert_eq!(ior::<kvm_xsave>(0xa4), 0x9000_aea4);
        assert_eq!(iowr::<kvm_cpuid2>(0x05), 0xc008_ae05);
        assert_eq!(iow::<kvm_cpuid2>(0x90), 0x4008_ae90);
        assert_eq!(iow::<kvm_irqfd>(0x76), 0x4020_ae76);
        assert_eq!(iow::<kvm_ioeventfd>(0x79), 0x4040_ae79);
        assert_eq!(iow::<kvm_pit_config>(0x77), 0x4040_ae77);
        assert_eq!(iow::<kvm_enable_cap>(0xa3), 0x4068_aea3);
    }
}
