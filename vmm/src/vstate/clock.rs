//! The VM clock: nanoseconds of guest running time. It stops while the VM is paused, so a
//! paused or migrating guest does not see time jump, and it can be restored to a saved value.
use std::time::Instant;

#[derive(Clone, Copy, Debug)]
pub struct VmClock {
    /// Time accumulated before `running_since`.
    base_ns: u64,
    running_since: Option<Instant>,
}

impl VmClock {
    /// A stopped clock reading `ns`.
    pub fn stopped_at(ns: u64) -> Self {
        Self {
            base_ns: ns,
            running_since: None,
        }
    }

    pub fn now_ns(&self) -> u64 {
        let running = self
            .running_since
            .map_or(0, |t| t.elapsed().as_nanos() as u64);
        self.base_ns.saturating_add(running)
    }

    pub fn start(&mut self) {
        if self.running_since.is_none() {
            self.running_since = Some(Instant::now());
        }
    }

    pub fn stop(&mut self) {
        self.base_ns = self.now_ns();
        self.running_since = None;
    }

    pub fn is_running(&self) -> bool {
        self.running_since.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn stops_while_stopped_and_continues_from_where_it_was() {
        let mut c = VmClock::stopped_at(1_000);
        assert_eq!(c.now_ns(), 1_000);
        c.start();
        std::thread::sleep(Duration::from_millis(5));
        c.stop();
        let t = c.now_ns();
        assert!(t >= 1_000 + 5_000_000);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(c.now_ns(), t);
    }
}
