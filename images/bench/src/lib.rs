//! The host-testable part of the bench guest.
//!
//! Everything here is pure logic with no device access, so `cargo test` runs it on the host,
//! while the guest binary (`src/guest/`) links it as a `no_std` library.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod agent;
pub mod bootinfo;
pub mod bump;
pub mod cmdline;
pub mod exit_code;
pub mod fnv;
pub mod http;
pub mod netcfg;
pub mod pace;
pub mod page;
pub mod report;
pub mod split;
pub mod sync;

/// Bytes in a MiB.
pub const MIB: u64 = 1 << 20;
/// Nanoseconds in a millisecond.
pub const NS_PER_MS: u64 = 1_000_000;
