//! Identity-mapping page tables written into guest memory.
use vm_memory::{Bytes, GuestAddress, GuestMemory};

const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
const USER: u64 = 1 << 2;
const WRITE_THROUGH: u64 = 1 << 3;
const CACHE_DISABLE: u64 = 1 << 4;
const HUGE: u64 = 1 << 7;

const TWO_MIB: u64 = 2 << 20;
const ONE_GIB: u64 = 1 << 30;
const ENTRIES_PER_TABLE: u64 = 512;

/// Who may use the mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Privilege {
    Supervisor,
    /// Ring-3 guests need the U/S bit at every level.
    User,
}

#[derive(Debug, thiserror::Error)]
pub enum PagingError {
    #[error("page tables for {mapped:#x} bytes need {needed:#x} bytes, more than the {room:#x} reserved")]
    NoRoom { mapped: u64, needed: u64, room: u64 },
    #[error("cannot write page tables to guest memory")]
    Write(#[from] vm_memory::GuestMemoryError),
}

/// Bytes of page tables needed to identity-map `[0, end)` with 2 MiB pages.
pub fn table_bytes(end: u64) -> u64 {
    let pds = end.div_ceil(ONE_GIB).max(1);
    (2 + pds) * 4096
}

/// Writes PML4, one PDPT and as many PDs as needed at `base` to identity-map `[0, end)` with
/// 2 MiB pages; addresses in `uncached` are mapped uncacheable (device windows). Returns the
/// CR3 value. `end` is limited to 512 GiB, one PDPT.
pub fn identity_map<M: GuestMemory>(
    mem: &M,
    base: u64,
    room: u64,
    end: u64,
    privilege: Privilege,
    uncached: (u64, u64),
) -> Result<u64, PagingError> {
    let needed = table_bytes(end);
    if needed > room || end > ENTRIES_PER_TABLE * ONE_GIB {
        return Err(PagingError::NoRoom {
            mapped: end,
            needed,
            room,
        });
    }
    let user = if privilege == Privilege::User {
        USER
    } else {
        0
    };
    let table_flags = PRESENT | WRITABLE | user;
    let pml4 = base;
    let pdpt = base + 4096;
    let pd_base = base + 2 * 4096;
    let pds = end.div_ceil(ONE_GIB).max(1);

    // Build every table in one buffer and write it with one copy.
    let mut tables = vec![0u64; (needed / 8) as usize];
    tables[0] = pdpt | table_flags;
    for i in 0..pds {
        tables[512 + i as usize] = (pd_base + i * 4096) | table_flags;
    }
    let pages = end.div_ceil(TWO_MIB);
    for page in 0..pages {
        let addr = page * TWO_MIB;
        let mut flags = PRESENT | WRITABLE | HUGE | user;
        if addr < uncached.1 && addr + TWO_MIB > uncached.0 {
            flags |= CACHE_DISABLE | WRITE_THROUGH;
        }
        tables[1024 + page as usize] = addr | flags;
    }
    let bytes: Vec<u8> = tables.iter().flat_map(|e| e.to_le_bytes()).collect();
    mem.write_slice(&bytes, GuestAddress(pml4))?;
    Ok(pml4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    fn read(m: &GuestMemoryMmap, addr: u64) -> u64 {
        m.read_obj(GuestAddress(addr)).unwrap()
    }

    #[test]
    fn maps_user_pages_across_the_range() {
        let m = mem();
        let cr3 = identity_map(
            &m,
            0x10000,
            0x70000,
            5 << 30,
            Privilege::User,
            (3 << 30, 4 << 30),
        )
        .unwrap();
        assert_eq!(cr3, 0x10000);
        let pml4e = read(&m, cr3);
        assert_eq!(pml4e & !0xfff, 0x11000);
        assert_eq!(pml4e & 7, 7);
        // The fifth GiB's PD and its last 2 MiB page.
        let pdpte4 = read(&m, 0x11000 + 4 * 8);
        assert_eq!(pdpte4 & !0xfff, 0x12000 + 4 * 4096);
        let last = read(&m, (pdpte4 & !0xfff) + 511 * 8);
        assert_eq!(last & !0xfff, (5 << 30) - TWO_MIB);
        assert_eq!(
            last & (HUGE | USER | WRITABLE | PRESENT),
            HUGE | USER | WRITABLE | PRESENT
        );
        assert_eq!(last & CACHE_DISABLE, 0);
        // The device window is uncached.
        let mmio = read(&m, 0x12000 + 3 * 4096);
        assert_ne!(mmio & CACHE_DISABLE, 0);
    }

    #[test]
    fn supervisor_mapping_has_no_user_bit() {
        let m = mem();
        identity_map(&m, 0x9000, 0x3000, 1 << 30, Privilege::Supervisor, (0, 0)).unwrap();
        assert_eq!(read(&m, 0x9000) & USER, 0);
        assert_eq!(read(&m, 0xb000) & USER, 0);
    }

    #[test]
    fn refuses_to_overflow_its_area() {
        let m = mem();
        let err = identity_map(&m, 0x9000, 0x3000, 2 << 30, Privilege::Supervisor, (0, 0));
        assert!(matches!(err, Err(PagingError::NoRoom { .. })));
    }
}
