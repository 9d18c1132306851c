//! Device models and the bus that routes guest port and MMIO accesses to them.
pub mod boot_timer;
pub mod bus;
pub mod control;
pub mod serial;

pub use bus::Devices;
