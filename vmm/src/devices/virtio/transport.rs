//! The virtio-mmio transport (virtio 1.2, section 4.2.2, "modern" register layout version 2):
//! the registers a driver uses to negotiate features, place its queues and start the device.
//!
//! This is the device-independent part. It never touches guest memory: a device's queues are
//! checked against guest RAM when the driver sets DRIVER_OK ([`Action::Activate`]), and every
//! descriptor chain is checked again when it is used (see `chain`).
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
};
use virtio_bindings::virtio_mmio::*;
use virtio_queue::{Queue, QueueT};

/// The QueueNotify register's offset, where ioeventfds listen for kicks.
pub const QUEUE_NOTIFY: u64 = VIRTIO_MMIO_QUEUE_NOTIFY as u64;

/// "virt", little-endian.
const MAGIC: u32 = 0x7472_6976;
/// The modern (non-legacy) virtio-mmio register layout.
const MMIO_VERSION: u32 = 2;
/// Our vendor id: "LNDR".
const VENDOR: u32 = 0x5244_4e4c;

/// What the device must do after a register write.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    None,
    /// The driver set DRIVER_OK: the queues are configured and the device may start.
    Activate,
    /// The driver wrote QueueNotify for this queue (when no ioeventfd caught it first).
    Notify(u16),
    /// The driver wrote 0 to Status: the device forgets its configuration.
    Reset,
}

/// The transport's registers and the queues they configure.
pub struct Transport {
    pub device_id: u32,
    pub device_features: u64,
    pub driver_features: u64,
    device_features_sel: u32,
    driver_features_sel: u32,
    queue_sel: u32,
    pub status: u32,
    pub interrupt_status: u32,
    pub config_generation: u32,
    pub queues: Vec<Queue>,
}

/// Assembles a little-endian value from an access of up to 4 bytes.
fn value(data: &[u8]) -> u32 {
    let mut bytes = [0u8; 4];
    let n = data.len().min(4);
    bytes[..n].copy_from_slice(&data[..n]);
    u32::from_le_bytes(bytes)
}

fn put(data: &mut [u8], v: u32) {
    let bytes = v.to_le_bytes();
    let n = data.len().min(4);
    data[..n].copy_from_slice(&bytes[..n]);
}

/// Replaces the low or high half of a 64-bit value.
fn set_half(old: u64, high: bool, v: u32) -> u64 {
    match high {
        false => (old & !0xffff_ffff) | u64::from(v),
        true => (old & 0xffff_ffff) | (u64::from(v) << 32),
    }
}

impl Transport {
    /// A transport for a device of type `device_id` offering `features`, with one queue of
    /// at most `max_size` entries per element of `queues` (each a power of two).
    pub fn new(device_id: u32, features: u64, queue_max_sizes: &[u16]) -> Self {
        let queues = queue_max_sizes
            .iter()
            .filter_map(|&max| Queue::new(max).ok())
            .collect();
        Self {
            device_id,
            device_features: features,
            driver_features: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            queue_sel: 0,
            status: 0,
            interrupt_status: 0,
            config_generation: 0,
            queues,
        }
    }

    /// True once the driver has set DRIVER_OK and the device has not failed.
    pub fn is_active(&self) -> bool {
        self.status & VIRTIO_CONFIG_S_DRIVER_OK != 0
            && self.status & (VIRTIO_CONFIG_S_FAILED | VIRTIO_CONFIG_S_NEEDS_RESET) == 0
    }

    /// Marks the device broken: the driver sees NEEDS_RESET and the device stops using its
    /// queues until it is reset.
    pub fn set_needs_reset(&mut self) {
        self.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
    }

