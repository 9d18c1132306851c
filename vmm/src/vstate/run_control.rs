//! Coordination between the vCPU threads and whoever drives the VM (the control socket, the
//! main thread): run, pause, stop, and the guest's paravirtual idle.
//!
//! Every vCPU thread checks the requested state before each `KVM_RUN`. A vCPU spinning inside
//! guest code is kicked out of `KVM_RUN` with a signal (see `vcpu::kick`); a request is only
//! complete once every vCPU has reported that it is parked.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use super::clock::VmClock;

/// What the driver wants the vCPUs to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Requested {
    Running,
    Paused,
    Stopped,
}

/// Why the VM stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The guest wrote an exit code to the control device.
    GuestExit(u8),
    /// The guest crashed; the report names the vCPU, the exit and its registers.
    Crash(String),
    /// Someone asked for shutdown through the control socket.
    Shutdown,
    /// The VMM itself failed while running the guest.
    VmmError(String),
    /// The VM now runs on another host.
    Migrated,
}

struct Inner {
    requested: Requested,
    /// vCPUs currently parked (paused or finished).
    parked: usize,
    stop_reason: Option<StopReason>,
    clock: VmClock,
    /// Bumped when a device has work for the guest; wakes idle vCPUs.
    device_events: u64,
    /// Auto-converge: vCPUs stay out of the guest until this instant.
    throttle_until: Option<std::time::Instant>,
}

pub struct RunControl {
    vcpus: usize,
    inner: Mutex<Inner>,
    changed: Condvar,
    /// Mirrors "running and not throttled" so a vCPU checks it per exit without the lock.
    unimpeded: AtomicBool,
}

impl RunControl {
    /// A paused VM of `vcpus` vCPUs whose clock reads `clock_ns`.
    pub fn new(vcpus: usize, clock_ns: u64) -> Self {
        Self {
            vcpus,
            inner: Mutex::new(Inner {
                requested: Requested::Paused,
                parked: 0,
                stop_reason: None,
                clock: VmClock::stopped_at(clock_ns),
                device_events: 0,
                throttle_until: None,
            }),
            changed: Condvar::new(),
            unimpeded: AtomicBool::new(false),
        }
    }

    /// Wakes everyone waiting and republishes the lock-free summary; called after every change.
    fn changed(&self, g: &Inner) {
        let free = g.requested == Requested::Running && g.throttle_until.is_none();
        self.unimpeded.store(free, Ordering::Release);
        self.changed.notify_all();
    }

    /// True while the VM runs unthrottled: the vCPU loop's per-exit check, which takes no lock.
    /// A change to false is followed by a kick, so a vCPU sees it before its next guest entry.
    pub fn unimpeded(&self) -> bool {
        self.unimpeded.load(Ordering::Acquire)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A vCPU thread that panicked holding the lock must not take the VMM down with it: the
        // state is a handful of plain values that stay consistent between statements.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn requested(&self) -> Requested {
        self.lock().requested
    }

    pub fn clock_ns(&self) -> u64 {
        self.lock().clock.now_ns()
    }

    pub fn stop_reason(&self) -> Option<StopReason> {
        self.lock().stop_reason.clone()
    }

    /// Asks the vCPUs to run; the clock starts.
    pub fn resume(&self) {
        let mut g = self.lock();
        if g.requested == Requested::Paused {
            g.requested = Requested::Running;
            g.clock.start();
            self.changed(&g);
        }
    }

    /// Asks the vCPUs to park; the clock stops. Returns false if the VM is stopping.
    pub fn request_pause(&self) -> bool {
        let mut g = self.lock();
        match g.requested {
            Requested::Stopped => false,
            _ => {
                g.requested = Requested::Paused;
                g.clock.stop();
                self.changed(&g);
                true
            }
        }
    }

    /// Asks the VM to stop for `reason`; the first reason wins.
    pub fn request_stop(&self, reason: StopReason) {
        let mut g = self.lock();
        g.requested = Requested::Stopped;
        g.clock.stop();
        g.stop_reason.get_or_insert(reason);
        self.changed(&g);
    }

    /// Waits until every vCPU is parked or `timeout` passes; true if they all are.
    pub fn wait_all_parked(&self, timeout: Duration) -> bool {
        let g = self.lock();
        let (g, _) = self
            .changed
            .wait_timeout_while(g, timeout, |g| g.parked < self.vcpus)
            .unwrap_or_else(|e| e.into_inner());
        g.parked >= self.vcpus
    }

    /// How many vCPUs are parked now.
    pub fn parked(&self) -> usize {
        self.lock().parked
    }

