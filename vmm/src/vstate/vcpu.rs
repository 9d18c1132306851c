//! vCPUs: configuration at boot, and one thread each that runs `KVM_RUN` and dispatches exits
//! to the devices.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Once};
use std::thread::JoinHandle;

use kvm_bindings::{kvm_lapic_state, CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use super::run_control::{Requested, RunControl, StopReason};
use super::vm::Vm;
use crate::arch::x86_64::{cpuid, msr, regs};
use crate::devices::bus::ExitCounts;
use crate::devices::Devices;

#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("cannot create vCPU {index}")]
    Create {
        index: u8,
        source: kvm_ioctls::Error,
    },
    #[error("cannot configure vCPU {index}: {what}")]
    Configure {
        index: u8,
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("cannot build the MSR list")]
    Msrs,
    #[error("cannot start the thread for vCPU {index}")]
    Thread { index: u8, source: std::io::Error },
    #[error("cannot install the vCPU kick signal handler")]
    Signal(#[source] vmm_sys_util::errno::Error),
}

/// Registers for a vCPU's first instruction.
#[derive(Clone, Copy, Debug)]
pub struct VcpuBoot {
    pub mode: regs::EntryMode,
    pub regs: regs::EntryRegs,
    /// Linux guests get the boot MSRs and LAPIC LINT wiring; the others need neither.
    pub linux: bool,
}

/// Exit counters shared by every vCPU thread.
#[derive(Debug, Default)]
pub struct ExitStats {
    mmio_read: AtomicU64,
    mmio_write: AtomicU64,
    io_in: AtomicU64,
    io_out: AtomicU64,
    unhandled: AtomicU64,
}

impl ExitStats {
    pub fn snapshot(&self) -> ExitCounts {
        ExitCounts {
            mmio_read: self.mmio_read.load(Ordering::Relaxed),
            mmio_write: self.mmio_write.load(Ordering::Relaxed),
            io_in: self.io_in.load(Ordering::Relaxed),
            io_out: self.io_out.load(Ordering::Relaxed),
            unhandled: self.unhandled.load(Ordering::Relaxed),
        }
    }
}

pub struct Vcpu {
    pub index: u8,
    pub fd: VcpuFd,
}

fn configure_err(index: u8, what: &'static str) -> impl Fn(kvm_ioctls::Error) -> VcpuError {
    move |source| VcpuError::Configure {
        index,
        what,
        source,
    }
}

const APIC_LVT_LINT0: usize = 0x350;
const APIC_LVT_LINT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// Sets the delivery mode of a LAPIC local vector table register.
fn set_lvt_mode(lapic: &mut kvm_lapic_state, offset: usize, mode: u32) {
    let reg = &mut lapic.regs[offset..offset + 4];
    let mut bytes = [0u8; 4];
    for (b, r) in bytes.iter_mut().zip(reg.iter()) {
        *b = *r as u8;
    }
    let v = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
    for (r, b) in reg.iter_mut().zip(v.to_le_bytes()) {
        *r = b as _;
    }
}

impl Vcpu {
    pub fn new(vm: &Vm, index: u8) -> Result<Self, VcpuError> {
        let fd = vm
            .fd
            .create_vcpu(u64::from(index))
            .map_err(|source| VcpuError::Create { index, source })?;
        Ok(Self { index, fd })
    }

    /// Sets CPUID and the entry state for a fresh boot.
    pub fn configure(&self, kvm: &Kvm, count: u8, boot: &VcpuBoot) -> Result<(), VcpuError> {
        let i = self.index;
        let mut cpuid: CpuId = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(configure_err(i, "read supported CPUID"))?;
        cpuid::for_vcpu(&mut cpuid, i, count);
        self.fd
            .set_cpuid2(&cpuid)
            .map_err(configure_err(i, "set CPUID"))?;
        if boot.linux {
            let msrs = msr::boot_msrs().map_err(|_| VcpuError::Msrs)?;
            self.fd
                .set_msrs(&msrs)
                .map_err(configure_err(i, "set MSRs"))?;
        }
        let sregs = self
            .fd
            .get_sregs()
            .map_err(configure_err(i, "read sregs"))?;
        self.fd
            .set_sregs(&regs::sregs(sregs, boot.mode))
            .map_err(configure_err(i, "set sregs"))?;
        self.fd
            .set_regs(&regs::regs(&boot.regs))
            .map_err(configure_err(i, "set regs"))?;
        self.fd
            .set_fpu(&regs::fpu())
            .map_err(configure_err(i, "set FPU"))?;
        if boot.linux {
            // Legacy PIC interrupts arrive on LINT0 as ExtINT and NMIs on LINT1, as on a PC.
            let mut lapic = self
                .fd
                .get_lapic()
                .map_err(configure_err(i, "read LAPIC"))?;
            set_lvt_mode(&mut lapic, APIC_LVT_LINT0, APIC_MODE_EXTINT);
            set_lvt_mode(&mut lapic, APIC_LVT_LINT1, APIC_MODE_NMI);
            self.fd
                .set_lapic(&lapic)
                .map_err(configure_err(i, "set LAPIC"))?;
        }
        Ok(())
    }
}

/// A no-op handler: the signal's only job is to make `KVM_RUN` return `EINTR`.
extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// The signal used to kick vCPU threads out of `KVM_RUN`.
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

/// Installs the kick handler once per process.
pub fn install_kick_handler() -> Result<(), VcpuError> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| result = register_signal_handler(kick_signal(), kick_handler));
    result.map_err(VcpuError::Signal)
}

