//! Dividing work (pages, a page rate) between vCPUs.

use core::ops::Range;

/// The part of `0..total` that member `index` of `parts` members owns: contiguous, in index
/// order, with sizes that differ by at most one (the first `total % parts` members get one more).
///
/// `parts` must be non-zero and `index` below it.
pub fn share(total: u64, parts: u32, index: u32) -> Range<u64> {
    let (parts, index) = (u64::from(parts), u64::from(index));
    let base = total / parts;
    let extra = total % parts;
    let start = index * base + index.min(extra);
    let len = base + u64::from(index < extra);
    start..start + len
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_tile_the_range_and_differ_by_at_most_one() {
        for total in [0u64, 1, 5, 31, 32, 33, 4096, 1_000_003] {
            for parts in [1u32, 2, 3, 7, 32] {
                let mut next = 0;
                let lens: Vec<u64> = (0..parts)
                    .map(|i| {
                        let r = share(total, parts, i);
                        assert_eq!(r.start, next, "total={total} parts={parts} i={i}");
                        next = r.end;
                        r.end - r.start
                    })
                    .collect();
                assert_eq!(next, total);
                let (min, max) = (lens.iter().min().unwrap(), lens.iter().max().unwrap());
                assert!(max - min <= 1);
            }
        }
    }
}
