//! Initial vCPU register state for each boot mode.
use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use super::gdt;
use super::layout::{GDT_ADDR, IDT_ADDR, TSS_ADDR};

const CR0_PE: u64 = 1 << 0;
const CR0_MP: u64 = 1 << 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_WP: u64 = 1 << 16;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXMMEXCPT: u64 = 1 << 10;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
/// Bit 1 of RFLAGS is reserved and always set; IF stays clear, nothing may interrupt us.
const RFLAGS_RESERVED: u64 = 1 << 1;
/// The busy 64-bit TSS type that VT-x requires in TR at VM entry.
const TSS_BUSY: u8 = 11;

/// The CPU mode a guest starts in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryMode {
    /// 64-bit long mode at CPL0 with the given page tables (the Linux 64-bit boot protocol).
    Long64 { cr3: u64 },
    /// 32-bit protected mode, paging off (PVH).
    Protected32,
    /// 64-bit long mode at CPL3 (the bench unikernel).
    User64 { cr3: u64 },
}

/// General-purpose registers at entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EntryRegs {
    pub rip: u64,
    pub rsp: u64,
    /// Linux: zero page.
    pub rsi: u64,
    /// Bench: boot-info page.
    pub rdi: u64,
    /// PVH: start info.
    pub rbx: u64,
}

pub fn regs(entry: &EntryRegs) -> kvm_regs {
    kvm_regs {
        rip: entry.rip,
        rsp: entry.rsp,
        rbp: entry.rsp,
        rsi: entry.rsi,
        rdi: entry.rdi,
        rbx: entry.rbx,
        rflags: RFLAGS_RESERVED,
        ..Default::default()
    }
}

/// Writes the GDT, an empty IDT and a zeroed TSS into guest memory.
pub fn write_descriptor_tables<M: GuestMemory>(mem: &M) -> Result<(), vm_memory::GuestMemoryError> {
    let table = gdt::table(TSS_ADDR);
    let bytes: Vec<u8> = table.iter().flat_map(|e| e.to_le_bytes()).collect();
    mem.write_slice(&bytes, GuestAddress(GDT_ADDR))?;
    mem.write_obj(0u64, GuestAddress(IDT_ADDR))?;
    mem.write_slice(&[0u8; 0x68], GuestAddress(TSS_ADDR))?;
    Ok(())
}

/// Segment and control registers for `mode`, starting from what KVM reported.
pub fn sregs(mut sregs: kvm_sregs, mode: EntryMode) -> kvm_sregs {
    let table = gdt::table(TSS_ADDR);
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (std::mem::size_of_val(&table) - 1) as u16;
    sregs.idt.base = IDT_ADDR;
    sregs.idt.limit = 7;
    let mut tr = gdt::segment(&table, gdt::TSS, 0);
    tr.type_ = TSS_BUSY;
    sregs.tr = tr;
    sregs.ldt.unusable = 1;
    sregs.ldt.present = 0;

    let (code, data) = match mode {
        EntryMode::Long64 { .. } => (
            gdt::segment(&table, gdt::KERNEL_CODE64, 0),
            gdt::segment(&table, gdt::KERNEL_DATA, 0),
        ),
        EntryMode::Protected32 => (
            gdt::segment(&table, gdt::KERNEL_CODE32, 0),
            gdt::segment(&table, gdt::KERNEL_DATA, 0),
        ),
        EntryMode::User64 { .. } => (
            gdt::segment(&table, gdt::USER_CODE64, 3),
            gdt::segment(&table, gdt::USER_DATA, 3),
        ),
    };
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;

    match mode {
        EntryMode::Long64 { cr3 } | EntryMode::User64 { cr3 } => {
            sregs.cr3 = cr3;
            sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG;
            sregs.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT;
            sregs.efer = EFER_LME | EFER_LMA;
        }
        EntryMode::Protected32 => {
            sregs.cr0 = CR0_PE | CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
    }
    sregs
}

/// x87 and SSE control words as after `FNINIT` and reset.
pub fn fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_mode_starts_at_cpl3_in_long_mode() {
        let s = sregs(kvm_sregs::default(), EntryMode::User64 { cr3: 0x10000 });
        assert_eq!(s.cs.dpl, 3);
        assert_eq!(s.cs.selector & 3, 3);
        assert_eq!(s.ss.dpl, 3);
        assert_eq!(s.cs.l, 1);
        assert_eq!(s.cr3, 0x10000);
        assert_ne!(s.efer & EFER_LMA, 0);
        assert_ne!(s.cr4 & CR4_OSFXSR, 0);
        assert_eq!(s.tr.type_, TSS_BUSY);
    }

    #[test]
    fn pvh_starts_in_flat_protected_mode_without_paging() {
        let s = sregs(kvm_sregs::default(), EntryMode::Protected32);
        assert_eq!(s.cr0 & CR0_PG, 0);
        assert_ne!(s.cr0 & CR0_PE, 0);
        assert_eq!(
            (s.cs.db, s.cs.l, s.cs.base, s.cs.limit),
            (1, 0, 0, 0xffff_ffff)
        );
        assert_eq!(s.efer, 0);
    }

    #[test]
    fn interrupts_are_off_at_entry() {
        let r = regs(&EntryRegs {
            rip: 0x100000,
            ..Default::default()
        });
        assert_eq!(r.rflags & (1 << 9), 0);
        assert_eq!(r.rip, 0x100000);
    }
}
