//! The tables read back with an independent parser (the `acpi` crate, which checks signatures,
//! lengths and checksums), against the configuration they were built for.
use std::ptr::NonNull;
use std::sync::Arc;

use acpi::madt::{Madt, MadtEntry};
use acpi::{AcpiHandler, AcpiTables, PhysicalMapping};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;

/// Guest memory below 1 MiB, copied out, mapped for the parser.
#[derive(Clone)]
struct LowMemory(Arc<Vec<u8>>);

impl AcpiHandler for LowMemory {
    unsafe fn map_physical_region<T>(&self, phys: usize, size: usize) -> PhysicalMapping<Self, T> {
        assert!(
            phys + size <= self.0.len(),
            "{phys:#x}+{size} outside low memory"
        );
        // SAFETY: the range is inside the buffer (checked above), which the handler keeps
        // alive for as long as any mapping holds a clone of it.
        let ptr = unsafe { self.0.as_ptr().add(phys) } as *mut T;
        let Some(ptr) = NonNull::new(ptr) else {
            panic!("null mapping")
        };
        // SAFETY: the pointer covers `size` readable bytes of the buffer.
        unsafe { PhysicalMapping::new(phys, ptr, size, size, self.clone()) }
    }

    fn unmap_physical_region<T>(_region: &PhysicalMapping<Self, T>) {}
}

fn devices(n: usize) -> Vec<VirtioMmio> {
    (0..n)
        .map(|i| VirtioMmio {
            base: crate::devices::virtio::mmio_base(i),
            irq: crate::devices::virtio::irq(i),
        })
        .collect()
}

fn build(cpus: u8, devs: &[VirtioMmio]) -> (u64, LowMemory) {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let rsdp = write(&mem, cpus, devs).unwrap();
    let mut low = vec![0u8; 1 << 20];
    mem.read_slice(&mut low, GuestAddress(0)).unwrap();
    (rsdp, LowMemory(Arc::new(low)))
}

fn sum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |a, &b| a.wrapping_add(b))
}

#[test]
fn every_table_parses_and_the_madt_has_one_enabled_lapic_per_vcpu() {
    for cpus in [1u8, 2, 8] {
        let (rsdp, low) = build(cpus, &devices(2));
        assert_eq!(rsdp, ACPI_START);
        // SAFETY: the handler maps only our copy of guest memory.
        let tables = unsafe { AcpiTables::from_rsdp(low.clone(), rsdp as usize) }.unwrap();
        let signatures: Vec<String> = tables
            .headers()
            .map(|h| h.signature.as_str().to_owned())
            .collect();
        assert_eq!(signatures, ["FACP", "APIC"]);
        // find_table checks each table's signature, length and checksum.
        let fadt = tables.find_table::<acpi::fadt::Fadt>().unwrap();
        assert!({ fadt.flags }.system_is_hw_reduced_acpi());
        let dsdt = tables.dsdt().unwrap();
        let header = dsdt.address - 36;
        let whole = &low.0[header..dsdt.address + dsdt.length as usize];
        assert_eq!(&whole[..4], b"DSDT");
        assert_eq!(sum(whole), 0, "DSDT checksum");

        let madt = tables.find_table::<Madt>().unwrap();
        let madt = madt.get();
        assert!(madt.supports_8259());
        let mut lapics = Vec::new();
        let (mut ioapics, mut overrides, mut nmis) = (Vec::new(), Vec::new(), 0);
        for entry in madt.entries() {
            match entry {
                MadtEntry::LocalApic(l) => {
                    let flags = l.flags;
                    assert_eq!(flags & 1, 1, "enabled");
                    lapics.push((l.processor_id, l.apic_id));
                }
                MadtEntry::IoApic(io) => {
                    let (id, addr, base) = (
                        io.io_apic_id,
                        io.io_apic_address,
                        io.global_system_interrupt_base,
                    );
                    ioapics.push((id, addr, base));
                }
                MadtEntry::InterruptSourceOverride(o) => {
                    let (bus, irq, gsi, flags) = (o.bus, o.irq, o.global_system_interrupt, o.flags);
                    overrides.push((bus, irq, gsi, flags));
                }
                MadtEntry::LocalApicNmi(n) => {
                    assert_eq!((n.processor_id, n.nmi_line), (0xff, 1));
                    nmis += 1;
                }
                other => panic!("unexpected MADT entry {other:?}"),
            }
        }
        let want: Vec<(u8, u8)> = (0..cpus).map(|c| (c, c)).collect();
        assert_eq!(lapics, want, "{cpus} vCPUs");
        assert_eq!(ioapics, [(cpus + 1, IOAPIC_DEFAULT_BASE, 0)]);
        assert_eq!(overrides, [(0, 0, 0, 5), (0, 4, 4, 5)]);
        assert_eq!(nmis, 1);
    }
}

