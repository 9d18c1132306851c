//! The self-describing page format of the `dirty` workload, and its verifier.
//!
//! Every 4 KiB page holds a header of three 64-bit words (page number, generation, checksum)
//! and a body of 509 words filled from a pattern derived from the page number and generation.
//! The checksum covers the page number, the generation and the body, so a verifier needs only the
//! page number and the generation the guest last wrote to tell whether a page is intact.

/// Bytes in a page.
pub const PAGE_SIZE: usize = bench_abi::PAGE_SIZE as usize;
/// 64-bit words in a page.
pub const WORDS: usize = PAGE_SIZE / 8;
/// A page, viewed as words.
pub type Page = [u64; WORDS];

const NUMBER: usize = 0;
const GENERATION: usize = 1;
const CHECKSUM: usize = 2;
const BODY: usize = 3;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
/// Step between consecutive body words (the 64-bit golden ratio, odd).
const BODY_STEP: u64 = 0x9e37_79b9_7f4a_7c15;

/// Rewrites the whole page for `number` at generation `generation`.
pub fn fill(page: &mut Page, number: u64, generation: u64) {
    page[NUMBER] = number;
    page[GENERATION] = generation;
    // An arithmetic sequence from a well-mixed seed: one add per word, yet every (page,
    // generation) pair gets a different body, so a stale or misplaced body fails the checksum.
    let mut x = seed(number, generation);
    for w in &mut page[BODY..] {
        *w = x;
        x = x.wrapping_add(BODY_STEP);
    }
    page[CHECKSUM] = checksum(page);
}

/// The checksum of a page: every word except the checksum word itself.
///
/// Four interleaved FNV-1a-style lanes (for instruction-level parallelism), each step
/// `h = rotl((h ^ w) * prime, 29)`. Each step is a bijection of `h` for a fixed word, so changing
/// any single word, and hence any byte, always changes the result. The rotation moves the high
/// bits down, which plain FNV-1a over words never does (two flips of bit 63 would cancel).
pub fn checksum(page: &Page) -> u64 {
    fn step(h: u64, w: u64) -> u64 {
        (h ^ w).wrapping_mul(FNV_PRIME).rotate_left(29)
    }
    let mut lanes = [FNV_OFFSET, FNV_OFFSET ^ 1, FNV_OFFSET ^ 2, FNV_OFFSET ^ 3];
    for (i, chunk) in page.chunks_exact(lanes.len()).enumerate() {
        for (lane, (h, &w)) in lanes.iter_mut().zip(chunk).enumerate() {
            // The checksum word is hashed as 0: it cannot cover itself.
            let w = if i == 0 && lane == CHECKSUM { 0 } else { w };
            *h = step(*h, w);
        }
    }
    lanes.iter().fold(FNV_OFFSET, |acc, &h| step(acc, h))
}

/// A page that is not what the guest last wrote: what its header says instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mismatch {
    pub number: u64,
    pub generation: u64,
    pub checksum_ok: bool,
}

/// Checks that `page` is exactly what `fill(page, number, generation)` wrote.
pub fn verify(page: &Page, number: u64, generation: u64) -> Result<(), Mismatch> {
    let found = Mismatch {
        number: page[NUMBER],
        generation: page[GENERATION],
        checksum_ok: page[CHECKSUM] == checksum(page),
    };
    if found.number == number && found.generation == generation && found.checksum_ok {
        Ok(())
    } else {
        Err(found)
    }
}

/// Mixes the page number and generation into the body's first word (splitmix64's finaliser).
fn seed(number: u64, generation: u64) -> u64 {
    let mut z = number.rotate_left(32) ^ generation.wrapping_mul(BODY_STEP);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(number: u64, generation: u64) -> Box<Page> {
        let mut page = Box::new([0u64; WORDS]);
        fill(&mut page, number, generation);
        page
    }

    fn flip_byte(page: &mut Page, byte: usize, mask: u8) {
        page[byte / 8] ^= u64::from(mask) << (8 * (byte % 8));
    }

    #[test]
    fn a_freshly_written_page_verifies() {
        for (n, g) in [(0, 1), (0x12345, 7), (u64::MAX, u64::MAX)] {
            assert_eq!(verify(&filled(n, g), n, g), Ok(()));
        }
    }

    #[test]
    fn every_corrupted_byte_is_detected() {
        let good = filled(0x4242, 9);
        for byte in 0..PAGE_SIZE {
            for mask in [0x01, 0x80, 0xff] {
                let mut page = good.clone();
                flip_byte(&mut page, byte, mask);
                assert!(
                    verify(&page, 0x4242, 9).is_err(),
                    "byte {byte} mask {mask:#x}"
                );
            }
        }
    }

    #[test]
    fn paired_high_bit_flips_in_one_lane_are_detected() {
        let mut page = filled(3, 3);
        page[4] ^= 1 << 63;
        page[8] ^= 1 << 63;
        assert_eq!(verify(&page, 3, 3).map_err(|m| m.checksum_ok), Err(false));
    }

    #[test]
    fn stale_or_misplaced_pages_are_reported_with_their_header() {
        let stale = filled(10, 4);
        assert_eq!(
            verify(&stale, 10, 5),
            Err(Mismatch {
                number: 10,
                generation: 4,
                checksum_ok: true
            })
        );
        assert_eq!(
            verify(&filled(11, 5), 10, 5),
            Err(Mismatch {
                number: 11,
                generation: 5,
                checksum_ok: true
            })
        );
        let zero = Box::new([0u64; WORDS]);
        assert_eq!(verify(&zero, 0, 0).map_err(|m| m.checksum_ok), Err(false));
    }

    #[test]
    fn bodies_differ_between_generations_and_pages() {
        let (a, b, c) = (filled(1, 1), filled(1, 2), filled(2, 1));
        assert_ne!(a[BODY..], b[BODY..]);
        assert_ne!(a[BODY..], c[BODY..]);
        let mut swapped = a.clone();
        swapped[BODY..].copy_from_slice(&b[BODY..]);
        assert!(verify(&swapped, 1, 1).is_err());
    }
}
