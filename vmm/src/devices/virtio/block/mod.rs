//! virtio-blk over virtio-mmio, backed by a raw image file.
//!
//! Register accesses arrive on vCPU threads ([`Block::mmio_read`], [`Block::mmio_write`]);
//! requests run on the event loop thread ([`Block::handle`]), one queue, synchronously:
//! `pread`/`pwrite` on the image and `fdatasync` for a flush, so a write the guest saw
//! completed after a flush is on the host's disk. Kicks come through an ioeventfd where KVM
//! accepts one.
//!
//! The guest is not trusted. A chain that is malformed as a chain (outside RAM, a loop, too
//! long: see `chain`) stops the VM with a device error, as the NIC does; a well-formed chain
//! holding a bad request gets an error status (see `request`). Every byte the device writes
//! into guest memory (data read from disk, the status, the used ring) goes through `vm-memory`
//! and so lands in the dirty bitmap that live migration merges with KVM's log.
//!
//! The image itself does not migrate: a destination opens its own `--disk`, which must be the
//! same storage (shared, or copied while the VM was stopped). The image is locked while a
//! device uses it (see `lock`).
pub mod config;
pub mod lock;
pub mod persist;
pub mod request;

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex, MutexGuard};

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX,
    VIRTIO_BLK_ID_BYTES,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_CONFIG, VIRTIO_MMIO_INT_VRING};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::QueueT;
use vmm_sys_util::eventfd::EventFd;

use super::chain::{self, ChainError};
use super::transport::{Action, Transport};
use crate::devices::event_loop::EventHandler;
use crate::vstate::memory::GuestMemory;
use crate::vstate::run_control::{RunControl, StopReason};
pub use config::DiskConfig;
use lock::{ImageLock, Taken};
use request::{Disk, SECTOR};

/// Entries in the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Data segments per request the driver may use (`seg_max`): the queue less the header and
/// status descriptors.
const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Largest data segment (`size_max`).
const SIZE_MAX: u32 = 1 << 20;
/// Most bytes one chain may hold: header, every segment full, status. More is malformed.
pub const MAX_CHAIN_BYTES: u64 = request::HEADER + SEG_MAX as u64 * SIZE_MAX as u64 + 1;
/// Requests served per event before the loop looks at other devices.
const BATCH: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("cannot open disk image {path}")]
    Open {
        path: std::path::PathBuf,
        source: io::Error,
    },
    #[error("disk image {path} is smaller than one 512-byte sector")]
    Empty { path: std::path::PathBuf },
    #[error(
        "disk image {path} is in use by another VM, which holds its lock{}",
        if *readonly { " for writing" } else { " (a read-write disk needs the image to itself)" }
    )]
    InUse {
        path: std::path::PathBuf,
        readonly: bool,
    },
    #[error("cannot create an eventfd for virtio-blk")]
    EventFd(#[source] io::Error),
    #[error("the saved virtio-blk state is invalid: {0}")]
    BadState(String),
}

/// Device statistics, for `status`.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct BlockCounters {
    pub requests: u64,
    pub errors: u64,
    pub kicks: u64,
    /// Whether this VM holds the image's lock (it lets go while migrating away).
    pub image_locked: bool,
}

struct Inner {
    transport: Transport,
    /// Set while the VM is paused: the device leaves guest memory alone.
    paused: bool,
    /// Set after a device error; nothing moves until the driver resets the device.
    broken: bool,
    counters: BlockCounters,
}

pub struct Block {
    inner: Mutex<Inner>,
    disk: Disk,
    path: std::path::PathBuf,
    image_lock: ImageLock,
    /// Queue kicks: an ioeventfd, or signalled by `mmio_write` as a fallback.
    kick: EventFd,
    /// Signalled when the device must look at its queue again (activation, resume).
    wake: EventFd,
    /// The guest interrupt for irqchip guests (an irqfd), if any.
    irq: Option<EventFd>,
    mem: GuestMemory,
    run: Arc<RunControl>,
}

fn eventfd() -> Result<EventFd, BlockError> {
    EventFd::new(libc::EFD_NONBLOCK).map_err(BlockError::EventFd)
}

/// A 20-byte serial that names the image file on this host (device and inode numbers).
fn serial(meta: &std::fs::Metadata) -> [u8; VIRTIO_BLK_ID_BYTES as usize] {
    let mut id = [0u8; VIRTIO_BLK_ID_BYTES as usize];
    let text = format!("lndr{:x}.{:x}", meta.dev(), meta.ino());
    let n = text.len().min(id.len());
    id[..n].copy_from_slice(&text.as_bytes()[..n]);
    id
}

