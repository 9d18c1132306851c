//! PayWord hash chains: the tenant pays by revealing, one at a time, the preimages of a root
//! the broker signed into the token.
//!
//! Links are w_n = s (the tenant's secret seed) and w_i = SHA-256(tag ‖ token id ‖ i ‖ w_{i+1})
//! for i = n−1 … 0, with i a u64 big-endian. The root w_0 is in the token. Revealing w_k proves
//! payment of k links, because only the holder of s can compute a value that hashes to w_0 in
//! k steps. The tag and the token id make every hash in every chain distinct: a link from one
//! chain, or one position, is useless in another, and precomputed tables cannot span chains.

use std::fmt;

use sha2::compress256;
use sha2::digest::consts::U64;
use sha2::digest::generic_array::GenericArray;

use crate::ids::{Link, TokenId};

pub mod payer;
pub mod verifier;

/// The longest chain a token may carry: 2^32 links. Building a payer costs n hashes, so
/// longer chains would take hours to set up, and at one link a second this is 136 years.
/// It also keeps every position arithmetic in this module far from u64 overflow.
pub const MAX_CHAIN_LENGTH: u64 = 1 << 32;

/// The domain-separation tag, padded with zeros to 48 bytes so that tag ‖ token id is exactly
/// one 64-byte SHA-256 block (see [`LinkHasher`]).
const LINK_TAG: [u8; 48] = padded_tag(b"laundromat/payword-link/v1");

const fn padded_tag(text: &[u8]) -> [u8; 48] {
    let mut tag = [0; 48];
    let mut i = 0;
    while i < text.len() {
        tag[i] = text[i];
        i += 1;
    }
    tag
}

/// SHA-256's initial state (FIPS 180-4, 5.3.3).
const SHA256_IV: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

/// A link's input length in bits, as SHA-256's padding records it.
const LINK_INPUT_BITS: u64 = 104 * 8;

/// Computes links of one chain.
///
/// Why it is fast: a link's input is 104 bytes, tag ‖ token id (64 bytes) ‖ i (8) ‖ w_{i+1}
/// (32). SHA-256 works in 64-byte blocks, and its padding (a 0x80 byte, zeros, and the 8-byte
/// bit length) fits after 40 bytes of input in the same block. So the input is exactly two
/// blocks, and the first is the same for every link of the chain. The hasher compresses it
/// once and keeps the resulting state; each link copies that state and compresses one block:
/// half the work of hashing the 104 bytes from scratch, and no more than hashing 55 bytes or
/// fewer from scratch.
///
/// The state is kept as SHA-256's eight words and the second block, padding included, is
/// built in place for `sha2::compress256`. Cloning a `sha2::Sha256` and finishing it would do
/// the same compression, but through generic buffering layers that are compiled into this
/// crate at its own optimization level: in unoptimized test builds they cost several times
/// the compression itself. The tests compare every link with `Sha256::digest` of the full
/// input.
#[derive(Clone, PartialEq, Eq)]
pub struct LinkHasher {
    /// SHA-256 state after compressing the block tag ‖ token id.
    after_prefix: [u32; 8],
}

impl LinkHasher {
    pub fn new(token_id: &TokenId) -> Self {
        let mut block = [0; 64];
        block[..LINK_TAG.len()].copy_from_slice(&LINK_TAG);
        block[LINK_TAG.len()..].copy_from_slice(token_id.as_bytes());
        let mut after_prefix = SHA256_IV;
        compress256(&mut after_prefix, &[GenericArray::from(block)]);
        Self { after_prefix }
    }

    /// w_index, computed from w_{index+1}.
    pub fn link(&self, index: u64, above: &Link) -> Link {
        let mut state = self.after_prefix;
        compress256(&mut state, &[link_block(index, above)]);
        Link(big_endian_bytes(&state))
    }

    /// Hashes w_`index` toward the root `steps` times, giving w_{index − steps}. Stops at the
    /// root if `steps` exceeds `index`.
    pub fn toward_root(&self, index: u64, link: &Link, steps: u64) -> Link {
        let target = index.saturating_sub(steps);
        (target..index)
            .rev()
            .fold(*link, |above, i| self.link(i, &above))
    }
}

// The two helpers below avoid iterator adapters: the tests hash tens of millions of links in
// unoptimized builds, where every adapter call is a real call.

