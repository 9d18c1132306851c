//! ACPI tables for Linux guests, as Firecracker and Cloud Hypervisor build them: an RSDP, an
//! XSDT, a hardware-reduced FADT, a DSDT whose AML declares the serial port and the virtio-mmio
//! devices, and a MADT with one local APIC per vCPU, the IOAPIC and the interrupt overrides.
//!
//! Distribution kernels (Debian's cloud kernel among them) take their CPUs from the MADT and
//! ignore the MP table when ACPI is there, so without these tables a Linux guest runs on one
//! vCPU. The tables go in `[ACPI_START, HIMEM_START)`, a range the e820 map leaves out of RAM;
//! the zero page points at the RSDP (`acpi_rsdp_addr`), and the RSDP also sits at the start of
//! the BIOS area, where kernels without that field look for it.
//!
//! The tables and the AML come from rust-vmm's `acpi_tables`. It has no MADT entries for
//! interrupt source overrides or local APIC NMIs; those two fixed-layout entries are written
//! here, into the crate's generic table.
use acpi_tables::aml;
use acpi_tables::fadt::{FADTBuilder, Flags, PmProfile, FADT};
use acpi_tables::madt::{EnabledStatus, IoApic, ProcessorLocalApic};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use super::layout::{ACPI_START, HIMEM_START};
use super::mptable::{APIC_DEFAULT_BASE, IOAPIC_DEFAULT_BASE};

const OEM_ID: [u8; 6] = *b"LNDRMT";
const OEM_TABLE_ID: [u8; 8] = *b"LNDRVMM ";
const OEM_REVISION: u32 = 1;
/// Table revisions of ACPI 6.x (the crate writes FADT 6.5).
const DSDT_REVISION: u8 = 6;
const MADT_REVISION: u8 = 5;
/// MADT flag: the machine also has dual 8259 PICs (KVM's in-kernel irqchip does).
const MADT_PCAT_COMPAT: u32 = 1;
/// MADT entry types the crate does not model.
const MADT_INTERRUPT_OVERRIDE: u8 = 2;
const MADT_LOCAL_APIC_NMI: u8 = 4;
/// MPS INTI flags: active high, edge triggered.
const INTI_HIGH_EDGE: u16 = 0b0101;
/// The serial port's I/O base and its ISA IRQ.
const COM1_PORT: u16 = 0x3f8;
const COM1_IRQ: u32 = 4;
/// The id Linux's virtio-mmio driver matches in ACPI (`virtio_mmio_acpi_match`).
pub const VIRTIO_MMIO_HID: &str = "LNRO0005";
/// Size of one virtio-mmio register window.
const VIRTIO_WINDOW: u32 = 0x1000;

#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    #[error("{0} vCPUs do not fit in the MADT (at most 254)")]
    TooManyCpus(u8),
    #[error("the ACPI tables take {size} bytes, more than the {room} reserved for them")]
    TooLarge { size: u64, room: u64 },
    #[error("virtio-mmio device {index} at {base:#x} is not in the 32-bit address space")]
    DeviceAddress { index: usize, base: u64 },
    #[error("cannot write the ACPI tables to guest memory")]
    Write(#[from] vm_memory::GuestMemoryError),
}

/// A virtio-mmio device the DSDT declares: its register window and its interrupt line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioMmio {
    pub base: u64,
    pub irq: u32,
}

/// The DSDT's AML: the COM1 16550 and one `LNRO0005` device per virtio-mmio window.
fn dsdt(devices: &[VirtioMmio]) -> Result<Sdt, AcpiError> {
    let mut body = Vec::new();
    let com1_io = aml::IO::new(COM1_PORT, COM1_PORT, 1, 8);
    let com1_irq = aml::Interrupt::new(true, true, false, false, COM1_IRQ);
    let com1_crs = aml::ResourceTemplate::new(vec![&com1_io, &com1_irq]);
    let com1_hid = aml::EISAName::new("PNP0501");
    aml::Device::new(
        "_SB_.COM1".into(),
        vec![
            &aml::Name::new("_HID".into(), &com1_hid),
            &aml::Name::new("_UID".into(), &aml::ZERO),
            &aml::Name::new("_CRS".into(), &com1_crs),
        ],
    )
    .to_aml_bytes(&mut body);
    for (index, dev) in devices.iter().enumerate() {
        let base = u32::try_from(dev.base)
            .map_err(|_| AcpiError::DeviceAddress {
                index,
                base: dev.base,
            })
            .and_then(|b| {
                b.checked_add(VIRTIO_WINDOW)
                    .map(|_| b)
                    .ok_or(AcpiError::DeviceAddress {
                        index,
                        base: dev.base,
                    })
            })?;
        let window = aml::Memory32Fixed::new(true, base, VIRTIO_WINDOW);
        // irqfds pulse the line: edge triggered, active high.
        let irq = aml::Interrupt::new(true, true, false, false, dev.irq);
        let crs = aml::ResourceTemplate::new(vec![&window, &irq]);
        let uid = index as u32;
        // Names are four characters: V000 ... V255 (there are at most MAX_VIRTIO devices).
        let path = format!("_SB_.V{:03}", index % 1000);
        aml::Device::new(
            path.as_str().into(),
            vec![
                &aml::Name::new("_HID".into(), &VIRTIO_MMIO_HID),
                &aml::Name::new("_UID".into(), &uid),
                // Cache-coherent DMA: the device reads and writes guest RAM directly.
                &aml::Name::new("_CCA".into(), &aml::ONE),
                &aml::Name::new("_CRS".into(), &crs),
            ],
        )
        .to_aml_bytes(&mut body);
    }
    let mut table = Sdt::new(
        *b"DSDT",
        36,
        DSDT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    table.append_slice(&body);
    Ok(table)
}

/// The FADT of a hardware-reduced machine: no PM blocks, no SCI, no legacy devices to probe
/// beyond what the DSDT says.
fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let table = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        .preferred_pm_profile(PmProfile::EnterpriseServer)
        .finalize();
    let mut bytes = Vec::new();
    table.to_aml_bytes(&mut bytes);
    bytes
}

