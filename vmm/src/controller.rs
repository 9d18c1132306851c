//! Drives a running VM: pause, resume, status and shutdown, for the control socket and the
//! main thread alike.
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::{BootMode, VmConfig};
use crate::devices::bus::ExitCounts;
use crate::devices::Devices;
use crate::vstate::run_control::{Requested, RunControl, StopReason};
use crate::vstate::vcpu::{self, ExitStats};

/// How long a pause may take before we report that a vCPU would not stop.
const PARK_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a kick is repeated: one that lands outside `KVM_RUN` is lost.
const KICK_INTERVAL: Duration = Duration::from_millis(2);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ControlError {
    #[error("the VM is stopping")]
    Stopping,
    #[error("{parked} of {total} vCPUs stopped within {timeout:?}")]
    PauseTimeout {
        parked: usize,
        total: usize,
        timeout: Duration,
    },
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
}

pub struct VmController {
    cfg: VmConfig,
    run: Arc<RunControl>,
    devices: Arc<Devices>,
    stats: Arc<ExitStats>,
    started: Instant,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl VmController {
    pub fn new(
        cfg: VmConfig,
        run: Arc<RunControl>,
        devices: Arc<Devices>,
        stats: Arc<ExitStats>,
        started: Instant,
    ) -> Self {
        Self {
            cfg,
            run,
            devices,
            stats,
            started,
            threads: Mutex::new(Vec::new()),
        }
    }

    pub fn add_thread(&self, handle: JoinHandle<()>) {
        self.threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(handle);
    }

    /// Kicks every vCPU until all are parked, or the timeout passes.
    fn park_all(&self) -> Result<(), ControlError> {
        let deadline = Instant::now() + PARK_TIMEOUT;
        loop {
            if self.run.wait_all_parked(KICK_INTERVAL) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(ControlError::PauseTimeout {
                    parked: self.run.parked(),
                    total: self.cfg.vcpus.into(),
                    timeout: PARK_TIMEOUT,
                });
            }
            for t in self
                .threads
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
            {
                vcpu::kick(t);
            }
        }
    }

    /// Pauses the VM and returns once every vCPU has left guest mode.
    pub fn pause(&self) -> Result<(), ControlError> {
        if !self.run.request_pause() {
            return Err(ControlError::Stopping);
        }
        self.park_all()
    }

    pub fn resume(&self) -> Result<(), ControlError> {
        if self.run.requested() == Requested::Stopped {
            return Err(ControlError::Stopping);
        }
        self.run.resume();
        Ok(())
    }

    pub fn shutdown(&self) {
        self.run.request_stop(StopReason::Shutdown);
    }

    pub fn status(&self) -> Status {
        Status {
            state: self.run.requested(),
            boot: self.cfg.boot,
            vcpus: self.cfg.vcpus,
            memory_mib: self.cfg.mem_mib,
            uptime_ms: self.started.elapsed().as_millis() as u64,
            vm_clock_ms: self.run.clock_ns() / 1_000_000,
            boot_time_ms: self
                .devices
                .control
                .boot_time()
                .map(|d| d.as_secs_f64() * 1e3),
            exits: self.stats.snapshot(),
        }
    }

    /// Blocks until the VM stops, then stops and joins every vCPU thread.
    pub fn wait(&self) -> StopReason {
        let reason = self.run.wait_for_stop();
        if let Err(e) = self.park_all() {
            tracing::error!("vCPUs did not stop: {e}");
        }
        let threads: Vec<_> = self
            .threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect();
        for t in threads {
            if t.join().is_err() {
                tracing::error!("a vCPU thread panicked");
            }
        }
        self.devices.flush_console();
        reason
    }
}
