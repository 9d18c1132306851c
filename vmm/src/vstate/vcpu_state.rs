//! Saving and restoring one vCPU, in Firecracker's documented order.
//!
//! Save: MP state first (KVM flushes pending LAPIC events into it), then registers, special
//! registers, xsave, XCRs, debug registers, LAPIC, MSRs and finally vCPU events.
//! Restore: CPUID first (it defines which MSRs and xsave features exist), then MP state,
//! registers, special registers, xsave, XCRs, debug registers, LAPIC (after sregs, which set
//! the APIC base), MSRs (after the LAPIC: TSC_DEADLINE depends on it) and vCPU events last.
use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs,
    kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId, Msrs,
};
use kvm_ioctls::{Kvm, VcpuFd};
use serde::{Deserialize, Serialize};

/// The TSC MSR: saved when the VM pauses so a paused guest sees no time pass.
pub const MSR_IA32_TSC: u32 = 0x10;

#[derive(Debug, thiserror::Error)]
pub enum VcpuStateError {
    #[error("cannot {op} for vCPU {index}")]
    Ioctl {
        index: u8,
        op: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("vCPU {index}: KVM accepted only {set} of {total} MSRs (first rejected: {first:#x})")]
    MsrsRejected {
        index: u8,
        set: usize,
        total: usize,
        first: u32,
    },
    #[error("vCPU {index}: the saved state has {count} CPUID entries or MSRs, too many for KVM")]
    TooManyEntries { index: u8, count: usize },
}

#[derive(Debug, Serialize, Deserialize)]
pub struct VcpuState {
    pub cpuid: Vec<kvm_cpuid_entry2>,
    pub mp_state: kvm_mp_state,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub xsave: kvm_xsave,
    pub xcrs: kvm_xcrs,
    pub debug_regs: kvm_debugregs,
    /// Only with an in-kernel irqchip.
    pub lapic: Option<kvm_lapic_state>,
    pub msrs: Vec<kvm_msr_entry>,
    pub vcpu_events: kvm_vcpu_events,
}

/// MSRs to save: everything KVM reports that a fresh vCPU both reads and takes back. Some
/// (paravirtual ones whose CPUID feature is off, say) read fine but refuse writes, and a state
/// holding them could never be restored.
pub fn msr_list(kvm: &Kvm, fd: &VcpuFd) -> Result<Vec<u32>, VcpuStateError> {
    let all = kvm
        .get_msr_index_list()
        .map_err(|source| VcpuStateError::Ioctl {
            index: 0,
            op: "list MSRs",
            source,
        })?;
    let readable = read_msrs(fd, 0, all.as_slice())?;
    let mut keep = Vec::with_capacity(readable.len());
    let mut rest: &[kvm_msr_entry] = &readable;
    while !rest.is_empty() {
        let msrs = Msrs::from_entries(rest).map_err(|_| VcpuStateError::TooManyEntries {
            index: 0,
            count: rest.len(),
        })?;
        let n = fd.set_msrs(&msrs).map_err(ioctl_err(0, "write MSRs"))?;
        keep.extend(rest[..n].iter().map(|e| e.index));
        rest = &rest[(n + 1).min(rest.len())..];
    }
    Ok(keep)
}

fn ioctl_err(index: u8, op: &'static str) -> impl Fn(kvm_ioctls::Error) -> VcpuStateError {
    move |source| VcpuStateError::Ioctl { index, op, source }
}

/// Reads every MSR in `indices` that KVM can read; ones it refuses are dropped, since
/// `KVM_GET_MSRS` stops at the first it cannot read.
fn read_msrs(
    fd: &VcpuFd,
    index: u8,
    indices: &[u32],
) -> Result<Vec<kvm_msr_entry>, VcpuStateError> {
    let mut wanted: Vec<u32> = indices.to_vec();
    let mut out = Vec::with_capacity(wanted.len());
    while !wanted.is_empty() {
        let entries: Vec<kvm_msr_entry> = wanted
            .iter()
            .map(|&i| kvm_msr_entry {
                index: i,
                ..Default::default()
            })
            .collect();
        let mut msrs =
            Msrs::from_entries(&entries).map_err(|_| VcpuStateError::TooManyEntries {
                index,
                count: entries.len(),
            })?;
        let n = fd
            .get_msrs(&mut msrs)
            .map_err(ioctl_err(index, "read MSRs"))?;
        out.extend_from_slice(&msrs.as_slice()[..n]);
        // Skip the one that failed and carry on after it.
        wanted.drain(..(n + 1).min(wanted.len()));
    }
    Ok(out)
}

