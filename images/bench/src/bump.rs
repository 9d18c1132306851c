//! The arithmetic of the guest's bump allocator over the boot-info free regions.
//!
//! Each region has its own bump pointer and allocations are first-fit across regions, so a large
//! request that does not fit in one region does not waste what is left of it. Memory is never
//! reused, except that freeing the most recent allocation of a region gives it back: workloads
//! allocate what they need once, at setup.

use bench_abi::{Region, MAX_REGIONS, PAGE_SIZE};

/// Bump pointers over up to [`MAX_REGIONS`] regions of guest-physical (= virtual) memory.
#[derive(Clone, Copy, Debug)]
pub struct Bump {
    /// `[start, end)` of each usable region, and its bump pointer.
    regions: [(u64, u64); MAX_REGIONS],
    next: [u64; MAX_REGIONS],
    count: usize,
}

impl Bump {
    /// An allocator with no memory.
    pub const fn empty() -> Self {
        Bump {
            regions: [(0, 0); MAX_REGIONS],
            next: [0; MAX_REGIONS],
            count: 0,
        }
    }

    /// An allocator over `free`. Regions are clamped to start at or above one page, so no
    /// allocation is ever the null address, and empty or wrapping regions are dropped.
    pub fn new(free: &[Region]) -> Self {
        let mut bump = Bump::empty();
        for r in free.iter().take(MAX_REGIONS) {
            let start = r.start.max(PAGE_SIZE);
            let Some(end) = r.start.checked_add(r.len) else {
                continue;
            };
            if start < end {
                bump.regions[bump.count] = (start, end);
                bump.next[bump.count] = start;
                bump.count += 1;
            }
        }
        bump
    }

    /// The address of `size` fresh bytes aligned to `align` (a power of two), if any region has
    /// room.
    pub fn alloc(&mut self, size: u64, align: u64) -> Option<u64> {
        debug_assert!(align.is_power_of_two());
        for i in 0..self.count {
            let (_, end) = self.regions[i];
            let Some(start) = self.next[i].checked_next_multiple_of(align) else {
                continue;
            };
            match start.checked_add(size) {
                Some(stop) if stop <= end => {
                    self.next[i] = stop;
                    return Some(start);
                }
                _ => continue,
            }
        }
        None
    }

    /// Frees `[addr, addr + size)`. Only the most recent allocation of a region is returned to
    /// it; anything else stays allocated.
    pub fn dealloc(&mut self, addr: u64, size: u64) {
        for i in 0..self.count {
            let (start, _) = self.regions[i];
            if addr >= start && addr.checked_add(size) == Some(self.next[i]) {
                self.next[i] = addr;
                return;
            }
        }
    }

    /// Bytes not yet handed out, over all regions.
    pub fn free_bytes(&self) -> u64 {
        (0..self.count)
            .map(|i| self.regions[i].1 - self.next[i])
            .sum()
    }

    /// The largest number of bytes one allocation could get (ignoring alignment).
    pub fn largest_free(&self) -> u64 {
        (0..self.count)
            .map(|i| self.regions[i].1 - self.next[i])
            .max()
            .unwrap_or(0)
    }
}

/// Small blocks are recycled by size class: the smallest class holds 16 bytes.
pub const MIN_CLASS: u64 = 16;
/// Size classes, doubling from [`MIN_CLASS`] up to 4 MiB: a long-running agent frees and
/// reallocates buffers of tens and hundreds of KiB (co-access reports, send queues). Larger
/// allocations (working sets) come from the bump pointer as before and are made once.
pub const CLASSES: usize = 19;

/// The size class of an allocation of `size` bytes aligned to `align`, if it is small enough
/// to be recycled: blocks of class `c` are `MIN_CLASS << c` bytes, aligned to their size, so a
/// freed block serves any later request of its class. Long-running workloads (the guest agent,
/// whose maps and messages come and go) would otherwise exhaust a bump allocator.
pub fn size_class(size: u64, align: u64) -> Option<usize> {
    let need = size.max(align).max(MIN_CLASS).checked_next_power_of_two()?;
    let class = (need / MIN_CLASS).trailing_zeros() as usize;
    (class < CLASSES).then_some(class)
}

/// The bytes of a block of class `class`.
pub const fn class_size(class: usize) -> u64 {
    MIN_CLASS << class
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(start: u64, len: u64) -> Region {
        Region { start, len }
    }

    #[test]
    fn small_allocations_have_a_class_that_fits_them_and_large_ones_none() {
        assert_eq!(size_class(1, 1), Some(0));
        assert_eq!(size_class(16, 8), Some(0));
        assert_eq!(size_class(17, 8), Some(1));
        assert_eq!(size_class(8, 4096), Some(8));
        assert_eq!(class_size(8), 4096);
        assert_eq!(size_class(4 << 20, 8), Some(CLASSES - 1));
        assert_eq!(size_class((4 << 20) + 1, 8), None);
        assert_eq!(size_class(u64::MAX, 8), None);
        for size in 1..5000 {
            let c = size_class(size, 8).unwrap();
            assert!(class_size(c) >= size && (c == 0 || class_size(c - 1) < size));
        }
    }

    #[test]
    fn allocates_aligned_first_fit_across_regions() {
        let mut b = Bump::new(&[region(0x10_0010, 0x2000), region(0x100_0000, 0x10_0000)]);
        assert_eq!(b.alloc(16, 8), Some(0x10_0010));
        assert_eq!(b.alloc(0x1000, 0x1000), Some(0x10_1000));
        // Does not fit in what is left of the first region: taken from the second.
        assert_eq!(b.alloc(0x2000, 0x1000), Some(0x100_0000));
        // Small requests still use the first region's tail (16 bytes left at 0x10_2000).
        assert_eq!(b.alloc(8, 8), Some(0x10_2000));
        assert_eq!(b.alloc(16, 8), Some(0x100_2000));
        assert_eq!(b.alloc(0x10_0000, 8), None);
    }

    #[test]
    fn never_returns_null_and_drops_bad_regions() {
        let mut b = Bump::new(&[
            region(0, 0x3000),
            region(u64::MAX - 4, 10),
            region(0x5000, 0),
        ]);
        assert_eq!(b.free_bytes(), 0x2000);
        assert_eq!(b.alloc(1, 1), Some(PAGE_SIZE));
        assert_eq!(Bump::empty().alloc(1, 1), None);
    }

    #[test]
    fn freeing_the_latest_allocation_gives_it_back() {
        let mut b = Bump::new(&[region(0x1000, 0x3000)]);
        let a = b.alloc(0x1000, 0x1000).unwrap();
        let c = b.alloc(0x1000, 0x1000).unwrap();
        b.dealloc(a, 0x1000);
        assert_eq!(b.free_bytes(), 0x1000);
        b.dealloc(c, 0x1000);
        assert_eq!(b.free_bytes(), 0x2000);
        assert_eq!(b.largest_free(), 0x2000);
        assert_eq!(b.alloc(0x2000, 0x1000), Some(c));
    }
}
