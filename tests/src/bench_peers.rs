//! What a benchmark needs before it can run a peer VMM side by side with ours: QEMU on the
//! `PATH`, `/dev/kvm`, and the QEMU machine that boots the PVH guest with nothing else.

use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::process::find_program;

#[derive(Debug, Error)]
pub enum PeerError {
    #[error("{} not found; install it with `apt-get install qemu-system-x86`", .0.display())]
    NoQemu(PathBuf),
    #[error("/dev/kvm is missing: these benchmarks need KVM")]
    NoKvm,
}

/// QEMU's microvm with everything the PVH guest does not use turned off: option ROMs, RTC,
/// PIT, PIC, ACPI tables, the second IOAPIC and the kernel command-line additions. The ISA
/// serial port stays on: the guest prints on port 0x3f8.
pub const QEMU_MICROVM: &str = "microvm,x-option-roms=off,rtc=off,pit=off,pic=off,acpi=off,\
                                ioapic2=off,auto-kernel-cmdline=off";

/// The QEMU binary, found as a shell would find `program`.
pub fn find_qemu(program: &Path) -> Result<PathBuf, PeerError> {
    find_program(program).ok_or_else(|| PeerError::NoQemu(program.to_owned()))
}

/// Fails unless this host has KVM.
pub fn require_kvm() -> Result<(), PeerError> {
    if Path::new("/dev/kvm").exists() {
        Ok(())
    } else {
        Err(PeerError::NoKvm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_package_when_qemu_is_missing() {
        let error = find_qemu(Path::new("qemu-system-none-such")).expect_err("no such program");
        assert!(error
            .to_string()
            .contains("apt-get install qemu-system-x86"));
        assert!(find_qemu(Path::new("sh")).is_ok());
    }
}
