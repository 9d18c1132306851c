//! The global allocator: a spin-locked bump allocator over the boot-info free regions (the
//! arithmetic is `bench_core::bump`), with free lists for small blocks. vCPU 0 initialises it
//! before any other vCPU runs.
//!
//! Blocks of up to 4 MiB are rounded up to a power-of-two size class and recycled through one
//! free list per class (a freed block's first 8 bytes link to the next free block); larger ones
//! are bump-allocated once, as the page-writing workloads' working sets always were.

use bench_abi::Region;
use bench_core::bump::{class_size, size_class, Bump, CLASSES};
use bench_core::sync::SpinLock;
use core::alloc::{GlobalAlloc, Layout};
use core::ptr::{null_mut, with_exposed_provenance_mut};

struct Pool {
    bump: Bump,
    /// The first free block of each size class; 0 when the list is empty.
    free: [u64; CLASSES],
}

struct Heap(SpinLock<Pool>);

#[global_allocator]
static HEAP: Heap = Heap(SpinLock::new(Pool {
    bump: Bump::empty(),
    free: [0; CLASSES],
}));

/// Hands the free regions of the boot-info page to the allocator.
pub fn init(free: &[Region]) {
    let mut pool = HEAP.0.lock();
    pool.bump = Bump::new(free);
    pool.free = [0; CLASSES];
}

/// The largest allocation that could still succeed, in bytes.
pub fn largest_free() -> u64 {
    HEAP.0.lock().bump.largest_free()
}

// SAFETY: `Bump` hands out disjoint, suitably aligned ranges of free guest RAM (the VMM
// identity-maps all RAM, and the free regions exclude the image, page tables, boot-info pages and
// stacks), and the lock serialises vCPUs. A block on a free list was allocated with its class's
// size and alignment and is owned by the list alone until it is handed out again. A failed
// allocation returns null.
unsafe impl GlobalAlloc for Heap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let (size, align) = (layout.size() as u64, layout.align() as u64);
        let mut pool = self.0.lock();
        let addr = match size_class(size, align) {
            Some(class) => match pool.free[class] {
                0 => pool.bump.alloc(class_size(class), class_size(class)),
                head => {
                    let block = with_exposed_provenance_mut::<u64>(head as usize);
                    // SAFETY: `head` is a free block of this class (at least 16 bytes, aligned
                    // to its size), whose first word `dealloc` set to the next free block.
                    pool.free[class] = unsafe { block.read() };
                    Some(head)
                }
            },
            None => pool.bump.alloc(size, align),
        };
        addr.map_or(null_mut(), |a| with_exposed_provenance_mut(a as usize))
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let (size, align) = (layout.size() as u64, layout.align() as u64);
        let addr = ptr.expose_provenance() as u64;
        let mut pool = self.0.lock();
        match size_class(size, align) {
            Some(class) => {
                // SAFETY: the caller gives back a block `alloc` made for this layout, so it is
                // a whole block of this class, at least 16 bytes and 16-byte aligned, and no
                // longer used by anyone: its first word may hold the list link.
                unsafe { ptr.cast::<u64>().write(pool.free[class]) };
                pool.free[class] = addr;
            }
            None => pool.bump.dealloc(addr, size),
        }
    }
}
