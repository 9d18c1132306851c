//! x86-64 specifics: guest-physical layout, descriptor tables, page tables, boot registers,
//! CPUID, MSRs, the MP table and the ACPI tables.
pub mod acpi;
pub mod cpuid;
pub mod gdt;
pub mod layout;
pub mod mptable;
pub mod msr;
pub mod paging;
pub mod regs;
