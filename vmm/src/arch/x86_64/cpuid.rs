//! Guest CPUID: what KVM supports, with per-vCPU topology filled in.
use kvm_bindings::CpuId;

/// Leaf 1 ECX bit that tells a guest it runs under a hypervisor.
const HYPERVISOR_BIT: u32 = 1 << 31;

/// Adjusts `cpuid` (as reported by `KVM_GET_SUPPORTED_CPUID`) for vCPU `index` of `count`.
pub fn for_vcpu(cpuid: &mut CpuId, index: u8, count: u8) {
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            1 => {
                // EBX[31:24] initial APIC id, EBX[23:16] logical processor count.
                entry.ebx =
                    (entry.ebx & 0x0000_ffff) | (u32::from(index) << 24) | (u32::from(count) << 16);
                entry.ecx |= HYPERVISOR_BIT;
            }
            // Extended topology: EDX holds the x2APIC id on every sub-leaf.
            0xb | 0x1f => entry.edx = u32::from(index),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    #[test]
    fn sets_apic_id_and_hypervisor_bit() {
        let entries = [
            kvm_cpuid_entry2 {
                function: 1,
                ebx: 0xdead_0800,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xb,
                index: 1,
                ..Default::default()
            },
        ];
        let mut cpuid = CpuId::from_entries(&entries).unwrap();
        for_vcpu(&mut cpuid, 3, 4);
        let e = cpuid.as_slice();
        assert_eq!(e[0].ebx >> 24, 3);
        assert_eq!((e[0].ebx >> 16) & 0xff, 4);
        assert_eq!(e[0].ebx & 0xffff, 0x0800);
        assert_ne!(e[0].ecx & HYPERVISOR_BIT, 0);
        assert_eq!(e[1].edx, 3);
    }
}