impl Block {
    /// Opens the image `cfg` names (read-only if it says so) as a device on guest memory `mem`.
    pub fn open(
        cfg: &DiskConfig,
        mem: GuestMemory,
        run: Arc<RunControl>,
    ) -> Result<Self, BlockError> {
        let err = |source| BlockError::Open {
            path: cfg.path.clone(),
            source,
        };
        // A jailed VM finds its images opened before privileges dropped.
        let file = match crate::sandbox::preopened::take_file(&cfg.path) {
            Some(file) => file,
            None => OpenOptions::new()
                .read(true)
                .write(!cfg.readonly)
                .open(&cfg.path)
                .map_err(err)?,
        };
        let image_lock = ImageLock::new(cfg.readonly);
        match image_lock.take(&file) {
            Taken::Yes => {}
            Taken::HeldElsewhere => {
                return Err(BlockError::InUse {
                    path: cfg.path.clone(),
                    readonly: cfg.readonly,
                })
            }
            // E.g. a file system without locks: run, as QEMU does, but say so.
            Taken::Failed(e) => tracing::warn!(
                path = %cfg.path.display(),
                "cannot lock the disk image, so nothing stops another VM from using it: {e}"
            ),
        }
        let meta = file.metadata().map_err(err)?;
        let sectors = meta.len() / SECTOR;
        if sectors == 0 {
            return Err(BlockError::Empty {
                path: cfg.path.clone(),
            });
        }
        if meta.len() % SECTOR != 0 {
            tracing::warn!(
                path = %cfg.path.display(),
                "the disk image is not whole sectors; its last {} bytes are out of the guest's reach",
                meta.len() % SECTOR
            );
        }
        let disk = Disk {
            file,
            sectors,
            readonly: cfg.readonly,
            id: serial(&meta),
        };
        let mut features = (1u64 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_BLK_F_FLUSH)
            | (1 << VIRTIO_BLK_F_SEG_MAX)
            | (1 << VIRTIO_BLK_F_SIZE_MAX)
            | (1 << VIRTIO_RING_F_EVENT_IDX);
        if cfg.readonly {
            features |= 1 << VIRTIO_BLK_F_RO;
        }
        Ok(Self {
            inner: Mutex::new(Inner {
                transport: Transport::new(VIRTIO_ID_BLOCK, features, &[QUEUE_SIZE]),
                paused: true,
                broken: false,
                counters: BlockCounters::default(),
            }),
            disk,
            path: cfg.path.clone(),
            image_lock,
            kick: eventfd()?,
            wake: eventfd()?,
            irq: None,
            mem,
            run,
        })
    }

    /// Delivers used-buffer notifications through `irq` (an irqfd) as well.
    pub fn set_irq(&mut self, irq: EventFd) {
        self.irq = Some(irq);
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The disk's size in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        self.disk.sectors
    }

    pub fn counters(&self) -> BlockCounters {
        BlockCounters {
            image_locked: self.image_lock.held(),
            ..self.lock().counters
        }
    }

    /// The image file, as `--disk` named it.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Lets go of the image lock, so that a migration destination on the same storage can
    /// take it. Only for a paused VM that is leaving: the device must not write any more.
    pub fn release_image(&self) {
        self.image_lock.release(&self.disk.file);
    }

    /// Takes the image lock back (after [`Block::release_image`]). Fails if another VM holds
    /// it; a file system without locks is not an error (see [`Block::open`]).
    pub fn retake_image(&self) -> Result<(), BlockError> {
        match self.image_lock.retake(&self.disk.file) {
            Taken::Yes => Ok(()),
            Taken::HeldElsewhere => Err(BlockError::InUse {
                path: self.path.clone(),
                readonly: self.image_lock.shared(),
            }),
            Taken::Failed(e) => {
                tracing::warn!(path = %self.path.display(), "cannot lock the disk image: {e}");
                Ok(())
            }
        }
    }

    /// The eventfd to register as the queue's ioeventfd.
    pub fn kick_fd(&self) -> &EventFd {
        &self.kick
    }

    /// `struct virtio_blk_config` up to `blk_size`: capacity, size_max, seg_max, geometry
    /// (unused), blk_size.
    fn config_space(&self) -> [u8; 24] {
        let mut c = [0u8; 24];
        c[..8].copy_from_slice(&self.disk.sectors.to_le_bytes());
        c[8..12].copy_from_slice(&SIZE_MAX.to_le_bytes());
        c[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        c[20..24].copy_from_slice(&(SECTOR as u32).to_le_bytes());
        c
    }

    pub fn mmio_read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        match offset.checked_sub(u64::from(VIRTIO_MMIO_CONFIG)) {
            None => self.lock().transport.read(offset, data),
            Some(off) => {
                let config = self.config_space();
                for (i, b) in data.iter_mut().enumerate() {
                    let at = (off as usize).checked_add(i);
                    *b = at.and_then(|a| config.get(a)).copied().unwrap_or(0);
                }
            }
        }
    }

