//! The saved state of a virtio-blk device: the transport and the queue position, plus the
//! disk's shape so a destination with another image is refused. The image's contents are not
//! part of the state: the destination opens the same storage with its own `--disk`.
use serde::{Deserialize, Serialize};

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_NEEDS_RESET,
};
use virtio_queue::QueueT;

use super::{Block, BlockError};
use crate::devices::virtio::net::persist::QueueSnapshot;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockSnapshot {
    /// The disk's size in sectors where the state was saved.
    pub sectors: u64,
    pub readonly: bool,
    pub device_features: u64,
    pub driver_features: u64,
    pub status: u32,
    pub interrupt_status: u32,
    pub config_generation: u32,
    /// Whether a device error stopped the device (it stays stopped until reset).
    pub broken: bool,
    pub queues: Vec<QueueSnapshot>,
}

impl Block {
    /// The device's state. The VM must be paused, so nothing moves while it is read.
    pub fn snapshot(&self) -> BlockSnapshot {
        let inner = self.lock();
        let t = &inner.transport;
        BlockSnapshot {
            sectors: self.disk.sectors,
            readonly: self.disk.readonly,
            device_features: t.device_features,
            driver_features: t.driver_features,
            status: t.status,
            interrupt_status: t.interrupt_status,
            config_generation: t.config_generation,
            broken: inner.broken,
            queues: t.queues.iter().map(QueueSnapshot::from).collect(),
        }
    }

    /// Puts the device where `s` says. Checked first: a state from a disk of another size or
    /// mode, or a device with other queues or features, is refused and nothing changes.
    pub fn restore(&self, s: &BlockSnapshot) -> Result<(), BlockError> {
        let bad = |m: String| Err(BlockError::BadState(m));
        if s.sectors != self.disk.sectors {
            return bad(format!(
                "the disk had {} sectors, this image has {}",
                s.sectors, self.disk.sectors
            ));
        }
        if s.readonly != self.disk.readonly {
            return bad(format!(
                "the disk was {}, this one is {}",
                mode(s.readonly),
                mode(self.disk.readonly)
            ));
        }
        let mut inner = self.lock();
        let t = &inner.transport;
        if s.device_features != t.device_features || s.driver_features & !s.device_features != 0 {
            return bad(format!(
                "features {:#x}/{:#x} do not match this device's {:#x}",
                s.device_features, s.driver_features, t.device_features
            ));
        }
        let sizes_match = s.queues.len() == t.queues.len()
            && s.queues
                .iter()
                .zip(&t.queues)
                .all(|(q, o)| q.max_size == o.max_size());
        if !sizes_match {
            return bad("the queues do not match this device's".into());
        }
        let queues = s
            .queues
            .iter()
            .map(|q| q.restore().map_err(BlockError::BadState))
            .collect::<Result<Vec<_>, _>>()?;
        let active = s.status & VIRTIO_CONFIG_S_DRIVER_OK != 0
            && s.status & (VIRTIO_CONFIG_S_FAILED | VIRTIO_CONFIG_S_NEEDS_RESET) == 0;
        let in_ram = queues
            .iter()
            .filter(|q| q.ready())
            .all(|q| q.is_valid(&self.mem));
        if active && !in_ram {
            return bad("a queue lies outside guest RAM".into());
        }
        let t = &mut inner.transport;
        t.driver_features = s.driver_features;
        t.status = s.status;
        t.interrupt_status = s.interrupt_status;
        t.config_generation = s.config_generation;
        t.queues = queues;
        inner.broken = s.broken;
        Ok(())
    }
}

fn mode(readonly: bool) -> &'static str {
    match readonly {
        true => "read-only",
        false => "read-write",
    }
}