    pub fn has_feature(&self, bit: u32) -> bool {
        self.driver_features & (1u64 << bit) != 0
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        // Only configurable before DRIVER_OK: a running queue's geometry never changes under
        // the device.
        if self.status & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            return None;
        }
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// Reads a register below the config space (offset < 0x100).
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        let q = self.queues.get(self.queue_sel as usize);
        let v = match offset as u32 {
            VIRTIO_MMIO_MAGIC_VALUE => MAGIC,
            VIRTIO_MMIO_VERSION => MMIO_VERSION,
            VIRTIO_MMIO_DEVICE_ID => self.device_id,
            VIRTIO_MMIO_VENDOR_ID => VENDOR,
            VIRTIO_MMIO_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device_features as u32,
                1 => (self.device_features >> 32) as u32,
                _ => 0,
            },
            VIRTIO_MMIO_QUEUE_NUM_MAX => q.map_or(0, |q| u32::from(q.max_size())),
            VIRTIO_MMIO_QUEUE_READY => q.map_or(0, |q| u32::from(q.ready())),
            VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt_status,
            VIRTIO_MMIO_STATUS => self.status,
            VIRTIO_MMIO_CONFIG_GENERATION => self.config_generation,
            _ => 0,
        };
        put(data, v);
    }

    /// Writes a register below the config space and says what the device must do about it.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Action {
        let v = value(data);
        match offset as u32 {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_sel = v,
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            VIRTIO_MMIO_DRIVER_FEATURES => {
                // Features are fixed once FEATURES_OK is set; the driver may only accept what
                // the device offered.
                if self.status & VIRTIO_CONFIG_S_FEATURES_OK == 0 {
                    let high = match self.driver_features_sel {
                        0 => false,
                        1 => true,
                        _ => return Action::None,
                    };
                    let f = set_half(self.driver_features, high, v);
                    self.driver_features = f & self.device_features;
                }
            }
            VIRTIO_MMIO_QUEUE_SEL => self.queue_sel = v,
            VIRTIO_MMIO_QUEUE_NUM => {
                if let Some(q) = self.selected_queue() {
                    q.set_size(v as u16);
                }
            }
            VIRTIO_MMIO_QUEUE_READY => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(v == 1);
                }
            }
            VIRTIO_MMIO_QUEUE_DESC_LOW | VIRTIO_MMIO_QUEUE_DESC_HIGH => {
                let high = offset as u32 == VIRTIO_MMIO_QUEUE_DESC_HIGH;
                if let Some(q) = self.selected_queue() {
                    let (lo, hi) = if high {
                        (None, Some(v))
                    } else {
                        (Some(v), None)
                    };
                    q.set_desc_table_address(lo, hi);
                }
            }
            VIRTIO_MMIO_QUEUE_AVAIL_LOW | VIRTIO_MMIO_QUEUE_AVAIL_HIGH => {
                let high = offset as u32 == VIRTIO_MMIO_QUEUE_AVAIL_HIGH;
                if let Some(q) = self.selected_queue() {
                    let (lo, hi) = if high {
                        (None, Some(v))
                    } else {
                        (Some(v), None)
                    };
                    q.set_avail_ring_address(lo, hi);
                }
            }
            VIRTIO_MMIO_QUEUE_USED_LOW | VIRTIO_MMIO_QUEUE_USED_HIGH => {
                let high = offset as u32 == VIRTIO_MMIO_QUEUE_USED_HIGH;
                if let Some(q) = self.selected_queue() {
                    let (lo, hi) = if high {
                        (None, Some(v))
                    } else {
                        (Some(v), None)
                    };
                    q.set_used_ring_address(lo, hi);
                }
            }
            VIRTIO_MMIO_QUEUE_NOTIFY => {
                if (v as usize) < self.queues.len() {
                    return Action::Notify(v as u16);
                }
            }
            VIRTIO_MMIO_INTERRUPT_ACK => self.interrupt_status &= !v,
            VIRTIO_MMIO_STATUS => return self.set_status(v),
            _ => tracing::debug!(offset, "write to a read-only or unknown virtio register"),
        }
        Action::None
    }

    fn set_status(&mut self, v: u32) -> Action {
        if v == 0 {
            self.reset();
            return Action::Reset;
        }
        let was_ok = self.status & VIRTIO_CONFIG_S_DRIVER_OK != 0;
        // The driver may only add bits, in the order the spec gives (3.1.1).
        let order = [
            VIRTIO_CONFIG_S_ACKNOWLEDGE,
            VIRTIO_CONFIG_S_DRIVER,
            VIRTIO_CONFIG_S_FEATURES_OK,
            VIRTIO_CONFIG_S_DRIVER_OK,
        ];
        let adds = v & !self.status;
        let keeps_old = v & self.status == self.status;
        let in_order = order
            .iter()
            .enumerate()
            .all(|(i, &bit)| adds & bit == 0 || order[..i].iter().all(|&before| v & before != 0));
        if !keeps_old || !in_order {
            tracing::warn!(
                old = self.status,
                new = v,
                "virtio driver wrote an out-of-order status"
            );
            self.status |= VIRTIO_CONFIG_S_FAILED;
            return Action::None;
        }
        if adds & VIRTIO_CONFIG_S_FEATURES_OK != 0 {
            // A modern device requires VERSION_1; without it FEATURES_OK does not stick.
            let version_1 = 1u64 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
            if self.driver_features & version_1 == 0 {
                self.status = v & !VIRTIO_CONFIG_S_FEATURES_OK;
                return Action::None;
            }
        }
        self.status = v;
        if !was_ok && v & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            return Action::Activate;
        }
        Action::None
    }

    /// Back to the power-on state (features offered stay).
    pub fn reset(&mut self) {
        self.driver_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.status = 0;
        self.interrupt_status = 0;
        for q in &mut self.queues {
            q.reset();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;

    fn w(t: &mut Transport, reg: u32, v: u32) -> Action {
        t.write(u64::from(reg), &v.to_le_bytes())
    }

    fn r(t: &Transport, reg: u32) -> u32 {
        let mut b = [0u8; 4];
        t.read(u64::from(reg), &mut b);
        u32::from_le_bytes(b)
    }

    fn transport() -> Transport {
        Transport::new(1, (1 << VIRTIO_F_VERSION_1) | 0b100000, &[256, 256])
    }

    #[test]
    fn identifies_itself_and_offers_features_by_halves() {
        let mut t = transport();
        assert_eq!(r(&t, VIRTIO_MMIO_MAGIC_VALUE), MAGIC);
        assert_eq!(r(&t, VIRTIO_MMIO_VERSION), 2);
        assert_eq!(r(&t, VIRTIO_MMIO_DEVICE_ID), 1);
        assert_eq!(r(&t, VIRTIO_MMIO_DEVICE_FEATURES), 0b100000);
        w(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
        assert_eq!(r(&t, VIRTIO_MMIO_DEVICE_FEATURES), 1);
        w(&mut t, VIRTIO_MMIO_QUEUE_SEL, 1);
        assert_eq!(r(&t, VIRTIO_MMIO_QUEUE_NUM_MAX), 256);
        w(&mut t, VIRTIO_MMIO_QUEUE_SEL, 7);
        assert_eq!(r(&t, VIRTIO_MMIO_QUEUE_NUM_MAX), 0);
    }

    #[test]
    fn negotiates_only_offered_features_and_activates_in_order() {
        let mut t = transport();
        w(&mut t, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
        w(&mut t, VIRTIO_MMIO_STATUS, 3);
        w(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, 0xffff_ffff);
        w(&mut t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        w(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, 0xffff_ffff);
        assert_eq!(t.driver_features, t.device_features);
        w(&mut t, VIRTIO_MMIO_STATUS, 3 | VIRTIO_CONFIG_S_FEATURES_OK);
        assert_ne!(r(&t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_FEATURES_OK, 0);
        w(&mut t, VIRTIO_MMIO_QUEUE_NUM, 64);
        w(&mut t, VIRTIO_MMIO_QUEUE_DESC_LOW, 0x1000);
        w(&mut t, VIRTIO_MMIO_QUEUE_READY, 1);
        assert_eq!(t.queues[0].size(), 64);
        assert_eq!(t.queues[0].desc_table(), 0x1000);
        assert_eq!(w(&mut t, VIRTIO_MMIO_STATUS, 0xf), Action::Activate);
        assert!(t.is_active());
        // A running queue cannot be moved.
        w(&mut t, VIRTIO_MMIO_QUEUE_DESC_LOW, 0x2000);
        assert_eq!(t.queues[0].desc_table(), 0x1000);
        assert_eq!(w(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 1), Action::Notify(1));
        assert_eq!(w(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 9), Action::None);
        assert_eq!(w(&mut t, VIRTIO_MMIO_STATUS, 0), Action::Reset);
        assert_eq!(t.status, 0);
        assert!(!t.queues[0].ready());
    }

    #[test]
    fn refuses_a_driver_without_version_1_and_out_of_order_status() {
        let mut t = transport();
        w(&mut t, VIRTIO_MMIO_STATUS, 3);
        w(&mut t, VIRTIO_MMIO_STATUS, 3 | VIRTIO_CONFIG_S_FEATURES_OK);
        assert_eq!(r(&t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_FEATURES_OK, 0);
        let mut t = transport();
        assert_eq!(
            w(&mut t, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_DRIVER_OK),
            Action::None
        );
        assert_ne!(t.status & VIRTIO_CONFIG_S_FAILED, 0);
        assert!(!t.is_active());
    }
}
