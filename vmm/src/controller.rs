//! Drives a running VM: pause, resume, status, state capture and shutdown, for the control
//! socket, the migration engine and the main thread alike.
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::builder::BuildError;
use crate::config::BootMode;
use crate::devices::bus::ExitCounts;
use crate::devices::Devices;
use crate::persist::{MachineState, VmState};
use crate::vstate::memory::GuestMemory;
use crate::vstate::run_control::{Requested, RunControl, StopReason};
use crate::vstate::vcpu::{self, ExitStats, SharedVcpu, Vcpu, VcpuThreadContext};
use crate::vstate::vcpu_state::{self, VcpuStateError};
use crate::vstate::vm::Vm;
use crate::vstate::vm_state::{self, VmStateError};

/// How long a pause may take before we report that a vCPU would not stop.
const PARK_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a kick is repeated: one that lands outside `KVM_RUN` is lost.
const KICK_INTERVAL: Duration = Duration::from_millis(2);

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("the VM is stopping")]
    Stopping,
    #[error("the VM must be paused first")]
    NotPaused,
    #[error("{parked} of {total} vCPUs stopped within {timeout:?}")]
    PauseTimeout {
        parked: usize,
        total: usize,
        timeout: Duration,
    },
    #[error("cannot capture vCPU state")]
    VcpuState(#[from] VcpuStateError),
    #[error(transparent)]
    VmState(#[from] VmStateError),
    #[error("the VM stays paused: another VM may be running it")]
    DiskInUse(#[source] crate::devices::virtio::block::BlockError),
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Status {
    pub state: Requested,
    pub boot: BootMode,
    pub vcpus: u8,
    pub memory_mib: u64,
    pub uptime_ms: u64,
    /// Guest running time on the VM clock, which stops while paused.
    pub vm_clock_ms: u64,
    pub boot_time_ms: Option<f64>,
    pub exits: ExitCounts,
    /// Per virtio-net device: frames, bytes, drops and queue kicks.
    pub net: Vec<crate::devices::virtio::net::NetCounters>,
    /// Per virtio-blk device: requests, failed requests and queue kicks.
    pub disks: Vec<crate::devices::virtio::block::BlockCounters>,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub struct VmController {
    machine: MachineState,
    vm: Arc<Vm>,
    mem: GuestMemory,
    run: Arc<RunControl>,
    devices: Arc<Devices>,
    stats: Arc<ExitStats>,
    msr_indices: Vec<u32>,
    started: Instant,
    threads: Mutex<Vec<JoinHandle<()>>>,
    vcpus: Mutex<Vec<SharedVcpu>>,
    /// Each vCPU's TSC when the VM paused: written back on resume so a paused guest sees no
    /// time pass, and saved in snapshots so that save-restore-save is byte-identical.
    paused_tsc: Mutex<Option<Vec<u64>>>,
    /// Auto-converge duty cycle in percent; a thread enforces it while it is above zero.
    throttle: Arc<std::sync::atomic::AtomicU8>,
}

/// How long a VM resumed after a failed migration keeps trying to take its disk images'
/// locks back from a destination that has not exited yet.
const LOCK_RETRY: Duration = Duration::from_secs(30);

/// Auto-converge period: vCPUs are held out of the guest for a share of every period.
const THROTTLE_PERIOD: Duration = Duration::from_millis(10);

impl VmController {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        machine: MachineState,
        vm: Arc<Vm>,
        mem: GuestMemory,
        run: Arc<RunControl>,
        devices: Arc<Devices>,
        stats: Arc<ExitStats>,
        msr_indices: Vec<u32>,
        started: Instant,
    ) -> Self {
        Self {
            machine,
            vm,
            mem,
            run,
            devices,
            stats,
            msr_indices,
            started,
            threads: Mutex::new(Vec::new()),
            vcpus: Mutex::new(Vec::new()),
            paused_tsc: Mutex::new(None),
            throttle: Arc::new(std::sync::atomic::AtomicU8::new(0)),
        }
    }

    pub fn memory(&self) -> &GuestMemory {
        &self.mem
    }

    pub fn vm(&self) -> &Vm {
        &self.vm
    }

    pub fn machine(&self) -> &MachineState {
        &self.machine
    }

    pub fn run_control(&self) -> &RunControl {
        &self.run
    }

    pub fn devices(&self) -> &Devices {
        &self.devices
    }

    /// Starts the thread for `vcpu`; it parks until the VM runs.
    pub fn spawn_vcpu(&self, vcpu: Vcpu) -> Result<(), BuildError> {
        let vcpu = Arc::new(Mutex::new(vcpu));
        locked(&self.vcpus).push(vcpu.clone());
        let ctx = VcpuThreadContext {
            run: self.run.clone(),
            devices: self.devices.clone(),
            stats: self.stats.clone(),
        };
        let handle = vcpu::spawn(vcpu, ctx)?;
        locked(&self.threads).push(handle);
        Ok(())
    }

    /// Kicks every vCPU until all are parked, or the timeout passes. The first kick goes at
    /// once: a vCPU in guest mode does not see the request until kicked, so waiting first
    /// added a whole kick interval (2 ms) to every pause, and so to every downtime.
    fn park_all(&self) -> Result<(), ControlError> {
        let deadline = Instant::now() + PARK_TIMEOUT;
        loop {
            for t in locked(&self.threads).iter() {
                vcpu::kick(t);
            }
            if self.run.wait_all_parked(KICK_INTERVAL) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(ControlError::PauseTimeout {
                    parked: self.run.parked(),
                    total: self.machine.vcpus.into(),
                    timeout: PARK_TIMEOUT,
                });
            }
        }
    }

    /// Holds every vCPU out of the guest for `percent` of each period, as QEMU's
    /// auto-converge does; 0 stops throttling.
    pub fn set_throttle(self: &Arc<Self>, percent: u8) {
        use std::sync::atomic::Ordering;
        let percent = percent.min(99);
        let previous = self.throttle.swap(percent, Ordering::AcqRel);
        if percent == 0 {
            self.run.throttle_until(None);
            return;
        }
        if previous != 0 {
            return; // the thread is already running and picks up the new value
        }
        let me = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("throttle".into())
            .spawn(move || loop {
                let Some(vm) = me.upgrade() else { return };
                let pct = vm.throttle.load(Ordering::Acquire);
                if pct == 0 {
                    vm.run.throttle_until(None);
                    return;
                }
                let hold = THROTTLE_PERIOD * u32::from(pct) / 100;
                vm.run.throttle_until(Some(Instant::now() + hold));
                for t in locked(&vm.threads).iter() {
                    vcpu::kick(t);
                }
                drop(vm);
                std::thread::sleep(THROTTLE_PERIOD);
            });
        if let Err(e) = spawned {
            tracing::warn!("cannot start the throttle thread: {e}");
            self.throttle.store(0, Ordering::Release);
        }
    }

    /// Records the TSCs a paused VM resumes with (a restored VM's saved values).
    pub fn set_paused_tsc(&self, values: Vec<u64>) {
        *locked(&self.paused_tsc) = Some(values);
    }

    /// Pauses the VM and returns once every vCPU has left guest mode.
    pub fn pause(&self) -> Result<(), ControlError> {
        if !self.run.request_pause() {
            return Err(ControlError::Stopping);
        }
        self.park_all()?;
        // With every vCPU out, the devices stop too: a paused VM's memory and device state
        // hold still (a migration's final pass and state capture rely on it).
        self.devices.pause_io();
        let mut tsc = locked(&self.paused_tsc);
        if tsc.is_none() {
            let mut values = Vec::new();
            for v in locked(&self.vcpus).iter() {
                let v = vcpu::lock(v);
                values.push(vcpu_state::read_tsc(&v.fd, v.index)?);
            }
            *tsc = Some(values);
        }
        Ok(())
    }

    /// Resumes a paused VM. One that let go of its disk images' locks (it was migrating away)
    /// takes them back first and stays paused if another VM holds one: after a migration whose
    /// outcome is unknown, that is the destination running this guest.
    pub fn resume(&self) -> Result<(), ControlError> {
        if self.run.requested() == Requested::Stopped {
            return Err(ControlError::Stopping);
        }
        self.devices
            .retake_disk_images()
            .map_err(ControlError::DiskInUse)?;
        self.resume_vcpus()
    }

    /// Resumes the VM after a migration that failed or was cancelled before `Commit`: the
    /// destination never ran the guest, but it may hold the disk images' locks until it sees
    /// the migration end. The VM runs at once and takes them back as soon as they are free.
    pub fn resume_after_failed_migration(self: &Arc<Self>) -> Result<(), ControlError> {
        if self.run.requested() == Requested::Stopped {
            return Err(ControlError::Stopping);
        }
        if self.devices.retake_disk_images().is_err() {
            self.retake_disk_images_later();
        }
        self.resume_vcpus()
    }

    /// Retries the disk images' locks in the background, for [`LOCK_RETRY`] at most.
    fn retake_disk_images_later(self: &Arc<Self>) {
        let me = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("disk-locks".into())
            .spawn(move || {
                let deadline = Instant::now() + LOCK_RETRY;
                loop {
                    let Some(vm) = me.upgrade() else { return };
                    if vm.run.requested() == Requested::Stopped {
                        return;
                    }
                    match vm.devices.retake_disk_images() {
                        Ok(()) => {
                            tracing::info!("took the disk images' locks back");
                            return;
                        }
                        Err(e) if Instant::now() > deadline => {
                            tracing::error!("running without a disk image lock: {e}");
                            return;
                        }
                        Err(_) => {}
                    }
                    drop(vm);
                    std::thread::sleep(Duration::from_millis(20));
                }
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start the thread that retakes the disk locks: {e}");
        }
    }

    fn resume_vcpus(&self) -> Result<(), ControlError> {
        if let Some(values) = locked(&self.paused_tsc).take() {
            for (v, tsc) in locked(&self.vcpus).iter().zip(values) {
                let v = vcpu::lock(v);
                let entry = kvm_bindings::kvm_msr_entry {
                    index: vcpu_state::MSR_IA32_TSC,
                    data: tsc,
                    ..Default::default()
                };
                vcpu_state::write_msrs(&v.fd, v.index, &[entry])?;
            }
        }
        self.devices.resume_io();
        self.run.resume();
        Ok(())
    }

    /// Captures the whole VM state except memory. The VM must be paused.
    pub fn save_state(&self) -> Result<VmState, ControlError> {
        if self.run.requested() != Requested::Paused
            || self.run.parked() < self.machine.vcpus.into()
        {
            return Err(ControlError::NotPaused);
        }
        let tsc = locked(&self.paused_tsc).clone();
        let mut vcpus = Vec::new();
        for (i, v) in locked(&self.vcpus).iter().enumerate() {
            let v = vcpu::lock(v);
            let t = tsc.as_ref().and_then(|t| t.get(i).copied());
            vcpus.push(vcpu_state::save(
                &v.fd,
                v.index,
                &self.msr_indices,
                self.machine.irqchip,
                t,
            )?);
        }
        let irqchip = match self.machine.irqchip {
            true => Some(vm_state::save(&self.vm.fd)?),
            false => None,
        };
        Ok(VmState {
            machine: self.machine.clone(),
            clock_ns: self.run.clock_ns(),
            vcpus,
            irqchip,
            serial: self.devices.serial_snapshot(),
            boot_time_ns: self
                .devices
                .control
                .boot_time()
                .map(|d| d.as_nanos() as u64),
            net: self.devices.net().iter().map(|n| n.snapshot()).collect(),
            disks: self.devices.disks().iter().map(|d| d.snapshot()).collect(),
        })
    }

    pub fn shutdown(&self) {
        self.run.request_stop(StopReason::Shutdown);
    }

    /// Stops the VM for `reason` (e.g. it migrated away).
    pub fn stop(&self, reason: StopReason) {
        self.run.request_stop(reason);
    }

    pub fn status(&self) -> Status {
        Status {
            state: self.run.requested(),
            boot: self.machine.boot,
            vcpus: self.machine.vcpus,
            memory_mib: self.machine.mem_mib,
            uptime_ms: self.started.elapsed().as_millis() as u64,
            vm_clock_ms: self.run.clock_ns() / 1_000_000,
            boot_time_ms: self
                .devices
                .control
                .boot_time()
                .map(|d| d.as_secs_f64() * 1e3),
            exits: self.stats.snapshot(),
            net: self.devices.net().iter().map(|n| n.counters()).collect(),
            disks: self.devices.disks().iter().map(|d| d.counters()).collect(),
        }
    }

    /// Blocks until the VM stops, then stops and joins every vCPU thread.
    pub fn wait(&self) -> StopReason {
        let reason = self.run.wait_for_stop();
        if let Err(e) = self.park_all() {
            tracing::error!("vCPUs did not stop: {e}");
        }
        let threads: Vec<_> = locked(&self.threads).drain(..).collect();
        for t in threads {
            if t.join().is_err() {
                tracing::error!("a vCPU thread panicked");
            }
        }
        self.devices.flush_console();
        reason
    }
}
