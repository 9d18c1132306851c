//! The bench unikernel: a ring-3, `no_std` guest that the VMM starts directly in 64-bit CPL3 on
//! every vCPU (see `bench_abi` for the contract).
//!
//! It never takes an interrupt or an exception, and it reaches its devices through MMIO only:
//! on PVM hosts port I/O, `INT`, `INT3` and `IRETQ` all end the VM. The command line selects a
//! workload (`idle`, `dirty`); see images/README.md for keys and output formats.
//!
//! Layout: `start` (entry and vCPU rendezvous), `console` and `control` (devices), `heap` (the
//! allocator), `mem` (the C memory functions), `panic`, and `workload/*`. Pure logic lives in
//! the `bench_core` library (src/*.rs) so it can be tested on the host.
#![no_std]
#![no_main]

extern crate alloc;

#[macro_use]
mod console;
mod control;
mod heap;
mod mem;
mod netdev;
mod panic;
mod start;
mod workload;