/// Saves `fd`'s state. `tsc` overrides the TSC MSR (the value captured at pause).
pub fn save(
    fd: &VcpuFd,
    index: u8,
    msr_indices: &[u32],
    with_lapic: bool,
    tsc: Option<u64>,
) -> Result<VcpuState, VcpuStateError> {
    let mp_state = fd
        .get_mp_state()
        .map_err(ioctl_err(index, "read MP state"))?;
    let regs = fd.get_regs().map_err(ioctl_err(index, "read registers"))?;
    let sregs = fd
        .get_sregs()
        .map_err(ioctl_err(index, "read special registers"))?;
    let xsave = fd.get_xsave().map_err(ioctl_err(index, "read xsave"))?;
    let xcrs = fd.get_xcrs().map_err(ioctl_err(index, "read XCRs"))?;
    let debug_regs = fd
        .get_debug_regs()
        .map_err(ioctl_err(index, "read debug registers"))?;
    let lapic = match with_lapic {
        true => Some(fd.get_lapic().map_err(ioctl_err(index, "read LAPIC"))?),
        false => None,
    };
    let mut msrs = read_msrs(fd, index, msr_indices)?;
    if let Some(tsc) = tsc {
        for m in msrs.iter_mut().filter(|m| m.index == MSR_IA32_TSC) {
            m.data = tsc;
        }
    }
    let vcpu_events = fd
        .get_vcpu_events()
        .map_err(ioctl_err(index, "read vCPU events"))?;
    let cpuid = fd
        .get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(ioctl_err(index, "read CPUID"))?
        .as_slice()
        .to_vec();
    Ok(VcpuState {
        cpuid,
        mp_state,
        regs,
        sregs,
        xsave,
        xcrs,
        debug_regs,
        lapic,
        msrs,
        vcpu_events,
    })
}

/// Writes MSRs, failing if KVM takes fewer than all of them.
pub fn write_msrs(fd: &VcpuFd, index: u8, entries: &[kvm_msr_entry]) -> Result<(), VcpuStateError> {
    let msrs = Msrs::from_entries(entries).map_err(|_| VcpuStateError::TooManyEntries {
        index,
        count: entries.len(),
    })?;
    let set = fd.set_msrs(&msrs).map_err(ioctl_err(index, "write MSRs"))?;
    if set != entries.len() {
        return Err(VcpuStateError::MsrsRejected {
            index,
            set,
            total: entries.len(),
            first: entries[set].index,
        });
    }
    Ok(())
}

/// Restores `state` into a freshly created vCPU.
pub fn restore(fd: &VcpuFd, index: u8, state: &VcpuState) -> Result<(), VcpuStateError> {
    let cpuid = CpuId::from_entries(&state.cpuid).map_err(|_| VcpuStateError::TooManyEntries {
        index,
        count: state.cpuid.len(),
    })?;
    fd.set_cpuid2(&cpuid)
        .map_err(ioctl_err(index, "write CPUID"))?;
    fd.set_mp_state(state.mp_state)
        .map_err(ioctl_err(index, "write MP state"))?;
    fd.set_regs(&state.regs)
        .map_err(ioctl_err(index, "write registers"))?;
    fd.set_sregs(&state.sregs)
        .map_err(ioctl_err(index, "write special registers"))?;
    // SAFETY: KVM reads more than the 4 KiB `kvm_xsave` only for dynamically enabled xsave
    // features (AMX), which need arch_prctl(ARCH_REQ_XCOMP_GUEST_PERM); this process never
    // requests them, so the kernel reads within the struct.
    unsafe { fd.set_xsave(&state.xsave) }.map_err(ioctl_err(index, "write xsave"))?;
    fd.set_xcrs(&state.xcrs)
        .map_err(ioctl_err(index, "write XCRs"))?;
    fd.set_debug_regs(&state.debug_regs)
        .map_err(ioctl_err(index, "write debug registers"))?;
    if let Some(lapic) = &state.lapic {
        fd.set_lapic(lapic)
            .map_err(ioctl_err(index, "write LAPIC"))?;
    }
    write_msrs(fd, index, &state.msrs)?;
    fd.set_vcpu_events(&state.vcpu_events)
        .map_err(ioctl_err(index, "write vCPU events"))?;
    Ok(())
}

/// Reads the TSC MSR.
pub fn read_tsc(fd: &VcpuFd, index: u8) -> Result<u64, VcpuStateError> {
    let msrs = read_msrs(fd, index, &[MSR_IA32_TSC])?;
    Ok(msrs.first().map_or(0, |m| m.data))
}
