//! Laundromat's virtual machine monitor: one VM per process, on KVM.
//!
//! The layout follows Firecracker's: `arch` (x86-64 tables and registers), `vstate` (memory,
//! VM, vCPUs), `boot` (linux, pvh, bench), `devices` (serial, control, boot timer) and `api`
//! (the control socket). `builder` assembles a VM from a [`config::VmConfig`];
//! `controller` drives it once it runs.
pub mod api;
pub mod arch;
pub mod boot;
pub mod builder;
pub mod config;
pub mod controller;
pub mod devices;
pub mod migration;
pub mod persist;
pub mod sandbox;
pub mod vstate;

/// Process exit code when the guest crashes (triple fault, emulation failure, …).
pub const EXIT_GUEST_CRASH: i32 = 70;
/// Process exit code when the VMM cannot start or run the VM.
pub const EXIT_VMM_ERROR: i32 = 1;
