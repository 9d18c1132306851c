//! The control device: the guest's way to read the VM clock, idle until a deadline, mark boot
//! progress and end the VM. See `bench_abi::control` for the register map.
use std::sync::{Arc, Mutex};

use bench_abi::control::{BOOT_MARK, CLOCK_NS, EXIT, IDLE_UNTIL_NS};

use super::boot_timer::BootTimer;
use crate::vstate::run_control::{RunControl, StopReason};

pub struct Control {
    run: Arc<RunControl>,
    boot_timer: Mutex<BootTimer>,
}

/// Assembles a little-endian value from a 1-, 2-, 4- or 8-byte access.
fn value(data: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    let n = data.len().min(8);
    bytes[..n].copy_from_slice(&data[..n]);
    u64::from_le_bytes(bytes)
}

impl Control {
    pub fn new(run: Arc<RunControl>, boot_timer: BootTimer) -> Self {
        Self {
            run,
            boot_timer: Mutex::new(boot_timer),
        }
    }

    pub fn read(&self, offset: u64, data: &mut [u8]) {
        let v = match offset {
            CLOCK_NS => self.run.clock_ns(),
            _ => 0,
        };
        let bytes = v.to_le_bytes();
        let n = data.len().min(8);
        data[..n].copy_from_slice(&bytes[..n]);
    }

    /// Handles a write. IDLE_UNTIL_NS blocks the calling vCPU thread, which is the point.
    pub fn write(&self, offset: u64, data: &[u8]) {
        let v = value(data);
        match offset {
            EXIT => self.run.request_stop(StopReason::GuestExit(v as u8)),
            IDLE_UNTIL_NS => self.run.idle_until(v),
            BOOT_MARK => {
                self.boot_timer
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .mark(v);
            }
            _ => tracing::debug!(offset, "write to unknown control register"),
        }
    }

    pub fn boot_time(&self) -> Option<std::time::Duration> {
        self.boot_timer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .boot_time()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn exit_code_stops_the_vm_and_clock_reads_back() {
        let run = Arc::new(RunControl::new(1, 42));
        let c = Control::new(run.clone(), BootTimer::new(Instant::now()));
        let mut buf = [0u8; 8];
        c.read(CLOCK_NS, &mut buf);
        assert_eq!(u64::from_le_bytes(buf), 42);
        let mut small = [0u8; 4];
        c.read(CLOCK_NS, &mut small);
        assert_eq!(u32::from_le_bytes(small), 42);
        c.write(EXIT, &3u32.to_le_bytes());
        assert_eq!(run.stop_reason(), Some(StopReason::GuestExit(3)));
    }

    #[test]
    fn boot_mark_is_recorded() {
        let run = Arc::new(RunControl::new(1, 0));
        let c = Control::new(run, BootTimer::new(Instant::now()));
        assert!(c.boot_time().is_none());
        c.write(BOOT_MARK, &bench_abi::control::BOOT_DONE.to_le_bytes());
        assert!(c.boot_time().is_some());
    }
}