/// Kicks a vCPU thread. A kick that lands outside `KVM_RUN` is lost, so callers repeat it
/// until the vCPU reports parked.
pub fn kick(thread: &JoinHandle<()>) {
    if let Err(e) = thread.kill(kick_signal()) {
        tracing::debug!("kick failed: {e}");
    }
}

pub struct VcpuThreadContext {
    pub run: Arc<RunControl>,
    pub devices: Arc<Devices>,
    pub stats: Arc<ExitStats>,
}

/// A vCPU shared between its thread, which holds the lock while in `KVM_RUN`, and the
/// controller, which takes it only while the vCPU is parked (to save or restore state).
pub type SharedVcpu = Arc<Mutex<Vcpu>>;

pub fn lock(vcpu: &Mutex<Vcpu>) -> MutexGuard<'_, Vcpu> {
    // A panic on a vCPU thread leaves the fd itself intact.
    vcpu.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn spawn(vcpu: SharedVcpu, ctx: VcpuThreadContext) -> Result<JoinHandle<()>, VcpuError> {
    let index = lock(&vcpu).index;
    std::thread::Builder::new()
        .name(format!("vcpu{index}"))
        .spawn(move || {
            crate::sandbox::seccomp::install_or_exit(crate::sandbox::seccomp::ThreadKind::Vcpu);
            run_loop(&vcpu, &ctx)
        })
        .map_err(|source| VcpuError::Thread { index, source })
}

/// What the loop does after one exit.
enum Next {
    Continue,
    Crash(String),
}

/// Lets KVM finish an MMIO or port access whose data we supplied: it completes only on the next
/// `KVM_RUN`, and state saved before that would replay the access on the destination.
fn complete_pending_io(vcpu: &mut Vcpu) {
    vcpu.fd.set_kvm_immediate_exit(1);
    // EINTR is the expected answer; anything else will show up on the next real run.
    let _ = vcpu.fd.run();
    vcpu.fd.set_kvm_immediate_exit(0);
}

fn run_loop(vcpu: &Mutex<Vcpu>, ctx: &VcpuThreadContext) {
    loop {
        if !ctx.run.unimpeded() {
            if ctx.run.requested() != Requested::Running {
                complete_pending_io(&mut lock(vcpu));
                if !ctx.run.park_vcpu() {
                    return;
                }
            }
            ctx.run.throttle_wait();
        }
        let mut v = lock(vcpu);
        let next = match v.fd.run() {
            Ok(exit) => handle_exit(exit, ctx),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Next::Continue,
            Err(e) => Next::Crash(format!("KVM_RUN failed: {e}")),
        };
        if let Next::Crash(why) = next {
            let report = crash_report(&mut v, &why);
            ctx.run.request_stop(StopReason::Crash(report));
        }
    }
}

