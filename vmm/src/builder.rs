//! Builds a VM: from a kernel ([`build`]), or from saved state ([`build_restored`]), which is
//! how snapshots are restored and how a migration destination receives its VM.
use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use crate::boot::{self, BootError};
use crate::config::{ConfigError, VmConfig};
use crate::controller::VmController;
use crate::devices::boot_timer::BootTimer;
use crate::devices::control::Control;
use crate::devices::event_loop::EventLoopError;
use crate::devices::serial::{self, Irq, COM1_IRQ};
use crate::devices::virtio::block::{Block, BlockError, DiskConfig};
use crate::devices::virtio::net::{self as virtio_net, Net, NetConfig, NetError};
use crate::devices::virtio::{self, transport::QUEUE_NOTIFY};
use crate::devices::Devices;
use crate::persist::{MachineState, VmState};
use crate::vstate::memory::{self, Backing, GuestMemory, MemoryError};
use crate::vstate::run_control::RunControl;
use crate::vstate::vcpu::{self, ExitStats, Vcpu, VcpuError};
use crate::vstate::vcpu_state::{self, VcpuStateError};
use crate::vstate::vm::{Vm, VmError};
use crate::vstate::vm_state::{self, VmStateError};

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
    #[error("cannot restore vCPU state")]
    VcpuState(#[from] VcpuStateError),
    #[error(transparent)]
    VmState(#[from] VmStateError),
    #[error("cannot create the serial interrupt eventfd")]
    EventFd(#[source] std::io::Error),
    #[error("the saved state is inconsistent: {0}")]
    BadState(String),
    #[error("cannot restore the serial port: {0}")]
    Serial(String),
    #[error("cannot set up network device {index} (tap {tap})")]
    Net {
        index: usize,
        tap: String,
        source: NetError,
    },
    #[error("cannot set up disk {index} ({path})")]
    Disk {
        index: usize,
        path: String,
        source: BlockError,
    },
    #[error(transparent)]
    EventLoop(#[from] EventLoopError),
}

/// A VM with its vCPUs configured; [`BuiltVm::start`] runs them.
pub struct BuiltVm {
    pub controller: Arc<VmController>,
    vcpus: Vec<Vcpu>,
    /// When the `vmm` process started: [`BuiltVm::start`] logs how long reaching running took.
    started: Instant,
}

/// The parts every VM has, before its vCPUs get a state.
struct Skeleton {
    vm: Vm,
    mem: GuestMemory,
    irq: Irq,
}

fn skeleton(
    machine: &MachineState,
    backing: &Backing,
    mem: Option<GuestMemory>,
) -> Result<Skeleton, BuildError> {
    let vm = Vm::new()?;
    let cfg = VmConfig::for_machine(machine, backing.clone());
    cfg.validate_for_host(&vm.kvm)?;
    let mem = match mem {
        Some(m) => m,
        None => memory::create(cfg.mem_bytes(), backing)?,
    };
    vm.register_memory(&mem, false)?;
    let irq = if machine.irqchip {
        vm.setup_irqchip()?;
        let evt =
            vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).map_err(BuildError::EventFd)?;
        vm.register_irqfd(&evt, COM1_IRQ)?;
        Irq::EventFd(evt)
    } else {
        Irq::None
    };
    Ok(Skeleton { vm, mem, irq })
}

/// The MSRs to save and restore, probed on a scratch vCPU so the guest's own vCPUs keep
/// exactly the state given them.
fn probe_msrs(vm: &Vm, machine: &MachineState) -> Result<Vec<u32>, BuildError> {
    let probe = Vcpu::new(vm, machine.vcpus)?;
    Ok(vcpu_state::msr_list(&vm.kvm, &probe.fd)?)
}

/// Opens each network device's tap and wires its kicks (ioeventfds) and, on irqchip machines,
/// its interrupt (an irqfd).
fn attach_net(
    vm: &Vm,
    mem: &GuestMemory,
    run: &Arc<RunControl>,
    configs: &[NetConfig],
    irqchip: bool,
) -> Result<Vec<Arc<Net>>, BuildError> {
    let mut nets = Vec::with_capacity(configs.len());
    for (index, cfg) in configs.iter().enumerate() {
        let err = |source| BuildError::Net {
            index,
            tap: cfg.tap.clone(),
            source,
        };
        let mut net = Net::open(cfg, mem.clone(), run.clone()).map_err(err)?;
        let notify = virtio::mmio_base(index) + QUEUE_NOTIFY;
        for q in [virtio_net::RX, virtio_net::TX] {
            let Some(kick) = net.kick_fd(q) else { continue };
            let addr = kvm_ioctls::IoEventAddress::Mmio(notify);
            // Without it every kick is an exit to user space, which `mmio_write` forwards.
            if let Err(e) = vm.fd.register_ioevent(kick, &addr, q as u32) {
                tracing::warn!("virtio-net {index}: no ioeventfd for queue {q}: {e}");
            }
        }
        if irqchip {
            let evt = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK)
                .map_err(BuildError::EventFd)?;
            vm.register_irqfd(&evt, virtio::irq(index))?;
            net.set_irq(evt);
        }
        tracing::info!(index, tap = cfg.tap, mac = %net.mac(), "virtio-net attached");
        nets.push(Arc::new(net));
    }
    Ok(nets)
}

/// Opens each disk image and wires its kick (an ioeventfd) and, on irqchip machines, its
/// interrupt; disk `i` takes the virtio window after the `first` network devices.
fn attach_disks(
    vm: &Vm,
    mem: &GuestMemory,
    run: &Arc<RunControl>,
    configs: &[DiskConfig],
    first: usize,
    irqchip: bool,
) -> Result<Vec<Arc<Block>>, BuildError> {
    let mut disks = Vec::with_capacity(configs.len());
    for (index, cfg) in configs.iter().enumerate() {
        let slot = first + index;
        let mut disk =
            Block::open(cfg, mem.clone(), run.clone()).map_err(|source| BuildError::Disk {
                index,
                path: cfg.path.display().to_string(),
                source,
            })?;
        let addr = kvm_ioctls::IoEventAddress::Mmio(virtio::mmio_base(slot) + QUEUE_NOTIFY);
        // Without it every kick is an exit to user space, which `mmio_write` forwards.
        if let Err(e) = vm.fd.register_ioevent(disk.kick_fd(), &addr, 0u32) {
            tracing::warn!("virtio-blk {index}: no ioeventfd: {e}");
        }
        if irqchip {
            let evt = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK)
                .map_err(BuildError::EventFd)?;
            vm.register_irqfd(&evt, virtio::irq(slot))?;
            disk.set_irq(evt);
        }
        tracing::info!(index, path = %cfg.path.display(), readonly = cfg.readonly,
            sectors = disk.sectors(), "virtio-blk attached");
        disks.push(Arc::new(disk));
    }
    Ok(disks)
}

