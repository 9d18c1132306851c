//! Disk images for tests whose bench guest reads a disk (`workload=blk-read`): varied bytes
//! the test writes, and the checksum the guest prints for them.

/// `len` bytes of pseudo-random words (splitmix64 from `seed`): no two sectors alike, so a
/// read of the wrong sector changes the checksum.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed;
    let mut data = vec![0u8; len];
    for word in data.chunks_mut(8) {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        let bytes = (z ^ (z >> 31)).to_le_bytes();
        word.copy_from_slice(&bytes[..word.len()]);
    }
    data
}

/// FNV-1a 64 over `bytes`: what `workload=blk-read` prints as `fnv=`, written here
/// independently of the guest's.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
