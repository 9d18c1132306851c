//! The bench boot: a static ELF64 started directly in ring 3 with identity paging, a private
//! stack per vCPU and a boot-info page in RDI. See the `bench_abi` crate for the contract.
use bench_abi::{BootInfo, Region, BOOT_INFO_BASE, BOOT_MAGIC, BOOT_VERSION, CMDLINE_MAX};
use bench_abi::{MAX_REGIONS, STACK_SIZE};
use vm_memory::{Bytes, GuestAddress};

use super::{elf_check, open, pod_bytes, BootError, BootPlan};
use crate::arch::x86_64::layout::{self, HIMEM_START, MMIO_END, MMIO_START, PAGE_SIZE};
use crate::arch::x86_64::paging::{self, Privilege};
use crate::arch::x86_64::regs::{write_descriptor_tables, EntryMode, EntryRegs};
use crate::config::VmConfig;
use crate::vstate::memory::GuestMemory;
use crate::vstate::vcpu::VcpuBoot;

fn boot_info(cfg: &VmConfig, index: u8, free: &[Region]) -> BootInfo {
    let mut info = BootInfo {
        magic: BOOT_MAGIC,
        version: BOOT_VERSION,
        vcpu_index: index.into(),
        vcpu_count: cfg.vcpus.into(),
        region_count: free.len() as u32,
        ram_size: cfg.mem_bytes(),
        tsc_khz: 0,
        console_base: bench_abi::CONSOLE_BASE,
        control_base: bench_abi::CONTROL_BASE,
        free: [Region::default(); MAX_REGIONS],
        virtio_count: crate::devices::virtio::device_count(cfg).min(bench_abi::MAX_VIRTIO) as u32,
        cmdline_len: cfg.cmdline.len() as u32,
        virtio: Default::default(),
        cmdline: [0; CMDLINE_MAX],
    };
    info.free[..free.len()].copy_from_slice(free);
    let count = crate::devices::virtio::device_count(cfg);
    for (i, dev) in info.virtio.iter_mut().take(count).enumerate() {
        *dev = bench_abi::VirtioDevice {
            base: bench_abi::VIRTIO_BASE + i as u64 * bench_abi::VIRTIO_STRIDE,
            len: bench_abi::VIRTIO_STRIDE,
        };
    }
    info.cmdline[..cfg.cmdline.len()].copy_from_slice(cfg.cmdline.as_bytes());
    info
}