    /// Waits until the VM is asked to stop, then returns why.
    pub fn wait_for_stop(&self) -> StopReason {
        let g = self.lock();
        let g = self
            .changed
            .wait_while(g, |g| g.requested != Requested::Stopped)
            .unwrap_or_else(|e| e.into_inner());
        g.stop_reason.clone().unwrap_or(StopReason::Shutdown)
    }

    /// Called by a vCPU thread when [`Self::requested`] is not `Running`: parks while paused.
    /// Returns false when the vCPU must exit its loop.
    pub fn park_vcpu(&self) -> bool {
        let mut g = self.lock();
        if g.requested == Requested::Running {
            return true;
        }
        g.parked += 1;
        self.changed.notify_all();
        while g.requested == Requested::Paused {
            g = self.changed.wait(g).unwrap_or_else(|e| e.into_inner());
        }
        if g.requested == Requested::Stopped {
            // Stay counted as parked: a stopped vCPU never runs again.
            return false;
        }
        g.parked -= 1;
        true
    }

    /// The paravirtual `hlt`: blocks until the clock reaches `deadline_ns`, a device event
    /// arrives, or the VM is asked to pause or stop.
    pub fn idle_until(&self, deadline_ns: u64) {
        let mut g = self.lock();
        let events = g.device_events;
        loop {
            if g.requested != Requested::Running || g.device_events != events {
                return;
            }
            let now = g.clock.now_ns();
            if now >= deadline_ns {
                return;
            }
            let wait = Duration::from_nanos(deadline_ns - now);
            g = self
                .changed
                .wait_timeout(g, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Keeps vCPUs out of the guest until `until` (auto-converge); `None` lifts it.
    pub fn throttle_until(&self, until: Option<std::time::Instant>) {
        let mut g = self.lock();
        g.throttle_until = until;
        self.changed(&g);
    }

    /// Called by a vCPU thread between runs: sleeps while throttled, unless asked to pause or
    /// stop.
    pub fn throttle_wait(&self) {
        let mut g = self.lock();
        while let Some(until) = g.throttle_until {
            let now = std::time::Instant::now();
            if now >= until || g.requested != Requested::Running {
                return;
            }
            g = self
                .changed
                .wait_timeout(g, until - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Wakes idle vCPUs because a device has work for the guest.
    pub fn device_event(&self) {
        let mut g = self.lock();
        g.device_events = g.device_events.wrapping_add(1);
        self.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn pause_parks_every_vcpu_and_resume_releases_them() {
        let rc = Arc::new(RunControl::new(2, 0));
        rc.resume();
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let rc = rc.clone();
                std::thread::spawn(move || {
                    let mut spins = 0u64;
                    while rc.requested() == Requested::Running || rc.park_vcpu() {
                        spins += 1;
                        std::thread::yield_now();
                    }
                    spins
                })
            })
            .collect();
        assert!(rc.request_pause());
        assert!(rc.wait_all_parked(Duration::from_secs(5)));
        rc.resume();
        rc.request_stop(StopReason::Shutdown);
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(rc.parked(), 2);
        assert_eq!(rc.wait_for_stop(), StopReason::Shutdown);
    }

    #[test]
    fn idle_returns_at_the_deadline_or_on_pause() {
        let rc = Arc::new(RunControl::new(1, 0));
        rc.resume();
        let t0 = Instant::now();
        rc.idle_until(rc.clock_ns() + 20_000_000);
        assert!(t0.elapsed() >= Duration::from_millis(20));

        let rc2 = rc.clone();
        let waiter = std::thread::spawn(move || rc2.idle_until(u64::MAX));
        std::thread::sleep(Duration::from_millis(10));
        rc.request_pause();
        waiter.join().unwrap();
    }

    #[test]
    fn throttling_holds_vcpus_until_lifted_or_paused() {
        let rc = Arc::new(RunControl::new(1, 0));
        rc.resume();
        rc.throttle_until(Some(Instant::now() + Duration::from_millis(30)));
        let t0 = Instant::now();
        rc.throttle_wait();
        assert!(t0.elapsed() >= Duration::from_millis(25));

        rc.throttle_until(Some(Instant::now() + Duration::from_secs(60)));
        let rc2 = rc.clone();
        let held = std::thread::spawn(move || rc2.throttle_wait());
        std::thread::sleep(Duration::from_millis(10));
        rc.request_pause();
        held.join().unwrap();
        rc.throttle_until(None);
        rc.resume();
        let t0 = Instant::now();
        rc.throttle_wait();
        assert!(t0.elapsed() < Duration::from_millis(5));
    }

    #[test]
    fn the_first_stop_reason_wins() {
        let rc = RunControl::new(1, 0);
        rc.request_stop(StopReason::GuestExit(3));
        rc.request_stop(StopReason::Shutdown);
        assert_eq!(rc.stop_reason(), Some(StopReason::GuestExit(3)));
        assert!(!rc.request_pause());
    }
}
