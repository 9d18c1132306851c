//! FNV-1a, 64-bit: the checksum `workload=blk-read` reports for each pass over its disk. It is
//! simple enough that a test on the host computes it independently over the image it made, and
//! it depends on every byte and its position, so a stale or misplaced block changes it.

/// FNV-1a's 64-bit offset basis: the checksum of no bytes.
pub const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const PRIME: u64 = 0x0000_0100_0000_01b3;

/// Feeds `bytes` into the running checksum `hash` (start from [`OFFSET_BASIS`]).
pub fn update(mut hash: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(PRIME);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_published_vectors_and_is_incremental() {
        assert_eq!(update(OFFSET_BASIS, b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(update(OFFSET_BASIS, b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(update(OFFSET_BASIS, b"foobar"), 0x8594_4171_f739_67e8);
        let split = update(update(OFFSET_BASIS, b"foo"), b"bar");
        assert_eq!(split, update(OFFSET_BASIS, b"foobar"));
    }
}
