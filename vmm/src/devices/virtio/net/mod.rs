//! virtio-net over virtio-mmio, backed by a tap.
//!
//! Register accesses arrive on vCPU threads ([`Net::mmio_read`], [`Net::mmio_write`]). The
//! data path runs on the event loop thread ([`Net::handle`]): frames from the tap go into the
//! guest's receive buffers, and the guest's transmit chains go out on the tap. Queue kicks come
//! through ioeventfds where KVM accepts them, so a kick costs no exit to user space.
//!
//! Guests without interrupts (bench guests) poll their used rings: each time the device puts
//! buffers in a used ring it also wakes vCPUs parked in the paravirtual idle. Guests with an
//! irqchip get an interrupt through an irqfd.
//!
//! The guest is not trusted: every chain is checked (see `chain`) before the device touches
//! guest memory, and a malformed one stops the VM with a device error. All writes into guest
//! memory go through `vm-memory`, which marks the VMM-side dirty bitmap that live migration
//! merges with KVM's log.
pub mod announce;
pub mod config;
pub mod persist;
pub mod tap;

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_CONFIG, VIRTIO_MMIO_INT_VRING};
use virtio_bindings::virtio_net::{VIRTIO_NET_F_MAC, VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::chain::{self, Chain, ChainError};
use super::transport::{Action, Transport};
use crate::vstate::memory::GuestMemory;
use crate::vstate::run_control::{RunControl, StopReason};
pub use config::{Mac, NetConfig};
use tap::Tap;

pub const RX: usize = 0;
pub const TX: usize = 1;
/// Entries per queue the device offers.
pub const QUEUE_SIZE: u16 = 256;
/// `struct virtio_net_hdr_v1`: the header before every frame (VERSION_1 makes it 12 bytes).
pub const HDR_LEN: usize = 12;
/// Largest frame the tap hands us or takes: 64 KiB.
const MAX_FRAME: usize = 65_536;
/// Most bytes one chain may hold: a header and the largest frame. More is a malformed chain.
pub const MAX_CHAIN_BYTES: u64 = (HDR_LEN + MAX_FRAME) as u64;
/// Frames moved per event before the loop looks at other work (fairness between queues).
const BATCH: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(transparent)]
    Tap(#[from] tap::TapError),
    #[error("cannot create an eventfd for virtio-net")]
    EventFd(#[source] io::Error),
    #[error("the saved virtio-net state is invalid: {0}")]
    BadState(String),
}

/// Device statistics, for `status`.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct NetCounters {
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub rx_dropped: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    pub tx_errors: u64,
    pub kicks: u64,
}

struct Inner {
    transport: Transport,
    mac: Mac,
    /// Set while the VM is paused: the device leaves guest memory alone.
    paused: bool,
    /// Set after a device error; nothing moves until the driver resets the device.
    broken: bool,
    /// A frame read from the tap that found no receive buffer yet.
    pending: Option<Vec<u8>>,
    counters: NetCounters,
}

pub struct Net {
    inner: Mutex<Inner>,
    tap: Tap,
    /// Queue kicks, one per queue: ioeventfds, or signalled by `mmio_write` as a fallback.
    kicks: [EventFd; 2],
    /// Signalled when the device must look at everything again (activation, resume).
    wake: EventFd,
    /// The guest interrupt for irqchip guests (an irqfd), if any.
    irq: Option<EventFd>,
    mem: GuestMemory,
    run: Arc<RunControl>,
}

const DEVICE_FEATURES: u64 = (1 << VIRTIO_F_VERSION_1)
    | (1 << VIRTIO_NET_F_MAC)
    | (1 << VIRTIO_NET_F_STATUS)
    | (1 << VIRTIO_RING_F_EVENT_IDX);

fn eventfd() -> Result<EventFd, NetError> {
    EventFd::new(libc::EFD_NONBLOCK).map_err(NetError::EventFd)
}