/// The second block of a link's input: i ‖ w_{i+1} ‖ SHA-256 padding for 104 bytes.
fn link_block(index: u64, above: &Link) -> GenericArray<u8, U64> {
    let mut block = [0; 64];
    block[..8].copy_from_slice(&index.to_be_bytes());
    block[8..40].copy_from_slice(above.as_bytes());
    block[40] = 0x80;
    block[56..].copy_from_slice(&LINK_INPUT_BITS.to_be_bytes());
    GenericArray::from(block)
}

/// SHA-256's digest from its final state: the eight words, big-endian.
fn big_endian_bytes(state: &[u32; 8]) -> [u8; 32] {
    let mut digest = [0; 32];
    let mut word = 0;
    while word < 8 {
        let [a, b, c, d] = state[word].to_be_bytes();
        let at = 4 * word;
        (digest[at], digest[at + 1], digest[at + 2], digest[at + 3]) = (a, b, c, d);
        word += 1;
    }
    digest
}

impl fmt::Debug for LinkHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LinkHasher")
    }
}

/// The root w_0 of the chain of `length` links that starts from `seed`. It costs `length`
/// hashes; the tenant computes it once, to ask the broker for a token.
pub fn chain_root(token_id: &TokenId, seed: &Link, length: u64) -> Link {
    LinkHasher::new(token_id).toward_root(length, seed, length)
}

#[cfg(test)]
pub(crate) mod tests {
    use sha2::{Digest, Sha256};

    use super::*;

    /// The chain computed the obvious way, every link from scratch: the reference the fast
    /// code is compared with.
    pub(crate) fn naive_chain(token_id: &TokenId, seed: &Link, length: u64) -> Vec<Link> {
        let mut input = [0; 104];
        input[..48].copy_from_slice(&LINK_TAG);
        input[48..64].copy_from_slice(token_id.as_bytes());
        let mut links = vec![Link([0; 32]); length as usize + 1];
        links[length as usize] = *seed;
        for i in (0..length).rev() {
            input[64..72].copy_from_slice(&i.to_be_bytes());
            input[72..].copy_from_slice(links[i as usize + 1].as_bytes());
            links[i as usize] = Link(Sha256::digest(input).into());
        }
        links
    }

    #[test]
    fn tag_and_token_id_fill_one_block() {
        assert_eq!(LINK_TAG.len() + TokenId::LEN, 64);
        assert!(LINK_TAG.starts_with(b"laundromat/payword-link/v1\0"));
    }

    #[test]
    fn the_precomputed_prefix_gives_the_plain_sha256() {
        let id = TokenId([9; 16]);
        let seed = Link([3; 32]);
        let naive = naive_chain(&id, &seed, 10);
        let hasher = LinkHasher::new(&id);
        for i in 0..10 {
            assert_eq!(hasher.link(i, &naive[i as usize + 1]), naive[i as usize]);
        }
        assert_eq!(hasher.toward_root(10, &seed, 7), naive[3]);
        assert_eq!(hasher.toward_root(10, &seed, 99), naive[0]);
        assert_eq!(chain_root(&id, &seed, 10), naive[0]);
    }

    /// A full-size chain end to end: the payer reveals all 2^20 links in order, the host
    /// accepts each one, and the last is the seed.
    #[test]
    fn a_million_links_end_to_end() {
        let length = 1 << 20;
        let seed = Link([0x5e; 32]);
        let mut token = crate::boot_token::tests::sample_token();
        let mut payer = payer::Payer::new(token.token_id, &seed, length).unwrap();
        token.chain_length = length;
        token.chain_root = payer.root();
        let mut verifier = verifier::Verifier::new(&token, 1).unwrap();
        let mut last = token.chain_root;
        for index in 1..=length {
            let (revealed, link) = payer.next_link().unwrap();
            assert_eq!(revealed, index);
            assert_eq!(verifier.accept(index, &link), Ok(1), "link {index}");
            last = link;
        }
        assert_eq!(last, seed);
        assert_eq!(verifier.index(), length);
        assert!(payer.next_link().is_err());
        assert!(payer.memory_bytes() <= 64 * 1024);
    }

    #[test]
    fn chains_of_different_tokens_differ() {
        let seed = Link([3; 32]);
        assert_ne!(
            chain_root(&TokenId([1; 16]), &seed, 1),
            chain_root(&TokenId([2; 16]), &seed, 1)
        );
    }
}
