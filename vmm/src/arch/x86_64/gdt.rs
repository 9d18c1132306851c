//! Global descriptor table entries and the `kvm_segment`s that describe them.
//!
//! KVM takes segment registers as already-loaded descriptor caches, so the GDT in guest memory
//! only matters when the guest reloads a selector. We still write one that matches, so a guest
//! that does reload sees the same segments.
use kvm_bindings::kvm_segment;

/// Selector indices in our GDT.
pub const NULL: usize = 0;
pub const KERNEL_CODE64: usize = 1;
pub const KERNEL_DATA: usize = 2;
pub const KERNEL_CODE32: usize = 3;
pub const USER_DATA: usize = 4;
pub const USER_CODE64: usize = 5;
pub const TSS: usize = 6;
/// Entries in the table; the TSS descriptor takes two slots in long mode.
pub const ENTRIES: usize = 8;

/// Access-byte and flag values for each entry.
const fn entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
        | (((limit as u64 & 0x000f_0000) >> 16) << 48)
        | ((flags as u64 & 0x0000_f0ff) << 40)
}

/// Our GDT. Flags are `G DB L AVL` in the high nibble and the access byte in the low byte.
pub fn table(tss_base: u64) -> [u64; ENTRIES] {
    let mut gdt = [0u64; ENTRIES];
    gdt[KERNEL_CODE64] = entry(0xa09b, 0, 0xfffff);
    gdt[KERNEL_DATA] = entry(0xc093, 0, 0xfffff);
    gdt[KERNEL_CODE32] = entry(0xc09b, 0, 0xfffff);
    gdt[USER_DATA] = entry(0xc0f3, 0, 0xfffff);
    gdt[USER_CODE64] = entry(0xa0fb, 0, 0xfffff);
    // A 64-bit available TSS occupies two slots; the second holds base bits 63:32.
    gdt[TSS] = entry(0x0089, tss_base as u32, 0x67);
    gdt[TSS + 1] = tss_base >> 32;
    gdt
}

/// The descriptor cache for GDT entry `index` with requested privilege `rpl`.
pub fn segment(gdt: &[u64; ENTRIES], index: usize, rpl: u8) -> kvm_segment {
    let e = gdt[index];
    let base = ((e >> 16) & 0x00ff_ffff) | ((e >> 32) & 0xff00_0000);
    let raw_limit = (e & 0xffff) | ((e >> 32) & 0x000f_0000);
    let g = ((e >> 55) & 1) as u8;
    let limit = if g == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    kvm_segment {
        base,
        limit: limit as u32,
        selector: ((index as u16) << 3) | u16::from(rpl & 3),
        type_: ((e >> 40) & 0xf) as u8,
        present: ((e >> 47) & 1) as u8,
        dpl: ((e >> 45) & 3) as u8,
        db: ((e >> 54) & 1) as u8,
        s: ((e >> 44) & 1) as u8,
        l: ((e >> 53) & 1) as u8,
        g,
        avl: ((e >> 52) & 1) as u8,
        unusable: u8::from((e >> 47) & 1 == 0),
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_code_is_64bit_ring0() {
        let gdt = table(0x600);
        let cs = segment(&gdt, KERNEL_CODE64, 0);
        assert_eq!((cs.l, cs.db, cs.dpl, cs.present, cs.s), (1, 0, 0, 1, 1));
        assert_eq!(cs.type_, 0xb);
        assert_eq!(cs.selector, 0x8);
        assert_eq!(cs.limit, 0xffff_ffff);
    }

    #[test]
    fn user_segments_are_ring3() {
        let gdt = table(0x600);
        let cs = segment(&gdt, USER_CODE64, 3);
        let ss = segment(&gdt, USER_DATA, 3);
        assert_eq!((cs.dpl, cs.l, cs.selector), (3, 1, 0x2b));
        assert_eq!((ss.dpl, ss.db, ss.type_, ss.selector), (3, 1, 3, 0x23));
    }

    #[test]
    fn tss_descriptor_carries_its_base() {
        let gdt = table(0x1234_5678_9abc);
        let tr = segment(&gdt, TSS, 0);
        assert_eq!(tr.base & 0xffff_ffff, 0x5678_9abc);
        assert_eq!(gdt[TSS + 1], 0x1234);
        assert_eq!((tr.type_, tr.limit, tr.s), (9, 0x67, 0));
    }
}