    pub fn mmio_write(&self, offset: u64, data: &[u8]) {
        if offset >= u64::from(VIRTIO_MMIO_CONFIG) {
            return; // nothing in the config space is writable without CONFIG_WCE
        }
        let mut inner = self.lock();
        match inner.transport.write(offset, data) {
            Action::None => {}
            // KVM did not take this kick through the ioeventfd: pass it on ourselves.
            Action::Notify(_) => {
                let _ = self.kick.write(1);
            }
            Action::Activate => self.activate(&mut inner),
            Action::Reset => inner.broken = false,
        }
    }

    fn activate(&self, inner: &mut Inner) {
        let event_idx = inner.transport.has_feature(VIRTIO_RING_F_EVENT_IDX);
        for q in &mut inner.transport.queues {
            q.set_event_idx(event_idx);
        }
        if !queues_in_ram(&inner.transport, &self.mem) {
            tracing::warn!("virtio-blk: the driver placed its queue outside guest RAM");
            inner.transport.set_needs_reset();
            return;
        }
        let _ = self.wake.write(1);
    }

    /// Stops touching guest memory (the VM is pausing).
    pub fn pause(&self) {
        self.lock().paused = true;
    }

    /// Lets the device run again and has it catch up on requests that arrived meanwhile.
    pub fn resume(&self) {
        self.lock().paused = false;
        let _ = self.wake.write(1);
    }

    /// Serves the queue after `fd` (the kick or the wake) became ready.
    pub fn handle_fd(&self, fd: RawFd) {
        let is_kick = fd == self.kick.as_raw_fd();
        let _ = if is_kick {
            self.kick.read()
        } else {
            self.wake.read()
        };
        let mut inner = self.lock();
        if is_kick {
            inner.counters.kicks += 1;
        }
        if inner.paused || inner.broken || !inner.transport.is_active() {
            return;
        }
        if let Err(e) = self.process(&mut inner) {
            inner.broken = true;
            inner.transport.set_needs_reset();
            tracing::error!("virtio-blk device error: {e}");
            self.run
                .request_stop(StopReason::Crash(format!("virtio-blk device error: {e}")));
        }
    }

    fn process(&self, inner: &mut Inner) -> Result<(), ChainError> {
        let Some(q) = inner.transport.queues.first() else {
            return Ok(());
        };
        if !q.ready() {
            return Ok(());
        }
        let mut used = false;
        let mut drained = false;
        for _ in 0..BATCH {
            let q = &mut inner.transport.queues[0];
            let _ = q.disable_notification(&self.mem);
            let Some(c) = chain::pop(q, &self.mem, MAX_CHAIN_BYTES)? else {
                // Nothing left: ask for a kick, unless more arrived meanwhile.
                if q.enable_notification(&self.mem).unwrap_or(false) {
                    continue;
                }
                drained = true;
                break;
            };
            let done = request::execute(&self.disk, &self.mem, &c);
            inner.counters.requests += 1;
            if done.status != Some(virtio_bindings::virtio_blk::VIRTIO_BLK_S_OK as u8) {
                inner.counters.errors += 1;
            }
            let q = &mut inner.transport.queues[0];
            q.add_used(&self.mem, c.head, done.len)
                .map_err(|e| ChainError::Queue(e.to_string()))?;
            used = true;
        }
        if used {
            self.notify(inner);
        }
        if !drained {
            // A full batch, and notifications are off: no kick will come for the rest, so
            // come back for it after the other devices had their turn.
            let _ = self.wake.write(1);
        }
        Ok(())
    }

    /// Wakes idle vCPUs (guests that poll), and raises the interrupt if the driver wants one.
    fn notify(&self, inner: &mut Inner) {
        self.run.device_event();
        let Some(irq) = &self.irq else { return };
        let q = &mut inner.transport.queues[0];
        if q.needs_notification(&self.mem).unwrap_or(true) {
            inner.transport.interrupt_status |= VIRTIO_MMIO_INT_VRING;
            let _ = irq.write(1);
        }
    }
}

/// Whether every queue the driver uses lies in guest RAM (a queue may be left unused).
fn queues_in_ram(t: &Transport, mem: &GuestMemory) -> bool {
    t.queues
        .iter()
        .filter(|q| q.ready())
        .all(|q| q.is_valid(mem))
}

impl EventHandler for Block {
    fn fds(&self) -> Vec<RawFd> {
        vec![self.kick.as_raw_fd(), self.wake.as_raw_fd()]
    }

    fn handle(&self, fd: RawFd) {
        self.handle_fd(fd);
    }
}

#[cfg(test)]
mod tests;
