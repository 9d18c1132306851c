//! Workload dispatch, and what all workloads share: the error counter and the end of a run.
//!
//! A new workload adds a `bench_core::cmdline::Workload` variant, a module here, a `Plan`
//! variant built by `prepare` on vCPU 0, and an arm in `run`.

mod agent;
mod blk;
mod blk_read;
mod dirty;
mod evil_net;
mod http;
mod idle;

use crate::control;
use bench_core::cmdline::{Config, Workload};
use bench_core::exit_code;
use bench_core::report::Done;
use bench_core::{MIB, NS_PER_MS};
use core::fmt;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// What vCPU 0 sets up before the other vCPUs start.
pub struct Shared {
    pub config: Config,
    pub vcpus: u32,
    plan: Plan,
}

/// Per-workload state prepared on vCPU 0.
enum Plan {
    Idle,
    Dirty(dirty::Plan),
    Http(http::Plan),
    Agent(agent::Plan),
    EvilNet(u64),
    Blk(alloc::vec::Vec<bench_abi::VirtioDevice>),
}

/// Why a workload cannot run in this VM. It is a command-line problem (the guest exits with
/// `exit_code::BAD_CMDLINE`): the command line asked for more than the VM has.
#[derive(Debug)]
pub enum SetupError {
    RateBelowVcpus {
        rate: u64,
        vcpus: u32,
    },
    OutOfMemory {
        what: &'static str,
        bytes: u64,
        largest_free: u64,
    },
    Http(http::HttpSetupError),
    Agent(agent::AgentSetupError),
}

impl fmt::Display for SetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            SetupError::RateBelowVcpus { rate, vcpus } => write!(
                f,
                "rate={rate} is below the vCPU count {vcpus}: each vCPU needs at least one page per second"
            ),
            SetupError::OutOfMemory { what, bytes, largest_free } => write!(
                f,
                "the {what} needs {} MiB in one piece, but the largest free block is {} MiB",
                bytes.div_ceil(MIB),
                largest_free / MIB
            ),
            SetupError::Http(ref e) => write!(f, "{e}"),
            SetupError::Agent(ref e) => write!(f, "{e}"),
        }
    }
}

/// Sets up the configured workload (vCPU 0 only, before the others run).
pub fn prepare(
    config: Config,
    vcpus: u32,
    virtio: &[bench_abi::VirtioDevice],
) -> Result<Shared, SetupError> {
    let plan = match config.workload {
        Workload::Idle => Plan::Idle,
        Workload::Dirty => Plan::Dirty(dirty::Plan::new(&config, vcpus)?),
        Workload::Http => Plan::Http(http::Plan::new(&config, virtio).map_err(SetupError::Http)?),
        Workload::EvilNet => Plan::EvilNet(
            virtio
                .first()
                .map(|d| d.base)
                .ok_or(SetupError::Http(http::HttpSetupError::NoDevice))?,
        ),
        Workload::Blk | Workload::BlkRead => Plan::Blk(virtio.to_vec()),
        Workload::Agent => {
            Plan::Agent(agent::Plan::new(&config, virtio).map_err(SetupError::Agent)?)
        }
    };
    Ok(Shared {
        config,
        vcpus,
        plan,
    })
}

/// Runs this vCPU's part of the workload until the run ends.
pub fn run(shared: &'static Shared, vcpu: u32) -> ! {
    match &shared.plan {
        Plan::Idle => idle::run(shared, vcpu),
        Plan::Dirty(plan) => dirty::run(plan, shared, vcpu),
        Plan::Http(plan) => http::run(plan, shared, vcpu),
        Plan::Agent(plan) => agent::run(plan, shared, vcpu),
        Plan::EvilNet(base) => evil_net::run(*base, shared, vcpu),
        Plan::Blk(devices) if shared.config.workload == Workload::BlkRead => {
            blk_read::run(devices, shared, vcpu)
        }
        Plan::Blk(devices) => blk::run(devices, shared, vcpu),
    }
}

/// Integrity errors found by all vCPUs.
static ERRORS: AtomicU64 = AtomicU64::new(0);
/// vCPUs that have finished their part of the run.
static FINISHED: AtomicU32 = AtomicU32::new(0);

/// Adds integrity errors to the VM-wide count.
fn add_errors(n: u64) {
    if n > 0 {
        ERRORS.fetch_add(n, Ordering::Relaxed);
    }
}

/// Integrity errors so far, VM-wide.
fn errors() -> u64 {
    ERRORS.load(Ordering::Relaxed)
}

/// Ends this vCPU's part of the run, after its final verification. vCPU 0 waits for every vCPU,
/// prints `bench: done gen=<gen()> errors=<n>` and exits the VM with 0, or 3 if any integrity
/// error was seen; the others park for good.
fn finish(shared: &Shared, vcpu: u32, gen: impl FnOnce() -> u64) -> ! {
    FINISHED.fetch_add(1, Ordering::AcqRel);
    if vcpu != 0 {
        loop {
            control::idle_until(u64::MAX);
        }
    }
    while FINISHED.load(Ordering::Acquire) < shared.vcpus {
        control::idle_until(control::clock_ns().saturating_add(NS_PER_MS));
    }
    let done = Done {
        gen: gen(),
        errors: errors(),
    };
    println!("bench: {done}");
    control::exit(if done.errors == 0 {
        exit_code::OK
    } else {
        exit_code::INTEGRITY
    })
}
