//! PVH boot: an ELF with a XEN_ELFNOTE_PHYS32_ENTRY note, entered in 32-bit protected mode
//! with paging off and EBX pointing at `struct hvm_start_info`.
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::{Elf, KernelLoader, PvhBootCapability};
use vm_memory::{Bytes, GuestAddress};

use super::linux::e820_map;
use super::{elf_check, load_initrd, open, pod_bytes, write_cmdline, BootError, BootPlan};
use crate::arch::x86_64::layout::{self, *};
use crate::arch::x86_64::regs::{write_descriptor_tables, EntryMode, EntryRegs};
use crate::config::VmConfig;
use crate::vstate::memory::GuestMemory;
use crate::vstate::vcpu::VcpuBoot;

const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
const MEMMAP_TYPE_RAM: u32 = 1;

pub fn load(mem: &GuestMemory, cfg: &VmConfig) -> Result<BootPlan, BootError> {
    let mem_bytes = cfg.mem_bytes();
    let mut kernel = open("kernel", &cfg.kernel)?;
    let elf = elf_check::check(&mut kernel, &layout::ram_ranges(mem_bytes), HIMEM_START)?;
    let loaded = Elf::load(mem, None, &mut kernel, Some(GuestAddress(HIMEM_START)))?;
    let PvhBootCapability::PvhEntryPresent(entry) = loaded.pvh_boot_cap else {
        return Err(BootError::NoPvhNote);
    };

    write_cmdline(mem, &cfg.cmdline, CMDLINE_ADDR, CMDLINE_MAX)?;
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_ADDR,
        memmap_paddr: PVH_MEMMAP_ADDR,
        ..Default::default()
    };
    if let Some(path) = &cfg.initrd {
        let low = elf.end.next_multiple_of(PAGE_SIZE);
        let (paddr, size) = load_initrd(mem, path, low, layout::low_ram_end(mem_bytes))?;
        let module = hvm_modlist_entry {
            paddr,
            size,
            ..Default::default()
        };
        // SAFETY: hvm_modlist_entry is repr(C) plain integers.
        let bytes = unsafe { pod_bytes(&module) };
        mem.write_slice(bytes, GuestAddress(PVH_MODLIST_ADDR))?;
        info.nr_modules = 1;
        info.modlist_paddr = PVH_MODLIST_ADDR;
    }
    let map = e820_map(mem_bytes);
    for (i, &(addr, size)) in map.iter().enumerate() {
        let entry = hvm_memmap_table_entry {
            addr,
            size,
            type_: MEMMAP_TYPE_RAM,
            reserved: 0,
        };
        let at = PVH_MEMMAP_ADDR + (i * size_of::<hvm_memmap_table_entry>()) as u64;
        // SAFETY: hvm_memmap_table_entry is repr(C) plain integers.
        mem.write_slice(unsafe { pod_bytes(&entry) }, GuestAddress(at))?;
    }
    info.memmap_entries = map.len() as u32;
    // SAFETY: hvm_start_info is repr(C) plain integers.
    mem.write_slice(unsafe { pod_bytes(&info) }, GuestAddress(PVH_INFO_ADDR))?;
    write_descriptor_tables(mem)?;

    let boot = VcpuBoot {
        mode: EntryMode::Protected32,
        regs: EntryRegs {
            rip: entry.0,
            rbx: PVH_INFO_ADDR,
            ..Default::default()
        },
        linux: false,
    };
    Ok(BootPlan {
        vcpus: vec![boot; cfg.vcpus.into()],
        needs_irqchip: false,
    })
}
