//! The saved state of a virtio-net device: what a destination needs to carry on with the
//! driver's queues exactly where the source left them. The tap is the destination's own
//! (`--net tap=NAME` there); frames in flight at the switchover may be lost, as on a real
//! network, but queue positions never are.
use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueState, QueueT};

use super::{Inner, Mac, Net, NetError};

/// One virtqueue's position and placement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSnapshot {
    pub max_size: u16,
    pub size: u16,
    pub ready: bool,
    pub event_idx: bool,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
    pub next_avail: u16,
    pub next_used: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetSnapshot {
    pub mac: Mac,
    pub device_features: u64,
    pub driver_features: u64,
    pub status: u32,
    pub interrupt_status: u32,
    pub config_generation: u32,
    /// Whether a device error stopped the device (it stays stopped until reset).
    pub broken: bool,
    pub queues: Vec<QueueSnapshot>,
}

impl From<&Queue> for QueueSnapshot {
    fn from(q: &Queue) -> Self {
        let s = q.state();
        Self {
            max_size: s.max_size,
            size: s.size,
            ready: s.ready,
            event_idx: s.event_idx_enabled,
            desc_table: s.desc_table,
            avail_ring: s.avail_ring,
            used_ring: s.used_ring,
            next_avail: s.next_avail,
            next_used: s.next_used,
        }
    }
}

impl QueueSnapshot {
    /// The queue this snapshot describes, checked by `virtio-queue`.
    pub(crate) fn restore(&self) -> Result<Queue, String> {
        let state = QueueState {
            max_size: self.max_size,
            next_avail: self.next_avail,
            next_used: self.next_used,
            event_idx_enabled: self.event_idx,
            size: self.size,
            ready: self.ready,
            desc_table: self.desc_table,
            avail_ring: self.avail_ring,
            used_ring: self.used_ring,
        };
        Queue::try_from(state).map_err(|e| format!("queue: {e}"))
    }
}

impl Net {
    /// The device's state. The VM must be paused, so nothing moves while it is read.
    pub fn snapshot(&self) -> NetSnapshot {
        let inner = self.lock();
        let t = &inner.transport;
        NetSnapshot {
            mac: inner.mac,
            device_features: t.device_features,
            driver_features: t.driver_features,
            status: t.status,
            interrupt_status: t.interrupt_status,
            config_generation: t.config_generation,
            broken: inner.broken,
            queues: t.queues.iter().map(QueueSnapshot::from).collect(),
        }
    }

    /// Puts the device where `s` says. Checked first: a state from a device with other queues
    /// or features than this one offers is refused, and nothing changes.
    pub fn restore(&self, s: &NetSnapshot) -> Result<(), NetError> {
        let mut inner = self.lock();
        check(&inner, s)?;
        let queues = s
            .queues
            .iter()
            .map(|q| q.restore().map_err(NetError::BadState))
            .collect::<Result<Vec<_>, _>>()?;
        inner.mac = s.mac;
        let t = &mut inner.transport;
        t.driver_features = s.driver_features;
        t.status = s.status;
        t.interrupt_status = s.interrupt_status;
        t.config_generation = s.config_generation;
        t.queues = queues;
        inner.broken = s.broken;
        if inner.transport.is_active() {
            let valid = self.queues_in_ram(&inner);
            if !valid {
                return Err(NetError::BadState("a queue lies outside guest RAM".into()));
            }
        }
        Ok(())
    }
}

fn check(inner: &Inner, s: &NetSnapshot) -> Result<(), NetError> {
    let t = &inner.transport;
    if s.device_features != t.device_features {
        return Err(NetError::BadState(format!(
            "device features {:#x}, this vmm offers {:#x}",
            s.device_features, t.device_features
        )));
    }
    if s.driver_features & !s.device_features != 0 {
        return Err(NetError::BadState(
            "the driver accepted features never offered".into(),
        ));
    }
    if s.queues.len() != t.queues.len() {
        return Err(NetError::BadState(format!(
            "{} queues, this device has {}",
            s.queues.len(),
            t.queues.len()
        )));
    }
    for (q, ours) in s.queues.iter().zip(&t.queues) {
        if q.max_size != ours.max_size() {
            return Err(NetError::BadState(format!(
                "queue size limit {}, this device's is {}",
                q.max_size,
                ours.max_size()
            )));
        }
    }
    Ok(())
}