struct Parts {
    vm: Vm,
    mem: GuestMemory,
    machine: MachineState,
    msrs: Vec<u32>,
    vcpus: Vec<Vcpu>,
}

fn finish(
    parts: Parts,
    uart: serial::Uart,
    run: Arc<RunControl>,
    timer: BootTimer,
    nets: Vec<Arc<Net>>,
    disks: Vec<Arc<Block>>,
) -> Result<BuiltVm, BuildError> {
    let started = timer.started();
    let control = Control::new(run.clone(), timer);
    let devices = Devices::with_virtio(uart, control, nets, disks)?;
    vcpu::install_kick_handler()?;
    let Parts {
        vm,
        mem,
        machine,
        msrs,
        vcpus,
    } = parts;
    let controller = Arc::new(VmController::new(
        machine,
        Arc::new(vm),
        mem,
        run,
        devices,
        Arc::new(ExitStats::default()),
        msrs,
        started,
    ));
    Ok(BuiltVm {
        controller,
        vcpus,
        started,
    })
}

/// Creates the VM for `cfg` and loads its kernel; the guest console goes to `console`.
pub fn build(
    cfg: &VmConfig,
    started: Instant,
    console: Box<dyn Write + Send>,
) -> Result<BuiltVm, BuildError> {
    let machine = cfg.machine();
    let sk = skeleton(&machine, &cfg.backing, None)?;
    let plan = boot::load(&sk.mem, cfg)?;
    let mut vcpus = Vec::with_capacity(plan.vcpus.len());
    for (index, boot) in plan.vcpus.iter().enumerate() {
        let vcpu = Vcpu::new(&sk.vm, index as u8)?;
        vcpu.configure(&sk.vm.kvm, cfg.vcpus, boot)?;
        vcpus.push(vcpu);
    }
    let run = Arc::new(RunControl::new(cfg.vcpus.into(), 0));
    let msrs = probe_msrs(&sk.vm, &machine)?;
    let nets = attach_net(&sk.vm, &sk.mem, &run, &cfg.net, machine.irqchip)?;
    let disks = attach_disks(
        &sk.vm,
        &sk.mem,
        &run,
        &cfg.disks,
        nets.len(),
        machine.irqchip,
    )?;
    let Skeleton { vm, mem, irq } = sk;
    let uart = serial::new(irq, console);
    let parts = Parts {
        vm,
        mem,
        machine,
        msrs,
        vcpus,
    };
    finish(parts, uart, run, BootTimer::new(started), nets, disks)
}

/// A VM of a known shape waiting for its state: memory slots registered, interrupt
/// controllers and vCPUs created, MSRs probed. A migration destination builds it while
/// pre-copy runs, so the switchover only applies state; nothing left costs time in proportion
/// to guest RAM.
pub struct Prepared {
    parts: Parts,
    irq: Irq,
}

/// Builds the empty VM for `machine`, with guest memory `mem` (filled now or later, before
/// [`BuiltVm::start`]) or fresh memory.
pub fn prepare(
    machine: &MachineState,
    backing: &Backing,
    mem: Option<GuestMemory>,
) -> Result<Prepared, BuildError> {
    let sk = skeleton(machine, backing, mem)?;
    let mut vcpus = Vec::with_capacity(machine.vcpus.into());
    for index in 0..machine.vcpus {
        vcpus.push(Vcpu::new(&sk.vm, index)?);
    }
    let msrs = probe_msrs(&sk.vm, machine)?;
    let Skeleton { vm, mem, irq } = sk;
    Ok(Prepared {
        parts: Parts {
            vm,
            mem,
            machine: machine.clone(),
            msrs,
            vcpus,
        },
        irq,
    })
}

