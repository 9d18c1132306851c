//! The exit codes the guest writes to the control device's EXIT register; the `vmm` process
//! exits with the same code.

/// The run finished and the verifier saw no integrity error.
pub const OK: u8 = 0;
/// The command line was rejected, or asked for more than the VM has.
pub const BAD_CMDLINE: u8 = 2;
/// The verifier found at least one page whose contents were not what the guest last wrote.
pub const INTEGRITY: u8 = 3;
/// The boot-info page was invalid (a VMM bug).
pub const BAD_BOOT_INFO: u8 = 4;
/// The guest panicked.
pub const PANIC: u8 = 101;
