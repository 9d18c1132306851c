//! Device models and the bus that routes guest port and MMIO accesses to them.
pub mod boot_timer;
pub mod bus;
pub mod control;
pub mod event_loop;
pub mod serial;
pub mod virtio;

pub use bus::Devices;
