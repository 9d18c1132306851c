//! Live migration for Laundromat VMs: host identities ([`identity`]), mutual TLS between them
//! ([`tls`], [`transport`]), a versioned, length-framed protocol inside it ([`wire`]), the
//! iterative dirty-page pre-copy engine ([`source`]) and its receiving end ([`dest`]), with
//! QEMU-style statistics ([`stats`]).
//!
//! The engine does not know the VMM: it drives any VM through [`MigratableVm`], which the
//! `vmm` crate implements. That keeps this crate below the VMM, so the `vmm` binary can serve
//! migrations itself (the source streams directly to the destination `vmm`).
pub mod convergence;
pub mod dest;
pub mod dirty;
pub mod guest_ram;
pub mod identity;
pub mod lanes;
pub mod params;
mod secure_stream;
mod sender;
mod socket;
pub mod source;
pub mod stats;
pub mod tls;
pub mod transport;
pub mod wire;

use vm_memory::bitmap::AtomicBitmap;

pub use params::{Compression, MigrateParams, OnTimeout};
pub use stats::{Progress, Stats, Status};

/// Guest memory as the VMM maps it, with its VMM-side dirty bitmap per region.
pub type GuestMemory = vm_memory::GuestMemoryMmap<AtomicBitmap>;

/// The VMM-side dirty bitmap of a region (the trait method of the same name returns a view).
pub fn vmm_bitmap(region: &vm_memory::GuestRegionMmap<AtomicBitmap>) -> &AtomicBitmap {
    std::ops::Deref::deref(region).bitmap()
}

/// Errors from the VM side of the engine, boxed so the VMM keeps its own error types.
pub type VmError = Box<dyn std::error::Error + Send + Sync>;

/// What the pre-copy engine needs from a running VM.
pub trait MigratableVm {
    fn memory(&self) -> &GuestMemory;
    /// An opaque description the destination needs to build an empty VM of the same shape.
    fn machine(&self) -> Vec<u8>;
    /// Turns KVM dirty logging on or off for every memory region.
    fn set_dirty_logging(&self, enabled: bool) -> Result<(), VmError>;
    /// KVM's dirty log of region `index` (in `memory().iter()` order): cleared as it is read,
    /// unless [`MigratableVm::manual_dirty_log`] says the engine clears it.
    fn dirty_log(&self, index: usize) -> Result<Vec<u64>, VmError>;
    /// Whether the dirty log stays set until [`MigratableVm::clear_dirty_log`] (KVM's manual
    /// protection); the engine then clears each chunk right before sending it.
    fn manual_dirty_log(&self) -> bool {
        false
    }
    /// Clears the bits of `bitmap` (pages from `first_page`, a multiple of 64; `pages` of
    /// them) in region `index`'s log, re-arming tracking of those pages.
    fn clear_dirty_log(
        &self,
        index: usize,
        first_page: u64,
        pages: u64,
        bitmap: &[u64],
    ) -> Result<(), VmError> {
        let _ = (index, first_page, pages, bitmap);
        Ok(())
    }
    /// Returns once every vCPU has stopped.
    fn pause(&self) -> Result<(), VmError>;
    fn resume(&self) -> Result<(), VmError>;
    /// The complete device and vCPU state of the paused VM.
    fn save_state(&self) -> Result<Vec<u8>, VmError>;
    /// Keeps vCPUs out of the guest for `percent` of the time (0 turns throttling off).
    fn set_throttle(&self, percent: u8);
}
