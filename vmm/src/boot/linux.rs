//! The Linux x86-64 boot protocol: a bzImage or ELF vmlinux entered at its 64-bit entry point
//! with a zero page (`struct boot_params`), an e820 map, an initrd and an MP table.
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::{BzImage, Elf, KernelLoader};
use vm_memory::{Bytes, GuestAddress};

use super::{elf_check, load_initrd, open, pod_bytes, write_cmdline, BootError, BootPlan};
use crate::arch::x86_64::acpi::{self, VirtioMmio};
use crate::arch::x86_64::layout::{self, *};
use crate::arch::x86_64::mptable;
use crate::arch::x86_64::paging::{self, Privilege};
use crate::arch::x86_64::regs::{write_descriptor_tables, EntryMode, EntryRegs};
use crate::config::VmConfig;
use crate::vstate::memory::GuestMemory;
use crate::vstate::vcpu::VcpuBoot;

/// "HdrS" at offset 0x202 marks a bzImage setup header.
const BZIMAGE_MAGIC_OFFSET: u64 = 0x202;
const HDRS: u32 = 0x5372_6448;
/// The 64-bit entry point sits 0x200 bytes into a bzImage's protected-mode kernel.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// `type_of_loader` for a boot loader without an assigned id.
const LOADER_UNDEFINED: u8 = 0xff;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;
const E820_RAM: u32 = 1;
/// Default highest initrd address for kernels that do not say (boot protocol < 2.03).
const DEFAULT_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;

fn is_bzimage(file: &mut File) -> Result<bool, std::io::Error> {
    let mut magic = [0u8; 4];
    file.seek(SeekFrom::Start(BZIMAGE_MAGIC_OFFSET))?;
    let is = file.read_exact(&mut magic).is_ok() && u32::from_le_bytes(magic) == HDRS;
    file.rewind()?;
    Ok(is)
}

/// Whether the command line turns ACPI off (the last `acpi=` wins, as in the kernel's parser
/// for this value).
fn acpi_off(cmdline: &str) -> bool {
    cmdline
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("acpi="))
        .next_back()
        .is_some_and(|v| v == "off")
}

/// The e820 map: conventional memory below the EBDA, then RAM from 1 MiB, then high RAM.
pub fn e820_map(mem_bytes: u64) -> Vec<(u64, u64)> {
    let mut map = vec![(0, EBDA_START)];
    for (start, len) in layout::ram_ranges(mem_bytes) {
        let from = start.max(HIMEM_START);
        let end = start + len;
        if end > from {
            map.push((from, end - from));
        }
    }
    map
}

pub fn load(mem: &GuestMemory, cfg: &VmConfig) -> Result<BootPlan, BootError> {
    let mem_bytes = cfg.mem_bytes();
    let low_end = layout::low_ram_end(mem_bytes);
    let mut kernel = open("kernel", &cfg.kernel)?;
    let bz = is_bzimage(&mut kernel).map_err(|source| BootError::Open {
        what: "kernel",
        path: cfg.kernel.clone(),
        source,
    })?;

    let (entry, kernel_end, header) = if bz {
        let r = BzImage::load(mem, None, &mut kernel, Some(GuestAddress(HIMEM_START)))?;
        (
            r.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET,
            r.kernel_end,
            r.setup_header,
        )
    } else {
        let elf = elf_check::check(&mut kernel, &layout::ram_ranges(mem_bytes), HIMEM_START)?;
        Elf::load(mem, None, &mut kernel, Some(GuestAddress(HIMEM_START)))?;
        (elf.entry, elf.end, None)
    };

    // The DSDT declares the virtio-mmio devices; a kernel told `acpi=off` learns of them from
    // the command line instead (declaring them both ways would register each device twice).
    let devices = crate::devices::virtio::device_count(cfg);
    let on_cmdline = if acpi_off(&cfg.cmdline) { devices } else { 0 };
    let cmdline = crate::devices::virtio::linux_cmdline(&cfg.cmdline, on_cmdline);
    write_cmdline(mem, &cmdline, CMDLINE_ADDR, CMDLINE_MAX)?;

    let mut params = boot_params::default();
    if let Some(h) = header {
        params.hdr = h;
    } else {
        params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
        params.hdr.header = HDRS;
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
    }
    params.hdr.type_of_loader = LOADER_UNDEFINED;
    params.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    params.hdr.cmdline_size = cmdline.len() as u32 + 1;

    if let Some(path) = &cfg.initrd {
        let max = match params.hdr.initrd_addr_max {
            0 => DEFAULT_INITRD_ADDR_MAX,
            m => u64::from(m),
        };
        let low = kernel_end.next_multiple_of(PAGE_SIZE);
        let (addr, size) = load_initrd(mem, path, low, low_end.min(max + 1))?;
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }

    let map = e820_map(mem_bytes);
    for (slot, &(addr, size)) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr,
            size,
            r#type: E820_RAM,
        };
    }
    params.e820_entries = map.len() as u8;
    let acpi_devices: Vec<VirtioMmio> = (0..devices)
        .map(|i| VirtioMmio {
            base: crate::devices::virtio::mmio_base(i),
            irq: crate::devices::virtio::irq(i),
        })
        .collect();
    params.acpi_rsdp_addr = acpi::write(mem, cfg.vcpus, &acpi_devices)?;
    // SAFETY: boot_params is the kernel's repr(C, packed) zero page: integers and arrays only.
    mem.write_slice(unsafe { pod_bytes(&params) }, GuestAddress(ZERO_PAGE_ADDR))?;

    mptable::write(mem, MPTABLE_ADDR, cfg.vcpus)?;
    write_descriptor_tables(mem)?;
    // The 64-bit entry needs the kernel and the zero page mapped; the kernel builds its own
    // tables right away, so the first GiB is enough.
    let cr3 = paging::identity_map(
        mem,
        LINUX_PML4_ADDR,
        0x3000,
        1 << 30,
        Privilege::Supervisor,
        (0, 0),
    )?;

    let boot = VcpuBoot {
        mode: EntryMode::Long64 { cr3 },
        regs: EntryRegs {
            rip: entry,
            rsp: BOOT_STACK_TOP,
            rsi: ZERO_PAGE_ADDR,
            ..Default::default()
        },
        linux: true,
    };
    // Application processors wait for INIT/SIPI from the boot CPU; their initial state is
    // overwritten then, so giving them the same registers is harmless.
    Ok(BootPlan {
        vcpus: vec![boot; cfg.vcpus.into()],
        needs_irqchip: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acpi_off_is_read_from_the_command_line() {
        assert!(!acpi_off("console=ttyS0"));
        assert!(acpi_off("console=ttyS0 acpi=off"));
        assert!(!acpi_off("acpi=off acpi=force"));
        assert!(!acpi_off("noacpi=off"));
    }

    #[test]
    fn e820_covers_conventional_low_and_high_ram() {
        assert_eq!(
            e820_map(256 << 20),
            vec![(0, EBDA_START), (HIMEM_START, (256 << 20) - HIMEM_START)]
        );
        let big = e820_map(4 << 30);
        assert_eq!(big.len(), 3);
        assert_eq!(big[1], (HIMEM_START, MMIO_START - HIMEM_START));
        assert_eq!(big[2], (MMIO_END, (4 << 30) - MMIO_START));
    }
}