/// The ISA IRQ → GSI overrides. KVM's default routing wires ISA IRQ n to IOAPIC pin n (QEMU
/// reroutes the PIT to pin 2; we do not), so these say "identity, edge, active high"
/// explicitly for the two legacy lines the machine uses: the PIT and COM1.
const OVERRIDES: [(u8, u32); 2] = [(0, 0), (COM1_IRQ as u8, COM1_IRQ)];

/// The MADT: the local APIC of every vCPU (APIC id = vCPU index, as CPUID says), the IOAPIC
/// with the id the MP table gives it, the overrides, and LINT1 as NMI on every CPU.
fn madt(cpus: u8) -> Result<Sdt, AcpiError> {
    if cpus == 0 || cpus > 254 {
        return Err(AcpiError::TooManyCpus(cpus));
    }
    let mut table = Sdt::new(
        *b"APIC",
        44,
        MADT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    table.write_u32(36, APIC_DEFAULT_BASE);
    table.write_u32(40, MADT_PCAT_COMPAT);
    let mut entries = Vec::new();
    for cpu in 0..cpus {
        ProcessorLocalApic::new(cpu, cpu, EnabledStatus::Enabled).to_aml_bytes(&mut entries);
    }
    IoApic::new(cpus + 1, IOAPIC_DEFAULT_BASE, 0).to_aml_bytes(&mut entries);
    for (source, gsi) in OVERRIDES {
        entries.extend_from_slice(&[MADT_INTERRUPT_OVERRIDE, 10, 0, source]);
        entries.extend_from_slice(&gsi.to_le_bytes());
        entries.extend_from_slice(&INTI_HIGH_EDGE.to_le_bytes());
    }
    // Processor UID 0xff: all processors; LINT1.
    entries.extend_from_slice(&[MADT_LOCAL_APIC_NMI, 6, 0xff]);
    entries.extend_from_slice(&INTI_HIGH_EDGE.to_le_bytes());
    entries.push(1);
    table.append_slice(&entries);
    Ok(table)
}

/// Writes the tables for `cpus` vCPUs and `devices` at [`ACPI_START`]; returns the RSDP's
/// address, for the zero page.
pub fn write<M: GuestMemory>(mem: &M, cpus: u8, devices: &[VirtioMmio]) -> Result<u64, AcpiError> {
    let align = |a: u64| a.next_multiple_of(16);
    let rsdp_addr = ACPI_START;
    let xsdt_addr = align(rsdp_addr + Rsdp::len() as u64);
    // The XSDT points at the FADT and the MADT: two entries.
    let fadt_addr = align(xsdt_addr + 36 + 2 * 8);
    let dsdt_addr = align(fadt_addr + FADT::len() as u64);
    let dsdt = dsdt(devices)?;
    let madt_addr = align(dsdt_addr + dsdt.len() as u64);
    let madt = madt(cpus)?;
    let end = madt_addr + madt.len() as u64;
    if end > HIMEM_START {
        return Err(AcpiError::TooLarge {
            size: end - ACPI_START,
            room: HIMEM_START - ACPI_START,
        });
    }
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let mut xsdt_bytes = Vec::new();
    xsdt.to_aml_bytes(&mut xsdt_bytes);
    let mut rsdp = Vec::new();
    Rsdp::new(OEM_ID, xsdt_addr).to_aml_bytes(&mut rsdp);

    mem.write_slice(&rsdp, GuestAddress(rsdp_addr))?;
    mem.write_slice(&xsdt_bytes, GuestAddress(xsdt_addr))?;
    mem.write_slice(&fadt(dsdt_addr), GuestAddress(fadt_addr))?;
    mem.write_slice(dsdt.as_slice(), GuestAddress(dsdt_addr))?;
    mem.write_slice(madt.as_slice(), GuestAddress(madt_addr))?;
    Ok(rsdp_addr)
}

#[cfg(test)]
mod tests;