impl Net {
    /// A device on the tap `tap` with MAC `mac`, using guest memory `mem`.
    pub fn new(
        tap: Tap,
        mac: Mac,
        mem: GuestMemory,
        run: Arc<RunControl>,
    ) -> Result<Self, NetError> {
        Ok(Self {
            inner: Mutex::new(Inner {
                transport: Transport::new(VIRTIO_ID_NET, DEVICE_FEATURES, &[QUEUE_SIZE; 2]),
                mac,
                paused: true,
                broken: false,
                pending: None,
                counters: NetCounters::default(),
            }),
            tap,
            kicks: [eventfd()?, eventfd()?],
            wake: eventfd()?,
            irq: None,
            mem,
            run,
        })
    }

    /// Opens the tap named by `cfg` and makes a device on it.
    pub fn open(cfg: &NetConfig, mem: GuestMemory, run: Arc<RunControl>) -> Result<Self, NetError> {
        let tap = Tap::open(&cfg.tap)?;
        Self::new(tap, cfg.mac.unwrap_or_else(Mac::random), mem, run)
    }

    /// Delivers used-buffer notifications through `irq` (an irqfd) as well.
    pub fn set_irq(&mut self, irq: EventFd) {
        self.irq = Some(irq);
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn mac(&self) -> Mac {
        self.lock().mac
    }

    pub fn tap(&self) -> &Tap {
        &self.tap
    }

    pub fn counters(&self) -> NetCounters {
        self.lock().counters
    }

    /// The eventfd to register as the ioeventfd of queue `q`.
    pub fn kick_fd(&self, q: usize) -> Option<&EventFd> {
        self.kicks.get(q)
    }

    /// The descriptors the event loop watches.
    pub fn fds(&self) -> Vec<RawFd> {
        vec![
            self.tap.as_raw_fd(),
            self.kicks[RX].as_raw_fd(),
            self.kicks[TX].as_raw_fd(),
            self.wake.as_raw_fd(),
        ]
    }

    /// The device's config space: MAC, then link status.
    fn config_space(inner: &Inner) -> [u8; 8] {
        let mut c = [0u8; 8];
        c[..6].copy_from_slice(&inner.mac.0);
        c[6..].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        c
    }

    pub fn mmio_read(&self, offset: u64, data: &mut [u8]) {
        let inner = self.lock();
        data.fill(0);
        match offset.checked_sub(u64::from(VIRTIO_MMIO_CONFIG)) {
            None => inner.transport.read(offset, data),
            Some(off) => {
                let config = Self::config_space(&inner);
                for (i, b) in data.iter_mut().enumerate() {
                    *b = config.get(off as usize + i).copied().unwrap_or(0);
                }
            }
        }
    }

    pub fn mmio_write(&self, offset: u64, data: &[u8]) {
        if offset >= u64::from(VIRTIO_MMIO_CONFIG) {
            return; // the MAC and status are read-only without VIRTIO_NET_F_CTRL_MAC_ADDR
        }
        let mut inner = self.lock();
        match inner.transport.write(offset, data) {
            Action::None => {}
            Action::Notify(q) => {
                // KVM did not take this kick through the ioeventfd: pass it on ourselves.
                let _ = self.kicks[usize::from(q)].write(1);
            }
            Action::Activate => self.activate(&mut inner),
            Action::Reset => {
                inner.pending = None;
                inner.broken = false;
            }
        }
    }

    fn activate(&self, inner: &mut Inner) {
        let event_idx = inner.transport.has_feature(VIRTIO_RING_F_EVENT_IDX);
        for q in &mut inner.transport.queues {
            q.set_event_idx(event_idx);
        }
        if !self.queues_in_ram(inner) {
            tracing::warn!("virtio-net: the driver placed a queue outside guest RAM");
            inner.transport.set_needs_reset();
            return;
        }
        tracing::debug!(event_idx, "virtio-net activated");
        let _ = self.wake.write(1);
    }

    /// Whether every queue the driver uses lies in guest RAM. A driver may leave a queue
    /// unused (not ready).
    fn queues_in_ram(&self, inner: &Inner) -> bool {
        let queues = inner.transport.queues.iter();
        queues.filter(|q| q.ready()).all(|q| q.is_valid(&self.mem))
    }

    /// Stops touching guest memory (the VM is pausing); returns once no event is in flight.
    pub fn pause(&self) {
        self.lock().paused = true;
    }

    /// Lets the device run again and has it catch up on what arrived meanwhile.
    pub fn resume(&self) {
        self.lock().paused = false;
        let _ = self.wake.write(1);
    }

    /// Handles readiness of `fd`, one of [`Self::fds`]. Runs on the event loop thread.
    pub fn handle(&self, fd: RawFd) {
        for kick in self.kicks.iter().chain([&self.wake]) {
            if kick.as_raw_fd() == fd {
                let _ = kick.read();
            }
        }
        let mut inner = self.lock();
        if fd == self.kicks[RX].as_raw_fd() || fd == self.kicks[TX].as_raw_fd() {
            inner.counters.kicks += 1;
        }
        if inner.paused || inner.broken || !inner.transport.is_active() {
            return;
        }
        let result = self.process(&mut inner, fd);
        if let Err(e) = result {
            self.fail(&mut inner, &e);
        }
    }

    fn process(&self, inner: &mut Inner, fd: RawFd) -> Result<(), ChainError> {
        let all = fd == self.wake.as_raw_fd();
        let mut used = false;
        if all || fd == self.kicks[TX].as_raw_fd() {
            used |= self.process_tx(inner)?;
        }
        if all || fd == self.tap.as_raw_fd() || fd == self.kicks[RX].as_raw_fd() {
            used |= self.process_rx(inner)?;
        }
        if used {
            self.notify(inner);
        }
        Ok(())
    }

    /// Reports a malformed chain: the device needs a reset, and the VM stops.
    fn fail(&self, inner: &mut Inner, e: &ChainError) {
        inner.broken = true;
        inner.transport.set_needs_reset();
        tracing::error!("virtio-net device error: {e}");
        self.run
            .request_stop(StopReason::Crash(format!("virtio-net device error: {e}")));
    }

    /// Tells the guest that used buffers are waiting: wakes idle vCPUs (guests that poll), and
    /// raises the interrupt if the driver asked for one.
    fn notify(&self, inner: &mut Inner) {
        self.run.device_event();
        let Some(irq) = &self.irq else { return };
        let mut wanted = false;
        for q in &mut inner.transport.queues {
            wanted |= q.needs_notification(&self.mem).unwrap_or(true);
        }
        if wanted {
            inner.transport.interrupt_status |= VIRTIO_MMIO_INT_VRING;
            let _ = irq.write(1);
        }
    }

    /// Sends every frame the driver has queued. Returns whether any buffer was used.
    fn process_tx(&self, inner: &mut Inner) -> Result<bool, ChainError> {
        let mut used = false;
        if !inner.transport.queues[TX].ready() {
            return Ok(false);
        }
        let mut frame = Vec::with_capacity(MAX_CHAIN_BYTES as usize);
        for _ in 0..BATCH {
            let q = &mut inner.transport.queues[TX];
            let _ = q.disable_notification(&self.mem);
            let Some(c) = chain::pop(q, &self.mem, MAX_CHAIN_BYTES)? else {
                // Nothing left: ask for a kick, unless more arrived meanwhile.
                if q.enable_notification(&self.mem).unwrap_or(false) {
                    continue;
                }
                break;
            };
            frame.clear();
            gather(&self.mem, &c, &mut frame);
            if frame.len() > HDR_LEN {
                match self.tap.write_frame(&frame[HDR_LEN..]) {
                    Ok(n) => {
                        inner.counters.tx_frames += 1;
                        inner.counters.tx_bytes += n as u64;
                    }
                    Err(e) => {
                        // The host side dropped it (tap down, queue full): the network may
                        // lose frames, as a real NIC's would.
                        tracing::debug!("virtio-net: tap write failed: {e}");
                        inner.counters.tx_errors += 1;
                    }
                }
            }
            let q = &mut inner.transport.queues[TX];
            q.add_used(&self.mem, c.head, 0)
                .map_err(|e| ChainError::Queue(e.to_string()))?;
            used = true;
        }
        Ok(used)
    }

    /// Moves frames from the tap into receive buffers until either runs out.
    fn process_rx(&self, inner: &mut Inner) -> Result<bool, ChainError> {
        let mut used = false;
        if !inner.transport.queues[RX].ready() {
            // Frames wait in the tap until the driver sets the queue up.
            return Ok(false);
        }
        for _ in 0..BATCH {
            let frame = match inner.pending.take() {
                Some(f) => f,
                None => {
                    let mut buf = vec![0u8; MAX_FRAME];
                    match self.tap.read_frame(&mut buf) {
                        Ok(n) => {
                            buf.truncate(n);
                            buf
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => {
                            tracing::debug!("virtio-net: tap read failed: {e}");
                            break;
                        }
                    }
                }
            };
            let q = &mut inner.transport.queues[RX];
            let _ = q.disable_notification(&self.mem);
            let Some(c) = chain::pop(q, &self.mem, MAX_CHAIN_BYTES)? else {
                inner.pending = Some(frame);
                // No buffer: ask the driver to kick when it adds one, unless it just did.
                if q.enable_notification(&self.mem).unwrap_or(false) {
                    continue;
                }
                break;
            };
            let len = match write_frame(&self.mem, &c, &frame) {
                Some(len) => {
                    inner.counters.rx_frames += 1;
                    inner.counters.rx_bytes += frame.len() as u64;
                    len
                }
                None => {
                    // A buffer too small for the frame: the frame is dropped, the buffer
                    // returned empty.
                    inner.counters.rx_dropped += 1;
                    0
                }
            };
            let q = &mut inner.transport.queues[RX];
            q.add_used(&self.mem, c.head, len)
                .map_err(|e| ChainError::Queue(e.to_string()))?;
            used = true;
        }
        Ok(used)
    }

    /// Writes a frame to the tap from outside the guest (the announce after migration).
    pub fn inject_to_host(&self, frame: &[u8]) -> io::Result<usize> {
        self.tap.write_frame(frame)
    }
}

/// Copies a chain's readable buffers into `out` (the chain was checked against guest RAM).
fn gather(mem: &GuestMemory, c: &Chain, out: &mut Vec<u8>) {
    for &(addr, len) in &c.readable {
        let start = out.len();
        out.resize(start + len as usize, 0);
        if mem.read_slice(&mut out[start..], addr).is_err() {
            out.truncate(start);
        }
    }
}

/// Writes a virtio-net header and `frame` into the chain's writable buffers; returns the bytes
/// written, or `None` if they do not fit.
fn write_frame(mem: &GuestMemory, c: &Chain, frame: &[u8]) -> Option<u32> {
    let total = HDR_LEN + frame.len();
    if c.writable_len() < total as u64 {
        return None;
    }
    let mut hdr = [0u8; HDR_LEN];
    // num_buffers = 1: without VIRTIO_NET_F_MRG_RXBUF every frame takes one chain.
    hdr[10..12].copy_from_slice(&1u16.to_le_bytes());
    let mut src = hdr.iter().chain(frame.iter()).copied();
    let mut chunk = Vec::new();
    let mut left = total;
    for &(addr, len) in &c.writable {
        if left == 0 {
            break;
        }
        let n = (len as usize).min(left);
        chunk.clear();
        chunk.extend(src.by_ref().take(n));
        mem.write_slice(&chunk, addr).ok()?;
        left -= n;
    }
    Some(total as u32)
}

/// The guest-physical address of the used ring of queue `q`, for tests.
pub fn used_ring(net: &Net, q: usize) -> Option<GuestAddress> {
    net.lock()
        .transport
        .queues
        .get(q)
        .map(|q| GuestAddress(q.used_ring()))
}

#[cfg(test)]
mod tests;
