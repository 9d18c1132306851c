//! The control device: the VM clock, the paravirtual `hlt`, boot marks and exit.

use bench_abi::{control, CONTROL_BASE};
use core::hint::spin_loop;
use core::ptr::{read_volatile, with_exposed_provenance_mut, write_volatile};
use core::sync::atomic::{AtomicU64, Ordering};

/// The device's base address: the ABI default until vCPU 0 reads the boot-info page, so a guest
/// with a bad boot-info page can still exit.
static BASE: AtomicU64 = AtomicU64::new(CONTROL_BASE);

/// Uses the control device at `base` (validated to lie in the MMIO window) from now on.
pub fn init(base: u64) {
    BASE.store(base, Ordering::Relaxed);
}

fn register(offset: u64) -> *mut u64 {
    with_exposed_provenance_mut((BASE.load(Ordering::Relaxed) + offset) as usize)
}

fn write(offset: u64, value: u64) {
    // SAFETY: the register lies in the control device's window inside the MMIO gap, which the VMM
    // identity-maps and emulates; it aliases no Rust object. It takes 8-byte accesses.
    unsafe { write_volatile(register(offset), value) }
}

/// Nanoseconds on the VM clock (starts at 0 at first boot, stops while paused, survives
/// migration). Each read is a VM exit: read it per batch of work, not per page.
pub fn clock_ns() -> u64 {
    // SAFETY: as in `write`: an emulated 8-byte register in the MMIO gap.
    unsafe { read_volatile(register(control::CLOCK_NS)) }
}

/// Parks this vCPU until the VM clock reaches `deadline_ns`, a device has work, or the VM is
/// paused. It may return early: callers loop and re-check the clock.
pub fn idle_until(deadline_ns: u64) {
    write(control::IDLE_UNTIL_NS, deadline_ns);
}

/// Tells the VMM that boot got this far ([`control::BOOT_DONE`]: booted).
pub fn boot_mark(value: u64) {
    write(control::BOOT_MARK, value);
}

/// Ends the VM with `code` as the `vmm` exit code.
pub fn exit(code: u8) -> ! {
    write(control::EXIT, u64::from(code));
    // The VMM stops the VM at the write; it cannot return here, but spin in case it is slow.
    loop {
        spin_loop();
    }
}
