//! The contract between the VMM and a ring-3 `bench` guest.
//!
//! A bench guest is a static ELF64 linked at or above [`KERNEL_MIN_ADDR`]. The VMM starts every
//! vCPU at the ELF entry point directly in 64-bit mode at CPL3, with:
//! - identity-mapped paging over all guest RAM and the MMIO window (user, writable);
//! - `RDI` = guest-physical (= virtual) address of that vCPU's [`BootInfo`] page;
//! - `RSP` = top of that vCPU's private stack, 16-byte aligned;
//! - interrupts off. The guest never takes an interrupt or exception: it polls.
//!
//! All vCPUs start at once. The guest decides who initialises shared state, typically vCPU 0.
//!
//! Devices are reached through MMIO only, because port I/O from CPL3 ends the VM on PVM hosts:
//! - a 16550 UART at [`CONSOLE_BASE`], one byte per register;
//! - the control device at [`CONTROL_BASE`], see [`control`];
//! - virtio-mmio devices listed in the boot-info page.
//!
//! This crate is `no_std` so the guest and the VMM share one definition.
#![no_std]

/// Lowest address a bench ELF may load at.
pub const KERNEL_MIN_ADDR: u64 = 0x10_0000;

/// Guest-physical address of vCPU 0's boot-info page; vCPU `i` has its page at
/// `BOOT_INFO_BASE + i * PAGE_SIZE`.
pub const BOOT_INFO_BASE: u64 = 0x8_0000;
/// Most vCPUs a bench guest can have: one boot-info page each below 1 MiB.
pub const MAX_VCPUS: u32 = 32;
/// Bytes of stack the VMM reserves for each vCPU, at the top of low RAM.
pub const STACK_SIZE: u64 = 256 * 1024;
/// Guest page size.
pub const PAGE_SIZE: u64 = 4096;

/// Start of the MMIO window: guest RAM never overlaps `[MMIO_START, MMIO_END)`. RAM beyond
/// `MMIO_START` continues at `MMIO_END`.
pub const MMIO_START: u64 = 0xC000_0000;
/// End of the MMIO window (4 GiB).
pub const MMIO_END: u64 = 0x1_0000_0000;
/// The console UART (16550 register file, byte stride).
pub const CONSOLE_BASE: u64 = 0xD000_0000;
/// The control device.
pub const CONTROL_BASE: u64 = 0xD000_1000;
/// First virtio-mmio device; device `i` is at `VIRTIO_BASE + i * VIRTIO_STRIDE`.
pub const VIRTIO_BASE: u64 = 0xD000_2000;
/// Distance between virtio-mmio devices.
pub const VIRTIO_STRIDE: u64 = 0x1000;

/// `BootInfo::magic`: "LNDRBOOT" little-endian.
pub const BOOT_MAGIC: u64 = u64::from_le_bytes(*b"LNDRBOOT");
/// `BootInfo::version` this crate describes.
pub const BOOT_VERSION: u32 = 1;
/// Longest command line the boot-info page carries, in bytes.
pub const CMDLINE_MAX: usize = 2048;
/// Most RAM regions and virtio devices the boot-info page lists.
pub const MAX_REGIONS: usize = 4;
/// Most virtio-mmio devices the boot-info page lists.
pub const MAX_VIRTIO: usize = 8;

/// A range of guest-physical memory.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Region {
    pub start: u64,
    pub len: u64,
}

/// A virtio-mmio device the guest may drive.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VirtioDevice {
    pub base: u64,
    pub len: u64,
}

/// The per-vCPU boot-info page. Every field is little-endian and naturally aligned.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BootInfo {
    pub magic: u64,
    pub version: u32,
    pub vcpu_index: u32,
    pub vcpu_count: u32,
    pub region_count: u32,
    /// Total guest RAM in bytes.
    pub ram_size: u64,
    /// Guest TSC frequency; 0 if the VMM does not know it.
    pub tsc_khz: u64,
    pub console_base: u64,
    pub control_base: u64,
    /// RAM the guest may use freely: everything except the image, page tables, boot-info pages
    /// and stacks. Only the first `region_count` entries are valid.
    pub free: [Region; MAX_REGIONS],
    pub virtio_count: u32,
    pub cmdline_len: u32,
    pub virtio: [VirtioDevice; MAX_VIRTIO],
    pub cmdline: [u8; CMDLINE_MAX],
}

