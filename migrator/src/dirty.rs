//! Dirty-page bitmaps: KVM's log (one bit per page, 64 pages a word) merged with the VMM's own
//! record of device writes, walked word by word into runs of consecutive pages.
use vm_memory::bitmap::AtomicBitmap;

/// A region's dirty pages, one bit per page.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DirtyBitmap {
    words: Vec<u64>,
    pages: u64,
}

impl DirtyBitmap {
    pub fn new(pages: u64) -> Self {
        Self {
            words: vec![0; pages.div_ceil(64) as usize],
            pages,
        }
    }

    /// Every page dirty: the first pass.
    pub fn full(pages: u64) -> Self {
        let mut b = Self::new(pages);
        b.words.fill(u64::MAX);
        b.trim();
        b
    }

    /// Clears bits past the last page, which a KVM log may carry.
    fn trim(&mut self) {
        let tail = self.pages % 64;
        if tail != 0 {
            if let Some(last) = self.words.last_mut() {
                *last &= (1u64 << tail) - 1;
            }
        }
    }

    /// ORs in a KVM dirty log for the same region (shorter or longer logs are clipped).
    pub fn merge_words(&mut self, log: &[u64]) {
        for (w, l) in self.words.iter_mut().zip(log) {
            *w |= *l;
        }
        self.trim();
    }

    /// ORs in and clears the VMM's bitmap, a word (64 pages) at a time. Each word is cleared
    /// before its pages are sent, so a device write that lands after this call marks the page
    /// again for the next round.
    pub fn take_vmm_bitmap(&mut self, bitmap: &AtomicBitmap) {
        self.merge_words(&bitmap.get_and_reset());
    }

    /// ORs in another map of the same region.
    pub fn merge(&mut self, other: &DirtyBitmap) {
        self.merge_words(&other.words);
    }

    #[cfg(test)]
    pub fn set(&mut self, page: u64) {
        if page < self.pages {
            self.words[(page / 64) as usize] |= 1 << (page % 64);
        }
    }

    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// The bitmap's words, 64 pages each.
    pub fn words(&self) -> &[u64] {
        &self.words
    }

    pub fn count(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// Runs `(first page, page count)` of consecutive dirty pages, each at most `max` long.
    pub fn runs(&self, max: u64) -> Runs<'_> {
        Runs {
            bitmap: self,
            next: 0,
            max: max.max(1),
        }
    }
}

pub struct Runs<'a> {
    bitmap: &'a DirtyBitmap,
    next: u64,
    max: u64,
}

impl Iterator for Runs<'_> {
    type Item = (u64, u64);

    fn next(&mut self) -> Option<(u64, u64)> {
        let words = &self.bitmap.words;
        // Find the next set bit, skipping clean words whole.
        let mut page = self.next;
        loop {
            if page >= self.bitmap.pages {
                return None;
            }
            let w = words[(page / 64) as usize] >> (page % 64);
            if w == 0 {
                page = (page / 64 + 1) * 64;
                continue;
            }
            page += u64::from(w.trailing_zeros());
            break;
        }
        let start = page;
        // Extend through set bits, a word at a time where the word is full.
        while page < self.bitmap.pages && page - start < self.max {
            let w = words[(page / 64) as usize] >> (page % 64);
            let ones = u64::from((!w).trailing_zeros()).min(64 - page % 64);
            if ones == 0 {
                break;
            }
            page += ones;
        }
        let end = page
            .min(start.saturating_add(self.max))
            .min(self.bitmap.pages);
        self.next = end;
        Some((start, end - start))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn runs_cover_exactly_the_set_pages() {
        let mut b = DirtyBitmap::new(200);
        for p in [0, 1, 2, 63, 64, 65, 130, 199] {
            b.set(p);
        }
        let runs: Vec<_> = b.runs(1000).collect();
        assert_eq!(runs, vec![(0, 3), (63, 3), (130, 1), (199, 1)]);
        assert_eq!(b.count(), 8);
        assert_eq!(
            DirtyBitmap::full(130).runs(50).collect::<Vec<_>>(),
            vec![(0, 50), (50, 50), (100, 30)]
        );
    }

    #[test]
    fn merging_clips_to_the_region() {
        let mut b = DirtyBitmap::new(70);
        b.merge_words(&[1, u64::MAX, u64::MAX]);
        assert_eq!(b.count(), 1 + 6);
        let mut other = DirtyBitmap::new(70);
        other.set(2);
        b.merge(&other);
        assert_eq!(b.count(), 8);
    }

    #[test]
    fn the_vmm_bitmap_is_taken_and_cleared() {
        let bm = AtomicBitmap::new(10 * 4096, std::num::NonZeroUsize::new(4096).unwrap());
        bm.set_addr_range(3 * 4096, 4096);
        let mut b = DirtyBitmap::new(10);
        b.take_vmm_bitmap(&bm);
        assert_eq!(b.runs(10).collect::<Vec<_>>(), vec![(3, 1)]);
        assert!(!bm.is_bit_set(3));
    }

    proptest! {
        #[test]
        fn runs_match_a_naive_scan(pages in 1u64..600, bits in proptest::collection::vec(any::<u16>(), 0..100), max in 1u64..100) {
            let mut b = DirtyBitmap::new(pages);
            let mut naive = vec![false; pages as usize];
            for bit in bits {
                let p = u64::from(bit) % pages;
                b.set(p);
                naive[p as usize] = true;
            }
            let mut seen = vec![false; pages as usize];
            for (start, len) in b.runs(max) {
                prop_assert!(len >= 1 && len <= max);
                for p in start..start + len {
                    prop_assert!(!seen[p as usize]);
                    seen[p as usize] = true;
                }
            }
            prop_assert_eq!(seen, naive);
        }
    }
}
