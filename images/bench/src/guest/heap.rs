//! The global allocator: a spin-locked bump allocator over the boot-info free regions (the
//! arithmetic is `bench_core::bump`). vCPU 0 initialises it before any other vCPU runs.

use bench_abi::Region;
use bench_core::bump::Bump;
use bench_core::sync::SpinLock;
use core::alloc::{GlobalAlloc, Layout};
use core::ptr::{null_mut, with_exposed_provenance_mut};

struct Heap(SpinLock<Bump>);

#[global_allocator]
static HEAP: Heap = Heap(SpinLock::new(Bump::empty()));

/// Hands the free regions of the boot-info page to the allocator.
pub fn init(free: &[Region]) {
    *HEAP.0.lock() = Bump::new(free);
}

/// The largest allocation that could still succeed, in bytes.
pub fn largest_free() -> u64 {
    HEAP.0.lock().largest_free()
}

// SAFETY: `Bump` hands out disjoint, suitably aligned ranges of free guest RAM (the VMM
// identity-maps all RAM, and the free regions exclude the image, page tables, boot-info pages and
// stacks), and the lock serialises vCPUs. A failed allocation returns null.
unsafe impl GlobalAlloc for Heap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let addr = self
            .0
            .lock()
            .alloc(layout.size() as u64, layout.align() as u64);
        addr.map_or(null_mut(), |a| with_exposed_provenance_mut(a as usize))
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        self.0
            .lock()
            .dealloc(ptr.expose_provenance() as u64, layout.size() as u64);
    }
}
