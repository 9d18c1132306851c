//! Builds a running VM from a [`VmConfig`]: memory, KVM VM, devices, guest image, vCPUs.
use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use crate::boot::{self, BootError};
use crate::config::{host_mem_mib, ConfigError, VmConfig};
use crate::controller::VmController;
use crate::devices::boot_timer::BootTimer;
use crate::devices::control::Control;
use crate::devices::serial::{self, Irq, COM1_IRQ};
use crate::devices::Devices;
use crate::vstate::memory::{self, GuestMemory, MemoryError};
use crate::vstate::run_control::RunControl;
use crate::vstate::vcpu::{self, ExitStats, Vcpu, VcpuError, VcpuThreadContext};
use crate::vstate::vm::{Vm, VmError};

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("invalid VM configuration")]
    Config(#[from] ConfigError),
    #[error("cannot set up guest memory")]
    Memory(#[from] MemoryError),
    #[error("cannot load the guest")]
    Boot(#[from] BootError),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error("cannot create the serial interrupt eventfd")]
    EventFd(#[source] std::io::Error),
}

/// A VM whose vCPUs are created and configured but not yet running.
pub struct BuiltVm {
    pub vm: Vm,
    pub mem: GuestMemory,
    pub controller: Arc<VmController>,
    vcpus: Vec<Vcpu>,
    ctx: (Arc<RunControl>, Arc<Devices>, Arc<ExitStats>),
}

/// Creates the VM for `cfg`, sending the guest console to `console`.
pub fn build(
    cfg: &VmConfig,
    started: Instant,
    console: Box<dyn Write + Send>,
) -> Result<BuiltVm, BuildError> {
    let mut vm = Vm::new()?;
    cfg.validate(
        vm.kvm.get_max_vcpus() as u32,
        host_mem_mib().unwrap_or(u64::MAX),
    )?;
    let mem = memory::create(cfg.mem_bytes(), &cfg.backing)?;
    let plan = boot::load(&mem, cfg)?;
    vm.register_memory(&mem, false)?;

    let irq = if plan.needs_irqchip {
        vm.setup_irqchip()?;
        let evt =
            vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).map_err(BuildError::EventFd)?;
        vm.register_irqfd(&evt, COM1_IRQ)?;
        Irq::EventFd(evt)
    } else {
        Irq::None
    };

    let run = Arc::new(RunControl::new(cfg.vcpus.into(), 0));
    let control = Control::new(run.clone(), BootTimer::new(started));
    let devices = Devices::new(serial::new(irq, console), control);
    let stats = Arc::new(ExitStats::default());

    let mut vcpus = Vec::with_capacity(plan.vcpus.len());
    for (index, boot) in plan.vcpus.iter().enumerate() {
        let vcpu = Vcpu::new(&vm, index as u8)?;
        vcpu.configure(&vm.kvm, cfg.vcpus, boot)?;
        vcpus.push(vcpu);
    }
    vcpu::install_kick_handler()?;
    let controller = Arc::new(VmController::new(
        cfg.clone(),
        run.clone(),
        devices.clone(),
        stats.clone(),
        started,
    ));
    Ok(BuiltVm {
        vm,
        mem,
        controller,
        vcpus,
        ctx: (run, devices, stats),
    })
}

impl BuiltVm {
    /// Starts one thread per vCPU and lets them run.
    pub fn start(&mut self) -> Result<(), BuildError> {
        let (run, devices, stats) = &self.ctx;
        for vcpu in self.vcpus.drain(..) {
            let ctx = VcpuThreadContext {
                run: run.clone(),
                devices: devices.clone(),
                stats: stats.clone(),
            };
            let handle = vcpu::spawn(vcpu, ctx)?;
            self.controller.add_thread(handle);
        }
        run.resume();
        Ok(())
    }
}