impl Prepared {
    /// The guest memory, for a migration destination to fill.
    pub fn memory(&self) -> &GuestMemory {
        &self.parts.mem
    }

    /// Applies `state` to the prepared VM; it stays paused until started. `net` names this
    /// host's taps for the saved network devices, one each, in order (opening them is cheap, so
    /// it may happen inside the switchover); `disks` names this host's images for the saved
    /// disks, likewise.
    pub fn restore(
        self,
        state: &VmState,
        net: &[NetConfig],
        disks: &[DiskConfig],
        started: Instant,
        console: Box<dyn Write + Send>,
    ) -> Result<BuiltVm, BuildError> {
        let machine = &self.parts.machine;
        if state.machine != *machine {
            return Err(BuildError::BadState(
                "the state describes another machine".into(),
            ));
        }
        if state.vcpus.len() != usize::from(machine.vcpus) {
            return Err(BuildError::BadState(format!(
                "{} vCPU states for a {}-vCPU machine",
                state.vcpus.len(),
                machine.vcpus
            )));
        }
        if state.irqchip.is_some() != machine.irqchip {
            return Err(BuildError::BadState(
                "irqchip state does not match the machine".into(),
            ));
        }
        if state.net.len() != net.len() {
            return Err(ConfigError::NetMismatch {
                saved: state.net.len(),
                given: net.len(),
            }
            .into());
        }
        if state.disks.len() != disks.len() {
            return Err(ConfigError::DiskMismatch {
                saved: state.disks.len(),
                given: disks.len(),
            }
            .into());
        }
        if let Some(chip) = &state.irqchip {
            vm_state::restore(&self.parts.vm.fd, chip)?;
        }
        for (index, (vcpu, vs)) in self.parts.vcpus.iter().zip(&state.vcpus).enumerate() {
            vcpu_state::restore(&vcpu.fd, index as u8, vs)?;
        }
        let run = Arc::new(RunControl::new(machine.vcpus.into(), state.clock_ns));
        let p = &self.parts;
        let nets = attach_net(&p.vm, &p.mem, &run, net, machine.irqchip)?;
        for (index, (dev, saved)) in nets.iter().zip(&state.net).enumerate() {
            dev.restore(saved).map_err(|source| BuildError::Net {
                index,
                tap: dev.tap().name().into(),
                source,
            })?;
        }
        let first = nets.len();
        let blocks = attach_disks(&p.vm, &p.mem, &run, disks, first, machine.irqchip)?;
        for (index, (dev, saved)) in blocks.iter().zip(&state.disks).enumerate() {
            dev.restore(saved).map_err(|source| BuildError::Disk {
                index,
                path: disks[index].path.display().to_string(),
                source,
            })?;
        }
        let uart = serial::restore(&state.serial, self.irq, console)
            .map_err(|e| BuildError::Serial(format!("{e:?}")))?;
        let booted = state.boot_time_ns.map(std::time::Duration::from_nanos);
        let timer = BootTimer::restored(started, booted);
        let built = finish(self.parts, uart, run, timer, nets, blocks)?;
        // The restored VM is paused until started: its TSCs stand where they were saved.
        let tsc = state.vcpus.iter().map(|v| {
            v.msrs
                .iter()
                .find(|m| m.index == vcpu_state::MSR_IA32_TSC)
                .map_or(0, |m| m.data)
        });
        built.controller.set_paused_tsc(tsc.collect());
        Ok(built)
    }
}

/// Creates a VM from `state`, with guest memory `mem` already filled (or fresh). `net` names
/// this host's taps for the saved network devices, one each, in order; `disks` this host's
/// images for the saved disks.
pub fn build_restored(
    state: &VmState,
    mem: Option<GuestMemory>,
    backing: &Backing,
    net: &[NetConfig],
    disks: &[DiskConfig],
    started: Instant,
    console: Box<dyn Write + Send>,
) -> Result<BuiltVm, BuildError> {
    prepare(&state.machine, backing, mem)?.restore(state, net, disks, started, console)
}

impl BuiltVm {
    /// The guest memory, e.g. for a migration destination to fill before starting.
    pub fn memory(&self) -> &GuestMemory {
        self.controller.memory()
    }

    /// Starts one thread per vCPU and lets them run, or leaves them parked if `paused`.
    pub fn start(&mut self, paused: bool) -> Result<(), BuildError> {
        for vcpu in self.vcpus.drain(..) {
            self.controller.spawn_vcpu(vcpu)?;
        }
        if !paused {
            self.controller.devices().resume_io();
            self.controller.run_control().resume();
            // Benchmarks and tests read this: time from process start to a running guest.
            tracing::info!(
                ms = self.started.elapsed().as_secs_f64() * 1e3,
                "the VM is running"
            );
        }
        Ok(())
    }
}
