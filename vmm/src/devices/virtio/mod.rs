//! virtio devices on the virtio-mmio transport. `transport` holds the registers every device
//! shares, `chain` checks the guest's descriptor chains, and each device has a module.
pub mod block;
pub mod chain;
pub mod net;
pub mod transport;

use bench_abi::{VIRTIO_BASE, VIRTIO_STRIDE};

/// The MMIO window of virtio device `index`.
pub fn mmio_base(index: usize) -> u64 {
    VIRTIO_BASE + index as u64 * VIRTIO_STRIDE
}

/// The interrupt line of virtio device `index` on irqchip machines (IRQ 4 is the serial port).
pub fn irq(index: usize) -> u32 {
    5 + index as u32
}

/// How many virtio-mmio devices `cfg` has: the windows from index 0 up are theirs.
pub fn device_count(cfg: &crate::config::VmConfig) -> usize {
    cfg.net.len() + cfg.disks.len()
}

/// `cmdline` with the `virtio_mmio.device=` items that tell Linux where `count` devices are.
pub fn linux_cmdline(cmdline: &str, count: usize) -> String {
    let mut out = cmdline.to_owned();
    for i in 0..count {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(&format!(
            "virtio_mmio.device=4K@{:#x}:{}",
            mmio_base(i),
            irq(i)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn linux_learns_where_the_devices_are() {
        assert_eq!(super::linux_cmdline("console=ttyS0", 0), "console=ttyS0");
        assert_eq!(
            super::linux_cmdline("console=ttyS0", 2),
            "console=ttyS0 virtio_mmio.device=4K@0xd0002000:5 virtio_mmio.device=4K@0xd0003000:6"
        );
    }
}