/// The AML of one `Device`: the bytes from its name to the next device's.
fn device_aml<'a>(aml: &'a [u8], name: &[u8; 4]) -> Option<&'a [u8]> {
    let at = aml.windows(4).position(|w| w == name)?;
    Some(&aml[at..])
}

#[test]
fn the_dsdt_declares_the_serial_port_and_each_virtio_device() {
    for n in [0usize, 1, 8] {
        let devs = devices(n);
        let (rsdp, low) = build(2, &devs);
        // SAFETY: the handler maps only our copy of guest memory.
        let tables = unsafe { AcpiTables::from_rsdp(low.clone(), rsdp as usize) }.unwrap();
        let dsdt = tables.dsdt().unwrap();
        let aml = &low.0[dsdt.address..dsdt.address + dsdt.length as usize];
        let com1 = device_aml(aml, b"COM1").expect("COM1 declared");
        // EisaId("PNP0501") and the I/O port descriptor for 0x3f8, 8 ports.
        assert!(com1.windows(4).any(|w| w == [0x41, 0xd0, 0x05, 0x01]));
        assert!(com1
            .windows(8)
            .any(|w| w == [0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x01, 0x08]));
        let hids = aml
            .windows(VIRTIO_MMIO_HID.len())
            .filter(|w| *w == VIRTIO_MMIO_HID.as_bytes())
            .count();
        assert_eq!(hids, n, "one LNRO0005 per device");
        for (i, d) in devs.iter().enumerate() {
            let name = format!("V{i:03}");
            let name: [u8; 4] = name.as_bytes().try_into().unwrap();
            let dev = device_aml(aml, &name).unwrap_or_else(|| panic!("no {name:?}"));
            // Memory32Fixed: tag 0x86, length 9, read-write, base, 4 KiB.
            let mut m32 = vec![0x86, 0x09, 0x00, 0x01];
            m32.extend_from_slice(&(d.base as u32).to_le_bytes());
            m32.extend_from_slice(&0x1000u32.to_le_bytes());
            assert!(dev.windows(m32.len()).any(|w| w == m32), "{name:?} window");
            // Extended interrupt: consumer, edge, active high, one interrupt: the line.
            let mut irq = vec![0x89, 0x06, 0x00, 0x03, 0x01];
            irq.extend_from_slice(&d.irq.to_le_bytes());
            assert!(dev.windows(irq.len()).any(|w| w == irq), "{name:?} irq");
        }
    }
}

#[test]
fn rsdp_and_xsdt_checksums_cover_their_bytes() {
    let (rsdp, low) = build(4, &devices(3));
    let r = &low.0[rsdp as usize..rsdp as usize + 36];
    assert_eq!(&r[..8], b"RSD PTR ");
    assert_eq!(r[15], 2, "an ACPI 2.0+ RSDP, with an XSDT");
    assert_eq!(sum(&r[..20]), 0, "ACPI 1.0 checksum");
    assert_eq!(sum(r), 0, "extended checksum");
    let xsdt = u64::from_le_bytes(r[24..32].try_into().unwrap()) as usize;
    let len = u32::from_le_bytes(low.0[xsdt + 4..xsdt + 8].try_into().unwrap()) as usize;
    assert_eq!(len, 36 + 16);
    assert_eq!(sum(&low.0[xsdt..xsdt + len]), 0);
}

#[test]
fn impossible_configurations_are_errors() {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    assert!(matches!(
        write(&mem, 0, &[]),
        Err(AcpiError::TooManyCpus(0))
    ));
    assert!(matches!(
        write(&mem, 255, &[]),
        Err(AcpiError::TooManyCpus(255))
    ));
    let high = [VirtioMmio {
        base: 1 << 32,
        irq: 5,
    }];
    assert!(matches!(
        write(&mem, 1, &high),
        Err(AcpiError::DeviceAddress { index: 0, .. })
    ));
    // Memory that ends before the BIOS area cannot hold the tables.
    let small = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0xa_0000)]).unwrap();
    assert!(matches!(write(&small, 1, &[]), Err(AcpiError::Write(_))));
}