pub fn load(mem: &GuestMemory, cfg: &VmConfig) -> Result<BootPlan, BootError> {
    if cfg.cmdline.len() > CMDLINE_MAX {
        return Err(BootError::CmdlineTooLong {
            len: cfg.cmdline.len(),
            max: CMDLINE_MAX,
        });
    }
    let mem_bytes = cfg.mem_bytes();
    let ram = layout::ram_ranges(mem_bytes);
    let mut kernel = open("kernel", &cfg.kernel)?;
    let elf = elf_check::check(&mut kernel, &ram, HIMEM_START)?;

    let low_end = layout::low_ram_end(mem_bytes);
    let stacks = u64::from(cfg.vcpus) * STACK_SIZE;
    let free_start = elf.end.next_multiple_of(PAGE_SIZE);
    if elf.end > low_end || free_start + stacks > low_end {
        return Err(BootError::NoRoom {
            kernel_end: elf.end,
            vcpus: cfg.vcpus,
            ram: low_end,
        });
    }

    use linux_loader::loader::KernelLoader;
    linux_loader::loader::Elf::load(mem, None, &mut kernel, Some(GuestAddress(HIMEM_START)))?;
    // A reused memory file may hold old bytes where the image's .bss goes.
    for s in &elf.segments {
        let bss = s.memsz - s.filesz;
        if bss > 0 {
            mem.write_slice(&vec![0u8; bss as usize], GuestAddress(s.start + s.filesz))?;
        }
    }

    write_descriptor_tables(mem)?;
    let map_end = layout::ram_end(mem_bytes).max(MMIO_END);
    let room = layout::PAGE_TABLES_END - layout::BENCH_PAGE_TABLES_ADDR;
    let cr3 = paging::identity_map(
        mem,
        layout::BENCH_PAGE_TABLES_ADDR,
        room,
        map_end,
        Privilege::User,
        (MMIO_START, MMIO_END),
    )?;

    let mut free = vec![Region {
        start: free_start,
        len: low_end - stacks - free_start,
    }];
    if let Some(&(start, len)) = ram.get(1) {
        free.push(Region { start, len });
    }

    let mut vcpus = Vec::with_capacity(cfg.vcpus.into());
    for index in 0..cfg.vcpus {
        let info_addr = BOOT_INFO_BASE + u64::from(index) * PAGE_SIZE;
        let info = boot_info(cfg, index, &free);
        // SAFETY: BootInfo is repr(C) and made only of integers and arrays of integers.
        mem.write_slice(unsafe { pod_bytes(&info) }, GuestAddress(info_addr))?;
        let stack_top = low_end - u64::from(index) * STACK_SIZE;
        vcpus.push(VcpuBoot {
            mode: EntryMode::User64 { cr3 },
            regs: EntryRegs {
                rip: elf.entry,
                rsp: stack_top,
                rdi: info_addr,
                ..Default::default()
            },
            linux: false,
        });
    }
    Ok(BootPlan {
        vcpus,
        needs_irqchip: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::elf_check::tests::tiny_elf;
    use crate::config::BootMode;
    use crate::vstate::memory::{self, Backing};

    fn cfg(path: std::path::PathBuf, vcpus: u8, mem_mib: u64, cmdline: &str) -> VmConfig {
        VmConfig {
            kernel: path,
            initrd: None,
            cmdline: cmdline.into(),
            boot: BootMode::Bench,
            mem_mib,
            vcpus,
            backing: Backing::Anonymous,
            net: Vec::new(),
            disks: Vec::new(),
        }
    }

    #[test]
    fn lays_out_boot_info_stacks_and_free_memory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.elf");
        std::fs::write(&path, tiny_elf(0x100000, &[0x90; 32], 0x3000)).unwrap();
        let c = cfg(path, 2, 64, "workload=idle");
        let mem = memory::create(c.mem_bytes(), &Backing::Anonymous).unwrap();
        let plan = load(&mem, &c).unwrap();
        assert_eq!(plan.vcpus.len(), 2);
        let r1 = plan.vcpus[1].regs;
        assert_eq!(r1.rdi, BOOT_INFO_BASE + PAGE_SIZE);
        assert_eq!(r1.rsp, (64 << 20) - STACK_SIZE);
        assert_eq!(r1.rip, 0x100000);
        let magic: u64 = mem.read_obj(GuestAddress(r1.rdi)).unwrap();
        assert_eq!(magic, BOOT_MAGIC);
        let index: u32 = mem.read_obj(GuestAddress(r1.rdi + 12)).unwrap();
        assert_eq!(index, 1);
        let free: Region = Region {
            start: mem.read_obj(GuestAddress(r1.rdi + 56)).unwrap(),
            len: mem.read_obj(GuestAddress(r1.rdi + 64)).unwrap(),
        };
        assert_eq!(free.start, 0x103000);
        assert_eq!(free.start + free.len, (64 << 20) - 2 * STACK_SIZE);
    }

    #[test]
    fn rejects_a_command_line_longer_than_the_page_holds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.elf");
        std::fs::write(&path, tiny_elf(0x100000, &[0x90; 32], 32)).unwrap();
        let c = cfg(path, 1, 64, &"x".repeat(CMDLINE_MAX + 1));
        let mem = memory::create(c.mem_bytes(), &Backing::Anonymous).unwrap();
        assert!(matches!(
            load(&mem, &c),
            Err(BootError::CmdlineTooLong { .. })
        ));
    }

    #[test]
    fn rejects_an_image_that_leaves_no_room_for_stacks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.elf");
        std::fs::write(&path, tiny_elf(0x100000, &[0x90; 32], (8 << 20) - 0x100000)).unwrap();
        let c = cfg(path, 1, 8, "");
        let mem = memory::create(c.mem_bytes(), &Backing::Anonymous).unwrap();
        assert!(matches!(load(&mem, &c), Err(BootError::NoRoom { .. })));
    }
}
