//! Guest-physical memory layout shared by all boot modes.
//!
//! RAM starts at 0 and is split around the MMIO window `[MMIO_START, MMIO_END)`, where the
//! devices live, so low RAM never exceeds 3 GiB and the rest continues at 4 GiB.
pub use bench_abi::{MMIO_END, MMIO_START, PAGE_SIZE};

/// Where the GDT is written for every boot mode.
pub const GDT_ADDR: u64 = 0x500;
/// The (empty) IDT: our guests never take interrupts before they install their own.
pub const IDT_ADDR: u64 = 0x520;
/// A 104-byte TSS; VT-x requires a usable TR even for guests that never switch stacks.
pub const TSS_ADDR: u64 = 0x600;
/// PVH `hvm_start_info`, followed by its module list.
pub const PVH_INFO_ADDR: u64 = 0x6000;
/// PVH module list (the initrd).
pub const PVH_MODLIST_ADDR: u64 = 0x6040;
/// PVH memory map.
pub const PVH_MEMMAP_ADDR: u64 = 0x7000;
/// Linux zero page (`struct boot_params`).
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Initial stack for the Linux 64-bit entry (grows down from here).
pub const BOOT_STACK_TOP: u64 = 0x8ff0;
/// Linux boot page tables: PML4, PDPT and one PD identity-mapping the first GiB.
pub const LINUX_PML4_ADDR: u64 = 0x9000;
/// Where bench page tables start; they may use up to [`PAGE_TABLES_END`].
pub const BENCH_PAGE_TABLES_ADDR: u64 = 0x1_0000;
/// End (exclusive) of the bench page-table area; boot-info pages follow.
pub const PAGE_TABLES_END: u64 = bench_abi::BOOT_INFO_BASE;
/// Kernel command line for linux and pvh guests.
pub const CMDLINE_ADDR: u64 = 0x2_0000;
/// Longest command line we pass to Linux (boot protocol 2.06+ `cmdline_size` is larger, but
/// 2048 is what every kernel accepts).
pub const CMDLINE_MAX: usize = 2048;
/// The MP floating pointer and table live in the last KiB below 640 KiB, as on PCs.
pub const MPTABLE_ADDR: u64 = 0x9_fc00;
/// End of conventional memory; [EBDA_START, HIMEM_START) is reserved for firmware tables.
pub const EBDA_START: u64 = 0x9_fc00;
/// ACPI tables for Linux guests, RSDP first, in the BIOS area below 1 MiB (outside RAM in
/// the e820 map).
pub const ACPI_START: u64 = 0xe_0000;
/// Kernels and bench images load at or above 1 MiB.
pub const HIMEM_START: u64 = 0x10_0000;

/// Guest RAM ranges `(start, len)` for `mem_bytes` of RAM, split around the MMIO window.
pub fn ram_ranges(mem_bytes: u64) -> Vec<(u64, u64)> {
    let low = mem_bytes.min(MMIO_START);
    let mut ranges = vec![(0, low)];
    if mem_bytes > low {
        ranges.push((MMIO_END, mem_bytes - low));
    }
    ranges
}

/// End (exclusive) of low RAM: the top of the first range.
pub fn low_ram_end(mem_bytes: u64) -> u64 {
    mem_bytes.min(MMIO_START)
}

/// One past the highest guest-physical RAM address.
pub fn ram_end(mem_bytes: u64) -> u64 {
    ram_ranges(mem_bytes)
        .last()
        .map_or(0, |&(start, len)| start + len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_ram_is_one_range() {
        assert_eq!(ram_ranges(256 << 20), vec![(0, 256 << 20)]);
        assert_eq!(ram_end(256 << 20), 256 << 20);
    }

    #[test]
    fn large_ram_skips_the_mmio_window() {
        let r = ram_ranges(4 << 30);
        assert_eq!(r, vec![(0, MMIO_START), (MMIO_END, (4 << 30) - MMIO_START)]);
        assert_eq!(r.iter().map(|x| x.1).sum::<u64>(), 4 << 30);
        assert_eq!(ram_end(4 << 30), MMIO_END + (4 << 30) - MMIO_START);
    }

    #[test]
    fn fixed_areas_do_not_overlap() {
        let areas = [
            (GDT_ADDR, 0x20),
            (IDT_ADDR, 0x8),
            (TSS_ADDR, 0x68),
            (PVH_INFO_ADDR, 0x40),
            (PVH_MODLIST_ADDR, 0x20),
            (ZERO_PAGE_ADDR, 0x1000),
            (LINUX_PML4_ADDR, 0x3000),
            (
                BENCH_PAGE_TABLES_ADDR,
                PAGE_TABLES_END - BENCH_PAGE_TABLES_ADDR,
            ),
            (CMDLINE_ADDR, CMDLINE_MAX as u64),
        ];
        for (i, &(a, al)) in areas.iter().enumerate() {
            for &(b, bl) in &areas[i + 1..] {
                // The bench tables and the Linux command line never coexist.
                if a == BENCH_PAGE_TABLES_ADDR && b == CMDLINE_ADDR {
                    continue;
                }
                assert!(a + al <= b || b + bl <= a, "{a:#x} overlaps {b:#x}");
            }
        }
    }
}
