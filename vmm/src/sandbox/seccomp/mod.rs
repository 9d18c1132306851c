//! Per-thread seccomp filters, built with rust-vmm's `seccompiler`.
//!
//! Each kind of thread installs its own filter when it starts: a vCPU thread may run the guest
//! and little else, the device thread moves packets, and the control threads (main, control
//! socket, migration) do what the control API offers. Before any of them exists, the main
//! thread builds the VM under the widest filter, `Build`: what all three kinds may do plus
//! creating a VM and its devices. Building parses what others supplied (a tenant's kernel, a
//! snapshot, an incoming migration's stream), so no part of it runs unfiltered. A thread
//! inherits its creator's filter, and filters stack, so a thread never has more than the
//! thread that spawned it.
//!
//! A forbidden call raises `SIGSYS` (`SECCOMP_RET_TRAP`); our handler writes one line naming
//! the thread kind and the syscall number to stderr, then ends the process with
//! [`EXIT_SECCOMP_VIOLATION`]. Trap rather than kill-process so the reason reaches the log
//! without an audit daemon.
mod ioctls;
mod rules;
mod sigsys;

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

pub use sigsys::EXIT_SECCOMP_VIOLATION;

/// The kinds of thread, each with its own filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadKind {
    /// Runs one vCPU: `KVM_RUN`, MMIO emulation, console output.
    Vcpu,
    /// The device event loop: taps, eventfds, epoll.
    Devices,
    /// Main, the control socket and its connections, snapshots and migration.
    Control,
    /// Main while it builds the VM (boot, restore, or an incoming migration): every other
    /// kind's calls, and creating the VM, its vCPUs and its devices.
    Build,
}

impl ThreadKind {
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Devices => "devices",
            ThreadKind::Control => "control",
            ThreadKind::Build => "build",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("cannot build the seccomp filter for {0} threads")]
    Build(&'static str, #[source] seccompiler::BackendError),
    #[error("cannot compile the seccomp filter for {0} threads")]
    Compile(&'static str, #[source] seccompiler::BackendError),
    #[error("cannot install the seccomp filter for {0} threads")]
    Install(&'static str, #[source] seccompiler::Error),
    #[error("cannot install the SIGSYS handler")]
    Handler(#[source] std::io::Error),
}

/// Whether threads install filters. Off in the library (tests run VMs inside the test
/// process); the `vmm` binary turns it on unless told `--seccomp off`.
static ENABLED: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// The filter this thread runs under, for the SIGSYS message.
    static KIND: Cell<Option<ThreadKind>> = const { Cell::new(None) };
}

/// Turns filtering on for threads started from now on, and installs the SIGSYS handler.
pub fn enable() -> Result<(), SeccompError> {
    sigsys::install_handler().map_err(SeccompError::Handler)?;
    ENABLED.store(true, Ordering::Release);
    Ok(())
}

pub fn enabled() -> bool {
    ENABLED.load(Ordering::Acquire)
}

/// The kind of filter the calling thread runs under, if any.
pub fn current() -> Option<ThreadKind> {
    KIND.with(Cell::get)
}

/// Compiles the filter for `kind`.
pub fn program(kind: ThreadKind) -> Result<BpfProgram, SeccompError> {
    let filter = SeccompFilter::new(
        rules::for_kind(kind).map_err(|e| SeccompError::Build(kind.name(), e))?,
        SeccompAction::Trap,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|e| SeccompError::Build(kind.name(), e))?;
    filter
        .try_into()
        .map_err(|e| SeccompError::Compile(kind.name(), e))
}

/// Installs `kind`'s filter on the calling thread, if filtering is on. A thread that already
/// runs under the same filter keeps it (filters stack; a second copy only costs time).
pub fn install(kind: ThreadKind) -> Result<(), SeccompError> {
    if !enabled() || current() == Some(kind) {
        return Ok(());
    }
    if matches!(kind, ThreadKind::Control | ThreadKind::Build) {
        // clone3 passes its flags in memory a filter cannot read: answer ENOSYS so glibc
        // falls back to clone, whose flags the main filter checks.
        // First, so that the main filter need not allow `seccomp` itself.
        let no_clone3 = SeccompFilter::new(
            [(libc::SYS_clone3, vec![])].into_iter().collect(),
            SeccompAction::Allow,
            SeccompAction::Errno(libc::ENOSYS as u32),
            TargetArch::x86_64,
        )
        .map_err(|e| SeccompError::Build(kind.name(), e))?;
        let prog: BpfProgram = no_clone3
            .try_into()
            .map_err(|e| SeccompError::Compile(kind.name(), e))?;
        seccompiler::apply_filter(&prog).map_err(|e| SeccompError::Install(kind.name(), e))?;
    }
    let prog = program(kind)?;
    seccompiler::apply_filter(&prog).map_err(|e| SeccompError::Install(kind.name(), e))?;
    KIND.with(|k| k.set(Some(kind)));
    Ok(())
}

/// Installs `kind`'s filter at the start of a thread; a thread that cannot be filtered must not
/// run unfiltered, so failure ends the process.
pub fn install_or_exit(kind: ThreadKind) {
    if let Err(e) = install(kind) {
        tracing::error!(
            "{}; stopping rather than run unfiltered",
            crate::api::server::error_chain(&e)
        );
        std::process::exit(EXIT_SECCOMP_VIOLATION);
    }
}

#[cfg(test)]
mod tests;