fn handle_exit(exit: VcpuExit<'_>, ctx: &VcpuThreadContext) -> Next {
    let s = &ctx.stats;
    match exit {
        VcpuExit::MmioRead(addr, data) => {
            s.mmio_read.fetch_add(1, Ordering::Relaxed);
            if !ctx.devices.mmio_read(addr, data) {
                s.unhandled.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(addr, "MMIO read from no device");
            }
        }
        VcpuExit::MmioWrite(addr, data) => {
            s.mmio_write.fetch_add(1, Ordering::Relaxed);
            if !ctx.devices.mmio_write(addr, data) {
                s.unhandled.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(addr, "MMIO write to no device");
            }
        }
        VcpuExit::IoIn(port, data) => {
            s.io_in.fetch_add(1, Ordering::Relaxed);
            if !ctx.devices.pio_read(port, data) {
                s.unhandled.fetch_add(1, Ordering::Relaxed);
            }
        }
        VcpuExit::IoOut(port, data) => {
            s.io_out.fetch_add(1, Ordering::Relaxed);
            if !ctx.devices.pio_write(port, data) {
                s.unhandled.fetch_add(1, Ordering::Relaxed);
            }
        }
        VcpuExit::Hlt => {
            // With an in-kernel irqchip KVM handles HLT itself; without one, a halted guest
            // with interrupts off can never wake up.
            return Next::Crash("guest halted with no way to wake it (HLT exit)".into());
        }
        VcpuExit::Shutdown => return Next::Crash("guest shutdown (triple fault)".into()),
        VcpuExit::FailEntry(reason, cpu) => {
            return Next::Crash(format!(
                "VM entry failed: hardware reason {reason:#x} on host CPU {cpu}"
            ))
        }
        VcpuExit::InternalError => return Next::Crash("KVM internal error".into()),
        VcpuExit::SystemEvent(kind, _) => {
            return Next::Crash(format!("guest system event {kind} (reset or shutdown)"))
        }
        VcpuExit::Intr => {}
        other => return Next::Crash(format!("unexpected exit {other:?}")),
    }
    Next::Continue
}

/// The KVM internal-error sub-reason, read from the shared `kvm_run` page.
fn internal_error_detail(vcpu: &mut Vcpu) -> Option<String> {
    let run = vcpu.fd.get_kvm_run();
    if run.exit_reason != kvm_bindings::KVM_EXIT_INTERNAL_ERROR {
        return None;
    }
    // SAFETY: exit_reason says the `internal` member of the union is the live one.
    let internal = unsafe { run.__bindgen_anon_1.internal };
    let what = match internal.suberror {
        1 => "emulation failure",
        2 => "simultaneous exceptions",
        3 => "delivery event failure",
        _ => "unknown",
    };
    let n = (internal.ndata as usize).min(internal.data.len());
    Some(format!(
        "suberror {} ({what}), data {:x?}",
        internal.suberror,
        &internal.data[..n]
    ))
}

/// A report of a crashed vCPU: why, and its registers.
fn crash_report(vcpu: &mut Vcpu, why: &str) -> String {
    let mut out = format!("vCPU {} stopped: {why}", vcpu.index);
    if let Some(detail) = internal_error_detail(vcpu) {
        out.push_str(&format!("\n  {detail}"));
    }
    if let Ok(r) = vcpu.fd.get_regs() {
        out.push_str(&format!(
            "\n  rip={:#018x} rsp={:#018x} rflags={:#x}\n  rax={:#018x} rbx={:#018x} rcx={:#018x} rdx={:#018x}\n  rsi={:#018x} rdi={:#018x} rbp={:#018x}",
            r.rip, r.rsp, r.rflags, r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp
        ));
    }
    if let Ok(s) = vcpu.fd.get_sregs() {
        out.push_str(&format!(
            "\n  cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x}\n  cs={:#x} (dpl {}, l {}) ss={:#x}",
            s.cr0, s.cr2, s.cr3, s.cr4, s.efer, s.cs.selector, s.cs.dpl, s.cs.l, s.ss.selector
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lvt_mode_replaces_only_the_delivery_mode() {
        let mut lapic = kvm_lapic_state::default();
        lapic.regs[APIC_LVT_LINT0] = 0x20;
        lapic.regs[APIC_LVT_LINT0 + 2] = 1;
        set_lvt_mode(&mut lapic, APIC_LVT_LINT0, APIC_MODE_EXTINT);
        assert_eq!(lapic.regs[APIC_LVT_LINT0] as u8, 0x20);
        assert_eq!(lapic.regs[APIC_LVT_LINT0 + 1] as u8, 0x07);
        assert_eq!(lapic.regs[APIC_LVT_LINT0 + 2] as u8, 1);
    }
}
