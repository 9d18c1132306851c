//! `workload=idle`: every vCPU parks on the control device until the next report is due. vCPU 0
//! prints progress with `gen` = its number of wakeups, so `gen` rises as long as the VM runs.

use super::{errors, finish, Shared};
use crate::control;
use bench_core::report::Reporter;

pub fn run(shared: &Shared, vcpu: u32) -> ! {
    let deadline = shared.config.deadline_ns();
    let mut reporter = Reporter::new(shared.config.report_ms, control::clock_ns());
    let mut wakeups = 0;
    loop {
        let now = control::clock_ns();
        if now >= deadline {
            finish(shared, vcpu, || wakeups);
        }
        if let Some(progress) = reporter.poll(now, wakeups, None, errors()) {
            if vcpu == 0 {
                println!("bench: {progress}");
            }
        }
        control::idle_until(reporter.next_ns().min(deadline));
        wakeups += 1;
    }
}
