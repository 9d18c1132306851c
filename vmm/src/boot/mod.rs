//! Loading a guest and computing its vCPUs' entry state, for each boot mode.
pub mod bench;
pub mod elf_check;
pub mod linux;
pub mod pvh;

use std::fs::File;
use std::path::{Path, PathBuf};

use vm_memory::{Bytes, GuestAddress};

use crate::arch::x86_64::{mptable::MpTableError, paging::PagingError};
use crate::config::{BootMode, VmConfig};
use crate::vstate::memory::GuestMemory;
use crate::vstate::vcpu::VcpuBoot;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot open {what} {path}")]
    Open {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid kernel image")]
    Elf(#[from] elf_check::ElfError),
    #[error("cannot load the kernel: {0}")]
    Loader(#[from] linux_loader::loader::Error),
    #[error("the command line is {len} bytes, longer than the {max} allowed")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("the command line contains a NUL byte")]
    CmdlineNul,
    #[error("the {size}-byte initrd does not fit in guest RAM between {low:#x} and {high:#x}")]
    InitrdTooLarge { size: u64, low: u64, high: u64 },
    #[error("the kernel (ending at {kernel_end:#x}) and {vcpus} vCPU stacks do not fit in {ram:#x} bytes of low RAM")]
    NoRoom {
        kernel_end: u64,
        vcpus: u8,
        ram: u64,
    },
    #[error("the kernel has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)")]
    NoPvhNote,
    #[error("cannot build page tables")]
    Paging(#[from] PagingError),
    #[error("cannot write the ACPI tables")]
    Acpi(#[from] crate::arch::x86_64::acpi::AcpiError),
    #[error("cannot write the MP table")]
    MpTable(#[from] MpTableError),
    #[error("cannot write boot structures to guest memory")]
    Memory(#[from] vm_memory::GuestMemoryError),
    #[error("cannot read the initrd")]
    ReadInitrd(#[source] std::io::Error),
}

/// How to start each vCPU, plus what the VM needs around it.
pub struct BootPlan {
    pub vcpus: Vec<VcpuBoot>,
    /// Linux guests need the in-kernel PIC, IOAPIC and PIT.
    pub needs_irqchip: bool,
}

pub(crate) fn open(what: &'static str, path: &Path) -> Result<File, BootError> {
    File::open(path).map_err(|source| BootError::Open {
        what,
        path: path.into(),
        source,
    })
}

/// Writes the command line NUL-terminated at `addr`, checking it against `max` bytes.
pub(crate) fn write_cmdline(
    mem: &GuestMemory,
    cmdline: &str,
    addr: u64,
    max: usize,
) -> Result<(), BootError> {
    if cmdline.len() >= max {
        return Err(BootError::CmdlineTooLong {
            len: cmdline.len(),
            max: max - 1,
        });
    }
    if cmdline.contains('\0') {
        return Err(BootError::CmdlineNul);
    }
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(addr))?;
    Ok(())
}

/// Loads `initrd` at the highest page-aligned address below `high` that clears `low`;
/// returns `(address, size)`.
pub(crate) fn load_initrd(
    mem: &GuestMemory,
    path: &Path,
    low: u64,
    high: u64,
) -> Result<(u64, u64), BootError> {
    let mut file = open("initrd", path)?;
    let size = file.metadata().map_err(BootError::ReadInitrd)?.len();
    let addr = high
        .checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|&a| a >= low);
    let Some(addr) = addr else {
        return Err(BootError::InitrdTooLarge { size, low, high });
    };
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(BootError::Memory)?;
    Ok((addr, size))
}

/// The bytes of a plain-old-data boot structure, to copy into guest memory.
///
/// # Safety
/// `T` must be plain data: no padding bytes, pointers or references (the boot-protocol
/// structures are `repr(C)` or `repr(C, packed)` integers and arrays).
pub(crate) unsafe fn pod_bytes<T: Copy>(v: &T) -> &[u8] {
    // SAFETY: the caller guarantees every byte of T is initialised plain data; the slice
    // borrows `v` and so cannot outlive it.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }
}

/// Loads the guest described by `cfg` into `mem`.
pub fn load(mem: &GuestMemory, cfg: &VmConfig) -> Result<BootPlan, BootError> {
    match cfg.boot {
        BootMode::Bench => bench::load(mem, cfg),
        BootMode::Linux => linux::load(mem, cfg),
        BootMode::Pvh => pvh::load(mem, cfg),
    }
}
