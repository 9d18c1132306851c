//! Guest boot-time measurement, in the spirit of Firecracker's boot timer: the guest writes a
//! marker and the VMM logs how long it took to get there since `vmm run` started.
use std::time::{Duration, Instant};

pub struct BootTimer {
    started: Instant,
    booted: Option<Duration>,
}

impl BootTimer {
    pub fn new(started: Instant) -> Self {
        Self {
            started,
            booted: None,
        }
    }

    /// A timer for a restored or migrated guest, which keeps the boot time it measured first.
    pub fn restored(started: Instant, booted: Option<Duration>) -> Self {
        Self { started, booted }
    }

    /// Records marker `value`; the first [`bench_abi::control::BOOT_DONE`] is the boot time.
    pub fn mark(&mut self, value: u64) -> Duration {
        let elapsed = self.started.elapsed();
        if value == bench_abi::control::BOOT_DONE && self.booted.is_none() {
            self.booted = Some(elapsed);
            tracing::info!(boot_ms = elapsed.as_secs_f64() * 1e3, "guest booted");
        } else {
            tracing::info!(
                value,
                at_ms = elapsed.as_secs_f64() * 1e3,
                "guest boot marker"
            );
        }
        elapsed
    }

    /// When the VMM process started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Time from process start to the guest's boot-done marker, once it has written one.
    pub fn boot_time(&self) -> Option<Duration> {
        self.booted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_first_done_marker_counts() {
        let mut t = BootTimer::new(Instant::now());
        t.mark(7);
        assert!(t.boot_time().is_none());
        let first = t.mark(bench_abi::control::BOOT_DONE);
        t.mark(bench_abi::control::BOOT_DONE);
        assert_eq!(t.boot_time(), Some(first));
        let mut moved = BootTimer::restored(Instant::now(), Some(first));
        moved.mark(bench_abi::control::BOOT_DONE);
        assert_eq!(moved.boot_time(), Some(first));
    }
}
