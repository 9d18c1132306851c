//! Sanity checks on the boot-info page the VMM hands each vCPU.

use bench_abi::{control, uart, BootInfo, BOOT_MAGIC, BOOT_VERSION, MAX_VCPUS};
use bench_abi::{CMDLINE_MAX, MMIO_END, MMIO_START};
use core::fmt;

/// What is wrong with a boot-info page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    Magic(u64),
    Version(u32),
    VcpuCount(u32),
    VcpuIndex { index: u32, count: u32 },
    CmdlineLen(u32),
    DeviceBase { device: &'static str, base: u64 },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::Magic(m) => write!(f, "magic is {m:#x}, expected {BOOT_MAGIC:#x}"),
            Error::Version(v) => write!(f, "version is {v}, this guest speaks {BOOT_VERSION}"),
            Error::VcpuCount(n) => write!(f, "vcpu count {n} is not in 1..={MAX_VCPUS}"),
            Error::VcpuIndex { index, count } => {
                write!(f, "vcpu index {index} is not below the vcpu count {count}")
            }
            Error::CmdlineLen(n) => write!(f, "command line length {n} exceeds {CMDLINE_MAX}"),
            Error::DeviceBase { device, base } => {
                write!(f, "{device} base {base:#x} is outside the MMIO window")
            }
        }
    }
}

/// Checks everything the guest relies on before it trusts the page.
pub fn validate(info: &BootInfo) -> Result<(), Error> {
    if info.magic != BOOT_MAGIC {
        return Err(Error::Magic(info.magic));
    }
    if info.version != BOOT_VERSION {
        return Err(Error::Version(info.version));
    }
    if info.vcpu_count == 0 || info.vcpu_count > MAX_VCPUS {
        return Err(Error::VcpuCount(info.vcpu_count));
    }
    if info.vcpu_index >= info.vcpu_count {
        return Err(Error::VcpuIndex {
            index: info.vcpu_index,
            count: info.vcpu_count,
        });
    }
    if info.cmdline().is_none() {
        return Err(Error::CmdlineLen(info.cmdline_len));
    }
    let devices = [
        ("console", info.console_base, uart::SIZE),
        ("control", info.control_base, control::SIZE),
    ];
    for (device, base, size) in devices {
        let end = base.checked_add(size);
        if base < MMIO_START || end.is_none_or(|end| end > MMIO_END) {
            return Err(Error::DeviceBase { device, base });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bench_abi::{CONSOLE_BASE, CONTROL_BASE};

    fn good() -> BootInfo {
        // SAFETY: BootInfo is integers and arrays of integers, for which all-zero bytes are a
        // valid value.
        let mut info: BootInfo = unsafe { core::mem::zeroed() };
        info.magic = BOOT_MAGIC;
        info.version = BOOT_VERSION;
        (info.vcpu_index, info.vcpu_count) = (1, 2);
        (info.console_base, info.control_base) = (CONSOLE_BASE, CONTROL_BASE);
        info
    }

    #[test]
    fn accepts_a_well_formed_page() {
        assert_eq!(validate(&good()), Ok(()));
    }

    #[test]
    fn rejects_each_kind_of_bad_field() {
        type Spoil = fn(&mut BootInfo);
        let cases: [(Spoil, Error); 6] = [
            (|i| i.magic = 7, Error::Magic(7)),
            (|i| i.version = 9, Error::Version(9)),
            (|i| i.vcpu_count = 0, Error::VcpuCount(0)),
            (
                |i| i.vcpu_index = 2,
                Error::VcpuIndex { index: 2, count: 2 },
            ),
            (|i| i.cmdline_len = 5000, Error::CmdlineLen(5000)),
            (
                |i| i.control_base = 0x1000,
                Error::DeviceBase {
                    device: "control",
                    base: 0x1000,
                },
            ),
        ];
        for (spoil, want) in cases {
            let mut info = good();
            spoil(&mut info);
            assert_eq!(validate(&info), Err(want));
        }
        let mut info = good();
        info.console_base = u64::MAX;
        assert!(matches!(
            validate(&info),
            Err(Error::DeviceBase {
                device: "console",
                ..
            })
        ));
    }
}