const _: () = assert!(core::mem::size_of::<BootInfo>() <= PAGE_SIZE as usize);

impl BootInfo {
    /// The command line, if its length is in bounds.
    pub fn cmdline(&self) -> Option<&[u8]> {
        self.cmdline.get(..self.cmdline_len as usize)
    }

    /// The valid free regions, clamped to the array.
    pub fn free_regions(&self) -> &[Region] {
        let n = (self.region_count as usize).min(MAX_REGIONS);
        &self.free[..n]
    }

    /// The valid virtio devices, clamped to the array.
    pub fn virtio_devices(&self) -> &[VirtioDevice] {
        let n = (self.virtio_count as usize).min(MAX_VIRTIO);
        &self.virtio[..n]
    }
}

/// Registers of the control device, as byte offsets from [`CONTROL_BASE`]. All are 64-bit and
/// must be accessed with 8-byte loads and stores (32-bit accesses are also accepted).
pub mod control {
    /// Write: end the VM; the low 8 bits become the `vmm` process exit code.
    pub const EXIT: u64 = 0x00;
    /// Read: nanoseconds on the VM clock. It starts at 0 at first boot, stops while the VM is
    /// paused and continues across snapshot, restore and migration.
    pub const CLOCK_NS: u64 = 0x08;
    /// Write: park this vCPU until the VM clock reaches the value written (nanoseconds), a
    /// device has work for the guest, or the VM is paused. This is a paravirtual `hlt`.
    pub const IDLE_UNTIL_NS: u64 = 0x10;
    /// Write: a boot-progress marker; the VMM logs the time since `vmm run` started and the
    /// value written. Writing [`BOOT_DONE`] marks the end of guest boot.
    pub const BOOT_MARK: u64 = 0x18;
    /// The value for [`BOOT_MARK`] that means "guest is booted".
    pub const BOOT_DONE: u64 = 0x1;
    /// Size of the register window.
    pub const SIZE: u64 = 0x1000;
}

/// The 16550 console register offsets the guest needs.
pub mod uart {
    /// Transmit holding register (write).
    pub const THR: u64 = 0;
    /// Line status register (read).
    pub const LSR: u64 = 5;
    /// LSR bit: transmitter holding register empty.
    pub const LSR_THR_EMPTY: u8 = 0x20;
    /// Size of the register window.
    pub const SIZE: u64 = 8;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_info_fits_one_page_and_is_packed_as_documented() {
        assert!(core::mem::size_of::<BootInfo>() <= PAGE_SIZE as usize);
        assert_eq!(core::mem::offset_of!(BootInfo, ram_size), 24);
        assert_eq!(core::mem::offset_of!(BootInfo, free), 56);
        assert_eq!(core::mem::offset_of!(BootInfo, cmdline), 56 + 64 + 8 + 128);
    }

    #[test]
    fn device_windows_lie_inside_the_mmio_gap_and_do_not_overlap() {
        let windows = [
            (CONSOLE_BASE, uart::SIZE),
            (CONTROL_BASE, control::SIZE),
            (VIRTIO_BASE, VIRTIO_STRIDE * MAX_VIRTIO as u64),
        ];
        for (i, &(a, alen)) in windows.iter().enumerate() {
            assert!(a >= MMIO_START && a + alen <= MMIO_END);
            for &(b, blen) in &windows[i + 1..] {
                assert!(a + alen <= b || b + blen <= a);
            }
        }
    }

    #[test]
    fn accessors_clamp_counts_a_guest_cannot_trust() {
        let mut info = BootInfo {
            magic: BOOT_MAGIC,
            version: BOOT_VERSION,
            vcpu_index: 0,
            vcpu_count: 1,
            region_count: 99,
            ram_size: 0,
            tsc_khz: 0,
            console_base: CONSOLE_BASE,
            control_base: CONTROL_BASE,
            free: [Region::default(); MAX_REGIONS],
            virtio_count: 99,
            cmdline_len: 9999,
            virtio: [VirtioDevice::default(); MAX_VIRTIO],
            cmdline: [0; CMDLINE_MAX],
        };
        assert_eq!(info.free_regions().len(), MAX_REGIONS);
        assert_eq!(info.virtio_devices().len(), MAX_VIRTIO);
        assert!(info.cmdline().is_none());
        info.cmdline_len = 3;
        assert_eq!(info.cmdline(), Some(&[0u8, 0, 0][..]));
    }
}
