//! The Intel MultiProcessor Specification 1.4 table, which tells a Linux guest how many CPUs
//! there are and how legacy IRQs reach the IOAPIC.
use vm_memory::{Bytes, GuestAddress, GuestMemory};

pub const APIC_DEFAULT_BASE: u32 = 0xfee0_0000;
pub const IOAPIC_DEFAULT_BASE: u32 = 0xfec0_0000;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const SPEC_REV: u8 = 4;
const ISA_IRQS: u8 = 16;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTSTRAP: u8 = 2;

#[derive(Debug, thiserror::Error)]
pub enum MpTableError {
    #[error("{0} vCPUs do not fit in an MP table (at most 254)")]
    TooManyCpus(u8),
    #[error("the MP table does not fit in guest memory")]
    Write(#[from] vm_memory::GuestMemoryError),
}

/// Bytes summing to zero modulo 256 is how MP structures are checksummed.
fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, &b| a.wrapping_add(b)))
}

/// Builds the configuration table's entries for `cpus` processors.
fn entries(cpus: u8) -> (Vec<u8>, u16) {
    let ioapic_id = cpus + 1;
    let mut out = Vec::new();
    let mut count = 0u16;
    for cpu in 0..cpus {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOTSTRAP } else { 0 };
        out.extend_from_slice(&[ENTRY_PROCESSOR, cpu, APIC_VERSION, flags]);
        out.extend_from_slice(&0x600u32.to_le_bytes()); // family 6 signature
        out.extend_from_slice(&0x201u32.to_le_bytes()); // FPU and APIC present
        out.extend_from_slice(&[0; 8]);
        count += 1;
    }
    out.extend_from_slice(&[ENTRY_BUS, 0]);
    out.extend_from_slice(b"ISA   ");
    out.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    out.extend_from_slice(&IOAPIC_DEFAULT_BASE.to_le_bytes());
    count += 2;
    for irq in 0..ISA_IRQS {
        out.extend_from_slice(&[
            ENTRY_IO_INTERRUPT,
            INT_TYPE_INT,
            0,
            0,
            0,
            irq,
            ioapic_id,
            irq,
        ]);
        count += 1;
    }
    out.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, INT_TYPE_EXTINT, 0, 0, 0, 0, 0, 0]);
    out.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, INT_TYPE_NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;
    (out, count)
}

/// Writes the floating pointer and the configuration table at `addr`; returns the bytes used.
pub fn write<M: GuestMemory>(mem: &M, addr: u64, cpus: u8) -> Result<u64, MpTableError> {
    if cpus == 0 || cpus > 254 {
        return Err(MpTableError::TooManyCpus(cpus));
    }
    let table_addr = addr + 16;
    let (body, count) = entries(cpus);

    let mut table = Vec::with_capacity(44 + body.len());
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&((44 + body.len()) as u16).to_le_bytes());
    table.extend_from_slice(&[SPEC_REV, 0]); // checksum patched below
    table.extend_from_slice(b"LNDRMAT ");
    table.extend_from_slice(b"LAUNDROMAT  ");
    table.extend_from_slice(&0u32.to_le_bytes()); // no OEM table
    table.extend_from_slice(&0u16.to_le_bytes());
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&APIC_DEFAULT_BASE.to_le_bytes());
    table.extend_from_slice(&[0, 0, 0, 0]); // no extended table
    table.extend_from_slice(&body);
    table[7] = checksum(&table);

    let mut floating = Vec::with_capacity(16);
    floating.extend_from_slice(b"_MP_");
    floating.extend_from_slice(&(table_addr as u32).to_le_bytes());
    floating.extend_from_slice(&[1, SPEC_REV, 0, 0, 0, 0, 0, 0]);
    floating[10] = checksum(&floating);

    mem.write_slice(&floating, GuestAddress(addr))?;
    mem.write_slice(&table, GuestAddress(table_addr))?;
    Ok(16 + table.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    #[test]
    fn structures_checksum_to_zero_and_count_cpus() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let len = write(&mem, 0x9fc00, 4).unwrap();
        let mut buf = vec![0u8; len as usize];
        mem.read_slice(&mut buf, GuestAddress(0x9fc00)).unwrap();
        assert_eq!(&buf[..4], b"_MP_");
        assert_eq!(buf[..16].iter().fold(0u8, |a, &b| a.wrapping_add(b)), 0);
        assert_eq!(&buf[16..20], b"PCMP");
        assert_eq!(buf[16..].iter().fold(0u8, |a, &b| a.wrapping_add(b)), 0);
        let cpus = buf[16 + 44..]
            .chunks(20)
            .take(4)
            .filter(|e| e[0] == 0)
            .count();
        assert_eq!(cpus, 4);
        assert!(len < 0x400, "must fit below 640 KiB");
    }

    #[test]
    fn rejects_zero_cpus() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        assert!(matches!(
            write(&mem, 0x9fc00, 0),
            Err(MpTableError::TooManyCpus(0))
        ));
    }
}
